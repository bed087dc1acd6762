"""Data that flows between stages.

Frames and detections are plain dataclasses holding NumPy arrays so that a stage can hand them to the
next one through a queue without copying pixels.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(slots=True)
class Frame:
    """One decoded video frame.

    ``image`` is HxWx3 uint8 in BGR order (OpenCV convention, what every detector here expects).
    ``pts`` is the presentation time in seconds from the stream (None when the container has none);
    ``capture_time`` is the wall-clock time (epoch seconds) the frame was captured: for live sources from the
    stream clock (pipeline/ingest/stream_clock.py), so a frame handed out late keeps its old time; for files the
    time the decoder produced it.
    ``seq`` counts decoded frames per camera from 0 and survives reconnects (it never goes back).
    """

    camera_id: str
    seq: int
    pts: float | None
    capture_time: float
    image: np.ndarray

    @property
    def height(self) -> int:
        return int(self.image.shape[0])

    @property
    def width(self) -> int:
        return int(self.image.shape[1])


@dataclass(slots=True)
class Detections:
    """Detections of one frame as parallel arrays (N rows).

    boxes: (N, 4) float32, x1 y1 x2 y2 in pixels of the frame they came from.
    scores: (N,) float32 in [0, 1].
    class_ids: (N,) int32, indices into ``labels`` of the model that produced them.
    labels: per-row class name (len N).
    landmarks: optional (N, K, 2) float32 keypoints in pixels (faces: K=5: left eye, right eye, nose,
      left mouth corner, right mouth corner, as seen in the image).
    """

    boxes: np.ndarray
    scores: np.ndarray
    class_ids: np.ndarray
    labels: list[str]
    landmarks: np.ndarray | None = None

    @classmethod
    def empty(cls, with_landmarks: bool = False) -> Detections:
        return cls(
            boxes=np.zeros((0, 4), np.float32),
            scores=np.zeros((0,), np.float32),
            class_ids=np.zeros((0,), np.int32),
            labels=[],
            landmarks=np.zeros((0, 5, 2), np.float32) if with_landmarks else None,
        )

    def __len__(self) -> int:
        return int(self.boxes.shape[0])

    def select(self, keep: np.ndarray) -> Detections:
        """Rows picked by a boolean mask or an index array, in that order."""
        keep = np.asarray(keep)
        idx = np.flatnonzero(keep) if keep.dtype == bool else keep.astype(np.int64)
        return Detections(
            boxes=self.boxes[idx],
            scores=self.scores[idx],
            class_ids=self.class_ids[idx],
            labels=[self.labels[i] for i in idx.tolist()],
            landmarks=None if self.landmarks is None else self.landmarks[idx],
        )

    def to_dicts(self) -> list[dict]:
        """JSON-ready rows (boxes rounded to 0.1 px, scores to 4 decimals)."""
        rows = []
        for i in range(len(self)):
            row = {
                "label": self.labels[i],
                "class_id": int(self.class_ids[i]),
                "score": round(float(self.scores[i]), 4),
                "box": [round(float(v), 1) for v in self.boxes[i]],
            }
            if self.landmarks is not None:
                row["landmarks"] = [[round(float(x), 1), round(float(y), 1)] for x, y in self.landmarks[i]]
            rows.append(row)
        return rows


@dataclass(frozen=True, slots=True)
class FaceMatch:
    """One face the face stage saw in a frame and what the gallery made of it.

    ``identity`` is set only when the decision rule accepted the match (distance within the threshold and
    a margin to the second-best person); ``nearest`` is the closest person either way. ``track_id`` follows
    the same face from frame to frame (the door vote counts frames of one track). ``reason`` says why the
    face does not vote, or is None when it does.
    """

    box: tuple[float, float, float, float]  # x1 y1 x2 y2, pixels
    identity: str | None
    nearest: str | None
    distance: float | None  # mean template distance to ``nearest`` (None with an empty gallery)
    margin: float | None  # second-best distance minus ``distance`` (None with fewer than two people)
    track_id: int | None = None
    reason: str | None = None

    def to_dict(self) -> dict:
        return {
            "box": [round(v, 1) for v in self.box],
            "identity": self.identity,
            "nearest": self.nearest,
            "distance": None if self.distance is None else round(self.distance, 4),
            "margin": None if self.margin is None else round(self.margin, 4),
            "track_id": self.track_id,
            "reason": self.reason,
        }


@dataclass(frozen=True, slots=True)
class ScanInfo:
    """Which parts of a frame the detector saw (``cameras[].detect``; see pipeline/detect/regions/).

    kind: "full" (the whole frame), "tiles" (tiles plus the whole frame), "regions" (motion/object regions)
    or "skip" (static scene, no inference). crops: detector inputs run for this frame. carried: objects
    reported from an earlier scan because their area was not scanned. motion_boxes: motion blobs found.
    """

    kind: str
    crops: int
    carried: int = 0
    motion_boxes: int = 0

    def to_dict(self) -> dict:
        return {
            "kind": self.kind,
            "crops": self.crops,
            "carried": self.carried,
            "motion_boxes": self.motion_boxes,
        }


@dataclass(slots=True)
class FrameResult:
    """A frame with what the detection stage found in it, plus whatever later stages attach.

    ``faces`` is set by the face stage (None when no face stage ran on this frame); later analyzers (tracking
    sub-labels) read it. ``extras`` is free-form scratch space for tools and tests.
    """

    frame: Frame
    detections: Detections
    detector: str
    inference_ms: float = 0.0
    extras: dict = field(default_factory=dict)
    faces: list[FaceMatch] | None = None
    scan: ScanInfo | None = None  # set when cameras[].detect regions or tiling are on
