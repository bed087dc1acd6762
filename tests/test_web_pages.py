"""Pages that tell the truth: the events timeline in event-time order across cameras and families, filters
that keep their values, door decisions by outcome, unknown faces only from door cameras (labelled)."""

from __future__ import annotations

import re
import time
from datetime import datetime

import cv2
import numpy as np
import redis as redis_lib

from pipeline.core.events import Event
from pipeline.deliver.redis_transport import stream_for
from tests.test_web_http import running  # noqa: F401 - the fixture: a pipeline with camera a, door front


def _page(web, path: str) -> str:  # noqa: ANN001
    _, sid = web.login()
    status, _, body = web.request("GET", path, headers={"Cookie": f"vidpipe_session={sid}"})
    assert status == 200, (path, status)
    return body.decode()


def test_the_timeline_is_in_event_time_order_across_cameras(start_web, running, redis_server):  # noqa: F811
    cfg, pipe = running
    web = start_web(cfg, pipe)
    client = redis_lib.Redis.from_url(redis_server.url)
    now = time.time()
    # published in this order (a lagging camera's events reach Redis late), happened in another
    published = [
        ("tracks", Event(type="tracks.new", camera_id="cam1", ts=now - 5, data={"label": "t-5"})),
        ("doors", Event(type="doors.decision", camera_id="cam2", ts=now - 1, data={"decision": "granted"})),
        ("tracks", Event(type="tracks.new", camera_id="cam2", ts=now - 9, data={"label": "t-9"})),
        ("faces", Event(type="faces.unknown", camera_id="cam1", ts=now - 3, data={})),
    ]
    for fam, ev in published:
        client.xadd(stream_for("vidpipe", fam), {"event": ev.to_json()})
    status, body = web.api("GET", f"/api/events?since={now - 60}")
    assert status == 200
    got = [(e["camera"], e["ts"]) for e in body["events"]]
    assert got == sorted(got, key=lambda t: -t[1]), got  # newest event first, whatever the stream order
    mine = [t for t in got if t[0] in ("cam1", "cam2")]
    assert mine == [("cam2", now - 1), ("cam1", now - 3), ("cam1", now - 5), ("cam2", now - 9)], mine
    # until: by event time (the late-published t-9 is in, t-1 is not)
    status, body = web.api("GET", f"/api/events?since={now - 60}&until={now - 4}")
    assert sorted(e["ts"] for e in body["events"] if e["camera"] != "a") == [now - 9, now - 5]
    client.close()


def test_filters_keep_their_values(start_web, running):  # noqa: F811
    cfg, pipe = running
    web = start_web(cfg, pipe)
    since, until = "2026-01-02T03:04:05", "2026-01-02T06:07:08"
    html = _page(web, f"/events?camera=a&type=tracks&label=car&since={since}&until={until}")
    assert f'name="since" type="datetime-local" step="1" value="{since}"' in html
    assert f'name="until" type="datetime-local" step="1" value="{until}"' in html
    assert 'value="tracks"' in html and 'value="car"' in html and "<option selected>a</option>" in html
    epoch = datetime.fromisoformat(since).timestamp()  # epoch seconds in the URL: shown as a local time
    assert f'value="{since}"' in _page(web, f"/events?since={epoch}")


def test_door_decisions_are_marked_by_outcome(start_web, running, redis_server):  # noqa: F811
    cfg, pipe = running
    web = start_web(cfg, pipe)
    client = redis_lib.Redis.from_url(redis_server.url)
    for decision in ("granted", "denied"):
        ev = Event(type="doors.decision", camera_id="a", data={"door_id": "front", "decision": decision})
        client.xadd(stream_for("vidpipe", "doors"), {"event": ev.to_json()})
    html = _page(web, "/doors")
    assert re.search(r'class="decision granted" data-decision="granted"', html)
    assert re.search(r'class="decision denied" data-decision="denied"', html)
    client.close()


def test_unknown_faces_come_only_from_door_cameras_and_name_their_camera(start_web, running, tmp_path):  # noqa: F811
    cfg, pipe = running
    crops = tmp_path / "crops"
    crops.mkdir()
    img = np.full((64, 64, 3), 128, np.uint8)
    for name in ("a_12_0_1700000000000.jpg", "car_park_7_0_1700000000001.jpg"):
        cv2.imwrite(str(crops / name), img)
    faces = cfg.faces.model_copy(
        update={"unknown_crops": cfg.faces.unknown_crops.model_copy(update={"dir": str(crops)})}
    )
    web = start_web(cfg, pipe, faces=faces)  # door front watches camera a only
    html = _page(web, "/faces")
    assert "a_12_0_1700000000000.jpg" in html and 'data-crop-camera="a"' in html
    assert "car_park_7_0" not in html
    assert "Unknown faces at door cameras" in html


def test_liveness_off_as_the_docs_write_it_parses() -> None:
    import yaml

    from pipeline.config.schema import parse_config

    raw = yaml.safe_load(
        "cameras: [{id: d, source: x.mp4}]\nfaces: {enabled: true}\n"
        "doors:\n  - id: front\n    cameras: [d]\n    secret: 0123456789abcdef01234567\n    liveness: off\n"
    )
    assert raw["doors"][0]["liveness"] is False  # what YAML hands over
    assert parse_config(raw).doors[0].liveness == "off"
