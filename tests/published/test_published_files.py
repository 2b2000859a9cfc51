"""Reading the published detector's files: the Caffe release (.caffemodel + prototxt), the real ResNet-101 prototxt's
every layer, the converted PyTorch files users download instead, and the one-line refusals of everything else."""

from __future__ import annotations

import gzip
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from vqacap.models.regions import bottom_up_batch
from vqacap.published import file_kind, load_detector_file
from vqacap.published.caffe import CaffeFormatError, read_caffemodel, read_prototxt
from vqacap.published.detector import (
    caffe_parameter_names,
    published_prototxt,
    spec_from_prototxt,
    state_dict_from_caffe,
)
from vqacap.published.safe_pickle import UnsafePickleError

FIXTURES = Path(__file__).parents[1] / "fixtures" / "caffe"
CAFFEMODEL, PROTOTXT = FIXTURES / "tiny.caffemodel", FIXTURES / "test.prototxt"


@pytest.fixture(scope="module")
def resnet101_prototxt(tmp_path_factory) -> Path:
    """The published test.prototxt as vqacap ships it, unpacked."""
    path = tmp_path_factory.mktemp("r101") / "test.prototxt"
    path.write_bytes(gzip.decompress(published_prototxt().read_bytes()))
    return path


@pytest.fixture(scope="module")
def caffe_weights() -> dict[str, list[np.ndarray]]:
    return read_caffemodel(CAFFEMODEL)


@pytest.fixture(scope="module")
def chelsea_rgb() -> torch.Tensor:
    bgr = np.load(FIXTURES / "tiny_chelsea.npz")["image_bgr"]
    return torch.from_numpy(bgr[:, :, ::-1].copy()).permute(2, 0, 1).float() / 255


def blob_shapes(prototxt: Path) -> dict[str, list[tuple[int, ...]]]:
    """What Caffe would allocate for each layer's weights, worked out from the prototxt alone (channels followed from
    blob to blob), independently of vqacap's mapping."""
    channels = {"data": 3}
    shapes = {}
    for layer in read_prototxt(prototxt)["layer"]:
        name, kind = layer["name"][0], layer["type"][0]
        bottoms, tops = layer.get("bottom", []), layer.get("top", [])
        c = channels.get(bottoms[0]) if bottoms else None
        if kind == "Convolution":
            p = layer["convolution_param"][0]
            out, k = p["num_output"][0], p["kernel_size"][0]
            bias = p.get("bias_term", ["true"])[0] != "false"
            shapes[name] = [(out, c, k, k)] + ([(out,)] if bias else [])
            c = out
        elif kind == "BatchNorm":
            shapes[name] = [(c,), (c,), (1,)]
        elif kind == "Scale":
            shapes[name] = [(c,), (c,)]
        elif kind == "InnerProduct":
            out = layer["inner_product_param"][0]["num_output"][0]
            shapes[name] = [(out, c), (out,)]
            c = out
        elif kind == "Embed":
            p = layer["embed_param"][0]
            shapes[name] = [(p["input_dim"][0], p["num_output"][0])]
            c = p["num_output"][0]
        elif kind == "Concat":
            c = sum(channels[b] for b in bottoms)
        for top in tops:
            channels[top] = c
    return shapes


def test_the_caffemodel_blobs_have_the_shapes_the_prototxt_implies(caffe_weights):
    expected = blob_shapes(PROTOTXT)
    assert sorted(caffe_weights) == sorted(expected)
    for layer, blobs in caffe_weights.items():
        assert [b.shape for b in blobs] == [tuple(s) for s in expected[layer]], layer
        assert all(b.dtype == np.float32 for b in blobs)


def test_every_layer_of_the_real_resnet101_prototxt_maps_to_a_parameter(resnet101_prototxt):
    """The published network (ResNet-101, 1601 classes, 401 attributes): each layer with weights goes to module
    parameters of its shape, and every parameter is filled (a generated caffemodel of zeros in memory)."""
    spec = spec_from_prototxt(resnet101_prototxt)
    assert [len([b for b in spec.trunk if b.name[0] == s]) for s in "234"] == [3, 4, 23]
    assert len(spec.head) == 3 and spec.head[0].dilation == 2 and spec.head[0].stride == 1
    assert spec.trunk[3].stride == 2 and spec.trunk[3].name == "3a"  # stride on res3a_branch2a, the 1x1
    assert (spec.num_classes, spec.num_attributes, spec.num_anchors) == (1601, 401, 12)
    shapes = blob_shapes(resnet101_prototxt)
    assert sorted(caffe_parameter_names(spec)) == sorted(shapes)
    zeros = {layer: [np.zeros(s, np.float32) for s in blob] for layer, blob in shapes.items()}
    for blobs in (zeros[k] for k in zeros if k.startswith("bn")):
        blobs[2][:] = 1.0
    state = state_dict_from_caffe(zeros, spec, "generated")
    from vqacap.models.caffe_detector import CaffeBottomUpDetector
    from vqacap.published.detector import genome_names

    classes, attributes = genome_names(1601, 401)
    assert classes[:3] == ["__background__", "yolk", "goal"] and attributes[:2] == [
        "__no_attribute__",
        "gray",
    ]
    model = CaffeBottomUpDetector(spec, classes, attributes)
    model.load_state_dict(state)  # strict: every parameter and buffer filled
    assert model.feature_dim == 2048
    assert sum(p.numel() for p in state.values()) == sum(
        int(np.prod(s)) for b in shapes.values() for s in b
    ) - sum(
        1 for k in shapes if k.startswith("bn")
    )  # every weight but BatchNorm's scale factor, which is folded in


def test_the_kind_of_file_is_recognised_from_its_bytes(tmp_path):
    pth = tmp_path / "weights.caffemodel"  # a torch zip whatever its name says
    torch.save({"a": torch.zeros(1)}, pth)
    assert file_kind(pth) == "torch"
    assert file_kind(CAFFEMODEL) == "caffemodel"
    pkl = tmp_path / "m.pkl"
    pkl.write_bytes(pickle.dumps({"model": {}}, protocol=2))
    assert file_kind(pkl) == "pickle"


@pytest.mark.parametrize(
    "make, words",
    [
        (lambda: CAFFEMODEL.read_bytes()[: len(CAFFEMODEL.read_bytes()) // 2], "truncated"),
        (lambda: b"1\t640\t480\t36\tAAAA\tAAAA\n", "PyTorch checkpoint or .caffemodel"),
        (lambda: b"\x89PNG\r\n\x1a\n" + bytes(100), "PyTorch checkpoint or .caffemodel"),
        (lambda: b"", "PyTorch checkpoint or .caffemodel"),
    ],
)
def test_a_file_that_is_not_a_caffemodel_is_one_line(tmp_path, make, words):
    bad = tmp_path / "bad.caffemodel"
    bad.write_bytes(make())
    with pytest.raises(CaffeFormatError) as err:
        load_detector_file(bad, prototxt=PROTOTXT)
    message = str(err.value)
    assert "\n" not in message and str(bad) in message and words in message


def test_a_prototxt_that_does_not_fit_the_weights_names_the_layer(resnet101_prototxt):
    with pytest.raises(
        CaffeFormatError, match=r"layer conv1 blob 0 has shape \[8, 3, 7, 7\].*needs \[64, 3, 7, 7\]"
    ):
        load_detector_file(CAFFEMODEL, prototxt=resnet101_prototxt)


def test_missing_extra_and_unknown_layers_are_named(tmp_path, caffe_weights):
    spec = spec_from_prototxt(PROTOTXT)
    fewer = {k: v for k, v in caffe_weights.items() if k != "fc_attr"}
    with pytest.raises(CaffeFormatError, match="no weights for layer fc_attr"):
        state_dict_from_caffe(fewer, spec, "x.caffemodel")
    more = {**caffe_weights, "fc7": [np.zeros((4, 4), np.float32)]}
    with pytest.raises(CaffeFormatError, match="layer fc7 has weights but is not in the prototxt"):
        state_dict_from_caffe(more, spec, "x.caffemodel")
    odd = tmp_path / "odd.prototxt"
    odd.write_text(
        PROTOTXT.read_text() + 'layer { name: "drop" type: "Dropout" bottom: "fc_attr" top: "fc_attr" }\n'
    )
    with pytest.raises(CaffeFormatError, match="layer drop of type Dropout"):
        load_detector_file(CAFFEMODEL, prototxt=odd)
    broken = tmp_path / "broken.prototxt"
    broken.write_text('layer { name: "conv1" ')
    with pytest.raises(CaffeFormatError, match="never closed"):
        load_detector_file(CAFFEMODEL, prototxt=broken)
    with pytest.raises(
        CaffeFormatError, match=r"layer conv1 .* test.prototxt was assumed: give the model's own"
    ):
        load_detector_file(CAFFEMODEL)  # the published ResNet-101's prototxt is the default


def _detectron2_state(weights: dict[str, list[np.ndarray]], spec) -> dict[str, np.ndarray]:
    """The tiny Caffe net in the key layout of the converted detectron2-style files, written from their naming rules
    (backbone.stem / backbone.res{2,3,4}.{i} / roi_heads.res5.{i}, conv1-3 + shortcut, .norm.*), Caffe's order."""

    def norm(prefix: str, bn: str, scale: str) -> dict[str, np.ndarray]:
        mean, var, factor = weights[bn]
        inverse = 0.0 if factor[0] == 0 else 1.0 / factor[0]
        return {
            f"{prefix}.norm.running_mean": (mean * np.float32(inverse)).astype(np.float32),
            f"{prefix}.norm.running_var": (var * np.float32(inverse)).astype(np.float32),
            f"{prefix}.norm.weight": weights[scale][0],
            f"{prefix}.norm.bias": weights[scale][1],
        }

    state = {
        "backbone.stem.conv1.weight": weights["conv1"][0],
        **norm("backbone.stem.conv1", "bn_conv1", "scale_conv1"),
    }
    index: dict[str, int] = {}
    for block in (*spec.trunk, *spec.head):
        stage = block.name[0]
        i = index[stage] = index.get(stage, -1) + 1
        prefix = "roi_heads.res5" if stage == "5" else f"backbone.res{stage}"
        for theirs, branch in (("conv1", "2a"), ("conv2", "2b"), ("conv3", "2c"), ("shortcut", "1")):
            if branch == "1" and not block.projection:
                continue
            key = f"{prefix}.{i}.{theirs}"
            state[f"{key}.weight"] = weights[f"res{block.name}_branch{branch}"][0]
            state |= norm(key, f"bn{block.name}_branch{branch}", f"scale{block.name}_branch{branch}")
    for theirs, layer in (
        ("conv", "rpn_conv/3x3"),
        ("objectness_logits", "rpn_cls_score"),
        ("anchor_deltas", "rpn_bbox_pred"),
    ):
        (
            state[f"proposal_generator.rpn_head.{theirs}.weight"],
            state[f"proposal_generator.rpn_head.{theirs}.bias"],
        ) = weights[layer]
    for layer in ("cls_score", "bbox_pred"):
        state[f"roi_heads.box_predictor.{layer}.weight"], state[f"roi_heads.box_predictor.{layer}.bias"] = (
            weights[layer]
        )
    return state


def test_milvlg_pth_gives_the_caffemodels_regions(tmp_path, caffe_weights, chelsea_rgb):
    """MILVLG's bua-caffe-frcn-r101_with_attributes.pth layout (Caffe's order, cls_embed / attr_linear1 / 2), written
    with torch.save under "model": the same regions and features as the .caffemodel."""
    spec = spec_from_prototxt(PROTOTXT)
    state = _detectron2_state(caffe_weights, spec)
    state["roi_heads.box_predictor.cls_embed.weight"] = caffe_weights["cls_embedding"][0]
    for theirs, layer in (("attr_linear1", "fc_attr"), ("attr_linear2", "attr_score")):
        state[f"roi_heads.box_predictor.{theirs}.weight"], state[f"roi_heads.box_predictor.{theirs}.bias"] = (
            caffe_weights[layer]
        )
    path = tmp_path / "bua-caffe-frcn-tiny.pth"
    torch.save({"model": {k: torch.from_numpy(np.array(v)) for k, v in state.items()}}, path)
    converted = load_detector_file(path, classes=None)
    reference = load_detector_file(CAFFEMODEL, prototxt=PROTOTXT)
    ours = bottom_up_batch(converted, [chelsea_rgb])[0]
    theirs = bottom_up_batch(reference, [chelsea_rgb])[0]
    assert torch.equal(ours[1], theirs[1]) and torch.allclose(ours[0], theirs[0], rtol=0, atol=1e-5)
    assert converted.classes[0] == "__class_0__" and len(converted.attributes) == 11

    torch.save({"model": state}, path)  # numpy arrays inside the torch file: read with the same allow-list
    ours = bottom_up_batch(load_detector_file(path), [chelsea_rgb])[0]
    assert torch.equal(ours[1], theirs[1])

    del state["roi_heads.box_predictor.attr_linear1.bias"]
    torch.save(
        {k: torch.from_numpy(np.array(v)) for k, v in state.items()}, path
    )  # a bare state dict is read too; a missing tensor is named
    with pytest.raises(CaffeFormatError, match="no weight roi_heads.box_predictor.attr_linear1.bias"):
        load_detector_file(path)


def test_airsplay_pkl_of_numpy_arrays_gives_the_caffemodels_regions(tmp_path, caffe_weights, chelsea_rgb):
    """airsplay's faster_rcnn_from_caffe_attr.pkl layout: numpy arrays under "model", detectron2's conventions (A
    sigmoid objectness logits = foreground minus background, background and "no attribute" last, 4C box rows scaled by
    (10, 10, 5, 5)), read with the allow-list unpickler and mapped back to Caffe's."""
    spec = spec_from_prototxt(PROTOTXT)
    state = _detectron2_state(caffe_weights, spec)
    a = spec.num_anchors
    for part in ("weight", "bias"):
        key = f"proposal_generator.rpn_head.objectness_logits.{part}"
        state[key] = state[key][a:] - state[key][:a]
        for key in (f"roi_heads.box_predictor.cls_score.{part}",):
            state[key] = np.concatenate([state[key][1:], state[key][:1]])
        key = f"roi_heads.box_predictor.bbox_pred.{part}"
        scale = np.tile(np.array([10.0, 10.0, 5.0, 5.0], np.float32), spec.num_classes - 1)
        state[key] = state[key][4:] * scale.reshape(-1, *([1] * (state[key].ndim - 1)))
    embedding = caffe_weights["cls_embedding"][0]
    state["roi_heads.box_predictor.cls_embedding.weight"] = np.concatenate([embedding[1:], embedding[:1]])
    state["roi_heads.box_predictor.fc_attr.weight"], state["roi_heads.box_predictor.fc_attr.bias"] = (
        caffe_weights["fc_attr"]
    )
    w, b = caffe_weights["attr_score"]
    state["roi_heads.box_predictor.attr_score.weight"] = np.concatenate([w[1:], w[:1]])
    state["roi_heads.box_predictor.attr_score.bias"] = np.concatenate([b[1:], b[:1]])
    path = tmp_path / "faster_rcnn_from_caffe_tiny.pkl"
    path.write_bytes(pickle.dumps({"model": state, "__author__": "someone"}, protocol=2))
    converted = load_detector_file(path)
    reference = load_detector_file(CAFFEMODEL, prototxt=PROTOTXT)
    ours = bottom_up_batch(converted, [chelsea_rgb])[0]
    theirs = bottom_up_batch(reference, [chelsea_rgb])[0]
    assert len(ours[1]) == len(theirs[1])
    assert torch.allclose(ours[1], theirs[1], rtol=0, atol=1e-3)
    assert torch.allclose(ours[0], theirs[0], rtol=0, atol=1e-4)
    assert torch.equal(ours[2]["object_labels"], theirs[2]["object_labels"])
    assert torch.equal(ours[2]["attribute_labels"], theirs[2]["attribute_labels"])


class _Payload:
    def __reduce__(self):
        import os

        return (os.system, (f"touch {self.marker}",))


def test_a_pickle_that_names_anything_but_arrays_is_refused_before_it_runs(tmp_path):
    marker = tmp_path / "ran"
    payload = _Payload()
    payload.marker = marker
    path = tmp_path / "faster_rcnn_from_caffe_attr.pkl"
    path.write_bytes(pickle.dumps({"model": {"backbone.x": payload}}, protocol=2))
    with pytest.raises(UnsafePickleError) as err:
        load_detector_file(path)
    assert "posix.system" in str(err.value) or "os.system" in str(err.value)
    assert "\n" not in str(err.value) and not marker.exists()

    zipped = (
        tmp_path / "bua.pth"
    )  # the same payload inside a torch zip: torch's weights_only refuses, in one line
    torch.save({"model": payload}, zipped)
    with pytest.raises(ValueError) as err:
        load_detector_file(zipped)
    assert "refused" in str(err.value) and "system" in str(err.value) and "\n" not in str(err.value)
    assert not marker.exists()
