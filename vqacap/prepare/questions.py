"""`vqacap prepare questions`: question/answer records of any VQA dataset -> the files `vqacap.data.vqa.VQADataModule`
reads, each split named by the user.

Input, one records file per split (`--split NAME FILE`; a JSON list, a JSON object holding one list, or JSON lines):

    {"image_id": 12, "question": "What color is the circle?", "answer": "red"}
    {"image_id": 12, "question": "...", "answers": ["red", "red", "dark red", ...], "question_id": 7,
     "question_type": "what color", "answer_type": "other"}

`answer` (one string) or `answers` (strings, or VQA records {"answer": ...}), in the record or in a file of their own
(`--answers NAME FILE`, matched by question_id); a split without either is answered but not scored (test-dev). Optional: `question_id` (default: the record's position in the file), `question_type` (default:
the question's first word), `answer_type` (default: "yes/no", "number" or "other" from the most common answer, as VQA
v2). One `answer` becomes ten identical human answers, so the official VQA accuracy is exact-match accuracy.

Output in DIR: vqa_<split>_questions.json, vqa_<split>_annotations.json (annotated splits) in the official VQA format;
answer_vocab.json and question_vocab.json from train; with --images, images/<image id>.<ext> links to every image of
the questions. Question ids that collide across splits (two files numbered from 0) are renumbered, and image ids of
different image folders too, each with one line saying so. Nothing is written when any record is refused.
The page: docs/new-dataset.md.
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path

from vqacap.data.answers import process_answer
from vqacap.data.vocab import Vocabulary, tokenize
from vqacap.data.vqa import AnswerVocabulary, blank_report, without_blank
from vqacap.prepare.common import PrepareError, output_folder, write_json
from vqacap.prepare.generic import (
    add_split_arguments,
    check_splits,
    link_images,
    offsets,
    planned_links,
    read_records,
    record_id,
    record_text,
    split_images,
    where,
)
from vqacap.prepare.vqa2 import check_answer_count, write_question_glove

HUMAN_ANSWERS = 10  # copies of a single `answer`: the official accuracy then scores an exact match 1


def answer_type(answer: str) -> str:
    """VQA v2's answer types: "yes/no", "number" (digits once normalised, "two" -> "2") or "other"."""
    processed = process_answer(answer)
    if processed in ("yes", "no"):
        return "yes/no"
    return "number" if processed.isdigit() else "other"


def question_type(question: str) -> str:
    """The default question type: the question's first word ("what", "is", "how"), "none" for no word."""
    words = tokenize(question)
    return words[0] if words else "none"


def _answers(path: str, n: int, record: dict) -> list[str] | None:
    """The human answers of a record, None when it has none."""
    if "answer" in record:
        return [record_text(path, n, record, "answer")] * HUMAN_ANSWERS
    if "answers" not in record:
        return None
    answers = record["answers"]
    if not isinstance(answers, list) or not answers:
        raise PrepareError(f"{where(path, n, record)}: answers is {answers!r:.40}, not a list of answers")
    texts = [a.get("answer") if isinstance(a, dict) else a for a in answers]
    bad = next((j for j, a in enumerate(texts) if not isinstance(a, str)), None)
    if bad is not None:
        raise PrepareError(
            f"{where(path, n, record)}: answers[{bad}] is {answers[bad]!r:.40}, not a string or {{'answer': string}}"
        )
    return texts


ANSWER_FIELDS = ("answer", "answers", "multiple_choice_answer", "question_type", "answer_type")


def joined(path: str, records: list[dict], answers_path: str) -> list[dict]:
    """The question records with the answer fields of a separate answers file (VQA's questions and annotations
    files, VQA-CP's lists), matched by question_id; every question answered once, every answer of a question."""
    by_id: dict[int, dict] = {}
    for n, record in enumerate(read_records(answers_path, "annotations")):
        qid = record_id(answers_path, n, record, "question_id")
        if qid in by_id:
            raise PrepareError(f"{answers_path}: question_id {qid} is answered twice")
        if _answers(answers_path, n, record) is None:
            raise PrepareError(f"{where(answers_path, n, record)} lacks 'answer' or 'answers'")
        for name in ANSWER_FIELDS[2:]:
            record_text(answers_path, n, record, name, required=False)
        by_id[qid] = record
    merged = []
    for n, record in enumerate(records):
        qid = record_id(path, n, record, "question_id")
        answer = by_id.pop(qid, None)
        if answer is None:
            raise PrepareError(f"{answers_path}: no answers for question_id {qid} (record {n} of {path})")
        if answer.get("image_id", record.get("image_id")) != record.get("image_id"):
            raise PrepareError(
                f"{answers_path}: question_id {qid} is about image {answer['image_id']!r:.20} here, "
                f"image {record.get('image_id')!r:.20} in {path}"
            )
        merged.append({**{k: answer[k] for k in ANSWER_FIELDS if k in answer}, **record})
    if by_id:
        raise PrepareError(f"{answers_path}: question_id {next(iter(by_id))} is answered but not in {path}")
    return merged


def read_split(path: str, answers_path: str | None = None) -> tuple[list[dict], list[dict] | None]:
    """The checked records of one file (with the answers of `answers_path`, if given) as (questions, annotations or
    None), question ids as in the file or the records' positions."""
    records = read_records(path, "questions")
    if answers_path is not None:
        records = joined(path, records, answers_path)
    numbered = "question_id" in records[0]
    answered = "answer" in records[0] or "answers" in records[0]
    questions, annotations, seen = [], [], {}
    for n, record in enumerate(records):
        qid = record_id(path, n, record, "question_id", required=numbered)
        if not numbered and qid is not None:
            raise PrepareError(f"{where(path, n, record)} has a question_id, record 0 none; give all or none")
        qid = n if qid is None else qid
        if qid in seen:
            raise PrepareError(f"{path}: question_id {qid} appears twice (records {seen[qid]} and {n})")
        seen[qid] = n
        image_id = record_id(path, n, record, "image_id")
        text = record_text(path, n, record, "question")
        questions.append({"image_id": image_id, "question": text, "question_id": qid})
        answers = _answers(path, n, record)
        if (answers is not None) != answered:
            raise PrepareError(
                f"{where(path, n, record)} "
                + ("lacks 'answer' or 'answers'" if answered else "has answers, record 0 none")
                + "; a split is answered in every record or in none"
            )
        if answers is None:
            continue
        first = len(annotations[0]["answers"]) if annotations else len(answers)
        if len(answers) != first:
            raise PrepareError(
                f"{where(path, n, record)}: {len(answers)} answers, record 0 has {first}; "
                "every question of a split needs as many (or one 'answer' each)"
            )
        given = record_text(path, n, record, "multiple_choice_answer", required=False)
        common = given or Counter(answers).most_common(1)[0][0]  # ties: the first given
        annotations.append({
            "question_id": qid,
            "image_id": image_id,
            "question_type": record_text(path, n, record, "question_type", required=False) or question_type(text),
            "answer_type": record_text(path, n, record, "answer_type", required=False) or answer_type(common),
            "multiple_choice_answer": common,
            "answers": [
                {"answer": a, "answer_confidence": "yes", "answer_id": j + 1} for j, a in enumerate(answers)
            ],
        })  # fmt: skip
    return questions, annotations or None


def holdout(
    questions: list[dict], annotations: list[dict], fraction: float
) -> tuple[tuple[list, list], tuple[list, list]]:
    """(train, val) of one split's questions and annotations: the last `fraction` of its images (in id order) with
    all their questions go to val, so that no image is in both."""
    images = sorted({q["image_id"] for q in questions})
    held = set(images[len(images) - max(1, round(fraction * len(images))) :])
    if len(held) == len(images):
        raise PrepareError(f"--val-fraction {fraction} leaves no training image (of {len(images)})")
    parts = []
    for keep in (False, True):
        ids = {q["question_id"] for q in questions if (q["image_id"] in held) == keep}
        parts.append(
            (
                [q for q in questions if q["question_id"] in ids],
                [a for a in annotations if a["question_id"] in ids],
            )
        )
    return parts[0], parts[1]


def prepare(
    splits: list[tuple[str, str]],
    out: str | Path,
    images: list[tuple[str, str]] | None = None,
    answers: list[tuple[str, str]] | None = None,
    val_fraction: float | None = None,
    min_answer_count: int = 9,
    min_word_count: int = 1,
    max_length: int = 14,
    glove: str | None = None,
) -> dict:
    images = images or []
    check_splits(splits, images)
    sources = dict(splits)
    answer_files = dict(answers or [])
    for split, answers_path in answer_files.items():
        if split not in sources:
            raise PrepareError(f"--answers {split} {answers_path}: no --split {split} given")
    read = {split: read_split(path, answer_files.get(split)) for split, path in splits}
    if read["train"][1] is None:
        raise PrepareError(f"{sources['train']}: the train split needs answers (for the answer vocabulary)")
    if val_fraction is not None:
        if "val" in read:
            raise PrepareError("--val-fraction carves val out of train; a --split val is given too")
        if not 0 < val_fraction < 1:
            raise PrepareError(f"--val-fraction {val_fraction}: a fraction between 0 and 1")
        (train_q, train_a), (val_q, val_a) = holdout(*read["train"], val_fraction)
        read["train"], read["val"] = (train_q, train_a), (val_q, val_a)
        sources["val"] = f"{sources['train']} (held out)"
        images = [*images, *(("val", folder) for split, folder in images if split == "train")]
        print(
            f"val: {len({q['image_id'] for q in val_q})} train images and their {len(val_q)} questions held out"
        )

    # train and val first: ids are renumbered in this order, so the splits users train on keep theirs.
    read = {
        s: read[s]
        for s in sorted(read, key=lambda s: ("train", "val").index(s) if s in ("train", "val") else 2)
    }
    image_shift, files = split_images({s: q for s, (q, _) in read.items()}, sources, dict(images))
    question_shift = offsets({s: {q["question_id"] for q in qs} for s, (qs, _) in read.items()}, "question")
    for split, (questions, answered) in read.items():
        for record in questions + (answered or []):
            record["image_id"] += image_shift[split]
            record["question_id"] += question_shift[split]

    written = {}
    for split, (questions, answered) in read.items():
        questions, answered, counts = without_blank(questions, answered)
        if report := blank_report(sources[split], counts):
            print(report)
        info = {
            "description": f"split {split} of {sources[split]}, by vqacap prepare questions",
            "split": split,
            # What was added to the input's ids, to map results back to them.
            "question_id_offset": question_shift[split],
            "image_id_offset": image_shift[split],
        }
        written[f"vqa_{split}_questions.json"] = ("questions", {"info": info, "questions": questions})
        if answered is not None:
            written[f"vqa_{split}_annotations.json"] = (
                "annotations",
                {"info": info, "annotations": answered},
            )
    train = written["vqa_train_annotations.json"][1]["annotations"]
    check_answer_count(train, min_answer_count, "train")

    links = planned_links(files, Path(out))
    out = output_folder(out)
    for name, (_, data) in written.items():
        write_json(out / name, data)
    typed = [data["annotations"] for key, data in written.values() if key == "annotations"]
    vocabulary = AnswerVocabulary.build(train, typed, min_count=min_answer_count)
    vocabulary.save(out / "answer_vocab.json")
    texts = [q["question"] for q in written["vqa_train_questions.json"][1]["questions"]]
    words = Vocabulary.build(texts, min_count=min_word_count, max_length=max_length)
    words.save(out / "question_vocab.json")
    for name, (key, data) in written.items():
        print(f"{out / name}: {len(data[key])} {key}")
    print(f"{out / 'answer_vocab.json'}: {len(vocabulary)} answers seen >= {min_answer_count} times in train")
    print(f"{out / 'question_vocab.json'}: {len(words)} words (incl. 4 specials) of the train questions")
    if files:
        link_images(links, out, len(files))
    if glove:
        write_question_glove(glove, words, out)
    return {"answers": vocabulary, "words": words}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_split_arguments(parser)
    parser.add_argument(
        "--answers",
        nargs=2,
        action="append",
        default=[],
        metavar=("NAME", "FILE"),
        help="a split's answers in a file of their own, matched to its questions by question_id",
    )
    parser.add_argument("--out", required=True, metavar="DIR", help="data folder the VQA DataModule reads")
    parser.add_argument(
        "--val-fraction",
        type=float,
        metavar="F",
        help="without a val split: hold out this fraction of the train images, with their questions, as val",
    )
    parser.add_argument(
        "--min-answer-count", type=int, default=9, help="answers seen in fewer train questions are dropped"
    )
    parser.add_argument(
        "--min-word-count", type=int, default=1, help="question words seen fewer times are <unk>"
    )
    parser.add_argument(
        "--max-length", type=int, default=14, help="questions are truncated to this many words"
    )
    parser.add_argument("--glove", metavar="TXT", help="glove.6B.300d.txt: write the question words' vectors")


def run(args: argparse.Namespace) -> int:
    try:
        prepare(
            [tuple(s) for s in args.split],
            args.out,
            [tuple(i) for i in args.images],
            [tuple(a) for a in args.answers],
            args.val_fraction,
            args.min_answer_count,
            args.min_word_count,
            args.max_length,
            args.glove,
        )
    except PrepareError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0
