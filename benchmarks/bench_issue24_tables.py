"""Issue 24's tables, each contender beside its peer in one invocation; prints markdown for BENCHMARKS.md.

Tables (same clips and models for every contender, rounds interleaved so a shared machine's load hits all):

1. **Pipeline vs a bare PyAV + ONNX Runtime loop**, 720p clip (``traffic_motorway.mp4``, 1280x720 H.264,
   368 frames = 12.3 s), every frame detected, YOLOX-Nano and YOLOv3-tiny, each run a fresh process:
   steady state after the 20th detected frame (pace = frames per second, CPU per frame = the process tree's
   user + system time from /proc), and the whole run from spawn to exit (wall, CPU from ``wait4``, time to the
   first detection, detections).
2. **Pipeline vs an OpenCV DNN loop** (the same bare loop with ``cv2.dnn`` as the engine), same runs.
3. **int8 vs fp32**: ``run_pipeline.py models quantize --model M --images pedestrians_street.mp4`` for both
   models (its own held-apart check and interleaved speed measurement).
4. **CPU NMS vs torchvision**: ``benchmarks/bench_nms.py`` warm, after a YOLOX-Nano inference before every
   call (the pipeline's state), and with caches flushed before every call.
5. **Decoding**: CPU per frame of a 1080p H.264 clip (the 720p clip upscaled, made once under ``--cache``),
   FFmpeg AUTO threads vs one thread, alternating; cores per camera at 25 and 30 fps.

The pipeline runs ``run_pipeline.py --config C --profile whole --no-web --print-events`` with a one-camera
config (no ``detect_fps``: every frame; file not paced) and a local redis-server, as a user runs it. The bare
loops decode with PyAV, preprocess as the pipeline does (YOLOX letterbox BGR; darknet RGB / 255 stretch),
run the network, decode its output, keep score > 0.3 in the default six classes and run OpenCV's batched NMS.

``--models`` limits table 1 to some models; ``--baseline-root DIR`` adds the pipeline of another checkout
(e.g. ``git archive`` of the commit before a change, its own ``run_pipeline.py`` on its own PYTHONPATH) as a
fourth contender in the same rounds, and prints its start-up and whole run beside this checkout's.

    .venv/bin/python benchmarks/bench_issue24_tables.py [--rounds 5] [--nms-repeats 9] [--decode-rounds 5]
    .venv/bin/python benchmarks/bench_issue24_tables.py --only loops --models yolov3-tiny --baseline-root DIR
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
VIDEOS = ROOT.parent / "shared" / "data" / "videos"
CLIP_720P = VIDEOS / "traffic_motorway.mp4"
CALIBRATION = VIDEOS / "pedestrians_street.mp4"
CLASSES = ["person", "bicycle", "car", "motorcycle", "bus", "truck"]
MODELS = ("yolox-nano", "yolov3-tiny")
BASELINE = "pipeline (baseline checkout)"
STEADY_FROM = 20  # frames: the steady state starts after the 20th detected frame (issue 24)

BARE = r"""
import sys
import av, cv2, numpy as np
engine, family, clip = sys.argv[1], sys.argv[2], sys.argv[3]
model = sys.argv[4:]
WANT = np.array([0, 1, 2, 3, 5, 7])  # person bicycle car motorcycle bus truck
if engine == "ort":
    import onnxruntime as ort
    sess = ort.InferenceSession(model[0], providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    run = lambda blob: sess.run(None, {name: blob})[0][0]
else:
    net = cv2.dnn.readNetFromDarknet(model[0], model[1]) if family == "darknet" else cv2.dnn.readNetFromONNX(model[0])
    outs = net.getUnconnectedOutLayersNames()
    def run(blob):
        net.setInput(blob)
        res = net.forward(outs)
        return np.concatenate([r.reshape(-1, r.shape[-1]) for r in res])
grid = None
if family == "yolox":
    parts = []
    for stride in (8, 16, 32):
        n = 416 // stride
        gy, gx = np.mgrid[0:n, 0:n]
        parts.append(np.stack([gx.ravel(), gy.ravel(), np.full(n * n, stride)], 1))
    grid = np.concatenate(parts).astype(np.float32)
with av.open(clip) as c:
    for frame in c.decode(video=0):
        if family == "yolox":
            img = frame.to_ndarray(format="bgr24")
            r = min(416 / img.shape[0], 416 / img.shape[1])
            canvas = np.full((416, 416, 3), 114, np.uint8)
            h, w = int(round(img.shape[0] * r)), int(round(img.shape[1] * r))
            canvas[:h, :w] = cv2.resize(img, (w, h))
            out = run(canvas.transpose(2, 0, 1)[None].astype(np.float32))
            xy = (out[:, :2] + grid[:, :2]) * grid[:, 2:] / r
            wh = np.exp(out[:, 2:4]) * grid[:, 2:] / r
        else:
            img = frame.to_ndarray(format="rgb24")
            H, W = img.shape[:2]
            blob = (cv2.resize(img, (416, 416)).transpose(2, 0, 1)[None].astype(np.float32)) * np.float32(1 / 255)
            out = run(blob)
            scale = np.array([W, H], np.float32) / (416 if engine == "ort" else 1)  # cv2's darknet: normalised
            xy, wh = out[:, :2] * scale, out[:, 2:4] * scale
        cls = out[:, 5:].argmax(1)
        # OpenCV's darknet region layer already multiplies the class columns by the objectness
        scores = out[:, 5:].max(1) if (engine, family) == ("cv2", "darknet") else out[:, 4] * out[:, 5:].max(1)
        keep = (scores > 0.3) & np.isin(cls, WANT)
        boxes = np.concatenate([xy - wh / 2, wh], 1)[keep]
        idx = cv2.dnn.NMSBoxesBatched(boxes.tolist(), scores[keep].tolist(), cls[keep].tolist(), 0.3, 0.45)
        print("D", len(idx), flush=True)
"""


def _ticks(pid: int) -> int:
    """utime + stime (clock ticks) of ``pid``, every thread; 0 once it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return int(fields[11]) + int(fields[12])
    except (OSError, IndexError, ValueError):
        return 0


def _tree_cpu_s(pid: int) -> float:
    """CPU seconds of ``pid`` and its children (the pipeline's local redis-server)."""
    total = _ticks(pid)
    try:
        for task in Path(f"/proc/{pid}/task").iterdir():
            for child in (task / "children").read_text().split():
                total += _ticks(int(child))
    except OSError:
        pass
    return total / os.sysconf("SC_CLK_TCK")


def run_contender(cmd: list[str], marker: str, env: dict[str, str], timeout: float) -> dict:
    """One fresh process: time to first detection, steady pace and CPU per frame after STEADY_FROM, whole
    run wall and CPU (``wait4``: the process and every child it waited for), detections counted."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env, cwd=ROOT
    )
    frames = detections = 0
    first = t_steady = cpu_steady = t_last = cpu_last = None
    assert proc.stdout is not None
    for line in proc.stdout:
        if marker == "pipeline":
            if '"detections.frame"' not in line:
                continue
            detections += len(json.loads(line)["data"]["detections"])
        elif line.startswith("D "):
            detections += int(line.split()[1])
        else:
            continue
        frames += 1
        now = time.perf_counter()
        if frames == 1:
            first = now - t0
        if frames == STEADY_FROM:
            t_steady, cpu_steady = now, _tree_cpu_s(proc.pid)
        elif frames > STEADY_FROM:
            t_last, cpu_last = now, _tree_cpu_s(proc.pid)
        if now - t0 > timeout:
            proc.kill()
            break
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - t0
    if proc.returncode != 0 or t_last is None or t_steady is None:
        raise RuntimeError(f"{' '.join(cmd[:4])}...: exit {proc.returncode}, {frames} frames")
    assert first is not None and cpu_steady is not None and cpu_last is not None
    steady = frames - STEADY_FROM
    return {
        "first": first,
        "wall": wall,
        "cpu": usage.ru_utime + usage.ru_stime,
        "frames": frames,
        "detections": detections,
        "pace": steady / (t_last - t_steady),
        "cpu_per_frame_ms": 1000 * (cpu_last - cpu_steady) / steady,
    }


def machine() -> list[str]:
    lscpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    model = next(
        (ln.split(":", 1)[1].strip() for ln in lscpu.splitlines() if ln.startswith("Model name")), "?"
    )
    flags = next((ln.split(":", 1)[1].split() for ln in lscpu.splitlines() if ln.startswith("Flags")), [])
    want = ["avx2", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_tile", "amx_int8"]
    shown = ", ".join(f"{f} {'yes' if f in flags else 'no'}" for f in want)
    return [f'Machine: `lscpu` model name "{model}", {os.cpu_count()} CPUs; flags: {shown}.']


def uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def _med(values: list[float]) -> float:
    return statistics.median(values)


def table_pipeline_vs_loops(args: argparse.Namespace, env: dict[str, str]) -> None:
    import yaml

    from engines.model_store import get_model_files, get_model_path
    from pipeline.config.schema import DetectorConfig
    from pipeline.detect.detectors.factory import build_detector

    models = {}
    for name in args.models:
        if name == "yolox-nano":
            onnx_path = str(get_model_path(name))
            models[name] = ("yolox", [onnx_path], [onnx_path])
        else:
            det = build_detector(DetectorConfig(model=name, backend="onnxruntime"))  # exports (cached) ONNX
            onnx_path = str(det.engine.model_path)  # type: ignore[attr-defined]
            det.close()
            files = get_model_files(name)
            darknet = [str(files["cfg"]), str(files["weights"])]
            models[name] = ("darknet", [onnx_path], darknet)
    py = sys.executable
    results: dict[tuple[str, str], list[dict]] = {}
    with tempfile.TemporaryDirectory(prefix="vidpipe-i24-") as tmp:
        configs = {}
        for name in models:
            cfg = {
                "cameras": [{"id": "cam0", "source": str(CLIP_720P)}],
                "detector": {
                    "model": name,
                    "backend": "onnxruntime",
                    "input_size": 416,
                    "score_threshold": 0.3,
                    "nms_iou": 0.45,
                    "classes": CLASSES,
                },
                "tracking": {"enabled": False},
            }
            configs[name] = Path(tmp) / f"{name}.yaml"
            configs[name].write_text(yaml.safe_dump(cfg))
        for r in range(args.rounds):
            for name, (family, ort_files, cv2_files) in models.items():
                contenders = {
                    "pipeline": [
                        py,
                        "run_pipeline.py",
                        "--config",
                        str(configs[name]),
                        "--profile",
                        "whole",
                        "--no-web",
                        "--print-events",
                        "--log-level",
                        "WARNING",
                        "--var-dir",
                        str(Path(tmp) / f"var-{name}-{r}"),
                    ],
                    "bare PyAV + ONNX Runtime": [py, "-c", BARE, "ort", family, str(CLIP_720P), *ort_files],
                    "OpenCV DNN loop": [py, "-c", BARE, "cv2", family, str(CLIP_720P), *cv2_files],
                }
                if args.baseline_root:
                    base_run = str(args.baseline_root / "run_pipeline.py")
                    contenders[BASELINE] = [
                        py,
                        base_run,
                        *contenders["pipeline"][2:-1],
                        str(Path(tmp) / f"var-base-{name}-{r}"),
                    ]
                order = list(contenders)
                order = order[r % len(order) :] + order[: r % len(order)]  # rotate who goes first
                for who in order:
                    marker = "pipeline" if who in ("pipeline", BASELINE) else "bare"
                    who_env = {**env, "PYTHONPATH": str(args.baseline_root)} if who == BASELINE else env
                    res = run_contender(contenders[who], marker, who_env, args.timeout)
                    results.setdefault((name, who), []).append(res)
                    print(
                        f"  round {r + 1} {name} {who}: wall {res['wall']:.2f} s, pace {res['pace']:.1f} fps, "
                        f"{res['cpu_per_frame_ms']:.1f} ms CPU/frame, {res['detections']} detections",
                        file=sys.stderr,
                        flush=True,
                    )
    print(
        f"\n#### Pipeline vs bare loops: `{CLIP_720P.name}` (1280x720, 368 frames, 12.3 s), every frame, "
        f"{args.rounds} interleaved rounds, fresh process each; medians (best in brackets)\n"
    )
    print(
        "| model | contender | steady pace fps | steady CPU ms/frame | whole run s | whole-run CPU s "
        "| first detection s | detections |"
    )
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for (name, who), runs in results.items():
        print(
            f"| {name} | {who} | {_med([x['pace'] for x in runs]):.1f} ({max(x['pace'] for x in runs):.1f}) "
            f"| {_med([x['cpu_per_frame_ms'] for x in runs]):.1f} ({min(x['cpu_per_frame_ms'] for x in runs):.1f}) "
            f"| {_med([x['wall'] for x in runs]):.2f} ({min(x['wall'] for x in runs):.2f}) "
            f"| {_med([x['cpu'] for x in runs]):.2f} ({min(x['cpu'] for x in runs):.2f}) "
            f"| {_med([x['first'] for x in runs]):.2f} | {runs[0]['detections']} |"
        )
    print(
        "\nRatios paired round by round (the two runs of a round saw about the same load); median, then each "
        "round:\n"
    )
    print(
        "| model | pace, pipeline ÷ bare ORT | CPU/frame, pipeline ÷ bare ORT | whole run speed, bare wall ÷ "
        "pipeline wall | speed per frame, pipeline ÷ OpenCV DNN |"
    )
    print("|---|---|---|---|---|")
    for name in models:
        p, b, c = (
            results[(name, who)] for who in ("pipeline", "bare PyAV + ONNX Runtime", "OpenCV DNN loop")
        )
        paired = (
            [x["pace"] / y["pace"] for x, y in zip(p, b, strict=True)],
            [x["cpu_per_frame_ms"] / y["cpu_per_frame_ms"] for x, y in zip(p, b, strict=True)],
            [y["wall"] / x["wall"] for x, y in zip(p, b, strict=True)],
            [x["pace"] / y["pace"] for x, y in zip(p, c, strict=True)],
        )
        cells = [f"{_med(v):.2f}x ({', '.join(f'{x:.2f}' for x in v)})" for v in paired]
        print(f"| {name} | {' | '.join(cells)} |")
    print("\nRatios of the medians above:\n")
    print(
        "| model | pace, pipeline ÷ bare ORT | CPU/frame, pipeline ÷ bare ORT | whole run speed, bare ÷ pipeline "
        "| whole-run CPU, pipeline ÷ bare | speed per frame, pipeline ÷ OpenCV DNN (steady) |"
    )
    print("|---|---:|---:|---:|---:|---:|")
    for name in models:
        p, b, c = (
            results[(name, "pipeline")],
            results[(name, "bare PyAV + ONNX Runtime")],
            results[(name, "OpenCV DNN loop")],
        )
        print(
            f"| {name} | {_med([x['pace'] for x in p]) / _med([x['pace'] for x in b]):.2f}x "
            f"| {_med([x['cpu_per_frame_ms'] for x in p]) / _med([x['cpu_per_frame_ms'] for x in b]):.2f}x "
            f"| {_med([x['wall'] for x in b]) / _med([x['wall'] for x in p]):.2f}x "
            f"| {_med([x['cpu'] for x in p]) / _med([x['cpu'] for x in b]):.2f}x "
            f"| {_med([x['pace'] for x in p]) / _med([x['pace'] for x in c]):.2f}x |"
        )
    if args.baseline_root:
        _baseline_table(args, results)


def _baseline_table(args: argparse.Namespace, results: dict[tuple[str, str], list[dict]]) -> None:
    """This checkout's pipeline against the baseline checkout's, each beside the bare ORT loop of its round."""
    print(
        f"\nThis checkout's pipeline vs the baseline `{args.baseline_root}` (same rounds); medians (best), "
        "and paired per round: pipeline minus the bare ORT loop of that round\n"
    )
    print(
        "| model | pipeline | first detection s | − bare loop's, s (each round) | whole run s "
        "| bare wall ÷ pipeline wall (each round) | detections |"
    )
    print("|---|---|---:|---|---:|---|---:|")
    for name in args.models:
        bare = results[(name, "bare PyAV + ONNX Runtime")]
        for who in (BASELINE, "pipeline"):
            runs = results[(name, who)]
            gaps = [x["first"] - y["first"] for x, y in zip(runs, bare, strict=True)]
            speed = [y["wall"] / x["wall"] for x, y in zip(runs, bare, strict=True)]
            label = "baseline" if who == BASELINE else "this checkout"
            print(
                f"| {name} | {label} | {_med([x['first'] for x in runs]):.2f} "
                f"({min(x['first'] for x in runs):.2f}) "
                f"| {_med(gaps):+.2f} ({', '.join(f'{g:+.2f}' for g in gaps)}) "
                f"| {_med([x['wall'] for x in runs]):.2f} ({min(x['wall'] for x in runs):.2f}) "
                f"| {_med(speed):.2f}x ({', '.join(f'{v:.2f}' for v in speed)}) | {runs[0]['detections']} |"
            )
        print(
            f"| {name} | bare PyAV + ONNX Runtime | {_med([x['first'] for x in bare]):.2f} "
            f"({min(x['first'] for x in bare):.2f}) | | {_med([x['wall'] for x in bare]):.2f} "
            f"({min(x['wall'] for x in bare):.2f}) | | {bare[0]['detections']} |"
        )


def table_int8(env: dict[str, str]) -> None:
    print(f"\n#### int8 vs fp32: `run_pipeline.py models quantize --images {CALIBRATION.name}`\n")
    print("| model | output of `models quantize` | exit |")
    print("|---|---|---:|")
    for name in ("yolov3-tiny", "yolox-nano"):
        cmd = [
            sys.executable,
            "run_pipeline.py",
            "models",
            "quantize",
            "--model",
            name,
            "--images",
            str(CALIBRATION),
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
        lines = [ln.strip() for ln in proc.stdout.splitlines() if ln.strip() and not ln.startswith("/")]
        print(f"| {name} | {'<br>'.join(lines)} | {proc.returncode} |")


def table_nms(args: argparse.Namespace, env: dict[str, str]) -> None:
    base = [sys.executable, "benchmarks/bench_nms.py", "--repeats", str(args.nms_repeats)]
    small = ["10", "100", "300", "1000"]
    runs = [
        ("warm caches, every size", [*base, "--paths"]),
        ("after a YOLOX-Nano inference before each call", [*base, "--after-detector", "--sizes", *small]),
        ("caches flushed by a 16 MB pass before each call", [*base, "--cold", "--sizes", *small]),
    ]
    for title, cmd in runs:
        print(f"\n#### CPU NMS vs torchvision ({title}): `{' '.join(cmd[1:])}`\n")
        out = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT, check=True).stdout
        print(out.strip())


def table_decode(args: argparse.Namespace) -> None:
    from benchmarks.bench_decode import upscale
    from benchmarks.bench_decode_threads import cpu_ms_per_frame

    args.cache.mkdir(parents=True, exist_ok=True)
    clip = str(upscale(CLIP_720P, args.cache / "traffic_motorway_1080p.mp4", 1920, 1080))
    cpu_ms_per_frame(clip, 0)  # page cache, codec
    auto, one = [], []
    for _ in range(args.decode_rounds):
        auto.append(cpu_ms_per_frame(clip, 0))
        one.append(cpu_ms_per_frame(clip, 1))
    print(
        f"\n#### Decoding 1080p H.264 (`{CLIP_720P.name}` upscaled, 368 frames), whole clip, "
        f"AUTO and one FFmpeg thread alternating, {args.decode_rounds} rounds each; median (best)\n"
    )
    print("| FFmpeg threads | CPU ms per frame | cores per camera at 25 fps | at 30 fps |")
    print("|---|---:|---:|---:|")
    for label, v in (("AUTO (FFmpeg's choice)", auto), ("1 (cameras >= cores)", one)):
        m = _med(v)
        print(f"| {label} | {m:.2f} ({min(v):.2f}) | {m * 25 / 1000:.3f} | {m * 30 / 1000:.3f} |")
    print(f"\nOne thread ÷ AUTO, CPU per frame: {_med(one) / _med(auto):.2f}x")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5, help="interleaved rounds of the pipeline/loop runs")
    ap.add_argument("--nms-repeats", type=int, default=9)
    ap.add_argument("--decode-rounds", type=int, default=5)
    ap.add_argument("--timeout", type=float, default=180.0, help="seconds per pipeline/loop run")
    ap.add_argument("--cache", type=Path, default=ROOT / "var" / "bench_cache")
    ap.add_argument("--only", nargs="+", choices=["loops", "int8", "nms", "decode"])
    ap.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS), help="models of table 1")
    ap.add_argument(
        "--baseline-root",
        type=Path,
        help="another checkout whose run_pipeline.py joins table 1's rounds (its own PYTHONPATH)",
    )
    args = ap.parse_args()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    only = set(args.only or ["loops", "int8", "nms", "decode"])
    t0 = time.time()
    for line in machine():
        print(line)
    print(f"Started {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; `uptime` before: {uptime()}")
    if "loops" in only:
        table_pipeline_vs_loops(args, env)
        print(f"\n`uptime` after the loops: {uptime()}")
    if "int8" in only:
        table_int8(env)
    if "nms" in only:
        table_nms(args, env)
    if "decode" in only:
        table_decode(args)
    print(f"\n`uptime` after: {uptime()}; whole run {(time.time() - t0) / 60:.1f} min")
    return 0


if __name__ == "__main__":
    sys.exit(main())
