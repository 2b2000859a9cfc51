"""CIDEr-D reward: vqacap's vectorised `CiderDReward` against pycocoevalcap's `CiderScorer`, on SCST-sized batches.

A seeded synthetic problem: --images images with --refs references each and --samples sampled captions per image
(8-16 words from a --vocab word vocabulary with Zipf-like frequencies, as captions have). pycocoevalcap scores each round
of samples (one caption per image) with a fresh CiderScorer, construction and cooking included, as a training loop
using it would; its document frequencies are then those of exactly the images the reward is built on, so the values
must agree. The reward is built once (its own row) and its calls are timed in steady state (best and median of
--repeats). A third row scores the same batch with the reward built on --train-images images (COCO train is 113k).
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from vqacap.data.vocab import EOS_ID, PAD_ID
from vqacap.metrics.captions.reward import CiderDReward

FIRST_WORD = 4  # ids 0..3 are the specials


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--images", type=int, default=100, help="images in a batch")
    parser.add_argument("--samples", type=int, default=5, help="sampled captions per image")
    parser.add_argument("--refs", type=int, default=5, help="references per image")
    parser.add_argument("--vocab", type=int, default=1000, help="words in the vocabulary")
    parser.add_argument("--repeats", type=int, default=20, help="timed calls of the reward")
    parser.add_argument(
        "--train-images", type=int, default=20000, help="images of the larger reward (0: skip)"
    )
    parser.add_argument("--seed", type=int, default=0)


def sentences(rng: np.random.Generator, count: int, vocab: int) -> list[list[int]]:
    """Captions of 8-16 words; word frequencies fall off as 1/rank, as in captions."""
    weights = 1.0 / np.arange(1, vocab - FIRST_WORD + 1)
    lengths = rng.integers(8, 17, count)
    words = rng.choice(vocab - FIRST_WORD, size=int(lengths.sum()), p=weights / weights.sum()) + FIRST_WORD
    return [s.tolist() for s in np.split(words, np.cumsum(lengths)[:-1])]


def problem(args: argparse.Namespace, images: int):
    rng = np.random.default_rng(args.seed)
    image_ids = np.arange(images) * 7 + 3
    refs = sentences(rng, images * args.refs, args.vocab)
    references = {int(i): refs[n * args.refs : (n + 1) * args.refs] for n, i in enumerate(image_ids)}
    batch_ids = np.repeat(image_ids[: args.images], args.samples)
    candidates = np.full((len(batch_ids), 18), PAD_ID, dtype=np.int64)
    for n, caption in enumerate(sentences(rng, len(batch_ids), args.vocab)):
        candidates[n, : len(caption)] = caption
        candidates[n, len(caption)] = EOS_ID
    return references, batch_ids, candidates


def pycocoevalcap_scores(
    references: dict, batch_ids: np.ndarray, candidates: np.ndarray, samples: int
) -> np.ndarray:
    from pycocoevalcap.cider.cider_scorer import CiderScorer

    def text(ids) -> str:
        """Words up to the end token, which counts as the word "2" (the reward's default, `count_eos`)."""
        ids = list(ids)
        ids = ids[: ids.index(EOS_ID) + 1] if EOS_ID in ids else ids
        return " ".join(str(i) for i in ids if i >= FIRST_WORD or i == EOS_ID)

    scores = np.zeros(len(batch_ids))
    for s in range(samples):  # one round of samples: one caption per image
        scorer = CiderScorer(n=4, sigma=6.0)
        for n in range(s, len(batch_ids), samples):
            scorer += (text(candidates[n]), [text([*r, EOS_ID]) for r in references[int(batch_ids[n])]])
        scores[s::samples] = scorer.compute_score()[1]
    return scores


def timed(fn, repeats: int) -> tuple[list[float], object]:
    times, out = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        times.append((time.perf_counter() - start) * 1000)
    return times, out


def run(args: argparse.Namespace) -> list[dict]:
    references, batch_ids, candidates = problem(args, args.images)
    size = {"candidates": len(batch_ids), "refs/image": args.refs}
    ref_times, expected = timed(
        lambda: pycocoevalcap_scores(references, batch_ids, candidates, args.samples),
        max(3, args.repeats // 4),
    )
    build_times, reward = timed(lambda: CiderDReward(references, vocab_size=args.vocab), 3)
    call_times, got = timed(lambda: reward.scores(batch_ids, candidates), args.repeats)
    error = float(np.abs(got - expected).max())
    baseline = statistics.median(ref_times)
    rows = [
        {"scorer": "pycocoevalcap CiderScorer", "reward images": args.images, **size,
         "best ms": min(ref_times), "median ms": baseline, "build ms": 0.0, "speedup": 1.0},
        {"scorer": "CiderDReward", "reward images": args.images, **size,
         "best ms": min(call_times), "median ms": statistics.median(call_times),
         "build ms": statistics.median(build_times), "speedup": baseline / statistics.median(call_times),
         "max |diff|": error, "equal": error < 1e-6},
    ]  # fmt: skip
    if args.train_images > args.images:
        big_references, _, _ = problem(args, args.train_images)
        build_times, big = timed(lambda: CiderDReward(big_references, vocab_size=args.vocab), 1)
        call_times, _ = timed(lambda: big.scores(batch_ids, candidates), args.repeats)
        rows.append(
            {"scorer": "CiderDReward", "reward images": args.train_images, **size, "best ms": min(call_times),
             "median ms": statistics.median(call_times), "build ms": build_times[0],
             "speedup": baseline / statistics.median(call_times)}
        )  # fmt: skip
    return rows
