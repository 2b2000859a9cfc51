"""`vqacap extract` with a randomly initialised fasterrcnn_resnet50_fpn saved to a local file, on generated images."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.models.detection import fasterrcnn_resnet50_fpn

from tests.conftest import VQACAP
from vqacap.cli import main
from vqacap.data.store import RegionStore, RegionStoreWriter, partial_path
from vqacap.extract import extract
from vqacap.models.regions import FEATURE_DIM, grid_boxes, select_regions

SIZES = {3: (80, 60), 17: (64, 96), 391895: (70, 70)}  # image id -> (width, height)
SMALL = {
    "min_size": 64,
    "max_size": 96,
    "proposals": 50,
    "progress": False,
}  # tiny detector inputs: a fast test


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("ckpt") / "fasterrcnn_random.pth"
    torch.save(fasterrcnn_resnet50_fpn(weights=None, weights_backbone=None).state_dict(), path)
    return path


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    folder = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    for image_id, (w, h) in SIZES.items():
        pixels = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
        pixels[h // 4 : h // 2, w // 4 : w // 2] = [255, 0, 0]  # something box-like
        Image.fromarray(pixels).save(folder / f"COCO_val2014_{image_id:012d}.png")
    (folder / "README.txt").write_text("not an image")
    return folder


@pytest.fixture(scope="module")
def store(weights, images, tmp_path_factory):
    out = tmp_path_factory.mktemp("out") / "regions.h5"
    assert extract(images, weights, out, max_boxes=12, min_boxes=5, **SMALL) == (3, 0, [])
    return RegionStore(out)


def test_regions_have_features_and_boxes_inside_their_images(store):
    assert sorted(store.image_ids.tolist()) == sorted(SIZES)
    for image_id, (w, h) in SIZES.items():
        n = store.row(image_id)
        assert (store.image_w[n], store.image_h[n]) == (w, h)
        features, boxes = store.read(image_id)
        assert 5 <= len(features) <= 12 and features.shape[1] == FEATURE_DIM == store.feature_dim
        assert np.isfinite(features).all()
        assert (boxes[:, :2] >= 0).all() and (boxes[:, 2] <= w).all() and (boxes[:, 3] <= h).all()
        assert (boxes[:, 2:] >= boxes[:, :2]).all()


def test_extraction_is_deterministic_and_resumable(store, weights, images, tmp_path):
    out = tmp_path / "again.h5"
    extract(images, weights, out, max_boxes=12, min_boxes=5, **SMALL)
    again = RegionStore(out)
    for image_id in SIZES:
        np.testing.assert_array_equal(again.read(image_id)[0], store.read(image_id)[0])
        np.testing.assert_array_equal(again.read(image_id)[1], store.read(image_id)[1])
    again.close()
    assert extract(images, weights, out, max_boxes=12, min_boxes=5, **SMALL) == (0, 3, [])


def test_missing_or_wrong_weights_are_clear_errors(images, tmp_path, capsys):
    missing = tmp_path / "nowhere.pth"
    args = ["extract", "--images", str(images), "--out", str(tmp_path / "s.h5")]
    assert main([*args, "--weights", str(missing)]) == 2
    assert capsys.readouterr().err.strip() == (
        f"error: {missing}: detector weights not found (a local fasterrcnn_resnet50_fpn state dict is needed)"
    )
    other = tmp_path / "resnet.pth"
    torch.save({"conv1.weight": torch.zeros(1)}, other)
    assert main([*args, "--weights", str(other)]) == 2
    assert "not a fasterrcnn_resnet50_fpn state dict" in capsys.readouterr().err


def test_without_detections_proposals_then_a_grid_fill_min_boxes():
    no_boxes = torch.zeros(0, 4)
    proposals = torch.tensor(
        [[0.0, 0, 10, 10], [0, 0, 10, 11], [20, 20, 40, 40]]
    )  # the second duplicates the first
    boxes = select_regions(
        no_boxes, torch.zeros(0), proposals, (50, 60), max_boxes=36, min_boxes=6, conf_thresh=0.2
    )
    assert len(boxes) == 6
    assert boxes[:2].tolist() == [[0, 0, 10, 10], [20, 20, 40, 40]]
    assert boxes[2].tolist() == [0, 0, 60, 50]  # the whole image comes first in the grid
    assert len(grid_boxes((50, 60), 6)) >= 6


def test_confident_detections_come_first_and_are_capped():
    det = torch.tensor([[0.0, 0, 5, 5], [10, 10, 20, 20], [30, 30, 40, 40], [0, 30, 10, 40]])
    scores = torch.tensor([0.9, 0.8, 0.7, 0.1])
    boxes = select_regions(det, scores, det, (50, 50), max_boxes=2, min_boxes=1, conf_thresh=0.5)
    assert boxes.tolist() == det[:2].tolist()
    boxes = select_regions(det, scores, det, (50, 50), max_boxes=10, min_boxes=4, conf_thresh=0.75)
    assert boxes.tolist() == det.tolist()  # two confident, then the best below the threshold


def test_bad_images_are_skipped_and_reported_and_their_batch_kept(weights, tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    pixels = np.random.default_rng(1).integers(0, 255, (60, 80, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(folder / "5.png")
    Image.new("1", (10_000, 6_000)).save(folder / "6.png")  # 60 megapixels: over the decoding cap
    data = (folder / "5.png").read_bytes()
    (folder / "7.png").write_bytes(data[: len(data) // 2])  # truncated
    (folder / "8.png").write_bytes(b"")
    out = tmp_path / "regions.h5"
    extracted, skipped, problems = extract(
        folder, weights, out, max_boxes=6, min_boxes=2, batch_size=8, **SMALL
    )
    assert (extracted, skipped) == (1, 0)  # the good image of the batch
    assert [p.split(": ")[0] for p in problems] == [str(folder / f"{i}.png") for i in (6, 7, 8)]
    assert "10000x6000 pixels is more than" in problems[0] and "truncated" in problems[1]
    assert RegionStore(out).image_ids.tolist() == [5]


def test_a_second_extract_into_a_store_in_use_exits_at_once_with_one_line(weights, images, tmp_path):
    """A refused run says why in one line and ends: no worker or lock wait keeps it alive."""
    out = tmp_path / "busy.h5"
    command = [
        *VQACAP, "extract", "--weights", str(weights), "--images", str(images), "--out", str(out),
        "--min-size", "64", "--max-size", "96", "--proposals", "50", "--device", "cpu", "--no-progress",
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1]), "OMP_NUM_THREADS": "1"}
    with RegionStoreWriter(out, FEATURE_DIM):  # the first run, holding the store
        second = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            _, stderr = second.communicate(timeout=120)
        finally:
            second.kill()
        assert second.returncode == 2, stderr
        assert stderr.strip().splitlines() == [
            f"error: {partial_path(out)}: in use by another process (another run is writing this store)"
        ]
    assert not out.exists()  # nothing was written by either
