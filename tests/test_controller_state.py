"""The reference door controller's replay state: it lives at one absolute path whatever the working directory,
a controller without it does not start, and ``--init-state`` (logged, recorded) still refuses grants signed
before it. Real controller processes, a real redis-server."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from pipeline.analyze.doors.signing import sign_event
from pipeline.core.events import Event
from pipeline.deliver.redis_transport import channel_for

KEY = "door-key-for-the-state-tests-0123"
ROOT = Path(__file__).resolve().parents[1]


def grant_event() -> Event:
    data = {"door_id": "front", "decision": "granted", "person": "alice", "distance": 0.3, "frames": 3,
            "reason": "test"}  # fmt: skip
    return sign_event(Event(type="doors.decision", camera_id="cam1", data=data), "front", KEY.encode())


def env_for(home: Path) -> dict[str, str]:
    """A service account's environment: HOME set, no VIDPIPE_VAR_DIR, no XDG_STATE_HOME."""
    env = {k: v for k, v in os.environ.items() if k not in ("VIDPIPE_VAR_DIR", "XDG_STATE_HOME")}
    return {**env, "HOME": str(home), "TEST_DOOR_KEY": KEY, "PYTHONPATH": str(ROOT)}


def controller_cmd(redis_url: str, hook_file: Path, *extra: str) -> list[str]:
    hook = f"sh -c 'echo $VIDPIPE_EVENT_ID >> {hook_file}'"
    return [sys.executable, "-m", "pipeline.doors.controller", "--door", "front", "--redis", redis_url,
            "--secret-env", "TEST_DOOR_KEY", "--prefix", "vp", "--max-age", "120", "--hook", hook, *extra]  # fmt: skip


class Controller:
    def __init__(
        self, redis_server, redis_client, cwd: Path, home: Path, hook_file: Path, *extra: str
    ) -> None:
        self.log = cwd / "controller.log"
        self.client = redis_client
        before = redis_client.execute_command("PUBSUB", "NUMPAT")
        with open(self.log, "a") as fh:
            self.proc = subprocess.Popen(
                controller_cmd(redis_server.url, hook_file, *extra),
                env=env_for(home),
                cwd=cwd,
                stdout=fh,
                stderr=subprocess.STDOUT,
            )
        deadline = time.time() + 30
        while time.time() < deadline and redis_client.execute_command("PUBSUB", "NUMPAT") <= before:
            assert self.proc.poll() is None, self.log.read_text()
            time.sleep(0.1)

    def publish(self, ev: Event) -> None:
        self.client.publish(channel_for("vp", ev), ev.to_json())

    def wait_log(self, text: str, count: int = 1, timeout: float = 15) -> bool:
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.log.read_text().count(text) >= count:
                return True
            time.sleep(0.1)
        return False

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


def opened(hook_file: Path) -> list[str]:
    return hook_file.read_text().split() if hook_file.exists() else []


def wait_opened(hook_file: Path, n: int, timeout: float = 15) -> list[str]:
    deadline = time.time() + timeout
    while time.time() < deadline and len(opened(hook_file)) < n:
        time.sleep(0.1)
    return opened(hook_file)


def test_without_its_state_file_the_controller_refuses_to_start(redis_server, tmp_path):
    """Before: it started from counter 0 (relative var/doors/front.counter) and accepted any replay."""
    home = tmp_path / "home"
    cmd = controller_cmd(redis_server.url, tmp_path / "opened.txt")
    try:
        r = subprocess.run(cmd, env=env_for(home), cwd=tmp_path, capture_output=True, text=True, timeout=30)
    except subprocess.TimeoutExpired:
        raise AssertionError("the controller started without its replay state") from None
    expected = home / ".local" / "state" / "vidpipe" / "doors" / "front.counter"
    assert r.returncode == 2, r.stderr
    assert f"no replay state at {expected}" in r.stderr and "--init-state" in r.stderr
    assert not (tmp_path / "var").exists() and not expected.exists()


def test_init_state_is_recorded_and_refuses_grants_signed_before_it(redis_server, redis_client, tmp_path):
    """The attack: capture a grant, get the controller's state removed, have it re-initialised, replay the
    grant within --max-age (120 s here). The new counter starts at the controller's clock (+ 2 s skew), so
    the captured grant's counter (its signing time) is below it."""
    home, hook_file = tmp_path / "home", tmp_path / "opened.txt"
    captured = grant_event()
    ctl = Controller(redis_server, redis_client, tmp_path, home, hook_file, "--init-state")
    try:
        assert ctl.wait_log("INIT-STATE"), ctl.log.read_text()
        ctl.publish(captured)
        assert ctl.wait_log("replayed or reordered"), ctl.log.read_text()
        time.sleep(2.2)  # grants signed more than the allowed skew after the init open the door
        fresh = grant_event()
        ctl.publish(fresh)
        assert wait_opened(hook_file, 1) == [fresh.event_id], ctl.log.read_text()
    finally:
        ctl.stop()
    state = json.loads((home / ".local/state/vidpipe/doors/front.counter").read_text())
    assert state["initialized_by"] and state["counter"] == fresh.data["signature"]["counter"]

    r = subprocess.run(controller_cmd(redis_server.url, hook_file, "--init-state"), env=env_for(home), cwd=tmp_path,
                       capture_output=True, text=True, timeout=30)  # fmt: skip
    assert r.returncode == 2 and "exists" in r.stderr  # --init-state never overwrites a state


def test_a_controller_started_from_another_directory_uses_the_same_state(
    redis_server, redis_client, tmp_path
):
    """Before: the default state was relative to the working directory, so a controller started from
    elsewhere began at counter 0 and a captured grant opened the door again."""
    home, hook_file = tmp_path / "home", tmp_path / "opened.txt"
    first_dir, second_dir = tmp_path / "a", tmp_path / "b"
    first_dir.mkdir()
    second_dir.mkdir()
    ctl = Controller(redis_server, redis_client, first_dir, home, hook_file, "--init-state")
    try:
        time.sleep(2.2)
        grant = grant_event()
        ctl.publish(grant)
        assert wait_opened(hook_file, 1) == [grant.event_id], ctl.log.read_text()
    finally:
        ctl.stop()

    ctl = Controller(redis_server, redis_client, second_dir, home, hook_file)  # no --init-state needed
    try:
        ctl.publish(grant)  # the captured grant, replayed within --max-age after the restart
        assert ctl.wait_log("replayed or reordered"), ctl.log.read_text()
    finally:
        ctl.stop()
    assert opened(hook_file) == [grant.event_id]
    assert str(home / ".local/state/vidpipe/doors/front.counter") in ctl.log.read_text()
