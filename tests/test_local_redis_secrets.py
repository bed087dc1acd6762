"""The local redis-server keeps its password off argv and dies with its parent (real redis-server)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import redis

from pipeline.deliver.redis_server import LocalRedis


def test_the_password_is_in_a_0600_config_file_never_on_argv(tmp_path):
    server = LocalRedis(data_dir=tmp_path / "r", password="not-on-argv-s3cret")
    assert not [a for a in server._args() if "not-on-argv-s3cret" in a]  # the argv it will run with
    with server:
        assert server.proc is not None
        cmdline = Path(f"/proc/{server.proc.pid}/cmdline").read_bytes()
        assert b"not-on-argv-s3cret" not in cmdline
        assert oct(server.conf_path.stat().st_mode & 0o777) == "0o600"
        assert redis.Redis.from_url(server.url).ping()


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def test_the_server_dies_with_a_sigkilled_parent_and_ignores_the_terminals_ctrl_c(tmp_path):
    """A parent process starts a LocalRedis and is SIGKILLed: the kernel ends the server (PDEATHSIG). The
    server is in its own session, so a Ctrl-C to the parent's process group does not reach it."""
    script = (
        "import sys, time; sys.path.insert(0, sys.argv[1]);"
        "from pipeline.deliver.redis_server import LocalRedis;"
        "s = LocalRedis(data_dir=sys.argv[2], password='pw').start();"
        "print(s.proc.pid, flush=True); time.sleep(600)"
    )
    repo = str(Path(__file__).resolve().parents[1])
    parent = subprocess.Popen(
        [sys.executable, "-c", script, repo, str(tmp_path / "r")], stdout=subprocess.PIPE, text=True,
        start_new_session=True,
    )  # fmt: skip
    assert parent.stdout is not None
    server_pid = int(parent.stdout.readline())
    assert os.getsid(server_pid) != os.getpgid(parent.pid)  # not in the group a terminal's Ctrl-C reaches
    parent.kill()
    parent.wait()
    deadline = time.monotonic() + 10
    while _alive(server_pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(server_pid), "redis-server outlived its SIGKILLed parent"
