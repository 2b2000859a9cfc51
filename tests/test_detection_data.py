"""Reading prepared detection annotations, flipping, and the DataModule's batches."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from tests.detection_fixture import ATTRIBUTES, CLASSES, write_detection_dataset
from vqacap.data.detection import (
    DetectionDataModule,
    DetectionFormatError,
    DetectionSet,
    load_detection_split,
)
from vqacap.images import ImageError


@pytest.fixture
def detection_dir(tmp_path):
    return write_detection_dataset(tmp_path / "det", {"train": 6, "val": 3, "test": 3})


def _rewrite(path, change):
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


def test_load_detection_split_reads_boxes_classes_and_padded_attributes(detection_dir):
    split = load_detection_split(detection_dir / "detection_train.json")
    raw = json.loads((detection_dir / "detection_train.json").read_text())
    assert split.classes == CLASSES and split.attributes == ATTRIBUTES
    assert [im.image_id for im in split.images] == [im["image_id"] for im in raw["images"]]
    for image, record in zip(split.images, raw["images"]):
        assert image.path == detection_dir / record["file_name"]
        np.testing.assert_array_equal(image.boxes, [o["box"] for o in record["objects"]])
        np.testing.assert_array_equal(image.labels, [o["class"] for o in record["objects"]])
        for row, obj in zip(image.attributes, record["objects"]):
            n = len(obj["attributes"])
            assert row[:n].tolist() == obj["attributes"] and (row[n:] == -1).all() and len(row) == 16


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: d.update(format="coco"), "not a prepared detection file"),
        (lambda d: d["images"][1]["objects"][0].update({"class": 7}), r"image 2, object 0: \"class\" 7"),
        (lambda d: d["images"][0]["objects"][0].update(box=[5, 5, 3, 9]), "image 1, object 0: box"),
        (lambda d: d["images"][0]["objects"][0].update(box=[5, 5, 90, 9]), "outside the 64x64 image"),
        (lambda d: d["images"][0]["objects"][0].update(attributes=[0]), r"image 1, object 0: \"attributes\""),
        (lambda d: d.update(classes=["dog", "cat"]), "__background__"),
        # Positive in float64, zero wide in float32: torchvision's training asserted on it.
        (lambda d: d["images"][0]["objects"][0].update(box=[5, 5, 5 + 1e-9, 9]), "image 1, object 0: box"),
        (lambda d: d["images"][0]["objects"][0].update(box=[5, "x", 9, 9]), "is not four numbers"),
    ],
)
def test_bad_annotations_fail_with_one_line_naming_file_and_record(detection_dir, change, message):
    path = detection_dir / "detection_train.json"
    _rewrite(path, change)
    with pytest.raises(DetectionFormatError, match=message) as err:
        load_detection_split(path)
    assert str(path) in str(err.value) and "\n" not in str(err.value)


def test_flip_mirrors_the_image_and_its_boxes(detection_dir):
    images = load_detection_split(detection_dir / "detection_train.json").images
    plain = DetectionSet(images)[0]
    flipped = None
    torch.manual_seed(0)
    for _ in range(20):  # flipped with probability 0.5
        item = DetectionSet(images, flip=True)[0]
        if not torch.equal(item[1], plain[1]):
            flipped = item
            break
    assert flipped is not None
    torch.testing.assert_close(flipped[1], plain[1].flip(-1))
    w = images[0].width
    box = plain[2]["boxes"]
    expected = torch.stack([w - box[:, 2], box[:, 1], w - box[:, 0], box[:, 3]], 1)
    torch.testing.assert_close(flipped[2]["boxes"], expected)
    # the pixels under a flipped box are the mirrored pixels under the original box
    x1, y1, x2, y2 = (int(v) for v in box[0])
    fx1, _, fx2, _ = (int(v) for v in expected[0])
    torch.testing.assert_close(flipped[1][:, y1:y2, fx1:fx2], plain[1][:, y1:y2, x1:x2].flip(-1))


def test_missing_image_is_named(detection_dir):
    images = load_detection_split(detection_dir / "detection_val.json").images
    images[0].path.unlink()
    with pytest.raises(FileNotFoundError, match=f"{images[0].image_id} not found"):
        DetectionSet(images)[0]


def test_unreadable_image_is_named_in_one_line(detection_dir):
    images = load_detection_split(detection_dir / "detection_val.json").images
    images[0].path.write_bytes(b"not a png")
    with pytest.raises(
        ImageError, match=f"{images[0].path}: unreadable image .*\\(image {images[0].image_id}\\)"
    ) as err:
        DetectionSet(images)[0]
    assert "\n" not in str(err.value)


def test_examples_are_the_images_of_the_ids_given(detection_dir):
    dm = DetectionDataModule(str(detection_dir))
    batch = dm.examples("test", [12, 10])
    assert batch.image_ids.tolist() == [12, 10] and [t["boxes"].shape[1] for t in batch.targets] == [4, 4]
    with pytest.raises(ValueError, match="detection_test.json: no image with id 7"):
        dm.examples("test", [7])


def test_datamodule_batches_and_model_kwargs(detection_dir):
    dm = DetectionDataModule(str(detection_dir), batch_size=4, eval_batch_size=2)
    dm.prepare_data()
    dm.setup("fit")
    assert dm.model_kwargs() == {"classes": CLASSES, "attributes": ATTRIBUTES}
    batch = next(iter(dm.train_dataloader()))
    assert len(batch.images) == 4 and batch.image_ids.shape == (4,)
    assert batch.images[0].shape == (3, 64, 64) and batch.images[0].min() >= 0 and batch.images[0].max() <= 1
    assert set(batch.targets[0]) == {"boxes", "labels", "attributes"}
    examples = dm.examples("val", dm.example_ids("val", 2))
    assert examples.image_ids.tolist() == [
        7,
        8,
    ]  # spread over the three validation images: the first and second


def test_splits_with_other_vocabularies_are_refused(detection_dir):
    _rewrite(
        detection_dir / "detection_val.json", lambda d: d.update(classes=["__background__", "square", "disc"])
    )
    dm = DetectionDataModule(str(detection_dir))
    with pytest.raises(ValueError, match="detection_val.json: classes or attributes differ"):
        dm.setup("fit")
