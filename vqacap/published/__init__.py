"""Bottom-up detectors from the files people have: a vqacap detector checkpoint, or the published bottom-up-attention
model as a Caffe release (.caffemodel + test.prototxt) or as one of the PyTorch conversions users download instead.

    from vqacap.published import load_detector_file
    detector = load_detector_file("resnet101_faster_rcnn_final.caffemodel", prototxt="test.prototxt")
    regions = detector.regions(images)   # as BottomUpDetector.regions

The kind of file is recognised from its bytes, not its name. See docs/published-detector.md.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import torch

from vqacap.published.caffe import CaffeFormatError

ZIP_MAGIC = b"PK\x03\x04"  # torch.save's format since torch 1.6 (vqacap and converted .pth checkpoints)


def file_kind(path: str | os.PathLike) -> str:
    """'torch' (a zip written by torch.save), 'pickle' (a pickle or a legacy torch file), or 'caffemodel' (anything
    else is read as a protobuf NetParameter, which refuses what it is not)."""
    path = Path(path)
    if not path.is_file():
        raise CaffeFormatError(f"{path}: detector checkpoint not found")
    with path.open("rb") as f:
        head = f.read(4)
    if head == ZIP_MAGIC:
        return "torch"
    if head[:1] == b"\x80":  # pickle protocol 2 or later
        return "pickle"
    return "caffemodel"


def load_detector_file(
    path: str | os.PathLike,
    prototxt: str | os.PathLike | None = None,
    classes: str | os.PathLike | None = None,
    attributes: str | os.PathLike | None = None,
    device: str | torch.device = "cpu",
) -> torch.nn.Module:
    """A detector with `regions` / `grid` / `classes` / `attributes` / `feature_dim`, in eval mode on `device`.

    prototxt: the network definition of a .caffemodel (by default the published ResNet-101's test.prototxt, shipped
    with vqacap), or one that overrides the shape read from a converted PyTorch file's tensors. classes / attributes: vocabulary files
    (one name per line); the Visual Genome names of the published model are the default for 1601 / 401 outputs."""
    from vqacap.published import converted
    from vqacap.published.detector import load_caffe_detector

    path = Path(path)
    if path.is_dir():  # a model folder of a vqacap detector (vqacap.folders)
        from vqacap.lightning.loading import load_detector

        return load_detector(path, map_location=device)
    kind = file_kind(path)
    if kind == "caffemodel":
        model = load_caffe_detector(path, prototxt, classes, attributes)
    elif kind == "pickle":
        model = converted.load_pickle(path, prototxt, classes, attributes)
    else:
        state = _torch_file(path)
        if isinstance(state, dict) and "state_dict" in state:  # a Lightning checkpoint: vqacap's own
            from vqacap.lightning.loading import load_detector  # a vqacap checkpoint: Lightning's side

            if prototxt is not None:
                raise CaffeFormatError(f"{path}: a vqacap detector checkpoint takes no --prototxt")
            return load_detector(path, map_location=device)
        model = converted.load_state(path, state, prototxt, classes, attributes)
    return model.to(device).eval()


def add_detector_file_arguments(parser: argparse.ArgumentParser) -> None:
    """--prototxt, --classes, --attributes: what the published model's files need beside the weights."""
    parser.add_argument(
        "--prototxt", metavar="FILE", help="--detector X.caffemodel: its network definition (test.prototxt)"
    )
    parser.add_argument(
        "--classes",
        metavar="FILE",
        help="published detector: object names, one per line (Visual Genome's 1600)",
    )
    parser.add_argument(
        "--attributes",
        metavar="FILE",
        help="published detector: attribute names, one per line (Visual Genome's 400)",
    )


def _torch_file(path: Path):
    """The project's safe torch.load (weights only; a refused type named in one line), also admitting numpy arrays,
    which some converted checkpoints hold."""
    import numpy as np

    from vqacap.checkpoints import safe_load

    dtypes = getattr(np, "dtypes", None)  # numpy >= 1.25
    names = ("Float32DType", "Float64DType", "Int64DType")
    arrays = [np.ndarray, np.dtype, *((getattr(dtypes, n) for n in names) if dtypes else ())]
    multiarray = getattr(np, "_core", None) or np.core
    arrays.append(multiarray.multiarray._reconstruct)
    with torch.serialization.safe_globals(arrays):
        return safe_load(path)


__all__ = ["add_detector_file_arguments", "file_kind", "load_detector_file"]
