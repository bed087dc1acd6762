"""Darknet ``.cfg`` + ``.weights`` importer into PyTorch.

Covers the layer types of yolov3-tiny, yolov3, yolov4-tiny and yolov4: ``[convolutional]`` (with or
without ``batch_normalize``; BN is folded into the conv at import, so the module is inference-only),
``[maxpool]`` (including size=2 stride=1 with darknet's asymmetric padding), ``[route]`` (negative and
absolute indices, ``groups``/``group_id``), ``[shortcut]``, ``[upsample]`` and ``[yolo]`` (with
``scale_x_y``); activations leaky, mish, linear, logistic, relu, swish.

The module's forward returns one tensor ``(N, R, 5 + C)``: for every anchor of every grid cell of every
``[yolo]`` head (heads in cfg order, rows ordered y, x, anchor - the order OpenCV's Darknet reader uses)
``cx, cy, w, h`` in network-input pixels, objectness and per-class probabilities (both sigmoid). That is
the "v5" layout, so one decoder serves darknet models, their ONNX exports and Ultralytics v5 exports.

Anything not understood is a :class:`ModelError` naming the cfg file, the section's line and the layer
type; a weights file whose size does not match the cfg names the file and the expected/actual counts.
"""

from __future__ import annotations

import builtins
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from pipeline.models.darknet_cfg import Section, parse_cfg
from pipeline.models.errors import ModelError  # its home; imported from here by older code

__all__ = ["DarknetModel", "ModelError", "Section", "load_darknet", "parse_cfg"]


# Options that only matter for training (or are documentation); accepted and ignored.
_TRAINING_ONLY = {
    "convolutional": {"flipped", "dot", "stopbackward", "burnin_update", "train_only_bn", "angle"},
    "maxpool": {"maxpool_depth", "out_channels"},
    "route": {"stopbackward"},
    "shortcut": {"stopbackward"},
    "upsample": set(),
    "yolo": {
        "jitter",
        "ignore_thresh",
        "truth_thresh",
        "random",
        "iou_thresh",
        "cls_normalizer",
        "iou_normalizer",
        "obj_normalizer",
        "iou_loss",
        "nms_kind",
        "beta_nms",
        "max_delta",
        "resize",
        "counters_per_class",
        "label_smooth_eps",
        "focal_loss",
        "objectness_smooth",
        "iou_thresh_kind",
        "track_history_size",
        "embedding_layer",
        "max",
        "rescore",
    },
}
_SUPPORTED = {
    "convolutional": {
        "batch_normalize",
        "filters",
        "size",
        "stride",
        "pad",
        "padding",
        "activation",
        "groups",
        "dilation",
    },
    "maxpool": {"size", "stride", "padding"},
    "route": {"layers", "groups", "group_id"},
    "shortcut": {"from", "activation"},
    "upsample": {"stride"},
    "yolo": {"mask", "anchors", "classes", "num", "scale_x_y", "new_coords"},
}
_ACTIVATIONS = {"leaky", "mish", "linear", "logistic", "relu", "swish"}
BN_EPS = 1e-5  # darknet normalises with sqrt(variance + .00001)


class _Ctx:
    """Error helper bound to one section."""

    def __init__(self, path: Path, sec: Section) -> None:
        self.path, self.sec = path, sec

    def error(self, msg: str) -> ModelError:
        return ModelError(f"{self.path}:{self.sec.line}: [{self.sec.type}] {msg}")

    def int(self, key: str, default: int | None = None) -> int:
        v = self.sec.options.get(key)
        if v is None:
            if default is None:
                raise self.error(f"missing required option {key!r}")
            return default
        try:
            return int(v)
        except ValueError:
            raise self.error(f"option {key}={v!r} is not an integer") from None

    def float(self, key: str, default: float) -> float:
        v = self.sec.options.get(key)
        if v is None:
            return default
        try:
            return float(v)
        except ValueError:
            raise self.error(f"option {key}={v!r} is not a number") from None

    def ints(self, key: str) -> list[builtins.int]:
        v = self.sec.options.get(key)
        if v is None:
            raise self.error(f"missing required option {key!r}")
        try:
            return [int(x) for x in v.replace(" ", "").split(",") if x]
        except ValueError:
            raise self.error(f"option {key}={v!r} is not a list of integers") from None

    def check_options(self) -> None:
        allowed = _SUPPORTED[self.sec.type] | _TRAINING_ONLY[self.sec.type]
        for key in self.sec.options:
            if key not in allowed:
                raise self.error(f"unsupported option {key!r}")


def _activation(ctx: _Ctx, name: str) -> nn.Module:
    if name not in _ACTIVATIONS:
        raise ctx.error(f"unsupported activation {name!r} (supported: {', '.join(sorted(_ACTIVATIONS))})")
    return {
        "leaky": lambda: nn.LeakyReLU(0.1),
        "mish": nn.Mish,
        "linear": nn.Identity,
        "logistic": nn.Sigmoid,
        "relu": nn.ReLU,
        "swish": nn.SiLU,
    }[name]()


class ConvBlock(nn.Module):
    """Conv (+ folded batch norm) + activation. ``batch_normalize`` only changes how weights are read."""

    def __init__(
        self,
        in_ch: int,
        out_ch: int,
        size: int,
        stride: int,
        pad: int,
        groups: int,
        dilation: int,
        bn: bool,
        act: nn.Module,
    ) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_ch, out_ch, size, stride, pad, dilation=dilation, groups=groups, bias=True)
        self.act = act
        self.batch_normalize = bn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.conv(x))


class MaxPoolDarknet(nn.Module):
    """Darknet max-pool: total padding ``padding`` (default size-1), ``padding//2`` on the top/left.

    Out-of-image cells never win (padded with -inf), which for size=2 stride=1 keeps the spatial size.
    """

    def __init__(self, size: int, stride: int, padding: int) -> None:
        super().__init__()
        self.size, self.stride, self.padding = size, stride, padding

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        left = self.padding // 2
        out_h = (h + self.padding - self.size) // self.stride + 1
        out_w = (w + self.padding - self.size) // self.stride + 1
        right = (out_w - 1) * self.stride + self.size - w - left
        bottom = (out_h - 1) * self.stride + self.size - h - left
        if left or right or bottom:
            x = F.pad(x, (left, max(right, 0), left, max(bottom, 0)), value=float("-inf"))
        return F.max_pool2d(x, self.size, self.stride)


class Upsample(nn.Module):
    def __init__(self, stride: int) -> None:
        super().__init__()
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.interpolate(x, scale_factor=float(self.stride), mode="nearest")


class YoloHead(nn.Module):
    """Turns a head's raw map (N, A*(5+C), H, W) into rows (N, H*W*A, 5+C) in input pixels."""

    def __init__(self, anchors: list[tuple[float, float]], num_classes: int, scale_x_y: float) -> None:
        super().__init__()
        self.num_anchors = len(anchors)
        self.num_classes = num_classes
        self.scale_x_y = scale_x_y
        self.register_buffer("anchors", torch.tensor(anchors, dtype=torch.float32).view(1, 1, 1, -1, 2))

    def forward(self, x: torch.Tensor, input_hw: tuple[int, int]) -> torch.Tensor:
        n, _, h, w = x.shape
        a, c = self.num_anchors, self.num_classes
        # (N, A, 5+C, H, W) -> (N, H, W, A, 5+C): rows ordered y, x, anchor like OpenCV's region layer
        p = x.view(n, a, 5 + c, h, w).permute(0, 3, 4, 1, 2)
        gy = torch.arange(h, dtype=x.dtype, device=x.device).view(1, h, 1, 1)
        gx = torch.arange(w, dtype=x.dtype, device=x.device).view(1, 1, w, 1)
        s = self.scale_x_y
        xy = torch.sigmoid(p[..., 0:2])
        if s != 1.0:
            xy = xy * s - (s - 1.0) / 2.0
        stride_x = input_hw[1] / w
        stride_y = input_hw[0] / h
        cx = (xy[..., 0] + gx) * stride_x
        cy = (xy[..., 1] + gy) * stride_y
        wh = torch.exp(p[..., 2:4]) * self.anchors.to(x.dtype)
        rest = torch.sigmoid(p[..., 4:])
        out = torch.cat([cx.unsqueeze(-1), cy.unsqueeze(-1), wh, rest], dim=-1)
        return out.reshape(n, h * w * a, 5 + c)


class DarknetModel(nn.Module):
    """A darknet network as an inference-only nn.Module (see the module docstring for the output)."""

    def __init__(self, cfg_path: str | Path) -> None:
        super().__init__()
        self.cfg_path = Path(cfg_path)
        sections = parse_cfg(self.cfg_path)
        net = _Ctx(self.cfg_path, sections[0])
        self.in_channels = net.int("channels", 3)
        self.width = net.int("width", 416)
        self.height = net.int("height", 416)
        self.layers = nn.ModuleList()
        self.kinds: list[str] = []
        self.params: list[dict] = []  # per layer: route sources/groups, shortcut source ...
        self.num_classes: int | None = None
        out_ch: list[int] = []
        strides: list[int] = []  # cumulative down-sampling factor per layer output
        in_ch, stride = self.in_channels, 1
        for sec in sections[1:]:
            ctx = _Ctx(self.cfg_path, sec)
            i = len(self.layers)
            kind = sec.type
            if kind not in _SUPPORTED:
                raise ctx.error(
                    f"unsupported layer type {kind!r} (supported: {', '.join(sorted(_SUPPORTED))})"
                )
            ctx.check_options()
            param: dict = {}
            if kind == "convolutional":
                filters, size = ctx.int("filters"), ctx.int("size", 1)
                s = ctx.int("stride", 1)
                pad = size // 2 if ctx.int("pad", 0) else ctx.int("padding", 0)
                groups = ctx.int("groups", 1)
                if in_ch % groups or filters % groups:
                    raise ctx.error(f"groups={groups} does not divide {in_ch} inputs / {filters} filters")
                act = _activation(ctx, sec.options.get("activation", "logistic"))
                module: nn.Module = ConvBlock(
                    in_ch,
                    filters,
                    size,
                    s,
                    pad,
                    groups,
                    ctx.int("dilation", 1),
                    bool(ctx.int("batch_normalize", 0)),
                    act,
                )
                in_ch, stride = filters, stride * s
            elif kind == "maxpool":
                size = ctx.int("size", 2)
                s = ctx.int("stride", size)
                module = MaxPoolDarknet(size, s, ctx.int("padding", size - 1))
                stride *= s
            elif kind == "upsample":
                s = ctx.int("stride", 2)
                if s < 1:
                    raise ctx.error(f"only positive upsample strides are supported, got {s}")
                module = Upsample(s)
                stride = max(1, stride // s)
            elif kind == "route":
                src = [j if j >= 0 else i + j for j in ctx.ints("layers")]
                for j in src:
                    if not 0 <= j < i:
                        raise ctx.error(f"layers={sec.options['layers']} refers to layer {j}, not before {i}")
                groups, group_id = ctx.int("groups", 1), ctx.int("group_id", 0)
                if not 0 <= group_id < groups:
                    raise ctx.error(f"group_id={group_id} out of range for groups={groups}")
                for j in src:
                    if out_ch[j] % groups:
                        raise ctx.error(
                            f"layer {j} has {out_ch[j]} channels, not divisible by groups={groups}"
                        )
                param = {"src": src, "groups": groups, "group_id": group_id}
                in_ch = sum(out_ch[j] // groups for j in src)
                stride = strides[src[0]]
                module = nn.Identity()
            elif kind == "shortcut":
                j = ctx.int("from")
                j = j if j >= 0 else i + j
                if not 0 <= j < i:
                    raise ctx.error(f"from={sec.options['from']} refers to layer {j}, not before {i}")
                if out_ch[j] != in_ch:
                    raise ctx.error(f"adds layer {j} ({out_ch[j]} channels) to {in_ch} channels")
                param = {"src": j}
                module = _activation(ctx, sec.options.get("activation", "linear"))
            else:  # yolo
                if ctx.int("new_coords", 0):
                    raise ctx.error("unsupported option new_coords=1 (scaled-YOLOv4 decoding)")
                anchors_flat = [
                    float(v) for v in sec.options.get("anchors", "").replace(" ", "").split(",") if v
                ]
                if len(anchors_flat) % 2:
                    raise ctx.error("anchors must be pairs of numbers")
                pairs = list(zip(anchors_flat[0::2], anchors_flat[1::2], strict=True))
                mask = ctx.ints("mask") if "mask" in sec.options else list(range(len(pairs)))
                if any(not 0 <= m < len(pairs) for m in mask):
                    raise ctx.error(f"mask {mask} refers past the {len(pairs)} anchors")
                classes = ctx.int("classes", 80)
                if in_ch != len(mask) * (5 + classes):
                    raise ctx.error(
                        f"expects {len(mask)}*(5+{classes})={len(mask) * (5 + classes)} input channels, "
                        f"previous layer gives {in_ch}"
                    )
                if self.num_classes not in (None, classes):
                    raise ctx.error(f"classes={classes} differs from an earlier [yolo] ({self.num_classes})")
                self.num_classes = classes
                module = YoloHead([pairs[m] for m in mask], classes, ctx.float("scale_x_y", 1.0))
            self.layers.append(module)
            self.kinds.append(kind)
            self.params.append(param)
            out_ch.append(in_ch)
            strides.append(stride)
        if self.num_classes is None:
            raise ModelError(f"{self.cfg_path}: no [yolo] layer; not a YOLO detector")
        # keep only outputs that a later route/shortcut reads
        needed: set[int] = set()
        for layer_param in self.params:
            read = layer_param.get("src")
            if isinstance(read, list):
                needed.update(read)
            elif read is not None:
                needed.add(read)
        self._keep = needed
        self.head_strides = [strides[i] for i, k in enumerate(self.kinds) if k == "yolo"]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        input_hw = (int(x.shape[-2]), int(x.shape[-1]))
        saved: dict[int, torch.Tensor] = {}
        heads: list[torch.Tensor] = []
        for i, (kind, layer, p) in enumerate(zip(self.kinds, self.layers, self.params, strict=True)):
            if kind == "route":
                parts = [saved[j] for j in p["src"]]
                if p["groups"] > 1:
                    parts = [t.chunk(p["groups"], dim=1)[p["group_id"]] for t in parts]
                x = parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)
            elif kind == "shortcut":
                x = layer(x + saved[p["src"]])
            elif kind == "yolo":
                heads.append(layer(x, input_hw))
            else:
                x = layer(x)
            if i in self._keep:
                saved[i] = x
        return heads[0] if len(heads) == 1 else torch.cat(heads, dim=1)

    # ------------------------------------------------------------------ weights
    def expected_weight_count(self) -> int:
        """Number of float32 values the .weights file must hold after its header."""
        total = 0
        for kind, layer in zip(self.kinds, self.layers, strict=True):
            if kind == "convolutional":
                conv = layer.conv
                total += conv.weight.numel() + conv.out_channels * (4 if layer.batch_normalize else 1)
        return total

    def load_weights(self, weights_path: str | Path) -> DarknetModel:
        """Read darknet weights (header + per conv: [beta, gamma, mean, var] or bias, then kernels)."""
        path = Path(weights_path)
        try:
            raw = path.read_bytes()
        except OSError as exc:
            raise ModelError(f"cannot read darknet weights {path}: {exc}") from None
        if len(raw) < 12:
            raise ModelError(f"darknet weights {path}: only {len(raw)} bytes, not even a header")
        major, minor, _rev = np.frombuffer(raw[:12], np.int32)
        header = 12 + (8 if major * 10 + minor >= 2 else 4)
        body = len(raw) - header
        expected = self.expected_weight_count()
        if body % 4 or body // 4 != expected:
            raise ModelError(
                f"darknet weights {path} do not match {self.cfg_path.name}: expected {expected} float32 "
                f"values ({header + 4 * expected} bytes), file has {body / 4:g} values ({len(raw)} bytes)"
                + ("; the file is truncated or corrupt" if body // 4 < expected else "")
            )
        values = np.frombuffer(raw, np.float32, offset=header)
        pos = 0

        def take(n: int) -> np.ndarray:
            nonlocal pos
            out = values[pos : pos + n]
            pos += n
            return out

        with torch.no_grad():
            for kind, layer in zip(self.kinds, self.layers, strict=True):
                if kind != "convolutional":
                    continue
                conv = layer.conv
                n = conv.out_channels
                if layer.batch_normalize:
                    beta, gamma, mean, var = (take(n).astype(np.float64) for _ in range(4))
                    w = take(conv.weight.numel()).reshape(conv.weight.shape).astype(np.float64)
                    scale = gamma / np.sqrt(var + BN_EPS)
                    conv.weight.copy_(torch.from_numpy((w * scale[:, None, None, None]).astype(np.float32)))
                    conv.bias.copy_(torch.from_numpy((beta - mean * scale).astype(np.float32)))
                else:
                    bias = take(n)
                    w = take(conv.weight.numel()).reshape(conv.weight.shape)
                    conv.bias.copy_(torch.from_numpy(bias.copy()))
                    conv.weight.copy_(torch.from_numpy(w.copy()))
        if not np.isfinite(values).all():
            raise ModelError(f"darknet weights {path} contain NaN or infinite values; the file is corrupt")
        return self


def load_darknet(cfg_path: str | Path, weights_path: str | Path) -> DarknetModel:
    """Build the network from ``cfg_path`` and load ``weights_path``; returned in eval mode."""
    model = DarknetModel(cfg_path)
    model.load_weights(weights_path)
    return model.eval()
