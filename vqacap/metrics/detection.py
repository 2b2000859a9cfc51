"""Object and attribute detection AP exactly as bottom-up-attention evaluates its Visual Genome detector.

The reference is peteanderson80/bottom-up-attention: `lib/fast_rcnn/test.py` (`test_net`, `test_net_with_gt_boxes`),
`lib/datasets/vg.py` (`_do_python_eval`) and `lib/datasets/vg_eval.py`. What they compute:

- Detections of one image (`test_net`): for every class c >= 1, the class-specific regressed boxes of all proposals
  with their softmax score for c, non-maximum suppression at IoU 0.3 within the class; then at most 400 detections per
  image over all classes: those whose score is >= the 400th highest score (ties may keep a few more).
- Attribute "detections" (`test_net_with_gt_boxes`): the ground-truth boxes are the regions; every (box, attribute a)
  pair is a detection of a scored by the attribute head's probability, no NMS; the same 400-per-image cap.
- AP of one class (`vg_eval`, the VOC code): all detections of the class over all images, sorted by score; each is a true
  positive when its best-overlapping ground-truth box of that class in its image has IoU > 0.5 (strictly) and was not
  already taken, else a false positive (a detection whose best box is taken does not fall back to the second best).
  Areas and intersections use the +1-pixel convention, (x2 - x1 + 1) * (y2 - y1 + 1). AP is the area under the
  precision envelope at every recall change (VOC 2010+, not the 11-point VOC 2007 one). For attributes the ground-truth
  boxes of attribute a are the objects having a among their attributes.
- `_do_python_eval`: mAP is the plain mean over every class of the vocabulary, a class without ground truth counting
  AP 0 (vg_eval returns 0 when npos = 0, and also when a class has no detection); the weighted mAP weights each class by
  its number of ground-truth boxes (npos).

Matching only looks at the detections of one image, in score order, so it is done per image in `update` and only
(score, true positive) pairs are kept; sorting them per class in `compute` gives the same AP as the reference's global
sort (detections with exactly equal scores may be ordered differently: the reference's sort is not stable).

Quirks of the reference not reproduced (the first on request): vg.py writes the detections to the VOC results file
1-based (x + 1) while its Visual Genome ground truth stays 0-based, which shifts every detection by one pixel against
the ground truth (`one_based_detections=True` reproduces it); its results file rounds scores to 3 decimals; its
ground-truth boxes are held as integers (uint16), where the prepared annotations keep float pixels.

Not here: the detector (vqacap.models.detector) and reading the annotations (vqacap.data.detection).
"""

from __future__ import annotations

import math

import torch
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat

from vqacap.models.boxes import box_iou_plus_one, nms_plus_one

NMS_THRESHOLD = 0.3  # cfg.TEST.NMS
MAX_PER_IMAGE = 400  # test_net.py --num_dets
IOU_THRESHOLD = 0.5  # vg_eval ovthresh


def cap_per_image(scores: torch.Tensor, max_per_image: int) -> torch.Tensor:
    """Mask of the detections test_net keeps: all of them, or those scoring >= the max_per_image-th highest score."""
    if max_per_image <= 0 or scores.numel() <= max_per_image:
        return torch.ones_like(scores, dtype=torch.bool)
    threshold = torch.topk(scores, max_per_image).values[-1]
    return scores >= threshold


def select_detections(
    class_boxes: torch.Tensor,
    class_scores: torch.Tensor,
    nms_threshold: float = NMS_THRESHOLD,
    max_per_image: int = MAX_PER_IMAGE,
    score_threshold: float = -math.inf,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One image's detections as test_net makes them from the box head's outputs.

    class_boxes (R, C, 4) class-specific boxes in pixels (or (R, 4), one box per proposal for every class); class_scores
    (R, C) softmax probabilities with the background in column 0. Returns boxes (N, 4), scores (N,) and labels (N,) in
    1..C-1, per-class NMS then the per-image cap, ordered by class then score.
    """
    num_classes = class_scores.shape[1]
    out_boxes, out_scores, out_labels = [], [], []
    for c in range(1, num_classes):
        boxes_c = class_boxes[:, c] if class_boxes.dim() == 3 else class_boxes
        scores_c = class_scores[:, c]
        above = scores_c > score_threshold
        boxes_c, scores_c = boxes_c[above], scores_c[above]
        keep = nms_plus_one(boxes_c, scores_c, nms_threshold)
        out_boxes.append(boxes_c[keep])
        out_scores.append(scores_c[keep])
        out_labels.append(torch.full((len(keep),), c, dtype=torch.int64, device=class_scores.device))
    boxes = torch.cat(out_boxes) if out_boxes else class_scores.new_zeros((0, 4))
    scores = torch.cat(out_scores) if out_scores else class_scores.new_zeros((0,))
    labels = torch.cat(out_labels) if out_labels else class_scores.new_zeros((0,), dtype=torch.int64)
    keep = cap_per_image(scores, max_per_image)
    return boxes[keep], scores[keep], labels[keep]


def match_detections(
    det_boxes: torch.Tensor,
    det_scores: torch.Tensor,
    gt_boxes: torch.Tensor,
    iou_threshold: float = IOU_THRESHOLD,
) -> torch.Tensor:
    """True-positive flags (N,) of one image's detections of one class against its ground truth of that class.

    Detections are visited by decreasing score (ties in the given order); each takes its best-overlapping ground-truth
    box (the first of equal overlaps) when the IoU is > iou_threshold and that box is still free, as vg_eval does.
    """
    tp = torch.zeros(len(det_scores), dtype=torch.bool)
    if len(det_scores) == 0 or len(gt_boxes) == 0:
        return tp
    order = torch.sort(det_scores.cpu(), descending=True, stable=True).indices
    overlaps = box_iou_plus_one(det_boxes.cpu()[order], gt_boxes.cpu())  # (N, G)
    best_iou, best_gt = overlaps.max(dim=1)
    taken = [False] * len(gt_boxes)
    for rank, (iou, g) in enumerate(zip(best_iou.tolist(), best_gt.tolist())):
        if iou > iou_threshold and not taken[g]:
            taken[g] = True
            tp[order[rank]] = True
    return tp


def voc_ap(tp_sorted: torch.Tensor, npos: int) -> float:
    """Continuous VOC AP (2010+) of detections already sorted by decreasing score: area under the precision envelope."""
    if npos == 0 or len(tp_sorted) == 0:
        return 0.0  # vg_eval returns 0 for a class without ground truth or without detections
    tp = torch.cumsum(tp_sorted.double(), 0)
    fp = torch.cumsum((~tp_sorted).double(), 0)
    recall = tp / npos
    precision = tp / torch.clamp(tp + fp, min=torch.finfo(torch.float64).eps)
    mrec = torch.cat([recall.new_zeros(1), recall, recall.new_ones(1)])
    mpre = torch.cat([precision.new_zeros(1), precision, precision.new_zeros(1)])
    # Precision envelope: the best precision at this recall or any higher one.
    mpre = torch.flip(torch.cummax(torch.flip(mpre, [0]), 0).values, [0])
    change = torch.nonzero(mrec[1:] != mrec[:-1]).squeeze(1)
    return float(((mrec[change + 1] - mrec[change]) * mpre[change + 1]).sum())


def average_precisions(
    scores: torch.Tensor, labels: torch.Tensor, tp: torch.Tensor, npos: torch.Tensor
) -> tuple[list[float], float, float]:
    """Per-class AP for classes 1..C-1 (npos (C,)), their mean (a class without ground truth counts 0) and the
    npos-weighted mean."""
    aps = []
    for c in range(1, len(npos)):
        in_class = labels == c
        order = torch.sort(scores[in_class], descending=True, stable=True).indices
        aps.append(voc_ap(tp[in_class][order], int(npos[c])))
    weights = npos[1:].double()
    mean = sum(aps) / len(aps) if aps else 0.0
    weighted = (
        float((torch.tensor(aps, dtype=torch.float64) * weights).sum() / weights.sum())
        if weights.sum()
        else 0.0
    )
    return aps, mean, weighted


class DetectionEvaluator(Metric):
    """Object mAP and attribute mAP as bottom-up-attention reports them (see the module docstring).

    num_classes and num_attributes count index 0 (__background__, __no_attribute__). One `update_detections` and/or one
    `update_attributes` call per image; boxes are pixels (x1, y1, x2, y2) in the image's own coordinates. States are
    concatenated (score, label, true positive) triples and per-class ground-truth counts, so the metric syncs under DDP.
    An image passed twice counts twice.

    `compute()` -> {"mAP", "weighted_mAP", "AP" (per class 1..C-1), "npos", and the same four with an "attribute_" prefix
    when attributes were updated}, python floats.
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    def __init__(
        self,
        num_classes: int,
        num_attributes: int = 0,
        iou_threshold: float = IOU_THRESHOLD,
        max_per_image: int = MAX_PER_IMAGE,
        one_based_detections: bool = False,
    ) -> None:
        super().__init__()
        if num_classes < 2:
            raise ValueError(
                f"num_classes must count the background and at least one class, got {num_classes}"
            )
        self.num_classes = int(num_classes)
        self.num_attributes = int(num_attributes)
        self.iou_threshold = float(iou_threshold)
        self.max_per_image = int(max_per_image)
        self.one_based_detections = bool(one_based_detections)
        for prefix, n in (("object", self.num_classes), ("attribute", self.num_attributes)):
            self.add_state(f"{prefix}_scores", default=[], dist_reduce_fx="cat")
            self.add_state(f"{prefix}_labels", default=[], dist_reduce_fx="cat")
            self.add_state(f"{prefix}_tp", default=[], dist_reduce_fx="cat")
            self.add_state(
                f"{prefix}_npos", default=torch.zeros(max(n, 1), dtype=torch.int64), dist_reduce_fx="sum"
            )
            self.add_state(
                f"{prefix}_images", default=torch.zeros((), dtype=torch.int64), dist_reduce_fx="sum"
            )

    def _shift(self, boxes: torch.Tensor) -> torch.Tensor:
        return boxes + 1 if self.one_based_detections else boxes

    def _append(
        self,
        prefix: str,
        scores: torch.Tensor,
        labels: torch.Tensor,
        tp: torch.Tensor,
        gt_labels: torch.Tensor,
    ) -> None:
        getattr(self, f"{prefix}_scores").append(scores.detach().double().to(self.device))
        getattr(self, f"{prefix}_labels").append(labels.to(self.device, torch.int64))
        getattr(self, f"{prefix}_tp").append(tp.to(self.device))
        npos = getattr(self, f"{prefix}_npos")
        npos += torch.bincount(gt_labels.to(self.device, torch.int64), minlength=len(npos))[: len(npos)]

    def update(
        self,
        gt_boxes: torch.Tensor,
        gt_labels: torch.Tensor | None = None,
        boxes: torch.Tensor | None = None,
        scores: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        gt_attributes: torch.Tensor | None = None,
        attribute_scores: torch.Tensor | None = None,
    ) -> None:
        """One image. Objects (when `boxes` is given): detections boxes (N, 4), scores (N,), labels (N,) in 1..C-1
        against gt_boxes (G, 4), gt_labels (G,). Attributes (when `attribute_scores` is given), predicted on the
        ground-truth boxes: gt_attributes (G, M) attribute indices >= 1 padded with 0 or -1; attribute_scores (G, A)
        with column 0 the "no attribute" class (ignored), or (G, A - 1) without it."""
        if boxes is not None:
            if scores is None or labels is None or gt_labels is None:
                raise ValueError("object detections need boxes, scores, labels and gt_labels")
            self._update_objects(boxes, scores, labels, gt_boxes, gt_labels)
        if attribute_scores is not None:
            if gt_attributes is None:
                raise ValueError("attribute scores need gt_attributes")
            self._update_attributes(gt_boxes, gt_attributes, attribute_scores)

    def update_detections(self, boxes, scores, labels, gt_boxes, gt_labels) -> None:
        """`update` with object detections only."""
        self.update(gt_boxes, gt_labels, boxes=boxes, scores=scores, labels=labels)

    def update_attributes(self, gt_boxes, gt_attributes, attribute_scores) -> None:
        """`update` with attributes only."""
        self.update(gt_boxes, gt_attributes=gt_attributes, attribute_scores=attribute_scores)

    def _update_objects(
        self,
        boxes: torch.Tensor,
        scores: torch.Tensor,
        labels: torch.Tensor,
        gt_boxes: torch.Tensor,
        gt_labels: torch.Tensor,
    ) -> None:
        labels = labels.long().cpu()
        gt_labels = gt_labels.long().cpu()
        for name, values in (("detection labels", labels), ("ground-truth labels", gt_labels)):
            bad = (values < 1) | (values >= self.num_classes)
            if bad.any():
                raise ValueError(f"{name} must lie in 1..{self.num_classes - 1}, got {int(values[bad][0])}")
        keep = cap_per_image(scores.detach().cpu(), self.max_per_image)
        boxes, scores, labels = (
            self._shift(boxes.detach().cpu()[keep]),
            scores.detach().cpu()[keep],
            labels[keep],
        )
        gt_boxes = gt_boxes.detach().cpu()
        tp = torch.zeros(len(scores), dtype=torch.bool)
        for c in labels.unique().tolist():
            det = labels == c
            gt = gt_labels == c
            tp[det] = match_detections(boxes[det], scores[det], gt_boxes[gt], self.iou_threshold)
        self._append("object", scores, labels, tp, gt_labels)
        self.object_images += 1

    def _update_attributes(
        self, gt_boxes: torch.Tensor, gt_attributes: torch.Tensor, attribute_scores: torch.Tensor
    ) -> None:
        if self.num_attributes < 2:
            raise ValueError(
                "update_attributes needs num_attributes >= 2 (the no-attribute class and one attribute)"
            )
        scores = attribute_scores.detach().double().cpu()
        if scores.shape[1] == self.num_attributes - 1:  # as test_net_with_gt_boxes pads the missing column 0
            scores = torch.cat([scores.new_zeros(len(scores), 1), scores], 1)
        if scores.shape != (len(gt_boxes), self.num_attributes):
            raise ValueError(
                f"attribute_scores have shape {tuple(attribute_scores.shape)}, "
                f"expected ({len(gt_boxes)}, {self.num_attributes})"
            )
        gt_attributes = gt_attributes.long().cpu().reshape(len(gt_boxes), -1)
        if gt_attributes.numel() and gt_attributes.max() >= self.num_attributes:
            raise ValueError(
                f"ground-truth attributes must lie in 1..{self.num_attributes - 1}, got {int(gt_attributes.max())}"
            )
        gt_boxes = gt_boxes.detach().cpu()
        # Every (box, attribute >= 1) pair is a detection of that attribute on that box.
        box_index = torch.arange(len(gt_boxes)).repeat_interleave(self.num_attributes - 1)
        labels = torch.arange(1, self.num_attributes).repeat(len(gt_boxes))
        flat = scores[:, 1:].reshape(-1)
        keep = cap_per_image(flat, self.max_per_image)
        box_index, labels, flat = box_index[keep], labels[keep], flat[keep]
        det_boxes = self._shift(gt_boxes[box_index])
        tp = torch.zeros(len(flat), dtype=torch.bool)
        positives = [set(row[row > 0].tolist()) for row in gt_attributes]
        for a in labels.unique().tolist():
            det = labels == a
            has_a = torch.tensor([a in p for p in positives], dtype=torch.bool)
            tp[det] = match_detections(det_boxes[det], flat[det], gt_boxes[has_a], self.iou_threshold)
        # npos counts each object once per attribute it has (duplicates in its list count once, as np.any does).
        gt_labels = torch.tensor([a for p in positives for a in sorted(p)], dtype=torch.int64)
        self._append("attribute", flat, labels, tp, gt_labels)
        self.attribute_images += 1

    def compute(self) -> dict[str, float | list[float] | list[int]]:
        result: dict[str, float | list[float] | list[int]] = {}
        for prefix, key in (("object", ""), ("attribute", "attribute_")):
            if int(getattr(self, f"{prefix}_images")) == 0:
                continue
            states = [getattr(self, f"{prefix}_{s}") for s in ("scores", "labels", "tp")]
            scores, labels, tp = (dim_zero_cat(s).cpu() if len(s) else torch.zeros(0) for s in states)
            npos = getattr(self, f"{prefix}_npos").cpu()
            aps, mean, weighted = average_precisions(scores, labels.long(), tp.bool(), npos)
            result[f"{key}mAP"] = mean
            result[f"{key}weighted_mAP"] = weighted
            result[f"{key}AP"] = aps
            result[f"{key}npos"] = npos[1:].tolist()
        return result
