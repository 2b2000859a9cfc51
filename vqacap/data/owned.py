"""Folders that vqacap's writers fill: a writer only ever deletes or rewrites files in a folder it created itself.

A writer claims its output folder before writing anything: a new or empty folder is marked as its own (a small marker
file, written first), a folder carrying its marker is accepted, and any other non-empty folder is refused with one line
that says what to do instead. So `data.data_dir=<a folder of the user's>` can never cost the user a file.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Callable, Iterator
from pathlib import Path

MARKER = ".vqacap-writer"


class FolderNotOwnedError(ValueError):
    """A writer was pointed at a folder it did not create; the message is one line."""


def claim_folder(
    folder: str | os.PathLike,
    writer: str,
    instead: str,
    legacy: Callable[[Path], bool] | None = None,
) -> Path:
    """Make `folder` `writer`'s own, or refuse it. `instead` completes the error line (which config or option to use);
    `legacy(folder)` may accept an unmarked folder that an older vqacap wrote, so existing data keeps working."""
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
    if entries and not (legacy is not None and legacy(folder)):
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
