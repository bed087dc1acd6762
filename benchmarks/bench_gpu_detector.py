"""GPU detector throughput on the torch CUDA path (engines/torch_cuda_engine.py), and end-to-end frames/s
with N synthetic 1080p streams (upload, resize, fp16 detector with CUDA graphs, GPU NMS, results to host).

Model: YOLOv3-tiny at 416x416 built from its Darknet cfg (engines.model_store, or --cfg); its weights are
loaded when present next to the cfg, else it runs with random weights (throughput does not depend on them;
the table says which). The streams are synthetic (moving rectangles on noise, generated once, then cycled),
so video decoding is NOT included -- see benchmarks/bench_decode.py for that.

    .venv/bin/python benchmarks/bench_gpu_detector.py [--cfg yolov3-tiny.cfg] [--seconds 5]

Needs a CUDA GPU; exits with status 2 and a message otherwise.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

INPUT = 416


def find_cfg(arg: str | None) -> Path:
    if arg:
        return Path(arg)
    from engines.model_store import get_model_files

    return get_model_files("yolov3-tiny")["cfg"]


def build_model(cfg: Path) -> tuple[torch.nn.Module, str]:
    from pipeline.models.darknet import DarknetModel, load_darknet

    weights = cfg.with_suffix(".weights")
    if weights.is_file():
        return load_darknet(cfg, weights), "real weights"
    return DarknetModel(cfg).eval(), "random weights"


def synthetic_streams(n: int, frames: int = 4, seed: int = 0) -> np.ndarray:
    """(n, frames, 1080, 1920, 3) uint8 frames: noise background with bright moving rectangles."""
    rng = np.random.default_rng(seed)
    out = rng.integers(0, 60, (n, frames, 1080, 1920, 3), dtype=np.uint8)
    for s in range(n):
        for f in range(frames):
            for _ in range(6):
                x, y = rng.integers(0, 1700), rng.integers(0, 900)
                out[s, f, y : y + 180, x + f * 10 : x + f * 10 + 120] = rng.integers(
                    120, 255, 3, dtype=np.uint8
                )
    return out


def letterbox_gpu(frames_u8: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """(N, H, W, 3) uint8 BGR on the GPU -> (N, 3, 416, 416) RGB in [0, 1], aspect kept, padded grey."""
    n, h, w, _ = frames_u8.shape
    scale = INPUT / max(h, w)
    nh, nw = round(h * scale), round(w * scale)
    x = frames_u8.permute(0, 3, 1, 2).flip(1).to(dtype) / 255.0
    x = F.interpolate(x, size=(nh, nw), mode="bilinear", align_corners=False)
    out = torch.full((n, 3, INPUT, INPUT), 0.5, dtype=dtype, device=frames_u8.device)
    top, left = (INPUT - nh) // 2, (INPUT - nw) // 2
    out[:, :, top : top + nh, left : left + nw] = x
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cfg", help="Darknet .cfg (default: yolov3-tiny from the model store)")
    ap.add_argument("--seconds", type=float, default=5.0, help="time per measurement")
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 8, 32])
    ap.add_argument("--streams", type=int, nargs="+", default=[1, 4, 8, 16])
    args = ap.parse_args()
    if not torch.cuda.is_available():
        print(
            "bench_gpu_detector: no CUDA GPU here (torch.cuda.is_available() is False); nothing measured.",
            file=sys.stderr,
        )
        return 2

    from engines.cuda_nms import batched_nms_cuda
    from engines.torch_cuda_engine import TorchCudaEngine

    cfg = find_cfg(args.cfg)
    dev = torch.device("cuda")
    print(f"GPU: {torch.cuda.get_device_name(dev)}, torch {torch.__version__}, CUDA {torch.version.cuda}")

    print("\n### Detector throughput (YOLOv3-tiny 416x416, network only, input already on the GPU)\n")
    print("| precision | CUDA graphs | batch | images/s | ms/batch |")
    print("|---|---|---:|---:|---:|")
    for fp16, graphs in ((False, False), (True, False), (True, True)):
        model, weights_note = build_model(cfg)
        engine = TorchCudaEngine(model, device="cuda", fp16=fp16, cuda_graphs=graphs)
        for batch in args.batches:
            x = torch.rand(batch, 3, INPUT, INPUT, device=dev)
            for _ in range(5):
                engine.run_torch({"images": x})
            torch.cuda.synchronize()
            n, t0 = 0, time.perf_counter()
            while time.perf_counter() - t0 < args.seconds:
                engine.run_torch({"images": x})
                n += 1
            torch.cuda.synchronize()
            dt = time.perf_counter() - t0
            print(
                f"| {'fp16' if fp16 else 'fp32'} | {engine.mode_for({'images': x})} | {batch} | "
                f"{n * batch / dt:.0f} | {dt / n * 1000:.2f} |"
            )
        engine.close()
    print(f"\n({weights_note})")

    print(
        "\n### End to end, N synthetic 1080p streams (upload + letterbox + fp16 graphs + GPU NMS + download)\n"
    )
    print("| streams | frames/s (all streams) | frames/s per stream | ms per step |")
    print("|---:|---:|---:|---:|")
    model, _ = build_model(cfg)
    engine = TorchCudaEngine(model, device="cuda", fp16=True, cuda_graphs=True)
    for n_streams in args.streams:
        frames = synthetic_streams(n_streams)
        pinned = [torch.from_numpy(frames[:, f]).pin_memory() for f in range(frames.shape[1])]

        def step(i: int, pinned=pinned) -> int:
            batch = pinned[i % len(pinned)].to(dev, non_blocking=True)
            out = engine.run_torch({"images": letterbox_gpu(batch, torch.float16)})["output"].float()
            xy, wh = out[..., :2], out[..., 2:4]
            boxes = torch.cat([xy - wh / 2, xy + wh / 2], -1)
            cls_scores = out[..., 5:] * out[..., 4:5]
            scores, classes = cls_scores.max(-1)
            res = batched_nms_cuda(
                boxes, scores, classes.int(), 0.45, score_threshold=0.25, top_k=1000, max_output=300
            )
            return sum(len(k) for k in res.to_lists())  # results on the host, as the publisher needs

        for i in range(5):
            step(i)
        torch.cuda.synchronize()
        steps, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < args.seconds:
            step(steps)
            steps += 1
        dt = time.perf_counter() - t0
        fps = steps * n_streams / dt
        print(f"| {n_streams} | {fps:.0f} | {fps / n_streams:.1f} | {dt / steps * 1000:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
