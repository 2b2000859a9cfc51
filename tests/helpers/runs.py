"""Runs and what they leave: the `vqacap` command for a subprocess, tiny training runs, a real-data recipe's files
prepared through `vqacap prepare`, and the values a run logged."""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

from omegaconf import OmegaConf

from tests.helpers.configs import TINY_CAPTIONER
from tests.helpers.karpathy import karpathy_file
from tests.helpers.tsv import write_tsv
from tests.helpers.vqa2 import run_prepare
from vqacap.cli import main as vqacap
from vqacap.train import run

VQACAP = [sys.executable, "-m", "vqacap.cli"]  # the `vqacap` console command, for a subprocess
TINY_RUN = ["+trainer.limit_train_batches=2", "test=false", "callbacks.attention_maps=null"]


def logged(run_dir: Path, key: str) -> list[float]:
    """The values of `key` in a run's CSV log (`logger=csv`), in the order logged; rows without it are skipped."""
    with (Path(run_dir) / "csv" / "metrics.csv").open() as f:
        return [float(row[key]) for row in csv.DictReader(f) if row.get(key)]


def train_tiny(make_cfg, *overrides: str) -> Path:
    """A tiny run folder as `python -m vqacap.train` leaves it: checkpoints/ and .hydra/config.yaml."""
    cfg = make_cfg(*overrides, *TINY_RUN)
    run(cfg)
    out = Path(cfg.paths.output_dir)
    (out / ".hydra").mkdir(exist_ok=True)
    OmegaConf.save(cfg, out / ".hydra" / "config.yaml")
    return out


def prepare_features(tmp_path: Path, image_ids, out: Path) -> None:
    """`vqacap prepare features` on a bottom-up-attention TSV of 36 random regions per image: the store at out."""
    tsv = write_tsv(tmp_path / "features.tsv", image_ids)
    assert vqacap(["prepare", "features", "--tsv", str(tsv), "--out", str(out), "--no-progress"]) == 0


def prepare_real_data(experiment: str, data_dir: Path, tmp_path: Path, files: dict) -> list[str]:
    """Tiny public-format files for a real-data recipe, through `vqacap prepare`; the overrides the run needs."""
    if experiment.startswith("caption_coco"):
        coco = data_dir / "coco"
        args = ["--karpathy", str(karpathy_file(tmp_path)), "--out", str(coco), "--min-count", "1"]
        assert vqacap(["prepare", "coco-captions", *args]) == 0
        prepare_features(tmp_path, [9, 25, 30, 42], coco / "regions.h5")
        return [*TINY_CAPTIONER, "model.metrics=[Bleu_4,CIDEr]"]
    vqa2 = data_dir / "vqa2"
    assert run_prepare(files, vqa2) == 0
    questions = [path for key, path in files.items() if not key.endswith("_ann")]
    image_ids = sorted({q["image_id"] for f in questions for q in json.loads(f.read_text())["questions"]})
    prepare_features(tmp_path, image_ids, vqa2 / "regions.h5")
    return ["model.net.hidden_size=32"]
