"""CIDEr-D as coco-caption's `Cider` computes it (pycocoevalcap 1.2; Vedantam et al. 2015).

For n = 1..4, each caption is a vector of n-gram tf-idf weights, tf * (log(I) - log(max(1, df))), where df counts the
evaluated images whose references contain the n-gram and I is the number of evaluated images. An image scores

    10 * mean_n  1/|refs| * sum_refs  sum_g min(c_g, r_g) * r_g / (|c| |r|) * exp(-(l_c - l_r)^2 / (2 sigma^2))

(the `min` is CIDEr-D's clipping, the exponential its length penalty with sigma = 6). Quirk kept: the "length" l is the
number of bigrams (words - 1, and 0 for an empty caption), as pycocoevalcap counts it.

Captions are strings of space-separated words (already tokenized).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from vqacap.metrics.captions.ngrams import Corpus, count, lookup

SIGMA = 6.0


def cider_d(
    references: Sequence[Sequence[str]], candidates: Sequence[str], n: int = 4, sigma: float = SIGMA
) -> tuple[float, np.ndarray]:
    """-> (mean CIDEr-D, per-image scores (I,)). references[i]: the captions of image i."""
    return cider_d_corpus(Corpus(references, candidates, n), sigma)


def cider_d_corpus(corpus: Corpus, sigma: float = SIGMA) -> tuple[float, np.ndarray]:
    n, num_images, num_refs, ref_image = (
        len(corpus.ngrams),
        corpus.num_images,
        corpus.num_refs,
        corpus.ref_image,
    )
    log_images = np.log(float(num_images))
    dot = np.zeros((num_refs, n))
    ref_norm = np.zeros((num_refs, n))
    test_norm = np.zeros((num_images, n))
    for k in range(n):
        (ref_sentence, ref_key, ref_count), (test_image, test_key, test_count) = corpus.counts(k)
        # Document frequency: in how many images' reference sets each n-gram occurs.
        _, image_key, _ = count(ref_image[ref_sentence], ref_key)
        df = np.bincount(image_key, minlength=corpus.ngrams[k][2])
        idf = log_images - np.log(np.maximum(1.0, df))
        ref_vec = ref_count * idf[ref_key]
        test_vec = test_count * idf[test_key]
        ref_norm[:, k] = np.bincount(ref_sentence, ref_vec**2, minlength=num_refs)
        test_norm[:, k] = np.bincount(test_image, test_vec**2, minlength=num_images)
        # Clipped dot product of each reference with its image's candidate.
        test_vec_at_ref = lookup(test_image, test_key, test_vec, ref_image[ref_sentence], ref_key)
        dot[:, k] = np.bincount(
            ref_sentence, np.minimum(test_vec_at_ref, ref_vec) * ref_vec, minlength=num_refs
        )

    test_len = np.maximum(corpus.test_lengths - 1, 0)
    ref_len = np.maximum(corpus.ref_lengths - 1, 0)
    scores = similarities(
        dot, np.sqrt(ref_norm), np.sqrt(test_norm)[ref_image], test_len[ref_image] - ref_len, sigma
    )
    per_image = np.bincount(ref_image, scores.mean(1), minlength=num_images) / corpus.ref_counts * 10.0
    return float(np.mean(per_image)), per_image


def similarities(
    dot: np.ndarray, ref_norm: np.ndarray, test_norm: np.ndarray, delta: np.ndarray, sigma: float
) -> np.ndarray:
    """(R, n) cosine similarities with the length penalty, from (R, n) clipped dot products and norms, (R,) deltas."""
    both = (test_norm != 0) & (ref_norm != 0)
    sim = np.where(both, dot / np.where(both, test_norm * ref_norm, 1.0), dot)
    return sim * np.e ** (-(delta.astype(np.float64) ** 2) / (2 * sigma**2))[:, None]
