"""A compact ByteTrack-style multi-object tracker (NumPy + scipy's Hungarian solver).

Per frame: predict every track with a Kalman filter; associate high-score detections with tracked and
recently lost tracks by IoU; then associate the left-over *low*-score detections with the still unmatched
tracked ones (this is ByteTrack's trick: an occluded person's weak detection keeps their id instead of
starting a new one); tentative tracks need a second match to become active; unmatched active tracks turn
lost and end after ``max_lost_frames``. Ids are per tracker instance (one per camera), 1, 2, 3, ...
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy.optimize import linear_sum_assignment

from pipeline.analyze.tracking import kalman
from pipeline.analyze.tracking.geometry import iou_matrix
from pipeline.config.tracking import TrackingConfig

TENTATIVE, TRACKED, LOST = "tentative", "tracked", "lost"


@dataclass(eq=False)
class Track:
    label: str
    class_id: int
    mean: np.ndarray
    cov: np.ndarray
    box: np.ndarray  # last observed x1y1x2y2 (the detection, not the filter estimate)
    score: float
    frame: int
    track_id: int = 0  # 0 until activated
    state: str = TENTATIVE
    hits: int = 1
    lost_frames: int = 0
    det_index: int = -1  # row in this frame's detections, -1 when unmatched this frame
    scores: list[float] = field(default_factory=list)
    votes: dict[str, float] = field(default_factory=dict)  # label -> summed score (label = the majority)

    def vote(self, label: str, score: float) -> None:
        self.votes[label] = self.votes.get(label, 0.0) + score
        if label != self.label and self.votes[label] > self.votes.get(self.label, 0.0):
            self.label = label

    @property
    def predicted_box(self) -> np.ndarray:
        return kalman.cxcywh_to_xyxy(self.mean[None, :4])[0]

    def median_score(self) -> float:
        return float(np.median(self.scores)) if self.scores else 0.0


@dataclass
class TrackerOutput:
    active: list[Track]  # activated tracks that are tracked or lost (det_index tells if seen this frame)
    removed: list[Track]  # activated tracks that ended this frame


_MAX_SCORES = 200  # score history kept per track (median over the most recent ones)


class ByteTracker:
    def __init__(self, cfg: TrackingConfig):
        self.cfg = cfg
        self.frame = 0
        self._next_id = 1
        self.tracks: list[Track] = []  # tentative + tracked + lost
        self._group = {label: f"group:{i}" for i, grp in enumerate(cfg.label_groups) for label in grp}

    def group(self, label: str) -> str:
        """Association key: the label itself, or its label group's name."""
        return self._group.get(label, label)

    def update(
        self, boxes: np.ndarray, scores: np.ndarray, labels: list[str], class_ids=None
    ) -> TrackerOutput:
        """Feed one frame's detections (already filtered); returns the tracks' state after it."""
        cfg = self.cfg
        self.frame += 1
        boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
        scores = np.asarray(scores, np.float64).reshape(-1)
        class_ids = np.zeros(len(labels), np.int64) if class_ids is None else np.asarray(class_ids)
        for t in self.tracks:
            t.det_index = -1
        self._predict()

        high = np.flatnonzero(scores >= cfg.high_score)
        low = np.flatnonzero((scores >= cfg.low_score) & (scores < cfg.high_score))
        confirmed = [t for t in self.tracks if t.state != TENTATIVE]
        tentative = [t for t in self.tracks if t.state == TENTATIVE]

        # 1) high-score detections vs tracked + lost tracks
        m1, un_tracks, un_high = self._associate(confirmed, high, boxes, labels, cfg.match_iou)
        # 2) low-score detections vs tracks still unmatched that were being tracked (not lost ones)
        still_tracked = [t for t in un_tracks if t.state == TRACKED]
        m2, _, _ = self._associate(still_tracked, low, boxes, labels, cfg.low_match_iou)
        # 3) tentative tracks vs the remaining high-score detections
        m3, un_tent, un_high = self._associate(tentative, un_high, boxes, labels, cfg.new_match_iou)

        self._apply(m1 + m2 + m3, boxes, scores, labels)
        for t, _ in m3:
            if t.state == TENTATIVE:
                t.state = TRACKED
                t.track_id = self._take_id()
        removed: list[Track] = []
        dead = set(un_tent)  # a tentative track that misses its second frame was noise
        for t in confirmed:
            if t.det_index >= 0:
                continue
            t.state = LOST
            t.lost_frames += 1
            if t.lost_frames > cfg.max_lost_frames:
                dead.add(t)
                removed.append(t)
        self.tracks = [t for t in self.tracks if t not in dead]

        new_dets = [int(d) for d in un_high if scores[d] >= cfg.new_track_score]
        if new_dets:
            z = kalman.xyxy_to_cxcywh(boxes[new_dets])
            means, covs = kalman.initiate(z)
            for k, d in enumerate(new_dets):
                t = Track(labels[d], int(class_ids[d]), means[k], covs[k], boxes[d].copy(), float(scores[d]),
                          self.frame, det_index=d, scores=[float(scores[d])],
                          votes={labels[d]: float(scores[d])})  # fmt: skip
                if self.frame == 1:  # like ByteTrack: the very first frame activates at once
                    t.state, t.track_id = TRACKED, self._take_id()
                self.tracks.append(t)
        active = [t for t in self.tracks if t.state != TENTATIVE]
        return TrackerOutput(active=active, removed=removed)

    def end_all(self) -> list[Track]:
        """Drop every track; returns the activated ones (for end events)."""
        ended = [t for t in self.tracks if t.state != TENTATIVE]
        self.tracks = []
        return ended

    # -- internals --------------------------------------------------------------------------------
    def _take_id(self) -> int:
        tid = self._next_id
        self._next_id += 1
        return tid

    def _predict(self) -> None:
        if not self.tracks:
            return
        mean = np.stack([t.mean for t in self.tracks])
        cov = np.stack([t.cov for t in self.tracks])
        lost = np.array([t.state == LOST for t in self.tracks])
        mean[lost, 6:8] = 0.0  # a lost box keeps moving but stops growing/shrinking
        mean, cov = kalman.predict(mean, cov)
        for i, t in enumerate(self.tracks):
            t.mean, t.cov = mean[i], cov[i]

    def _associate(self, tracks: list[Track], det_idx: np.ndarray, boxes, labels, min_iou: float):
        det_idx = np.asarray(det_idx, np.int64)
        if not tracks or det_idx.size == 0:
            return [], list(tracks), det_idx
        pred = kalman.cxcywh_to_xyxy(np.stack([t.mean[:4] for t in tracks]))
        iou = iou_matrix(pred, boxes[det_idx])
        if self.cfg.class_aware:
            det_keys = np.array([self.group(labels[d]) for d in det_idx], dtype=object)
            same = np.array([self.group(t.label) for t in tracks], dtype=object)[:, None] == det_keys[None, :]
            iou = np.where(same, iou, 0.0)
        rows, cols = linear_sum_assignment(-iou)
        matches, used_t, used_d = [], set(), set()
        for r, c in zip(rows, cols, strict=True):
            if iou[r, c] >= min_iou:
                matches.append((tracks[r], int(det_idx[c])))
                used_t.add(r)
                used_d.add(c)
        un_t = [t for i, t in enumerate(tracks) if i not in used_t]
        un_d = np.array([d for j, d in enumerate(det_idx) if j not in used_d], np.int64)
        return matches, un_t, un_d

    def _apply(self, matches: list[tuple[Track, int]], boxes: np.ndarray, scores: np.ndarray, labels) -> None:
        """Kalman-correct all matched tracks in one batch and record what they were matched to."""
        if not matches:
            return
        dets = [d for _, d in matches]
        mean = np.stack([t.mean for t, _ in matches])
        cov = np.stack([t.cov for t, _ in matches])
        mean, cov = kalman.update(mean, cov, kalman.xyxy_to_cxcywh(boxes[dets]))
        for i, (t, d) in enumerate(matches):
            t.mean, t.cov = mean[i], cov[i]
            t.box = boxes[d].copy()
            t.score = float(scores[d])
            t.scores.append(t.score)
            t.vote(labels[d], t.score)
            if len(t.scores) > _MAX_SCORES:
                del t.scores[0]
            t.hits += 1
            t.lost_frames = 0
            t.frame = self.frame
            t.det_index = d
            if t.state == LOST:
                t.state = TRACKED
