"""A real RTSP server for tests: GStreamer's gst-rtsp-server streaming an Annex-B H.264 file in a loop.

Run with Debian's /usr/bin/python3 (PyGObject / gi is installed there, not in the project venv)::

    /usr/bin/python3 tests/support/rtsp_server.py --file clip.h264 --port 8554 [--mount /test] [--fps 25]

It prints ``READY rtsp://127.0.0.1:PORT/MOUNT`` on stdout once the server socket is listening and exits
cleanly on SIGTERM/SIGINT. Each client gets its own pipeline that starts at the top of the file (so it
sees a keyframe at once); ``rtph264pay config-interval=1`` repeats SPS/PPS every second for late joiners.
"""

from __future__ import annotations

import argparse
import signal
import sys

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import GLib, Gst, GstRtspServer  # noqa: E402


def launch_line(path: str, fps: int) -> str:
    # multifilesrc re-reads the same file forever (loop=true); the caps tell h264parse the frame rate so it
    # can timestamp frames (continuously across loops), and the RTSP media paces them on the pipeline clock
    # like a live camera. h264parse only sets DTS on a raw stream; _copy_dts_to_pts fills in PTS.
    caps = f"video/x-h264,stream-format=byte-stream,framerate={fps}/1"
    location = path.replace("\\", "\\\\").replace('"', '\\"')
    return (
        f'( multifilesrc location="{location}" loop=true caps="{caps}" '
        f"! h264parse name=parse ! rtph264pay name=pay0 pt=96 config-interval=1 )"
    )


def _copy_dts_to_pts(_pad: Gst.Pad, info: Gst.PadProbeInfo) -> Gst.PadProbeReturn:
    # The clip has no B-frames, so presentation order is decode order and PTS == DTS. Without a PTS the
    # payloader stamps every RTP packet alike and nothing is paced.
    buf = info.get_buffer()
    if buf is not None and buf.pts == Gst.CLOCK_TIME_NONE:
        buf.pts = buf.dts
    return Gst.PadProbeReturn.OK


def _on_media_configure(_factory: GstRtspServer.RTSPMediaFactory, media: GstRtspServer.RTSPMedia) -> None:
    parse = media.get_element().get_by_name("parse")
    parse.get_static_pad("src").add_probe(Gst.PadProbeType.BUFFER, _copy_dts_to_pts)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--file", required=True, help="Annex-B .h264 elementary stream")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--mount", default="/test")
    parser.add_argument("--fps", type=int, default=25)
    args = parser.parse_args()

    Gst.init(None)
    server = GstRtspServer.RTSPServer()
    server.set_address(args.host)
    server.set_service(str(args.port))
    factory = GstRtspServer.RTSPMediaFactory()
    factory.set_launch(launch_line(args.file, args.fps))
    factory.set_shared(False)
    factory.connect("media-configure", _on_media_configure)
    server.get_mount_points().add_factory(args.mount, factory)
    if server.attach(None) == 0:
        print(f"ERROR cannot listen on {args.host}:{args.port}", flush=True)
        return 1

    loop = GLib.MainLoop()

    def _quit(*_a: object) -> bool:
        loop.quit()
        return False

    GLib.unix_signal_add(GLib.PRIORITY_HIGH, signal.SIGTERM, _quit)
    GLib.unix_signal_add(GLib.PRIORITY_HIGH, signal.SIGINT, _quit)
    print(f"READY rtsp://{args.host}:{args.port}{args.mount}", flush=True)
    loop.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
