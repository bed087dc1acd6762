"""PyTorch backend: runs an nn.Module on CPU or CUDA under ``torch.inference_mode``."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch
from torch import nn

from engines.base import EngineError, InferenceEngine


class TorchEngine(InferenceEngine):
    """Wraps a module whose forward takes the inputs positionally and returns a tensor or a tuple of them.

    ``fp16`` (CUDA only) runs the module in half precision; outputs always come back as float32 NumPy.
    ``channels_last`` (NHWC) is the default on the CPU: oneDNN convolutions on plain NCHW tensors reorder
    data on every call; YOLOv3-tiny took 43 ms NHWC vs 59 ms NCHW here (benchmarks/bench_detectors.py).
    ``threads`` sets torch's intra-op thread count for this engine's calls (PyTorch's setting is
    process-wide, so it is applied before each run). On a CPU shared with other busy processes fewer
    threads can be much faster: OpenMP barriers spin when oversubscribed.
    The engine takes the module over: it is put in eval mode and moved to ``device``/dtype in place.
    """

    backend = "torch"

    def __init__(
        self,
        module: nn.Module,
        input_names: Sequence[str] = ("images",),
        output_names: Sequence[str] = ("output",),
        device: str = "cpu",
        fp16: bool = False,
        channels_last: bool | None = None,
        threads: int | None = None,
    ) -> None:
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise EngineError(f"torch backend: device {device!r} requested but CUDA is not available")
        if fp16 and not device.startswith("cuda"):
            raise EngineError("torch backend: fp16 is only supported on CUDA devices")
        self.threads = threads
        self.device = device
        self.fp16 = fp16
        if channels_last is None:
            channels_last = device == "cpu"
        self.channels_last = channels_last
        self._dtype = torch.float16 if fp16 else torch.float32
        module = module.eval().to(device=device, dtype=self._dtype)
        if channels_last:
            for m in module.modules():
                if isinstance(m, nn.Conv2d):
                    m.weight.data = m.weight.data.contiguous(memory_format=torch.channels_last)
        self.module = module
        self._inputs = list(input_names)
        self._outputs = list(output_names)

    def run(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        missing = [n for n in self._inputs if n not in inputs]
        if missing:
            raise EngineError(f"torch backend: missing inputs {missing}; expected {self._inputs}")
        tensors = []
        for name in self._inputs:
            t = torch.from_numpy(np.ascontiguousarray(inputs[name])).to(self.device, self._dtype)
            if self.channels_last and t.ndim == 4:
                t = t.contiguous(memory_format=torch.channels_last)
            tensors.append(t)
        if self.threads and torch.get_num_threads() != self.threads:
            torch.set_num_threads(self.threads)  # process-wide in PyTorch, so (re)applied per call
        with torch.inference_mode():
            out = self.module(*tensors)
        outs = out if isinstance(out, tuple | list) else (out,)
        if len(outs) != len(self._outputs):
            raise EngineError(
                f"torch backend: module returned {len(outs)} outputs, expected {len(self._outputs)} "
                f"({self._outputs})"
            )
        return {n: o.float().cpu().numpy() for n, o in zip(self._outputs, outs, strict=True)}

    def close(self) -> None:
        self.module = None
        if self.device.startswith("cuda"):
            torch.cuda.empty_cache()
