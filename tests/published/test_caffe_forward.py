"""vqacap's forward of the published detector against what the real Caffe computed (tests/fixtures/caffe: a tiny network
with every layer type of test.prototxt, random weights, two photographs), stage by stage and end to end."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from vqacap.models.caffe_detector import blob_scale, caffe_blob, generate_anchors, proposals
from vqacap.models.regions import bottom_up_batch, select_proposals
from vqacap.published.detector import load_caffe_detector

FIXTURES = Path(__file__).parents[1] / "fixtures" / "caffe"
IMAGES = ("chelsea", "rocket")


@pytest.fixture(scope="module")
def detector():
    return load_caffe_detector(FIXTURES / "tiny.caffemodel", FIXTURES / "test.prototxt")


@pytest.fixture(scope="module", params=IMAGES)
def caffe(request):
    return dict(np.load(FIXTURES / f"tiny_{request.param}.npz"))


def _im_info(caffe) -> tuple[float, float, float]:
    return tuple(float(x) for x in caffe["im_info"][0])


def test_the_anchors_are_generate_anchors_ratio_major_with_numpy_rounding():
    anchors = generate_anchors(16, (0.5, 1.0, 2.0), (4, 8, 16, 32))
    assert anchors.shape == (12, 4)
    assert anchors[0].tolist() == [-38.0, -16.0, 53.0, 31.0]  # ratio 0.5, scale 4: 23 x 12 rounded, times 4
    assert anchors[4].tolist() == [-24.0, -24.0, 39.0, 39.0]  # ratio 1, scale 4: 64 x 64 around (7.5, 7.5)


def test_the_input_blob_is_get_image_blob_to_one_float_rounding(detector, caffe):
    """BGR minus the means, cv2.resize INTER_LINEAR by s: within 1.5e-5 (one float32 step at 64-128)."""
    data, s = caffe_blob(torch.from_numpy(caffe["image_bgr"]), detector.spec)
    assert s == float(caffe["im_scale"]) == blob_scale(*caffe["image_bgr"].shape[:2])
    assert list(data.shape[2:]) == caffe["im_info"][0, :2].astype(int).tolist()
    rows = data[0][:, caffe["data_rows"], :].numpy()
    assert np.abs(rows - caffe["data_sampled"]).max() <= 2e-5


def test_the_proposal_layer_on_caffes_rpn_blobs_gives_caffes_rois(detector, caffe):
    rois = proposals(
        torch.from_numpy(caffe["rpn_cls_prob_reshape"][0]),
        torch.from_numpy(caffe["rpn_bbox_pred"][0]),
        _im_info(caffe),
        detector.spec,
    )
    assert rois.shape == (300, 4)
    assert np.abs(rois.numpy() - caffe["rois"][:, 1:]).max() <= 1e-3


def test_roi_pooling_equals_caffes_roipooling():
    """torchvision's roi_pool rounds RoIs half away from zero and bins them as roi_pooling_layer.cpp does."""
    caffe = np.load(FIXTURES / "tiny_chelsea.npz")
    from torchvision.ops import roi_pool

    rois = torch.from_numpy(caffe["rois"][:16])
    pooled = roi_pool(torch.from_numpy(caffe["res4b1"]), rois, (14, 14), 0.0625)
    assert torch.equal(pooled, torch.from_numpy(caffe["roipool5_first16"]))


def test_the_box_and_attribute_heads_on_caffes_rois_give_caffes_blobs(detector, caffe):
    """pool5 to 1e-4 relative, class and attribute probabilities to 1e-5 absolute."""
    data, _ = caffe_blob(torch.from_numpy(caffe["image_bgr"]), detector.spec)
    with torch.no_grad():
        out = detector._given(data, torch.from_numpy(caffe["rois"][:, 1:]))
    pool5 = caffe["pool5_flat"]
    assert np.abs(out.pool5.numpy() - pool5).max() <= 1e-4 * np.abs(pool5).max()
    assert np.abs(out.cls_prob.numpy() - caffe["cls_prob"]).max() <= 1e-5
    assert np.abs(out.attr_prob.numpy() - caffe["attr_prob"]).max() <= 1e-5


def test_the_whole_forward_gives_caffes_rois(detector, caffe):
    """End to end from the image: the same 300 RoIs to 1e-3 pixels. On chelsea two proposals whose objectness differs
    by 1.2e-7 (float32 rounding of the convolutions, summed in another order than Caffe's BLAS) are visited by NMS in
    the other order, so from RoI 152 on the order differs; the set is the same."""
    data, s = caffe_blob(torch.from_numpy(caffe["image_bgr"]), detector.spec)
    out = detector(data, _im_info(caffe))
    ours, theirs = out.rois.numpy(), caffe["rois"][:, 1:]
    distance = np.abs(ours[:, None, :] - theirs[None]).max(axis=2)  # (300, 300)
    assert (distance.min(axis=0) <= 1e-3).all() and (distance.min(axis=1) <= 1e-3).all()
    same_place = np.abs(ours - theirs).max(axis=1) <= 1e-3
    assert same_place.all() if caffe["tsv_image_w"] == 400 else same_place[:152].all()


def test_the_region_choice_on_caffes_blobs_is_generate_tsvs(caffe):
    keep = select_proposals(torch.from_numpy(caffe["cls_boxes"]), torch.from_numpy(caffe["cls_prob"]))
    assert keep.tolist() == caffe["keep_boxes"].tolist()


def test_extraction_writes_what_generate_tsv_writes(detector, caffe):
    """From the image file's RGB pixels, as vqacap reads them: the same regions in the same order as the TSV row,
    boxes to 1e-3 pixels and features to 1e-4 relative."""
    rgb = torch.from_numpy(caffe["image_bgr"][:, :, ::-1].copy()).permute(2, 0, 1).float() / 255
    features, boxes, fields = bottom_up_batch(detector, [rgb])[0]
    assert len(boxes) == int(caffe["tsv_boxes"].shape[0])
    assert np.abs(boxes.numpy() - caffe["tsv_boxes"]).max() <= 1e-3
    released = caffe["tsv_features"]
    assert np.abs(features.numpy() - released).max() <= 1e-4 * np.abs(released).max()
    assert features.dtype == torch.float32
    labels = caffe["cls_prob"][caffe["keep_boxes"], 1:].argmax(axis=1) + 1
    assert fields["object_labels"].tolist() == labels.tolist()


@pytest.mark.parametrize("name", ["astronaut_317x211", "coffee_97x131"])
def test_the_blob_equals_opencvs_resize_at_scales_that_are_not_round(detector, name):
    """OpenCV 4.11's cv2.resize(fx=s, fy=s, INTER_LINEAR) on the float32 image minus the means, at s = 600 / 211 and
    600 / 97: within 3.1e-5 (two float32 steps at 64-128)."""
    cv2 = np.load(FIXTURES / "cv2_resize.npz")
    data, s = caffe_blob(torch.from_numpy(cv2[f"{name}/image_bgr"]), detector.spec)
    assert s == float(cv2[f"{name}/scale"])
    assert list(data.shape[2:]) == cv2[f"{name}/blob_shape"][:2].tolist()
    rows = data[0][:, cv2[f"{name}/rows"], :].permute(1, 2, 0).numpy()
    assert np.abs(rows - cv2[f"{name}/blob_rows"]).max() <= 3.1e-5


def test_the_feature_map_size_is_known_before_the_forward_pass(detector):
    """grid_cells gives the res4 map Caffe's layers make (checked by running the trunk); an image too thin for one
    16-pixel cell, or a grid finer than the map, is named before anything runs."""
    for height, width in ((200, 300), (150, 400), (97, 131), (600, 1000)):
        data, _ = caffe_blob(torch.zeros(height, width, 3), detector.spec)
        with torch.no_grad():
            res4 = detector.trunk(data)
        assert detector.grid_cells(height, width) == tuple(res4.shape[2:])
    assert detector.size_problem(200, 300) is None
    assert "less than one 16-pixel cell" in detector.size_problem(10, 10000)
    assert "fewer cells than --grid 50" in detector.size_problem(200, 300, grid=50)
    assert detector.max_grid() == 38


def test_the_batched_region_choice_gives_the_regions_of_bottom_up_batch(detector):
    """Both photographs in one batch: bitwise the regions, labels and scores the per-image choice gives."""
    from vqacap.models.regions import bottom_up_regions

    rgbs = []
    for name in IMAGES:
        bgr = np.load(FIXTURES / f"tiny_{name}.npz")["image_bgr"]
        rgbs.append(torch.from_numpy(bgr[:, :, ::-1].copy()).permute(2, 0, 1).float() / 255)
    batched = bottom_up_regions(detector, rgbs).unpadded()
    for rgb, (features, boxes, fields) in zip(rgbs, batched, strict=True):
        f, b, x = bottom_up_batch(detector, [rgb])[0]
        assert torch.equal(features, f) and torch.equal(boxes, b)
        assert all(torch.equal(fields[n], x[n]) for n in x)
