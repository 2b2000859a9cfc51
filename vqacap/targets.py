"""Which classes a file a user was given may name: `_target_`s of a run folder's config and of a checkpoint's
hyper-parameters, checked as strings before anything is imported or called.

A run folder or a checkpoint may come from someone else. Hydra's `instantiate` and `importlib` would import and call
whatever dotted path such a file names (`torch.hub.load` with a hubconf.py beside it, a module whose import has side
effects), so each kind of target has a pattern of the dotted paths vqacap itself writes there, and a path that does not
match is refused in one line naming the file; only then is it imported, and the class checked for what it must be.

Not here: `conf/`, the project's own configs, which `vqacap train` instantiates as they are.
"""

from __future__ import annotations

import importlib
import os
import re
from collections.abc import Iterator, Mapping
from typing import Any

_NAME = r"[A-Za-z_]\w*"
_MODULE = rf"{_NAME}(?:\.{_NAME})*"

# Kind of target -> (dotted paths a file may name, what the class must be a subclass of, as "module.Class").
ALLOWED = {
    "data": (
        re.compile(rf"vqacap\.data\.{_MODULE}\.{_NAME}DataModule"),
        "pytorch_lightning.LightningDataModule",
    ),
    "net": (re.compile(rf"vqacap\.models\.{_MODULE}\.{_NAME}"), "torch.nn.Module"),
    "optimizer": (re.compile(rf"torch\.optim\.(?:{_NAME}\.)?{_NAME}"), "torch.optim.Optimizer"),
    "scheduler": (
        re.compile(rf"torch\.optim\.lr_scheduler\.{_NAME}"),
        "torch.optim.lr_scheduler.LRScheduler torch.optim.lr_scheduler.ReduceLROnPlateau",
    ),
}


class TargetError(ValueError):
    """A file names a class that vqacap does not build from a file; the message is one line naming the file."""


def allowed(kind: str, target: Any) -> bool:
    """Whether `target` (a dotted path, as a file gives it) is one a file may name for `kind`."""
    return isinstance(target, str) and ALLOWED[kind][0].fullmatch(target) is not None


def locate(kind: str, target: Any, source: str | os.PathLike, where: str) -> type:
    """The class `target` names, checked against `kind`'s pattern before it is imported, and then for its base class.
    `where` names the node in `source` ("data", "hyper-parameter 'net'")."""
    if not allowed(kind, target):
        raise TargetError(
            f"{source}: {where} names {target!r}, which vqacap does not build from a file (refused without importing "
            f"it; allowed: {ALLOWED[kind][0].pattern.replace(_MODULE, '<module>').replace(_NAME, '<Name>')})"
        )
    module_name, _, name = target.rpartition(".")
    try:
        found = getattr(importlib.import_module(module_name), name)
    except (ImportError, AttributeError):
        raise TargetError(f"{source}: {where} names {target}, which cannot be imported") from None
    bases = tuple(_class(b) for b in ALLOWED[kind][1].split())
    if not (isinstance(found, type) and issubclass(found, bases)):
        expected = " or ".join(b.__name__ for b in bases)
        raise TargetError(f"{source}: {where} names {target}, not a {expected} class")
    return found


def _class(dotted: str) -> type:
    module_name, _, name = dotted.rpartition(".")
    return getattr(importlib.import_module(module_name), name)


def nested_targets(node: Any, path: str = "") -> Iterator[tuple[str, Any]]:
    """(key path, `_target_` value) of every node below `node` (plain dicts and lists) that names a target."""
    if isinstance(node, Mapping):
        for key, value in node.items():
            here = f"{path}.{key}" if path else str(key)
            if key == "_target_":
                yield path, value
            else:
                yield from nested_targets(value, here)
    elif isinstance(node, (list, tuple)):
        for n, value in enumerate(node):
            yield from nested_targets(value, f"{path}[{n}]")
