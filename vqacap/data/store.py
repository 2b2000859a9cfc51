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
index (ids, counts, offsets, sizes) is held in memory; features are read on demand. torch is imported only where
tensors are made, so that `vqacap prepare features` starts in a fraction of a second.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import shutil
import signal
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

import h5py
import numpy as np

if TYPE_CHECKING:
    import torch

FORMAT_NAME = "region-store"
FORMAT_VERSION = 1
_INDEX_FIELDS = ("image_ids", "image_w", "image_h", "num_regions", "region_start")


# HDF5 chunk of 36 regions: a fixed-36 image is one chunk, and random image reads run ~3x faster than with 256-region
# chunks (measured by `python -m vqacap.bench loader`).
CHUNK_REGIONS = 36


class RegionStoreError(ValueError):
    """Raised with a one-line message naming the file and the offending image or field."""


class StoreWriteError(RegionStoreError):
    """A write to disk failed (disk full, file size limit): the store is unchanged, the conversion cannot go on."""


def exit_after_failed_write(err: StoreWriteError) -> NoReturn:
    """End a command after a failed disk write: one line, exit 2, and no cleanup, because HDF5 crashes when it closes a
    file whose writes failed, even at interpreter exit (the store itself is unchanged)."""
    print(f"error: {err}", file=sys.stderr, flush=True)
    sys.stdout.flush()
    os._exit(2)


SPATIAL_DIM = 6  # the box geometry `Regions.spatial` appends to each region's features


@dataclass
class Regions:
    """Padded region batch. B images, K = the largest region count in the batch (or a fixed pad size)."""

    features: torch.Tensor  # (B, K, D) float32
    boxes: torch.Tensor  # (B, K, 4) float32, pixels
    mask: torch.Tensor  # (B, K) bool, True for real regions
    image_size: torch.Tensor  # (B, 2) float32, (width, height)

    def spatial(self) -> torch.Tensor:
        """Normalised box geometry (x1/w, y1/h, x2/w, y2/h, box w/w, box h/h), shape (B, K, SPATIAL_DIM)."""
        import torch

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
                self.region_fields = _region_fields(f)
                regions = min(len(f[name]) for name in ("features", "boxes", *self.region_fields))
        except OSError as err:
            raise RegionStoreError(_open_error(self.path, err)) from None
        self._check_index(regions)
        self._row = {int(i): n for n, i in enumerate(self.image_ids)}
        if len(self._row) != len(self.image_ids):
            raise RegionStoreError(f"{self.path}: duplicate image ids in /image_ids")
        self.max_regions = int(self.num_regions.max()) if len(self.num_regions) else 0
        self._file: h5py.File | None = None
        self._features = self._boxes = None
        self._pid: int | None = None

    def _check_index(self, regions: int) -> None:
        """Once at open, so that no read can go past /features or pad an image of zero regions."""
        lengths = {name: len(getattr(self, name)) for name in _INDEX_FIELDS}
        if len(set(lengths.values())) > 1:
            found = ", ".join(f"{name} {n}" for name, n in lengths.items())
            raise RegionStoreError(
                f"{self.path}: index datasets differ in length ({found}); an interrupted write?"
            )
        start = self.region_start.astype(np.int64)
        count = self.num_regions.astype(np.int64)
        for bad, what in (
            (count < 1, "has num_regions < 1"),
            ((start < 0) | (start + count > regions), f"has regions outside /features ({regions} rows)"),
            ((self.image_w < 1) | (self.image_h < 1), "has a non-positive image size"),
        ):
            if bad.any():
                n = int(np.flatnonzero(bad)[0])
                raise RegionStoreError(f"{self.path}: image {self.image_ids[n]} (row {n}) {what}")

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
        names = self._handle().get(f"{field}_names")
        return [n.decode() if isinstance(n, bytes) else str(n) for n in names[:]] if names is not None else []

    def read_batch(self, image_ids: list[int] | np.ndarray, pad_to: int | None = None) -> Regions:
        """Read several images into one padded float32 batch.

        Rows are read in store order, and runs of consecutive rows are read with one slice, so a batch of neighbouring
        images costs one HDF5 read.
        """
        import torch

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
    import torch

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
    """Append images to a region-feature store, so that a kill at any moment loses at most the last unflushed images.

    The store's own file is never written in place: images go to `<store>.partial` (a copy of the store, made at the
    first write, or a new file), which is flushed after every batch of images with the index written after the regions
    it points to, and renamed over the store at `close`. A kill therefore leaves the previous store whole and a partial
    file holding a consistent prefix; the next writer resumes that prefix (or discards it if it is unreadable or does
    not continue the store, saying so in `note`). An exclusive lock on the partial file keeps a second writer out.

    Use as a context manager. `add` validates each image and raises `RegionStoreError` naming the image id; nothing
    already written is touched by a failed `add`. A failed disk write (disk full, file size limit) raises
    `RegionStoreError` and leaves the store unchanged; the HDF5 handle is then unusable, and the process should exit
    without closing it (HDF5 crashes flushing a file whose writes failed).
    """

    def __init__(
        self,
        path: str | os.PathLike,
        feature_dim: int | None,
        dtype: str = "float16",
        chunk_regions: int = 256,
        buffer_regions: int = 0,
        region_fields: Mapping[str, str] | None = None,
        field_names: Mapping[str, Sequence[str]] | None = None,
        attrs: Mapping[str, str] | None = None,
    ) -> None:
        """`feature_dim` None takes D from the existing store or, for a new one, from the first image added.

        `buffer_regions` > 0 queues validated images in memory and writes them with one HDF5 call per dataset once
        that many regions are queued (and on `flush`/`close`): converting 100k images then costs a few thousand writes
        instead of seven per image. 0 writes every image as it is added.

        `region_fields` (name -> numpy dtype) adds optional per-region datasets, which every `add` then provides;
        `field_names` the names of their label values. A resumed store must have been created with the same fields.
        `attrs` are root attributes of a new store (e.g. what extracted it); an existing store keeps its own."""
        self.path = Path(path)
        self.partial = partial_path(self.path)
        if dtype not in ("float16", "float32"):
            raise RegionStoreError(f"{self.path}: dtype must be float16 or float32, got {dtype}")
        self.dtype = dtype
        self.feature_dim = None if feature_dim is None else int(feature_dim)
        self.chunk_regions = int(chunk_regions)
        self.buffer_regions = int(buffer_regions)
        self.note = ""  # what became of an interrupted conversion found at open
        self.region_fields = dict(region_fields or {})
        self.field_names = {name: list(names) for name, names in (field_names or {}).items()}
        self.attrs = dict(attrs or {})
        self._pending: list[tuple[int, int, int, np.ndarray, np.ndarray, dict[str, np.ndarray]]] = []
        self._pending_regions = 0
        self._f: h5py.File | None = None
        self._datasets: dict[str, h5py.Dataset] = {}
        self._failed = False
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._lock = _lock_exclusively(self.partial)
        except OSError as err:
            raise RegionStoreError(f"{self.path}: cannot create the store here ({_reason(err)})") from None
        try:
            self._ids = self._open()
        except BaseException:
            self._release()
            raise

    # ------------------------------------------------------------------------------------------------ opening/resuming

    def _open(self) -> set[int]:
        committed = _committed_index(self.path) if self.path.exists() else None
        if committed is not None:
            self._adopt_layout(self.path, *committed[1:])
        if self.partial.stat().st_size:
            try:
                f = h5py.File(self.partial, "a", locking=False)  # our own lock is held on it
            except OSError as err:
                self.note = f"{self.partial}: unreadable interrupted conversion discarded ({_reason(err)})"
            else:
                problem = _continuation_problem(f, committed)
                if problem is None:
                    self._f = f
                    _keep_metadata_in_memory(f)
                    self._adopt_layout(
                        self.partial, int(f["features"].shape[1]), f["features"].dtype.name, _region_fields(f)
                    )
                    n = _repair(f)
                    self.note = f"{self.partial}: resuming an interrupted conversion ({n} images)"
                    return set(int(i) for i in f["image_ids"][:])
                f.close()
                self.note = f"{self.partial}: interrupted conversion discarded ({problem})"
        return set(int(i) for i in committed[0]) if committed is not None else set()

    def _adopt_layout(self, where: Path, feature_dim: int, dtype: str, fields: tuple[str, ...]) -> None:
        if self.feature_dim is not None and feature_dim != self.feature_dim:
            raise RegionStoreError(
                f"{where}: existing store has feature_dim {feature_dim}, not {self.feature_dim}"
            )
        if dtype != self.dtype:
            raise RegionStoreError(
                f"{where}: existing store holds {dtype} features, not {self.dtype} (--dtype {dtype})"
            )
        if sorted(fields) != sorted(self.region_fields):
            raise RegionStoreError(
                f"{where}: existing store has region fields {sorted(fields)}, not {sorted(self.region_fields)}"
            )
        self.feature_dim = feature_dim

    def _open_for_writing(self) -> h5py.File:
        """The partial file, copied from the committed store or created, at the first write of this writer."""
        if self._f is not None:
            return self._f
        try:
            if self.path.exists():
                # Into the locked file itself, so the lock is never released while the copy is made.
                with open(self.path, "rb") as src, open(self.partial, "r+b") as dst:
                    dst.truncate(0)
                    shutil.copyfileobj(src, dst, 1 << 24)
                f = h5py.File(self.partial, "a", locking=False)
                _repair(f)
            else:
                f = h5py.File(self.partial, "w", locking=False)
                f.attrs["vqacap_format"] = FORMAT_NAME
                f.attrs["version"] = FORMAT_VERSION
                f.attrs["feature_dim"] = self.feature_dim
                for name, value in self.attrs.items():
                    f.attrs[name] = value
                d = self.feature_dim
                f.create_dataset(
                    "features", (0, d), maxshape=(None, d), dtype=self.dtype, chunks=(self.chunk_regions, d)
                )
                f.create_dataset(
                    "boxes", (0, 4), maxshape=(None, 4), dtype="float32", chunks=(self.chunk_regions, 4)
                )
                for name, dt in zip(_INDEX_FIELDS, ("int64", "int32", "int32", "int32", "int64")):
                    f.create_dataset(name, (0,), maxshape=(None,), dtype=dt, chunks=(4096,))
                for name, dt in self.region_fields.items():
                    f.create_dataset(name, (0,), maxshape=(None,), dtype=dt, chunks=(self.chunk_regions,))
                for name, names in self.field_names.items():
                    f.create_dataset(f"{name}_names", data=names, dtype=h5py.string_dtype())
                if self.region_fields:
                    f.attrs["region_fields"] = sorted(self.region_fields)
        except OSError as err:
            self._failed = True
            os.truncate(self.partial, 0)
            raise StoreWriteError(
                f"{self.partial}: cannot write ({_reason(err)}); {self.path} is unchanged"
            ) from None
        _keep_metadata_in_memory(f)
        self._f = f
        return f

    # ---------------------------------------------------------------------------------------------------------- adding

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
        """Queue one image; `fields` gives each of the writer's `region_fields` as a (k,) array."""
        image_id = int(image_id)
        where = f"{self.path}: image {image_id}"
        if image_id in self._ids:
            raise RegionStoreError(f"{where}: duplicate image id")
        if not _INT64_MIN <= image_id <= _INT64_MAX:
            raise RegionStoreError(f"{where}: image id does not fit in int64")
        features = np.asarray(features)
        boxes = np.asarray(boxes, dtype=np.float32)
        if self.feature_dim is None and features.ndim == 2:
            self.feature_dim = int(features.shape[1])
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
        if self.dtype == "float16" and np.abs(features).max() > _FLOAT16_MAX:
            raise RegionStoreError(f"{where}: feature values overflow float16 (store them as float32)")
        image_w, image_h = _pixel_size(where, image_w, image_h)
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
        self._pending.append((image_id, image_w, image_h, features, boxes, fields))
        self._pending_regions += k
        self._ids.add(image_id)
        if self._pending_regions >= self.buffer_regions:
            self._write_pending()

    def _write_pending(self) -> None:
        """Append the queued images: regions first, index last, then flush, so the file always ends consistent."""
        if not self._pending:
            return
        if self._failed:
            raise StoreWriteError(f"{self.partial}: an earlier write failed; {self.path} is unchanged")
        f = self._open_for_writing()
        # Dataset objects held for the writer's life: a handle released after a failed write makes h5py print a
        # traceback per object, however the failure is reported.
        d = self._datasets = self._datasets or {
            name: f[name] for name in ("features", "boxes", *self.region_fields, *_INDEX_FIELDS)
        }
        ids, widths, heights, features, boxes, fields = zip(*self._pending)
        counts = np.array([len(b) for b in boxes], dtype=np.int64)
        # Ctrl-C or SIGTERM half-way would leave index datasets of different lengths for `close` to write on top of.
        with _signals_deferred():
            try:
                start = d["features"].shape[0]
                end = start + int(counts.sum())
                d["features"].resize((end, self.feature_dim))
                d["features"][start:end] = np.concatenate(features).astype(d["features"].dtype, copy=False)
                d["boxes"].resize((end, 4))
                d["boxes"][start:end] = np.concatenate(boxes)
                for name in self.region_fields:
                    d[name].resize((end,))
                    d[name][start:end] = np.concatenate([fs[name] for fs in fields]).astype(
                        d[name].dtype, copy=False
                    )
                starts = start + np.concatenate([[0], np.cumsum(counts)[:-1]])
                n = d["image_ids"].shape[0]
                for name, values in zip(_INDEX_FIELDS, (ids, widths, heights, counts, starts)):
                    d[name].resize((n + len(ids),))
                    d[name][n:] = np.asarray(values, dtype=d[name].dtype)
                f.flush()
            except (OSError, RuntimeError) as err:  # HDF5 reports a failed flush as RuntimeError
                self._failed = True
                raise StoreWriteError(
                    f"{self.partial}: write failed ({_reason(err)}); {self.path} is unchanged"
                ) from None
        self._pending = []
        self._pending_regions = 0

    def flush(self) -> None:
        self._write_pending()

    def close(self) -> None:
        """Write what is queued and commit: the partial file replaces the store in one rename."""
        if self._lock is None:
            return
        try:
            if self._failed:
                return  # the HDF5 handle is poisoned: leave it, and the store, alone
            with _signals_deferred():
                self._write_pending()
                if self._f is not None:
                    self._datasets = {}
                    self._f.close()
                    _fsync(self.partial)
                    os.replace(self.partial, self.path)
                    _fsync(self.path.parent)
                else:
                    self.partial.unlink()  # nothing written: only the lock file (or a discarded partial) is there
        finally:
            self._release()

    def _release(self) -> None:
        if self._lock is not None:
            os.close(self._lock)
            self._lock = None

    def __enter__(self) -> RegionStoreWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


_INT64_MIN, _INT64_MAX = int(np.iinfo(np.int64).min), int(np.iinfo(np.int64).max)
_INT32_MAX = int(np.iinfo(np.int32).max)
_FLOAT16_MAX = float(np.finfo(np.float16).max)


def partial_path(path: str | os.PathLike) -> Path:
    """Where `RegionStoreWriter` writes before committing to `path`."""
    path = Path(path)
    return path.with_name(path.name + ".partial")


def _pixel_size(where: str, image_w, image_h) -> tuple[int, int]:
    """Whole positive pixel counts that fit the int32 index, whatever numeric type (or garbage) they arrive as."""
    size = []
    for name, value in (("image_w", image_w), ("image_h", image_h)):
        try:
            as_float = float(np.asarray(value).item()) if np.ndim(value) == 0 else None
        except (TypeError, ValueError):
            as_float = None
        if as_float is None or not np.isfinite(as_float) or as_float != int(as_float):
            raise RegionStoreError(f"{where}: {name} {str(value)[:40]!r} is not a whole number of pixels")
        if not 0 < as_float <= _INT32_MAX:
            raise RegionStoreError(f"{where}: image size {image_w}x{image_h} is not positive (or too large)")
        size.append(int(as_float))
    return size[0], size[1]


@contextlib.contextmanager
def holding(path: str | os.PathLike):
    """Hold the writers' lock of the store at `path` (on its partial file): refused in one line while a writer
    runs, so what a live writer's file holds is never taken for an interrupted run's."""
    fd = _lock_exclusively(partial_path(path))
    try:
        yield
    finally:
        os.close(fd)


def refuse_if_in_use(path: str | os.PathLike) -> None:
    """Raise `RegionStoreError` (one line) now if a writer holds the store at `path`; creates nothing."""
    partial = partial_path(path)
    try:
        fd = os.open(partial, os.O_RDONLY)
    except FileNotFoundError:
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        raise _in_use(partial) from None
    finally:
        os.close(fd)


def _in_use(partial: Path) -> RegionStoreError:
    return RegionStoreError(f"{partial}: in use by another process (another run is writing this store)")


def _lock_exclusively(partial: Path) -> int:
    fd = os.open(partial, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise _in_use(partial) from None
    if not partial.exists() or os.stat(partial).st_ino != os.fstat(fd).st_ino:
        os.close(fd)  # the other writer committed (renamed) it while we waited: lock the new file
        return _lock_exclusively(partial)
    return fd


def _committed_index(path: Path) -> tuple[np.ndarray, int, str, tuple[str, ...]]:
    """Image ids of the consistent prefix of the store at `path`, its feature dim, dtype and region fields."""
    try:
        with h5py.File(path, "r") as f:
            missing = [k for k in (*_INDEX_FIELDS, "features", "boxes") if k not in f]
            if missing:
                raise RegionStoreError(f"{path}: not a region-feature store (missing {', '.join(missing)})")
            n = _consistent_rows(f)
            return (
                f["image_ids"][:n].astype(np.int64),
                int(f["features"].shape[1]),
                f["features"].dtype.name,
                _region_fields(f),
            )
    except OSError as err:
        raise RegionStoreError(_open_error(path, err)) from None


def _continuation_problem(f: h5py.File, committed: tuple | None) -> str | None:
    """Why the partial file `f` cannot be resumed on top of the committed store, or None."""
    if any(k not in f for k in (*_INDEX_FIELDS, "features", "boxes")):
        return "not a region-feature store"
    if committed is None:
        return None
    ids = f["image_ids"][: _consistent_rows(f)]
    if len(ids) < len(committed[0]) or not np.array_equal(ids[: len(committed[0])], committed[0]):
        return "it does not continue the store, which changed since"
    return None


def _consistent_rows(f: h5py.File) -> int:
    """Length of the longest index prefix whose regions all lie inside /features and /boxes."""
    n = min(len(f[name]) for name in _INDEX_FIELDS)
    if n == 0:
        return 0
    start = f["region_start"][:n].astype(np.int64)
    count = f["num_regions"][:n].astype(np.int64)
    regions = min(len(f[name]) for name in ("features", "boxes", *_region_fields(f)))
    bad = np.flatnonzero((count < 1) | (start < 0) | (start + count > regions))
    return int(bad[0]) if len(bad) else n


def _repair(f: h5py.File) -> int:
    """Truncate to the consistent prefix: a half-written tail left by an interruption is dropped."""
    n = _consistent_rows(f)
    for name in _INDEX_FIELDS:
        f[name].resize((n,))
    end = int(f["region_start"][n - 1] + f["num_regions"][n - 1]) if n else 0
    f["features"].resize((end, f["features"].shape[1]))
    f["boxes"].resize((end, 4))
    for name in _region_fields(f):
        f[name].resize((end,))
    return n


def _region_fields(f: h5py.File) -> tuple[str, ...]:
    """Names of the optional per-region datasets of an open store."""
    return tuple(str(n) for n in f.attrs.get("region_fields", ()))


def _keep_metadata_in_memory(f: h5py.File) -> None:
    """Write HDF5 metadata only at flushes, never evicted half-way between two: the file on disk stays as of the last
    flush (plus new regions past its end), so a kill leaves it readable."""
    config = f.id.get_mdc_config()
    config.evictions_enabled = False
    config.incr_mode = config.decr_mode = config.flash_incr_mode = 0  # off: required with evictions disabled
    f.id.set_mdc_config(config)


@contextlib.contextmanager
def _signals_deferred():
    """Block SIGINT/SIGTERM while a write or the commit runs; they take effect, whole, right after."""
    signals = {signal.SIGINT, signal.SIGTERM}
    old = signal.pthread_sigmask(signal.SIG_BLOCK, signals)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _reason(err: OSError | RuntimeError) -> str:
    """One line: HDF5's messages run over several lines with a time stamp and buffer addresses. A failed flush comes
    as a RuntimeError whose only trace of the cause is the "errno = N" in its text."""
    errno = getattr(err, "errno", None)
    if errno is None:
        found = re.search(r"errno = (\d+)", str(err))
        errno = int(found.group(1)) if found else None
    if errno:
        return os.strerror(errno)
    return str(err).splitlines()[0][:200]


def _open_error(path: str | os.PathLike, err: OSError) -> str:
    if "lock" in str(err).lower():
        return f"{path}: in use by another process (the HDF5 file lock is held)"
    return f"{path}: cannot read HDF5 file ({_reason(err)})"
