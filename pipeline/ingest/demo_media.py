"""Generate real H.264 clips from scikit-image's bundled photos (demo clip, tests, benchmarks).

The clip shows real photographs (astronaut, coffee, chelsea the cat, the cameraman) gliding and bouncing over
a textured background (skimage's brick texture), so detectors see real image content and encoders see real
motion.
Every frame also carries its own index as a 16-bit black/white block code in the top-left corner
(``read_frame_index``), which lets tests check order and completeness from the pixels alone.

Output format follows the file suffix: ``.mp4``/``.mkv``/``.mov`` are containers, ``.h264``/``.264`` is an
Annex-B elementary stream (what an RTSP server streams).
"""

from __future__ import annotations

import itertools
import struct
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
from PIL import Image

INDEX_BITS = 16
INDEX_CELL = 8  # pixels per code cell; the code occupies INDEX_BITS*INDEX_CELL x INDEX_CELL at (0, 0)

_RAW_H264_SUFFIXES = {".h264", ".264"}


@dataclass(frozen=True)
class _Sprite:
    image: np.ndarray  # BGR uint8
    x0: float
    y0: float
    vx: float  # pixels per frame
    vy: float


def _rgb_to_bgr(img: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(img[..., ::-1])


def _resize(img: np.ndarray, width: int, height: int) -> np.ndarray:
    return np.asarray(Image.fromarray(img).resize((max(1, width), max(1, height)), Image.Resampling.BILINEAR))


def _background(width: int, height: int) -> np.ndarray:
    from skimage import data

    brick = data.brick()  # 512x512 grayscale texture
    reps_y = -(-height // brick.shape[0])
    reps_x = -(-width // brick.shape[1])
    tiled = np.tile(brick, (reps_y, reps_x))[:height, :width]
    # Tint it slightly so it is not grey: real cameras rarely see pure grey.
    bgr = np.stack([tiled * 0.8, tiled * 0.9, tiled], axis=-1)
    return np.clip(bgr, 0, 255).astype(np.uint8)


def _sprites(width: int, height: int, fps: float) -> list[_Sprite]:
    from skimage import data

    # The cameraman is a real person a COCO detector finds, so the default demo shows detections.
    cameraman = np.repeat(data.camera()[..., None], 3, axis=2)
    photos = [data.astronaut(), data.coffee(), data.chelsea(), cameraman]
    sprites = []
    for i, photo in enumerate(photos):
        h = max(8, int(height * 0.45))
        w = max(8, int(h * photo.shape[1] / photo.shape[0]))
        w = min(w, width // 2)
        img = _rgb_to_bgr(_resize(photo, w, h))
        speed = width / (fps * (3.0 + i))  # crosses the frame in 3-5 s
        sprites.append(
            _Sprite(
                image=img,
                x0=(i * width / 3) % max(1, width - w),
                y0=(i * height / 4) % max(1, height - h),
                vx=speed * (1 if i % 2 == 0 else -1),
                vy=speed * 0.6 * (1 if i < 2 else -1),
            )
        )
    return sprites


def _bounce(start: float, velocity: float, t: int, span: int) -> int:
    """Position after ``t`` frames of a point bouncing between 0 and ``span``."""
    if span <= 0:
        return 0
    pos = (start + velocity * t) % (2 * span)
    return int(pos if pos <= span else 2 * span - pos)


def draw_frame_index(image: np.ndarray, index: int) -> None:
    """Stamp ``index`` (mod 2**16) as black/white cells on the top-left of ``image``, in place."""
    value = index % (1 << INDEX_BITS)
    for bit in range(INDEX_BITS):
        on = (value >> (INDEX_BITS - 1 - bit)) & 1
        x = bit * INDEX_CELL
        image[:INDEX_CELL, x : x + INDEX_CELL] = 255 if on else 0


def read_frame_index(image: np.ndarray) -> int:
    """Read back the index stamped by ``draw_frame_index`` (samples the middle of each cell)."""
    value = 0
    c = INDEX_CELL // 2
    for bit in range(INDEX_BITS):
        x = bit * INDEX_CELL
        cell = image[c - 2 : c + 2, x + c - 2 : x + c + 2]
        value = (value << 1) | int(cell.mean() > 127)
    return value


def render_frames(
    width: int = 320, height: int = 240, fps: float = 25.0, n_frames: int = 75
) -> Iterator[np.ndarray]:
    """Yield ``n_frames`` BGR uint8 frames of the demo scene (the same pixels ``write_demo_video`` encodes)."""
    background = _background(width, height)
    sprites = _sprites(width, height, fps)
    for t in range(n_frames):
        frame = background.copy()
        for s in sprites:
            sh, sw = s.image.shape[:2]
            x = _bounce(s.x0, s.vx, t, width - sw)
            y = _bounce(s.y0, s.vy, t, height - sh)
            frame[y : y + sh, x : x + sw] = s.image
        if width >= INDEX_BITS * INDEX_CELL and height >= INDEX_CELL:
            draw_frame_index(frame, t)
        yield frame


def encode_bgr_video(
    path: str | Path,
    frames: Iterable[np.ndarray],
    fps: int,
    *,
    keyframe_interval: int | None = None,
    crf: int = 23,
    preset: str = "veryfast",
) -> Path:
    """Encode BGR uint8 frames (all of one even size) to ``path`` with libx264 and return the path.

    ``keyframe_interval`` defaults to one second of frames. B-frames are off so decode order equals
    display order (simplest for streaming). A ``.h264``/``.264`` suffix writes an Annex-B stream.
    """
    path = Path(path)
    frames = iter(frames)
    first = next(frames, None)
    if first is None:
        raise ValueError(f"{path}: no frames to encode")
    height, width = first.shape[:2]
    if width % 2 or height % 2:
        raise ValueError(f"width and height must be even for yuv420p, got {width}x{height}")
    gop = keyframe_interval or fps
    path.parent.mkdir(parents=True, exist_ok=True)
    raw = path.suffix.lower() in _RAW_H264_SUFFIXES
    with av.open(str(path), mode="w", format="h264" if raw else None) as out:
        stream = out.add_stream(
            "libx264",
            rate=fps,
            options={
                "preset": preset,
                "crf": str(crf),
                "x264-params": f"keyint={gop}:min-keyint={gop}:scenecut=0:bframes=0:repeat-headers=1",
            },
        )
        stream.width = width
        stream.height = height
        stream.pix_fmt = "yuv420p"
        stream.time_base = Fraction(1, fps)
        for t, img in enumerate(itertools.chain([first], frames)):
            frame = av.VideoFrame.from_ndarray(img, format="bgr24")
            frame.pts = t
            frame.time_base = Fraction(1, fps)
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    return path


def write_demo_video(
    path: str | Path,
    *,
    width: int = 320,
    height: int = 240,
    fps: int = 25,
    seconds: float = 3.0,
    keyframe_interval: int | None = None,
    crf: int = 23,
    preset: str = "veryfast",
) -> Path:
    """Encode the demo scene to ``path`` (see ``encode_bgr_video``) and return the path.

    Width and height must be even (yuv420p).
    """
    if width % 2 or height % 2:
        raise ValueError(f"width and height must be even for yuv420p, got {width}x{height}")
    n_frames = max(1, round(seconds * fps))
    return encode_bgr_video(
        path,
        render_frames(width, height, fps, n_frames),
        fps,
        keyframe_interval=keyframe_interval,
        crf=crf,
        preset=preset,
    )


def write_damaged_copy(
    src: str | Path, dst: str | Path, *, keep_fraction: float = 0.5, corrupt: bool = False
) -> Path:
    """Copy ``src`` to ``dst`` truncated to ``keep_fraction`` of its bytes; with ``corrupt``, instead keep the
    full length but overwrite a run of bytes in the second half with garbage (deterministic)."""
    data = bytearray(Path(src).read_bytes())
    if corrupt:
        rng = np.random.default_rng(1234)
        start = int(len(data) * keep_fraction)
        length = max(1, len(data) // 10)
        data[start : start + length] = rng.integers(
            0, 256, size=len(data[start : start + length]), dtype=np.uint8
        ).tobytes()
    else:
        data = data[: int(len(data) * keep_fraction)]
    dst = Path(dst)
    dst.write_bytes(bytes(data))
    return dst


def default_demo_clip(cache_dir: str | Path) -> Path:
    """The CLI's default demo clip (640x360, 10 s), generated once into ``cache_dir``."""
    path = Path(cache_dir) / "vidpipe_demo_v2_640x360.mp4"  # bump the name when the scene changes
    if not path.exists():
        tmp = path.with_suffix(".partial.mp4")
        write_demo_video(tmp, width=640, height=360, fps=25, seconds=10.0)
        tmp.replace(path)
    return path


def write_png_bomb(path: str | Path, side: int = 20000) -> Path:
    """A valid side x side 8-bit grey PNG (all zeros: about 1 MB at 20000), written as a stream so
    making it costs no memory. Decoded as BGR it is side*side*3 bytes (1.2 GB at 20000): the input that
    enrollment must refuse from its header."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    comp = zlib.compressobj(9)
    row = b"\0" * (side + 1)  # filter byte + pixels
    idat = bytearray()
    for _ in range(side):
        idat += comp.compress(row)
    idat += comp.flush()
    with open(path, "wb") as fh:
        fh.write(b"\x89PNG\r\n\x1a\n")
        fh.write(chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)))
        fh.write(chunk(b"IDAT", bytes(idat)))
        fh.write(chunk(b"IEND", b""))
    return Path(path)


def builtin_calibration_images(limit: int = 32) -> list[np.ndarray]:
    """Real photos from scikit-image's sample data plus frames of the demo clip (BGR uint8).

    A generic set: good enough to make int8 usable without data; a camera's own frames are better.
    """
    from skimage import data

    photos = []
    for name in (
        "astronaut",
        "camera",
        "coffee",
        "chelsea",
        "rocket",
        "cat",
        "immunohistochemistry",
        "hubble_deep_field",
    ):
        fn = getattr(data, name, None)
        if fn is None:
            continue
        try:
            img = np.asarray(fn())
        except Exception:  # a sample that needs a download (pooch) is skipped
            continue
        if img.ndim == 2:
            img = np.repeat(img[..., None], 3, axis=2)
        photos.append(np.ascontiguousarray(img[..., :3][..., ::-1]).astype(np.uint8))
    n_frames = max(limit - len(photos), 1)
    frames = list(render_frames(width=640, height=360, fps=25, n_frames=250))
    step = max(len(frames) // n_frames, 1)
    return (photos + frames[::step][:n_frames])[:limit]
