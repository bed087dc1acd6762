"""Detect on the substream, keep the main stream (issue 24 item 4): ``cameras[].record_source``.

Real parts: two GStreamer RTSP servers (one port each) streaming the shared pedestrian video at 480x360 (the
detect substream) and 960x720 (the main stream), the runner with YOLOX-Nano and the tracker, the packet
rings and clip writer, and PyAV decoding the clips written. The main server is hung (SIGSTOP) in the second
run: detection must go on and clips must fall back to the detect stream, counted.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import av
import numpy as np
import pytest
import yaml

from pipeline.config.edit import camera_dict
from pipeline.config.schema import CameraConfig, ConfigError, parse_config
from pipeline.core.box_scale import ASPECT_TOLERANCE, BoxScale, aspect_mismatch
from pipeline.core.events import Event
from pipeline.ingest.clip_writer import clip_name
from pipeline.ingest.demo_media import draw_frame_index, encode_bgr_video, read_frame_index
from pipeline.run.runner import Pipeline
from tests.support.rtsp_fixtures import RtspServer

REPO = Path(__file__).resolve().parents[1]
DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
VTEST = DATA / "videos" / "vtest.mp4"  # 480x360 H.264, 10 fps
FRAMES = 120  # 12 s of the scene, looped by the servers
SUB, MAIN = (480, 360), (960, 720)


# -- config -------------------------------------------------------------------------------------------


def _cams(**cam: object) -> dict:
    return {"cameras": [{"id": "gate", "source": "rtsp://10.0.0.9/sub", **cam}]}


def test_record_source_is_optional_and_kept_by_the_config_editor():
    plain = parse_config(_cams()).cameras[0]
    assert plain.record_source is None
    cam = parse_config(_cams(record_source="rtsp://admin:pw@10.0.0.9/main")).cameras[0]
    assert cam.record_source == "rtsp://admin:pw@10.0.0.9/main"
    assert camera_dict(cam)["record_source"] == cam.record_source
    assert "record_source" not in camera_dict(plain)


@pytest.mark.parametrize(
    ("cam", "words"),
    [
        ({"record_source": "rtsp://10.0.0.9/sub"}, ["cameras[0]", "'gate'", "record_source is the same as source"]),
        ({"record_source": ""}, ["cameras[0].record_source", "at least 1 character"]),
        ({"source": "clip.mp4", "record_source": "rtsp://admin:hunter2@10.0.0.9/main"},
         ["cameras[0]", "'gate'", "record_source needs source and record_source to be live streams",
          "rtsp://admin:***@10.0.0.9/main"]),
        ({"record_source": "main.mp4"}, ["cameras[0]", "record_source needs", "'main.mp4'"]),
    ],
)  # fmt: skip
def test_bad_record_sources_are_errors_naming_the_camera_and_key_without_passwords(cam, words):
    with pytest.raises(ConfigError) as err:
        parse_config(_cams(**cam), "cams.yaml")
    msg = str(err.value)
    assert msg.startswith("invalid configuration in cams.yaml")
    for w in words:
        assert w in msg, msg
    assert "hunter2" not in msg


def test_a_password_in_a_rejected_value_is_not_echoed():
    with pytest.raises(ConfigError) as err:
        parse_config(_cams(rtsp_transport="rtsp://admin:hunter2@10.0.0.9/main"))
    assert "hunter2" not in str(err.value) and "cameras[0].rtsp_transport" in str(err.value)


# -- box scaling -------------------------------------------------------------------------------------


def test_box_scale_maps_substream_boxes_onto_the_main_stream_per_axis():
    s = BoxScale.between((640, 360), (1920, 1080))
    assert (s.sx, s.sy) == (3.0, 3.0)
    assert s.box([10, 20, 110.5, 220]) == [30.0, 60.0, 331.5, 660.0]
    stretched = BoxScale.between((704, 480), (1920, 1080))  # a 4:3-ish substream of a 16:9 main
    assert stretched.box([704, 480, 704, 480]) == [1920.0, 1080.0, 1920.0, 1080.0]
    assert BoxScale().is_identity and not s.is_identity
    assert aspect_mismatch((640, 360), (1920, 1080)) == 0.0
    assert aspect_mismatch((704, 480), (1920, 1080)) > ASPECT_TOLERANCE
    assert aspect_mismatch((1920, 1088), (640, 360)) < ASPECT_TOLERANCE  # coded-size rounding is no mismatch
    with pytest.raises(ValueError, match="positive"):
        BoxScale.between((0, 360), (1920, 1080))


# -- two real RTSP servers ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def two_streams(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The same FRAMES of the street scene as Annex-B H.264 at SUB and MAIN size, a keyframe a second."""
    if not VTEST.is_file():
        pytest.skip("needs ../shared/data/videos/vtest.mp4")
    import cv2

    with av.open(str(VTEST)) as c:
        frames = [
            f.to_ndarray(format="bgr24") for _, f in zip(range(FRAMES), c.decode(video=0), strict=False)
        ]

    def sized(size: tuple[int, int]) -> Iterator[np.ndarray]:
        for i, f in enumerate(frames):
            out = cv2.resize(f, size)
            draw_frame_index(out, i)  # which frame of the scene: the same index in both streams
            yield out

    d = tmp_path_factory.mktemp("roles")
    sub = encode_bgr_video(d / "sub.h264", sized(SUB), 10, keyframe_interval=10, crf=18)
    main = encode_bgr_video(d / "main.h264", sized(MAIN), 10, keyframe_interval=10, crf=18)
    return sub, main


@pytest.fixture
def servers(rtsp_support: None, two_streams: tuple[Path, Path]):
    sub = RtspServer(two_streams[0], fps=10, mount="/sub")
    main = RtspServer(two_streams[1], fps=10, mount="/main")
    sub.start()
    main.start()
    try:
        yield sub, main
    finally:
        for s in (main, sub):
            s.stop()
            s._kill()


def _config(sub: RtspServer, main: RtspServer, redis_url: str, tmp_path: Path) -> dict:
    from engines.model_store import get_model_path

    return {
        "cameras": [{
            "id": "street", "source": sub.url, "record_source": main.url, "detect_fps": 5,
            "read_timeout_s": 2.0, "open_timeout_s": 5.0, "reconnect": {"initial_s": 0.5, "max_s": 1.0},
        }],
        "detector": {"model": str(get_model_path("yolox-nano")), "layout": "yolox", "score_threshold": 0.3,
                     "classes": ["person"]},
        "redis": {"url": redis_url, "spool_path": str(tmp_path / "spool.sqlite")},
        "tracking": {"enabled": True, "min_hits": 2, "default_filter": {"threshold": 0.3}},
        "clips": {"enabled": True, "tracks": True, "pre_s": 1, "post_s": 1, "ring_max_s": 20},
    }  # fmt: skip


def _wait(cond, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(0.1)


def _clip_indices(path: Path) -> list[int]:
    with av.open(str(path)) as c:
        return [read_frame_index(f.to_ndarray(format="bgr24")) for f in c.decode(video=0)]


def _clip_size(path: Path) -> tuple[int, int, int]:
    with av.open(str(path)) as c:
        frames = list(c.decode(video=0))
    return frames[0].width, frames[0].height, len(frames)


def _detected(events: list[Event]) -> list[Event]:
    return [e for e in events if e.type == "detections.frame"]


def test_detection_runs_on_the_substream_and_clips_keep_the_main_stream(servers, redis_server, tmp_path):
    sub, main = servers
    events: list[Event] = []
    pipe = Pipeline(parse_config(_config(sub, main, redis_server.url, tmp_path)), var_dir=tmp_path / "var",
                    event_sinks=[events.append]).start()  # fmt: skip
    try:
        record = pipe.records["street"]
        _wait(lambda: record.healthy(), 60, "the main stream to come up")
        _wait(lambda: any(e.type == "tracks.new" for e in events), 120, "a tracked person")
        assert "main=up" in pipe.metrics.status_line()
        # a clip of the moment the detector saw holds that moment from the main stream: the two streams'
        # clocks are matched through the wall clock, not by their unrelated RTSP timestamps
        seen = pipe.latest["street"].frame
        index = read_frame_index(seen.image)
        assert pipe.clips is not None and seen.pts is not None
        route = pipe.clips.route("street")
        assert route.stream == "main" and route.scale == BoxScale.between(SUB, MAIN)
        name = clip_name("street", "test", "moment", seen.capture_time, route.suffix)
        assert pipe.clips.request(route.request("street", name, seen.pts, seen.pts, 0.5, 0.5))
        moment = tmp_path / "var" / "clips" / name
        _wait(moment.exists, 30, "the clip of the moment")
        w, h, _ = _clip_size(moment)
        indices = _clip_indices(moment)
        assert (w, h) == MAIN
        assert index in indices, (index, indices)
        # it ends post_s (5 frames) after the moment, give or take the detect decoder's latency (the sub's
        # frames are stamped after decoding, the main stream's packets on arrival): within 0.3 s
        late = (indices[-1] - (index + 5) + FRAMES // 2) % FRAMES - FRAMES // 2  # the scene loops
        assert -3 <= late <= 3, (index, indices)
    finally:
        pipe.stop()
    assert pipe.wait(60)
    pipe.join(10)
    dets = _detected(events)
    assert dets and all((e.data["width"], e.data["height"]) == SUB for e in dets)  # detect decodes the sub
    assert sum(len(e.data["detections"]) for e in dets) > 0
    ends = [e for e in events if e.type == "tracks.end" and "clip" in e.data]
    assert ends, "tracks ended at stop name their clips"
    for end in ends:
        assert end.data["clip_stream"] == "main"
        # events keep detect-frame boxes; the clip's box is the same place in main-stream pixels
        assert end.data["clip_box"] == BoxScale.between(SUB, MAIN).box(end.data["box"])
        x1, y1, x2, y2 = end.data["clip_box"]
        assert 0 <= x1 < x2 <= MAIN[0] + 1 and 0 <= y1 < y2 <= MAIN[1] + 1
        w, h, n = _clip_size(tmp_path / "var" / "clips" / end.data["clip"])
        assert (w, h) == MAIN and n >= 10, (end.data["clip"], w, h, n)
    text = pipe.metrics.prometheus_text()
    assert 'vidpipe_clip_fallbacks_total{camera="street"} 0.0' in text


def test_a_hung_main_stream_never_stalls_detection_and_clips_fall_back_to_the_substream(
    servers, redis_server, tmp_path
):
    sub, main = servers
    events: list[Event] = []
    pipe = Pipeline(parse_config(_config(sub, main, redis_server.url, tmp_path)), var_dir=tmp_path / "var",
                    event_sinks=[events.append]).start()  # fmt: skip
    try:
        record = pipe.records["street"]
        _wait(lambda: record.healthy() and len(_detected(events)) >= 3, 90, "main stream up and detections")
        main.pause()  # a hung camera: the socket stays open, nothing arrives
        _wait(lambda: not record.healthy(), 30, "the main stream to count as down")
        seen = len(_detected(events))
        _wait(
            lambda: len(_detected(events)) >= seen + 10, 60, "detections to go on with the main stream hung"
        )
        _wait(lambda: any(e.type == "tracks.new" for e in events), 120, "a tracked person")
        assert "main=DOWN" in pipe.metrics.status_line()
        assert 'vidpipe_record_stream_up{camera="street"} 0.0' in pipe.metrics.prometheus_text()
        t_stop = time.monotonic()
    finally:
        pipe.stop()
    assert pipe.wait(60)
    pipe.join(10)
    # the hung reader notices stop within its read timeout; nothing waits on it beyond that
    assert not record.is_alive() or record.join(2.0 + 5.0)
    assert time.monotonic() - t_stop < 60
    ends = [e for e in events if e.type == "tracks.end" and "clip" in e.data]
    assert ends
    for end in ends:
        assert end.data["clip_stream"] == "detect" and end.data["clip_box"] == end.data["box"]
        w, h, _ = _clip_size(tmp_path / "var" / "clips" / end.data["clip"])
        assert (w, h) == SUB
    assert record.fallbacks >= len(ends)
    assert (
        f'vidpipe_clip_fallbacks_total{{camera="street"}} {float(record.fallbacks)}'
        in pipe.metrics.prometheus_text()
    )


def test_a_killed_main_stream_reconnects_on_its_own_while_detection_goes_on(servers, redis_server, tmp_path):
    sub, main = servers
    events: list[Event] = []
    pipe = Pipeline(parse_config(_config(sub, main, redis_server.url, tmp_path)), var_dir=tmp_path / "var",
                    event_sinks=[events.append]).start()  # fmt: skip
    try:
        record = pipe.records["street"]
        assert pipe.clips is not None
        _wait(lambda: record.healthy() and len(_detected(events)) >= 3, 90, "main stream up and detections")
        main.stop()  # connection refused from now on
        _wait(lambda: not record.healthy(), 30, "the main stream to count as down")
        assert pipe.clips.route("street").stream == "detect"  # a clip asked for now: the substream's
        seen = len(_detected(events))
        _wait(
            lambda: len(_detected(events)) >= seen + 10, 60, "detections to go on with the main stream gone"
        )
        main.start()
        _wait(record.healthy, 60, "the main stream to reconnect")
        assert record.metrics.reconnects >= 1 and pipe.clips.route("street").stream == "main"
    finally:
        pipe.stop()
    assert pipe.wait(60)
    pipe.join(10)
    assert record.fallbacks >= 1


def test_a_running_camera_gains_and_loses_its_main_stream_by_an_edit(servers, redis_server, tmp_path):
    """The web form, the API and ``cameras edit --url`` all end in ``update_camera``: the camera restarts
    with a reader for its new record_source, and without one once it is removed."""
    sub, main = servers
    raw = _config(sub, main, redis_server.url, tmp_path)
    del raw["cameras"][0]["record_source"]
    raw["tracking"]["enabled"] = False
    pipe = Pipeline(parse_config(raw), var_dir=tmp_path / "var").start()
    try:
        assert pipe.records == {}
        cam = pipe.camera_configs()[0]
        pipe.update_camera(cam.model_copy(update={"record_source": main.url}))
        record = pipe.records["street"]
        _wait(record.healthy, 60, "the new main stream to come up")
        assert pipe.clips is not None and pipe.clips.record_streams["street"] is record
        pipe.update_camera(cam)  # record_source removed
        assert pipe.records == {} and pipe.clips.record_streams == {} and not record.is_alive()
        assert pipe.clips.route("street").stream == "detect" and not pipe.clips.route("street").has_main
    finally:
        pipe.stop()
    assert pipe.wait(60)
    pipe.join(10)


def test_a_camera_whose_detect_stream_gives_up_ends_the_run_and_its_main_stream_reader(
    servers, redis_server, tmp_path
):
    from pipeline.deliver.redis_server import free_port
    from pipeline.detect.detectors.base import NullDetector

    _sub, main = servers
    raw = _config(_sub, main, redis_server.url, tmp_path)
    raw["cameras"][0].update(
        source=f"rtsp://127.0.0.1:{free_port()}/sub", reconnect={"initial_s": 0.2, "max_attempts": 1}
    )
    raw["tracking"]["enabled"] = False
    pipe = Pipeline(parse_config(raw), detector=NullDetector(), var_dir=tmp_path / "var").start()
    record = pipe.records["street"]
    assert pipe.wait(60), "the run ends when its only camera failed, main stream or not"
    pipe.join(10)
    assert record.join(10) and not record.is_alive()
    assert pipe.decoders["street"].outcome().startswith("failed")


def test_the_main_stream_is_only_opened_for_cameras_that_keep_clips(tmp_path):
    cfg = parse_config(
        {
            "cameras": [
                {"id": "a", "source": "rtsp://127.0.0.1:9/sub", "record_source": "rtsp://127.0.0.1:9/m"}
            ],
            "detector": {"model": "none"},
            "redis": {"url": "redis://127.0.0.1:9/0", "spool_path": str(tmp_path / "s.sqlite")},
        }
    )
    pipe = Pipeline(cfg, var_dir=tmp_path / "var")
    try:
        assert pipe.records == {} and pipe.clips is None
    finally:
        for d in pipe.deliveries:
            d.spool.close()
    assert isinstance(cfg.cameras[0], CameraConfig)


# -- the cameras CLI and the web form -----------------------------------------------------------------


def _cameras_cli(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(REPO / "run_pipeline.py"), "cameras", *argv],
        capture_output=True, text=True, timeout=120, cwd=REPO,
    )  # fmt: skip


def test_the_cameras_cli_adds_edits_lists_and_removes_a_record_source_keeping_the_rest(tmp_path):
    path = tmp_path / "cams.yaml"
    other = {"id": "b", "source": "rtsp://10.0.0.8/sub", "read_timeout_s": 3.0, "detect_fps": 4.0}
    path.write_text(yaml.safe_dump({"cameras": [other]}, sort_keys=False))
    r = _cameras_cli("--config", str(path), "add", "--id", "a", "--source", "rtsp://10.0.0.9/sub",
                     "--record-source", "rtsp://admin:hunter2@10.0.0.9/main")  # fmt: skip
    assert r.returncode == 0, r.stderr
    r = _cameras_cli(
        "--config", str(path), "edit", "b", "--record-source", "rtsp://u:topsecret@10.0.0.8/main"
    )
    assert r.returncode == 0, r.stderr
    cams = yaml.safe_load(path.read_text())["cameras"]
    assert cams[0] == {**other, "record_source": "rtsp://u:topsecret@10.0.0.8/main"}
    assert cams[1]["record_source"] == "rtsp://admin:hunter2@10.0.0.9/main"
    r = _cameras_cli("--config", str(path), "list")
    assert r.returncode == 0 and "record: rtsp://admin:***@10.0.0.9/main" in r.stdout, r.stdout
    assert "hunter2" not in r.stdout and "topsecret" not in r.stdout
    r = _cameras_cli("--config", str(path), "edit", "b", "--record-source", "rtsp://10.0.0.8/sub")
    assert r.returncode == 2 and "record_source is the same as source" in r.stderr and "'b'" in r.stderr
    r = _cameras_cli("--config", str(path), "edit", "b", "--record-source", "")
    assert r.returncode == 0, r.stderr
    assert yaml.safe_load(path.read_text())["cameras"][0] == other  # removed; every other key kept


def test_the_web_edit_form_keeps_a_masked_record_source_and_an_emptied_one_removes_it():
    from pipeline.serve.web.routes_live import _form_patch

    cam = CameraConfig(
        id="a", source="rtsp://10.0.0.9/sub", record_source="rtsp://admin:hunter2@10.0.0.9/main"
    )
    shown = {"source": "rtsp://10.0.0.9/sub", "record_source": "rtsp://admin:***@10.0.0.9/main"}
    assert _form_patch(shown, cam) == {}  # the page showed it masked: sent back, nothing changes
    assert _form_patch({**shown, "record_source": ""}, cam) == {"record_source": None}
    new = "rtsp://admin:n3w@10.0.0.9/main2"
    assert _form_patch({**shown, "record_source": new}, cam) == {"record_source": new}


def test_run_with_a_bad_record_source_exits_2_naming_it_without_the_password():
    r = subprocess.run(
        [sys.executable, str(REPO / "run_pipeline.py"), "--source", "clip.mp4", "--record-source",
         "rtsp://admin:hunter2@127.0.0.1:9/main", "--no-web", "--duration", "1"],
        capture_output=True, text=True, timeout=120, cwd=REPO,
    )  # fmt: skip
    assert r.returncode == 2, r.stderr
    assert "record_source needs source and record_source to be live streams" in r.stderr
    assert "rtsp://admin:***@127.0.0.1:9/main" in r.stderr and "hunter2" not in r.stderr


# -- the clip writer's fallback when the main ring lost the moment ------------------------------------


def test_a_main_stream_clip_whose_packets_are_gone_is_cut_from_the_detect_ring_and_counted(tmp_path):
    """The route said "main", then the main stream reconnected (its ring starts over): the writer cuts the
    clip from the detect stream's ring instead, says so in the result, and counts the fallback."""
    from pipeline.config.clips import ClipsConfig
    from pipeline.core.metrics import MetricsRegistry
    from pipeline.core.queues import BoundedQueue
    from pipeline.core.types import Frame
    from pipeline.ingest.clip_writer import ClipRequest, ClipResult, ClipWriter
    from pipeline.ingest.decoder import DecoderStage
    from pipeline.ingest.packet_ring import PacketRing
    from pipeline.ingest.record_stream import RecordStream

    if not VTEST.is_file():
        pytest.skip("needs ../shared/data/videos/vtest.mp4")
    detect_ring = PacketRing("cam", max_s=120.0)
    q: BoundedQueue[Frame] = BoundedQueue(10_000, "block", "frames")
    dec = DecoderStage(
        CameraConfig(id="cam", source=str(VTEST)), q, lambda e: None, MetricsRegistry(), ring=detect_ring
    )
    dec.start()
    assert dec.join(60)
    metrics = MetricsRegistry()
    cam = CameraConfig(id="cam", source="rtsp://127.0.0.1:9/sub", record_source="rtsp://127.0.0.1:9/main")
    record = RecordStream(cam, PacketRing("cam"), metrics, detect_offset=lambda: 0.0, detect_size=lambda: SUB)
    clips = ClipsConfig(enabled=True, pre_s=1, post_s=1)
    results: list[tuple[ClipResult | None, str]] = []
    writer = ClipWriter(tmp_path / "clips", {"cam": detect_ring}, clips.for_camera, lambda e: None, metrics)
    writer.record_streams["cam"] = record
    writer.start()
    req = ClipRequest("cam", "cam/a.mp4", 20.0, 20.0, 1.0, 1.0, stream="main", offset=1.7e9,
                      on_written=lambda r, e: results.append((r, e)) or [])  # fmt: skip
    assert writer.request(req)
    assert writer.finish(30)
    ((result, error),) = results
    assert result is not None and not error
    assert result.stream == "detect" and (result.width, result.height) == SUB
    assert result.start_t <= 19.0 and result.end_t >= 21.0  # on the detect timeline, covering the moment
    assert record.fallbacks == 1
    assert 'vidpipe_clip_fallbacks_total{camera="cam"} 1.0' in metrics.prometheus_text()
    assert _clip_size(tmp_path / "clips" / "cam" / "a.mp4")[:2] == SUB


def test_a_substream_of_another_shape_is_scaled_per_axis_with_one_warning(caplog):
    from pipeline.core.metrics import MetricsRegistry
    from pipeline.ingest.packet_ring import PacketRing
    from pipeline.ingest.record_stream import RecordStream

    motorway = DATA / "videos" / "traffic_motorway.mp4"  # 1280x720: a 16:9 main stream
    if not motorway.is_file():
        pytest.skip("needs ../shared/data/videos/traffic_motorway.mp4")
    ring = PacketRing("cam")
    with av.open(str(motorway)) as c:
        ring.start_segment(c.streams.video[0])
    cam = CameraConfig(id="cam", source="rtsp://127.0.0.1:9/sub", record_source="rtsp://127.0.0.1:9/main")
    record = RecordStream(
        cam, ring, MetricsRegistry(), detect_offset=lambda: 0.0, detect_size=lambda: (640, 480)
    )
    with caplog.at_level("WARNING", logger="pipeline.ingest.record_stream"):
        scales = [record.scale() for _ in range(3)]
    assert scales[0] == BoxScale(2.0, 1.5) and scales.count(scales[0]) == 3
    warnings = [r.getMessage() for r in caplog.records if "aspect ratio" in r.getMessage()]
    assert len(warnings) == 1 and "640x480" in warnings[0] and "1280x720" in warnings[0]
