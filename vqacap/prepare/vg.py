"""`vqacap prepare vg`: Visual Genome files -> the per-split detection annotations (`detection_<split>.json`) the
detector DataModule reads, cleaned as bottom-up-attention's setup_vg.py and vg.py clean them, streamed one image at a
time.

The input files, the cleaning rules, the two deliberate differences and the output layout: docs/data.md (Visual Genome).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import re
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from vqacap.data.owned import FolderNotOwnedError, claim_folder
from vqacap.images import image_id_from_name
from vqacap.prepare.common import PrepareError, is_id, write_json

FORMAT_NAME = "vqacap-detection"
FORMAT_VERSION = 1
# setup_vg.py: the adjectives that are split off the front of multi-word object names ("white plate" -> plate, white).
COMMON_ATTRIBUTES = frozenset(
    {
        "white",
        "black",
        "blue",
        "green",
        "red",
        "brown",
        "yellow",
        "small",
        "large",
        "silver",
        "wooden",
        "orange",
    }
    | {"gray", "grey", "metal", "pink", "tall", "long", "dark"}
)
MAX_ATTRIBUTES = 16  # vg.py: "Max of 16 attributes are observed in the data"
VOCAB_FILES = {"objects_vocab": "objects_vocab.txt", "attributes_vocab": "attributes_vocab.txt"}
DEFAULT_SPLITS = ("train", "val", "test")
WRITER = "prepare vg"


# -- the cleaning rules of setup_vg.py ---------------------------------------------------------------------------------
def clean_string(text: str) -> str:
    text = text.lower().strip()
    return text[:-1].strip() if text.endswith(".") else text


def clean_object_name(name: str) -> tuple[str, list[str]]:
    """The object's class name and the attributes split off its front: "Large white plate." -> ("plate", [large, white])."""
    name = clean_string(name)
    words = name.split()
    if len(words) > 1 and all(word in COMMON_ATTRIBUTES for word in words[:-1]):
        return words[-1], words[:-1]
    return name, []


def clean_attribute(text: str) -> list[str]:
    text = clean_string(text)
    if text == "black and white":
        return [text]
    return [part.strip() for part in text.split(" and ")]


# -- vocabularies ------------------------------------------------------------------------------------------------------
@dataclass
class LabelVocabulary:
    """Classes of one vocabulary file; index 0 is the background / "no attribute" class."""

    names: list[str]  # first alias of each line, after the reserved name at index 0
    index: dict[str, int]  # every alias -> its line's class index

    @classmethod
    def load(cls, path: Path, reserved: str) -> LabelVocabulary:
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except FileNotFoundError:
            raise PrepareError(f"{path}: file not found") from None
        except UnicodeDecodeError:
            raise PrepareError(f"{path}: not a text file (expected one class per line)") from None
        names, index = [reserved], {}
        for n, line in enumerate(lines, 1):
            aliases = [a.lower().strip() for a in line.split(",")]
            if not aliases[0]:
                raise PrepareError(f"{path}:{n}: empty class name")
            if reserved in aliases:
                raise PrepareError(
                    f"{path}:{n}: {reserved} is class 0 already (the file lists the other classes)"
                )
            if aliases[0] in names:
                raise PrepareError(
                    f"{path}:{n}: {aliases[0]!r} is a class of line {names.index(aliases[0])} already"
                )
            names.append(aliases[0])
            for alias in aliases:
                index[alias] = len(names) - 1
        if len(names) == 1:
            raise PrepareError(f"{path}: empty vocabulary (expected one class per line)")
        return cls(names, index)


# -- streaming the Visual Genome lists ---------------------------------------------------------------------------------
KIND_KEYS = {  # a VG file's kind, told by the keys of its records
    "objects": "objects",
    "attributes": "attributes",
    "relationships": "relationships",
    "regions": "region_descriptions",
    "qas": "question_answers",
    "url": "image_data",
}


def _kind_of(record) -> str:
    if isinstance(record, dict):
        for key, kind in KIND_KEYS.items():
            if key in record:
                return kind
    return "unknown"


def iter_json_list(path: Path, chunk_chars: int = 1 << 20) -> Iterator:
    """The elements of a file holding one JSON list, decoded one at a time (the whole file is never in memory)."""
    decoder = json.JSONDecoder()
    if not Path(path).exists() or Path(path).is_dir():  # a pipe is fine: the list is read front to back
        raise PrepareError(f"{path}: file not found")
    with open(path, encoding="utf-8") as f:
        buf, pos, eof = "", 0, False

        def more() -> bool:
            nonlocal buf, pos, eof
            chunk = "" if eof else f.read(chunk_chars)
            eof = eof or not chunk
            buf, pos = buf[pos:] + chunk, 0
            return bool(chunk)

        def skip_space() -> str:
            nonlocal pos
            while True:
                while pos < len(buf) and buf[pos] in " \t\r\n":
                    pos += 1
                if pos < len(buf) or not more():
                    return buf[pos] if pos < len(buf) else ""

        try:
            if skip_space() != "[":
                raise PrepareError(f"{path}: not a Visual Genome file (expected a JSON list of images)")
            pos += 1
            if skip_space() == "]":
                return
            while True:
                try:
                    element, end = decoder.raw_decode(buf, pos)
                except RecursionError:
                    raise PrepareError(f"{path}: JSON nested too deeply to read") from None
                except json.JSONDecodeError as err:
                    if more():  # the element runs past the buffer
                        continue
                    raise PrepareError(f"{path}: not valid JSON ({err})") from None
                pos = end
                yield element
                sep = skip_space()
                if sep == "]":
                    return
                if sep != ",":
                    raise PrepareError(f"{path}: not valid JSON (expected ',' or ']' after a list element)")
                pos += 1
                skip_space()
        except UnicodeDecodeError:
            raise PrepareError(f"{path}: not a UTF-8 JSON file") from None


def iter_images(path: Path, key: str, option: str) -> Iterator[tuple[int, list]]:
    """(image id, record[key]) of each image of a VG objects / attributes file; a file of another kind is refused."""
    for n, record in enumerate(iter_json_list(path)):
        if not isinstance(record, dict) or key not in record:
            kind = _kind_of(record)
            if n == 0 and kind != "unknown":
                raise PrepareError(f"{path}: is a Visual Genome {kind} file, given as {option}")
            raise PrepareError(f"{path}: image record {n} has no {key!r} list (expected {option})")
        image_id = _int_id(record, path, n)
        entries = record[key]
        if not isinstance(entries, list):
            raise PrepareError(f"{path}: image {image_id}: {key!r} is not a list")
        yield image_id, entries


def _int_id(record: dict, path: Path, n: int) -> int:
    value = record.get("image_id", record.get("id"))
    if isinstance(value, str) and re.fullmatch(
        r"[0-9]+", value
    ):  # ASCII digits only: "²" is a digit to isdigit
        value = int(value)
    if not is_id(value):
        raise PrepareError(
            f"{path}: image record {n}: image_id {value!r:.40} is not an integer id in 0 .. 2^63 - 1"
        )
    return value


def load_image_data(path: Path) -> tuple[dict[int, str | None], int]:
    """image id -> url, from image_data.json, and how many of the images are COCO images (a coco_id)."""
    urls: dict[int, str | None] = {}
    coco_images = 0
    for n, record in enumerate(iter_json_list(path)):
        kind = _kind_of(record)
        if kind not in ("image_data", "unknown") or not isinstance(record, dict):
            raise PrepareError(f"{path}: is a Visual Genome {kind} file, given as --image-data")
        if not ({"width", "height"} <= record.keys()):
            raise PrepareError(f"{path}: image record {n} lacks width and height (expected image_data.json)")
        url, image_id = record.get("url"), _int_id(record, path, n)
        if image_id in urls:
            raise PrepareError(f"{path}: image {image_id} appears twice (image record {n})")
        urls[image_id] = url if isinstance(url, str) else None
        coco_images += record.get("coco_id") is not None
    if not urls:
        raise PrepareError(f"{path}: no images")
    return urls, coco_images


# -- images --------------------------------------------------------------------------------------------------------------
class ImageFinder:
    """Finds an image under the image root: by its url's folder/file, its file, or its id as the file name."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._by_id: dict[int, Path] | None = None

    def find(self, image_id: int, url: str | None) -> Path | None:
        if url:
            parts = [p for p in url.replace("\\", "/").split("/") if p not in ("", ".", "..")]
            for candidate in ("/".join(parts[-2:]), "/".join(parts[-1:])):
                if candidate and (self.root / candidate).is_file():
                    return self.root / candidate
        return self._index().get(image_id)

    def _index(self) -> dict[int, Path]:
        if self._by_id is None:  # built once, only when a url does not lead to the file
            self._by_id = {}
            for folder in (self.root, *sorted(p for p in self.root.iterdir() if p.is_dir())):
                for entry in os.scandir(folder):
                    stem = entry.name.split(".", 1)[0]
                    if entry.is_file() and stem.isdigit():
                        self._by_id.setdefault(int(stem), Path(entry.path))
        return self._by_id


def image_size(path: Path, verify: bool) -> tuple[int, int] | str:
    """(width, height) read from the file's header (the whole image decoded with `verify`), or why it is unreadable."""
    try:
        with Image.open(path) as image:
            if verify:
                image.load()
            return image.size
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        return f"{type(err).__name__}: {err}"


# -- skips, reported rather than fatal -----------------------------------------------------------------------------------
@dataclass
class Skips:
    """What was left out and why: a count per reason and the first few image ids / objects of each."""

    counts: dict[str, int] = field(default_factory=dict)
    examples: dict[str, list[str]] = field(default_factory=dict)

    def add(self, reason: str, example: str) -> None:
        self.counts[reason] = self.counts.get(reason, 0) + 1
        shown = self.examples.setdefault(reason, [])
        if len(shown) < 5:
            shown.append(example)

    def lines(self) -> list[str]:
        return [
            f"skipped {n} {reason} (e.g. {', '.join(self.examples[reason])})"
            for reason, n in self.counts.items()
        ]


# -- one image ---------------------------------------------------------------------------------------------------------
NOT_FINITE = "boxes with a coordinate that is not a finite number"
OUTSIDE = "boxes outside the image"
EMPTY = "boxes of zero width or height (vg.py: 1-pixel boxes)"
EMPTY_IN_FLOAT32 = "boxes of zero width or height in float32"


def clean_box(x: float, y: float, w: float, h: float, width: int, height: int) -> list[float] | str:
    """vg.py's box: x, y, x + w, y + h clipped to the image; else why it is skipped.

    Finiteness is checked first (min and max would turn a NaN into an edge of the image); a box inverted after
    clipping is outside the image; a box of zero width or height is vg.py's 1-pixel box, which has no area here;
    emptiness is checked in float32 too, the dtype the detection loader and the detector hold boxes in (w = 1e-9 is
    positive in float64, zero in float32)."""
    if not all(map(math.isfinite, (x, y, w, h, x + w, y + h))):
        return NOT_FINITE
    x1, y1 = max(0.0, x), max(0.0, y)
    x2, y2 = min(width - 1.0, x + w), min(height - 1.0, y + h)
    if x2 < x1 or y2 < y1:
        return OUTSIDE
    if x2 == x1 or y2 == y1:
        return EMPTY
    if np.float32(x2) <= np.float32(x1) or np.float32(y2) <= np.float32(y1):
        return EMPTY_IN_FLOAT32
    return [x1, y1, x2, y2]


def clean_image(
    image_id: int,
    objects: list,
    attributes: dict[int, tuple[int, ...]],
    width: int,
    height: int,
    classes: LabelVocabulary,
    attribute_vocab: LabelVocabulary,
    source: Path,
    skips: Skips,
) -> list[dict]:
    """The image's in-vocabulary objects with clipped boxes and their attribute classes (<= 16, each once).
    `attributes`: object id -> its attribute classes from attributes.json (`attribute_classes`)."""
    cleaned = []
    for obj in objects:
        object_id, name, box, own_attributes = _object_fields(obj, image_id, source)
        class_name, adjectives = clean_object_name(name)
        if class_name not in classes.index:
            continue
        clipped = clean_box(*box, width, height)
        if isinstance(clipped, str):
            skips.add(clipped, f"image {image_id} object {object_id}")
            continue
        # setup_vg.py's order: the adjectives split off the name, then the object's attributes.
        found: list[int] = []
        for index in (
            *attribute_classes(adjectives, attribute_vocab),  # single words: cleaning leaves them as they are
            *attribute_classes(own_attributes, attribute_vocab),
            *attributes.get(object_id, ()),
        ):
            if index not in found:
                found.append(index)
        cleaned.append(
            {"box": clipped, "class": classes.index[class_name], "attributes": found[:MAX_ATTRIBUTES]}
        )
    return cleaned


def attribute_classes(raw: list, attribute_vocab: LabelVocabulary) -> tuple[int, ...]:
    """The attribute classes of an object's attribute strings, cleaned, in order, each once."""
    found: list[int] = []
    for text in raw:
        for part in clean_attribute(text) if isinstance(text, str) else ():
            index = attribute_vocab.index.get(part)
            if index is not None and index not in found:
                found.append(index)
    return tuple(found)


def _object_fields(obj, image_id: int, source: Path) -> tuple[object, str, tuple[float, ...], list]:
    if not isinstance(obj, dict):
        raise PrepareError(f"{source}: image {image_id}: an object is not a JSON object")
    object_id = obj.get("object_id", obj.get("id"))
    names = obj.get("names", [obj["name"]] if "name" in obj else None)
    try:
        box = tuple(float(obj[k]) for k in ("x", "y", "w", "h"))
    except (KeyError, TypeError, ValueError):
        raise PrepareError(
            f"{source}: image {image_id} object {object_id}: lacks a numeric x, y, w or h"
        ) from None
    if not isinstance(names, list) or not names or not isinstance(names[0], str):
        raise PrepareError(f"{source}: image {image_id} object {object_id}: lacks a name ('names' list)")
    own = obj.get("attributes", [])
    return object_id, names[0], box, own if isinstance(own, list) else []


def load_attributes(path: Path, attribute_vocab: LabelVocabulary) -> dict[int, dict[int, tuple[int, ...]]]:
    """image id -> object id -> its attribute classes, from attributes.json. Only objects with an in-vocabulary
    attribute are kept, as class indices: this is what stays in memory while the objects are streamed."""
    by_image: dict[int, dict[int, tuple[int, ...]]] = {}
    for image_id, objects in iter_images(path, "attributes", "--attributes"):
        per_object = by_image.setdefault(image_id, {})
        for obj in objects:
            if isinstance(obj, dict) and isinstance(obj.get("attributes"), list):
                found = attribute_classes(obj["attributes"], attribute_vocab)
                if found:
                    object_id = obj.get("object_id", obj.get("id"))
                    earlier = per_object.get(object_id, ())
                    per_object[object_id] = earlier + tuple(i for i in found if i not in earlier)
    return by_image


# -- splits ------------------------------------------------------------------------------------------------------------
def read_split_file(path: Path) -> list[int]:
    """Image ids, one per line, or bottom-up-attention's "<folder>/<id>.jpg xml/<id>.xml" lines."""
    try:
        lines = path.read_text().splitlines()
    except FileNotFoundError:
        raise PrepareError(f"{path}: file not found") from None
    ids = []
    for n, line in enumerate(lines, 1):
        tokens = line.split()
        if not tokens:
            continue
        image_id = (
            int(tokens[0]) if len(tokens) == 1 and tokens[0].isdigit() else image_id_from_name(tokens[-1])
        )
        if image_id is None:
            raise PrepareError(f"{path}:{n}: no image id in {line.strip()!r:.60}")
        ids.append(image_id)
    return ids


def assign_splits(
    kept: list[int], split_files: dict[str, Path], val_fraction: float, test_fraction: float, skips: Skips
) -> dict[int, str]:
    """image id -> split: from the split files when given, else a seeded shuffle of the ids."""
    if not split_files:
        ids = np.asarray(sorted(kept), dtype=np.int64)
        order = ids[np.random.default_rng(0).permutation(len(ids))]
        n_val, n_test = round(val_fraction * len(ids)), round(test_fraction * len(ids))
        names = ["val"] * n_val + ["test"] * n_test + ["train"] * (len(ids) - n_val - n_test)
        return dict(zip(order.tolist(), names))
    split_of: dict[int, str] = {}
    kept_set = set(kept)
    for name, path in split_files.items():
        for image_id in read_split_file(path):
            if image_id in split_of and split_of[image_id] != name:
                raise PrepareError(f"{path}: image {image_id} is also in split {split_of[image_id]}")
            if image_id not in kept_set:
                skips.add(f"ids of split files that have no kept image ({name})", str(image_id))
                continue
            split_of[image_id] = name
    for image_id in kept:
        if image_id not in split_of:
            skips.add("images in no split file", str(image_id))
    return split_of


def _refuse_a_random_split_of_coco_images(image_data: Path) -> None:
    """Before anything is written: VG and COCO share ~51k images, and a random split can put COCO Karpathy val/test
    images into detector training (bottom-up-attention's split files keep them out)."""
    _, coco_images = load_image_data(image_data)
    if coco_images:
        raise PrepareError(
            f"{image_data}: {coco_images} images are also COCO images, and a random split can put COCO Karpathy "
            "val/test images into detector training; pass bottom-up-attention's split files (--split "
            "train=data/genome/train.txt --split val=data/genome/val.txt --split test=data/genome/test.txt) "
            "or --random-split"
        )


# -- the whole step ----------------------------------------------------------------------------------------------------
def _stamp(path: Path) -> dict:
    stat = path.stat()
    return {"path": str(path.resolve()), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def prepare_vg(
    image_data: str | os.PathLike,
    objects: str | os.PathLike,
    images: str | os.PathLike,
    vocab: str | os.PathLike,
    out: str | os.PathLike,
    attributes: str | os.PathLike | None = None,
    splits: dict[str, str | os.PathLike] | None = None,
    val_fraction: float = 0.05,
    test_fraction: float = 0.05,
    verify_images: bool = False,
    log: Callable[[str], None] = print,
    random_split: bool = False,
) -> dict:
    """Write the detection annotations into `out` unless a complete copy from the same inputs is there; returns the
    content of COMPLETE.json (inputs, settings, counts)."""
    out, images, vocab = Path(out), Path(images), Path(vocab)
    inputs = {"image_data": Path(image_data), "objects": Path(objects)}
    if attributes is not None:
        inputs["attributes"] = Path(attributes)
    inputs.update({name: vocab / file for name, file in VOCAB_FILES.items()})
    split_files = {name: Path(path) for name, path in (splits or {}).items()}
    for path in (*inputs.values(), *split_files.values()):
        if not path.exists() or path.is_dir():
            raise PrepareError(f"{path}: file not found")
    if not images.is_dir():
        raise PrepareError(f"{images}: image folder not found")
    if min(val_fraction, test_fraction) < 0 or val_fraction + test_fraction >= 1:
        raise PrepareError(
            f"--val-fraction {val_fraction} and --test-fraction {test_fraction} leave no training images"
        )
    settings = {
        "splits": {name: _stamp(path) for name, path in split_files.items()},
        "val_fraction": val_fraction,
        "test_fraction": test_fraction,
        "verify_images": verify_images,
        "image_root": str(images.resolve()),
    }
    stamps = {name: _stamp(path) for name, path in inputs.items()}
    classes = LabelVocabulary.load(inputs["objects_vocab"], "__background__")
    attribute_vocab = LabelVocabulary.load(inputs["attributes_vocab"], "__no_attribute__")
    if not split_files and not random_split:
        _refuse_a_random_split_of_coco_images(inputs["image_data"])
    done = out / "COMPLETE.json"
    try:
        claim_folder(out, WRITER, "give --out a new or empty folder")
    except FolderNotOwnedError as err:
        raise PrepareError(str(err)) from None
    try:
        previous = json.loads(done.read_text())
    except (OSError, ValueError):
        previous = None
    if isinstance(previous, dict) and (previous.get("inputs"), previous.get("settings")) == (
        stamps,
        settings,
    ):
        log(f"{out}: up to date ({done})")
        return previous
    done.unlink(missing_ok=True)  # from here on the folder is incomplete until COMPLETE.json is written again

    urls, _ = load_image_data(inputs["image_data"])
    attributes_of = load_attributes(inputs["attributes"], attribute_vocab) if "attributes" in inputs else {}
    finder, skips = ImageFinder(images), Skips()
    records = out / "images.jsonl.tmp"  # one cleaned image per line; split only once every id is known
    kept: list[int] = []
    seen: set[int] = set()
    counts = {"objects": 0, "objects_without_attributes": 0}
    with open(records, "w") as f:
        for image_id, objects_of_image in iter_images(inputs["objects"], "objects", "--objects"):
            if image_id in seen:
                raise PrepareError(f"{inputs['objects']}: image {image_id} appears twice")
            seen.add(image_id)
            if len(seen) % 10000 == 0:  # Visual Genome's 108k images take minutes
                log(f"{inputs['objects']}: {len(seen)} images read, {len(kept)} kept")
            path = finder.find(image_id, urls.get(image_id))
            if path is None:
                skips.add(f"images without an image file under {images}", str(image_id))
                continue
            size = image_size(path, verify_images)
            if isinstance(size, str):
                skips.add("unreadable images", f"{image_id} ({path.name}: {size:.60})")
                continue
            cleaned = clean_image(
                image_id,
                objects_of_image,
                attributes_of.pop(image_id, {}),
                *size,
                classes,
                attribute_vocab,
                inputs["objects"],
                skips,
            )
            if not cleaned:
                skips.add("images without an in-vocabulary object", str(image_id))
                continue
            record = {
                "image_id": image_id,
                "file_name": path.relative_to(images).as_posix(),
                "width": size[0],
                "height": size[1],
                "objects": cleaned,
            }
            f.write(f"{image_id}\t{json.dumps(record)}\n")
            kept.append(image_id)
            counts["objects"] += len(cleaned)
            counts["objects_without_attributes"] += sum(not o["attributes"] for o in cleaned)
    del attributes_of
    if not kept:  # an empty objects list, or nothing usable in it: no detection split to write
        records.unlink(missing_ok=True)
        why = "; ".join(skips.lines()) or "the list holds no images"
        raise PrepareError(f"{inputs['objects']}: no image kept ({why})")
    split_of = assign_splits(kept, split_files, val_fraction, test_fraction, skips)
    split_names = list(split_files) or list(DEFAULT_SPLITS)
    header = {
        "format": FORMAT_NAME,
        "version": FORMAT_VERSION,
        "image_root": str(images.resolve()),
        "classes": classes.names,
        "attributes": attribute_vocab.names,
    }
    counts["images"] = _write_splits(out, records, split_of, split_names, header)
    records.unlink()
    for name, file in VOCAB_FILES.items():
        _copy_text(inputs[name], out / file)
    for line in skips.lines():
        log(line)
    complete = {
        "format": FORMAT_NAME,
        "version": FORMAT_VERSION,
        "inputs": stamps,
        "settings": settings,
        "counts": counts,
        "skipped": skips.counts,
    }
    write_json(done, complete)
    for name in split_names:
        log(f"{out / f'detection_{name}.json'}: {counts['images'][name]} images")
    log(
        f"{counts['objects']} objects of {len(classes.names) - 1} classes "
        f"({counts['objects_without_attributes']} without attributes of {len(attribute_vocab.names) - 1})"
    )
    return complete


def _write_splits(
    out: Path, records: Path, split_of: dict[int, str], split_names: list[str], header: dict
) -> dict[str, int]:
    """detection_<split>.json for every split, streamed from the cleaned records, each renamed into place when whole."""
    head = json.dumps({**header, "images": []})[: -len("[]}")] + "["
    paths = {name: out / f"detection_{name}.json" for name in split_names}
    counts = dict.fromkeys(split_names, 0)
    with contextlib.ExitStack() as stack:
        files = {
            name: stack.enter_context(open(path.with_name(path.name + ".tmp"), "w"))
            for name, path in paths.items()
        }
        for f in files.values():
            f.write(head)
        with open(records) as lines:
            for line in lines:
                image_id, record = line.rstrip("\n").split("\t", 1)
                name = split_of.get(int(image_id))
                if name is None:
                    continue
                files[name].write(("," if counts[name] else "") + record)
                counts[name] += 1
        for f in files.values():
            f.write("]}")
    for path in paths.values():
        os.replace(path.with_name(path.name + ".tmp"), path)
    return counts


def _copy_text(source: Path, target: Path) -> None:
    tmp = target.with_name(target.name + ".tmp")
    tmp.write_text(source.read_text(encoding="utf-8"), encoding="utf-8")
    os.replace(tmp, target)


# -- command line --------------------------------------------------------------------------------------------------------
def _split_option(text: str) -> tuple[str, str]:
    name, sep, path = text.partition("=")
    if not sep or not name or not path:
        raise argparse.ArgumentTypeError(f"expected NAME=FILE, got {text!r}")
    return name, path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--image-data", required=True, metavar="JSON", help="Visual Genome image_data.json")
    parser.add_argument(
        "--objects", required=True, metavar="JSON", help="Visual Genome objects.json or scene_graphs.json"
    )
    parser.add_argument("--attributes", metavar="JSON", help="Visual Genome attributes.json")
    parser.add_argument(
        "--images", required=True, metavar="DIR", help="folder holding VG_100K/ and VG_100K_2/"
    )
    parser.add_argument(
        "--vocab", required=True, metavar="DIR", help="folder with objects_vocab.txt and attributes_vocab.txt"
    )
    parser.add_argument("--out", required=True, metavar="DIR", help="folder the detector DataModule reads")
    parser.add_argument(
        "--split",
        action="append",
        type=_split_option,
        default=[],
        metavar="NAME=FILE",
        help="image ids of a split (repeatable), e.g. train=data/genome/train.txt",
    )
    parser.add_argument(
        "--val-fraction", type=float, default=0.05, help="without split files: share of val images"
    )
    parser.add_argument(
        "--test-fraction", type=float, default=0.05, help="without split files: share of test"
    )
    parser.add_argument(
        "--verify-images", action="store_true", help="decode every image (slow), not only its header"
    )
    parser.add_argument(
        "--random-split",
        action="store_true",
        help="without split files, split at random even when image_data.json names COCO images",
    )


def run(args: argparse.Namespace) -> int:
    try:
        prepare_vg(
            args.image_data,
            args.objects,
            args.images,
            args.vocab,
            args.out,
            attributes=args.attributes,
            splits=dict(args.split),
            val_fraction=args.val_fraction,
            test_fraction=args.test_fraction,
            verify_images=args.verify_images,
            random_split=args.random_split,
        )
    except PrepareError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0
