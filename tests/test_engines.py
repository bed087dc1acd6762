"""Engines: torch and ONNX Runtime agree on every model; export cache; errors name what is wrong."""

from __future__ import annotations

import numpy as np
import pytest
import skimage.data
import torch
from torch import nn

from engines import create_engine
from engines.base import EngineError
from engines.export import export_onnx, module_sha256
from engines.model_store import get_model_files
from engines.onnx_engine import OnnxRuntimeEngine
from engines.torch_engine import TorchEngine
from pipeline.core.nms import iou_matrix
from pipeline.detect.detectors.yolo import PREPROCESS, YoloDetector, default_labels
from pipeline.models.darknet import load_darknet


class SmallNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.head = nn.Conv2d(8, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(nn.functional.mish(self.conv(x))).flatten(2)


@pytest.fixture()
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("VIDPIPE_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_export_is_cached_by_weights_and_shape(cache):
    torch.manual_seed(0)
    net = SmallNet()
    p1 = export_onnx(net, (1, 3, 16, 16), name="small")
    assert p1.is_file() and p1.parent == cache / "onnx"
    mtime = p1.stat().st_mtime_ns
    assert export_onnx(net, (1, 3, 16, 16), name="small") == p1 and p1.stat().st_mtime_ns == mtime
    assert export_onnx(net, (1, 3, 32, 32), name="small") != p1  # other input shape
    sha = module_sha256(net)
    with torch.no_grad():
        net.conv.bias.add_(1.0)
    assert module_sha256(net) != sha
    assert export_onnx(net, (1, 3, 16, 16), name="small") != p1  # other weights


def test_failed_metadata_write_leaves_no_part_file(cache, monkeypatch):
    """Writing ``metadata`` into the exported file is part of the export: a failure there is an EngineError
    and leaves neither the cached file nor its temporary ``.part`` behind."""
    import onnx

    def broken_save(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(onnx, "save", broken_save)
    with pytest.raises(EngineError, match="disk full"):
        export_onnx(SmallNet(), (1, 3, 16, 16), name="small", metadata={"k": "v"})
    assert list((cache / "onnx").iterdir()) == []


def test_torch_and_onnxruntime_agree_with_dynamic_batch(cache):
    torch.manual_seed(0)
    net = SmallNet()
    x = np.random.default_rng(0).normal(size=(3, 3, 16, 16)).astype(np.float32)
    t = create_engine(net, backend="torch", input_shape=(1, 3, 16, 16))
    o = create_engine(net, backend="onnxruntime", input_shape=(1, 3, 16, 16), threads=1)
    assert isinstance(t, TorchEngine) and isinstance(o, OnnxRuntimeEngine)
    a = t.run({"images": x})["output"]
    b = o.run({"images": x})["output"]  # batch 3 through a model exported with batch 1
    assert a.shape == b.shape == (3, 4, 256)
    np.testing.assert_allclose(a, b, atol=1e-4)


def test_engine_errors_are_clear(cache, tmp_path):
    net = SmallNet()
    with pytest.raises(EngineError, match="unknown backend 'tpu'"):
        create_engine(net, backend="tpu")
    with pytest.raises(EngineError, match="fp16 is only supported on CUDA"):
        TorchEngine(net, fp16=True)
    with pytest.raises(EngineError, match="not ONNX files"):
        create_engine(tmp_path / "m.onnx", backend="torch")
    with pytest.raises(EngineError, match="ONNX model not found"):
        OnnxRuntimeEngine(tmp_path / "m.onnx")
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"not a model")
    with pytest.raises(EngineError, match="cannot load ONNX model .*junk.onnx"):
        OnnxRuntimeEngine(junk)
    eng = create_engine(net, backend="onnxruntime", input_shape=(1, 3, 16, 16))
    with pytest.raises(EngineError, match="missing inputs"):
        eng.run({"x": np.zeros((1, 3, 16, 16), np.float32)})
    if not torch.cuda.is_available():
        with pytest.raises(EngineError, match="CUDA is not available"):
            TorchEngine(net, device="cuda")


def test_yolov3_tiny_backends_agree(tmp_path):
    """Raw outputs within 1e-3 (boxes normalised by the input size) and the same final boxes."""
    files = get_model_files("yolov3-tiny")
    model = load_darknet(files["cfg"], files["weights"])
    onnx_path = export_onnx(model, (1, 3, 416, 416), tmp_path / "tiny.onnx")
    engines = {
        "torch": TorchEngine(model),
        "onnxruntime": OnnxRuntimeEngine(onnx_path),
    }
    dets = {
        k: YoloDetector(e, "v5", 416, default_labels(80), PREPROCESS["darknet"], 0.2, 0.45, None, "tiny")
        for k, e in engines.items()
    }
    imgs = [np.ascontiguousarray(getattr(skimage.data, n)()[..., ::-1]) for n in ("coffee", "astronaut")]
    cam = skimage.data.camera()
    imgs.append(np.stack([cam] * 3, -1))
    raw_t, raw_o = dets["torch"].raw(imgs), dets["onnxruntime"].raw(imgs)
    assert raw_t.shape == raw_o.shape == (3, 2535, 85)
    raw_t[..., :4] /= 416
    raw_o[..., :4] /= 416
    assert np.abs(raw_t - raw_o).max() < 1e-3
    res_t, res_o = dets["torch"].detect(imgs), dets["onnxruntime"].detect(imgs)
    n = 0
    for a, b in zip(res_t, res_o, strict=True):
        assert a.labels == b.labels
        n += len(a)
        if len(a):
            assert np.diag(iou_matrix(a.boxes, b.boxes)).min() > 0.99
            assert np.abs(a.scores - b.scores).max() < 1e-3
    assert n >= 3


def test_tensorrt_backend_without_tensorrt_falls_back_with_one_clear_log_line(caplog):
    """No TensorRT (and no GPU) here: asking for it still gives a working detector, and says so once."""
    import logging

    import numpy as np
    from skimage import data

    from pipeline.config.schema import DetectorConfig
    from pipeline.detect.detectors.factory import build_detector

    with caplog.at_level(logging.WARNING):
        det = build_detector(DetectorConfig(model="yolov3-tiny", backend="tensorrt"))
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING and "tensorrt" in r.getMessage()]
    assert len(warnings) == 1 and "falling back" in warnings[0].getMessage()
    cameraman = np.repeat(data.camera()[..., None], 3, axis=2)  # a real photo of a person
    found = det.detect([cameraman])[0]
    assert "person" in found.labels
