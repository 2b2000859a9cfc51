"""The bottom-up attention model: Faster R-CNN with a ResNet C4 trunk and an attribute head (Anderson et al. 2018,
Sec. 3.1), on torchvision's Faster R-CNN parts, top to bottom as the paper builds it: trunk, RPN, ROIPooling (or
RoIAlign: `pooler`) and the res5 box head (whose pool5 output is the region feature), class and box predictors,
attribute head.

Dims: B images, R regions (sampled RoIs in training, proposals or given boxes at test time), D region feature dim,
C classes and A attributes (the score vectors have C + 1 and A + 1 entries: index 0 is background / no attribute).

The architecture step by step, the API (`regions`, `grid`, training targets) and the defaults: docs/detector.md.
"""

from __future__ import annotations

import math
import os
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.detection.faster_rcnn import FasterRCNN, FastRCNNPredictor
from torchvision.models.detection.roi_heads import RoIHeads
from torchvision.models.detection.rpn import AnchorGenerator, RegionProposalNetwork, RPNHead
from torchvision.models.detection.transform import GeneralizedRCNNTransform, resize_boxes
from torchvision.models.resnet import BasicBlock, Bottleneck
from torchvision.ops import (
    FrozenBatchNorm2d,
    MultiScaleRoIAlign,
    batched_nms,
    box_area,
    clip_boxes_to_image,
    nms,
    roi_pool,
)

from vqacap.folders import PretrainedMixin

# Blocks per stage (res2..res5) of the ResNets of He et al. 2016, as torchvision builds them.
DEPTHS = {
    18: (BasicBlock, (2, 2, 2, 2)),
    34: (BasicBlock, (3, 4, 6, 3)),
    50: (Bottleneck, (3, 4, 6, 3)),
    101: (Bottleneck, (3, 4, 23, 3)),
    152: (Bottleneck, (3, 8, 36, 3)),
}
NORMS = ("frozen_bn", "group_norm", "batch_norm")
POOLERS = ("roi_pool", "roi_align")


@dataclass
class DetectorOptions:
    """The detector's settings; defaults are the paper's (bottom-up-attention's ResNet-101 prototxt and yml).

    The one place these defaults are written: conf/model/bottom_up_detector.yaml composes them as `model.detector`
    (a structured config registered by vqacap.configs), recipes override single fields."""

    # -- trunk
    depth: int = 101  # 18, 34, 50, 101, 152
    # channels of res2 (doubling per stage); 64 is the published ResNets, smaller for Shapes
    width: int = 64
    blocks: tuple[int, ...] | None = None  # blocks per stage res2..res5; None: the depth's
    # frozen_bn (a pretrained trunk), group_norm or batch_norm (a trunk trained from scratch)
    norm: str = "frozen_bn"
    pretrained: str | None = None  # local torchvision ResNet state dict (ImageNet); never downloaded
    # conv1, res2, res3 are not trained (lr_mult 0 in train.prototxt); 0: train everything
    frozen_stages: int = 3
    res5_dilation: bool = True  # res5 at stride 1, dilation 2 (the prototxt): pool5 over 14 x 14, not 7 x 7
    # -- input
    min_size: int = 600  # shorter side (cfg.TRAIN.SCALES)
    max_size: int = 1000  # longer side at most (cfg.TRAIN.MAX_SIZE)
    # of the ImageNet weights, images in [0, 1]
    image_mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    image_std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    # -- RPN
    anchor_sizes: tuple[int, ...] = (64, 128, 256, 512)  # scales 4, 8, 16, 32 x the 16-pixel stride
    aspect_ratios: tuple[float, ...] = (0.5, 1.0, 2.0)
    rpn_channels: int = 512
    rpn_pre_nms_top_n_train: int = 12000
    rpn_post_nms_top_n_train: int = 2000
    rpn_pre_nms_top_n_test: int = 6000
    rpn_post_nms_top_n_test: int = 300
    rpn_nms_thresh: float = 0.7
    rpn_min_size: float = 16.0  # RPN_MIN_SIZE: original-image pixels, train and test; 0: torchvision's filter
    rpn_batch_size_per_image: int = 64  # RPN_BATCHSIZE of faster_rcnn_end2end_resnet.yml
    rpn_positive_fraction: float = 0.5
    # -- RoI heads
    # roi_pool: the prototxt's ROIPooling (max over quantised bins); roi_align: torchvision's RoIAlign.
    pooler: str = "roi_pool"
    pool_size: int = 14  # roi_pool5: 14 x 14 at spatial scale 1/16
    sampling_ratio: int = 2  # RoIAlign's samples per bin
    box_batch_size_per_image: int = 64  # BATCH_SIZE of the yml
    box_positive_fraction: float = 0.5  # FG_FRACTION of the yml
    box_fg_iou_thresh: float = 0.5
    box_bg_iou_thresh: float = 0.5
    box_score_thresh: float = 0.0  # test_net keeps every score (thresh=-inf)
    box_nms_thresh: float = 0.3  # per-class NMS of vg_eval / generate_tsv
    # smooth-L1 beta of the box loss: loss_bbox's sigma 1 (beta = 1 / sigma^2); torchvision's is 1/9
    box_loss_beta: float = 1.0
    bias_lr_mult: float = 2.0  # every bias's learning rate, times the model's (lr_mult: 2 in train.prototxt)
    detections_per_img: int = 400  # max_per_image of test_net
    # -- attribute head
    class_embedding_dim: int = 256
    attribute_hidden_dim: int = 512
    attribute_loss_weight: float = 0.5  # loss_weight of loss_attr in train.prototxt

    def __post_init__(self) -> None:
        if self.depth not in DEPTHS:
            raise ValueError(f"detector depth: expected one of {sorted(DEPTHS)}, got {self.depth}")
        if self.norm not in NORMS:
            raise ValueError(f"detector norm: expected one of {NORMS}, got {self.norm!r}")
        if self.blocks is not None and (len(self.blocks) != 4 or min(self.blocks) < 1):
            raise ValueError(
                f"detector blocks: expected 4 positive counts (res2..res5), got {list(self.blocks)}"
            )
        if not 0 <= self.frozen_stages <= 4:
            raise ValueError(
                f"detector frozen_stages: expected 0..4 (conv1, res2, res3, res4), got {self.frozen_stages}"
            )
        if self.pooler not in POOLERS:
            raise ValueError(f"detector pooler: expected one of {POOLERS}, got {self.pooler!r}")
        if self.pretrained and self.norm != "frozen_bn":
            raise ValueError(
                "detector pretrained: ImageNet weights come with batch-norm statistics; use norm=frozen_bn"
            )
        self.blocks = tuple(self.blocks) if self.blocks is not None else DEPTHS[self.depth][1]
        self.anchor_sizes = tuple(self.anchor_sizes)
        self.aspect_ratios = tuple(float(a) for a in self.aspect_ratios)
        self.image_mean = tuple(self.image_mean)
        self.image_std = tuple(self.image_std)


# -- 1. Trunk ------------------------------------------------------------------------------------------------------
def _norm_layer(kind: str):
    if kind == "frozen_bn":
        return FrozenBatchNorm2d
    if kind == "batch_norm":
        return nn.BatchNorm2d
    return lambda channels: nn.GroupNorm(min(32, channels // 4), channels)


class ResNet(nn.Module):
    """A ResNet whose parameter names are torchvision's (conv1, bn1, layer1..layer4), so ImageNet weights load as they
    are; any res2 width, so a small trunk can be trained from scratch on the CPU."""

    def __init__(self, options: DetectorOptions) -> None:
        super().__init__()
        block = DEPTHS[options.depth][0]
        norm = _norm_layer(options.norm)
        width = options.width
        self.conv1 = nn.Conv2d(3, width, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = norm(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.inplanes = width
        strides = (1, 2, 2, 1 if options.res5_dilation else 2)
        dilation = 2 if options.res5_dilation and block is Bottleneck else 1
        for stage, (count, stride) in enumerate(zip(options.blocks, strides)):
            planes = width * 2**stage
            layer = self._stage(block, planes, count, stride, dilation if stage == 3 else 1, norm)
            setattr(self, f"layer{stage + 1}", layer)
        self.c4_channels = width * 4 * block.expansion
        self.c5_channels = width * 8 * block.expansion

    def _stage(self, block, planes: int, count: int, stride: int, dilation: int, norm) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(
                nn.Conv2d(self.inplanes, planes * block.expansion, kernel_size=1, stride=stride, bias=False),
                norm(planes * block.expansion),
            )
        layers = [block(self.inplanes, planes, stride, downsample, dilation=dilation, norm_layer=norm)]
        self.inplanes = planes * block.expansion
        layers += [block(self.inplanes, planes, dilation=dilation, norm_layer=norm) for _ in range(count - 1)]
        return nn.Sequential(*layers)

    def load_imagenet(self, path: str | os.PathLike) -> None:
        """torchvision ResNet weights (state dict) from a local file; the classifier (fc) is dropped."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(
                f"{path}: ImageNet weights not found (a local torchvision ResNet state dict)"
            )
        state = torch.load(path, map_location="cpu", weights_only=True)
        state = {k: v for k, v in state.items() if not k.startswith("fc.")}
        # FrozenBatchNorm2d has no num_batches_tracked counter.
        state = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
        try:
            result = self.load_state_dict(state, strict=False)
        except RuntimeError as err:  # tensors of other shapes: another width or block type
            raise ValueError(
                f"{path}: not the weights of this ResNet ({str(err).splitlines()[-1].strip()})"
            ) from None
        if result.missing_keys or result.unexpected_keys:
            first = (result.missing_keys or result.unexpected_keys)[0]
            raise ValueError(
                f"{path}: not the weights of this ResNet ({len(result.missing_keys)} missing, "
                f"{len(result.unexpected_keys)} unexpected keys; first: {first})"
            )


class C4Trunk(nn.Module):
    """conv1 .. res4 of a ResNet: images (B, 3, H, W) -> res4 map (B, C4, H/16, W/16), the map the RPN and RoIAlign read."""

    def __init__(self, resnet: ResNet) -> None:
        super().__init__()
        self.conv1, self.bn1, self.relu, self.maxpool = resnet.conv1, resnet.bn1, resnet.relu, resnet.maxpool
        self.layer1, self.layer2, self.layer3 = resnet.layer1, resnet.layer2, resnet.layer3
        self.out_channels = resnet.c4_channels

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(images))))
        return self.layer3(self.layer2(self.layer1(x)))


# -- 3. Box head: res5 + average pooling ---------------------------------------------------------------------------
class Res5Head(nn.Module):
    """Pooled RoIs (R, C4, 14, 14) -> region features (R, D): res5, then the mean over its output grid (pool5)."""

    def __init__(self, resnet: ResNet) -> None:
        super().__init__()
        self.layer4 = resnet.layer4
        self.out_channels = resnet.c5_channels

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        return self.layer4(pooled).mean(dim=(2, 3))  # (R, D)


# -- 2. RPN head ---------------------------------------------------------------------------------------------------
class BottomUpRPNHead(RPNHead):
    """torchvision's RPN head with the prototxt's 512-channel 3x3 conv (torchvision keeps the input's channels)."""

    def __init__(self, in_channels: int, channels: int, num_anchors: int) -> None:
        super().__init__(channels, num_anchors)
        self.conv = nn.Sequential(
            nn.Conv2d(in_channels, channels, kernel_size=3, padding=1), nn.ReLU(inplace=True)
        )
        nn.init.normal_(self.conv[0].weight, std=0.01)  # rpn_conv/3x3: gaussian 0.01
        nn.init.zeros_(self.conv[0].bias)


class BottomUpRPN(RegionProposalNetwork):
    """torchvision's RPN with the proposal layer's filtering (bottom-up-attention `lib/rpn/proposal_layer.py`), when
    `min_size` > 0: proposals with a side under `min_size` pixels of the original image (RPN_MIN_SIZE, times the image
    scale; sides counted +1, as Caffe's) are dropped first, then the pre-NMS top n by score, NMS, the post-NMS top n.
    torchvision's order (top n first, a 0.001-pixel minimum) is kept for `min_size` 0."""

    def __init__(self, *args, min_size: float = 16.0, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.original_min_size = float(min_size)
        self._scales: list[float] | None = None

    def forward(self, images, features, targets=None):
        self._scales = getattr(images, "scales", None)  # set by BottomUpTransform
        return super().forward(images, features, targets)

    def filter_proposals(self, proposals, objectness, image_shapes, num_anchors_per_level):
        if not self.original_min_size or self._scales is None:
            return super().filter_proposals(proposals, objectness, image_shapes, num_anchors_per_level)
        scores = torch.sigmoid(objectness.detach().reshape(len(proposals), -1))  # (B, anchors)
        final_boxes, final_scores = [], []
        for boxes, score, shape, scale in zip(proposals, scores, image_shapes, self._scales):
            boxes = clip_boxes_to_image(boxes, shape)
            sides = torch.minimum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]) + 1
            keep = torch.where(sides >= self.original_min_size * scale)[0]
            keep = keep[score[keep].argsort(descending=True)[: self.pre_nms_top_n()]]
            keep = keep[nms(boxes[keep], score[keep], self.nms_thresh)[: self.post_nms_top_n()]]
            final_boxes.append(boxes[keep])
            final_scores.append(score[keep])
        return final_boxes, final_scores


class BottomUpTransform(GeneralizedRCNNTransform):
    """torchvision's resizing and normalisation; the ImageList also carries each image's scale (`im_scale` of
    lib/fast_rcnn/test.py: the shorter side to min_size unless the longer would pass max_size) for BottomUpRPN."""

    def forward(self, images, targets=None):
        scales = [
            min(self.min_size[-1] / min(im.shape[-2:]), self.max_size / max(im.shape[-2:])) for im in images
        ]
        image_list, targets = super().forward(images, targets)
        image_list.scales = scales
        return image_list, targets


# -- 5. Attribute head ---------------------------------------------------------------------------------------------
class AttributeHead(nn.Module):
    """Attribute scores of regions given their class: [pool5 ; E[c]] -> 512 + ReLU -> A + 1 (Anderson et al. 2018,
    Sec. 3.1: "we concatenate the mean pooled convolutional feature from a given region of interest with a learned
    embedding of the ground-truth object class, and feed this into an additional output layer")."""

    def __init__(
        self, feature_dim: int, num_classes: int, num_attributes: int, embed_dim: int = 256, hidden: int = 512
    ):
        super().__init__()
        self.class_embedding = nn.Embedding(num_classes, embed_dim)  # cls_embedding: (C + 1, 256), no bias
        self.hidden = nn.Linear(feature_dim + embed_dim, hidden)  # fc_attr
        self.scores = nn.Linear(hidden, num_attributes)  # attr_score
        for weight in (self.class_embedding.weight, self.hidden.weight, self.scores.weight):
            nn.init.normal_(weight, std=0.01)  # gaussian 0.01 fillers of the prototxt
        nn.init.zeros_(self.hidden.bias)
        nn.init.zeros_(self.scores.bias)

    def forward(self, features: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
        """features (R, D), classes (R,) long -> attribute logits (R, A + 1)."""
        x = torch.cat([features, self.class_embedding(classes)], dim=1)  # (R, D + 256)
        return self.scores(F.relu(self.hidden(x)))


def attribute_targets(attributes: torch.Tensor, num_attributes: int) -> torch.Tensor:
    """Attribute index lists (R, M), padded with -1 -> target distributions (R, A + 1): uniform over the object's
    attributes, or all mass on index 0 ("no attribute") when it has none."""
    valid = attributes >= 0
    target = torch.zeros(attributes.size(0), num_attributes, device=attributes.device)
    target.scatter_add_(1, attributes.clamp(min=0), valid.float())
    target[:, 0] += (~valid.any(dim=1)).float()
    return target / target.sum(dim=1, keepdim=True)


def attribute_loss(logits: torch.Tensor, attributes: torch.Tensor) -> torch.Tensor:
    """Cross-entropy against the uniform distribution over each region's ground-truth attributes, averaged over regions.

    logits (R, A + 1), attributes (R, M) long padded with -1. Zero (with a gradient path) when R = 0.
    """
    if logits.size(0) == 0:
        return logits.sum() * 0.0
    target = attribute_targets(attributes, logits.size(1))
    return -(target * F.log_softmax(logits, dim=1)).sum(dim=1).mean()


def fast_rcnn_loss(
    class_logits: torch.Tensor,
    box_regression: torch.Tensor,
    labels: list[torch.Tensor],
    regression_targets: list[torch.Tensor],
    beta: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """loss_cls and loss_bbox of train.prototxt: softmax cross-entropy over the sampled RoIs, and the smooth-L1 loss of
    the foreground RoIs' boxes of their class, summed and divided by the number of sampled RoIs (torchvision's
    fastrcnn_loss, whose beta is fixed at 1/9). class_logits (R, C + 1), box_regression (R, 4 (C + 1))."""
    labels, regression_targets = torch.cat(labels), torch.cat(regression_targets)
    classification = F.cross_entropy(class_logits, labels)
    foreground = torch.where(labels > 0)[0]
    boxes = box_regression.reshape(len(labels), -1, 4)[foreground, labels[foreground]]  # (F, 4)
    box = F.smooth_l1_loss(boxes, regression_targets[foreground], beta=beta, reduction="sum") / labels.numel()
    return classification, box


def max_roi_pool(
    features: torch.Tensor, rois: torch.Tensor | list[torch.Tensor], output_size: int, spatial_scale: float
) -> torch.Tensor:
    """torchvision's roi_pool (Caffe's ROIPooling); bfloat16 maps, which its CPU kernel lacks, pooled in float32:
    a maximum is one of the values, so the result is the same as in bfloat16."""
    dtype = features.dtype
    if dtype == torch.bfloat16:
        features = features.float()
    rois = rois.to(features.dtype) if isinstance(rois, torch.Tensor) else [r.to(features.dtype) for r in rois]
    return roi_pool(features, rois, (output_size, output_size), spatial_scale).to(dtype)


class RoIPool(nn.Module):
    """The prototxt's ROIPooling over the one res4 map: max over the bins of each RoI quantised to the map's grid
    (torchvision.ops.roi_pool, ported from Caffe's layer); what MultiScaleRoIAlign is called with, it takes."""

    def __init__(self, output_size: int, spatial_scale: float = 1 / 16) -> None:
        super().__init__()
        self.output_size, self.spatial_scale = output_size, spatial_scale

    def forward(self, features: dict, proposals: list[torch.Tensor], image_shapes) -> torch.Tensor:
        return max_roi_pool(
            features["0"], proposals, self.output_size, self.spatial_scale
        )  # (sum R, C4, S, S)


class AttributeRoIHeads(RoIHeads):
    """torchvision's RoIHeads (RoI sampling, the Fast R-CNN losses, per-class NMS) plus the attribute head.

    In training the attribute head sees the foreground RoIs only, with the class of the ground-truth object each RoI
    was matched to (the `foreground_pool5` / `foreground_labels` slices of train.prototxt); at test time every region,
    with its argmax class over all C + 1 scores (`predicted_cls` of test.prototxt).
    """

    def __init__(
        self,
        attribute_head: AttributeHead,
        attribute_loss_weight: float,
        box_loss_beta: float = 1.0,
        **roi_heads_options,
    ) -> None:
        super().__init__(**roi_heads_options)
        self.attribute_head = attribute_head
        self.attribute_loss_weight = attribute_loss_weight
        self.box_loss_beta = box_loss_beta

    def forward(self, features, proposals, image_shapes, targets=None):
        if self.training:
            proposals, matched_idxs, labels, regression_targets = self.select_training_samples(
                proposals, targets
            )
        region_features = self.box_head(self.box_roi_pool(features, proposals, image_shapes))  # (sum R, D)
        class_logits, box_regression = self.box_predictor(
            region_features
        )  # (sum R, C + 1), (sum R, 4 (C + 1))
        if self.training:
            loss_classifier, loss_box_reg = fast_rcnn_loss(
                class_logits, box_regression, labels, regression_targets, self.box_loss_beta
            )
            labels = torch.cat(labels)
            foreground = labels > 0
            matched_attributes = torch.cat([_attributes_of(t, m) for t, m in zip(targets, matched_idxs)])
            logits = self.attribute_head(region_features[foreground], labels[foreground])
            loss_attribute = attribute_loss(logits, matched_attributes[foreground])
            losses = {
                "loss_classifier": loss_classifier,
                "loss_box_reg": loss_box_reg,
                "loss_attribute": self.attribute_loss_weight * loss_attribute,
            }
            return [], losses
        attribute_probs = F.softmax(self.attribute_head(region_features, class_logits.argmax(dim=1)), dim=1)
        return self.detections(class_logits, box_regression, attribute_probs, proposals, image_shapes), {}

    def detections(
        self, class_logits, box_regression, attribute_probs, proposals, image_shapes
    ) -> list[dict]:
        """Per-class NMS over the class-specific boxes of every proposal, as torchvision's postprocess_detections, also
        keeping which proposal each detection came from, for its attribute probabilities."""
        class_boxes = self.box_coder.decode(box_regression, proposals)  # (sum R, C + 1, 4)
        class_probs = F.softmax(class_logits, dim=1)
        counts = [len(p) for p in proposals]
        out = []
        for boxes, probs, attrs, size in zip(
            class_boxes.split(counts), class_probs.split(counts), attribute_probs.split(counts), image_shapes
        ):
            boxes = clip_boxes_to_image(boxes, size)[:, 1:]  # background dropped: (R, C, 4)
            scores, num_classes = probs[:, 1:], probs.size(1) - 1
            region = torch.arange(len(probs), device=probs.device)[:, None].expand_as(scores).reshape(-1)
            labels = (
                torch.arange(1, num_classes + 1, device=probs.device)[None, :].expand_as(scores).reshape(-1)
            )
            boxes, scores = boxes.reshape(-1, 4), scores.reshape(-1)
            keep = (scores > self.score_thresh) & (box_area(boxes) > 0)
            boxes, scores, labels, region = boxes[keep], scores[keep], labels[keep], region[keep]
            keep = batched_nms(boxes, scores, labels, self.nms_thresh)[: self.detections_per_img]
            out.append(
                {
                    "boxes": boxes[keep],
                    "labels": labels[keep],
                    "scores": scores[keep],
                    "attribute_probs": attrs[region[keep]],
                }
            )
        return out


def _attributes_of(target: dict, matched: torch.Tensor) -> torch.Tensor:
    """The attribute lists (R, M) of the ground-truth objects the sampled RoIs were matched to."""
    attributes = target["attributes"]
    if len(attributes) == 0:  # an image without objects: every RoI is background, its row is never read
        attributes = attributes.new_full((1, max(1, attributes.size(1))), -1)
    return attributes[matched]


# -- The whole model -----------------------------------------------------------------------------------------------
@dataclass
class RegionOutputs:
    """What the detector says about R regions of one image, in that image's pixels."""

    boxes: torch.Tensor  # (R, 4) x1, y1, x2, y2: the RPN proposals, or the boxes given
    features: torch.Tensor  # (R, D) pool5
    class_probs: torch.Tensor  # (R, C + 1)
    class_boxes: torch.Tensor  # (R, C + 1, 4) class-specific regressed boxes
    attribute_probs: torch.Tensor  # (R, A + 1), given the argmax class


def grid_cell_boxes(height: int, width: int, n: int) -> torch.Tensor:
    """The n x n cells of an image of this size, row by row: boxes (n * n, 4) in its pixels."""
    ys, xs = torch.meshgrid(torch.arange(n), torch.arange(n), indexing="ij")
    boxes = torch.stack([xs * width / n, ys * height / n, (xs + 1) * width / n, (ys + 1) * height / n], -1)
    return boxes.reshape(-1, 4)


@dataclass
class GridOutputs:
    boxes: torch.Tensor  # (n * n, 4) the cells, row by row, in input-image pixels
    features: torch.Tensor  # (n * n, D)


class BottomUpDetector(PretrainedMixin, FasterRCNN):
    """torchvision's FasterRCNN with a ResNet C4 trunk, the res5 box head and the attribute head (see the module
    docstring). `classes` and `attributes` are the names, index 0 included (background, no attribute)."""

    folder_task = "detector"

    @classmethod
    def _init_from_json(cls, init: dict) -> dict:
        # The folder's weights replace any ImageNet initialisation, which a folder's reader need not have.
        options = {k: tuple(v) if isinstance(v, list) else v for k, v in (init.get("options") or {}).items()}
        return {**init, "options": DetectorOptions(**{**options, "pretrained": None})}

    def __init__(
        self, classes: list[str], attributes: list[str], options: DetectorOptions | None = None
    ) -> None:
        o = options or DetectorOptions()
        resnet = ResNet(o)
        if o.pretrained:
            resnet.load_imagenet(o.pretrained)
        trunk, head = C4Trunk(resnet), Res5Head(resnet)
        anchors = AnchorGenerator(sizes=(o.anchor_sizes,), aspect_ratios=(o.aspect_ratios,))
        predictor = FastRCNNPredictor(head.out_channels, len(classes))
        for layer in (predictor.cls_score, predictor.bbox_pred):
            nn.init.normal_(layer.weight, std=0.01)
            nn.init.zeros_(layer.bias)
        align = MultiScaleRoIAlign(["0"], output_size=o.pool_size, sampling_ratio=o.sampling_ratio)
        pooler = RoIPool(o.pool_size) if o.pooler == "roi_pool" else align  # the trunk's stride is 16
        box_options = dict(
            box_roi_pool=pooler,
            box_head=head,
            box_predictor=predictor,
            fg_iou_thresh=o.box_fg_iou_thresh,
            bg_iou_thresh=o.box_bg_iou_thresh,
            batch_size_per_image=o.box_batch_size_per_image,
            positive_fraction=o.box_positive_fraction,
            bbox_reg_weights=None,  # (10, 10, 5, 5): the BBOX_NORMALIZE_STDS (0.1, 0.1, 0.2, 0.2) of the yml
            score_thresh=o.box_score_thresh,
            nms_thresh=o.box_nms_thresh,
            detections_per_img=o.detections_per_img,
        )
        super().__init__(
            trunk,
            min_size=o.min_size,
            max_size=o.max_size,
            image_mean=list(o.image_mean),
            image_std=list(o.image_std),
            rpn_anchor_generator=anchors,
            rpn_head=BottomUpRPNHead(
                trunk.out_channels, o.rpn_channels, len(o.anchor_sizes) * len(o.aspect_ratios)
            ),
            rpn_pre_nms_top_n_train=o.rpn_pre_nms_top_n_train,
            rpn_post_nms_top_n_train=o.rpn_post_nms_top_n_train,
            rpn_pre_nms_top_n_test=o.rpn_pre_nms_top_n_test,
            rpn_post_nms_top_n_test=o.rpn_post_nms_top_n_test,
            rpn_nms_thresh=o.rpn_nms_thresh,
            rpn_batch_size_per_image=o.rpn_batch_size_per_image,
            rpn_positive_fraction=o.rpn_positive_fraction,
            box_roi_pool=align,  # FasterRCNN takes no other kind; its RoIHeads are replaced below
            box_head=head,
            box_predictor=predictor,
        )
        # torchvision's transform and RPN, built by the parent, give way to the proposal layer's filtering.
        rpn = self.rpn
        self.transform = BottomUpTransform(o.min_size, o.max_size, list(o.image_mean), list(o.image_std))
        self.rpn = BottomUpRPN(
            rpn.anchor_generator,
            rpn.head,
            rpn.proposal_matcher.high_threshold,
            rpn.proposal_matcher.low_threshold,
            o.rpn_batch_size_per_image,
            o.rpn_positive_fraction,
            rpn._pre_nms_top_n,
            rpn._post_nms_top_n,
            o.rpn_nms_thresh,
            min_size=o.rpn_min_size,
        )
        # torchvision's RoIHeads, built by the parent, gives way to the one with the attribute head.
        attribute_head = AttributeHead(
            head.out_channels, len(classes), len(attributes), o.class_embedding_dim, o.attribute_hidden_dim
        )
        self.roi_heads = AttributeRoIHeads(
            attribute_head, o.attribute_loss_weight, o.box_loss_beta, **box_options
        )
        self.options = o
        self.classes = list(classes)
        self.attributes = list(attributes)
        self.feature_dim = head.out_channels
        self._freeze(trunk, o.frozen_stages)

    @staticmethod
    def _freeze(trunk: C4Trunk, stages: int) -> None:
        frozen = [trunk.conv1, trunk.bn1, trunk.layer1, trunk.layer2, trunk.layer3][: stages + (stages > 0)]
        for module in frozen:
            for p in module.parameters():
                p.requires_grad_(False)

    # -- what an image's size allows ----------------------------------------------------------------------------------
    RES4_STRIDE = 16

    def input_size(self, height: int, width: int) -> tuple[int, int]:
        """(height, width) of an image of this size after the transform's resize (torchvision's rule: shorter side to
        min_size unless the longer side would pass max_size; sizes floored)."""
        o = self.options
        scale = min(o.min_size / min(height, width), o.max_size / max(height, width))
        return math.floor(height * scale), math.floor(width * scale)

    def grid_cells(self, height: int, width: int) -> tuple[int, int]:
        """(rows, columns) of the res5 map that `grid` pools for an image of this size."""
        stride = self.RES4_STRIDE * (1 if self.options.res5_dilation else 2)
        return tuple(max(1, round(side / stride)) for side in self.input_size(height, width))

    def size_problem(self, height: int, width: int, grid: int | None = None) -> str | None:
        """Why an image of this size cannot go through the detector (or give an n x n `grid`), or None: a shorter
        side under one 16-pixel cell of the res4 map once resized (a 10000 x 10 image), or fewer map cells than the
        grid asks for (the pooling would repeat cells)."""
        resized = self.input_size(height, width)
        if min(resized) < self.RES4_STRIDE:
            return (
                f"{width}x{height} pixels is {resized[1]}x{resized[0]} at the detector's input size (longer side at "
                f"most {self.options.max_size}), less than one {self.RES4_STRIDE}-pixel cell of its feature map"
            )
        if grid is not None and grid > min(cells := self.grid_cells(height, width)):
            return f"{width}x{height} pixels gives a {cells[1]}x{cells[0]} feature map, fewer cells than --grid {grid}"
        return None

    @property
    def min_side(self) -> int:
        """The shorter side images are resized to (unless the longer side would pass max_size)."""
        return self.options.min_size

    def max_grid(self) -> int:
        """The largest n of an n x n grid any image allows: the cells of a shorter side at min_size."""
        return min(self.grid_cells(self.options.min_size, self.options.min_size))

    # -- test-time views: proposals with their features, given boxes, grid cells ------------------------------------
    def _trunk(self, images: list[torch.Tensor]):
        original = [tuple(im.shape[-2:]) for im in images]
        image_list, _ = self.transform(images)
        return image_list, OrderedDict([("0", self.backbone(image_list.tensors))]), original

    def regions(
        self, images: list[torch.Tensor], boxes: list[torch.Tensor] | None = None
    ) -> list[RegionOutputs]:
        """The RPN proposals of each image (or `boxes`, (n_i, 4) in input-image pixels) with their pool5 features and
        class, box and attribute predictions; eval mode. images: (3, H, W) floats in [0, 1]."""
        image_list, features, original = self._trunk(images)
        sizes = image_list.image_sizes
        if boxes is None:
            proposals, _ = self.rpn(image_list, features)
        else:
            proposals = [resize_boxes(b.to(features["0"]), o, s) for b, o, s in zip(boxes, original, sizes)]
        heads = self.roi_heads
        pooled = heads.box_head(heads.box_roi_pool(features, proposals, sizes))  # (sum R, D)
        class_logits, box_regression = heads.box_predictor(pooled)
        class_boxes = heads.box_coder.decode(box_regression, proposals)  # (sum R, C + 1, 4)
        attribute_probs = F.softmax(heads.attribute_head(pooled, class_logits.argmax(dim=1)), dim=1)
        counts = [len(p) for p in proposals]
        out = []
        for props, feats, probs, cboxes, attrs, size, orig in zip(
            proposals,
            pooled.split(counts),
            F.softmax(class_logits, 1).split(counts),
            class_boxes.split(counts),
            attribute_probs.split(counts),
            sizes,
            original,
        ):
            cboxes = clip_boxes_to_image(cboxes, size)
            out.append(
                RegionOutputs(
                    boxes=resize_boxes(props, size, orig),
                    features=feats,
                    class_probs=probs,
                    class_boxes=resize_boxes(cboxes.reshape(-1, 4), size, orig).view_as(cboxes),
                    attribute_probs=attrs,
                )
            )
        return out

    def grid(self, images: list[torch.Tensor], n: int) -> list[GridOutputs]:
        """Grid features: res5 over each image's whole res4 map, averaged in n x n cells (the regions a grid model
        attends over instead of proposals). Boxes are the cells in input-image pixels."""
        image_list, features, original = self._trunk(images)
        c5 = self.roi_heads.box_head.layer4(features["0"])  # (B, D, h, w) of the padded batch
        stride = image_list.tensors.shape[-1] / c5.shape[-1]
        out = []
        for b, ((h, w), (oh, ow)) in enumerate(zip(image_list.image_sizes, original)):
            valid = c5[
                b, :, : max(1, round(h / stride)), : max(1, round(w / stride))
            ]  # this image, without padding
            cells = F.adaptive_avg_pool2d(valid, n).flatten(1).T  # (n * n, D)
            out.append(GridOutputs(grid_cell_boxes(oh, ow, n).to(cells), cells))
        return out


__all__ = [
    "AttributeHead",
    "AttributeRoIHeads",
    "BottomUpDetector",
    "DetectorOptions",
    "GridOutputs",
    "RegionOutputs",
    "attribute_loss",
    "attribute_targets",
]
