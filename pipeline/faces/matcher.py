"""Identify a face embedding against the gallery: the person with the smallest mean template distance."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Match:
    identity: str | None  # None = unknown
    distance: float  # mean distance to the nearest person's templates (inf with an empty gallery)
    nearest: str | None  # that person, even when too far to count


class Matcher:
    def __init__(self, templates: dict[str, np.ndarray], threshold: float) -> None:
        if threshold <= 0:
            raise ValueError(f"matcher threshold must be > 0, got {threshold}")
        self.threshold = float(threshold)
        self.names = sorted(templates)
        self._templates = [np.asarray(templates[n], np.float32) for n in self.names]

    def __len__(self) -> int:
        return len(self.names)

    def mean_distances(self, embedding: np.ndarray) -> np.ndarray:
        e = np.asarray(embedding, np.float32).reshape(-1)
        return np.array([float(np.linalg.norm(t - e, axis=1).mean()) for t in self._templates], np.float64)

    def identify(self, embedding: np.ndarray) -> Match:
        if not self.names:
            return Match(None, float("inf"), None)
        d = self.mean_distances(embedding)
        i = int(np.argmin(d))
        name = self.names[i]
        return Match(name if d[i] <= self.threshold else None, float(d[i]), name)
