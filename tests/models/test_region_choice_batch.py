"""generate_tsv's region choice for a whole padded batch (`select_proposals_batch`, `class_nms_plus_one_batch`,
`ChosenRegions`) against the per-image form it stands beside, on random proposals: ties, too few proposals, counts
above the threshold below, inside and above the limits."""

from __future__ import annotations

import pytest
import torch

from tests.helpers.detection_data import awkward_boxes
from vqacap.models.boxes import class_nms_plus_one, class_nms_plus_one_batch
from vqacap.models.regions import ChosenRegions, select_proposals, select_proposals_batch

pytestmark = pytest.mark.usefixtures("one_thread")


def random_images(seed: int, counts: list[int], num_classes: int, tie: bool = False):
    """Per image proposals (R_b, 4) and class_probs (R_b, C + 1); `tie`: scores rounded to eighths, so that
    proposals tie within a class and on their best score."""
    gen = torch.Generator().manual_seed(seed)
    images = []
    for n in counts:
        proposals = awkward_boxes(n, gen)
        probs = torch.softmax(torch.randn(n, num_classes + 1, generator=gen) * (1 + seed % 4), 1)
        if tie:
            probs = (probs * 8).round() / 8
        images.append((proposals, probs))
    return images


def padded(images):
    """(B, R, 4) proposals, (B, R, C + 1) probs and the (B, R) valid mask, garbage in the padding: it must not count."""
    r = max(len(p) for p, _ in images)
    proposals = torch.rand(len(images), r, 4) * 300
    probs = torch.rand(len(images), r, images[0][1].shape[1])
    valid = torch.zeros(len(images), r, dtype=torch.bool)
    for b, (p, c) in enumerate(images):
        proposals[b, : len(p)], probs[b, : len(p)], valid[b, : len(p)] = p, c, True
    return proposals, probs, valid


# (counts of proposals per image, classes, limits): none, R below min_boxes, exactly the limits, far above them.
CASES = [
    ([5, 30, 1, 0, 12], 6, (10, 100)),
    ([40, 40, 40], 3, (10, 100)),
    ([60, 8, 25], 2, (3, 8)),
    ([50, 36, 20], 5, (36, 36)),
    ([300, 120], 20, (10, 100)),
    ([7, 7], 4, (0, 5)),
]


@pytest.mark.parametrize("counts, num_classes, limits", CASES)
@pytest.mark.parametrize("tie", [False, True])
def test_the_batched_choice_equals_select_proposals_image_by_image(counts, num_classes, limits, tie):
    for seed in range(6):
        images = random_images(seed, counts, num_classes, tie)
        for conf_thresh in (0.05, 0.2, 0.5, 0.9):
            indices, found = select_proposals_batch(*padded(images), conf_thresh, *limits)
            assert indices.shape == (len(counts), limits[1]) and found.shape == (len(counts),)
            for b, (proposals, probs) in enumerate(images):
                expected = select_proposals(proposals, probs, conf_thresh, *limits)
                assert indices[b, : int(found[b])].tolist() == expected.tolist(), (seed, conf_thresh, b)


def test_the_cases_cover_each_branch_of_select_proposals():
    """Among the random cases: images with fewer proposals above the threshold than min_boxes, more than max_boxes,
    and in between, so the equality above tested every branch."""
    branches = set()
    for counts, num_classes, limits in CASES:
        for seed in range(6):
            for proposals, probs in random_images(seed, counts, num_classes):
                for conf_thresh in (0.05, 0.2, 0.5, 0.9):
                    scores = probs[:, 1:]
                    kept = class_nms_plus_one(proposals, scores, 0.3)
                    n = int((torch.where(kept, scores, 0).amax(1) >= conf_thresh).sum())
                    branches.add("below" if n < limits[0] else "above" if n > limits[1] else "inside")
    assert branches == {"below", "inside", "above"}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_the_batched_nms_equals_class_nms_plus_one_of_each_image(dtype):
    for seed in range(8):
        images = [(p, c.to(dtype)) for p, c in random_images(seed, [9, 1, 33, 20], 7, tie=seed % 2 == 1)]
        proposals, probs, valid = padded(images)
        kept = class_nms_plus_one_batch(proposals, probs[..., 1:].to(dtype), valid, 0.3)
        for b, (p, c) in enumerate(images):
            assert torch.equal(kept[b, : len(p)], class_nms_plus_one(p, c[:, 1:], 0.3)), (seed, b)
            assert not kept[b, len(p) :].any()


def test_chosen_regions_pad_and_unpad_the_per_image_form():
    gen = torch.Generator().manual_seed(0)
    found = [
        (torch.randn(k, 8, generator=gen), torch.rand(k, 4, generator=gen), {"labels": torch.arange(k) + 1})
        for k in (3, 0, 5)
    ]
    chosen = ChosenRegions.stack(found)
    assert chosen.features.shape == (3, 5, 8) and chosen.counts.tolist() == [3, 0, 5]
    assert not chosen.features[0, 3:].any() and not chosen.fields["labels"][0, 3:].any()
    again = ChosenRegions.of(chosen.tensors()).unpadded()
    for (f, b, x), (f2, b2, x2) in zip(found, again):
        assert torch.equal(f, f2) and torch.equal(b, b2) and torch.equal(x["labels"], x2["labels"])
