"""Shards of a distributed extraction and their merge into one region store.

Every process (rank) of an extraction writes the images dealt to it into its own shard store,
`<store>.shards/shard-<rank>.h5`, with the crash-safe `RegionStoreWriter`; the shards are then merged into the store,
which is checked to hold every requested image exactly once, and removed. What is already extracted -- in the store
or in a shard of any earlier run, whatever its number of processes -- is never dealt again, so a run killed at any
moment and rerun with any number of processes extracts each image once.

Each shard (and the store it is merged into) records what extracted it: a fingerprint of the detector's weights and
of the options that change the regions (root attributes `extraction_fingerprint`, `extraction_options`). A shard or
store recorded with another fingerprint is refused in one line, before anything is extracted.

torch is not imported here, so that `vqacap prepare merge` starts at once.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import h5py

from vqacap.data.store import RegionStore, RegionStoreError, RegionStoreWriter, holding, partial_path

FINGERPRINT = "extraction_fingerprint"
OPTIONS = "extraction_options"
MERGE_BUFFER_REGIONS = 1 << 16  # regions per HDF5 write while merging


class ShardError(RegionStoreError):
    """A shard that cannot be used or merged; the message is one line naming the file."""


def fingerprint(weights: Iterable[tuple[str, bytes]], options: Mapping) -> dict[str, str]:
    """The attributes that record what extracted a store: a hash of the named weight bytes and of the options."""
    digest = hashlib.sha256()
    for name, data in weights:
        digest.update(name.encode())
        digest.update(data)
    text = json.dumps(dict(options), sort_keys=True)
    digest.update(text.encode())
    return {FINGERPRINT: digest.hexdigest()[:16], OPTIONS: text}


def recorded(path: Path) -> dict[str, str] | None:
    """The fingerprint attributes of a store or shard (committed or, failing that, partial), None if it has none."""
    for candidate in (path, partial_path(path)):
        if candidate.is_file() and candidate.stat().st_size:
            try:
                with _open(candidate) as f:
                    if FINGERPRINT not in f.attrs:
                        return None
                    return {FINGERPRINT: str(f.attrs[FINGERPRINT]), OPTIONS: str(f.attrs.get(OPTIONS, "{}"))}
            except OSError:
                continue  # an unreadable partial: RegionStoreWriter discards it
    return None


def check_same(path: Path, expected: Mapping[str, str]) -> None:
    """`ShardError` in one line unless the store or shard at `path` was extracted as `expected` says (or records
    nothing, as stores written before fingerprints were)."""
    found = recorded(path)
    if found is None or found[FINGERPRINT] == expected[FINGERPRINT]:
        return
    theirs, ours = json.loads(found[OPTIONS]), json.loads(expected[OPTIONS])
    differ = [k for k in sorted(set(theirs) | set(ours)) if theirs.get(k) != ours.get(k)]
    what = ", ".join(f"{k} {theirs.get(k)!r} here, {ours.get(k)!r} now" for k in differ) or "detector weights"
    raise ShardError(
        f"{path}: extracted with another detector or options (fingerprint {found[FINGERPRINT]}, this run "
        f"{expected[FINGERPRINT]}; differs in {what}); extract into another store"
    )


def shard_folder(store: str | os.PathLike) -> Path:
    store = Path(store)
    return store.with_name(store.name + ".shards")


def shard_path(store: str | os.PathLike, rank: int) -> Path:
    return shard_folder(store) / f"shard-{rank:05d}.h5"


def shards_of(store: str | os.PathLike) -> list[Path]:
    """The shards of the store's folder, committed or only partial (a run killed before its first commit)."""
    folder = shard_folder(store)
    if not folder.is_dir():
        return []
    names = {p.name.removesuffix(".partial") for p in folder.glob("shard-*.h5*")}
    return sorted(folder / n for n in names if n.endswith(".h5"))


def settle(path: Path) -> str:
    """Commit the interrupted writes of a shard (or store) that no process writes any more (`RegionStoreWriter`
    resumes them, or discards what cannot be resumed); returns the writer's note, "" if there was nothing to settle.
    Refused in one line while a writer holds the file."""
    partial = partial_path(path)
    if not partial.is_file():
        return ""
    layout = _layout(partial) or (_layout(path) if path.is_file() else None)
    if layout is None:  # nothing readable to resume: the images are extracted again
        with holding(path):  # unless a live writer holds it (an empty partial is its lock file)
            partial.unlink()
        return f"{partial}: unreadable interrupted writes discarded"
    writer = RegionStoreWriter(path, **layout)
    writer.close()
    return writer.note


def _layout(path: Path) -> dict | None:
    """The `RegionStoreWriter` arguments that reopen the store at `path` as it is, None if it cannot be read."""
    try:
        with _open(path) as f:
            fields = [str(n) for n in f.attrs.get("region_fields", ())]
            return {
                "feature_dim": int(f["features"].shape[1]),
                "dtype": f["features"].dtype.name,
                "region_fields": {name: f[name].dtype.name for name in fields},
                "field_names": {
                    name: [n.decode() if isinstance(n, bytes) else str(n) for n in f[f"{name}_names"][:]]
                    for name in fields
                    if f"{name}_names" in f
                },
                "attrs": {k: str(f.attrs[k]) for k in (FINGERPRINT, OPTIONS) if k in f.attrs},
            }
    except (OSError, KeyError):
        return None


def _open(path: Path) -> h5py.File:
    """Read-only, whether or not this process already holds the file open (h5py refuses a second handle with other
    locking flags); a partial file is locked by its writer with flock, not HDF5's lock."""
    try:
        return h5py.File(path, "r")
    except OSError:
        return h5py.File(path, "r", locking=False)


def stored_ids(path: Path) -> set[int]:
    """Image ids of a committed store, empty if there is none."""
    return set(RegionStore(path).image_ids.tolist()) if path.is_file() else set()


def deal(image_ids: Iterable[int], rank: int, world_size: int) -> list[int]:
    """The images of `rank`: every `world_size`-th of the ids in increasing order, starting at the rank's position."""
    return sorted(image_ids)[rank::world_size]


def merge(
    shards: Sequence[str | os.PathLike],
    out: str | os.PathLike,
    requested: Iterable[int] | None = None,
    expected: Mapping[str, str] | None = None,
) -> tuple[int, int]:
    """Add the images of `shards` to the store `out` (created if needed), in increasing id order, and check it.

    Refused (`ShardError`, one line, before anything is written) when the shards (or `out`) were extracted with
    different fingerprints, or two shards hold the same image. Images already in `out` are skipped (a merge that was
    interrupted after its commit). Afterwards every id of `requested` must be in `out`. Returns (added, already there).
    """
    paths = [Path(p) for p in shards]
    out = Path(out)
    for path in paths:
        if not path.is_file():
            raise ShardError(f"{path}: shard not found")
    stamps = [recorded(p) for p in paths]
    reference = expected or next((s for s in stamps if s is not None), None)
    if reference is not None:
        for path in (*paths, out):
            check_same(path, reference)
    stores = [RegionStore(p) for p in paths]
    if len({(s.feature_dim, s.dtype.name, tuple(sorted(s.region_fields))) for s in stores}) > 1:
        raise ShardError(f"{paths[0]}: shards differ in feature dim, dtype or region fields")
    owner: dict[int, int] = {}
    for n, store in enumerate(stores):
        for image_id in store.image_ids.tolist():
            if image_id in owner:
                raise ShardError(f"{paths[n]}: image {image_id} is also in {paths[owner[image_id]]}")
            owner[image_id] = n
    added = already = 0
    if stores:
        first = stores[0]
        layout = _layout(paths[0]) or {}
        layout["attrs"] = dict(reference or {})
        layout["buffer_regions"] = MERGE_BUFFER_REGIONS
        with RegionStoreWriter(out, **layout) as writer:
            for image_id in sorted(owner):
                if image_id in writer:
                    already += 1
                    continue
                store = stores[owner[image_id]]
                features, boxes = store.read(image_id)
                row = store.row(image_id)
                fields = {name: store.read_field(image_id, name) for name in first.region_fields}
                writer.add(
                    image_id, features, boxes, int(store.image_w[row]), int(store.image_h[row]), fields=fields
                )
                added += 1
        for store in stores:
            store.close()
    if requested is not None:
        have = stored_ids(out)
        missing = sorted(set(requested) - have)
        if missing:
            raise ShardError(
                f"{out}: {len(missing)} requested images missing after the merge (first: {missing[0]}); "
                "rerun the extraction to add them"
            )
    return added, already


def remove(shards: Sequence[Path]) -> None:
    """Delete merged shards (and their folder, once empty)."""
    for path in shards:
        path.unlink(missing_ok=True)
        partial_path(path).unlink(missing_ok=True)
    folders = {p.parent for p in shards}
    for folder in folders:
        if folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()


def ids_in_shards(shards: Sequence[Path]) -> set[int]:
    """Image ids held by committed shards."""
    ids: set[int] = set()
    for path in shards:
        ids |= stored_ids(path)
    return ids


__all__ = ["ShardError", "check_same", "deal", "fingerprint", "merge", "settle", "shard_path", "shards_of"]
