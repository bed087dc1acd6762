"""Generated test media: real H.264 clips of scikit-image photos moving over a texture (pipeline.ingest.demo_media).

Session-scoped, so each clip is encoded once per test run (about 0.5 s each). Every frame carries its index
in a block code that ``pipeline.ingest.demo_media.read_frame_index`` reads back.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from pipeline.ingest.demo_media import write_damaged_copy, write_demo_video


@dataclass(frozen=True)
class Clip:
    path: Path
    width: int
    height: int
    fps: int
    frames: int


CLIP_W, CLIP_H, CLIP_FPS, CLIP_SECONDS = 320, 240, 25, 3.0


def _make(directory: Path, name: str) -> Clip:
    path = write_demo_video(directory / name, width=CLIP_W, height=CLIP_H, fps=CLIP_FPS, seconds=CLIP_SECONDS)
    return Clip(path, CLIP_W, CLIP_H, CLIP_FPS, round(CLIP_FPS * CLIP_SECONDS))


@pytest.fixture(scope="session")
def media_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("media")


@pytest.fixture(scope="session")
def demo_mp4(media_dir: Path) -> Clip:
    """320x240, 25 fps, 75 frames, keyframe every 25 frames, in an MP4 container."""
    return _make(media_dir, "demo.mp4")


@pytest.fixture(scope="session")
def demo_mkv(media_dir: Path) -> Clip:
    """Same scene in Matroska (streamable: a truncated copy still opens, unlike MP4 with its index at the end)."""
    return _make(media_dir, "demo.mkv")


@pytest.fixture(scope="session")
def demo_h264(media_dir: Path) -> Clip:
    """Same scene as an Annex-B H.264 elementary stream (what the RTSP test server streams)."""
    return _make(media_dir, "demo.h264")


@pytest.fixture
def damaged_copy(tmp_path: Path) -> Callable[..., Path]:
    """``damaged_copy(clip, keep_fraction=0.5, corrupt=False)`` -> path of a truncated or corrupted copy."""

    def make(clip: Clip, keep_fraction: float = 0.5, corrupt: bool = False) -> Path:
        kind = "corrupt" if corrupt else "truncated"
        dst = tmp_path / f"{kind}_{keep_fraction:g}_{clip.path.name}"
        return write_damaged_copy(clip.path, dst, keep_fraction=keep_fraction, corrupt=corrupt)

    return make
