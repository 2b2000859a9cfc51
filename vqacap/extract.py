"""`vqacap extract`: bottom-up region features from images with a local torchvision Faster R-CNN checkpoint.

A stand-in for the Visual Genome ResNet-101 detector of Anderson et al. (whose Caffe weights are not usable here):
torchvision's `fasterrcnn_resnet50_fpn`, built with `weights=None, weights_backbone=None` and loaded from a state-dict
file on disk (nothing is downloaded). For each image:

1. Regions. Detections after per-class NMS (class score >= 0.05) with score >= --conf-thresh are kept, at most
   --max-boxes of them, best first. If fewer than --min-boxes pass, the best-scoring detections below the threshold top
   them up, then RPN proposals in objectness order, then cells of a regular grid over the image, so every image gets
   at least --min-boxes regions. (A checkpoint trained on another dataset, or random weights as in the tests, may
   detect nothing with confidence: the proposals and the grid are what such images get.) Candidates overlapping an
   already chosen box with IoU > 0.7 are skipped.
2. Features. The ResNet C5 map (stride 32, D = 2048 channels, the dimension of the published bottom-up features) is
   pooled inside each box with `roi_align` to 7 x 7 and averaged to one D-vector per region, as the bottom-up model
   averages its pool5 output.

Boxes are stored in original image pixels (x1, y1, x2, y2) with the image size. Images are processed in batches under
`torch.no_grad` in eval mode; the output depends only on the images and the weights. Images already in the store are
skipped, so an interrupted run resumes. Image ids come from the file names (the last run of digits:
COCO_val2014_000000391895.jpg -> 391895).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch
from torchvision.models.detection import fasterrcnn_resnet50_fpn
from torchvision.ops import box_iou, nms, roi_align
from torchvision.transforms.functional import pil_to_tensor
from tqdm import tqdm

from vqacap.data.store import RegionStoreError, RegionStoreWriter
from vqacap.images import ImageError, open_rgb
from vqacap.prepare.common import image_id_from_name
from vqacap.prepare.features import CHUNK_REGIONS

FEATURE_DIM = 2048  # ResNet-50 C5 channels
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp"}
_DUPLICATE_IOU = 0.7
_POOL = 7


class ExtractError(ValueError):
    """Unusable input (weights, image folder); the message is one line naming the file."""


def load_detector(
    weights: str | os.PathLike, min_size: int = 600, max_size: int = 1000, proposals: int = 300
) -> torch.nn.Module:
    """fasterrcnn_resnet50_fpn with the state dict at `weights` (a plain state dict or {"model": state_dict}).

    `proposals` RPN boxes per image reach the box head: 300 as in the bottom-up test configuration (torchvision's
    default 1000 triples the cost of the box head)."""
    path = Path(weights)
    if not path.is_file():
        raise ExtractError(
            f"{path}: detector weights not found (a local fasterrcnn_resnet50_fpn state dict is needed)"
        )
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many kinds for a file that is not a checkpoint
        raise ExtractError(f"{path}: cannot load a state dict ({type(err).__name__}: {err})") from None
    if isinstance(state, dict) and isinstance(state.get("model"), dict):
        state = state["model"]  # torchvision reference training checkpoints
    cls_score = "roi_heads.box_predictor.cls_score.weight"
    if not isinstance(state, dict) or cls_score not in state:
        raise ExtractError(f"{path}: not a fasterrcnn_resnet50_fpn state dict (no {cls_score})")
    model = fasterrcnn_resnet50_fpn(
        weights=None,
        weights_backbone=None,
        num_classes=state[cls_score].shape[0],
        min_size=min_size,
        max_size=max_size,
        rpn_post_nms_top_n_test=proposals,
    )
    # Without pretrained weights torchvision builds BatchNorm2d instead of FrozenBatchNorm2d; in eval mode they compute
    # the same, and only BatchNorm2d's num_batches_tracked counters are absent from a checkpoint of a frozen model.
    result = model.load_state_dict(state, strict=False)
    missing = [k for k in result.missing_keys if not k.endswith("num_batches_tracked")]
    if missing or result.unexpected_keys:
        first = (missing or result.unexpected_keys)[0]
        raise ExtractError(
            f"{path}: state dict does not fit fasterrcnn_resnet50_fpn "
            f"({len(missing)} missing, {len(result.unexpected_keys)} unexpected keys; first: {first})"
        )
    return model.eval()


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


def image_files(directory: str | os.PathLike) -> list[Path]:
    directory = Path(directory)
    if not directory.is_dir():
        raise ExtractError(f"{directory}: image folder not found")
    return sorted(p for p in directory.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)


def load_image(path: Path) -> torch.Tensor:
    """(3, H, W) float in [0, 1]; `ImageError` for an unusable file (size capped: `vqacap.images.MAX_PIXELS`)."""
    return pil_to_tensor(open_rgb(path)).float().div(255)


def extract(
    images: str | os.PathLike,
    weights: str | os.PathLike,
    out: str | os.PathLike,
    max_boxes: int = 36,
    min_boxes: int = 10,
    conf_thresh: float = 0.2,
    batch_size: int = 4,
    min_size: int = 600,
    max_size: int = 1000,
    proposals: int = 300,
    device: str = "cpu",
    dtype: str = "float16",
    progress: bool = True,
) -> tuple[int, int, list[str]]:
    """Extract every image of the folder not yet in the store. Returns (extracted, skipped, problems)."""
    if not 1 <= min_boxes <= max_boxes:
        raise ExtractError(f"need 1 <= --min-boxes <= --max-boxes, got {min_boxes} and {max_boxes}")
    files = image_files(images)
    model = load_detector(weights, min_size, max_size, proposals).to(device)
    problems: list[str] = []
    extracted = skipped = 0
    seen: dict[int, Path] = {}
    with RegionStoreWriter(out, FEATURE_DIM, dtype=dtype, chunk_regions=CHUNK_REGIONS) as writer:
        todo = []
        for path in files:
            image_id = image_id_from_name(path)
            if image_id is None:
                problems.append(f"{path}: no image id (digits) in the file name")
            elif image_id in seen:
                problems.append(f"{path}: image id {image_id} already taken by {seen[image_id]}")
            elif image_id in writer:
                seen[image_id] = path
                skipped += 1
            else:
                seen[image_id] = path
                todo.append((image_id, path))
        for start in tqdm(range(0, len(todo), batch_size), disable=not progress, unit="batch"):
            batch = []
            for image_id, path in todo[start : start + batch_size]:
                try:
                    batch.append((image_id, load_image(path)))
                except ImageError as err:  # skipped and reported; the rest of the batch goes on
                    problems.append(str(err))
            if not batch:
                continue
            results = extract_batch(
                model,
                [t.to(device) for _, t in batch],
                max_boxes=max_boxes,
                min_boxes=min_boxes,
                conf_thresh=conf_thresh,
            )
            for (image_id, tensor), (features, boxes) in zip(batch, results):
                height, width = tensor.shape[-2:]
                try:
                    writer.add(image_id, features.float().cpu().numpy(), boxes.cpu().numpy(), width, height)
                    extracted += 1
                except RegionStoreError as err:
                    problems.append(str(err))
    return extracted, skipped, problems


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--images", required=True, metavar="DIR", help="folder of .jpg/.png images named by id"
    )
    parser.add_argument(
        "--weights", required=True, metavar="CKPT", help="local fasterrcnn_resnet50_fpn state dict"
    )
    parser.add_argument(
        "--out", required=True, metavar="STORE", help="region-feature store to create or extend"
    )
    parser.add_argument("--max-boxes", type=int, default=36, help="at most this many regions per image")
    parser.add_argument("--min-boxes", type=int, default=10, help="at least this many regions per image")
    parser.add_argument("--conf-thresh", type=float, default=0.2, help="detection score to keep a box")
    parser.add_argument("--batch-size", type=int, default=4, help="images per forward pass")
    parser.add_argument("--min-size", type=int, default=600, help="shorter image side fed to the detector")
    parser.add_argument("--max-size", type=int, default=1000, help="longest image side fed to the detector")
    parser.add_argument(
        "--proposals", type=int, default=300, help="RPN proposals per image scored by the box head"
    )
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument(
        "--dtype", choices=("float16", "float32"), default="float16", help="stored feature dtype"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    try:
        extracted, skipped, problems = extract(
            args.images,
            args.weights,
            args.out,
            max_boxes=args.max_boxes,
            min_boxes=args.min_boxes,
            conf_thresh=args.conf_thresh,
            batch_size=args.batch_size,
            min_size=args.min_size,
            max_size=args.max_size,
            proposals=args.proposals,
            device=args.device,
            dtype=args.dtype,
            progress=not args.no_progress,
        )
    except (ExtractError, RegionStoreError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(
        f"{args.out}: extracted {extracted}, skipped {skipped} already in the store, problems {len(problems)}"
    )
    for problem in problems:
        print(f"  {problem}")
    return 0 if extracted + skipped > 0 else 1
