"""Reading one user image safely: the one place `vqacap extract`, `vqacap visualize`, the attention-map callback and
the detection and pixel DataModules open image files.

A bad file (empty, truncated, not an image, too large) raises `ImageError` with one line naming it, so callers skip and
report that image and go on with the others. The decoded size is capped at `MAX_PIXELS` before any pixel is decoded (the
header gives the size), so one huge image cannot take gigabytes: 50 megapixels is 150 MB as 8-bit RGB, more than any
COCO, Visual Genome or Flickr image (the largest COCO image is about 0.4 megapixels). 16-bit images are scaled to 8 bits,
not clipped.
"""

from __future__ import annotations

import os
import re
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torchvision.transforms.functional import pil_to_tensor

MAX_PIXELS = 50_000_000

# Pillow modes of one 16-bit channel (PNG, TIFF); their values run to 65535.
_SIXTEEN_BIT = {"I;16", "I;16L", "I;16B", "I;16N", "I"}


class ImageError(ValueError):
    """An image that cannot be used; the message is one line naming the file."""


def open_rgb(path: str | os.PathLike, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """The image at `path` fully decoded as 8-bit RGB, or `ImageError`."""
    try:
        with warnings.catch_warnings():
            # Pillow's own bomb check warns (or raises) at its global limit; ours is explicit and below it.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                width, height = im.size
                if width * height > max_pixels:
                    raise ImageError(
                        f"{path}: {width}x{height} pixels is more than the {max_pixels:,} an image may have"
                    )
                im.load()
                return _to_rgb(im)
    except ImageError:
        raise
    except Image.DecompressionBombError as err:
        raise ImageError(f"{path}: too large to decode ({err})") from None
    # UnidentifiedImageError is an OSError; truncated data raises OSError, SyntaxError or ValueError by format.
    except (OSError, SyntaxError, ValueError) as err:
        raise ImageError(f"{path}: unreadable image ({type(err).__name__}: {err})") from None


def load_image(path: str | os.PathLike) -> torch.Tensor:
    """(3, H, W) float in [0, 1]; `ImageError` for an unusable file (size capped: `MAX_PIXELS`)."""
    return pil_to_tensor(open_rgb(path)).float().div_(255)


def _to_rgb(im: Image.Image) -> Image.Image:
    if im.mode in _SIXTEEN_BIT:
        # convert("RGB") would clip every value above 255 to white; scale 0..65535 onto 0..255 instead.
        values = np.asarray(im, dtype=np.float64)
        return Image.fromarray(np.clip(np.round(values / 257.0), 0, 255).astype(np.uint8), mode="L").convert(
            "RGB"
        )
    return im.convert("RGB")


IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp"}
_DIGITS = re.compile(r"\d+")


def image_id_from_name(path: str | os.PathLike) -> int | None:
    """The last run of digits before the first dot: 'COCO_val2014_000000391895.jpg.npz' -> 391895, '42.npz' -> 42."""
    stem = Path(path).name.split(".", 1)[0]
    runs = _DIGITS.findall(stem)
    return int(runs[-1]) if runs else None


def image_files(directories: str | os.PathLike | Sequence[str | os.PathLike]) -> list[Path]:
    """The images of one folder or of several (in the order given), each folder sorted by name."""
    if isinstance(directories, (str, os.PathLike)):
        directories = [directories]
    files = []
    for directory in map(Path, directories):
        if not directory.is_dir():
            raise ImageError(f"{directory}: image folder not found")
        files += sorted(p for p in directory.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    return files


def find_image(folder: str | os.PathLike, image_id: int, pattern: str | None = None) -> Path | None:
    """The file of an image named by its id in a plain folder, None when there is none.

    `pattern` is a format string of `image_id` ("{image_id}.png", "COCO_val2014_{image_id:012d}.jpg"); without one,
    `<image_id>.<suffix>` for the suffixes of `IMAGE_SUFFIXES`, lower or upper case."""
    folder = Path(folder)
    if pattern:
        names = [pattern.format(image_id=int(image_id))]
    else:
        names = [f"{int(image_id)}{s}" for suffix in sorted(IMAGE_SUFFIXES) for s in (suffix, suffix.upper())]
    return next((folder / n for n in names if (folder / n).is_file()), None)
