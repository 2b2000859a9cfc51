"""`vqacap extract`: bottom-up region features from images into a region store, with the bottom-up detector trained
here (`--detector`: regions chosen as bottom-up-attention's generate_tsv.py chooses them, or `--grid N` cells) or with
a local torchvision Faster R-CNN state dict (`--weights`). Batched, resumable, nothing downloaded.

The region choice, the stored fields and the `--weights` stand-in: docs/detector.md (Extraction); the published
Caffe model's files: docs/published-detector.md. Both run through Lightning's `Trainer.predict` (vqacap.extraction):
`--devices N --num-nodes M` extract on N x M processes, each into its own shard store, merged into `--out` at the end;
a rerun with any number of processes extracts only what no shard or store holds yet (docs/cluster-extraction.md).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torchvision.models.detection import fasterrcnn_resnet50_fpn
from torchvision.ops import box_iou, nms, roi_align
from torchvision.transforms.functional import pil_to_tensor

from vqacap.data.store import RegionStoreError, StoreWriteError, exit_after_failed_write
from vqacap.extraction.settings import add_trainer_arguments, is_global_zero, trainer_options
from vqacap.images import open_rgb
from vqacap.metrics.detection import class_nms_plus_one
from vqacap.published import add_detector_file_arguments

FEATURE_DIM = 2048  # ResNet-50 C5 channels
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp"}
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

# One image's regions: features (k, D), boxes (k, 4) in original pixels, optional per-region fields.
Extracted = tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor] | None]


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
    from vqacap.checkpoints import CheckpointError, safe_load  # Lightning is only needed here

    try:
        state = safe_load(path)
    except CheckpointError as err:  # one line for a pickled object, a truncated or another kind of file
        raise ExtractError(str(err)) from None
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


def image_files(directories: str | os.PathLike | Sequence[str | os.PathLike]) -> list[Path]:
    """The images of one folder or of several (in the order given), each folder sorted by name."""
    if isinstance(directories, (str, os.PathLike)):
        directories = [directories]
    files = []
    for directory in map(Path, directories):
        if not directory.is_dir():
            raise ExtractError(f"{directory}: image folder not found")
        files += sorted(p for p in directory.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    return files


def load_image(path: Path) -> torch.Tensor:
    """(3, H, W) float in [0, 1]; `ImageError` for an unusable file (size capped: `vqacap.images.MAX_PIXELS`)."""
    return pil_to_tensor(open_rgb(path)).float().div(255)


def extract(
    images: str | os.PathLike | Sequence[str | os.PathLike],
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
    **trainer: Any,
) -> tuple[int, int, list[str]]:
    """Extract every image of the folder not yet in the store. Returns (extracted, skipped, problems).

    `trainer`: workers, accelerator, devices, num_nodes, precision of `vqacap.extraction.module.extract_folders`."""
    from vqacap.extraction.module import FasterRCNNChoice, run_extraction

    if not 1 <= min_boxes <= max_boxes:
        raise ExtractError(f"need 1 <= --min-boxes <= --max-boxes, got {min_boxes} and {max_boxes}")
    image_files(images)  # a missing folder is reported before the detector is loaded
    model = load_detector(weights, min_size, max_size, proposals)
    choice = FasterRCNNChoice(min_boxes, max_boxes, conf_thresh)
    return run_extraction(images, model, out, choice, dtype, batch_size, device, progress, **trainer)


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


@torch.no_grad()
def grid_batch(detector: torch.nn.Module, images: list[torch.Tensor], n: int) -> list[Extracted]:
    """Images -> per image the n x n cells of the detector's res5 map as regions."""
    return [(g.features, _clamp(g.boxes, image), None) for image, g in zip(images, detector.grid(images, n))]


def _clamp(boxes: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
    height, width = image.shape[-2:]
    boxes = boxes.clone()
    boxes[:, 0::2] = boxes[:, 0::2].clamp(0, width)
    boxes[:, 1::2] = boxes[:, 1::2].clamp(0, height)
    return boxes


def load_bottom_up(
    checkpoint: str | os.PathLike,
    device: str = "cpu",
    prototxt: str | os.PathLike | None = None,
    classes: str | os.PathLike | None = None,
    attributes: str | os.PathLike | None = None,
) -> torch.nn.Module:
    """The bottom-up detector of a file, in eval mode: a vqacap detector checkpoint, the published model's
    .caffemodel (with its prototxt) or a converted .pth / .pkl of it (vqacap.published)."""
    from vqacap.published import load_detector_file
    from vqacap.published.safe_pickle import UnsafePickleError

    try:
        return load_detector_file(checkpoint, prototxt, classes, attributes, device).to(device).eval()
    except (OSError, ValueError, UnsafePickleError) as err:
        raise ExtractError(str(err)) from None


def extract_with_detector(
    images: str | os.PathLike | Sequence[str | os.PathLike],
    detector: str | os.PathLike | torch.nn.Module,
    out: str | os.PathLike,
    min_boxes: int = ADAPTIVE_BOXES[0],
    max_boxes: int = ADAPTIVE_BOXES[1],
    conf_thresh: float = CONF_THRESH,
    grid: int | None = None,
    batch_size: int = 4,
    device: str = "cpu",
    dtype: str = "float16",
    progress: bool = True,
    **trainer: Any,
) -> tuple[int, int, list[str]]:
    """Extract with the bottom-up detector (a checkpoint path or the model) every image not yet in the store.
    Returns (extracted, skipped, problems); `trainer` as for `extract`."""
    from vqacap.data.pixels import RegionChoice
    from vqacap.extraction.module import run_extraction

    if grid is None and not 1 <= min_boxes <= max_boxes:
        raise ExtractError(f"need 1 <= --min-boxes <= --max-boxes, got {min_boxes} and {max_boxes}")
    if grid is not None and grid < 1:
        raise ExtractError(f"--grid must be at least 1, got {grid}")
    image_files(images)
    model = detector if isinstance(detector, torch.nn.Module) else load_bottom_up(detector, device)
    check_grid(model, grid)
    choice = RegionChoice(min_boxes, max_boxes, conf_thresh, grid)
    return run_extraction(images, model, out, choice, dtype, batch_size, device, progress, **trainer)


def check_grid(model: torch.nn.Module, grid: int | None) -> None:
    """`ExtractError` for a grid finer than any image's feature map (the pooling would repeat cells: --grid 1000
    wrote 1,000,000 cells per image)."""
    if grid is not None and grid > model.max_grid():
        raise ExtractError(
            f"--grid {grid}: the detector's feature map has at most {model.max_grid()} x {model.max_grid()} cells "
            f"(shorter side {model.min_side} pixels); give --grid {model.max_grid()} or less"
        )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--images", required=True, nargs="+", metavar="DIR", help="folder(s) of .jpg/.png images named by id"
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--detector",
        metavar="FILE",
        help="bottom-up detector (regions as generate_tsv): a vqacap checkpoint, the published .caffemodel "
        "(with --prototxt) or a converted .pth / .pkl of it",
    )
    source.add_argument("--weights", metavar="CKPT", help="local fasterrcnn_resnet50_fpn state dict")
    parser.add_argument(
        "--out", required=True, metavar="STORE", help="region-feature store to create or extend"
    )
    parser.add_argument(
        "--max-boxes", type=int, help="at most this many regions per image (100 with --detector, else 36)"
    )
    parser.add_argument("--min-boxes", type=int, help="at least this many regions per image (10)")
    parser.add_argument(
        "--fixed", type=int, metavar="K", help="exactly K regions per image (36 in the paper)"
    )
    parser.add_argument(
        "--grid",
        type=int,
        metavar="N",
        help="with --detector: N x N cells of its res5 map instead of regions",
    )
    parser.add_argument("--conf-thresh", type=float, default=CONF_THRESH, help="class score to keep a region")
    parser.add_argument("--batch-size", type=int, default=4, help="images per forward pass")
    parser.add_argument(
        "--min-size", type=int, default=600, help="--weights: shorter image side fed to the detector"
    )
    parser.add_argument(
        "--max-size", type=int, default=1000, help="--weights: longest image side fed to the detector"
    )
    parser.add_argument(
        "--proposals", type=int, default=300, help="--weights: RPN proposals per image scored by the box head"
    )
    parser.add_argument(
        "--device",
        default="cuda" if torch.cuda.is_available() else "cpu",
        help="torch device (default: cuda when a GPU is available, else cpu)",
    )
    parser.add_argument(
        "--dtype", choices=("float16", "float32"), default="float16", help="stored feature dtype"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_detector_file_arguments(parser)
    parser.add_argument(
        "--compare-tsv",
        nargs="+",
        metavar="TSV",
        help="after extracting, compare the store with released bottom-up TSV files (boxes and features per image)",
    )
    add_trainer_arguments(parser)


def run(args: argparse.Namespace) -> int:
    if args.grid is not None and args.detector is None:
        print("error: --grid needs --detector", file=sys.stderr)
        return 2
    min_boxes = args.fixed or args.min_boxes or ADAPTIVE_BOXES[0]
    max_boxes = args.fixed or args.max_boxes or (ADAPTIVE_BOXES[1] if args.detector else 36)
    common = {
        "min_boxes": min_boxes,
        "max_boxes": max_boxes,
        "conf_thresh": args.conf_thresh,
        "batch_size": args.batch_size,
        "device": args.device,
        "dtype": args.dtype,
        "progress": not args.no_progress,
        **trainer_options(args),
    }
    try:
        if args.detector is not None:
            detector = load_bottom_up(
                args.detector, args.device, args.prototxt, args.classes, args.attributes
            )
            extracted, skipped, problems = extract_with_detector(
                args.images, detector, args.out, grid=args.grid, **common
            )
        else:
            extracted, skipped, problems = extract(
                args.images,
                args.weights,
                args.out,
                min_size=args.min_size,
                max_size=args.max_size,
                proposals=args.proposals,
                **common,
            )
    except StoreWriteError as err:
        exit_after_failed_write(err)
    except (ExtractError, RegionStoreError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if not is_global_zero():
        return 0  # the first process reports for all
    print(
        f"{args.out}: extracted {extracted}, skipped {skipped} already in the store, problems {len(problems)}"
    )
    for problem in problems:
        print(f"  {problem}")
    if args.compare_tsv:
        from vqacap.prepare.common import PrepareError

        try:
            compare_with_released(args.out, args.compare_tsv)
        except (PrepareError, RegionStoreError) as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
    return 0 if extracted + skipped > 0 else 1


def compare_with_released(store: str | os.PathLike, tsv: list[str]) -> None:
    """Print, per image in both, how the store's boxes and features match a released TSV's."""
    from vqacap.published.compare import compare_store_with_tsv, summary

    results, problems = compare_store_with_tsv(store, tsv)
    for result in results:
        print(result.line())
    for problem in problems:
        print(f"  {problem}")
    print(summary(results))
