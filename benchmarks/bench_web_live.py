"""Live view: capture-to-pixels delay in a real browser, and the CPU one viewer costs.

    .venv/bin/python benchmarks/bench_web_live.py [--seconds 20] [--rounds 2] [--config configs/default.yaml]
                                                  [--queue-policy latest|block]

The pipeline runs what the README quick start runs: ``configs/default.yaml`` as it is (the demo camera,
YOLOv3-tiny on ONNX Runtime, the demo clip paced in real time, detect_fps 5, its queue policy the default
for that camera), with the web app in this process; only Redis (a local redis-server, as the run starts
one) and the web port are set here. ``--queue-policy`` overrides the camera's policy (``block`` is what the
quick start got before issue 21). Rounds alternate: no viewer (the peer), then one headless
Debian chromium (Playwright) showing the live page. Per phase it reports the pipeline process's CPU
(all its threads; ``time.process_time``), the viewer's chromium processes' CPU (from /proc), frames shown,
and delays: capture -> detect result on the tap (measured here, both phases) and capture -> pixels decoded
in the browser (the page's own figure: Date.now() at the image's onload minus the frame's capture time,
same machine and clock). Prints markdown.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.config.schema import parse_config  # noqa: E402
from pipeline.config.web import WebConfig  # noqa: E402
from pipeline.deliver.redis_server import LocalRedis  # noqa: E402
from pipeline.ingest.demo_media import default_demo_clip  # noqa: E402
from pipeline.run.runner import Pipeline  # noqa: E402
from pipeline.serve.web.server import WebServer, make_context  # noqa: E402

PASSWORD = "benchmark-password-123"
TICK = os.sysconf("SC_CLK_TCK")


def descendants_cpu(root: int, name_part: str = "chrom") -> float:
    """CPU seconds (user+system) of the live descendants of ``root`` whose name contains ``name_part``."""
    parent: dict[int, int] = {}
    stats: dict[int, tuple[str, float]] = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            raw = Path(f"/proc/{d}/stat").read_text()
        except OSError:
            continue
        comm = raw[raw.index("(") + 1 : raw.rindex(")")]
        fields = raw[raw.rindex(")") + 2 :].split()
        parent[int(d)] = int(fields[1])
        stats[int(d)] = (comm, (int(fields[11]) + int(fields[12])) / TICK)
    total = 0.0
    for pid, (comm, cpu) in stats.items():
        p = pid
        while p in parent and p not in (0, 1, root):
            p = parent[p]
        if p == root and name_part in comm.lower():
            total += cpu
    return total


class TapWatch:
    """Polls the pipeline's tap every 2 ms: capture -> detect result available, per new frame."""

    def __init__(self, pipe: Pipeline, cam: str) -> None:
        self.pipe, self.cam = pipe, cam
        self.delays: list[float] = []
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()

    def _run(self) -> None:
        last = None
        while not self._stop.is_set():
            r = self.pipe.latest.get(self.cam)
            if r is not None and r is not last:
                last = r
                self.delays.append(time.time() - r.frame.capture_time)
            time.sleep(0.002)

    def take(self) -> list[float]:
        out, self.delays = self.delays, []
        return out

    def stop(self) -> None:
        self._stop.set()
        self._t.join(1)


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))] if xs else float("nan")


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--config", default=str(Path(__file__).resolve().parents[1] / "configs" / "default.yaml"))
    ap.add_argument("--queue-policy", choices=["latest", "block"], help="override the camera's queue policy")
    args = ap.parse_args()
    from playwright.sync_api import sync_playwright

    tmp = Path(tempfile.mkdtemp(prefix="bench_web_"))
    os.environ["VIDPIPE_BENCH_WEB_PASSWORD"] = PASSWORD
    redis = LocalRedis(data_dir=tmp / "redis").start()
    clip = default_demo_clip(tmp / "demo")
    raw = yaml.safe_load(Path(args.config).read_text())
    for cam in raw["cameras"]:
        if cam["source"] == "demo":  # as run_pipeline.py resolves it
            cam["source"] = str(clip)
        if args.queue_policy:
            cam["queue_policy"] = args.queue_policy
    raw["cameras"] = raw["cameras"][:1]
    raw["redis"] = {**raw.get("redis", {}), "url": redis.url, "spool_path": str(tmp / "spool.sqlite")}
    cfg = parse_config(raw)
    cam_id = cfg.cameras[0].id
    policy = cfg.cameras[0].effective_queue_policy
    pipe = Pipeline(cfg, var_dir=tmp).start()
    ctx, _ = make_context(
        WebConfig(port=0, password_env="VIDPIPE_BENCH_WEB_PASSWORD"), cfg.faces, tmp, pipeline=pipe, cfg=cfg
    )
    web = WebServer(ctx).start()
    tap = TapWatch(pipe, cam_id)
    rows = []
    time.sleep(5)  # warm-up: model loaded, first frames through
    with sync_playwright() as pw:
        for rnd in range(args.rounds):
            # peer: no viewer
            tap.take()
            c0, t0 = time.process_time(), time.monotonic()
            time.sleep(args.seconds)
            wall = time.monotonic() - t0
            rows.append(
                ("no viewer", rnd, (time.process_time() - c0) / wall, 0.0, tap.take(), [], 0, 0.0, 0.0)
            )
            # one viewer
            browser = pw.chromium.launch(
                executable_path="/usr/bin/chromium",
                args=["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                      "--disable-component-update", "--disable-sync", "--no-first-run"],
            )  # fmt: skip
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.goto(web.url + "login?next=/")
            page.fill("#password", PASSWORD)
            page.click("#login")
            page.wait_for_url(web.url)
            time.sleep(3)  # page settled, first frames shown
            page.evaluate(
                f"() => {{ const s = window.vidpipeLive[{cam_id!r}]; s.delays = []; s.frames = 0; }}"
            )
            tap.take()
            live = web.app.state.live
            e0, n0 = live.encode_cpu_s, live.encoded
            b0 = descendants_cpu(os.getpid())
            c0, t0 = time.process_time(), time.monotonic()
            time.sleep(args.seconds)
            wall = time.monotonic() - t0
            cpu = (time.process_time() - c0) / wall
            bcpu = (descendants_cpu(os.getpid()) - b0) / wall
            st = page.evaluate(f"() => window.vidpipeLive[{cam_id!r}]")
            enc = (live.encode_cpu_s - e0) / wall
            per = (live.encode_cpu_s - e0) / max(1, live.encoded - n0) * 1e3
            rows.append(
                ("one viewer", rnd, cpu, bcpu, tap.take(), st["delays"], st["frames"] / wall, enc, per)
            )
            browser.close()
    tap.stop()
    web.stop()
    pipe.stop()
    pipe.join(30)
    redis.stop()

    print(
        f"config {args.config} (camera {cam_id}, queue_policy {policy}); {args.rounds} rounds x "
        f"{args.seconds:.0f} s per phase, load average {os.getloadavg()[0]:.1f} at the end"
    )
    print("| phase | round | pipeline process CPU (cores) | of which draw+JPEG (cores; ms/frame) | chromium CPU (cores) "
          "| frames shown /s | capture→detected p50 / p90 ms (n) | capture→pixels p50 / p90 ms (n) |")  # fmt: skip
    print("|---|---:|---:|---:|---:|---:|---|---|")
    for phase, rnd, cpu, bcpu, tapd, pix, fps, enc, per in rows:
        tcol = f"{pct(tapd, 0.5) * 1e3:.0f} / {pct(tapd, 0.9) * 1e3:.0f} ({len(tapd)})"
        pcol = f"{pct(pix, 0.5) * 1e3:.0f} / {pct(pix, 0.9) * 1e3:.0f} ({len(pix)})" if pix else "–"
        print(
            f"| {phase} | {rnd} | {cpu:.2f} | {enc:.3f}; {per:.1f} | {bcpu:.2f} | {fps:.1f} | {tcol} | {pcol} |"
        )
    base = statistics.mean(r[2] for r in rows if r[0] == "no viewer")
    view = statistics.mean(r[2] for r in rows if r[0] == "one viewer")
    print(f"\npipeline process CPU with one viewer / without: {view / base:.2f}x (+{view - base:.2f} cores)")
    pix_all = [d for r in rows if r[0] == "one viewer" for d in r[5]]
    tap_none = [d for r in rows if r[0] == "no viewer" for d in r[4]]
    print(
        f"median capture->browser pixels {statistics.median(pix_all) * 1e3:.0f} ms (n={len(pix_all)}); "
        f"no-viewer pipeline capture->detected {statistics.median(tap_none) * 1e3:.0f} ms (n={len(tap_none)})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
