"""Benchmark `detector` at tiny sizes: the rows it reports and the FLOP count they rest on (no timing asserted)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from vqacap.bench import detector as bench
from vqacap.bench.__main__ import main
from vqacap.bench.models import count_flops
from vqacap.models.detector import BottomUpDetector, DetectorOptions
from vqacap.models.regions import bottom_up_batch

TINY_R101 = DetectorOptions(
    depth=101, width=4, blocks=(1, 1, 2, 1), min_size=48, max_size=80, anchor_sizes=(16, 32), rpn_channels=8,
    rpn_pre_nms_top_n_train=200, rpn_post_nms_top_n_train=40, rpn_pre_nms_top_n_test=100, rpn_post_nms_top_n_test=20,
    pool_size=4, box_batch_size_per_image=16, class_embedding_dim=8, attribute_hidden_dim=8,
)  # fmt: skip
TINY_ARGS = ["--repeats", "1", "--shapes-train-batch", "2", "--shapes-extract-batch", "3", "--r101-train-batch", "1",
             "--r101-extract-batch", "2", "--r101-size", "48", "80", "--peak-sizes", "64",
             "--published-prototxt", str(Path(__file__).parents[1] / "fixtures" / "caffe" / "test.prototxt")]  # fmt: skip


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def rows(tmp_path_factory) -> list[dict]:
    """The rows of `python -m vqacap.bench detector` with the paper's R101 options shrunk."""
    out = tmp_path_factory.mktemp("bench")
    with pytest.MonkeyPatch.context() as patch:
        real = bench.recipe
        patch.setattr(
            bench,
            "recipe",
            lambda name: (TINY_R101, real(name)[1]) if name == "detector_vg_r101" else real(name),
        )
        assert main(["detector", "--out", str(out), *TINY_ARGS]) == 0
    return json.loads((out / "detector.json").read_text())["rows"]


def test_detector_reports_training_and_extraction_at_both_sizes(rows):
    expected = [
        ("shapes", "train", 2),
        ("shapes", "extract", 3),
        ("r101", "train", 1),
        ("r101", "extract", 2),
        ("published", "extract", 1),
    ]
    assert [(r["model"], r["path"], r["batch"]) for r in rows] == expected
    for row in rows:
        assert row["dtype"] == "float32" and row["unit"] == "image"
        assert row["samples/s"] > 0 and 0 < row["best ms"] <= row["median ms"]
        assert row["GFLOP/s"] == pytest.approx(row["GFLOP/sample"] * row["samples/s"])
        assert row["% peak"] == pytest.approx(100 * row["GFLOP/s"] / row["peak GFLOP/s"])
        json.dumps(row)
    targets = {(r["model"], r["path"]): r["target %"] for r in rows}
    assert targets == {("shapes", "train"): None, ("shapes", "extract"): None, ("r101", "train"): 40,
                       ("r101", "extract"): 50, ("published", "extract"): 50}  # fmt: skip


def test_flops_include_the_convolutions():
    # An independent count from the layers' output shapes: 2 * (C_in / groups) * k_h * k_w * C_out per output pixel
    # of every convolution, 2 * in * out per row of every linear layer. Extraction runs nothing else that
    # FlopCounterMode counts.
    torch.manual_seed(0)
    model = BottomUpDetector(["__background__", "a", "b"], ["__no_attribute__", "x", "y"], TINY_R101).eval()
    images = [torch.rand(3, 48, 80), torch.rand(3, 48, 80)]
    expected = []

    def hook(module, inputs, output):
        if isinstance(module, nn.Conv2d):
            k_h, k_w = module.kernel_size
            per_pixel = 2 * module.in_channels // module.groups * k_h * k_w * module.out_channels
            expected.append(per_pixel * output.shape[0] * output.shape[2] * output.shape[3])
        else:
            expected.append(2 * module.in_features * module.out_features * output.shape[:-1].numel())

    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            m.register_forward_hook(hook)
    counted = count_flops(lambda: bottom_up_batch(model, images))
    assert counted == sum(expected)
    assert sum(isinstance(m, nn.Conv2d) for m in model.modules()) > 10  # the count is mostly convolutions
