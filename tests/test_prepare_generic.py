"""`vqacap prepare questions` and `vqacap prepare captions` on a dataset laid out as easy-VQA is (per-split question
files and image folders, both numbered from 0), through the CLI, then a real tiny training run and attention maps that
find the images in a plain folder."""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vqacap.cli import main
from vqacap.data.captions import CaptionDataModule
from vqacap.data.store import RegionStore, RegionStoreWriter
from vqacap.data.vocab import Vocabulary
from vqacap.data.vqa import AnswerVocabulary, VQADataModule
from vqacap.models.detector import BottomUpDetector, DetectorOptions

SHAPES = ("circle", "triangle", "rectangle")
COLORS = ("red", "blue", "green")


def easy_vqa(root: Path, split: str, images: int) -> tuple[Path, Path]:
    """A split as easy-VQA lays it out, in the generic records format: (records file, image folder). Image i shows
    shape i % 3 in color i % 3 (i // 3 % 3 for odd i); ids and questions both start at 0."""
    folder = root / split / "images"
    folder.mkdir(parents=True)
    records = []
    for i in range(images):
        shape, color = SHAPES[i % 3], COLORS[(i // 3 if i % 2 else i) % 3]
        Image.new("RGB", (64, 64), (40 * (i % 6), 90, 160)).save(folder / f"{i}.png")
        records += [
            {"image_id": i, "question": "What shape is in the image?", "answer": shape},
            {"image_id": i, "question": f"What color is the {shape}?", "answer": color},
            {"image_id": i, "question": f"Is there a {color} shape?", "answer": "yes"},
            {"image_id": i, "question": "Is there a black shape?", "answer": "no"},
        ]
    path = root / f"{split}.json"
    path.write_text(json.dumps(records))
    return path, folder


@pytest.fixture
def dataset(tmp_path):
    train, train_images = easy_vqa(tmp_path / "easy", "train", 12)
    test, test_images = easy_vqa(tmp_path / "easy", "test", 3)
    return {"train": train, "test": test, "train_images": train_images, "test_images": test_images}


def prepare_questions(dataset: dict, out: Path, *extra: str) -> int:
    return main([
        "prepare", "questions", "--out", str(out),
        "--split", "train", str(dataset["train"]), "--images", "train", str(dataset["train_images"]),
        "--split", "test", str(dataset["test"]), "--images", "test", str(dataset["test_images"]),
        "--val-fraction", "0.25", "--min-answer-count", "1", *extra,
    ])  # fmt: skip


def read(path: Path):
    return json.loads(path.read_text())


def test_splits_numbered_from_zero_are_renumbered_and_written_field_by_field(dataset, tmp_path, capsys):
    out = tmp_path / "data"
    assert prepare_questions(dataset, out) == 0
    said = capsys.readouterr().out
    assert "val: 3 train images and their 12 questions held out" in said
    assert f"{dataset['test_images']}: 3 of its 3 image ids are also ids of an earlier image folder; " in said
    assert "renumbered by +12 (0..2 -> 12..14)" in said
    assert (
        "test: 12 of its 12 question ids are also ids of an earlier split; renumbered by +48 (0..11 -> 48..59)"
        in said
    )

    names = sorted(p.name for p in out.iterdir())
    assert names == [
        "answer_vocab.json", "images", "question_vocab.json",
        "vqa_test_annotations.json", "vqa_test_questions.json",
        "vqa_train_annotations.json", "vqa_train_questions.json",
        "vqa_val_annotations.json", "vqa_val_questions.json",
    ]  # fmt: skip
    questions = {s: read(out / f"vqa_{s}_questions.json")["questions"] for s in ("train", "val", "test")}
    annotations = {
        s: read(out / f"vqa_{s}_annotations.json")["annotations"] for s in ("train", "val", "test")
    }
    # Train keeps its ids; val is train's last quarter of images (9, 10, 11) with their question ids; test is moved.
    assert [q["question_id"] for q in questions["train"]] == list(range(36))
    assert [q["question_id"] for q in questions["val"]] == list(range(36, 48))
    assert [q["question_id"] for q in questions["test"]] == list(range(48, 60))
    assert sorted({q["image_id"] for q in questions["val"]}) == [9, 10, 11]
    assert sorted({q["image_id"] for q in questions["test"]}) == [12, 13, 14]
    assert questions["test"][5] == {
        "image_id": 13,
        "question": "What color is the triangle?",
        "question_id": 53,
    }
    info = read(out / "vqa_test_questions.json")["info"]
    assert (info["split"], info["question_id_offset"], info["image_id_offset"]) == ("test", 48, 12)
    every = [q["question_id"] for s in questions.values() for q in s]
    assert len(every) == len(set(every)) == 60
    ann = annotations["test"][5]
    assert ann["question_id"] == 53 and ann["image_id"] == 13
    assert ann["question_type"] == "what" and ann["answer_type"] == "other"
    assert ann["multiple_choice_answer"] == "red"
    assert ann["answers"] == [
        {"answer": "red", "answer_confidence": "yes", "answer_id": j} for j in range(1, 11)
    ]
    assert (
        annotations["test"][6]["answer_type"] == "yes/no" and annotations["test"][6]["question_type"] == "is"
    )
    for split in questions:
        assert [a["question_id"] for a in annotations[split]] == [q["question_id"] for q in questions[split]]

    answers = AnswerVocabulary.load(out / "answer_vocab.json")
    assert sorted(answers.answers) == sorted([*SHAPES, *COLORS, "yes", "no"])
    assert answers.answer_types == ["other", "yes/no"] and answers.question_types == ["is", "what"]
    assert "triangle" in Vocabulary.load(out / "question_vocab.json").index
    # One folder named by the final ids: test image 0 is images/12.png.
    links = sorted((out / "images").iterdir(), key=lambda p: int(p.stem))
    assert [p.name for p in links] == [f"{i}.png" for i in range(15)]
    assert (out / "images" / "12.png").resolve() == (dataset["test_images"] / "0.png").resolve()

    # A rerun rewrites the same files and keeps its own links.
    before = {p.name: p.read_bytes() for p in out.glob("*.json")}
    assert prepare_questions(dataset, out) == 0
    assert before == {p.name: p.read_bytes() for p in out.glob("*.json")}


def test_type_fields_and_human_answers_as_given_are_kept(tmp_path):
    records = [
        {"question_id": 7, "image_id": 3, "question": "How many?", "answers": ["2", "2", "two", "3"],
         "question_type": "how many", "answer_type": "number"},
        {"question_id": 8, "image_id": 3, "question": "Why?", "answers": [{"answer": "x"}] * 4},
    ]  # fmt: skip
    path = tmp_path / "train.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in records))
    assert main(["prepare", "questions", "--split", "train", str(path), "--out", str(tmp_path / "d"), "--min-answer-count", "1"]) == 0  # fmt: skip
    first, second = read(tmp_path / "d" / "vqa_train_annotations.json")["annotations"]
    assert (first["question_type"], first["answer_type"], first["multiple_choice_answer"]) == (
        "how many",
        "number",
        "2",
    )
    assert [a["answer"] for a in first["answers"]] == ["2", "2", "two", "3"]
    assert (second["question_type"], second["answer_type"]) == ("why", "other")


def test_answers_in_files_of_their_own_as_vqa_lays_them_out(tmp_path, capsys):
    """VQA's questions/annotations layout for any split the user names, test included (`prepare vqa2` refuses test
    annotations): the answers are matched by question_id, their given types and multiple_choice_answer kept."""
    files = {}
    for split, first in (("train", 100), ("test", 100)):
        questions = [{"question_id": first + k, "image_id": k, "question": f"Is it {k}?"} for k in range(3)]
        annotations = [
            {"question_id": first + k, "image_id": k, "question_type": "is it", "answer_type": "yes/no",
             "multiple_choice_answer": ("yes", "no")[k % 2],
             "answers": [{"answer": a} for a in ["yes"] * 6 + ["no"] * 4]}
            for k in reversed(range(3))
        ]  # fmt: skip
        for kind, data in (("questions", questions), ("annotations", annotations)):
            files[split, kind] = tmp_path / f"{split}_{kind}.json"
            files[split, kind].write_text(json.dumps({"info": {}, kind: data}))
    out = tmp_path / "d"
    argv = ["prepare", "questions", "--out", str(out), "--min-answer-count", "1"]
    for split in ("train", "test"):
        argv += [
            "--split",
            split,
            str(files[split, "questions"]),
            "--answers",
            split,
            str(files[split, "annotations"]),
        ]
    assert main(argv) == 0
    test = read(out / "vqa_test_annotations.json")["annotations"]
    assert [a["question_id"] for a in test] == [103, 104, 105]  # after train's 100..102
    assert [(a["question_type"], a["answer_type"], a["multiple_choice_answer"]) for a in test] == [
        ("is it", "yes/no", "yes"), ("is it", "yes/no", "no"), ("is it", "yes/no", "yes"),
    ]  # fmt: skip
    assert [a["answer"] for a in test[0]["answers"]] == ["yes"] * 6 + ["no"] * 4
    # An answer of a question the questions file does not have, named by the answers file.
    extra = json.loads(files["test", "annotations"].read_text())
    extra["annotations"].append({**extra["annotations"][0], "question_id": 7})
    files["test", "annotations"].write_text(json.dumps(extra))
    assert main(argv) == 2
    assert capsys.readouterr().err.strip() == (
        f"error: {files['test', 'annotations']}: question_id 7 is answered but not in {files['test', 'questions']}"
    )


def store(path: Path, image_ids, dim: int = 8) -> None:
    """A region store whose features say which image it is (its id's bits), so a model can learn from them."""
    rng = np.random.default_rng(0)
    with RegionStoreWriter(path, feature_dim=dim) as writer:
        for image_id in image_ids:
            features = rng.normal(0, 0.1, (4, dim)).astype(np.float32)
            features[:, : min(dim, 6)] += [(image_id >> b) & 1 for b in range(min(dim, 6))]
            writer.add(
                image_id,
                features,
                np.array([[0, 0, 8, 8], [8, 0, 16, 8], [0, 8, 8, 16], [8, 8, 16, 16]]),
                16,
                16,
            )


def tiny_detector_checkpoint(path: Path) -> Path:
    """A random bottom-up detector, small enough for 64-pixel images, saved as vqacap's detector checkpoints are."""
    torch.manual_seed(0)
    options = DetectorOptions(
        depth=18, width=8, blocks=(1, 1, 1, 1), norm="group_norm", frozen_stages=0, res5_dilation=False,
        min_size=64, max_size=64, anchor_sizes=(16, 32), rpn_channels=16, rpn_pre_nms_top_n_test=100,
        rpn_post_nms_top_n_test=30, pool_size=4,
    )  # fmt: skip
    classes, attributes = ["__background__", "shape"], ["__no_attribute__", "red"]
    model = BottomUpDetector(classes, attributes, options).eval()
    hparams = {"detector": dataclasses.asdict(options), "classes": classes, "attributes": attributes}
    torch.save(
        {"hyper_parameters": hparams, "state_dict": {f"net.{k}": v for k, v in model.state_dict().items()}},
        path,
    )
    return path


def test_prepared_data_trains_and_its_maps_find_the_images(dataset, tmp_path):
    from tests.conftest import compose_train
    from vqacap.draw import attention_maps
    from vqacap.train import run
    from vqacap.visualize import load

    out = tmp_path / "data"
    assert prepare_questions(dataset, out) == 0
    # The features of the documented route: `vqacap extract` over the linked folder, with a tiny bottom-up detector.
    detector = tiny_detector_checkpoint(tmp_path / "detector.ckpt")
    assert main(["extract", "--detector", str(detector), "--images", str(out / "images"), "--out",
                 str(out / "regions.h5"), "--batch-size", "8", "--no-progress", "--dtype", "float32"]) == 0  # fmt: skip
    assert sorted(RegionStore(out / "regions.h5").image_ids.tolist()) == list(range(15))
    cfg = compose_train(
        [
            "experiment=vqa_shapes", "data=vqa_own", f"data.data_dir={out}", "data.batch_size=8",
            "data.eval_batch_size=16", "model.net.hidden_size=16", "model.net.embedding_dim=8",
            "trainer.max_epochs=2", "logger=csv", "callbacks.attention_maps.num_examples=2",
        ],
        tmp_path / "run",
        tmp_path,
    )  # fmt: skip
    metrics = run(cfg)
    results = read(tmp_path / "run" / "vqa_test_results.json")
    assert sorted(r["question_id"] for r in results) == list(range(48, 60))
    # Ten copies of one answer: the official accuracy is exact-match accuracy (in percent).
    truth = {
        a["question_id"]: a["multiple_choice_answer"]
        for a in read(out / "vqa_test_annotations.json")["annotations"]
    }
    exact = sum(r["answer"] == truth[r["question_id"]] for r in results) / len(results)
    assert metrics["test/accuracy"] == pytest.approx(100 * exact, abs=1e-4)
    assert sorted((tmp_path / "run" / "attention").rglob("*.png"))

    checkpoint = tmp_path / "run" / "checkpoints" / "last.ckpt"
    args = argparse.Namespace(run=None, checkpoint=checkpoint, data_dir=out, device="cpu")
    module, datamodule = load(args)
    maps = attention_maps(module, datamodule, "test", [48, 59])
    assert [m.image_found for m in maps] == [True, True]
    assert datamodule.image_path("test", 14) == out / "images" / "14.png"
    # The command, with the images in a plain folder of their own: test image 2 is <folder>/2.png there.
    folder = tmp_path / "elsewhere"
    folder.mkdir()
    Image.new("RGB", (16, 16)).save(folder / "14.png")
    drawn = ["visualize", "--checkpoint", str(checkpoint), "--data-dir", str(out), "--split", "test"]
    assert (
        main([*drawn, "--question-ids", "59", "--images", str(folder), "--out", str(tmp_path / "maps")]) == 0
    )
    assert (tmp_path / "maps" / "59.png").is_file()
    assert datamodule.image_path("test", 14, folder) == folder / "14.png"


def test_a_plain_image_folder_is_found_by_id_or_by_pattern(tmp_path):
    data = tmp_path / "data"
    train, _ = easy_vqa(tmp_path / "easy", "train", 3)
    for split in ("train", "val", "test"):  # the same records for every split: a lookup test only
        assert main(["prepare", "questions", "--split", "train", str(train), "--out", str(data), "--min-answer-count", "1"]) == 0  # fmt: skip
        if split != "train":
            for kind in ("questions", "annotations"):
                (data / f"vqa_{split}_{kind}.json").write_text((data / f"vqa_train_{kind}.json").read_text())
    photos = tmp_path / "photos"
    photos.mkdir()
    Image.new("RGB", (8, 8)).save(photos / "2.JPG")
    Image.new("RGB", (8, 8)).save(photos / "img_001.jpg")
    plain = VQADataModule(str(data), image_dir=str(photos))
    assert plain.image_path("val", 2) == photos / "2.JPG" and plain.image_path("val", 1) is None
    patterned = VQADataModule(str(data), image_dir=str(photos), image_pattern="img_{image_id:03d}.jpg")
    assert patterned.image_path("val", 1) == photos / "img_001.jpg"
    # The data folder's images/ by default; the callback's or command's folder before the data's.
    (data / "images").mkdir()
    Image.new("RGB", (8, 8)).save(data / "images" / "0.png")
    assert VQADataModule(str(data)).image_path("val", 0) == data / "images" / "0.png"
    assert (
        plain.image_path("val", 0) is None
        and plain.image_path("val", 0, data / "images") == data / "images" / "0.png"
    )
    with pytest.raises(
        ValueError, match=r"image_pattern 'img_\{id\}.jpg': not a format string of \{image_id\}"
    ):
        VQADataModule(str(data), image_pattern="img_{id}.jpg")


def test_caption_records_become_coco_files_read_by_the_caption_datamodule(dataset, tmp_path, capsys):
    train = tmp_path / "captions_train.json"
    train.write_text(
        json.dumps([{"image_id": i, "captions": [f"a {SHAPES[i % 3]}", "a shape"]} for i in range(12)])
    )
    val = tmp_path / "captions_val.jsonl"
    val.write_text("\n".join(json.dumps({"image_id": i, "caption": "a red circle"}) for i in range(3)))
    out = tmp_path / "captions"
    code = main([
        "prepare", "captions", "--out", str(out), "--min-count", "1",
        "--split", "train", str(train), "--images", "train", str(dataset["train_images"]),
        "--split", "val", str(val), "--images", "val", str(dataset["test_images"]),
        "--split", "test", str(val), "--images", "test", str(dataset["test_images"]),
    ])  # fmt: skip
    assert code == 0
    assert "renumbered by +12 (0..2 -> 12..14)" in capsys.readouterr().out
    written = read(out / "captions_val.json")
    assert written["images"] == [{"id": 12 + i, "file_name": f"images/{12 + i}.png"} for i in range(3)]
    assert [a["image_id"] for a in written["annotations"]] == [12, 13, 14]
    assert written["info"]["image_id_offset"] == 12
    train_ids = [a["id"] for a in read(out / "captions_train.json")["annotations"]]
    assert train_ids == list(range(1, 25)) and written["annotations"][0]["id"] == 25
    store(out / "regions.h5", range(15))
    data = CaptionDataModule(str(out), batch_size=4, captions_per_image=2, min_count=1)
    data.prepare_data()
    data.setup()
    assert next(iter(data.train_dataloader())).tokens.shape[:2] == (4, 2)
    assert data.image_path("val", 13) == out / "images" / "13.png"


# -- bad input: one line naming the file and the record, nothing written -----------------------------------------------
@pytest.mark.parametrize(
    "content, message",
    [
        ('[{"image_id": 0, "answer": "red"}]', r"train.json: record 0 lacks 'question'$"),
        ("image_id,question,answer\n0,What?,red\n", r"train.json: neither JSON nor JSON lines \(line 1: "),
        (
            '[{"image_id": 0, "question": "Q?", "answer": "a"}, {"image_id": "1", "question": "Q?", "answer": "b"}]',
            r"train.json: record 1: image_id is '1', not an integer id \(0 .. 2\^63 - 1\)$",
        ),
        (
            '[{"image_id": 0, "question": "Q?", "answer": "a", "question_id": 4},'
            ' {"image_id": 1, "question": "Q?", "answer": "b", "question_id": 4}]',
            r"train.json: question_id 4 appears twice \(records 0 and 1\)$",
        ),
        (
            '[{"image_id": 0, "question": "Q?", "answer": "a"}, {"image_id": 1, "question": "Q?"}]',
            r"train.json: record 1 lacks 'answer' or 'answers'; a split is answered in every record or in none$",
        ),
    ],
    ids=["missing field", "not json", "id of the wrong type", "id twice", "unanswered record"],
)
def test_bad_records_are_one_line_errors_and_nothing_is_written(tmp_path, capsys, content, message):
    path = tmp_path / "train.json"
    path.write_text(content)
    out = tmp_path / "out"
    assert main(["prepare", "questions", "--split", "train", str(path), "--out", str(out), "--min-answer-count", "1"]) == 2  # fmt: skip
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith(f"error: {path}")
    assert re.search(message, err), err
    assert not out.exists()


def test_a_missing_image_and_a_foreign_file_in_the_way_are_refused(dataset, tmp_path, capsys):
    (dataset["test_images"] / "2.png").unlink()
    out = tmp_path / "out"
    assert prepare_questions(dataset, out) == 2
    err = capsys.readouterr().err.strip()
    assert (
        err
        == f"error: {dataset['test_images']}: no image file for image id 2 (record 8 of {dataset['test']})"
    )
    assert not out.exists()
    Image.new("RGB", (4, 4)).save(dataset["test_images"] / "2.png")
    (out / "images").mkdir(parents=True)
    (out / "images" / "13.png").write_bytes(b"mine")
    assert prepare_questions(dataset, out) == 2
    assert "13.png: a file that is not a link to" in capsys.readouterr().err
    assert (out / "images" / "13.png").read_bytes() == b"mine"


@pytest.mark.parametrize(
    "content, message",
    [
        (
            '[{"image_id": 0, "text": "a red circle"}]',
            r"record 0 \(image_id 0\): lacks 'caption' or 'captions'$",
        ),
        ('[{"image_id": 0.5, "caption": "a red circle"}]', r"record 0: image_id is 0.5, not an integer id"),
        (
            '{"image_id": 0, "captions": ["a", 3]}',
            r"record 0 \(image_id 0\): captions is not a list of strings$",
        ),
    ],
    ids=["missing field", "id of the wrong type", "caption not a string"],
)
def test_bad_caption_records_are_one_line_errors_and_nothing_is_written(tmp_path, capsys, content, message):
    path = tmp_path / "train.json"
    path.write_text(content)
    out = tmp_path / "out"
    assert main(["prepare", "captions", "--split", "train", str(path), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith(f"error: {path}")
    assert re.search(message, err), err
    assert not out.exists()
