"""A tiny bottom-up detector with random weights, and a checkpoint of it in the layout vqacap's detector training
writes: what `vqacap extract --detector` reads, without training one."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

from vqacap.models.detector import BottomUpDetector, DetectorOptions

CLASSES = ["__background__", "circle", "square", "triangle"]
ATTRIBUTES = ["__no_attribute__", "red", "green", "small"]
TINY = DetectorOptions(
    depth=18, width=8, blocks=(1, 1, 1, 1), norm="group_norm", frozen_stages=0, res5_dilation=False,
    min_size=64, max_size=64, anchor_sizes=(16, 32), rpn_channels=16, rpn_pre_nms_top_n_test=200,
    rpn_post_nms_top_n_test=60, pool_size=4,
)  # fmt: skip


def random_detector(seed: int = 0) -> BottomUpDetector:
    """The TINY detector initialised from `seed`, in eval mode."""
    torch.manual_seed(seed)
    model = BottomUpDetector(CLASSES, ATTRIBUTES, TINY).eval()
    # Sharper class scores than a random init gives, so that some proposals pass the 0.2 threshold and some do not:
    # the threshold, not a limit, decides the region counts.
    with torch.no_grad():
        model.roi_heads.box_predictor.cls_score.weight.mul_(300)
    return model


def save_checkpoint(model: BottomUpDetector, path: Path) -> Path:
    """In the layout vqacap.lightning.detector writes (hyper-parameters + "net."-prefixed weights)."""
    hparams = {"detector": dataclasses.asdict(TINY), "classes": CLASSES, "attributes": ATTRIBUTES}
    torch.save(
        {"hyper_parameters": hparams, "state_dict": {f"net.{k}": v for k, v in model.state_dict().items()}},
        path,
    )
    return path
