"""Face detection + embedding as one unit, and enrollment of people from photos."""

from __future__ import annotations

import io
import logging
import os
import re
import stat
import threading
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from pipeline.analyze.doors.audit import AuditError, AuditLog, audit_key, open_audit_log
from pipeline.analyze.faces.gallery import Gallery, GalleryError, check_name, display_name
from pipeline.analyze.faces.quality import enrollment_problem
from pipeline.config.faces import FacesConfig
from pipeline.core.types import Detections

log = logging.getLogger(__name__)


class FaceEngine:
    """MTCNN + the embedder. ``faces(image)`` -> (Detections with landmarks, (N, 128) embeddings)."""

    def __init__(self, detector, embedder) -> None:  # noqa: ANN001 - Detector / FaceEmbedder
        self.detector = detector
        self.embedder = embedder
        self.model_id: str = embedder.model_id
        self._lock = threading.Lock()  # one engine may serve several cameras' threads

    @classmethod
    def from_config(cls, cfg: FacesConfig) -> FaceEngine:
        from pipeline.analyze.faces.embedder import FaceEmbedder
        from pipeline.detect.detectors.mtcnn import MTCNNDetector

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


@dataclass(frozen=True)
class PhotoResult:
    """What happened to one photo of an enrollment: enrolled, or the reason it was not."""

    photo: str
    enrolled: bool
    reason: str | None = None

    def to_dict(self) -> dict[str, object]:
        return {"photo": self.photo, "enrolled": self.enrolled, "reason": self.reason}


@dataclass
class EnrollReport:
    name: str
    append: bool = False
    results: list[PhotoResult] = field(default_factory=list)
    templates: int = 0  # the person's templates after the enrollment (0: nothing stored)

    @property
    def accepted(self) -> list[str]:
        return [r.photo for r in self.results if r.enrolled]

    @property
    def rejected(self) -> list[tuple[str, str]]:
        return [(r.photo, r.reason or "") for r in self.results if not r.enrolled]

    def lines(self) -> list[str]:
        """One line per photo, in the order given, then a summary; every name is escaped for a terminal."""
        out = [
            f"{display_name(r.photo)}: " + ("enrolled" if r.enrolled else f"rejected: {r.reason}")
            for r in self.results
        ]
        out.append(
            f"{display_name(self.name)}: {len(self.accepted)} of {len(self.results)} photo(s) enrolled, "
            f"{self.templates} template(s) in total"
        )
        return out

    def to_dict(self) -> dict[str, object]:
        return {
            "name": self.name,
            "append": self.append,
            "results": [r.to_dict() for r in self.results],
            "enrolled": self.accepted,
            "rejected": [{"photo": p, "reason": why} for p, why in self.rejected],
            "templates": self.templates,
        }


PhotoSource = bytes | bytearray | np.ndarray | Path


def read_photo(path: str | Path, max_bytes: int = 20_000_000) -> bytes:
    """The file's bytes, refusing before reading: anything but a regular file (``/dev/zero``, a FIFO, a
    directory) and files larger than ``max_bytes``. Reads at most ``max_bytes + 1`` bytes even if the
    file grows meanwhile, so memory stays bounded."""
    try:
        st = os.stat(path)
        if not stat.S_ISREG(st.st_mode):
            raise ValueError(f"{path}: not a regular file")
        if st.st_size > max_bytes:
            raise ValueError(f"{path}: {st.st_size} bytes, more than faces.max_photo_bytes ({max_bytes})")
        with open(path, "rb") as fh:
            if not stat.S_ISREG(os.fstat(fh.fileno()).st_mode):
                raise ValueError(f"{path}: not a regular file")
            data = fh.read(max_bytes + 1)
    except OSError as exc:
        raise ValueError(f"{path}: cannot read ({exc.strerror or exc})") from None
    if len(data) > max_bytes:
        raise ValueError(f"{path}: more than faces.max_photo_bytes ({max_bytes}) bytes")
    return data


def image_header_size(data: bytes, label: str) -> tuple[str, int]:
    """("WxH", pixel count) from the image header, without decoding the pixels (Pillow opens lazily).
    Pillow itself refuses headers past its decompression-bomb limit (about 179 MP); that count is kept."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            with Image.open(io.BytesIO(data)) as im:
                w, h = int(im.size[0]), int(im.size[1])
                return f"{w}x{h}", w * h
        except Image.DecompressionBombError as exc:
            m = re.search(r"\((\d+) pixels\)", str(exc))
            return "the header's size", int(m.group(1)) if m else 2**62
        except (OSError, SyntaxError, ValueError):
            raise ValueError(f"{label}: not a readable image (JPEG/PNG/BMP/WebP expected)") from None


def decode_image(data: bytes, label: str, max_pixels: int = 40_000_000) -> np.ndarray:
    """Decodes a photo after checking its header: more than ``max_pixels`` is refused before any pixel
    is decoded (a 1 MB PNG can declare 20000 x 20000 pixels = 1.2 GB of BGR)."""
    size, pixels = image_header_size(data, label)
    if pixels > max_pixels:
        raise ValueError(
            f"{label}: {size} = {pixels / 1e6:.0f} MP, more than faces.max_photo_pixels "
            f"({max_pixels / 1e6:g} MP)"
        )
    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if img is None:
        raise ValueError(f"{label}: not a readable image (JPEG/PNG/BMP/WebP expected)")
    return img


def load_photo(label: str, source: PhotoSource, cfg: FacesConfig) -> np.ndarray:
    """A BGR image from a path, encoded bytes or an array, with the size checks of ``cfg``."""
    if isinstance(source, np.ndarray):
        return source
    if isinstance(source, Path):
        source = read_photo(source, cfg.max_photo_bytes)
    if len(source) > cfg.max_photo_bytes:
        raise ValueError(
            f"{label}: {len(source)} bytes, more than faces.max_photo_bytes ({cfg.max_photo_bytes})"
        )
    if not source:
        raise ValueError(f"{label}: empty file")
    return decode_image(bytes(source), label, cfg.max_photo_pixels)


def enroll_audit_path(cfg: FacesConfig) -> Path:
    return Path(cfg.enroll_audit_log or f"{cfg.gallery_path}.audit.jsonl")


def enroll_images(
    gallery: Gallery,
    engine: FaceEngine | Callable[[], FaceEngine],
    cfg: FacesConfig,
    name: str,
    images: Sequence[tuple[str, PhotoSource]],
    *,
    append: bool = False,
    audit: AuditLog | None = None,
) -> EnrollReport:
    """Enroll ``name`` from ``images`` = [(label, photo)], photo a Path, encoded bytes or a BGR array.

    The one entry point for the CLI and the HTTP API. Request-level problems raise ``GalleryError`` before
    any photo is looked at: a bad name; a name already enrolled without ``append``; ``append`` without an
    audit key. Every photo then gets its own ``PhotoResult`` (file too large or not a regular file, header
    over the pixel limit, undecodable, no face / several faces / too small / too blurry, or any other
    failure): a bad photo never stops the others. The good ones are stored in ONE transaction together
    with the audit entry, so an error leaves the gallery exactly as it was.

    ``engine`` may be a callable that builds it: it is only called if some photo passes the size checks
    (so a request of only bad files is refused in milliseconds, without loading the models). ``audit``
    defaults to the keyed log at ``enroll_audit_path(cfg)`` when ``$VIDPIPE_AUDIT_KEY`` is set.
    """
    name = check_name(name)
    existed = gallery.exists(name)
    if existed and not append:
        raise GalleryError(
            f"{name!r} is already enrolled; adding photos to an existing person needs --append "
            '(API: "append": true), which is audited'
        )
    if audit is None:
        try:
            audit_key()
        except AuditError as exc:
            if append:
                raise GalleryError(f"--append must be audited and cannot be: {exc}") from None
            log.warning("enrollment of %r is not audited: %s", display_name(name), exc)
        else:
            try:
                audit = open_audit_log(enroll_audit_path(cfg))
            except AuditError as exc:  # damaged or unwritable: do not enroll past it
                raise GalleryError(f"cannot audit the enrollment: {exc}") from None
    report = EnrollReport(name=name, append=append)
    loaded: list[tuple[str, np.ndarray | None, str | None]] = []
    for label, source in images:
        try:
            loaded.append((label, load_photo(label, source, cfg), None))
        except ValueError as exc:
            loaded.append((label, None, str(exc).removeprefix(f"{label}: ")))
    eng: FaceEngine | None = None
    embs: list[np.ndarray] = []
    for label, image, why in loaded:
        if image is None:
            report.results.append(PhotoResult(label, False, why))
            continue
        try:
            if eng is None:
                eng = engine if isinstance(engine, FaceEngine) else engine()
            dets = eng.detect(image)
            problem = enrollment_problem(image, dets.boxes, cfg.min_face_px, cfg.min_sharpness)
            if problem is not None:
                report.results.append(PhotoResult(label, False, problem))
                continue
            embs.append(eng.embed(image, dets)[0])
            report.results.append(PhotoResult(label, True))
        except Exception as exc:  # noqa: BLE001 - one photo's failure is that photo's result
            log.exception("enrollment of %r: photo %s failed", display_name(name), display_name(label))
            report.results.append(PhotoResult(label, False, f"cannot process: {type(exc).__name__}: {exc}"))
    if embs and eng is not None:
        record = {
            "action": "append" if existed else "enroll",
            "name": name,
            "photos": report.accepted,
            "rejected": [{"photo": p, "reason": r} for p, r in report.rejected],
            "model_id": eng.model_id,
            "time": time.time(),
        }
        writer = audit
        hook: Callable[[int], None] | None = None
        if writer is not None:

            def hook(templates: int) -> None:  # inside the gallery transaction: no entry, no enrollment
                writer.append({**record, "templates": templates})

        report.templates = gallery.enroll(
            name, np.stack(embs), report.accepted, eng.model_id, append=append, before_commit=hook
        )
    return report
