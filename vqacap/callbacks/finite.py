"""Stop a run that diverges, and say where: a non-finite loss, gradient or monitored validation metric ends training.

A NaN or Inf loss otherwise trains on silently (every later step is NaN too), and Lightning's `ModelCheckpoint` keeps the
first epoch's checkpoint as best whatever its score. The checks run before the harm: the loss before its backward pass,
the gradients before the optimiser step (so no weights become non-finite), the validation metric before the checkpoint
callbacks save (Lightning runs checkpoint callbacks last). Each costs one device synchronisation per step, far less than
`detect_anomaly`.

Not here: the reason a run diverges. The error names the step and the usual causes (learning rate, NaN/Inf in the
features); `vqacap prepare features` refuses non-finite features, but a store written by other tools may hold them.
"""

from __future__ import annotations

import math

import pytorch_lightning as pl
import torch


class NonFiniteError(RuntimeError):
    """Training diverged; the message is one line naming the step."""


class StopOnNonFinite(pl.Callback):
    def __init__(self, check_gradients: bool = True) -> None:
        """`check_gradients`: also test every gradient before each optimiser step (skipped under 16-bit mixed
        precision, whose gradient scaler skips non-finite steps by design)."""
        super().__init__()
        self.check_gradients = check_gradients

    def on_before_backward(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, loss: torch.Tensor
    ) -> None:
        if not torch.isfinite(loss.detach()).all():
            raise NonFiniteError(
                f"{_where(trainer)}: the training loss is {loss.detach().float().sum().item()}{_HINT}"
            )

    def on_before_optimizer_step(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: torch.optim.Optimizer
    ) -> None:
        if not self.check_gradients or getattr(trainer.precision_plugin, "scaler", None) is not None:
            return
        grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        # One synchronisation for all parameters; a norm would overflow to Inf for large but finite gradients.
        if not grads or torch.stack([g.isfinite().all() for g in grads]).all():
            return
        name = next(
            n for n, p in pl_module.named_parameters() if p.grad is not None and not p.grad.isfinite().all()
        )
        raise NonFiniteError(f"{_where(trainer)}: non-finite gradient of {name}{_HINT}")

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        monitor = getattr(trainer.checkpoint_callback, "monitor", None)
        value = trainer.callback_metrics.get(monitor) if monitor else None
        if trainer.sanity_checking or value is None:
            return
        if not math.isfinite(float(value)):
            raise NonFiniteError(
                f"{_where(trainer)}: validation {monitor} is {float(value)}; no checkpoint was kept for it{_HINT}"
            )


_HINT = " (diverged: lower model.optimizer.lr, or look for NaN/Inf in the region features)"


def _where(trainer: pl.Trainer) -> str:
    return f"training stopped at step {trainer.global_step} (epoch {trainer.current_epoch})"
