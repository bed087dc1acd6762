"""Bad enrollment input: how fast and in how much memory ``faces enroll`` refuses it, against the old code path.

Each case is one real CLI process (``run_pipeline.py faces enroll``); wall time and peak RSS (``wait4``) are
of that process, so they include the interpreter and imports. Peers measured in the same run:
``faces list`` (the same process doing no photo work: the fixed cost) and the old enrollment's first step,
``cv2.imdecode`` of the whole file (what ``decode_image`` did before this change, before MTCNN even ran).
The old path is run on an 8000 x 8000 PNG only: on the 20000 x 20000 one it needs over 10 GB.

    .venv/bin/python benchmarks/bench_enroll_bounds.py [--repeat 3]

Prints a markdown table.
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
sys.path.insert(0, str(ROOT))

from pipeline.ingest.demo_media import write_png_bomb  # noqa: E402

OLD_DECODE = (
    "import sys, cv2, numpy as np\n"
    "img = cv2.imdecode(np.frombuffer(open(sys.argv[1], 'rb').read(), np.uint8), cv2.IMREAD_COLOR)\n"
    "print(img.shape)\n"
)


def measure(cmd: list[str], cwd: Path) -> tuple[float, float, str]:
    """(wall s, peak RSS MB, stdout) of one process."""
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    _, _, usage = os.wait4(proc.pid, 0)
    wall = time.monotonic() - t0
    out = proc.stdout.read() if proc.stdout else ""
    return wall, usage.ru_maxrss / 1024, out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        huge = write_png_bomb(tmp / "huge_20000.png", 20000)
        medium = write_png_bomb(tmp / "medium_8000.png", 8000)
        faces = [sys.executable, str(ROOT / "run_pipeline.py"), "faces", "--gallery", str(tmp / "g.sqlite")]
        cases = [
            ("peer: `faces list` (fixed cost)", [*faces, "list"]),
            (f"`faces enroll` 20000x20000 PNG ({huge.stat().st_size / 1e6:.1f} MB)", [*faces, "enroll", "--name", "x", str(huge)]),
            ("`faces enroll /dev/zero`", [*faces, "enroll", "--name", "x", "/dev/zero"]),
            (f"`faces enroll` 8000x8000 PNG ({medium.stat().st_size / 1e6:.2f} MB)", [*faces, "enroll", "--name", "x", str(medium)]),
            ("peer: old path, `cv2.imdecode` of the 8000x8000 PNG", [sys.executable, "-c", OLD_DECODE, str(medium)]),
        ]  # fmt: skip
        rows = []
        for label, cmd in cases:
            runs = [measure(cmd, tmp) for _ in range(args.repeat)]
            wall = statistics.median(r[0] for r in runs)
            rss = max(r[1] for r in runs)
            lines = runs[-1][2].strip().splitlines()
            said = next((x for x in lines if "rejected" in x), lines[0] if lines else "")
            rows.append((label, wall, rss, said.replace(str(tmp) + "/", "")[:100]))
    print(f"| case ({args.repeat} runs) | wall s (median) | peak RSS MB (max) | what it said |")
    print("|---|---:|---:|---|")
    for label, wall, rss, out in rows:
        print(f"| {label} | {wall:.2f} | {rss:.0f} | {out.replace('|', '/')} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
