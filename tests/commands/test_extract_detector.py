"""`vqacap extract --detector`: generate_tsv's region choice with a tiny randomly initialised bottom-up detector."""

from __future__ import annotations

import resource
import signal
import subprocess

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms.functional import pil_to_tensor

from tests.helpers.detection_data import awkward_boxes
from tests.helpers.detector import ATTRIBUTES, CLASSES, random_detector, save_checkpoint
from tests.helpers.runs import VQACAP
from vqacap.cli import main
from vqacap.data.captions import CaptionDataModule
from vqacap.data.store import RegionStore, partial_path
from vqacap.data.vqa import VQADataModule
from vqacap.extract import extract_with_detector
from vqacap.models.boxes import nms_plus_one
from vqacap.models.regions import DETECTOR_FIELDS, select_proposals
from vqacap.shapes import generate

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def detector():
    return random_detector(0)


@pytest.fixture(scope="module")
def checkpoint(detector, tmp_path_factory):
    """A checkpoint in the layout vqacap.lightning.detector writes (hyper-parameters + "net."-prefixed weights)."""
    return save_checkpoint(detector, tmp_path_factory.mktemp("ckpt") / "detector.ckpt")


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    return generate(tmp_path_factory.mktemp("shapes"), sizes={"train": 6, "val": 3, "test": 3}, feature_dim=8)


def folders(shapes):
    return [str(shapes / "images" / split) for split in ("train", "val", "test")]


def load(path):
    with Image.open(path) as im:
        return pil_to_tensor(im.convert("RGB")).float().div(255)


@pytest.fixture(scope="module")
def store(shapes, checkpoint):
    out = shapes / "bottom_up.h5"
    assert main(["extract", "--detector", str(checkpoint), "--images", *folders(shapes), "--out", str(out),
                 "--batch-size", "4", "--no-progress", "--dtype", "float32"]) == 0  # fmt: skip
    return RegionStore(out)


# ----------------------------------------------------------------------------------------------------------------------
# The region choice, on hand-made scores


def boxes_apart(n):
    return torch.tensor([[20.0 * i, 0, 20 * i + 9, 9] for i in range(n)])


def test_proposals_scoring_at_least_the_threshold_are_kept_in_proposal_order():
    probs = torch.tensor(
        [[0.5, 0.5, 0.0], [0.81, 0.19, 0.0], [0.8, 0.0, 0.2], [0.1, 0.9, 0.0], [0.9, 0.05, 0.05]]
    )
    assert select_proposals(boxes_apart(5), probs, min_boxes=1, max_boxes=10).tolist() == [0, 2, 3]
    # Fewer than min_boxes pass: the best min_boxes by score instead. More than max_boxes: the best max_boxes.
    assert select_proposals(boxes_apart(5), probs, min_boxes=4, max_boxes=10).tolist() == [3, 0, 2, 1]
    assert select_proposals(boxes_apart(5), probs, min_boxes=1, max_boxes=2).tolist() == [3, 0]
    # The background column never counts.
    assert (
        select_proposals(boxes_apart(1), torch.tensor([[0.99, 0.01]]), min_boxes=0, max_boxes=5).tolist()
        == []
    )


def test_equal_scores_pick_regions_as_generate_tsvs_reversed_argsort():
    """np.argsort(max_conf)[::-1]: among equal scores the last proposal comes first."""
    # All below the threshold 0.2 but proposal 3: the best min_boxes instead.
    probs = torch.tensor([[0.9, 0.1]] * 3 + [[0.8, 0.2]] + [[0.9, 0.1]] * 2)
    assert select_proposals(boxes_apart(6), probs, min_boxes=4, max_boxes=10).tolist() == [3, 5, 4, 2]
    assert np.argsort(np.array([0.1, 0.1, 0.1, 0.2, 0.1, 0.1]))[::-1][:4].tolist() == [3, 5, 4, 2]
    ties = torch.full((6, 2), 0.5)  # more than max_boxes pass
    assert select_proposals(boxes_apart(6), ties, min_boxes=1, max_boxes=2).tolist() == [5, 4]


def test_a_proposal_keeps_the_best_class_score_it_survives_nms_with():
    # IoU 1/3 with the +1-pixel convention (> 0.3): the second proposal is suppressed in class 1 (0.5 < 0.6),
    # survives in class 2 with 0.3 only.
    proposals = torch.tensor([[0.0, 0, 9, 9], [5, 0, 14, 9]])
    probs = torch.tensor([[0.4, 0.6, 0.0], [0.2, 0.5, 0.3]])
    assert select_proposals(proposals, probs, conf_thresh=0.4, min_boxes=1).tolist() == [0]
    assert select_proposals(proposals, probs, conf_thresh=0.3, min_boxes=1).tolist() == [0, 1]


def test_adaptive_and_fixed_limits():
    n = 150
    high = torch.full((n, 2), 0.5)
    low = torch.tensor([[0.95, 0.05]]).repeat(n, 1)
    low[:, 1] += torch.linspace(0, 0.01, n)  # distinct scores, best last
    assert len(select_proposals(boxes_apart(n), high)) == 100
    assert select_proposals(boxes_apart(n), low).tolist() == list(range(n - 1, n - 11, -1))
    assert len(select_proposals(boxes_apart(n), high, min_boxes=36, max_boxes=36)) == 36
    assert len(select_proposals(boxes_apart(n), low, min_boxes=36, max_boxes=36)) == 36


def generate_tsv_choice(proposals, probs, conf_thresh, min_boxes, max_boxes):
    """generate_tsv.py's loop written out with an explicit greedy NMS (+1-pixel areas, drop when IoU > 0.3)."""
    boxes, probs = proposals.double().numpy(), probs.double().numpy()
    areas = (boxes[:, 2] - boxes[:, 0] + 1) * (boxes[:, 3] - boxes[:, 1] + 1)
    max_conf = np.zeros(len(boxes))
    for c in range(1, probs.shape[1]):
        order = list(np.argsort(-probs[:, c], kind="stable"))
        keep = []
        while order:
            i = order.pop(0)
            keep.append(i)
            rest = []
            for j in order:
                iw = max(0.0, min(boxes[i, 2], boxes[j, 2]) - max(boxes[i, 0], boxes[j, 0]) + 1)
                ih = max(0.0, min(boxes[i, 3], boxes[j, 3]) - max(boxes[i, 1], boxes[j, 1]) + 1)
                if iw * ih / (areas[i] + areas[j] - iw * ih) <= 0.3:
                    rest.append(j)
            order = rest
        for i in keep:
            max_conf[i] = max(max_conf[i], probs[i, c])
    kept = np.where(max_conf >= conf_thresh)[0]
    # generate_tsv: np.argsort(max_conf)[::-1]; numpy's default sort promises no order among equal scores (its
    # quicksort is stable only up to 16 elements), the stable sort is what it gives for small arrays.
    if len(kept) < min_boxes:
        kept = np.argsort(max_conf, kind="stable")[::-1][:min_boxes]
    elif len(kept) > max_boxes:
        kept = np.argsort(max_conf, kind="stable")[::-1][:max_boxes]
    return kept.tolist()


@pytest.mark.parametrize("limits", [(10, 100), (3, 8), (36, 36)])
def test_region_choice_equals_generate_tsv_on_random_proposals(limits):
    gen = torch.Generator().manual_seed(limits[1])
    corners = torch.rand(80, 2, generator=gen) * 100
    proposals = torch.cat([corners, corners + 5 + torch.rand(80, 2, generator=gen) * 40], 1)
    probs = torch.softmax(torch.randn(80, 7, generator=gen) * 2, 1)
    expected = generate_tsv_choice(proposals, probs, 0.2, *limits)
    assert select_proposals(proposals, probs, 0.2, *limits).tolist() == expected


def class_loop_choice(proposals, class_probs, conf_thresh, min_boxes, max_boxes, nms_threshold=0.3):
    """generate_tsv's loop as it reads: one nms_plus_one per class (select_proposals does all classes at once)."""
    max_conf = torch.zeros(len(proposals), dtype=class_probs.dtype)
    for c in range(1, class_probs.shape[1]):
        scores = class_probs[:, c]
        keep = nms_plus_one(proposals, scores, nms_threshold)
        max_conf[keep] = torch.maximum(max_conf[keep], scores[keep])
    keep = torch.nonzero(max_conf >= conf_thresh).squeeze(1)
    if min_boxes <= len(keep) <= max_boxes:
        return keep.tolist()
    best = np.argsort(max_conf.float().numpy(), kind="stable")[::-1].copy()  # generate_tsv's argsort()[::-1]
    return (best[:min_boxes] if len(keep) < min_boxes else best[:max_boxes]).tolist()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("num_classes", [2, 6, 1601])
@pytest.mark.parametrize("num_proposals", [1, 5, 300])
def test_region_choice_equals_one_nms_per_class(num_proposals, num_classes, dtype):
    for seed in range(2) if num_classes > 100 else range(12):
        gen = torch.Generator().manual_seed(seed)
        proposals = awkward_boxes(num_proposals, gen)
        probs = torch.softmax(torch.randn(num_proposals, num_classes, generator=gen) * (1 + seed % 4), 1)
        if seed % 2:
            probs = (probs * 8).round() / 8  # exact ties between proposals within a class
        probs = probs.to(dtype)
        # (R, R) limits return every proposal ranked by its surviving score, the strictest comparison.
        limits = (num_proposals, num_proposals) if seed % 4 < 2 else (10, 100)
        expected = class_loop_choice(proposals, probs, 0.2, *limits)
        assert select_proposals(proposals, probs, 0.2, *limits).tolist() == expected, seed


# ----------------------------------------------------------------------------------------------------------------------
# The written store


def test_regions_are_the_kept_proposals_with_their_features_and_labels(store, shapes, detector):
    assert len(store) == 12 and store.feature_dim == detector.feature_dim
    assert sorted(store.region_fields) == sorted(DETECTOR_FIELDS)
    assert store.field_names("object_labels") == CLASSES
    assert store.field_names("attribute_labels") == ATTRIBUTES
    counts = []
    for path in sorted((shapes / "images" / "val").glob("*.png")):
        image_id = int(path.stem)
        with torch.no_grad():
            r = detector.regions([load(path)])[0]
        keep = select_proposals(r.boxes, r.class_probs)
        features, boxes = store.read(image_id)
        counts.append(len(keep))
        np.testing.assert_allclose(boxes, r.boxes[keep].numpy(), atol=1e-4)  # proposals ...
        labels = store.read_field(image_id, "object_labels")
        regressed = r.class_boxes[keep, torch.from_numpy(labels).long()]
        assert (regressed - r.boxes[keep]).abs().max() > 0.1  # ... not the regressed boxes
        np.testing.assert_allclose(features, r.features[keep].numpy(), rtol=1e-4, atol=1e-5)
        np.testing.assert_array_equal(labels, r.class_probs[keep, 1:].argmax(1).numpy() + 1)
        np.testing.assert_allclose(
            store.read_field(image_id, "object_scores"), r.class_probs[keep, 1:].amax(1), rtol=1e-4
        )
        attributes = store.read_field(image_id, "attribute_labels")
        np.testing.assert_array_equal(attributes, r.attribute_probs[keep, 1:].argmax(1).numpy() + 1)
    assert all(10 <= k <= 100 for k in store.num_regions.tolist())
    assert len(set(counts)) > 1  # the threshold, not a limit, decided the count


def test_the_caption_and_vqa_datamodules_read_the_store_unchanged(store, shapes):
    captions = CaptionDataModule(
        str(shapes), store="bottom_up.h5", batch_size=4, captions_per_image=2, min_count=1
    )
    captions.prepare_data()
    captions.setup("fit")
    batch = next(iter(captions.train_dataloader()))
    assert batch.regions.features.shape[2] == store.feature_dim
    assert batch.regions.mask.sum(1).min() >= 10
    assert next(iter(captions.val_dataloader())).regions.mask.any()
    vqa = VQADataModule(
        str(shapes), store="bottom_up.h5", min_answer_count=1, batch_size=4, eval_batch_size=4
    )
    vqa.prepare_data()
    vqa.setup("fit")
    batch = next(iter(vqa.train_dataloader()))
    assert batch.regions.features.shape[2] == store.feature_dim and batch.regions.mask.sum(1).min() >= 10


def test_extraction_resumes_and_batches_give_the_same_regions(store, shapes, detector, tmp_path):
    out = tmp_path / "resumed.h5"
    train, *rest = folders(shapes)
    assert extract_with_detector(train, detector, out, batch_size=1, dtype="float32", progress=False) == (
        6,
        0,
        [],
    )
    assert extract_with_detector([train, *rest], detector, out, batch_size=3, dtype="float32", progress=False) == (
        6, 6, [],
    )  # fmt: skip
    resumed = RegionStore(out)
    for image_id in store.image_ids.tolist():
        a, b = store.read(image_id), resumed.read(image_id)
        np.testing.assert_allclose(a[0], b[0], rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(a[1], b[1], atol=1e-4)
        np.testing.assert_array_equal(
            store.read_field(image_id, "object_labels"), resumed.read_field(image_id, "object_labels")
        )


def test_fixed_36_and_grid_stores(shapes, checkpoint, detector, tmp_path):
    # The tiny detector's res5 map is 2 x 2 (64 pixels at stride 32): the finest grid it has.
    fixed, grid = tmp_path / "fixed.h5", tmp_path / "grid.h5"
    val = str(shapes / "images" / "val")
    base = ["extract", "--detector", str(checkpoint), "--images", val, "--no-progress"]
    assert main([*base, "--out", str(fixed), "--fixed", "36"]) == 0
    assert RegionStore(fixed).num_regions.tolist() == [36, 36, 36]
    assert main([*base, "--out", str(grid), "--grid", "2", "--dtype", "float32"]) == 0
    store = RegionStore(grid)
    assert store.num_regions.tolist() == [4, 4, 4] and store.region_fields == ()
    image_id = int(store.image_ids[0])
    features, boxes = store.read(image_id)
    with torch.no_grad():
        g = detector.grid([load(shapes / "images" / "val" / f"{image_id:06d}.png")], 2)[0]
    np.testing.assert_allclose(features, g.features.numpy(), rtol=1e-4, atol=1e-5)
    side = float(store.image_w[0])
    assert boxes[0].tolist() == pytest.approx([0, 0, side / 2, side / 2])
    assert boxes[-1].tolist() == pytest.approx([side / 2, side / 2, side, side])
    # A grid store has no label fields: extending it with regions is refused, naming the file.
    assert main([*base, "--out", str(grid)]) == 2


def test_bad_checkpoint_and_grid_without_detector_are_one_line_errors(shapes, tmp_path, capsys):
    val = str(shapes / "images" / "val")
    missing = tmp_path / "none.ckpt"
    assert (
        main(["extract", "--detector", str(missing), "--images", val, "--out", str(tmp_path / "s.h5")]) == 2
    )
    assert capsys.readouterr().err.strip() == f"error: {missing}: detector checkpoint not found"
    other = tmp_path / "other.ckpt"
    torch.save({"state_dict": {}}, other)
    assert main(["extract", "--detector", str(other), "--images", val, "--out", str(tmp_path / "s.h5")]) == 2
    assert "not a checkpoint of the bottom-up detector" in capsys.readouterr().err
    assert main(["extract", "--weights", str(other), "--grid", "2", "--images", val, "--out", "x.h5"]) == 2
    assert capsys.readouterr().err.strip() == "error: --grid needs --detector"


def test_a_full_disk_is_one_line_and_leaves_the_store_as_it_was(shapes, checkpoint, tmp_path):
    out = tmp_path / "full.h5"
    images = {split: str(shapes / "images" / split) for split in ("train", "val")}
    command = [*VQACAP, "extract", "--detector", str(checkpoint), "--no-progress"]
    command += ["--fixed", "36", "--out", str(out)]
    done = subprocess.run([*command, "--images", images["val"]], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    committed = out.read_bytes()
    limit = len(committed) + 1000  # room for the copy of the store, not for the train images' regions

    def full_disk() -> None:  # in the child: writes past `limit` bytes fail with EFBIG, as on a full disk
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    more = [*command, "--images", images["train"], "--batch-size", "1"]
    failed = subprocess.run(more, capture_output=True, text=True, preexec_fn=full_disk)
    assert failed.returncode == 2, failed.stderr  # not a segfault (-11), nor a list of per-image problems
    assert failed.stderr.strip().splitlines() == [
        f"error: {partial_path(out)}: write failed (File too large); {out} is unchanged"
    ]
    assert out.read_bytes() == committed


@pytest.mark.parametrize("grid", [None, 2])
def test_an_image_of_extreme_aspect_ratio_is_reported_and_the_others_kept(
    shapes, checkpoint, tmp_path, capsys, grid
):
    """A 10000 x 10 image stopped extract (and every rerun) with torchvision's traceback."""
    images = tmp_path / "images"
    images.mkdir()
    for image_id in (1, 2):
        (images / f"{image_id}.png").write_bytes(
            (shapes / "images" / "train" / f"{image_id:06d}.png").read_bytes()
        )
    Image.new("RGB", (10000, 10), (200, 30, 30)).save(images / "3.png")
    out = tmp_path / "store.h5"
    argv = [
        "extract",
        "--detector",
        str(checkpoint),
        "--images",
        str(images),
        "--out",
        str(out),
        "--no-progress",
    ]
    argv += ["--batch-size", "4"] + (["--grid", str(grid)] if grid else [])
    for rerun in (False, True):
        assert main(argv) == 0
        report = capsys.readouterr().out.splitlines()
        assert (
            report[0]
            == f"{out}: extracted {0 if rerun else 2}, skipped {2 if rerun else 0} already in the store, problems 1"
        )
        assert report[1].startswith(
            f"  {images / '3.png'}: 10000x10 pixels is 64x0 at the detector's input size"
        )
        assert sorted(RegionStore(out).image_ids) == [1, 2]


def test_a_grid_finer_than_the_feature_map_is_refused(shapes, checkpoint, tmp_path, capsys):
    """--grid 1000 on an 8 x 8 map wrote 1,000,000 cells per image (549 MB for 2 images) without a word."""
    out = tmp_path / "grid.h5"
    argv = [
        "extract",
        "--detector",
        str(checkpoint),
        "--images",
        *folders(shapes),
        "--out",
        str(out),
        "--grid",
    ]
    assert main([*argv, "1000", "--no-progress"]) == 2
    assert capsys.readouterr().err.strip() == (
        "error: --grid 1000: the detector's feature map has at most 2 x 2 cells (shorter side 64 pixels); "
        "give --grid 2 or less"
    )
    assert not out.exists() and not partial_path(out).exists()


def test_a_forward_pass_that_fails_on_one_image_skips_that_image_only(shapes, detector, tmp_path):
    from vqacap.extraction.module import forward_each
    from vqacap.models.regions import ChosenRegions, grid_batch

    files = sorted((shapes / "images" / "train").glob("*.png"))[:3]
    images = [load(f) for f in files]

    def regions(batch):  # fails on any batch holding the second image, as a model failing on one input does
        if any(float(t.sum()) == float(images[1].sum()) for t in batch):
            raise RuntimeError("Input and output sizes should be greater than 0\nmore torch text")
        return ChosenRegions.stack(grid_batch(detector, batch, 2))

    found = forward_each(regions, images, files, [4, 5, 6])
    assert [positions for positions, _ in found] == [[4], [5], [6]]
    assert [isinstance(f, str) for _, f in found] == [False, True, False]
    assert found[1][1] == (
        f"{files[1]}: the model failed on it (RuntimeError: Input and output sizes should be greater than 0)"
    )
    alone = grid_batch(detector, [images[2]], 2)[0]
    features, boxes, _ = found[2][1].unpadded()[0]
    assert torch.equal(features, alone[0]) and torch.equal(boxes, alone[1])


def assert_same_regions(batched, per_image):
    """Bitwise: the batched choice's regions of each image are the per-image choice's."""
    for (features, boxes, fields), (f, b, x) in zip(batched.unpadded(), per_image, strict=True):
        assert torch.equal(features, f) and torch.equal(boxes, b)
        assert fields.keys() == x.keys() and all(torch.equal(fields[n], x[n]) for n in x)


@pytest.mark.parametrize("limits", [(10, 100), (36, 36), (1, 3)])
def test_the_batched_region_choice_gives_the_regions_of_bottom_up_batch(shapes, detector, limits):
    from vqacap.models.regions import bottom_up_batch, bottom_up_regions

    images = [load(f) for f in sorted((shapes / "images" / "train").glob("*.png"))]
    images[1] = images[1][:, :40]  # another size, so another proposal count
    for conf_thresh in (0.2, 0.6):
        batched = bottom_up_regions(detector, images, conf_thresh, *limits)
        assert batched.features.shape[:2] == (len(images), limits[1])
        assert_same_regions(batched, bottom_up_batch(detector, images, conf_thresh, *limits))
