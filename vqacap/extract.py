"""`vqacap extract`: bottom-up region features from images, with the bottom-up detector trained here (`--detector`) or
with a local torchvision Faster R-CNN checkpoint (`--weights`).

With `--detector CKPT` (a checkpoint of vqacap.lightning.detector), regions are chosen as bottom-up-attention's
`tools/generate_tsv.py` chooses them:

1. The regions are the RPN proposals (not the regressed boxes), with their pool5 features.
2. For every class, NMS at IoU 0.3 over the proposals scored by that class's probability; each proposal keeps the
   highest class score it survives with (0 if it survives none).
3. Proposals scoring >= --conf-thresh (0.2) are kept, in proposal order; if fewer than --min-boxes, the --min-boxes best
   instead, if more than --max-boxes, the --max-boxes best: 10-100 regions ("adaptive", the default) or `--fixed 36`.
4. Each kept region also stores the detector's predicted object (the most probable class) and attribute (the most
   probable attribute other than "no attribute") with their probabilities, as the optional region fields object_labels,
   object_scores, attribute_labels, attribute_scores, and the class and attribute names (see vqacap.data.store).

`--grid N` stores instead the N x N cells of the same detector's res5 map of the whole image, the grid features that
bottom-up regions are contrasted with. Images are batched (--batch-size per forward pass).

With `--weights`, a stand-in for the Visual Genome ResNet-101 detector of Anderson et al. (whose Caffe weights are not
usable here): torchvision's `fasterrcnn_resnet50_fpn`, built with `weights=None, weights_backbone=None` and loaded from
a state-dict file on disk (nothing is downloaded). For each image:

1. Regions. Detections after per-class NMS (class score >= 0.05) with score >= --conf-thresh are kept, at most
   --max-boxes of them, best first. If fewer than --min-boxes pass, the best-scoring detections below the threshold top
   them up, then RPN proposals in objectness order, then cells of a regular grid over the image, so every image gets
   at least --min-boxes regions. (A checkpoint trained on another dataset, or random weights as in the tests, may
   detect nothing with confidence: the proposals and the grid are what such images get.) Candidates overlapping an
   already chosen box with IoU > 0.7 are skipped.
2. Features. The ResNet C5 map (stride 32, D = 2048 channels, the dimension of the published bottom-up features) is
   pooled inside each box with `roi_align` to 7 x 7 and averaged to one D-vector per region, as the bottom-up model
   averages its pool5 output.

In both modes boxes are stored in original image pixels (x1, y1, x2, y2) with the image size. Images are processed in
batches under `torch.no_grad` in eval mode; the output depends only on the images and the weights. Images already in
the store are skipped, so an interrupted run resumes. Image ids come from the file names (the last run of digits:
COCO_val2014_000000391895.jpg -> 391895).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torchvision.models.detection import fasterrcnn_resnet50_fpn
from torchvision.ops import box_iou, nms, roi_align
from torchvision.transforms.functional import pil_to_tensor
from tqdm import tqdm

from vqacap.data.store import RegionStoreError, RegionStoreWriter, StoreWriteError, exit_after_failed_write
from vqacap.images import ImageError, open_rgb
from vqacap.metrics.detection import class_nms_plus_one
from vqacap.prepare.common import image_id_from_name
from vqacap.prepare.features import CHUNK_REGIONS

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
) -> tuple[int, int, list[str]]:
    """Extract every image of the folder not yet in the store. Returns (extracted, skipped, problems)."""
    if not 1 <= min_boxes <= max_boxes:
        raise ExtractError(f"need 1 <= --min-boxes <= --max-boxes, got {min_boxes} and {max_boxes}")
    files = image_files(images)
    model = load_detector(weights, min_size, max_size, proposals).to(device)

    def regions(batch: list[torch.Tensor]) -> list[Extracted]:
        found = extract_batch(model, batch, max_boxes=max_boxes, min_boxes=min_boxes, conf_thresh=conf_thresh)
        return [(features, boxes, None) for features, boxes in found]

    with RegionStoreWriter(out, FEATURE_DIM, dtype=dtype, chunk_regions=CHUNK_REGIONS) as writer:
        return extract_images(files, writer, regions, batch_size, device, progress)


def extract_images(
    files: list[Path],
    writer: RegionStoreWriter,
    regions: Callable[[list[torch.Tensor]], list[Extracted]],
    batch_size: int,
    device: str,
    progress: bool,
) -> tuple[int, int, list[str]]:
    """Add the images not yet in the store, `batch_size` per call of `regions`. Returns (extracted, skipped, problems)."""
    problems: list[str] = []
    extracted = skipped = 0
    seen: dict[int, Path] = {}
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
        results = regions([t.to(device) for _, t in batch])
        for (image_id, tensor), (features, boxes, fields) in zip(batch, results):
            height, width = tensor.shape[-2:]
            if fields is not None:
                fields = {name: values.cpu().numpy() for name, values in fields.items()}
            try:
                writer.add(
                    image_id,
                    features.float().cpu().numpy(),
                    boxes.cpu().numpy(),
                    width,
                    height,
                    fields=fields,
                )
                extracted += 1
            except StoreWriteError:
                raise  # the disk, not the image: nothing more can be written
            except RegionStoreError as err:
                problems.append(str(err))
        writer.flush()  # a batch on disk before the next is computed: an interrupted run loses at most one batch
    return extracted, skipped, problems


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


def load_bottom_up(checkpoint: str | os.PathLike, device: str = "cpu") -> torch.nn.Module:
    """The bottom-up detector of a vqacap.lightning.detector checkpoint, in eval mode."""
    from vqacap.lightning.detector import load_detector as load_checkpoint  # Lightning is only needed here

    try:
        return load_checkpoint(checkpoint, map_location=device).to(device).eval()
    except (OSError, ValueError) as err:
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
) -> tuple[int, int, list[str]]:
    """Extract with the bottom-up detector (a checkpoint path or the model) every image not yet in the store.
    Returns (extracted, skipped, problems)."""
    if grid is None and not 1 <= min_boxes <= max_boxes:
        raise ExtractError(f"need 1 <= --min-boxes <= --max-boxes, got {min_boxes} and {max_boxes}")
    if grid is not None and grid < 1:
        raise ExtractError(f"--grid must be at least 1, got {grid}")
    files = image_files(images)
    model = detector if isinstance(detector, torch.nn.Module) else load_bottom_up(detector, device)
    if grid is not None:
        options = {}

        def regions(batch: list[torch.Tensor]) -> list[Extracted]:
            return grid_batch(model, batch, grid)
    else:
        options = {
            "region_fields": DETECTOR_FIELDS,
            "field_names": {"object_labels": model.classes, "attribute_labels": model.attributes},
        }

        def regions(batch: list[torch.Tensor]) -> list[Extracted]:
            return bottom_up_batch(model, batch, conf_thresh, min_boxes, max_boxes)

    writer = RegionStoreWriter(out, model.feature_dim, dtype=dtype, chunk_regions=CHUNK_REGIONS, **options)
    with writer:
        return extract_images(files, writer, regions, batch_size, device, progress)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--images", required=True, nargs="+", metavar="DIR", help="folder(s) of .jpg/.png images named by id"
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--detector",
        metavar="CKPT",
        help="checkpoint of the bottom-up detector trained with vqacap (generate_tsv)",
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
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument(
        "--dtype", choices=("float16", "float32"), default="float16", help="stored feature dtype"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


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
    }
    try:
        if args.detector is not None:
            extracted, skipped, problems = extract_with_detector(
                args.images, args.detector, args.out, grid=args.grid, **common
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
    print(
        f"{args.out}: extracted {extracted}, skipped {skipped} already in the store, problems {len(problems)}"
    )
    for problem in problems:
        print(f"  {problem}")
    return 0 if extracted + skipped > 0 else 1
