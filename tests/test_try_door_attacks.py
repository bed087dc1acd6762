"""Real presentation attacks through ``faces try-door`` at the DEFAULT door config (issue 18): screens and a
photo on a phone give no grant, the live people open within 3 s of video.

People are enrolled from their genuine clip (``faces enroll --video``'s frame picker). The clips are played
by the real command (a subprocess: its exit status and JSON lines), at the door camera's detect_fps (5), the
attacks for their first 7 s, the genuine clips for 3.5 s. A subset of the shared attack set, to keep CI near
a minute of CPU: the photo-on-phone attack, the woman2 phone replay (held apart from choosing the threshold;
it opened the door before a face refused twice was kept out) and two genuine clips. ``benchmarks/eval_pad.py``
and the try-door run in BENCHMARKS.md (issue 18) cover all of them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pipeline.analyze.faces.enroll import FaceEngine, enroll_images
from pipeline.analyze.faces.gallery import Gallery
from pipeline.analyze.faces.video_enroll import best_frames
from pipeline.config.faces import FacesConfig

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("VIDPIPE_SHARED_DATA") or ROOT.parent / "shared" / "data")
ATTACKS = SHARED / "liveness" / "attacks"
ATTACK_CLIPS = {
    "lestari_photo_on_phone_attack.mp4": "lestari",
    "tdp_replay_cam-realme6s_screen-realme6pro_woman2.mp4": "woman2",
}
GENUINE_CLIPS = {"tdp_genuine_woman2.mov": "woman2", "lestari_genuine.mp4": "lestari"}
ENROLL_FROM = {
    "woman2": "tdp_genuine_woman2.mov",
    "lestari": "lestari_genuine.mp4",
}
ATTACK_SECONDS = 7.0  # the woman2 replay scored real for a few frames in a row from 6 s on (BENCHMARKS.md)
GENUINE_SECONDS = 3.5

pytestmark = [
    pytest.mark.skipif(not ATTACKS.is_dir(), reason="needs ../shared/data/liveness/attacks"),
    pytest.mark.timeout(
        900
    ),  # about 100 analysed frames and 6 enrollment frames; CPU-bound on a shared machine
]


@pytest.fixture(scope="module")
def config(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("try_door")
    faces = {"enabled": True, "gallery_path": str(tmp / "gallery.sqlite"), "detector_min_face_px": 60}
    cfg = {
        "cameras": [{"id": "door", "source": "/dev/null", "detect_fps": 5}],
        "faces": faces,
        # the default door: liveness, k_frames, window_s, thresholds all left at their defaults
        "doors": [{"id": "front", "cameras": ["door"], "allow_people": sorted(ENROLL_FROM),
                   "secret": "try-door-test-secret-0123", "audit_log": str(tmp / "audit.jsonl")}],
    }  # fmt: skip
    path = tmp / "door.yaml"
    path.write_text(yaml.safe_dump(cfg))
    fcfg = FacesConfig(**faces)
    engine = FaceEngine.from_config(fcfg)
    with Gallery(fcfg.gallery_path) as g:
        for name, clip in ENROLL_FROM.items():
            picked = best_frames(ATTACKS / clip, engine, fcfg, end=3.0, count=3, sample_fps=2.0)
            assert picked, f"no enrollable frame in {clip}"
            report = enroll_images(g, engine, fcfg, name, [(f"{clip}@{c.t}", c.image) for c in picked])
            assert report.accepted, report.lines()
    return path


def _try_door(config: Path, clips: list[str], seconds: float) -> list[dict]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "VIDPIPE_AUDIT_KEY": "try-door-audit-key-0123456789"}
    cmd = [sys.executable, str(ROOT / "run_pipeline.py"), "faces", "try-door", "--config", str(config),
           "--door", "front", "--end", str(seconds), *[str(ATTACKS / c) for c in clips]]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]


def test_attacks_never_open_and_live_people_open_within_3_s(config):
    lines = _try_door(config, list(ATTACK_CLIPS), ATTACK_SECONDS)
    lines += _try_door(config, list(GENUINE_CLIPS), GENUINE_SECONDS)
    summaries = {Path(r["clip"]).name: r for r in lines if r.get("summary")}
    assert set(summaries) == set(ATTACK_CLIPS) | set(GENUINE_CLIPS)
    errors = [r for r in lines if str(r.get("reason", "")).startswith("error")]
    assert errors == []  # e.g. a frame without a face must not fail the analysis
    for clip in ATTACK_CLIPS:
        s = summaries[clip]
        assert s["error"] is None and s["frames_analysed"] >= 10, s
        assert s["granted"] == 0, (clip, [r for r in lines if Path(r["clip"]).name == clip])
        # refused because it was seen as an attack, not because no face was matched
        assert s["why_not"].get("presentation attack", 0) >= 3, s
    for clip, person in GENUINE_CLIPS.items():
        s = summaries[clip]
        grants = [r for r in lines if Path(r["clip"]).name == clip and r.get("decision") == "granted"]
        assert grants and grants[0]["person"] == person, s
        assert s["first_grant_t"] is not None and s["first_grant_t"] <= 3.0, s
        assert (
            grants[0]["pad_min"] >= FacesConfig().liveness.pad_threshold
            and "liveness pad" in grants[0]["reason"]
        )


def test_enroll_video_and_try_door_name_what_is_wrong(tmp_path, config):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    base = [sys.executable, str(ROOT / "run_pipeline.py"), "faces", "--config", str(config)]
    cases = [
        (["enroll", "--name", "x", "--video", str(tmp_path / "missing.mp4")], "missing.mp4: no such file"),
        (["enroll", "--name", "x"], "give photos or --video"),
        (["try-door", "--door", "nope", str(tmp_path / "a.mp4")], "no door 'nope'"),
    ]
    for args, message in cases:
        proc = subprocess.run([*base, *args], capture_output=True, text=True, timeout=120, env=env)
        assert proc.returncode == 2 and message in proc.stderr, (args, proc.stderr[-500:])
