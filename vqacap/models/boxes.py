"""Box operations in the +1-pixel convention of bottom-up-attention's Caffe code and VOC evaluation: IoU and greedy
NMS as its `nms`, for one class or every class of the same boxes at once. Used by the detector (proposals), the
region choice (generate_tsv's per-class NMS) and the detection metric.
"""

from __future__ import annotations

import math

import torch
from torchvision.ops import box_iou, nms


def box_iou_plus_one(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """IoU of (N, 4) and (M, 4) pixel boxes with the +1-pixel convention of the VOC code, (N, M) float64."""
    a, b = a.double(), b.double()
    iw = (
        torch.minimum(a[:, None, 2], b[None, :, 2]) - torch.maximum(a[:, None, 0], b[None, :, 0]) + 1
    ).clamp(min=0)
    ih = (
        torch.minimum(a[:, None, 3], b[None, :, 3]) - torch.maximum(a[:, None, 1], b[None, :, 1]) + 1
    ).clamp(min=0)
    inter = iw * ih
    area_a = (a[:, 2] - a[:, 0] + 1) * (a[:, 3] - a[:, 1] + 1)
    area_b = (b[:, 2] - b[:, 0] + 1) * (b[:, 3] - b[:, 1] + 1)
    return inter / (area_a[:, None] + area_b[None, :] - inter)


def nms_plus_one(boxes: torch.Tensor, scores: torch.Tensor, threshold: float) -> torch.Tensor:
    """Greedy NMS as the reference's `nms` (+1-pixel areas; a box is dropped when its IoU with a kept one is > threshold).

    The +1 convention on (x1, y1, x2, y2) is the plain convention on (x1, y1, x2 + 1, y2 + 1), so torchvision's kernel
    computes it. Returns the kept indices, highest score first.
    """
    return nms(_plus_one(boxes), scores.float(), threshold)


def _plus_one(boxes: torch.Tensor) -> torch.Tensor:
    return boxes.float() + boxes.new_tensor([0.0, 0.0, 1.0, 1.0], dtype=torch.float32)


def class_nms_plus_one(boxes: torch.Tensor, class_scores: torch.Tensor, threshold: float) -> torch.Tensor:
    """`nms_plus_one` of the same boxes (R, 4) under each column of class_scores (R, C) at once: kept mask (R, C).

    kept[:, c] marks exactly the indices nms_plus_one(boxes, class_scores[:, c], threshold) returns on the CPU: the
    IoU is computed in float32 on the shifted boxes by torchvision's formula and compared in float64, as its CPU
    kernel does, and each class visits its boxes by descending score, ties in index order (a stable sort, as there).
    The result is the same on every device (torchvision's CUDA kernel compares in float32 and leaves the order of tied
    scores unspecified, so nms_plus_one on a GPU can differ on ties and where an IoU rounds to the threshold).
    """
    shifted = _plus_one(boxes)
    # (R, R): torchvision's box_iou is its NMS kernel's float32 formula, compared in float64 as that kernel does.
    suppresses = box_iou(shifted, shifted).double() > threshold
    # Row R suppresses nothing: a class whose box of the current rank is already removed points there.
    suppresses = torch.cat([suppresses, suppresses.new_zeros(1, len(boxes))])
    order = torch.sort(class_scores.float().t(), dim=1, descending=True, stable=True).indices  # (C, R)
    classes = torch.arange(order.shape[0], device=order.device)
    removed = torch.zeros(order.shape, dtype=torch.bool, device=order.device)  # (C, R)
    kept = torch.zeros_like(removed)
    # Greedy NMS of all classes in step, one rank at a time: R steps of (C, R) tensor work instead of C NMS calls,
    # as the boxes (so the IoUs) are the same for every class and only the visiting order differs.
    for rank in range(order.shape[1]):
        box = order[:, rank]  # (C,) each class's rank-th best box
        alive = ~removed[classes, box]
        kept[classes, box] = alive
        removed |= suppresses[torch.where(alive, box, len(boxes))]
    return kept.t()


def class_nms_plus_one_batch(
    boxes: torch.Tensor, class_scores: torch.Tensor, valid: torch.Tensor, threshold: float
) -> torch.Tensor:
    """`class_nms_plus_one` of B images at once, padded: boxes (B, R, 4), class_scores (B, R, C), valid (B, R) marks
    each image's real boxes (its first R_b). Kept mask (B, R, C), equal to class_nms_plus_one of each image's real
    boxes and False on padding; it asks the host nothing about the data, so a GPU runs it without waiting."""
    b, r, c = class_scores.shape
    shifted = boxes.float().clone()
    shifted[..., 2:] += 1  # _plus_one's shift, without a host-to-device copy of the offsets
    pairs = valid[:, :, None] & valid[:, None, :]
    iou = torch.stack([box_iou(s, s) for s in shifted]) if b else boxes.new_zeros(0, r, r)  # (B, R, R)
    suppresses = (iou.double() > threshold) & pairs
    suppresses = torch.cat([suppresses, suppresses.new_zeros(b, 1, r)], dim=1)  # row R suppresses nothing
    # Padding scores -inf: each class visits an image's padded boxes after all its real ones, which they never touch.
    scores = class_scores.float().masked_fill(~valid[..., None], -math.inf).transpose(1, 2)  # (B, C, R)
    order = torch.sort(scores, dim=2, descending=True, stable=True).indices  # (B, C, R)
    images = torch.arange(b, device=order.device)[:, None]
    classes = torch.arange(c, device=order.device)[None, :]
    removed = torch.zeros(order.shape, dtype=torch.bool, device=order.device)  # (B, C, R)
    kept = torch.zeros_like(removed)
    for rank in range(r):
        box = order[:, :, rank]  # (B, C)
        alive = ~removed[images, classes, box]
        kept[images, classes, box] = alive
        removed |= suppresses[images, torch.where(alive, box, r)]
    return (kept & valid[:, None, :]).transpose(1, 2)
