"""Reference implementations for the parity tests (pycocoevalcap and the like, dev dependencies).

Where one is not installed its tests are skipped, except in CI (CI=true, as GitHub Actions and most CI services
set it), where the dev dependencies must be present and a missing one fails the run instead of hiding a parity test.
"""

from __future__ import annotations

import importlib
import os
from types import ModuleType

import pytest


def import_reference(name: str) -> ModuleType:
    if os.environ.get("CI", "").lower() in ("true", "1"):
        return importlib.import_module(name)
    return pytest.importorskip(
        name, reason=f"{name} is not installed (a dev dependency: pip install -e '.[dev]')"
    )
