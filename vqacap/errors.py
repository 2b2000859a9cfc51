"""How the commands report a mistake in what the user gave: one line on stderr, exit status 1.

An error counts as the user's when its type is one of vqacap's own (`PrepareError`, `RegionStoreError`,
`VQAFormatError`, `CheckpointError`, ...: each says which file, id or field is wrong) or a missing or unreadable path.
Anything else is a bug and keeps its traceback. `VQACAP_DEBUG=1` shows the traceback of user errors too.
Not here: the messages themselves, which the code that finds the problem writes.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import TypeVar

DEBUG_VARIABLE = "VQACAP_DEBUG"
PATH_ERRORS = (FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError)

T = TypeVar("T")


class UserError(ValueError):
    """Base of errors in what the user gave that are defined where no vqacap module name tells them apart (a module
    run as `python -m` is `__main__`)."""


def user_error(err: BaseException) -> BaseException | None:
    """The error to report in one line (looking through Hydra's instantiation wrapper), or None for a bug."""
    while type(err).__name__ == "InstantiationException" and err.__cause__ is not None:
        err = err.__cause__
    if type(err).__module__.split(".")[0] == "vqacap" or isinstance(err, (UserError, *PATH_ERRORS)):
        return err
    return None


def one_line(err: BaseException) -> str:
    if isinstance(err, OSError) and err.filename is not None and err.strerror:
        text = f"{err.filename}: {err.strerror}"
    else:
        text = str(err.args[0]) if len(err.args) == 1 else str(err)
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return f"error: {'; '.join(lines) or type(err).__name__}"


def reporting(command: Callable[[], T], status: int = 1) -> T | int:
    """`command()`, or `status` after printing the user's error in one line (re-raised under VQACAP_DEBUG=1)."""
    try:
        return command()
    except Exception as err:
        found = user_error(err)
        if found is None or os.environ.get(DEBUG_VARIABLE, "") not in ("", "0"):
            raise
        print(one_line(found), file=sys.stderr)
        return status
