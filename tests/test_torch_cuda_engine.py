"""engines/torch_cuda_engine.py: eager fp32 on the CPU (runs here), the graph-cache state machine with a
CPU stand-in for CUDA graph capture, and real CUDA graphs + fp16 on a GPU (marked ``gpu``)."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from torch import nn

from engines.base import EngineError
from engines.torch_cuda_engine import GraphCache, TorchCudaEngine

needs_gpu = pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs a CUDA GPU (torch.cuda.is_available() is False)"
)


class TinyNet(nn.Module):
    """Conv + two heads: two outputs, so output naming and ordering are exercised."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.head_a = nn.Conv2d(8, 4, 1)
        self.head_b = nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        f = torch.relu(self.conv(x))
        return self.head_a(f), self.head_b(f.mean((2, 3)))


def expected(module: nn.Module, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    with torch.no_grad():
        a, b = module(torch.from_numpy(x))
    return a.numpy(), b.numpy()


def test_cpu_eager_matches_the_module_for_several_batch_sizes():
    ref = TinyNet()
    engine = TorchCudaEngine(TinyNet(), ("images",), ("a", "b"), device="cpu", fp16=False)
    rng = np.random.default_rng(0)
    for batch in (1, 3, 1, 5):
        x = rng.standard_normal((batch, 3, 16, 16)).astype(np.float32)
        out = engine.run({"images": x})
        want_a, want_b = expected(ref, x)
        assert out["a"].shape == (batch, 4, 16, 16) and out["b"].shape == (batch, 2)
        np.testing.assert_allclose(out["a"], want_a, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(out["b"], want_b, rtol=1e-5, atol=1e-5)
        assert engine.mode_for({"images": x}) == "eager"
    assert engine.graphs is None  # no CUDA graphs on the CPU


def test_bad_configuration_and_inputs_are_named():
    with pytest.raises(EngineError, match="fp16 needs a CUDA device"):
        TorchCudaEngine(TinyNet(), device="cpu", fp16=True)
    if not torch.cuda.is_available():
        with pytest.raises(EngineError, match="CUDA is not available"):
            TorchCudaEngine(TinyNet(), device="cuda")
    engine = TorchCudaEngine(TinyNet(), ("images",), ("a", "b"), device="cpu", fp16=False)
    with pytest.raises(EngineError, match=r"missing inputs \['images'\]"):
        engine.run({"x": np.zeros((1, 3, 8, 8), np.float32)})
    one_output = TorchCudaEngine(TinyNet(), ("images",), ("only",), device="cpu", fp16=False)
    with pytest.raises(EngineError, match="returned 2 outputs, expected 1"):
        one_output.run({"images": np.zeros((1, 3, 8, 8), np.float32)})


class CountingCapture:
    """Stands in for CUDA graph capture (the one part that needs a GPU): records calls, can fail."""

    def __init__(self, module: nn.Module, fail_for: set | None = None) -> None:
        self.module = module
        self.calls: list = []
        self.fail_for = fail_for or set()
        self.replays = 0

    def __call__(self, key, inputs):
        self.calls.append(key)
        if key in self.fail_for:
            raise RuntimeError("operation not permitted when stream is capturing")

        def runner(tensors):
            self.replays += 1
            with torch.no_grad():
                out = self.module(*tensors)
            return out if isinstance(out, tuple) else (out,)

        return runner


def test_graph_cache_captures_once_after_warmup_and_reuses():
    cap = CountingCapture(TinyNet())
    cache = GraphCache(cap, warmup=2)
    x = [torch.zeros(1, 3, 8, 8)]
    assert cache.runner_for("k1", x) is None  # warm-up 1
    assert cache.runner_for("k1", x) is None  # warm-up 2
    r = cache.runner_for("k1", x)
    assert r is not None and cap.calls == ["k1"]
    assert cache.runner_for("k1", x) is r and cap.calls == ["k1"]  # reused, not recaptured
    assert cache.mode("k1") == "graph" and cache.mode("k2") == "eager"


def test_graph_cache_capture_failure_stays_eager_and_warns_once(caplog):
    cap = CountingCapture(TinyNet(), fail_for={"bad"})
    cache = GraphCache(cap, warmup=0)
    x = [torch.zeros(1, 3, 8, 8)]
    with caplog.at_level(logging.WARNING, logger="engines.torch_cuda_engine"):
        for _ in range(4):
            assert cache.runner_for("bad", x) is None
    assert cap.calls == ["bad"]  # never retried
    assert cache.mode("bad") == "eager (capture failed)"
    warnings = [r for r in caplog.records if "capture failed" in r.getMessage()]
    assert len(warnings) == 1 and "not permitted" in warnings[0].getMessage()
    assert cache.runner_for("good", x) is not None  # other shapes still get graphs


def test_graph_cache_limits_the_number_of_graphs():
    cap = CountingCapture(TinyNet())
    cache = GraphCache(cap, warmup=0, max_graphs=2)
    x = [torch.zeros(1, 3, 8, 8)]
    assert cache.runner_for("a", x) is not None
    assert cache.runner_for("b", x) is not None
    assert cache.runner_for("c", x) is None
    assert len(cache.graphs) == 2 and cap.calls == ["a", "b"]


class CpuGraphEngine(TorchCudaEngine):
    """The engine with CPU stand-in capture, to test its use of the graph cache without a GPU."""

    def _graphs_supported(self) -> bool:
        return True

    def _capture(self, key, inputs):
        self.capture_keys = [*getattr(self, "capture_keys", []), key]
        if inputs[0].shape[0] == 4:
            raise RuntimeError("capture refused for batch 4")
        return CountingCapture(self.module)(key, inputs)


def test_engine_switches_to_graphs_per_signature_and_falls_back_on_failure():
    ref = TinyNet()
    engine = CpuGraphEngine(TinyNet(), ("images",), ("a", "b"), device="cpu", fp16=False, warmup=1)
    rng = np.random.default_rng(1)
    modes = []
    for batch in (2, 2, 2, 4, 4, 4, 2):
        x = rng.standard_normal((batch, 3, 8, 8)).astype(np.float32)
        out = engine.run({"images": x})
        np.testing.assert_allclose(out["a"], expected(ref, x)[0], rtol=1e-5, atol=1e-5)
        modes.append(engine.mode_for({"images": x}))
    assert modes == [
        "eager",
        "graph",
        "graph",
        "eager",
        "eager (capture failed)",
        "eager (capture failed)",
        "graph",
    ]
    assert [k[0][0][0] for k in engine.capture_keys] == [2, 4]  # one capture per signature


def test_run_torch_outputs_are_independent_copies():
    engine = CpuGraphEngine(TinyNet(), ("images",), ("a", "b"), device="cpu", fp16=False, warmup=0)
    x1 = torch.ones(1, 3, 8, 8)
    first = engine.run_torch({"images": x1})["b"]
    keep = first.clone()
    engine.run_torch({"images": torch.zeros(1, 3, 8, 8)})
    assert torch.equal(first, keep)


# ---- real GPU ----


@pytest.mark.gpu
@needs_gpu
def test_fp16_cuda_graphs_match_fp32_reference():
    ref = TinyNet()
    engine = TorchCudaEngine(TinyNet(), ("images",), ("a", "b"), device="cuda", fp16=True, warmup=2)
    rng = np.random.default_rng(2)
    for i in range(5):
        x = rng.standard_normal((8, 3, 32, 32)).astype(np.float32)
        out = engine.run({"images": x})
        want_a, want_b = expected(ref, x)
        np.testing.assert_allclose(out["a"], want_a, rtol=2e-2, atol=2e-2)
        np.testing.assert_allclose(out["b"], want_b, rtol=2e-2, atol=2e-2)
        assert engine.mode_for({"images": x}) == ("eager" if i < 2 else "graph")


class HostSyncNet(TinyNet):
    def forward(self, x):
        a, b = super().forward(x)
        if float(b.sum().item()) > 1e9:  # a host sync: not allowed while capturing a graph
            b = b * 0
        return a, b


@pytest.mark.gpu
@needs_gpu
def test_capture_failure_on_gpu_falls_back_to_eager():
    ref = TinyNet()
    engine = TorchCudaEngine(HostSyncNet(), ("images",), ("a", "b"), device="cuda", fp16=False, warmup=1)
    x = np.random.default_rng(3).standard_normal((2, 3, 16, 16)).astype(np.float32)
    for _ in range(3):
        out = engine.run({"images": x})
        np.testing.assert_allclose(out["b"], expected(ref, x)[1], rtol=1e-3, atol=1e-3)
    assert engine.mode_for({"images": x}) == "eager (capture failed)"
