"""The official VQA evaluator on result files: `evaluate_vqa` scores [{"question_id", "answer"}] against the questions
and annotations files exactly as GT-Vision-Lab/VQA's vqaEval.py does (the accuracy: vqacap.data.answers; the files:
vqacap.data.formats)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from vqacap.data.answers import answer_accuracy
from vqacap.data.formats import (
    FormatError,
    load_vqa_annotations,
    load_vqa_questions,
    load_vqa_results,
    source_name,
)


def evaluate_vqa(
    questions_json: Any, annotations_json: Any, results_json: Any, present_only: bool = False
) -> dict[str, Any]:
    """Score an official VQA results file; each argument is a path to the official JSON file or its loaded content.

    Returns {"overall": float, "perAnswerType": {type: float}, "perQuestionType": {type: float}} in percent, at full
    precision (the official evaluator rounds to 2 decimals). As the official evaluator, refuses results that do not
    answer exactly the annotated questions; raises `FormatError` with one line naming the file at fault.
    `present_only`: score only the annotated questions the results answer (a run on part of a split), with their count
    in "questions" ({"scored": n, "annotated": m}); results for questions not annotated are still refused.
    """
    annotations = load_vqa_annotations(annotations_json)
    questions = load_vqa_questions(questions_json)
    results = load_vqa_results(results_json)
    q_name, ann_name = source_name(questions_json, "questions"), source_name(annotations_json, "annotations")
    res_name = source_name(results_json, "results")

    annotated = [ann["question_id"] for ann in annotations]
    annotated_set = set(annotated)
    if len(annotated_set) != len(annotated):
        raise FormatError(
            f"{ann_name}: {len(annotated) - len(annotated_set)} question ids are annotated twice"
        )
    asked = {q["question_id"] for q in questions}
    if asked != annotated_set:
        raise FormatError(
            f"{q_name} and {ann_name} describe different questions: {len(asked - annotated_set)} questions without "
            f"annotation, {len(annotated_set - asked)} annotations without question"
        )
    missing = len(annotated_set - results.keys())
    extra = len(results.keys() - annotated_set)
    if (missing and not present_only) or extra or not results:
        advice = "" if extra or not results else " (--present-only scores the questions that have one)"
        raise FormatError(
            f"{res_name} does not correspond to {ann_name}: {missing} of {len(annotated)} annotated questions have no "
            f"result, {extra} of {len(results)} results answer questions not in the annotations{advice}"
        )
    count = {"scored": len(annotated) - missing, "annotated": len(annotated)}
    annotations = [ann for ann in annotations if ann["question_id"] in results]

    overall: list[float] = []
    per_answer_type: dict[str, list[float]] = {}
    per_question_type: dict[str, list[float]] = {}
    for ann in annotations:  # annotation order, so sums match the evaluator's bit for bit
        acc = answer_accuracy(results[ann["question_id"]], [a["answer"] for a in ann["answers"]])
        overall.append(acc)
        per_answer_type.setdefault(ann["answer_type"], []).append(acc)
        per_question_type.setdefault(ann["question_type"], []).append(acc)

    def percent(values: list[float]) -> float:
        return 100 * float(sum(values)) / len(values)

    scores = {
        "overall": percent(overall),
        "perAnswerType": {k: percent(v) for k, v in per_answer_type.items()},
        "perQuestionType": {k: percent(v) for k, v in per_question_type.items()},
    }
    return {**scores, "questions": count} if present_only else scores


def format_report(scores: Mapping[str, Any]) -> str:
    """The evaluator demo's printout, accuracies rounded to 2 decimals."""
    scored = scores.get("questions")
    lines = (
        [f"Scored {scored['scored']} of {scored['annotated']} annotated questions (--present-only)"]
        if scored
        else []
    )
    lines += [
        f"Overall Accuracy is: {scores['overall']:.2f}",
        "",
        "Per Answer Type Accuracy is the following:",
    ]
    lines += [f"{name} : {value:.2f}" for name, value in sorted(scores["perAnswerType"].items())]
    lines += ["", "Per Question Type Accuracy is the following:"]
    lines += [f"{name} : {value:.2f}" for name, value in sorted(scores["perQuestionType"].items())]
    return "\n".join(lines)
