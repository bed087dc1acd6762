"""Batched, class-aware NMS on the GPU with a custom CUDA kernel (engines/cuda/nms_kernel.cu).

``batched_nms_cuda`` takes PyTorch CUDA tensors and returns PyTorch CUDA tensors; nothing is copied to the
host until the caller asks (``NmsOutput.to_lists``). Steps, all on the device and on PyTorch's current
stream:

1. ``prepare_candidates`` (plain PyTorch ops, runs on any device): keep boxes with score >=
   ``score_threshold``, sort each image's boxes by score descending -- ties broken by the lower original
   index (a stable sort), the order torchvision.ops.nms and pipeline/core/nms.py use -- and cut to ``top_k``.
2. ``nms_mask_kernel``: IoU > threshold bitmasks in 64x64 tiles, one 64-bit word per (box, column tile).
3. ``nms_reduce_kernel``: one thread block per image scans the mask words in shared memory and writes the
   kept indices, highest score first, padded with -1 to ``max_output``.

Boxes of different classes never suppress each other; boxes of different images never meet. The kept set is
the one torchvision.ops.batched_nms keeps on the same (filtered, top-k) candidates.

The kernel is compiled with NVRTC at first use (engines/cuda/runtime.py); engines/cuda/nms_emulation.py
re-implements both kernels in NumPy so the algorithm can be checked without a GPU.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from engines.base import EngineError
from engines.cuda import NMS_KERNEL_SOURCE

TILE = 64
REDUCE_THREADS = 256
MAX_SHARED_BYTES = 48 * 1024  # the "removed" bitmask of one image lives in static-size shared memory
MAX_CANDIDATES = MAX_SHARED_BYTES // 8 * TILE  # 393,216 boxes per image after top-k
DEFAULT_MAX_MASK_BYTES = 4 << 30


@dataclass
class Candidates:
    """Per-image sorted candidates, the kernels' input. Image b's valid boxes are ``boxes[b, :counts[b]]``."""

    boxes: torch.Tensor  # (B, K, 4) float32, contiguous, sorted by score descending
    classes: torch.Tensor  # (B, K) int32
    counts: torch.Tensor  # (B,) int32
    order: torch.Tensor  # (B, K) int64: index of each sorted box in the caller's input

    @property
    def num_images(self) -> int:
        return int(self.boxes.shape[0])

    @property
    def k(self) -> int:
        return int(self.boxes.shape[1])


@dataclass
class NmsOutput:
    """Kept indices per image, highest score first, on the device of the input.

    ``keep[b, :num_kept[b]]`` are valid; the rest is -1. Indices refer to the caller's input: positions
    0..N-1 within the image for (B, N, 4) input, rows of the flat array for flat input.
    """

    keep: torch.Tensor  # (B, max_output) int64
    num_kept: torch.Tensor  # (B,) int32

    def to_lists(self) -> list[np.ndarray]:
        """One int64 NumPy array per image (copies to the host; synchronises)."""
        keep = self.keep.cpu().numpy()
        counts = self.num_kept.cpu().numpy()
        return [keep[b, : int(counts[b])].copy() for b in range(keep.shape[0])]

    def flat(self) -> torch.Tensor:
        """All kept indices as one 1-D tensor on the device (for flat input: rows of the input)."""
        return self.keep[self.keep >= 0]


def _check_inputs(
    boxes: torch.Tensor,
    scores: torch.Tensor,
    class_ids: torch.Tensor | None,
    batch_idx: torch.Tensor | None,
    iou_threshold: float,
    top_k: int | None,
    max_output: int | None,
) -> None:
    if boxes.dim() not in (2, 3) or boxes.shape[-1] != 4:
        raise EngineError(f"cuda nms: boxes must be (B, N, 4) or (M, 4), got shape {tuple(boxes.shape)}")
    if tuple(scores.shape) != tuple(boxes.shape[:-1]):
        raise EngineError(
            f"cuda nms: scores shape {tuple(scores.shape)} does not match boxes {tuple(boxes.shape)}"
        )
    if class_ids is not None and tuple(class_ids.shape) != tuple(scores.shape):
        raise EngineError(
            f"cuda nms: class_ids shape {tuple(class_ids.shape)} does not match scores {tuple(scores.shape)}"
        )
    if batch_idx is not None:
        if boxes.dim() != 2:
            raise EngineError("cuda nms: batch_idx is only used with flat (M, 4) boxes")
        if tuple(batch_idx.shape) != (boxes.shape[0],):
            raise EngineError(
                f"cuda nms: batch_idx shape {tuple(batch_idx.shape)} must be ({boxes.shape[0]},)"
            )
    if not 0.0 <= float(iou_threshold) <= 1.0:
        raise EngineError(f"cuda nms: iou_threshold must be in [0, 1], got {iou_threshold}")
    if top_k is not None and top_k < 1:
        raise EngineError(f"cuda nms: top_k must be >= 1 or None, got {top_k}")
    if max_output is not None and max_output < 1:
        raise EngineError(f"cuda nms: max_output must be >= 1 or None, got {max_output}")
    devices = {t.device for t in (boxes, scores, class_ids, batch_idx) if t is not None}
    if len(devices) != 1:
        raise EngineError(f"cuda nms: all inputs must be on one device, got {sorted(map(str, devices))}")


def _pad_flat(
    boxes: torch.Tensor,
    scores: torch.Tensor,
    classes: torch.Tensor,
    batch_idx: torch.Tensor | None,
    num_images: int | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Flat (M, 4) + batch index -> padded (B, Nmax, ...) plus the flat row of every slot (-1 = padding)."""
    m = boxes.shape[0]
    dev = boxes.device
    if batch_idx is None:
        batch_idx = torch.zeros(m, dtype=torch.int64, device=dev)
    batch_idx = batch_idx.to(torch.int64)
    if num_images is None:
        num_images = int(batch_idx.max().item()) + 1 if m else 1
    counts = torch.bincount(batch_idx, minlength=num_images)
    if counts.numel() > num_images:
        raise EngineError(f"cuda nms: batch_idx has values >= num_images ({num_images})")
    n_max = int(counts.max().item()) if m else 0
    rows = torch.argsort(batch_idx, stable=True)
    img = batch_idx[rows]
    starts = torch.cumsum(counts, 0) - counts
    pos = torch.arange(m, device=dev) - starts[img]
    p_boxes = torch.zeros((num_images, n_max, 4), dtype=boxes.dtype, device=dev)
    p_scores = torch.full((num_images, n_max), float("-inf"), dtype=scores.dtype, device=dev)
    p_classes = torch.zeros((num_images, n_max), dtype=classes.dtype, device=dev)
    p_rows = torch.full((num_images, n_max), -1, dtype=torch.int64, device=dev)
    p_boxes[img, pos] = boxes[rows]
    p_scores[img, pos] = scores[rows]
    p_classes[img, pos] = classes[rows]
    p_rows[img, pos] = rows
    return p_boxes, p_scores, p_classes, p_rows, p_rows >= 0


def prepare_candidates(
    boxes: torch.Tensor,
    scores: torch.Tensor,
    class_ids: torch.Tensor | None = None,
    score_threshold: float | None = None,
    top_k: int | None = None,
    batch_idx: torch.Tensor | None = None,
    num_images: int | None = None,
) -> Candidates:
    """Score filter, stable descending sort and top-k per image (PyTorch ops; any device)."""
    _check_inputs(boxes, scores, class_ids, batch_idx, 0.5, top_k, None)
    classes = class_ids if class_ids is not None else torch.zeros_like(scores, dtype=torch.int32)
    boxes = boxes.to(torch.float32)
    scores = scores.to(torch.float32)
    classes = classes.to(torch.int32)
    if boxes.dim() == 2:
        boxes, scores, classes, index_map, valid = _pad_flat(boxes, scores, classes, batch_idx, num_images)
    else:
        index_map = None
        valid = torch.ones(scores.shape, dtype=torch.bool, device=scores.device)
    valid = valid & ~torch.isnan(scores)
    if score_threshold is not None:
        valid = valid & (scores >= score_threshold)
    key = torch.where(valid, scores, torch.full_like(scores, float("-inf")))
    n = scores.shape[1]
    k = min(top_k, n) if top_k is not None else n
    _, sort_idx = torch.sort(key, dim=1, descending=True, stable=True)
    sort_idx = sort_idx[:, :k]
    counts = valid.sum(dim=1).clamp(max=k).to(torch.int32)
    order = sort_idx if index_map is None else torch.gather(index_map, 1, sort_idx)
    s_boxes = torch.gather(boxes, 1, sort_idx.unsqueeze(-1).expand(-1, -1, 4)).contiguous()
    s_classes = torch.gather(classes, 1, sort_idx).contiguous()
    return Candidates(s_boxes, s_classes, counts.contiguous(), order.contiguous())


def batched_nms_cuda(
    boxes: torch.Tensor,
    scores: torch.Tensor,
    class_ids: torch.Tensor | None = None,
    iou_threshold: float = 0.45,
    score_threshold: float | None = None,
    top_k: int | None = None,
    max_output: int | None = None,
    batch_idx: torch.Tensor | None = None,
    num_images: int | None = None,
    max_mask_bytes: int = DEFAULT_MAX_MASK_BYTES,
) -> NmsOutput:
    """Hard NMS for a batch of images on a CUDA device; see the module docstring.

    boxes: (B, N, 4) x1 y1 x2 y2, or flat (M, 4) with ``batch_idx`` (M,) giving each row's image.
    scores: (B, N) / (M,). class_ids: same shape, or None for class-agnostic NMS.
    A box suppresses a lower-ranked one of the same class and image when IoU > ``iou_threshold``.
    ``score_threshold`` keeps scores >= it; ``top_k`` caps the candidates per image before suppression;
    ``max_output`` caps the kept boxes per image (default: top_k / N).
    """
    _check_inputs(boxes, scores, class_ids, batch_idx, iou_threshold, top_k, max_output)
    if boxes.device.type != "cuda":
        raise EngineError(
            f"cuda nms: inputs are on {boxes.device}, not a CUDA device; use pipeline.core.nms.batched_nms on the CPU"
        )
    cand = prepare_candidates(boxes, scores, class_ids, score_threshold, top_k, batch_idx, num_images)
    return nms_on_candidates(cand, iou_threshold, max_output, max_mask_bytes)


def nms_on_candidates(
    cand: Candidates,
    iou_threshold: float,
    max_output: int | None = None,
    max_mask_bytes: int = DEFAULT_MAX_MASK_BYTES,
) -> NmsOutput:
    """Run the two kernels on prepared candidates (CUDA tensors)."""
    from engines.cuda import runtime

    b, k = cand.num_images, cand.k
    dev = cand.boxes.device
    out_cap = max_output if max_output is not None else max(k, 1)
    if b == 0 or k == 0:
        keep = torch.full((b, out_cap), -1, dtype=torch.int64, device=dev)
        return NmsOutput(keep, torch.zeros((b,), dtype=torch.int32, device=dev))
    if k > MAX_CANDIDATES:
        raise EngineError(f"cuda nms: {k} candidates per image exceed {MAX_CANDIDATES}; set top_k")
    col_blocks = (k + TILE - 1) // TILE
    mask_bytes = b * k * col_blocks * 8
    if mask_bytes > max_mask_bytes:
        raise EngineError(
            f"cuda nms: {b} images x {k} candidates need a {mask_bytes / 2**30:.1f} GiB suppression mask "
            f"(limit {max_mask_bytes / 2**30:.1f} GiB); lower top_k or raise max_mask_bytes"
        )
    mask = torch.empty((b, k, col_blocks), dtype=torch.int64, device=dev)
    keep = torch.empty((b, out_cap), dtype=torch.int64, device=dev)  # the reduce kernel writes every slot
    num_kept = torch.empty((b,), dtype=torch.int32, device=dev)
    device_index = dev.index if dev.index is not None else torch.cuda.current_device()
    with torch.cuda.device(device_index):
        stream = torch.cuda.current_stream(device_index).cuda_stream
        mod = runtime.get_module(NMS_KERNEL_SOURCE, device_index, ("nms_mask_kernel", "nms_reduce_kernel"))
        mod.launch(
            "nms_mask_kernel",
            (col_blocks, col_blocks, b),
            (TILE, 1, 1),
            [
                (cand.boxes.data_ptr(), runtime.POINTER),
                (cand.classes.data_ptr(), runtime.POINTER),
                (cand.counts.data_ptr(), runtime.POINTER),
                (k, runtime.INT),
                (col_blocks, runtime.INT),
                (float(iou_threshold), runtime.DOUBLE),
                (mask.data_ptr(), runtime.POINTER),
            ],
            stream,
        )
        mod.launch(
            "nms_reduce_kernel",
            (b, 1, 1),
            (REDUCE_THREADS, 1, 1),
            [
                (mask.data_ptr(), runtime.POINTER),
                (cand.counts.data_ptr(), runtime.POINTER),
                (cand.order.data_ptr(), runtime.POINTER),
                (k, runtime.INT),
                (col_blocks, runtime.INT),
                (out_cap, runtime.INT),
                (keep.data_ptr(), runtime.POINTER),
                (num_kept.data_ptr(), runtime.POINTER),
            ],
            stream,
            shared_bytes=col_blocks * 8,
        )
    return NmsOutput(keep, num_kept)
