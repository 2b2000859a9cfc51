"""The published detector through the commands: `vqacap extract --detector X.caffemodel --prototxt P` writes what
generate_tsv writes, `--compare-tsv` checks a store against a released TSV, and a captioner trained on features of the
published detector captions a new image with it (`vqacap caption --detector X.caffemodel`)."""

from __future__ import annotations

import base64
import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from PIL import Image

from tests.helpers.configs import TINY_CAPTIONER, compose_train
from vqacap.cli import main as vqacap
from vqacap.data.captions import CaptionDataModule
from vqacap.data.store import RegionStore
from vqacap.lightning.loading import load_module
from vqacap.train import run

FIXTURES = Path(__file__).parents[1] / "fixtures" / "caffe"
CAFFE = ["--detector", str(FIXTURES / "tiny.caffemodel"), "--prototxt", str(FIXTURES / "test.prototxt")]


def released_tsv(path: Path, rows: dict[int, dict]) -> Path:
    """Rows in generate_tsv.py's format: image_id, image_w, image_h, num_boxes, boxes, features (base64 float32)."""
    with path.open("w") as f:
        for image_id, r in rows.items():
            boxes, features = r["tsv_boxes"].astype(np.float32), r["tsv_features"].astype(np.float32)
            fields = [image_id, int(r["tsv_image_w"]), int(r["tsv_image_h"]), len(boxes),
                      base64.b64encode(boxes.tobytes()).decode(), base64.b64encode(features.tobytes()).decode()]  # fmt: skip
            f.write("\t".join(map(str, fields)) + "\n")
    return path


def test_extract_with_the_caffemodel_writes_the_released_rows_and_compares_them(tmp_path, capsys):
    images = tmp_path / "images"
    images.mkdir()
    rows = {}
    for image_id, name in ((1, "chelsea"), (2, "rocket")):
        row = dict(np.load(FIXTURES / f"tiny_{name}.npz"))
        Image.fromarray(row["image_bgr"][:, :, ::-1]).save(images / f"{image_id:06d}.png")
        rows[image_id] = row
    store = tmp_path / "published.h5"
    argv = [
        "extract",
        "--images",
        str(images),
        *CAFFE,
        "--out",
        str(store),
        "--dtype",
        "float32",
        "--no-progress",
    ]
    tsv = released_tsv(tmp_path / "released.tsv", rows)
    assert vqacap([*argv, "--compare-tsv", str(tsv)]) == 0
    out = capsys.readouterr().out
    assert "extracted 2" in out
    assert "image 1: boxes 91 vs 91 released, matched 91 (IoU >= 0.99), same order" in out
    assert "image 2: boxes 85 vs 85 released, matched 85 (IoU >= 0.99), same order" in out
    assert (
        "2 images in both: 176/176 released boxes matched, 2 images with the same boxes in the same order"
        in out
    )

    regions = RegionStore(store)
    for image_id, row in rows.items():
        features, boxes = regions.read(image_id)
        assert np.abs(boxes - row["tsv_boxes"]).max() <= 1e-3
        assert np.abs(features - row["tsv_features"]).max() <= 1e-4 * np.abs(row["tsv_features"]).max()
        labels = row["cls_prob"][row["keep_boxes"], 1:].argmax(axis=1) + 1
        assert regions.read_field(image_id, "object_labels").tolist() == labels.tolist()
    assert regions.field_names("object_labels")[0] == "__class_0__"
    regions.close()


def test_wrong_detector_files_end_in_one_line(tmp_path, capsys):
    images = tmp_path / "images"
    images.mkdir()
    tsv = tmp_path / "features.tsv"
    tsv.write_text("1\t10\t10\t1\tAAAA\tAAAA\n")
    for argv, words in (
        (["--detector", str(tsv)], "PyTorch checkpoint or .caffemodel"),
        (
            ["--detector", str(FIXTURES / "tiny.caffemodel")],
            "prototxt was assumed: give the model's own with --prototxt",
        ),
        (
            ["--detector", str(FIXTURES / "test.prototxt"), "--prototxt", str(FIXTURES / "test.prototxt")],
            "not a",
        ),
    ):
        assert vqacap(["extract", "--images", str(images), *argv, "--out", str(tmp_path / "s.h5")]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and words in err, err
    assert not (tmp_path / "s.h5").exists()


@pytest.mark.usefixtures("one_thread")
def test_a_captioner_trained_on_published_features_captions_an_image_with_the_caffemodel(tmp_path, capsys):
    """Shapes images -> the published (tiny) detector's store -> a captioner trained on it for a few steps ->
    `vqacap caption IMAGE --detector X.caffemodel`: the caption the same captioner decodes from the stored regions."""
    data_root, store = tmp_path / "data", tmp_path / "published.h5"
    cfg = compose_train(
        ["experiment=caption_shapes_detected", "data.generator.sizes={train:8,val:2,test:2}",
         "data.generator.feature_dim=64", f"data.store={store}", "trainer.max_epochs=1",
         "+trainer.limit_train_batches=2", "logger=csv", "data.batch_size=4", "callbacks.attention_maps=null",
         *TINY_CAPTIONER],
        tmp_path / "captioner", data_root,
    )  # fmt: skip
    shapes = Path(cfg.data.data_dir)
    instantiate(cfg.data.generator, root=str(shapes))
    folders = [str(shapes / "images" / split) for split in ("train", "val", "test")]
    assert vqacap(["extract", "--images", *folders, *CAFFE, "--out", str(store), "--dtype", "float32",
                   "--no-progress"]) == 0  # fmt: skip
    run(cfg)
    captioner = json.loads((tmp_path / "captioner" / "test_metrics.json").read_text())["checkpoint"]
    capsys.readouterr()

    image = sorted((shapes / "images" / "test").iterdir())[0]
    assert vqacap(["caption", str(image), *CAFFE, "--captioner", captioner, "--beam", "2"]) == 0
    path, caption = capsys.readouterr().out.strip().split("\t")[:2]
    assert path == str(image) and caption

    module = load_module(captioner)
    module.decoding = dataclasses.replace(module.decoding, beam_size=2)
    data = CaptionDataModule(str(shapes), store=str(store), generator=None)
    data.setup("test")
    with torch.no_grad():
        decoded = module(data.examples("test", [int(image.stem)]).to(module.device), module.decoding)
    assert caption == module.vocab.decode(decoded.tokens[0, 0].tolist())


def test_grid_features_of_the_published_detector(tmp_path):
    """`--grid N` with the published detector: res5 over the whole res4 map, N x N cells per image."""
    images = tmp_path / "images"
    images.mkdir()
    bgr = np.load(FIXTURES / "tiny_rocket.npz")["image_bgr"]
    Image.fromarray(bgr[:, :, ::-1]).save(images / "000007.png")
    store = tmp_path / "grid.h5"
    assert (
        vqacap(
            ["extract", "--images", str(images), *CAFFE, "--grid", "3", "--out", str(store), "--no-progress"]
        )
        == 0
    )
    regions = RegionStore(store)
    features, boxes = regions.read(7)
    assert features.shape == (9, 64) and np.isfinite(features).all()
    assert boxes[0].tolist() == pytest.approx([0, 0, 400 / 3, 50]) and boxes[-1].tolist() == pytest.approx(
        [800 / 3, 100, 400, 150]
    )
    regions.close()


def test_the_hydra_entry_extracts_with_the_caffemodel_as_the_command(tmp_path):
    """`vqacap-extract detector=X.caffemodel prototxt=P` (what a SLURM launcher runs) writes generate_tsv's rows."""
    images = tmp_path / "images"
    images.mkdir()
    row = dict(np.load(FIXTURES / "tiny_rocket.npz"))
    Image.fromarray(row["image_bgr"][:, :, ::-1]).save(images / "000002.png")
    out = tmp_path / "regions.h5"
    command = [
        sys.executable, "-m", "vqacap.extract_hydra", f"images=[{images}]",
        f"detector={FIXTURES / 'tiny.caffemodel'}", f"prototxt={FIXTURES / 'test.prototxt'}", f"out={out}",
        "dtype=float32", "num_workers=0", f"hydra.run.dir={tmp_path / 'run'}",
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=Path(__file__).parents[2])
    assert done.returncode == 0, done.stderr[-3000:]
    features, boxes = RegionStore(out).read(2)
    assert np.abs(boxes - row["tsv_boxes"]).max() <= 1e-3
    assert np.abs(features - row["tsv_features"]).max() <= 1e-4 * np.abs(row["tsv_features"]).max()
