"""N-grams of many sentences at once, as int64 keys, for the BLEU and CIDEr-D scorers and the SCST reward.

A corpus is a flat int64 array of word ids plus one length per sentence. The key of a k-gram is its word ids read as
the digits of a number in base `vocab_size` (exact while vocab_size ** k < 2 ** 63, i.e. up to 55,107 words for
4-grams); beyond that the key is a 64-bit hash (key of the (k-1)-gram prefix, next word), so two n-grams of the corpus
would have to share a 64-bit hash to be confused. Keys of different orders are kept apart by the caller.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

_PRIME = np.uint64(0x100000001B3)


def _hash(z: np.ndarray) -> np.ndarray:
    """splitmix64's finalizer (a bijection of uint64, so distinct inputs stay distinct); wraps around on purpose."""
    with np.errstate(over="ignore"):
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


def word_ids(sentences: Sequence[str]) -> tuple[np.ndarray, np.ndarray, int]:
    """Whitespace-split `sentences` -> (flat word ids (T,), lengths (S,), vocabulary size)."""
    vocab: dict[str, int] = {}
    words = [s.split() for s in sentences]
    lengths = np.fromiter(map(len, words), dtype=np.int64, count=len(words))
    ids = [vocab.setdefault(w, len(vocab)) for sentence in words for w in sentence]
    return np.asarray(ids, dtype=np.int64), lengths, len(vocab)


def flatten(sequences: Iterable[Sequence[int]]) -> tuple[np.ndarray, np.ndarray]:
    """Lists of ids -> (flat ids (T,), lengths (S,))."""
    sequences = [np.asarray(s, dtype=np.int64).reshape(-1) for s in sequences]
    lengths = np.fromiter(map(len, sequences), dtype=np.int64, count=len(sequences))
    return (np.concatenate(sequences) if sequences else np.zeros(0, dtype=np.int64)), lengths


def ngram_keys(
    tokens: np.ndarray, lengths: np.ndarray, n: int, vocab_size: int
) -> list[tuple[np.ndarray, np.ndarray]]:
    """For k = 1..n: (keys (M_k,), sentence index (M_k,)) of every k-gram occurrence, in corpus order."""
    base = max(int(vocab_size), 2)
    exact = base**n < 2**63
    sentence = np.repeat(np.arange(len(lengths)), lengths)
    end = np.repeat(np.cumsum(lengths), lengths)  # one past the last token of each token's sentence
    key = tokens.astype(np.int64 if exact else np.uint64)
    out = []
    for k in range(1, n + 1):
        if k > 1:
            if exact:
                key = key[:-1] * base + tokens[k - 1 :]
            else:
                key = _hash(key[:-1] * _PRIME + tokens[k - 1 :].astype(np.uint64) + np.uint64(1))
        valid = np.arange(len(key)) + k <= end[: len(key)]
        out.append((key[valid].view(np.int64), sentence[: len(key)][valid]))
    return out


def count(group: np.ndarray, key: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Occurrences -> (group, key, count) of each distinct (group, key) pair, sorted by group then key.

    Groups and keys are non-negative dense ids (their product with the key range must fit in int64).
    """
    width = np.int64(int(key.max(initial=0)) + 1)
    pairs, counts = np.unique(group.astype(np.int64) * width + key, return_counts=True)
    return pairs // width, pairs % width, counts


def lookup(
    table_group: np.ndarray,
    table_key: np.ndarray,
    table_value: np.ndarray,
    group: np.ndarray,
    key: np.ndarray,
):
    """table_value at each (group, key), 0 where the pair is absent; the table is sorted by (group, key) as `count`
    returns it. Groups and keys are non-negative dense ids."""
    width = np.int64(max(int(table_key.max(initial=0)), int(key.max(initial=0))) + 1)
    table = table_group.astype(np.int64) * width + table_key
    wanted = group.astype(np.int64) * width + key
    values = np.zeros(len(wanted), dtype=np.asarray(table_value).dtype)
    if len(table):
        pos = np.minimum(np.searchsorted(table, wanted), len(table) - 1)
        found = table[pos] == wanted
        values[found] = table_value[pos[found]]
    return values


class Corpus:
    """References and candidates of I images as dense n-gram ids, shared by the BLEU and CIDEr-D scorers.

    Sentences 0..R-1 are the references (grouped by image, in order), R..R+I-1 the candidates.
    """

    def __init__(self, references: Sequence[Sequence[str]], candidates: Sequence[str], n: int = 4):
        self.num_images = len(candidates)
        self.ref_counts = np.fromiter(map(len, references), dtype=np.int64, count=self.num_images)
        self.ref_image = np.repeat(np.arange(self.num_images), self.ref_counts)
        self.num_refs = int(self.ref_counts.sum())
        tokens, self.lengths, vocab_size = word_ids([*(r for refs in references for r in refs), *candidates])
        self.ngrams = []  # per order: (dense n-gram id (M,), sentence (M,), number of distinct n-grams)
        for key, sentence in ngram_keys(tokens, self.lengths, n, vocab_size):
            unique, dense = np.unique(key, return_inverse=True)
            self.ngrams.append((dense, sentence, len(unique)))

    @property
    def ref_lengths(self) -> np.ndarray:
        return self.lengths[: self.num_refs]

    @property
    def test_lengths(self) -> np.ndarray:
        return self.lengths[self.num_refs :]

    def counts(self, k: int) -> tuple[tuple[np.ndarray, ...], tuple[np.ndarray, ...]]:
        """k-gram counts: ((ref sentence, id, count), (image, id, count)) of the references and the candidates."""
        dense, sentence, _ = self.ngrams[k]
        is_ref = sentence < self.num_refs
        return count(sentence[is_ref], dense[is_ref]), count(
            sentence[~is_ref] - self.num_refs, dense[~is_ref]
        )
