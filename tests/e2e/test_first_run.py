"""The first run as a newcomer meets it: what `vqacap train` prints, and in which order; Shapes generation that says
what it makes; `vqacap train --help` that starts with the usage and the config groups."""

from __future__ import annotations

import logging
import subprocess
import sys
import warnings

from omegaconf import OmegaConf

from tests.helpers.configs import TINY_CAPTIONER
from tests.helpers.runs import VQACAP
from vqacap.data.generated import run_generator
from vqacap.train import quiet_dependency_warnings, run


def test_a_run_names_its_folder_first_numbers_epochs_from_one_and_prints_its_test_metrics_once(
    make_cfg, tmp_path, capfd, caplog, monkeypatch
):
    caplog.set_level(logging.INFO)  # Lightning's messages, the model summary among them
    # As on a terminal: the progress bar, no epoch lines.
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True)
    cfg = make_cfg("experiment=caption_shapes", *TINY_CAPTIONER, "debug=limit", "trainer.max_epochs=1")
    metrics = run(cfg)
    out, err = capfd.readouterr()
    lines = out.splitlines()
    assert lines[0].startswith(f"run folder: {tmp_path / 'run'}")
    assert len([line for line in lines if "test/CIDEr" in line]) == 1  # the table's row
    assert all(f"{name} " in out for name in metrics)
    assert "Test metric" not in out  # Lightning's box of raw floats
    assert "Epoch 1/1" in out and "Epoch 0/0" not in out
    assert (
        "trainable parameters" in caplog.text
    )  # vqacap's model summary, without Lightning's FLOPs count of 0
    assert "FLOPs" not in out + err + caplog.text


def test_lightnings_leafspec_deprecation_is_silenced_by_the_train_command():
    from pytorch_lightning.utilities._pytree import _tree_flatten

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        quiet_dependency_warnings()
        _tree_flatten({"a": 1})
    assert not [w for w in caught if "LeafSpec" in str(w.message)]


def test_shapes_generation_says_what_it_makes_and_where_once(tmp_path, capfd):
    node = OmegaConf.create(
        {
            "_target_": "vqacap.shapes.generate",
            "sizes": {"train": 6, "val": 2, "test": 2},
            "feature_dim": 8,
        }
    )
    run_generator(node, tmp_path / "shapes")
    out, err = capfd.readouterr()
    assert "Shapes: generating 10 scenes (6 train, 2 val, 2 test)" in out and str(tmp_path / "shapes") in out
    assert f"Shapes: written to {tmp_path / 'shapes'}" in out
    assert "10/10" in out and not err  # the progress bar's last state; stderr is for warnings and errors
    run_generator(node, tmp_path / "shapes")  # up to date: nothing to say
    assert capfd.readouterr() == ("", "")


def test_train_help_is_the_usage_and_the_config_groups():
    done = subprocess.run([*VQACAP, "train", "--help"], capture_output=True, text=True, timeout=120)
    lines = done.stdout.splitlines()
    assert done.returncode == 0 and lines[0].startswith("usage: vqacap train")
    assert len(lines) < 40  # not the composed config
    groups = {line.split(":")[0] for line in lines if ": " in line and " " not in line.split(":")[0]}
    assert {"data", "model", "trainer", "logger", "callbacks", "experiment", "debug"} <= groups
    assert "shapes_cluttered_vqa" in done.stdout and "bottom_up_detector" in done.stdout
