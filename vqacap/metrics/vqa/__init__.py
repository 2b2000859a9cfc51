"""VQA accuracy as the official evaluator computes it.

- `VQAAccuracy` (metric.py): a torchmetrics validation metric over predicted candidate indices.
- `evaluate_vqa`, `format_report` (evaluation.py): score an official results file; cli.py is `vqacap evaluate vqa`.

The answers' normalisation and accuracy are vqacap.data.answers; the file formats vqacap.data.formats.
"""

from vqacap.metrics.vqa.evaluation import evaluate_vqa, format_report

__all__ = ["VQAAccuracy", "batch_accuracy", "evaluate_vqa", "format_report"]


def __getattr__(name: str):
    # The torch-based metric loads on first use, so the command line does not import torch.
    if name in ("VQAAccuracy", "batch_accuracy"):
        from vqacap.metrics.vqa import metric

        return getattr(metric, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
