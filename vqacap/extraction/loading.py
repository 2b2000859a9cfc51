"""The detector an extraction runs, loaded from a file: shared by `vqacap extract --detector` and `vqacap-extract`.

Not here: which regions are kept (vqacap.models.regions), the run itself (vqacap.extraction.module).
"""

from __future__ import annotations

import os

import torch


class ExtractError(ValueError):
    """Unusable input (weights, image folder); the message is one line naming the file."""


def load_bottom_up(
    checkpoint: str | os.PathLike,
    device: str = "cpu",
    prototxt: str | os.PathLike | None = None,
    classes: str | os.PathLike | None = None,
    attributes: str | os.PathLike | None = None,
) -> torch.nn.Module:
    """The bottom-up detector of a file, in eval mode: a vqacap detector checkpoint, the published model's
    .caffemodel (with its prototxt) or a converted .pth / .pkl of it (vqacap.published)."""
    from vqacap.published import load_detector_file
    from vqacap.published.safe_pickle import UnsafePickleError

    try:
        return load_detector_file(checkpoint, prototxt, classes, attributes, device).to(device).eval()
    except (OSError, ValueError, UnsafePickleError) as err:
        raise ExtractError(str(err)) from None
