"""`vqacap prepare features`: convert published bottom-up region features into the region-feature store.

Sources (one per run; fixed 36 boxes and adaptive 10-100 boxes alike):

    --tsv FILE ...   peteanderson80/bottom-up-attention TSV: one image per line, tab-separated
                     image_id, image_w, image_h, num_boxes, boxes, features; boxes and features are base64 float32
                     arrays of shape (num_boxes, 4) and (num_boxes, D). The format has no quoting, so lines are split
                     on tabs directly (the csv module would add nothing but its field-size limit).
    --h5 FILE --ids PICKLE
                     hengyuan-hu/bottom-up-attention-vqa HDF5: image_features (N, K, D), image_bb (N, K, 4),
                     spatial_features (N, K, 6) = (x1/w, y1/h, x2/w, y2/h, bw/w, bh/h); or its adaptive variant
                     (jnhwkim/ban-vqa) with flat (R, .) arrays and pos_boxes (N, 2) = [start, end). The pickle maps
                     image id -> row. Image sizes are not stored: they come from --image-sizes, else from the boxes
                     and spatial_features (w = box width / (box width / w)).
    --npz-dir DIR    per-image .npz files named by image id: ruotianluo/self-critical.pytorch `cocobu_att/<id>.npz`
                     (`feat` (k, D); boxes in `cocobu_box/<id>.npy`, pass --box-dir; sizes from --image-sizes) or the
                     MILVLG/airsplay style (`x`, `bbox`, `num_bbox`, `image_w`, `image_h`; `x` may be stored (D, k)).

Every source yields `Row`s whose arrays are decoded lazily, so images already in the store are skipped without decoding:
rerunning after an interruption resumes where it stopped. Ctrl-C and SIGTERM keep what is converted; a SIGKILL or a
full disk leaves the previous store untouched and the flushed images in `<out>.partial`, which the rerun resumes (see
`RegionStoreWriter`). A row that fails to decode or validate (bad base64, a truncated line or npz, num_boxes
disagreeing with the arrays, sizes that are not whole pixel counts, ids beyond int64, boxes outside the image,
non-finite features, a duplicate id) is reported with its image id and file/line, and the run goes on. The exit status
is 1 when the store ends up holding none of the input's images, 2 on an error that stops the run, 130 when interrupted.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import os
import pickle
import signal
import sys
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import h5py
import numpy as np
from tqdm import tqdm

from vqacap.data.store import (
    CHUNK_REGIONS,
    RegionStoreError,
    RegionStoreWriter,
    StoreWriteError,
    exit_after_failed_write,
)
from vqacap.images import image_id_from_name
from vqacap.prepare.common import PrepareError, is_id, load_image_sizes

# Regions queued by the writer before one HDF5 write: ~16 MB of float16 features at D = 2048.
_BUFFER_REGIONS = 4096


class CorruptRow(ValueError):
    """A row that cannot be decoded; the message says what is wrong with it."""


Decoded = tuple[np.ndarray, np.ndarray, int, int]  # features (k, D), boxes (k, 4), image_w, image_h


@dataclass
class Row:
    image_id: int | None  # None when even the id is unreadable
    where: str  # file:line, file:row N or file
    load: Callable[[], Decoded]
    size: int = 1  # progress units (bytes for TSV)


class Source(NamedTuple):
    rows: Iterator[Row]
    total: int | None
    unit: str


@dataclass
class Summary:
    converted: int = 0
    skipped: int = 0  # already in the store
    corrupt: list[str] = field(default_factory=list)  # "image ID (where): reason"

    def report(self, store: str | os.PathLike) -> str:
        lines = [
            f"{store}: converted {self.converted}, skipped {self.skipped} already in the store, "
            f"corrupt {len(self.corrupt)}"
        ]
        lines += [f"  corrupt: {c}" for c in self.corrupt]
        return "\n".join(lines)


def convert(source: Source, out: str | os.PathLike, dtype: str = "float16", progress: bool = True) -> Summary:
    """Append every readable row of `source` that the store at `out` does not hold yet.

    A row that cannot be decoded or validated is reported and skipped; only a failed disk write (`StoreWriteError`) or
    an interruption stops the run, and the images written until then stay in the store (see `RegionStoreWriter`).
    """
    summary = Summary()
    writer = RegionStoreWriter(out, None, dtype, chunk_regions=CHUNK_REGIONS, buffer_regions=_BUFFER_REGIONS)
    if writer.note:
        print(writer.note, file=sys.stderr)
    first_seen: dict[int, str] = {}
    bar = tqdm(
        total=source.total, unit=source.unit, unit_scale=True, disable=not progress, desc=Path(out).name
    )

    def corrupt(row: Row, reason: str) -> None:
        label = "?" if row.image_id is None else row.image_id
        summary.corrupt.append(f"image {label} ({row.where}): {reason}")
        bar.write(f"corrupt: {summary.corrupt[-1]}", file=sys.stderr)

    try:
        for row in source.rows:
            bar.update(row.size)
            if row.image_id is None:
                try:  # the row's own loader says why the id is unreadable
                    row.load()
                except ROW_ERRORS as err:
                    corrupt(row, _reason(err))
                continue
            if not is_id(row.image_id):  # -1, or past int64: no image of a COCO or VG split has it
                corrupt(row, f"image id {row.image_id} is not in 0 .. 2^63 - 1")
                continue
            if row.image_id in first_seen:
                corrupt(row, f"duplicate image id (first at {first_seen[row.image_id]})")
                continue
            if row.image_id in writer:
                summary.skipped += 1
                first_seen[row.image_id] = row.where
                continue
            try:
                writer.add(row.image_id, *row.load())
            except StoreWriteError:
                raise
            except (
                RegionStoreError
            ) as err:  # the writer's checks: sizes, boxes inside the image, finite values
                corrupt(row, str(err).removeprefix(f"{writer.path}: image {row.image_id}: "))
                continue
            except ROW_ERRORS as err:
                corrupt(row, _reason(err))
                continue
            first_seen[row.image_id] = row.where
            summary.converted += 1
    finally:
        bar.close()
        writer.close()
    return summary


# What decoding one user-supplied row can raise: each makes that row corrupt, never the run. A truncated npz raises
# BadZipFile, an array where a number belongs TypeError, a huge number OverflowError, a damaged HDF5 block OSError.
ROW_ERRORS = (
    CorruptRow,
    PrepareError,
    ValueError,
    TypeError,
    OverflowError,
    KeyError,
    OSError,
    zipfile.BadZipFile,
    EOFError,
)


def _reason(err: Exception) -> str:
    if isinstance(err, (CorruptRow, PrepareError)):
        return str(err)
    return f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"[:300]


# ---------------------------------------------------------------------------------------------------------------- TSV


def tsv_source(paths: list[str | os.PathLike]) -> Source:
    for path in paths:
        if not Path(path).exists() or Path(path).is_dir():
            raise PrepareError(f"{path}: TSV file not found")
    # A pipe (`--tsv <(zcat file.tsv.gz)`) has no size: the progress bar then counts bytes without a total.
    regular = all(Path(p).is_file() for p in paths)
    return Source(_tsv_rows(paths), sum(os.path.getsize(p) for p in paths) if regular else None, "B")


def _tsv_rows(paths: list[str | os.PathLike]) -> Iterator[Row]:
    for path in paths:
        # Bytes: base64 decodes them directly, and len(line) is the progress in bytes.
        with open(path, "rb") as f:
            for line_no, line in enumerate(f, 1):
                fields = line.rstrip(b"\r\n").split(b"\t")
                if fields == [b""]:
                    continue
                try:
                    image_id = int(fields[0])
                except ValueError:
                    image_id = None
                yield Row(image_id, f"{path}:{line_no}", _tsv_loader(fields), len(line))


def _tsv_loader(fields: list[bytes]) -> Callable[[], Decoded]:
    def load() -> Decoded:
        if len(fields) != 6:
            raise CorruptRow(f"{len(fields)} tab-separated fields, expected 6 (truncated line?)")
        try:
            int(fields[0])
            image_w, image_h = _pixels(fields[1]), _pixels(fields[2])
            k = int(fields[3])
        except ValueError as err:
            raise CorruptRow(f"unreadable id, size or num_boxes ({err})") from None
        if k <= 0:
            raise CorruptRow(f"num_boxes is {k}")
        boxes = _base64_floats(fields[4], "boxes")
        features = _base64_floats(fields[5], "features")
        if boxes.size != 4 * k:
            raise CorruptRow(f"boxes hold {boxes.size} floats, num_boxes={k} needs {4 * k}")
        if features.size % k:
            raise CorruptRow(f"features hold {features.size} floats, not a multiple of num_boxes={k}")
        return features.reshape(k, -1), boxes.reshape(k, 4), image_w, image_h

    return load


def _pixels(text: bytes) -> int:
    value = float(text)
    if not np.isfinite(value) or value != int(value):
        raise ValueError(f"image size {value} is not a whole number of pixels")
    return int(value)


def _base64_floats(text: bytes, name: str) -> np.ndarray:
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as err:
        raise CorruptRow(f"{name}: bad base64 ({err})") from None
    if len(raw) % 4:
        raise CorruptRow(f"{name}: {len(raw)} bytes is not a whole number of float32 values")
    return np.frombuffer(raw, dtype=np.float32)


# --------------------------------------------------------------------------------------------------------------- HDF5


class _IndexUnpickler(pickle.Unpickler):
    """Loads the image id -> row pickle without running arbitrary code: only ints (plain or numpy) and dicts."""

    _ALLOWED = {
        ("builtins", "int"),
        ("builtins", "dict"),
        ("__builtin__", "long"),
        ("__builtin__", "int"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("_codecs", "encode"),  # protocol-2 pickles of numpy scalars carry their bytes through it
    }

    def find_class(self, module: str, name: str):
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        return super().find_class(module, name)


def load_row_index(path: str | os.PathLike) -> dict:
    """The pickled {image_id: row} of hengyuan-hu/bottom-up-attention-vqa (Python 2 or 3 pickles), entries unchecked:
    an entry that is not int -> int becomes a reported row of the conversion, not the end of it."""
    try:
        with open(path, "rb") as f:
            index = _IndexUnpickler(f, encoding="latin1").load()
    except FileNotFoundError:
        raise PrepareError(f"{path}: id pickle not found") from None
    except (pickle.UnpicklingError, EOFError, ValueError) as err:
        raise PrepareError(f"{path}: not an image id -> row pickle ({err})") from None
    if not isinstance(index, dict):
        raise PrepareError(f"{path}: holds a {type(index).__name__}, expected a dict image id -> row")
    return index


def h5_source(path: str | os.PathLike, ids: str | os.PathLike, sizes: dict[int, tuple[int, int]]) -> Source:
    index = load_row_index(ids)
    try:
        with h5py.File(path, "r") as f:
            missing = [k for k in ("image_features", "image_bb") if k not in f]
    except FileNotFoundError:
        raise PrepareError(f"{path}: HDF5 file not found") from None
    except OSError as err:
        raise PrepareError(f"{path}: cannot read HDF5 ({err})") from None
    if missing:
        raise PrepareError(f"{path}: not a bottom-up-attention-vqa HDF5 file (missing {', '.join(missing)})")
    return Source(_h5_rows(path, ids, index, sizes), len(index), "img")


def _h5_rows(
    path: str | os.PathLike, ids: str | os.PathLike, index: dict, sizes: dict[int, tuple[int, int]]
) -> Iterator[Row]:
    good = {}
    for key, row in index.items():
        if _is_integer(key) and _is_integer(row):
            good[int(key)] = int(row)
        else:

            def bad(key=key, row=row) -> Decoded:
                raise CorruptRow(
                    f"id pickle entry {key!r}: {row!r} is not image id (integer) -> row (integer)"
                )

            yield Row(None, str(ids), bad)
    with h5py.File(path, "r") as f:
        features, bb = f["image_features"], f["image_bb"]
        spatial = f.get("spatial_features")
        pos_boxes = f["pos_boxes"][:] if "pos_boxes" in f else None
        n_images = len(pos_boxes) if pos_boxes is not None else len(features)
        # Row order reads the file front to back.
        for image_id, row in sorted(good.items(), key=lambda item: item[1]):

            def load(image_id: int = image_id, row: int = row) -> Decoded:
                if not 0 <= row < n_images:
                    raise CorruptRow(f"row {row} is outside the file's {n_images} images")
                if pos_boxes is None:
                    region = row
                else:
                    start, end = (int(v) for v in pos_boxes[row])
                    if not 0 <= start < end <= len(features):
                        raise CorruptRow(f"pos_boxes [{start}, {end}) is not a region range of the file")
                    region = slice(start, end)
                feats, boxes = features[region], bb[region]
                geometry = spatial[region] if spatial is not None else None
                image_w, image_h = sizes.get(image_id) or _size_from_spatial(boxes, geometry)
                return feats, boxes, image_w, image_h

            yield Row(image_id, f"{path}:row {row}", load)


def _is_integer(value) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _size_from_spatial(boxes: np.ndarray, spatial: np.ndarray | None) -> tuple[int, int]:
    """Invert spatial = (x1/w, y1/h, x2/w, y2/h, bw/w, bh/h): w = bw / (bw/w), or x2 / (x2/w); median over boxes."""
    if spatial is None:
        raise CorruptRow("image size unknown: no spatial_features in the file and no --image-sizes entry")
    if spatial.shape != (len(boxes), 6):
        raise CorruptRow(f"spatial_features have shape {spatial.shape}, expected ({len(boxes)}, 6)")
    size = []
    # Width from box columns (x1, x2) and spatial columns (x2/w, bw/w); height from (y1, y2) and (y2/h, bh/h).
    for lo, hi, scaled_far, scaled_extent in ((0, 2, 2, 4), (1, 3, 3, 5)):
        pixels = np.concatenate([boxes[:, hi], boxes[:, hi] - boxes[:, lo]])
        scaled = np.concatenate([spatial[:, scaled_far], spatial[:, scaled_extent]])
        usable = scaled > 1e-6
        estimates = pixels[usable] / scaled[usable]
        estimates = estimates[np.isfinite(estimates) & (estimates > 0)]
        if not len(estimates):
            raise CorruptRow("image size unknown: spatial_features are all zero; pass --image-sizes")
        size.append(int(round(float(np.median(estimates)))))
    return size[0], size[1]


# ---------------------------------------------------------------------------------------------------------------- NPZ


def npz_source(
    directory: str | os.PathLike, box_dir: str | os.PathLike | None, sizes: dict[int, tuple[int, int]]
) -> Source:
    if not Path(directory).is_dir():
        raise PrepareError(f"{directory}: npz directory not found")
    files = sorted(Path(directory).glob("*.npz"))
    if not files:
        raise PrepareError(f"{directory}: no .npz files")
    return Source(
        (Row(image_id_from_name(p), str(p), _npz_loader(p, box_dir, sizes)) for p in files), len(files), "img"
    )


def _npz_loader(
    path: Path, box_dir: str | os.PathLike | None, sizes: dict[int, tuple[int, int]]
) -> Callable[[], Decoded]:
    def load() -> Decoded:
        image_id = image_id_from_name(path)
        if image_id is None:
            raise CorruptRow("no image id (digits) in the file name")
        try:
            with np.load(path, allow_pickle=False) as z:
                keys = set(z.files)
                feat_key = next((k for k in ("feat", "x", "features") if k in keys), None)
                if feat_key is None:
                    raise CorruptRow(f"no 'feat' or 'x' array (has {', '.join(sorted(keys))})")
                features = np.asarray(z[feat_key], dtype=np.float32)
                box_key = next((k for k in ("bbox", "boxes") if k in keys), None)
                boxes = z[box_key] if box_key else _npy_boxes(path, box_dir)
                # Checked by the store writer, which names a size that is not a whole number of pixels.
                size = (z["image_w"][()], z["image_h"][()]) if {"image_w", "image_h"} <= keys else None
                num_bbox = z["num_bbox"][()] if "num_bbox" in keys else None
        except CorruptRow:
            raise
        # A truncated file raises BadZipFile or EOFError, a pickled object array ValueError.
        except (OSError, ValueError, EOFError, zipfile.BadZipFile) as err:
            raise CorruptRow(f"unreadable npz ({type(err).__name__}: {err})") from None
        boxes = np.asarray(boxes, dtype=np.float32)
        if boxes.ndim != 2 or boxes.shape[1] != 4:
            raise CorruptRow(f"boxes have shape {boxes.shape}, expected (k, 4)")
        k = len(boxes)
        if features.ndim == 2 and features.shape[0] != k and features.shape[1] == k:
            features = features.T  # stored (D, k), as MCAN's feature files
        if num_bbox is not None and not (np.ndim(num_bbox) == 0 and num_bbox == k):
            raise CorruptRow(f"num_bbox={num_bbox} but {k} boxes")
        if size is None:
            size = sizes.get(image_id)
            if size is None:
                raise CorruptRow(
                    "image size unknown: no image_w/image_h in the file and no --image-sizes entry"
                )
        return features, boxes, size[0], size[1]

    return load


def _npy_boxes(path: Path, box_dir: str | os.PathLike | None) -> np.ndarray:
    if box_dir is None:
        raise CorruptRow("no 'bbox' array in the file; pass --box-dir with <id>.npy boxes (cocobu_box)")
    box_path = Path(box_dir) / (path.name.removesuffix(".npz") + ".npy")
    try:
        return np.load(box_path, allow_pickle=False)
    except FileNotFoundError:
        raise CorruptRow(f"boxes file {box_path} not found") from None


# ---------------------------------------------------------------------------------------------------------------- CLI


def add_arguments(parser: argparse.ArgumentParser) -> None:
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--tsv", nargs="+", metavar="FILE", help="bottom-up-attention TSV file(s)")
    source.add_argument("--h5", metavar="FILE", help="bottom-up-attention-vqa HDF5 file (needs --ids)")
    source.add_argument("--npz-dir", metavar="DIR", help="directory of per-image .npz files")
    parser.add_argument("--ids", metavar="PICKLE", help="with --h5: pickled dict image id -> row")
    parser.add_argument(
        "--box-dir", metavar="DIR", help="with --npz-dir: <id>.npy boxes when the npz has none"
    )
    parser.add_argument(
        "--image-sizes",
        nargs="+",
        metavar="JSON",
        default=[],
        help="COCO-format annotation file(s) giving image width/height (for --h5, --npz-dir)",
    )
    parser.add_argument(
        "--out", required=True, metavar="STORE", help="region-feature store (.h5) to create or extend"
    )
    parser.add_argument(
        "--dtype", choices=("float16", "float32"), default="float16", help="stored feature dtype"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    try:
        sizes = load_image_sizes(args.image_sizes)
        if args.tsv:
            source = tsv_source(args.tsv)
        elif args.h5:
            if not args.ids:
                raise PrepareError("--h5 needs --ids PICKLE (the image id -> row dict)")
            source = h5_source(args.h5, args.ids, sizes)
        else:
            source = npz_source(args.npz_dir, args.box_dir, sizes)
        # SIGTERM (a cluster's preemption, `kill`) ends the run as Ctrl-C does: what is converted is kept.
        previous = signal.signal(signal.SIGTERM, _interrupt)
        try:
            summary = convert(source, args.out, dtype=args.dtype, progress=not args.no_progress)
        finally:
            signal.signal(signal.SIGTERM, previous)
    except StoreWriteError as err:
        exit_after_failed_write(err)
    except (PrepareError, RegionStoreError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"interrupted: the images converted so far are in {args.out}; rerun to resume", file=sys.stderr)
        return 130
    print(summary.report(args.out))
    if summary.converted + summary.skipped + len(summary.corrupt) == 0:
        given = args.tsv or [args.h5 or args.npz_dir]
        print(f"error: {', '.join(map(str, given))}: no images in the input (empty?)", file=sys.stderr)
        return 1
    return 0 if summary.converted + summary.skipped > 0 else 1


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt
