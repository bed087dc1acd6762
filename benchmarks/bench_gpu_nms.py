"""GPU NMS: the custom bitmask kernel (engines/cuda_nms.py) vs torchvision.ops.batched_nms, same device.

Inputs: detector-like clustered boxes (engines/cuda/synthetic.py), 8 classes, scores rounded to 2 decimals
(ties). For each (boxes per image, batch) the table gives the median time of one call over all images,
measured with CUDA events, and whether both kept exactly the same boxes. torchvision gets the batch as one
flat call with idxs = image * classes + class, which is how it is normally batched. Rows with top_k cap the
candidates per image before suppression (the kernel's mask memory grows with candidates squared).

    .venv/bin/python benchmarks/bench_gpu_nms.py [--repeats 20] [--sizes 1000 10000 100000] [--batches 1 16]

Needs a CUDA GPU; exits with status 2 and a message otherwise.
"""

from __future__ import annotations

import argparse
import statistics
import sys

import numpy as np
import torch


def _time_ms(fn, repeats: int, warmup: int = 3) -> float:
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000, 100000])
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 16])
    ap.add_argument("--top-k", type=int, default=4096, help="candidate cap for the top_k rows")
    ap.add_argument("--iou", type=float, default=0.5)
    args = ap.parse_args()
    if not torch.cuda.is_available():
        print(
            "bench_gpu_nms: no CUDA GPU here (torch.cuda.is_available() is False); nothing measured.",
            file=sys.stderr,
        )
        return 2

    from torchvision.ops import batched_nms

    from engines.base import EngineError
    from engines.cuda.synthetic import clustered_detections
    from engines.cuda_nms import batched_nms_cuda

    dev = torch.device("cuda")
    classes_n = 8
    free, _total = torch.cuda.mem_get_info()
    mask_budget = int(free * 0.6)
    print(f"GPU: {torch.cuda.get_device_name(dev)}, torch {torch.__version__}, CUDA {torch.version.cuda}\n")
    print("| boxes/image | batch | top_k | kernel ms | torchvision ms | speed-up | same kept |")
    print("|---:|---:|---:|---:|---:|---:|:---:|")
    for n in args.sizes:
        for b in args.batches:
            rng = np.random.default_rng(n + b)
            boxes, scores, classes = clustered_detections(rng, b, n, num_classes=classes_n)
            tb = torch.from_numpy(boxes).to(dev)
            ts = torch.from_numpy(scores).to(dev)
            tc = torch.from_numpy(classes).to(dev)
            for top_k in (None, args.top_k):
                if top_k is not None and top_k >= n:
                    continue
                k = n if top_k is None else top_k
                # torchvision sees the same candidates: top-k per image by (score desc, index asc)
                order = torch.sort(ts, dim=1, descending=True, stable=True).indices[:, :k]
                fb = torch.gather(tb, 1, order.unsqueeze(-1).expand(-1, -1, 4)).reshape(-1, 4)
                fs = torch.gather(ts, 1, order).reshape(-1)
                img = torch.arange(b, device=dev).repeat_interleave(k)
                fidx = img * classes_n + torch.gather(tc, 1, order).reshape(-1).long()
                reps = max(3, args.repeats // (4 if n * b >= 1_000_000 else 1))

                def run_kernel(top_k=top_k, tb=tb, ts=ts, tc=tc):
                    return batched_nms_cuda(tb, ts, tc, args.iou, top_k=top_k, max_mask_bytes=mask_budget)

                def run_tv(fb=fb, fs=fs, fidx=fidx):
                    return batched_nms(fb, fs, fidx, args.iou)

                try:
                    out = run_kernel()
                except EngineError as exc:
                    print(f"| {n} | {b} | {top_k or 'all'} | skipped: {exc} | | | |")
                    continue
                ours = out.to_lists()
                tv = run_tv().cpu().numpy()
                order_np = order.cpu().numpy()
                same = True
                for i in range(b):
                    want = np.sort(order_np[i][tv[(tv >= i * k) & (tv < (i + 1) * k)] - i * k])
                    same &= np.array_equal(np.sort(ours[i]), want)
                t_kernel = _time_ms(run_kernel, reps)
                t_tv = _time_ms(run_tv, reps)
                print(
                    f"| {n} | {b} | {top_k or 'all'} | {t_kernel:.3f} | {t_tv:.3f} | "
                    f"{t_tv / t_kernel:.2f}x | {'yes' if same else 'NO'} |"
                )
                del out
                torch.cuda.empty_cache()
    return 0


if __name__ == "__main__":
    sys.exit(main())
