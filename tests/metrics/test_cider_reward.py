"""CiderDReward: the vectorised CIDEr-D reward for self-critical training, against pycocoevalcap's CiderScorer."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.helpers.references import import_reference
from vqacap.data.vocab import BOS_ID, EOS_ID, PAD_ID, UNK_ID
from vqacap.metrics.captions import CiderDReward

cider_scorer = import_reference("pycocoevalcap.cider.cider_scorer")


def _words(ids, eos_word: bool = True, unk_word: bool = True) -> str:
    """Token ids as strings for pycocoevalcap, written the way ruotianluo/self-critical.pytorch scores SCST samples:
    words up to the first <eos>/<pad>, <bos> skipped, "<unk>" a word, and the end token itself written as the word
    "<eos>" when the caption emitted it. eos_word=False, unk_word=False: coco-caption's evaluation of finished
    captions (end and unknown tokens dropped)."""
    out = []
    for i in ids:
        if i == EOS_ID and eos_word:
            out.append("<eos>")
        if i in (EOS_ID, PAD_ID):
            break
        if i == UNK_ID:
            if unk_word:
                out.append("<unk>")
        elif i != BOS_ID:
            out.append(f"w{i}")
    return " ".join(out)


def _reference(ids, eos_word: bool = True, unk_word: bool = True) -> str:
    """A reference as a string: as prepro_ngrams.py writes them, each one closed by the end word."""
    ids = list(ids)
    return _words(ids + [EOS_ID] if EOS_ID not in ids else ids, eos_word, unk_word)


def _problem(seed: int, images: int, samples: int, vocab: int, width: int = 20):
    rng = np.random.default_rng(seed)

    def sentence(low, high):
        return (rng.zipf(1.4, rng.integers(low, high + 1)) % (vocab - 4) + 4).tolist()

    image_ids = rng.choice(10**6, images, replace=False).tolist()
    references = {i: [sentence(1, 16) for _ in range(rng.integers(1, 7))] for i in image_ids}
    references[image_ids[0]].append([BOS_ID, 5, 6, UNK_ID, 7, EOS_ID, 9, 9])  # specials inside a reference
    ids = np.repeat(np.array(image_ids), samples)
    candidates = np.full((len(ids), width), PAD_ID)
    for n in range(len(ids)):
        s = sentence(0, width - 2)
        candidates[n, : len(s)] = s
        if n % 3 == 0 and len(s) < width:  # words after <eos> must not count
            candidates[n, len(s)] = EOS_ID
            candidates[n, len(s) + 1 :] = rng.integers(4, vocab, width - len(s) - 1)
        if n % 5 == 1:
            candidates[n, 0] = BOS_ID
    candidates[1] = PAD_ID  # an empty caption
    return references, ids, candidates


def _pycoco(
    references, ids, candidates, samples: int, eos_word: bool = True, unk_word: bool = True
) -> np.ndarray:
    """pycocoevalcap scoring each round of samples (one candidate per image): its document frequencies then come from
    exactly the images the reward was built on."""
    scores = np.zeros(len(ids))
    for s in range(samples):
        scorer = cider_scorer.CiderScorer(n=4, sigma=6.0)
        for n in range(s, len(ids), samples):
            refs = [_reference(r, eos_word, unk_word) for r in references[int(ids[n])]]
            scorer += (_words(candidates[n], eos_word, unk_word), refs)
        scores[s::samples] = scorer.compute_score()[1]
    return scores


@pytest.mark.parametrize(
    ("seed", "images", "samples", "vocab"), [(0, 100, 5, 1000), (1, 7, 3, 12), (2, 1, 2, 30)]
)
def test_reward_equals_pycocoevalcap_cider_d(seed, images, samples, vocab):
    references, ids, candidates = _problem(seed, images, samples, vocab)
    reward = CiderDReward(references, vocab_size=vocab)
    np.testing.assert_allclose(
        reward.scores(ids, candidates), _pycoco(references, ids, candidates, samples), atol=1e-9
    )


@pytest.mark.parametrize(("seed", "images", "samples", "vocab"), [(5, 40, 4, 200), (6, 3, 2, 12)])
def test_without_eos_and_unk_the_reward_equals_coco_caption_on_finished_captions(
    seed, images, samples, vocab
):
    references, ids, candidates = _problem(seed, images, samples, vocab)
    reward = CiderDReward(references, vocab_size=vocab, count_eos=False, keep_unk=False)
    expected = _pycoco(references, ids, candidates, samples, eos_word=False, unk_word=False)
    np.testing.assert_allclose(reward.scores(ids, candidates), expected, atol=1e-9)


def test_a_caption_that_stops_mid_sentence_scores_clearly_below_the_completed_caption():
    text = "<pad> <bos> <eos> <unk> a man riding horse on the beach dog running in park cat sitting sofa"
    words = text.split()
    ids = {w: i for i, w in enumerate(words)}

    def encode(text):
        return [ids[w] for w in text.split()]

    references = {
        1: [encode(t) for t in ("a man riding a horse on the beach", "a man riding a horse on a beach",
                                "a man on a horse on the beach")],
        2: [encode(t) for t in ("a dog running in the park", "a dog running on the beach")],
        3: [encode(t) for t in ("a cat sitting on the sofa", "a cat on a sofa")],
    }  # fmt: skip
    completed = encode("a man riding a horse on the beach") + [EOS_ID]
    fragment = encode("a man riding a horse on the") + [EOS_ID, PAD_ID]
    candidates = torch.tensor([completed, fragment])
    full, cut = CiderDReward(references, vocab_size=len(words))(torch.tensor([1, 1]), candidates).tolist()
    assert cut <= 0.95 * full
    # Without <eos> as a word the fragment is nearly free: every n-gram of it is in a reference.
    old = CiderDReward(references, vocab_size=len(words), count_eos=False, keep_unk=False)
    old_full, old_cut = old(torch.tensor([1, 1]), candidates).tolist()
    assert old_cut / old_full > cut / full


def test_unk_is_a_word_and_does_not_join_its_neighbours():
    references = {1: [[4, 5, 6, 7]], 2: [[8, 9, 10]]}
    joined = torch.tensor([[4, 5, UNK_ID, 6, 7, EOS_ID]])  # without <unk>: exactly the reference
    kept = CiderDReward(references, vocab_size=12)(torch.tensor([1]), joined).item()
    dropped = CiderDReward(references, vocab_size=12, keep_unk=False)(torch.tensor([1]), joined).item()
    exact = CiderDReward(references, vocab_size=12, keep_unk=False)(
        torch.tensor([1]), torch.tensor([[4, 5, 6, 7, EOS_ID, 0]])
    ).item()
    assert dropped == pytest.approx(exact) and kept < 0.8 * dropped


def test_hashed_ngram_keys_for_a_large_vocabulary_give_the_same_rewards():
    references, ids, candidates = _problem(3, 30, 4, vocab=500)
    small = CiderDReward(references, vocab_size=500).scores(ids, candidates)
    large = CiderDReward(references, vocab_size=100_000).scores(
        ids, candidates
    )  # 100000**4 > 2**63: hashed keys
    np.testing.assert_allclose(large, small, atol=1e-12)


def test_call_returns_float32_rewards_on_the_candidates_device():
    references, ids, candidates = _problem(4, 10, 2, vocab=50)
    reward = CiderDReward(references, vocab_size=50)
    out = reward(torch.tensor(ids), torch.tensor(candidates))
    assert out.dtype == torch.float32 and out.shape == (len(ids),)
    np.testing.assert_allclose(out.numpy(), reward.scores(ids, candidates), rtol=1e-6)


def test_copying_a_reference_beats_a_random_caption_and_empty_scores_zero():
    references = {
        1: [[4, 5, 6, 7, 8], [4, 5, 9, 7]],
        2: [[10, 11, 12], [10, 13, 12, 14]],
        3: [[15, 16, 17, 18]],
    }
    reward = CiderDReward(references, vocab_size=20)
    candidates = torch.tensor([[1, 4, 5, 6, 7, 8, 2], [19, 18, 17, 4, 2, 0, 0], [2, 4, 5, 6, 0, 0, 0]])
    good, bad, empty = reward(torch.tensor([1, 1, 1]), candidates).tolist()
    assert good > 1.0 > bad >= 0.0 and empty == 0.0


def test_bad_input_is_reported():
    reward = CiderDReward({1: [[4, 5, 6]], 2: [[5, 6, 7]]}, vocab_size=10)
    with pytest.raises(ValueError, match="1 candidates are for images without references"):
        reward(torch.tensor([1, 3]), torch.tensor([[4, 5], [5, 6]]))
    with pytest.raises(ValueError, match=r"token ids must be in \[0, 10\)"):
        reward(torch.tensor([1]), torch.tensor([[4, 12]]))
    with pytest.raises(ValueError, match="image 2 has no reference"):
        CiderDReward({1: [[4]], 2: []})


def test_default_vocabulary_bound_accepts_words_no_reference_uses():
    references = {1: [[4, 5, 6]], 2: [[5, 6, 7]]}
    candidates = torch.tensor([[4, 5, 900, 6, EOS_ID], [5, 6, 7, 0, 0]])
    default = CiderDReward(references)(torch.tensor([1, 2]), candidates)
    explicit = CiderDReward(references, vocab_size=1000)(torch.tensor([1, 2]), candidates)
    torch.testing.assert_close(default, explicit)


def test_a_missing_reference_implementation_skips_here_and_fails_in_ci(monkeypatch):
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception):
        import_reference("pycocoevalcap_missing_module")
    monkeypatch.setenv("CI", "true")
    with pytest.raises(ModuleNotFoundError):
        import_reference("pycocoevalcap_missing_module")
