"""Export an nn.Module to ONNX (dynamic batch axis), cached in the model cache.

The cache key is the sha256 of the module's parameters and buffers plus the input shape and opset, so
a changed cfg, weights file or input size gives a new file and an unchanged one is exported once.
Files live under ``<cache>/onnx/<name>-<key>.onnx`` (``<cache>`` as in engines/model_store.py). Models whose
sources are files (Darknet cfg + weights) are cached by engines/onnx_cache.py instead, keyed by the files'
bytes, so that a cached export is found without importing torch.
"""

from __future__ import annotations

import hashlib
import os
import warnings
from pathlib import Path

import torch
from torch import nn

from engines.base import EngineError
from engines.model_store import cache_dir
from engines.onnx_cache import DEFAULT_OPSET

__all__ = ["DEFAULT_OPSET", "export_onnx", "module_sha256"]


def module_sha256(module: nn.Module) -> str:
    """Digest of the module's state (names, shapes and values of parameters and buffers)."""
    h = hashlib.sha256()
    for name, t in module.state_dict().items():
        h.update(name.encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def export_onnx(
    module: nn.Module,
    input_shape: tuple[int, ...],
    path: str | Path | None = None,
    name: str = "model",
    opset: int = DEFAULT_OPSET,
    input_names: tuple[str, ...] = ("images",),
    output_names: tuple[str, ...] = ("output",),
    model_sha: str | None = None,
    dynamic_axes: dict[str, dict[int, str]] | None = None,
    metadata: dict[str, str] | None = None,
) -> Path:
    """Export ``module`` for inputs of ``input_shape`` (axis 0 = batch, exported as dynamic).

    ``dynamic_axes`` adds more dynamic axes per tensor name (e.g. a fully convolutional net's H and W).
    ``metadata`` goes into the file's ``metadata_props`` (e.g. how the model wants its input preprocessed,
    so that the .onnx file carries it wherever it is copied).

    Without ``path`` the file goes to the cache and is reused when it exists. Returns the file path.
    """
    if path is None:
        sha = model_sha or module_sha256(module)
        extra = sorted((k, sorted(v.items())) for k, v in (dynamic_axes or {}).items())
        meta = f"|{sorted(metadata.items())}" if metadata else ""
        key = hashlib.sha256(f"{sha}|{tuple(input_shape)}|opset{opset}|{extra}{meta}".encode()).hexdigest()[
            :16
        ]
        path = cache_dir() / "onnx" / f"{name}-{key}.onnx"
        if path.is_file():
            return path
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.part")
    dummy = torch.zeros(input_shape, dtype=torch.float32)
    axes = {n: {0: "batch", **(dynamic_axes or {}).get(n, {})} for n in (*input_names, *output_names)}
    module = module.eval().cpu().float()
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                module,
                (dummy,),
                str(tmp),
                dynamo=False,
                opset_version=opset,
                input_names=list(input_names),
                output_names=list(output_names),
                dynamic_axes=axes,
                do_constant_folding=True,
            )
        if metadata:
            import onnx

            model = onnx.load(str(tmp))
            for k, v in metadata.items():
                entry = model.metadata_props.add()
                entry.key, entry.value = k, v
            onnx.save(model, str(tmp))
    except Exception as exc:
        tmp.unlink(missing_ok=True)
        raise EngineError(f"ONNX export of {name} failed: {exc}") from exc
    os.replace(tmp, path)
    return path
