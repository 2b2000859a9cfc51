"""The official VQA answer normalisation and accuracy, used by the data (answer vocabulary, soft targets) and the
metrics alike.

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
evaluation. Not here: the same accuracy on tensors (vqacap.metrics.vqa.metric), the file formats (vqacap.data.formats).
"""

from __future__ import annotations

import functools
import re
import unicodedata
from collections.abc import Mapping, Sequence

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


def blank(text: str) -> bool:
    """Whether `text` has nothing to read: no letter, digit, mark or symbol (spaces, zero-width characters only)."""
    return not any(unicodedata.category(c)[0] in "LNPS" for c in text)


def blank_answer(text: str) -> bool:
    """Whether an answer is empty once normalised ("", " ", ".", "a"): the official accuracy then rewards an empty
    prediction wherever such answers are the references."""
    return blank(process_answer(text))


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
