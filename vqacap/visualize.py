"""`vqacap visualize`: attention maps of a trained captioner or VQA model for chosen examples of its data, drawn by
vqacap.draw (PNG files). The DataModules give the examples (`examples`, `example_ids`) and the image files
(`image_path`).

    vqacap visualize --run outputs/train/runs/caption_shapes/<date> --image-ids 4001 4002 --out maps/
    vqacap visualize --checkpoint last.ckpt --data-dir data/shapes --question-ids 400100 --out maps/
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from omegaconf import OmegaConf

from vqacap.draw import attention_maps, save_maps, text_of


def add_arguments(parser: argparse.ArgumentParser) -> None:
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--run", type=Path, help="a training run folder (holds .hydra/config.yaml and checkpoints/)"
    )
    source.add_argument(
        "--checkpoint", type=Path, help="a checkpoint file (then --data-dir, unless it sits in a run)"
    )
    parser.add_argument("--data-dir", type=Path, help="data folder (default: the one the run was trained on)")
    parser.add_argument(
        "--image-root",
        "--images",
        type=Path,
        help="folder the image file names are relative to, or a plain folder of images named by id "
        "(default: the data's image_dir, else the data folder and its images/)",
    )
    ids = parser.add_mutually_exclusive_group()
    ids.add_argument("--image-ids", type=int, nargs="+", help="images to draw (captioning)")
    ids.add_argument("--question-ids", type=int, nargs="+", help="questions to draw (VQA)")
    parser.add_argument(
        "--count", type=int, default=8, help="without ids: this many examples spread over the split"
    )
    parser.add_argument("--split", default="val", help="data split (default: val)")
    parser.add_argument("--top-k", type=int, default=3, help="most attended boxes drawn per word or question")
    parser.add_argument("--device", default="cpu", help="torch device (default: cpu)")
    parser.add_argument("--out", type=Path, required=True, help="folder for the PNG files")


def _run_checkpoint(run: Path) -> Path:
    """The run's tested (best) checkpoint, else its last one."""
    metrics = run / "test_metrics.json"
    if metrics.is_file():
        tested = json.loads(metrics.read_text()).get("checkpoint")
        if tested and Path(tested).is_file():
            return Path(tested)
    last = run / "checkpoints" / "last.ckpt"
    if last.is_file():
        return last
    found = sorted((run / "checkpoints").glob("*.ckpt"), key=lambda p: p.stat().st_mtime)
    if not found:
        raise FileNotFoundError(f"{run}: no checkpoint under checkpoints/")
    return found[-1]


def _as_in_training(path: Path, hydra_dir: Path) -> Path:
    """A relative path of a run's config as the training process read it: from its working directory, which Hydra
    records in .hydra/hydra.yaml (`paths.root_dir` is "." by default), so that any working directory works here."""
    hydra_yaml = hydra_dir / "hydra.yaml"
    if path.is_absolute() or not hydra_yaml.is_file():
        return path
    return Path(OmegaConf.load(hydra_yaml).hydra.runtime.cwd) / path


def locate_data_module(data, config: Path) -> type:
    """The DataModule class a run folder's `data` node names, if it is one of vqacap's: a config read from a run folder
    is data (it may have come from someone else), never code to run (vqacap.targets)."""
    from vqacap.targets import TargetError, locate, nested_targets

    raw = OmegaConf.to_container(data, resolve=False)  # an interpolated target matches no allowed name
    for where, nested in nested_targets(raw, "data"):
        if where != "data":
            raise TargetError(
                f"{config}: {where} names {nested!r}; a run folder's data node builds nothing else"
            )
    return locate("data", raw.get("_target_"), config, "data")


def _constructor_arguments(data) -> dict:
    return {k: v for k, v in OmegaConf.to_container(data, resolve=True).items() if not k.startswith("_")}


def load(args: argparse.Namespace):
    """(LightningModule in eval mode, DataModule) from --run or --checkpoint/--data-dir."""
    from vqacap.data.captions import CaptionDataModule
    from vqacap.data.vqa import VQADataModule
    from vqacap.lightning.loading import load_module
    from vqacap.lightning.vqa import VQAModule

    if args.run is not None:
        if not (args.run / ".hydra" / "config.yaml").is_file():
            raise FileNotFoundError(f"{args.run}: not a run folder (no .hydra/config.yaml)")
        checkpoint = _run_checkpoint(args.run)
    elif not (args.checkpoint.is_file() or args.checkpoint.is_dir()):  # or a model folder
        raise FileNotFoundError(f"{args.checkpoint}: checkpoint not found")
    else:
        checkpoint = args.checkpoint
    config = (args.run or checkpoint.parent.parent) / ".hydra" / "config.yaml"
    module = load_module(checkpoint, map_location=args.device)  # runs no code from the file
    is_vqa = isinstance(module, VQAModule)
    if config.is_file():
        data = OmegaConf.load(config).data  # interpolations resolve against the run's whole config
        data.data_dir = str(args.data_dir or _as_in_training(Path(data.data_dir), config.parent))
        # The data must already be there: never (re)generate it from a visualisation command.
        data.generator = None
        datamodule = locate_data_module(data, config)(**_constructor_arguments(data))
    elif args.data_dir is not None:
        datamodule = (VQADataModule if is_vqa else CaptionDataModule)(data_dir=str(args.data_dir))
    else:
        raise ValueError(f"{checkpoint}: not inside a run folder; give --data-dir")
    if list(datamodule.vocab.words) != list(module.hparams.words):
        raise ValueError(f"{checkpoint}: the model's vocabulary differs from {datamodule.data_dir}'s")
    return module, datamodule


def run(args: argparse.Namespace) -> int:
    try:
        module, datamodule = load(args)
        is_vqa = hasattr(module, "answers")
        if (args.question_ids and not is_vqa) or (args.image_ids and is_vqa):
            given, model = (
                ("--question-ids", "a captioning") if args.question_ids else ("--image-ids", "a VQA")
            )
            raise ValueError(f"{given} given for {model} checkpoint")
        datamodule.check_split(args.split)  # a mistyped split: one line naming the splits there are
        ids = args.question_ids or args.image_ids or datamodule.example_ids(args.split, args.count)
        maps = attention_maps(module, datamodule, args.split, ids, args.image_root, args.top_k)
    except (FileNotFoundError, ValueError, KeyError) as err:
        print(f"vqacap visualize: {err}", file=sys.stderr)
        return 2
    for m, path in zip(maps, save_maps(maps, args.out)):
        print(f"{path}\t{text_of(m.item)}")
        if m.image_problem:
            print(
                f"vqacap visualize: {m.image_problem}; {path} has the boxes on a blank canvas",
                file=sys.stderr,
            )
    return 0
