"""dlib's face-recognition ResNet (``dlib_face_recognition_resnet_model_v1.dat``) read straight from its file.

The file is dlib's own binary serialization of the ``anet_type`` network in dlib's
``dnn_face_recognition_ex.cpp`` (uncompressed)::

    loss_metric / fc_no_bias<128> / avg_pool_everything /
    alevel0 (ares_down 256) / alevel1 (ares 256 x2, ares_down 256) / alevel2 (ares 128 x2, ares_down 128) /
    alevel3 (ares 64 x3, ares_down 64) / alevel4 (ares 32 x3) /
    max_pool 3x3/2 / relu / affine / con 32 7x7/2 / input_rgb_image_sized<150>

Serialization primitives (dlib/serialize.h, dlib/dnn/tensor.h):

- integer: one header byte (low nibble = number of value bytes, bit 7 = negative), then the magnitude's bytes
  little-endian;
- floating point: an integer mantissa and an integer exponent, value = mantissa * 2**exponent;
- string: integer length, then the bytes; bool: one ASCII byte ``'0'``/``'1'``;
- tensor: integer version (2), then num_samples, k, nr, nc, then the values as raw little-endian float32;
- alias_tensor (a view into a layer's ``params`` tensor): integer version (1), then num_samples, k, nr, nc.

Network nesting: ``add_loss_layer`` writes ``version, loss, subnet``; every ``add_layer`` writes
``version, subnet, layer details, 3 bools, 3 tensors`` (version 2; the one sitting on the input layer is
version 3 and ends with an extra integer); ``tag``/``skip`` layers write ``version (1), subnet``. So the file
starts with the chain of versions from the outermost layer inwards, then the input layer, then each layer's
details from the input outwards. Tag and skip IDs are not stored; they follow from the block pattern.

Numerics (checked against dlib on real faces): input = (RGB - per-channel mean) / 256; ``con`` with stride 2
has no padding, stride 1 pads by half the kernel; ``affine`` is a per-channel scale and shift (batch norm
folded by dlib), here folded again into the preceding convolution; ``add_prev`` of tensors with different
shapes zero-pads the smaller one at the end of each axis (channels and the bottom/right border), which
happens in the down-sampling blocks; ``fc_no_bias`` weights are stored (inputs, outputs).
"""

from __future__ import annotations

import builtins
import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

CHIP_SIZE = 150
EMBEDDING_DIM = 128


class DlibModelError(ValueError):
    """The file is not a dlib metric-learning ResNet this module understands; the message says where."""


# ---------------------------------------------------------------------------------------------------------
# Low-level reader


class _Reader:
    def __init__(self, data: bytes, source: str) -> None:
        self.data = data
        self.pos = 0
        self.source = source

    def fail(self, what: str) -> DlibModelError:
        return DlibModelError(f"{self.source}: {what} (at byte offset {self.pos})")

    def byte(self) -> int:
        if self.pos >= len(self.data):
            raise self.fail("unexpected end of file")
        b = self.data[self.pos]
        self.pos += 1
        return b

    def peek(self, n: int = 1) -> bytes:
        return self.data[self.pos : self.pos + n]

    def int(self) -> int:
        head = self.byte()
        size = head & 0x0F
        if size > 8 or head & 0x70:
            raise self.fail(f"bad integer header byte 0x{head:02x}")
        if self.pos + size > len(self.data):
            raise self.fail("unexpected end of file inside an integer")
        value = int.from_bytes(self.data[self.pos : self.pos + size], "little")
        self.pos += size
        return -value if head & 0x80 else value

    def float(self) -> float:
        mantissa = self.int()
        exponent = self.int()
        if exponent >= 32000:  # dlib's markers for inf / -inf / nan
            return {32000: float("inf"), 32001: float("-inf")}.get(exponent, float("nan"))
        return float(mantissa) * 2.0**exponent

    def str(self, max_len: builtins.int = 256) -> str:
        n = self.int()
        if not 0 <= n <= max_len:
            raise self.fail(f"bad string length {n}")
        raw = self.data[self.pos : self.pos + n]
        self.pos += n
        try:
            return raw.decode("ascii")
        except UnicodeDecodeError:
            raise self.fail(f"string is not ASCII: {raw[:32]!r}") from None

    def bool(self) -> bool:
        b = self.byte()
        if b not in (0x30, 0x31):
            raise self.fail(f"bad bool byte 0x{b:02x}")
        return b == 0x31

    def tensor(self) -> np.ndarray:
        version = self.int()
        if version != 2:
            raise self.fail(f"tensor version {version}, expected 2")
        dims = [self.int() for _ in range(4)]
        if any(d < 0 for d in dims):
            raise self.fail(f"negative tensor dims {dims}")
        count = int(np.prod(dims))
        nbytes = 4 * count
        if self.pos + nbytes > len(self.data):
            raise self.fail(f"tensor of {dims} runs past the end of the file")
        values = np.frombuffer(self.data, dtype="<f4", count=count, offset=self.pos).astype(np.float32)
        self.pos += nbytes
        return values.reshape(dims)

    def alias(self) -> tuple[builtins.int, builtins.int, builtins.int, builtins.int]:
        version = self.int()
        if version != 1:
            raise self.fail(f"alias_tensor version {version}, expected 1")
        return tuple(self.int() for _ in range(4))  # type: ignore[return-value]


# ---------------------------------------------------------------------------------------------------------
# Layer records


@dataclass
class Layer:
    """One serialized layer: ``kind`` is dlib's layer name without version suffix, or "wrap" for tag/skip."""

    kind: str
    params: dict = field(default_factory=dict)


@dataclass
class DlibNet:
    input_mean: tuple[float, float, float]  # RGB, subtracted before dividing by 256
    input_size: tuple[int, int]  # (rows, cols)
    loss: str
    layers: list[Layer]  # from the input outwards, the input layer excluded
    sha256: str


def _read_details(r: _Reader) -> Layer:
    name = r.str()
    if name == "con_4":
        params = r.tensor().ravel()
        nf, nr, nc = r.int(), r.int(), r.int()
        sy, sx, py, px = r.int(), r.int(), r.int(), r.int()
        fshape, bshape = r.alias(), r.alias()
        for _ in range(4):  # learning-rate / weight-decay multipliers
            r.float()
        nw = int(np.prod(fshape))
        if fshape[0] != nf or fshape[2:] != (nr, nc) or params.size != nw + nf or int(np.prod(bshape)) != nf:
            raise r.fail(f"con_4 shapes disagree: filters {fshape}, biases {bshape}, params {params.size}")
        return Layer(
            "con",
            {
                "weight": params[:nw].reshape(fshape),
                "bias": params[nw:],
                "stride": (sy, sx),
                "padding": (py, px),
            },
        )
    if name == "affine_":
        params = r.tensor().ravel()
        gshape, bshape = r.alias(), r.alias()
        mode = r.int()
        n = int(np.prod(gshape))
        if params.size != 2 * n or int(np.prod(bshape)) != n:
            raise r.fail(f"affine_ shapes disagree: gamma {gshape}, beta {bshape}, params {params.size}")
        return Layer("affine", {"gamma": params[:n], "beta": params[n:], "mode": mode})
    if name == "relu_":
        return Layer("relu")
    if name in ("max_pool_2", "avg_pool_2"):
        nr, nc, sy, sx, py, px = (r.int() for _ in range(6))
        return Layer(name[:-2], {"kernel": (nr, nc), "stride": (sy, sx), "padding": (py, px)})
    if name == "add_prev_":
        return Layer("add_prev")
    if name == "fc_2":
        n_out, n_in = r.int(), r.int()
        params = r.tensor().ravel()
        wshape, bshape = r.alias(), r.alias()
        has_bias = r.int()
        for _ in range(4):
            r.float()
        nw = int(np.prod(wshape))
        if nw != n_in * n_out:
            raise r.fail(f"fc_2 weights {wshape} do not hold {n_in} x {n_out}")
        weight = params[:nw].reshape(n_in, n_out)
        bias = params[nw : nw + n_out] if has_bias == 0 and params.size >= nw + n_out else None
        return Layer("fc", {"weight": weight, "bias": bias})
    raise r.fail(f"unsupported dlib layer {name!r}")


def _skip_add_layer_tail(r: _Reader, version: int) -> None:
    for _ in range(3):  # this_layer_setup_called, gradient_input_is_stale, output/gradient getters disabled
        r.bool()
    for _ in range(3):  # x_grad, cached_output, params_grad (or grad_final for version 3)
        r.tensor()
    if version == 3:
        r.int()  # sample expansion factor


def read_dlib_net(path: str | Path) -> DlibNet:
    """Parse a dlib ``loss_metric`` network file into layer records (no dlib needed)."""
    path = Path(path)
    if not path.is_file():
        raise DlibModelError(f"dlib model file not found: {path}")
    data = path.read_bytes()
    r = _Reader(data, str(path))
    try:
        if r.int() != 1:
            raise r.fail("version != 1")
        loss = r.str()
    except DlibModelError as exc:
        raise DlibModelError(f"{path}: not a dlib dnn file starting with a loss layer ({exc})") from None
    if loss != "loss_metric_2":
        raise r.fail(f"loss layer {loss!r}; only loss_metric_2 (dlib's face-recognition net) is supported")
    r.float()  # margin
    r.float()  # distance threshold
    versions: list[int] = []
    # The version chain ends where the input layer's name string starts ("input_...").
    while not (r.peek(2)[1:2] and r.peek(8)[2:7] == b"input"):
        v = r.int()
        if v not in (1, 2, 3):
            raise r.fail(f"unexpected layer version {v} in the layer chain")
        versions.append(v)
        if len(versions) > 10000:
            raise r.fail("layer chain does not end")
    if not versions or versions[-1] != 3:
        raise r.fail("innermost layer is not an add_layer on an input layer")
    input_name = r.str()
    if input_name != "input_rgb_image_sized":
        raise r.fail(f"input layer {input_name!r}; expected input_rgb_image_sized")
    mean = (r.float(), r.float(), r.float())
    size = (r.int(), r.int())
    layers: list[Layer] = []
    for v in reversed(versions):
        if v == 1:
            layers.append(Layer("wrap"))
            continue
        layers.append(_read_details(r))
        _skip_add_layer_tail(r, v)
    if r.pos != len(data):
        raise r.fail(f"{len(data) - r.pos} bytes left over after the network")
    return DlibNet(mean, size, loss, layers, hashlib.sha256(data).hexdigest())


# ---------------------------------------------------------------------------------------------------------
# PyTorch module


def _fold(con: Layer, aff: Layer) -> nn.Conv2d:
    w = con.params["weight"]
    gamma, beta = aff.params["gamma"], aff.params["beta"]
    if gamma.size != w.shape[0]:
        raise DlibModelError(f"affine with {gamma.size} channels after a conv with {w.shape[0]} filters")
    conv = nn.Conv2d(
        w.shape[1], w.shape[0], w.shape[2:], stride=con.params["stride"], padding=con.params["padding"]
    )
    g64 = gamma.astype(np.float64)
    conv.weight.data = torch.from_numpy((w.astype(np.float64) * g64[:, None, None, None]).astype(np.float32))
    conv.bias.data = torch.from_numpy((con.params["bias"] * g64 + beta).astype(np.float32))
    return conv


def _pool(layer: Layer, cls: type[nn.Module]) -> nn.Module:
    return cls(layer.params["kernel"], layer.params["stride"], layer.params["padding"])


def _add_zero_padded(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """dlib's add_prev: sum over the overlap, each tensor zero-extended to the larger size (C, H, W)."""
    if a.shape == b.shape:
        return a + b
    shape = [max(x, y) for x, y in zip(a.shape[1:], b.shape[1:], strict=True)]

    def grow(t: torch.Tensor) -> torch.Tensor:
        c, h, w = t.shape[1:]
        if (c, h, w) == tuple(shape):
            return t
        return F.pad(t, (0, shape[2] - w, 0, shape[1] - h, 0, shape[0] - c))

    return grow(a) + grow(b)


class ResidualBlock(nn.Module):
    """relu(add_prev(conv-affine-relu-conv-affine(x), shortcut(x))); shortcut = 2x2 avg pool when down-sampling."""

    def __init__(self, conv1: nn.Conv2d, conv2: nn.Conv2d, shortcut_pool: nn.Module | None) -> None:
        super().__init__()
        self.conv1 = conv1
        self.conv2 = conv2
        self.shortcut_pool = shortcut_pool if shortcut_pool is not None else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv2(torch.relu(self.conv1(x)))
        return torch.relu(_add_zero_padded(y, self.shortcut_pool(x)))


class DlibFaceResNet(nn.Module):
    """dlib's face-embedding ResNet. Input: (N, 3, 150, 150) float RGB in 0..255. Output: (N, 128)."""

    def __init__(self, net: DlibNet) -> None:
        super().__init__()
        self.source_sha256 = net.sha256
        self.input_size = net.input_size
        self.register_buffer("mean", torch.tensor(net.input_mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.stem, self.blocks, self.fc = _build(net.layers)

    @classmethod
    def from_file(cls, path: str | Path) -> DlibFaceResNet:
        return cls(read_dlib_net(path)).eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = (x - self.mean) * (1.0 / 256.0)
        x = self.stem(x)
        for block in self.blocks:
            x = block(x)
        x = x.mean(dim=(2, 3))
        return self.fc(x)


def _build(layers: list[Layer]) -> tuple[nn.Sequential, nn.ModuleList, nn.Linear]:
    """Match the serialized layer sequence against the ResNet pattern; errors name the layer index."""
    kinds = [layer.kind for layer in layers]
    i = 0

    def expect(*seq: str) -> list[Layer]:
        nonlocal i
        got = kinds[i : i + len(seq)]
        if tuple(got) != seq:
            raise DlibModelError(
                f"dlib ResNet layout: layers {i}..{i + len(seq) - 1} are {got}, expected {list(seq)}"
            )
        out = layers[i : i + len(seq)]
        i += len(seq)
        return out

    con, aff, _, mp = expect("con", "affine", "relu", "max_pool")
    stem = nn.Sequential(_fold(con, aff), nn.ReLU(), _pool(mp, nn.MaxPool2d))
    blocks = nn.ModuleList()
    while i < len(kinds) and kinds[i] == "wrap":  # tag1 starts every residual block
        _, c1, a1, _, c2, a2 = expect("wrap", "con", "affine", "relu", "con", "affine")
        pool = None
        if kinds[i] == "wrap":  # tag2, skip1, avg_pool: down-sampling shortcut
            _, _, ap = expect("wrap", "wrap", "avg_pool")
            pool = _pool(ap, nn.AvgPool2d)
        expect("add_prev", "relu")
        blocks.append(ResidualBlock(_fold(c1, a1), _fold(c2, a2), pool))
    (gap, fc) = expect("avg_pool", "fc")
    if gap.params["kernel"] != (0, 0):
        raise DlibModelError(f"expected avg_pool_everything before fc, got kernel {gap.params['kernel']}")
    if i != len(kinds):
        raise DlibModelError(f"dlib ResNet layout: {len(kinds) - i} unexpected layers after fc: {kinds[i:]}")
    w = fc.params["weight"]
    linear = nn.Linear(w.shape[0], w.shape[1], bias=fc.params["bias"] is not None)
    linear.weight.data = torch.from_numpy(np.ascontiguousarray(w.T))
    if fc.params["bias"] is not None:
        linear.bias.data = torch.from_numpy(fc.params["bias"].copy())
    return stem, blocks, linear
