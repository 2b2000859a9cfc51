"""Lightning's CSV logger, continued rather than restarted when a run resumes in its own folder.

Lightning's CSV writer deletes an existing `metrics.csv` when it starts; a run resumed from its own `last.ckpt`
(`vqacap/runs.py` files it in its old folder) appends to it instead, so one CSV holds the whole run. A fresh run never
finds a `metrics.csv`: `check_run_folder` refuses folders that hold another run's files.
"""

from __future__ import annotations

import csv
import os

from lightning_fabric.loggers.logger import rank_zero_experiment
from pytorch_lightning.loggers import CSVLogger
from pytorch_lightning.loggers.csv_logs import ExperimentWriter


class _AppendingWriter(ExperimentWriter):
    def __init__(self, log_dir: str) -> None:
        super().__init__(log_dir)
        if os.path.isfile(self.metrics_file_path):
            with open(self.metrics_file_path, newline="") as f:
                self.metrics_keys = list(csv.DictReader(f).fieldnames or [])

    def _check_log_dir_exists(self) -> None:
        """Keep the rows already written: they are this run's, before it was resumed."""


class ResumableCSVLogger(CSVLogger):
    @property
    @rank_zero_experiment
    def experiment(self) -> ExperimentWriter:
        if self._experiment is None:
            os.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _AppendingWriter(log_dir=self.log_dir)
        return self._experiment
