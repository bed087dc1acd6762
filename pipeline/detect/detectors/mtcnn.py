"""MTCNN face detector: P-Net over an image pyramid, then R-Net and O-Net, with 5 landmarks per face.

Why it is fast on a CPU (about 2x facenet-pytorch's MTCNN, see benchmarks/bench_mtcnn.py):
- images of the same size go through each pyramid level as one batch, and all candidates of all levels and
  all images go to R-Net (then O-Net) as one batch;
- the nets run channels-last (CPU max-pool / PReLU kernels are several times faster that way), with the
  input scaling folded into the first convolution and the output heads merged into one layer;
- candidate crops are cut and resized by ``torchvision.ops.roi_align`` (one call per pyramid level used),
  each from the pyramid level where it is about the nets' input size, so one bilinear sample per pixel
  suffices and large faces are not aliased;
- box regression, squaring and landmark decoding are array operations, NMS works on one overlap matrix per
  group: no Python loop over candidates;
- pyramid levels smaller than the 12 px P-Net window are skipped; inference runs under ``inference_mode``.

``threads`` calls ``torch.set_num_threads``, which is process-wide.

Coordinates are continuous pixels (a box spans ``x1 <= x < x2``); boxes come back clipped to the image.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
import torch
from torch import nn
from torchvision.ops import roi_align

from pipeline.core.nms import iou_matrix, nms
from pipeline.core.types import Detections
from pipeline.detect.detectors.base import Detector
from pipeline.models.mtcnn import load_mtcnn

_CELL = 12.0  # P-Net window
_STRIDE = 2.0  # P-Net output stride
_CROP_SAMPLES = 1  # roi_align samples per output pixel and axis (see _crops)
_MATRIX_NMS_MAX = 3000  # above this many boxes, NMS falls back to pipeline.core.nms (no N x N matrix)


class _Level:
    """One pyramid level: its scale per axis and the frames as float (N, 3, H, W) channels-last (what the
    nets want), plus a plain NCHW copy made on first use (what roi_align reads without copying again)."""

    __slots__ = ("sx", "sy", "frames", "_nchw")

    def __init__(self, sx: float, sy: float, frames: torch.Tensor) -> None:
        self.sx, self.sy, self.frames = sx, sy, frames
        self._nchw: torch.Tensor | None = None

    def nchw(self) -> torch.Tensor:
        if self._nchw is None:
            self._nchw = self.frames.contiguous()
        return self._nchw


class MTCNNDetector(Detector):
    """Detects faces; ``detect`` takes BGR uint8 images and returns one Detections per image.

    Every row has label "face", class id 0, and landmarks (5, 2): left eye, right eye, nose, left mouth
    corner, right mouth corner, left/right as seen in the image.
    """

    name = "mtcnn"
    labels = ["face"]

    def __init__(
        self,
        min_face_size: float = 20.0,
        thresholds: Sequence[float] = (0.6, 0.7, 0.7),
        scale_factor: float = 0.709,
        device: str = "cpu",
        threads: int | None = None,
        nms_thresholds: Sequence[float] = (0.5, 0.7, 0.7, 0.7),
        weights: dict[str, Path] | None = None,
        backend: str = "torch",
    ) -> None:
        if min_face_size < 12:
            raise ValueError(f"MTCNN min_face_size must be >= 12 px (the P-Net window), got {min_face_size}")
        if len(thresholds) != 3 or not all(0.0 <= t <= 1.0 for t in thresholds):
            raise ValueError(f"MTCNN thresholds must be 3 numbers in [0, 1], got {tuple(thresholds)}")
        if not 0.1 <= scale_factor < 1.0:
            raise ValueError(f"MTCNN scale_factor must be in [0.1, 1), got {scale_factor}")
        if len(nms_thresholds) != 4:
            raise ValueError(f"MTCNN nms_thresholds needs 4 values, got {tuple(nms_thresholds)}")
        if backend not in ("torch", "onnxruntime"):
            raise ValueError(f"MTCNN backend must be 'torch' or 'onnxruntime', got {backend!r}")
        if threads is not None:
            torch.set_num_threads(int(threads))
        self.min_face_size = float(min_face_size)
        self.thresholds = tuple(float(t) for t in thresholds)
        self.scale_factor = float(scale_factor)
        self.nms_thresholds = tuple(float(t) for t in nms_thresholds)
        self.device = torch.device(device)
        pnet, rnet, onet = load_mtcnn(weights, bgr=True)  # frames go in as BGR, no colour conversion
        # channels-last makes the ceil-mode max-pools several times faster on CPU
        cl = torch.channels_last
        self.backend = backend
        if backend == "onnxruntime":
            if self.device.type != "cpu":
                raise ValueError(f"MTCNN backend onnxruntime runs on the CPU here; got device {device!r}")
            self.pnet, self.rnet, self.onet = _onnx_nets(pnet, rnet, onet, threads)
        else:
            self.pnet = pnet.to(self.device, memory_format=cl)
            self.rnet = rnet.to(self.device, memory_format=cl)
            self.onet = onet.to(self.device, memory_format=cl)

    # ---- public -------------------------------------------------------------------------------------

    def detect(self, images: list[np.ndarray]) -> list[Detections]:
        for i, img in enumerate(images):
            if not isinstance(img, np.ndarray) or img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
                got = getattr(img, "shape", type(img).__name__), getattr(img, "dtype", None)
                raise ValueError(f"MTCNN: image {i} must be HxWx3 uint8 BGR, got {got}")
        out: list[Detections | None] = [None] * len(images)
        groups: dict[tuple[int, int], list[int]] = {}
        for i, img in enumerate(images):
            groups.setdefault(img.shape[:2], []).append(i)
        with torch.inference_mode():
            for idx in groups.values():
                for i, det in zip(idx, self._detect_same_size([images[i] for i in idx]), strict=True):
                    out[i] = det
        return out  # type: ignore[return-value]

    # ---- stages -------------------------------------------------------------------------------------

    def scales(self, height: int, width: int) -> list[float]:
        """Pyramid scales: the first maps ``min_face_size`` to 12 px; stop once the image is under 12 px."""
        m = _CELL / self.min_face_size
        side = min(height, width) * m
        out = []
        while side >= _CELL:
            out.append(m)
            m *= self.scale_factor
            side *= self.scale_factor
        return out

    def _detect_same_size(self, images: list[np.ndarray]) -> list[Detections]:
        h, w = images[0].shape[:2]
        frames = [np.ascontiguousarray(img) for img in images]
        # (scale x, scale y, float NCHW frames, 0..255); level 0 is the frame itself, P-Net adds the others.
        # R-Net / O-Net crops are cut from whichever level makes each crop's sampling anti-aliased.
        pyramid = [_Level(1.0, 1.0, _as_float(torch.from_numpy(np.stack(frames)).to(self.device)))]
        boxes, img_idx = self._stage1(frames, h, w, pyramid)
        if boxes.shape[0]:
            boxes, img_idx = self._refine(pyramid, boxes, img_idx)
        landmarks = np.zeros((0, 5, 2), np.float32)
        scores = np.zeros((0,), np.float32)
        if boxes.shape[0]:
            boxes, scores, landmarks, img_idx = self._output(pyramid, boxes, img_idx, h, w)
        results = []
        for b in range(len(images)):
            sel = img_idx == b
            n = int(sel.sum())
            results.append(
                Detections(
                    boxes=boxes[sel, :4].astype(np.float32),
                    scores=scores[sel].astype(np.float32),
                    class_ids=np.zeros((n,), np.int32),
                    labels=["face"] * n,
                    landmarks=landmarks[sel].astype(np.float32),
                )
            )
        return results

    def _stage1(
        self, frames: list[np.ndarray], h: int, w: int, pyramid: list[_Level]
    ) -> tuple[np.ndarray, np.ndarray]:
        """P-Net over the pyramid. Returns calibrated square boxes (K, 5: x1 y1 x2 y2 score) and image ids."""
        t1 = self.thresholds[0]
        all_boxes, all_img, all_level = [], [], []
        level_imgs = frames
        for level, scale in enumerate(self.scales(h, w)):
            sh, sw = int(math.ceil(h * scale)), int(math.ceil(w * scale))
            # each level is area-resized from the previous one: cheap, and still anti-aliased
            level_imgs = [cv2.resize(im, (sw, sh), interpolation=cv2.INTER_AREA) for im in level_imgs]
            x = _as_float(torch.from_numpy(np.stack(level_imgs)).to(self.device))
            pyramid.append(_Level(sw / w, sh / h, x))
            prob, reg = self.pnet(x)
            hit = prob > t1
            if not bool(hit.any()):
                continue
            b, yy, xx = hit.nonzero(as_tuple=True)
            score = prob[b, yy, xx]
            offs = reg[b, :, yy, xx]
            # exact scale per axis (the resize rounded the size), window back in frame pixels
            sx, sy = sw / w, sh / h
            gx = xx.float() * _STRIDE
            gy = yy.float() * _STRIDE
            cand = torch.stack([gx / sx, gy / sy, (gx + _CELL) / sx, (gy + _CELL) / sy, score], dim=1)
            all_boxes.append(torch.cat([cand, offs], dim=1).cpu().numpy())
            all_img.append(b.cpu().numpy())
            all_level.append(np.full(b.shape[0], level))
        if not all_boxes:
            return np.zeros((0, 5), np.float32), np.zeros((0,), np.int64)
        cand = np.concatenate(all_boxes)
        img_idx = np.concatenate(all_img)
        levels = np.concatenate(all_level)
        n_levels = int(levels.max()) + 1
        # NMS within each (image, level), then across levels within each image
        keep = _group_nms(cand[:, :4], cand[:, 4], img_idx * n_levels + levels, self.nms_thresholds[0])
        cand, img_idx = cand[keep], img_idx[keep]
        keep = _group_nms(cand[:, :4], cand[:, 4], img_idx, self.nms_thresholds[1])
        cand, img_idx = cand[keep], img_idx[keep]
        boxes = _square(_calibrate(cand[:, :4], cand[:, 5:9]))
        return np.concatenate([boxes, cand[:, 4:5]], axis=1), img_idx

    def _crops(
        self,
        pyramid: list[_Level],
        boxes: np.ndarray,
        img_idx: np.ndarray,
        size: int,
    ) -> torch.Tensor:
        """All candidate crops resized to size x size (one roi_align call per pyramid level used).

        Each box is cut from the smallest level on which it is still at least ``size`` px wide (the frame
        itself when none is), so it is shrunk by at most 1/scale_factor (~1.41x) and one bilinear sample per
        output pixel barely aliases, at a fixed cost per crop whatever the face size. Parts outside the
        frame read as 0 (black, as in the original MTCNN).
        """
        side = np.maximum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1])
        level_scale = np.array([min(lv.sx, lv.sy) for lv in pyramid])
        # for each box, the smallest scale keeping it >= _CROP_SAMPLES * size px; level 0 (scale 1) when none
        fits = side[:, None] * level_scale[None, :] >= _CROP_SAMPLES * size
        masked = np.where(fits, level_scale[None, :], np.inf)
        choice = np.where(fits.any(axis=1), np.argmin(masked, axis=1), 0)
        out = torch.empty((boxes.shape[0], 3, size, size), device=self.device)
        for level in np.unique(choice):
            sel = np.flatnonzero(choice == level)
            lv = pyramid[int(level)]
            rois = np.empty((sel.size, 5), np.float32)
            rois[:, 0] = img_idx[sel]
            rois[:, [1, 3]] = boxes[sel][:, [0, 2]] * lv.sx
            rois[:, [2, 4]] = boxes[sel][:, [1, 3]] * lv.sy
            crops = roi_align(
                lv.nchw(),
                torch.from_numpy(rois).to(self.device),
                (size, size),
                1.0,
                _CROP_SAMPLES,
                aligned=True,
            )
            out[torch.from_numpy(sel).to(self.device)] = crops
        return out.contiguous(memory_format=torch.channels_last)

    def _refine(
        self, pyramid: list[_Level], boxes: np.ndarray, img_idx: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        prob, reg = self.rnet(self._crops(pyramid, boxes, img_idx, 24))
        prob, reg = prob.cpu().numpy(), reg.cpu().numpy()
        ok = prob > self.thresholds[1]
        boxes, reg, img_idx, prob = boxes[ok], reg[ok], img_idx[ok], prob[ok]
        keep = _group_nms(boxes[:, :4], prob, img_idx, self.nms_thresholds[2])
        boxes, reg, img_idx, prob = boxes[keep], reg[keep], img_idx[keep], prob[keep]
        out = _square(_calibrate(boxes[:, :4], reg))
        return np.concatenate([out, prob[:, None]], axis=1), img_idx

    def _output(
        self,
        pyramid: list[_Level],
        boxes: np.ndarray,
        img_idx: np.ndarray,
        h: int,
        w: int,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        prob, reg, lmk = self.onet(self._crops(pyramid, boxes, img_idx, 48))
        prob, reg, lmk = prob.cpu().numpy(), reg.cpu().numpy(), lmk.cpu().numpy()
        ok = prob > self.thresholds[2]
        boxes, reg, lmk, img_idx, prob = boxes[ok], reg[ok], lmk[ok], img_idx[ok], prob[ok]
        bw = (boxes[:, 2] - boxes[:, 0])[:, None]
        bh = (boxes[:, 3] - boxes[:, 1])[:, None]
        landmarks = np.stack([boxes[:, 0:1] + bw * lmk[:, 0:5], boxes[:, 1:2] + bh * lmk[:, 5:10]], axis=2)
        final = _calibrate(boxes[:, :4], reg)
        # intersection-over-smaller NMS (it also removes everything plain IoU NMS would)
        keep = _group_nms(final, prob, img_idx, self.nms_thresholds[3], over_min=True)
        final, prob, landmarks, img_idx = final[keep], prob[keep], landmarks[keep], img_idx[keep]
        final[:, [0, 2]] = np.clip(final[:, [0, 2]], 0, w)
        final[:, [1, 3]] = np.clip(final[:, [1, 3]], 0, h)
        return final, prob, landmarks.astype(np.float32), img_idx


def _as_float(batch_hwc: torch.Tensor) -> torch.Tensor:
    """(N, H, W, 3) uint8 BGR -> (N, 3, H, W) float32, still 0..255 (the nets have the input scaling
    folded in). The result keeps the HWC memory order (channels-last), what the nets run fastest on."""
    return batch_hwc.permute(0, 3, 1, 2).float()


def _calibrate(boxes: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """Apply the nets' box regression: offsets are fractions of the box width/height per edge."""
    wh = np.concatenate([boxes[:, 2:4] - boxes[:, 0:2]] * 2, axis=1)
    return (boxes + wh * offsets).astype(np.float32)


def _square(boxes: np.ndarray) -> np.ndarray:
    """Grow each box to a square on its longer side, same centre (the nets take square crops)."""
    cx = (boxes[:, 0] + boxes[:, 2]) * 0.5
    cy = (boxes[:, 1] + boxes[:, 3]) * 0.5
    half = np.maximum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]) * 0.5
    return np.stack([cx - half, cy - half, cx + half, cy + half], axis=1).astype(np.float32)


def _group_nms(
    boxes: np.ndarray, scores: np.ndarray, groups: np.ndarray, thr: float, over_min: bool = False
) -> np.ndarray:
    """Greedy NMS within each group (image / pyramid level); kept indices, highest score first.

    Boxes of different groups never meet, so each group gets its own pairwise overlap matrix
    (``pipeline.core.nms.iou_matrix``) and one greedy pass over its rows: for MTCNN's few hundred candidates
    that is much cheaper than the general loop in ``pipeline.core.nms.nms``, which still serves a group larger
    than ``_MATRIX_NMS_MAX``. Tie-break as there: lower index first. ``over_min`` measures overlap as
    intersection over the smaller box (MTCNN's last step: drops a box nested inside a better one).
    """
    n = boxes.shape[0]
    if n == 0:
        return np.zeros((0,), np.int64)
    order = np.argsort(-scores, kind="stable")
    sorted_boxes = boxes[order, :4]
    sorted_groups = groups[order]
    keep = np.zeros(n, bool)
    for gid in np.unique(sorted_groups):
        idx = np.flatnonzero(sorted_groups == gid)  # ascending, so still best score first
        keep[idx[_greedy(sorted_boxes[idx], thr, over_min)]] = True
    return order[keep]


def _greedy(b: np.ndarray, thr: float, over_min: bool) -> np.ndarray:
    """Kept rows of score-sorted boxes ``b`` (bool mask)."""
    n = b.shape[0]
    alive = np.ones(n, bool)
    if n < 2:
        return alive
    if n > _MATRIX_NMS_MAX and not over_min:
        alive[:] = False
        alive[nms(b, -np.arange(n, dtype=np.float32), thr)] = True
        return alive
    if over_min:
        lt = np.maximum(b[:, None, :2], b[None, :, :2])
        rb = np.minimum(b[:, None, 2:], b[None, :, 2:])
        inter = np.prod(np.clip(rb - lt, 0, None), axis=2)
        area = np.prod(np.clip(b[:, 2:] - b[:, :2], 0, None), axis=1)
        overlap = inter / np.maximum(np.minimum(area[:, None], area[None, :]), 1e-9)
    else:
        overlap = iou_matrix(b, b)
    suppresses = np.triu(overlap > thr, k=1)
    for i in range(n):
        if alive[i]:
            alive &= ~suppresses[i]
    return alive


class _OnnxNet:
    """Runs one MTCNN net on ONNX Runtime behind the torch net's call signature (tensors in, tensors out)."""

    def __init__(self, engine) -> None:
        self.engine = engine

    def __call__(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        outs = self.engine.run({"input": x.detach().cpu().contiguous().numpy()})
        return tuple(torch.from_numpy(outs[name]) for name in self.engine.output_names)


def _onnx_nets(
    pnet: nn.Module, rnet: nn.Module, onet: nn.Module, threads: int | None
) -> tuple[_OnnxNet, ...]:
    """Export the three (already input-folded, BGR) nets to ONNX, cached, and open them in ONNX Runtime.

    P-Net is fully convolutional, so its height and width stay dynamic; R-Net and O-Net have fixed crops.
    """
    from engines import create_engine
    from engines.export import export_onnx

    hw = {
        "input": {2: "height", 3: "width"},
        "prob": {1: "out_h", 2: "out_w"},
        "reg": {2: "out_h", 3: "out_w"},
    }
    specs = [
        (pnet, "mtcnn-pnet", (1, 3, 12, 12), ("prob", "reg"), hw),
        (rnet, "mtcnn-rnet", (1, 3, 24, 24), ("prob", "reg"), None),
        (onet, "mtcnn-onet", (1, 3, 48, 48), ("prob", "reg", "landmarks"), None),
    ]
    nets = []
    for net, name, shape, outputs, dynamic in specs:
        path = export_onnx(
            net, shape, name=name, input_names=("input",), output_names=outputs, dynamic_axes=dynamic
        )
        nets.append(_OnnxNet(create_engine(path, backend="onnxruntime", threads=threads)))
    return tuple(nets)


def build_mtcnn(**kwargs) -> MTCNNDetector:
    """Factory hook: ``build_mtcnn(min_face_size=..., device=...)``."""
    return MTCNNDetector(**kwargs)


__all__ = ["MTCNNDetector", "build_mtcnn"]
