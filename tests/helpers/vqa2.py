"""Small files in the official VQA v2 format (questions and annotations JSON), and `vqacap prepare vqa2` on them."""

from __future__ import annotations

import json
from pathlib import Path

from vqacap.cli import main

# (question_id, image_id, question, question_type, answer_type, ten human answers); multiple_choice_answer = the most
# common human answer, as in the official files.
TRAIN = [
    (90, 9, "Is the dog brown?", "is the", "yes/no", ["yes"] * 9 + ["no"]),
    (91, 9, "How many dogs are there?", "how many", "number", ["two"] * 6 + ["2"] * 4),
    (250, 25, "What color is the cat?", "what color is the", "other", ["red"] * 8 + ["orange"] * 2),
    (251, 25, "Is it raining?", "is it", "yes/no", ["no"] * 10),
]
VAL = [
    (300, 30, "How many zebras?", "how many", "number", ["2"] * 7 + ["3"] * 3),
    (
        301,
        30,
        "What color is the zebra?",
        "what color is the",
        "other",
        ["red"] * 6 + ["black and white"] * 4,
    ),
    (302, 30, "Is it sunny?", "is it", "yes/no", ["yes"] * 10),
]
TEST_DEV = [(420, 42, "What is the giraffe eating?")]
TEST = [(420, 42, "What is the giraffe eating?"), (421, 42, "Is the giraffe tall?")]


def questions_json(subtype: str, rows) -> dict:
    return {
        "info": {"description": "This is v2.0 of the VQA dataset.", "version": "2.0", "year": 2017},
        "task_type": "Open-Ended",
        "data_type": "mscoco",
        "license": {
            "url": "http://creativecommons.org/licenses/by/4.0/",
            "name": "Creative Commons Attribution 4.0",
        },
        "data_subtype": subtype,
        "questions": [{"image_id": r[1], "question": r[2], "question_id": r[0]} for r in rows],
    }


def annotations_json(subtype: str, rows) -> dict:
    annotations = []
    for qid, image_id, _, qtype, atype, answers in rows:
        annotations.append(
            {
                "question_type": qtype,
                "multiple_choice_answer": max(set(answers), key=answers.count),
                "answers": [
                    {"answer": a, "answer_confidence": "yes", "answer_id": i + 1}
                    for i, a in enumerate(answers)
                ],
                "image_id": image_id,
                "answer_type": atype,
                "question_id": qid,
            }
        )
    return {
        "info": {"description": "This is v2.0 of the VQA dataset.", "version": "2.0", "year": 2017},
        "license": {
            "url": "http://creativecommons.org/licenses/by/4.0/",
            "name": "Creative Commons Attribution 4.0",
        },
        "data_subtype": subtype,
        "annotations": annotations,
        "data_type": "mscoco",
    }


def write_official(folder: Path) -> dict[str, Path]:
    """The official VQA v2 files of TRAIN, VAL, TEST_DEV and TEST in folder, under their official names; key -> path."""
    files = {  # key -> (official file name, content)
        "train2014": ("v2_OpenEnded_mscoco_train2014_questions.json", questions_json("train2014", TRAIN)),
        "val2014": ("v2_OpenEnded_mscoco_val2014_questions.json", questions_json("val2014", VAL)),
        "test-dev2015": (
            "v2_OpenEnded_mscoco_test-dev2015_questions.json",
            questions_json("test-dev2015", TEST_DEV),
        ),
        "test2015": ("v2_OpenEnded_mscoco_test2015_questions.json", questions_json("test2015", TEST)),
        "train_ann": ("v2_mscoco_train2014_annotations.json", annotations_json("train2014", TRAIN)),
        "val_ann": ("v2_mscoco_val2014_annotations.json", annotations_json("val2014", VAL)),
    }
    for name, data in files.values():
        (folder / name).write_text(json.dumps(data))
    return {key: folder / name for key, (name, _) in files.items()}


def prepare_vqa2(questions: list[Path], annotations: list[Path], out: Path, *extra: str) -> int:
    """`vqacap prepare vqa2` on these files; its exit code."""
    files = ["--questions", *map(str, questions), "--annotations", *map(str, annotations)]
    return main(["prepare", "vqa2", *files, "--out", str(out), *extra])


def run_prepare(official, out, *extra) -> int:
    questions = [official[s] for s in ("test2015", "train2014", "test-dev2015", "val2014")]  # any order
    annotations = [official["val_ann"], official["train_ann"]]
    return prepare_vqa2(questions, annotations, out, "--min-answer-count", "2", *extra)
