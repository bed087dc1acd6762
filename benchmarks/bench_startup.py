"""Start-up: seconds from process start to the first detection, the pipeline against a bare loop, same run.

Contenders, each a fresh Python process, rounds interleaved (pipeline, bare, pipeline, ...) so a shared
machine's load hits both alike:

- pipeline: ``run_pipeline.py --source CLIP --no-web --print-events --model M`` (a local redis-server, the
  publisher, sinks, analytics); the clock stops at the first ``detections.frame`` line on stdout.
- bare: a PyAV decode + ONNX Runtime loop with the same detector class (imports, model load, decode one
  frame, detect); the clock stops when it prints its first detection.

``--phases`` also prints where the pipeline's start-up goes (``-X importtime`` of the CLI and the logged
phase times), for finding what to make lazy.

    .venv/bin/python benchmarks/bench_startup.py [--clip PATH] [--model yolox-nano] [--rounds 5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CLIP = ROOT.parent / "shared" / "data" / "videos" / "pedestrians_street.mp4"

BARE = r"""
import sys, time
t0 = time.perf_counter()
import av
from pipeline.config.schema import DetectorConfig
from pipeline.detect.detectors.factory import build_detector
det = build_detector(DetectorConfig(model=sys.argv[2]))
with av.open(sys.argv[1]) as c:
    for frame in c.decode(video=0):
        d = det.detect([frame.to_ndarray(format="bgr24")])[0]
        print("first detection", len(d.scores), flush=True)
        break
"""


def _first_line(cmd: list[str], marker: str, env: dict[str, str], timeout: float) -> float:
    """Seconds until a stdout line containing ``marker``; the process is then stopped."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env, cwd=ROOT
    )
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            if marker in line:
                return time.perf_counter() - t0
            if time.perf_counter() - t0 > timeout:
                break
        raise RuntimeError(f"no {marker!r} line from {' '.join(cmd)}")
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clip", default=str(DEFAULT_CLIP))
    ap.add_argument("--model", default="yolox-nano")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--timeout", type=float, default=120.0)
    args = ap.parse_args()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    py = sys.executable
    with tempfile.TemporaryDirectory(prefix="vidpipe-startup-") as var:
        pipe_cmd = [
            py,
            "run_pipeline.py",
            "--source",
            args.clip,
            "--no-web",
            "--print-events",
            "--model",
            args.model,
            "--var-dir",
            var,
        ]
        bare_cmd = [py, "-c", BARE, args.clip, args.model]
        pipe, bare = [], []
        _first_line(bare_cmd, "first detection", env, args.timeout)  # warm the page cache for both
        for _ in range(args.rounds):
            pipe.append(_first_line(pipe_cmd, '"detections.frame"', env, args.timeout))
            bare.append(_first_line(bare_cmd, "first detection", env, args.timeout))
    load = os.getloadavg()
    print(
        f"model {args.model}, clip {Path(args.clip).name}, {args.rounds} interleaved rounds, load {load[0]:.1f}"
    )
    print("| contender | first detection: best / median s |")
    print("|---|---:|")
    print(f"| pipeline (`--no-web --print-events`) | {min(pipe):.2f} / {statistics.median(pipe):.2f} |")
    print(f"| bare PyAV + ONNX Runtime loop | {min(bare):.2f} / {statistics.median(bare):.2f} |")
    print(
        f"pipeline - bare: {min(pipe) - min(bare):+.2f} s (best), "
        f"{statistics.median(pipe) - statistics.median(bare):+.2f} s (median)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
