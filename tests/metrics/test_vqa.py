"""Official VQA answer normalisation, accuracy, soft scores (vqacap.data.answers), the Metric and the evaluator command
(vqacap.metrics.vqa)."""

from __future__ import annotations

import argparse
import json

import pytest
import torch

from vqacap.data.answers import (
    answer_accuracy,
    gt_answer_indices,
    process_answer,
    process_digit_article,
    process_punctuation,
    soft_scores,
)
from vqacap.data.formats import FormatError
from vqacap.metrics.vqa.cli import add_arguments, run
from vqacap.metrics.vqa.evaluation import evaluate_vqa
from vqacap.metrics.vqa.metric import VQAAccuracy, batch_accuracy

# (raw answer, expected process_answer), each derived by hand from the rules of vqaEval.py.
NORMALISATION = [
    ("Two", "2"),  # number word, case-insensitive
    ("none", "0"),
    ("ten", "10"),
    ("eleven", "eleven"),  # the table stops at ten
    ("a dog.", "dog"),  # article dropped, trailing period removed
    ("The Dog", "dog"),
    ("an apple", "apple"),
    ("a", ""),  # only an article
    ("dont", "don't"),  # contraction without apostrophe
    ("isnt", "isn't"),
    ("Im", "im"),  # the table's "Im" key can never match: words are lowercased first
    ("don't", "don't"),  # apostrophe is not in the punctuation list
    ("1,000", "1000"),  # digit-comma-digit: all punctuation deleted, not spaced
    ("1,000, 2", "1000 2"),
    ("3.5", "3.5"),  # period followed by a digit stays
    ("3.5.", "3.5"),
    ("yes!", "yes"),  # '!' replaced by a space, then whitespace collapsed
    ("yes !", "yes"),
    ("yes.", "yes"),
    ("what?", "what"),
    ("t-shirt", "t shirt"),  # mark between letters becomes a space
    ("t - shirt", "t shirt"),  # mark touching a space is deleted
    ("black/white", "black white"),
    ("black / white", "black white"),
    ("left,right", "left right"),
    ("left, right", "left right"),
    ("10:30", "10:30"),  # colon is not in the current list
    ("a.m.", "am"),
    ("  Yes  ", "yes"),
    ("red\tand\nblue", "red and blue"),
    ("(2)", "2"),
    ('"hi"', "hi"),
    ("two dogs", "2 dogs"),
    ("the one", "1"),
]


@pytest.mark.parametrize(("raw", "expected"), NORMALISATION)
def test_process_answer_follows_official_rules(raw, expected):
    assert process_answer(raw) == expected


@pytest.mark.parametrize(("raw", "_"), NORMALISATION)
def test_process_answer_is_idempotent(raw, _):
    once = process_answer(raw)
    assert process_answer(once) == once


def test_process_punctuation_and_digit_article_separately():
    assert process_punctuation("yes!") == "yes "
    assert process_punctuation("t - shirt") == "t  shirt"
    assert process_punctuation("1,000") == "1000"
    assert process_digit_article("A Two  dont") == "2 don't"


def test_at_most_32_periods_are_removed():
    # The evaluator passes re.UNICODE (32) as the count argument of re.sub.
    assert process_punctuation("." * 40 + "x") == "." * 8 + "x"


NET = ["net"] * 6 + ["netting", "mesh", "pitcher", "orange"]
PITCHER = ["pitcher"] * 9 + ["catcher"]


@pytest.mark.parametrize(
    ("prediction", "answers", "expected"),
    [
        ("net", NET, 1.0),
        ("netting", NET, 0.3),
        ("mesh", NET, 0.3),
        ("ball", NET, 0.0),
        ("pitcher", PITCHER, 1.0),
        ("catcher", PITCHER, 0.3),
        ("Net.", NET, 1.0),  # normalised: the human answers differ
        ("x", ["x", "x"] + ["y"] * 8, 0.6),
        ("x", ["x"] * 3 + ["y"] * 7, 0.9),
        ("x", ["x"] * 4 + ["y"] * 6, 1.0),
        ("two", ["2"] * 5 + ["3"] * 5, 1.0),
        ("2", ["two"] * 5 + ["3"] * 5, 1.0),
    ],
)
def test_answer_accuracy(prediction, answers, expected):
    assert answer_accuracy(prediction, answers) == pytest.approx(expected)


def test_identical_answers_are_not_normalised():
    # Current vqaEval.py normalises only when the 10 human answers are not all identical.
    assert answer_accuracy("yes", ["yes"] * 10) == 1.0
    assert answer_accuracy("Yes", ["yes"] * 10) == 0.0
    assert answer_accuracy(" yes\n", ["yes"] * 10) == 1.0  # cleaning of whitespace always applies
    assert answer_accuracy("dog", ["a dog"] * 10) == 0.0
    assert answer_accuracy("dog", ["a dog"] * 9 + ["dog"]) == 1.0


def test_soft_scores_are_official_accuracy_of_each_candidate():
    vocab = {"net": 0, "netting": 1, "mesh": 2, "pitcher": 3, "catcher": 4, "ball": 5}
    indices, scores = soft_scores(NET, vocab)
    assert indices == [0, 1, 2, 3]
    assert scores == pytest.approx([1.0, 0.3, 0.3, 0.3])
    for index, score in zip(indices, scores):
        answer = next(a for a, i in vocab.items() if i == index)
        assert score == answer_accuracy(answer, NET)
    assert soft_scores(PITCHER, vocab) == ([3, 4], pytest.approx([1.0, 0.3]))
    counts = [["x"] * k + ["y"] * (10 - k) for k in range(1, 6)]
    assert [soft_scores(a, {"x": 0})[1][0] for a in counts] == pytest.approx([0.3, 0.6, 0.9, 1.0, 1.0])
    assert soft_scores(["Two", "2", "two dogs"] + ["z"] * 7, {"2": 0, "2 dogs": 1}) == (
        [0, 1],
        pytest.approx([0.6, 0.3]),
    )
    assert soft_scores(["unknown"] * 10, {"x": 0}) == ([], [])


# ---------------------------------------------------------------------------------------------------------------------
# Small annotation set with known accuracies


def _answers(*answers):
    return [{"answer": a, "answer_confidence": "yes", "answer_id": i + 1} for i, a in enumerate(answers)]


ANNOTATIONS = {
    "annotations": [
        {"question_id": 1, "image_id": 10, "question_type": "what is the", "answer_type": "other",
         "multiple_choice_answer": "net", "answers": _answers(*NET)},
        {"question_id": 2, "image_id": 10, "question_type": "who is", "answer_type": "other",
         "multiple_choice_answer": "pitcher", "answers": _answers(*PITCHER)},
        {"question_id": 3, "image_id": 11, "question_type": "is the", "answer_type": "yes/no",
         "multiple_choice_answer": "yes", "answers": _answers(*["yes"] * 10)},
        {"question_id": 4, "image_id": 11, "question_type": "how many", "answer_type": "number",
         "multiple_choice_answer": "2", "answers": _answers(*(["2"] * 2 + ["two"] * 2 + ["3"] * 6))},
    ]
}  # fmt: skip
QUESTIONS = {
    "questions": [
        {"image_id": 10, "question": "What is the net?", "question_id": 1},
        {"image_id": 10, "question": "Who is throwing?", "question_id": 2},
        {"image_id": 11, "question": "Is the sky blue?", "question_id": 3},
        {"image_id": 11, "question": "How many dogs?", "question_id": 4},
    ]
}
RESULTS = [
    {"question_id": 1, "answer": "netting"},  # 0.3
    {"question_id": 2, "answer": "pitcher"},  # 1.0
    {"question_id": 3, "answer": "no"},  # 0.0
    {"question_id": 4, "answer": "2"},  # "2" x2 and "two" x2 are the same after normalisation: 1.0
]
EXPECTED = {
    "overall": 100 * (0.3 + 1.0 + 0.0 + 1.0) / 4,
    "perAnswerType": {"other": 65.0, "yes/no": 0.0, "number": 100.0},
    "perQuestionType": {"what is the": 30.0, "who is": 100.0, "is the": 0.0, "how many": 100.0},
}


def _check(scores, expected=EXPECTED):
    assert set(scores) == {"overall", "perAnswerType", "perQuestionType"}
    assert float(scores["overall"]) == pytest.approx(expected["overall"], abs=1e-9)
    for key in ("perAnswerType", "perQuestionType"):
        assert {k: float(v) for k, v in scores[key].items()} == pytest.approx(expected[key], abs=1e-9)


def test_evaluate_vqa_on_loaded_objects():
    _check(evaluate_vqa(QUESTIONS, ANNOTATIONS, RESULTS))


@pytest.fixture
def vqa_files(tmp_path):
    paths = {}
    for name, data in (("questions", QUESTIONS), ("annotations", ANNOTATIONS), ("results", RESULTS)):
        paths[name] = tmp_path / f"{name}.json"
        paths[name].write_text(json.dumps(data))
    return paths


def _run_cli(argv):
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return run(parser.parse_args(argv))


def test_cli_prints_official_report(vqa_files, capsys):
    rc = _run_cli(["--questions", str(vqa_files["questions"]), "--annotations", str(vqa_files["annotations"]),
                   "--results", str(vqa_files["results"])])  # fmt: skip
    out = capsys.readouterr().out
    assert rc == 0
    assert "Overall Accuracy is: 57.50" in out
    assert "yes/no : 0.00" in out and "other : 65.00" in out
    assert "what is the : 30.00" in out and "how many : 100.00" in out


def test_cli_json(vqa_files, capsys):
    rc = _run_cli(["--questions", str(vqa_files["questions"]), "--annotations", str(vqa_files["annotations"]),
                   "--results", str(vqa_files["results"]), "--json"])  # fmt: skip
    assert rc == 0
    _check(json.loads(capsys.readouterr().out))


def test_cli_refuses_results_that_do_not_match_annotations(tmp_path, vqa_files, capsys):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(RESULTS[:2] + [{"question_id": 99, "answer": "yes"}]))
    rc = _run_cli(["--questions", str(vqa_files["questions"]), "--annotations", str(vqa_files["annotations"]),
                   "--results", str(bad)])  # fmt: skip
    err = capsys.readouterr().err.strip()
    assert rc == 2
    assert len(err.splitlines()) == 1
    assert str(bad) in err and "2 of 4 annotated questions have no result" in err and "1 of 3 results" in err


def test_wrong_kind_of_file_is_named(vqa_files):
    with pytest.raises(
        FormatError, match=rf"{vqa_files['questions']}: not a VQA annotations file.*questions file"
    ):
        evaluate_vqa(vqa_files["questions"], vqa_files["questions"], vqa_files["results"])
    with pytest.raises(FormatError, match=rf"{vqa_files['annotations']}: a results file is a JSON list"):
        evaluate_vqa(vqa_files["questions"], vqa_files["annotations"], vqa_files["annotations"])
    with pytest.raises(FormatError, match="missing.json: questions file not found"):
        evaluate_vqa(
            vqa_files["questions"].parent / "missing.json", vqa_files["annotations"], vqa_files["results"]
        )


def test_duplicate_results_are_refused():
    with pytest.raises(FormatError, match="1 results repeat a question id"):
        evaluate_vqa(QUESTIONS, ANNOTATIONS, RESULTS + [RESULTS[0]])


def test_vqacap_evaluate_vqa_dispatches_here(vqa_files, capsys):
    from vqacap.evaluate import main

    paths = [str(vqa_files[k]) for k in ("questions", "annotations", "results")]
    argv = ["vqa", "--questions", paths[0], "--annotations", paths[1], "--results", paths[2], "--json"]
    assert main(argv) == 0
    _check(json.loads(capsys.readouterr().out))


# ---------------------------------------------------------------------------------------------------------------------
# Metric


def test_batch_accuracy_equals_answer_accuracy():
    vocab = {"net": 0, "netting": 1, "mesh": 2, "pitcher": 3, "catcher": 4, "ball": 5, "dog": 6, "yes": 7}
    questions = [NET, PITCHER, ["a dog"] * 10, ["a dog"] * 9 + ["dog"], ["yes"] * 10]
    gt = torch.tensor([gt_answer_indices(q, vocab) for q in questions])  # (5, 10)
    assert gt[2].tolist() == [-1] * 10  # identical raw answers are compared raw: "a dog" is no candidate
    for answer, index in vocab.items():
        pred = torch.full((len(questions),), index)
        expected = [answer_accuracy(answer, q) for q in questions]
        assert batch_accuracy(pred, gt).tolist() == pytest.approx(expected, abs=1e-12)


def test_metric_with_repeated_questions_equals_evaluator():
    answer_types = ["number", "other", "yes/no"]
    question_types = ["how many", "is the", "what is the", "who is", "what color"]
    vocab = {"netting": 0, "pitcher": 1, "no": 2, "2": 3}
    metric = VQAAccuracy(answer_types, question_types)

    def batch(rows):
        anns = [ANNOTATIONS["annotations"][r] for r in rows]
        return (
            torch.tensor([vocab[RESULTS[r]["answer"]] for r in rows]),
            torch.tensor([gt_answer_indices([a["answer"] for a in ann["answers"]], vocab) for ann in anns]),
            torch.tensor([ann["question_id"] for ann in anns]),
            torch.tensor([answer_types.index(ann["answer_type"]) for ann in anns]),
            torch.tensor([question_types.index(ann["question_type"]) for ann in anns]),
        )

    # As a DistributedSampler would feed two ranks: every question once, questions 1 and 3 again as padding.
    metric.update(*batch([0, 1, 2]))
    metric.update(*batch([3, 0]))
    metric.update(*batch([2]))
    scores = metric.compute()
    _check(scores)
    assert "what color" not in scores["perQuestionType"]


def test_present_only_scores_the_answered_questions_and_says_how_many(tmp_path, vqa_files, capsys):
    part = tmp_path / "part.json"
    part.write_text(json.dumps(RESULTS[:2]))
    common = ["--questions", str(vqa_files["questions"]), "--annotations", str(vqa_files["annotations"])]
    assert _run_cli([*common, "--results", str(part)]) == 2
    assert capsys.readouterr().err.strip().endswith("(--present-only scores the questions that have one)")
    assert _run_cli([*common, "--results", str(part), "--present-only"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[:2] == ["Scored 2 of 4 annotated questions (--present-only)", "Overall Accuracy is: 65.00"]
    assert _run_cli([*common, "--results", str(part), "--present-only", "--json"]) == 0
    scores = json.loads(capsys.readouterr().out)
    assert scores["questions"] == {"scored": 2, "annotated": 4} and scores["overall"] == 100 * (0.3 + 1.0) / 2
    extra = tmp_path / "extra.json"
    extra.write_text(json.dumps(RESULTS[:2] + [{"question_id": 99, "answer": "yes"}]))
    assert _run_cli([*common, "--results", str(extra), "--present-only"]) == 2  # still refused: not annotated
