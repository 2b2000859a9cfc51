"""Small helpers shared by the prepare steps and the extractor: image ids from file names, COCO image sizes, JSON output."""

from __future__ import annotations

import json
import os
from pathlib import Path


class PrepareError(ValueError):
    """Bad input to a prepare step; the message is one line naming the file (and the record) at fault."""


MAX_ID = 2**63 - 1  # ids are stored as int64 (region stores, tensors)


def is_id(value) -> bool:
    """Whether `value` is an image, sentence or question id: an int (not a bool) in 0 .. 2^63 - 1."""
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_ID


def load_image_sizes(paths: list[str | os.PathLike]) -> dict[int, tuple[int, int]]:
    """image id -> (width, height) from COCO-format annotation files (instances_*.json, captions_*.json)."""
    sizes: dict[int, tuple[int, int]] = {}
    for path in paths:
        data = read_json(path)
        images = data.get("images") if isinstance(data, dict) else None
        if not isinstance(images, list):
            raise PrepareError(f"{path}: not a COCO annotation file (no 'images' list)")
        for image in images:
            try:
                sizes[int(image["id"])] = (int(image["width"]), int(image["height"]))
            except (KeyError, TypeError, ValueError):
                raise PrepareError(
                    f"{path}: image entry {image!r:.80} lacks an integer id, width or height"
                ) from None
    return sizes


def read_json(path: str | os.PathLike):
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        raise PrepareError(f"{path}: file not found") from None
    except json.JSONDecodeError as err:
        raise PrepareError(f"{path}: not valid JSON ({err})") from None
    except UnicodeDecodeError as err:
        raise PrepareError(f"{path}: not a UTF-8 JSON file (byte {err.start}: {err.reason})") from None
    except RecursionError:
        raise PrepareError(f"{path}: JSON nested too deeply to read") from None


def output_folder(out: str | os.PathLike) -> Path:
    """`--out`, created if need be; a folder that cannot be made is a one-line error."""
    out = Path(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise PrepareError(f"{out}: cannot write here ({err.strerror or err})") from None
    return out


def write_json(path: str | os.PathLike, data) -> None:
    """Write through a temporary file and rename, so an interrupted run never leaves half a file under the real name."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    try:
        output_folder(path.parent)
        with open(tmp, "w") as f:
            json.dump(data, f)
        os.replace(tmp, path)
    except OSError as err:  # a full disk, a read-only folder
        raise PrepareError(f"{path}: cannot write ({err.strerror or err})") from None
