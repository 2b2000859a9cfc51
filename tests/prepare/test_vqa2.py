"""`vqacap prepare vqa2` on small files in the official VQA v2 format, read back through the VQA DataModule."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.helpers.vqa2 import TRAIN, annotations_json, prepare_vqa2, questions_json, run_prepare
from vqacap.data.store import RegionStoreWriter
from vqacap.data.vocab import Vocabulary
from vqacap.data.vqa import AnswerVocabulary, VQADataModule, load_glove


def test_every_split_is_written_in_the_official_format(official, tmp_path):
    out = tmp_path / "vqa2"
    assert run_prepare(official, out) == 0
    names = sorted(p.name for p in out.iterdir())
    assert names == [
        "answer_vocab.json",
        "question_vocab.json",
        "vqa_test_questions.json",
        "vqa_testdev_questions.json",
        "vqa_train_annotations.json",
        "vqa_train_questions.json",
        "vqa_trainval_annotations.json",
        "vqa_trainval_questions.json",
        "vqa_val_annotations.json",
        "vqa_val_questions.json",
    ]
    assert json.loads((out / "vqa_train_questions.json").read_text()) == questions_json("train2014", TRAIN)
    trainval = json.loads((out / "vqa_trainval_annotations.json").read_text())
    assert trainval["data_subtype"] == "train2014+val2014" and trainval["license"]["name"].startswith(
        "Creative"
    )
    assert [a["question_id"] for a in trainval["annotations"]] == [90, 91, 250, 251, 300, 301, 302]
    assert [
        q["question_id"] for q in json.loads((out / "vqa_test_questions.json").read_text())["questions"]
    ] == [420, 421]


def test_answer_vocabulary_counts_normalised_answers_of_train_and_val(official, tmp_path):
    out = tmp_path / "vqa2"
    run_prepare(official, out)
    answers = AnswerVocabulary.load(out / "answer_vocab.json")
    # multiple_choice_answer over train+val: yes 2, two -> "2" 2, red 2, no 1 (dropped at --min-answer-count 2).
    assert answers.answers == ["2", "red", "yes"]
    assert answers.answer_types == ["number", "other", "yes/no"]
    assert "what color is the" in answers.question_types
    words = Vocabulary.load(out / "question_vocab.json")
    assert "zebras" in words.index and words.max_length == 14

    # Every train answer occurs once: at --min-answer-count 2 no answer is left, which is refused, nothing rewritten.
    assert run_prepare(official, out, "--vocab-from", "train") == 2
    assert AnswerVocabulary.load(out / "answer_vocab.json").answers == ["2", "red", "yes"]
    assert run_prepare(official, out, "--vocab-from", "train", "--min-answer-count", "1") == 0
    assert "zebras" not in Vocabulary.load(out / "question_vocab.json").index


def test_output_loads_in_the_vqa_datamodule(official, tmp_path):
    out = tmp_path / "vqa2"
    run_prepare(official, out)
    with RegionStoreWriter(out / "regions.h5", feature_dim=8) as writer:
        for image_id in (9, 25, 30, 42):
            writer.add(image_id, np.ones((4, 8), np.float32), np.array([[0, 0, 10, 10]] * 4), 64, 48)
    data = VQADataModule(str(out), batch_size=4)
    data.prepare_data()
    data.setup()
    batch = next(iter(data.train_dataloader()))
    assert batch.targets.shape == (4, 3) and batch.regions.features.shape == (4, 4, 8)
    test = next(iter(data.test_dataloader()))
    assert test.targets is None and sorted(test.question_ids.tolist()) == [420, 421]


def test_glove_subset_holds_the_question_words(official, tmp_path):
    rng = np.random.default_rng(0)
    glove = tmp_path / "glove.6B.300d.txt"
    lines = [
        " ".join([w, *(f"{v:.5f}" for v in rng.normal(size=300))])
        for w in ("the", "zebra", "dog", "aardvark")
    ]
    glove.write_text("\n".join(lines) + "\n")
    out = tmp_path / "vqa2"
    assert run_prepare(official, out, "--glove", str(glove)) == 0
    subset = (out / "glove_question_vocab.txt").read_text().splitlines()
    assert [line.split(" ")[0] for line in subset] == ["the", "zebra", "dog"]  # in GloVe order, no aardvark
    words = Vocabulary.load(out / "question_vocab.json").words
    vectors = load_glove(out / "glove_question_vocab.txt", words)
    assert vectors.shape == (len(words), 300) and vectors[words.index("dog")].abs().sum() > 0


def test_questions_given_as_annotations_name_the_file(official, tmp_path, capsys):
    code = prepare_vqa2([official["train2014"]], [official["val2014"]], tmp_path / "o")
    assert code == 2
    assert capsys.readouterr().err.strip() == (
        f"error: {official['val2014']}: is a VQA questions file, given where a annotations file is expected"
    )


def test_missing_fields_and_unanswered_questions_name_the_question(official, tmp_path, capsys):
    data = annotations_json("train2014", TRAIN)
    del data["annotations"][2]["multiple_choice_answer"]
    official["train_ann"].write_text(json.dumps(data))
    assert run_prepare(official, tmp_path / "o") == 2
    assert capsys.readouterr().err.strip() == (
        f"error: {official['train_ann']}: question 250 lacks multiple_choice_answer"
    )

    data = annotations_json("train2014", TRAIN[:3])
    official["train_ann"].write_text(json.dumps(data))
    assert run_prepare(official, tmp_path / "o") == 2
    assert capsys.readouterr().err.strip() == (
        f"error: {official['train_ann']}: no annotation for question 251 of {official['train2014']}"
    )


def test_test_annotations_are_refused(official, tmp_path, capsys):
    fake = tmp_path / "v2_mscoco_test2015_annotations.json"
    fake.write_text(json.dumps(annotations_json("test2015", [])))
    code = prepare_vqa2([official["train2014"]], [official["train_ann"], fake], tmp_path / "o")
    assert code == 2
    assert "test has no public annotations" in capsys.readouterr().err


@pytest.mark.parametrize(
    "key, change, message",
    [
        ("train2014", lambda d: d["questions"][1].update(question=7), "question 91 (questions[1]): question is 7, not a string"),
        ("train_ann", lambda d: d["annotations"][0]["answers"][3].update(answer=None), "question 90 (annotations[0]): answers[3] is"),
        ("train_ann", lambda d: d["annotations"][2].update(multiple_choice_answer=None),
         "question 250 (annotations[2]): multiple_choice_answer is None, not a string"),
        ("val2014", lambda d: d["questions"][0].update(image_id="abc"), "image_id is 'abc', not an integer"),
    ],
    ids=["int_question", "null_answer", "null_multiple_choice_answer", "image_id_abc"],
)  # fmt: skip
def test_malformed_records_are_one_line_errors_naming_the_question(
    official, tmp_path, capsys, key, change, message
):
    data = json.loads(official[key].read_text())
    change(data)
    official[key].write_text(json.dumps(data))
    assert run_prepare(official, tmp_path / "o") == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {official[key]}: ") and message in err and err.count("\n") == 1, err


def test_an_out_folder_that_cannot_be_created_is_one_line(official, tmp_path, capsys):
    (tmp_path / "file").write_text("a file, not a folder")
    assert run_prepare(official, tmp_path / "file" / "o") == 2
    assert (
        capsys.readouterr().err.strip().startswith(f"error: {tmp_path / 'file' / 'o'}: cannot write here (")
    )


BLANK = [
    (
        92,
        9,
        " \u200b ",
        "what color is the",
        "other",
        ["dog"] * 10,
    ),  # a question of spaces and a zero-width space
    (
        93,
        9,
        "What is this?",
        "what color is the",
        "other",
        [""] * 6 + ["."] * 4,
    ),  # no answer, once normalised
    (
        94,
        9,
        "What is it?",
        "what color is the",
        "other",
        ["red"] * 7 + [" "] * 3,
    ),  # kept: three blank human answers
]


def test_blank_questions_and_answers_are_skipped_with_counts(official, tmp_path, capsys):
    """A generative model trained on empty answers learns to answer "", which the official metric rewards where the
    references are empty."""
    official["train2014"].write_text(json.dumps(questions_json("train2014", TRAIN + BLANK)))
    official["train_ann"].write_text(json.dumps(annotations_json("train2014", TRAIN + BLANK)))
    out = tmp_path / "vqa2"
    assert run_prepare(official, out) == 0
    assert (
        f"{official['train2014']}: skipped 1 questions with blank questions; skipped 1 questions with blank answers; "
        "3 blank human answers kept (the official accuracy scores them)"
    ) in capsys.readouterr().out.splitlines()
    kept = [q["question_id"] for q in json.loads((out / "vqa_train_questions.json").read_text())["questions"]]
    annotated = json.loads((out / "vqa_train_annotations.json").read_text())["annotations"]
    assert kept == [90, 91, 250, 251, 94] and [a["question_id"] for a in annotated] == kept
    assert "" not in AnswerVocabulary.load(out / "answer_vocab.json").answers


def test_the_datamodule_skips_blank_questions_and_answers_with_counts(official, tmp_path, caplog):
    out = tmp_path / "vqa2"
    assert run_prepare(official, out) == 0
    for name, make in (
        ("questions", questions_json),
        ("annotations", annotations_json),
    ):  # as another tool wrote them
        (out / f"vqa_train_{name}.json").write_text(json.dumps(make("train2014", TRAIN + BLANK)))
    with RegionStoreWriter(out / "regions.h5", feature_dim=8) as writer:
        for image_id in (9, 25, 30, 42):
            writer.add(image_id, np.ones((4, 8), np.float32), np.array([[0, 0, 10, 10]] * 4), 64, 48)
    data = VQADataModule(str(out), batch_size=8)
    data.prepare_data()
    data.setup()
    assert data.load_split("train").question_ids.tolist() == [90, 91, 250, 251, 94]
    assert any(
        "skipped 1 questions with blank questions; skipped 1 questions with blank answers" in r.message
        for r in caplog.records
    )
