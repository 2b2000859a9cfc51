"""Checkpoint files: written atomically, loaded without running code, checked against the model they are loaded into.

A vqacap checkpoint holds tensors and plain containers only (dict, list, tuple, str, numbers, None); the module's
hyper-parameters are stored as plain dicts too, a Hydra partial as {"_target_": "<module>.<Class>", "_partial_": True,
...}. Every checkpoint is read with `torch.load(weights_only=True)`, which unpickles those types and refuses any other
(a pickled object could run code as it is loaded). Entry points: Lightning's own restore (`ckpt_path`, through
`AtomicCheckpointIO`) and the loader of every task's module (vqacap.lightning.loading). Rebuilding a module from its
hyper-parameters imports only the classes named under `net`, `optimizer` and `scheduler`, each dotted path checked as a
string against the allowed ones first (vqacap.targets: vqacap's models, torch's optimisers and schedulers), then the
class for what that key must be; nothing is called while loading.

Not here: rebuilding a LightningModule from a file (vqacap.lightning.loading); which checkpoints a run writes and when
(vqacap.callbacks.checkpoint).
"""

from __future__ import annotations

import functools
import json
import os
import pickle
import re
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from pytorch_lightning.plugins import TorchCheckpointIO

from vqacap.folders import is_model_folder, read_checkpoint, weights_file
from vqacap.targets import TargetError, locate

REBUILT = ("net", "optimizer", "scheduler")  # hyper-parameters that name a class


class CheckpointError(ValueError):
    """Raised with a one-line message naming the checkpoint file."""


# -- finding ---------------------------------------------------------------------------------------------------------
def find_checkpoint(spec: str, log_dir: str | os.PathLike, task_name: str = "train") -> Path:
    """A checkpoint path, or `latest:<experiment>`: the best checkpoint of that experiment's newest finished run.

    Finished runs are those with a test_metrics.json, which records the checkpoint that was tested.
    """
    if not spec.startswith("latest:"):
        path = Path(spec)
        if not (path.is_file() or is_model_folder(path)):
            raise FileNotFoundError(f"{path}: checkpoint not found")
        return path
    experiment = spec.split(":", 1)[1]
    runs = Path(log_dir) / task_name / "runs" / experiment
    for metrics in sorted(runs.glob("*/test_metrics.json"), reverse=True):
        ckpt = json.loads(metrics.read_text()).get("checkpoint")
        if ckpt and Path(ckpt).is_file():
            return Path(ckpt)
    raise FileNotFoundError(
        f"{runs}: no finished run of experiment {experiment!r} with a checkpoint (train it first: "
        f"make train ARGS=experiment={experiment})"
    )


# -- reading ---------------------------------------------------------------------------------------------------------
# torch's wordings for a refused global: "Unsupported global: GLOBAL x.y was not an allowed global", "Trying to load
# unsupported GLOBAL x.y whose module x is blocked", "Trying to call x.y".
_UNSUPPORTED = re.compile(r"(?:Unsupported global: GLOBAL|unsupported GLOBAL|Trying to call) ([\w.]+)")


def load_checkpoint(path: str | os.PathLike, map_location: Any = "cpu") -> dict:
    """The checkpoint at `path`, unpickled with `weights_only=True`; `CheckpointError` naming the file otherwise."""
    checkpoint = safe_load(path, map_location)
    if not isinstance(checkpoint, dict) or not isinstance(checkpoint.get("state_dict"), Mapping):
        raise CheckpointError(f"{path}: not a Lightning checkpoint (no 'state_dict')")
    return checkpoint


def safe_load(path: str | os.PathLike, map_location: Any = "cpu") -> Any:
    """`torch.load(path, weights_only=True)`, every failure one `CheckpointError` line naming the file (and the
    refused type, for a pickled object): torch's own text is many lines advising `weights_only=False`."""
    path = Path(path)
    if is_model_folder(path):  # a model folder (vqacap.folders): safetensors and JSON, never unpickled
        return read_checkpoint(path, map_location)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        found = _UNSUPPORTED.search(str(err))
        if found:
            raise CheckpointError(
                f"{path}: refused: it holds the type {found.group(1)}, which no vqacap checkpoint "
                "holds (checkpoints are loaded without running code)"
            ) from None
        key = re.search(r"invalid load key, '.*?'", str(err))
        detail = key.group(0) if key else "unpickling failed"
        raise CheckpointError(
            f"{path}: not a readable PyTorch checkpoint, truncated or another kind of file ({detail})"
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile) as err:
        # torch's messages for a truncated zip or a text file are long and name no file.
        raise CheckpointError(
            f"{path}: not a readable PyTorch checkpoint, truncated or another kind of file ({_first_line(err)})"
        ) from None


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0][:200] if text else type(err).__name__


# -- hyper-parameters as plain containers ----------------------------------------------------------------------------
def plain(value: Any) -> Any:
    """`value` with Hydra partials, OmegaConf containers and paths turned into dicts, lists and strings."""
    from omegaconf import Container, OmegaConf

    if isinstance(value, functools.partial):
        if value.args:
            raise TypeError(f"cannot store a partial with positional arguments: {value!r}")
        target = f"{value.func.__module__}.{value.func.__qualname__}"
        return {"_target_": target, "_partial_": True, **{k: plain(v) for k, v in value.keywords.items()}}
    if isinstance(value, Container):
        return OmegaConf.to_container(value, resolve=True)
    if isinstance(value, Mapping):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(plain(v) for v in value)
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    return value


def rebuild_hyperparameters(hparams: Mapping[str, Any], path: str | os.PathLike) -> dict[str, Any]:
    """The constructor arguments of a module from its checkpoint's plain hyper-parameters: `net`, `optimizer` and
    `scheduler` back to partials of their classes, each dotted path checked against vqacap.targets before it is
    imported."""
    out = dict(hparams)
    for key in REBUILT:
        node = out.get(key)
        if isinstance(node, Mapping) and "_target_" in node:
            try:
                cls = locate(key, node["_target_"], path, f"hyper-parameter {key!r}")
            except TargetError as err:
                raise CheckpointError(str(err)) from None
            out[key] = functools.partial(
                cls, **{k: v for k, v in node.items() if k not in ("_target_", "_partial_")}
            )
    for key, value in out.items():
        if key not in REBUILT and isinstance(value, Mapping) and "_target_" in value:
            raise CheckpointError(
                f"{path}: hyper-parameter {key!r} names {value['_target_']}, which is not rebuilt"
            )
    return out


# -- checking a checkpoint against a module --------------------------------------------------------------------------
def task_of(hparams: Mapping[str, Any]) -> str | None:
    """ "VQA" or "captioning" from a checkpoint's hyper-parameters (VQA modules have answers); None when unknown."""
    if "answers" in hparams:
        return "VQA"
    return "captioning" if "words" in hparams else None


def check_fits(module: torch.nn.Module, checkpoint: Mapping[str, Any], path: str | os.PathLike) -> None:
    """`CheckpointError` unless the checkpoint holds a model of the module's task, vocabulary and shapes."""
    path = weights_file(path)  # a model folder's weights file
    hparams = checkpoint.get("hyper_parameters") or {}
    theirs, mine = task_of(hparams), getattr(module, "task", None)
    if theirs and mine and theirs != mine:
        raise CheckpointError(
            f"{path}: a {theirs} checkpoint, not a {mine} one (an experiment of the other task?)"
        )
    own_words = module.hparams.get("words") if hasattr(module, "hparams") else None
    if own_words is not None and "words" in hparams and list(hparams["words"]) != list(own_words):
        raise CheckpointError(
            f"{path}: the checkpoint's vocabulary differs from the data's (was it rebuilt?)"
        )
    state, own = checkpoint["state_dict"], module.state_dict()
    problems = [f"missing {k}" for k in own if k not in state] + [
        f"unexpected {k}" for k in state if k not in own
    ]
    problems += [
        f"{k} is {tuple(state[k].shape)}, the model's {tuple(v.shape)}"
        for k, v in own.items()
        if k in state and tuple(state[k].shape) != tuple(v.shape)
    ]
    if problems:
        more = f" and {len(problems) - 1} more" if len(problems) > 1 else ""
        raise CheckpointError(f"{path}: checkpoint does not fit this model ({problems[0]}{more})")


# -- Lightning's reads and writes ------------------------------------------------------------------------------------
class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint reads and writes: safe reads (`load_checkpoint`), atomic writes.

    Each file is written as `<name>.partial` next to its final name, flushed to disk and renamed over it (`os.replace`,
    atomic on POSIX file systems), so a process killed while writing leaves the previous file whole. Lightning's own
    write goes through the system temp folder and `shutil.move`, a plain copy onto the final name when that folder is
    on another file system than the checkpoints, as on most clusters. A write that fails (a full disk) removes its
    `.partial` and ends the run in one line; a stale `.partial` of a killed process is overwritten by the next write.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any = None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options")
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(path.name + ".partial")
        try:
            self.write(checkpoint, partial)
        except (OSError, RuntimeError) as err:  # a full disk: one line, and no half-written file left behind
            partial.unlink(missing_ok=True)
            # torch's zip writer turns the OSError of a failed write into a RuntimeError ("unexpected pos").
            cause = err if isinstance(err, OSError) else err.__context__
            if not isinstance(cause, OSError):
                raise
            raise CheckpointError(
                f"{path}: could not write the checkpoint ({cause.strerror or cause}); the previous one, if any, is kept"
            ) from None
        os.replace(partial, path)
        _fsync_folder(path.parent)  # the rename itself survives a power cut

    def write(self, checkpoint: dict[str, Any], path: Path) -> None:
        """Write `checkpoint` to `path` and flush it to disk."""
        with open(path, "wb") as f:
            torch.save(checkpoint, f)
            f.flush()
            os.fsync(f.fileno())

    def load_checkpoint(
        self, path, map_location: Any = "cpu", weights_only: bool | None = None
    ) -> dict[str, Any]:
        # weights_only is always True here, whatever the caller asks.
        return load_checkpoint(path, map_location=map_location)


def _fsync_folder(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # some file systems do not open folders
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
