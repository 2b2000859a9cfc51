"""Where runs are filed (vqacap/runs.py): names, unique folders, one folder per multirun, resuming in a run's folder."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig

from tests.helpers.configs import TINY_CAPTIONER, TINY_OVERRIDES
from vqacap import runs
from vqacap.runs import RunFolderError
from vqacap.sweep import collect, find_multirun
from vqacap.train import CONFIG_DIR, run

REPO = Path(__file__).resolve().parents[1]  # subprocesses run this checkout's vqacap, not an installed one


def _hydra_cfg(overrides: list[str], log_dir: Path):
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose("train", overrides=[f"paths.log_dir={log_dir}", *overrides], return_hydra_config=True)
    HydraConfig().set_config(cfg)
    return cfg


@pytest.mark.parametrize(
    ("overrides", "name"),
    [
        ([], "caption_shapes"),
        (["experiment=vqa_shapes"], "vqa_shapes"),
        (["data=coco_karpathy"], "coco_karpathy-updown_captioner"),
        (["experiment=vqa_shapes", "model=vqa_reference"], "shapes_vqa-vqa_reference"),
        (["model.optimizer.lr=1e-3"], "caption_shapes"),
    ],
)
def test_a_run_is_named_by_what_it_trains(tmp_path, overrides, name):
    cfg = _hydra_cfg(overrides, tmp_path)
    assert cfg.name == name
    assert Path(cfg.hydra.run.dir).parent == tmp_path / "train" / "runs" / name


def test_runs_started_in_the_same_second_get_their_own_folders(tmp_path, monkeypatch):
    monkeypatch.setattr(runs.time, "strftime", lambda pattern: "2026-01-01_00-00-00")
    folders = [Path(_hydra_cfg([], tmp_path).hydra.run.dir) for _ in range(2)]
    assert folders[0] != folders[1]
    assert all(f.name.startswith("2026-01-01_00-00-00_") for f in folders)
    # A folder that exists is never handed out again, whatever the random suffix.
    suffixes = iter(["aaaaaa", "aaaaaa", "bbbbbb"])
    monkeypatch.setattr(runs.secrets, "token_hex", lambda n: next(suffixes))
    first = Path(runs.run_dir(str(tmp_path), None))
    first.mkdir()
    assert Path(runs.run_dir(str(tmp_path), None)).name.endswith("_bbbbbb")


def test_a_folder_holding_another_runs_files_is_refused_and_left_as_it_was(make_cfg, tmp_path):
    cfg = make_cfg("debug=fdr", *TINY_CAPTIONER)
    run(cfg)
    metrics = tmp_path / "run" / "test_metrics.json"
    before = metrics.read_bytes()
    with pytest.raises(RunFolderError, match=r"run: holds another run's files \(test_metrics.json\)"):
        run(make_cfg("debug=fdr", *TINY_CAPTIONER))
    assert metrics.read_bytes() == before


def test_resuming_from_a_runs_last_checkpoint_continues_in_its_folder_and_csv(make_cfg, tmp_path):
    run(make_cfg("trainer.max_epochs=1", "test=false", *TINY_CAPTIONER))
    folder = tmp_path / "run"
    (folder / ".hydra").mkdir()  # what Hydra writes into every run folder
    last = folder / "checkpoints" / "last.ckpt"
    assert Path(_hydra_cfg([f"ckpt_path={last}"], tmp_path / "elsewhere").hydra.run.dir) == folder

    run(make_cfg("trainer.max_epochs=2", f"ckpt_path={last}", *TINY_CAPTIONER))
    rows = list(csv.DictReader((folder / "csv" / "metrics.csv").open()))
    assert sorted({int(r["epoch"]) for r in rows if r.get("val/CIDEr")}) == [0, 1]
    lines = (folder / "train.log").read_text().splitlines()
    assert [line.split("  ")[0] for line in lines] == ["epoch 1/1", "epoch 2/2", "test"]
    assert json.loads((folder / "test_metrics.json").read_text())["metrics"]


def test_a_multirun_over_two_experiments_is_one_sweep_folder(tmp_path, data_root):
    tiny = [o for o in TINY_OVERRIDES if not o.startswith("callbacks.")]
    command = [
        sys.executable,
        "-m",
        "vqacap.train",
        "-m",
        "experiment=caption_shapes,vqa_shapes",
        "debug=fdr",
    ]
    command += [f"paths.root_dir={tmp_path}", f"paths.data_dir={data_root}", *tiny]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stderr[-2000:]
    sweeps = list((tmp_path / "outputs" / "train" / "multiruns").iterdir())
    assert [s.name for s in sweeps] == ["caption_shapes+vqa_shapes"]
    records = collect(find_multirun(sweeps[0]))
    assert [r["overrides"]["experiment"] for r in records] == ["caption_shapes", "vqa_shapes"]
    assert "test/CIDEr" in records[0]["metrics"] and "test/accuracy" in records[1]["metrics"]


def test_a_refused_second_run_leaves_the_first_runs_hydra_files_byte_identical(tmp_path, data_root):
    """The second run is refused before Hydra writes its .hydra/ files: the first run stays drawable."""
    tiny = [o for o in TINY_OVERRIDES if not o.startswith("callbacks.")]
    folder = tmp_path / "shared_run"
    command = [
        sys.executable,
        "-m",
        "vqacap.train",
        "experiment=caption_shapes",
        "debug=fdr",
        *TINY_CAPTIONER,
    ]
    command += [f"paths.root_dir={tmp_path}", f"paths.data_dir={data_root}", f"hydra.run.dir={folder}", *tiny]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    first = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=300, env=env)
    assert first.returncode == 0, first.stderr[-2000:]
    files = ["config.yaml", "hydra.yaml", "overrides.yaml", "../test_metrics.json", "../train.log"]
    before = {name: (folder / ".hydra" / name).read_bytes() for name in files}

    second = subprocess.run(
        [*command, "seed=7", "model.net.hidden_dim=40"], cwd=tmp_path, capture_output=True, text=True, env=env
    )
    assert second.returncode == 1
    assert second.stderr.strip().splitlines() == [
        f"error: {folder}: holds another run's files (test_metrics.json); start in a new folder (leave "
        f"hydra.run.dir unset) or resume that run with ckpt_path={folder / 'checkpoints' / 'last.ckpt'}"
    ]
    assert {name: (folder / ".hydra" / name).read_bytes() for name in files} == before


def test_a_multirun_into_an_earlier_sweeps_folder_is_refused_before_hydra_writes(tmp_path, data_root):
    sweep = tmp_path / "sweep"
    (sweep / "0" / ".hydra").mkdir(parents=True)
    files = {
        "0/.hydra/config.yaml": b"seed: 1\n",
        "0/.hydra/overrides.yaml": b"- seed=1\n",
        "0/test_metrics.json": b"{}",
    }
    for name, content in files.items():
        (sweep / name).write_bytes(content)
    command = [
        sys.executable,
        "-m",
        "vqacap.train",
        "-m",
        "experiment=caption_shapes",
        "debug=fdr",
        "seed=1,2",
    ]
    command += [f"paths.root_dir={tmp_path}", f"paths.data_dir={data_root}", f"hydra.sweep.dir={sweep}"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    done = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [
        f"error: {sweep / '0'}: holds another run's files (test_metrics.json); start in a new folder (leave "
        f"hydra.run.dir unset) or resume that run with ckpt_path={sweep / '0' / 'checkpoints' / 'last.ckpt'}"
    ]
    assert {name: (sweep / name).read_bytes() for name in files} == files
    assert sorted(p.name for p in sweep.iterdir()) == ["0"]
