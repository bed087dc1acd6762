"""SSDlite-MobileNetV2 rebuilt in PyTorch from a TensorFlow Object Detection API frozen graph.

The graph is read with pipeline/models/tf_graph.py (no TensorFlow at run time); only its weights and a few
structural facts (strides, residual adds, which feature map feeds which predictor, the box coder's scale
factors) are taken from it. The network itself is written out here:

- **MobileNetV2 backbone** (Sandler et al. 2018): a 3x3/2 stem, 17 inverted-residual blocks (1x1 expand,
  3x3 depthwise, linear 1x1 project, residual add when shapes allow), a 1x1 conv to 1280 channels.
- **SSD feature maps** (Liu et al. 2016): the 19x19 expansion output of block 13 and the 10x10 last conv,
  then four extra stride-2 layers (1x1 reduce, 3x3 depthwise, 1x1 expand: the "lite" form) to 5, 3, 2, 1.
- **SSDlite box predictors**: per feature map, a 3x3 depthwise + 1x1 conv for 4 box offsets and one for the
  91 class logits (background first) of every anchor.
- **Anchors** (:func:`ssd_anchors`): SSD's default boxes, scales spaced linearly from 0.2 to 0.95 over the six
  maps, aspect ratios {1, 2, 1/2, 3, 1/3} plus one box of scale sqrt(s_k s_k+1); the lowest map has three.
- **Box coder**: the Faster R-CNN encoding (offsets of the centre in anchor units divided by 10, log sizes
  divided by 5) that SSD uses, decoded to x1 y1 x2 y2 in [0, 1] of the network input.

TensorFlow's "SAME" padding puts the odd pixel after, not before, so every conv pads explicitly. Batch norm is
folded into the convolutions. ``forward`` takes the preprocessed (N, 3, 300, 300) blob (RGB, scaled to
[-1, 1]) and returns ``boxes`` (N, A, 4) and ``scores`` (N, A, 90): sigmoid per class, background dropped,
column c = COCO category id c + 1. Per-class NMS is the detector's job (pipeline/detect/detectors/ssd.py).
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from pipeline.models.errors import ModelError
from pipeline.models.tf_graph import TfNode, load_graph

INPUT_SIZE = 300
_FE = "FeatureExtractor/MobilenetV2"


def _same_pad(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TensorFlow "SAME" padding of one axis: (before, after), the odd pixel after."""
    out = -(-size // stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


class TfConv(nn.Module):
    """A TF conv or depthwise conv with batch norm folded in (or its own bias), optional ReLU6."""

    def __init__(
        self, weight: torch.Tensor, bias: torch.Tensor, stride: int, groups: int, relu6: bool
    ) -> None:
        super().__init__()
        out_ch, _, k, _ = weight.shape
        self.conv = nn.Conv2d(weight.shape[1] * groups, out_ch, k, stride, 0, groups=groups, bias=True)
        conv_bias = self.conv.bias
        assert conv_bias is not None  # bias=True above
        with torch.no_grad():
            self.conv.weight.copy_(weight)
            conv_bias.copy_(bias)
        self.k = int(k)
        self.stride = stride
        self.relu6 = relu6

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.k > 1:
            top, bottom = _same_pad(int(x.shape[2]), self.k, self.stride)
            left, right = _same_pad(int(x.shape[3]), self.k, self.stride)
            x = F.pad(x, (left, right, top, bottom))
        x = self.conv(x)
        return F.relu6(x) if self.relu6 else x


class _Weights:
    """Looks up the graph's constants by layer scope and builds folded convs; errors name the file."""

    def __init__(self, graph: dict[str, TfNode], path: Path) -> None:
        self.g = graph
        self.path = path

    def has(self, name: str) -> bool:
        return name in self.g

    def const(self, name: str) -> np.ndarray:
        node = self.g.get(name)
        if node is None:
            raise ModelError(f"{self.path}: node {name!r} not found; not an SSDlite-MobileNetV2 graph?")
        return node.const().astype(np.float32)

    def stride(self, op_name: str) -> int:
        node = self.g.get(op_name)
        if node is None:
            raise ModelError(f"{self.path}: node {op_name!r} not found")
        return int(list(node.attrs["strides"].list.i)[1])

    def conv(self, scope: str, relu6: bool = True, depthwise: bool = False) -> TfConv:
        if depthwise:
            w = self.const(f"{scope}/depthwise_weights")  # (kh, kw, in, 1)
            weight = torch.from_numpy(w.transpose(2, 3, 0, 1).reshape(-1, 1, w.shape[0], w.shape[1]).copy())
            stride = self.stride(f"{scope}/depthwise")
            groups = int(w.shape[2])
        else:
            w = self.const(f"{scope}/weights")  # (kh, kw, in, out)
            weight = torch.from_numpy(w.transpose(3, 2, 0, 1).copy())
            stride = self.stride(f"{scope}/Conv2D")
            groups = 1
        if self.has(f"{scope}/BatchNorm/gamma"):
            bn = f"{scope}/BatchNorm"
            eps = float(self.g[f"{bn}/FusedBatchNorm"].attrs["epsilon"].f)
            gamma, beta = self.const(f"{bn}/gamma"), self.const(f"{bn}/beta")
            mean, var = self.const(f"{bn}/moving_mean"), self.const(f"{bn}/moving_variance")
            factor = gamma / np.sqrt(var + eps)
            weight = weight * torch.from_numpy(factor).view(-1, 1, 1, 1)
            bias = torch.from_numpy(beta - mean * factor)
        else:
            bias = torch.from_numpy(self.const(f"{scope}/biases"))
        return TfConv(weight, bias, stride, groups, relu6)


class InvertedResidual(nn.Module):
    def __init__(self, w: _Weights, scope: str) -> None:
        super().__init__()
        self.expand = w.conv(f"{scope}/expand") if w.has(f"{scope}/expand/weights") else None
        self.depthwise = w.conv(f"{scope}/depthwise", depthwise=True)
        self.project = w.conv(f"{scope}/project", relu6=False)
        self.residual = w.has(f"{scope}/add")

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(block output, expansion output); SSD taps the expansion output of one block."""
        e = self.expand(x) if self.expand is not None else x
        y = self.project(self.depthwise(e))
        return (x + y if self.residual else y), e


class BoxPredictor(nn.Module):
    def __init__(self, w: _Weights, scope: str) -> None:
        super().__init__()
        self.box = nn.Sequential(
            w.conv(f"{scope}/BoxEncodingPredictor_depthwise", depthwise=True),
            w.conv(f"{scope}/BoxEncodingPredictor", relu6=False),
        )
        self.cls = nn.Sequential(
            w.conv(f"{scope}/ClassPredictor_depthwise", depthwise=True),
            w.conv(f"{scope}/ClassPredictor", relu6=False),
        )
        self.num_classes = int(w.const(f"{scope}/ClassPredictor/biases").shape[0]) // (
            int(w.const(f"{scope}/BoxEncodingPredictor/biases").shape[0]) // 4
        )

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        n = x.shape[0]
        # NCHW -> NHWC before flattening, so rows run y, x, anchor as TensorFlow's reshape does.
        box = self.box(x).permute(0, 2, 3, 1).reshape(n, -1, 4)
        cls = self.cls(x).permute(0, 2, 3, 1).reshape(n, -1, self.num_classes)
        return box, cls


def ssd_anchors(
    feature_sizes: list[int],
    min_scale: float = 0.2,
    max_scale: float = 0.95,
    aspect_ratios: tuple[float, ...] = (1.0, 2.0, 0.5, 3.0, 1.0 / 3.0),
    lowest_layer: tuple[tuple[float, float], ...] = ((0.1, 1.0), (0.2, 2.0), (0.2, 0.5)),
) -> np.ndarray:
    """SSD default boxes, (A, 4) as (cy, cx, h, w) in [0, 1] units of a square input.

    Layer k of m has scale s_k = min + (max - min) k / (m - 1); each of its (scale, aspect ratio) pairs
    gives a box of height s / sqrt(ar) and width s * sqrt(ar) centred on every cell ((i + 0.5) / size),
    plus one square box of scale sqrt(s_k s_k+1) (s_m = 1). The lowest layer uses the three small boxes
    ``lowest_layer`` instead. Rows run layer, y, x, box - the order of the predictors' outputs.
    """
    m = len(feature_sizes)
    scales = [min_scale + (max_scale - min_scale) * k / (m - 1) for k in range(m)] + [1.0]
    out = []
    for k, size in enumerate(feature_sizes):
        if k == 0:
            specs = list(lowest_layer)
        else:
            specs = [(scales[k], ar) for ar in aspect_ratios]
            specs.append((math.sqrt(scales[k] * scales[k + 1]), 1.0))
        s = np.array([p[0] for p in specs], np.float32)
        ar = np.sqrt(np.array([p[1] for p in specs], np.float32))
        heights, widths = s / ar, s * ar
        centres = (np.arange(size, dtype=np.float32) + 0.5) / size
        cy, cx, a = np.meshgrid(centres, centres, np.arange(len(specs)), indexing="ij")
        out.append(np.stack([cy, cx, heights[a], widths[a]], -1).reshape(-1, 4))
    return np.concatenate(out).astype(np.float32)


class SSDLite(nn.Module):
    """The whole network plus anchors and box decoding; see the module docstring for inputs and outputs."""

    anchors: torch.Tensor  # (A, 4) cy, cx, h, w buffer
    num_classes: int  # object classes, background not counted

    def __init__(self, graph_path: str | Path) -> None:
        super().__init__()
        path = Path(graph_path)
        w = _Weights(load_graph(path), path)
        self.stem = w.conv(f"{_FE}/Conv")
        blocks = ["expanded_conv"] + [
            f"expanded_conv_{i}" for i in range(1, 100) if w.has(f"{_FE}/expanded_conv_{i}/project/weights")
        ]
        self.blocks = nn.ModuleList(InvertedResidual(w, f"{_FE}/{b}") for b in blocks)
        self.tap = self._tapped_block(w, blocks)
        self.last = w.conv(f"{_FE}/Conv_1")
        extra = sorted(
            {int(m.group(1)) for n in w.g if (m := re.match(rf"{_FE}/layer_19_1_Conv2d_(\d+)_", n))}
        )
        self.extras = nn.ModuleList()
        for i in extra:
            reduce = next(
                n for n in w.g if n.startswith(f"{_FE}/layer_19_1_Conv2d_{i}_") and n.endswith("/weights")
            )
            expand = next(
                n
                for n in w.g
                if n.startswith(f"{_FE}/layer_19_2_Conv2d_{i}_")
                and n.endswith("/weights")
                and "depthwise" not in n
            )
            dw = expand.rsplit("/", 1)[0] + "_depthwise"
            self.extras.append(
                nn.Sequential(
                    w.conv(reduce.rsplit("/", 1)[0]),
                    w.conv(dw, depthwise=True),
                    w.conv(expand.rsplit("/", 1)[0]),
                )
            )
        predictors = [BoxPredictor(w, f"BoxPredictor_{k}") for k in range(2 + len(self.extras))]
        self.predictors = nn.ModuleList(predictors)
        probe = torch.zeros(1, 3, INPUT_SIZE, INPUT_SIZE)
        with torch.no_grad():
            sizes = [int(f.shape[2]) for f in self._features(probe)]
        self.feature_sizes = sizes
        self.register_buffer("anchors", torch.from_numpy(ssd_anchors(sizes)))
        self.scale_factors = tuple(
            float(w.const(f"Postprocessor/Decode/truediv{s}/y")) for s in ("", "_1", "_2", "_3")
        )  # y, x, h, w
        self.num_classes = predictors[0].num_classes - 1
        nms = "Postprocessor/BatchMultiClassNonMaxSuppression/map/while/MultiClassNonMaxSuppression"
        #: the graph's own post-processing settings (per-class NMS IoU); the detector uses them by default
        self.nms_iou = (
            float(w.const(f"{nms}/non_max_suppression/iou_threshold"))
            if w.has(f"{nms}/non_max_suppression/iou_threshold")
            else 0.6
        )

    @staticmethod
    def _tapped_block(w: _Weights, blocks: list[str]) -> int:
        """Index of the block whose expansion output feeds BoxPredictor_0 (block 13 in MobileNetV2)."""
        src = w.g["BoxPredictor_0/BoxEncodingPredictor_depthwise/depthwise"].inputs[0]
        for i, b in enumerate(blocks):
            if src == f"{_FE}/{b}/expansion_output":
                return i
        raise ModelError(f"{w.path}: BoxPredictor_0 reads {src!r}, not a block's expansion output")

    def _features(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.stem(x)
        feats = []
        for i, block in enumerate(self.blocks):
            x, e = block(x)
            if i == self.tap:
                feats.append(e)
        x = self.last(x)
        feats.append(x)
        for layer in self.extras:
            x = layer(x)
            feats.append(x)
        return feats

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        boxes, logits = [], []
        for feat, pred in zip(self._features(x), self.predictors, strict=True):
            b, c = pred(feat)
            boxes.append(b)
            logits.append(c)
        codes = torch.cat(boxes, 1)
        scores = torch.sigmoid(torch.cat(logits, 1))[:, :, 1:]
        a = self.anchors
        sy, sx, sh, sw = self.scale_factors
        cy = codes[..., 0] / sy * a[:, 2] + a[:, 0]
        cx = codes[..., 1] / sx * a[:, 3] + a[:, 1]
        h = torch.exp(codes[..., 2] / sh) * a[:, 2]
        w = torch.exp(codes[..., 3] / sw) * a[:, 3]
        xyxy = torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], -1)
        return xyxy, scores
