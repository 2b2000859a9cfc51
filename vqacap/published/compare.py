"""A region store against a released bottom-up TSV (image_id, image_w, image_h, num_boxes, boxes, features): per image
present in both, how the boxes match and how far the features of matched boxes are, so that a user with the published
weights can check on their own machine that vqacap's extraction equals the released features."""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch
from torchvision.ops import box_iou

from vqacap.data.store import RegionStore
from vqacap.prepare.features import CorruptRow, tsv_source

MATCH_IOU = 0.99  # a box "matches" when it overlaps a released box at least this much


@dataclass
class ImageComparison:
    image_id: int
    boxes: int  # in the store
    released: int  # in the TSV
    matched: int  # released boxes with a store box at IoU >= MATCH_IOU
    same_order: bool  # box i matches released box i for every i
    mean_iou: float  # mean over released boxes of the best IoU
    min_cosine: float  # features of matched pairs
    max_abs: float

    def line(self) -> str:
        return (
            f"image {self.image_id}: boxes {self.boxes} vs {self.released} released, matched {self.matched} "
            f"(IoU >= {MATCH_IOU}), {'same' if self.same_order else 'other'} order, mean best IoU "
            f"{self.mean_iou:.4f}, feature cosine >= {self.min_cosine:.6f}, max |diff| {self.max_abs:.3g}"
        )


def compare_image(
    image_id: int, boxes: np.ndarray, features: np.ndarray, tsv_boxes: np.ndarray, tsv_features: np.ndarray
) -> ImageComparison:
    """Boxes (k, 4) / features (k, D) of one image against the released (n, 4) / (n, D)."""
    iou = box_iou(
        torch.tensor(tsv_boxes, dtype=torch.float64), torch.tensor(boxes, dtype=torch.float64)
    )  # (n, k)
    best, which = (
        iou.max(dim=1) if iou.numel() else (torch.zeros(len(tsv_boxes)), torch.zeros(0, dtype=torch.long))
    )
    matched = best >= MATCH_IOU
    ours = features[which[matched].numpy()].astype(np.float64)
    theirs = tsv_features[matched.numpy()].astype(np.float64)
    if len(ours):
        norms = np.linalg.norm(ours, axis=1) * np.linalg.norm(theirs, axis=1)
        cosine = float(np.min(np.sum(ours * theirs, axis=1) / np.maximum(norms, 1e-12)))
        max_abs = float(np.abs(ours - theirs).max())
    else:
        cosine, max_abs = float("nan"), float("nan")
    same = len(boxes) == len(tsv_boxes) and bool(
        matched.all() and torch.equal(which, torch.arange(len(tsv_boxes)))
    )
    return ImageComparison(
        image_id, len(boxes), len(tsv_boxes), int(matched.sum()), same, float(best.mean()), cosine, max_abs
    )


def compare_store_with_tsv(
    store: str | os.PathLike, tsv: list[str | os.PathLike]
) -> tuple[list[ImageComparison], list[str]]:
    """One comparison per image in both (TSV order); problems: unreadable TSV rows, named by file and line."""
    results, problems = [], []
    regions = RegionStore(store)
    try:
        for row in tsv_source(list(tsv)).rows:
            if row.image_id is None or row.image_id not in regions:
                continue
            try:
                tsv_features, tsv_boxes, _, _ = row.load()
            except CorruptRow as err:
                problems.append(f"{row.where}: {err}")
                continue
            features, boxes = regions.read(row.image_id)
            if features.shape[1] != tsv_features.shape[1]:
                problems.append(
                    f"{row.where}: {tsv_features.shape[1]}-d released features, the store has {features.shape[1]}-d"
                )
                continue
            results.append(compare_image(row.image_id, boxes, features, tsv_boxes, tsv_features))
    finally:
        regions.close()
    return results, problems


def summary(results: list[ImageComparison]) -> str:
    if not results:
        return "no image is in both the store and the TSV"
    boxes = sum(r.released for r in results)
    matched = sum(r.matched for r in results)
    return (
        f"{len(results)} images in both: {matched}/{boxes} released boxes matched, "
        f"{sum(r.same_order for r in results)} images with the same boxes in the same order, "
        f"feature cosine >= {np.nanmin([r.min_cosine for r in results]):.6f}, "
        f"max |diff| {np.nanmax([r.max_abs for r in results]):.3g}"
    )
