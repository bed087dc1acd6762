"""The ONNX export of a Darknet model, cached by its files' bytes (engines/onnx_cache.py, issue 24 item 1).

A start that finds a verified export builds the ONNX Runtime detector without importing torch; a changed
weights or cfg file (even with the same size and mtime) or another input size exports again; a truncated,
altered or unvouched cached file is noticed, logged and rebuilt, never loaded.

Real YOLOv3-tiny cfg + weights from the model store, copied into a temporary folder with a temporary
VIDPIPE_CACHE_DIR; real photos from scikit-image.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import skimage.data

from engines import onnx_cache
from engines.model_store import get_model_files, sha256_file
from pipeline.config.schema import DetectorConfig
from pipeline.detect.detectors.factory import build_detector
from pipeline.detect.detectors.family_darknet import export_key
from pipeline.detect.detectors.yolo import PREPROCESS_KEY, YoloDetector
from pipeline.models.errors import ModelError

ROOT = Path(__file__).resolve().parents[1]
SIZE = 416
META = {PREPROCESS_KEY: "darknet"}


@pytest.fixture
def darknet(tmp_path, monkeypatch) -> Path:
    """yolov3-tiny.cfg + .weights in a folder of their own (the .cfg path is the detector.model), and an
    empty model cache for the exports."""
    files = get_model_files("yolov3-tiny")  # from the user's cache, before the cache dir moves
    d = tmp_path / "model"
    d.mkdir()
    shutil.copy(files["cfg"], d / "tiny.cfg")
    shutil.copy(files["weights"], d / "tiny.weights")
    monkeypatch.setenv("VIDPIPE_CACHE_DIR", str(tmp_path / "cache"))
    return d / "tiny.cfg"


def _build(cfg: Path, backend: str = "onnxruntime") -> YoloDetector:
    det = build_detector(DetectorConfig(model=str(cfg), backend=backend, classes=None, score_threshold=0.2))
    assert isinstance(det, YoloDetector)
    return det


def _frames() -> list[np.ndarray]:
    return [np.ascontiguousarray(getattr(skimage.data, n)()[..., ::-1]) for n in ("astronaut", "coffee")]


def _exports(cache: Path) -> list[Path]:
    return sorted((cache / "onnx").glob("tiny-*.onnx"))


def test_a_second_build_from_the_cache_does_not_import_torch(darknet, tmp_path):
    code = (
        "import sys\n"
        "from pipeline.config.schema import DetectorConfig\n"
        "from pipeline.detect.detectors.factory import build_detector\n"
        f"det = build_detector(DetectorConfig(model={str(darknet)!r}, backend='onnxruntime'))\n"
        "print('torch' in sys.modules, det.engine.model_path)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT), "VIDPIPE_CACHE_DIR": str(tmp_path / "cache")}
    runs = []
    for _ in range(2):
        out = subprocess.run(
            [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600
        )
        assert out.returncode == 0, out.stderr
        runs.append(out.stdout.strip().splitlines()[-1].split(" ", 1))
    (torch_first, path_first), (torch_second, path_second) = runs
    assert torch_first == "True"  # the first build exports through PyTorch
    assert torch_second == "False", "a cached export must load without importing torch"
    key = export_key(darknet, darknet.with_suffix(".weights"), (1, 3, SIZE, SIZE), META)
    assert Path(path_first) == Path(path_second) == onnx_cache.cache_path("tiny", key)
    assert onnx_cache.verify(Path(path_second), key) is None


def test_changed_weights_bytes_export_again_and_detect_with_the_new_weights(darknet):
    weights = darknet.with_suffix(".weights")
    first = _build(darknet)
    old_path = first.engine.model_path  # type: ignore[attr-defined]
    frames = _frames()
    old_raw = first.raw(frames)
    first.close()

    # scale every float of the last quarter of the file (the heads' kernels): same size, same mtime
    st = weights.stat()
    raw = bytearray(weights.read_bytes())
    tail = (len(raw) * 3 // 4) // 4 * 4
    values = np.frombuffer(bytes(raw[tail:]), np.float32) * np.float32(0.5)
    raw[tail:] = values.tobytes()
    weights.write_bytes(bytes(raw))
    os.utime(weights, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert weights.stat().st_size == st.st_size and weights.stat().st_mtime_ns == st.st_mtime_ns

    second = _build(darknet)
    new_path = second.engine.model_path  # type: ignore[attr-defined]
    assert new_path != old_path and new_path.is_file()
    new_raw = second.raw(frames)
    assert np.abs(new_raw - old_raw).max() > 1e-2, "the rebuilt export must run the changed weights"
    # ... and exactly the changed weights: the same as the PyTorch module read from the new files
    torch_det = _build(darknet, backend="torch")
    assert np.abs(new_raw - torch_det.raw(frames)).max() < 1e-3
    torch_det.close()
    second.close()


def test_the_key_follows_cfg_weights_and_export_settings(darknet, tmp_path):
    weights = darknet.with_suffix(".weights")
    base = export_key(darknet, weights, (1, 3, SIZE, SIZE), META)
    assert export_key(darknet, weights, (1, 3, SIZE, SIZE), META) == base
    assert export_key(darknet, weights, (1, 3, 320, 320), META) != base
    assert export_key(darknet, weights, (1, 3, SIZE, SIZE), {}) != base
    cfg2 = tmp_path / "other.cfg"
    cfg2.write_text(darknet.read_text().replace("classes=80", "classes=80\n# edited"))
    assert export_key(cfg2, weights, (1, 3, SIZE, SIZE), META) != base
    fp = onnx_cache.exporter_fingerprint(["pipeline.models.darknet"])
    assert set(fp) == {"engines.export", "pipeline.models.darknet", "torch"}
    assert "missing" not in fp.values()


@pytest.mark.parametrize("damage", ["truncate", "flip_byte", "no_manifest", "garbage_manifest"])
def test_a_damaged_cached_export_is_rebuilt_not_loaded(darknet, tmp_path, caplog, damage):
    cache = tmp_path / "cache"
    det = _build(darknet)
    path = det.engine.model_path  # type: ignore[attr-defined]
    frames = _frames()
    want = det.raw(frames)
    det.close()
    good_sha = sha256_file(path)
    if damage == "truncate":  # a partial file, as a crash in a non-atomic writer would leave
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif damage == "flip_byte":  # same size, one weight altered: ONNX Runtime would load it silently
        raw = bytearray(path.read_bytes())
        raw[len(raw) // 2] ^= 0xFF
        path.write_bytes(bytes(raw))
    elif damage == "no_manifest":  # a file written before this cache, or an export that did not finish
        onnx_cache.manifest_path(path).unlink()
    else:
        onnx_cache.manifest_path(path).write_text("{not json")
    with caplog.at_level(logging.WARNING, logger="engines.onnx_cache"):
        again = _build(darknet)
    assert again.engine.model_path == path  # type: ignore[attr-defined]
    assert any("not used" in r.getMessage() and path.name in r.getMessage() for r in caplog.records)
    assert sha256_file(path) == good_sha  # rebuilt: the export is deterministic
    record = json.loads(onnx_cache.manifest_path(path).read_text())
    assert record["sha256"] == good_sha and record["size"] == path.stat().st_size
    np.testing.assert_allclose(again.raw(frames), want, atol=1e-5)
    again.close()
    assert _exports(cache) == [path]
    assert not list((cache / "onnx").glob("*.part"))


def test_a_failed_export_leaves_nothing_that_a_later_start_would_trust(darknet, tmp_path):
    """The weights file truncated: the export fails with the importer's error and no manifest is written;
    with the file restored the next build exports and runs."""
    weights = darknet.with_suffix(".weights")
    good = weights.read_bytes()
    weights.write_bytes(good[: len(good) // 2])
    with pytest.raises(ModelError, match="truncated or corrupt"):
        _build(darknet)
    assert not list((tmp_path / "cache" / "onnx").glob("*.export.json"))
    assert not list((tmp_path / "cache" / "onnx").glob("*.part"))
    weights.write_bytes(good)
    det = _build(darknet)
    assert det.detect(_frames()[:1])[0].labels  # the astronaut photo has a person
    det.close()
