"""PyTorch engine for the GPU: FP16 weights, and one CUDA graph per input signature after warm-up.

A CUDA graph records the kernel launches of one forward pass and replays them with a single launch, removing
the per-layer Python and launch overhead that dominates small-batch inference. A graph is tied to fixed
input shapes and fixed memory, so the engine keeps, per (batch size, input shape, dtype) signature, static
input buffers (new inputs are copied in), the graph, and its static outputs (copied out after replay).

Each signature runs eagerly ``warmup`` times first (cuDNN autotuning, lazy allocations), then is captured.
A capture that fails (a module that syncs with the host, uses unsupported ops, ...) marks that signature
eager for good, with one warning. On the CPU there are no graphs: the engine runs eagerly in fp32, which is
how its logic is tested on machines without a GPU.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Hashable, Mapping, Sequence
from typing import Protocol

import numpy as np
import torch
from torch import nn

from engines.base import EngineError, InferenceEngine

log = logging.getLogger(__name__)

Signature = tuple[tuple[tuple[int, ...], str], ...]


class Runner(Protocol):
    def __call__(self, inputs: Sequence[torch.Tensor]) -> tuple[torch.Tensor, ...]: ...


class GraphCache:
    """Per-signature state: eager warm-up runs, then one capture; failures stay eager.

    ``capture(signature, inputs)`` returns a runner or raises. At most ``max_graphs`` graphs are kept (each
    holds its own memory); signatures beyond that run eagerly.
    """

    def __init__(
        self,
        capture: Callable[[Hashable, Sequence[torch.Tensor]], Runner],
        warmup: int = 2,
        max_graphs: int = 16,
    ) -> None:
        self._capture = capture
        self.warmup = warmup
        self.max_graphs = max_graphs
        self.graphs: dict[Hashable, Runner] = {}
        self.failed: dict[Hashable, str] = {}
        self._seen: dict[Hashable, int] = {}
        self._full_logged = False

    def runner_for(self, key: Hashable, inputs: Sequence[torch.Tensor]) -> Runner | None:
        """The graph runner for ``key``, capturing it when warm; None means "run eagerly this time"."""
        runner = self.graphs.get(key)
        if runner is not None:
            return runner
        if key in self.failed:
            return None
        seen = self._seen.get(key, 0) + 1
        self._seen[key] = seen
        if seen <= self.warmup:
            return None
        if len(self.graphs) >= self.max_graphs:
            if not self._full_logged:
                log.warning(
                    "cuda graphs: %d graphs captured already; new input shapes run eagerly", self.max_graphs
                )
                self._full_logged = True
            return None
        try:
            runner = self._capture(key, inputs)
        except Exception as exc:  # any capture failure means: this signature stays eager
            self.failed[key] = f"{type(exc).__name__}: {exc}"
            log.warning("cuda graphs: capture failed for inputs %s (%s); running them eagerly", key, exc)
            return None
        self.graphs[key] = runner
        log.info("cuda graphs: captured a graph for inputs %s", key)
        return runner

    def mode(self, key: Hashable) -> str:
        if key in self.graphs:
            return "graph"
        return "eager (capture failed)" if key in self.failed else "eager"


class _GraphRunner:
    """Replays one captured graph: copy into the static inputs, replay, hand back the static outputs."""

    def __init__(self, graph: torch.cuda.CUDAGraph, static_in: list[torch.Tensor], static_out: tuple) -> None:
        self.graph = graph
        self.static_in = static_in
        self.static_out = static_out

    def __call__(self, inputs: Sequence[torch.Tensor]) -> tuple[torch.Tensor, ...]:
        for dst, src in zip(self.static_in, inputs, strict=True):
            dst.copy_(src)
        self.graph.replay()
        return self.static_out


def _as_tuple(out: torch.Tensor | Sequence[torch.Tensor]) -> tuple[torch.Tensor, ...]:
    return tuple(out) if isinstance(out, tuple | list) else (out,)


class TorchCudaEngine(InferenceEngine):
    """An nn.Module on a CUDA device in fp16 with CUDA graphs; eager fp32 on the CPU.

    ``run`` follows the InferenceEngine contract (NumPy in, float32 NumPy out); ``run_torch`` takes and
    returns device tensors (outputs are fresh tensors, safe to keep across calls).
    """

    backend = "torch-cuda"

    def __init__(
        self,
        module: nn.Module,
        input_names: Sequence[str] = ("images",),
        output_names: Sequence[str] = ("output",),
        device: str = "cuda",
        fp16: bool = True,
        cuda_graphs: bool = True,
        warmup: int = 2,
        max_graphs: int = 16,
    ) -> None:
        dev = torch.device(device)
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise EngineError(f"torch-cuda engine: device {device!r} requested but CUDA is not available")
        if dev.type not in ("cuda", "cpu"):
            raise EngineError(f"torch-cuda engine: unsupported device {device!r}; use cuda[:N] or cpu")
        if fp16 and dev.type != "cuda":
            raise EngineError("torch-cuda engine: fp16 needs a CUDA device; use fp16=False on the CPU")
        if dev.type == "cuda" and dev.index is None:
            dev = torch.device("cuda", torch.cuda.current_device())
        self.torch_device = dev
        self.device = str(dev)
        self.fp16 = fp16
        self.dtype = torch.float16 if fp16 else torch.float32
        self.module = module.eval().to(device=dev, dtype=self.dtype)
        self._inputs = list(input_names)
        self._outputs = list(output_names)
        self._lock = threading.Lock()
        self.graphs: GraphCache | None = None
        if cuda_graphs and self._graphs_supported():
            self.graphs = GraphCache(self._capture, warmup=warmup, max_graphs=max_graphs)

    def _graphs_supported(self) -> bool:
        return self.torch_device.type == "cuda"

    @staticmethod
    def signature(tensors: Sequence[torch.Tensor]) -> Signature:
        return tuple((tuple(t.shape), str(t.dtype)) for t in tensors)

    def mode_for(self, inputs: Mapping[str, np.ndarray | torch.Tensor]) -> str:
        """How inputs of these shapes run now: "graph", "eager" or "eager (capture failed)"."""
        if self.graphs is None:
            return "eager"
        sig = tuple((tuple(inputs[n].shape), str(self.dtype)) for n in self._inputs)
        return self.graphs.mode(sig)

    def _eager(self, tensors: Sequence[torch.Tensor]) -> tuple[torch.Tensor, ...]:
        return _as_tuple(self.module(*tensors))

    def _capture(self, key: Hashable, inputs: Sequence[torch.Tensor]) -> Runner:
        static_in = [t.clone() for t in inputs]
        side = torch.cuda.Stream(self.torch_device)
        side.wait_stream(torch.cuda.current_stream(self.torch_device))
        with torch.cuda.stream(side):  # warm-up on a side stream, as torch.cuda.graphs recommends
            self._eager(static_in)
        torch.cuda.current_stream(self.torch_device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            static_out = self._eager(static_in)
        return _GraphRunner(graph, static_in, static_out)

    def run_torch(self, inputs: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        missing = [n for n in self._inputs if n not in inputs]
        if missing:
            raise EngineError(f"torch-cuda engine: missing inputs {missing}; expected {self._inputs}")
        tensors = [inputs[n].to(self.torch_device, self.dtype).contiguous() for n in self._inputs]
        with self._lock, torch.inference_mode():
            runner = self.graphs.runner_for(self.signature(tensors), tensors) if self.graphs else None
            # a graph's static outputs are overwritten by its next replay, so hand out copies
            outs = tuple(o.clone() for o in runner(tensors)) if runner else self._eager(tensors)
        if len(outs) != len(self._outputs):
            raise EngineError(
                f"torch-cuda engine: module returned {len(outs)} outputs, expected {len(self._outputs)} "
                f"({self._outputs})"
            )
        return dict(zip(self._outputs, outs, strict=True))

    def run(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        missing = [n for n in self._inputs if n not in inputs]
        if missing:
            raise EngineError(f"torch-cuda engine: missing inputs {missing}; expected {self._inputs}")
        tensors = {n: torch.from_numpy(np.ascontiguousarray(inputs[n])) for n in self._inputs}
        outs = self.run_torch(tensors)
        return {n: o.float().cpu().numpy() for n, o in outs.items()}

    def close(self) -> None:
        self.graphs = None
        self.module = None
        if self.torch_device.type == "cuda":
            torch.cuda.empty_cache()
