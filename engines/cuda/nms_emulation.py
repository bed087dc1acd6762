"""The two NMS kernels of nms_kernel.cu re-written in NumPy, tile for tile and bit for bit.

Not a fast path: it exists so the bitmask algorithm the GPU runs can be checked against
torchvision.ops.batched_nms on a machine without a GPU. Float32 arithmetic is done in the kernel's order
(the kernel avoids fused multiply-add for exactly this reason); the threshold compare is in float64.
"""

from __future__ import annotations

import numpy as np

TILE = 64


def mask_kernel(
    boxes: np.ndarray, classes: np.ndarray, counts: np.ndarray, iou_threshold: float
) -> np.ndarray:
    """Pass 1: (B, K, col_blocks) uint64 words; bit j of word [b, i, c] = box 64*c+j is suppressed by i."""
    b_count, k = classes.shape
    col_blocks = (k + TILE - 1) // TILE
    mask = np.zeros((b_count, k, col_blocks), np.uint64)
    bit_values = np.left_shift(np.uint64(1), np.arange(TILE, dtype=np.uint64))
    for img in range(b_count):
        n = int(counts[img])
        bx = boxes[img].astype(np.float32)
        area = (bx[:, 2] - bx[:, 0]) * (bx[:, 3] - bx[:, 1])
        for rb in range((n + TILE - 1) // TILE):
            r0, r1 = rb * TILE, min(n, rb * TILE + TILE)
            for cb in range(rb, (n + TILE - 1) // TILE):
                c0, c1 = cb * TILE, min(n, cb * TILE + TILE)
                a, c = bx[r0:r1, None, :], bx[None, c0:c1, :]
                w = np.maximum(np.minimum(a[..., 2], c[..., 2]) - np.maximum(a[..., 0], c[..., 0]), 0)
                h = np.maximum(np.minimum(a[..., 3], c[..., 3]) - np.maximum(a[..., 1], c[..., 1]), 0)
                inter = (w * h).astype(np.float32)
                union = (area[r0:r1, None] + area[None, c0:c1]) - inter
                with np.errstate(divide="ignore", invalid="ignore"):
                    iou = (inter / union).astype(np.float32)
                hit = iou.astype(np.float64) > iou_threshold  # NaN compares False, as on the GPU
                hit &= classes[img, r0:r1, None] == classes[img, None, c0:c1]
                rows = np.arange(r0, r1)[:, None]
                cols = np.arange(c0, c1)[None, :]
                hit &= cols > rows
                words = np.bitwise_or.reduce(np.where(hit, bit_values[None, : c1 - c0], np.uint64(0)), axis=1)
                mask[img, r0:r1, cb] = words
    return mask


def reduce_kernel(
    mask: np.ndarray, counts: np.ndarray, order: np.ndarray, max_output: int
) -> tuple[np.ndarray, np.ndarray]:
    """Pass 2: the serial scan over mask words. Returns keep (B, max_output) padded with -1, num_kept (B,)."""
    b_count, k, col_blocks = mask.shape
    keep = np.full((b_count, max_output), -1, np.int64)
    num_kept = np.zeros(b_count, np.int32)
    for img in range(b_count):
        n = int(counts[img])
        removed = np.zeros(col_blocks, np.uint64)
        kept = 0
        for i in range(n):
            if kept >= max_output:
                break
            word, bit = divmod(i, TILE)
            if (int(removed[word]) >> bit) & 1:
                continue
            keep[img, kept] = order[img, i]
            kept += 1
            removed[word:] |= mask[img, i, word:]
        num_kept[img] = kept
    return keep, num_kept


def emulate_batched_nms(
    boxes: np.ndarray,
    classes: np.ndarray,
    counts: np.ndarray,
    order: np.ndarray,
    iou_threshold: float,
    max_output: int | None = None,
) -> list[np.ndarray]:
    """Both passes on prepared candidates (see engines.cuda_nms.Candidates); kept indices per image."""
    k = classes.shape[1]
    cap = max_output if max_output is not None else max(k, 1)
    mask = mask_kernel(boxes, classes, counts, iou_threshold)
    keep, num_kept = reduce_kernel(mask, counts, order, cap)
    return [keep[b, : int(num_kept[b])] for b in range(keep.shape[0])]
