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

from vqacap.data.store import RegionStoreError, StoreWriteError, exit_after_failed_write, refuse_if_in_use
from vqacap.extraction.loading import ExtractError, load_bottom_up
from vqacap.extraction.settings import add_trainer_arguments, is_global_zero, trainer_options
from vqacap.images import ImageError, image_files
from vqacap.models.regions import (
    ADAPTIVE_BOXES,
    CONF_THRESH,
    RegionChoiceError,
    check_grid,
)
from vqacap.published import add_detector_file_arguments


def load_fasterrcnn(
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
    model = load_fasterrcnn(weights, min_size, max_size, proposals)
    choice = FasterRCNNChoice(min_boxes, max_boxes, conf_thresh)
    return run_extraction(images, model, out, choice, dtype, batch_size, device, progress, **trainer)


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
        refuse_if_in_use(args.out)  # before the detector loads: a refused run ends at once
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
    except (ExtractError, ImageError, RegionChoiceError, RegionStoreError) as err:
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
