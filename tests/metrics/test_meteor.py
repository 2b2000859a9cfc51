"""METEOR 1.5 through pycocoevalcap's jar equals pycocoevalcap's Meteor."""

from __future__ import annotations

import random
import threading

import pytest

from vqacap.metrics.captions import evaluate_captions
from vqacap.metrics.captions import meteor as meteor_module

if meteor_module.unavailable():
    pytest.skip(meteor_module.unavailable(), allow_module_level=True)

_WORDS = (
    "a an the man men woman women dog dogs cat cats is are sitting sits sat riding rides rode on in with of and to "
    "near next large small big little red white black street road table plate pizza food horse horses running runs "
    "playing plays field grass water boat beach surfboard wave kitchen people person group young old"
)


@pytest.fixture(scope="module")
def pycoco_meteor():
    """pycocoevalcap's Meteor driving the METEOR process ours started (one slow JVM start instead of two): it checks
    our line protocol, batching and parsing against pycocoevalcap's on the same jar."""
    from pycocoevalcap.meteor.meteor import Meteor

    class SharedProcessMeteor(Meteor):
        def __init__(self, process):
            self.meteor_p, self.lock = process, threading.Lock()

        def __del__(self):  # the process belongs to vqacap's shared scorer
            pass

    meteor_module.meteor([["warm up"]], ["warm up"])
    return SharedProcessMeteor(meteor_module._shared._process)


def _generated(seed: int, num_images: int) -> tuple[dict, dict]:
    rng = random.Random(seed)
    words = _WORDS.split()

    def caption() -> str:
        if rng.random() < 0.04:
            return ""
        return " ".join(rng.choice(words) for _ in range(rng.randint(1, 16)))

    references = {i: [caption() for _ in range(rng.randint(1, 6))] for i in range(num_images)}
    return references, {i: caption() for i in references}


def test_meteor_equals_pycocoevalcap(pycoco_meteor):
    references, results = _generated(0, 250)
    results[3] = "a man | riding ||| a horse  on  the beach"  # pycocoevalcap's hypothesis cleaning
    expected, expected_images = pycoco_meteor.compute_score(references, {i: [r] for i, r in results.items()})
    score, images = meteor_module.meteor(list(references.values()), list(results.values()))
    assert score == pytest.approx(expected, abs=1e-12)
    assert images == pytest.approx(expected_images, abs=1e-12)
    assert 0.05 < score < 0.6


def test_meteor_published_single_sentence_example(pycoco_meteor):
    scores = evaluate_captions(
        {0: ["this is a test", "this is also a test"]}, {0: "this is a good test"}, metrics=["METEOR"]
    )
    assert scores == {"METEOR": pytest.approx(0.4443438716486749, abs=1e-9)}  # nlg-eval's documented value


def test_evaluate_captions_includes_meteor_after_tokenizing(pycoco_meteor):
    references = {1: ["A dog runs on the beach.", "The dog is running!"], 2: ["Two cats (black) sleep."]}
    results = {1: "A dog running on a beach.", 2: "Cats sleeping..."}
    scores = evaluate_captions(references, results, metrics=["METEOR", "CIDEr"])
    tokenized_refs = [["a dog runs on the beach", "the dog is running"], ["two cats -lrb- black -rrb- sleep"]]
    expected, _ = pycoco_meteor.compute_score(
        dict(enumerate(tokenized_refs)), {0: ["a dog running on a beach"], 1: ["cats sleeping"]}
    )
    assert list(scores) == ["METEOR", "CIDEr"]
    assert scores["METEOR"] == pytest.approx(expected, abs=1e-12)
