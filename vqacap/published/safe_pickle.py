"""Pickles of numpy arrays read with an allow-list: numpy arrays, numpy scalars and plain containers are rebuilt, any
other global a file names is refused in one line before it is imported, so a pickle cannot run code here."""

from __future__ import annotations

import io
import os
import pickle
from pathlib import Path
from typing import Any

# (module, name) pairs a pickle of numpy arrays needs: the array and scalar rebuilders under numpy 1.x and 2.x names,
# and the containers detectron2-style checkpoints use.
ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("collections", "OrderedDict"),
    ("builtins", "dict"),
    ("builtins", "list"),
    ("builtins", "tuple"),
    ("builtins", "set"),
    ("builtins", "frozenset"),
    ("_codecs", "encode"),  # how numpy 1.x pickles under protocol 2 store their raw bytes
}


class UnsafePickleError(ValueError):
    """A pickle that names something other than numpy arrays and containers; nothing was imported or called."""


class _ArrayUnpickler(pickle.Unpickler):
    def __init__(self, file, source: Path) -> None:
        super().__init__(file, encoding="latin1")  # Python 2 pickles of numpy arrays
        self.source = source

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in ALLOWED:
            raise UnsafePickleError(
                f"{self.source}: refused: the pickle names {module}.{name}, not only numpy arrays and containers"
            )
        return super().find_class(module, name)

    def persistent_load(self, pid: Any) -> Any:
        raise UnsafePickleError(
            f"{self.source}: refused: the pickle refers to external storage (a torch file?)"
        )


def load_arrays(path: str | os.PathLike) -> Any:
    """The object a pickle of numpy arrays holds (dicts, lists and arrays), read under the allow-list."""
    path = Path(path)
    data = path.read_bytes()
    try:
        return _ArrayUnpickler(io.BytesIO(data), path).load()
    except UnsafePickleError:
        raise
    except Exception as err:  # truncated or not a pickle: the unpickler raises many kinds
        raise UnsafePickleError(
            f"{path}: not a readable pickle of arrays ({type(err).__name__}: {str(err)[:80]})"
        ) from None
