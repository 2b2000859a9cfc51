"""`vqacap export RUN_DIR|CKPT OUT_DIR`: a trained model as a self-contained model folder (vqacap.folders) with a
model card.

    vqacap export outputs/train/runs/caption_shapes/<date> models/caption_shapes
    vqacap export latest:caption_shapes models/caption_shapes
    vqacap caption photo.jpg --detector models/detector_shapes --captioner models/caption_shapes

A run folder gives its tested checkpoint (test_metrics.json), else its last one. The folder holds the weights
(model.safetensors), the model's settings (config.json), its word list, answers or class and attribute names (JSON) and
README.md, the model card: the task, the data and the recipe the run was trained with, its test metrics, the commit,
the date, the intended use and, where the runs folder holds a finished run of the recipe's blind control
(`<experiment>_blind`), that control's test metrics beside the model's.
"""

from __future__ import annotations

import argparse
import datetime
import json
import subprocess
import sys
from pathlib import Path

from omegaconf import OmegaConf

from vqacap.checkpoints import CheckpointError, find_checkpoint, safe_load
from vqacap.folders import FolderError

DETECTOR_KEYS = {"classes", "attributes", "detector"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "source",
        metavar="RUN_DIR_OR_CKPT",
        help="a training run folder, a checkpoint file, or latest:<experiment> (its newest finished run)",
    )
    parser.add_argument("out", type=Path, metavar="OUT_DIR", help="the model folder to write (new or empty)")
    parser.add_argument(
        "--log-dir", type=Path, default=Path("outputs"), help="where latest:<experiment> looks"
    )


def run(args: argparse.Namespace) -> int:
    try:
        checkpoint = source_checkpoint(args.source, args.log_dir)
        export(checkpoint, args.out)
    except (CheckpointError, FolderError, FileNotFoundError, ValueError) as err:
        print(f"vqacap export: {err}", file=sys.stderr)
        return 2
    print(f"{args.out}\texported from {checkpoint}")
    return 0


def source_checkpoint(source: str, log_dir: Path) -> Path:
    """The checkpoint of a run folder (the tested one, else last.ckpt), a checkpoint file, or latest:<experiment>."""
    path = Path(source)
    if not path.is_dir():
        return find_checkpoint(source, log_dir)
    metrics = path / "test_metrics.json"
    tested = json.loads(metrics.read_text()).get("checkpoint") if metrics.is_file() else None
    if tested and Path(tested).is_file():
        return Path(tested)
    if (path / "checkpoints" / "last.ckpt").is_file():
        return path / "checkpoints" / "last.ckpt"
    raise FileNotFoundError(
        f"{path}: not a run folder with a checkpoint (no test_metrics.json, no checkpoints/last.ckpt)"
    )


def export(checkpoint: Path, out: Path) -> Path:
    """Write the model of `checkpoint` (a captioner, VQA model or detector checkpoint of a vqacap run) into `out`."""
    from vqacap.lightning.loading import load_detector, load_module

    raw = safe_load(checkpoint)
    hparams = raw.get("hyper_parameters") if isinstance(raw, dict) else None
    run = run_folder(checkpoint)
    if isinstance(hparams, dict) and set(hparams) >= DETECTOR_KEYS:
        model = load_detector(checkpoint)
        module = None
    else:
        model = load_module(checkpoint).net
        # The folder's reader has none of the exporter's paths.
        module = {k: v for k, v in hparams.items() if k != "results_dir"}
    return model.save_pretrained(out, module=module, card=model_card(model.folder_task, checkpoint, run))


def run_folder(checkpoint: Path) -> Path | None:
    """The run folder a checkpoint sits in (<run>/checkpoints/*.ckpt), if it is one."""
    run = checkpoint.resolve().parent.parent
    return run if (run / "test_metrics.json").is_file() or (run / ".hydra").is_dir() else None


# -- the model card --------------------------------------------------------------------------------------------------
USE = {
    "captioning": "Describing images in English sentences from the regions of the detector it was trained with "
    "(`vqacap caption IMAGE --detector D --captioner THIS`).",
    "VQA": "Answering questions about images from the regions of the detector it was trained with "
    "(`vqacap answer IMAGE --question Q --detector D --vqa THIS`).",
    "detector": "Finding the regions of images, with object and attribute names, for a captioner or VQA model "
    "(`vqacap extract --detector THIS`, `vqacap caption --detector THIS`).",
}
LIMITS = (
    "A research model: it knows only the words, answers and object names of its training data, and is as good as "
    "the test metrics below say on data like it. Do not use it for decisions about people."
)


def model_card(task: str, checkpoint: Path, run: Path | None) -> str:
    """README.md of the model folder, from what the run folder holds."""
    config = _run_config(run)
    tested = _json(run / "test_metrics.json") if run else {}
    name = OmegaConf.select(config, "name", throw_on_resolution_failure=False) if config is not None else None
    experiment = tested.get("experiment") or name or "unknown"
    lines = [
        "---",
        "library_name: vqacap",
        f"tags: [vqacap, {task.lower()}, bottom-up-attention]",
        "---",
        "",
        f"# {experiment}: a vqacap {task} model",
        "",
        "Exported with `vqacap export` into a model folder: `model.safetensors` (weights), `config.json` (settings), "
        "names as JSON. Load it with `vqacap caption|answer|extract` or `from_pretrained` (docs/model-folders.md).",
        "",
        "## Intended use",
        "",
        USE[task],
        "",
        LIMITS,
        "",
        "## Training",
        "",
        f"- task: {task}",
        f"- recipe: `vqacap train experiment={experiment}`" + _overrides(run),
    ]
    if config is not None:
        lines += _recipe_lines(config)
    lines += [
        f"- checkpoint: `{checkpoint.name}`" + (f" of run `{run.name}`" if run else ""),
        f"- commit: {_commit(run)}",
        f"- exported: {datetime.date.today().isoformat()} (checkpoint written "
        f"{datetime.date.fromtimestamp(checkpoint.stat().st_mtime).isoformat()})",
        "",
        "## Test metrics",
        "",
    ]
    metrics = tested.get("metrics") or {}
    blind = _blind_control(run, experiment)
    if not metrics:
        lines.append("No test_metrics.json in the run folder: the model was not tested.")
    else:
        if tested.get("test_data"):
            lines += [f"Scored on: {tested['test_data']}", ""]
        header = "| metric | this model |" + (" blind control (regions zeroed) |" if blind else "")
        lines += [header, "|---|---|" + ("---|" if blind else "")]
        for name, value in metrics.items():
            row = f"| {name} | {value:.4f} |"
            if blind:
                theirs = blind["metrics"].get(name)
                row += f" {theirs:.4f} |" if isinstance(theirs, (int, float)) else " - |"
            lines.append(row)
        if blind:
            lines += [
                "",
                f"The blind control is `{blind['experiment']}`, the same recipe with the region features zeroed: "
                "what the model scores without looking at the image.",
            ]
    return "\n".join(lines) + "\n"


def _run_config(run: Path | None):
    path = run / ".hydra" / "config.yaml" if run else None
    return OmegaConf.load(path) if path is not None and path.is_file() else None


def _recipe_lines(config) -> list[str]:
    def get(key: str, default="?"):
        # Resolved where it can be (paths.data_dir), as written where it cannot (Hydra's run-time nodes).
        found = OmegaConf.select(config, key, default=None, throw_on_resolution_failure=False)
        if found is None:
            found = OmegaConf.select(config, key, default=None, throw_on_missing=False)
        return default if found is None else found

    lines = [f"- data: `{get('data._target_')}` from `{get('data.data_dir')}`"]
    if get("data.store", None):
        lines.append(f"- region features: `{get('data.store')}`")
    net = get("model.net", {})
    sizes = ", ".join(f"{k}={get(f'model.net.{k}')}" for k in net if not str(k).startswith("_"))
    lines.append(f"- model: `{get('model.net._target_')}` ({sizes})")
    if get("model.optimizer", None) is not None:
        lr = get("model.optimizer.lr", None)
        lines.append(
            f"- optimiser: `{get('model.optimizer._target_')}`" + (f", lr {lr}" if lr is not None else "")
        )
    if get("trainer.max_epochs", None) is not None:
        lines.append(f"- epochs: {get('trainer.max_epochs')}, seed {get('seed')}")
    return lines


def _overrides(run: Path | None) -> str:
    path = run / ".hydra" / "overrides.yaml" if run else None
    if path is None or not path.is_file():
        return ""
    given = [str(o) for o in OmegaConf.load(path) if not str(o).startswith("experiment=")]
    return f" with `{' '.join(given)}`" if given else ""


def _commit(run: Path | None) -> str:
    """The commit the run recorded (its wandb metadata), else the commit of the code that exported it."""
    for meta in sorted(run.glob("wandb/*/files/wandb-metadata.json")) if run else []:
        commit = (_json(meta).get("git") or {}).get("commit")
        if commit:
            return f"{commit} (recorded by the run)"
    try:
        here = Path(__file__).resolve().parent
        done = subprocess.run(
            ["git", "-C", str(here), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return f"{done.stdout.strip()} (of the exporting code)" if done.returncode == 0 else "unknown"


def _blind_control(run: Path | None, experiment: str) -> dict | None:
    """The newest finished run of `<experiment>_blind` beside this run's experiment folder."""
    if run is None or experiment.endswith("_blind"):
        return None
    for metrics in sorted(
        (run.parent.parent / f"{experiment}_blind").glob("*/test_metrics.json"), reverse=True
    ):
        found = _json(metrics)
        if found.get("metrics"):
            return {"experiment": f"{experiment}_blind", "metrics": found["metrics"]}
    return None


def _json(path: Path) -> dict:
    try:
        found = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return found if isinstance(found, dict) else {}
