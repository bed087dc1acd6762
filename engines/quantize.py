"""Static int8 quantization of an fp32 ONNX model with ``onnxruntime.quantization``, cached.

Weights are quantized per output channel (int8, symmetric); activations get one uint8 scale/zero point per
tensor, found by running calibration inputs through the fp32 model. The caller supplies the calibration
inputs already preprocessed by the model's own preprocessing (for a detector: ``YoloDetector.prepare``), so
the ranges are those the network sees at run time. Only the convolutional part is quantized: a detector's
box decode after the last convolutions stays fp32 (``decode_tail``), and darknet's -inf maxpool padding is
made an edge pad first (``pad_inf_to_edge``). See docs/int8.md for the measured choice of settings.

The result is cached as ``<cache>/onnx/<stem>-int8-<key>.onnx`` where ``key`` digests the fp32 file's sha256,
the calibration inputs and the settings, so it is built once and rebuilt when any of them changes.

Calibration images: a folder of images or a video file (``load_calibration_images``), or, with no source,
a built-in set the caller passes in (``pipeline.ingest.demo_media.builtin_calibration_images``: scikit-image's real
sample photos plus frames of the demo clip); this backend module imports nothing of the pipeline's.
The built-in set only makes int8 work out of the box; calibrate on frames of your own cameras for the best
accuracy (``run_pipeline.py models quantize --images DIR_OR_VIDEO``).
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from engines.base import EngineError
from engines.model_store import cache_dir, sha256_file

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"}
DEFAULT_LIMIT = 32
#: bump when the quantization recipe changes, so cached int8 files are rebuilt
_RECIPE = "decode-tail-fp32,backbone-calib,pad-edge"


def cpu_has_vnni() -> bool:
    """Whether this CPU has an int8 dot-product instruction (AVX512-VNNI or AVX-VNNI, x86 Linux)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return any(f in flags.split() for f in ("avx512_vnni", "avx_vnni", "amx_int8"))


@dataclass(frozen=True)
class QuantSettings:
    """How to quantize. The defaults were the fastest and most accurate here (benchmarks/bench_detectors.py)."""

    format: Literal["qdq", "qoperator"] = "qoperator"
    calibration: Literal["minmax", "entropy", "percentile"] = "minmax"
    per_channel: bool = True
    #: 7-bit weights avoid the u8*s8 pair-sum saturation of AVX2 (non-VNNI) kernels
    reduce_range: bool = True

    def key(self) -> str:
        return ",".join(f"{k}={v}" for k, v in sorted(asdict(self).items()))


def default_settings() -> QuantSettings:
    """The settings for this CPU: full 8-bit weights where VNNI accumulates int8 products in 32 bits
    (7-bit weights only cost accuracy there), 7-bit weights on AVX2 without VNNI."""
    return QuantSettings(reduce_range=not cpu_has_vnni())


def load_calibration_images(source: str | Path, limit: int = DEFAULT_LIMIT) -> list[np.ndarray]:
    """Up to ``limit`` BGR images from a folder of images (sorted by name, evenly sampled) or a video
    file (frames evenly spread over the clip). Errors name the path."""
    import cv2

    path = Path(source).expanduser()
    if limit < 1:
        raise EngineError(f"calibration image limit must be >= 1, got {limit}")
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise EngineError(
                f"calibration images: no image files ({', '.join(sorted(IMAGE_SUFFIXES))}) in {path}"
            )
        step = max(len(files) / limit, 1.0)
        picked = [files[int(i * step)] for i in range(min(limit, len(files)))]
        images = []
        for p in picked:
            img = cv2.imread(str(p), cv2.IMREAD_COLOR)
            if img is None:
                raise EngineError(f"calibration images: cannot read image {p}")
            images.append(img)
        return images
    if path.is_file():
        cap = cv2.VideoCapture(str(path))
        try:
            if not cap.isOpened():
                raise EngineError(f"calibration images: {path} is neither a folder nor a readable video")
            total = int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
            wanted = set(np.linspace(0, max(total - 1, 0), limit).astype(int).tolist()) if total else None
            images, i = [], 0
            while len(images) < limit:
                ok, frame = cap.read()
                if not ok:
                    break
                if wanted is None or i in wanted:
                    images.append(frame)
                i += 1
        finally:
            cap.release()
        if not images:
            raise EngineError(f"calibration images: no frames could be decoded from video {path}")
        return images
    raise EngineError(f"calibration images: {path} not found (give a folder of images or a video file)")


def inputs_digest(blobs: Sequence[np.ndarray]) -> str:
    h = hashlib.sha256()
    for b in blobs:
        h.update(str((b.shape, b.dtype.str)).encode())
        h.update(np.ascontiguousarray(b).tobytes())
    return h.hexdigest()


def cached_path(fp32_path: Path, blobs: Sequence[np.ndarray], settings: QuantSettings) -> Path:
    key_src = f"{sha256_file(fp32_path)}|{inputs_digest(blobs)}|{settings.key()}|{_RECIPE}"
    key = hashlib.sha256(key_src.encode()).hexdigest()[:16]
    return cache_dir() / "onnx" / f"{fp32_path.stem}-int8-{key}.onnx"


class _Reader:
    """onnxruntime CalibrationDataReader over a list of preprocessed inputs (one batch-1 blob each)."""

    def __init__(self, input_name: str, blobs: Sequence[np.ndarray]) -> None:
        self._items = iter(
            [
                {input_name: np.ascontiguousarray(b[i : i + 1], np.float32)}
                for b in blobs
                for i in range(len(b))
            ]
        )

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._items, None)

    def rewind(self) -> None:  # pragma: no cover - not used by quantize_static's single pass
        pass


def _conv_ancestry(graph) -> set[str]:
    """Names of the Conv nodes and every node that feeds one."""
    producer = {out: n for n in graph.node for out in n.output}
    keep: set[str] = set()
    stack = [n for n in graph.node if n.op_type == "Conv"]
    while stack:
        node = stack.pop()
        if node.name in keep:
            continue
        keep.add(node.name)
        stack.extend(producer[i] for i in node.input if i in producer)
    return keep


def pad_inf_to_edge(model) -> int:
    """Rewrite ``Pad(value=-inf) -> MaxPool`` as ``Pad(mode=edge) -> MaxPool``; returns how many.

    Darknet's size-2 stride-1 maxpool is exported with a -inf constant pad, which has no int8 value (its
    calibrated range is infinite). Repeating the edge gives the same maximum: every pooling window that
    reaches into the pad (pad < kernel) also holds the edge value that the pad repeats.
    """
    from onnx import helper, numpy_helper

    graph = model.graph
    values = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    for n in graph.node:
        if n.op_type == "Constant":
            for a in n.attribute:
                if a.name == "value":
                    values[n.output[0]] = numpy_helper.to_array(a.t)
    consumers: dict[str, list] = {}
    for n in graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    changed = 0
    for n in graph.node:
        if n.op_type != "Pad" or len(n.input) < 3 or n.input[2] not in values:
            continue
        fill = np.asarray(values[n.input[2]])
        users = consumers.get(n.output[0], [])
        if fill.size != 1 or not np.isneginf(fill).all() or not users:
            continue
        if any(u.op_type != "MaxPool" for u in users):
            continue
        del n.input[2:]
        kept = [a for a in n.attribute if a.name != "mode"]
        del n.attribute[:]
        n.attribute.extend([*kept, helper.make_attribute("mode", "edge")])
        changed += 1
    if changed:  # drop the -inf constants no node reads any more
        used = {i for n in graph.node for i in n.input}
        dead = [i for i in graph.initializer if i.name not in used]
        for i in dead:
            graph.initializer.remove(i)
    return changed


def decode_tail(path: Path) -> list[str]:
    """Nodes after the last convolutions (a detector's box decode: sigmoid, exp, grid, concat).

    They stay fp32: one uint8 scale for a tensor holding pixel coordinates (0..416) and probabilities
    (0..1) would round every probability to zero. A node is kept for int8 when it is a Conv or feeds one.
    """
    import onnx

    graph = onnx.load(str(path)).graph
    keep = _conv_ancestry(graph)
    return [n.name for n in graph.node if n.name not in keep]


def backbone_op_types(path: Path) -> list[str]:
    """Op types of the Conv-feeding part: the only ones calibrated (the decode's Exp can overflow to inf,
    which the histogram calibrators reject)."""
    import onnx

    graph = onnx.load(str(path)).graph
    keep = _conv_ancestry(graph)
    return sorted({n.op_type for n in graph.node if n.name in keep})


def quantize_onnx(
    fp32_path: str | Path,
    blobs: Sequence[np.ndarray],
    settings: QuantSettings = QuantSettings(),
    out_path: str | Path | None = None,
) -> Path:
    """An int8 copy of ``fp32_path`` calibrated on ``blobs`` (preprocessed NCHW float32 inputs).

    Without ``out_path`` the file goes to the cache and is reused when it exists. Returns the path.
    """
    from onnxruntime import quantization as q

    fp32_path = Path(fp32_path)
    if not fp32_path.is_file():
        raise EngineError(f"int8 quantization: fp32 ONNX model {fp32_path} not found")
    if not blobs:
        raise EngineError(f"int8 quantization of {fp32_path}: no calibration images")
    if out_path is None:
        out_path = cached_path(fp32_path, blobs, settings)
        if out_path.is_file():
            return out_path
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    try:
        import onnx

        input_name = onnx.load(str(fp32_path), load_external_data=False).graph.input[0].name
    except Exception as exc:
        raise EngineError(f"int8 quantization: cannot read ONNX model {fp32_path}: {exc}") from None
    method = {
        "minmax": q.CalibrationMethod.MinMax,
        "entropy": q.CalibrationMethod.Entropy,
        "percentile": q.CalibrationMethod.Percentile,
    }[settings.calibration]
    fmt = q.QuantFormat.QDQ if settings.format == "qdq" else q.QuantFormat.QOperator
    n = sum(len(b) for b in blobs)
    log.info(
        "quantizing %s to int8 (%s, %s, %d calibration images)",
        fp32_path.name,
        settings.format,
        settings.calibration,
        n,
    )
    tmp_dir = tempfile.mkdtemp(prefix="vidpipe-quant-")
    tmp = out_path.with_name(f"{out_path.name}.{os.getpid()}.part")
    try:
        pre = Path(tmp_dir) / "pre.onnx"
        # shape inference + fusions (Conv+BN etc.) first, as onnxruntime recommends before quantizing
        q.quant_pre_process(str(fp32_path), str(pre), skip_symbolic_shape=True)
        model = onnx.load(str(pre))
        if pad_inf_to_edge(model):
            onnx.save(model, str(pre))
        root = logging.getLogger()
        level = root.level
        root.setLevel(logging.ERROR)  # the quantizer logs a WARNING per shape tensor it leaves alone
        try:
            q.quantize_static(
                str(pre),
                str(tmp),
                _Reader(input_name, blobs),
                quant_format=fmt,
                per_channel=settings.per_channel,
                reduce_range=settings.reduce_range,
                activation_type=q.QuantType.QUInt8,
                weight_type=q.QuantType.QInt8,
                calibrate_method=method,
                nodes_to_exclude=decode_tail(pre),
                op_types_to_quantize=backbone_op_types(pre),
                extra_options={"CalibTensorRangeSymmetric": False},
            )
        finally:
            root.setLevel(level)
    except Exception as exc:
        tmp.unlink(missing_ok=True)
        raise EngineError(f"int8 quantization of {fp32_path} failed: {exc}") from exc
    finally:
        for p in Path(tmp_dir).iterdir():
            p.unlink(missing_ok=True)
        os.rmdir(tmp_dir)
    os.replace(tmp, out_path)
    return out_path
