"""Shared fixtures: the real Hydra configs composed and shrunk, and a tiny Shapes dataset generated once per session."""

from __future__ import annotations

import csv
import json
import os
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict

from vqacap.train import CONFIG_DIR

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
torch.set_num_threads(min(2, torch.get_num_threads()))

VQACAP = [sys.executable, "-m", "vqacap.cli"]  # the `vqacap` console command, for a subprocess

# A Shapes dataset small enough for seconds-long runs, and models to match.
TINY_SHAPES = {"train": 60, "val": 12, "test": 12}
TINY_FEATURE_DIM = 64
TINY_OVERRIDES = [
    f"data.generator.sizes={{train:{TINY_SHAPES['train']},val:{TINY_SHAPES['val']},test:{TINY_SHAPES['test']}}}",
    f"data.generator.feature_dim={TINY_FEATURE_DIM}",
    "data.batch_size=4",
    "data.eval_batch_size=12",
    "trainer.max_epochs=1",
    "logger=csv",
    "callbacks.attention_maps.num_examples=2",  # drawing maps costs ~0.5 s per validation epoch at the default 8
]
TINY_CAPTIONER = ["model.net.embed_dim=32", "model.net.hidden_dim=48", "model.net.attention_dim=24"]
# Overfit two batches, one logged loss per step (add the experiment and its number of epochs).
OVERFIT = [
    "debug=overfit",
    "trainer.overfit_batches=2",
    "trainer.log_every_n_steps=1",
    "model.optimizer.lr=0.01",
    "test=false",
]


def tiny_detector(pool_size: int, rpn_post_nms_top_n_test: int) -> list[str]:
    """Overrides that shrink detector_shapes to 64-pixel images and a handful of RoIs."""
    return [
        "model.detector.width=8",
        "model.detector.min_size=64",
        "model.detector.max_size=64",
        "model.detector.anchor_sizes=[16,32]",
        "model.detector.rpn_channels=16",
        f"model.detector.pool_size={pool_size}",
        "model.detector.box_batch_size_per_image=16",
        f"model.detector.rpn_post_nms_top_n_test={rpn_post_nms_top_n_test}",
    ]


def logged(run_dir: Path, key: str) -> list[float]:
    """The values of `key` in a run's CSV log (`logger=csv`), in the order logged; rows without it are skipped."""
    with (Path(run_dir) / "csv" / "metrics.csv").open() as f:
        return [float(row[key]) for row in csv.DictReader(f) if row.get(key)]


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread for a module's tests (`pytestmark = pytest.mark.usefixtures("one_thread")`): threads wait
    for each other on a busy CI machine (7x slower with 2 threads on 2 shared cores)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def data_root(tmp_path_factory) -> Path:
    """paths.data_dir for tests: the tiny Shapes dataset is generated here once, on first use."""
    return tmp_path_factory.mktemp("data")


def compose_train(overrides: list[str], output_dir: Path, data_dir: Path) -> DictConfig:
    """Compose conf/train.yaml exactly as `python -m vqacap.train` would, with outputs under output_dir."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose("train", overrides=[f"paths.data_dir={data_dir}", *overrides], return_hydra_config=True)
    HydraConfig().set_config(cfg)
    with open_dict(cfg):
        del cfg["hydra"]  # a real run's config has no hydra node either
        cfg.paths.output_dir = str(output_dir)
        cfg.paths.log_dir = str(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    return cfg


@pytest.fixture
def make_cfg(tmp_path, data_root):
    def make(*overrides: str, tiny: bool = True) -> DictConfig:
        return compose_train([*(TINY_OVERRIDES if tiny else []), *overrides], tmp_path / "run", data_root)

    return make


PIXEL_DETECTOR = tiny_detector(pool_size=4, rpn_post_nms_top_n_test=30)
PIXEL_SIZES = "data.generator.sizes={train:24,val:6,test:6}"
PIXEL_STEPS = ["trainer.max_epochs=1", "+trainer.limit_train_batches=3", "logger=csv"]
TINY_VQA = ["model.net.hidden_size=32", "model.net.embedding_dim=16"]


def pixel_chain(root: Path, captioner: list[str] = ()) -> dict:
    """From pixels to words in tiny real runs under `root` (about 20 s on 2 cores): Shapes rendered, a detector
    trained 3 steps, its regions extracted, a captioner (with the overrides `captioner`) and a VQA model trained 3
    steps each on them. Returns the paths: root, shapes (the data folder), store, detector, captioner, vqa (the tested
    checkpoints)."""
    from vqacap.cli import main as vqacap
    from vqacap.train import run

    data_root = root / "data"
    detector_cfg = compose_train(
        ["experiment=detector_shapes", PIXEL_SIZES, *PIXEL_DETECTOR, *PIXEL_STEPS, "data.batch_size=4", "data.eval_batch_size=6",
         "callbacks.detection_images=null"],
        root / "detector", data_root,
    )  # fmt: skip
    run(detector_cfg)
    detector = json.loads((root / "detector" / "test_metrics.json").read_text())["checkpoint"]
    shapes = data_root / "shapes"
    store = root / "detected.h5"
    images = [str(shapes / "images" / split) for split in ("train", "val", "test")]
    assert vqacap(["extract", "--detector", detector, "--images", *images, "--out", str(store),
                   "--dtype", "float32", "--no-progress"]) == 0  # fmt: skip
    common = [
        PIXEL_SIZES,
        f"data.store={store}",
        *PIXEL_STEPS,
        "data.batch_size=4",
        "callbacks.attention_maps=null",
    ]
    run(
        compose_train(
            ["experiment=caption_shapes_detected", *common, *TINY_CAPTIONER, *captioner],
            root / "captioner",
            data_root,
        )
    )
    run(compose_train(["experiment=vqa_shapes_detected", *common, *TINY_VQA], root / "vqa", data_root))
    return {
        "root": root,
        "shapes": shapes,
        "store": store,
        "detector": detector,
        "captioner": json.loads((root / "captioner" / "test_metrics.json").read_text())["checkpoint"],
        "vqa": json.loads((root / "vqa" / "test_metrics.json").read_text())["checkpoint"],
    }
