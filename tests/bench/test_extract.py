"""Benchmark `extract` at tiny sizes: one row per stage, the network's share of the peak, and an end-to-end run through
vqacap.extraction (no timing asserted)."""

from __future__ import annotations

import json

import pytest

from vqacap.bench import extract as bench
from vqacap.bench.__main__ import main
from vqacap.models.detector import DetectorOptions

TINY_R101 = DetectorOptions(
    depth=101, width=4, blocks=(1, 1, 2, 1), min_size=48, max_size=80, anchor_sizes=(16, 32), rpn_channels=8,
    rpn_pre_nms_top_n_test=100, rpn_post_nms_top_n_test=20, pool_size=4, class_embedding_dim=8,
    attribute_hidden_dim=8,
)  # fmt: skip
TINY_ARGS = ["--shapes-images", "3", "--shapes-batch", "2", "--r101-images", "1", "--r101-size", "48", "80",
             "--repeats", "1", "--peak-sizes", "64"]  # fmt: skip


pytestmark = pytest.mark.usefixtures("one_thread")


def test_extract_bench_reports_every_stage_and_the_end_to_end_speed(tmp_path):
    with pytest.MonkeyPatch.context() as patch:
        real = bench.recipe
        patch.setattr(
            bench, "recipe", lambda name: (TINY_R101, None) if name == "detector_vg_r101" else real(name)
        )
        assert main(["extract", "--out", str(tmp_path), *TINY_ARGS]) == 0
    rows = json.loads((tmp_path / "extract.json").read_text())["rows"]
    stages = [*bench.STAGES, "network", "stages", "end to end"]
    assert [(r["model"], r["stage"]) for r in rows] == [(m, s) for m in ("shapes", "r101") for s in stages]
    for row in rows:
        assert row["ms/image"] > 0
    shares = [r["share %"] for r in rows if r["model"] == "shapes" and r["stage"] in bench.STAGES]
    assert sum(shares) == pytest.approx(100)
    network = next(r for r in rows if r["stage"] == "network")
    assert network["GFLOP/image"] > 0 and network["% peak"] > 0
    assert all(r["images/s"] > 0 and r["images"] in (3, 1) for r in rows if r["stage"] == "end to end")
