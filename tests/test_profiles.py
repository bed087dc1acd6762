"""Detection profiles (``cameras[].profile``, ``run --profile``, ``cameras add --profile``, the web form).

The process test runs the real CLI on a real 1080p clip (five MOT17-13 street frames written to an .mp4
by the test) with the default detector, and reads what each detected frame says it ran (``scan``).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import cv2
import pytest
import yaml

from pipeline.config.profiles import PROFILES
from pipeline.config.schema import CameraConfig, ConfigError, parse_config

REPO = Path(__file__).resolve().parents[1]
MOT13 = REPO.parent / "shared" / "data" / "tracks" / "MOT17-13-FRCNN" / "img1"
needs_frames = pytest.mark.skipif(not MOT13.is_dir(), reason="needs ../shared/data/tracks/MOT17-13-FRCNN")


def _cams(*cams: dict) -> list[CameraConfig]:
    return parse_config({"cameras": list(cams), "detector": {"model": "none"}}).cameras


def test_a_profile_fills_detect_and_the_cameras_own_keys_win():
    plain, street, tuned, door = _cams(
        {"id": "a", "source": "x"},
        {"id": "b", "source": "x", "profile": "street"},
        {"id": "c", "source": "x", "profile": "street", "detect": {"tiling": {"overlap": 0.2}}},
        {"id": "d", "source": "x", "profile": "door"},
    )
    assert not plain.detect.active and plain.profile is None
    assert street.detect.tiling.enabled and street.detect.tiling.size == 1080
    assert not street.detect.tiling.full_frame and street.detect.tiling.overlap == 0.1
    assert (
        tuned.detect.tiling.overlap == 0.2 and tuned.detect.tiling.size == 1080
    )  # the rest from the profile
    assert not door.detect.active
    # a dumped camera loads back to the same settings (the file the web app and `cameras` write)
    assert CameraConfig.model_validate(tuned.model_dump()) == tuned


def test_an_unknown_profile_is_an_error_naming_the_key_and_the_choices():
    with pytest.raises(ConfigError) as err:
        _cams({"id": "a", "source": "x"}, {"id": "b", "source": "x", "profile": "streets"})
    msg = str(err.value)
    assert "cameras[1].profile" in msg and "'streets'" in msg
    for name in PROFILES:
        assert name in msg


def test_cameras_add_and_edit_write_the_profile(tmp_path):
    import run_pipeline
    from pipeline.config.edit import camera_dict

    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(
        yaml.safe_dump({"cameras": [{"id": "a", "source": "x.mp4"}], "detector": {"model": "none"}})
    )
    assert run_pipeline.main(["cameras", "--config", str(cfg), "add", "--id", "b", "--source", "y.mp4",
                              "--profile", "street"]) == 0  # fmt: skip
    saved = yaml.safe_load(cfg.read_text())["cameras"][1]
    assert saved["profile"] == "street" and "detect" not in saved  # one line, not the expanded settings
    assert run_pipeline.main(["cameras", "--config", str(cfg), "edit", "b", "--profile", "door"]) == 0
    cam = parse_config(yaml.safe_load(cfg.read_text())).cameras[1]
    assert cam.profile == "door" and not cam.detect.active  # street's tiles did not stick
    assert camera_dict(cam)["profile"] == "door"


def _clip_1080p(path: Path) -> Path:
    frames = sorted(MOT13.glob("*.jpg"))
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 5, (1920, 1080))
    for f in frames:
        writer.write(cv2.imread(str(f)))
    writer.release()
    return path


@needs_frames
@pytest.mark.timeout(300)
@pytest.mark.parametrize(("profile", "kind", "crops"), [("street", "tiles", 2), ("whole", None, None)])
def test_run_source_with_profile_detects_with_that_profile(redis_server, tmp_path, profile, kind, crops):
    clip = _clip_1080p(tmp_path / "street.mp4")
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(
        yaml.safe_dump(
            {
                "cameras": [{"id": "unused", "source": "demo"}],
                "redis": {"url": redis_server.url, "spool_path": str(tmp_path / "spool.sqlite")},
                "detector": {"threads": 1},  # the default model (yolox-nano)
            }
        )
    )
    r = subprocess.run(
        [sys.executable, str(REPO / "run_pipeline.py"), "--config", str(cfg), "--source", str(clip),
         "--profile", profile, "--print-events", "--no-web", "--var-dir", str(tmp_path / "var")],
        capture_output=True, text=True, timeout=240, cwd=tmp_path,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-2000:]
    frames = [e for e in map(json.loads, r.stdout.splitlines()) if e["type"] == "detections.frame"]
    assert len(frames) == 5, r.stderr[-2000:]
    for e in frames:
        assert e["data"]["detector"] == "yolox-nano"
        assert e["data"]["width"] == 1920
        scan = e["data"].get("scan")
        if kind is None:
            assert scan is None  # the whole frame, as without a profile
        else:
            assert scan["kind"] == kind and scan["crops"] == crops
    people = [sum(d["label"] == "person" for d in e["data"]["detections"]) for e in frames]
    assert sum(people) > 0
