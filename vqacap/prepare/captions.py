"""`vqacap prepare coco-captions`: Karpathy split file -> the caption files `vqacap.data.captions` reads.

Input: Karpathy's dataset_coco.json / dataset_flickr8k.json / dataset_flickr30k.json,
    {"dataset": "coco", "images": [{"split": "train|restval|val|test", "filename", "filepath"?, "cocoid"?, "imgid",
                                    "sentids", "sentences": [{"raw", "tokens", "imgid", "sentid"}]}]}

Output in DIR:
    captions_{train,val,test}.json  COCO caption annotations {"info", "images": [{"id", "file_name", "width"?,
                                    "height"?}], "annotations": [{"id": sentid, "image_id", "caption": raw}],
                                    "type": "captions"}; restval is merged into train, as in Anderson et al.
    caption_vocab.json              vocabulary of the training captions (words seen >= --min-count times)

Image ids are COCO ids (`cocoid`) for COCO, so they match the bottom-up feature files; Karpathy's `imgid` otherwise.
`file_name` is `filepath/filename`, so tools can find the image under the image root. Widths and heights are added when
--image-sizes gives COCO annotation files. Rerunning rewrites identical files.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from vqacap.data.vocab import Vocabulary, tokenize
from vqacap.prepare.common import (
    PrepareError,
    is_id,
    load_image_sizes,
    output_folder,
    read_json,
    write_json,
)

SPLIT_OF = {"train": "train", "restval": "train", "val": "val", "test": "test"}


def karpathy_to_coco(
    karpathy: dict, source: str, sizes: dict[int, tuple[int, int]] | None = None
) -> tuple[dict[str, dict], int]:
    """COCO caption-annotation dicts per split, and the number of training captions dropped for having no words."""
    if not isinstance(karpathy, dict) or not isinstance(karpathy.get("images"), list):
        raise PrepareError(f"{source}: not a Karpathy split file (no 'images' list)")
    dataset = karpathy.get("dataset", "coco")
    sizes = sizes or {}
    splits = {
        s: {
            "info": {
                "description": f"Karpathy {dataset} split '{s}'",
                "dataset": dataset,
                "split": s,
                "source": source,
            },
            "images": [],
            "annotations": [],
            "type": "captions",
        }
        for s in ("train", "val", "test")
    }
    seen: dict[int, str] = {}
    sentids: dict[int, str] = {}
    dropped = 0
    id_key = "cocoid" if dataset == "coco" else "imgid"
    for n, image in enumerate(karpathy["images"]):
        if not isinstance(image, dict):
            raise PrepareError(f"{source}: images[{n}] is {image!r:.60}, not an image record")
        where = f"{source}: image {image.get('imgid', n)!r:.40} (images[{n}])"
        try:
            image_id, split = image[id_key], image["split"]
            file_name, sentences = image["filename"], image["sentences"]
        except KeyError as err:
            raise PrepareError(f"{where} lacks {err}") from None
        if not is_id(image_id):
            raise PrepareError(f"{where}: {id_key} {image_id!r:.40} is not an integer id in 0 .. 2^63 - 1")
        if not isinstance(split, str) or split not in SPLIT_OF:
            raise PrepareError(f"{where}: unknown split {split!r:.40} (expected {', '.join(SPLIT_OF)})")
        split = SPLIT_OF[split]
        if not isinstance(file_name, str) or not isinstance(image.get("filepath", ""), str):
            raise PrepareError(f"{where}: filename/filepath are not strings")
        if not isinstance(sentences, list):
            raise PrepareError(f"{where}: sentences is {sentences!r:.40}, not a list")
        file_name = str(Path(image.get("filepath", "")) / file_name)
        if image_id in seen:
            raise PrepareError(
                f"{source}: image id {image_id} appears twice ({seen[image_id]} and {file_name})"
            )
        seen[image_id] = file_name
        record = {"id": image_id, "file_name": file_name}
        if image_id in sizes:
            record["width"], record["height"] = sizes[image_id]
        splits[split]["images"].append(record)
        for j, sentence in enumerate(sentences):
            caption = sentence.get("raw") if isinstance(sentence, dict) else None
            sentid = sentence.get("sentid") if isinstance(sentence, dict) else None
            if not isinstance(caption, str) or not is_id(sentid):
                raise PrepareError(
                    f"{where}: sentences[{j}] {sentence!r:.60} lacks a string 'raw' caption and an integer 'sentid'"
                )
            if sentid in sentids:
                raise PrepareError(f"{where}: sentid {sentid} appears twice (first in {sentids[sentid]})")
            sentids[sentid] = f"image {image_id}"
            if split == "train" and not tokenize(caption):
                dropped += 1  # nothing to learn from, and Vocabulary.encode refuses it
                continue
            splits[split]["annotations"].append({"id": sentid, "image_id": image_id, "caption": caption})
    return splits, dropped


def prepare(
    karpathy_path: str | Path,
    out: str | Path,
    min_count: int = 5,
    max_length: int = 16,
    image_sizes: list[str] | None = None,
) -> dict[str, dict]:
    splits, dropped = karpathy_to_coco(
        read_json(karpathy_path), str(karpathy_path), load_image_sizes(image_sizes or [])
    )
    if not splits["train"]["annotations"]:
        raise PrepareError(f"{karpathy_path}: no training captions (split train or restval)")
    write_caption_files(output_folder(out), splits, dropped, min_count, max_length)
    return splits


def write_caption_files(
    out: Path, splits: dict[str, dict], dropped: int, min_count: int, max_length: int
) -> None:
    """`captions_<split>.json` per split and `caption_vocab.json` into the folder `out`, each reported in a line."""
    for split, data in splits.items():
        write_json(out / f"captions_{split}.json", data)
    # Training captions only: val and test words the model never saw would only be <unk> targets anyway.
    vocab = Vocabulary.build(
        [a["caption"] for a in splits["train"]["annotations"]], min_count=min_count, max_length=max_length
    )
    vocab.save(out / "caption_vocab.json")
    for split, data in splits.items():
        print(
            f"{out / f'captions_{split}.json'}: {len(data['images'])} images, {len(data['annotations'])} captions"
        )
    print(f"{out / 'caption_vocab.json'}: {len(vocab)} words (count >= {min_count}, incl. 4 specials)")
    if dropped:
        print(f"dropped {dropped} training captions without words")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--karpathy", required=True, metavar="JSON", help="dataset_coco.json / dataset_flickr30k.json"
    )
    parser.add_argument(
        "--out", required=True, metavar="DIR", help="data folder the caption DataModule reads"
    )
    parser.add_argument(
        "--min-count", type=int, default=5, help="keep words seen at least this often in training"
    )
    parser.add_argument(
        "--max-length", type=int, default=16, help="captions are truncated to this many words"
    )
    parser.add_argument(
        "--image-sizes", nargs="+", default=[], metavar="JSON", help="COCO files with image sizes"
    )


def run(args: argparse.Namespace) -> int:
    try:
        prepare(args.karpathy, args.out, args.min_count, args.max_length, args.image_sizes)
    except PrepareError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0
