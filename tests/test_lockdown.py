"""Door lock-down: a locked-down door grants nobody (fails closed on a damaged state file), and every
lock and lift is in the door's audit chain."""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

import av
import cv2
import numpy as np
import pytest
from skimage import data

from pipeline.analyze.doors.audit import verify_log
from pipeline.analyze.doors.lockdown import Lockdown, LockdownError, lockdown_path
from pipeline.analyze.faces.analyzer import FaceAccessAnalyzer
from pipeline.analyze.faces.enroll import FaceEngine, enroll_images
from pipeline.analyze.faces.gallery import Gallery
from pipeline.config.doors import DoorConfig
from pipeline.config.faces import FacesConfig
from pipeline.core.types import Detections, Frame, FrameResult
from pipeline.ingest.demo_media import encode_bgr_video

KEY = "front-door-secret-0123456789"


def test_lock_state_is_audited_and_a_damaged_file_fails_closed(tmp_path):
    audit = tmp_path / "audit.jsonl"
    ld = Lockdown(lockdown_path(audit))
    assert not ld.is_locked("front")
    ld.set("front", True, by="test", reason="fire drill", audit_log=audit)
    assert ld.is_locked("front") and not ld.is_locked("back")
    assert Lockdown(lockdown_path(audit)).is_locked("front")  # another reader (process) agrees
    ld.set("front", False, by="test", reason="drill over", audit_log=audit)
    assert not ld.is_locked("front")
    ok, n, _, _ = verify_log(audit)
    records = [json.loads(line)["record"] for line in audit.read_text().splitlines()]
    assert ok and n == 2
    assert [(r["type"], r["door_id"], r["locked"], r["reason"]) for r in records] == [
        ("doors.lockdown", "front", True, "fire drill"),
        ("doors.lockdown", "front", False, "drill over"),
    ]
    lockdown_path(audit).write_text("{not json")
    assert ld.is_locked("front") and ld.is_locked("back"), "an unreadable state must lock every door"
    # an attacker (or a slip) cannot lift that by changing one door: rewriting the damaged file from an
    # empty state would unlock every other door, so no change is made until the file is repaired
    for locked in (False, True):
        with pytest.raises(LockdownError, match="unreadable lock-down state"):
            ld.set("front", locked, by="test", reason="after damage", audit_log=audit)
        assert ld.is_locked("front") and ld.is_locked("back")
    assert lockdown_path(audit).read_text() == "{not json"
    assert verify_log(audit)[1] == 2, "a refused change is not audited as made"


def test_a_lock_written_in_the_same_clock_tick_is_seen(tmp_path):
    # file timestamps are coarse (a kernel tick): a lock written by another instance (the web app, the CLI)
    # right after the decision path read the file can carry the same mtime; it must still be seen
    audit = tmp_path / "audit.jsonl"
    reader, writer = Lockdown(lockdown_path(audit)), Lockdown(lockdown_path(audit))
    writer.set("back", True, by="test", reason="first", audit_log=audit)
    assert not reader.is_locked("front")
    mtime = lockdown_path(audit).stat().st_mtime_ns
    writer.set("front", True, by="test", reason="second", audit_log=audit)
    os.utime(lockdown_path(audit), ns=(mtime, mtime))  # what a write in the same tick looks like
    assert reader.is_locked("front")


def test_concurrent_locks_of_doors_sharing_the_file_are_all_kept(tmp_path):
    # the web app sets lock-downs from a thread pool; doors auditing into one folder share the state file,
    # so two requests at once must not lose one of the locks (the audit would say locked, the file not)
    audit = tmp_path / "audit.jsonl"
    doors = [f"door{i}" for i in range(16)]
    barrier = threading.Barrier(len(doors))

    def lock(door_id: str) -> None:
        barrier.wait()
        Lockdown(lockdown_path(audit)).set(door_id, True, by="test", reason="incident", audit_log=audit)

    threads = [threading.Thread(target=lock, args=(d,)) for d in doors]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    reader = Lockdown(lockdown_path(audit))
    assert [d for d in doors if not reader.is_locked(d)] == []


def _face_video(path: Path, face: np.ndarray, n: int = 6) -> Path:
    rng = np.random.default_rng(1)
    bg = cv2.GaussianBlur(rng.integers(0, 255, (360, 480, 3), dtype=np.uint8), (0, 0), 3)
    fh, fw = face.shape[:2]

    def frames():
        for t in range(n):
            img = bg.copy()
            img[(360 - fh) // 2 : (360 - fh) // 2 + fh, 20 + 8 * t : 20 + 8 * t + fw] = face
            yield img

    return encode_bgr_video(path, frames(), 10, crf=20)


@pytest.fixture(scope="module")
def engine() -> FaceEngine:
    return FaceEngine.from_config(FacesConfig())


def _decisions(tmp_path: Path, engine: FaceEngine, video: Path) -> list[dict]:
    faces = FacesConfig(enabled=True, gallery_path=str(tmp_path / "gallery.sqlite"), detector_min_face_px=40)
    door = DoorConfig(
        id="front", cameras=["cam1"], allow_people=["eileen"], secret=KEY, k_frames=3, window_s=60,
        min_face_px=50, max_frame_age_s=30, audit_log=str(tmp_path / "audit.jsonl"),
        liveness="off",  # the video is a moving photo; liveness has its own tests
    )  # fmt: skip
    analyzer = FaceAccessAnalyzer(faces, [door], "cam1", engine=engine)
    out = []
    try:
        t0 = time.time()
        with av.open(str(video)) as c:
            for i, f in enumerate(c.decode(video=0)):
                # capture time on the stream clock: the frames are 0.1 s apart however slow this machine is
                # (face tracks, and so door votes, break on gaps in capture time)
                pts = float(f.pts * f.time_base)
                frame = Frame("cam1", i, pts, t0 + pts, f.to_ndarray(format="bgr24"))
                for ev in analyzer.process(FrameResult(frame, Detections.empty(), "yolo")):
                    if ev.type == "doors.decision":
                        out.append(ev.data)
    finally:
        analyzer.close()
    return out


def test_a_locked_down_door_does_not_grant_an_enrolled_face(tmp_path, engine):
    ast = cv2.cvtColor(data.astronaut(), cv2.COLOR_RGB2BGR)
    with Gallery(tmp_path / "gallery.sqlite") as g:
        assert enroll_images(g, engine, FacesConfig(), "eileen", [("a.png", ast)]).accepted == ["a.png"]
    face = cv2.resize(cv2.flip(ast[0:400, 50:450], 1), (300, 300), interpolation=cv2.INTER_AREA)
    video = _face_video(tmp_path / "eileen.mp4", face)
    audit = tmp_path / "audit.jsonl"

    Lockdown(lockdown_path(audit)).set("front", True, by="test", reason="incident", audit_log=audit)
    locked = _decisions(tmp_path, engine, video)
    assert locked and all(d["decision"] == "denied" for d in locked)
    assert {d["reason"] for d in locked} == {"door locked down"} and locked[0]["person"] == "eileen"

    Lockdown(lockdown_path(audit)).set("front", False, by="test", reason="all clear", audit_log=audit)
    lifted = _decisions(tmp_path, engine, video)
    assert lifted and lifted[0]["decision"] == "granted", "the same face must be granted once lifted"
    ok, n, _, _ = verify_log(audit)
    kinds = [json.loads(line)["record"].get("type") for line in audit.read_text().splitlines()]
    # one chain: the lock, the decisions while locked, the lift, the decisions after
    assert ok and n == len(kinds) == 2 + len(locked) + len(lifted)
    assert kinds[0] == "doors.lockdown" and kinds[1 + len(locked)] == "doors.lockdown"
