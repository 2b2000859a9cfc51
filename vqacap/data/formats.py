"""The public file formats vqacap reads, each parsed by one function that the data, the metrics and the commands share:
COCO caption annotations and results, and the official VQA v1/v2 questions, annotations and results files.

Each function checks the structure it relies on and raises `FormatError` with one line naming the file (or
<questions>, <annotations>, <results> for JSON already loaded). Not here: what the records mean to a dataset or a
metric (vqacap.data.captions, vqacap.data.vqa, vqacap.metrics).
"""

from __future__ import annotations

import json
import os
import unicodedata
from collections.abc import Hashable
from pathlib import Path
from typing import Any


def normal_text(text: str) -> str:
    """Text in Unicode's composed form (NFC): the training vocabulary and the caption metrics both read text through
    this, so "e\u0301cole" (e + combining accent) is the word "école" in both, not "e", "cole" in one of them."""
    return unicodedata.normalize("NFC", text)


class FormatError(ValueError):
    """Raised with a one-line message naming the file at fault."""


# -- COCO captions -----------------------------------------------------------------------------------------------------
def load_coco_captions(path: str | os.PathLike) -> tuple[dict[Hashable, list[str]], list[dict] | None]:
    """(captions of each image id in annotation order, the "images" records or None) of a COCO caption-annotation file
    {"images": [{"id", ...}], "annotations": [{"image_id", "caption"}]}."""
    data = _load(path, "caption annotation")
    if not isinstance(data, dict) or not isinstance(data.get("annotations"), list):
        raise FormatError(f"{path}: not a COCO caption-annotation file (no 'annotations' list)")
    captions: dict[Hashable, list[str]] = {}
    for n, ann in enumerate(data["annotations"]):
        if not isinstance(ann, dict) or "image_id" not in ann or not isinstance(ann.get("caption"), str):
            raise FormatError(
                f"{path}: annotations[{n}] needs an 'image_id' and a string 'caption', got {ann!r}"
            )
        captions.setdefault(ann["image_id"], []).append(ann["caption"])
    images = data.get("images")
    if images is None:
        return captions, None
    if not isinstance(images, list) or not all(isinstance(im, dict) and "id" in im for im in images):
        raise FormatError(f"{path}: 'images' must be a list of records with an 'id'")
    return captions, images


def load_coco_results(path: str | os.PathLike) -> dict[Hashable, str]:
    """COCO caption results ([{"image_id", "caption"}, ...]) -> {image_id: caption}; an image twice is an error."""
    data = _load(path, "caption results")
    if not isinstance(data, list):
        raise FormatError(
            f"{path}: COCO caption results must be a JSON list of {{'image_id', 'caption'}} objects"
        )
    results: dict[Hashable, str] = {}
    for n, item in enumerate(data):
        if not isinstance(item, dict) or "image_id" not in item or not isinstance(item.get("caption"), str):
            raise FormatError(
                f"{path}: result [{n}] needs an 'image_id' and a string 'caption', got {item!r}"
            )
        if item["image_id"] in results:
            raise FormatError(f"{path}: image {item['image_id']!r} has more than one result caption")
        results[item["image_id"]] = item["caption"]
    return results


# -- VQA ---------------------------------------------------------------------------------------------------------------
def source_name(source: Any, what: str) -> str:
    """How messages name a source: its path, or <what> for an already loaded object."""
    return str(source) if isinstance(source, (str, os.PathLike)) else f"<{what}>"


def _load(source: str | os.PathLike | Any, what: str) -> Any:
    """Load a JSON file, or take an already loaded object as it is."""
    if not isinstance(source, (str, os.PathLike)):
        return source
    path = Path(source)
    try:
        with path.open() as f:
            return json.load(f)
    except FileNotFoundError:
        raise FormatError(f"{path}: {what} file not found") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise FormatError(f"{path}: {what} file is not valid JSON ({err})") from None


def _guess_kind(data: Any) -> str:
    if isinstance(data, list):
        return "a results file"
    if isinstance(data, dict) and "annotations" in data:
        return "an annotations file"
    if isinstance(data, dict) and "questions" in data:
        return "a questions file"
    return f"a JSON {type(data).__name__}"


def _records(source: Any, key: str, fields: tuple[str, ...]) -> list[dict]:
    """The list `data[key]` of a questions or annotations file, every record holding `fields`."""
    name = source_name(source, key)
    data = _load(source, key)
    if not (isinstance(data, dict) and isinstance(data.get(key), list)):
        raise FormatError(
            f"{name}: not a VQA {key} file (no '{key}' list; it looks like {_guess_kind(data)})"
        )
    for n, record in enumerate(data[key]):
        missing = [f for f in fields if not isinstance(record, dict) or f not in record]
        if missing:
            raise FormatError(f"{name}: {key}[{n}] lacks {', '.join(missing)}")
    return data[key]


def load_vqa_questions(source: str | os.PathLike | Any) -> list[dict]:
    """The question records of an official VQA questions file (path or loaded JSON); `FormatError` naming it."""
    return _records(source, "questions", ("question_id", "image_id", "question"))


def load_vqa_annotations(source: str | os.PathLike | Any) -> list[dict]:
    """The annotation records of an official VQA annotations file (path or loaded JSON); `FormatError` naming it."""
    annotations = _records(source, "annotations", ("question_id", "question_type", "answer_type", "answers"))
    for ann in annotations:
        answers = ann["answers"]
        if not (
            isinstance(answers, list)
            and answers
            and all(isinstance(a, dict) and "answer" in a for a in answers)
        ):
            raise FormatError(
                f"{source_name(source, 'annotations')}: question {ann['question_id']} has no list of answers {{'answer': ...}}"
            )
    return annotations


def load_vqa_results(source: str | os.PathLike | Any) -> dict[int, str]:
    """{question_id: answer} of an official VQA results file [{"question_id", "answer"}] (path or loaded JSON)."""
    name = source_name(source, "results")
    data = _load(source, "results")
    if not isinstance(data, list):
        raise FormatError(
            f"{name}: a results file is a JSON list of {{question_id, answer}}; it looks like {_guess_kind(data)}"
        )
    results: dict[int, str] = {}
    duplicates = 0
    for n, item in enumerate(data):
        if not (isinstance(item, dict) and "question_id" in item and isinstance(item.get("answer"), str)):
            raise FormatError(f"{name}: result [{n}] is not {{'question_id': int, 'answer': str}}")
        if not isinstance(item["question_id"], int) or isinstance(item["question_id"], bool):
            raise FormatError(
                f"{name}: result [{n}] has question_id {item['question_id']!r}: question ids are integers "
                '(4501, not "4501")'
            )
        duplicates += item["question_id"] in results
        results[item["question_id"]] = item["answer"]
    if duplicates:
        raise FormatError(f"{name}: {duplicates} results repeat a question id already answered")
    return results
