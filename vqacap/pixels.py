"""From pixels to words on Shapes in one command (`make pixels`): train the bottom-up detector on the rendered images,
extract its regions and grid features for every image, train and test the captioner and the VQA model on each kind of
features next to the ideal-region and blind references, and print the comparison table.

    python -m vqacap.pixels                                     # plain Shapes
    python -m vqacap.pixels --data shapes_cluttered --caption-epochs 2 --jobs 2
    python -m vqacap.pixels --stages extract caption --features detected grid
    python -m vqacap.pixels --stages table                      # the table of the runs already finished

Stages, each a command one could type (printed before it runs):

1. detector: `python -m vqacap.train experiment=detector_shapes[_cluttered] name=detector-<data>`; skipped when a
   finished run of that name exists (`--retrain` trains again).
2. extract: `vqacap extract --detector <its tested checkpoint> --images <data_dir>/images/{train,val,test}` into
   <data_dir>/detected.h5 (10-100 regions per image), detected36.h5 (36) and grid.h5 (6 x 6 cells of the res5 map);
   resumable, and a complete store is left as it is.
3. caption, vqa: `python -m vqacap.train experiment=<caption|vqa>_shapes<_features> data=<data>_<captions|vqa>
   name=<experiment>-<data> trainer.max_epochs=<epochs>` for each feature kind; the same recipe on every row, only the
   region store changes. `--sat` adds the Show-Attend-Tell captioner on the same stores.
4. table: per run, the test metrics of its newest finished run (`test_metrics.json`) and its wall time.

Each run's output goes to <log_dir>/pixels/<name>.log; `--jobs N` runs N trainings at once, each with the machine's
cores shared out among them (OMP_NUM_THREADS, unless set).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

STAGES = ("detector", "extract", "caption", "vqa", "table")
# Feature kind -> (experiment suffix, region store, `vqacap extract` options); None: made by the Shapes generator.
FEATURES = {
    "ideal": ("", None, None),
    "detected": ("_detected", "detected.h5", ["--min-boxes", "10", "--max-boxes", "100"]),
    "detected36": ("_detected36", "detected36.h5", ["--fixed", "36"]),
    "grid": ("_grid", "grid.h5", ["--grid", "6"]),
    "blind": ("_blind", None, None),
}
TASK_DATA = {"caption": "captions", "vqa": "vqa"}
DETECTOR_RECIPES = {
    "shapes": "detector_shapes",
    "shapes_cluttered": "detector_shapes_cluttered",
    "shapes_demo": "detector_shapes_demo",  # a fifth of Shapes: `make demo`
}
COLUMNS = {
    "caption": ("Bleu_4", "METEOR", "CIDEr", "grounding"),
    "vqa": ("accuracy", "accuracy_yes_no", "accuracy_number", "accuracy_other", "grounding"),
}


@dataclass
class Job:
    name: str
    command: list[str]
    log: Path


def root_paths() -> tuple[Path, Path]:
    """(data_dir, log_dir) as conf/paths/default.yaml resolves them."""
    root = Path(os.environ.get("VQACAP_ROOT", "."))
    return root / "data", root / "outputs"


def train_command(*overrides: str) -> list[str]:
    return [sys.executable, "-m", "vqacap.train", *overrides]


def run_name(experiment: str, data: str) -> str:
    return experiment if data == "shapes" else f"{experiment}-{data}"


def experiments(args: argparse.Namespace, task: str) -> list[tuple[str, str, str, str | None]]:
    """(row label, experiment, run name, region store or None for the recipe's own) of each training run of a task."""
    runs = []
    for feature in args.features:
        suffix, store, _ = FEATURES[feature]
        experiment = f"{task}_shapes{suffix}"
        runs.append((feature, experiment, run_name(experiment, args.data), store))
        if task == "caption" and args.sat and feature != "blind":  # the blind control is the top-down model's
            runs.append(
                (
                    f"{feature}, SAT",
                    "caption_shapes_sat",
                    run_name(f"caption_shapes_sat{suffix}", args.data),
                    store,
                )
            )
    return runs


def training_jobs(args: argparse.Namespace, task: str, log_dir: Path) -> list[Job]:
    epochs = args.caption_epochs if task == "caption" else args.vqa_epochs
    jobs = []
    for _, experiment, name, store in experiments(args, task):
        overrides = [f"experiment={experiment}", f"data={args.data}_{TASK_DATA[task]}", f"name={name}"]
        if store is not None:
            overrides.append(f"++data.store={store}")  # added: the SAT recipe has no store of its own
        if epochs is not None:
            overrides.append(f"trainer.max_epochs={epochs}")
        jobs.append(Job(name, train_command(*overrides, *args.overrides), log_dir / "pixels" / f"{name}.log"))
    return jobs


def run_jobs(jobs: list[Job], parallel: int) -> list[str]:
    """Run the jobs, `parallel` at a time, each into its log; returns the names of those that failed."""
    waiting, running, failed = list(jobs), [], []
    env = dict(os.environ)
    if parallel > 1:  # N runs of 2 threads each on 2 cores spend their time waiting for each other
        env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // parallel)))
    while waiting or running:
        while waiting and len(running) < parallel:
            job = waiting.pop(0)
            job.log.parent.mkdir(parents=True, exist_ok=True)
            print(
                f"[{time.strftime('%H:%M:%S')}] start {job.name}: {' '.join(job.command[1:])} > {job.log}",
                flush=True,
            )
            with job.log.open("w") as log:
                process = subprocess.Popen(job.command, stdout=log, stderr=subprocess.STDOUT, env=env)
            running.append((job, process, time.monotonic()))
        time.sleep(1)
        for entry in list(running):
            job, process, start = entry
            if process.poll() is None:
                continue
            running.remove(entry)
            status = (
                "done" if process.returncode == 0 else f"FAILED (exit {process.returncode}, see {job.log})"
            )
            print(
                f"[{time.strftime('%H:%M:%S')}] {job.name}: {status} in {time.monotonic() - start:.0f} s",
                flush=True,
            )
            if process.returncode != 0:
                failed.append(job.name)
    return failed


def finished_run(log_dir: Path, name: str) -> Path | None:
    """The newest run folder of `name` with a test_metrics.json."""
    found = sorted((log_dir / "train" / "runs" / name).glob("*/test_metrics.json"))
    return found[-1].parent if found else None


def detector_checkpoint(log_dir: Path, data: str) -> Path:
    from vqacap.checkpoints import find_checkpoint

    return find_checkpoint(f"latest:detector-{data}", log_dir)


def extract_jobs(args: argparse.Namespace, data_dir: Path, log_dir: Path) -> list[Job]:
    checkpoint = detector_checkpoint(log_dir, args.data)
    images = [str(data_dir / "images" / split) for split in ("train", "val", "test")]
    jobs = []
    for feature in args.features:
        _, store, options = FEATURES[feature]
        if options is None:
            continue
        command = [
            sys.executable,
            "-m",
            "vqacap.cli",
            "extract",
            "--detector",
            str(checkpoint),
            "--images",
            *images,
        ]
        command += [
            "--out",
            str(data_dir / store),
            *options,
            "--batch-size",
            "8",
            "--device",
            "cpu",
            "--no-progress",
        ]
        jobs.append(
            Job(
                f"extract-{feature}-{args.data}",
                command,
                log_dir / "pixels" / f"extract-{feature}-{args.data}.log",
            )
        )
    return jobs


def wall_time(run: Path) -> float | None:
    """Seconds from the run folder's creation (its config) to its test_metrics.json."""
    config = run / ".hydra" / "config.yaml"
    if not config.is_file():
        return None
    return (run / "test_metrics.json").stat().st_mtime - config.stat().st_mtime


def meteor_of(run: Path, references: Path) -> float | None:
    """METEOR of a captioning run's test captions (the recipes leave it out: a Java process per evaluation), computed
    once into <run>/test_meteor.json; None where METEOR cannot run here."""
    from vqacap.data.formats import load_coco_results as load_results
    from vqacap.metrics.captions import meteor
    from vqacap.metrics.captions.evaluation import evaluate_captions, load_annotations

    cached, results = run / "test_meteor.json", run / "test_captions.json"
    if cached.is_file():
        return json.loads(cached.read_text())["METEOR"]
    if meteor.unavailable() is not None or not results.is_file():
        return None
    score = evaluate_captions(load_annotations(references), load_results(results), ["METEOR"])["METEOR"]
    cached.write_text(json.dumps({"METEOR": score, "references": str(references)}))
    return score


def table(args: argparse.Namespace, log_dir: Path, data_dir: Path) -> str:
    """Markdown tables of the finished runs: one per task, a row per feature kind; METEOR where Java is there."""
    lines = []
    for task in args.tasks:
        columns = COLUMNS[task]
        lines += [f"{task} on {args.data} (test split)", ""]
        lines.append("| features | run | " + " | ".join(columns) + " | wall time |")
        lines.append("|---" * (len(columns) + 3) + "|")
        for feature, _, name, _ in experiments(args, task):
            run = finished_run(log_dir, name)
            if run is None:
                lines.append(
                    f"| {feature} | {name} | " + " | ".join("-" for _ in columns) + " | not finished |"
                )
                continue
            metrics = json.loads((run / "test_metrics.json").read_text())["metrics"]
            if task == "caption" and "test/METEOR" not in metrics:
                metrics["test/METEOR"] = meteor_of(run, data_dir / "captions_test.json")
            values = [metrics.get(f"test/{c}") for c in columns]
            cells = [
                "-" if v is None else f"{v:.2f}" if task == "vqa" and c != "grounding" else f"{v:.3f}"
                for c, v in zip(columns, values)
            ]
            seconds = wall_time(run)
            time_cell = "-" if seconds is None else f"{seconds:.0f} s"
            lines.append(f"| {feature} | {name} | " + " | ".join(cells) + f" | {time_cell} |")
        lines.append("")
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m vqacap.pixels", description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="shapes", choices=list(DETECTOR_RECIPES))
    parser.add_argument("--stages", nargs="+", default=list(STAGES), choices=STAGES)
    parser.add_argument("--features", nargs="+", default=list(FEATURES), choices=list(FEATURES))
    parser.add_argument("--tasks", nargs="+", default=list(TASK_DATA), choices=list(TASK_DATA))
    parser.add_argument("--sat", action="store_true", help="also the Show-Attend-Tell captioner")
    parser.add_argument(
        "--caption-epochs", type=int, help="epochs of every captioning run (default: the recipe's)"
    )
    parser.add_argument("--vqa-epochs", type=int, help="epochs of every VQA run (default: the recipe's)")
    parser.add_argument("--jobs", type=int, default=1, help="training runs at once")
    parser.add_argument(
        "--retrain", action="store_true", help="train the detector even if a finished run exists"
    )
    parser.add_argument("overrides", nargs="*", help="Hydra overrides added to every caption/VQA run")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    data_dir, log_dir = root_paths()
    data_dir = data_dir / args.data
    failed: list[str] = []
    if "detector" in args.stages and (args.retrain or finished_run(log_dir, f"detector-{args.data}") is None):
        name = f"detector-{args.data}"
        job = Job(
            name,
            train_command(f"experiment={DETECTOR_RECIPES[args.data]}", f"name={name}"),
            log_dir / "pixels" / f"{name}.log",
        )
        failed += run_jobs([job], 1)
        if failed:
            return 1
    if "extract" in args.stages:
        failed += run_jobs(extract_jobs(args, data_dir, log_dir), args.jobs)
        if failed:
            return 1
    jobs = [
        job
        for task in ("caption", "vqa")
        if task in args.stages and task in args.tasks
        for job in training_jobs(args, task, log_dir)
    ]
    failed += run_jobs(jobs, args.jobs)
    if "table" in args.stages:
        print(table(args, log_dir, data_dir))
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
