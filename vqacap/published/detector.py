"""The published bottom-up detector from its files: a test.prototxt gives the network's shape, a .caffemodel (or a
converted PyTorch file) its weights, and the result is a `CaffeBottomUpDetector` that computes what Caffe computes.

Every weight of the file lands on one parameter of the module and every parameter receives one weight; a missing,
extra or mis-shaped weight ends in one line naming the layer. See docs/published-detector.md.
"""

from __future__ import annotations

import os
import re
from importlib import resources
from pathlib import Path

import numpy as np
import torch

from vqacap.models.caffe_detector import BlockSpec, CaffeBottomUpDetector, CaffeDetectorSpec
from vqacap.published.caffe import CaffeFormatError, field, read_caffemodel, read_prototxt

# Layer types of bottom-up-attention's test.prototxt; a prototxt with any other is not this network.
LAYER_TYPES = {
    "Convolution", "BatchNorm", "Scale", "ReLU", "Pooling", "Eltwise", "Reshape", "Softmax", "Python",
    "ROIPooling", "InnerProduct", "Flatten", "ArgMax", "Embed", "Concat", "Silence", "Split",
}  # fmt: skip
_BLOCK = re.compile(r"^res(\d+[a-z]\d*)$")


def _layers(prototxt: Path, net: dict) -> dict[str, dict]:
    layers = {}
    if net.get("layers") and not net.get("layer"):
        raise CaffeFormatError(
            f"{prototxt}: an old-format (V1 'layers') prototxt; upgrade it with Caffe's upgrade_net_proto_text"
        )
    for layer in net.get("layer", []):
        name, kind = field(layer, "name"), field(layer, "type")
        if kind not in LAYER_TYPES:
            raise CaffeFormatError(
                f"{prototxt}: layer {name} of type {kind} is not in bottom-up-attention's test.prototxt"
            )
        layers[name] = layer
    return layers


def _param(layer: dict, group: str, name: str, default=None):
    return field(field(layer, group, {}), name, default)


def _require(prototxt: Path, layers: dict, name: str) -> dict:
    if name not in layers:
        raise CaffeFormatError(f"{prototxt}: no layer {name}: not a bottom-up-attention test.prototxt")
    return layers[name]


def spec_from_prototxt(path: str | os.PathLike) -> CaffeDetectorSpec:
    """The network shape of a test.prototxt: blocks and widths, anchors, pooling, classes and attributes."""
    path = Path(path)
    layers = _layers(path, read_prototxt(path))

    def conv(name: str) -> dict:
        return _require(path, layers, name)

    def eps(bn_name: str) -> float:
        return float(_param(_require(path, layers, bn_name), "batch_norm_param", "eps", 1e-5))

    roi = next((layer for layer in layers.values() if field(layer, "type") == "ROIPooling"), None)
    if roi is None:
        raise CaffeFormatError(f"{path}: no ROIPooling layer: not a bottom-up-attention test.prototxt")
    trunk_top = layer_bottoms(roi)[0]
    blocks, channels, trunk_count = [], _param(conv("conv1"), "convolution_param", "num_output"), None
    for name, layer in layers.items():
        match = _BLOCK.match(name)
        if field(layer, "type") != "Eltwise" or not match:
            continue
        block = match.group(1)
        branch2a, branch2b = conv(f"res{block}_branch2a"), conv(f"res{block}_branch2b")
        out = _param(conv(f"res{block}_branch2c"), "convolution_param", "num_output")
        projection = f"res{block}_branch1" in layers
        blocks.append(
            BlockSpec(
                name=block,
                in_channels=int(channels),
                mid_channels=int(_param(branch2a, "convolution_param", "num_output")),
                out_channels=int(out),
                stride=int(_param(branch2a, "convolution_param", "stride", 1)),
                dilation=int(_param(branch2b, "convolution_param", "dilation", 1)),
                projection=projection,
                eps=eps(f"bn{block}_branch2a"),
            )
        )
        channels = out
        if name == trunk_top:
            trunk_count = len(blocks)
    if trunk_count is None:
        raise CaffeFormatError(
            f"{path}: ROIPooling reads {trunk_top}, which is not a residual block's output"
        )
    rpn_cls = _param(_require(path, layers, "rpn_cls_score"), "convolution_param", "num_output")
    proposal = _require(path, layers, "proposal")
    settings = _param(proposal, "python_param", "param_str", "")
    stride = re.search(r"'feat_stride'\s*:\s*(\d+)", settings)
    scales = re.search(r"'scales'\s*:\s*(?:!!python/tuple\s*)?\[([^\]]*)\]", settings)
    ratios = re.search(r"'ratios'\s*:\s*(?:!!python/tuple\s*)?\[([^\]]*)\]", settings)
    spec = CaffeDetectorSpec(
        conv1_channels=int(_param(conv("conv1"), "convolution_param", "num_output")),
        trunk=tuple(blocks[:trunk_count]),
        head=tuple(blocks[trunk_count:]),
        rpn_channels=int(_param(_require(path, layers, "rpn_conv/3x3"), "convolution_param", "num_output")),
        num_classes=int(_param(_require(path, layers, "cls_score"), "inner_product_param", "num_output")),
        conv1_eps=eps("bn_conv1"),
        feat_stride=int(stride.group(1)) if stride else 16,
        anchor_scales=tuple(float(s) for s in scales.group(1).split(",")) if scales else (8.0, 16.0, 32.0),
        anchor_ratios=tuple(float(r) for r in ratios.group(1).split(",")) if ratios else (0.5, 1.0, 2.0),
        pooled_size=int(_param(roi, "roi_pooling_param", "pooled_h")),
        spatial_scale=float(_param(roi, "roi_pooling_param", "spatial_scale")),
    )
    if int(rpn_cls) != 2 * spec.num_anchors:
        raise CaffeFormatError(
            f"{path}: rpn_cls_score has {rpn_cls} outputs for {spec.num_anchors} anchors (expected 2 per anchor)"
        )
    if _param(roi, "roi_pooling_param", "pooled_w") != spec.pooled_size:
        raise CaffeFormatError(f"{path}: ROIPooling {field(roi, 'name')} is not square")
    if "attr_score" in layers:
        embedding = _require(path, layers, "cls_embedding")
        spec.num_attributes = int(_param(layers["attr_score"], "inner_product_param", "num_output"))
        spec.class_embedding_dim = int(_param(embedding, "embed_param", "num_output"))
        spec.attribute_hidden_dim = int(
            _param(_require(path, layers, "fc_attr"), "inner_product_param", "num_output")
        )
    return spec


def layer_bottoms(layer: dict) -> list[str]:
    return list(layer.get("bottom", []))


# -- Caffe layer names -> module parameters ------------------------------------------------------------------------
def caffe_parameter_names(spec: CaffeDetectorSpec) -> dict[str, list[str]]:
    """Caffe layer -> the module parameters its blobs go to, in blob order. A BatchNorm layer's three blobs (mean,
    variance, scale factor) and its Scale layer's two (gamma, beta) fill one FrozenBatchNorm2d."""
    names: dict[str, list[str]] = {}

    def conv_bn(caffe_conv: str, bn: str, scale: str, module: str, suffix: str) -> None:
        names[caffe_conv] = [f"{module}.{suffix and 'branch' + suffix or 'conv1'}.weight"]
        norm = f"{module}.{'bn' + suffix if suffix else 'bn_conv1'}"
        names[bn] = [f"{norm}.running_mean", f"{norm}.running_var", f"{norm}.scale_factor"]
        names[scale] = [f"{norm}.weight", f"{norm}.bias"]

    conv_bn("conv1", "bn_conv1", "scale_conv1", "trunk", "")
    for where, blocks in (("trunk.blocks", spec.trunk), ("head", spec.head)):
        for b in blocks:
            branches = ("1", "2a", "2b", "2c") if b.projection else ("2a", "2b", "2c")
            for branch in branches:
                module = f"{where}.res{b.name}"
                conv_bn(
                    f"res{b.name}_branch{branch}",
                    f"bn{b.name}_branch{branch}",
                    f"scale{b.name}_branch{branch}",
                    module,
                    branch,
                )
    for layer in ("rpn_cls_score", "rpn_bbox_pred", "cls_score", "bbox_pred"):
        names[layer] = [f"{layer}.weight", f"{layer}.bias"]
    names["rpn_conv/3x3"] = ["rpn_conv.weight", "rpn_conv.bias"]
    if spec.num_attributes is not None:
        names["cls_embedding"] = ["attribute_head.cls_embedding.weight"]
        names["fc_attr"] = ["attribute_head.fc_attr.weight", "attribute_head.fc_attr.bias"]
        names["attr_score"] = ["attribute_head.attr_score.weight", "attribute_head.attr_score.bias"]
    return names


def state_dict_from_caffe(
    weights: dict[str, list[np.ndarray]], spec: CaffeDetectorSpec, source: str | os.PathLike
) -> dict[str, torch.Tensor]:
    """The module's state dict from a .caffemodel's blobs (`read_caffemodel`); one line naming the layer when a layer
    is missing, extra, has another number of blobs or a blob of another shape."""
    model = CaffeBottomUpDetector(
        spec, _names("class", spec.num_classes), _names("attribute", spec.num_attributes)
    )
    expected = model.state_dict()
    names = caffe_parameter_names(spec)
    extra = [layer for layer in weights if layer not in names]
    if extra:
        raise CaffeFormatError(f"{source}: layer {extra[0]} has weights but is not in the prototxt's network")
    state: dict[str, torch.Tensor] = {}
    for layer, targets in names.items():
        if layer not in weights:
            raise CaffeFormatError(f"{source}: no weights for layer {layer} of the prototxt")
        blobs = weights[layer]
        if len(blobs) != len(targets):
            raise CaffeFormatError(
                f"{source}: layer {layer} has {len(blobs)} blobs, the prototxt's {len(targets)}"
            )
        for index, (target, blob) in enumerate(zip(targets, blobs)):
            if target.endswith(".scale_factor"):
                continue
            tensor = torch.from_numpy(np.ascontiguousarray(blob, dtype=np.float32))
            if target.endswith(("running_mean", "running_var")):
                tensor = tensor.reshape(-1) * _inverse_scale_factor(blobs[2])
            want = expected[target].shape
            if len(want) == 1 and tensor.numel() == want.numel():
                tensor = tensor.reshape(want)  # Caffe may keep vectors as (1, C) or (1, C, 1, 1)
            if tensor.shape != want:
                raise CaffeFormatError(
                    f"{source}: layer {layer} blob {index} has shape {list(blob.shape)}, "
                    f"the prototxt's network needs {list(want)}"
                )
            state[target] = tensor
    return state


def _inverse_scale_factor(blob: np.ndarray) -> np.float32:
    """Caffe's BatchNorm: mean and variance are stored times a moving-average factor; 0 means 1 / 0 -> 0."""
    factor = np.float32(blob.reshape(-1)[0])
    return np.float32(0.0) if factor == 0 else np.float32(1.0) / factor


def _names(kind: str, count: int | None) -> list[str] | None:
    if count is None:
        return None
    return [f"__{kind}_{i}__" for i in range(count)]


def genome_names(count_classes: int, count_attributes: int | None) -> tuple[list[str], list[str] | None]:
    """Visual Genome's 1600 object and 400 attribute names of the published model (bottom-up-attention's
    data/genome/1600-400-20 vocabularies, first synonym of each line), with background / no-attribute first; generic
    names for other sizes."""
    folder = resources.files("vqacap.published") / "data"
    objects = [
        line.split(",")[0].strip().lower() for line in (folder / "objects_vocab.txt").read_text().splitlines()
    ]
    attributes = [
        line.split(",")[0].strip().lower()
        for line in (folder / "attributes_vocab.txt").read_text().splitlines()
    ]
    classes = (
        ["__background__", *objects] if count_classes == len(objects) + 1 else _names("class", count_classes)
    )
    if count_attributes is None:
        return classes, None
    names = (
        ["__no_attribute__", *attributes]
        if count_attributes == len(attributes) + 1
        else _names("attribute", count_attributes)
    )
    return classes, names


def read_names(path: str | os.PathLike, count: int, kind: str, first: str) -> list[str]:
    """Names from a vocabulary file (one per line, the first synonym of a comma list), `first` prepended."""
    path = Path(path)
    try:
        lines = [
            line.split(",")[0].strip()
            for line in path.read_text(encoding="utf-8").splitlines()
            if line.strip()
        ]
    except (OSError, UnicodeDecodeError) as err:
        raise CaffeFormatError(f"{path}: cannot read the {kind} names ({type(err).__name__})") from None
    names = lines if len(lines) == count else [first, *lines]
    if len(names) != count:
        raise CaffeFormatError(
            f"{path}: {len(lines)} {kind} names for a detector with {count} {kind}es (first: {first})"
        )
    return names


def detector_names(
    spec: CaffeDetectorSpec, classes: str | os.PathLike | None, attributes: str | os.PathLike | None
) -> tuple[list[str], list[str] | None]:
    """Class and attribute names for a detector of this shape: from the vocabulary files given, else Visual Genome's
    (for 1601 / 401 outputs) or generic ones."""
    class_names, attribute_names = genome_names(spec.num_classes, spec.num_attributes)
    if classes is not None:
        class_names = read_names(classes, spec.num_classes, "class", "__background__")
    if attributes is not None and spec.num_attributes is not None:
        attribute_names = read_names(attributes, spec.num_attributes, "attribute", "__no_attribute__")
    return class_names, attribute_names


def published_prototxt() -> Path:
    """The published ResNet-101 test.prototxt shipped with vqacap (vqacap/published/data)."""
    return Path(str(resources.files("vqacap.published") / "data" / "resnet101_test.prototxt.gz"))


def load_caffe_detector(
    caffemodel: str | os.PathLike,
    prototxt: str | os.PathLike | None = None,
    classes: str | os.PathLike | None = None,
    attributes: str | os.PathLike | None = None,
) -> CaffeBottomUpDetector:
    """The detector of a test.prototxt (the published ResNet-101's when None) with the weights of a .caffemodel, in
    eval mode."""
    weights = read_caffemodel(caffemodel)
    spec = spec_from_prototxt(prototxt or published_prototxt())
    try:
        state = state_dict_from_caffe(weights, spec, caffemodel)
    except CaffeFormatError as err:
        if prototxt is None:
            raise CaffeFormatError(
                f"{err} (the published ResNet-101 test.prototxt was assumed: give the model's own with --prototxt)"
            ) from None
        raise
    model = CaffeBottomUpDetector(spec, *detector_names(spec, classes, attributes))
    model.load_state_dict(state)
    return model.eval()
