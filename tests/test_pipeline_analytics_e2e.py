"""The whole product through the runner, configured from YAML as a user would: enroll with the CLI, then a
camera file → YOLO / MTCNN + dlib ResNet → tracking and door access → Redis, checked from Redis alone.

The enrolled person's video is built from a derived copy of skimage's astronaut photo (the only real face
photos shipped by the installed packages are the astronaut and the cameraman); see test_face_access_e2e.py.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import redis
import yaml
from skimage import data

from pipeline.analyze.doors.signing import Verifier
from pipeline.config.schema import load_config
from pipeline.core.events import Event
from pipeline.ingest.demo_media import encode_bgr_video
from pipeline.run.runner import Pipeline
from tests.test_face_access_e2e import _face_video

REPO = Path(__file__).resolve().parents[1]
SECRET = "front-door-secret-for-the-e2e-test"


def _events(client: redis.Redis, family: str) -> list[Event]:
    return [Event.from_json(f[b"event"]) for _, f in client.xrange(f"vidpipe:stream:{family}")]


def _walking_person_clip(path: Path, frames: int = 24) -> Path:
    """skimage's cameraman photo (a real person) sliding across a textured background."""
    person = cv2.cvtColor(data.camera(), cv2.COLOR_GRAY2BGR)[::2, ::2]  # 256x256
    bg = cv2.GaussianBlur(np.random.default_rng(0).integers(0, 255, (360, 640, 3), dtype=np.uint8), (0, 0), 4)

    def render():
        for t in range(frames):
            img = bg.copy()
            x = 20 + 12 * t
            img[50:306, x : x + 256] = person
            yield img

    return encode_bgr_video(path, render(), 10, crf=18)


def test_yaml_config_enroll_cli_and_pipeline_open_the_door_and_track_people(
    redis_server, tmp_path, monkeypatch
):
    # 1. enroll with the CLI, as an operator would
    astronaut = tmp_path / "eileen.png"
    cv2.imwrite(str(astronaut), cv2.cvtColor(data.astronaut(), cv2.COLOR_RGB2BGR))
    gallery = tmp_path / "faces.sqlite"
    r = subprocess.run(
        [sys.executable, str(REPO / "run_pipeline.py"), "faces", "--gallery", str(gallery), "enroll",
         "--name", "eileen", str(astronaut)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr

    # 2. two cameras from one YAML file: a door camera and a corridor camera with tracking
    ast = cv2.cvtColor(data.astronaut(), cv2.COLOR_RGB2BGR)
    derived = cv2.resize(cv2.flip(ast[0:400, 50:450], 1), (300, 300), interpolation=cv2.INTER_AREA)
    door_clip = _face_video(tmp_path / "door.mp4", derived)
    corridor_clip = _walking_person_clip(tmp_path / "corridor.mp4")
    monkeypatch.setenv("FRONT_SECRET", SECRET)
    cfg_path = tmp_path / "site.yaml"
    cfg_path.write_text(
        yaml.safe_dump(
            {
                "cameras": [
                    {"id": "door", "source": str(door_clip)},
                    {"id": "corridor", "source": str(corridor_clip)},
                ],
                "detector": {"model": "yolov3-tiny", "score_threshold": 0.2},
                "redis": {"url": redis_server.url, "spool_path": str(tmp_path / "spool.sqlite")},
                "tracking": {
                    "enabled": True,
                    "min_hits": 2,
                    "new_track_score": 0.3,
                    "high_score": 0.3,
                    "default_filter": {"threshold": 0.25},
                },
                "faces": {
                    "enabled": True,
                    "gallery_path": str(gallery),
                    "detector_min_face_px": 40,
                    "unknown_crops": {"dir": str(tmp_path / "crops")},
                },
                "doors": [
                    {
                        "id": "front",
                        "cameras": ["door"],
                        "allow_people": ["eileen"],
                        "k_frames": 3,
                        "window_s": 60,
                        "min_face_px": 50,
                        "max_frame_age_s": 120,
                        "liveness": "off",  # the clip is a moving photo (tests/test_liveness.py: never opens)
                        "secret_env": "FRONT_SECRET",
                        "audit_log": str(tmp_path / "audit.jsonl"),
                    }
                ],
            }
        )
    )
    cfg = load_config(cfg_path)
    pipe = Pipeline(cfg, var_dir=tmp_path).start()
    assert pipe.wait(240), "pipeline did not finish its two file cameras"
    pipe.join(10)
    client = redis.Redis.from_url(redis_server.url)

    # 3. the door opened for her, with a valid signature, from the door camera only
    decisions = _events(client, "doors")
    granted = [e for e in decisions if e.data["decision"] == "granted"]
    assert [(e.camera_id, e.data["person"]) for e in granted] == [("door", "eileen")]
    Verifier("front", SECRET.encode(), max_age_s=600).verify(granted[0])

    # 4. the corridor camera produced one tracked person: one new and one end, not an event per frame
    tracks = [e for e in _events(client, "tracks") if e.camera_id == "corridor"]
    new = [e for e in tracks if e.type == "tracks.new"]
    end = [e for e in tracks if e.type == "tracks.end"]
    assert len(new) == 1 and new[0].data["label"] == "person", [(e.type, e.data.get("label")) for e in tracks]
    assert len(end) == 1 and end[0].data["track_id"] == new[0].data["track_id"]
    assert len(tracks) < 24
    assert Path(new[0].data["snapshot"]).is_file()
