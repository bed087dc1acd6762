"""CPU NMS: pipeline/core/nms.py against torchvision.ops in the same run, and whether both keep the same boxes.

Inputs: detector-like clustered boxes (engines/cuda/synthetic.py) in a 1000x1000 image, scores rounded to
2 decimals so ties occur. Rows: class-agnostic ``nms`` vs ``torchvision.ops.nms``, and 6 (the default
``detector.classes`` filter) or 80 classes ``batched_nms`` vs ``torchvision.ops.batched_nms``. Calls alternate (ours, theirs, ours, ...) so load on a
shared machine hits both alike; the table gives the best and the median of ``--repeats`` calls each.
"same kept set" compares index sets with torchvision (with classes: with its exact per-class path,
``_batched_nms_vanilla``, and with ``batched_nms`` itself, which switches to float32 class offsets at
<= 1000 boxes).

The pipeline's boxes are NumPy arrays from a detector, and ours takes and returns NumPy. torchvision is timed
both ways in the same interleaved rounds: "from NumPy" (``torch.from_numpy`` in, ``.numpy()`` out: the input the
pipeline has) and "tensors" (handed ready-made tensors, the stricter peer); both ratios are printed.
``--paths`` also times ours with the ONNX Runtime path switched off (``USE_ORT = False``: torchvision's kernel
and the NumPy pair path, as before).

    .venv/bin/python benchmarks/bench_nms.py [--sizes 10 100 300 1000 10000 100000] [--repeats 15] [--iou 0.5]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import numpy as np
import torch
import torchvision
from torchvision.ops.boxes import _batched_nms_vanilla

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engines.cuda.synthetic import clustered_detections  # noqa: E402
from pipeline.core import nms as nms_module  # noqa: E402
from pipeline.core.nms import batched_nms, nms  # noqa: E402


class _Detector:
    """YOLOX-Nano's ONNX Runtime session (1 thread) run on a fixed input: ``--after-detector`` calls it before
    every timed NMS call, the state the pipeline's NMS runs in (right after the detector's inference)."""

    def __init__(self) -> None:
        import onnxruntime as ort

        from engines.model_store import get_model_path

        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        self.session = ort.InferenceSession(str(get_model_path("yolox-nano")), options)
        inp = self.session.get_inputs()[0]
        shape = [d if isinstance(d, int) else 1 for d in inp.shape]
        self.feed = {inp.name: np.random.default_rng(0).random(shape, np.float32)}

    def __call__(self) -> None:
        self.session.run(None, self.feed)


def _alternate(contenders: list, repeats: int, burst: int, flush) -> list[list[float]]:
    """Milliseconds per call of each contender. Every round calls each contender ``burst`` times in a row
    (the order rotates from round to round, so load hits all alike); the first call of a burst pays for
    the caches the previous library left cold, so with ``burst`` > 1 only the later calls count (warm).
    With ``flush`` (a callable) before every timed call instead: a pass over a 16 MB array (every contender
    starts with cold caches) or a detector's inference (the pipeline's state when it calls NMS).
    """
    for f in contenders:
        f()
    times: list[list[float]] = [[] for _ in contenders]
    k = len(contenders)
    for r in range(repeats):
        for i in range(k):
            j = (i + r) % k
            for call in range(burst):
                if flush is not None:
                    flush()
                t0 = time.perf_counter()
                contenders[j]()
                dt = 1000 * (time.perf_counter() - t0)
                if call > 0 or burst == 1:
                    times[j].append(dt)
    return times


def _without_ort(f: Callable[[], object]) -> Callable[[], object]:
    """``f`` with ours' ONNX Runtime path switched off (the kernel and NumPy paths, as before it)."""

    def call():
        nms_module.USE_ORT = False
        try:
            return f()
        finally:
            nms_module.USE_ORT = True

    return call


def _tv_from_numpy(op: Callable, arrays: tuple[np.ndarray, ...], iou: float) -> np.ndarray:
    """torchvision on the pipeline's input: NumPy arrays in (zero-copy tensors), NumPy indices out."""
    return op(*(torch.from_numpy(a) for a in arrays), iou).numpy()


def _fmt(ms: list[float]) -> str:
    return f"{min(ms):.3f} / {statistics.median(ms):.3f}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[10, 100, 300, 1000, 10000, 100000])
    ap.add_argument(
        "--classes",
        type=int,
        nargs="+",
        default=[1, 6, 80],
        help="1 = class-agnostic nms; 6 = the default detector.classes filter; 80 = every COCO class",
    )
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--iou", type=float, default=0.5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--paths", action="store_true", help="also time ours without the ONNX Runtime path")
    ap.add_argument(
        "--burst", type=int, default=4, help="calls in a row per contender and round (<= 1k boxes)"
    )
    ap.add_argument(
        "--cold",
        action="store_true",
        help="a 16 MB pass before every timed call (caches cold, as in the pipeline)",
    )
    ap.add_argument(
        "--after-detector",
        action="store_true",
        help="a YOLOX-Nano inference (ONNX Runtime) before every timed call, as NMS runs in the pipeline",
    )
    args = ap.parse_args()
    flush = None
    if args.cold:
        big = np.zeros(4 << 20, np.float32)

        def flush() -> None:
            np.add(big, 1, out=big)

    elif args.after_detector:
        flush = _Detector()
    torch.set_num_threads(1)
    nms_module.warm_up()  # the kernel paths at every size (a fresh run uses NumPy for small inputs first)
    mode = (
        "cold caches (16 MB pass before each call)"
        if args.cold
        else "after a YOLOX-Nano inference before each call"
        if args.after_detector
        else f"warm (burst of {args.burst}, first dropped)"
    )
    print(
        f"torch {torch.__version__}, torchvision {torchvision.__version__}, 1 thread, IoU {args.iou}, {mode}"
    )
    print()
    extra = " ours without ORT ms |" if args.paths else ""
    print(
        "| boxes | classes | kept | ours ms | torchvision from NumPy ms | torchvision tensors ms |"
        f"{extra} ours ÷ tv from NumPy | ours ÷ tv tensors | same kept set |"
    )
    print("|---:|---:|---:|---:|---:|---:|" + ("---:|" if args.paths else "") + "---:|---:|---|")
    rng = np.random.default_rng(args.seed)
    for n in args.sizes:
        for classes in args.classes:
            b, s, c = clustered_detections(rng, 1, n, num_classes=classes)
            b, s, c = b[0], s[0], c[0].astype(np.int64)
            tb, ts, tc = torch.from_numpy(b), torch.from_numpy(s), torch.from_numpy(c)
            # small calls are cheap and noisy: more rounds for them
            reps = max(3, args.repeats // 10) if n >= 100000 else args.repeats * (5 if n <= 1000 else 1)
            burst = 1 if flush is not None or n > 1000 else args.burst
            iou = args.iou
            if classes == 1:
                ours_keep = nms(b, s, iou)
                ref = torchvision.ops.nms(tb, ts, iou).numpy()
                same = "yes" if np.array_equal(ours_keep, ref) else "NO"
                ours_call: Callable[[], object] = partial(nms, b, s, iou)
                contenders = [
                    ours_call,
                    partial(_tv_from_numpy, torchvision.ops.nms, (b, s), iou),
                    partial(torchvision.ops.nms, tb, ts, iou),
                ]
            else:
                ours_keep = batched_nms(b, s, c, iou)
                exact = set(_batched_nms_vanilla(tb, ts, tc, iou).tolist())
                fast = set(torchvision.ops.batched_nms(tb, ts, tc, iou).tolist())
                mine_set = set(ours_keep.tolist())
                same = f"{'yes' if mine_set == exact else 'NO'} (batched_nms: {'yes' if mine_set == fast else 'NO'})"
                ours_call = partial(batched_nms, b, s, c, iou)
                contenders = [
                    ours_call,
                    partial(_tv_from_numpy, torchvision.ops.batched_nms, (b, s, c), iou),
                    partial(torchvision.ops.batched_nms, tb, ts, tc, iou),
                ]
            if args.paths:
                contenders.append(_without_ort(ours_call))
            times = _alternate(contenders, reps, burst, flush)
            mine, from_numpy, tensors = times[0], times[1], times[2]
            old_col = f" {_fmt(times[3])} |" if args.paths else ""
            print(
                f"| {n} | {classes if classes > 1 else 'agnostic'} | {len(ours_keep)} "
                f"| {_fmt(mine)} | {_fmt(from_numpy)} | {_fmt(tensors)} |{old_col} "
                f"{min(mine) / min(from_numpy):.2f}x | {min(mine) / min(tensors):.2f}x | {same} |",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
