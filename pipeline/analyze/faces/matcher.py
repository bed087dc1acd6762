"""Identify a face embedding against the gallery.

Decision rule: the person with the smallest mean template distance is accepted only when that distance is
within ``threshold`` **and** the second-best person is at least ``margin`` further away. The margin keeps a
face that sits between two enrolled people (a look-alike, a bad crop) from being given to either of them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

REASON_THRESHOLD = "above threshold"
REASON_MARGIN = "below margin"
REASON_EMPTY = "gallery empty"


@dataclass(frozen=True)
class Match:
    identity: str | None  # None = unknown (or rejected by the rule: see ``reason``)
    distance: float  # mean distance to the nearest person's templates (inf with an empty gallery)
    nearest: str | None  # that person, even when too far to count
    margin: float = float("inf")  # second-best mean distance minus ``distance`` (inf with one person)
    reason: str | None = None  # why ``identity`` is None (REASON_*), None when accepted


def mean_distance(templates: np.ndarray, embedding: np.ndarray) -> float:
    """Mean Euclidean distance from ``embedding`` to one person's templates (N, D)."""
    e = np.asarray(embedding, np.float32).reshape(-1)
    return float(np.linalg.norm(np.asarray(templates, np.float32) - e, axis=1).mean())


class Matcher:
    def __init__(self, templates: dict[str, np.ndarray], threshold: float, margin: float = 0.0) -> None:
        if threshold <= 0:
            raise ValueError(f"matcher threshold must be > 0, got {threshold}")
        if margin < 0:
            raise ValueError(f"matcher margin must be >= 0, got {margin}")
        self.threshold = float(threshold)
        self.margin = float(margin)
        self.names = sorted(templates)
        self._templates = [np.asarray(templates[n], np.float32) for n in self.names]

    def __len__(self) -> int:
        return len(self.names)

    def mean_distances(self, embedding: np.ndarray) -> np.ndarray:
        return np.array([mean_distance(t, embedding) for t in self._templates], np.float64)

    def identify(self, embedding: np.ndarray) -> Match:
        if not self.names:
            return Match(None, float("inf"), None, reason=REASON_EMPTY)
        return decide(self.mean_distances(embedding), self.names, self.threshold, self.margin)


def decide(distances: np.ndarray, names: list[str], threshold: float, margin: float) -> Match:
    """The decision rule over one probe's mean distances to each person (shared with calibration)."""
    order = np.argsort(distances)
    best = float(distances[order[0]])
    second = float(distances[order[1]]) if len(order) > 1 else float("inf")
    name = names[int(order[0])]
    gap = second - best
    if best > threshold:
        return Match(None, best, name, gap, REASON_THRESHOLD)
    if gap < margin:
        return Match(None, best, name, gap, REASON_MARGIN)
    return Match(name, best, name, gap, None)
