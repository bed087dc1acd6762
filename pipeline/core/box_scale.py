"""Boxes from one picture of a scene moved onto another picture of it: the detect substream's pixels onto
the main stream's (``cameras[].record_source``), whose packets make the clips.

Why per axis: a camera's substream shows the whole picture of its main stream, scaled (640x360 of a
1920x1080 main). Some cameras send a substream of another aspect ratio (704x480 for a 16:9 main): it is the
same picture stretched, so each axis still scales on its own. A substream that is *cropped* instead cannot
be told apart from the sizes alone; :func:`aspect_mismatch` lets the caller warn when the ratios differ.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

#: aspect ratios further apart than this (relative) get a warning: 640x360 vs 1920x1080 is 0, 704x480 vs
#: 1920x1080 is 0.19; rounding of odd sizes (e.g. 1920x1088 coded) stays below 0.01
ASPECT_TOLERANCE = 0.02

Size = tuple[int, int]  # (width, height) in pixels


def aspect_mismatch(a: Size, b: Size) -> float:
    """How far apart the aspect ratios of ``a`` and ``b`` are, relative (0 = the same shape)."""
    ra, rb = a[0] / a[1], b[0] / b[1]
    return abs(ra - rb) / min(ra, rb)


@dataclass(frozen=True, slots=True)
class BoxScale:
    """Multiplies ``[x1, y1, x2, y2]`` boxes by ``sx`` (x) and ``sy`` (y); built by :meth:`between`."""

    sx: float = 1.0
    sy: float = 1.0

    @classmethod
    def between(cls, src: Size, dst: Size) -> BoxScale:
        """The scale from boxes on a ``src``-sized picture to the same places on a ``dst``-sized one."""
        if min(*src, *dst) <= 0:
            raise ValueError(f"picture sizes must be positive, got {src} and {dst}")
        return cls(dst[0] / src[0], dst[1] / src[1])

    @property
    def is_identity(self) -> bool:
        return self.sx == 1.0 and self.sy == 1.0

    def box(self, box: Sequence[float]) -> list[float]:
        """One box, scaled and rounded to 0.1 px (as events carry boxes)."""
        x1, y1, x2, y2 = (float(v) for v in box[:4])
        return [
            round(x1 * self.sx, 1),
            round(y1 * self.sy, 1),
            round(x2 * self.sx, 1),
            round(y2 * self.sy, 1),
        ]

    def to_dict(self) -> dict[str, float]:
        return {"sx": round(self.sx, 6), "sy": round(self.sy, 6)}
