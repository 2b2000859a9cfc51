"""Benchmarks `peak` and `models` at tiny sizes: the rows they report and the FLOP counts they rest on (no timing asserted)."""

from __future__ import annotations

import argparse
import json

import pytest
import torch

from vqacap.bench import models, peak
from vqacap.bench.__main__ import main

TINY_VQA = models.VQASizes(regions=5, feature_dim=12, tokens=6, words=30, embedding=8, hidden=16, answers=7)
TINY_CAPTIONER = models.CaptionerSizes(
    regions=5, feature_dim=12, words=30, embedding=8, hidden=16, attention=10, max_length=5
)
TINY_ARGS = ["--repeats", "1", "--vqa-batches", "4", "--vqa-infer-batch", "3", "--xe-images", "2",
             "--captions-per-image", "3", "--decode-images", "3", "--beams", "2", "--scst-images", "2",
             "--scst-samples", "3", "--peak-sizes", "64"]  # fmt: skip


def _args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    models.add_arguments(parser)
    return parser.parse_args(argv)


@pytest.fixture(scope="module")
def rows() -> list[dict]:
    return models.run(_args(TINY_ARGS), TINY_VQA, TINY_CAPTIONER)


def test_models_reports_every_path_with_sane_figures(rows):
    expected = [("vqa reference", "train", 4), ("vqa reference", "infer", 3), ("vqa updown", "train", 4),
                ("vqa updown", "infer", 3), ("captioner", "xe", 6), ("captioner", "greedy", 3),
                ("captioner", "beam2", 3), ("captioner", "scst", 2)]  # fmt: skip
    assert [(r["model"], r["path"], r["batch"]) for r in rows] == expected
    for row in rows:
        assert row["dtype"] == "float32" and row["threads"] == torch.get_num_threads()
        assert row["samples/s"] > 0 and 0 < row["best ms"] <= row["median ms"]
        assert row["GFLOP/sample"] > 0 and row["GFLOP/s"] > 0 and row["peak GFLOP/s"] > 0
        assert row["% peak"] == pytest.approx(100 * row["GFLOP/s"] / row["peak GFLOP/s"])
        assert row["% run peak"] <= row["% peak"] * (
            1 + 1e-9
        )  # the run's highest peak is at least the local one
        assert row["GFLOP/s"] == pytest.approx(row["GFLOP/sample"] * row["samples/s"])
        json.dumps(row)  # the JSON file holds the rows as they are
    targets = {(r["model"], r["path"]): r["target %"] for r in rows}
    assert targets[("captioner", "xe")] == 55 and targets[("captioner", "beam2")] is None
    assert {r["form"] for r in rows} == {"fast"}


def test_models_measures_the_paper_forms_on_request():
    rows = models.run(_args([*TINY_ARGS, "--form", "paper", "--only", "vqa updown", "captioner greedy"]),
                      TINY_VQA, TINY_CAPTIONER)  # fmt: skip
    assert [(r["form"], r["model"], r["path"]) for r in rows] == [
        ("paper", "vqa updown", "train"), ("paper", "vqa updown", "infer"), ("paper", "captioner", "greedy")
    ]  # fmt: skip
    assert all(
        r["flops ok"] is None and r["GFLOP/s"] > 0 for r in rows
    )  # the analytic counts are the fast forms'


def test_flop_counts_match_the_flop_counter(rows):
    # `flops ok`: FlopCounterMode's count of one call equals the analytic count of vqa_flops / captioner_flops.
    assert [r["flops ok"] for r in rows] == [True] * len(rows)


def test_scst_rate_counts_only_the_work_the_step_needs(rows):
    # The greedy baseline rides in the sampling pass: its row is multiplied forward and backward (counted, `flops ok`),
    # but only its forward is work the step needs.
    c, images, samples, steps = TINY_CAPTIONER, 2, 3, TINY_CAPTIONER.max_length + 1
    scst = next(r for r in rows if r["path"] == "scst")
    useful = models.captioner_flops(c, images, samples, steps, True) + models.captioner_flops(
        c, images, 1, steps, False
    )
    assert scst["GFLOP/sample"] == pytest.approx(useful / images / 1e9)
    assert useful < models.captioner_flops(c, images, samples + 1, steps, True)


def test_analytic_counts_follow_the_sizes():
    s, b = TINY_VQA, 4
    # Inference is the forward alone; training adds the weight gradients of every product and the input gradients
    # of all but the region-side ones.
    forward = models.vqa_flops(s, "reference", b, train=False)
    assert forward == 2 * b * (s.tokens * (s.embedding + s.hidden) * 3 * s.hidden + s.regions * s.feature_dim * s.hidden
                               + s.hidden * s.hidden + s.regions * s.hidden + s.regions * s.feature_dim
                               + s.hidden * s.hidden + s.feature_dim * s.hidden + 2 * s.hidden * s.hidden
                               + 2 * s.hidden * s.answers)  # fmt: skip
    assert 2 * forward < models.vqa_flops(s, "reference", b, train=True) < 3 * forward
    c = TINY_CAPTIONER
    one = models.captioner_flops(c, images=1, per_image=1, steps=6, train=False)
    # Per-image work (region projections) is shared by the image's sequences; per-step work grows with them.
    assert models.captioner_flops(c, images=2, per_image=1, steps=6, train=False) == 2 * one
    assert models.captioner_flops(c, images=1, per_image=3, steps=6, train=False) < 3 * one


def test_peak_measures_a_positive_rate():
    top = peak.measure([32, 64], repeats=2)
    assert top["n"] in (32, 64) and top["gflops"] > 0 and top["threads"] == torch.get_num_threads()


def test_cli_writes_a_json_file_per_benchmark(tmp_path, capsys):
    assert main(["peak", "--sizes", "32", "--repeats", "1", "--out", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "peak.json").read_text())
    assert result["machine"]["threads"] == torch.get_num_threads()
    assert [r["n"] for r in result["rows"]] == [32]
    assert "gflops" in capsys.readouterr().out
