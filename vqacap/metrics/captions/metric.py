"""Caption metrics during validation: a torchmetrics `Metric` over generated token ids.

`update` keeps the image ids and the generated ids (cut at the first <eos>/<pad>, <bos> dropped) as flat tensor
states, so torchmetrics gathers them across processes under DDP. `compute` drops the images a distributed sampler
repeated, decodes the ids to words and scores the captions with `evaluate_captions` against the references of the
images seen (references PTB-tokenized once, at construction; generated captions tokenized the same way), and adds
`bad_endings`, the fraction of captions ending in a function word (endings.py).

Shapes: B captions per update, L tokens.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import torch
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat

from vqacap.data.vocab import BOS_ID, EOS_ID, PAD_ID
from vqacap.metrics.captions.endings import bad_endings
from vqacap.metrics.captions.evaluation import METRICS, check_metrics, evaluate_captions
from vqacap.metrics.captions.ptb import tokenize_captions


class CaptionMetrics(Metric):
    """references: {image_id: [raw reference captions]}; words[i]: the word of token id i (0..3 are the specials)."""

    full_state_update = False

    def __init__(
        self,
        references: Mapping[int, Sequence[str]],
        words: Sequence[str],
        metrics: Iterable[str] = ("Bleu_4", "CIDEr"),
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        wanted = check_metrics(metrics)
        self.metric_names = [m for m in METRICS if m in wanted]
        self.words = list(words)
        image_ids = [int(i) for i in references]
        flat = tokenize_captions([c for i in references for c in references[i]])
        self.references: dict[int, list[str]] = {}
        start = 0
        for i, captions in zip(image_ids, references.values()):
            self.references[i] = flat[start : start + len(captions)]
            start += len(captions)
        self.add_state("image_ids", default=[], dist_reduce_fx="cat")  # (B,) per update
        self.add_state("lengths", default=[], dist_reduce_fx="cat")  # (B,) kept tokens per caption
        self.add_state("tokens", default=[], dist_reduce_fx="cat")  # (sum of lengths,) kept tokens, flat

    def update(self, image_ids: torch.Tensor, tokens: torch.Tensor) -> None:
        """image_ids (B,), tokens (B, L) generated ids."""
        tokens = tokens.reshape(len(image_ids), -1)
        before_end = torch.cumsum((tokens == EOS_ID) | (tokens == PAD_ID), dim=1) == 0
        keep = before_end & (tokens != BOS_ID)
        self.image_ids.append(image_ids.reshape(-1).long())
        self.lengths.append(keep.sum(1))
        self.tokens.append(tokens[keep].long())

    def compute(self) -> dict[str, float]:
        # Before a DDP sync the states are lists of per-update tensors; after it, one concatenated tensor each.
        if isinstance(self.image_ids, list) and not self.image_ids:
            return {}
        image_ids = dim_zero_cat(self.image_ids).tolist()
        lengths = dim_zero_cat(self.lengths).tolist()
        tokens = dim_zero_cat(self.tokens).tolist()
        captions: dict[int, str] = {}
        start = 0
        for image_id, length in zip(image_ids, lengths):
            if image_id not in captions:  # first copy of an image the sampler repeated
                captions[image_id] = " ".join(self.words[t] for t in tokens[start : start + length])
            start += length
        missing = [i for i in captions if i not in self.references]
        if missing:
            raise ValueError(
                f"{len(missing)} generated captions are for images without references (e.g. {missing[0]})"
            )
        seen = [i for i in self.references if i in captions]  # reference order, as the tokenizer saw them
        hypotheses = dict(zip(seen, tokenize_captions([captions[i] for i in seen])))
        references = {i: self.references[i] for i in seen}
        scores = evaluate_captions(references, hypotheses, metrics=self.metric_names, tokenize=False)
        return {**scores, "bad_endings": bad_endings(hypotheses.values())}
