"""BLEU-1..4 as coco-caption's `Bleu(4)` computes it (pycocoevalcap 1.2 bleu_scorer, option "closest").

Corpus BLEU: clipped n-gram matches and candidate n-gram counts are summed over images, the reference length of each
image is the reference length closest to the candidate's (ties to the shorter), and the brevity penalty uses the
summed lengths. The per-image scores use the same formula on one image. Quirks kept: the `tiny` (1e-15) and `small`
(1e-9) constants that keep empty captions from dividing by zero, and BLEU-k of one image being the k-th root of the
running product of precisions 1..k.

Captions are strings of space-separated words (already tokenized).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from vqacap.metrics.captions.ngrams import Corpus, lookup

_TINY = 1e-15
_SMALL = 1e-9


def bleu(
    references: Sequence[Sequence[str]], candidates: Sequence[str], n: int = 4
) -> tuple[list[float], np.ndarray]:
    """-> ([BLEU-1..n over the corpus], per-image scores (n, I)). references[i]: the captions of image i."""
    return bleu_corpus(Corpus(references, candidates, n))


def bleu_corpus(corpus: Corpus) -> tuple[list[float], np.ndarray]:
    n, num_images, ref_image = len(corpus.ngrams), corpus.num_images, corpus.ref_image
    ref_len, test_len = corpus.ref_lengths, corpus.test_lengths
    # "closest" reference length: the smallest (|ref - test|, ref) pair of each image.
    big = int(ref_len.max(initial=0)) + 1
    closest = np.full(num_images, np.iinfo(np.int64).max)
    np.minimum.at(closest, ref_image, np.abs(ref_len - test_len[ref_image]) * big + ref_len)
    closest_len = closest % big

    correct = np.zeros((num_images, n), dtype=np.int64)
    for k in range(n):
        (ref_sentence, ref_key, ref_count), (test_image, test_key, test_count) = corpus.counts(k)
        # Largest count of each n-gram in any one reference of the image.
        width = np.int64(corpus.ngrams[k][2])
        pair = ref_image[ref_sentence] * width + ref_key
        order = np.argsort(pair, kind="stable")
        pair = pair[order]
        # No reference has an n-gram of this order (all shorter than k + 1 words): nothing to reduce.
        starts = np.flatnonzero(np.r_[True, pair[1:] != pair[:-1]]) if len(pair) else np.zeros(0, np.int64)
        max_count = np.maximum.reduceat(ref_count[order], starts) if len(starts) else ref_count
        clip = lookup(pair[starts] // width, pair[starts] % width, max_count, test_image, test_key)
        correct[:, k] = np.bincount(test_image, np.minimum(test_count, clip), minlength=num_images)
    guess = np.maximum(0, test_len[:, None] - np.arange(n)[None, :])  # (I, n)

    per_image = _scores(correct, guess, test_len, closest_len)
    corpus_scores = _scores(
        correct.sum(0, keepdims=True), guess.sum(0, keepdims=True), test_len.sum(), closest_len.sum()
    )
    return corpus_scores[:, 0].tolist(), per_image


def _scores(correct: np.ndarray, guess: np.ndarray, test_len, ref_len) -> np.ndarray:
    """(n, I) BLEU-k for k = 1..n from (I, n) clipped matches and guesses and (I,) lengths."""
    n = correct.shape[1]
    precision = (correct.astype(np.float64) + _TINY) / (guess.astype(np.float64) + _SMALL)
    scores = np.cumprod(precision, axis=1) ** (1.0 / np.arange(1, n + 1))
    ratio = (np.asarray(test_len, dtype=np.float64) + _TINY) / (
        np.asarray(ref_len, dtype=np.float64) + _SMALL
    )
    ratio = np.atleast_1d(ratio)
    with np.errstate(divide="ignore", over="ignore"):
        brevity = np.where(ratio < 1, np.exp(1 - 1 / ratio), 1.0)
    return (scores * brevity[:, None]).T
