"""engines/tensorrt_engine.py: the engine cache (key, hit, rebuild on mismatch or corruption) with an
injected build function, the ONNX batch-profile logic, and the fallback when TensorRT or a GPU is missing --
all runnable without TensorRT. A real build + inference test is marked ``gpu``."""

from __future__ import annotations

import hashlib
import importlib.util
import logging

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper
from torch import nn

from engines.base import EngineError
from engines.export import export_onnx
from engines.model_store import sha256_file
from engines.onnx_engine import OnnxRuntimeEngine
from engines.tensorrt_engine import (
    BatchProfile,
    EngineCache,
    EngineCacheKey,
    TensorRTEngine,
    create_gpu_engine,
    effective_profile,
    tensorrt_unavailable_reason,
)

HAS_TRT = importlib.util.find_spec("tensorrt") is not None
LOGGER = "engines.tensorrt_engine"


def make_key(**changes) -> EngineCacheKey:
    fields = {
        "model_sha256": "ab" * 32,
        "tensorrt_version": "10.3.0",
        "gpu_name": "NVIDIA H100 80GB HBM3",
        "precision": "fp16",
        "batch_profile": (1, 8, 32),
    }
    fields.update(changes)
    return EngineCacheKey(**fields)


class Builder:
    """The injected build step: returns distinct plan bytes per call and counts calls."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self) -> bytes:
        self.calls += 1
        return f"plan-{self.calls}".encode() * 10


class SmallNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 4, 3, padding=1)

    def forward(self, x):
        return torch.sigmoid(self.conv(x))


@pytest.fixture
def onnx_model(tmp_path, monkeypatch):
    monkeypatch.setenv("VIDPIPE_CACHE_DIR", str(tmp_path / "cache"))
    return export_onnx(SmallNet(), (1, 3, 16, 16), path=tmp_path / "small.onnx")


def test_cache_key_digest_is_stable_and_covers_every_field():
    base = make_key()
    assert base.digest() == make_key().digest()
    variants = [
        make_key(model_sha256="cd" * 32),
        make_key(tensorrt_version="10.5.0"),
        make_key(gpu_name="NVIDIA H200"),
        make_key(precision="fp32"),
        make_key(batch_profile=(1, 4, 16)),
    ]
    digests = {v.digest() for v in variants}
    assert len(digests) == len(variants) and base.digest() not in digests


def test_sha256_file(tmp_path):
    p = tmp_path / "m.onnx"
    p.write_bytes(b"x" * 3_000_000)
    assert sha256_file(p) == hashlib.sha256(b"x" * 3_000_000).hexdigest()


def test_cache_hit_after_first_build(tmp_path):
    cache, build = EngineCache(tmp_path), Builder()
    plan, built = cache.load_or_build("yolo-fp16", make_key(), build)
    assert built and build.calls == 1
    again, built2 = cache.load_or_build("yolo-fp16", make_key(), build)
    assert again == plan and not built2 and build.calls == 1
    assert (tmp_path / "yolo-fp16.plan").read_bytes() == plan


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"tensorrt_version": "10.5.0"}, "tensorrt_version"),
        ({"gpu_name": "NVIDIA L4"}, "gpu_name"),
        ({"model_sha256": "ef" * 32}, "model_sha256"),
        ({"precision": "int8"}, "precision"),
        ({"batch_profile": (1, 1, 1)}, "batch_profile"),
    ],
)
def test_mismatch_rebuilds_and_logs_the_changed_field(tmp_path, caplog, change, field):
    cache, build = EngineCache(tmp_path), Builder()
    first, _ = cache.load_or_build("m", make_key(), build)
    with caplog.at_level(logging.INFO, logger=LOGGER):
        second, built = cache.load_or_build("m", make_key(**change), build)
    assert built and build.calls == 2 and second != first
    msg = " ".join(r.getMessage() for r in caplog.records)
    assert f"key changed: {field}" in msg
    # the new key is now the cached one
    assert cache.load_or_build("m", make_key(**change), build)[1] is False


def test_corrupt_plan_or_metadata_is_rebuilt(tmp_path):
    cache, build = EngineCache(tmp_path), Builder()
    cache.load_or_build("m", make_key(), build)
    plan_path, meta_path = cache.paths("m")
    plan_path.write_bytes(plan_path.read_bytes()[:5])  # truncated
    assert "recorded sha256" in cache.stale_reason("m", make_key())
    assert cache.load_or_build("m", make_key(), build)[1] is True
    meta_path.write_text("{not json")
    assert "unreadable cache metadata" in cache.stale_reason("m", make_key())
    assert cache.load_or_build("m", make_key(), build)[1] is True
    assert build.calls == 3
    cache.invalidate("m")
    assert not plan_path.exists() and not meta_path.exists()


def test_empty_build_is_an_error_and_nothing_is_cached(tmp_path):
    cache = EngineCache(tmp_path)
    with pytest.raises(EngineError, match="produced no plan"):
        cache.load_or_build("m", make_key(), lambda: b"")
    assert cache.stale_reason("m", make_key()) == "no cached engine"


def test_precision_check_for_tensorrt_10_and_11():
    from types import SimpleNamespace

    from engines.tensorrt_engine import check_precision_supported

    trt10 = SimpleNamespace(__version__="10.16.1", BuilderFlag=SimpleNamespace(FP16=1, INT8=2))
    trt11 = SimpleNamespace(__version__="11.4.0", BuilderFlag=SimpleNamespace(TF32=3))
    for precision in ("fp32", "fp16", "int8"):
        check_precision_supported(trt10, precision, "m.onnx")
    check_precision_supported(trt11, "fp32", "m.onnx")
    with pytest.raises(EngineError, match=r"tensorrt 11\.4\.0 has no FP16 builder flag.*m\.onnx"):
        check_precision_supported(trt11, "fp16", "m.onnx")
    with pytest.raises(EngineError, match="precision must be one of"):
        check_precision_supported(trt10, "bf16", "m.onnx")


def test_batch_profile_validation():
    assert BatchProfile(1, 8, 32).as_tuple() == (1, 8, 32)
    with pytest.raises(EngineError, match="min <= opt <= max"):
        BatchProfile(4, 2, 8)
    with pytest.raises(EngineError, match="min <= opt <= max"):
        BatchProfile(0, 1, 1)


def test_effective_profile_dynamic_fixed_and_bad_inputs(tmp_path, onnx_model, caplog):
    assert effective_profile(onnx_model, BatchProfile(2, 4, 16)) == BatchProfile(2, 4, 16)

    def identity_model(path, dims):
        inp = helper.make_tensor_value_info("images", TensorProto.FLOAT, dims)
        out = helper.make_tensor_value_info("output", TensorProto.FLOAT, dims)
        graph = helper.make_graph([helper.make_node("Identity", ["images"], ["output"])], "g", [inp], [out])
        onnx.save(helper.make_model(graph), str(path))
        return path

    fixed = identity_model(tmp_path / "fixed.onnx", [1, 3, 8, 8])
    with caplog.at_level(logging.INFO, logger=LOGGER):
        assert effective_profile(fixed, BatchProfile()) == BatchProfile(1, 1, 1)
    assert "fixed batch of 1" in caplog.text
    dyn_hw = identity_model(tmp_path / "dyn_hw.onnx", ["batch", 3, "h", "w"])
    with pytest.raises(EngineError, match=r"dyn_hw\.onnx.*dynamic non-batch dims"):
        effective_profile(dyn_hw, BatchProfile())


@pytest.mark.skipif(HAS_TRT and torch.cuda.is_available(), reason="TensorRT and a GPU are present here")
def test_engine_without_tensorrt_or_gpu_says_why(onnx_model):
    reason = tensorrt_unavailable_reason()
    assert reason is not None
    with pytest.raises(EngineError, match=r"tensorrt backend for .*small\.onnx"):
        TensorRTEngine(onnx_model)
    if not HAS_TRT:
        assert "vidpipe[gpu]" in reason


@pytest.mark.skipif(HAS_TRT and torch.cuda.is_available(), reason="TensorRT and a GPU are present here")
@pytest.mark.parametrize("with_module", [False, True])
def test_fallback_logs_one_line_and_runs(onnx_model, caplog, with_module):
    with caplog.at_level(logging.DEBUG, logger=LOGGER):
        engine = create_gpu_engine(onnx_model, module=SmallNet() if with_module else None, threads=1)
    # no GPU here, so even with a module the fallback is ONNX Runtime on the CPU
    assert isinstance(engine, OnnxRuntimeEngine)
    lines = [r for r in caplog.records if r.name == LOGGER]
    assert len(lines) == 1 and lines[0].levelno == logging.WARNING
    msg = lines[0].getMessage()
    assert "small.onnx" in msg and tensorrt_unavailable_reason() in msg and "onnxruntime on the CPU" in msg
    x = np.random.default_rng(0).random((2, 3, 16, 16), dtype=np.float32)
    with torch.no_grad():
        want = SmallNet()(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(engine.run({"images": x})["output"], want, rtol=1e-4, atol=1e-5)


@pytest.mark.gpu
@pytest.mark.skipif(not (HAS_TRT and torch.cuda.is_available()), reason="needs TensorRT and a CUDA GPU")
def test_tensorrt_build_cache_and_inference(onnx_model, tmp_path):
    x = np.random.default_rng(0).random((4, 3, 16, 16), dtype=np.float32)
    want = OnnxRuntimeEngine(onnx_model).run({"images": x})["output"]
    engine = TensorRTEngine(
        onnx_model, fp16=True, batch_profile=BatchProfile(1, 4, 8), cache_dir=tmp_path / "trt"
    )
    got = engine.run({"images": x})["output"]
    np.testing.assert_allclose(got, want, rtol=1e-2, atol=1e-2)
    assert engine.cache.stale_reason(engine.cache_name, engine.key) is None
    dev = engine.run_torch({"images": torch.from_numpy(x).cuda()})["output"]
    assert dev.is_cuda
    with pytest.raises(EngineError, match="outside the engine's profile"):
        engine.run({"images": np.zeros((9, 3, 16, 16), np.float32)})
