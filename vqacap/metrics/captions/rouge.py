"""ROUGE-L as coco-caption's `Rouge` computes it (pycocoevalcap 1.2): for each image, the longest common subsequence
with each reference gives a precision and a recall; the best precision and the best recall (possibly from different
references) make an F-measure with beta = 1.2; the corpus score is the mean over images.

Captions are split on single spaces, as pycocoevalcap does (so an empty caption is one empty word).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

BETA = 1.2


def lcs_length(a: Sequence[str], b: Sequence[str]) -> int:
    """Length of the longest common subsequence (bit-parallel, Allison & Dix 1986: one big-int step per word of b)."""
    masks: dict[str, int] = {}
    for i, word in enumerate(a):
        masks[word] = masks.get(word, 0) | (1 << i)
    full = (1 << len(a)) - 1
    row = full
    for word in b:
        match = row & masks.get(word, 0)
        row = ((row + match) | (row - match)) & full
    return len(a) - row.bit_count()


def rouge_l(
    references: Sequence[Sequence[str]], candidates: Sequence[str], beta: float = BETA
) -> tuple[float, np.ndarray]:
    """-> (mean ROUGE-L, per-image scores (I,)). references[i]: the captions of image i."""
    scores = np.zeros(len(candidates))
    for i, (candidate, refs) in enumerate(zip(candidates, references)):
        words = candidate.split(" ")
        precision = recall = 0.0
        for ref in refs:
            ref_words = ref.split(" ")
            lcs = lcs_length(words, ref_words)
            precision = max(precision, lcs / len(words))
            recall = max(recall, lcs / len(ref_words))
        if precision != 0 and recall != 0:
            scores[i] = ((1 + beta**2) * precision * recall) / float(recall + beta**2 * precision)
    return float(np.mean(scores)), scores
