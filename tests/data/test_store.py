import multiprocessing as mp
import pickle

import h5py
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from vqacap.data.store import RegionStore, RegionStoreError, RegionStoreWriter


def _images(rng, counts, dim=8):
    return [
        (100 + n, rng.standard_normal((k, dim)).astype(np.float32), _boxes(rng, k), 64 + n, 48 + n)
        for n, k in enumerate(counts)
    ]


def _boxes(rng, k):
    xy = rng.uniform(0, 20, size=(k, 2))
    return np.concatenate([xy, xy + rng.uniform(1, 20, size=(k, 2))], axis=1).astype(np.float32)


def _write(path, images, dtype="float16"):
    with RegionStoreWriter(path, images[0][1].shape[1], dtype=dtype) as w:
        for image_id, feats, boxes, width, height in images:
            w.add(image_id, feats, boxes, width, height)


@pytest.mark.parametrize("counts", [[36, 36, 36], [10, 100, 57, 23]], ids=["fixed_k", "variable_k"])
@pytest.mark.parametrize("dtype", ["float16", "float32"])
def test_round_trip_single_and_batch(tmp_path, counts, dtype):
    rng = np.random.default_rng(0)
    images = _images(rng, counts)
    _write(tmp_path / "s.h5", images, dtype)
    store = RegionStore(tmp_path / "s.h5")
    assert len(store) == len(images) and store.feature_dim == 8 and store.max_regions == max(counts)
    tol = 1e-2 if dtype == "float16" else 0
    for image_id, feats, boxes, _, _ in images:
        f, b = store.read(image_id)
        np.testing.assert_allclose(f.astype(np.float32), feats, atol=tol)
        np.testing.assert_array_equal(b, boxes)
    ids = [im[0] for im in images][::-1]
    batch = store.read_batch(ids)
    assert batch.features.dtype == torch.float32
    assert batch.features.shape == (len(ids), max(counts), 8)
    for n, image_id in enumerate(ids):
        _, feats, boxes, width, height = images[[im[0] for im in images].index(image_id)]
        k = len(feats)
        assert batch.mask[n].sum() == k and batch.mask[n, :k].all()
        np.testing.assert_allclose(batch.features[n, :k].numpy(), feats, atol=tol)
        assert (batch.features[n, k:] == 0).all() and (batch.boxes[n, k:] == 0).all()
        assert batch.image_size[n].tolist() == [width, height]


def test_pad_to_fixes_the_region_dimension(tmp_path):
    _write(tmp_path / "s.h5", _images(np.random.default_rng(1), [3, 5]))
    batch = RegionStore(tmp_path / "s.h5").read_batch([100, 101], pad_to=10)
    assert batch.features.shape == (2, 10, 8) and batch.mask.sum().item() == 8


def test_spatial_features_are_normalised_and_zero_on_padding(tmp_path):
    _write(tmp_path / "s.h5", _images(np.random.default_rng(2), [4, 2]))
    batch = RegionStore(tmp_path / "s.h5").read_batch([100, 101])
    spatial = batch.spatial()
    assert spatial.shape == (2, 4, 6)
    assert (spatial[1, 2:] == 0).all()
    assert spatial[batch.mask].min() >= 0 and spatial[batch.mask].max() <= 1.5


def test_writer_resumes_and_rejects_duplicates(tmp_path):
    images = _images(np.random.default_rng(3), [5, 6, 7])
    _write(tmp_path / "s.h5", images[:2])
    with RegionStoreWriter(tmp_path / "s.h5", 8) as w:
        assert 100 in w and len(w) == 2
        with pytest.raises(RegionStoreError, match="image 101: duplicate image id"):
            w.add(*images[1])
        w.add(*images[2])
    store = RegionStore(tmp_path / "s.h5")
    assert sorted(store.image_ids.tolist()) == [100, 101, 102]


def test_writer_repairs_a_half_written_tail(tmp_path):
    images = _images(np.random.default_rng(4), [5, 6])
    _write(tmp_path / "s.h5", images)
    with h5py.File(tmp_path / "s.h5", "a") as f:  # an interrupted add: regions written, index not
        f["features"].resize((f["features"].shape[0] + 3, 8))
        f["boxes"].resize((f["boxes"].shape[0] + 3, 4))
    with RegionStoreWriter(tmp_path / "s.h5", 8) as w:
        _, feats, boxes, width, height = _images(np.random.default_rng(5), [4])[0]
        w.add(200, feats, boxes, width, height)
    store = RegionStore(tmp_path / "s.h5")
    assert store.region_start.tolist()[-1] == 11
    assert store.read(100)[0].shape == (5, 8)


@pytest.mark.parametrize(
    "change, message",
    [
        ({"features": np.zeros((3, 7))}, "features have shape"),
        ({"boxes": np.zeros((2, 4))}, "boxes have shape"),
        ({"boxes": np.array([[0, 0, 500, 10]] * 3)}, "box 0 .* lies outside the 64x48 image"),
        ({"features": np.zeros((0, 8)), "boxes": np.zeros((0, 4))}, "no regions"),
    ],
)
def test_writer_names_the_image_on_bad_input(tmp_path, change, message):
    args = {
        "image_id": 7,
        "features": np.zeros((3, 8)),
        "boxes": np.zeros((3, 4)),
        "image_w": 64,
        "image_h": 48,
    }
    with (
        RegionStoreWriter(tmp_path / "s.h5", 8) as w,
        pytest.raises(RegionStoreError, match=f"image 7: {message}"),
    ):
        w.add(**{**args, **change})


def test_reader_errors_name_the_file_and_id(tmp_path):
    with pytest.raises(RegionStoreError, match="not found"):
        RegionStore(tmp_path / "missing.h5")
    (tmp_path / "corrupt.h5").write_bytes(b"not an hdf5 file at all")
    with pytest.raises(RegionStoreError, match="corrupt.h5: cannot read HDF5"):
        RegionStore(tmp_path / "corrupt.h5")
    with h5py.File(tmp_path / "other.h5", "w") as f:
        f["x"] = np.zeros(3)
    with pytest.raises(RegionStoreError, match="not a region-feature store"):
        RegionStore(tmp_path / "other.h5")
    _write(tmp_path / "s.h5", _images(np.random.default_rng(6), [2]))
    with pytest.raises(RegionStoreError, match="image id 999 is not in the store"):
        RegionStore(tmp_path / "s.h5").read_batch([100, 999])


class _Images(Dataset):
    def __init__(self, store):
        self.store = store

    def __len__(self):
        return len(self.store)

    def __getitem__(self, i):
        return int(self.store.image_ids[i])

    def collate(self, ids):
        return ids, self.store.read_batch(ids).features


@pytest.mark.parametrize("context", ["fork", "spawn"])
def test_loading_with_two_workers(tmp_path, context):
    images = _images(np.random.default_rng(7), [3, 9, 4, 6, 5, 2, 8, 1])
    _write(tmp_path / "s.h5", images, dtype="float32")
    store = RegionStore(tmp_path / "s.h5")
    store.read(100)  # an open handle in the parent must not leak into the workers
    data = _Images(store)
    loader = DataLoader(
        data,
        batch_size=3,
        num_workers=2,
        collate_fn=data.collate,
        multiprocessing_context=mp.get_context(context),
    )
    seen = {}
    for ids, feats in loader:
        for image_id, f in zip(ids, feats):
            seen[image_id] = f
    assert sorted(seen) == [im[0] for im in images]
    for image_id, feats, *_ in images:
        np.testing.assert_array_equal(seen[image_id][: len(feats)].numpy(), feats)


def test_store_pickles_without_its_handle(tmp_path):
    _write(tmp_path / "s.h5", _images(np.random.default_rng(8), [2]))
    store = RegionStore(tmp_path / "s.h5")
    store.read(100)
    clone = pickle.loads(pickle.dumps(store))
    assert clone._file is None
    np.testing.assert_array_equal(clone.read(100)[1], store.read(100)[1])


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda f: f["num_regions"].__setitem__(1, 0), "image 101 (row 1) has num_regions < 1"),
        (lambda f: f["region_start"].__setitem__(2, 10_000), "image 102 (row 2) has regions outside /features"),
        (lambda f: f["image_w"].__setitem__(0, 0), "image 100 (row 0) has a non-positive image size"),
        (lambda f: f["image_h"].resize((2,)), "index datasets differ in length (image_ids 3, image_w 3, image_h 2"),
    ],
    ids=["zero_regions", "offset_past_features", "zero_width", "short_index"],
)  # fmt: skip
def test_reader_validates_the_index_once_at_open(tmp_path, damage, message):
    _write(tmp_path / "s.h5", _images(np.random.default_rng(6), [5, 6, 7]))
    with h5py.File(tmp_path / "s.h5", "a") as f:  # as another tool, or a damaged copy, could leave it
        damage(f)
    with pytest.raises(RegionStoreError) as err:
        RegionStore(tmp_path / "s.h5")
    assert str(err.value).startswith(f"{tmp_path / 's.h5'}: ")
    assert message in str(err.value)


def test_non_finite_features_never_enter_a_store(tmp_path):
    features, boxes = np.ones((3, 8)), np.array([[0, 0, 10, 10]] * 3)
    features[1, 4] = np.nan
    with RegionStoreWriter(tmp_path / "s.h5", 8) as w:
        with pytest.raises(RegionStoreError, match="image 7: non-finite values in features or boxes"):
            w.add(7, features, boxes, 64, 48)
        w.add(8, np.ones((3, 8)), boxes, 64, 48)
    assert RegionStore(tmp_path / "s.h5").image_ids.tolist() == [8]
