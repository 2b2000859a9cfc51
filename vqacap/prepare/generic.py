"""What the generic prepare steps (`vqacap prepare questions`, `vqacap prepare captions`) share: reading a file of
records, checking ids, per-split image folders, and ids made unique across splits.

A records file is a JSON list of objects, a JSON object holding one such list, or JSON lines (one object a line; a
file of one line is one record). Ids are integers in 0 .. 2^63 - 1. The input format and what is written: docs/new-dataset.md.
"""

from __future__ import annotations

import argparse
import json
import os
import re
from pathlib import Path

from vqacap.images import ImageError, image_files, image_id_from_name
from vqacap.prepare.common import PrepareError, is_id

SPLIT_NAME = re.compile(r"[a-z][a-z0-9_-]*")


def check_splits(splits: list[tuple[str, str]], images: list[tuple[str, str]]) -> None:
    """Split names are lower-case words, each given once, `train` among them; image folders name given splits."""
    names = [name for name, _ in splits]
    for name in names:
        if not SPLIT_NAME.fullmatch(name):
            raise PrepareError(f"--split {name}: a split name is a lower-case word (train, val, test)")
        if names.count(name) > 1:
            raise PrepareError(f"--split {name}: given twice")
    if "train" not in names:
        raise PrepareError("--split train FILE is needed (the vocabularies are built from it)")
    for name, folder in images:
        if name not in names:
            raise PrepareError(f"--images {name} {folder}: no --split {name} given")
        if [n for n, _ in images].count(name) > 1:
            raise PrepareError(f"--images {name}: given twice")


def read_records(path: str | os.PathLike, key: str) -> list[dict]:
    """The records of a file: a JSON list, a JSON object with one list (under `key` if several), or JSON lines."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise PrepareError(f"{path}: file not found") from None
    except UnicodeDecodeError as err:
        raise PrepareError(f"{path}: not a UTF-8 text file (byte {err.start}: {err.reason})") from None
    except OSError as err:
        raise PrepareError(f"{path}: cannot read ({err.strerror or err})") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        data = _json_lines(path, text)
    except RecursionError:
        raise PrepareError(f"{path}: JSON nested too deeply to read") from None
    if isinstance(data, dict) and ("image_id" in data or "question_id" in data):
        data = [data]  # one record: JSON lines of one line
    if isinstance(data, dict):
        lists = {k: v for k, v in data.items() if isinstance(v, list)}
        if key in lists or len(lists) == 1:
            data = lists.get(key, next(iter(lists.values()), None))
        else:
            raise PrepareError(f"{path}: a JSON object with no single list of records (expected '{key}')")
    if not isinstance(data, list):
        raise PrepareError(f"{path}: not a list of records (a JSON list, or JSON lines)")
    if not data:
        raise PrepareError(f"{path}: no records")
    for n, record in enumerate(data):
        if not isinstance(record, dict):
            raise PrepareError(f"{path}: record {n} is {record!r:.60}, not a JSON object")
    return data


def _json_lines(path: Path, text: str) -> list:
    records = []
    for n, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                records.append(json.loads(line))
            except (json.JSONDecodeError, RecursionError) as err:
                reason = getattr(err, "msg", "nested too deeply")
                raise PrepareError(f"{path}: neither JSON nor JSON lines (line {n}: {reason})") from None
    return records


def where(path: str | os.PathLike, n: int, record: dict, id_field: str = "question_id") -> str:
    """How a message names a record: the file, its position and its id when it has a usable one."""
    given = record.get(id_field)
    return f"{path}: record {n}" + (f" ({id_field} {given})" if is_id(given) else "")


def record_id(path: str | os.PathLike, n: int, record: dict, name: str, required: bool = True) -> int | None:
    """The integer id `record[name]`; a missing (when required) or malformed id is a one-line error."""
    if name not in record:
        if required:
            raise PrepareError(f"{where(path, n, record)} lacks '{name}'")
        return None
    value = record[name]
    if not is_id(value):
        raise PrepareError(
            f"{where(path, n, record)}: {name} is {value!r:.40}, not an integer id (0 .. 2^63 - 1)"
        )
    return value


def record_text(
    path: str | os.PathLike, n: int, record: dict, name: str, required: bool = True
) -> str | None:
    """The string `record[name]`; missing (when required) or not a string is a one-line error."""
    if name not in record:
        if required:
            raise PrepareError(f"{where(path, n, record)} lacks '{name}'")
        return None
    if not isinstance(record[name], str):
        raise PrepareError(f"{where(path, n, record)}: {name} is {record[name]!r:.40}, not a string")
    return record[name]


def image_folder(folder: str | os.PathLike) -> dict[int, Path]:
    """image id -> file of a folder of images named by id (`vqacap extract`'s rule: the last digits of the name)."""
    try:
        files = image_files(folder)
    except ImageError as err:
        raise PrepareError(str(err)) from None
    found: dict[int, Path] = {}
    for path in files:
        image_id = image_id_from_name(path)
        if image_id is None:
            continue
        if image_id in found:
            raise PrepareError(
                f"{path}: a second file for image id {image_id} (the first is {found[image_id].name})"
            )
        found[image_id] = path
    if not found:
        raise PrepareError(f"{folder}: no .jpg/.jpeg/.png/.bmp images named by id")
    return found


def offsets(ids: dict[str, set[int]], what: str, unit: str = "split") -> dict[str, int]:
    """What to add to each group's ids (a split's question ids, an image folder's image ids) so that no id is in two
    groups: 0 for a group whose ids meet no earlier group's, else what moves its smallest id past the largest id taken
    so far. Prints one line per renumbered group, with the count of ids that collided."""
    taken: set[int] = set()
    result = {}
    for group, group_ids in ids.items():
        clash = len(group_ids & taken)
        shift = max(taken) + 1 - min(group_ids) if clash else 0
        if clash:
            low, high = min(group_ids), max(group_ids)
            print(
                f"{group}: {clash} of its {len(group_ids)} {what} ids are also ids of an earlier {unit}; "
                f"renumbered by +{shift} ({low}..{high} -> {low + shift}..{high + shift})"
            )
        taken |= {i + shift for i in group_ids}
        result[group] = shift
    return result


def planned_links(files: dict[int, Path], out: Path) -> list[tuple[Path, Path]]:
    """(link, file) of `link_images`, less the links already in place; a file in the way that is not a link vqacap made
    is refused here, before anything is written."""
    folder = out / "images"
    planned = []
    for image_id, source in sorted(files.items()):
        source = source.resolve()
        link = folder / f"{image_id}{source.suffix.lower()}"
        if link.is_symlink() or not link.exists():
            if not (link.is_symlink() and link.resolve() == source):
                planned.append((link, source))
        elif link.resolve() != source:
            raise PrepareError(f"{link}: a file that is not a link to {source}; not overwritten")
    return planned


def link_images(planned: list[tuple[Path, Path]], out: Path, images: int) -> Path:
    """Symbolic links `<out>/images/<image id><suffix>` to the image files (`planned_links`), so that one folder named
    by the final ids serves `vqacap extract --images` and the attention maps; says so in a line counting the split's
    `images` (those already linked included). Links of an earlier run are replaced."""
    folder = out / "images"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        for link, source in planned:
            if link.is_symlink():
                link.unlink()
            link.symlink_to(source)
    except OSError as err:
        raise PrepareError(f"{folder}: cannot write links ({err.strerror or err})") from None
    print(f"{folder}: {images} images linked as <image id>.<ext> (for vqacap extract --images {folder})")
    return folder


def split_images(
    splits: dict[str, list[dict]],
    sources: dict[str, str],
    folders: dict[str, str],
) -> tuple[dict[str, int], dict[int, Path]]:
    """Image ids made unique across image folders, and the file of every (renumbered) image id of a split with a folder.

    `splits`: the checked records of each split (each with an int "image_id"); `sources`: each split's input file, to
    name it; `folders`: the image folder of the splits that have one. Splits sharing a folder (or without one) share
    their image ids: the same id is the same image. Returns (image id offset of each split, id -> file)."""
    scanned: dict[Path, dict[int, Path]] = {}
    names: dict[Path, str] = {}  # each folder as first given
    group_of: dict[str, Path] = {}
    for split, folder in folders.items():
        key = Path(folder).resolve()
        if key not in scanned:
            scanned[key], names[key] = image_folder(folder), str(folder)
        for n, record in enumerate(splits[split]):
            if record["image_id"] not in scanned[key]:
                raise PrepareError(
                    f"{folder}: no image file for image id {record['image_id']} (record {n} of {sources[split]})"
                )
        group_of[split] = key
    groups: dict[str, set[int]] = {}
    for split, key in group_of.items():
        groups.setdefault(names[key], set()).update(r["image_id"] for r in splits[split])
    shift = offsets(groups, "image", "image folder")
    files: dict[int, Path] = {}
    for split, key in group_of.items():
        for record in splits[split]:
            files[record["image_id"] + shift[names[key]]] = scanned[key][record["image_id"]]
    return {split: shift[names[group_of[split]]] if split in group_of else 0 for split in splits}, files


def add_split_arguments(parser: argparse.ArgumentParser) -> None:
    """--split NAME FILE (repeated, train needed) and --images NAME DIR, as every generic prepare step takes them."""
    parser.add_argument(
        "--split",
        nargs=2,
        action="append",
        required=True,
        metavar=("NAME", "FILE"),
        help="a split (train, val, test, ...) and its records file; repeat for each split, train needed",
    )
    parser.add_argument(
        "--images",
        nargs=2,
        action="append",
        default=[],
        metavar=("NAME", "DIR"),
        help="the folder of a split's images named by id; linked into DIR/images with the final ids",
    )
