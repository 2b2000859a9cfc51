"""`vqacap prepare captions`: caption records of any dataset -> the files `vqacap.data.captions.CaptionDataModule`
reads, each split named by the user.

Input, one records file per split (`--split NAME FILE`; a JSON list, a JSON object holding one list, or JSON lines):

    {"image_id": 12, "caption": "a red circle above a blue square"}
    {"image_id": 12, "captions": ["a red circle ...", "..."], "file_name": "photos/12.jpg"}

An image may have several records. Output in DIR: captions_<split>.json (COCO caption annotations, caption ids unique
over all splits) and caption_vocab.json from train; with --images, images/<image id>.<ext> links to every image, named
as each image's `file_name`. Image ids of different image folders that collide are renumbered, with one line saying
so. Nothing is written when any record is refused. The page: docs/new-dataset.md.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from vqacap.data.vocab import tokenize
from vqacap.prepare.captions import write_caption_files
from vqacap.prepare.common import PrepareError, output_folder
from vqacap.prepare.generic import (
    add_split_arguments,
    check_splits,
    link_images,
    planned_links,
    read_records,
    record_id,
    record_text,
    split_images,
    where,
)


def read_split(path: str) -> tuple[list[dict], dict[int, str]]:
    """The checked records of one file as ({"image_id", "caption"} per caption, file name of each image that has one)."""
    captions, names = [], {}
    for n, record in enumerate(read_records(path, "annotations")):
        image_id = record_id(path, n, record, "image_id")
        if "caption" in record:
            texts = [record_text(path, n, record, "caption")]
        elif isinstance(record.get("captions"), list) and all(isinstance(c, str) for c in record["captions"]):
            texts = record["captions"]
        else:
            problem = (
                "lacks 'caption' or 'captions'"
                if "captions" not in record
                else "captions is not a list of strings"
            )
            raise PrepareError(f"{where(path, n, record, 'image_id')}: {problem}")
        name = record_text(path, n, record, "file_name", required=False)
        if name is not None and names.setdefault(image_id, name) != name:
            raise PrepareError(
                f"{where(path, n, record, 'image_id')}: file_name {name!r}, earlier {names[image_id]!r}"
            )
        captions += [{"image_id": image_id, "caption": text} for text in texts]
    return captions, names


def prepare(
    splits: list[tuple[str, str]],
    out: str | Path,
    images: list[tuple[str, str]] | None = None,
    min_count: int = 5,
    max_length: int = 16,
) -> dict[str, dict]:
    images = images or []
    check_splits(splits, images)
    sources = dict(splits)
    read = {split: read_split(path) for split, path in splits}
    image_shift, files = split_images({s: c for s, (c, _) in read.items()}, sources, dict(images))
    written, dropped, next_id = {}, 0, 1
    for split, (captions, names) in read.items():
        shift = image_shift[split]
        ids = list(dict.fromkeys(c["image_id"] for c in captions))
        records = []
        for image_id in ids:
            record = {"id": image_id + shift}
            if split in dict(images):
                record["file_name"] = f"images/{image_id + shift}{files[image_id + shift].suffix.lower()}"
            elif image_id in names:
                record["file_name"] = names[image_id]
            records.append(record)
        annotations = []
        for c in captions:
            if split == "train" and not tokenize(c["caption"]):
                dropped += 1  # nothing to learn from, and Vocabulary.encode refuses it
                continue
            annotations.append({"id": next_id, "image_id": c["image_id"] + shift, "caption": c["caption"]})
            next_id += 1
        info = {
            "description": f"split {split} of {sources[split]}, by vqacap prepare captions",
            "split": split,
            "image_id_offset": shift,  # what was added to the input's image ids
        }
        written[split] = {"info": info, "images": records, "annotations": annotations, "type": "captions"}
    if not written["train"]["annotations"]:
        raise PrepareError(f"{sources['train']}: no training captions with words")

    links = planned_links(files, Path(out))
    out = output_folder(out)
    write_caption_files(out, written, dropped, min_count, max_length)
    if files:
        link_images(links, out, len(files))
    return written


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_split_arguments(parser)
    parser.add_argument(
        "--out", required=True, metavar="DIR", help="data folder the caption DataModule reads"
    )
    parser.add_argument(
        "--min-count", type=int, default=5, help="keep words seen at least this often in training"
    )
    parser.add_argument(
        "--max-length", type=int, default=16, help="captions are truncated to this many words"
    )


def run(args: argparse.Namespace) -> int:
    try:
        prepare(
            [tuple(s) for s in args.split],
            args.out,
            [tuple(i) for i in args.images],
            args.min_count,
            args.max_length,
        )
    except PrepareError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0
