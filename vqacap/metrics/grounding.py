"""Grounding accuracy: how often the most attended region is the object the model is talking or asked about.

A *grounded item* is a caption word or a question that names one object of the scene, whose box is known:

- captioning: a shape word of the generated caption whose (colour, shape) - the colour being the word just before it,
  "a large red circle" - matches exactly one object of the scene (`scenes_<split>.json` of Shapes);
- VQA: a question about a single object (`target_box` in the Shapes annotations).

The item is a hit when the region with the largest attention weight, at the step that emits the word (captioning) or
for the question (VQA), overlaps the object's box with IoU >= 0.5. The accuracy is hits / grounded items. Real datasets
have no scenes, so the metric is simply not updated there. Not here: attention maps (`vqacap.draw`).

Dims: B examples (images or questions), T items per example (caption words; 1 for a question), K regions.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat


def box_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Element-wise IoU of boxes (..., 4) and (..., 4) given as x1, y1, x2, y2; 0 where both are empty."""
    width = (torch.minimum(a[..., 2], b[..., 2]) - torch.maximum(a[..., 0], b[..., 0])).clamp(min=0)
    height = (torch.minimum(a[..., 3], b[..., 3]) - torch.maximum(a[..., 1], b[..., 1])).clamp(min=0)
    inter = width * height
    area_a = (a[..., 2] - a[..., 0]).clamp(min=0) * (a[..., 3] - a[..., 1]).clamp(min=0)
    area_b = (b[..., 2] - b[..., 0]).clamp(min=0) * (b[..., 3] - b[..., 1]).clamp(min=0)
    union = area_a + area_b - inter
    return torch.where(union > 0, inter / union.clamp(min=1e-12), torch.zeros_like(inter))


def named_objects(words: Sequence[str], objects: Sequence[dict]) -> list[list[float] | None]:
    """For each word, the box of the one scene object it names, else None.

    A word names an object when it is the object's `shape`, the previous word is a `colour`, and exactly one object of
    the scene has that colour and shape. `objects` are Shapes scene records {"shape", "colour", "box", ...}.
    """
    out: list[list[float] | None] = [None] * len(words)
    for t in range(1, len(words)):
        matches = [o for o in objects if o["shape"] == words[t] and o["colour"] == words[t - 1]]
        if len(matches) == 1:
            out[t] = list(matches[0]["box"])
    return out


def caption_targets(
    words: Sequence[Sequence[str]], scenes: Sequence[Sequence[dict]], length: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Target boxes (B, length, 4) and grounded mask (B, length) of B generated captions given as word lists."""
    targets = torch.zeros(len(words), length, 4)
    mask = torch.zeros(len(words), length, dtype=torch.bool)
    for b, (caption, objects) in enumerate(zip(words, scenes)):
        for t, box in enumerate(named_objects(caption[:length], objects)):
            if box is not None:
                targets[b, t] = torch.tensor(box)
                mask[b, t] = True
    return targets, mask


class GroundingAccuracy(Metric):
    """Fraction of grounded items whose most attended region has IoU >= `iou_threshold` with the item's object.

    `update(attention, boxes, target_boxes, grounded, example_ids)`: attention (B, T, K) weights (0 on padded regions),
    boxes (B, K, 4) region boxes, target_boxes (B, T, 4) the named objects' boxes, grounded (B, T) bool which items name
    one object, example_ids (B,) image or question ids. An example seen more than once (the DistributedSampler pads every
    rank to the same length by repeating examples) counts once. States are tensors concatenated across ranks.

    `compute()` -> the accuracy in [0, 1]; NaN when no item was grounded.
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    def __init__(self, iou_threshold: float = 0.5, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.iou_threshold = iou_threshold
        for name in ("example_id", "hits", "grounded"):
            self.add_state(name, default=[], dist_reduce_fx="cat")

    def update(
        self,
        attention: torch.Tensor,
        boxes: torch.Tensor,
        target_boxes: torch.Tensor,
        grounded: torch.Tensor,
        example_ids: torch.Tensor,
    ) -> None:
        top = attention.detach().argmax(dim=-1)  # (B, T) most attended region
        chosen = boxes.detach().gather(1, top.unsqueeze(-1).expand(-1, -1, 4))  # (B, T, 4)
        grounded = grounded.to(top.device).bool()
        hit = (box_iou(chosen.float(), target_boxes.to(chosen).float()) >= self.iou_threshold) & grounded
        self.example_id.append(example_ids.detach().long().flatten().to(top.device))
        self.hits.append(hit.sum(dim=1))  # (B,)
        self.grounded.append(grounded.sum(dim=1))  # (B,)

    def compute(self) -> torch.Tensor:
        if isinstance(self.example_id, list) and not self.example_id:
            return torch.tensor(float("nan"), device=self.device)
        example_id = dim_zero_cat(self.example_id)
        # Keep the first occurrence of every example id: a stable sort puts it first in its run of equal ids.
        order = torch.argsort(example_id, stable=True)
        ids = example_id[order]
        starts_run = torch.ones_like(ids, dtype=torch.bool)
        starts_run[1:] = ids[1:] != ids[:-1]
        first = order[starts_run]
        hits = dim_zero_cat(self.hits)[first].sum()
        grounded = dim_zero_cat(self.grounded)[first].sum()
        if grounded == 0:
            return torch.tensor(float("nan"), device=example_id.device)
        return hits.double() / grounded.double()

    def compute_and_reset(self) -> float | None:
        """The accuracy, then a reset for the next epoch; None when there was no update or nothing was grounded.

        Every rank must call it (the states are gathered), and every rank gets the same answer.
        """
        if not self.update_called:
            return None
        accuracy = self.compute()
        self.reset()
        return None if accuracy.isnan() else accuracy.item()
