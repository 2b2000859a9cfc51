"""Optional per-region fields of the region store (a detector's predicted labels): written, resumed, ignored."""

from __future__ import annotations

import h5py
import numpy as np
import pytest

from vqacap.data.store import RegionStore, RegionStoreError, RegionStoreWriter

FIELDS = {"object_labels": "int32", "object_scores": "float32"}
NAMES = {"object_labels": ["__background__", "circle", "square"]}


def image(rng, k, d=4):
    features = rng.normal(size=(k, d)).astype(np.float32)
    boxes = np.tile(np.array([[1.0, 2.0, 10.0, 12.0]], dtype=np.float32), (k, 1))
    fields = {"object_labels": rng.integers(1, 3, k), "object_scores": rng.random(k).astype(np.float32)}
    return features, boxes, fields


@pytest.mark.parametrize("buffer_regions", [0, 100])
def test_fields_are_read_back_per_image_with_their_names(tmp_path, buffer_regions):
    rng = np.random.default_rng(0)
    written = {i: image(rng, k) for i, k in ((7, 3), (8, 1), (9, 5))}
    path = tmp_path / "regions.h5"
    with RegionStoreWriter(
        path, 4, "float32", buffer_regions=buffer_regions, region_fields=FIELDS, field_names=NAMES
    ) as w:
        for image_id, (features, boxes, fields) in written.items():
            w.add(image_id, features, boxes, 20, 20, fields=fields)
    store = RegionStore(path)
    assert sorted(store.region_fields) == sorted(FIELDS)
    assert store.field_names("object_labels") == NAMES["object_labels"]
    assert store.field_names("object_scores") == []
    for image_id, (features, _, fields) in written.items():
        np.testing.assert_array_equal(store.read(image_id)[0], features)
        for name, values in fields.items():
            np.testing.assert_array_equal(store.read_field(image_id, name), values)
    with pytest.raises(RegionStoreError, match="no region field 'attribute_labels'"):
        store.read_field(7, "attribute_labels")


def test_a_store_without_fields_is_unchanged_and_readers_ignore_fields(tmp_path):
    rng = np.random.default_rng(1)
    features, boxes, fields = image(rng, 2)
    plain, extra = tmp_path / "plain.h5", tmp_path / "extra.h5"
    with RegionStoreWriter(plain, 4, "float32") as w:
        w.add(1, features, boxes, 20, 20)
    with RegionStoreWriter(extra, 4, "float32", region_fields=FIELDS) as w:
        w.add(1, features, boxes, 20, 20, fields=fields)
    with h5py.File(plain, "r") as f:
        assert "region_fields" not in f.attrs and sorted(f) == sorted(
            ["features", "boxes", "image_ids", "image_w", "image_h", "num_regions", "region_start"]
        )
    assert RegionStore(plain).region_fields == ()
    a, b = RegionStore(plain).read_batch([1]), RegionStore(extra).read_batch([1])
    assert all(
        np.array_equal(getattr(a, n), getattr(b, n)) for n in ("features", "boxes", "mask", "image_size")
    )


def test_resuming_keeps_fields_aligned_after_a_half_written_tail(tmp_path):
    rng = np.random.default_rng(2)
    path = tmp_path / "regions.h5"
    first, second = image(rng, 3), image(rng, 2)
    with RegionStoreWriter(path, 4, "float32", region_fields=FIELDS, field_names=NAMES) as w:
        w.add(1, *first[:2], 20, 20, fields=first[2])
    # An interrupted write: regions and fields appended, the index never written.
    with h5py.File(path, "a") as f:
        for name in ("features", "boxes", *FIELDS):
            f[name].resize((f[name].shape[0] + 4, *f[name].shape[1:]))
    with RegionStoreWriter(path, 4, "float32", region_fields=FIELDS) as w:
        assert 1 in w
        w.add(2, *second[:2], 20, 20, fields=second[2])
    store = RegionStore(path)
    np.testing.assert_array_equal(store.read_field(2, "object_scores"), second[2]["object_scores"])
    np.testing.assert_array_equal(store.read_field(1, "object_labels"), first[2]["object_labels"])
    assert store.field_names("object_labels") == NAMES["object_labels"]
    with h5py.File(path, "r") as f:
        assert all(f[name].shape[0] == 5 for name in ("features", *FIELDS))


def test_mismatched_fields_are_refused_with_the_file_and_image(tmp_path):
    rng = np.random.default_rng(3)
    path = tmp_path / "regions.h5"
    features, boxes, fields = image(rng, 2)
    with RegionStoreWriter(path, 4, "float32", region_fields=FIELDS) as w:
        with pytest.raises(RegionStoreError, match=r"image 5: region fields \['object_labels'\], expected"):
            w.add(5, features, boxes, 20, 20, fields={"object_labels": fields["object_labels"]})
        with pytest.raises(RegionStoreError, match=r"image 5: region field object_scores has shape \(3,\)"):
            w.add(5, features, boxes, 20, 20, fields={**fields, "object_scores": np.zeros(3)})
        w.add(5, features, boxes, 20, 20, fields=fields)
    with pytest.raises(RegionStoreError, match="existing store has region fields"):
        RegionStoreWriter(path, 4, "float32")
