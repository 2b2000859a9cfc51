"""The published bottom-up model as Caffe computes it: the test-time forward of bottom-up-attention's ResNet Faster
R-CNN (`models/vg/ResNet-101/faster_rcnn_end2end_final/test.prototxt` with `lib/fast_rcnn/test.py` and
`lib/rpn/proposal_layer.py`; Anderson et al. 2018, Sec. 3.1), so that the released weights give the released features.

The trainable detector of `models/detector.py` follows torchvision's conventions (RGB in [0, 1], the stride of a
downsampling bottleneck on its 3x3 convolution, RoIAlign, sigmoid objectness); this one follows Caffe's, step by step:

1. Input blob: BGR pixels minus PIXEL_MEANS, scaled by s = 600 / short side (s = 1000 / long side when the long side
   would pass 1000) with OpenCV's INTER_LINEAR resize (`caffe_blob`).
2. Trunk: conv1 -> BatchNorm + Scale -> ReLU -> max pool 3x3/2 in ceil mode -> res2 .. res4 bottlenecks, whose stride
   sits on the first 1x1 convolution (branch2a) and on the projection (branch1). BatchNorm with its stored statistics
   (mean and variance divided by the stored scale factor) and the Scale layer are one frozen affine per channel.
3. RPN: 3x3 conv + ReLU, 2A objectness scores (a 2-way softmax per anchor: background channels 0..A-1, foreground
   A..2A-1) and 4A box deltas for A anchors (`proposals`).
4. ROIPooling: max over 14 x 14 quantised bins at 1/16 (torchvision's `roi_pool` rounds and bins as Caffe does).
5. res5 (stride 1, dilation 2) on the pooled RoIs, mean pooling: pool5, the region feature (D = 2048 for ResNet-101).
6. cls_score -> softmax over C + 1 classes; bbox_pred; the attribute head: embedding of the argmax class (ties to the
   highest index, as Caffe's ArgMax) concatenated with pool5 -> fc_attr -> ReLU -> attr_score -> softmax over A + 1.

Dims: R RoIs (300 at test), D pool5 channels, C classes, A anchors (forward) or attributes (outputs).
The weights come from `vqacap.published` (a .caffemodel or a converted PyTorch file); see docs/published-detector.md.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import FrozenBatchNorm2d

from vqacap.models.boxes import nms_plus_one
from vqacap.models.detector import GridOutputs, RegionOutputs, grid_cell_boxes, max_roi_pool

PIXEL_MEANS_BGR = (102.9801, 115.9465, 122.7717)  # cfg.PIXEL_MEANS


@dataclass(frozen=True)
class BlockSpec:
    """One Caffe bottleneck `res<name>`: 1x1 (stride) -> 3x3 (dilation) -> 1x1, plus a 1x1 projection when present."""

    name: str  # "2a", "4b22", "5c"
    in_channels: int
    mid_channels: int
    out_channels: int
    stride: int = 1  # of branch2a and branch1
    dilation: int = 1  # of branch2b
    projection: bool = False  # has branch1
    eps: float = 1e-5  # BatchNormParameter.eps


@dataclass
class CaffeDetectorSpec:
    """What a test.prototxt fixes, plus the test-time constants of faster_rcnn_end2end_resnet.yml (cfg.TEST)."""

    conv1_channels: int
    trunk: tuple[BlockSpec, ...]  # res2a .. res4 (the map the RPN and ROIPooling read)
    head: tuple[BlockSpec, ...]  # res5 on the pooled RoIs
    rpn_channels: int
    num_classes: int  # C + 1, background included
    num_attributes: int | None = None  # A + 1, "no attribute" included; None: no attribute head
    class_embedding_dim: int = 256
    attribute_hidden_dim: int = 512
    conv1_eps: float = 1e-5
    feat_stride: int = 16
    anchor_scales: tuple[float, ...] = (4.0, 8.0, 16.0, 32.0)
    anchor_ratios: tuple[float, ...] = (0.5, 1.0, 2.0)
    pooled_size: int = 14
    spatial_scale: float = 0.0625
    # cfg.TEST
    scale: int = 600
    max_size: int = 1000
    pre_nms_top_n: int = 6000
    post_nms_top_n: int = 300
    nms_thresh: float = 0.7
    min_size: int = 16
    pixel_means: tuple[float, float, float] = field(default=PIXEL_MEANS_BGR)

    @property
    def num_anchors(self) -> int:
        return len(self.anchor_scales) * len(self.anchor_ratios)


# -- 1. The input blob ---------------------------------------------------------------------------------------------
def blob_scale(height: int, width: int, scale: int = 600, max_size: int = 1000) -> float:
    """s of `_get_image_blob`: the short side to `scale`, unless the long side would then round above `max_size`."""
    s = float(scale) / float(min(height, width))
    if np.round(s * max(height, width)) > max_size:
        s = float(max_size) / float(max(height, width))
    return s


def _linear_taps(n_in: int, n_out: int, s: float, device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """OpenCV's INTER_LINEAR source pixels and weights along one axis for a resize by factor s (fx or fy given):
    x_src = (x + 0.5) / s - 0.5 and its fraction in double, the weight in float (OpenCV 4.11 as the reference ran it;
    a fraction taken in float moves weights by up to 1e-5 at 600 px); out-of-range taps clamp to the border with
    weight 0."""
    x = (torch.arange(n_out, dtype=torch.float64) + 0.5) * (1.0 / s) - 0.5
    first = torch.floor(x)
    frac = (x - first).float()
    first = first.long()
    low = first < 0
    frac[low], first[low] = 0.0, 0
    high = first >= n_in - 1
    frac[high], first[high] = 0.0, n_in - 1
    second = (first + 1).clamp(max=n_in - 1)
    return first.to(device), second.to(device), frac.to(device)


def caffe_blob(image_bgr: torch.Tensor, spec: CaffeDetectorSpec) -> tuple[torch.Tensor, float]:
    """An image (H, W, 3) of BGR values 0..255 (uint8 or float) -> the `data` blob (1, 3, h, w) float32 and s.

    As `_get_image_blob`: float32 pixels minus the means (subtracted in double, as numpy does), then
    `cv2.resize(fx=s, fy=s, INTER_LINEAR)`: output size round(s * size), rows interpolated then columns."""
    height, width = image_bgr.shape[:2]
    s = blob_scale(height, width, spec.scale, spec.max_size)
    means = torch.tensor(spec.pixel_means, dtype=torch.float64, device=image_bgr.device)
    im = (image_bgr.to(torch.float32).double() - means).float().permute(2, 0, 1)  # (3, H, W)
    out_h, out_w = int(round(height * s)), int(round(width * s))  # saturate_cast<int>: round half to even
    x0, x1, fx = _linear_taps(width, out_w, s, im.device)
    y0, y1, fy = _linear_taps(height, out_h, s, im.device)
    rows = im[:, :, x0] * (1.0 - fx) + im[:, :, x1] * fx  # (3, H, w): horizontal pass
    out = rows[:, y0, :] * (1.0 - fy)[:, None] + rows[:, y1, :] * fy[:, None]  # (3, h, w)
    return out.unsqueeze(0).contiguous(), s


# -- 2. Trunk ------------------------------------------------------------------------------------------------------
class CaffeBottleneck(nn.Module):
    """res<name>: relu(branch1(x) + branch2c(relu(branch2b(relu(branch2a(x)))))), each convolution followed by its
    frozen BatchNorm + Scale; the stride on the 1x1 convolutions, as in the prototxt (not on the 3x3, as torchvision)."""

    def __init__(self, spec: BlockSpec) -> None:
        super().__init__()
        s = spec
        self.branch2a = nn.Conv2d(s.in_channels, s.mid_channels, 1, stride=s.stride, bias=False)
        self.bn2a = FrozenBatchNorm2d(s.mid_channels, eps=s.eps)
        self.branch2b = nn.Conv2d(
            s.mid_channels, s.mid_channels, 3, padding=s.dilation, dilation=s.dilation, bias=False
        )
        self.bn2b = FrozenBatchNorm2d(s.mid_channels, eps=s.eps)
        self.branch2c = nn.Conv2d(s.mid_channels, s.out_channels, 1, bias=False)
        self.bn2c = FrozenBatchNorm2d(s.out_channels, eps=s.eps)
        if s.projection:
            self.branch1 = nn.Conv2d(s.in_channels, s.out_channels, 1, stride=s.stride, bias=False)
            self.bn1 = FrozenBatchNorm2d(s.out_channels, eps=s.eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = self.bn1(self.branch1(x)) if hasattr(self, "branch1") else x
        y = F.relu(self.bn2a(self.branch2a(x)))
        y = F.relu(self.bn2b(self.branch2b(y)))
        return F.relu(shortcut + self.bn2c(self.branch2c(y)))


class CaffeTrunk(nn.Module):
    """data (1, 3, h, w) -> the res4 map (1, C4, ~h/16, ~w/16)."""

    def __init__(self, spec: CaffeDetectorSpec) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, spec.conv1_channels, 7, stride=2, padding=3, bias=False)
        self.bn_conv1 = FrozenBatchNorm2d(spec.conv1_channels, eps=spec.conv1_eps)
        self.blocks = nn.ModuleDict({f"res{b.name}": CaffeBottleneck(b) for b in spec.trunk})

    def forward(self, data: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn_conv1(self.conv1(data)))
        x = F.max_pool2d(x, kernel_size=3, stride=2, ceil_mode=True)  # pool1: Caffe rounds the output size up
        for block in self.blocks.values():
            x = block(x)
        return x


# -- 3. RPN and the proposal layer ---------------------------------------------------------------------------------
def generate_anchors(
    base_size: int = 16, ratios: tuple[float, ...] = (0.5, 1.0, 2.0), scales: tuple[float, ...] = (8, 16, 32)
) -> np.ndarray:
    """The A reference anchors (A, 4) of lib/rpn/generate_anchors.py: ratio-major, +1 widths, numpy's rounding."""

    def whctrs(a):
        w, h = a[2] - a[0] + 1, a[3] - a[1] + 1
        return w, h, a[0] + 0.5 * (w - 1), a[1] + 0.5 * (h - 1)

    def make(ws, hs, x, y):
        return np.stack(
            [x - 0.5 * (ws - 1), y - 0.5 * (hs - 1), x + 0.5 * (ws - 1), y + 0.5 * (hs - 1)], axis=1
        )

    w, h, x, y = whctrs(np.array([0, 0, base_size - 1, base_size - 1], dtype=np.float64))
    ws = np.round(np.sqrt(w * h / np.asarray(ratios, dtype=np.float64)))
    hs = np.round(ws * np.asarray(ratios, dtype=np.float64))
    out = []
    for anchor in make(ws, hs, x, y):
        w, h, x, y = whctrs(anchor)
        out.append(
            make(w * np.asarray(scales, dtype=np.float64), h * np.asarray(scales, dtype=np.float64), x, y)
        )
    return np.concatenate(out)


def bbox_transform_inv(boxes: torch.Tensor, deltas: torch.Tensor) -> torch.Tensor:
    """Boxes (N, 4) and deltas (N, 4k) -> boxes (N, 4k), as lib/fast_rcnn/bbox_transform.py in float32: widths with
    +1, x2 = ctr + 0.5 w (no -1), no clamp before exp."""
    boxes = boxes.to(deltas.dtype)
    widths = boxes[:, 2] - boxes[:, 0] + 1.0
    heights = boxes[:, 3] - boxes[:, 1] + 1.0
    ctr_x = boxes[:, 0] + 0.5 * widths
    ctr_y = boxes[:, 1] + 0.5 * heights
    dx, dy, dw, dh = deltas[:, 0::4], deltas[:, 1::4], deltas[:, 2::4], deltas[:, 3::4]
    pred_ctr_x = dx * widths[:, None] + ctr_x[:, None]
    pred_ctr_y = dy * heights[:, None] + ctr_y[:, None]
    pred_w = torch.exp(dw) * widths[:, None]
    pred_h = torch.exp(dh) * heights[:, None]
    x1, y1 = pred_ctr_x - 0.5 * pred_w, pred_ctr_y - 0.5 * pred_h
    x2, y2 = pred_ctr_x + 0.5 * pred_w, pred_ctr_y + 0.5 * pred_h
    return torch.stack([x1, y1, x2, y2], dim=2).reshape(deltas.shape)


def clip_boxes(boxes: torch.Tensor, height: float, width: float) -> torch.Tensor:
    """Boxes (N, 4k) clipped to [0, width - 1] x [0, height - 1] (lib/fast_rcnn/bbox_transform.py)."""
    limits = boxes.new_tensor([width - 1, height - 1]).repeat(boxes.shape[1] // 2)
    return torch.minimum(boxes, limits).clamp(min=0)


def descending(scores: torch.Tensor) -> torch.Tensor:
    """numpy's `scores.argsort()[::-1]`: descending, equal scores in reverse index order."""
    return torch.sort(scores, stable=True).indices.flip(0)


def proposals(
    rpn_prob: torch.Tensor,
    rpn_deltas: torch.Tensor,
    im_info: tuple[float, float, float],
    spec: CaffeDetectorSpec,
) -> torch.Tensor:
    """lib/rpn/proposal_layer.py at test time for one image: rpn_prob (2A, H, W) (the reshaped softmax), rpn_deltas
    (4A, H, W), im_info (blob height, blob width, s) -> rois (R, 4) in blob pixels, R <= post_nms_top_n."""
    num_anchors = spec.num_anchors
    scores = rpn_prob[num_anchors:]  # (A, H, W) foreground: the second half of the channels
    height, width = scores.shape[-2:]
    anchors = torch.from_numpy(generate_anchors(spec.feat_stride, spec.anchor_ratios, spec.anchor_scales))
    shift_y, shift_x = torch.meshgrid(
        torch.arange(height, dtype=torch.float64) * spec.feat_stride,
        torch.arange(width, dtype=torch.float64) * spec.feat_stride,
        indexing="ij",
    )
    shifts = torch.stack([shift_x, shift_y, shift_x, shift_y], dim=-1).reshape(-1, 1, 4)  # (H W, 1, 4)
    anchors = (anchors[None] + shifts).reshape(-1, 4).to(rpn_prob.device)  # (H W A, 4), positions row-major
    deltas = rpn_deltas.permute(1, 2, 0).reshape(-1, 4)  # (H W A, 4)
    scores = scores.permute(1, 2, 0).reshape(-1)  # (H W A,)
    boxes = clip_boxes(bbox_transform_inv(anchors, deltas), im_info[0], im_info[1])
    min_size = np.float32(spec.min_size) * np.float32(im_info[2])  # RPN_MIN_SIZE in the scaled image
    ws, hs = boxes[:, 2] - boxes[:, 0] + 1, boxes[:, 3] - boxes[:, 1] + 1
    keep = torch.nonzero((ws >= float(min_size)) & (hs >= float(min_size))).squeeze(1)
    boxes, scores = boxes[keep], scores[keep]
    order = descending(scores)[: spec.pre_nms_top_n]
    boxes, scores = boxes[order], scores[order]
    # py_cpu_nms sorts again, the same way; its visiting order is then given to torchvision's kernel as ranks.
    order = descending(scores)
    rank = torch.arange(len(order), 0, -1, dtype=torch.float32, device=boxes.device)
    keep = order[nms_plus_one(boxes[order], rank, spec.nms_thresh)][: spec.post_nms_top_n]
    return boxes[keep]


# -- 6. The attribute head -----------------------------------------------------------------------------------------
class CaffeAttributeHead(nn.Module):
    """attr_prob = softmax(attr_score(relu(fc_attr([pool5 ; cls_embedding[argmax cls_score]]))))."""

    def __init__(self, feature_dim: int, num_classes: int, num_attributes: int, embed_dim: int, hidden: int):
        super().__init__()
        self.cls_embedding = nn.Embedding(num_classes, embed_dim)
        self.fc_attr = nn.Linear(feature_dim + embed_dim, hidden)
        self.attr_score = nn.Linear(hidden, num_attributes)

    def forward(self, pool5: torch.Tensor, cls_score: torch.Tensor) -> torch.Tensor:
        last = cls_score.size(1) - 1
        predicted = last - cls_score.flip(1).argmax(dim=1)  # Caffe's ArgMax: ties to the highest index
        x = torch.cat([pool5, self.cls_embedding(predicted)], dim=1)  # (R, D + E)
        return F.softmax(self.attr_score(F.relu(self.fc_attr(x))), dim=1)  # (R, A + 1)


# -- The whole model -----------------------------------------------------------------------------------------------
@dataclass
class CaffeOutputs:
    """The blobs of one forward pass that feature extraction reads (names as in test.prototxt)."""

    rois: torch.Tensor  # (R, 4) x1, y1, x2, y2 in blob pixels
    pool5: torch.Tensor  # (R, D)
    cls_score: torch.Tensor  # (R, C + 1)
    cls_prob: torch.Tensor  # (R, C + 1)
    bbox_pred: torch.Tensor  # (R, 4 (C + 1))
    attr_prob: torch.Tensor | None  # (R, A + 1)


class CaffeBottomUpDetector(nn.Module):
    """bottom-up-attention's test.prototxt as a module; `regions` and `grid` are those of `BottomUpDetector`, so
    extraction, captioning and answering use either. `classes` / `attributes`: names, index 0 included."""

    def __init__(
        self, spec: CaffeDetectorSpec, classes: list[str], attributes: list[str] | None = None
    ) -> None:
        super().__init__()
        if len(classes) != spec.num_classes:
            raise ValueError(f"{len(classes)} class names for {spec.num_classes} classes")
        if spec.num_attributes is not None and (attributes is None or len(attributes) != spec.num_attributes):
            raise ValueError(f"{len(attributes or [])} attribute names for {spec.num_attributes} attributes")
        self.spec = spec
        self.classes, self.attributes = list(classes), list(attributes or [])
        self.trunk = CaffeTrunk(spec)
        c4 = spec.trunk[-1].out_channels
        self.rpn_conv = nn.Conv2d(c4, spec.rpn_channels, 3, padding=1)  # rpn_conv/3x3
        self.rpn_cls_score = nn.Conv2d(spec.rpn_channels, 2 * spec.num_anchors, 1)
        self.rpn_bbox_pred = nn.Conv2d(spec.rpn_channels, 4 * spec.num_anchors, 1)
        self.head = nn.ModuleDict({f"res{b.name}": CaffeBottleneck(b) for b in spec.head})
        self.feature_dim = spec.head[-1].out_channels
        self.cls_score = nn.Linear(self.feature_dim, spec.num_classes)
        self.bbox_pred = nn.Linear(self.feature_dim, 4 * spec.num_classes)
        self.attribute_head = None
        if spec.num_attributes is not None:
            self.attribute_head = CaffeAttributeHead(
                self.feature_dim,
                spec.num_classes,
                spec.num_attributes,
                spec.class_embedding_dim,
                spec.attribute_hidden_dim,
            )
        self.eval()

    def rpn(self, res4: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """res4 (1, C4, H, W) -> rpn_cls_prob_reshape (1, 2A, H, W), rpn_bbox_pred (1, 4A, H, W)."""
        x = F.relu(self.rpn_conv(res4))
        score = self.rpn_cls_score(x)  # (1, 2A, H, W)
        n, two_a, h, w = score.shape
        prob = F.softmax(score.view(n, 2, -1, w), dim=1).view(
            n, two_a, h, w
        )  # softmax over {bg, fg} per anchor
        return prob, self.rpn_bbox_pred(x)

    def box_head(self, res4: torch.Tensor, rois: torch.Tensor) -> torch.Tensor:
        """res4 (1, C4, H, W), rois (R, 4) in blob pixels -> pool5 (R, D)."""
        batch = rois.new_zeros(len(rois), 1)
        x = max_roi_pool(
            res4, torch.cat([batch, rois], 1), self.spec.pooled_size, self.spec.spatial_scale
        )  # (R, C4, 14, 14)
        for block in self.head.values():
            x = block(x)
        return x.mean(dim=(2, 3))  # pool5: global mean pooling

    @torch.no_grad()
    def forward(self, data: torch.Tensor, im_info: tuple[float, float, float]) -> CaffeOutputs:
        """One image: data (1, 3, h, w) from `caffe_blob`, im_info (h, w, s) -> the blobs of test.prototxt."""
        res4 = self.trunk(data)
        rpn_prob, rpn_deltas = self.rpn(res4)
        return self.heads(res4, proposals(rpn_prob[0], rpn_deltas[0], im_info, self.spec))

    def heads(self, res4: torch.Tensor, rois: torch.Tensor) -> CaffeOutputs:
        """The blobs of test.prototxt from ROIPooling on, for rois (R, 4) in blob pixels of the res4 map."""
        pool5 = self.box_head(res4, rois)
        cls_score = self.cls_score(pool5)
        attr_prob = self.attribute_head(pool5, cls_score) if self.attribute_head is not None else None
        return CaffeOutputs(
            rois, pool5, cls_score, F.softmax(cls_score, dim=1), self.bbox_pred(pool5), attr_prob
        )

    # -- the views extraction uses, as BottomUpDetector's -----------------------------------------------------------
    @property
    def min_side(self) -> int:
        """The shorter side of the blob (cfg.TEST.SCALES), unless the longer side would pass max_size."""
        return self.spec.scale

    def input_size(self, height: int, width: int) -> tuple[int, int]:
        """(height, width) of the blob of an image of this size."""
        s = blob_scale(height, width, self.spec.scale, self.spec.max_size)
        return int(round(height * s)), int(round(width * s))

    def grid_cells(self, height: int, width: int) -> tuple[int, int]:
        """(rows, columns) of the res4 map (and of res5 over it, at stride 1) for an image of this size."""

        def side(n: int) -> int:
            n = (n + 2 * 3 - 7) // 2 + 1  # conv1: 7 x 7, stride 2, pad 3
            n = -(-(n - 3) // 2) + 1  # pool1: 3 x 3, stride 2, ceil mode
            for block in self.spec.trunk:
                n = (n - 1) // block.stride + 1  # the strided 1x1 convolutions
            return max(n, 1)

        return tuple(side(n) for n in self.input_size(height, width))

    def size_problem(self, height: int, width: int, grid: int | None = None) -> str | None:
        """Why an image of this size cannot go through the detector (or give an n x n `grid`), or None."""
        blob = self.input_size(height, width)
        if min(blob) < self.spec.feat_stride:
            return (
                f"{width}x{height} pixels is {blob[1]}x{blob[0]} at the detector's input size (longer side at most "
                f"{self.spec.max_size}), less than one {self.spec.feat_stride}-pixel cell of its feature map"
            )
        if grid is not None and grid > min(cells := self.grid_cells(height, width)):
            return f"{width}x{height} pixels gives a {cells[1]}x{cells[0]} feature map, fewer cells than --grid {grid}"
        return None

    def max_grid(self) -> int:
        """The largest n of an n x n grid any image allows: the cells of a shorter side at the blob's scale."""
        return min(self.grid_cells(self.spec.scale, self.spec.scale))

    def _blob(self, image: torch.Tensor) -> tuple[torch.Tensor, float]:
        """An RGB image (3, H, W) in [0, 1] (as vqacap reads image files) -> the blob of its BGR 0..255 pixels."""
        bgr = (image.flip(0) * 255.0).round().permute(1, 2, 0)
        return caffe_blob(bgr.to(self.cls_score.weight.device), self.spec)

    @torch.no_grad()
    def regions(
        self, images: list[torch.Tensor], boxes: list[torch.Tensor] | None = None
    ) -> list[RegionOutputs]:
        """Each image's RoIs (the proposals, or `boxes` in image pixels) with pool5 and the class, box and attribute
        predictions, all in image pixels as generate_tsv.py gives them (rois / s). Images: RGB (3, H, W) in [0, 1]."""
        out = []
        for i, image in enumerate(images):
            data, s = self._blob(image)
            im_info = (
                float(np.float32(data.shape[2])),
                float(np.float32(data.shape[3])),
                float(np.float32(s)),
            )
            if boxes is None:
                blobs = self(data, im_info)
            else:
                blobs = self._given(data, boxes[i].to(data) * np.float32(s))
            rois = blobs.rois / np.float32(s)
            height, width = image.shape[-2:]
            class_boxes = bbox_transform_inv(rois, blobs.bbox_pred)  # test.py: clip to the image
            class_boxes = clip_boxes(class_boxes, float(height), float(width)).view(len(rois), -1, 4)
            attributes = blobs.attr_prob if blobs.attr_prob is not None else rois.new_zeros(len(rois), 1)
            out.append(RegionOutputs(rois, blobs.pool5, blobs.cls_prob, class_boxes, attributes))
        return out

    def _given(self, data: torch.Tensor, rois: torch.Tensor) -> CaffeOutputs:
        return self.heads(self.trunk(data), rois)

    @torch.no_grad()
    def grid(self, images: list[torch.Tensor], n: int) -> list[GridOutputs]:
        """res5 over each image's whole res4 map, averaged in n x n cells (grid features); boxes in image pixels."""
        out = []
        for image in images:
            data, _ = self._blob(image)
            x = self.trunk(data)
            for block in self.head.values():
                x = block(x)
            cells = F.adaptive_avg_pool2d(x[0], n).flatten(1).T  # (n * n, D)
            out.append(GridOutputs(grid_cell_boxes(*image.shape[-2:], n).to(cells), cells))
        return out


__all__ = [
    "BlockSpec",
    "CaffeBottomUpDetector",
    "CaffeDetectorSpec",
    "CaffeOutputs",
    "blob_scale",
    "caffe_blob",
    "generate_anchors",
    "proposals",
]
