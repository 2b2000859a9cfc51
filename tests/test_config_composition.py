"""Configs composed, not copied: each cluttered Shapes data config is its plain one with the cluttered generator and
its own folder, so a setting added to the plain one (as `seed` once was) reaches the cluttered one too."""

from __future__ import annotations

from pathlib import Path

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


# The detector options each recipe built its model with when conf/model/bottom_up_detector.yaml still wrote every
# default out beside DetectorOptions (image_mean and image_std came from DetectorOptions alone): the paper's settings,
# then each recipe's changes. Now DetectorOptions is the one place of the defaults.
PAPER_DETECTOR = {
    "depth": 101, "width": 64, "blocks": None, "norm": "frozen_bn", "pretrained": None, "frozen_stages": 3,
    "res5_dilation": True, "min_size": 600, "max_size": 1000, "image_mean": [0.485, 0.456, 0.406],
    "image_std": [0.229, 0.224, 0.225], "anchor_sizes": [64, 128, 256, 512], "aspect_ratios": [0.5, 1.0, 2.0],
    "rpn_channels": 512, "rpn_pre_nms_top_n_train": 12000, "rpn_post_nms_top_n_train": 2000,
    "rpn_pre_nms_top_n_test": 6000, "rpn_post_nms_top_n_test": 300, "rpn_nms_thresh": 0.7, "rpn_min_size": 16,
    "rpn_batch_size_per_image": 64, "rpn_positive_fraction": 0.5, "pooler": "roi_pool", "pool_size": 14,
    "sampling_ratio": 2, "box_batch_size_per_image": 64, "box_positive_fraction": 0.5, "box_fg_iou_thresh": 0.5,
    "box_bg_iou_thresh": 0.5, "box_score_thresh": 0.0, "box_nms_thresh": 0.3, "box_loss_beta": 1.0,
    "bias_lr_mult": 2.0, "detections_per_img": 400, "class_embedding_dim": 256, "attribute_hidden_dim": 512,
    "attribute_loss_weight": 0.5,
}  # fmt: skip
SHAPES_DETECTOR = {
    **PAPER_DETECTOR, "pooler": "roi_align", "box_loss_beta": 1 / 9, "bias_lr_mult": 1.0, "rpn_min_size": 0,
    "depth": 18, "width": 16, "blocks": [1, 1, 1, 1], "norm": "group_norm", "frozen_stages": 0,
    "res5_dilation": False, "min_size": 256, "max_size": 256, "anchor_sizes": [32, 64, 128], "rpn_channels": 64,
    "rpn_pre_nms_top_n_train": 600, "rpn_post_nms_top_n_train": 150, "rpn_pre_nms_top_n_test": 300,
    "rpn_post_nms_top_n_test": 50, "pool_size": 8, "sampling_ratio": 1, "box_batch_size_per_image": 16,
    "detections_per_img": 100,
}  # fmt: skip
RECIPE_DETECTORS = {
    "detector_shapes": SHAPES_DETECTOR,
    "detector_shapes_cluttered": {
        **SHAPES_DETECTOR, "width": 24, "min_size": 384, "max_size": 384, "rpn_post_nms_top_n_test": 100
    },
    "detector_vg_r101": {**PAPER_DETECTOR, "pretrained": "/data/weights/resnet101_imagenet.pth"},
}  # fmt: skip


@pytest.mark.parametrize("experiment", sorted(RECIPE_DETECTORS))
def test_detector_recipes_compose_the_options_they_always_had(experiment):
    from dataclasses import asdict

    from vqacap.models.detector import DetectorOptions

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose("train", overrides=[f"experiment={experiment}", "paths.data_dir=/data"])
    composed = OmegaConf.to_container(cfg.model.detector, resolve=True)
    assert composed == RECIPE_DETECTORS[experiment]
    # and the options the model is built with are those values
    built = {
        k: list(v) if isinstance(v, tuple) else v for k, v in asdict(DetectorOptions(**composed)).items()
    }
    assert built == {**composed, "blocks": built["blocks"]} and (
        composed["blocks"] in (None, built["blocks"])
    )


EXPERIMENTS = sorted(p.stem for p in (Path(CONFIG_DIR) / "experiment").glob("*.yaml"))
GPU_RECIPES = {"caption_coco_xe", "caption_coco_scst", "detector_vg_r101", "vqa2_reference", "vqa2_updown",
               "vqa2_updown_adamax"}  # fmt: skip
DEFAULT_CALLBACKS = [
    "stop_on_non_finite", "model_checkpoint", "last_checkpoint", "random_state", "learning_rate_monitor",
    "attention_maps", "epoch_progress", "progress_bar", "model_summary",
]  # fmt: skip


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_experiment_composes_its_trainer_and_callbacks_as_before(experiment):
    """The callbacks run in the default list's order (a detector's with detection images for attention maps), and
    the trainer is the one-GPU or the CPU delta on trainer/default.yaml."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose("train", overrides=[f"experiment={experiment}", "paths.data_dir=/data"])
    callbacks = [name for name, node in cfg.callbacks.items() if node is not None]
    if experiment.startswith("detector_"):
        expected = [c for c in DEFAULT_CALLBACKS if c != "attention_maps"] + ["detection_images"]
        if experiment == "detector_shapes_demo":  # `make demo`'s quick detector draws no detection images
            expected.remove("detection_images")
    else:
        expected = DEFAULT_CALLBACKS
    assert callbacks == expected
    trainer = cfg.trainer
    gpu = experiment in GPU_RECIPES
    assert (trainer.accelerator, trainer.precision) == (("gpu", "bf16-mixed") if gpu else ("cpu", "32-true"))
    assert trainer.plugins[0]._target_ == "vqacap.checkpoints.AtomicCheckpointIO"
    assert trainer.enable_model_summary is False
