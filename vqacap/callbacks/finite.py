"""Stop a run that diverges, and say where: a non-finite loss, gradient or monitored validation metric ends training,
and so does a finite loss that has grown by orders of magnitude.

A NaN or Inf loss otherwise trains on silently (every later step is NaN too), and Lightning's `ModelCheckpoint` keeps the
first epoch's checkpoint as best whatever its score. The checks run before the harm: the loss before its backward pass,
the gradients before the optimiser step (so no weights become non-finite), the validation metric before the checkpoint
callbacks save (Lightning runs checkpoint callbacks last). Each costs one device synchronisation per step, far less than
`detect_anomaly`.

A divergence can also stay finite (Adam at lr=1e10: loss 5e11, exit 0). The rule for that: the running mean of the
absolute training loss (an exponential moving average, weight 0.1 per step) after `divergence_warmup` steps is the
run's early value (by default the first loss, computed before any update: such a run has diverged by its second
step); training stops when the running mean exceeds `divergence_factor` times max(early value, 1). The floor of 1
keeps losses near zero (self-critical training's) from tripping it on noise. The default, 1000 times, is three orders
of magnitude: a healthy run's loss falls from its first value (cross-entropy from about ln V, 3 to 9) and
self-critical losses stay within a few units; `divergence_factor: null` turns it off.

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
    def __init__(
        self,
        check_gradients: bool = True,
        divergence_factor: float | None = 1000.0,
        divergence_warmup: int = 1,
    ) -> None:
        """`check_gradients`: also test every gradient before each optimiser step (skipped under 16-bit mixed
        precision, whose gradient scaler skips non-finite steps by design). `divergence_factor`, `divergence_warmup`:
        the finite divergence rule of the module docstring (None: off)."""
        super().__init__()
        if divergence_factor is not None and not divergence_factor > 1:
            raise ValueError(f"divergence_factor must be above 1 (or null), got {divergence_factor}")
        self.check_gradients = check_gradients
        self.divergence_factor = divergence_factor
        self.divergence_warmup = divergence_warmup
        self._running: float | None = None  # running mean of |loss|
        self._early: float | None = None  # its value after the warmup steps
        self._seen = 0

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._running, self._early, self._seen = None, None, 0  # a resumed run takes its own early value

    def on_before_backward(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, loss: torch.Tensor
    ) -> None:
        value = loss.detach().float().sum().item()
        if not math.isfinite(value):
            raise NonFiniteError(f"{_where(trainer)}: the training loss is {value}{_HINT}")
        if self.divergence_factor is not None:
            self._check_growth(trainer, abs(value))

    def _check_growth(self, trainer: pl.Trainer, value: float) -> None:
        self._running = value if self._running is None else 0.9 * self._running + 0.1 * value
        self._seen += 1
        if self._seen == self.divergence_warmup:
            self._early = self._running
        limit = self.divergence_factor * max(self._early or 0.0, 1.0)
        if self._early is not None and self._running > limit:
            raise NonFiniteError(
                f"{_where(trainer)}: the training loss's running mean {self._running:.3g} is over "
                f"{self.divergence_factor:g} times its early value {self._early:.3g}{_HINT}"
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
