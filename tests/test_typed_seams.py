"""The typed seams: one Event-from-frame builder, string enums whose JSON is what consumers already parse."""

from __future__ import annotations

import json

import numpy as np

from pipeline.config.var_dir import RuntimePaths
from pipeline.core.events import Event
from pipeline.core.states import CameraStatus, StageState
from pipeline.core.types import Frame


def test_event_for_frame_carries_the_frame_time_base():
    f = Frame("cam7", 42, 1.68, 1_700_000_000.5, np.zeros((2, 2, 3), np.uint8))
    ev = Event.for_frame("tracks.new", f, {"track_id": 1})
    assert (ev.camera_id, ev.ts, ev.frame_seq, ev.pts, ev.data) == (
        "cam7",
        1_700_000_000.5,
        42,
        1.68,
        {"track_id": 1},
    )
    # no frame (a track ended at shutdown, a decision on an outage): camera and time stand in
    ev = Event.for_frame("doors.decision", None, {}, camera_id="cam7", ts=5.0)
    assert (ev.camera_id, ev.ts, ev.frame_seq, ev.pts) == ("cam7", 5.0, None, None)


def test_state_enums_serialise_as_the_plain_strings():
    ev = Event(type="status.camera", camera_id="c", data={"status": CameraStatus.RECONNECTING})
    assert json.loads(ev.to_json())["data"]["status"] == "reconnecting"
    assert Event.from_json(ev.to_json()).data["status"] == CameraStatus.RECONNECTING
    assert json.dumps({"detect": StageState.FAILED}) == '{"detect": "failed"}'  # /healthz


def test_runtime_paths_resolve_var_prefix_only(tmp_path):
    p = RuntimePaths(tmp_path / "state")
    assert p.resolve("var/faces.sqlite") == tmp_path / "state" / "faces.sqlite"
    assert p.resolve("/srv/x.sqlite").as_posix() == "/srv/x.sqlite"
    assert p.resolve("data/x.sqlite").as_posix() == "data/x.sqlite"
    assert p.resolve(p.resolve("var/a")) == p.resolve("var/a")  # resolving twice changes nothing
