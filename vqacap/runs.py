"""Where a training run is filed: run names, run and sweep folders, resuming in a run's own folder.

Hydra resolves `conf/hydra/default.yaml` with the resolvers registered here (on import of `vqacap.train` or
`vqacap.extract_hydra`):

- `vqacap.run_name`: the experiment's name, or `<data>-<model>` when the command line swaps the data or model group
  (a run of `data=coco_karpathy` under the default experiment is not a `caption_shapes` run).
- `vqacap.run_dir`: `<runs>/<name>/<date_time>_<6 hex digits>`, unique even for runs started in the same second; or,
  when `ckpt_path` is a checkpoint of a run folder (`<run>/checkpoints/*.ckpt`), that run's folder, so a resumed run
  continues its CSV log, its wandb run and its checkpoints.
- `vqacap.sweep_name`: one folder per multirun, named by the experiment, or `a+b` for a sweep over `experiment=a,b`.
  Cached (OmegaConf keys the cache on the arguments' text), so every job of the sweep resolves it to the value of the
  sweep's own config: Hydra copies that config's resolver cache into each job's.

`check_run_folder` refuses to start a run in a folder that holds another run's files. Hydra writes its own .hydra/
config.yaml, hydra.yaml and overrides.yaml into the run folder before the task starts, so the check runs first as a
Hydra callback (`RunFolderCheck`, conf/hydra/default.yaml) when the run's folder is known and nothing is written yet,
and again in the task, for runs started without Hydra's command line. Not here: what a run writes.
"""

from __future__ import annotations

import os
import secrets
import sys
import time
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from vqacap.errors import one_line

# What a run writes into its folder; Hydra's own .hydra/ and train.log are written before vqacap starts.
RUN_FILES = ("checkpoints", "csv", "wandb", "test_metrics.json")
SWEEP_VALUES = (",", "choice(", "range(", "glob(", "interval(")


class RunFolderError(ValueError):
    """A run folder that cannot be used; one line saying which and what to do."""


def resumed_run_folder(ckpt_path: str | None) -> Path | None:
    """The run folder a checkpoint belongs to (`<run>/checkpoints/<file>.ckpt` beside `<run>/.hydra`), else None."""
    if not ckpt_path or ckpt_path in ("last", "best", "hpc"):
        return None
    path = Path(ckpt_path).expanduser().resolve()
    run = path.parent.parent
    if path.parent.name == "checkpoints" and path.is_file() and (run / ".hydra").is_dir():
        return run
    return None


def run_name(experiment: str, data: str, model: str, task_overrides) -> str:
    groups = {o.split("=", 1)[0].lstrip("+~") for o in task_overrides or [] if "=" in o}
    return f"{data}-{model}" if groups & {"data", "model"} else experiment


def run_dir(runs: str, ckpt_path: str | None) -> str:
    resumed = resumed_run_folder(ckpt_path)
    if resumed is not None:
        return str(resumed)
    stamp = time.strftime("%Y-%m-%d_%H-%M-%S")
    while True:  # the date keeps folders in start order (latest:<experiment> relies on it); the suffix keeps them apart
        folder = Path(runs) / f"{stamp}_{secrets.token_hex(3)}"
        if not folder.exists():
            return str(folder)


def sweep_name(experiment: str, task_overrides) -> str:
    """The experiment, or the experiments of a sweep over `experiment=` joined by "+"."""
    for override in task_overrides or []:
        key, _, value = override.partition("=")
        if key.lstrip("+") == "experiment" and any(mark in value for mark in SWEEP_VALUES):
            for wrapper in SWEEP_VALUES[1:]:
                value = value.replace(wrapper, "")
            return "+".join(v.strip() for v in value.rstrip(")").split(","))
    return experiment


def check_run_folder(folder: str | os.PathLike, ckpt_path: str | None) -> None:
    """Refuse a folder holding another run's files, unless this run resumes from a checkpoint in it (or is a requeued
    SLURM job, which resumes its own folder). Only the first process checks: the others of a distributed run share the
    folder, and may start after the first has written to it."""
    if any(os.environ.get(rank, "0") != "0" for rank in ("LOCAL_RANK", "NODE_RANK", "SLURM_PROCID", "RANK")):
        return
    folder = Path(folder)
    if int(os.environ.get("SLURM_RESTART_COUNT", 0)) > 0 or resumed_run_folder(ckpt_path) == folder.resolve():
        return
    found = [name for name in RUN_FILES if (folder / name).exists()]
    if found:
        raise RunFolderError(
            f"{folder}: holds another run's files ({', '.join(found)}); start in a new folder (leave hydra.run.dir "
            f"unset) or resume that run with ckpt_path={folder / 'checkpoints' / 'last.ckpt'}"
        )


class RunFolderCheck(Callback):
    """`check_run_folder` before Hydra writes into the folder: a refused run leaves the other run's .hydra/ as it was.

    `on_run_start` comes after the folder is resolved and before `run_job` saves the configs; a multirun's job folders
    are checked at the sweep's start (`hydra.sweep.dir` set to an earlier sweep's folder)."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._check([config.hydra.run.dir], config)

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        sweep = Path(config.hydra.sweep.dir)
        self._check(sorted(p for p in sweep.iterdir() if p.is_dir()) if sweep.is_dir() else [], config)

    @staticmethod
    def _check(folders: list, config: DictConfig) -> None:
        try:
            for folder in folders:
                check_run_folder(folder, config.get("ckpt_path"))
        except RunFolderError as err:
            print(one_line(err), file=sys.stderr)
            sys.exit(1)


def gpu_available_for(accelerator: str | None) -> bool:
    """False when the trainer asks for a GPU and this machine has none (Lightning's own error names no remedy)."""
    if accelerator not in ("gpu", "cuda"):
        return True
    import torch

    return torch.cuda.is_available() or torch.backends.mps.is_available()


def register_resolvers() -> None:
    OmegaConf.register_new_resolver("vqacap.run_name", run_name, replace=True)
    OmegaConf.register_new_resolver("vqacap.run_dir", run_dir, use_cache=True, replace=True)
    OmegaConf.register_new_resolver("vqacap.sweep_name", sweep_name, use_cache=True, replace=True)
