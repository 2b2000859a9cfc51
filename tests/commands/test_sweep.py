"""Sweeps: the sweep_shapes experiment is a multirun, a real 2-job multirun through the local submitit launcher, and
`python -m vqacap.sweep` summarising the jobs of a multirun folder."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.utils import instantiate

from tests.helpers.configs import TINY_CAPTIONER, TINY_OVERRIDES
from vqacap.sweep import collect, find_multirun, main, table
from vqacap.train import CONFIG_DIR

REPO = Path(__file__).resolve().parents[2]


def _job(multirun: Path, number: int, overrides: list[str], metrics: dict | None) -> None:
    job = multirun / str(number)
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in overrides))
    if metrics is not None:
        (job / "test_metrics.json").write_text(
            json.dumps({"experiment": "x", "checkpoint": "c", "metrics": metrics})
        )


@pytest.fixture
def multirun(tmp_path) -> Path:
    folder = tmp_path / "sweep_shapes" / "2025-01-02_03-04-05"
    folder.mkdir(parents=True)
    (folder / "multirun.yaml").write_text("hydra: {}\n")  # the basic sweeper writes it, Optuna's does not
    _job(
        folder,
        0,
        ["experiment=sweep_shapes", "model.optimizer.lr=0.001"],
        {"test/CIDEr": 0.5, "test/Bleu_4": 0.2},
    )
    _job(
        folder,
        1,
        ["experiment=sweep_shapes", "model.optimizer.lr=0.004"],
        {"test/CIDEr": 0.9, "test/Bleu_4": 0.3},
    )
    _job(folder, 10, ["experiment=sweep_shapes", "model.optimizer.lr=0.01"], None)  # failed or still running
    return folder


def test_summary_lists_every_job_with_the_settings_it_varies_and_its_metrics(multirun):
    lines = table(collect(multirun)).splitlines()
    assert lines[0].split() == ["job", "model.optimizer.lr", "test/Bleu_4", "test/CIDEr", "status"]
    assert lines[2].split() == ["0", "0.001", "0.2000", "0.5000", "ok"]
    assert lines[4].split()[:4] == ["10", "0.01", "-", "-"] and "no test_metrics.json" in lines[4]
    assert "experiment" not in lines[0]  # the same in every job


def test_summary_sorts_by_a_metric_and_finds_the_newest_multirun(multirun, capsys):
    older = multirun.parent / "2024-12-31_00-00-00"
    _job(older, 0, ["experiment=sweep_shapes"], {"test/CIDEr": 0.1})
    assert find_multirun(multirun.parent) == multirun
    assert main([str(multirun.parent), "--sort", "test/CIDEr"]) == 0
    rows = capsys.readouterr().out.splitlines()[3:]
    assert [r.split()[0] for r in rows] == ["1", "0", "10"]


def test_summary_errors_name_the_problem(tmp_path, multirun, capsys):
    assert main([str(tmp_path / "nothing")]) == 2
    assert "no job folders" in capsys.readouterr().err
    assert main([str(multirun), "--sort", "test/SPICE"]) == 2
    assert "test/SPICE" in capsys.readouterr().err


def test_sweep_shapes_is_a_multirun_over_learning_rate_and_attention_size():
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose("train", overrides=["experiment=sweep_shapes"], return_hydra_config=True)
    assert str(cfg.hydra.mode) == "RunMode.MULTIRUN"
    assert set(cfg.hydra.sweeper.params) == {"model.optimizer.lr", "model.net.attention_dim"}
    assert cfg.trainer.limit_train_batches < 1 and list(cfg.logger) == ["csv"]


def _multirun(make_cfg, data_root: Path, sweep_dir: Path, *overrides: str) -> None:
    """`python -m vqacap.train` on the tiny Shapes with these multirun overrides, the jobs' outputs in sweep_dir."""
    datamodule = instantiate(make_cfg("experiment=caption_shapes").data, _recursive_=False)
    datamodule.prepare_data()  # the tiny Shapes and its vocabulary, before two jobs could both write them
    command = [
        sys.executable, "-m", "vqacap.train", "experiment=caption_shapes", *TINY_OVERRIDES, *TINY_CAPTIONER,
        f"paths.data_dir={data_root}", f"hydra.sweep.dir={sweep_dir}", "callbacks.attention_maps=null",
        "+trainer.enable_progress_bar=false", "model.decoding.beam_size=1", *overrides,
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline"}
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]


def test_local_submitit_launcher_runs_a_two_job_multirun(make_cfg, data_root, tmp_path, capsys):
    sweep_dir = tmp_path / "multirun"
    _multirun(
        make_cfg,
        data_root,
        sweep_dir,
        "hydra.mode=MULTIRUN",
        "hydra/launcher=local",
        "model.optimizer.lr=0.001,0.01",
    )
    assert (sweep_dir / ".submitit").is_dir()  # the jobs went through submitit, not the basic launcher
    records = collect(find_multirun(sweep_dir))
    assert [r["overrides"]["model.optimizer.lr"] for r in records] == ["0.001", "0.01"]
    assert all("test/CIDEr" in r["metrics"] for r in records)
    assert main([str(sweep_dir)]) == 0 and "model.optimizer.lr" in capsys.readouterr().out


def test_optuna_search_runs_trials_on_the_validation_score(make_cfg, data_root, tmp_path):
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper", reason="hydra-optuna-sweeper is not installed")
    sweep_dir = tmp_path / "optuna"
    _multirun(
        make_cfg, data_root, sweep_dir, "+hparams_search=caption_shapes_optuna", "trainer.limit_train_batches=1.0",
        "hydra.sweeper.n_trials=2", "hydra.sweeper.sampler.n_startup_trials=1",
    )  # fmt: skip
    assert "best_value" in (sweep_dir / "optimization_results.yaml").read_text()
    records = collect(find_multirun(sweep_dir))
    assert len(records) == 2 and all("val/CIDEr" in r["metrics"] for r in records)
