"""Presentation-attack detection (PAD): is the face in front of the camera a live face, or a photo or a screen?

Silent, single-frame: MiniFASNet V2 on the face box scaled 2.7x about its centre and MiniFASNet V1SE on the
box scaled 4.0x (the wider crop shows a phone's bezel, a hand, a screen's edge), each resized to 80x80, the
softmax of both averaged (as their authors do); the score is the probability of "real". The crop is shifted,
not cut, to stay inside the frame, and the scale is reduced when the frame is too small for it.

How the threshold was chosen, and APCER/BPCER on the project's attack clips: BENCHMARKS.md (issue 18) and
``benchmarks/eval_pad.py``.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import cv2
import numpy as np

# (model store name, crop scale): the crop each published model was trained on
PAD_MODELS: tuple[tuple[str, float], ...] = (("minifasnet-v2", 2.7), ("minifasnet-v1se", 4.0))
INPUT = 80


def scaled_crop_box(box: np.ndarray, scale: float, width: int, height: int) -> tuple[int, int, int, int]:
    """(x1, y1, x2, y2) inclusive pixel bounds: ``box`` (x1, y1, x2, y2) scaled about its centre by ``scale``
    (less when the frame cannot hold it), then shifted to lie inside the ``width`` x ``height`` frame."""
    x1, y1, x2, y2 = (float(v) for v in box)
    bw, bh = max(x2 - x1, 1.0), max(y2 - y1, 1.0)
    scale = min(scale, (height - 1) / bh, (width - 1) / bw)
    nw, nh = bw * scale, bh * scale
    cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
    left, top, right, bottom = cx - nw / 2, cy - nh / 2, cx + nw / 2, cy + nh / 2
    if left < 0:
        right, left = right - left, 0.0
    if top < 0:
        bottom, top = bottom - top, 0.0
    if right > width - 1:
        left, right = left - (right - width + 1), width - 1.0
    if bottom > height - 1:
        top, bottom = top - (bottom - height + 1), height - 1.0
    return int(max(left, 0)), int(max(top, 0)), int(right), int(bottom)


def pad_crop(image_bgr: np.ndarray, box: np.ndarray, scale: float) -> np.ndarray:
    """The 80x80 BGR crop a model of this ``scale`` reads."""
    h, w = image_bgr.shape[:2]
    x1, y1, x2, y2 = scaled_crop_box(box, scale, w, h)
    return cv2.resize(image_bgr[y1 : y2 + 1, x1 : x2 + 1], (INPUT, INPUT), interpolation=cv2.INTER_LINEAR)


@dataclass(frozen=True)
class PadScore:
    """Probability that the face is real (averaged over the models), per face."""

    real: float


class AntiSpoof:
    """Both MiniFASNets, loaded once (from the model store) and run on CPU or CUDA."""

    def __init__(self, device: str = "cpu", models: tuple[tuple[str, float], ...] = PAD_MODELS) -> None:
        import torch

        from engines import model_store
        from pipeline.models.minifasnet import load_minifasnet

        self._torch = torch
        self.device = torch.device(device if device != "cuda" or torch.cuda.is_available() else "cpu")
        self.nets = [
            (load_minifasnet(model_store.get_model_path(name)).to(self.device), s) for name, s in models
        ]
        self._lock = threading.Lock()

    def score(self, image_bgr: np.ndarray, boxes: np.ndarray) -> np.ndarray:
        """(N,) probability of a real face for each box (N, 4) of ``image_bgr``."""
        boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
        if not len(boxes):
            return np.zeros(0, np.float32)
        torch = self._torch
        total = np.zeros(len(boxes), np.float64)
        with self._lock, torch.inference_mode():
            for net, scale in self.nets:
                crops = np.stack([pad_crop(image_bgr, b, scale) for b in boxes])
                x = torch.from_numpy(crops.transpose(0, 3, 1, 2).astype(np.float32)).to(self.device)
                prob = torch.softmax(net(x), dim=1)[:, 1]
                total += prob.float().cpu().numpy()
        return (total / len(self.nets)).astype(np.float32)


_shared: dict[str, AntiSpoof] = {}
_shared_lock = threading.Lock()


def shared_antispoof(device: str = "cpu") -> AntiSpoof:
    """One loaded PAD per device for the whole process (cameras share it, as they share the face engine)."""
    with _shared_lock:
        if device not in _shared:
            _shared[device] = AntiSpoof(device)
        return _shared[device]
