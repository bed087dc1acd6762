"""CUDA kernels shipped as source (``*.cu``) and compiled at run time with NVRTC (see runtime.py)."""

from pathlib import Path

KERNEL_DIR = Path(__file__).resolve().parent
NMS_KERNEL_SOURCE = KERNEL_DIR / "nms_kernel.cu"
