"""Resize BGR frames to a detector's square input and map boxes back.

Two modes, because models were trained (and reference implementations run) differently:

- ``letterbox``: keep the aspect ratio, pad the rest with ``pad_value``. Darknet pads with 0.5 gray
  (128 in uint8) and centres the image; Ultralytics pads with 114 and centres; YOLOX pads with 114 and puts
  the image at the top-left (``center=False``).
- ``stretch``: plain resize to size x size, what ``cv2.dnn.blobFromImage(..., crop=False)`` does; used by
  the OpenCV parity test and by anyone matching OpenCV DNN's numbers.

Both return a :class:`Transform` whose ``to_image`` maps network-input boxes back to frame pixels.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import cv2
import numpy as np

ResizeMode = Literal["letterbox", "stretch"]


@dataclass(frozen=True)
class Transform:
    """x_in = x_img * scale_x + pad_x (same for y)."""

    scale_x: float
    scale_y: float
    pad_x: float
    pad_y: float
    width: int  # original image size, for clipping
    height: int

    def to_image(self, boxes: np.ndarray) -> np.ndarray:
        """(N, 4) x1y1x2y2 in network-input pixels -> frame pixels, clipped to the frame."""
        out = np.empty_like(boxes, dtype=np.float32)
        out[:, 0::2] = (boxes[:, 0::2] - self.pad_x) / self.scale_x
        out[:, 1::2] = (boxes[:, 1::2] - self.pad_y) / self.scale_y
        np.clip(out[:, 0::2], 0, self.width, out=out[:, 0::2])
        np.clip(out[:, 1::2], 0, self.height, out=out[:, 1::2])
        return out


def resize_to_input(
    image: np.ndarray,
    size: int | tuple[int, int],
    mode: ResizeMode = "letterbox",
    pad_value: int = 128,
    center: bool = True,
) -> tuple[np.ndarray, Transform]:
    """Return (HxWx3 uint8 image of the input size, transform). ``size`` is an int or (height, width)."""
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected an HxWx3 image, got shape {image.shape}")
    out_h, out_w = (size, size) if isinstance(size, int) else size
    h, w = image.shape[:2]
    if h == 0 or w == 0:
        raise ValueError(f"empty image of shape {image.shape}")
    if mode == "stretch":
        resized = (
            image
            if (h, w) == (out_h, out_w)
            else cv2.resize(image, (out_w, out_h), interpolation=cv2.INTER_LINEAR)
        )
        return resized, Transform(out_w / w, out_h / h, 0.0, 0.0, w, h)
    if mode != "letterbox":
        raise ValueError(f"unknown resize mode {mode!r}; use 'letterbox' or 'stretch'")
    r = min(out_w / w, out_h / h)
    new_w, new_h = max(1, round(w * r)), max(1, round(h * r))
    resized = (
        image
        if (new_h, new_w) == (h, w)
        else cv2.resize(image, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
    )
    if center:
        left, top = (out_w - new_w) // 2, (out_h - new_h) // 2
    else:
        left, top = 0, 0
    canvas = np.full((out_h, out_w, 3), pad_value, np.uint8)
    canvas[top : top + new_h, left : left + new_w] = resized
    return canvas, Transform(new_w / w, new_h / h, float(left), float(top), w, h)


def to_blob(images: list[np.ndarray], rgb: bool, scale: float) -> np.ndarray:
    """Stack same-size HxWx3 uint8 images into an (N, 3, H, W) float32 blob, optionally BGR->RGB."""
    batch = np.stack(images)
    if rgb:
        batch = batch[..., ::-1]
    blob = np.ascontiguousarray(batch.transpose(0, 3, 1, 2), dtype=np.float32)
    if scale != 1.0:
        blob *= np.float32(scale)
    return blob
