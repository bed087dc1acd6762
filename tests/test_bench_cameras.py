"""``run_pipeline.py bench cameras``: adds cameras of the config's kind until one falls behind its detect_fps
and prints the largest N that holds (real clip, real YOLOX-Nano, a local redis-server)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CLIP = ROOT.parent / "shared" / "data" / "videos" / "pedestrians_street.mp4"


@pytest.mark.skipif(not CLIP.is_file(), reason=f"shared data missing: {CLIP}")
def test_bench_cameras_prints_a_sane_largest_n(tmp_path):
    config = tmp_path / "tiny.yaml"
    config.write_text(
        f"cameras:\n  - id: cam\n    source: {CLIP}\n    detect_fps: 1\n"
        "detector:\n  model: yolox-nano\n  input_size: 416\n  classes: [person, car]\n"
        "web:\n  enabled: false\n"
    )
    # a low bar (half of 1 detection/s) so that a busy shared machine still holds one camera
    cmd = [sys.executable, "run_pipeline.py", "bench", "cameras", "--config", str(config)]
    cmd += ["--max", "2", "--seconds", "3", "--warmup", "1", "--hold", "0.5"]
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=400)
    assert out.returncode == 0, out.stdout + out.stderr
    lines = out.stdout.splitlines()
    rounds = [ln for ln in lines if "camera(s):" in ln]
    assert rounds and "holds" in rounds[0] and "decode" in rounds[0] and "inference" in rounds[0]
    assert "frame age p95" in rounds[0]
    last = lines[-1]
    assert last.startswith("largest N that holds 0.5 detections/s per camera:")
    n = int(last.split(":")[1].split()[0])
    assert 1 <= n <= 2 and n >= sum("holds" in r for r in rounds[:1])


def test_bench_cameras_without_a_camera_is_a_config_error(tmp_path):
    config = tmp_path / "none.yaml"
    config.write_text("cameras: []\nweb:\n  enabled: false\n")
    out = subprocess.run(
        [sys.executable, "run_pipeline.py", "bench", "cameras", "--config", str(config)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 2 and "cameras" in out.stderr


@pytest.mark.skipif(not CLIP.is_file(), reason=f"shared data missing: {CLIP}")
def test_bench_cameras_with_a_refused_int8_model_says_why(tmp_path):
    config = tmp_path / "int8.yaml"
    config.write_text(
        f"cameras:\n  - id: cam\n    source: {CLIP}\n    detect_fps: 1\n"
        f"detector:\n  model: yolox-nano\n  precision: int8\n  calibration_images: {CLIP}\n"
        "  calibration_limit: 24\n  classes: null\nweb:\n  enabled: false\n"
    )
    cmd = [sys.executable, "run_pipeline.py", "bench", "cameras", "--config", str(config), "--max", "1"]
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=400)
    assert out.returncode == 2, out.stdout + out.stderr
    assert "detector.precision: int8 refused for model 'yolox-nano'" in out.stderr
    assert "int8 lost" in out.stderr
