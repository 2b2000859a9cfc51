"""Region-feature store: the one HDF5 layout every dataset and task reads bottom-up features from.

Layout (HDF5, version 1). N images, R regions in total over all images, D feature dimension:

    /                 attrs: vqacap_format = "region-store", version = 1, feature_dim = D
    /image_ids        (N,)   int64    image id of row n (unique)
    /image_w          (N,)   int32    image width in pixels
    /image_h          (N,)   int32    image height in pixels
    /num_regions      (N,)   int32    number of valid regions k_n of image n (k_n >= 1)
    /region_start     (N,)   int64    index of image n's first region in /features and /boxes
    /features         (R, D) float16  (or float32) region features, image n at rows
                                      region_start[n] : region_start[n] + num_regions[n]
    /boxes            (R, 4) float32  region boxes in pixels, (x1, y1, x2, y2)

Optional per-region datasets (readers that do not need them ignore them), listed in the root attribute `region_fields`:

    /<field>          (R,)   any numeric dtype, e.g. a detector's object_labels (int32) and object_scores (float32)
    /<field>_names    (L,)   str      optional: the names of the label values of <field> (e.g. the detector's classes)

Fixed K (e.g. 36 boxes per image) and variable K (e.g. 10-100, "adaptive") are the same layout; regions of one image are
contiguous, so one image is one slice read. Any tool can write the layout with h5py; `RegionStoreWriter` does it
incrementally (resizable chunked datasets), so conversions stream and can be resumed.

The reader opens the file lazily in the process that reads (h5py handles cannot be pickled, and a handle inherited across
fork is unsafe), so a `RegionStore` can be handed to DataLoader workers under fork or spawn. Only the small per-image
index (ids, counts, offsets, sizes) is held in memory; features are read on demand.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import torch

FORMAT_NAME = "region-store"
FORMAT_VERSION = 1
_INDEX_FIELDS = ("image_ids", "image_w", "image_h", "num_regions", "region_start")


class RegionStoreError(ValueError):
    """Raised with a one-line message naming the file and the offending image or field."""


@dataclass
class Regions:
    """Padded region batch. B images, K = the largest region count in the batch (or a fixed pad size)."""

    features: torch.Tensor  # (B, K, D) float32
    boxes: torch.Tensor  # (B, K, 4) float32, pixels
    mask: torch.Tensor  # (B, K) bool, True for real regions
    image_size: torch.Tensor  # (B, 2) float32, (width, height)

    def spatial(self) -> torch.Tensor:
        """Normalised box geometry (x1/w, y1/h, x2/w, y2/h, box w/w, box h/h), shape (B, K, 6)."""
        w = self.image_size[:, 0].view(-1, 1)
        h = self.image_size[:, 1].view(-1, 1)
        x1, y1, x2, y2 = self.boxes.unbind(-1)
        geometry = torch.stack([x1 / w, y1 / h, x2 / w, y2 / h, (x2 - x1) / w, (y2 - y1) / h], dim=-1)
        return geometry * self.mask.unsqueeze(-1)


class RegionStore:
    """Read-only access to a region-feature store by image id."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise RegionStoreError(f"{self.path}: region-feature store not found")
        try:
            with h5py.File(self.path, "r") as f:
                missing = [k for k in (*_INDEX_FIELDS, "features", "boxes") if k not in f]
                if missing:
                    raise RegionStoreError(
                        f"{self.path}: not a region-feature store (missing {', '.join(missing)})"
                    )
                self.feature_dim = int(f["features"].shape[1])
                self.dtype = f["features"].dtype
                self.image_ids = f["image_ids"][:].astype(np.int64)
                self.image_w = f["image_w"][:]
                self.image_h = f["image_h"][:]
                self.num_regions = f["num_regions"][:]
                self.region_start = f["region_start"][:]
                self.region_fields = tuple(str(n) for n in f.attrs.get("region_fields", ()))
        except OSError as err:
            raise RegionStoreError(f"{self.path}: cannot read HDF5 file ({err})") from None
        self._row = {int(i): n for n, i in enumerate(self.image_ids)}
        if len(self._row) != len(self.image_ids):
            raise RegionStoreError(f"{self.path}: duplicate image ids in /image_ids")
        self.max_regions = int(self.num_regions.max()) if len(self.num_regions) else 0
        self._file: h5py.File | None = None
        self._features = self._boxes = None
        self._pid: int | None = None

    # h5py handles are per process: drop the handle when pickled and reopen lazily after fork.
    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_file"] = state["_features"] = state["_boxes"] = None
        state["_pid"] = None
        return state

    def _handle(self) -> h5py.File:
        if self._file is None or self._pid != os.getpid():
            self._file = h5py.File(self.path, "r")
            self._pid = os.getpid()
            # Dataset objects are looked up once: a name lookup per read costs as much as a small read.
            self._features, self._boxes = self._file["features"], self._file["boxes"]
        return self._file

    def close(self) -> None:
        if self._file is not None and self._pid == os.getpid():
            self._file.close()
        self._file = None

    def __len__(self) -> int:
        return len(self.image_ids)

    def __contains__(self, image_id: int) -> bool:
        return int(image_id) in self._row

    def row(self, image_id: int) -> int:
        try:
            return self._row[int(image_id)]
        except KeyError:
            raise RegionStoreError(f"{self.path}: image id {image_id} is not in the store") from None

    def read(self, image_id: int) -> tuple[np.ndarray, np.ndarray]:
        """Features (k, D) in the stored dtype and boxes (k, 4) of one image."""
        n = self.row(image_id)
        start, k = int(self.region_start[n]), int(self.num_regions[n])
        self._handle()
        return self._features[start : start + k], self._boxes[start : start + k]

    def read_field(self, image_id: int, field: str) -> np.ndarray:
        """An optional per-region dataset (see the module docstring) of one image, (k,)."""
        if field not in self.region_fields:
            raise RegionStoreError(
                f"{self.path}: no region field {field!r} (fields: {list(self.region_fields)})"
            )
        n = self.row(image_id)
        start, k = int(self.region_start[n]), int(self.num_regions[n])
        return self._handle()[field][start : start + k]

    def field_names(self, field: str) -> list[str]:
        """The names of the label values of a region field (e.g. class names), [] when the store has none."""
        with h5py.File(self.path, "r") as f:
            names = f.get(f"{field}_names")
            return (
                [n.decode() if isinstance(n, bytes) else str(n) for n in names[:]]
                if names is not None
                else []
            )

    def read_batch(self, image_ids: list[int] | np.ndarray, pad_to: int | None = None) -> Regions:
        """Read several images into one padded float32 batch.

        Rows are read in store order, and runs of consecutive rows are read with one slice, so a batch of neighbouring
        images costs one HDF5 read.
        """
        rows = np.array([self.row(i) for i in image_ids], dtype=np.int64)
        counts = self.num_regions[rows]
        k = int(counts.max()) if pad_to is None else int(pad_to)
        if counts.max() > k:
            raise RegionStoreError(f"{self.path}: an image has {counts.max()} regions, more than pad_to={k}")
        b = len(rows)
        features = np.zeros((b, k, self.feature_dim), dtype=np.float32)
        boxes = np.zeros((b, k, 4), dtype=np.float32)
        self._handle()
        order = np.argsort(rows, kind="stable")
        i = 0
        while i < b:
            # Extend a run while the next row in store order is the next row on disk.
            j = i + 1
            while j < b and rows[order[j]] == rows[order[j - 1]] + 1:
                j += 1
            first, last = rows[order[i]], rows[order[j - 1]]
            start = int(self.region_start[first])
            stop = int(self.region_start[last] + self.num_regions[last])
            block_f = self._features[start:stop]
            block_b = self._boxes[start:stop]
            for pos in order[i:j]:
                s = int(self.region_start[rows[pos]]) - start
                c = int(counts[pos])
                features[pos, :c] = block_f[s : s + c]
                boxes[pos, :c] = block_b[s : s + c]
            i = j
        mask = np.arange(k)[None, :] < counts[:, None]
        size = np.stack([self.image_w[rows], self.image_h[rows]], axis=1).astype(np.float32)
        return Regions(
            torch.from_numpy(features),
            torch.from_numpy(boxes),
            torch.from_numpy(mask),
            torch.from_numpy(size),
        )


def collate_regions(
    items: list[tuple[np.ndarray, np.ndarray, int, int]], pad_to: int | None = None
) -> Regions:
    """Pad per-image (features (k, D), boxes (k, 4), width, height) tuples into a `Regions` batch."""
    counts = np.array([len(it[0]) for it in items])
    k = int(counts.max()) if pad_to is None else int(pad_to)
    d = items[0][0].shape[1]
    features = torch.zeros(len(items), k, d)
    boxes = torch.zeros(len(items), k, 4)
    for n, (feat, box, _, _) in enumerate(items):
        features[n, : len(feat)] = torch.from_numpy(np.asarray(feat, dtype=np.float32))
        boxes[n, : len(box)] = torch.from_numpy(np.asarray(box, dtype=np.float32))
    mask = torch.arange(k)[None, :] < torch.from_numpy(counts)[:, None]
    size = torch.tensor([[it[2], it[3]] for it in items], dtype=torch.float32)
    return Regions(features, boxes, mask, size)


class RegionStoreWriter:
    """Append images to a region-feature store; reopening an existing store resumes it.

    Use as a context manager. `add` validates each image and raises `RegionStoreError` naming the image id; nothing
    already written is touched by a failed `add`.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        feature_dim: int,
        dtype: str = "float16",
        chunk_regions: int = 256,
        buffer_regions: int = 0,
        region_fields: Mapping[str, str] | None = None,
        field_names: Mapping[str, Sequence[str]] | None = None,
    ) -> None:
        """`buffer_regions` > 0 queues validated images in memory and writes them with one HDF5 call per dataset once
        that many regions are queued (and on `flush`/`close`): converting 100k images then costs a few thousand writes
        instead of seven per image. 0 writes every image as it is added.

        `region_fields` (name -> numpy dtype) adds optional per-region datasets, which every `add` then provides;
        `field_names` the names of their label values. A resumed store must have been created with the same fields."""
        self.path = Path(path)
        self.buffer_regions = int(buffer_regions)
        self._pending: list[tuple[int, int, int, np.ndarray, np.ndarray, dict[str, np.ndarray]]] = []
        self._pending_regions = 0
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if dtype not in ("float16", "float32"):
            raise RegionStoreError(f"{self.path}: dtype must be float16 or float32, got {dtype}")
        self.feature_dim = int(feature_dim)
        self.region_fields = dict(region_fields or {})
        exists = self.path.exists()
        try:
            self._f = h5py.File(self.path, "a")
        except OSError as err:
            raise RegionStoreError(f"{self.path}: cannot open for writing ({err})") from None
        f = self._f
        if exists and "features" in f:
            if int(f["features"].shape[1]) != self.feature_dim:
                raise RegionStoreError(
                    f"{self.path}: existing store has feature_dim {f['features'].shape[1]}, not {self.feature_dim}"
                )
            existing = [str(n) for n in f.attrs.get("region_fields", ())]
            if sorted(existing) != sorted(self.region_fields):
                raise RegionStoreError(
                    f"{self.path}: existing store has region fields {existing}, not {sorted(self.region_fields)}"
                )
            self._repair()
        else:
            f.attrs["vqacap_format"] = FORMAT_NAME
            f.attrs["version"] = FORMAT_VERSION
            f.attrs["feature_dim"] = self.feature_dim
            f.create_dataset(
                "features",
                (0, self.feature_dim),
                maxshape=(None, self.feature_dim),
                dtype=dtype,
                chunks=(chunk_regions, self.feature_dim),
            )
            f.create_dataset("boxes", (0, 4), maxshape=(None, 4), dtype="float32", chunks=(chunk_regions, 4))
            for name, dt in zip(_INDEX_FIELDS, ("int64", "int32", "int32", "int32", "int64")):
                f.create_dataset(name, (0,), maxshape=(None,), dtype=dt, chunks=(4096,))
            for name, dt in self.region_fields.items():
                f.create_dataset(name, (0,), maxshape=(None,), dtype=dt, chunks=(chunk_regions,))
            for name, names in (field_names or {}).items():
                f.create_dataset(f"{name}_names", data=list(names), dtype=h5py.string_dtype())
            if self.region_fields:
                f.attrs["region_fields"] = sorted(self.region_fields)
        self._ids = set(int(i) for i in f["image_ids"][:])

    def _repair(self) -> None:
        """Truncate a half-written tail left by an interrupted run: the index is written last, so it is the truth."""
        f = self._f
        n = min(len(f[name]) for name in _INDEX_FIELDS)
        for name in _INDEX_FIELDS:
            f[name].resize((n,))
        end = int(f["region_start"][n - 1] + f["num_regions"][n - 1]) if n else 0
        f["features"].resize((end, self.feature_dim))
        f["boxes"].resize((end, 4))
        for name in self.region_fields:
            f[name].resize((end,))

    def __contains__(self, image_id: int) -> bool:
        return int(image_id) in self._ids

    def __len__(self) -> int:
        return len(self._ids)

    def add(
        self,
        image_id: int,
        features: np.ndarray,
        boxes: np.ndarray,
        image_w: int,
        image_h: int,
        fields: Mapping[str, np.ndarray] | None = None,
    ) -> None:
        image_id = int(image_id)
        where = f"{self.path}: image {image_id}"
        if image_id in self._ids:
            raise RegionStoreError(f"{where}: duplicate image id")
        features = np.asarray(features)
        boxes = np.asarray(boxes, dtype=np.float32)
        if features.ndim != 2 or features.shape[1] != self.feature_dim:
            raise RegionStoreError(
                f"{where}: features have shape {features.shape}, expected (k, {self.feature_dim})"
            )
        k = features.shape[0]
        if k == 0:
            raise RegionStoreError(f"{where}: no regions")
        if boxes.shape != (k, 4):
            raise RegionStoreError(f"{where}: boxes have shape {boxes.shape}, expected ({k}, 4)")
        if not (np.isfinite(features).all() and np.isfinite(boxes).all()):
            raise RegionStoreError(f"{where}: non-finite values in features or boxes")
        if image_w <= 0 or image_h <= 0:
            raise RegionStoreError(f"{where}: image size {image_w}x{image_h} is not positive")
        # Detector boxes may overshoot the border by a pixel; anything further is corrupt input.
        tol = 1.0
        x1, y1, x2, y2 = boxes.T
        bad = (x1 < -tol) | (y1 < -tol) | (x2 > image_w + tol) | (y2 > image_h + tol) | (x2 < x1) | (y2 < y1)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise RegionStoreError(
                f"{where}: box {i} {boxes[i].tolist()} lies outside the {image_w}x{image_h} image or is inverted"
            )
        fields = {name: np.asarray(values) for name, values in (fields or {}).items()}
        if sorted(fields) != sorted(self.region_fields):
            raise RegionStoreError(
                f"{where}: region fields {sorted(fields)}, expected {sorted(self.region_fields)}"
            )
        for name, values in fields.items():
            if values.shape != (k,):
                raise RegionStoreError(
                    f"{where}: region field {name} has shape {values.shape}, expected ({k},)"
                )
        if self.buffer_regions:  # the caller may reuse its arrays before the queue is written
            features, boxes = features.copy(), boxes.copy()
            fields = {name: values.copy() for name, values in fields.items()}
        self._pending.append((image_id, int(image_w), int(image_h), features, boxes, fields))
        self._pending_regions += k
        self._ids.add(image_id)
        if self._pending_regions >= self.buffer_regions:
            self._write_pending()

    def _write_pending(self) -> None:
        """Append the queued images: regions first, index last, so an interruption leaves a tail `_repair` drops."""
        if not self._pending:
            return
        f = self._f
        ids, widths, heights, features, boxes, fields = zip(*self._pending)
        counts = np.array([len(b) for b in boxes], dtype=np.int64)
        start = f["features"].shape[0]
        end = start + int(counts.sum())
        f["features"].resize((end, self.feature_dim))
        f["features"][start:end] = np.concatenate(features).astype(f["features"].dtype, copy=False)
        f["boxes"].resize((end, 4))
        f["boxes"][start:end] = np.concatenate(boxes)
        for name in self.region_fields:
            f[name].resize((end,))
            f[name][start:end] = np.concatenate([fs[name] for fs in fields]).astype(f[name].dtype, copy=False)
        starts = start + np.concatenate([[0], np.cumsum(counts)[:-1]])
        n = f["image_ids"].shape[0]
        for name, values in zip(_INDEX_FIELDS, (ids, widths, heights, counts, starts)):
            f[name].resize((n + len(ids),))
            f[name][n:] = np.asarray(values, dtype=f[name].dtype)
        self._pending = []
        self._pending_regions = 0

    def flush(self) -> None:
        self._write_pending()
        self._f.flush()

    def close(self) -> None:
        if self._f.id.valid:
            self._write_pending()
            self._f.close()

    def __enter__(self) -> RegionStoreWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
