"""VQA accuracy exactly as the official evaluator computes it, and the soft scores VQA models are trained on.

The reference is GT-Vision-Lab/VQA `PythonEvaluationTools/vqaEvaluation/vqaEval.py` (current version, after the commit
"Fixed processing answers bug"). For one question with human answers g_1..g_n (n = 10 in VQA v1/v2) and a predicted
answer p, the evaluator computes

    acc(p) = 1/n sum_j min(1, #{i != j : g_i == p} / 3)          (mean over the n leave-one-out subsets)

which is 0, .3, .6, .9, 1 for p given by 0, 1, 2, 3, >= 4 of 10 humans. Before comparing, every answer has '\\n' and '\\t'
replaced by spaces and is stripped; then **only when the n human answers are not all identical**, the human answers and
the prediction are normalised (`process_punctuation` then `process_digit_article`). When all n humans wrote exactly the
same string, nothing is normalised: "Yes" scores 0 against ten "yes". This module reproduces that behaviour, quirks
included, so its numbers equal the official ones:

- `process_punctuation`: each mark in `PUNCTUATION` is deleted when it touches a space or when the text contains a
  digit-comma-digit ("1,000" -> "1000"), and replaced by a space otherwise ("t-shirt" -> "t shirt"); then periods not
  followed by a digit are deleted ("3.5" stays), at most 32 of them (the evaluator passes `re.UNICODE`, 32, as the
  `count` argument of `re.sub`). The apostrophe and the colon are not in the current list.
- `process_digit_article`: lowercase, split on whitespace, number words to digits ("two" -> "2", "none" -> "0"), drop the
  articles a/an/the, expand contractions written without apostrophe ("dont" -> "don't"), join with single spaces.

The soft training target (`soft_scores`) is the official accuracy of every candidate answer, quirk included: a
question whose ten humans all wrote "a dog" gives no credit to the normalised candidate "dog", in training as in the
evaluation. `gt_answer_indices` and `batch_accuracy` compute the same accuracy on tensors for `VQAAccuracy`, a
torchmetrics Metric for validation under DDP; `evaluate_vqa` scores an official results file, and `add_arguments` /
`run` are the `python -m vqacap.evaluate vqa` command. Not here: building the answer vocabulary (`vqacap.data.vqa`).
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import re
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat

# ----------------------------------------------------------------------------------------------------------------------
# Normalisation tables of the official evaluator (vqaEval.py: contractions, manualMap, articles, punct)

CONTRACTIONS = {
    "aint": "ain't", "arent": "aren't", "cant": "can't", "couldve": "could've", "couldnt": "couldn't",
    "couldn'tve": "couldn't've", "couldnt've": "couldn't've", "didnt": "didn't", "doesnt": "doesn't", "dont": "don't",
    "hadnt": "hadn't", "hadnt've": "hadn't've", "hadn'tve": "hadn't've", "hasnt": "hasn't", "havent": "haven't",
    "hed": "he'd", "hed've": "he'd've", "he'dve": "he'd've", "hes": "he's", "howd": "how'd", "howll": "how'll",
    "hows": "how's", "Id've": "I'd've", "I'dve": "I'd've", "Im": "I'm", "Ive": "I've", "isnt": "isn't", "itd": "it'd",
    "itd've": "it'd've", "it'dve": "it'd've", "itll": "it'll", "let's": "let's", "maam": "ma'am", "mightnt": "mightn't",
    "mightnt've": "mightn't've", "mightn'tve": "mightn't've", "mightve": "might've", "mustnt": "mustn't",
    "mustve": "must've", "neednt": "needn't", "notve": "not've", "oclock": "o'clock", "oughtnt": "oughtn't",
    "ow's'at": "'ow's'at", "'ows'at": "'ow's'at", "'ow'sat": "'ow's'at", "shant": "shan't", "shed've": "she'd've",
    "she'dve": "she'd've", "she's": "she's", "shouldve": "should've", "shouldnt": "shouldn't",
    "shouldnt've": "shouldn't've", "shouldn'tve": "shouldn't've", "somebody'd": "somebodyd",
    "somebodyd've": "somebody'd've", "somebody'dve": "somebody'd've", "somebodyll": "somebody'll",
    "somebodys": "somebody's", "someoned": "someone'd", "someoned've": "someone'd've", "someone'dve": "someone'd've",
    "someonell": "someone'll", "someones": "someone's", "somethingd": "something'd", "somethingd've": "something'd've",
    "something'dve": "something'd've", "somethingll": "something'll", "thats": "that's", "thered": "there'd",
    "thered've": "there'd've", "there'dve": "there'd've", "therere": "there're", "theres": "there's", "theyd": "they'd",
    "theyd've": "they'd've", "they'dve": "they'd've", "theyll": "they'll", "theyre": "they're", "theyve": "they've",
    "twas": "'twas", "wasnt": "wasn't", "wed've": "we'd've", "we'dve": "we'd've", "weve": "we've", "werent": "weren't",
    "whatll": "what'll", "whatre": "what're", "whats": "what's", "whatve": "what've", "whens": "when's",
    "whered": "where'd", "wheres": "where's", "whereve": "where've", "whod": "who'd", "whod've": "who'd've",
    "who'dve": "who'd've", "wholl": "who'll", "whos": "who's", "whove": "who've", "whyll": "why'll", "whyre": "why're",
    "whys": "why's", "wont": "won't", "wouldve": "would've", "wouldnt": "wouldn't", "wouldnt've": "wouldn't've",
    "wouldn'tve": "wouldn't've", "yall": "y'all", "yall'll": "y'all'll", "y'allll": "y'all'll",
    "yall'd've": "y'all'd've", "y'alld've": "y'all'd've", "y'all'dve": "y'all'd've", "youd": "you'd",
    "youd've": "you'd've", "you'dve": "you'd've", "youll": "you'll", "youre": "you're", "youve": "you've",
}  # fmt: skip
# The keys "Id've", "I'dve", "Im", "Ive" can never match: words are lowercased first. Kept as the evaluator has them.

NUMBER_WORDS = {
    "none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5", "six": "6", "seven": "7",
    "eight": "8", "nine": "9", "ten": "10",
}  # fmt: skip
ARTICLES = frozenset({"a", "an", "the"})
PUNCTUATION = (";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",", "?", "!")  # fmt: skip

# The evaluator's periodStrip is "(?!<=\d)(\.)(?!\d)": its "(?!<=\d)" is a lookahead, not a lookbehind, and never fails
# before a period, so the pattern is exactly "a period not followed by a digit".
_PERIOD = re.compile(r"\.(?!\d)")
_PERIOD_MAX_REMOVALS = 32  # re.UNICODE, passed by the evaluator as the `count` argument of sub()
_DIGIT_COMMA_DIGIT = re.compile(r"\d,\d")


def process_punctuation(text: str) -> str:
    """The evaluator's processPunctuation: "yes!" -> "yes", "t-shirt" -> "t shirt", "1,000" -> "1000", "3.5" kept."""
    delete_all = _DIGIT_COMMA_DIGIT.search(text) is not None
    out = text
    for mark in PUNCTUATION:
        # Decided on the input text, applied to the text processed so far (as the evaluator does).
        if delete_all or mark + " " in text or " " + mark in text:
            out = out.replace(mark, "")
        else:
            out = out.replace(mark, " ")
    return _PERIOD.sub("", out, count=_PERIOD_MAX_REMOVALS)


def process_digit_article(text: str) -> str:
    """The evaluator's processDigitArticle: "Two Dogs" -> "2 dogs", "a dog" -> "dog", "dont" -> "don't"."""
    words = [NUMBER_WORDS.get(word, word) for word in text.lower().split()]
    return " ".join(CONTRACTIONS.get(word, word) for word in words if word not in ARTICLES)


@functools.lru_cache(maxsize=1 << 20)
def _clean(text: str) -> str:
    """What the evaluator does to every answer before anything else."""
    return text.replace("\n", " ").replace("\t", " ").strip()


@functools.lru_cache(maxsize=1 << 20)  # VQA v2 has ~5M human answers but far fewer distinct strings
def process_answer(text: str) -> str:
    """Full normalisation of one answer: clean, `process_punctuation`, `process_digit_article`. "The Dog." -> "dog"."""
    return process_digit_article(process_punctuation(_clean(text)))


def _reference_answers(gt_answers: Sequence[str]) -> tuple[list[str], bool]:
    """The strings the evaluator compares a prediction with, and whether the prediction is normalised too."""
    if not gt_answers:
        raise ValueError("a question needs at least one ground-truth answer")
    answers = [_clean(a) for a in gt_answers]
    if len(set(answers)) > 1:
        return [process_answer(a) for a in answers], True
    return answers, False  # all humans agree verbatim: the evaluator normalises nothing


def _leave_one_out(matches: Sequence[bool]) -> float:
    """Mean over the n leave-one-out subsets of min(1, matches among the other n-1 / 3), summed in the evaluator's order."""
    total = sum(matches)
    per_subset = [min(1.0, (total - m) / 3) for m in matches]
    return sum(per_subset) / len(per_subset)


def answer_accuracy(prediction: str, gt_answers: Sequence[str]) -> float:
    """Official accuracy in [0, 1] of `prediction` given the raw human answers of one question."""
    answers, normalise = _reference_answers(gt_answers)
    prediction = process_answer(prediction) if normalise else _clean(prediction)
    return _leave_one_out([a == prediction for a in answers])


def gt_answer_indices(gt_answers: Sequence[str], answer_to_index: Mapping[str, int]) -> list[int]:
    """Index of each human answer among the candidate answers, as the evaluator compares them; -1 for no candidate.

    `answer_to_index` maps candidate answers, already normalised with `process_answer` (as the answer vocabulary is),
    to their index. A predicted candidate then matches a human answer exactly when the evaluator says they match.
    """
    answers, _ = _reference_answers(gt_answers)
    return [answer_to_index.get(a, -1) for a in answers]


def soft_scores(
    gt_answers: Sequence[str], answer_to_index: Mapping[str, int]
) -> tuple[list[int], list[float]]:
    """Soft target of one question: (indices, scores) of the candidate answers with a non-zero official accuracy.

    The score of a candidate is exactly `answer_accuracy(candidate, gt_answers)` (see `gt_answer_indices` for the
    candidates), so the accuracy of a predicted index is the target value at that index. Sorted by index.
    """
    return soft_scores_of_indices(gt_answer_indices(gt_answers, answer_to_index))


def soft_scores_of_indices(gt_indices: Sequence[int]) -> tuple[list[int], list[float]]:
    """`soft_scores` from the `gt_answer_indices` of a question, for callers that need both."""
    candidates = sorted(set(gt_indices) - {-1})
    return candidates, [_leave_one_out([i == c for i in gt_indices]) for c in candidates]


def batch_accuracy(pred_index: torch.Tensor, gt_answer_index: torch.Tensor) -> torch.Tensor:
    """Official accuracy (float64, in [0, 1]) of predicted candidates: pred_index (B,), gt_answer_index (B, N) -> (B,).

    gt_answer_index holds `gt_answer_indices` of the N human answers of each question (-1 matches nothing).
    """
    matches = gt_answer_index == pred_index.unsqueeze(1)  # (B, N)
    others = matches.sum(dim=1, keepdim=True) - matches.long()  # (B, N) matches among the other N-1 humans
    return (others.double() / 3).clamp(max=1).mean(dim=1)


# ----------------------------------------------------------------------------------------------------------------------
# Metric for training-time evaluation


class VQAAccuracy(Metric):
    """Official VQA accuracy in percent: overall, per answer type and per question type.

    `update(pred_index, gt_answer_index, question_id, answer_type, question_type)`: pred_index (B,) the predicted
    candidate answer, gt_answer_index (B, N) `gt_answer_indices` of the N human answers, question_id, answer_type and
    question_type (B,), type ids indexing `answer_types` / `question_types`. The numbers equal `evaluate_vqa` on the same
    predictions. A question seen more than once (the DistributedSampler pads every rank to the same length by
    repeating questions) counts once.

    `compute()` -> {"overall": t, "perAnswerType": {name: t}, "perQuestionType": {name: t}}, the evaluator's names,
    float64 at full precision; types without questions are left out, as the evaluator leaves them out.
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    def __init__(self, answer_types: Sequence[str], question_types: Sequence[str], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.answer_types = list(answer_types)
        self.question_types = list(question_types)
        for name in ("accuracy", "question_id", "answer_type", "question_type"):
            self.add_state(name, default=[], dist_reduce_fx="cat")

    def update(
        self,
        pred_index: torch.Tensor,
        gt_answer_index: torch.Tensor,
        question_id: torch.Tensor,
        answer_type: torch.Tensor,
        question_type: torch.Tensor,
    ) -> None:
        self.accuracy.append(batch_accuracy(pred_index.detach(), gt_answer_index.detach()))
        self.question_id.append(question_id.detach().long().flatten())
        self.answer_type.append(answer_type.detach().long().flatten())
        self.question_type.append(question_type.detach().long().flatten())

    def compute(self) -> dict[str, Any]:
        question_id = dim_zero_cat(self.question_id)
        if question_id.numel() == 0:
            raise ValueError("VQAAccuracy.compute() called before any update")
        # Keep the first occurrence of every question id.
        unique, inverse = torch.unique(question_id, return_inverse=True)
        position = torch.arange(len(question_id), device=question_id.device)
        first = torch.full((len(unique),), len(question_id), device=question_id.device)
        first = first.scatter_reduce(0, inverse, position, reduce="amin")
        accuracy = dim_zero_cat(self.accuracy)[first]
        answer_type = dim_zero_cat(self.answer_type)[first]
        question_type = dim_zero_cat(self.question_type)[first]
        return {
            "overall": 100 * accuracy.mean(),
            "perAnswerType": _mean_per_type(accuracy, answer_type, self.answer_types),
            "perQuestionType": _mean_per_type(accuracy, question_type, self.question_types),
        }


def _mean_per_type(
    accuracy: torch.Tensor, type_id: torch.Tensor, names: list[str]
) -> dict[str, torch.Tensor]:
    out = {}
    for i, name in enumerate(names):
        selected = type_id == i
        if selected.any():
            out[name] = 100 * accuracy[selected].mean()
    return out


# ----------------------------------------------------------------------------------------------------------------------
# Offline evaluator of official result files


class VQAFormatError(ValueError):
    """Raised with a one-line message naming the file at fault."""


def _name(source: Any, what: str) -> str:
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
        raise VQAFormatError(f"{path}: {what} file not found") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise VQAFormatError(f"{path}: {what} file is not valid JSON ({err})") from None


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
    name = _name(source, key)
    data = _load(source, key)
    if not (isinstance(data, dict) and isinstance(data.get(key), list)):
        raise VQAFormatError(
            f"{name}: not a VQA {key} file (no '{key}' list; it looks like {_guess_kind(data)})"
        )
    for n, record in enumerate(data[key]):
        missing = [f for f in fields if not isinstance(record, dict) or f not in record]
        if missing:
            raise VQAFormatError(f"{name}: {key}[{n}] lacks {', '.join(missing)}")
    return data[key]


def load_questions(source: str | os.PathLike | Any) -> list[dict]:
    """The question records of an official VQA questions file (path or loaded JSON); `VQAFormatError` naming it."""
    return _records(source, "questions", ("question_id", "image_id", "question"))


def load_annotations(source: str | os.PathLike | Any) -> list[dict]:
    """The annotation records of an official VQA annotations file (path or loaded JSON); `VQAFormatError` naming it."""
    annotations = _records(source, "annotations", ("question_id", "question_type", "answer_type", "answers"))
    for ann in annotations:
        answers = ann["answers"]
        if not (
            isinstance(answers, list)
            and answers
            and all(isinstance(a, dict) and "answer" in a for a in answers)
        ):
            raise VQAFormatError(
                f"{_name(source, 'annotations')}: question {ann['question_id']} has no list of answers {{'answer': ...}}"
            )
    return annotations


def _load_results(source: Any) -> dict[int, str]:
    name = _name(source, "results")
    data = _load(source, "results")
    if not isinstance(data, list):
        raise VQAFormatError(
            f"{name}: a results file is a JSON list of {{question_id, answer}}; it looks like {_guess_kind(data)}"
        )
    results: dict[int, str] = {}
    duplicates = 0
    for n, item in enumerate(data):
        if not (isinstance(item, dict) and "question_id" in item and isinstance(item.get("answer"), str)):
            raise VQAFormatError(f"{name}: result [{n}] is not {{'question_id': int, 'answer': str}}")
        duplicates += item["question_id"] in results
        results[item["question_id"]] = item["answer"]
    if duplicates:
        raise VQAFormatError(f"{name}: {duplicates} results repeat a question id already answered")
    return results


def evaluate_vqa(questions_json: Any, annotations_json: Any, results_json: Any) -> dict[str, Any]:
    """Score an official VQA results file; each argument is a path to the official JSON file or its loaded content.

    Returns {"overall": float, "perAnswerType": {type: float}, "perQuestionType": {type: float}} in percent, at full
    precision (the official evaluator rounds to 2 decimals). As the official evaluator, refuses results that do not
    answer exactly the annotated questions; raises `VQAFormatError` with one line naming the file at fault.
    """
    annotations = load_annotations(annotations_json)
    questions = load_questions(questions_json)
    results = _load_results(results_json)
    q_name, ann_name = _name(questions_json, "questions"), _name(annotations_json, "annotations")
    res_name = _name(results_json, "results")

    annotated = [ann["question_id"] for ann in annotations]
    annotated_set = set(annotated)
    if len(annotated_set) != len(annotated):
        raise VQAFormatError(
            f"{ann_name}: {len(annotated) - len(annotated_set)} question ids are annotated twice"
        )
    asked = {q["question_id"] for q in questions}
    if asked != annotated_set:
        raise VQAFormatError(
            f"{q_name} and {ann_name} describe different questions: {len(asked - annotated_set)} questions without "
            f"annotation, {len(annotated_set - asked)} annotations without question"
        )
    missing = len(annotated_set - results.keys())
    extra = len(results.keys() - annotated_set)
    if missing or extra:
        raise VQAFormatError(
            f"{res_name} does not correspond to {ann_name}: {missing} of {len(annotated)} annotated questions have no "
            f"result, {extra} of {len(results)} results answer questions not in the annotations"
        )

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

    return {
        "overall": percent(overall),
        "perAnswerType": {k: percent(v) for k, v in per_answer_type.items()},
        "perQuestionType": {k: percent(v) for k, v in per_question_type.items()},
    }


def format_report(scores: Mapping[str, Any]) -> str:
    """The evaluator demo's printout, accuracies rounded to 2 decimals."""
    lines = [
        f"Overall Accuracy is: {scores['overall']:.2f}",
        "",
        "Per Answer Type Accuracy is the following:",
    ]
    lines += [f"{name} : {value:.2f}" for name, value in sorted(scores["perAnswerType"].items())]
    lines += ["", "Per Question Type Accuracy is the following:"]
    lines += [f"{name} : {value:.2f}" for name, value in sorted(scores["perQuestionType"].items())]
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--questions", required=True, help="official VQA questions JSON ({'questions': [...]})"
    )
    parser.add_argument(
        "--annotations", required=True, help="official VQA annotations JSON ({'annotations': [...]})"
    )
    parser.add_argument(
        "--results", required=True, help="results JSON: [{'question_id': int, 'answer': str}, ...]"
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object at full precision")


def run(args: argparse.Namespace) -> int:
    try:
        scores = evaluate_vqa(args.questions, args.annotations, args.results)
    except VQAFormatError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(json.dumps(scores) if args.json else format_report(scores))
    return 0
