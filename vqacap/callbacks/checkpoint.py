"""What makes a run resumable exactly: `LastCheckpoint` (last.ckpt mid-epoch and at epoch ends) and `RandomState` (the
random generators in every checkpoint), the `last_checkpoint` and `random_state` of conf/callbacks.

A training run killed at any moment (SLURM preemption or time limit, SIGKILL, a crash) and resumed from its last
checkpoint (`ckpt_path=<run>/checkpoints/last.ckpt`; on a requeued SLURM job vqacap/train.py does it by itself) ends
with the same weights and metrics as an uninterrupted run with the same seed and `trainer.deterministic=true`:

- No half-written checkpoint: every file is written atomically (`vqacap.checkpoints.AtomicCheckpointIO`, the trainer's
  checkpoint plugin).
- `last.ckpt` every `every_n_train_steps` optimiser steps and at the end of every epoch.
- The training order is a function of (seed, epoch) only, and the DataModule's `state_dict` in each checkpoint says how
  many batches of the epoch were consumed; the resumed run skips exactly those (vqacap.data.base).
- The random number generators (Python, NumPy, torch CPU and CUDA) of every rank are saved in the checkpoint and put
  back just before the resumed run fetches its first batch, so dropout and the captions drawn per image continue as if
  the run had never stopped.

Not exact with `data.num_workers > 0`: what the worker processes draw (the captions drawn per image in the caption
DataModule's collate, the detection DataModule's flips) in the rest of the interrupted epoch comes from other worker
seeds than in the uninterrupted run; with `persistent_workers` in every later epoch too. Data order and the main
process's draws stay exact.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.utilities import rank_zero_warn

from vqacap.lightning.common import gather_objects


class LastCheckpoint(pl.Callback):
    """Writes `<dirpath>/last.ckpt` every `every_n_train_steps` optimiser steps (None: never mid-epoch) and at the end
    of every training epoch, after its validation. The best checkpoints are Lightning's `ModelCheckpoint`'s."""

    def __init__(
        self, dirpath: str, every_n_train_steps: int | None = None, filename: str = "last.ckpt"
    ) -> None:
        self.path = Path(dirpath) / filename
        self.every_n_train_steps = every_n_train_steps
        self._saved_at_step = -1

    def _save(self, trainer: pl.Trainer) -> None:
        if trainer.sanity_checking or trainer.fast_dev_run or self._saved_at_step == trainer.global_step:
            return
        # Every rank takes part; global rank 0 writes. The full state (optimiser, loops, callbacks): resume is exact.
        # Saying so also keeps Lightning from printing "`weights_only` was not set" at every save.
        trainer.save_checkpoint(self.path, weights_only=False)
        self._saved_at_step = trainer.global_step

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        n = self.every_n_train_steps
        stepped = (batch_idx + 1) % trainer.accumulate_grad_batches == 0  # no gradients half-accumulated
        last_of_epoch = batch_idx + 1 >= trainer.num_training_batches  # saved after validation instead
        if n and stepped and not last_of_epoch and trainer.global_step % n == 0:
            self._save(trainer)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module) -> None:
        self._save(trainer)


def rng_states() -> dict[str, Any]:
    """Every global random number generator a training step may draw from, in types `torch.load(weights_only=True)`
    accepts."""
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


class RandomState(pl.Callback):
    """Saves the random generators of every rank in each checkpoint and, on resume, puts them back just before the
    first training batch (after Lightning's own seeding and the loaders' set-up, which draw from them)."""

    def __init__(self) -> None:
        self._resume: list[dict[str, Any]] | None = None  # one per rank

    def state_dict(self) -> dict[str, Any]:
        # Called on every rank while a checkpoint is made; rank 0 writes the states of all ranks.
        return {"rng": gather_objects([rng_states()])}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._resume = state_dict.get("rng")

    def on_train_start(self, trainer: pl.Trainer, pl_module) -> None:
        states, self._resume = self._resume, None
        if states is not None and len(states) == trainer.world_size:
            set_rng_states(states[trainer.global_rank])
        elif states is not None:
            rank_zero_warn(
                f"a checkpoint of {len(states)} processes resumed on {trainer.world_size}: random states not restored"
            )
