"""One loader for the LightningModules of every task: a vqacap checkpoint back to the captioner, VQA model or detector
it holds, rebuilt from its plain hyper-parameters and checked against the weights, without running code from the file.

Entry points: `vqacap visualize --checkpoint`, `vqacap caption` / `answer`, `vqacap extract --detector`, the benchmarks
(`load_module`, `load_detector`) and `init_from` (`load_weights`). Reading the file safely and the allow-list of the
classes a checkpoint may name live below, in vqacap.checkpoints.
"""

from __future__ import annotations

import os
from collections.abc import Collection
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch

from vqacap.checkpoints import CheckpointError, check_fits, load_checkpoint, rebuild_hyperparameters, task_of

REGION_TASKS = ("captioning", "VQA")
DETECTOR_HPARAMS = {"classes", "attributes", "detector"}


def checkpoint_task(hparams: dict[str, Any]) -> str | None:
    """ "captioning", "VQA" or "detector" from a checkpoint's hyper-parameters; None when unknown."""
    if set(hparams) >= DETECTOR_HPARAMS:
        return "detector"
    return task_of(hparams)


def load_module(
    path: str | os.PathLike, map_location: Any = "cpu", tasks: Collection[str] = REGION_TASKS
) -> pl.LightningModule:
    """The LightningModule a checkpoint holds, rebuilt from its hyper-parameters, in eval mode: a captioner or VQA
    model by default, a detector when `tasks` admits "detector". `CheckpointError` naming the file otherwise."""
    checkpoint = load_checkpoint(path)
    hparams = checkpoint.get("hyper_parameters") or {}
    task = checkpoint_task(hparams)
    if task not in tasks:
        raise CheckpointError(f"{path}: {_refusal(task, tasks)}")
    if task == "detector":
        module = _detector_module(checkpoint, path)
    else:
        module = _region_module(task, checkpoint, path)
    return module.to(map_location).eval()


def _refusal(task: str | None, tasks: Collection[str]) -> str:
    if set(tasks) == {"detector"}:
        return "not a checkpoint of the bottom-up detector (vqacap.lightning.detector)"
    if task is None:
        return "no vqacap hyper-parameters (not a checkpoint of a vqacap run)"
    wanted = "a captioner or VQA model" if set(tasks) == set(REGION_TASKS) else " or ".join(sorted(tasks))
    return f"a {task} checkpoint, where {wanted} is needed"


def load_detector(path: str | os.PathLike, map_location: Any = "cpu") -> torch.nn.Module:
    """The BottomUpDetector of a detector checkpoint, in eval mode. Nothing is unpickled (weights_only=True)."""
    path = Path(path)
    if path.is_dir():  # a model folder (vqacap.folders): safetensors and JSON, never unpickled
        from vqacap.models.detector import BottomUpDetector

        return BottomUpDetector.from_pretrained(path, map_location)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: detector checkpoint not found")
    return load_module(path, map_location, tasks=("detector",)).net


def load_weights(module: torch.nn.Module, path: str | os.PathLike) -> None:
    """Load a checkpoint's weights into `module` (the optimiser state is not restored): `init_from`."""
    checkpoint = load_checkpoint(path)
    check_fits(module, checkpoint, path)
    module.load_state_dict(checkpoint["state_dict"])


def _region_module(task: str, checkpoint: dict, path: str | os.PathLike) -> pl.LightningModule:
    from vqacap.lightning.captioning import CaptioningModule
    from vqacap.lightning.vqa import VQAModule

    hparams = checkpoint["hyper_parameters"]
    module_class = VQAModule if task == "VQA" else CaptioningModule
    if task == "VQA" and "decoding" in hparams:  # answers decoded word by word
        from vqacap.lightning.vqa_generative import GenerativeVQAModule

        module_class = GenerativeVQAModule
    try:
        module = module_class(**rebuild_hyperparameters(hparams, path))
    except TypeError as err:
        raise CheckpointError(
            f"{path}: hyper-parameters do not build a {module_class.__name__} ({err})"
        ) from None
    check_fits(module, checkpoint, path)
    module.load_state_dict(checkpoint["state_dict"])
    return module


def _detector_module(checkpoint: dict, path: str | os.PathLike) -> pl.LightningModule:
    from vqacap.lightning.detector import LEGACY_OPTIONS, DetectorModule

    hparams = checkpoint["hyper_parameters"]
    # The trained weights replace any ImageNet initialisation; a checkpoint older than an option was made with the
    # behaviour before it (LEGACY_OPTIONS). No optimiser: a loaded detector is not trained further here.
    options = {**LEGACY_OPTIONS, **hparams["detector"], "pretrained": None}
    module = DetectorModule(hparams["classes"], hparams["attributes"], optimizer=None, detector=options)
    state = {k[len("net.") :]: v for k, v in checkpoint["state_dict"].items() if k.startswith("net.")}
    try:
        module.net.load_state_dict(state)
    except RuntimeError as err:
        raise CheckpointError(
            f"{path}: weights do not fit the detector ({str(err).splitlines()[0]})"
        ) from None
    return module
