"""Labels of the drawn detections: class, the attributes that beat "no attribute", score."""

from __future__ import annotations

import torch

from vqacap.callbacks.detections import describe

CLASSES = ["__background__", "square", "circle"]
ATTRIBUTES = ["__no_attribute__", "red", "blue", "large"]


def test_labels_name_the_attributes_more_probable_than_no_attribute():
    detection = {
        "boxes": torch.tensor([[1.0, 2.0, 30.0, 40.0], [5.0, 5.0, 9.0, 9.0]]),
        "labels": torch.tensor([2, 1]),
        "scores": torch.tensor([0.9, 0.55]),
        "attribute_probs": torch.tensor([
            [0.1, 0.5, 0.05, 0.35],  # red and large beat "no attribute"
            [0.7, 0.1, 0.1, 0.1],  # none does
        ]),
    }  # fmt: skip
    records = describe(detection, CLASSES, ATTRIBUTES)
    assert [r["label"] for r in records] == ["red large circle 0.90", "square 0.55"]
    assert records[0]["box"] == [1.0, 2.0, 30.0, 40.0] and records[0]["class_id"] == 2
