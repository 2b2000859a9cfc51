"""VQA accuracy during validation: a torchmetrics `Metric` over predicted candidate indices, equal to the official
evaluator's numbers on the same predictions (the answers' normalisation: vqacap.data.answers)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat


def batch_accuracy(pred_index: torch.Tensor, gt_answer_index: torch.Tensor) -> torch.Tensor:
    """Official accuracy (float64, in [0, 1]) of predicted candidates: pred_index (B,), gt_answer_index (B, N) -> (B,).

    gt_answer_index holds `gt_answer_indices` of the N human answers of each question (-1 matches nothing).
    """
    matches = gt_answer_index == pred_index.unsqueeze(1)  # (B, N)
    others = matches.sum(dim=1, keepdim=True) - matches.long()  # (B, N) matches among the other N-1 humans
    return (others.double() / 3).clamp(max=1).mean(dim=1)


class VQAAccuracy(Metric):
    """Official VQA accuracy in percent: overall, per answer type and per question type.

    `update(pred_index, gt_answer_index, question_id, answer_type, question_type)`: pred_index (B,) the predicted
    candidate answer, gt_answer_index (B, N) `gt_answer_indices` of the N human answers, question_id, answer_type and
    question_type (B,), type ids indexing `answer_types` / `question_types`. The numbers equal `evaluate_vqa` on the same
    predictions. A question seen more than once (the DistributedSampler pads every rank to the same length by
    repeating questions) counts once.

    `compute()` -> {"overall": t, "perAnswerType": {name: t}, "perQuestionType": {name: t}}, the evaluator's names,
    float64 at full precision; types without questions are left out, as the evaluator leaves them out.
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    def __init__(self, answer_types: Sequence[str], question_types: Sequence[str], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.answer_types = list(answer_types)
        self.question_types = list(question_types)
        for name in ("accuracy", "question_id", "answer_type", "question_type"):
            self.add_state(name, default=[], dist_reduce_fx="cat")

    def update(
        self,
        pred_index: torch.Tensor,
        gt_answer_index: torch.Tensor,
        question_id: torch.Tensor,
        answer_type: torch.Tensor,
        question_type: torch.Tensor,
    ) -> None:
        self.accuracy.append(batch_accuracy(pred_index.detach(), gt_answer_index.detach()))
        self.question_id.append(question_id.detach().long().flatten())
        self.answer_type.append(answer_type.detach().long().flatten())
        self.question_type.append(question_type.detach().long().flatten())

    def compute(self) -> dict[str, Any]:
        question_id = dim_zero_cat(self.question_id)
        if question_id.numel() == 0:
            raise ValueError("VQAAccuracy.compute() called before any update")
        # Keep the first occurrence of every question id.
        unique, inverse = torch.unique(question_id, return_inverse=True)
        position = torch.arange(len(question_id), device=question_id.device)
        first = torch.full((len(unique),), len(question_id), device=question_id.device)
        first = first.scatter_reduce(0, inverse, position, reduce="amin")
        accuracy = dim_zero_cat(self.accuracy)[first]
        answer_type = dim_zero_cat(self.answer_type)[first]
        question_type = dim_zero_cat(self.question_type)[first]
        return {
            "overall": 100 * accuracy.mean(),
            "perAnswerType": _mean_per_type(accuracy, answer_type, self.answer_types),
            "perQuestionType": _mean_per_type(accuracy, question_type, self.question_types),
        }


def _mean_per_type(
    accuracy: torch.Tensor, type_id: torch.Tensor, names: list[str]
) -> dict[str, torch.Tensor]:
    out = {}
    for i, name in enumerate(names):
        selected = type_id == i
        if selected.any():
            out[name] = 100 * accuracy[selected].mean()
    return out
