"""Runs and what they leave: the `vqacap` command for a subprocess, and the values a run logged."""

from __future__ import annotations

import csv
import sys
from pathlib import Path

VQACAP = [sys.executable, "-m", "vqacap.cli"]  # the `vqacap` console command, for a subprocess


def logged(run_dir: Path, key: str) -> list[float]:
    """The values of `key` in a run's CSV log (`logger=csv`), in the order logged; rows without it are skipped."""
    with (Path(run_dir) / "csv" / "metrics.csv").open() as f:
        return [float(row[key]) for row in csv.DictReader(f) if row.get(key)]
