"""CPU NMS: pipeline/core/nms.py against torchvision.ops in the same run, and whether both keep the same boxes.

Inputs: detector-like clustered boxes (engines/cuda/synthetic.py) in a 1000x1000 image, scores rounded to
2 decimals so ties occur. Rows: class-agnostic ``nms`` vs ``torchvision.ops.nms``, and 6 (the default
``detector.classes`` filter) or 80 classes ``batched_nms`` vs ``torchvision.ops.batched_nms``. Calls alternate (ours, theirs, ours, ...) so load on a
shared machine hits both alike; the table gives the best and the median of ``--repeats`` calls each.
"same kept set" compares index sets with torchvision (with classes: with its exact per-class path,
``_batched_nms_vanilla``, and with ``batched_nms`` itself, which switches to float32 class offsets at
<= 1000 boxes).

    .venv/bin/python benchmarks/bench_nms.py [--sizes 1000 10000 100000] [--repeats 15] [--iou 0.5]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torchvision
from torchvision.ops.boxes import _batched_nms_vanilla

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engines.cuda.synthetic import clustered_detections  # noqa: E402
from pipeline.core import nms as nms_module  # noqa: E402
from pipeline.core.nms import batched_nms, nms  # noqa: E402


def _alternate(ours, theirs, repeats: int) -> tuple[list[float], list[float]]:
    ours()
    theirs()
    a, b = [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        ours()
        t1 = time.perf_counter()
        theirs()
        t2 = time.perf_counter()
        a.append(1000 * (t1 - t0))
        b.append(1000 * (t2 - t1))
    return a, b


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[100, 300, 1000, 10000, 100000])
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
    args = ap.parse_args()
    torch.set_num_threads(1)
    nms_module.warm_up()  # the kernel paths at every size (a fresh run uses NumPy for small inputs first)
    print(f"torch {torch.__version__}, torchvision {torchvision.__version__}, 1 thread, IoU {args.iou}")
    print()
    print(
        "| boxes | classes | kept | ours best / median ms | torchvision best / median ms | ratio (best) | same kept set |"
    )
    print("|---:|---:|---:|---:|---:|---:|---|")
    rng = np.random.default_rng(args.seed)
    for n in args.sizes:
        for classes in args.classes:
            b, s, c = clustered_detections(rng, 1, n, num_classes=classes)
            b, s, c = b[0], s[0], c[0].astype(np.int64)
            tb, ts, tc = torch.from_numpy(b), torch.from_numpy(s), torch.from_numpy(c)
            reps = max(3, args.repeats // (10 if n >= 100000 else 1))
            if classes == 1:
                ours_keep = nms(b, s, args.iou)
                ref = torchvision.ops.nms(tb, ts, args.iou).numpy()
                same = "yes" if np.array_equal(ours_keep, ref) else "NO"
                mine, theirs = _alternate(
                    lambda b=b, s=s: nms(b, s, args.iou),
                    lambda tb=tb, ts=ts: torchvision.ops.nms(tb, ts, args.iou),
                    reps,
                )
            else:
                ours_keep = batched_nms(b, s, c, args.iou)
                exact = set(_batched_nms_vanilla(tb, ts, tc, args.iou).tolist())
                fast = set(torchvision.ops.batched_nms(tb, ts, tc, args.iou).tolist())
                mine_set = set(ours_keep.tolist())
                same = f"{'yes' if mine_set == exact else 'NO'} (batched_nms: {'yes' if mine_set == fast else 'NO'})"
                mine, theirs = _alternate(
                    lambda b=b, s=s, c=c: batched_nms(b, s, c, args.iou),
                    lambda tb=tb, ts=ts, tc=tc: torchvision.ops.batched_nms(tb, ts, tc, args.iou),
                    reps,
                )
            print(
                f"| {n} | {classes if classes > 1 else 'agnostic'} | {len(ours_keep)} "
                f"| {min(mine):.3f} / {statistics.median(mine):.3f} "
                f"| {min(theirs):.3f} / {statistics.median(theirs):.3f} "
                f"| {min(mine) / min(theirs):.2f}x | {same} |",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
