"""Caption metrics identical to coco-caption (pycocoevalcap 1.2), computed in process, and a CIDEr-D reward for SCST.

- `evaluate_captions`, `load_annotations` (evaluation.py): score COCO-format results; `load_results` reads them
  (vqacap.data.formats).
- `tokenize_captions` (ptb.py): coco-caption's PTB tokenization, in Python.
- `CaptionMetrics` (metric.py): a torchmetrics validation metric over generated token ids.
- `CiderDReward` (reward.py): vectorised CIDEr-D of sampled token ids against training references.
"""

from vqacap.data.formats import load_coco_results as load_results
from vqacap.metrics.captions.evaluation import (
    METRICS,
    evaluate_captions,
    evaluate_captions_per_image,
    load_annotations,
)
from vqacap.metrics.captions.ptb import tokenize_captions

__all__ = [
    "METRICS",
    "CaptionMetrics",
    "CiderDReward",
    "evaluate_captions",
    "evaluate_captions_per_image",
    "load_annotations",
    "load_results",
    "tokenize_captions",
]


def __getattr__(name: str):
    # The torch-based pieces load on first use, so the command line and the scorers do not import torch.
    if name == "CaptionMetrics":
        from vqacap.metrics.captions.metric import CaptionMetrics

        return CaptionMetrics
    if name == "CiderDReward":
        from vqacap.metrics.captions.reward import CiderDReward

        return CiderDReward
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
