"""VQA accuracy of any answer string, split by whether the question's answer occurs among the training answers.

A classifier can only give a training answer; a model that composes its answer word by word can give a string no
training question had. Shapes flags such questions (`answer_seen`, vqacap.shapes.HELD_OUT_ANSWERS) so the two
groups are reported apart. Decoded strings are scored with the official accuracy on the raw human answers
(`answer_accuracy`, vqacap.data.answers), normalisation quirks included, the numbers `evaluate vqa` gives.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torchmetrics.utilities import dim_zero_cat

from vqacap.data.answers import answer_accuracy
from vqacap.metrics.vqa.metric import VQAAccuracy, batch_accuracy

GROUPS = {True: "seen", False: "held_out"}  # names of perAnswerSeen, by the question's answer_seen flag


class SeenAnswerAccuracy(VQAAccuracy):
    """`VQAAccuracy` whose `compute()` adds "perAnswerSeen": {"seen": t, "held_out": t} (groups without questions
    left out), and which also scores answer strings. Without `answer_seen` every question is seen."""

    def __init__(self, answer_types: Sequence[str], question_types: Sequence[str], **kwargs) -> None:
        super().__init__(answer_types, question_types, **kwargs)
        self.add_state("answer_seen", default=[], dist_reduce_fx="cat")

    def update(
        self,
        prediction: torch.Tensor | Sequence[str],
        gt_answers: torch.Tensor | Sequence[Sequence[str]],
        question_id: torch.Tensor,
        answer_type: torch.Tensor,
        question_type: torch.Tensor,
        answer_seen: torch.Tensor | None = None,
    ) -> None:
        """prediction (B,) candidate indices with gt_answers (B, N) their `gt_answer_indices`, as `VQAAccuracy`; or
        B answer strings with gt_answers the raw human answers of each question. answer_seen (B,) bool."""
        if isinstance(prediction, torch.Tensor):
            accuracy = batch_accuracy(prediction.detach(), gt_answers.detach())
        else:
            accuracy = torch.tensor(
                [answer_accuracy(p, humans) for p, humans in zip(prediction, gt_answers, strict=True)],
                dtype=torch.float64,
                device=question_id.device,
            )
        self.accuracy.append(accuracy)
        self.question_id.append(question_id.detach().long().flatten())
        self.answer_type.append(answer_type.detach().long().flatten())
        self.question_type.append(question_type.detach().long().flatten())
        if answer_seen is None:
            answer_seen = torch.ones_like(question_id, dtype=torch.bool)
        self.answer_seen.append(answer_seen.detach().bool().flatten())

    def compute(self) -> dict:
        out = super().compute()
        question_id = dim_zero_cat(self.question_id)
        _, first = torch.unique(
            question_id, return_inverse=True
        )  # first occurrence of every question id, as above
        position = torch.arange(len(question_id), device=question_id.device)
        keep = torch.full((int(first.max()) + 1,), len(question_id), device=question_id.device)
        keep = keep.scatter_reduce(0, first, position, reduce="amin")
        accuracy, seen = dim_zero_cat(self.accuracy)[keep], dim_zero_cat(self.answer_seen)[keep]
        out["perAnswerSeen"] = {
            name: 100 * accuracy[seen == flag].mean() for flag, name in GROUPS.items() if (seen == flag).any()
        }
        return out
