"""Summary of a Hydra multirun of `vqacap.train`: one row per job, with the settings the sweep varied and its test metrics.

    python -m vqacap.sweep outputs/train/multiruns/sweep_shapes                  # the newest multirun of an experiment
    python -m vqacap.sweep outputs/train/multiruns/sweep_shapes/<date_time>      # one multirun
    python -m vqacap.sweep <folder> --sort test/CIDEr                            # best job first

A multirun folder holds one folder per job (`0/`, `1/`, ...) with the job's overrides
(`.hydra/overrides.yaml`) and, once it has been tested, `test_metrics.json`. A job without metrics (failed, or still
running) gets a row all the same, marked so. Not here: launching the sweep (`python -m vqacap.train -m ...`).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

from omegaconf import OmegaConf


def _jobs(folder: Path) -> list[Path]:
    """The job folders of a multirun folder, in job order (Optuna's sweeper writes no multirun.yaml, only jobs)."""
    jobs = (p.parent for p in folder.glob("*/.hydra") if p.parent.name.isdigit())
    return sorted(jobs, key=lambda p: int(p.name))


def find_multirun(folder: str | Path) -> Path:
    """`folder` if it holds job folders, else the newest multirun folder right under it (names are date_time)."""
    folder = Path(folder)
    if _jobs(folder):
        return folder
    runs = sorted(p for p in folder.glob("*/") if _jobs(p))
    if not runs:
        raise FileNotFoundError(f"{folder}: no job folders (<n>/.hydra) in it or in its subfolders")
    return runs[-1]


def collect(multirun: Path) -> list[dict]:
    """One record per job folder, in job order: {"job", "overrides": {key: value}, "metrics": {name: value} | None}."""
    jobs = sorted(
        (p for p in multirun.iterdir() if p.is_dir() and p.name.isdigit()), key=lambda p: int(p.name)
    )
    records = []
    for job in jobs:
        overrides_file = job / ".hydra" / "overrides.yaml"
        overrides = OmegaConf.to_container(OmegaConf.load(overrides_file)) if overrides_file.is_file() else []
        metrics_file = job / "test_metrics.json"
        metrics = json.loads(metrics_file.read_text())["metrics"] if metrics_file.is_file() else None
        records.append(
            {"job": int(job.name), "overrides": dict(o.split("=", 1) for o in overrides), "metrics": metrics}
        )
    return records


def table(records: list[dict], sort: str | None = None) -> str:
    """The jobs as an aligned text table: job, the overrides whose value differs between jobs, every metric."""
    keys = sorted({k for r in records for k in r["overrides"]})
    varied = [k for k in keys if len({r["overrides"].get(k) for r in records}) > 1] or keys
    names = sorted({m for r in records for m in r["metrics"] or {}})
    if sort is not None:
        if sort not in names:
            raise KeyError(f"--sort {sort}: no job has this metric (metrics: {', '.join(names) or 'none'})")
        records = sorted(records, key=lambda r: -(r["metrics"] or {}).get(sort, -math.inf))
    unfinished = any(r["metrics"] is None for r in records)
    header = ["job", *varied, *names, *(["status"] if unfinished else [])]
    rows = []
    for r in records:
        metrics = r["metrics"] or {}
        status = ["no test_metrics.json" if r["metrics"] is None else "ok"] if unfinished else []
        rows.append(
            [
                str(r["job"]),
                *(r["overrides"].get(k, "") for k in varied),
                *map(_number, map(metrics.get, names)),
                *status,
            ]
        )
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in [header, *rows]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _number(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m vqacap.sweep", description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", help="a multirun folder, or a folder of them (the newest is summarised)")
    parser.add_argument("--sort", metavar="METRIC", help="order the jobs by this test metric, highest first")
    args = parser.parse_args(argv)
    try:
        multirun = find_multirun(args.folder)
        records = collect(multirun)
        print(f"{multirun}: {len(records)} jobs")
        print(table(records, args.sort))
    except (FileNotFoundError, KeyError) as err:
        print(f"error: {err.args[0]}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
