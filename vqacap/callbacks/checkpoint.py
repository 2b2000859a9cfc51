"""Checkpoints a run can be resumed from exactly: `ResumableCheckpoint`, the `model_checkpoint` of conf/callbacks.

A training run killed at any moment (SLURM preemption or time limit, SIGKILL, a crash) and resumed from its last
checkpoint (`ckpt_path=<run>/checkpoints/last.ckpt`; on a requeued SLURM job vqacap/train.py does it by itself) ends
with the same weights and metrics as an uninterrupted run with the same seed and `trainer.deterministic=true`:

- No half-written checkpoint: each file is written as `<name>.partial` next to its final name, flushed to disk and
  renamed over it (`os.replace`, atomic on POSIX file systems), so a kill leaves the previous file whole. Lightning's
  own write is not enough: it goes through a temporary file in the system temp folder and `shutil.move`, a plain copy
  onto the final name when that folder is on another file system than the checkpoints, as on most clusters.
- `last.ckpt` mid-epoch, every `save_last_every_n_train_steps` optimiser steps, and at the end of every epoch (Lightning
  2.x rewrites it only when a top-k checkpoint was written at the same step).
- The training order is a function of (seed, epoch) only: the DataModule's training DataLoader is rebuilt around
  `ResumableSampler`, a DistributedSampler (shuffled with seed + epoch, one shard per rank, padded by repeating samples,
  as Lightning's own under DDP) that can start part-way through its epoch. A checkpoint records how many batches of the
  epoch were consumed; the resumed run skips exactly those, without reading them.
- The random number generators (Python, NumPy, torch CPU and CUDA) of every rank are saved in the checkpoint and put
  back just before the resumed run fetches its first batch, so dropout and the captions drawn per image continue as if
  the run had never stopped.

Not exact with `data.num_workers > 0`: what the worker processes draw (the captions drawn per image in the caption
DataModule's collate) in the rest of the interrupted epoch comes from other worker seeds than in the uninterrupted
run; with `persistent_workers` in every later epoch too. Data order and the main process's draws stay exact.
"""

from __future__ import annotations

import itertools
import os
import random
import warnings
from collections.abc import Iterator
from typing import Any
from weakref import proxy

import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.trainer.states import TrainerFn
from pytorch_lightning.utilities import rank_zero_warn
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from vqacap.lightning.common import gather_objects


class ResumableSampler(DistributedSampler):
    """DistributedSampler (shuffle with seed + epoch, `drop_last=False`) whose next pass can start at sample `start`.

    `generator` is for the DataLoader: reseeded with seed + epoch too, it gives the worker processes seeds that do not
    depend on how often the loader was iterated before, and spares the global generator the DataLoader's draw.
    """

    def __init__(self, dataset: Dataset, num_replicas: int, rank: int, seed: int) -> None:
        super().__init__(
            dataset, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed, drop_last=False
        )
        self.generator = torch.Generator()
        self.start = 0  # samples of this rank's shard to skip, once
        self.set_epoch(0)

    def set_epoch(self, epoch: int) -> None:
        super().set_epoch(epoch)
        self.generator.manual_seed(self.seed + epoch)

    def __iter__(self) -> Iterator[int]:
        start, self.start = self.start, 0
        return itertools.islice(super().__iter__(), start, None)


def resumable_loader(loader: DataLoader, sampler: ResumableSampler) -> DataLoader:
    """The same DataLoader (dataset, batch size, collate, workers) drawing its samples from `sampler`."""
    return DataLoader(
        loader.dataset, batch_size=loader.batch_size, sampler=sampler, collate_fn=loader.collate_fn,
        num_workers=loader.num_workers, pin_memory=loader.pin_memory, drop_last=loader.drop_last,
        timeout=loader.timeout, worker_init_fn=loader.worker_init_fn, generator=sampler.generator,
        multiprocessing_context=loader.multiprocessing_context, prefetch_factor=loader.prefetch_factor,
        persistent_workers=loader.persistent_workers,
    )  # fmt: skip


def rng_states() -> dict[str, Any]:
    """Every global random number generator a training step may draw from, in types `torch.load(weights_only=True)`
    accepts (Lightning loads checkpoints so)."""
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    states = {
        "python": random.getstate(),
        "numpy": (name, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states: dict[str, Any]) -> None:
    name, keys, pos, has_gauss, gauss = states["numpy"]
    random.setstate(states["python"])
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(states["torch"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


class ResumableCheckpoint(ModelCheckpoint):
    """ModelCheckpoint whose checkpoints resume exactly (see the module docstring); takes ModelCheckpoint's arguments.

    save_last_every_n_train_steps: also write `last.ckpt` every that many optimiser steps, mid-epoch (None: at epoch
        ends only). Unlike `every_n_train_steps`, it leaves the top-k selection at validation time.
    data_seed: seed of the training order (conf: the run's `seed`).
    resumable_data: rebuild the DataModule's training DataLoader around `ResumableSampler` (off: Lightning's order,
        which restarts the interrupted epoch's order from a different shuffle).
    """

    PARTIAL_SUFFIX = ".partial"

    def __init__(
        self,
        *args: Any,
        save_last_every_n_train_steps: int | None = None,
        data_seed: int = 0,
        resumable_data: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.save_last_every_n_train_steps = save_last_every_n_train_steps
        self.data_seed = data_seed
        self.resumable_data = resumable_data
        self._last_saved_at_step = -1  # global step of the newest last.ckpt
        self._position = {"epoch": 0, "batches": 0}  # training batches consumed so far in the current epoch
        # Loaded from a checkpoint: the position applies to the next training loader, the random states just before
        # its first batch.
        self._resume_position: dict[str, int] | None = None
        self._resume_rng: list[dict[str, Any]] | None = None  # one per rank

    # -- atomic files ----------------------------------------------------------------------------------------------
    def _save_checkpoint(self, trainer: pl.Trainer, filepath: str) -> None:
        # ModelCheckpoint._save_checkpoint with the write made atomic (the loggers hear of the file once it is there).
        partial = filepath + self.PARTIAL_SUFFIX
        trainer.save_checkpoint(
            partial, self.save_weights_only
        )  # every rank takes part; global rank 0 writes
        if trainer.is_global_zero:
            with open(partial, "rb") as f:
                os.fsync(f.fileno())
            os.replace(partial, filepath)
        trainer.strategy.barrier("ResumableCheckpoint._save_checkpoint")
        self._last_global_step_saved = trainer.global_step
        self._last_checkpoint_saved = filepath
        if trainer.is_global_zero:
            for logger in trainer.loggers:
                logger.after_save_checkpoint(proxy(self))

    # -- last.ckpt mid-epoch and at every epoch end ---------------------------------------------------------------
    def _save_last_checkpoint(self, trainer: pl.Trainer, monitor_candidates: dict[str, torch.Tensor]) -> None:
        super()._save_last_checkpoint(trainer, monitor_candidates)
        self._last_saved_at_step = trainer.global_step

    def _save_last_now(self, trainer: pl.Trainer) -> None:
        fitting = (
            trainer.state.fn == TrainerFn.FITTING and not trainer.sanity_checking and not trainer.fast_dev_run
        )
        if self.save_last and fitting and self._last_saved_at_step != trainer.global_step:
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs, batch, batch_idx
    ) -> None:
        epoch_done = batch_idx + 1 >= trainer.num_training_batches
        self._position = {
            "epoch": trainer.current_epoch + int(epoch_done),
            "batches": 0 if epoch_done else batch_idx + 1,
        }
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        n = self.save_last_every_n_train_steps
        stepped = (batch_idx + 1) % trainer.accumulate_grad_batches == 0  # no gradients half-accumulated
        if n and stepped and not epoch_done and trainer.global_step % n == 0:
            self._save_last_now(trainer)  # the epoch's last batch is saved after validation instead

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_train_epoch_end(trainer, pl_module)
        if self._should_save_on_train_epoch_end(trainer):
            self._save_last_now(trainer)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_validation_end(trainer, pl_module)
        if not self._should_save_on_train_epoch_end(trainer):
            self._save_last_now(trainer)

    # -- position and random state in the checkpoint --------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        # Called on every rank while a checkpoint is made; rank 0 writes the states of all ranks.
        return {
            **super().state_dict(),
            "position": dict(self._position),
            "rng": gather_objects([rng_states()]),
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        state_dict = dict(state_dict)
        self._resume_position = state_dict.pop("position", None)
        self._resume_rng = state_dict.pop("rng", None)
        super().load_state_dict(state_dict)
        if (
            self.resumable_data
        ):  # the loader we build does resume: Lightning's warning that it cannot is wrong here
            warnings.filterwarnings("ignore", message=".*your dataloader is not resumable.*")

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_train_start(trainer, pl_module)
        states, self._resume_rng = self._resume_rng, None
        if states is not None and len(states) == trainer.world_size:
            set_rng_states(states[trainer.global_rank])
        elif states is not None:
            rank_zero_warn(
                f"a checkpoint of {len(states)} processes resumed on {trainer.world_size}: random states not restored"
            )

    # -- a resumable training order --------------------------------------------------------------------------------
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        datamodule = trainer.datamodule
        if stage != "fit" or not self.resumable_data or datamodule is None or trainer.overfit_batches:
            return
        if getattr(datamodule.train_dataloader, "resumable", False):
            return  # a second fit with the same DataModule
        build = datamodule.train_dataloader

        def train_dataloader() -> DataLoader:
            return self._resumable(build(), trainer)

        train_dataloader.resumable = True
        datamodule.train_dataloader = train_dataloader

    def _resumable(self, loader: DataLoader, trainer: pl.Trainer) -> DataLoader:
        sampler = ResumableSampler(loader.dataset, trainer.world_size, trainer.global_rank, self.data_seed)
        position, self._resume_position = self._resume_position, None
        if position is not None:
            sampler.set_epoch(position["epoch"])
            sampler.start = position["batches"] * loader.batch_size
        else:
            sampler.set_epoch(trainer.current_epoch)
        return resumable_loader(loader, sampler)
