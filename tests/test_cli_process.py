"""The `run_pipeline.py` process as users and service managers see it: signals, exit codes, start-up errors.

Every test here runs the real CLI as a child process against real servers (redis-server, a metrics port
held by another socket, FFmpeg on real files) and checks what a user or systemd would see: the exit
status, the message on stderr, what is left behind.
"""

from __future__ import annotations

import random
import signal
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import redis
import yaml

from pipeline.core.events import Event

REPO = Path(__file__).resolve().parents[1]


def write_cfg(tmp_path: Path, data: dict, name: str = "cfg.yaml") -> Path:
    p = tmp_path / name
    p.write_text(yaml.safe_dump(data))
    return p


def cli(*args: str) -> list[str]:
    # runs go without the web app: its fixed default port would collide between parallel runs
    extra = [] if args and args[0] == "faces" else ["--no-web"]
    return [sys.executable, str(REPO / "run_pipeline.py"), *args, *extra]


def run_cli(*args: str, cwd: Path, timeout: float = 90) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cli(*args), capture_output=True, text=True, timeout=timeout, cwd=cwd)


def loop_camera_cfg(tmp_path: Path, clip: Path, redis_url: str | None, **extra: object) -> Path:
    data: dict = {
        "cameras": [{"id": "loop", "source": str(clip), "loop": True, "realtime": True}],
        "detector": {"model": "none"},
        "redis": {"url": redis_url, "spool_path": str(tmp_path / "spool.sqlite"), "flush_timeout_s": 5},
        "metrics": {"status_interval_s": 60},
    }
    data.update(extra)
    return write_cfg(tmp_path, data)


# -- signals ---------------------------------------------------------------------------------------------
#
# What these assert is the product's promise, not the speed of an idle machine: the signal is seen
# ("SIGTERM: stopping" on stderr), the exit status is 0, the process is gone within its configured
# stop_timeout_s (+ EXIT_SLACK_S for the kernel to deliver the signal and reap the child on a loaded
# machine), and every event it printed is in Redis or in the spool.

STOP_TIMEOUT_S = 8.0
EXIT_SLACK_S = 1.5


def _wait_line(stream, needle: str, what: str) -> str:  # noqa: ANN001
    while True:
        line = stream.readline()
        assert line, f"the run ended before {what}"
        if needle in line:
            return line


def _redis_and_spool_ids(client: redis.Redis, prefix: str, spool_path: Path) -> set[str]:
    from pipeline.deliver.spool import Spool

    ids: set[str] = set()
    for key in client.scan_iter(f"{prefix}:stream:*"):
        ids |= {fields[b"event_id"].decode() for _, fields in client.xrange(key)}
    if spool_path.exists():
        with Spool(spool_path) as spool:
            ids |= {e.event_id for e in spool.peek_batch(10**7)}
    return ids


def _printed_ids(stdout: str) -> list[str]:
    return [Event.from_json(line).event_id for line in stdout.splitlines() if line.startswith("{")]


def _busy_loops(n: int = 2) -> list[subprocess.Popen]:
    return [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(n)]


def _one_sigterm_run(
    i: int, sources: list[str], redis_url: str, tmp_path: Path, delay: float, **extra: object
) -> str | None:
    """Start a run, SIGTERM it once it is running; None if it kept the promise, else what went wrong."""
    d = tmp_path / f"run{i}"
    d.mkdir()
    prefix = f"run{i}"
    cams = [{"id": f"c{k}", "source": src, "loop": True, "realtime": True} for k, src in enumerate(sources)]
    cfg = write_cfg(
        d,
        {
            "cameras": cams,
            "detector": {"model": "none"},
            "redis": {"url": redis_url, "prefix": prefix, "spool_path": str(d / "spool.sqlite")},
            "metrics": {"status_interval_s": 60},
            "stop_timeout_s": STOP_TIMEOUT_S,
            **extra,
        },
    )
    proc = subprocess.Popen(
        cli("--config", str(cfg), "--print-events", "--var-dir", str(d / "var")),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=d,
    )
    try:
        assert proc.stdout is not None and proc.stderr is not None
        first = proc.stdout.readline()
        if not first.startswith("{"):
            return f"run {i}: no event printed; stderr: {proc.stderr.read()[-2000:]}"
        time.sleep(delay)  # land the signal at a different moment each time
        proc.send_signal(signal.SIGTERM)
        t0 = time.monotonic()
        try:
            out, err = proc.communicate(timeout=STOP_TIMEOUT_S + 30)
        except subprocess.TimeoutExpired:
            return f"run {i}: SIGTERM not honoured within {STOP_TIMEOUT_S + 30}s"
        took = time.monotonic() - t0
        if proc.returncode != 0 or "SIGTERM: stopping" not in err:
            return f"run {i}: exit {proc.returncode}; stderr: {err[-2000:]}"
        if took > STOP_TIMEOUT_S + EXIT_SLACK_S:
            return (
                f"run {i}: exited {took:.1f}s after SIGTERM (stop_timeout_s {STOP_TIMEOUT_S}); {err[-1500:]}"
            )
        printed = _printed_ids(first + out)
        kept = _redis_and_spool_ids(redis.Redis.from_url(redis_url), prefix, d / "spool.sqlite")
        lost = [e for e in printed if e not in kept]
        if lost:
            return f"run {i}: {len(lost)} of {len(printed)} events neither in Redis nor in the spool"
        return None
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_sigterm_is_honoured_50_times_out_of_50(rtsp_server, redis_server, tmp_path):
    """50 runs of 2 RTSP cameras, 4 at a time, beside 2 busy-loop processes; each gets one SIGTERM
    0.05-0.4 s after its first event and must exit 0 within stop_timeout_s with every event it printed
    in Redis or in its spool. (A signal the kernel hands to a worker thread must still stop the process.)"""
    rng = random.Random(14)
    delays = [rng.uniform(0.05, 0.4) for _ in range(50)]
    sources = [rtsp_server.url, rtsp_server.url]
    hogs = _busy_loops(2)
    try:
        with ThreadPoolExecutor(max_workers=4) as pool:
            outcomes = list(
                pool.map(
                    lambda i: _one_sigterm_run(i, sources, redis_server.url, tmp_path, delays[i]), range(50)
                )
            )
    finally:
        for h in hogs:
            h.kill()
            h.wait()
    failures = [o for o in outcomes if o is not None]
    assert not failures, f"{len(failures)} of 50 runs failed:\n" + "\n".join(failures)


def test_a_drain_longer_than_the_deadline_is_cut_off_to_the_spool(demo_mp4, redis_server, tmp_path):
    """Redis hangs (SIGSTOP) with events queued: the run still exits 0 within stop_timeout_s, and every
    event it printed is in Redis or in the spool once Redis is back."""
    d = tmp_path
    cfg = write_cfg(
        d,
        {
            "cameras": [{"id": "loop", "source": str(demo_mp4.path), "loop": True, "realtime": True}],
            "detector": {"model": "none"},
            "redis": {"url": redis_server.url, "spool_path": str(d / "spool.sqlite"), "socket_timeout_s": 30,
                      "flush_timeout_s": 60},
            "stop_timeout_s": 3,
        },
    )  # fmt: skip
    proc = subprocess.Popen(
        cli("--config", str(cfg), "--print-events", "--var-dir", str(d / "var")),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=d,
    )  # fmt: skip
    assert proc.stdout is not None
    first = proc.stdout.readline()
    assert first.startswith("{")
    time.sleep(1.0)
    redis_server.pause()  # a hung Redis: sends block for socket_timeout_s (30 s), far past the deadline
    try:
        time.sleep(1.0)
        proc.send_signal(signal.SIGTERM)
        t0 = time.monotonic()
        out, err = proc.communicate(timeout=40)
        took = time.monotonic() - t0
    finally:
        redis_server.resume()
    assert proc.returncode == 0, err[-2000:]
    assert took <= 3 + EXIT_SLACK_S, f"exited {took:.1f}s after SIGTERM; {err[-2000:]}"
    assert "stop deadline near" in err
    printed = _printed_ids(first + out)
    kept = _redis_and_spool_ids(redis.Redis.from_url(redis_server.url), "vidpipe", d / "spool.sqlite")
    assert printed and not [e for e in printed if e not in kept]
    oct_mode = oct((d / "spool.sqlite").stat().st_mode & 0o777)
    assert oct_mode == "0o600", oct_mode


def test_a_second_signal_exits_at_once_with_the_spool_intact(demo_mp4, redis_server, tmp_path):
    d = tmp_path
    cfg = write_cfg(
        d,
        {
            "cameras": [{"id": "loop", "source": str(demo_mp4.path), "loop": True, "realtime": True}],
            "detector": {"model": "none"},
            "redis": {"url": redis_server.url, "spool_path": str(d / "spool.sqlite"), "socket_timeout_s": 30},
            "stop_timeout_s": 30,
        },
    )  # fmt: skip
    proc = subprocess.Popen(
        cli("--config", str(cfg), "--var-dir", str(d / "var"), "--print-events"),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=d,
    )  # fmt: skip
    assert proc.stdout is not None
    assert proc.stdout.readline().startswith("{")
    redis_server.pause()  # the drain cannot finish: only the second signal ends the run
    try:
        time.sleep(3.0)  # events pile up and overflow to the spool after enqueue_timeout_s
        proc.send_signal(signal.SIGTERM)
        time.sleep(0.5)
        proc.send_signal(signal.SIGTERM)
        t0 = time.monotonic()
        _, err = proc.communicate(timeout=30)
        took = time.monotonic() - t0
    finally:
        redis_server.resume()
    assert proc.returncode == 130, err[-2000:]
    assert took < 5, took
    assert "forced exit" in err
    from pipeline.deliver.spool import Spool

    with Spool(d / "spool.sqlite") as spool:  # opens (no corruption) and is readable to the end
        spool.peek_batch(10**7)


def test_sigterm_during_model_load_exits_0_and_stops_the_local_redis(demo_mp4, tmp_path):
    """Handlers come first: a SIGTERM while the model loads ends the run cleanly and stops its redis-server
    (it used to exit -15 and leave the redis-server running)."""
    cfg = loop_camera_cfg(tmp_path, demo_mp4.path, None)
    data = yaml.safe_load(cfg.read_text())
    data["detector"] = {"model": "yolov3-tiny"}
    cfg.write_text(yaml.safe_dump(data))
    proc = subprocess.Popen(
        cli("--config", str(cfg), "--var-dir", str(tmp_path / "var")),
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, cwd=tmp_path,
    )  # fmt: skip
    assert proc.stderr is not None
    started = _wait_line(proc.stderr, "started a local redis-server", "its redis-server started")
    proc.send_signal(signal.SIGTERM)  # the model load comes right after the redis-server
    _, err = proc.communicate(timeout=STOP_TIMEOUT_S + 30)
    assert proc.returncode == 0, err[-2000:]
    with pytest.raises(redis.ConnectionError):
        redis.Redis(port=_local_redis_port(started), socket_connect_timeout=1).ping()


def _pids_of_children(pid: int) -> list[int]:
    children = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(x) for x in children.read_text().split()] if children.exists() else []


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def test_sigkill_of_the_pipeline_leaves_no_redis_server(demo_mp4, tmp_path):
    cfg = loop_camera_cfg(tmp_path, demo_mp4.path, None)
    proc = subprocess.Popen(
        cli("--config", str(cfg), "--print-events", "--var-dir", str(tmp_path / "var")),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path,
    )  # fmt: skip
    assert proc.stdout is not None and proc.stderr is not None
    started = _wait_line(proc.stderr, "started a local redis-server", "its redis-server started")
    assert proc.stdout.readline().startswith("{")
    servers = [
        c for c in _pids_of_children(proc.pid) if "redis-server" in Path(f"/proc/{c}/comm").read_text()
    ]
    assert len(servers) == 1, servers
    # the password is not on its command line (any local user can read /proc/<pid>/cmdline)
    password = (tmp_path / "var" / "redis" / "password").read_text().strip()
    assert password not in Path(f"/proc/{servers[0]}/cmdline").read_bytes().decode(errors="replace")
    proc.kill()
    proc.wait()
    deadline = time.monotonic() + 10
    while _alive(servers[0]) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _alive(servers[0]), "the pipeline's redis-server survived its SIGKILL"
    with pytest.raises(redis.ConnectionError):
        redis.Redis(port=_local_redis_port(started), socket_connect_timeout=1).ping()


# -- fail fast at start -----------------------------------------------------------------------------------


def _unusable_redis_urls(make_redis) -> dict[str, tuple[str, str]]:
    """case -> (redis.url, what the error must say)."""
    server = make_redis(password="the-right-secret")
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()  # nothing listens there now
    return {
        "no password": (f"redis://127.0.0.1:{server.port}/0", "requires a password and redis.url has none"),
        "wrong password": (f"redis://:wrong-secret@127.0.0.1:{server.port}/0", "refused the credentials"),
        "unknown host": ("redis://no-such-host.invalid:6379/0", "does not resolve (DNS)"),
        "refused": (f"redis://127.0.0.1:{port}/0", "refused the connection"),
    }


def test_unusable_redis_at_start_is_exit_2_naming_the_cause(demo_mp4, make_redis, tmp_path):
    for case, (url, expected) in _unusable_redis_urls(make_redis).items():
        cfg = loop_camera_cfg(tmp_path, demo_mp4.path, url)
        r = run_cli("--config", str(cfg), "--var-dir", str(tmp_path / "var"), cwd=tmp_path)
        assert r.returncode == 2, f"{case}: exit {r.returncode}; stderr: {r.stderr[-2000:]}"
        assert expected in r.stderr, f"{case}: {r.stderr[-2000:]}"
        assert "start_without_redis" in r.stderr and "Traceback" not in r.stderr
        assert "wrong-secret" not in r.stderr


def test_start_without_redis_spools_and_says_so(demo_mp4, tmp_path):
    cfg = write_cfg(
        tmp_path,
        {
            "cameras": [{"id": "file", "source": str(demo_mp4.path)}],
            "detector": {"model": "none"},
            "redis": {
                "url": "redis://no-such-host.invalid:6379/0",
                "start_without_redis": True,
                "spool_path": str(tmp_path / "spool.sqlite"),
                "flush_timeout_s": 1,
            },
        },
    )
    r = run_cli("--config", str(cfg), "--var-dir", str(tmp_path / "var"), cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "does not resolve (DNS)" in r.stderr and "starting anyway" in r.stderr
    from pipeline.deliver.spool import Spool

    with Spool(tmp_path / "spool.sqlite") as spool:
        assert spool.count() >= demo_mp4.frames  # every detections.frame event waits in the spool


# -- cameras that fail ------------------------------------------------------------------------------------


def test_every_camera_failing_is_a_failed_run_and_a_text_file_is_not_a_video(redis_server, tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("this is a text file, not a video\n" * 200)
    cfg = write_cfg(
        tmp_path,
        {
            "cameras": [
                {"id": "text", "source": str(text)},
                {"id": "missing", "source": str(tmp_path / "no-such-clip.mp4")},
            ],
            "detector": {"model": "none"},
            "redis": {"url": redis_server.url, "spool_path": str(tmp_path / "spool.sqlite")},
        },
    )
    r = run_cli("--config", str(cfg), "--var-dir", str(tmp_path / "var"), "--print-events", cwd=tmp_path)
    assert r.returncode == 1, r.stderr[-2000:]
    assert "pipeline failed: every camera failed" in r.stderr
    summary = next(line for line in r.stderr.splitlines() if "every camera failed" in line)
    assert '"text": "failed: ' in summary and "not a video" in summary
    assert '"missing": "failed: ' in summary and "No such file" in summary
    events = [Event.from_json(line) for line in r.stdout.splitlines() if line.startswith("{")]
    assert not [e for e in events if e.type == "detections.frame"]  # the text was never "decoded"


def test_one_camera_failing_of_two_is_still_exit_0(demo_mp4, redis_server, tmp_path):
    cfg = write_cfg(
        tmp_path,
        {
            "cameras": [
                {"id": "good", "source": str(demo_mp4.path)},
                {"id": "missing", "source": str(tmp_path / "no-such-clip.mp4")},
            ],
            "detector": {"model": "none"},
            "redis": {"url": redis_server.url, "spool_path": str(tmp_path / "spool.sqlite")},
        },
    )
    r = run_cli("--config", str(cfg), "--var-dir", str(tmp_path / "var"), cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "pipeline stopped; cameras:" in r.stderr and '"missing": "failed: ' in r.stderr


# -- metrics port, local redis-server --------------------------------------------------------------------


def _local_redis_port(stderr: str) -> int:
    line = next(x for x in stderr.splitlines() if "started a local redis-server" in x)
    return int(line.split("@127.0.0.1:")[1].split("/")[0])


def test_metrics_port_in_use_is_exit_2_before_any_redis_server_or_model(demo_mp4, tmp_path):
    """The port is checked before the local redis-server starts and before the model loads (fail fast)."""
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    port = holder.getsockname()[1]
    try:
        cfg = loop_camera_cfg(tmp_path, demo_mp4.path, None, metrics={"http_port": port})
        r = run_cli("--config", str(cfg), "--var-dir", str(tmp_path / "var"), cwd=tmp_path)
    finally:
        holder.close()
    assert r.returncode == 2, r.stderr[-2000:]
    assert f"metrics.http_port: cannot listen on 127.0.0.1:{port}" in r.stderr
    assert "Traceback" not in r.stderr
    assert "started a local redis-server" not in r.stderr  # nothing to leave behind: it never started


def test_web_port_in_use_is_exit_2_before_the_model_loads(demo_mp4, tmp_path):
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    port = holder.getsockname()[1]
    try:
        cfg = loop_camera_cfg(tmp_path, demo_mp4.path, None)
        cfg_data = yaml.safe_load(cfg.read_text())
        cfg_data["detector"] = {"model": "yolov3-tiny"}  # a real model: its load must not happen first
        cfg.write_text(yaml.safe_dump(cfg_data))
        r = subprocess.run(
            [sys.executable, str(REPO / "run_pipeline.py"), "--config", str(cfg), "--web-port", str(port),
             "--var-dir", str(tmp_path / "var")],
            capture_output=True, text=True, timeout=90, cwd=tmp_path,
        )  # fmt: skip
    finally:
        holder.close()
    assert r.returncode == 2, r.stderr[-2000:]
    assert f"web.port: cannot listen on 127.0.0.1:{port}" in r.stderr
    assert "started a local redis-server" not in r.stderr and "yolov3-tiny" not in r.stderr


def test_the_local_redis_server_requires_a_password(demo_mp4, tmp_path):
    var = tmp_path / "var"
    cfg = loop_camera_cfg(tmp_path, demo_mp4.path, None)
    proc = subprocess.Popen(
        cli("--config", str(cfg), "--print-events", "--var-dir", str(var)),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=tmp_path,
    )
    try:
        assert proc.stdout is not None and proc.stderr is not None
        started = ""
        while "started a local redis-server" not in started:
            started = proc.stderr.readline()
            assert started, "the run ended before starting its redis-server"
        assert proc.stdout.readline().startswith("{")
        pw_file = var / "redis" / "password"
        assert oct(pw_file.stat().st_mode & 0o777) == "0o600"
        password = pw_file.read_text().strip()
        port = _local_redis_port(started)
        anonymous = redis.Redis(port=port, socket_connect_timeout=1)
        with pytest.raises(redis.AuthenticationError):  # any local process could forge events before
            anonymous.xadd("vidpipe:stream:doors", {"event": "{}"})
        with pytest.raises(redis.AuthenticationError):
            anonymous.delete("vidpipe:stream:detections")
        authed = redis.Redis(port=port, password=password)
        deadline = time.time() + 20
        while time.time() < deadline and not authed.xlen("vidpipe:stream:detections"):
            time.sleep(0.1)
        assert authed.xlen("vidpipe:stream:detections") > 0
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=STOP_TIMEOUT_S + 30)
    assert proc.returncode == 0, err[-2000:]
    assert password not in err and "REDISCLI_AUTH=" in err


# -- --var-dir, metrics ------------------------------------------------------------------------------------


def test_var_dir_holds_gallery_crops_audit_log_and_spool(demo_mp4, redis_server, tmp_path):
    """`faces enroll` and a run with the same --var-dir use the same gallery; nothing lands in ./var."""
    import cv2
    from skimage import data

    var = tmp_path / "state"
    photo = tmp_path / "astronaut.png"
    cv2.imwrite(str(photo), cv2.cvtColor(data.astronaut(), cv2.COLOR_RGB2BGR))
    cfg = write_cfg(
        tmp_path,
        {
            "cameras": [{"id": "cam1", "source": str(demo_mp4.path)}],
            "detector": {"model": "none"},
            "redis": {"url": redis_server.url},  # spool_path, gallery, crops, audit log: the var/ defaults
            "faces": {"enabled": True, "unknown_crops": {"cooldown_s": 0}},
            "doors": [{"id": "front", "cameras": ["cam1"], "allow_people": ["eileen"], "secret": "s" * 32}],
        },
    )
    enroll = run_cli("faces", "--config", str(cfg), "--var-dir", str(var), "enroll", "--name", "eileen",
                     str(photo), cwd=tmp_path)  # fmt: skip
    assert enroll.returncode == 0, enroll.stdout + enroll.stderr
    assert (var / "faces.sqlite").is_file()
    r = run_cli("--config", str(cfg), "--var-dir", str(var), "--print-events", cwd=tmp_path, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "gallery loaded, 1 people" in r.stderr  # the run found the person enrolled under --var-dir
    assert (var / "doors_audit.jsonl").is_file() and (var / "spool.sqlite").is_file()
    events = [Event.from_json(line) for line in r.stdout.splitlines() if line.startswith("{")]
    crops = [f["crop"] for e in events if e.type == "faces.unknown" for f in e.data["faces"] if f["crop"]]
    assert all(Path(c).is_relative_to(var / "unknown_faces") for c in crops)
    assert not (tmp_path / "var").exists()  # the old behaviour: gallery, crops, audit log in ./var
    # private: face templates, audit logs, spools, crops and snapshots are the user's alone
    assert oct(var.stat().st_mode & 0o777) == "0o700"
    for name in ("faces.sqlite", "doors_audit.jsonl", "spool.sqlite"):
        assert oct((var / name).stat().st_mode & 0o777) == "0o600", name
    loose = [str(p) for p in var.rglob("*") if p.stat().st_mode & 0o077]
    assert not loose, loose


def test_an_earlier_loose_var_dir_is_made_private_and_the_enroll_audit_log_is_0600(tmp_path):
    """Files an earlier version left 0644 in a 0755 folder are tightened by the next command."""
    import cv2
    from skimage import data

    var = tmp_path / "state"
    var.mkdir(mode=0o755)
    var.chmod(0o755)
    old_spool = var / "spool.sqlite"
    old_spool.write_bytes(b"")
    old_spool.chmod(0o644)
    photo = tmp_path / "astronaut.png"
    cv2.imwrite(str(photo), cv2.cvtColor(data.astronaut(), cv2.COLOR_RGB2BGR))
    env = {**__import__("os").environ, "VIDPIPE_AUDIT_KEY": "k" * 32}
    r = subprocess.run(
        [sys.executable, str(REPO / "run_pipeline.py"), "faces", "--var-dir", str(var), "enroll", "--name",
         "eileen", str(photo)],
        capture_output=True, text=True, timeout=300, cwd=tmp_path, env=env,
    )  # fmt: skip
    assert r.returncode == 0, r.stdout + r.stderr
    assert oct(var.stat().st_mode & 0o777) == "0o700"
    assert oct(old_spool.stat().st_mode & 0o777) == "0o600"
    audit = var / "faces.sqlite.audit.jsonl"
    assert audit.is_file() and oct(audit.stat().st_mode & 0o777) == "0o600"
    assert oct((var / "faces.sqlite").stat().st_mode & 0o777) == "0o600"


def test_metrics_export_skipped_frames_and_frame_age(demo_mp4, redis_server, tmp_path):
    import urllib.request

    cfg = write_cfg(
        tmp_path,
        {
            "cameras": [{"id": "loop", "source": str(demo_mp4.path), "loop": True, "realtime": True,
                         "detect_fps": 5}],
            "detector": {"model": "none"},
            "redis": {"url": redis_server.url, "spool_path": str(tmp_path / "spool.sqlite")},
            "metrics": {"http_port": 0},
        },
    )  # fmt: skip
    proc = subprocess.Popen(
        cli("--config", str(cfg), "--var-dir", str(tmp_path / "var")),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        cwd=tmp_path,
    )
    try:
        assert proc.stderr is not None
        line = ""
        while "metrics: http://" not in line:
            line = proc.stderr.readline()
            assert line, "no metrics line"
        url = line.split("metrics: ", 1)[1].strip()
        _wait_line(proc.stderr, "camera loop online", "the camera came online")  # the server starts first
        time.sleep(3)
        body = urllib.request.urlopen(url, timeout=5).read().decode()
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=STOP_TIMEOUT_S + 30)

    def value(prefix: str) -> float:
        return float(next(x for x in body.splitlines() if x.startswith(prefix)).rsplit(" ", 1)[1])

    # 25 fps thinned to 5: about 4 of every 5 decoded frames are skipped, and they are exported
    assert value('vidpipe_skipped_total{stage="decoder",camera="loop"}') >= 20
    age = value('vidpipe_frame_age_at_detection_seconds{camera="loop",quantile="0.95"}')
    assert 0 <= age < 2.0
    assert 0 <= value('vidpipe_decoder_lag_seconds{camera="loop"}') < 2.0  # a realtime file keeps its pace


def test_sigterm_while_ray_cannot_be_reached_exits_0_at_once(demo_mp4, tmp_path):
    """`ray.init` on a dead address blocks in C for minutes; the signal is still acted on at once (the
    wakeup-fd listener), the local redis-server is stopped, and the exit is 0, not a -15 or a hang."""
    pytest.importorskip("ray")
    cfg = loop_camera_cfg(tmp_path, demo_mp4.path, None)
    proc = subprocess.Popen(
        cli("--config", str(cfg), "--var-dir", str(tmp_path / "var"), "--ray", "127.0.0.1:1"),
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, cwd=tmp_path,
    )  # fmt: skip
    assert proc.stderr is not None
    started = _wait_line(proc.stderr, "started a local redis-server", "its redis-server started")
    _wait_line(proc.stderr, "Connecting to existing Ray cluster", "Ray was asked to connect")
    time.sleep(2.0)  # inside ray.init now
    proc.send_signal(signal.SIGTERM)
    t0 = time.monotonic()
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err[-2000:]
    assert time.monotonic() - t0 < STOP_TIMEOUT_S + EXIT_SLACK_S
    assert "stopped during start-up" in err
    with pytest.raises(redis.ConnectionError):
        redis.Redis(port=_local_redis_port(started), socket_connect_timeout=1).ping()
