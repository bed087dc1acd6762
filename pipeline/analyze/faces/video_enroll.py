"""Enrollment from a clip: the best few frames of one person, chosen by quality, then the usual enrollment.

A frame is a candidate when it holds exactly one face that enrollment would accept (size, sharpness: see
``quality.enrollment_problem``). Candidates are ranked by sharpness (log), face size (up to 160 px) and
frontality (the nose tip between the eyes, from the detector's five landmarks: a face turned away enrolls a
template that matches the person's profile, not their face at the door). The best ones at least
``min_gap_s`` apart are enrolled (frames a few milliseconds apart add nothing but the same pose).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.analyze.faces.enroll import FaceEngine
from pipeline.analyze.faces.quality import enrollment_problem, face_side, sharpness
from pipeline.config.faces import FacesConfig
from pipeline.ingest.clip_frames import clip_frames


@dataclass(frozen=True)
class Candidate:
    t: float
    image: np.ndarray
    quality: float


def frontality(landmarks: np.ndarray | None) -> float:
    """1 for a frontal face, towards 0 as the nose tip moves off the eyes' midpoint (5-point landmarks)."""
    if landmarks is None:
        return 0.5
    pts = np.asarray(landmarks, np.float64).reshape(-1, 2)
    if len(pts) < 3:
        return 0.5
    left, right, nose = pts[0], pts[1], pts[2]
    iod = float(np.linalg.norm(right - left))
    if iod <= 1e-6:
        return 0.0
    off = abs(float(nose[0] - (left[0] + right[0]) / 2)) / iod
    return max(0.0, 1.0 - 2.0 * off)


def best_frames(
    path: str | Path,
    engine: FaceEngine,
    cfg: FacesConfig,
    *,
    start: float = 0.0,
    end: float | None = None,
    count: int = 5,
    sample_fps: float = 4.0,
    min_gap_s: float = 0.4,
) -> list[Candidate]:
    """Up to ``count`` enrollable frames of ``path`` in [start, end), best first."""
    cands: list[Candidate] = []
    for t, image in clip_frames(path, fps=sample_fps, start=start, end=end):
        dets = engine.detect(image)
        if enrollment_problem(image, dets.boxes, cfg.min_face_px, cfg.min_sharpness) is not None:
            continue
        box = dets.boxes[0]
        lm = None if dets.landmarks is None else dets.landmarks[0]
        q = math.log1p(sharpness(image, box)) * min(face_side(box), 160.0) / 160.0 * frontality(lm)
        cands.append(Candidate(t, image, q))
    chosen: list[Candidate] = []
    for c in sorted(cands, key=lambda c: -c.quality):
        if all(abs(c.t - o.t) >= min_gap_s for o in chosen):
            chosen.append(c)
        if len(chosen) >= count:
            break
    return chosen
