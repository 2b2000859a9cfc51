"""Folders that vqacap's writers fill: a writer only ever deletes or rewrites files in a folder it created itself.

A writer claims its output folder before writing anything: a new or empty folder is marked as its own (a small marker
file, written first), a folder carrying its marker is accepted, and any other non-empty folder is refused with one line
that says what to do instead. So `data.data_dir=<a folder of the user's>` can never cost the user a file. A writer that
rewrites its folder later (the Shapes generator, when its settings change) also records what it wrote, with a sha256 of
each file (`record_written`), and checks before deleting or overwriting that each file is one it wrote and nobody has
changed since (`check_written`): a folder that only looks generated, or a file put or edited there, stops it.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
from collections.abc import Iterable, Iterator
from pathlib import Path

MARKER = ".vqacap-writer"


class FolderNotOwnedError(ValueError):
    """A writer was pointed at a folder it did not create; the message is one line."""


def claim_folder(folder: str | os.PathLike, writer: str, instead: str) -> Path:
    """Make `folder` `writer`'s own, or refuse it. `instead` completes the error line (which config or option to use)."""
    folder = Path(folder)
    marker = folder / MARKER
    if marker.is_file():
        owner = marker.read_text().strip()
        if owner != writer:
            raise FolderNotOwnedError(
                f"{folder}: written by vqacap's {owner}, not by its {writer}; {instead}"
            )
        return folder
    if folder.exists() and not folder.is_dir():
        raise FolderNotOwnedError(f"{folder}: is a file, not a folder; {instead}")
    entries = sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []
    if entries:
        shown = ", ".join(entries[:3]) + (", ..." if len(entries) > 3 else "")
        raise FolderNotOwnedError(
            f"{folder}: refusing to write into a non-empty folder that vqacap's {writer} did not create "
            f"(it holds {shown}); {instead}"
        )
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / (MARKER + ".tmp")
    tmp.write_text(writer + "\n")
    os.replace(tmp, marker)
    return folder


WRITTEN = ".vqacap-written"  # {path relative to the folder: sha256 of the bytes its writer wrote}


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _written(folder: Path) -> dict[str, str]:
    try:
        record = json.loads((folder / WRITTEN).read_text())
    except (OSError, ValueError):
        return {}
    return record if isinstance(record, dict) else {}


def record_written(folder: str | os.PathLike, paths: Iterable[Path]) -> None:
    """Record `paths` (files under `folder`, just written by its writer) with their sha256; other records are kept."""
    folder = Path(folder)
    record = _written(folder)
    record.update({str(p.relative_to(folder)): _sha256(p) for p in paths if p.is_file()})
    tmp = folder / (WRITTEN + ".tmp")
    tmp.write_text(json.dumps(record, indent=0, sort_keys=True))
    os.replace(tmp, folder / WRITTEN)


def check_written(folder: str | os.PathLike, paths: Iterable[Path], instead: str) -> None:
    """`FolderNotOwnedError` naming the first of `paths` that exists but is not a file the writer recorded, byte for
    byte: what a writer is about to delete or overwrite must be its own."""
    folder = Path(folder)
    record = _written(folder)
    for path in paths:
        if path.is_file() and record.get(str(path.relative_to(folder))) != _sha256(path):
            raise FolderNotOwnedError(
                f"{path}: not written by vqacap (or changed since), and regenerating {folder} would overwrite it; "
                f"{instead}"
            )


LOCK = ".vqacap-lock"


@contextlib.contextmanager
def folder_lock(folder: str | os.PathLike) -> Iterator[None]:
    """Hold `folder`'s writer lock: runs started together (a sweep's jobs on a fresh clone) fill a shared data folder
    one after the other, and the later ones find it complete, instead of writing the same files at once."""
    path = Path(folder) / LOCK
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)
