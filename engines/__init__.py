"""Inference backends behind one interface (PyTorch, ONNX Runtime, TensorRT), plus the model store.

``create_engine`` builds the right one from a module or an ``.onnx`` file.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from engines.base import EngineError, InferenceEngine

if TYPE_CHECKING:
    from torch import nn

BACKENDS = ("torch", "onnxruntime", "tensorrt")


def create_engine(
    model: nn.Module | str | Path,
    backend: str = "onnxruntime",
    device: str = "cpu",
    input_shape: tuple[int, ...] | None = None,
    threads: int | None = None,
    fp16: bool = False,
    name: str = "model",
    input_names: tuple[str, ...] = ("images",),
    output_names: tuple[str, ...] = ("output",),
    metadata: dict[str, str] | None = None,
) -> InferenceEngine:
    """An engine for ``model`` (an nn.Module, or a path to an ``.onnx`` file) on ``backend``.

    A module given to ``onnxruntime``/``tensorrt`` is first exported to ONNX (cached; needs
    ``input_shape``; ``metadata`` is written into the exported file). An ``.onnx`` file cannot run on the
    ``torch`` backend.
    """
    if backend not in BACKENDS:
        raise EngineError(f"unknown backend {backend!r}; use one of {', '.join(BACKENDS)}")
    is_file = isinstance(model, str | Path)
    if backend == "torch":
        if is_file:
            raise EngineError(
                f"the torch backend runs PyTorch modules, not ONNX files ({model}); use backend onnxruntime"
            )
        from engines.torch_engine import TorchEngine

        return TorchEngine(model, input_names, output_names, device=device, fp16=fp16, threads=threads)
    if is_file:
        onnx_path = Path(model)
    else:
        if input_shape is None:
            raise EngineError(f"exporting {name} to ONNX needs an input_shape")
        from engines.export import export_onnx

        onnx_path = export_onnx(
            model,
            input_shape,
            name=name,
            input_names=input_names,
            output_names=output_names,
            metadata=metadata,
        )
    if backend == "onnxruntime":
        from engines.onnx_engine import OnnxRuntimeEngine

        return OnnxRuntimeEngine(onnx_path, threads=threads, device=device)
    # TensorRT when it and a GPU are there; otherwise the torch CUDA engine (for a module on a GPU) or ONNX
    # Runtime on the CPU, with one WARNING line saying why (engines/tensorrt_engine.py: create_gpu_engine).
    from engines.tensorrt_engine import create_gpu_engine

    return create_gpu_engine(
        onnx_path,
        module=None if is_file else model,
        fp16=fp16,
        input_names=input_names,
        output_names=output_names,
        threads=threads,
    )


__all__ = ["BACKENDS", "EngineError", "InferenceEngine", "create_engine"]
