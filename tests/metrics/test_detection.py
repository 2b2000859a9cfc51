"""Detection and attribute AP as bottom-up-attention's vg_eval: hand-computed cases and an independent loop version."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.helpers.detection_data import awkward_boxes
from vqacap.metrics.detection import (
    DetectionEvaluator,
    cap_per_image,
    match_detections,
    select_detections,
    voc_ap,
)
from vqacap.models.boxes import box_iou_plus_one, class_nms_plus_one, nms_plus_one


def t(values, dtype=torch.float32):
    return torch.tensor(values, dtype=dtype)


# ----------------------------------------------------------------------------------------------------------------------
# Hand-computed cases


def test_iou_counts_the_last_pixel():
    # 10x10 boxes (x2 - x1 + 1 = 10) overlapping on 5 columns: 50 / (100 + 100 - 50).
    iou = box_iou_plus_one(t([[0, 0, 9, 9]]), t([[5, 0, 14, 9], [0, 0, 9, 9], [20, 20, 30, 30]]))
    assert iou[0].tolist() == pytest.approx([50 / 150, 1.0, 0.0])


def test_voc_ap_is_the_area_under_the_precision_envelope():
    # npos 3, ranked TP FP TP: precision 1, 1/2, 2/3 at recall 1/3, 1/3, 2/3. The envelope lifts 1/2 to 2/3:
    # AP = 1/3 * 1 + 1/3 * 2/3 + 1/3 * 0 = 5/9 .
    assert voc_ap(t([1, 0, 1], torch.bool), 3) == pytest.approx(5 / 9)
    assert voc_ap(t([0, 1], torch.bool), 1) == pytest.approx(0.5)
    assert voc_ap(t([1, 1], torch.bool), 2) == pytest.approx(1.0)
    assert voc_ap(t([], torch.bool), 2) == 0.0
    assert voc_ap(t([1], torch.bool), 0) == 0.0


def test_iou_of_exactly_half_is_a_false_positive():
    gt = t([[0, 0, 4, 9]])  # 5x10 inside the 10x10 detection: IoU exactly 0.5
    assert box_iou_plus_one(t([[0, 0, 9, 9]]), gt).item() == 0.5
    assert match_detections(t([[0, 0, 9, 9]]), t([0.9]), gt).tolist() == [False]
    assert match_detections(t([[0, 0, 8, 9]]), t([0.9]), gt).tolist() == [True]  # 50 / 90


def test_a_detection_whose_best_box_is_taken_does_not_fall_back_to_the_second():
    gt = t([[0, 0, 9, 9], [2, 0, 11, 9]])
    # The second detection overlaps box 0 best (0.909) and box 1 by 0.75, but box 0 is taken: a false positive.
    dets = t([[0, 0, 9, 9], [0, 0, 10, 9]])
    assert match_detections(dets, t([0.9, 0.8]), gt).tolist() == [True, False]
    # The order is by score, not by position.
    assert match_detections(dets, t([0.7, 0.8]), gt).tolist() == [False, True]
    metric = DetectionEvaluator(num_classes=2)
    metric.update_detections(dets, t([0.9, 0.8]), t([1, 1], torch.int64), gt, t([1, 1], torch.int64))
    assert metric.compute()["mAP"] == pytest.approx(0.5)  # recall 1/2 at precision 1, never more


def test_classes_without_ground_truth_count_zero_in_the_mean_and_nothing_in_the_weighted_mean():
    metric = DetectionEvaluator(num_classes=4)  # background + 3 classes
    gt_boxes = t([[0, 0, 9, 9], [20, 20, 29, 29]])
    gt_labels = t([1, 1], torch.int64)
    dets = t([[0, 0, 9, 9], [20, 20, 29, 29], [40, 40, 49, 49]])
    metric.update_detections(dets, t([0.9, 0.8, 0.7]), t([1, 1, 2], torch.int64), gt_boxes, gt_labels)
    result = metric.compute()
    assert result["AP"] == [1.0, 0.0, 0.0]
    assert result["npos"] == [2, 0, 0]
    assert result["mAP"] == pytest.approx(1 / 3)
    assert result["weighted_mAP"] == pytest.approx(1.0)
    assert "attribute_mAP" not in result


def test_weighted_map_weights_by_ground_truth_count():
    metric = DetectionEvaluator(num_classes=3)
    gt_boxes = t([[0, 0, 9, 9], [20, 0, 29, 9], [40, 0, 49, 9], [60, 0, 69, 9]])
    gt_labels = t([1, 1, 1, 2], torch.int64)
    # Class 1: all three found (AP 1). Class 2: one false positive ranked above the true one (AP 1/2).
    dets = t([[0, 0, 9, 9], [20, 0, 29, 9], [40, 0, 49, 9], [80, 0, 89, 9], [60, 0, 69, 9]])
    metric.update_detections(
        dets, t([0.9, 0.8, 0.7, 0.6, 0.5]), t([1, 1, 1, 2, 2], torch.int64), gt_boxes, gt_labels
    )
    result = metric.compute()
    assert result["AP"] == pytest.approx([1.0, 0.5])
    assert result["mAP"] == pytest.approx(0.75)
    assert result["weighted_mAP"] == pytest.approx((3 * 1.0 + 1 * 0.5) / 4)


def test_at_most_400_detections_per_image_keep_the_highest_scores_and_ties_at_the_cut():
    scores = torch.arange(500, dtype=torch.float32)
    assert cap_per_image(scores, 400).sum() == 400
    assert cap_per_image(scores, 400)[100:].all()
    tied = torch.cat([torch.ones(5), torch.zeros(3)])
    assert cap_per_image(tied, 6).tolist() == [True] * 8  # the 6th score (0) is shared by three: all kept
    # 400 false positives above the one true positive push it out of the image's detections: AP 0.
    boxes = torch.stack([torch.tensor([x, 100.0, x + 9, 109]) for x in range(0, 4010, 10)])
    boxes[-1] = t([0, 0, 9, 9])
    scores = torch.linspace(1.0, 0.5, len(boxes))
    labels = torch.ones(len(boxes), dtype=torch.int64)
    for cap, expected in ((400, 0.0), (0, 1 / 401)):
        metric = DetectionEvaluator(num_classes=2, max_per_image=cap)
        metric.update_detections(boxes, scores, labels, t([[0, 0, 9, 9]]), t([1], torch.int64))
        assert metric.compute()["mAP"] == pytest.approx(expected)


def test_select_detections_applies_per_class_nms_with_the_plus_one_convention():
    a, b = [0, 0, 9, 9], [5, 0, 14, 9]  # IoU 1/3 with +1 pixel (suppressed at 0.3); 0.286 without (kept)
    assert len(nms_plus_one(t([a, b]), t([0.9, 0.8]), 0.3)) == 1
    # Two proposals, three classes (0 = background); class-specific boxes.
    class_boxes = t([[a, a, a], [b, b, [50, 50, 59, 59]]])
    class_scores = t([[0.1, 0.6, 0.3], [0.2, 0.5, 0.3]])
    boxes, scores, labels = select_detections(class_boxes, class_scores)
    # Class 1: b is suppressed by a. Class 2: the boxes do not overlap, both kept.
    assert labels.tolist() == [1, 2, 2]
    assert scores.tolist() == pytest.approx([0.6, 0.3, 0.3])
    assert boxes.tolist() == [a, a, [50, 50, 59, 59]]
    # The cap applies over all classes; the two scores tied at the cut are both kept.
    assert select_detections(class_boxes, class_scores, max_per_image=2)[2].tolist() == [1, 2, 2]
    assert select_detections(class_boxes, class_scores, max_per_image=1)[2].tolist() == [1]
    # One box per proposal shared by every class: b is now suppressed in class 2 as well.
    boxes, scores, labels = select_detections(t([a, b]), class_scores)
    assert labels.tolist() == [1, 2] and boxes.tolist() == [a, a]


def kept_mask(indices, n):
    mask = torch.zeros(n, dtype=torch.bool)
    mask[indices] = True
    return mask


def test_class_nms_at_the_threshold_and_on_ties():
    # 1 x 6 pixels inside 2 x 10: IoU 6 / 20, which float32 rounds up to just above 0.3, so it is suppressed at 0.3
    # (as torchvision's kernel decides) and kept at 0.31.
    # In class 2 the duplicates tie: the first index goes first.
    boxes = t([[0, 0, 0, 5], [0, 0, 1, 9], [0, 0, 1, 9]])
    scores = t([[0.9, 0.1], [0.8, 0.5], [0.7, 0.5]])
    assert class_nms_plus_one(boxes, scores, 0.3).tolist() == [[True, False], [False, True], [False, False]]
    assert class_nms_plus_one(boxes, scores, 0.31).tolist() == [[True, True], [True, True], [False, False]]
    for c in range(2):
        assert torch.equal(
            class_nms_plus_one(boxes, scores, 0.3)[:, c], kept_mask(nms_plus_one(boxes, scores[:, c], 0.3), 3)
        )


@pytest.mark.parametrize("num_boxes", [0, 1, 5, 300])
def test_class_nms_keeps_what_one_nms_per_class_keeps(num_boxes):
    for seed in range(10):
        gen = torch.Generator().manual_seed(seed)
        boxes = awkward_boxes(num_boxes, gen)
        scores = torch.rand(num_boxes, 6, generator=gen)
        if seed % 2:
            scores = (scores * 4).round() / 4  # exact ties within every class
        for threshold in (0.3, 0.7):
            kept = class_nms_plus_one(boxes, scores, threshold)
            assert kept.shape == (num_boxes, 6)
            for c in range(6):
                expected = kept_mask(nms_plus_one(boxes, scores[:, c], threshold), num_boxes)
                assert torch.equal(kept[:, c], expected), (seed, threshold, c)


def test_attribute_ap_is_scored_on_the_ground_truth_boxes():
    metric = DetectionEvaluator(num_classes=2, num_attributes=4)  # no-attribute + 3 attributes
    gt_boxes = t([[0, 0, 9, 9], [50, 50, 59, 59]])
    gt_attributes = t([[1, 0], [2, -1]], torch.int64)  # box 0 has attribute 1, box 1 has attribute 2
    # Attribute 1: box 1 (0.95, false) above box 0 (0.9, true): AP 1/2. Attribute 2: box 1 first: AP 1.
    # Attribute 3 has no ground truth: AP 0, counted in the mean.
    scores = t([[0.0, 0.9, 0.1, 0.2], [0.0, 0.95, 0.7, 0.3]])
    metric.update_attributes(gt_boxes, gt_attributes, scores)
    result = metric.compute()
    assert result["attribute_AP"] == pytest.approx([0.5, 1.0, 0.0])
    assert result["attribute_npos"] == [1, 1, 0]
    assert result["attribute_mAP"] == pytest.approx(0.5)
    assert result["attribute_weighted_mAP"] == pytest.approx(0.75)
    assert "mAP" not in result  # no object detections were given
    # Scores without the no-attribute column are accepted, as test_net_with_gt_boxes pads it.
    other = DetectionEvaluator(num_classes=2, num_attributes=4)
    other.update_attributes(gt_boxes, gt_attributes, scores[:, 1:])
    assert other.compute()["attribute_AP"] == pytest.approx([0.5, 1.0, 0.0])


def test_bad_input_names_the_field():
    metric = DetectionEvaluator(num_classes=3, num_attributes=3)
    with pytest.raises(ValueError, match="detection labels must lie in 1..2, got 3"):
        metric.update_detections(t([[0, 0, 1, 1]]), t([0.5]), t([3], torch.int64), t([[0, 0, 1, 1]]), t([1]))
    with pytest.raises(ValueError, match=r"attribute_scores have shape \(1, 5\), expected \(1, 3\)"):
        metric.update_attributes(t([[0, 0, 1, 1]]), t([[1]]), torch.zeros(1, 5))
    with pytest.raises(ValueError, match="ground-truth attributes must lie in 1..2, got 7"):
        metric.update_attributes(t([[0, 0, 1, 1]]), t([[7]]), torch.zeros(1, 3))


def test_compute_follows_updates_and_reset():
    metric = DetectionEvaluator(num_classes=2)
    box = t([[0, 0, 9, 9]])
    metric.update_detections(box, t([0.9]), t([1], torch.int64), box, t([1], torch.int64))
    assert metric.compute()["mAP"] == 1.0
    metric.update_detections(box + 30, t([0.95]), t([1], torch.int64), box, t([1], torch.int64))
    # npos 2; ranked FP (0.95), TP (0.9): recall 1/2 at precision 1/2.
    assert metric.compute()["AP"] == pytest.approx([0.25])
    metric.reset()
    metric.update_detections(box, t([0.9]), t([1], torch.int64), box, t([1], torch.int64))
    assert metric.compute()["mAP"] == 1.0


# ----------------------------------------------------------------------------------------------------------------------
# Independent computation: the reference procedure written out as vg_eval does it (one global sort per class, a dict
# of ground-truth records per image, a loop over the detections, the envelope with an explicit backward loop).


def reference_class_ap(detections, ground_truth, one_based=False):
    """detections: list of (image, score, box); ground_truth: {image: array (G, 4)}."""
    records = {img: {"bbox": np.asarray(b, dtype=float).reshape(-1, 4), "det": [False] * len(b)} for img, b in
               ground_truth.items()}  # fmt: skip
    npos = sum(len(r["bbox"]) for r in records.values())
    if npos == 0 or not detections:
        return 0.0, npos
    ranked = sorted(detections, key=lambda d: -d[1])
    tp, fp = np.zeros(len(ranked)), np.zeros(len(ranked))
    for d, (img, _, box) in enumerate(ranked):
        bb = np.asarray(box, dtype=float) + (1 if one_based else 0)
        rec = records[img]
        ovmax, jmax = -np.inf, -1
        for j, g in enumerate(rec["bbox"]):
            iw = max(min(g[2], bb[2]) - max(g[0], bb[0]) + 1.0, 0.0)
            ih = max(min(g[3], bb[3]) - max(g[1], bb[1]) + 1.0, 0.0)
            inter = iw * ih
            union = (
                (bb[2] - bb[0] + 1.0) * (bb[3] - bb[1] + 1.0)
                + (g[2] - g[0] + 1.0) * (g[3] - g[1] + 1.0)
                - inter
            )
            if inter / union > ovmax:
                ovmax, jmax = inter / union, j
        if ovmax > 0.5 and not rec["det"][jmax]:
            tp[d] = 1
            rec["det"][jmax] = True
        else:
            fp[d] = 1
    tp, fp = np.cumsum(tp), np.cumsum(fp)
    rec = list(np.concatenate([[0.0], tp / npos, [1.0]]))
    prec = list(np.concatenate([[0.0], tp / np.maximum(tp + fp, 1e-300), [0.0]]))
    for i in range(len(prec) - 1, 0, -1):
        prec[i - 1] = max(prec[i - 1], prec[i])
    return sum((rec[i + 1] - rec[i]) * prec[i + 1] for i in range(len(rec) - 1) if rec[i + 1] != rec[i]), npos


def random_scene(rng, num_classes, num_gt):
    centres = rng.uniform(0, 120, size=(num_gt, 2))
    sizes = rng.uniform(4, 40, size=(num_gt, 2))
    boxes = np.concatenate([centres, centres + sizes], 1).round(1)
    return boxes, rng.integers(1, num_classes, size=num_gt)


def jitter(rng, boxes, scale):
    return (
        boxes + rng.normal(0, scale, size=boxes.shape) * (boxes[:, 2:] - boxes[:, :2]).repeat(2, axis=1) / 4
    )


@pytest.mark.parametrize("one_based", [False, True])
def test_object_ap_equals_the_reference_procedure_on_random_scenes(one_based):
    rng = np.random.default_rng(0)
    num_classes, num_images = 6, 25
    metric = DetectionEvaluator(num_classes=num_classes, max_per_image=0, one_based_detections=one_based)
    dets = {c: [] for c in range(1, num_classes)}
    gts = {c: {} for c in range(1, num_classes)}
    for img in range(num_images):
        gt_boxes, gt_labels = random_scene(rng, num_classes, int(rng.integers(0, 8)))
        # Detections: jittered copies of the ground truth (some with the wrong class, some twice) and clutter.
        copies = np.concatenate([gt_boxes, gt_boxes[: len(gt_boxes) // 2]])
        det_boxes = np.concatenate([jitter(rng, copies, 0.3), random_scene(rng, num_classes, 6)[0]])
        det_labels = np.concatenate(
            [gt_labels, gt_labels[: len(gt_boxes) // 2], rng.integers(1, num_classes, 6)]
        )
        flip = rng.random(len(det_labels)) < 0.15
        det_labels[flip] = rng.integers(1, num_classes, flip.sum())
        det_scores = rng.random(len(det_labels))
        metric.update_detections(
            torch.from_numpy(det_boxes), torch.from_numpy(det_scores), torch.from_numpy(det_labels),
            torch.from_numpy(gt_boxes), torch.from_numpy(gt_labels),
        )  # fmt: skip
        for c in range(1, num_classes):
            gts[c][img] = gt_boxes[gt_labels == c]
            dets[c] += [(img, s, b) for b, s, lab in zip(det_boxes, det_scores, det_labels) if lab == c]
    expected = [reference_class_ap(dets[c], gts[c], one_based) for c in range(1, num_classes)]
    result = metric.compute()
    assert result["AP"] == pytest.approx([ap for ap, _ in expected], abs=1e-12)
    assert result["npos"] == [n for _, n in expected]
    assert 0.1 < result["mAP"] < 0.95  # the scenes exercise both matches and misses
    weights = np.array([n for _, n in expected], dtype=float)
    assert result["weighted_mAP"] == pytest.approx(np.average([ap for ap, _ in expected], weights=weights))


def test_attribute_ap_equals_the_reference_procedure_on_random_scenes():
    rng = np.random.default_rng(1)
    num_attributes, num_images, cap = 7, 20, 30
    metric = DetectionEvaluator(num_classes=2, num_attributes=num_attributes, max_per_image=cap)
    dets = {a: [] for a in range(1, num_attributes)}
    gts = {a: {} for a in range(1, num_attributes)}
    for img in range(num_images):
        boxes, _ = random_scene(rng, 2, int(rng.integers(1, 9)))
        attributes = rng.integers(0, num_attributes, size=(len(boxes), 3))  # 0 pads; repeats allowed
        scores = rng.random((len(boxes), num_attributes))
        metric.update_attributes(
            torch.from_numpy(boxes), torch.from_numpy(attributes), torch.from_numpy(scores)
        )
        # test_net_with_gt_boxes: every (box, attribute) pair, capped per image at the cap-th highest score.
        flat = scores[:, 1:].reshape(-1)
        threshold = np.sort(flat)[-cap] if len(flat) > cap else -np.inf
        for a in range(1, num_attributes):
            gts[a][img] = boxes[np.any(attributes == a, axis=1)]
            dets[a] += [(img, s, b) for b, s in zip(boxes, scores[:, a]) if s >= threshold]
    expected = [reference_class_ap(dets[a], gts[a]) for a in range(1, num_attributes)]
    result = metric.compute()
    assert result["attribute_AP"] == pytest.approx([ap for ap, _ in expected], abs=1e-12)
    assert result["attribute_npos"] == [n for _, n in expected]
