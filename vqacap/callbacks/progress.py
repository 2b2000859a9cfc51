"""One line of progress per epoch, for logs read off a terminal (SLURM output files, `make train > log`, `tee`).

The progress bar redraws one line of a terminal; written to a file it is either nothing (stdout redirected: the bar goes
to stderr) or thousands of carriage-return updates. This callback writes, after each training epoch,

    epoch 3/5  step 1200  train/loss 1.8421  val/CIDEr 1.9570  val/Bleu_4 0.7012  412.3 samples/s  elapsed 0:03:21

into `log_file` (the run folder's `train.log`), and prints it too when stdout is not a terminal. The test metrics get one
line of the same form in the file only: the train command prints them as a table. `EpochProgressBar` is Lightning's
bar with the epochs numbered as these lines number them. Not here: the metrics themselves (the LightningModule logs
them).
"""

from __future__ import annotations

import datetime
import sys
import time
from pathlib import Path

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import TQDMProgressBar
from pytorch_lightning.utilities import rank_zero_only


class EpochProgress(pl.Callback):
    def __init__(self, log_file: str | None, print_lines: bool | None = None) -> None:
        """`log_file`: appended to, one line per epoch (None: no file). `print_lines`: also print each line on stdout;
        None: only when stdout is not a terminal (a terminal has the progress bar)."""
        super().__init__()
        self.log_file = Path(log_file) if log_file else None
        self.print_lines = print_lines
        self._start = time.perf_counter()
        self._reset_epoch()

    def _reset_epoch(self) -> None:
        self._loss_sum = 0.0
        self._loss_batches = 0
        self._samples = 0
        self._epoch_start = time.perf_counter()

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._start = time.perf_counter()

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._reset_epoch()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        if isinstance(loss, torch.Tensor):
            # A float per batch waits for the device; the mean loss of the epoch is what the line reports.
            self._loss_sum += float(loss.detach())
            self._loss_batches += 1
        self._samples += _batch_size(batch)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        seconds = time.perf_counter() - self._epoch_start
        epochs = f"/{trainer.max_epochs}" if trainer.max_epochs and trainer.max_epochs > 0 else ""
        fields = [f"epoch {trainer.current_epoch + 1}{epochs}", f"step {trainer.global_step}"]
        if self._loss_batches:
            fields.append(f"train/loss {self._loss_sum / self._loss_batches:.4f}")
        fields += _metrics(trainer, "val/")
        if seconds > 0 and self._samples:
            fields.append(f"{self._samples / seconds:.1f} samples/s")
        fields.append(f"elapsed {self._elapsed()}")
        self.write("  ".join(fields))

    def on_test_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # Into train.log only: the test metrics reach the screen once, as the train command's table.
        self.write("  ".join(["test", *_metrics(trainer, "test/"), f"elapsed {self._elapsed()}"]), echo=False)

    def _elapsed(self) -> str:
        return str(datetime.timedelta(seconds=round(time.perf_counter() - self._start)))

    @rank_zero_only
    def write(self, line: str, echo: bool = True) -> None:
        """Append `line` to the log file; with `echo`, print it too (see `print_lines`)."""
        printing = self.print_lines if self.print_lines is not None else not sys.stdout.isatty()
        if echo and printing:
            print(line, flush=True)
        if self.log_file is not None:
            self.log_file.parent.mkdir(parents=True, exist_ok=True)
            with self.log_file.open("a") as f:
                f.write(line + "\n")


class EpochProgressBar(TQDMProgressBar):
    """Lightning's progress bar on a terminal, its epochs numbered as the epoch lines number them ("Epoch 1/5" ...
    "Epoch 5/5"; Lightning's own bars count from 0, "Epoch 0/4"). Off a terminal it is off: its carriage-return
    updates would fill a log file, where the epoch lines say the same once per epoch."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if not sys.stdout.isatty():
            self.disable()

    def on_train_epoch_start(self, trainer: pl.Trainer, *args) -> None:
        super().on_train_epoch_start(trainer, *args)
        epochs = f"/{trainer.max_epochs}" if trainer.max_epochs and trainer.max_epochs > 0 else ""
        self.train_progress_bar.set_description(f"Epoch {trainer.current_epoch + 1}{epochs}")


def _metrics(trainer: pl.Trainer, prefix: str) -> list[str]:
    """`name value` of every metric logged under `prefix` so far, the monitored one first."""
    metrics = {k: v for k, v in trainer.callback_metrics.items() if k.startswith(prefix)}
    monitor = getattr(trainer.checkpoint_callback, "monitor", None)
    names = sorted(metrics, key=lambda k: (k != monitor, k))
    return [f"{k} {float(metrics[k]):.4f}" for k in names]


def _batch_size(batch) -> int:
    """Samples in a batch: images (captioning) or questions (VQA); 0 when it cannot tell."""
    ids = getattr(batch, "image_ids", None)
    if isinstance(ids, torch.Tensor):
        return ids.size(0)
    if isinstance(batch, torch.Tensor):
        return batch.size(0)
    if isinstance(batch, (list, tuple, dict)):
        first = next(iter(batch.values() if isinstance(batch, dict) else batch), None)
        return _batch_size(first) if first is not None else 0
    return 0
