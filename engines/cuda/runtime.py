"""Compile ``.cu`` sources with NVRTC and launch their kernels with the CUDA driver API.

Uses NVIDIA's ``cuda-bindings`` package (``cuda.bindings.nvrtc`` / ``cuda.bindings.driver``), which the
CUDA builds of PyTorch already install, so no extra runtime (CuPy, a compiler toolchain) is needed where a
GPU and PyTorch with CUDA are. Kernels are launched on PyTorch's current stream with the tensors'
``data_ptr()`` values: no copies, and ordering with surrounding PyTorch work is kept.

Compilation (``compile_cubin``) needs no GPU and is what the CPU test suite checks; loading and launching do.
"""

from __future__ import annotations

import ctypes
import threading
from collections.abc import Sequence
from pathlib import Path

from engines.base import EngineError

# --fmad=false: no fused multiply-add contraction, so float results match the CPU reference bit for bit.
DEFAULT_OPTIONS = ("--fmad=false", "-std=c++17")


def _check(result: tuple | object, what: str) -> tuple:
    """cuda-bindings return (status, *values); raise EngineError naming the call when status is not 0."""
    res = result if isinstance(result, tuple) else (result,)
    status = res[0]
    if int(status) != 0:
        raise EngineError(f"CUDA: {what} failed with {status!r}")
    return res[1:]


def nvrtc_version() -> tuple[int, int]:
    from cuda.bindings import nvrtc

    major, minor = _check(nvrtc.nvrtcVersion(), "nvrtcVersion")
    return int(major), int(minor)


def compile_cubin(source_path: Path, arch: str, options: Sequence[str] = DEFAULT_OPTIONS) -> bytes:
    """Compile a ``.cu`` file to a CUBIN for ``arch`` (e.g. ``"sm_90"``). Raises EngineError with the log."""
    from cuda.bindings import nvrtc

    source = Path(source_path).read_bytes()
    (prog,) = _check(
        nvrtc.nvrtcCreateProgram(source, Path(source_path).name.encode(), 0, [], []), "nvrtcCreateProgram"
    )
    try:
        opts = [f"--gpu-architecture={arch}".encode(), *(o.encode() for o in options)]
        (status,) = nvrtc.nvrtcCompileProgram(prog, len(opts), opts)
        (log_size,) = _check(nvrtc.nvrtcGetProgramLogSize(prog), "nvrtcGetProgramLogSize")
        # NVRTC writes into the buffer it is given: it must be a fresh, writable one. (A bytes object such as
        # b" " * 1 is CPython's shared one-byte singleton; writing into it corrupts the whole process.)
        log = bytearray(int(log_size))
        _check(nvrtc.nvrtcGetProgramLog(prog, log), "nvrtcGetProgramLog")
        log_text = bytes(log).rstrip(b"\x00 ").decode(errors="replace")
        if int(status) != 0:
            raise EngineError(f"NVRTC could not compile {source_path} for {arch}: {status!r}\n{log_text}")
        (size,) = _check(nvrtc.nvrtcGetCUBINSize(prog), "nvrtcGetCUBINSize")
        cubin = bytearray(int(size))
        _check(nvrtc.nvrtcGetCUBIN(prog, cubin), "nvrtcGetCUBIN")
        return bytes(cubin)
    finally:
        nvrtc.nvrtcDestroyProgram(prog)


class CudaModule:
    """A compiled ``.cu`` file loaded into the primary context of one CUDA device (the one PyTorch uses)."""

    def __init__(self, source_path: Path, device_index: int, kernel_names: Sequence[str]) -> None:
        import torch
        from cuda.bindings import driver

        self._driver = driver
        major, minor = torch.cuda.get_device_capability(device_index)
        self.arch = f"sm_{major}{minor}"
        cubin = compile_cubin(source_path, self.arch)
        _check(driver.cuInit(0), "cuInit")
        (dev,) = _check(driver.cuDeviceGet(device_index), "cuDeviceGet")
        (self._ctx,) = _check(driver.cuDevicePrimaryCtxRetain(dev), "cuDevicePrimaryCtxRetain")
        self.make_current()
        (self._module,) = _check(driver.cuModuleLoadData(cubin), f"cuModuleLoadData({source_path})")
        self._functions = {
            name: _check(
                driver.cuModuleGetFunction(self._module, name.encode()), f"cuModuleGetFunction({name})"
            )[0]
            for name in kernel_names
        }

    def make_current(self) -> None:
        _check(self._driver.cuCtxSetCurrent(self._ctx), "cuCtxSetCurrent")

    def launch(
        self,
        name: str,
        grid: tuple[int, int, int],
        block: tuple[int, int, int],
        args: Sequence[tuple[object, type]],
        stream_handle: int,
        shared_bytes: int = 0,
    ) -> None:
        """Launch ``name``; ``args`` are (value, ctypes type) pairs; pointers as (int, ctypes.c_void_p)."""
        driver = self._driver
        self.make_current()
        values = tuple(v for v, _ in args)
        types = tuple(t for _, t in args)
        _check(
            driver.cuLaunchKernel(
                self._functions[name],
                *grid,
                *block,
                shared_bytes,
                driver.CUstream(stream_handle),
                (values, types),
                0,
            ),
            f"cuLaunchKernel({name}, grid={grid}, block={block})",
        )


_modules: dict[tuple[str, int], CudaModule] = {}
_lock = threading.Lock()


def get_module(source_path: Path, device_index: int, kernel_names: Sequence[str]) -> CudaModule:
    """The loaded module for (source, device), compiled once per process."""
    key = (str(source_path), device_index)
    with _lock:
        mod = _modules.get(key)
        if mod is None:
            try:
                mod = CudaModule(source_path, device_index, kernel_names)
            except EngineError:
                raise
            except Exception as exc:  # driver library missing, no device, ...: say which kernel file failed
                raise EngineError(
                    f"cannot load CUDA kernels from {source_path} on cuda:{device_index}: {exc}"
                ) from exc
            _modules[key] = mod
        return mod


POINTER = ctypes.c_void_p
INT = ctypes.c_int
DOUBLE = ctypes.c_double
