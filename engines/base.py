"""The one interface every inference backend implements.

An engine runs a fixed network: named float32 NumPy inputs in, named NumPy outputs out. Pre- and
post-processing (letterbox, decoding, NMS) live with the detector, not here, so every backend of a model
produces comparable raw outputs and can be checked against the others.

Backends: ``torch`` (CPU / CUDA, engines/torch_engine.py), ``onnxruntime`` (CPU,
engines/onnx_engine.py), ``tensorrt`` (GPU, optional extra, engines/tensorrt_engine.py).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence

import numpy as np


class EngineError(RuntimeError):
    """An engine could not be built or run; the message names the model file and what went wrong."""


class InferenceEngine(ABC):
    backend: str = "?"
    device: str = "cpu"
    # Set by each backend's constructor: the network's input and output tensor names, in order.
    _inputs: list[str]
    _outputs: list[str]

    @property
    def input_names(self) -> list[str]:
        return self._inputs

    @property
    def output_names(self) -> list[str]:
        return self._outputs

    def input_shape(self) -> Sequence[int | str | None] | None:
        """The first input's declared shape (symbolic dims as strings), or None where the backend
        does not fix one (a PyTorch module takes any shape)."""
        return None

    @abstractmethod
    def run(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run one forward pass. Inputs are batched along axis 0."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release device memory / sessions."""
