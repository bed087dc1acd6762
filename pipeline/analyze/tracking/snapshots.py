"""Annotated best-frame JPEGs for tracked-object events, kept under a count / bytes / age limit.

One file per object event (``<camera>-<track_id>-<object_id>.jpg``), rewritten in place when a better
frame turns up, so the path published in ``tracks.new`` stays valid for ``update`` and ``end``.
Retention only ever deletes this camera's files (``<camera>-*.jpg``), oldest first.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from pipeline.config.tracking import SnapshotConfig

log = logging.getLogger(__name__)


def annotate(image_bgr: np.ndarray, box, caption: str) -> Image.Image:
    """RGB PIL image of the frame with the box and a caption drawn on it."""
    img = Image.fromarray(np.ascontiguousarray(image_bgr[:, :, ::-1]))
    draw = ImageDraw.Draw(img)
    x1, y1, x2, y2 = (float(v) for v in box)
    width = max(2, round(min(img.size) / 240))
    draw.rectangle([x1, y1, x2, y2], outline=(255, 64, 0), width=width)
    tx, ty = x1, max(0.0, y1 - 12)
    bbox = draw.textbbox((tx, ty), caption)
    draw.rectangle(bbox, fill=(255, 64, 0))
    draw.text((tx, ty), caption, fill=(255, 255, 255))
    return img


class SnapshotStore:
    def __init__(self, directory: Path, camera_id: str, cfg: SnapshotConfig):
        self.dir = Path(directory)
        self.camera_id = camera_id
        self.cfg = cfg
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise OSError(f"camera {camera_id}: cannot create snapshot directory {self.dir}: {exc}") from exc
        # path -> (mtime, size); filled from disk so limits hold across restarts
        self._files: dict[Path, tuple[float, int]] = {}
        for p in self.dir.glob(f"{camera_id}-*.jpg"):
            try:
                st = p.stat()
            except OSError:
                continue
            self._files[p] = (st.st_mtime, st.st_size)
        self.prune()

    def path_for(self, track_id: int, object_id: str) -> Path:
        return self.dir / f"{self.camera_id}-{track_id:06d}-{object_id[:12]}.jpg"

    def save(self, path: Path, image_bgr: np.ndarray, box, caption: str) -> bool:
        """Write (or overwrite) one snapshot atomically; False (and a log line) if the disk refused."""
        tmp = path.with_suffix(".jpg.tmp")
        try:
            annotate(image_bgr, box, caption).save(tmp, "JPEG", quality=self.cfg.jpeg_quality)
            os.replace(tmp, path)
            st = path.stat()
        except OSError as exc:
            log.warning("camera %s: cannot write snapshot %s: %s", self.camera_id, path, exc)
            tmp.unlink(missing_ok=True)
            return False
        self._files.pop(path, None)
        self._files[path] = (st.st_mtime, st.st_size)
        self.prune(keep=path)
        return True

    def prune(self, keep: Path | None = None) -> list[Path]:
        """Delete oldest files until every limit holds; ``keep`` (the file just written) is never deleted."""
        cfg = self.cfg
        order = sorted(self._files.items(), key=lambda kv: kv[1][0])
        total = sum(size for _, (_, size) in order)
        count = len(order)
        now = time.time()
        removed = []
        for p, (mtime, size) in order:
            if p == keep:
                continue
            too_many = cfg.max_count is not None and count > cfg.max_count
            too_big = cfg.max_bytes is not None and total > cfg.max_bytes
            too_old = cfg.max_age_s is not None and now - mtime > cfg.max_age_s
            if not (too_many or too_big or too_old):
                continue
            try:
                p.unlink(missing_ok=True)
            except OSError as exc:
                log.warning("camera %s: cannot delete old snapshot %s: %s", self.camera_id, p, exc)
                continue
            del self._files[p]
            count -= 1
            total -= size
            removed.append(p)
        return removed

    @property
    def files(self) -> list[Path]:
        return list(self._files)

    @property
    def total_bytes(self) -> int:
        return sum(size for _, size in self._files.values())
