"""Event ids that a replayed frame reproduces, so a consumer can dedupe by ``event_id``.

When a shard dies, its file cameras start again from the top on the replacement shard, and the events of
every re-decoded frame must not look new: their ids are a hash of (run, camera, placement epoch, frame,
event type, n-th event of that type for the frame). Live cameras get a fresh epoch per placement (their
frames are new, never replayed), file cameras keep epoch 0 (the replacement replays the same frames).
Events without a frame (status) keep their random id.
"""

from __future__ import annotations

import threading
import uuid

from pipeline.core.events import Event

_NAMESPACE = uuid.UUID("0b7a6d8e-2f43-4e0f-9a55-1c7e3f0b9d21")


class StableEventIds:
    def __init__(self, run_id: str, epochs: dict[str, int]) -> None:
        self.run_id = run_id
        self.epochs = epochs  # camera id -> placement epoch (0 for replayable file sources)
        self._last: dict[str, tuple[int, dict[str, int]]] = {}  # camera -> (frame seq, count per type)
        self._lock = threading.Lock()

    def assign(self, event: Event) -> None:
        if event.frame_seq is None:
            return
        cam = event.camera_id
        with self._lock:
            seq, counts = self._last.get(cam, (-1, {}))
            if seq != event.frame_seq:
                counts = {}
                self._last[cam] = (event.frame_seq, counts)
            n = counts.get(event.type, 0)
            counts[event.type] = n + 1
            epoch = self.epochs.get(cam, 0)
        key = f"{self.run_id}/{cam}/{epoch}/{event.frame_seq}/{event.type}/{n}"
        event.event_id = uuid.uuid5(_NAMESPACE, key).hex
