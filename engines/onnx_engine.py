"""ONNX Runtime backend (CPU execution provider)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np

from engines.base import EngineError, InferenceEngine

_OPT_LEVELS = {
    "disable": "ORT_DISABLE_ALL",
    "basic": "ORT_ENABLE_BASIC",
    "extended": "ORT_ENABLE_EXTENDED",
    "all": "ORT_ENABLE_ALL",
}


class OnnxRuntimeEngine(InferenceEngine):
    """An ONNX model in an ``onnxruntime.InferenceSession`` on the CPU.

    ``threads`` sets intra-op threads (None = ORT's default, one per physical core); inter-op stays 1
    (sequential execution is fastest for these single-path CNNs). ``graph_optimization`` is one of
    disable/basic/extended/all. ``spin=False`` stops idle intra-op threads from busy-waiting.
    """

    backend = "onnxruntime"

    def __init__(
        self,
        model_path: str | Path,
        threads: int | None = None,
        graph_optimization: str = "all",
        device: str = "cpu",
        spin: bool = True,
    ) -> None:
        import onnxruntime as ort

        self.model_path = Path(model_path)
        if device != "cpu":
            raise EngineError(f"onnxruntime backend runs on the CPU here; got device {device!r}")
        if graph_optimization not in _OPT_LEVELS:
            raise EngineError(
                f"graph_optimization must be one of {', '.join(_OPT_LEVELS)}, got {graph_optimization!r}"
            )
        if not self.model_path.is_file():
            raise EngineError(f"ONNX model not found: {self.model_path}")
        opts = ort.SessionOptions()
        opts.graph_optimization_level = getattr(ort.GraphOptimizationLevel, _OPT_LEVELS[graph_optimization])
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.inter_op_num_threads = 1
        if threads:
            opts.intra_op_num_threads = threads
        if not spin:  # idle worker threads sleep instead of spinning: kinder to a shared CPU
            opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        try:
            self.session = ort.InferenceSession(
                str(self.model_path), sess_options=opts, providers=["CPUExecutionProvider"]
            )
        except Exception as exc:  # onnxruntime raises its own exception types
            raise EngineError(f"cannot load ONNX model {self.model_path}: {exc}") from None
        self.device = "cpu"
        self._inputs = [i.name for i in self.session.get_inputs()]
        self._outputs = [o.name for o in self.session.get_outputs()]

    def input_shape(self, name: str | None = None) -> list[int | str | None]:
        """Declared shape of an input (symbolic dims come back as strings)."""
        for i in self.session.get_inputs():
            if name is None or i.name == name:
                return list(i.shape)
        raise EngineError(f"{self.model_path}: no input named {name!r}; inputs: {self._inputs}")

    def run(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        missing = [n for n in self._inputs if n not in inputs]
        if missing:
            raise EngineError(f"{self.model_path}: missing inputs {missing}; expected {self._inputs}")
        feed = {n: np.ascontiguousarray(inputs[n], dtype=np.float32) for n in self._inputs}
        try:
            outs = self.session.run(self._outputs, feed)
        except Exception as exc:
            raise EngineError(f"{self.model_path}: inference failed: {exc}") from None
        return dict(zip(self._outputs, outs, strict=True))

    def close(self) -> None:
        self.session = None
