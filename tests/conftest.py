"""Shared fixtures: the real Hydra configs composed and shrunk, and a tiny Shapes dataset generated once per session.

The builders behind them, and those the tests call directly, are in tests/helpers/."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from omegaconf import DictConfig

from tests.helpers import vqa2
from tests.helpers.configs import TINY_OVERRIDES, compose_train

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
torch.set_num_threads(min(2, torch.get_num_threads()))


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


@pytest.fixture
def make_cfg(tmp_path, data_root):
    def make(*overrides: str, tiny: bool = True) -> DictConfig:
        return compose_train([*(TINY_OVERRIDES if tiny else []), *overrides], tmp_path / "run", data_root)

    return make


@pytest.fixture
def official(tmp_path) -> dict[str, Path]:
    """VQA v2's official question and annotation files (tests/helpers/vqa2.py) in tmp_path; key -> path."""
    return vqa2.write_official(tmp_path)
