"""Which regions of an image a captioner or VQA model attends over, chosen from a detector's outputs: bottom-up-
attention's generate_tsv.py choice (`select_proposals`, `bottom_up_batch`: per-class NMS over the RPN proposals, a
score threshold, 10-100 or a fixed count), grid cells (`grid_batch`), and the torchvision Faster R-CNN stand-in's
choice (`extract_batch`, `select_regions`). `select_proposals_batch` / `bottom_up_regions` are generate_tsv's choice
for a whole batch on the device, padded (`ChosenRegions`), equal to the per-image form bit for bit. Used by
extraction, by `vqacap caption` / `answer` and by the benchmarks; docs/detector.md (Extraction) describes each rule.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch.nn.utils.rnn import pad_sequence
from torchvision.ops import box_iou, nms, roi_align

from vqacap.models.boxes import class_nms_plus_one, class_nms_plus_one_batch

FEATURE_DIM = 2048  # ResNet-50 C5 channels
_DUPLICATE_IOU = 0.7
_POOL = 7


ADAPTIVE_BOXES = (10, 100)  # MIN_BOXES, MAX_BOXES of generate_tsv.py
CONF_THRESH = 0.2  # conf_thresh of generate_tsv.py
NMS_THRESHOLD = 0.3  # cfg.TEST.NMS
DETECTOR_FIELDS = {
    "object_labels": "int32",
    "object_scores": "float32",
    "attribute_labels": "int32",
    "attribute_scores": "float32",
}


class RegionChoiceError(ValueError):
    """A region choice the detector cannot give (a grid finer than its feature map); the message is one line."""


def check_grid(model: torch.nn.Module, grid: int | None) -> None:
    """`RegionChoiceError` for a grid finer than any image's feature map (the pooling would repeat cells: --grid 1000
    wrote 1,000,000 cells per image)."""
    if grid is not None and grid > model.max_grid():
        raise RegionChoiceError(
            f"--grid {grid}: the detector's feature map has at most {model.max_grid()} x {model.max_grid()} cells "
            f"(shorter side {model.min_side} pixels); give --grid {model.max_grid()} or less"
        )


# One image's regions: features (k, D), boxes (k, 4) in original pixels, optional per-region fields.
Extracted = tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor] | None]


@torch.no_grad()
def extract_batch(
    model: torch.nn.Module,
    images: list[torch.Tensor],
    max_boxes: int = 36,
    min_boxes: int = 10,
    conf_thresh: float = 0.2,
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Images (3, H, W) in [0, 1] -> per image features (k, D) and boxes (k, 4) in original pixels.

    min_boxes <= k <= max_boxes."""
    image_list, _ = model.transform(images)
    body = model.backbone.body(image_list.tensors)  # ResNet C2..C5 as "0".."3"
    fpn = model.backbone.fpn(body)
    proposals, _ = model.rpn(image_list, fpn)
    detections, _ = model.roi_heads(fpn, proposals, image_list.image_sizes)
    c5 = body["3"]  # (B, D, H/32, W/32)
    regions = [
        select_regions(det["boxes"], det["scores"], props, size, max_boxes, min_boxes, conf_thresh)
        for det, props, size in zip(detections, proposals, image_list.image_sizes)
    ]
    pooled = roi_align(
        c5,
        regions,
        output_size=_POOL,
        spatial_scale=c5.shape[-1] / image_list.tensors.shape[-1],
        sampling_ratio=2,
        aligned=True,
    )  # (sum k, D, 7, 7)
    features = pooled.mean(dim=(2, 3)).split([len(r) for r in regions])  # (k, D) per image
    out = []
    for feats, boxes, (h, w), image in zip(features, regions, image_list.image_sizes, images):
        height, width = image.shape[-2:]
        scale = boxes.new_tensor([width / w, height / h, width / w, height / h])
        boxes = boxes * scale
        boxes[:, 0::2] = boxes[:, 0::2].clamp(0, width)
        boxes[:, 1::2] = boxes[:, 1::2].clamp(0, height)
        out.append((feats, boxes))
    return out


def select_regions(
    det_boxes: torch.Tensor,
    det_scores: torch.Tensor,
    proposals: torch.Tensor,
    image_size: tuple[int, int],
    max_boxes: int,
    min_boxes: int,
    conf_thresh: float,
) -> torch.Tensor:
    """Boxes (k, 4) of one image, in the detector's input pixels; see the module docstring for the order of preference."""
    confident = det_scores >= conf_thresh
    candidates = torch.cat([det_boxes[confident], det_boxes[~confident], proposals])
    n_confident = int(confident.sum())
    # NMS with scores that encode the preference order: earlier candidates win over later overlapping ones.
    rank = torch.arange(len(candidates), 0, -1, dtype=torch.float32, device=candidates.device)
    keep = (
        nms(candidates, rank, _DUPLICATE_IOU)
        if len(candidates)
        else candidates.new_zeros(0, dtype=torch.long)
    )
    chosen = keep[keep < n_confident][:max_boxes]
    if len(chosen) < min_boxes:
        chosen = torch.cat([chosen, keep[keep >= n_confident][: min_boxes - len(chosen)]])
    boxes = candidates[chosen]
    if len(boxes) < min_boxes:
        grid = grid_boxes(image_size, min_boxes).to(boxes)
        if len(boxes):
            grid = grid[box_iou(grid, boxes).max(dim=1).values <= _DUPLICATE_IOU]
        boxes = torch.cat([boxes, grid[: min_boxes - len(boxes)]])
    return boxes


def grid_boxes(image_size: tuple[int, int], n: int) -> torch.Tensor:
    """The whole image, then the cells of finer and finer square grids, until there are at least n boxes."""
    h, w = image_size
    boxes = []
    g = 1
    while len(boxes) < n:
        for i in range(g):
            for j in range(g):
                boxes.append([j * w / g, i * h / g, (j + 1) * w / g, (i + 1) * h / g])
        g += 1
    return torch.tensor(boxes, dtype=torch.float32)


# -- the bottom-up detector, as generate_tsv.py --------------------------------------------------------------------
def select_proposals(
    proposals: torch.Tensor,
    class_probs: torch.Tensor,
    conf_thresh: float = CONF_THRESH,
    min_boxes: int = ADAPTIVE_BOXES[0],
    max_boxes: int = ADAPTIVE_BOXES[1],
    nms_threshold: float = NMS_THRESHOLD,
) -> torch.Tensor:
    """Indices of the proposals generate_tsv keeps (see the module docstring); proposals (R, 4), class_probs (R, C + 1)
    with the background in column 0."""
    scores = class_probs[:, 1:]  # (R, C)
    # Every class at once (one NMS per class made the class loop the bulk of extraction time).
    kept = class_nms_plus_one(proposals, scores, nms_threshold)  # (R, C)
    max_conf = torch.where(kept, scores, 0).amax(dim=1)
    keep = torch.nonzero(max_conf >= conf_thresh).squeeze(1)
    if min_boxes <= len(keep) <= max_boxes:
        return keep
    # generate_tsv's np.argsort(max_conf)[::-1]: ascending, then reversed, so equal scores go last index first.
    best = torch.sort(max_conf, stable=True).indices.flip(0)
    return best[:min_boxes] if len(keep) < min_boxes else best[:max_boxes]


@torch.no_grad()
def bottom_up_batch(
    detector: torch.nn.Module,
    images: list[torch.Tensor],
    conf_thresh: float = CONF_THRESH,
    min_boxes: int = ADAPTIVE_BOXES[0],
    max_boxes: int = ADAPTIVE_BOXES[1],
) -> list[Extracted]:
    """Images (3, H, W) in [0, 1] -> per image the kept proposals' features, boxes and predicted labels."""
    out = []
    for image, r in zip(images, detector.regions(images)):
        keep = select_proposals(r.boxes, r.class_probs, conf_thresh, min_boxes, max_boxes)
        object_scores, object_labels = r.class_probs[keep, 1:].max(dim=1)
        attribute_scores, attribute_labels = r.attribute_probs[keep, 1:].max(dim=1)
        fields = {
            "object_labels": object_labels + 1,
            "object_scores": object_scores,
            "attribute_labels": attribute_labels + 1,
            "attribute_scores": attribute_scores,
        }
        out.append((r.features[keep], _clamp(r.boxes[keep], image), fields))
    return out


# -- the same choice for a batch, on the device ----------------------------------------------------------------------
@dataclass
class ChosenRegions:
    """The regions of B images padded to K: image b's are [b, :counts[b]], the rest zeros."""

    features: torch.Tensor  # (B, K, D)
    boxes: torch.Tensor  # (B, K, 4) in each image's pixels
    fields: dict[str, torch.Tensor] | None  # (B, K) each: DETECTOR_FIELDS, or None
    counts: torch.Tensor  # (B,) k_b

    def tensors(self) -> dict[str, torch.Tensor]:
        return {"features": self.features, "boxes": self.boxes, "counts": self.counts, **(self.fields or {})}

    @classmethod
    def of(cls, tensors: dict[str, torch.Tensor]) -> ChosenRegions:
        """The inverse of `tensors`."""
        named = dict(tensors)
        features, boxes, counts = named.pop("features"), named.pop("boxes"), named.pop("counts")
        return cls(features, boxes, named or None, counts)

    def to(self, device: torch.device | str) -> ChosenRegions:
        return ChosenRegions.of({n: t.to(device) for n, t in self.tensors().items()})

    @classmethod
    def stack(cls, found: list[Extracted]) -> ChosenRegions:
        """Per-image regions (as `bottom_up_batch`, `grid_batch`, `extract_batch` give them) padded into one batch."""
        names = found[0][2]
        fields = None if names is None else {n: _padded([f[n] for *_, f in found]) for n in names}
        return cls(
            _padded([features for features, _, _ in found]),
            _padded([boxes for _, boxes, _ in found]),
            fields,
            torch.tensor([len(features) for features, _, _ in found]),
        )

    def unpadded(self) -> list[Extracted]:
        """Per image features (k, D), boxes (k, 4), fields (k,): the per-image form (one read of the counts)."""
        return [
            (
                self.features[b, :k],
                self.boxes[b, :k],
                None if self.fields is None else {n: v[b, :k] for n, v in self.fields.items()},
            )
            for b, k in enumerate(self.counts.tolist())
        ]


def select_proposals_batch(
    proposals: torch.Tensor,
    class_probs: torch.Tensor,
    valid: torch.Tensor,
    conf_thresh: float = CONF_THRESH,
    min_boxes: int = ADAPTIVE_BOXES[0],
    max_boxes: int = ADAPTIVE_BOXES[1],
    nms_threshold: float = NMS_THRESHOLD,
) -> tuple[torch.Tensor, torch.Tensor]:
    """`select_proposals` of B images at once: proposals (B, R, 4), class_probs (B, R, C + 1), valid (B, R) marking
    each image's real proposals -> indices (B, max_boxes) and counts (B,): image b keeps indices[b, :counts[b]],
    exactly select_proposals' indices in its order. No `nonzero`, no length of data, no branch on the host: a GPU runs
    it without waiting."""
    scores = class_probs[..., 1:]  # (B, R, C)
    kept = class_nms_plus_one_batch(proposals, scores, valid, nms_threshold)
    max_conf = torch.where(kept, scores, 0).amax(dim=2).masked_fill(~valid, -math.inf)  # (B, R)
    above = (max_conf >= conf_thresh) & valid
    n_above, n_valid = above.sum(dim=1), valid.sum(dim=1)
    in_range = (n_above >= min_boxes) & (n_above <= max_boxes)
    # The above-threshold indices in ascending order: a stable sort puts them first.
    thresholded = torch.sort((~above).to(torch.uint8), dim=1, stable=True).indices
    # generate_tsv's order, as select_proposals; padding (-inf) sorts first, so last once flipped.
    best = torch.sort(max_conf, dim=1, stable=True).indices.flip(1)
    indices = torch.where(in_range[:, None], thresholded, best)[:, :max_boxes]
    # Fewer than max_boxes proposals: index 0 in the slots past every count.
    indices = torch.nn.functional.pad(indices, (0, max_boxes - indices.shape[1]))
    limit = torch.where(n_above < min_boxes, n_valid.clamp(max=min_boxes), n_valid.clamp(max=max_boxes))
    return indices, torch.where(in_range, n_above, limit)


@torch.no_grad()
def bottom_up_regions(
    detector: torch.nn.Module,
    images: list[torch.Tensor],
    conf_thresh: float = CONF_THRESH,
    min_boxes: int = ADAPTIVE_BOXES[0],
    max_boxes: int = ADAPTIVE_BOXES[1],
) -> ChosenRegions:
    """`bottom_up_batch` for the whole batch on the detector's device (`select_proposals_batch`): the same regions,
    padded to max_boxes, so that the host reads them in one copy."""
    found = detector.regions(images)
    proposals = _padded([r.boxes for r in found])  # (B, R, 4)
    class_probs = _padded([r.class_probs for r in found])  # (B, R, C + 1)
    valid = torch.zeros(proposals.shape[:2], dtype=torch.bool, device=proposals.device)
    for b, r in enumerate(found):
        valid[b, : len(r.boxes)] = True
    indices, counts = select_proposals_batch(
        proposals, class_probs, valid, conf_thresh, min_boxes, max_boxes
    )  # (B, K), (B,)
    chosen = torch.arange(max_boxes, device=counts.device)[None, :] < counts[:, None]  # (B, K)
    rows = torch.arange(len(found), device=indices.device)[:, None]

    def gather(padded: torch.Tensor) -> torch.Tensor:  # (B, R, ...) -> (B, K, ...), zeros past each count
        picked = padded[rows, indices]
        return torch.where(chosen.view(*chosen.shape, *[1] * (picked.dim() - 2)), picked, 0)

    boxes = gather(proposals)
    for b, image in enumerate(images):
        height, width = image.shape[-2:]
        boxes[b, :, 0::2] = boxes[b, :, 0::2].clamp(0, width)
        boxes[b, :, 1::2] = boxes[b, :, 1::2].clamp(0, height)
    object_scores, object_labels = gather(class_probs)[..., 1:].max(dim=2)
    attributes = _padded([r.attribute_probs for r in found])
    attribute_scores, attribute_labels = gather(attributes)[..., 1:].max(dim=2)
    fields = {
        "object_labels": torch.where(chosen, object_labels + 1, 0),
        "object_scores": object_scores,
        "attribute_labels": torch.where(chosen, attribute_labels + 1, 0),
        "attribute_scores": attribute_scores,
    }
    features = gather(_padded([r.features for r in found]))
    return ChosenRegions(features, boxes, fields, counts)


@torch.no_grad()
def grid_batch(detector: torch.nn.Module, images: list[torch.Tensor], n: int) -> list[Extracted]:
    """Images -> per image the n x n cells of the detector's res5 map as regions."""
    return [(g.features, _clamp(g.boxes, image), None) for image, g in zip(images, detector.grid(images, n))]


def _padded(tensors: list[torch.Tensor]) -> torch.Tensor:
    """(R_b, ...) each -> (B, max(R_b, 1), ...) zero-padded: at least one row, so that a gather has one to index."""
    out = pad_sequence(tensors, batch_first=True)
    return out if out.shape[1] else out.new_zeros(out.shape[0], 1, *out.shape[2:])


def _clamp(boxes: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
    height, width = image.shape[-2:]
    boxes = boxes.clone()
    boxes[:, 0::2] = boxes[:, 0::2].clamp(0, width)
    boxes[:, 1::2] = boxes[:, 1::2].clamp(0, height)
    return boxes
