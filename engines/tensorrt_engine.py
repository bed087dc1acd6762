"""TensorRT backend: ONNX -> serialized engine (FP16, optional INT8, dynamic-batch profile), cached on disk,
run through the TensorRT 10 Python API on PyTorch CUDA buffers.

Cache: one plan file per model under ``<cache>/tensorrt/`` with a JSON sidecar holding the cache key --
the model file's sha256, the TensorRT version, the GPU name, the precision and the batch profile (min, opt,
max). A plan is used only when every field matches and the plan's own sha256 is intact; otherwise it is
rebuilt and the log says which field changed. Plans are not portable across GPUs or TensorRT versions,
which is why those are in the key.

Inference: inputs become CUDA tensors, ``set_input_shape`` + ``set_tensor_address(data_ptr())`` for every
I/O tensor, ``execute_async_v3`` on ``torch.cuda.current_stream()``. ``run_torch`` keeps everything on the
device; ``run`` (the InferenceEngine contract) takes and returns NumPy.

``create_gpu_engine`` is the entry point for "run this on the GPU as fast as possible": TensorRT when it is
installed and a GPU is present, else the torch CUDA engine (when a module is given and CUDA works), else
ONNX Runtime on the CPU -- with one log line saying why.

Nothing in this module has been run on a GPU yet (see docs/gpu.md); the cache and fallback logic is tested.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from engines.base import EngineError, InferenceEngine
from engines.model_store import sha256_file

if TYPE_CHECKING:
    import torch
    from torch import nn

log = logging.getLogger(__name__)

PRECISIONS = ("fp32", "fp16", "int8")
DEFAULT_WORKSPACE_BYTES = 2 << 30


@dataclass(frozen=True)
class BatchProfile:
    """The batch sizes a dynamic-batch engine accepts (min..max) and is tuned for (opt)."""

    min: int = 1
    opt: int = 8
    max: int = 32

    def __post_init__(self) -> None:
        if not 1 <= self.min <= self.opt <= self.max:
            raise EngineError(f"tensorrt batch profile needs 1 <= min <= opt <= max, got {self}")

    def as_tuple(self) -> tuple[int, int, int]:
        return (self.min, self.opt, self.max)


@dataclass(frozen=True)
class EngineCacheKey:
    """Everything a serialized TensorRT engine depends on."""

    model_sha256: str
    tensorrt_version: str
    gpu_name: str
    precision: str
    batch_profile: tuple[int, int, int]

    def fields(self) -> dict[str, Any]:
        d = asdict(self)
        d["batch_profile"] = list(self.batch_profile)
        return d

    def digest(self) -> str:
        """sha256 of the canonical JSON of the fields (stable across runs and machines)."""
        return hashlib.sha256(json.dumps(self.fields(), sort_keys=True).encode()).hexdigest()


class EngineCache:
    """Plan files on disk, rebuilt when the key does not match. ``build`` is injected (testable without TRT)."""

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)

    def paths(self, name: str) -> tuple[Path, Path]:
        return self.directory / f"{name}.plan", self.directory / f"{name}.plan.json"

    def stale_reason(self, name: str, key: EngineCacheKey) -> str | None:
        """None when the cached plan for ``name`` matches ``key``; otherwise why it cannot be used."""
        plan, meta_path = self.paths(name)
        if not plan.is_file() or not meta_path.is_file():
            return "no cached engine"
        try:
            meta = json.loads(meta_path.read_text())
        except (OSError, ValueError) as exc:
            return f"unreadable cache metadata {meta_path} ({exc})"
        cached = meta.get("key", {}) if isinstance(meta, dict) else {}
        changed = [
            f"{field} {cached.get(field)!r} -> {value!r}"
            for field, value in key.fields().items()
            if cached.get(field) != value
        ]
        if changed:
            return "key changed: " + ", ".join(changed)
        if sha256_file(plan) != meta.get("plan_sha256"):
            return f"plan file {plan} does not match its recorded sha256 (corrupt or truncated)"
        return None

    def load_or_build(self, name: str, key: EngineCacheKey, build: Callable[[], bytes]) -> tuple[bytes, bool]:
        """(plan bytes, built_now). Builds and stores the plan when the cache cannot be used."""
        plan_path, meta_path = self.paths(name)
        reason = self.stale_reason(name, key)
        if reason is None:
            log.debug("tensorrt: using cached engine %s", plan_path)
            return plan_path.read_bytes(), False
        log.info("tensorrt: building engine %s (%s); this can take minutes", plan_path, reason)
        plan = build()
        if not plan:
            raise EngineError(f"tensorrt: building the engine for {name} produced no plan")
        self.store(name, key, bytes(plan))
        return bytes(plan), True

    def store(self, name: str, key: EngineCacheKey, plan: bytes) -> None:
        plan_path, meta_path = self.paths(name)
        self.directory.mkdir(parents=True, exist_ok=True)
        meta = {
            "key": key.fields(),
            "key_sha256": key.digest(),
            "plan_sha256": hashlib.sha256(plan).hexdigest(),
        }
        for path, data in ((plan_path, plan), (meta_path, json.dumps(meta, indent=2).encode())):
            tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
            tmp.write_bytes(data)
            os.replace(tmp, path)  # atomic: a concurrent reader sees the old or the new file, never half

    def invalidate(self, name: str) -> None:
        for p in self.paths(name):
            p.unlink(missing_ok=True)


def default_cache_dir() -> Path:
    from engines.model_store import cache_dir

    return cache_dir() / "tensorrt"


def onnx_input_shapes(onnx_path: str | Path) -> dict[str, tuple[int | None, ...]]:
    """Graph inputs (initializers excluded) and their dims; None for a dynamic dim."""
    import onnx

    model = onnx.load(str(onnx_path), load_external_data=False)
    inits = {i.name for i in model.graph.initializer}
    shapes = {}
    for inp in model.graph.input:
        if inp.name in inits:
            continue
        dims = inp.type.tensor_type.shape.dim
        shapes[inp.name] = tuple(d.dim_value if d.HasField("dim_value") else None for d in dims)
    return shapes


def effective_profile(onnx_path: str | Path, wanted: BatchProfile) -> BatchProfile:
    """The profile the engine can have: a model exported with a fixed batch gets exactly that batch."""
    shapes = onnx_input_shapes(onnx_path)
    for name, shape in shapes.items():
        if not shape:
            raise EngineError(
                f"tensorrt: input {name!r} of {onnx_path} is a scalar; expected a batched tensor"
            )
        if any(d is None for d in shape[1:]):
            raise EngineError(
                f"tensorrt: input {name!r} of {onnx_path} has dynamic non-batch dims {shape}; "
                "export it with a fixed input size"
            )
    fixed = {shape[0] for shape in shapes.values() if shape[0] is not None}
    if fixed:
        b = fixed.pop()
        if (b, b, b) != wanted.as_tuple():
            log.info("tensorrt: %s has a fixed batch of %d; batch profile %s ignored", onnx_path, b, wanted)
        return BatchProfile(b, b, b)
    return wanted


def check_precision_supported(trt: Any, precision: str, onnx_path: str | Path) -> None:
    """Reject precisions this TensorRT cannot build, before any work.

    TensorRT 11 removed the weak-typing builder flags (FP16, INT8) and implicit INT8 calibration: networks
    are strongly typed, so reduced precision has to be in the ONNX file itself.
    """
    if precision not in PRECISIONS:
        raise EngineError(f"tensorrt precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    flag = {"fp16": "FP16", "int8": "INT8"}.get(precision)
    if flag and not hasattr(trt.BuilderFlag, flag):
        raise EngineError(
            f"tensorrt {trt.__version__} has no {flag} builder flag (TensorRT 11 builds strongly typed networks "
            f"only), so {onnx_path} cannot be built as {precision}: convert the ONNX file to {precision} "
            "first and build it with fp16=False, or install TensorRT 10 (tensorrt-cu13>=10.13,<11)"
        )


def build_serialized_engine(
    onnx_path: str | Path,
    precision: str = "fp16",
    profile: BatchProfile | None = None,
    workspace_bytes: int = DEFAULT_WORKSPACE_BYTES,
    calibrator: Any = None,
) -> bytes:
    """Parse ONNX and build a serialized engine (TensorRT 10 Python API)."""
    import tensorrt as trt

    check_precision_supported(trt, precision, onnx_path)
    profile = profile or BatchProfile()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)  # explicit batch is the only mode in TensorRT 10
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(Path(onnx_path).read_bytes()):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise EngineError(f"tensorrt could not parse {onnx_path}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_bytes)
    if precision in ("fp16", "int8"):
        config.set_flag(trt.BuilderFlag.FP16)
    if precision == "int8":
        if calibrator is None:
            raise EngineError(f"tensorrt int8 for {onnx_path} needs a calibrator (see make_int8_calibrator)")
        config.set_flag(trt.BuilderFlag.INT8)
        config.int8_calibrator = calibrator
    opt = builder.create_optimization_profile()
    dynamic = False
    for i in range(network.num_inputs):
        tensor = network.get_input(i)
        shape = tuple(tensor.shape)
        if shape[0] == -1:
            dynamic = True
            rest = shape[1:]
            opt.set_shape(tensor.name, (profile.min, *rest), (profile.opt, *rest), (profile.max, *rest))
    if dynamic:
        config.add_optimization_profile(opt)
        if precision == "int8":
            config.set_calibration_profile(opt)
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise EngineError(f"tensorrt failed to build an engine for {onnx_path} (see the TensorRT log above)")
    return bytes(plan)


def make_int8_calibrator(batches: Iterable[np.ndarray], input_name: str, cache_file: str | Path) -> Any:
    """An entropy calibrator over representative float32 batches (all of one shape), caching its table."""
    import tensorrt as trt
    import torch

    class _Calibrator(trt.IInt8EntropyCalibrator2):
        def __init__(self) -> None:
            trt.IInt8EntropyCalibrator2.__init__(self)
            self._batches = iter(batches)
            self._current: torch.Tensor | None = None
            self._batch_size = 1
            self._cache = Path(cache_file)

        def get_batch_size(self) -> int:
            return self._batch_size

        def get_batch(self, names: Sequence[str]) -> list[int] | None:
            arr = next(self._batches, None)
            if arr is None:
                return None
            self._batch_size = int(arr.shape[0])
            self._current = torch.from_numpy(np.ascontiguousarray(arr, np.float32)).cuda()
            return [int(self._current.data_ptr()) if n == input_name else 0 for n in names]

        def read_calibration_cache(self) -> bytes | None:
            return self._cache.read_bytes() if self._cache.is_file() else None

        def write_calibration_cache(self, cache: bytes) -> None:
            self._cache.parent.mkdir(parents=True, exist_ok=True)
            self._cache.write_bytes(bytes(cache))

    return _Calibrator()


def _torch_dtype(trt_dtype: Any) -> torch.dtype:
    import tensorrt as trt
    import torch

    table = {
        trt.DataType.FLOAT: torch.float32,
        trt.DataType.HALF: torch.float16,
        trt.DataType.INT32: torch.int32,
        trt.DataType.INT8: torch.int8,
        trt.DataType.BOOL: torch.bool,
    }
    if hasattr(trt.DataType, "INT64"):
        table[trt.DataType.INT64] = torch.int64
    if trt_dtype not in table:
        raise EngineError(f"tensorrt: unsupported I/O tensor type {trt_dtype}")
    return table[trt_dtype]


class TensorRTEngine(InferenceEngine):
    """A TensorRT engine for one ONNX model on one CUDA device (see the module docstring)."""

    backend = "tensorrt"

    def __init__(
        self,
        onnx_path: str | Path,
        device: str = "cuda",
        fp16: bool = True,
        int8: bool = False,
        calibrator: Any = None,
        batch_profile: BatchProfile | None = None,
        cache_dir: str | Path | None = None,
        workspace_bytes: int = DEFAULT_WORKSPACE_BYTES,
    ) -> None:
        reason = tensorrt_unavailable_reason()
        if reason:
            raise EngineError(f"tensorrt backend for {onnx_path}: {reason}")
        if not str(device).startswith("cuda"):
            raise EngineError(f"tensorrt backend runs on CUDA devices only; got device {device!r}")
        import tensorrt as trt
        import torch

        self.onnx_path = Path(onnx_path)
        if not self.onnx_path.is_file():
            raise EngineError(f"ONNX model not found: {self.onnx_path}")
        self.torch_device = torch.device(device)
        if self.torch_device.index is None:
            self.torch_device = torch.device("cuda", torch.cuda.current_device())
        self.device = str(self.torch_device)
        self.precision = "int8" if int8 else ("fp16" if fp16 else "fp32")
        self.profile = effective_profile(self.onnx_path, batch_profile or BatchProfile())
        self.cache = EngineCache(cache_dir or default_cache_dir())
        self.key = EngineCacheKey(
            model_sha256=sha256_file(self.onnx_path),
            tensorrt_version=trt.__version__,
            gpu_name=torch.cuda.get_device_name(self.torch_device),
            precision=self.precision,
            batch_profile=self.profile.as_tuple(),
        )
        self.cache_name = f"{self.onnx_path.stem}-{self.precision}"

        def build() -> bytes:
            with torch.cuda.device(self.torch_device):
                return build_serialized_engine(
                    self.onnx_path, self.precision, self.profile, workspace_bytes, calibrator
                )

        self._logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._logger)
        plan, built = self.cache.load_or_build(self.cache_name, self.key, build)
        with torch.cuda.device(self.torch_device):
            engine = self._runtime.deserialize_cuda_engine(plan)
            if engine is None and not built:  # e.g. a plan the installed TensorRT cannot read: rebuild once
                log.warning("tensorrt: cached engine for %s did not deserialize; rebuilding", self.onnx_path)
                self.cache.invalidate(self.cache_name)
                plan, _ = self.cache.load_or_build(self.cache_name, self.key, build)
                engine = self._runtime.deserialize_cuda_engine(plan)
            if engine is None:
                raise EngineError(f"tensorrt could not deserialize the engine built for {self.onnx_path}")
            self._engine = engine
            self._context = engine.create_execution_context()
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        self._inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self._outputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        self._dtypes = {n: _torch_dtype(engine.get_tensor_dtype(n)) for n in names}
        self._lock = threading.Lock()  # one execution context: one inference at a time

    def input_shape(self) -> tuple[int | None, ...]:
        """The first input's shape, None for dynamic dims (the batch)."""
        shape = tuple(self._engine.get_tensor_shape(self._inputs[0]))
        return tuple(None if d < 0 else int(d) for d in shape)

    def run_torch(self, inputs: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Inference on device tensors, enqueued on the current stream; outputs stay on the device."""
        import torch

        missing = [n for n in self._inputs if n not in inputs]
        if missing:
            raise EngineError(
                f"tensorrt {self.onnx_path.name}: missing inputs {missing}; expected {self._inputs}"
            )
        with self._lock, torch.cuda.device(self.torch_device):
            stream = torch.cuda.current_stream(self.torch_device)
            staged = {}
            for name in self._inputs:
                t = inputs[name].to(self.torch_device, self._dtypes[name]).contiguous()
                batch = int(t.shape[0])
                if not self.profile.min <= batch <= self.profile.max:
                    raise EngineError(
                        f"tensorrt {self.onnx_path.name}: batch {batch} outside the engine's profile "
                        f"{self.profile.min}..{self.profile.max}"
                    )
                if not self._context.set_input_shape(name, tuple(t.shape)):
                    raise EngineError(
                        f"tensorrt {self.onnx_path.name}: input {name} rejects shape {tuple(t.shape)}"
                    )
                self._context.set_tensor_address(name, t.data_ptr())
                staged[name] = t
            outputs = {}
            for name in self._outputs:
                shape = tuple(self._context.get_tensor_shape(name))
                out = torch.empty(shape, dtype=self._dtypes[name], device=self.torch_device)
                self._context.set_tensor_address(name, out.data_ptr())
                outputs[name] = out
            if not self._context.execute_async_v3(stream.cuda_stream):
                raise EngineError(f"tensorrt {self.onnx_path.name}: execute_async_v3 failed")
        return outputs

    def run(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        import torch

        tensors = {n: torch.from_numpy(np.ascontiguousarray(inputs[n])) for n in self._inputs if n in inputs}
        outs = self.run_torch(tensors)
        return {n: o.float().cpu().numpy() for n, o in outs.items()}

    def close(self) -> None:
        self._context = None
        self._engine = None


def tensorrt_unavailable_reason() -> str | None:
    """Why TensorRT cannot be used here, or None when it can."""
    try:
        import tensorrt  # noqa: F401
    except ImportError as exc:
        return f"tensorrt is not installed ({exc}); install the gpu extra: pip install 'vidpipe[gpu]'"
    import torch

    if not torch.cuda.is_available():
        return "no CUDA GPU is available (torch.cuda.is_available() is False)"
    return None


def create_gpu_engine(
    onnx_path: str | Path,
    module: nn.Module | None = None,
    fp16: bool = True,
    batch_profile: BatchProfile | None = None,
    cache_dir: str | Path | None = None,
    input_names: Sequence[str] = ("images",),
    output_names: Sequence[str] = ("output",),
    threads: int | None = None,
) -> InferenceEngine:
    """TensorRT if possible; else the torch CUDA engine (needs ``module`` and a GPU); else ONNX Runtime (CPU).

    Falling back logs exactly one WARNING line naming the model, the reason and the backend chosen.
    """
    reason = tensorrt_unavailable_reason()
    if reason is None:
        return TensorRTEngine(onnx_path, fp16=fp16, batch_profile=batch_profile, cache_dir=cache_dir)
    import torch

    if module is not None and torch.cuda.is_available():
        from engines.torch_cuda_engine import TorchCudaEngine

        engine: InferenceEngine = TorchCudaEngine(
            module, input_names, output_names, device="cuda", fp16=fp16, cuda_graphs=True
        )
        chosen = f"torch CUDA ({'fp16' if fp16 else 'fp32'}, CUDA graphs)"
    else:
        from engines.onnx_engine import OnnxRuntimeEngine

        engine = OnnxRuntimeEngine(onnx_path, threads=threads)
        chosen = "onnxruntime on the CPU"
    log.warning("tensorrt unavailable for %s: %s; falling back to %s", onnx_path, reason, chosen)
    return engine
