"""Face detection + embedding as one unit, and enrollment of people from photos."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from pipeline.faces.config import FacesConfig
from pipeline.faces.gallery import Gallery
from pipeline.faces.quality import enrollment_problem
from pipeline.types import Detections


class FaceEngine:
    """MTCNN + the embedder. ``faces(image)`` -> (Detections with landmarks, (N, 128) embeddings)."""

    def __init__(self, detector, embedder) -> None:  # noqa: ANN001 - Detector / FaceEmbedder
        self.detector = detector
        self.embedder = embedder
        self.model_id: str = embedder.model_id
        self._lock = threading.Lock()  # one engine may serve several cameras' threads

    @classmethod
    def from_config(cls, cfg: FacesConfig) -> FaceEngine:
        from pipeline.detectors.mtcnn import MTCNNDetector
        from pipeline.faces.embedder import FaceEmbedder

        det = MTCNNDetector(
            min_face_size=cfg.detector_min_face_px,
            thresholds=cfg.detector_thresholds,
            device=cfg.device,
            threads=cfg.threads,
        )
        emb = FaceEmbedder(backend=cfg.embedder_backend, device=cfg.device, threads=cfg.threads)
        return cls(det, emb)

    def detect(self, image_bgr: np.ndarray) -> Detections:
        with self._lock:
            return self.detector.detect([image_bgr])[0]

    def embed(self, image_bgr: np.ndarray, dets: Detections) -> np.ndarray:
        with self._lock:
            return self.embedder.embed(image_bgr, dets.landmarks)


_SHARED: dict[tuple, FaceEngine] = {}
_SHARED_LOCK = threading.Lock()


def shared_engine(cfg: FacesConfig) -> FaceEngine:
    """One engine per process and settings (the models are large; cameras share them)."""
    key = (
        cfg.detector_min_face_px,
        tuple(cfg.detector_thresholds),
        cfg.embedder_backend,
        cfg.device,
        cfg.threads,
    )
    with _SHARED_LOCK:
        if key not in _SHARED:
            _SHARED[key] = FaceEngine.from_config(cfg)
        return _SHARED[key]


@dataclass
class EnrollReport:
    name: str
    accepted: list[str] = field(default_factory=list)
    rejected: list[tuple[str, str]] = field(default_factory=list)  # (photo, reason)
    templates: int = 0

    def lines(self) -> list[str]:
        out = [f"{p}: enrolled" for p in self.accepted]
        out += [f"{p}: rejected: {why}" for p, why in self.rejected]
        out.append(
            f"{self.name}: {len(self.accepted)} photo(s) enrolled, {self.templates} template(s) in total"
        )
        return out


def decode_image(data: bytes, label: str) -> np.ndarray:
    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if img is None:
        raise ValueError(f"{label}: not a readable image (JPEG/PNG/BMP/WebP expected)")
    return img


def enroll_images(
    gallery: Gallery,
    engine: FaceEngine,
    cfg: FacesConfig,
    name: str,
    images: Sequence[tuple[str, np.ndarray | bytes]],
) -> EnrollReport:
    """Check each photo, embed the good ones and store them in ONE transaction. Bad photos are reported by
    label with the reason and do not stop the others."""
    report = EnrollReport(name=name)
    embs: list[np.ndarray] = []
    for label, img in images:
        try:
            image = decode_image(img, label) if isinstance(img, bytes | bytearray) else img
            dets = engine.detect(image)
            problem = enrollment_problem(image, dets.boxes, cfg.min_face_px, cfg.min_sharpness)
            if problem is not None:
                report.rejected.append((label, problem))
                continue
            embs.append(engine.embed(image, dets)[0])
            report.accepted.append(label)
        except ValueError as exc:
            report.rejected.append((label, str(exc).removeprefix(f"{label}: ")))
    if embs:
        report.templates = gallery.enroll(name, np.stack(embs), report.accepted, engine.model_id)
    return report


def read_photo(path: str | Path) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise ValueError(f"{path}: cannot read ({exc.strerror or exc})") from None
