"""Presentation-attack detection (issue 18): our MiniFASNet definition loads the published state dicts and tells
real faces from screens on real frames; the crop follows the published convention; the door's ``pad`` modes
fail closed; YAML's ``off`` means off; a genuine user turning away is not a stranger."""

from __future__ import annotations

import os
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from pipeline.analyze.doors.policy import DoorPolicy, FaceVote
from pipeline.analyze.faces.antispoof import AntiSpoof, pad_crop, scaled_crop_box
from pipeline.analyze.faces.tracks import FaceTracker
from pipeline.config.doors import DEFAULT_LIVENESS, DoorConfig
from pipeline.ingest.clip_frames import clip_frames

SHARED = Path(
    os.environ.get("VIDPIPE_SHARED_DATA") or Path(__file__).resolve().parents[2] / "shared" / "data"
)
ATTACKS = SHARED / "liveness" / "attacks"
KEY = "k" * 32
T0 = datetime(2026, 11, 23, 10, 0, tzinfo=UTC).timestamp()  # a Monday, 10:00 UTC
needs_clips = pytest.mark.skipif(not ATTACKS.is_dir(), reason="needs ../shared/data/liveness/attacks")


def door(**kw) -> DoorConfig:
    base = {"id": "front", "cameras": ["cam1"], "allow_people": ["alice"], "secret": KEY, "k_frames": 3,
            "window_s": 2.0, "cooldown_s": 5.0, "min_face_px": 50}  # fmt: skip
    return DoorConfig.model_validate({**base, **kw})


def feed(p: DoorPolicy, frames: list[list[FaceVote]], dt: float = 0.2) -> list[dict]:
    out = []
    for i, faces in enumerate(frames):
        t = T0 + i * dt
        out += p.observe(t, faces, now=t + 0.05)
    return out


def vote(who: str | None = "alice", pad: float | None = 0.9, track: int = 1, **kw) -> FaceVote:
    return FaceVote(who, 0.3, 100.0, track_id=track, pad=pad, **kw)


# ---- config -----------------------------------------------------------------------------------------------


def test_liveness_modes_and_yaml_off():
    assert (
        DoorConfig.model_validate(
            yaml.safe_load("{id: d, cameras: [c], secret: " + KEY + ", liveness: off}")
        ).liveness
        == "off"
    )
    for mode in ("pad", "pad+motion", "pad+blink", "pad+any", "pad+all", "any", "off"):
        assert door(liveness=mode).liveness == mode
    with pytest.raises(ValueError, match="liveness"):
        door(liveness="pad+nothing")
    with pytest.raises(ValueError, match="liveness"):
        door(liveness=True)  # YAML "on": not a mode
    assert door().liveness == DEFAULT_LIVENESS == "pad"


# ---- policy -----------------------------------------------------------------------------------------------


def test_pad_mode_grants_real_faces_only_k_in_a_row():
    assert [
        d["decision"] for d in feed(DoorPolicy(door(liveness="pad"), pad_threshold=0.5), [[vote()]] * 3)
    ] == ["granted"]
    # one frame scored as an attack voids the window: three real-looking frames must follow
    p = DoorPolicy(door(liveness="pad"), pad_threshold=0.5)
    assert feed(p, [[vote()], [vote()], [vote(pad=0.2)], [vote()], [vote()]]) == []
    assert p.why_not_counts["presentation attack"] == 1
    # an unscored face never votes for a grant (fail closed)
    assert feed(DoorPolicy(door(liveness="pad")), [[vote(pad=None)]] * 5) == []
    # the threshold is the policy's
    assert feed(DoorPolicy(door(liveness="pad"), pad_threshold=0.95), [[vote(pad=0.9)]] * 5) == []
    d = feed(DoorPolicy(door(liveness="pad")), [[vote(pad=0.9)], [vote(pad=0.7)], [vote(pad=0.8)]])
    assert d[0]["pad_min"] == 0.7 and "liveness pad" in d[0]["reason"]


def test_a_face_refused_twice_cannot_vote_while_in_view():
    """A phone replay scores as a screen first, then (closer, the bezel out of the crop) sometimes as real:
    the tracker's count of refused frames keeps that face out."""
    p = DoorPolicy(door(liveness="pad"))
    assert feed(p, [[vote(pad=0.9, attacks=2)]] * 5) == []
    p = DoorPolicy(door(liveness="pad"))
    assert [d["decision"] for d in feed(p, [[vote(pad=0.9, attacks=1)]] * 3)] == [
        "granted"
    ]  # one blurred frame
    tr = FaceTracker()
    box = np.array([[100, 100, 200, 200]], float)
    e = np.zeros((1, 128))
    a = tr.assign(box, 0.0, e, [None])[0]
    tr.mark_attack(a)
    tr.mark_attack(a)
    b = tr.assign(box, 0.2, e, ["alice"])[0]  # the screen's face now matched: a new track at the same spot...
    assert b != a and tr.attacks(b) == 2  # ...that inherits the refusals
    assert tr.attacks(tr.assign(box + 400, 0.4, e, ["alice"])[0]) == 0  # elsewhere: a new face


def test_pad_combined_with_motion_needs_both():
    p = DoorPolicy(door(liveness="pad+motion"))
    assert feed(p, [[vote()]] * 4) == []  # real-looking but no motion
    p = DoorPolicy(door(liveness="pad+motion"))
    assert feed(p, [[vote(pad=0.1, motion_at=T0)]] * 4) == []  # motion but a screen
    p = DoorPolicy(door(liveness="pad+motion"))
    assert [d["decision"] for d in feed(p, [[vote(motion_at=T0)]] * 3)] == ["granted"]


def test_strangers_are_still_decided_under_pad():
    assert [d["decision"] for d in feed(DoorPolicy(door()), [[vote(None, pad=0.1)]] * 3)] == ["unknown"]


def test_turning_away_after_a_match_is_not_a_stranger():
    p = DoorPolicy(door(liveness="off"))
    assert feed(p, [[vote(None, track=7, follows="alice")]] * 6) == []
    assert p.why_not_counts["turned away"] >= 1


# ---- tracker ----------------------------------------------------------------------------------------------


def test_tracker_splits_on_identity_or_appearance_change_and_remembers_who_turned_away():
    tr = FaceTracker(max_gap_s=3.0)
    box = np.array([[100, 100, 200, 200]], float)
    e_alice, e_other = np.zeros((1, 128)), np.full((1, 128), 0.1)  # 1.13 apart
    a = tr.assign(box, 0.0, e_alice, ["alice"])[0]
    assert tr.assign(box + 5, 0.2, e_alice + 0.01, ["alice"])[0] == a  # same face: same track
    b = tr.assign(box, 0.4, e_alice, [None])[0]  # turned unknown: a new track, remembered as alice's
    assert b != a and tr.follows(b) == "alice"
    c = tr.assign(box, 0.6, e_alice, ["alice"])[0]  # back to alice: not the old window either
    assert c not in (a, b)
    d = tr.assign(box, 0.8, e_other, ["alice"])[0]  # same name, a face that does not look like the last one
    assert d != c
    assert tr.assign(box, 1.0, e_other, ["alice"])[0] == d
    assert tr.assign(np.zeros((0, 4)), 1.2, np.zeros((0, 128), np.float32), []) == []  # a frame without faces
    # geometry only (no embeddings, no names): one track, as before
    g = FaceTracker()
    assert g.assign(box, 0.0)[0] == g.assign(box + 5, 0.2)[0]


# ---- the model on real frames ----------------------------------------------------------------------------


def test_crop_box_scales_about_the_centre_and_stays_inside():
    assert scaled_crop_box(np.array([100, 100, 200, 200]), 2.0, 1000, 1000) == (50, 50, 250, 250)
    x1, y1, x2, y2 = scaled_crop_box(np.array([0, 0, 100, 100]), 2.7, 640, 480)
    assert (x1, y1) == (0, 0) and x2 <= 639 and y2 <= 479 and x2 - x1 == pytest.approx(270, abs=1)
    x1, y1, x2, y2 = scaled_crop_box(np.array([300, 300, 460, 460]), 4.0, 640, 480)  # too big: shrunk to fit
    assert x1 >= 0 and y1 >= 0 and x2 <= 639 and y2 <= 479
    assert pad_crop(np.zeros((480, 640, 3), np.uint8), np.array([300, 300, 460, 460]), 4.0).shape == (
        80,
        80,
        3,
    )


@pytest.fixture(scope="module")
def pad() -> AntiSpoof:
    return AntiSpoof()


def test_models_load_strictly_and_output_three_classes(pad):
    for net, scale in pad.nets:
        with torch.inference_mode():
            out = net(torch.zeros(2, 3, 80, 80))
        assert out.shape == (2, 3) and scale in (2.7, 4.0)
    assert len(pad.nets) == 2


@needs_clips
def test_real_faces_score_real_and_screens_do_not(pad):
    from pipeline.analyze.faces.enroll import FaceEngine
    from pipeline.config.faces import FacesConfig

    engine = FaceEngine.from_config(FacesConfig(detector_min_face_px=80))

    def scores(name: str) -> list[float]:
        out = []
        for _, img in clip_frames(ATTACKS / name, fps=2, start=1.0, end=3.0):
            dets = engine.detect(img)
            if len(dets):  # replays open on the phone's UI before the face fills the screen
                b = dets.boxes[int(np.argmax(dets.boxes[:, 2] - dets.boxes[:, 0]))]
                out.append(float(pad.score(img, b[None])[0]))
        assert len(out) >= 2, f"{name}: faces in {len(out)} of 4 frames"
        return out

    genuine = scores("tdp_genuine_beardman.mov") + scores("lestari_genuine.mp4")
    attack = scores("lestari_photo_on_phone_attack.mp4") + scores(
        "tdp_replay_cam-realme6s_screen-realme6pro_woman2.mp4"
    )
    assert np.median(genuine) > 0.9, genuine
    assert np.median(attack) < 0.2, attack
