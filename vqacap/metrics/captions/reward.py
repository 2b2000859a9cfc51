"""CIDEr-D of sampled captions against training references: the reward of self-critical sequence training.

<eos> is a word of every caption and <unk> an ordinary word, as in Rennie et al. 2017 (see `CiderDReward`).

Same formula as coco-caption's CIDEr-D scorer (cider.py), with the document frequencies counted once over all training
images and log(number of training images) as the reference length, so the reward of a caption does not depend on the
batch. Everything about the references (n-gram ids, tf-idf weights, norms, lengths) is computed at construction; a call
counts the candidates' n-grams and gets all clipped dot products with a few sorted-array searches, without a Python
loop over candidates.

Shapes: N candidates, L tokens; R references in all.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch

from vqacap.data.vocab import BOS_ID, EOS_ID, PAD_ID, UNK_ID
from vqacap.metrics.captions.cider import SIGMA, similarities
from vqacap.metrics.captions.ngrams import count, flatten, ngram_keys

EXACT_VOCAB = 55_000  # 55000 ** 4 < 2 ** 63: 4-gram keys are exact base-vocab numbers


def _expand(lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """All indices of the ranges [lo, hi): (index, which range it belongs to)."""
    sizes = hi - lo
    owner = np.repeat(np.arange(len(lo)), sizes)
    index = np.arange(int(sizes.sum())) - np.repeat(np.cumsum(sizes) - sizes, sizes) + np.repeat(lo, sizes)
    return index, owner


class CiderDReward:
    """references: {image_id: [reference token ids, ...]} of the training images (sequences may hold specials).

    A sequence ends at its first <eos> or <pad>. With `count_eos` (the default) <eos> is a word of every caption: each
    reference gets one appended, and a candidate's own <eos> counts where it emitted one, as Rennie et al. 2017 and
    ruotianluo/self-critical.pytorch score it (their `array_to_str` keeps the end token 0 of samples and of the
    padded references). A caption that stops mid-sentence then ends in an n-gram ("on the <eos>") no reference has,
    so SCST cannot learn to cut captions short. With `keep_unk` (the default) <unk> is an ordinary word; dropping it
    would join its neighbours into n-grams that were never there and make <unk> free. <pad> and <bos> are never
    words. `count_eos=False, keep_unk=False` is the convention of coco-caption's evaluation of finished captions
    (and of this reward before): cut at <eos>, all specials dropped.

    `vocab_size` bounds the token ids; the default accepts any id below 55,000 (n-gram keys stay exact up to that
    size) or the largest reference id.
    """

    def __init__(
        self,
        references: Mapping[int, Sequence[Sequence[int]]],
        n: int = 4,
        sigma: float = SIGMA,
        vocab_size: int | None = None,
        count_eos: bool = True,
        keep_unk: bool = True,
    ) -> None:
        self.n, self.sigma = n, sigma
        self.count_eos, self.keep_unk = bool(count_eos), bool(keep_unk)
        self.end_ids = np.array([PAD_ID, EOS_ID], dtype=np.int64)
        self.ignore_ids = np.array(
            [PAD_ID, BOS_ID] + ([] if self.count_eos else [EOS_ID]) + ([] if self.keep_unk else [UNK_ID]),
            dtype=np.int64,
        )
        if not references:
            raise ValueError("CiderDReward needs the references of at least one image")
        self.image_ids = np.array(sorted(references), dtype=np.int64)
        refs = [references[i] for i in self.image_ids.tolist()]
        self.ref_counts = np.array([len(r) for r in refs], dtype=np.int64)  # (I,)
        if (self.ref_counts == 0).any():
            i = int(self.image_ids[np.argmax(self.ref_counts == 0)])
            raise ValueError(f"image {i} has no reference")
        self.first_ref = np.cumsum(self.ref_counts) - self.ref_counts  # (I,)
        # The appended <eos> closes references that have none; one that has its own ends there as a candidate would.
        tokens, lengths = self._clean(*flatten([*r, EOS_ID] for rs in refs for r in rs))
        largest = int(tokens.max(initial=0)) + 1
        self.vocab_size = int(vocab_size) if vocab_size is not None else max(largest, EXACT_VOCAB)
        if largest > self.vocab_size:
            raise ValueError(f"reference token id {largest - 1} >= vocab_size {self.vocab_size}")
        self.log_images = np.log(float(len(self.image_ids)))
        ref_image = np.repeat(np.arange(len(self.image_ids)), self.ref_counts)
        self.ref_len = np.maximum(lengths - 1, 0)  # (R,) bigram count, as pycocoevalcap measures length
        self.ref_norm = np.zeros((len(lengths), n))  # (R, n)
        # Per order: the sorted distinct n-gram keys and their idf; one row per (reference, n-gram) with its count,
        # sorted by (image, n-gram id), and where each image's rows start.
        self.keys, self.idf, self.rows, self.blocks = [], [], [], []
        for k, (key, sentence) in enumerate(ngram_keys(tokens, lengths, n, self.vocab_size)):
            unique, dense = np.unique(key, return_inverse=True)
            ref_sentence, ref_key, ref_count = count(sentence, dense)
            _, image_key, _ = count(ref_image[ref_sentence], ref_key)
            idf = self.log_images - np.log(np.maximum(1.0, np.bincount(image_key, minlength=len(unique))))
            vec = ref_count * idf[ref_key]
            self.ref_norm[:, k] = np.sqrt(np.bincount(ref_sentence, vec**2, minlength=len(lengths)))
            width = np.int64(len(unique))
            pair = ref_image[ref_sentence] * width + ref_key
            order = np.argsort(pair)
            pair = pair[order]
            self.keys.append(unique)
            self.idf.append(idf)
            self.rows.append((pair, ref_sentence[order].astype(np.int32), ref_count[order].astype(np.int32)))
            self.blocks.append(np.searchsorted(pair, np.arange(len(self.image_ids) + 1) * width))

    def _clean(self, tokens: np.ndarray, lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Flat sequences (T,), (S,) -> the same up to and with their first <eos>/<pad>, without the ignored ids."""
        sentence = np.repeat(np.arange(len(lengths)), lengths)
        ends = np.cumsum(np.isin(tokens, self.end_ids))
        ends_before_sentence = np.r_[0, ends][np.cumsum(lengths) - lengths]
        ended_before = (
            ends - ends_before_sentence[sentence] - np.isin(tokens, self.end_ids)
        )  # ends before this token
        keep = (ended_before == 0) & ~np.isin(tokens, self.ignore_ids)
        return tokens[keep], np.bincount(sentence[keep], minlength=len(lengths))

    def __call__(self, image_ids: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
        """image_ids (N,), candidates (N, L) token ids -> CIDEr-D rewards (N,) float32 on the candidates' device."""
        scores = self.scores(image_ids.detach().cpu().numpy(), candidates.detach().cpu().numpy())
        return torch.from_numpy(scores).to(device=candidates.device, dtype=torch.float32)

    def scores(self, image_ids: np.ndarray, candidates: np.ndarray) -> np.ndarray:
        """image_ids (N,), candidates (N, L) -> (N,) float64 CIDEr-D."""
        image_ids = np.asarray(image_ids, dtype=np.int64).reshape(-1)
        candidates = np.asarray(candidates, dtype=np.int64).reshape(len(image_ids), -1)
        image = np.minimum(np.searchsorted(self.image_ids, image_ids), len(self.image_ids) - 1)
        unknown = self.image_ids[image] != image_ids
        if unknown.any():
            raise ValueError(
                f"{int(unknown.sum())} candidates are for images without references (e.g. {image_ids[unknown][0]})"
            )
        if candidates.size and (candidates.min() < 0 or candidates.max() >= self.vocab_size):
            raise ValueError(
                f"candidate token ids must be in [0, {self.vocab_size}); pass vocab_size to CiderDReward"
            )

        num = len(image_ids)
        tokens, lengths = self._clean(candidates.reshape(-1), np.full(num, candidates.shape[1]))

        # Every (candidate, reference of its image) pair: P = sum of the reference counts.
        pair_ref, pair_cand = _expand(self.first_ref[image], self.first_ref[image] + self.ref_counts[image])
        pair_start = (
            np.cumsum(self.ref_counts[image]) - self.ref_counts[image]
        )  # (N,) first pair of each candidate
        dot = np.zeros((len(pair_ref), self.n))  # (P, n)
        norm = np.zeros((num, self.n))  # (N, n)
        for k, (key, sentence) in enumerate(ngram_keys(tokens, lengths, self.n, self.vocab_size)):
            local_keys, local = np.unique(key, return_inverse=True)
            cand, local_key, tf = count(sentence, local)
            # Global id of each n-gram, -1 for n-grams no training reference has (df = 0, idf = log(images)).
            keys = self.keys[k]
            at = np.minimum(np.searchsorted(keys, local_keys), max(len(keys) - 1, 0))
            known = keys[at] == local_keys if len(keys) else np.zeros(len(local_keys), dtype=bool)
            global_key = np.where(known, at, -1)[local_key]
            seen = global_key >= 0
            idf = np.full(len(global_key), self.log_images)
            idf[seen] = self.idf[k][global_key[seen]]
            vec = tf * idf
            norm[:, k] = np.bincount(cand, vec**2, minlength=num)
            # Reference rows with the same (image, n-gram): clipped products, summed per (candidate, reference).
            # The rows of this call's images are gathered first, so the searches run in a small table.
            want = image[cand[seen]] * np.int64(len(keys)) + global_key[seen]
            pairs, ref_sentence, ref_count = self.rows[k]
            images = np.unique(image)
            rows, _ = _expand(self.blocks[k][images], self.blocks[k][images + 1])
            local_pairs = pairs[rows]
            at, owner = _expand(
                np.searchsorted(local_pairs, want, "left"), np.searchsorted(local_pairs, want, "right")
            )
            row = rows[at]
            ref_vec = ref_count[row] * self.idf[k][pairs[row] % np.int64(len(keys))]
            hyp_vec = vec[seen][owner]
            owner_cand = cand[seen][owner]
            slot = ref_sentence[row] - self.first_ref[image[owner_cand]]
            products = np.minimum(hyp_vec, ref_vec) * ref_vec
            dot[:, k] = np.bincount(pair_start[owner_cand] + slot, products, minlength=len(pair_ref))

        cand_len = np.maximum(lengths - 1, 0)
        delta = cand_len[pair_cand] - self.ref_len[pair_ref]
        sims = similarities(
            dot, self.ref_norm[pair_ref], np.sqrt(norm)[pair_cand], delta, self.sigma
        )  # (P, n)
        return np.bincount(pair_cand, sims.mean(1), minlength=num) / self.ref_counts[image] * 10.0
