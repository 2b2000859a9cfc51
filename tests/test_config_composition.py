"""Configs composed, not copied: each cluttered Shapes data config is its plain one with the cluttered generator and
its own folder, so a setting added to the plain one (as `seed` once was) reaches the cluttered one too."""

from __future__ import annotations

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf

from vqacap.train import CONFIG_DIR


def _data(name: str) -> dict:
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose("train", overrides=[f"data={name}", "paths.data_dir=/data"])
    return OmegaConf.to_container(cfg.data, resolve=True)


@pytest.mark.parametrize("task", ["captions", "vqa", "vg"])
def test_cluttered_data_configs_differ_from_plain_ones_in_generator_style_and_folder_only(task):
    plain, cluttered = _data(f"shapes_{task}"), _data(f"shapes_cluttered_{task}")
    assert cluttered["generator"].pop("style") == "cluttered"
    assert cluttered.pop("data_dir") == "/data/shapes_cluttered" and plain.pop("data_dir") == "/data/shapes"
    if task == "vg":
        assert cluttered.pop("annotation_dir") == "/data/shapes_cluttered/detection"
        plain.pop("annotation_dir")
    assert cluttered == plain
