"""The `run_pipeline.py` process as users and service managers see it: signals, exit codes, start-up errors.

Every test here runs the real CLI as a child process against real servers (redis-server, a metrics port
held by another socket, FFmpeg on real files) and checks what a user or systemd would see: the exit
status, the message on stderr, what is left behind.
"""

from __future__ import annotations

import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
DRAIN_DEADLINE_S = 15.0  # flush_timeout_s (5 s here) + join slack: what a service manager should wait


def write_cfg(tmp_path: Path, data: dict, name: str = "cfg.yaml") -> Path:
    p = tmp_path / name
    p.write_text(yaml.safe_dump(data))
    return p


def cli(*args: str) -> list[str]:
    return [sys.executable, str(REPO / "run_pipeline.py"), *args]


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


# -- signals --------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_sigterm_is_honoured_50_times_out_of_50(demo_mp4, redis_server, tmp_path):
    """A signal the kernel hands to a worker thread must still stop the process (it used to be lost)."""
    cfg = loop_camera_cfg(tmp_path, demo_mp4.path, redis_server.url)
    rng = random.Random(14)
    slow: list[float] = []
    for i in range(50):
        proc = subprocess.Popen(
            cli("--config", str(cfg), "--print-events", "--var-dir", str(tmp_path / "var")),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=tmp_path,
        )
        try:
            assert proc.stdout is not None
            # The first event is printed after the signal handlers are in place and the stages run.
            first = proc.stdout.readline()
            assert first.startswith("{"), f"run {i}: no event printed; stderr: {proc.stderr.read()[-2000:]}"
            time.sleep(rng.uniform(0.05, 0.4))  # land the signal at a different moment each time
            t0 = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            try:
                _, err = proc.communicate(timeout=DRAIN_DEADLINE_S)
            except subprocess.TimeoutExpired:
                pytest.fail(f"run {i}: SIGTERM not honoured within {DRAIN_DEADLINE_S}s")
            slow.append(time.monotonic() - t0)
            assert proc.returncode == 0, f"run {i}: exit {proc.returncode}; stderr: {err[-2000:]}"
            assert "SIGTERM: stopping" in err
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert len(slow) == 50
