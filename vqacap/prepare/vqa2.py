"""`vqacap prepare vqa2`: official VQA v2 files -> the files `vqacap.data.vqa.VQADataModule` reads.

Input: the official questions files (v2_OpenEnded_mscoco_{train2014,val2014,test-dev2015,test2015}_questions.json) and
annotation files (v2_mscoco_{train2014,val2014}_annotations.json), in any order; each file's split is read from its
`data_subtype` (or, failing that, its name).

Output in DIR (official format, all top-level fields kept):
    vqa_{train,val,trainval}_questions.json     train2014, val2014, and the two merged (train on train+val)
    vqa_{train,val,trainval}_annotations.json
    vqa_testdev_questions.json                  test-dev2015 (answered for the test-dev server, never scored here)
    vqa_test_questions.json                     test2015, i.e. test-std
    answer_vocab.json                           candidate answers: `process_answer`-normalised multiple_choice_answer
                                                seen in >= --min-answer-count (9) questions of train+val (3129 on VQA
                                                v2), or of train alone with --vocab-from train
    question_vocab.json                         words of the same questions (count >= --min-word-count)
    glove_question_vocab.txt                    with --glove: the GloVe lines of the question words, a small file the
                                                DataModule's `glove` option loads in a moment

The DataModule defaults read train / val / test; to train on train+val and answer test-dev, point its `questions` and
`annotations` at the trainval and testdev files and set `test_split`. Answer normalisation, the answer vocabulary and
the GloVe reader are those of `vqacap.data.answers` and `vqacap.data.vqa`. Rerunning rewrites identical files.
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path

from vqacap.data.answers import process_answer
from vqacap.data.formats import FormatError, load_vqa_annotations, load_vqa_questions
from vqacap.data.vocab import Vocabulary
from vqacap.data.vqa import AnswerVocabulary, blank_report, load_glove, without_blank
from vqacap.prepare.common import PrepareError, output_folder, read_json, write_json

# data_subtype of the official files -> split name in DIR.
SUBTYPES = {"train2014": "train", "val2014": "val", "test-dev2015": "testdev", "test2015": "test"}
ANNOTATED = ("train", "val")
QUESTION_FIELDS = ("question_id", "image_id", "question")
ANNOTATION_FIELDS = (
    "question_id",
    "image_id",
    "question_type",
    "answer_type",
    "answers",
    "multiple_choice_answer",
)


def split_of(path: str | Path, data: dict) -> str:
    subtype = data.get("data_subtype")
    if subtype in SUBTYPES:
        return SUBTYPES[subtype]
    # Longest names first: "test-dev2015" contains no "test2015", but check it before "test" anyway.
    for name in sorted(SUBTYPES, key=len, reverse=True):
        if name in Path(path).name:
            return SUBTYPES[name]
    raise PrepareError(
        f"{path}: cannot tell the split (data_subtype {subtype!r}); expected one of {', '.join(SUBTYPES)}"
    )


def load_official(path: str | Path, key: str) -> tuple[dict, list[dict]]:
    """The whole JSON and its checked records; `key` is "questions" or "annotations"."""
    data = read_json(path)
    other = "annotations" if key == "questions" else "questions"
    if isinstance(data, dict) and key not in data and other in data:
        raise PrepareError(f"{path}: is a VQA {other} file, given where a {key} file is expected")
    fields = QUESTION_FIELDS if key == "questions" else ANNOTATION_FIELDS
    records = data.get(key) if isinstance(data, dict) else None
    for n, record in enumerate(records if isinstance(records, list) else []):
        missing = [f for f in fields if not isinstance(record, dict) or f not in record]
        if missing:
            which = f"question {record['question_id']}" if "question_id" not in missing else f"{key}[{n}]"
            raise PrepareError(f"{path}: {which} lacks {', '.join(missing)}")
        problem = _record_problem(record)
        if problem:
            raise PrepareError(f"{path}: question {record['question_id']!r:.40} ({key}[{n}]): {problem}")
    try:  # the metric's own checks (the kind of file, the answers lists)
        records = (load_vqa_questions if key == "questions" else load_vqa_annotations)(data)
    except FormatError as err:
        raise PrepareError(str(err).replace(f"<{key}>", str(path))) from None
    return data, records


# The official files' types; a record of another shape would fail deep in the vocabularies or the metric.
_INTEGER_FIELDS = ("question_id", "image_id")
_STRING_FIELDS = ("question", "question_type", "answer_type", "multiple_choice_answer")


def _record_problem(record: dict) -> str | None:
    for name in _INTEGER_FIELDS:
        if not isinstance(record[name], int) or isinstance(record[name], bool):
            return f"{name} is {record[name]!r:.40}, not an integer"
    for name in _STRING_FIELDS:
        if name in record and not isinstance(record[name], str):
            return f"{name} is {record[name]!r:.40}, not a string"
    answers = record.get("answers", [])
    if not isinstance(answers, list):
        return f"answers is {answers!r:.40}, not a list"
    for j, answer in enumerate(answers):
        if not isinstance(answer, dict) or not isinstance(answer.get("answer"), str):
            return f"answers[{j}] is {answer!r:.60}, not a record with a string 'answer'"
    return None


def check_pairing(
    questions_path: str, questions: list[dict], annotations_path: str, annotations: list[dict]
) -> None:
    """Every question has exactly one annotation about the same image, and the other way round."""
    by_id = {}
    for ann in annotations:
        if ann["question_id"] in by_id:
            raise PrepareError(f"{annotations_path}: question {ann['question_id']} is annotated twice")
        by_id[ann["question_id"]] = ann
    asked = set()
    for q in questions:
        qid = q["question_id"]
        if qid in asked:
            raise PrepareError(f"{questions_path}: question {qid} appears twice")
        asked.add(qid)
        ann = by_id.get(qid)
        if ann is None:
            raise PrepareError(f"{annotations_path}: no annotation for question {qid} of {questions_path}")
        if ann["image_id"] != q["image_id"]:
            raise PrepareError(
                f"{annotations_path}: question {qid} is about image {ann['image_id']} here, "
                f"image {q['image_id']} in {questions_path}"
            )
    extra = [qid for qid in by_id if qid not in asked]
    if extra:
        raise PrepareError(
            f"{annotations_path}: question {extra[0]} is annotated but not in {questions_path}"
        )


def prepare(
    question_files: list[str],
    annotation_files: list[str],
    out: str | Path,
    glove: str | None = None,
    min_answer_count: int = 9,
    min_word_count: int = 1,
    max_length: int = 14,
    vocab_from: str | None = None,
) -> dict:
    questions: dict[str, tuple[str, dict]] = {}
    annotations: dict[str, tuple[str, dict]] = {}
    for files, key, found in (
        (question_files, "questions", questions),
        (annotation_files, "annotations", annotations),
    ):
        for path in files:
            data, _ = load_official(path, key)
            split = split_of(path, data)
            if split in found:
                raise PrepareError(f"{path}: a second {split} {key} file (the first is {found[split][0]})")
            if key == "annotations" and split not in ANNOTATED:
                raise PrepareError(f"{path}: {split} has no public annotations; is this the right file?")
            found[split] = (str(path), data)
    if "train" not in questions or "train" not in annotations:
        raise PrepareError("the train2014 questions and annotations files are needed (for the vocabularies)")
    for split in annotations:
        if split not in questions:
            raise PrepareError(
                f"{annotations[split][0]}: annotations for {split} but no {split} questions file"
            )
    for split in ANNOTATED:
        if split in questions:
            if split not in annotations:
                raise PrepareError(
                    f"{questions[split][0]}: {split} questions given without their annotations file"
                )
            (q_path, q_data), (a_path, a_data) = questions[split], annotations[split]
            check_pairing(q_path, q_data["questions"], a_path, a_data["annotations"])

    for split in ANNOTATED:  # blank questions and answers: nothing to learn or score from
        if split in questions:
            (q_path, q_data), (a_path, a_data) = questions[split], annotations[split]
            kept, kept_annotations, counts = without_blank(q_data["questions"], a_data["annotations"])
            questions[split] = (q_path, {**q_data, "questions": kept})
            annotations[split] = (a_path, {**a_data, "annotations": kept_annotations})
            if report := blank_report(q_path, counts):
                print(report)
    if "val" in questions:
        questions["trainval"] = ("train+val", _merge(questions["train"][1], questions["val"][1], "questions"))
        annotations["trainval"] = (
            "train+val",
            _merge(annotations["train"][1], annotations["val"][1], "annotations"),
        )
    vocab_from = vocab_from or ("trainval" if "val" in questions else "train")
    if vocab_from not in questions:
        raise PrepareError(f"--vocab-from {vocab_from} needs the val2014 files too")

    out = output_folder(out)
    written = {}
    for split, (_, data) in questions.items():
        written[f"vqa_{split}_questions.json"] = data
    for split, (_, data) in annotations.items():
        written[f"vqa_{split}_annotations.json"] = data
    check_answer_count(annotations[vocab_from][1]["annotations"], min_answer_count, vocab_from)
    for name, data in written.items():
        write_json(out / name, data)

    vocab_annotations = annotations[vocab_from][1]["annotations"]
    typed = [annotations[s][1]["annotations"] for s in ANNOTATED if s in annotations]
    answers = AnswerVocabulary.build(vocab_annotations, typed, min_count=min_answer_count)
    answers.save(out / "answer_vocab.json")
    texts = [q["question"] for q in questions[vocab_from][1]["questions"]]
    words = Vocabulary.build(texts, min_count=min_word_count, max_length=max_length)
    words.save(out / "question_vocab.json")

    for name, data in written.items():
        key = "questions" if name.endswith("_questions.json") else "annotations"
        print(f"{out / name}: {len(data[key])} {key}")
    print(
        f"{out / 'answer_vocab.json'}: {len(answers)} answers seen >= {min_answer_count} times in {vocab_from}"
    )
    print(
        f"{out / 'question_vocab.json'}: {len(words)} words (incl. 4 specials) of the {vocab_from} questions"
    )
    if glove:
        write_question_glove(glove, words, out)
    return {"answers": answers, "words": words}


def write_question_glove(glove: str | Path, words: Vocabulary, out: Path) -> None:
    """`glove_question_vocab.txt`: the GloVe vectors of the question words, reported in a line."""
    covered = write_glove_subset(glove, words.words, out / "glove_question_vocab.txt")
    print(
        f"{out / 'glove_question_vocab.txt'}: GloVe vectors for {covered} of {len(words) - 4} question words"
    )


def _merge(first: dict, second: dict, key: str) -> dict:
    merged = {k: v for k, v in first.items() if k != key}
    merged["data_subtype"] = (
        f"{first.get('data_subtype', 'train2014')}+{second.get('data_subtype', 'val2014')}"
    )
    merged[key] = first[key] + second[key]
    return merged


def write_glove_subset(glove: str | Path, words: list[str], out: Path) -> int:
    """Copy the lines of a glove.6B.<d>d.txt file whose word is in `words`; returns how many were found."""
    wanted = set(words)
    glove = Path(glove)
    found = 0
    dim = None
    tmp = out.with_name(out.name + ".tmp")
    try:
        with glove.open(encoding="utf8") as src, tmp.open("w", encoding="utf8") as dst:
            for line in src:
                word, _, vector = line.partition(" ")
                if dim is None:
                    dim = len(vector.split())
                if word in wanted:
                    dst.write(line)
                    found += 1
    except FileNotFoundError:
        raise PrepareError(f"{glove}: GloVe file not found (glove.6B.300d.txt from glove.6B.zip)") from None
    try:  # the DataModule's reader checks every copied line
        load_glove(tmp, words, dim or 300)
    except ValueError as err:
        tmp.unlink()
        raise PrepareError(str(err).replace(str(tmp), str(glove))) from None
    tmp.replace(out)
    return found


MIN_ANSWERS = 2  # a classifier needs two candidate answers to choose between


def check_answer_count(annotations: list[dict], min_answer_count: int, vocab_from: str) -> None:
    """Refuse, before writing anything, a vocabulary too small to train on; say what smaller thresholds would keep."""
    counts = Counter(process_answer(ann["multiple_choice_answer"]) for ann in annotations)
    counts.pop("", None)
    kept = sum(c >= min_answer_count for c in counts.values())
    if kept >= MIN_ANSWERS:
        return
    smaller = ", ".join(
        f"{m}: {sum(c >= m for c in counts.values())}" for m in range(min_answer_count - 1, 0, -1)
    )
    raise PrepareError(
        f"--min-answer-count {min_answer_count} keeps {kept} answers of the {vocab_from} questions (at least "
        f"{MIN_ANSWERS} needed); answers kept by a smaller --min-answer-count: {smaller or 'none'}"
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--questions",
        nargs="+",
        required=True,
        metavar="JSON",
        help="official questions files (train2014, val2014, test-dev2015, test2015)",
    )
    parser.add_argument(
        "--annotations",
        nargs="+",
        required=True,
        metavar="JSON",
        help="official annotation files (train2014, val2014)",
    )
    parser.add_argument("--out", required=True, metavar="DIR", help="data folder the VQA DataModule reads")
    parser.add_argument("--glove", metavar="TXT", help="glove.6B.300d.txt: write the question words' vectors")
    parser.add_argument(
        "--min-answer-count", type=int, default=9, help="answers seen in fewer questions are dropped"
    )
    parser.add_argument(
        "--min-word-count", type=int, default=1, help="question words seen fewer times are <unk>"
    )
    parser.add_argument(
        "--max-length", type=int, default=14, help="questions are truncated to this many words"
    )
    parser.add_argument(
        "--vocab-from",
        choices=("train", "trainval"),
        help="questions the vocabularies count (default: trainval when val is given)",
    )


def run(args: argparse.Namespace) -> int:
    try:
        prepare(
            args.questions,
            args.annotations,
            args.out,
            args.glove,
            args.min_answer_count,
            args.min_word_count,
            args.max_length,
            args.vocab_from,
        )
    except PrepareError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0
