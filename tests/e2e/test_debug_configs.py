"""Every debug config (conf/debug/) with every experiment (conf/experiment/): composed with Hydra's compose API, and run
through a real Trainer. Recipes written for a GPU are composed with `trainer=cpu`, as a user without one would run them."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra.utils import instantiate
from omegaconf import OmegaConf

from tests.helpers.configs import TINY_CAPTIONER
from tests.helpers.runs import logged, prepare_real_data
from vqacap.train import CONFIG_DIR, run

DEBUGS = sorted(p.stem for p in (Path(CONFIG_DIR) / "debug").glob("*.yaml"))
EXPERIMENTS = sorted(p.stem for p in (Path(CONFIG_DIR) / "experiment").glob("*.yaml"))
REAL_DATA = {"coco_karpathy", "vqa2"}
LIMITS = ("limit_train_batches", "limit_val_batches", "limit_test_batches", "overfit_batches")
CPU_LOADER = ["data.num_workers=0", "data.pin_memory=false", "data.persistent_workers=false"]


def test_the_configs_are_found():
    assert {"fdr", "limit", "overfit"} <= set(DEBUGS)
    assert {"caption_shapes", "vqa_shapes", "caption_coco_xe", "vqa2_updown"} <= set(EXPERIMENTS)


def _on_cpu(make_cfg, experiment: str, *overrides: str, tiny: bool = True):
    cfg = make_cfg(f"experiment={experiment}", *overrides, tiny=tiny)
    if cfg.trainer.accelerator != "cpu":
        cfg = make_cfg(f"experiment={experiment}", *overrides, "trainer=cpu", *CPU_LOADER, tiny=tiny)
    return cfg


@pytest.mark.parametrize("experiment", EXPERIMENTS)
@pytest.mark.parametrize("debug", DEBUGS)
def test_debug_config_composes_into_a_trainer_with_a_batch_in_every_loop(make_cfg, debug, experiment):
    cfg = _on_cpu(make_cfg, experiment, f"debug={debug}", tiny=False)
    trainer = instantiate(cfg.trainer, logger=False, callbacks=[], enable_progress_bar=False)
    if not cfg.trainer.get("fast_dev_run"):
        # A fraction rounds down to no batch on a small split; a count gives every loop at least one batch.
        for key in OmegaConf.load(Path(CONFIG_DIR) / "debug" / f"{debug}.yaml").trainer.keys() & LIMITS:
            value = cfg.trainer[key]
            assert isinstance(value, int) and value >= 1, (key, value)
        assert trainer.max_epochs <= 30
    else:
        assert trainer.fast_dev_run == 1


def _run_for_real(make_cfg, tmp_path, debug: str, experiment: str, files: dict) -> None:
    composed = _on_cpu(make_cfg, experiment, tiny=False)
    if composed.data.get("generator"):
        overrides = ["model.net.hidden_size=32"] if "hidden_size" in composed.model.net else [*TINY_CAPTIONER]
        tiny = True
    else:
        data_dir = tmp_path / "data"
        overrides = [
            f"paths.data_dir={data_dir}",
            *prepare_real_data(experiment, data_dir, tmp_path, files),
        ]
        if composed.data.get(
            "glove"
        ):  # pretrained word vectors are a download of the user's; learnt from scratch here
            overrides.append("data.glove=null")
        tiny = False
    # SCST recipes start from the newest cross-entropy run (init_from); from scratch here, which runs the same loops.
    cfg = _on_cpu(make_cfg, experiment, f"debug={debug}", "init_from=null", *overrides, tiny=tiny)
    metrics = run(cfg)
    assert metrics and all(k.startswith("test/") or k == cfg.model.monitor for k in metrics)
    out = tmp_path / "run"
    epochs = [line for line in (out / "train.log").read_text().splitlines() if line.startswith("epoch ")]
    assert epochs and all("train/loss" in line for line in epochs), "a training loop ran no batch"
    if cfg.get("logger"):
        assert logged(out, cfg.model.monitor), "no validation epoch was logged"


# One real run per debug config in the default suite; every other pair (real-data recipes on the CPU included) is slow.
FAST = {(debug, "caption_shapes") for debug in DEBUGS} | {("limit", "vqa_shapes")}


@pytest.mark.parametrize(
    ("debug", "experiment"),
    [
        pytest.param(debug, experiment, marks=[] if (debug, experiment) in FAST else [pytest.mark.slow])
        for debug in DEBUGS
        for experiment in EXPERIMENTS
    ],
)
def test_debug_config_runs_with_the_experiment(make_cfg, tmp_path, debug, experiment, official):
    _run_for_real(make_cfg, tmp_path, debug, experiment, official)
