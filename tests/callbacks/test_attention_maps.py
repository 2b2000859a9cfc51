"""The AttentionMaps callback in real Trainer runs on tiny Shapes: PNGs each validation epoch, wandb and TensorBoard."""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from PIL import Image

import vqacap.callbacks.attention_maps as callback_module
from tests.helpers.configs import TINY_CAPTIONER
from tests.helpers.references import import_reference
from vqacap.callbacks import AttentionMaps
from vqacap.draw import PANEL, VQA_PANEL, attention_maps
from vqacap.train import run

TINY_VQA = ["model.net.hidden_size=32", "model.net.embedding_dim=16"]
SHORT = ["+trainer.limit_train_batches=2"]
IMAGE_SIZE = 128  # Shapes images are 128 x 128


def test_maps_are_drawn_each_validation_epoch_and_not_in_the_sanity_check(make_cfg, monkeypatch):
    saved = []
    real_save = callback_module.save_maps
    monkeypatch.setattr(
        callback_module, "save_maps", lambda maps, folder: saved.append(folder) or real_save(maps, folder)
    )
    cfg = make_cfg(
        "experiment=caption_shapes",
        *TINY_CAPTIONER,
        *SHORT,
        "trainer.max_epochs=2",
        "test=false",
        "callbacks.attention_maps.num_examples=8",
    )  # the default
    assert cfg.trainer.get("num_sanity_val_steps", 2) > 0  # the sanity check runs and must not draw
    run(cfg)
    out = Path(cfg.paths.output_dir) / "attention"
    assert saved == [out / "epoch_000", out / "epoch_001"]
    for epoch in saved:
        pngs = sorted(epoch.glob("*.png"))
        assert len(pngs) == 8  # num_examples of conf/callbacks/default.yaml
        for png in pngs:
            with Image.open(png) as figure:
                # The caption strip above rows of word panels, each panel the image scaled to PANEL pixels.
                assert figure.width >= PANEL and figure.height > PANEL
    assert not (Path(cfg.paths.output_dir) / "wandb").exists()  # CSV logger only, PNGs all the same


def test_vqa_maps_show_one_panel_per_question(make_cfg):
    # Question ids are image id * 100 + n; the val images follow the 60 training images.
    ids = "callbacks.attention_maps.ids=[6100,6200,6300]"
    cfg = make_cfg("experiment=vqa_shapes", *TINY_VQA, *SHORT, "test=false", ids)
    run(cfg)
    pngs = sorted((Path(cfg.paths.output_dir) / "attention" / "epoch_000").glob("*.png"))
    assert [p.stem for p in pngs] == ["6100", "6200", "6300"]  # question 0 of the first three val images
    for png in pngs:
        with Image.open(png) as figure:
            assert figure.width == VQA_PANEL and figure.height > VQA_PANEL  # the text above one square panel


def wandb_records(path: Path):
    """The records of a wandb 0.31 `.wandb` file: a LevelDB log (7-byte file header, 32 KiB blocks, each chunk with a
    checksum, length and type header: full, first, middle, last) of serialised `wandb_internal_pb2.Record`s."""
    from wandb.proto import wandb_internal_pb2

    data, pos, block, pending = path.read_bytes(), 7, 1 << 15, b""
    assert data[:4] == b":W&B"
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a header is padding
            pos += block - pos % block
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        chunk, pos = data[pos + 7 : pos + 7 + length], pos + 7 + length
        pending = chunk if kind in (1, 2) else pending + chunk
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            yield record


def test_wandb_offline_run_holds_the_images_and_their_attention_boxes(make_cfg, tmp_path, monkeypatch):
    wandb = import_reference("wandb")  # a GPU image may lack it; every install of vqacap has it
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.delenv("WANDB_DATA_DIR", raising=False)  # table artifacts are staged in the run folder then
    cfg = make_cfg(
        "experiment=vqa_shapes", *TINY_VQA, *SHORT, "logger=default", "test=false",
        "callbacks.attention_maps.num_examples=4",
    )  # fmt: skip
    run(cfg)
    wandb.teardown()  # `finish()` may return before the wandb service has written the run's log; this waits for it
    (run_dir,) = (Path(cfg.paths.output_dir) / "wandb").glob("offline-run-*")
    (history_file,) = run_dir.glob("run-*.wandb")
    rows = [
        {"/".join(item.nested_key) or item.key: json.loads(item.value_json) for item in r.history.item}
        for r in wandb_records(history_file)
        if r.WhichOneof("record_type") == "history"
    ]
    (row,) = [r for r in rows if "val/attention_maps/_type" in r]
    assert row["val/attention_maps/_type"] == "images/separated" and row["val/attention_maps/count"] == 4
    assert "trainer/global_step" in row
    files = run_dir / "files"
    for name in row["val/attention_maps/filenames"]:
        with Image.open(files / name) as image:
            assert image.size == (IMAGE_SIZE, IMAGE_SIZE)
    captions = row["val/attention_maps/captions"]
    assert all(
        " -> " in c and "ground truth" in c for c in captions
    )  # question -> answer (ground truth: ...)
    for boxes, caption in zip(row["val/attention_maps/all_boxes"], captions):
        assert boxes["attention"]["_type"] == "boxes2D"
        meta = json.loads((files / boxes["attention"]["path"]).read_text())
        assert 1 <= len(meta["box_data"]) <= 3  # top_k boxes of the question
        answer = caption.split(" -> ")[1].split(" (ground truth")[0]
        assert meta["class_labels"] == {"0": f"0: {answer}"}
        weights = [box["scores"]["attention"] for box in meta["box_data"]]
        assert weights == sorted(weights, reverse=True) and 0 < weights[0] <= 1
        for box in meta["box_data"]:
            position = box["position"]
            assert box["domain"] == "pixel" and box["box_caption"].startswith(answer)
            assert 0 <= position["minX"] < position["maxX"] <= IMAGE_SIZE
            assert 0 <= position["minY"] < position["maxY"] <= IMAGE_SIZE
    table = row["val/attention_table/path"]
    assert row["val/attention_table/nrows"] == 4
    assert json.loads((files / table).read_text())["columns"] == ["id", "attention_map", "text", "top_boxes"]
    # The table's artifact files wait for `wandb sync` inside the run folder, not in the user's home.
    staged = [
        p.read_bytes() for p in (Path(cfg.paths.output_dir) / "wandb" / "artifacts").rglob("*") if p.is_file()
    ]
    assert any(b.startswith(b"\x89PNG") for b in staged)
    assert any(b.startswith(b"{") and json.loads(b).get("_type") == "table" for b in staged)
    assert "WANDB_DATA_DIR" not in os.environ


def test_tensorboard_gets_the_rendered_maps(make_cfg):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cfg = make_cfg(
        "experiment=vqa_shapes", *TINY_VQA, *SHORT, "test=false", "callbacks.attention_maps.num_examples=2",
        "+logger.tensorboard._target_=pytorch_lightning.loggers.TensorBoardLogger",
        "+logger.tensorboard.save_dir=${paths.output_dir}", "+logger.tensorboard.name=tb",
    )  # fmt: skip
    run(cfg)
    (events,) = {p.parent for p in (Path(cfg.paths.output_dir) / "tb").rglob("events.out.tfevents.*")}
    accumulator = EventAccumulator(str(events), size_guidance={"images": 0})
    accumulator.Reload()
    assert len([t for t in accumulator.Tags()["images"] if t.startswith("val/attention/")]) == 2


def test_missing_images_are_drawn_on_a_blank_canvas_of_the_image_size(make_cfg, tmp_path):
    for experiment, extra in (("caption_shapes", TINY_CAPTIONER), ("vqa_shapes", TINY_VQA)):
        cfg = make_cfg(f"experiment={experiment}", *extra)
        dm = instantiate(cfg.data, _recursive_=False)
        dm.prepare_data()
        module = instantiate(cfg.model, **dm.model_kwargs())
        ids = dm.example_ids("val", 2)
        (found,) = {m.image_found for m in attention_maps(module, dm, "val", ids)}
        assert found  # Shapes ships its images
        for m in attention_maps(module, dm, "val", ids, image_root=tmp_path / "no_images"):
            assert not m.image_found and m.image.size == m.item["image_size"] == (IMAGE_SIZE, IMAGE_SIZE)
            assert m.image.getextrema() == ((255, 255), (255, 255), (255, 255))  # blank
            # an untrained captioner may stop at once: panels are drawn per generated word (VQA: one per question)
            if m.item.get("words", [None]):
                assert m.figure.width >= PANEL and m.figure.height > PANEL


def test_box_metadata_scores_each_word_s_most_attended_boxes():
    boxes = torch.tensor([[0.0, 0, 10, 10], [20, 20, 30, 30], [5, 5, 60, 60]])
    item = {"words": ["a", "red", "circle"], "boxes": boxes,
            "attention": torch.tensor([[0.2, 0.3, 0.5], [0.1, 0.8, 0.1], [0.6, 0.3, 0.1]])}  # fmt: skip
    data = AttentionMaps(dirpath="unused", top_k=2).box_data(item)
    assert data["class_labels"] == {0: "0: a", 1: "1: red", 2: "2: circle"}
    assert [(b["class_id"], b["box_caption"]) for b in data["box_data"]] == [
        (0, "a 0.50"), (0, "a 0.30"), (1, "red 0.80"), (1, "red 0.10"), (2, "circle 0.60"), (2, "circle 0.30"),
    ]  # fmt: skip
    assert data["box_data"][4]["position"] == {"minX": 0.0, "minY": 0.0, "maxX": 10.0, "maxY": 10.0}
    assert data["box_data"][4]["scores"] == {"attention": pytest.approx(0.6)}


def test_a_corrupt_validation_image_costs_its_picture_not_the_run(make_cfg, data_root, tmp_path):
    import shutil

    instantiate(make_cfg("experiment=caption_shapes").data, _recursive_=False).prepare_data()
    data = tmp_path / "data"
    shutil.copytree(data_root, data)
    shapes = data / "shapes"
    files = {
        i["id"]: shapes / i["file_name"]
        for i in json.loads((shapes / "captions_val.json").read_text())["images"]
    }
    files[61].write_bytes(files[61].read_bytes()[:100])  # a truncated copy
    cfg = make_cfg(
        "experiment=caption_shapes", *TINY_CAPTIONER, *SHORT, "test=false", f"paths.data_dir={data}",
        "callbacks.attention_maps.ids=[61,62]",
    )  # fmt: skip
    with pytest.warns(
        UserWarning, match=rf"AttentionMaps: {files[61]}: unreadable image \(OSError: .*blank canvas"
    ):
        run(cfg)
    drawn = Path(cfg.paths.output_dir) / "attention" / "epoch_000"
    assert sorted(p.name for p in drawn.glob("*.png")) == ["61.png", "62.png"]
