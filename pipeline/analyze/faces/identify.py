"""What the gallery makes of the faces in a photo: one JSON-ready row per face (``faces identify``), so an
operator can check what a door camera sees before trusting it with a door."""

from __future__ import annotations

import numpy as np

from pipeline.analyze.faces.enroll import FaceEngine
from pipeline.analyze.faces.matcher import Matcher
from pipeline.analyze.faces.quality import face_side, sharpness


def identify_image(engine: FaceEngine, matcher: Matcher, image: np.ndarray, label: str) -> list[dict]:
    """Rows: photo, box, face_px, sharpness, name (None unless the decision rule accepts), nearest,
    distance, margin, decision ("match" | "unknown" | "no face"), reason (why not a match)."""
    dets = engine.detect(image)
    if not len(dets):
        return [
            {
                "photo": label,
                "box": None,
                "name": None,
                "nearest": None,
                "distance": None,
                "margin": None,
                "decision": "no face",
                "reason": "no face found",
            }
        ]
    embs = engine.embed(image, dets)
    rows = []
    for box, emb in zip(dets.boxes, embs, strict=True):
        m = matcher.identify(emb)
        rows.append(
            {
                "photo": label,
                "box": [round(float(v), 1) for v in box],
                "face_px": round(face_side(box), 1),
                "sharpness": round(sharpness(image, box), 1),
                "name": m.identity,
                "nearest": m.nearest,
                "distance": None if m.distance == float("inf") else round(m.distance, 4),
                "margin": None if m.margin == float("inf") else round(m.margin, 4),
                "decision": "match" if m.identity else "unknown",
                "reason": m.reason,
            }
        )
    return rows


def largest_face_embedding(engine: FaceEngine, image: np.ndarray) -> np.ndarray | None:
    """The embedding of the largest face in a photo (None without a face): impostor photos for calibration."""
    dets = engine.detect(image)
    if not len(dets):
        return None
    side = np.minimum(dets.boxes[:, 2] - dets.boxes[:, 0], dets.boxes[:, 3] - dets.boxes[:, 1])
    return np.asarray(engine.embed(image, dets.select(np.array([int(np.argmax(side))])))[0], np.float32)
