"""MTCNN speed and agreement: vidpipe's MTCNNDetector vs facenet-pytorch's MTCNN (reference).

Frames: 640x480 BGR, from /work/shared/data/videos/faces_hamilton_clip.mp4 (640x360, scaled by 4/3 and
centre-cropped to 640x480) and celeb5 photos (letterboxed onto 640x480). Both detectors use min face 20,
thresholds (0.6, 0.7, 0.7), factor 0.709, CPU, same torch thread count.

Agreement: a reference face counts as matched when one of ours has IoU >= 0.5 with it (greedy, by IoU).

Run: .venv/bin/python benchmarks/bench_mtcnn.py [--frames 30] [--photos 20] [--threads N] [--repeat 3]
Needs facenet-pytorch (``pip install facenet-pytorch==2.6.0 --no-deps``; its weights ship in the wheel).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.core.nms import iou_matrix  # noqa: E402
from pipeline.detect.detectors.mtcnn import MTCNNDetector  # noqa: E402

DATA = Path("/work/shared/data")
W, H = 640, 480


def video_frames(path: Path, n: int) -> list[np.ndarray]:
    cap = cv2.VideoCapture(str(path))
    total = int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) or 275
    step = max(1, total // n)
    frames = []
    i = 0
    while len(frames) < n:
        ok, f = cap.read()
        if not ok:
            break
        if i % step == 0:
            s = H / f.shape[0]
            f = cv2.resize(f, (round(f.shape[1] * s), H), interpolation=cv2.INTER_LINEAR)
            x0 = (f.shape[1] - W) // 2
            frames.append(np.ascontiguousarray(f[:, x0 : x0 + W]))
        i += 1
    return frames


def photo_frames(root: Path, n: int) -> list[np.ndarray]:
    out = []
    for p in sorted(root.rglob("*.jpg"))[:n]:
        img = cv2.imread(str(p))
        if img is None:
            continue
        s = min(W / img.shape[1], H / img.shape[0])
        img = cv2.resize(img, (max(1, round(img.shape[1] * s)), max(1, round(img.shape[0] * s))))
        canvas = np.zeros((H, W, 3), np.uint8)
        canvas[: img.shape[0], : img.shape[1]] = img
        out.append(canvas)
    return out


def timed_pair(fn_a, fn_b, frames: list[np.ndarray], repeat: int) -> tuple[list, list, dict[str, float]]:
    """Time two detectors frame by frame, alternating, so both see the same machine load.

    Per frame the best of ``repeat`` runs counts, as wall time and as process CPU time (the CPU figure is
    the robust one on a shared machine, the wall figure what a caller waits); medians over frames.
    """
    fn_a(frames[0])  # warm-up
    fn_b(frames[0])
    res_a, res_b = [], []
    per: dict[str, list[float]] = {k: [] for k in ("a_wall", "b_wall", "a_cpu", "b_cpu")}
    for f in frames:
        best = dict.fromkeys(per, float("inf"))
        out = {}
        for _ in range(repeat):
            for key, fn in (("a", fn_a), ("b", fn_b)):
                w0, c0 = time.perf_counter(), time.process_time()
                out[key] = fn(f)
                best[f"{key}_wall"] = min(best[f"{key}_wall"], time.perf_counter() - w0)
                best[f"{key}_cpu"] = min(best[f"{key}_cpu"], time.process_time() - c0)
        res_a.append(out["a"])
        res_b.append(out["b"])
        for k in per:
            per[k].append(best[k] * 1000)
    return res_a, res_b, {k: statistics.median(v) for k, v in per.items()}


def agreement(ours: list[np.ndarray], ref: list[np.ndarray]) -> tuple[int, int, int, float]:
    matched, n_ours, n_ref, ious = 0, 0, 0, []
    for a, b in zip(ours, ref, strict=True):
        n_ours += len(a)
        n_ref += len(b)
        if len(a) and len(b):
            m = iou_matrix(b, a)
            used = set()
            for i in np.argsort(-m.max(axis=1)):
                j = int(np.argmax(np.where([k not in used for k in range(len(a))], m[i], -1)))
                if m[i, j] >= 0.5 and j not in used:
                    used.add(j)
                    matched += 1
                    ious.append(float(m[i, j]))
    return matched, n_ours, n_ref, (statistics.mean(ious) if ious else float("nan"))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=30)
    ap.add_argument("--photos", type=int, default=20)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    try:
        from facenet_pytorch import MTCNN as RefMTCNN
    except ImportError:
        print("facenet-pytorch is missing: pip install facenet-pytorch==2.6.0 --no-deps", file=sys.stderr)
        return 2

    ours = MTCNNDetector(min_face_size=20)
    ref = RefMTCNN(keep_all=True, min_face_size=20, thresholds=[0.6, 0.7, 0.7], factor=0.709, device="cpu")

    def run_ours(f: np.ndarray) -> np.ndarray:
        return ours.detect([f])[0].boxes

    def run_ref(f: np.ndarray) -> np.ndarray:
        boxes, _ = ref.detect(cv2.cvtColor(f, cv2.COLOR_BGR2RGB))
        return np.zeros((0, 4), np.float32) if boxes is None else boxes.astype(np.float32)

    sets = {
        "hamilton clip (video, 640x480)": video_frames(DATA / "videos/faces_hamilton_clip.mp4", args.frames),
        "celeb5 photos (640x480 canvas)": photo_frames(DATA / "faces/celeb5", args.photos),
    }
    print(
        f"threads={args.threads}, min face 20, best of {args.repeat} per frame (ours and reference alternating), median over frames\n"
    )
    print(
        "| frames | n | ours ms (wall) | facenet-pytorch ms (wall) | speed-up (wall) | ours ms (CPU) | "
        "facenet-pytorch ms (CPU) | speed-up (CPU) | faces ours / ref | ref faces matched (IoU>=0.5) | mean IoU |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for name, frames in sets.items():
        r_ours, r_ref, t = timed_pair(run_ours, run_ref, frames, args.repeat)
        m, n_o, n_r, miou = agreement(r_ours, r_ref)
        print(
            f"| {name} | {len(frames)} | {t['a_wall']:.1f} | {t['b_wall']:.1f} | {t['b_wall'] / t['a_wall']:.2f}x | "
            f"{t['a_cpu']:.1f} | {t['b_cpu']:.1f} | {t['b_cpu'] / t['a_cpu']:.2f}x | "
            f"{n_o} / {n_r} | {m}/{n_r} | {miou:.3f} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
