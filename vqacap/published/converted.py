"""The published bottom-up model as the PyTorch files users download instead of the .caffemodel, mapped into
`CaffeBottomUpDetector`:

- MILVLG/bottom-up-attention.pytorch's `bua-caffe-frcn-r101_with_attributes.pth` (torch.save of a detectron2-style state
  dict, possibly under "model"): Caffe's layout throughout (2A objectness channels, background at class row 0, 6404
  box rows, `cls_embed` / `attr_linear1` / `attr_linear2`), so every tensor is copied as it is.
- airsplay/py-bottom-up-attention's `faster_rcnn_from_caffe_attr.pkl` (a pickle of numpy arrays under "model", read
  with an allow-list): detectron2's layout, mapped back to Caffe's: the A sigmoid objectness logits become the
  foreground channels of a 2-way softmax whose background channels are 0 (softmax([0, l]) = sigmoid(l)); background
  and "no attribute", stored last, move to row 0; bbox_pred (4C rows, decoded by detectron2 with weights (10, 10, 5, 5))
  gets Caffe's 4 background rows and is divided by those weights.

The network's shape (blocks per stage, widths, classes, attributes) is read from the tensors' shapes with the
published model's conventions (stride on the 1x1 convolutions, res5 at dilation 2, anchors of scales 4-32), or from a
prototxt when one is given. See docs/published-detector.md.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import torch

from vqacap.models.caffe_detector import BlockSpec, CaffeBottomUpDetector, CaffeDetectorSpec
from vqacap.published.caffe import CaffeFormatError
from vqacap.published.detector import detector_names, spec_from_prototxt
from vqacap.published.safe_pickle import load_arrays

_BLOCK_KEY = re.compile(r"^(backbone\.res([2-4])|roi_heads\.res5)\.(\d+)\.")
_LETTERS = "abcdefghijklmnopqrstuvwxyz"
DETECTRON2_BOX_WEIGHTS = (10.0, 10.0, 5.0, 5.0)  # detectron2's default ROI_BOX_HEAD.BBOX_REG_WEIGHTS


def _tensors(path: Path, state) -> dict[str, torch.Tensor]:
    if isinstance(state, dict) and isinstance(state.get("model"), dict):
        state = state["model"]
    if not isinstance(state, dict) or not any(str(k).startswith("backbone.") for k in state):
        raise CaffeFormatError(
            f"{path}: not a checkpoint of the bottom-up detector (neither vqacap's nor a converted published one: "
            "no backbone.* weights)"
        )
    out = {}
    for key, value in state.items():
        if isinstance(value, np.ndarray):
            value = torch.from_numpy(np.ascontiguousarray(value))
        if not isinstance(value, torch.Tensor):
            continue  # e.g. "__author__" entries
        out[str(key)] = value.float() if value.is_floating_point() else value
    return out


def _block_names(state: dict[str, torch.Tensor]) -> dict[str, list[str]]:
    """Stage ("2".."5") -> Caffe block names in order: 2a, 2b, 2c; 4a, 4b1 .. 4b22 (as the published prototxt)."""
    counts: dict[str, int] = {}
    for key in state:
        match = _BLOCK_KEY.match(key)
        if match:
            stage = match.group(2) or "5"
            counts[stage] = max(counts.get(stage, 0), int(match.group(3)) + 1)
    names = {}
    for stage, n in counts.items():
        if n > len(_LETTERS) or stage in ("3", "4") and n > 3:
            names[stage] = [f"{stage}a", *(f"{stage}b{i}" for i in range(1, n))]
        else:
            names[stage] = [f"{stage}{_LETTERS[i]}" for i in range(n)]
    return names


def _need(path: Path, state: dict, key: str) -> torch.Tensor:
    if key not in state:
        raise CaffeFormatError(f"{path}: no weight {key}: not the published bottom-up detector")
    return state[key]


def spec_from_state(path: Path, state: dict[str, torch.Tensor], layout: str) -> CaffeDetectorSpec:
    """The published ResNet's shape from a converted state dict's tensor shapes."""
    names = _block_names(state)
    if sorted(names) != ["2", "3", "4", "5"]:
        raise CaffeFormatError(f"{path}: residual stages {sorted(names)}, expected res2..res5")
    blocks, channels = [], _need(path, state, "backbone.stem.conv1.weight").shape[0]
    for stage in "2345":
        prefix = "roi_heads.res5" if stage == "5" else f"backbone.res{stage}"
        for i, name in enumerate(names[stage]):
            conv1 = _need(path, state, f"{prefix}.{i}.conv1.weight")
            out = _need(path, state, f"{prefix}.{i}.conv3.weight").shape[0]
            blocks.append(
                BlockSpec(
                    name=name,
                    in_channels=int(channels),
                    mid_channels=int(conv1.shape[0]),
                    out_channels=int(out),
                    stride=2 if i == 0 and stage in "34" else 1,
                    dilation=2 if stage == "5" else 1,
                    projection=f"{prefix}.{i}.shortcut.weight" in state,
                )
            )
            channels = out
    trunk = sum(len(names[s]) for s in "234")
    cls = _need(path, state, "roi_heads.box_predictor.cls_score.weight")
    attribute_key = "attr_linear2" if layout == "milvlg" else "attr_score"
    attributes = state.get(f"roi_heads.box_predictor.{attribute_key}.weight")
    embedding_key = "cls_embed" if layout == "milvlg" else "cls_embedding"
    spec = CaffeDetectorSpec(
        conv1_channels=int(state["backbone.stem.conv1.weight"].shape[0]),
        trunk=tuple(blocks[:trunk]),
        head=tuple(blocks[trunk:]),
        rpn_channels=int(_need(path, state, "proposal_generator.rpn_head.conv.weight").shape[0]),
        num_classes=int(cls.shape[0]),
    )
    if attributes is not None:
        spec.num_attributes = int(attributes.shape[0])
        spec.class_embedding_dim = int(
            _need(path, state, f"roi_heads.box_predictor.{embedding_key}.weight").shape[1]
        )
        spec.attribute_hidden_dim = int(attributes.shape[1])
    return spec


def _module_names(spec: CaffeDetectorSpec, layout: str) -> dict[str, str]:
    """detectron2-style key -> the module's parameter name."""
    names = {"backbone.stem.conv1.weight": "trunk.conv1.weight"}
    norm = ("weight", "bias", "running_mean", "running_var")
    names |= {f"backbone.stem.conv1.norm.{p}": f"trunk.bn_conv1.{p}" for p in norm}
    stage_index: dict[str, int] = {}
    for where, blocks in (("trunk.blocks", spec.trunk), ("head", spec.head)):
        for b in blocks:
            stage = b.name[0]
            i = stage_index[stage] = stage_index.get(stage, -1) + 1
            prefix = "roi_heads.res5" if stage == "5" else f"backbone.res{stage}"
            convs = {
                "conv1": ("branch2a", "bn2a"),
                "conv2": ("branch2b", "bn2b"),
                "conv3": ("branch2c", "bn2c"),
            }
            if b.projection:
                convs["shortcut"] = ("branch1", "bn1")
            for theirs, (conv, bn) in convs.items():
                names[f"{prefix}.{i}.{theirs}.weight"] = f"{where}.res{b.name}.{conv}.weight"
                names |= {f"{prefix}.{i}.{theirs}.norm.{p}": f"{where}.res{b.name}.{bn}.{p}" for p in norm}
    rpn = "proposal_generator.rpn_head"
    box = "roi_heads.box_predictor"
    heads = {
        f"{rpn}.conv": "rpn_conv",
        f"{rpn}.objectness_logits": "rpn_cls_score",
        f"{rpn}.anchor_deltas": "rpn_bbox_pred",
        f"{box}.cls_score": "cls_score",
        f"{box}.bbox_pred": "bbox_pred",
    }
    if spec.num_attributes is not None:
        milvlg = layout == "milvlg"
        heads[f"{box}.{'attr_linear1' if milvlg else 'fc_attr'}"] = "attribute_head.fc_attr"
        heads[f"{box}.{'attr_linear2' if milvlg else 'attr_score'}"] = "attribute_head.attr_score"
        names[f"{box}.{'cls_embed' if milvlg else 'cls_embedding'}.weight"] = (
            "attribute_head.cls_embedding.weight"
        )
    for theirs, ours in heads.items():
        names[f"{theirs}.weight"] = f"{ours}.weight"
        names[f"{theirs}.bias"] = f"{ours}.bias"
    return names


def _to_caffe_layout(state: dict[str, torch.Tensor], spec: CaffeDetectorSpec) -> dict[str, torch.Tensor]:
    """airsplay's detectron2 layout -> Caffe's (see the module docstring); keys are already the module's."""
    state = dict(state)
    for key in (
        "rpn_cls_score.weight",
        "rpn_cls_score.bias",
    ):  # A logits -> 2A: background 0, foreground the logit
        state[key] = torch.cat([torch.zeros_like(state[key]), state[key]])
    first_last = ["cls_score.weight", "cls_score.bias", "attribute_head.cls_embedding.weight"]
    if spec.num_attributes is not None:
        first_last += ["attribute_head.attr_score.weight", "attribute_head.attr_score.bias"]
    for key in first_last:  # background / no attribute: last row -> row 0
        state[key] = torch.cat([state[key][-1:], state[key][:-1]])
    weights = torch.tensor(DETECTRON2_BOX_WEIGHTS).repeat(state["bbox_pred.bias"].shape[0] // 4)
    for key in ("bbox_pred.weight", "bbox_pred.bias"):
        value = state[key] / weights.view(-1, *([1] * (state[key].dim() - 1)))
        state[key] = torch.cat([torch.zeros_like(value[:4]), value])
    return state


def load_converted(
    path: Path,
    state,
    layout: str,
    prototxt: str | os.PathLike | None,
    classes: str | os.PathLike | None,
    attributes: str | os.PathLike | None,
) -> CaffeBottomUpDetector:
    tensors = _tensors(path, state)
    spec = spec_from_prototxt(prototxt) if prototxt is not None else spec_from_state(path, tensors, layout)
    names = _module_names(spec, layout)
    ignored = ("num_batches_tracked", "anchor_generator", "cell_anchors")
    extra = [k for k in tensors if k not in names and not k.endswith(ignored)]
    if extra:
        raise CaffeFormatError(f"{path}: weight {extra[0]} has no place in the published detector")
    missing = [k for k in names if k not in tensors]
    if missing:
        raise CaffeFormatError(f"{path}: no weight {missing[0]}: not the published bottom-up detector")
    state = {ours: tensors[theirs] for theirs, ours in names.items()}
    if layout == "airsplay":
        state = _to_caffe_layout(state, spec)
    model = CaffeBottomUpDetector(spec, *detector_names(spec, classes, attributes))
    expected = model.state_dict()
    inverse = {ours: theirs for theirs, ours in names.items()}
    for key, value in state.items():
        if value.shape != expected[key].shape:
            raise CaffeFormatError(
                f"{path}: {inverse[key]} has shape {list(value.shape)}, the detector needs {list(expected[key].shape)}"
            )
    model.load_state_dict(state)
    return model.eval()


def load_state(path: Path, state, prototxt=None, classes=None, attributes=None) -> CaffeBottomUpDetector:
    """A torch.save'd converted model (MILVLG's .pth)."""
    return load_converted(path, state, "milvlg", prototxt, classes, attributes)


def load_pickle(path: Path, prototxt=None, classes=None, attributes=None) -> CaffeBottomUpDetector:
    """A pickle of numpy arrays (airsplay's .pkl), read with the allow-list unpickler."""
    return load_converted(path, load_arrays(path), "airsplay", prototxt, classes, attributes)
