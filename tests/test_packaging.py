"""vqacap installed from a wheel, away from the checkout: the configs travel inside the package (vqacap/conf)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.helpers.configs import TINY_CAPTIONER, TINY_OVERRIDES

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """A wheel built from a copy of the sources (the build writes build/ and *.egg-info where it runs)."""
    src = tmp_path_factory.mktemp("src")
    for name in ("pyproject.toml", "setup.py", "README.md"):
        shutil.copy(REPO / name, src / name)
    for folder in ("vqacap", "conf"):
        shutil.copytree(REPO / folder, src / folder, ignore=shutil.ignore_patterns("__pycache__"))
    dist = tmp_path_factory.mktemp("dist")
    command = [
        sys.executable,
        "-m",
        "pip",
        "wheel",
        "--no-deps",
        "--no-build-isolation",
        "-q",
        str(src),
        "-w",
    ]
    subprocess.run([*command, str(dist)], check=True, capture_output=True, timeout=300, cwd=src)
    (found,) = dist.glob("vqacap-*.whl")
    return found


def test_the_wheel_ships_every_config_inside_the_package(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    configs = {
        f"vqacap/conf/{p.relative_to(REPO / 'conf').as_posix()}" for p in (REPO / "conf").rglob("*.yaml")
    }
    assert configs and configs <= names
    assert {"vqacap/train.py", "vqacap/cli.py", "vqacap/py.typed", "vqacap/demo/page.html"} <= names
    entry_points = (
        zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith("entry_points.txt"))).decode()
    )
    assert "vqacap-train = vqacap.train:main" in entry_points and "vqacap = vqacap.cli:main" in entry_points


@pytest.mark.slow
def test_vqacap_train_from_the_installed_wheel_runs_anywhere_with_the_users_own_experiment(wheel, tmp_path):
    target = tmp_path / "site"
    pip = [sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(wheel)]
    subprocess.run(pip, check=True, capture_output=True, timeout=300)
    # The user's own configs, in a folder of theirs: an experiment built on a shipped one.
    mine = tmp_path / "my_configs"
    (mine / "experiment").mkdir(parents=True)
    (mine / "experiment" / "my_shapes.yaml").write_text(
        "# @package _global_\ndefaults:\n  - caption_shapes\n\nname: my_shapes\nseed: 7\n"
    )
    work = tmp_path / "elsewhere"
    work.mkdir()
    env = {**os.environ, "PYTHONPATH": str(target), "OMP_NUM_THREADS": "1"}
    overrides = [o for o in TINY_OVERRIDES if o != "logger=csv"] + TINY_CAPTIONER
    command = [
        str(target / "bin" / "vqacap-train"),
        "--config-dir",
        str(mine),
        "experiment=my_shapes",
        "debug=fdr",
    ]
    command += [f"paths.root_dir={work}", *overrides]
    done = subprocess.run(command, cwd=work, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    (run,) = (work / "outputs" / "train" / "runs" / "my_shapes").iterdir()
    assert (run / "test_metrics.json").is_file()
    assert (run / "train.log").read_text().startswith("epoch 1/1")
    assert (
        str(target / "vqacap") in (run / ".hydra" / "hydra.yaml").read_text()
    )  # configs read from the wheel
