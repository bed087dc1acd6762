"""Camera edits are patches: the web form, the JSON API and ``run_pipeline.py cameras edit`` change only the
settings they carry; every other key of the camera survives, in the YAML file (as written there, ``source:
demo`` included) and in the running pipeline, and a paused camera stays paused."""

from __future__ import annotations

import copy
import re
import subprocess
import sys
import urllib.parse
from pathlib import Path
from typing import Any

import pytest
import yaml

from pipeline.config.schema import parse_config
from pipeline.detect.detectors.base import NullDetector
from pipeline.run.runner import Pipeline
from tests.support.web_fixtures import TOKEN

REPO = Path(__file__).resolve().parents[1]

#: a camera that sets every key CameraConfig has (checked below), paused, with the built-in demo source
DOOR: dict[str, Any] = {
    "id": "door",
    "source": "demo",
    "enabled": False,
    "rtsp_transport": "udp",
    "read_timeout_s": 7.0,
    "open_timeout_s": 3.0,
    "detect_fps": 4.0,
    "queue_policy": "block",
    "queue_size": 5,
    "loop": True,
    "realtime": True,
    "reconnect": {"initial_s": 1.0, "max_s": 9.0, "multiplier": 3.0, "jitter": 0.1, "max_attempts": 7},
    "ffmpeg_options": {"probesize": "32768"},
    "analytics": {
        "zones": {"porch": {"points": [[0, 0], [100, 0], [100, 100]], "loiter_time_s": 5.0}},
        "masks": [{"points": [[0.0, 0.0], [0.1, 0.0], [0.1, 0.1]], "normalized": True}],
        "lines": {"gate": {"points": [[0, 50], [100, 50]], "forward_name": "in"}},
    },
    "detect": {"regions": {"enabled": True, "full_scan_every": 7}, "tiling": {"overlap": 0.3}},
    "profile": "door",
}


def test_the_round_trip_camera_sets_every_camera_key() -> None:
    from pipeline.config.schema import CameraConfig

    # record_source needs a live source (this door is a file): its round trip is in tests/test_record_source.py
    keys = set(DOOR) | {"record_source"}
    assert keys == set(CameraConfig.model_fields), set(CameraConfig.model_fields) ^ keys


@pytest.fixture
def door_setup(start_web, demo_mp4, redis_server, tmp_path):
    """A running pipeline with camera ``a`` and the paused ``door`` (its demo source resolved to a file, as
    ``run_pipeline.py`` does), and the YAML file that says ``source: demo``."""
    raw = {
        "cameras": [{"id": "a", "source": str(demo_mp4.path), "loop": True, "realtime": True}, DOOR],
        "detector": {"model": "none"},
        "redis": {"url": redis_server.url, "spool_path": str(tmp_path / "spool.sqlite")},
    }
    running = copy.deepcopy(raw)
    running["cameras"][1]["source"] = str(demo_mp4.path)
    cfg = parse_config(running)
    pipe = Pipeline(cfg, detector=NullDetector(), var_dir=tmp_path, analyzers_factory=lambda cam: [])
    pipe.start()
    web = start_web(cfg, pipe)
    web.config_path.write_text(yaml.safe_dump(raw, sort_keys=False))
    yield web, pipe, demo_mp4
    pipe.stop()
    pipe.join(30)


def _file_door(web) -> dict[str, Any]:  # noqa: ANN001
    return next(c for c in yaml.safe_load(web.config_path.read_text())["cameras"] if c["id"] == "door")


def _running_door(pipe: Pipeline) -> dict[str, Any]:
    return next(c for c in pipe.camera_configs() if c.id == "door").model_dump(mode="json")


def _expect(pipe: Pipeline, web, demo_mp4, change: dict[str, Any], before: dict[str, Any]) -> None:  # noqa: ANN001
    assert _file_door(web) == {**DOOR, **change}  # every other key as written, source: demo kept
    assert _running_door(pipe) == {**before, **change}  # the running camera: the same, its source resolved
    assert "door" not in pipe.decoders, "the paused camera was started again by an edit"


def test_saving_a_paused_camera_in_the_web_form_changes_only_its_fields(door_setup) -> None:
    web, pipe, demo_mp4 = door_setup
    before = _running_door(pipe)
    _, sid = web.login()
    cookie = {"Cookie": f"vidpipe_session={sid}"}
    status, _, page = web.request("GET", "/cameras", headers=cookie)
    assert status == 200
    csrf = re.search(rb'name="csrf-token" content="([^"]+)"', page).group(1).decode()
    shown_source = re.search(rb'action="/cameras/door/edit".*?name="source" value="([^"]*)"', page, re.S)
    assert shown_source is not None
    form = urllib.parse.urlencode(
        {"csrf_token": csrf, "source": shown_source.group(1).decode(), "detect_fps": "2"}
    ).encode()
    status, headers, _ = web.request(
        "POST", "/cameras/door/edit", form, {**cookie, "Content-Type": "application/x-www-form-urlencoded"}
    )
    assert status == 303 and "msg=" in headers["location"], headers["location"]
    _expect(pipe, web, demo_mp4, {"detect_fps": 2.0}, before)
    status, body = web.api("GET", "/api/cameras")
    assert {c["id"]: c["status"] for c in body["cameras"]}["door"] == "paused"


def test_put_and_patch_on_the_api_change_only_the_given_settings(door_setup) -> None:
    web, pipe, demo_mp4 = door_setup
    before = _running_door(pipe)
    assert web.api("PUT", "/api/cameras/door", {"detect_fps": 3})[0] == 200
    _expect(pipe, web, demo_mp4, {"detect_fps": 3.0}, before)
    assert web.api("PATCH", "/api/cameras/door", {"read_timeout_s": 9})[0] == 200
    _expect(pipe, web, demo_mp4, {"detect_fps": 3.0, "read_timeout_s": 9.0}, before)
    status, body = web.api("PATCH", "/api/cameras/door", {"read_timeout_s": -1})
    assert status == 400 and "camera door" in body["error"] and "read_timeout_s" in body["error"]
    assert web.api("PATCH", "/api/cameras/door", {"id": "other"})[0] == 400
    _expect(pipe, web, demo_mp4, {"detect_fps": 3.0, "read_timeout_s": 9.0}, before)  # refused: unchanged


def _cli(*argv: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    import os

    return subprocess.run(
        [sys.executable, str(REPO / "run_pipeline.py"), "cameras", *argv],
        capture_output=True, text=True, timeout=120, cwd=REPO, env={**os.environ, **(env or {})},
    )  # fmt: skip


def test_the_cameras_cli_edit_changes_only_its_options_in_the_file(tmp_path) -> None:
    path = tmp_path / "cams.yaml"
    path.write_text(yaml.safe_dump({"cameras": [{"id": "a", "source": "a.mp4"}, DOOR]}, sort_keys=False))
    r = _cli("--config", str(path), "edit", "door", "--detect-fps", "6")
    assert r.returncode == 0, r.stderr
    assert yaml.safe_load(path.read_text())["cameras"][1] == {**DOOR, "detect_fps": 6.0}
    r = _cli("--config", str(path), "edit", "door")
    assert r.returncode == 2 and "at least one setting" in r.stderr


def test_the_cameras_cli_edit_of_a_running_pipeline_is_a_patch(door_setup) -> None:
    web, pipe, demo_mp4 = door_setup
    before = _running_door(pipe)
    r = _cli("--url", web.url, "edit", "door", "--detect-fps", "1.5", env={"VIDPIPE_FACES_TOKEN": TOKEN})
    assert r.returncode == 0, r.stderr
    _expect(pipe, web, demo_mp4, {"detect_fps": 1.5}, before)
