"""The bottom-up detector model: attribute head and loss, the RoIHeads subclass, test-time views, trunk weights."""

from __future__ import annotations

import math

import pytest
import torch
import torchvision
from torchvision.models.detection import FasterRCNN
from torchvision.models.detection.roi_heads import RoIHeads

from vqacap.models.detector import (
    AttributeHead,
    AttributeRoIHeads,
    BottomUpDetector,
    DetectorOptions,
    RoIPool,
    attribute_loss,
    attribute_targets,
    fast_rcnn_loss,
)

CLASSES = ["__background__", "square", "circle"]
ATTRIBUTES = ["__no_attribute__", "red", "blue", "large"]
# A small detector for 64-pixel images: everything but the sizes as in the paper's configuration.
TINY = dict(
    depth=18, width=8, blocks=(1, 1, 1, 1), norm="group_norm", frozen_stages=0, res5_dilation=False, min_size=64,
    max_size=64, anchor_sizes=(16, 32), rpn_channels=16, rpn_pre_nms_top_n_train=200, rpn_post_nms_top_n_train=50,
    rpn_pre_nms_top_n_test=100, rpn_post_nms_top_n_test=20, pool_size=6, box_batch_size_per_image=16,
    detections_per_img=30,
)  # fmt: skip


def tiny_detector(**changes) -> BottomUpDetector:
    torch.manual_seed(0)
    return BottomUpDetector(CLASSES, ATTRIBUTES, DetectorOptions(**{**TINY, **changes}))


def target(boxes, labels, attributes) -> dict[str, torch.Tensor]:
    padded = torch.full((len(attributes), 16), -1, dtype=torch.long)
    for i, a in enumerate(attributes):
        padded[i, : len(a)] = torch.tensor(a, dtype=torch.long)
    return {
        "boxes": torch.tensor(boxes, dtype=torch.float),
        "labels": torch.tensor(labels),
        "attributes": padded,
    }


# -- attribute head and loss ---------------------------------------------------------------------------------------
def test_attribute_targets_are_uniform_over_the_objects_attributes_or_no_attribute():
    attributes = torch.tensor([[2, 5, -1], [-1, -1, -1], [3, -1, -1]])
    expected = torch.tensor([
        [0, 0, 0.5, 0, 0, 0.5],
        [1, 0, 0, 0, 0, 0],  # no attribute: all mass on index 0
        [0, 0, 0, 1, 0, 0],
    ])  # fmt: skip
    assert torch.equal(attribute_targets(attributes, 6), expected)


def test_attribute_loss_matches_a_hand_computed_cross_entropy():
    # softmax(log [1, 2, 3, 4]) = [0.1, 0.2, 0.3, 0.4]
    logits = torch.log(torch.tensor([[1.0, 2.0, 3.0, 4.0], [1.0, 2.0, 3.0, 4.0]]))
    attributes = torch.tensor([[1, 3], [-1, -1]])
    first = -(0.5 * math.log(0.2) + 0.5 * math.log(0.4))  # uniform over attributes 1 and 3
    second = -math.log(0.1)  # no attribute
    assert attribute_loss(logits, attributes).item() == pytest.approx((first + second) / 2, rel=1e-6)


def test_attribute_loss_of_no_region_is_zero_and_differentiable():
    logits = torch.zeros(0, 4, requires_grad=True)
    loss = attribute_loss(logits, torch.zeros(0, 2, dtype=torch.long))
    loss.backward()
    assert loss.item() == 0.0


def test_attribute_head_concatenates_the_region_feature_with_a_256d_class_embedding():
    head = AttributeHead(feature_dim=32, num_classes=3, num_attributes=4)
    assert head.class_embedding.weight.shape == (3, 256)
    assert head.hidden.in_features == 32 + 256 and head.hidden.out_features == 512
    assert head.scores.out_features == 4
    features = torch.randn(5, 32)
    logits = head(features, torch.tensor([1, 1, 2, 2, 0]))
    assert logits.shape == (5, 4)
    # Eq.: scores = W2 ReLU(W1 [f ; E c] + b1) + b2, written out by hand
    x = torch.cat([features, head.class_embedding.weight[torch.tensor([1, 1, 2, 2, 0])]], 1)
    expected = (
        torch.relu(x @ head.hidden.weight.T + head.hidden.bias) @ head.scores.weight.T + head.scores.bias
    )
    torch.testing.assert_close(logits, expected)


# -- the RoIHeads subclass -----------------------------------------------------------------------------------------
def test_model_is_torchvision_faster_rcnn_with_a_roi_heads_subclass():
    model = tiny_detector()
    assert isinstance(model, FasterRCNN)
    assert isinstance(model.roi_heads, AttributeRoIHeads) and isinstance(model.roi_heads, RoIHeads)
    assert model.roi_heads.fg_bg_sampler.batch_size_per_image == 16
    assert model.roi_heads.nms_thresh == 0.3


def test_training_attribute_loss_uses_the_ground_truth_class_and_is_weighted():
    """One object per image: every foreground RoI is matched to it, so the attribute head must see its class, and
    loss_attribute must be 0.5 x the cross-entropy of the head's outputs against its attributes."""
    model = tiny_detector(attribute_loss_weight=0.5).train()
    seen = []
    model.roi_heads.attribute_head.register_forward_hook(lambda m, args, out: seen.append((args[1], out)))
    images = [torch.rand(3, 64, 64), torch.rand(3, 64, 64)]
    targets = [target([[8, 8, 40, 40]], [2], [[1, 3]]), target([[20, 10, 60, 50]], [2], [[1, 3]])]
    losses = model(images, targets)
    assert set(losses) == {
        "loss_objectness",
        "loss_rpn_box_reg",
        "loss_classifier",
        "loss_box_reg",
        "loss_attribute",
    }
    classes, logits = seen[0]
    assert len(classes) > 0 and bool((classes == 2).all())
    expected = 0.5 * attribute_loss(logits, torch.tensor([[1, 3]]).expand(len(logits), 2))
    torch.testing.assert_close(losses["loss_attribute"], expected)
    sum(losses.values()).backward()
    assert model.roi_heads.attribute_head.class_embedding.weight.grad[2].abs().sum() > 0


def test_an_image_without_objects_trains_as_background_only():
    model = tiny_detector().train()
    empty = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long),
             "attributes": torch.zeros(0, 16, dtype=torch.long)}  # fmt: skip
    losses = model([torch.rand(3, 64, 64)], [empty])
    assert losses["loss_attribute"].item() == 0.0 and torch.isfinite(sum(losses.values()))


# -- test-time views -----------------------------------------------------------------------------------------------
@torch.no_grad()
def test_regions_are_the_rpn_proposals_with_features_and_predictions():
    model = tiny_detector(min_size=96, max_size=96).eval()  # 64 -> 96 pixels: boxes come back in input pixels
    images = [torch.rand(3, 64, 64), torch.rand(3, 64, 48)]
    out = model.regions(images)
    image_list, _ = model.transform(images)
    features = model.backbone(image_list.tensors)
    proposals, _ = model.rpn(image_list, {"0": features})
    for r, props, image, (resized_h, resized_w) in zip(out, proposals, images, image_list.image_sizes):
        h, w = image.shape[-2:]
        expected = props * torch.tensor([w / resized_w, h / resized_h, w / resized_w, h / resized_h])
        torch.testing.assert_close(r.boxes, expected)
        n = len(props)
        assert r.features.shape == (n, model.feature_dim)
        assert r.class_probs.shape == (n, 3) and r.class_boxes.shape == (n, 3, 4)
        assert r.attribute_probs.shape == (n, 4)
        torch.testing.assert_close(r.class_probs.sum(1), torch.ones(n))
        torch.testing.assert_close(r.attribute_probs.sum(1), torch.ones(n))


@torch.no_grad()
def test_regions_of_given_boxes_score_those_boxes():
    model = tiny_detector(min_size=96, max_size=96).eval()
    boxes = [torch.tensor([[4.0, 4.0, 30.0, 30.0], [30.0, 10.0, 60.0, 50.0]])]
    out = model.regions([torch.rand(3, 64, 64)], boxes=boxes)[0]
    torch.testing.assert_close(out.boxes, boxes[0])
    assert out.features.shape == (2, model.feature_dim)


@torch.no_grad()
def test_detections_carry_the_attribute_probabilities_of_their_proposal():
    model = tiny_detector().eval()
    image = torch.rand(3, 64, 64)
    detections = model([image])[0]
    regions = model.regions([image])[0]
    assert 0 < len(detections["boxes"]) <= 30
    for box, label, attrs in zip(detections["boxes"], detections["labels"], detections["attribute_probs"]):
        source = (regions.class_boxes[:, label] - box).abs().sum(1).argmin()
        torch.testing.assert_close(regions.class_boxes[source, label], box)
        torch.testing.assert_close(attrs, regions.attribute_probs[source])


@torch.no_grad()
def test_grid_cells_average_the_res5_map_of_the_whole_image():
    model = tiny_detector().eval()
    image = torch.rand(3, 64, 64)
    cells = model.grid([image], 2)[0]
    assert cells.boxes.tolist() == [[0, 0, 32, 32], [32, 0, 64, 32], [0, 32, 32, 64], [32, 32, 64, 64]]
    image_list, _ = model.transform([image])
    c5 = model.roi_heads.box_head.layer4(model.backbone(image_list.tensors))[0]  # (D, 2, 2) for 64 pixels
    torch.testing.assert_close(cells.features, c5.flatten(1).T)


# -- trunk ---------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def resnet18_weights(tmp_path_factory):
    reference = torchvision.models.resnet18(weights=None)
    path = tmp_path_factory.mktemp("weights") / "resnet18.pth"
    torch.save(reference.state_dict(), path)
    return reference, path


def test_imagenet_weights_load_from_a_local_torchvision_state_dict(resnet18_weights):
    reference, path = resnet18_weights
    model = BottomUpDetector(
        CLASSES, ATTRIBUTES, DetectorOptions(depth=18, pretrained=str(path), res5_dilation=False)
    )
    torch.testing.assert_close(model.backbone.conv1.weight, reference.conv1.weight)
    torch.testing.assert_close(model.backbone.layer3[1].bn2.running_var, reference.layer3[1].bn2.running_var)
    torch.testing.assert_close(
        model.roi_heads.box_head.layer4[0].conv1.weight, reference.layer4[0].conv1.weight
    )
    # conv1, res2 and res3 are frozen as in train.prototxt; res4 and res5 train
    assert not model.backbone.layer2[0].conv1.weight.requires_grad
    assert model.backbone.layer3[0].conv1.weight.requires_grad


@pytest.mark.parametrize("options", [dict(depth=34), dict(depth=18, width=8)])
def test_weights_of_another_network_are_refused_with_the_file_named(resnet18_weights, options):
    _, path = resnet18_weights
    with pytest.raises(ValueError, match="resnet18.pth: not the weights of this ResNet") as err:
        BottomUpDetector(CLASSES, ATTRIBUTES, DetectorOptions(**options, pretrained=str(path)))
    assert "\n" not in str(err.value)


def test_bad_options_are_refused_at_construction():
    with pytest.raises(ValueError, match="depth: expected one of"):
        DetectorOptions(depth=42)
    with pytest.raises(ValueError, match="norm"):
        DetectorOptions(norm="layer_norm")


def test_resnet101_keys_are_torchvisions():
    ours = BottomUpDetector(
        CLASSES, ATTRIBUTES, DetectorOptions(width=8)
    )  # the R101 layout at 1/8 of the width
    with torch.device("meta"):  # the names only: no memory, no initialisation
        reference = torchvision.models.resnet101(weights=None).state_dict()
    keys = {
        f"roi_heads.box_head.{k}" if k.startswith("layer4") else f"backbone.{k}"
        for k in reference
        if not k.startswith("fc.") and not k.endswith("num_batches_tracked")
    }
    assert keys <= set(ours.state_dict())


def test_resnet101_at_600x1000_runs_a_training_step():
    """The paper's configuration (ResNet-101 C4 with dilated res5, 600 x 1000 input, 12 anchors, 12000 -> 2000
    proposals, 64 RoIs at 50% foreground, RoIAlign 14 x 14) at 1/16 of the channel width, so the step takes seconds."""
    torch.manual_seed(0)
    model = BottomUpDetector(CLASSES, ATTRIBUTES, DetectorOptions(width=4)).train()
    image = torch.rand(3, 300, 500)  # resized to 600 x 1000
    losses = model([image], [target([[10, 20, 200, 180], [250, 40, 480, 290]], [1, 2], [[1], []])])
    loss = sum(losses.values())
    loss.backward()
    assert torch.isfinite(loss)
    assert model.backbone.layer3[0].conv1.weight.grad is not None  # res4 trains
    assert model.backbone.layer2[0].conv1.weight.grad is None  # res3 is frozen
    assert model.roi_heads.box_head.layer4[0].conv2.dilation == (2, 2)
    assert model.rpn.head.cls_logits.out_channels == 12


@pytest.mark.slow
def test_resnet101_full_width_training_step():
    model = BottomUpDetector(CLASSES, ATTRIBUTES, DetectorOptions()).train()
    losses = model([torch.rand(3, 600, 1000)], [target([[10, 20, 400, 380]], [1], [[1, 3]])])
    sum(losses.values()).backward()
    assert model.feature_dim == 2048


# -- the prototxt's losses, learning rates and pooling ------------------------------------------------------------
def test_box_loss_is_smooth_l1_with_sigma_1_over_the_sampled_rois():
    """loss_bbox (SmoothL1Loss, sigma 1 by caffe.proto's default): 0.5 x^2 for |x| < 1, |x| - 0.5 otherwise, over the
    foreground RoIs' boxes of their class, divided by the number of sampled RoIs."""
    class_logits = torch.zeros(2, 3)
    box_regression = torch.zeros(2, 12)
    box_regression[0, 8:12] = torch.tensor([0.5, -2.0, 0.0, 0.1])  # RoI 0, class 2; RoI 1 is background
    labels, targets = [torch.tensor([2, 0])], [torch.zeros(2, 4)]
    _, box = fast_rcnn_loss(class_logits, box_regression, labels, targets)
    assert box.item() == pytest.approx((0.5 * 0.25 + (2.0 - 0.5) + 0.0 + 0.5 * 0.01) / 2)
    _, torchvisions = fast_rcnn_loss(class_logits, box_regression, labels, targets, beta=1 / 9)
    assert torchvisions.item() == pytest.approx((0.5 - 1 / 18 + 2.0 - 1 / 18 + 0.0 + 0.5 * 0.01 * 9) / 2)
    assert DetectorOptions().box_loss_beta == 1.0 and tiny_detector().roi_heads.box_loss_beta == 1.0


def test_biases_learn_twice_as_fast():
    from functools import partial

    from vqacap.lightning.detector import DetectorModule

    module = DetectorModule(CLASSES, ATTRIBUTES, partial(torch.optim.SGD, lr=0.01), detector=TINY)
    weights, biases = module.configure_optimizers().param_groups
    assert weights["lr"] == 0.01 and biases["lr"] == pytest.approx(0.02)
    names = {id(p): n for n, p in module.named_parameters()}
    assert biases["params"] and all(names[id(p)].endswith(".bias") for p in biases["params"])
    assert not any(names[id(p)].endswith(".bias") for p in weights["params"])
    assert len(weights["params"]) + len(biases["params"]) == sum(p.requires_grad for p in module.parameters())


def test_roi_pool_is_the_prototxts_max_over_quantised_bins():
    """ROIPooling at 1/16: a RoI (16, 16, 47, 47) covers cells round(1) .. round(2.94) = 1 .. 3 of the map."""
    pool = RoIPool(output_size=1)
    features = {"0": torch.arange(16.0).view(1, 1, 4, 4)}
    assert pool(features, [torch.tensor([[16.0, 16, 47, 47]])], [(64, 64)]).flatten().tolist() == [15.0]
    assert pool(features, [torch.tensor([[0.0, 0, 20, 20]])], [(64, 64)]).flatten().tolist() == [5.0]
    assert isinstance(tiny_detector().roi_heads.box_roi_pool, RoIPool)  # the paper's, by default
    aligned = tiny_detector(pooler="roi_align").eval()
    assert isinstance(aligned.roi_heads.box_roi_pool, torchvision.ops.MultiScaleRoIAlign)
    with torch.no_grad():  # both poolers give regions
        for model in (tiny_detector().eval(), aligned):
            assert model.regions([torch.rand(3, 64, 64)])[0].features.shape[1] == model.feature_dim


def test_rpn_drops_proposals_under_16_original_pixels_before_its_top_n():
    """proposal_layer.py: sides (+1) under RPN_MIN_SIZE x im_scale go first, then the pre-NMS top n by score."""
    proposals = torch.tensor([[[0.0, 0, 9, 9], [0, 0, 19, 19], [30, 30, 60, 60]]])  # sides 10, 20, 31
    objectness = torch.tensor([[3.0], [2.0], [1.0]])  # the smallest scores best

    def top_one(rpn, scale):
        rpn.eval()._pre_nms_top_n["testing"] = 1
        rpn._scales = [scale]
        return rpn.filter_proposals(proposals, objectness, [(64, 64)], [3])[0][0].tolist()

    assert top_one(tiny_detector().rpn, 1.0) == [[0.0, 0, 19, 19]]  # 10 < 16: gone before the top 1
    assert top_one(tiny_detector().rpn, 0.5) == [[0.0, 0, 9, 9]]  # at scale 0.5 the minimum is 8
    assert top_one(tiny_detector(rpn_min_size=0).rpn, 1.0) == [[0.0, 0, 9, 9]]  # torchvision's filter
    images = tiny_detector().transform([torch.rand(3, 32, 48), torch.rand(3, 80, 40)])[0]
    assert images.scales == [64 / 48, 64 / 80]  # im_scale: shorter side to 64 unless the longer passes 64


def test_a_checkpoint_older_than_the_prototxt_options_loads_with_what_it_was_trained_with(tmp_path):
    from dataclasses import asdict

    from vqacap.lightning.loading import load_detector

    model = tiny_detector(pooler="roi_align", rpn_min_size=0)
    options = {k: v for k, v in asdict(model.options).items() if k not in ("pooler", "rpn_min_size")}
    state = {f"net.{k}": v for k, v in model.state_dict().items()}
    hparams = {"classes": CLASSES, "attributes": ATTRIBUTES, "detector": options}
    torch.save({"hyper_parameters": hparams, "state_dict": state}, tmp_path / "old.ckpt")
    loaded = load_detector(tmp_path / "old.ckpt")
    assert (loaded.options.pooler, loaded.options.rpn_min_size) == ("roi_align", 0.0)
