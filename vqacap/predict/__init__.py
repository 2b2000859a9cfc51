"""`vqacap caption` and `vqacap answer`: a trained bottom-up detector and a trained captioner or VQA model applied to
image files, from pixels to words.

The detector finds each image's regions as `vqacap extract --detector` does (vqacap.data.pixels), the model's
`predict_step` captions or answers them (Lightning's `trainer.predict`, which does the same over any folder), and each
image gets an attention map drawn by vqacap.draw, its boxes named by the detector's object and attribute labels.
Checkpoints that do not fit together (a detector whose features are not the size the model reads, a checkpoint of the
other task) and unusable image files stop the command with one line naming the file.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

import torch

from vqacap.extraction.settings import accelerator_for, all_gathered, quiet_lightning, trainer_settings
from vqacap.images import ImageError
from vqacap.published import add_detector_file_arguments

MAP_SUFFIX = {"captioning": "caption", "VQA": "answer"}


def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "images",
        nargs="+",
        type=Path,
        metavar="IMAGE",
        help="JPEG or PNG files (RGB, grey, RGBA), or folders of them",
    )
    parser.add_argument(
        "--detector",
        required=True,
        type=Path,
        metavar="FILE",
        help="bottom-up detector: a vqacap checkpoint, the published .caffemodel (with --prototxt) or a "
        "converted .pth / .pkl of it",
    )
    parser.add_argument(
        "--out", type=Path, metavar="DIR", help="folder for the attention maps (<image>_<task>.png)"
    )
    add_region_arguments(parser)
    parser.add_argument("--batch-size", type=int, default=4, help="images per forward pass")
    add_device_arguments(parser)
    parser.add_argument(
        "--results",
        type=Path,
        metavar="JSON",
        help="also write the results file `vqacap evaluate` reads, image ids from the file names",
    )
    parser.add_argument(
        "--devices", type=int, metavar="N", help="devices, one process each (default: --device)"
    )
    parser.add_argument("--num-nodes", type=int, default=1, metavar="M", help="nodes (SLURM or torchrun)")
    parser.add_argument("--accelerator", help="cpu, gpu, ... (default: the kind of --device)")


def add_region_arguments(parser: argparse.ArgumentParser) -> None:
    """The region choice and the maps' boxes, as `vqacap caption`, `answer` and `demo` take them."""
    parser.add_argument(
        "--fixed", type=int, metavar="K", help="exactly K regions per image, as `extract --fixed`"
    )
    parser.add_argument("--min-boxes", type=int, default=10, help="at least this many regions per image")
    parser.add_argument("--max-boxes", type=int, default=100, help="at most this many regions per image")
    parser.add_argument(
        "--grid", type=int, metavar="N", help="N x N grid cells instead of regions (grid-trained models)"
    )
    parser.add_argument("--conf-thresh", type=float, default=0.2, help="class score to keep a region")
    parser.add_argument("--top-k", type=int, default=3, help="most attended boxes drawn per word or answer")


def add_device_arguments(parser: argparse.ArgumentParser) -> None:
    """--device and the published detector's files (--prototxt, --classes, --attributes)."""
    parser.add_argument(
        "--device",
        default="cuda" if torch.cuda.is_available() else "cpu",
        help="torch device (default: cuda when a GPU is available, else cpu)",
    )
    add_detector_file_arguments(parser)


def load_models(args: argparse.Namespace, model_path: Path, task: str, flag: str):
    """(detector, LightningModule) in eval mode, or ValueError naming the file that does not fit."""
    from vqacap.lightning.loading import load_module
    from vqacap.published import load_detector_file

    if not (model_path.is_file() or model_path.is_dir()):  # a checkpoint or a model folder (vqacap.folders)
        raise ValueError(f"{model_path}: checkpoint not found")
    # First: the classes it names are checked before anything is imported (vqacap.targets).
    module = load_module(model_path, map_location=args.device)
    detector = load_detector_file(args.detector, args.prototxt, args.classes, args.attributes, args.device)
    if module.task != task:
        raise ValueError(f"{model_path}: a {module.task} checkpoint, but {flag} needs a {task} one")
    if int(module.hparams.feature_dim) != detector.feature_dim:
        raise ValueError(
            f"{model_path}: the model reads {module.hparams.feature_dim}-d region features, the detector of "
            f"{args.detector} writes {detector.feature_dim}-d ones (trained on another detector's store?)"
        )
    return detector, module


def check_sizes(images: list[Path], detector, grid: int | None) -> None:
    """`ImageError` for the first image whose size the detector cannot take (read from its header, before any
    forward pass: a 10000 x 10 image stopped the command with torchvision's traceback), RegionChoiceError for a grid
    finer than any feature map."""
    from PIL import Image

    from vqacap.models.regions import check_grid

    check_grid(detector, grid)
    for path in images:
        try:
            with Image.open(path) as im:
                width, height = im.size
        except (OSError, ValueError, SyntaxError):
            continue  # an unreadable file is named when it is read
        problem = detector.size_problem(height, width, grid)
        if problem is not None:
            raise ImageError(f"{path}: {problem}")


def predict(args: argparse.Namespace, module, data) -> list[dict]:
    """The module's `predict_step` records of every image, in the order given."""
    import pytorch_lightning as pl

    accelerator, devices = accelerator_for(args.device, args.accelerator, args.devices)
    settings = trainer_settings(accelerator, devices, args.num_nodes, "32-true")
    with quiet_lightning():
        # The distributed sampler deals the images to the processes; each image's record is kept once.
        trainer = pl.Trainer(**{**settings, "use_distributed_sampler": True}, enable_progress_bar=False)
        mine = [record for batch in trainer.predict(module, datamodule=data) for record in batch]
    records = {record["id"]: record for found in all_gathered(mine) for record in found}
    return [records[n] for n in sorted(records)]


def predict_image(path: Path, detector, module, choice, question: str | None = None) -> dict:
    """The record `predict` gives for one image file, without a Trainer: the same collate (the detector's regions,
    the question encoded in the model's words) and the same `predict_step` in eval mode without gradients, as
    `trainer.predict` runs it (what `vqacap demo` answers each request with)."""
    from vqacap.data.pixels import PixelDataModule

    words = list(module.hparams.words) if question is not None else None
    data = PixelDataModule([path], detector, choice, question=question, words=words, batch_size=1)
    module.eval()
    with torch.inference_mode():
        (batch,) = list(data.predict_dataloader())
        (record,) = module.predict_step(batch.to(module.device), 0)
    return record


def image_paths(images: list[Path]) -> list[Path]:
    """The files given, each folder replaced by its images in name order (as `vqacap extract --images` lists them)."""
    from vqacap.images import image_files

    return [path for given in images for path in (image_files(given) if given.is_dir() else [given])]


def write_results(path: Path, images: list[Path], records: list[dict], task: str) -> None:
    """COCO caption results ([{image_id, caption}]) or VQA results ([{question_id, answer}], the question asked of
    image n having the image's id), image ids from the file names (as `vqacap extract` takes them) or, for a name
    without digits, the image's position."""
    import json

    from vqacap.images import image_id_from_name

    ids = [image_id_from_name(p) for p in images]
    ids = [n if i is None else i for n, i in enumerate(ids)]
    if task == "captioning":
        rows = [{"image_id": i, "caption": r["caption"]} for i, r in zip(ids, records)]
    else:
        rows = [{"question_id": i, "answer": r["answer"]} for i, r in zip(ids, records)]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(rows))


def region_choice(args: argparse.Namespace):
    from vqacap.data.pixels import RegionChoice

    if args.fixed is not None:
        return RegionChoice(args.fixed, args.fixed, args.conf_thresh)
    return RegionChoice(args.min_boxes, args.max_boxes, args.conf_thresh, args.grid)


def map_paths(images: list[Path], out: Path, task: str) -> list[Path]:
    """<out>/<image stem>_<caption|answer>.png, with the image's position appended where two stems are equal."""
    stems = [p.stem for p in images]
    return [
        out
        / (
            f"{stem}_{MAP_SUFFIX[task]}.png"
            if stems.count(stem) == 1
            else f"{stem}_{n}_{MAP_SUFFIX[task]}.png"
        )
        for n, stem in enumerate(stems)
    ]


def save_maps(records: list[dict], images: list[Path], out: Path, task: str, top_k: int) -> list[Path]:
    """One attention map per record (vqacap.draw), titled with the image's file name."""
    from vqacap.draw import caption_figure, vqa_figure
    from vqacap.images import open_rgb

    out.mkdir(parents=True, exist_ok=True)
    paths = map_paths(images, out, task)
    for record, image, path in zip(records, images, paths):
        item = {**record, "image_id": image.name}
        if task == "captioning":
            figure = caption_figure(open_rgb(image), item, top_k)
        else:
            figure = vqa_figure(open_rgb(image), item, top_k)
        figure.save(path)
    return paths


def run_task(args: argparse.Namespace, model_path: Path, task: str, flag: str, question: str | None = None):
    """Records per image (or None after printing the one-line error)."""
    from vqacap.checkpoints import CheckpointError
    from vqacap.data.pixels import PixelDataModule
    from vqacap.extraction.settings import is_global_zero

    prog = f"vqacap {MAP_SUFFIX[task]}"
    try:
        args.images = image_paths(args.images)
        missing = [p for p in args.images if not p.is_file()]
        if missing:
            raise ValueError(f"{missing[0]}: image file not found")
        detector, module = load_models(args, model_path, task, flag)
        check_sizes(args.images, detector, args.grid if args.fixed is None else None)
        if task == "captioning" and getattr(args, "beam", None):
            module.decoding = replace(module.decoding, beam_size=args.beam)
        data = PixelDataModule(
            args.images,
            detector,
            region_choice(args),
            question=question,
            words=list(module.hparams.words) if question is not None else None,
            batch_size=args.batch_size,
        )
        records = predict(args, module, data)
        if not is_global_zero():
            return []  # the first process reports and draws for all
        paths = (
            save_maps(records, args.images, args.out, task, args.top_k) if args.out else [None] * len(records)
        )
    except (ImageError, CheckpointError, OSError, ValueError) as err:
        print(f"{prog}: {err}", file=sys.stderr)
        return None
    return list(zip(records, paths))
