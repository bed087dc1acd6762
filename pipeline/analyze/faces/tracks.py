"""Face tracks: one physical face from frame to frame, so that a door's identity votes, liveness evidence and
attack scores all come from the same face.

Association is greedy by geometry (centre distance in face sizes and size ratio, not IoU: on a slow CPU the
face stage may analyse one frame a second, and a face walking towards the door moves more than its own width
between analysed frames less often than it stops overlapping itself) **and** by appearance: the face's
embedding must be within ``max_embed_dist`` of the track's last one, and its identity (the matcher's name, or
None for unknown) must be the track's. So:

- a photo of an enrolled person swapped for another face at the same spot, or a live face behind a phone
  showing the enrolled person (the detector alternating between the two), is never one track: the votes of
  one and the head motion or blinks of the other cannot add up to a grant;
- a face whose identity changes, or turns unknown, starts a new track (and so a new vote window); the track
  it replaces is retired, so coming back to the old identity does not resume the old window either.

A new track that takes the place of a track that had matched someone remembers that name (``follows``): a
genuine user who turns away and becomes "unknown" is not a stranger, and the analyzer raises no stranger
alert for that track (it still cannot vote for anybody).

Presentation attacks are remembered the same way: ``mark_attack`` counts the frames of a track that the
attack detector refused, and a track that replaces another at the same spot inherits its count. A phone
replay whose face first scores as a screen and later (closer, the bezel out of the crop) as real stays
refused while it is in view; the spot is cleared only when no face is seen there for ``max_gap_s``.

A face that moves further than ``max_move`` face sizes, changes size by more than ``max_scale``, or is lost
for longer than ``max_gap_s`` (the analyzer passes its doors' vote window: older frames cannot vote anyway)
starts a new track too.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pipeline.analyze.faces.quality import face_side

# dlib ResNet: pairs of one person are almost all below 0.6 (the model's published operating point), other
# people above; looser than the door's calibrated threshold (about 0.45), so a head turn keeps its track
DEFAULT_MAX_EMBED_DIST = 0.6


@dataclass
class _Track:
    id: int
    box: np.ndarray
    t: float
    emb: np.ndarray | None
    identity: str | None
    follows: str | None  # the name matched by the track this one replaced at the same spot


class FaceTracker:
    def __init__(
        self,
        max_gap_s: float = 3.0,
        max_move: float = 1.0,
        max_scale: float = 1.6,
        max_embed_dist: float = DEFAULT_MAX_EMBED_DIST,
    ) -> None:
        self.max_gap_s = max_gap_s
        self.max_move = max_move
        self.max_scale = max_scale
        self.max_embed_dist = max_embed_dist
        self._next = 1
        self._tracks: list[_Track] = []
        self._follows: dict[int, str] = {}
        self._attacks: dict[int, int] = {}

    def mark_attack(self, track_id: int) -> int:
        """Count one frame of this track refused by presentation-attack detection; returns the count."""
        self._attacks[track_id] = self._attacks.get(track_id, 0) + 1
        return self._attacks[track_id]

    def attacks(self, track_id: int) -> int:
        """Frames refused by presentation-attack detection on this track and the tracks it replaced."""
        return self._attacks.get(track_id, 0)

    def follows(self, track_id: int) -> str | None:
        """The enrolled name matched at this spot by the track this one replaced (None: none)."""
        return self._follows.get(track_id)

    def _near(self, b: np.ndarray, p: np.ndarray) -> float | None:
        """Centre distance in face sizes when ``b`` may be the face last seen at ``p``, else None."""
        size_b, size_p = max(face_side(b), 1.0), max(face_side(p), 1.0)
        move = float(np.linalg.norm((b[:2] + b[2:]) / 2 - (p[:2] + p[2:]) / 2)) / max(size_b, size_p)
        scale = max(size_b, size_p) / min(size_b, size_p)
        return move if move <= self.max_move and scale <= self.max_scale else None

    def assign(
        self,
        boxes: np.ndarray,
        t: float,
        embeddings: np.ndarray | None = None,
        identities: list[str | None] | None = None,
    ) -> list[int]:
        """Track ids for this frame's face boxes (N, 4), in their order. Without ``embeddings`` and
        ``identities`` (callers that have none) association is by geometry alone."""
        boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
        n = len(boxes)
        embs = None if embeddings is None or n == 0 else np.asarray(embeddings, np.float64).reshape(n, -1)
        ids: list[str | None] = list(identities) if identities is not None else [None] * n
        alive = [tr for tr in self._tracks if t - tr.t <= self.max_gap_s]
        pairs = []
        nearby: dict[int, list[tuple[float, int]]] = {r: [] for r in range(n)}
        for r, b in enumerate(boxes):
            for c, tr in enumerate(alive):
                move = self._near(b, tr.box)
                if move is None:
                    continue
                nearby[r].append((move, c))
                if identities is not None and ids[r] != tr.identity:
                    continue
                far = embs is not None and tr.emb is not None
                if far and float(np.linalg.norm(embs[r] - tr.emb)) > self.max_embed_dist:  # type: ignore[index]
                    continue
                pairs.append((move, r, c))
        out: list[int] = [0] * n
        used_r: set[int] = set()
        used_c: set[int] = set()
        for _, r, c in sorted(pairs):
            if r in used_r or c in used_c:
                continue
            used_r.add(r)
            used_c.add(c)
            out[r] = alive[c].id
        retired: set[int] = set()
        for r in range(n):
            if r in used_r:
                continue
            out[r] = self._next
            self._next += 1
            # the face at this spot changed (another face, or the same one turning unknown / another name):
            # the old track ends here, and a name it had matched is remembered for stranger alerts
            for _, c in sorted(nearby[r]):
                if c in used_c or c in retired:
                    continue
                retired.add(c)
                if self._attacks.get(alive[c].id):
                    self._attacks[out[r]] = self._attacks[alive[c].id]
                name = alive[c].identity or alive[c].follows
                if name is not None and ids[r] is None:
                    self._follows[out[r]] = name
                break
        continued = {alive[c].id: alive[c] for c in used_c}
        kept = [tr for c, tr in enumerate(alive) if c not in used_c and c not in retired]
        new = []
        for r in range(n):
            prev = continued.get(out[r])
            follows = self._follows.get(out[r]) if prev is None else prev.follows
            emb = None if embs is None else embs[r].copy()
            new.append(_Track(out[r], boxes[r].copy(), t, emb, ids[r], follows))
        self._tracks = kept + new
        live = {tr.id for tr in self._tracks}
        self._follows = {k: v for k, v in self._follows.items() if k in live}
        self._attacks = {k: v for k, v in self._attacks.items() if k in live}
        return out
