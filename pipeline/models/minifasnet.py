"""MiniFASNet V2 / V1SE: silent (single-frame) face presentation-attack detection, our own PyTorch definition.

The published weights (minivision-ai Silent-Face-Anti-Spoofing, Apache-2.0; model store names
``minifasnet-v2`` and ``minifasnet-v1se``) are PyTorch state dicts saved from a DataParallel wrapper (keys
start with ``module.``). The network is a MobileFaceNet-style stack of inverted bottlenecks whose widths were
pruned per layer, so rather than hard-coding the pruned widths we read every layer's width from the state
dict itself and build the same module tree (names match the keys, so ``load_state_dict`` is strict):

    conv1 (3x3 s2) -> conv2_dw (3x3 dw) -> conv_23 (bottleneck s2) -> conv_3 (residual stage)
    -> conv_34 (s2) -> conv_4 -> conv_45 (s2) -> conv_5 -> conv_6_sep (1x1 to 512) -> conv_6_dw (5x5 dw)
    -> flatten -> linear (512->128) -> bn -> prob (128->3)

A bottleneck is 1x1 expand (conv+BN+PReLU) -> 3x3 depthwise (conv+BN+PReLU) -> 1x1 project (conv+BN), plus
the input inside a residual stage. V1SE adds a squeeze-and-excitation gate (avg pool, 1x1, BN, ReLU, 1x1,
BN, sigmoid) to the blocks whose keys have ``se_module``. Input: an 80x80 BGR crop, float 0-255 (no
normalisation); output: 3 logits, class 1 = a real face (0 and 2: attack kinds).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

INPUT_SIZE = 80
REAL_CLASS = 1


class ConvBlock(nn.Module):
    """conv (no bias) + BN, then PReLU unless ``linear``."""

    def __init__(
        self, cin: int, cout: int, k: int = 1, s: int = 1, p: int = 0, groups: int = 1, linear=False
    ):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, k, s, p, groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(cout)
        self.prelu = None if linear else nn.PReLU(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.bn(self.conv(x))
        return x if self.prelu is None else self.prelu(x)


class SqueezeExcite(nn.Module):
    def __init__(self, channels: int, squeezed: int) -> None:
        super().__init__()
        self.fc1 = nn.Conv2d(channels, squeezed, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(squeezed)
        self.fc2 = nn.Conv2d(squeezed, channels, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        g = x.mean(dim=(2, 3), keepdim=True)
        g = torch.relu(self.bn1(self.fc1(g)))
        return x * torch.sigmoid(self.bn2(self.fc2(g)))


class Bottleneck(nn.Module):
    def __init__(self, cin: int, mid: int, cout: int, stride: int, residual: bool, se: int | None) -> None:
        super().__init__()
        self.conv = ConvBlock(cin, mid)
        self.conv_dw = ConvBlock(mid, mid, 3, stride, 1, groups=mid)
        self.project = ConvBlock(mid, cout, linear=True)
        self.se_module = SqueezeExcite(cout, se) if se else None
        self.residual = residual

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.project(self.conv_dw(self.conv(x)))
        if self.se_module is not None:
            y = self.se_module(y)
        return x + y if self.residual else y


class Stage(nn.Module):
    def __init__(self, blocks: list[Bottleneck]) -> None:
        super().__init__()
        self.model = nn.Sequential(*blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


def _bottleneck(sd: Mapping[str, torch.Tensor], prefix: str, stride: int, residual: bool) -> Bottleneck:
    expand = sd[f"{prefix}.conv.conv.weight"]
    project = sd[f"{prefix}.project.conv.weight"]
    se_key = f"{prefix}.se_module.fc1.weight"
    se = int(sd[se_key].shape[0]) if se_key in sd else None
    return Bottleneck(int(expand.shape[1]), int(expand.shape[0]), int(project.shape[0]), stride, residual, se)


class MiniFASNet(nn.Module):
    """Built from a (``module.``-stripped) state dict's shapes; see the module docstring."""

    def __init__(self, sd: Mapping[str, torch.Tensor]) -> None:
        super().__init__()
        c1 = int(sd["conv1.conv.weight"].shape[0])
        self.conv1 = ConvBlock(3, c1, 3, 2, 1)
        self.conv2_dw = ConvBlock(c1, c1, 3, 1, 1, groups=c1)
        self.conv_23 = _bottleneck(sd, "conv_23", 2, False)
        self.conv_3 = self._stage(sd, "conv_3")
        self.conv_34 = _bottleneck(sd, "conv_34", 2, False)
        self.conv_4 = self._stage(sd, "conv_4")
        self.conv_45 = _bottleneck(sd, "conv_45", 2, False)
        self.conv_5 = self._stage(sd, "conv_5")
        sep = sd["conv_6_sep.conv.weight"]
        self.conv_6_sep = ConvBlock(int(sep.shape[1]), int(sep.shape[0]))
        dw = sd["conv_6_dw.conv.weight"]
        self.conv_6_dw = ConvBlock(
            int(dw.shape[0]), int(dw.shape[0]), int(dw.shape[2]), groups=int(dw.shape[0]), linear=True
        )
        lin = sd["linear.weight"]
        self.linear = nn.Linear(int(lin.shape[1]), int(lin.shape[0]), bias=False)
        self.bn = nn.BatchNorm1d(int(lin.shape[0]))
        prob = sd["prob.weight"]
        self.prob = nn.Linear(int(prob.shape[1]), int(prob.shape[0]), bias=False)

    @staticmethod
    def _stage(sd: Mapping[str, torch.Tensor], name: str) -> Stage:
        pat = re.compile(rf"^{name}\.model\.(\d+)\.")
        n = 1 + max(int(m.group(1)) for k in sd if (m := pat.match(k)))
        return Stage([_bottleneck(sd, f"{name}.model.{i}", 1, True) for i in range(n)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 3, 80, 80) BGR float 0-255 -> (N, 3) logits."""
        for layer in (self.conv1, self.conv2_dw, self.conv_23, self.conv_3, self.conv_34, self.conv_4):
            x = layer(x)
        for layer in (self.conv_45, self.conv_5, self.conv_6_sep, self.conv_6_dw):
            x = layer(x)
        return self.prob(self.bn(self.linear(x.flatten(1))))


def load_minifasnet(path: str | Path) -> MiniFASNet:
    """The network of a published MiniFASNet ``.pth`` (any of the pruned variants), in eval mode."""
    raw = torch.load(str(path), map_location="cpu", weights_only=True)
    if not isinstance(raw, Mapping):
        raise ValueError(f"{path}: not a PyTorch state dict")
    sd = {k.removeprefix("module."): v for k, v in raw.items()}
    if "conv1.conv.weight" not in sd or "prob.weight" not in sd:
        raise ValueError(f"{path}: not a MiniFASNet state dict (no conv1/prob weights)")
    model = MiniFASNet(sd)
    model.load_state_dict(sd, strict=True)
    return model.eval()
