"""Fixed costs of start-up (issue 24): an ONNX detector is built without importing torch or onnx (seconds on
a busy machine), NMS loads torchvision's kernel without the torchvision package, and FFmpeg's decode threads
follow the camera count."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np

from pipeline.config.schema import PipelineConfig
from pipeline.ingest.thread_budget import AUTO, decode_threads
from pipeline.run.runner import Pipeline

ROOT = Path(__file__).resolve().parents[1]
CLIP = ROOT.parent / "shared" / "data" / "videos" / "pedestrians_street.mp4"


def test_an_onnx_detector_is_built_without_torch_or_onnx():
    code = (
        "import sys\n"
        "from pipeline.config.schema import DetectorConfig\n"
        "from pipeline.detect.detectors.factory import build_detector\n"
        "det = build_detector(DetectorConfig(model='yolox-nano'))\n"
        "print(sorted(m for m in ('torch', 'torchvision', 'onnx') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "[]"


def test_nms_needs_torch_but_not_the_torchvision_package():
    code = (
        "import sys, numpy as np\n"
        "from pipeline.core.nms import nms\n"
        "b = np.array([[0, 0, 10, 10], [1, 1, 10, 10], [20, 20, 30, 30]], np.float32)\n"
        "print(nms(b, np.array([0.9, 0.8, 0.7], np.float32), 0.5).tolist(), 'torchvision' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "[0, 2] False"


def test_decode_threads_follow_the_camera_count():
    assert decode_threads(1, cores=2) == AUTO
    assert decode_threads(2, cores=2) == 1
    assert decode_threads(8, cores=2) == 1
    assert decode_threads(3, cores=16) == AUTO


def test_the_runner_gives_each_decoder_its_budget(tmp_path):
    cams = [{"id": f"c{i}", "source": str(CLIP)} for i in range(3)]
    cfg = PipelineConfig.model_validate(
        {"cameras": cams, "detector": {"model": "none"}, "redis": {"url": "redis://127.0.0.1:1/0"}}
    )
    p = Pipeline(cfg, var_dir=tmp_path)
    try:
        want = decode_threads(3)
        assert {d.ffmpeg_threads for d in p.decoders.values()} == {want}
    finally:
        for d in p.deliveries:
            d.spool.close()
    assert np.isfinite(want)
