"""The web app over real HTTP (uvicorn on 127.0.0.1): login gate, sessions, CSRF, rate limiting, the
HTTP-level input bounds, cameras through the JSON API (persisted to the YAML), and the doors lock-down."""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
import time
import urllib.parse
from pathlib import Path

import pytest
import yaml

from pipeline.config.schema import CameraConfig, parse_config
from pipeline.detect.detectors.base import NullDetector
from pipeline.run.runner import Pipeline
from tests.support.web_fixtures import PASSWORD, TOKEN

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def running(demo_mp4, redis_server, tmp_path):
    cfg = parse_config(
        {
            "cameras": [{"id": "a", "source": str(demo_mp4.path), "loop": True, "realtime": True}],
            "detector": {"model": "none"},
            "redis": {"url": redis_server.url, "spool_path": str(tmp_path / "spool.sqlite")},
            "faces": {"enabled": True, "gallery_path": str(tmp_path / "g.sqlite")},
            "doors": [
                {
                    "id": "front",
                    "cameras": ["a"],
                    "secret": "s" * 24,
                    "audit_log": str(tmp_path / "audit.jsonl"),
                }
            ],
        }
    )
    pipe = Pipeline(cfg, detector=NullDetector(), var_dir=tmp_path, analyzers_factory=lambda cam: [])
    pipe.start()
    yield cfg, pipe
    pipe.stop()
    pipe.join(30)


def _raw(port: int, data: bytes, timeout: float = 5.0) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(data)
        out = b""
        try:
            while chunk := s.recv(65536):
                out += chunk
                if b"\r\n\r\n" in out and len(out) > 200:
                    break
        except TimeoutError:
            pass
        return out


def test_every_page_and_api_call_needs_a_login(start_web, running):
    cfg, pipe = running
    web = start_web(cfg, pipe)
    for path in ["/", "/cameras", "/events", "/faces", "/doors", "/snapshots/x.jpg"]:
        status, headers, _ = web.request("GET", path)
        assert status == 303 and headers["location"].startswith("/login"), path
    for method, path in [("GET", "/api/cameras"), ("GET", "/api/live/a/frame"), ("GET", "/api/persons"),
                         ("GET", "/api/events"), ("DELETE", "/api/cameras/a")]:  # fmt: skip
        assert web.api(method, path, token=None)[0] == 401, path
        assert web.api(method, path, token="wrong-token-wrong-token")[0] == 401, path
    assert web.api("GET", "/api/cameras")[0] == 200  # the bearer token works for /api
    assert web.request("GET", "/", headers={"Authorization": f"Bearer {TOKEN}"})[0] == 303  # not for pages

    status, sid = web.login()
    assert status == 303 and sid
    _, headers, _ = web.request("POST", "/login", urllib.parse.urlencode({"password": PASSWORD}).encode(),
                                {"Content-Type": "application/x-www-form-urlencoded"})  # fmt: skip
    cookie = headers["set-cookie"].lower()
    assert "httponly" in cookie and "samesite=strict" in cookie
    status, _, body = web.request("GET", "/cameras", headers={"Cookie": f"vidpipe_session={sid}"})
    assert status == 200 and b'data-camera="a"' in body
    assert PASSWORD.encode() not in body and TOKEN.encode() not in body and b"s" * 24 not in body


def test_forms_and_cookie_api_calls_need_the_csrf_token(start_web, running):
    cfg, pipe = running
    web = start_web(cfg, pipe)
    _, sid = web.login()
    cookie = {"Cookie": f"vidpipe_session={sid}", "Content-Type": "application/x-www-form-urlencoded"}
    form = urllib.parse.urlencode({"id": "b", "source": "/nonexistent.mp4"}).encode()
    status, _, body = web.request("POST", "/cameras/add", form, cookie)
    assert status == 403 and b"CSRF" in body
    forged = urllib.parse.urlencode({"id": "b", "source": "x.mp4", "csrf_token": "guess"}).encode()
    assert web.request("POST", "/cameras/add", forged, cookie)[0] == 403
    assert web.request("POST", "/doors/front/lockdown", b"locked=1", cookie)[0] == 403
    status, _, _ = web.request("DELETE", "/api/cameras/a", None, {"Cookie": f"vidpipe_session={sid}"})
    assert status == 403
    assert [c.id for c in pipe.camera_configs()] == ["a"]  # nothing happened


def test_login_attempts_are_rate_limited(start_web, running):
    cfg, pipe = running
    web = start_web(cfg, pipe, login_attempts=3, login_window_s=60)
    assert [web.login("wrong password!")[0] for _ in range(3)] == [401, 401, 401]
    status, sid = web.login()  # even the right password waits out the window
    assert status == 429 and sid is None


def test_http_bounds_content_length_idle_connections_and_the_worker_pool(start_web, running):
    cfg, pipe = running
    web = start_web(cfg, pipe, idle_timeout_s=1, max_connections=4, max_body_bytes=4096)
    auth = f"Authorization: Bearer {TOKEN}\r\n".encode()
    head = b"POST /api/cameras HTTP/1.1\r\nHost: 127.0.0.1\r\n" + auth
    assert b" 411 " in _raw(web.port, head + b"\r\n").split(b"\r\n")[0]
    assert b" 411 " in _raw(web.port, head + b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n").split(b"\r\n")[0]
    assert b" 400 " in _raw(web.port, head + b"Content-Length: -5\r\n\r\n").split(b"\r\n")[0]
    assert b" 400 " in _raw(web.port, head + b"Content-Length: ten\r\n\r\n").split(b"\r\n")[0]
    assert b" 413 " in _raw(web.port, head + b"Content-Length: 999999\r\n\r\n").split(b"\r\n")[0]
    status, body = web.api("POST", "/api/cameras", {"id": "bad id!", "source": "x"})
    assert status == 400 and "camera" in body["error"] and "id" in body["error"]

    # an idle connection (no request at all, or kept alive after one) is closed by the server
    for first in (b"", b"GET /api/cameras HTTP/1.1\r\nHost: 127.0.0.1\r\n" + auth + b"\r\n"):
        with socket.create_connection(("127.0.0.1", web.port), timeout=10) as s:
            s.sendall(first)
            t0 = time.monotonic()
            while s.recv(65536):
                pass
            assert time.monotonic() - t0 < 6, "an idle connection was kept open"

    # the pool is bounded: with 4 long-lived streams open, the next request is refused with 503
    streams = []
    try:
        for _ in range(4):
            s = socket.create_connection(("127.0.0.1", web.port), timeout=10)
            s.sendall(b"GET /api/events/stream HTTP/1.1\r\nHost: 127.0.0.1\r\n" + auth + b"\r\n")
            assert b" 200 " in s.recv(65536).split(b"\r\n")[0]
            streams.append(s)
        assert web.api("GET", "/api/cameras")[0] == 503
    finally:
        for s in streams:
            s.close()
    deadline = time.time() + 10
    while web.api("GET", "/api/cameras")[0] != 200 and time.time() < deadline:
        time.sleep(0.2)
    assert web.api("GET", "/api/cameras")[0] == 200, "the server did not recover after the streams closed"


def test_cameras_via_the_json_api_run_at_once_and_persist_to_the_yaml(start_web, running, demo_mp4):
    cfg, pipe = running
    web = start_web(cfg, pipe)
    new = {"id": "b", "source": str(demo_mp4.path), "loop": True, "realtime": True}
    assert web.api("POST", "/api/cameras", new) == (201, {"added": "b"})
    assert web.api("POST", "/api/cameras", new)[0] == 409  # id in use
    deadline = time.time() + 20
    while "b" not in pipe.latest and time.time() < deadline:
        time.sleep(0.1)
    assert "b" in pipe.latest, "the added camera never produced a frame"
    on_disk = yaml.safe_load(web.config_path.read_text())
    assert [c["id"] for c in on_disk["cameras"]] == ["a", "b"]
    parse_config(on_disk)  # the written file is a valid config

    assert web.api("PUT", "/api/cameras/b", {**new, "detect_fps": 2})[0] == 200
    assert yaml.safe_load(web.config_path.read_text())["cameras"][1]["detect_fps"] == 2
    assert web.api("POST", "/api/cameras/b/pause")[0] == 200
    assert yaml.safe_load(web.config_path.read_text())["cameras"][1]["enabled"] is False
    status, body = web.api("GET", "/api/cameras")
    assert status == 200 and {c["id"]: c["status"] for c in body["cameras"]}["b"] == "paused"
    assert web.api("POST", "/api/cameras/b/resume")[0] == 200
    assert web.api("DELETE", "/api/cameras/b") == (200, {"removed": "b"})
    assert [c["id"] for c in yaml.safe_load(web.config_path.read_text())["cameras"]] == ["a"]
    assert web.api("DELETE", "/api/cameras/a")[0] == 409  # the last camera: pause it instead
    assert web.api("DELETE", "/api/cameras/zz")[0] == 404
    assert [c.id for c in pipe.camera_configs()] == ["a"]
    assert isinstance(pipe.camera_configs()[0], CameraConfig)


def test_lockdown_switch_via_the_api_is_audited(start_web, running, tmp_path):
    cfg, pipe = running
    web = start_web(cfg, pipe)
    assert web.api("POST", "/api/doors/front/lockdown", {"locked": True, "reason": "incident"})[0] == 200
    status, body = web.api("GET", "/api/doors")
    door = body["doors"][0]
    assert status == 200 and door["locked"] and door["audit_ok"] and door["audit_entries"] == 1
    assert web.api("POST", "/api/doors/nope/lockdown", {"locked": True})[0] == 404
    assert web.api("POST", "/api/doors/front/lockdown", {"locked": "yes"})[0] == 400
    assert web.api("POST", "/api/doors/front/lockdown", {"locked": False})[0] == 200
    assert not web.api("GET", "/api/doors")[1]["doors"][0]["locked"]


def test_live_frames_are_encoded_only_while_watched_and_not_on_camera_threads(start_web, running):
    cfg, pipe = running
    web = start_web(cfg, pipe)
    time.sleep(1.0)
    assert web.server.app.state.live.encoded == 0, "frames were encoded with nobody watching"
    seq, threads = -1, set()
    orig = web.server.app.state.live.jpeg

    def spy(*a):
        threads.add(threading.current_thread().name)
        return orig(*a)

    web.server.app.state.live.jpeg = spy
    t0 = time.time()
    for _ in range(5):
        status, headers, body = web.request("GET", f"/api/live/a/frame?after={seq}",
                                            headers={"Authorization": f"Bearer {TOKEN}"})  # fmt: skip
        assert status == 200 and body[:2] == b"\xff\xd8" and headers["content-type"] == "image/jpeg"
        assert int(headers["x-frame-seq"]) != seq
        seq = int(headers["x-frame-seq"])
        assert 0 <= t0 - float(headers["x-capture-time"]) + (time.time() - t0) < 2.0
    assert threads and not any(n.startswith(("decoder", "analytics", "detect")) for n in threads), threads


def _cli(*argv: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    import os

    return subprocess.run(
        [sys.executable, str(REPO / "run_pipeline.py"), "cameras", *argv],
        capture_output=True, text=True, timeout=120, cwd=REPO, env={**os.environ, **(env or {})},
    )  # fmt: skip


def test_cameras_cli_edits_the_yaml_atomically_and_drives_a_running_pipeline(start_web, running, tmp_path):
    cfg_file = tmp_path / "cams.yaml"
    cfg_file.write_text("# my cameras\ncameras:\n  - id: a\n    source: a.mp4\nredis:\n  prefix: x\n")
    c = str(cfg_file)
    assert (
        _cli(
            "--config", c, "add", "--id", "b", "--source", "rtsp://u:secret@h/s", "--detect-fps", "5"
        ).returncode
        == 0
    )
    out = _cli("--config", c, "list").stdout
    assert "b\tenabled\trtsp://u:***@h/s" in out and "secret" not in out
    assert _cli("--config", c, "pause", "b").returncode == 0
    assert yaml.safe_load(cfg_file.read_text())["cameras"][1] == {
        "id": "b", "source": "rtsp://u:secret@h/s", "detect_fps": 5.0, "enabled": False,
    }  # fmt: skip
    assert yaml.safe_load(cfg_file.read_text())["redis"] == {"prefix": "x"}  # other sections kept
    bad = _cli("--config", c, "add", "--id", "c", "--source", "x", "--detect-fps", "-1")
    assert bad.returncode == 2 and "detect_fps" in bad.stderr and "camera c" in bad.stderr
    assert _cli("--config", c, "remove", "zz").stderr.strip() == f"error: {c}: no camera 'zz' in the file"
    assert _cli("--config", c, "remove", "b").returncode == 0
    assert [x["id"] for x in yaml.safe_load(cfg_file.read_text())["cameras"]] == ["a"]
    assert not list(tmp_path.glob(".cams.yaml.*"))  # no temp files left behind

    cfg, pipe = running
    web = start_web(cfg, pipe)
    env = {"VIDPIPE_FACES_TOKEN": TOKEN}
    r = _cli(
        "--url", web.url, "add", "--id", "live2", "--source", str(cfg.cameras[0].source), "--loop", env=env
    )
    assert r.returncode == 0, r.stderr
    assert "live2" in [x.id for x in pipe.camera_configs()]
    assert "live2" in _cli("--url", web.url, "list", env=env).stdout
    assert _cli("--url", web.url, "remove", "live2", env=env).returncode == 0
    assert "live2" not in [x.id for x in pipe.camera_configs()]
    assert "HTTP 401" in _cli("--url", web.url, "list", env={"VIDPIPE_FACES_TOKEN": "w" * 20}).stderr


def test_the_run_command_serves_the_web_app_and_prints_its_url_and_first_password(demo_mp4, tmp_path):
    """`run_pipeline.py --config X` (the README's command) serves the app: the printed URL answers, the
    password printed once on the first start logs in, the live frame of the camera comes back; the
    password is stored only hashed."""
    import os
    import re
    import signal

    cfg = tmp_path / "run.yaml"
    cfg.write_text(
        yaml.safe_dump(
            {
                "cameras": [{"id": "demo", "source": str(demo_mp4.path), "loop": True, "realtime": True}],
                "detector": {"model": "none"},
                "redis": {"spool_path": str(tmp_path / "spool.sqlite")},
            }
        )
    )
    env = {k: v for k, v in os.environ.items() if k != "VIDPIPE_WEB_PASSWORD"}
    cmd = [sys.executable, str(REPO / "run_pipeline.py"), "--config", str(cfg), "--var-dir", str(tmp_path / "var"),
           "--web-port", "0", "--duration", "60"]  # fmt: skip
    proc = subprocess.Popen(
        cmd, cwd=REPO, env=env, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True
    )
    try:
        url = password = None
        deadline = time.time() + 60
        assert proc.stderr is not None
        while (url is None or password is None) and time.time() < deadline:
            line = proc.stderr.readline()
            if m := re.match(r"web app: (http://127\.0\.0\.1:\d+/)", line):
                url = m.group(1)
            if m := re.match(r"web login: first start, a password was generated: (\S+)", line):
                password = m.group(1)
        assert url and password, "the run did not print the web app's URL and first password"
        port = int(url.rsplit(":", 1)[1].strip("/"))
        import http.client

        def req(method: str, path: str, body: bytes | None = None, headers: dict | None = None):
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            conn.request(method, path, body=body, headers=headers or {})
            r = conn.getresponse()
            out = (r.status, dict((k.lower(), v) for k, v in r.getheaders()), r.read())
            conn.close()
            return out

        assert req("GET", "/")[0] == 303
        status, headers, _ = req("POST", "/login", urllib.parse.urlencode({"password": password}).encode(),
                                 {"Content-Type": "application/x-www-form-urlencoded"})  # fmt: skip
        assert status == 303
        sid = headers["set-cookie"].split(";", 1)[0]
        status, headers, body = req("GET", "/api/live/demo/frame?after=-1", headers={"Cookie": sid})
        assert status == 200 and body[:2] == b"\xff\xd8" and headers["content-type"] == "image/jpeg"
        stored = (tmp_path / "var" / "web" / "password.scrypt").read_text()
        assert stored.startswith("scrypt$") and password not in stored
        assert oct((tmp_path / "var" / "web" / "password.scrypt").stat().st_mode & 0o777) == "0o600"
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)


def test_events_timeline_filters_and_live_sse(start_web, running):
    cfg, pipe = running
    web = start_web(cfg, pipe)
    deadline = time.time() + 20
    while time.time() < deadline:
        status, body = web.api("GET", "/api/events?camera=a&type=status.camera")
        if status == 200 and body["events"]:
            break
        time.sleep(0.2)
    assert body["events"] and all(e["camera"] == "a" and e["type"] == "status.camera" for e in body["events"])
    assert web.api("GET", "/api/events?camera=nope")[1]["events"] == []
    assert web.api("GET", "/api/events?since=yesterday")[0] == 400

    with socket.create_connection(("127.0.0.1", web.port), timeout=15) as s:
        s.sendall(
            f"GET /api/events/stream?type=status HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {TOKEN}\r\n\r\n".encode()
        )
        head = s.recv(65536)
        assert b" 200 " in head.split(b"\r\n")[0] and b"text/event-stream" in head
        assert web.api("POST", "/api/cameras/a/pause")[0] == 200  # publishes status.camera "paused"
        got = b""
        deadline = time.time() + 15
        while b'"status": "paused"' not in got and b'"label": "paused"' not in got and time.time() < deadline:
            got += s.recv(65536)
        assert b"data: " in got and b"paused" in got, got[-500:]
    assert web.api("POST", "/api/cameras/a/resume")[0] == 200


def test_an_unknown_face_is_assigned_to_a_person_with_one_post(start_web, running, tmp_path):
    import re

    import cv2
    from skimage import data

    cfg, pipe = running
    crops = tmp_path / "crops"
    crops.mkdir()
    face = cv2.cvtColor(data.astronaut(), cv2.COLOR_RGB2BGR)[0:300, 100:360]
    cv2.imwrite(str(crops / "a_12_0_1700000000000.jpg"), face)
    faces = cfg.faces.model_copy(
        update={"unknown_crops": cfg.faces.unknown_crops.model_copy(update={"dir": str(crops)})}
    )
    web = start_web(cfg, pipe, faces=faces)
    _, sid = web.login()
    cookie = {"Cookie": f"vidpipe_session={sid}"}
    status, _, page = web.request("GET", "/faces", headers=cookie)
    assert status == 200 and b"/faces/unknown/a_12_0_1700000000000.jpg" in page
    csrf = re.search(rb'name="csrf-token" content="([^"]+)"', page).group(1).decode()
    form = urllib.parse.urlencode(
        {"csrf_token": csrf, "file": "a_12_0_1700000000000.jpg", "name": "eileen"}
    ).encode()
    status, _, page = web.request(
        "POST", "/faces/unknown/assign", form, {**cookie, "Content-Type": "application/x-www-form-urlencoded"}
    )
    assert status == 200 and b'data-person="eileen"' in page and b"enrolled" in page, page[-800:]
    assert not (crops / "a_12_0_1700000000000.jpg").exists()  # assigned: gone from the unknown list
    traversal = urllib.parse.urlencode({"csrf_token": csrf, "file": "../config.yaml", "name": "x"}).encode()
    status, headers, _ = web.request(
        "POST",
        "/faces/unknown/assign",
        traversal,
        {**cookie, "Content-Type": "application/x-www-form-urlencoded"},
    )
    assert status == 303 and "err=" in headers["location"]


def test_camera_passwords_are_never_rendered_and_survive_an_edit_from_the_page(start_web, running):
    import re

    cfg, pipe = running
    web = start_web(cfg, pipe)
    secret_src = "rtsp://viewer:topsecret42@127.0.0.1:1/stream"
    assert (
        web.api("POST", "/api/cameras", {"id": "gate", "source": secret_src, "open_timeout_s": 1})[0] == 201
    )
    _, sid = web.login()
    cookie = {"Cookie": f"vidpipe_session={sid}"}
    status, _, page = web.request("GET", "/cameras", headers=cookie)
    assert status == 200 and b"topsecret42" not in page and b"rtsp://viewer:***@127.0.0.1:1/stream" in page
    assert b"topsecret42" not in web.request("GET", "/api/cameras", headers=cookie)[2]
    csrf = re.search(rb'name="csrf-token" content="([^"]+)"', page).group(1).decode()
    form = urllib.parse.urlencode(
        {"csrf_token": csrf, "source": "rtsp://viewer:***@127.0.0.1:1/stream", "detect_fps": "3"}
    ).encode()
    status, headers, _ = web.request(
        "POST", "/cameras/gate/edit", form, {**cookie, "Content-Type": "application/x-www-form-urlencoded"}
    )
    assert status == 303 and "msg=" in headers["location"], headers["location"]
    gate = next(c for c in pipe.camera_configs() if c.id == "gate")
    assert gate.source == secret_src and gate.detect_fps == 3
    assert yaml.safe_load(web.config_path.read_text())["cameras"][1]["source"] == secret_src
    assert web.api("DELETE", "/api/cameras/gate")[0] == 200


def test_the_calibrate_button_runs_faces_calibrate(start_web, running):
    import base64
    import re

    import cv2
    from skimage import data

    cfg, pipe = running
    web = start_web(cfg, pipe)
    _, sid = web.login()
    cookie = {"Cookie": f"vidpipe_session={sid}", "Content-Type": "application/x-www-form-urlencoded"}
    status0, _, page = web.request("GET", "/faces", headers=cookie)
    assert status0 == 200
    csrf = re.search(rb'name="csrf-token" content="([^"]+)"', page).group(1).decode()
    form = urllib.parse.urlencode({"csrf_token": csrf, "dry_run": "1"}).encode()
    status, _, page = web.request("POST", "/faces/calibrate", form, cookie)
    assert status == 400 and b"calibrate failed" in page and b"enroll people first" in page  # empty gallery

    photos = {
        "eileen": cv2.cvtColor(data.astronaut(), cv2.COLOR_RGB2BGR),
        # the only real faces shipped with the packages are one astronaut (the cameraman photo has a second
        # face-like detection): two entries of the same person, which calibrate itself must refuse
        "mirror": cv2.flip(cv2.cvtColor(data.astronaut(), cv2.COLOR_RGB2BGR), 1),
    }
    for name, img in photos.items():
        jpg = base64.b64encode(cv2.imencode(".jpg", img)[1].tobytes()).decode()
        status, body = web.api(
            "POST", "/api/persons", {"name": name, "photos": [{"filename": f"{name}.jpg", "data": jpg}]}
        )
        assert status == 200 and body["enrolled"] == [f"{name}.jpg"], body
    status, _, page = web.request("POST", "/faces/calibrate", form, cookie)
    # the button ran `faces calibrate` on this gallery and shows its verdict as printed
    assert status == 400 and b"calibrate failed" in page and b"look alike to the model" in page, page[-1500:]
