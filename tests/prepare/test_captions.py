"""`vqacap prepare coco-captions` on small Karpathy split files, read back through the caption DataModule."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.helpers.karpathy import karpathy_file
from vqacap.cli import main
from vqacap.data.captions import CaptionDataModule
from vqacap.data.store import RegionStoreWriter
from vqacap.data.vocab import Vocabulary


def test_splits_merge_restval_into_train_and_keep_raw_captions(tmp_path):
    out = tmp_path / "coco"
    assert (
        main(["prepare", "coco-captions", "--karpathy", str(karpathy_file(tmp_path)), "--out", str(out)]) == 0
    )
    train = json.loads((out / "captions_train.json").read_text())
    assert train["type"] == "captions" and train["info"]["split"] == "train"
    assert train["images"] == [
        {"id": 9, "file_name": "train2014/COCO_train2014_000000000009.jpg"},
        {"id": 25, "file_name": "val2014/COCO_val2014_000000000025.jpg"},
    ]
    assert train["annotations"][0] == {"id": 0, "image_id": 9, "caption": "A dog runs on the grass."}
    assert len(train["annotations"]) == 5
    test = json.loads((out / "captions_test.json").read_text())
    assert [a["caption"] for a in test["annotations"]] == ["A giraffe eats leaves.", "giraffe"]
    assert {a["id"] for a in test["annotations"]} == {6, 7}


def test_vocabulary_counts_training_words_only(tmp_path):
    out = tmp_path / "coco"
    main(
        [
            "prepare",
            "coco-captions",
            "--karpathy",
            str(karpathy_file(tmp_path)),
            "--out",
            str(out),
            "--min-count",
            "2",
            "--max-length",
            "12",
        ]
    )
    vocab = Vocabulary.load(out / "caption_vocab.json")
    # dog x5, a x5 ... in train + restval; zebra and giraffe occur only in val / test.
    assert vocab.words[4:6] == ["a", "dog"]
    assert "zebra" not in vocab.index and "giraffe" not in vocab.index and "runs" not in vocab.index
    assert set(vocab.words[4:]) == {"a", "dog", "cat", "on", "grass", "and", "the"}
    assert vocab.max_length == 12 and vocab.min_count == 2


def test_flickr_uses_karpathy_imgid_and_coco_sizes_when_given(tmp_path):
    sizes = tmp_path / "sizes.json"
    sizes.write_text(json.dumps({"images": [{"id": 2, "width": 500, "height": 375}]}))
    out = tmp_path / "flickr"
    assert (
        main(
            [
                "prepare",
                "coco-captions",
                "--karpathy",
                str(karpathy_file(tmp_path, "flickr30k")),
                "--out",
                str(out),
                "--image-sizes",
                str(sizes),
            ]
        )
        == 0
    )
    val = json.loads((out / "captions_val.json").read_text())
    assert val["images"] == [{"id": 2, "file_name": "1030.jpg", "width": 500, "height": 375}]


def test_output_loads_in_the_caption_datamodule(tmp_path):
    out = tmp_path / "coco"
    main(["prepare", "coco-captions", "--karpathy", str(karpathy_file(tmp_path)), "--out", str(out)])
    with RegionStoreWriter(out / "regions.h5", feature_dim=8) as writer:
        for image_id in (9, 25, 30, 42):
            writer.add(image_id, np.ones((3, 8), np.float32), np.array([[0, 0, 10, 10]] * 3), 64, 48)
    data = CaptionDataModule(str(out), min_count=1, batch_size=5)
    data.prepare_data()
    data.setup("fit")
    batch = next(iter(data.train_dataloader()))
    # train + restval images (9 and 25), each with its captions; regions padded to the store's 3.
    assert sorted(batch.image_ids.tolist()) == [9, 25] and batch.regions.features.shape == (2, 3, 8)
    assert len(batch.tokens) == 2
    assert sorted(data.references["val"]) == [30]


def test_bad_karpathy_files_fail_with_one_line(tmp_path, capsys):
    path = tmp_path / "dataset_coco.json"
    data = json.loads(karpathy_file(tmp_path).read_text())
    del data["images"][1]["cocoid"]
    path.write_text(json.dumps(data))
    assert main(["prepare", "coco-captions", "--karpathy", str(path), "--out", str(tmp_path / "o")]) == 2
    assert capsys.readouterr().err.strip() == f"error: {path}: image 1 (images[1]) lacks 'cocoid'"

    data["images"][1]["cocoid"] = 9
    path.write_text(json.dumps(data))
    assert main(["prepare", "coco-captions", "--karpathy", str(path), "--out", str(tmp_path / "o")]) == 2
    assert "image id 9 appears twice" in capsys.readouterr().err


@pytest.mark.parametrize("content", ["[]", "{not json"])
def test_not_a_karpathy_file(tmp_path, capsys, content):
    path = tmp_path / "x.json"
    path.write_text(content)
    assert main(["prepare", "coco-captions", "--karpathy", str(path), "--out", str(tmp_path / "o")]) == 2
    assert str(path) in capsys.readouterr().err


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda image: image.update(cocoid="abc"), "cocoid 'abc' is not an integer id in 0 .. 2^63 - 1"),
        (lambda image: image.update(cocoid=2**70), f"cocoid {2**70} is not an integer id in 0 .. 2^63 - 1"),
        (lambda image: image["sentences"][1].update(sentid=0), "sentid 0 appears twice (first in image 9)"),
        (lambda image: image.update(sentences=None), "sentences is None, not a list"),
        (lambda image: image["sentences"][0].update(raw=5), "sentences[0] {'tokens'"),
        (lambda image: image.update(split="holdout"), "unknown split 'holdout'"),
    ],
    ids=["cocoid_abc", "cocoid_2^70", "duplicate_sentid", "sentences_null", "int_caption", "unknown_split"],
)
def test_malformed_records_are_one_line_errors_naming_the_record(tmp_path, capsys, change, message):
    data = json.loads(karpathy_file(tmp_path).read_text())
    change(data["images"][1])
    path = tmp_path / "dataset_coco.json"
    path.write_text(json.dumps(data))
    assert main(["prepare", "coco-captions", "--karpathy", str(path), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {path}: image 1 (images[1]") and message in err and err.count("\n") == 1


def test_training_words_keep_their_accents(tmp_path):
    data = json.loads(karpathy_file(tmp_path).read_text())
    for n in range(5):
        data["images"][0]["sentences"].append({"raw": "Un café près de la fenêtre", "sentid": 900 + n})
    path = tmp_path / "dataset_coco.json"
    path.write_text(json.dumps(data))
    assert main(["prepare", "coco-captions", "--karpathy", str(path), "--out", str(tmp_path / "o")]) == 0
    words = json.loads((tmp_path / "o" / "caption_vocab.json").read_text())
    words = words["words"] if isinstance(words, dict) else words
    assert {"café", "près", "fenêtre"} <= set(words) and "caf" not in words


def test_an_out_folder_that_cannot_be_created_is_one_line(tmp_path, capsys):
    (tmp_path / "file").write_text("a file, not a folder")
    out = tmp_path / "file" / "o"
    assert (
        main(["prepare", "coco-captions", "--karpathy", str(karpathy_file(tmp_path)), "--out", str(out)]) == 2
    )
    assert capsys.readouterr().err.strip().startswith(f"error: {out}: cannot write here (")


def test_a_file_that_is_not_utf8_is_one_line(tmp_path, capsys):
    path = tmp_path / "dataset_coco.json"
    path.write_bytes(karpathy_file(tmp_path).read_text().replace("A ", "\u00e9 ").encode("latin-1"))
    assert main(["prepare", "coco-captions", "--karpathy", str(path), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {path}: not a UTF-8 JSON file (byte ") and err.count("\n") == 1, err
