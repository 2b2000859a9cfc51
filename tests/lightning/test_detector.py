"""The detector through Hydra and a real Trainer: a few steps on a tiny dataset, checkpoints, test metrics, images."""

from __future__ import annotations

import json

import pytest
import torch

from tests.helpers.configs import tiny_detector
from tests.helpers.detection_data import write_detection_dataset
from vqacap.checkpoints import CheckpointError
from vqacap.lightning.loading import load_detector
from vqacap.train import run

TINY_DETECTOR = tiny_detector(pool_size=6, rpn_post_nms_top_n_test=20)


@pytest.fixture(scope="module")
def detection_dir(tmp_path_factory):
    return write_detection_dataset(tmp_path_factory.mktemp("detection"))


def detector_cfg(make_cfg, detection_dir, *overrides):
    return make_cfg(
        "experiment=detector_shapes",
        "data=vg",
        f"data.data_dir={detection_dir}",
        "data.batch_size=4",
        "data.eval_batch_size=4",
        "data.num_workers=0",
        "data.persistent_workers=false",
        "logger=csv",
        "trainer.max_epochs=1",
        "trainer.log_every_n_steps=1",
        "callbacks.detection_images.num_examples=2",
        *TINY_DETECTOR,
        *overrides,
        tiny=False,
    )


def test_detector_trains_checkpoints_and_writes_test_metrics(make_cfg, detection_dir, tmp_path):
    cfg = detector_cfg(make_cfg, detection_dir)
    metrics = run(cfg)
    out = tmp_path / "run"
    written = json.loads((out / "test_metrics.json").read_text())
    for name in (
        "test/mAP",
        "test/weighted_mAP",
        "test/attribute_mAP",
        "test/attribute_weighted_mAP",
        "val/mAP",
    ):
        assert name in written["metrics"] and 0.0 <= written["metrics"][name] <= 1.0
    assert written["metrics"] == pytest.approx(metrics)
    checkpoint = out / "checkpoints" / "epoch000.ckpt"
    assert checkpoint.is_file() and (out / "checkpoints" / "last.ckpt").is_file()
    assert written["checkpoint"] == str(checkpoint)
    # the per-class AP table names the classes and attributes of the data
    table = json.loads((out / "test_ap.json").read_text())
    assert set(table["classes"]) == {"square", "circle"} and set(table["attributes"]) == {
        "red",
        "blue",
        "large",
    }
    # losses logged one by one
    header = (out / "csv" / "metrics.csv").read_text().splitlines()[0].split(",")
    for name in ("loss_objectness", "loss_rpn_box_reg", "loss_classifier", "loss_box_reg", "loss_attribute"):
        assert f"train/{name}" in header
    assert len(list((out / "detections" / "epoch_000").glob("*.png"))) == 2

    # the checkpoint gives back the trained detector, without unpickling
    detector = load_detector(checkpoint)
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)["state_dict"]
    torch.testing.assert_close(detector.backbone.conv1.weight, state["net.backbone.conv1.weight"])
    assert detector.classes == ["__background__", "square", "circle"]
    with torch.no_grad():
        regions = detector.regions([torch.rand(3, 64, 64)])[0]
    assert regions.features.shape[1] == detector.feature_dim == 64  # width 8 x 8 (res5 of basic blocks)


def test_load_detector_refuses_other_checkpoints(tmp_path):
    path = tmp_path / "other.ckpt"
    torch.save({"state_dict": {"w": torch.zeros(1)}, "hyper_parameters": {"words": ["a"]}}, path)
    with pytest.raises(ValueError, match="other.ckpt: not a checkpoint of the bottom-up detector"):
        load_detector(path)
    with pytest.raises(FileNotFoundError, match="missing.ckpt"):
        load_detector(tmp_path / "missing.ckpt")


def test_resuming_from_a_checkpoint_of_another_task_is_refused_naming_it(make_cfg, detection_dir, tmp_path):
    path = tmp_path / "captioner.ckpt"
    torch.save(
        {
            "state_dict": {"net.embed.weight": torch.zeros(4, 2)},
            "hyper_parameters": {"words": ["<pad>", "<bos>", "<eos>", "<unk>"]},
            "pytorch-lightning_version": "2.6.0",
        },
        path,
    )
    cfg = detector_cfg(make_cfg, detection_dir, f"ckpt_path={path}", "test=false")
    with pytest.raises(CheckpointError, match="captioner.ckpt: a captioning checkpoint, not a detector one"):
        run(cfg)
