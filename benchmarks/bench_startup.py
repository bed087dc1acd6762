"""Start-up: seconds from process start to the first detection, the pipeline against a bare loop, same run.

Contenders, each a fresh Python process, rounds interleaved (pipeline, bare, pipeline, ...) so a shared
machine's load hits both alike:

- pipeline: ``run_pipeline.py --source CLIP --no-web --print-events --model M`` (a local redis-server, the
  publisher, sinks, analytics); the clock stops at the first ``detections.frame`` line on stdout.
- bare: a PyAV decode + ONNX Runtime loop written out (imports, session, decode one frame, letterbox,
  YOLOX grid decode, OpenCV NMS), none of vidpipe's code; the clock stops at its first detection.
- with ``--baseline-root DIR``: also the pipeline of another checkout (e.g. ``git archive`` of the commit
  before a change), same model file, so a change is measured against its own past in the same run.

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
import av, cv2, numpy as np, onnxruntime as ort
sess = ort.InferenceSession(sys.argv[2], providers=["CPUExecutionProvider"])
name = sess.get_inputs()[0].name
grids = []
for stride in (8, 16, 32):  # YOLOX raw grid output at 416x416
    n = 416 // stride
    gy, gx = np.mgrid[0:n, 0:n]
    grids.append(np.stack([gx.ravel(), gy.ravel(), np.full(n * n, stride)], 1))
grid = np.concatenate(grids).astype(np.float32)
with av.open(sys.argv[1]) as c:
    for frame in c.decode(video=0):
        img = frame.to_ndarray(format="bgr24")
        r = min(416 / img.shape[0], 416 / img.shape[1])
        canvas = np.full((416, 416, 3), 114, np.uint8)
        h, w = int(img.shape[0] * r), int(img.shape[1] * r)
        canvas[:h, :w] = cv2.resize(img, (w, h))
        out = sess.run(None, {name: canvas.transpose(2, 0, 1)[None].astype(np.float32)})[0][0]
        xy = (out[:, :2] + grid[:, :2]) * grid[:, 2:]
        wh = np.exp(out[:, 2:4]) * grid[:, 2:]
        scores = out[:, 4] * out[:, 5:].max(1)
        keep = scores > 0.3
        boxes = np.concatenate([xy - wh / 2, wh], 1)[keep] / r
        idx = cv2.dnn.NMSBoxes(boxes.tolist(), scores[keep].tolist(), 0.3, 0.45)
        print("first detection", len(idx), flush=True)
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
    ap.add_argument("--model", default="yolox-nano", help="model-store name of a YOLOX-layout ONNX model")
    ap.add_argument(
        "--baseline-root", help="another checkout whose run_pipeline.py runs as a third contender"
    )
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--timeout", type=float, default=120.0)
    args = ap.parse_args()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    py = sys.executable
    sys.path.insert(0, str(ROOT))
    from engines.model_store import get_model_path

    model_file = str(get_model_path(args.model))
    with tempfile.TemporaryDirectory(prefix="vidpipe-startup-") as var:
        pipe_cmd = [
            py,
            "run_pipeline.py",
            "--source",
            args.clip,
            "--no-web",
            "--print-events",
            "--model",
            model_file,
            "--var-dir",
            var,
        ]
        bare_cmd = [py, "-c", BARE, args.clip, model_file]
        pipe, bare, base = [], [], []
        base_env = {**env, "PYTHONPATH": str(args.baseline_root)} if args.baseline_root else env
        base_cmd = [py, str(Path(args.baseline_root or ".") / "run_pipeline.py"), *pipe_cmd[2:]]
        _first_line(bare_cmd, "first detection", env, args.timeout)  # warm the page cache for both
        for _ in range(args.rounds):
            pipe.append(_first_line(pipe_cmd, '"detections.frame"', env, args.timeout))
            bare.append(_first_line(bare_cmd, "first detection", env, args.timeout))
            if args.baseline_root:
                base.append(_first_line(base_cmd, '"detections.frame"', base_env, args.timeout))
    load = os.getloadavg()
    print(
        f"model {args.model}, clip {Path(args.clip).name}, {args.rounds} interleaved rounds, load {load[0]:.1f}"
    )
    print("| contender | first detection: best / median s |")
    print("|---|---:|")
    print(f"| pipeline (`--no-web --print-events`) | {min(pipe):.2f} / {statistics.median(pipe):.2f} |")
    print(f"| bare PyAV + ONNX Runtime loop | {min(bare):.2f} / {statistics.median(bare):.2f} |")
    if base:
        print(f"| pipeline at {args.baseline_root} | {min(base):.2f} / {statistics.median(base):.2f} |")
    print(
        f"pipeline - bare: {min(pipe) - min(bare):+.2f} s (best), "
        f"{statistics.median(pipe) - statistics.median(bare):+.2f} s (median)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
