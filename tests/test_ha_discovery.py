"""Home Assistant MQTT discovery (issue 22) against a real Mosquitto: retained discovery configs for a camera,
a zone and a door, checked against Home Assistant's documented discovery schema, and their state topics
changing while a real video of pedestrians (YOLOX-Nano, tracking, a zone) and a door camera (MTCNN + dlib
ResNet, an enrolled face) run through the whole pipeline.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import av
import cv2
import numpy as np
import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from skimage import data

from engines.model_store import get_model_path
from pipeline.analyze.faces.enroll import FaceEngine, enroll_images
from pipeline.analyze.faces.gallery import Gallery
from pipeline.config.faces import FacesConfig
from pipeline.config.schema import parse_config
from pipeline.config.sinks import MqttConfig
from pipeline.core.events import Event
from pipeline.deliver.ha_discovery import HaSite, HomeAssistantTransport
from pipeline.run.runner import Pipeline
from tests.test_clips import _door_video

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
SECRET = "front-door-secret-for-the-ha-test"

# Home Assistant's MQTT discovery: the keys each component needs, and the keys every entity may carry.
REQUIRED = {"binary_sensor": {"state_topic"}, "sensor": {"state_topic"}, "camera": {"topic"}}
COMMON = {"name", "unique_id", "device", "origin", "availability", "qos", "icon"}
ALLOWED = {
    "binary_sensor": COMMON | {"state_topic", "device_class", "payload_on", "payload_off"},
    "sensor": COMMON | {"state_topic", "state_class", "unit_of_measurement"},
    "camera": COMMON | {"topic", "image_encoding"},
}
DEVICE_KEYS = {"identifiers", "name", "manufacturer", "model", "sw_version"}


class Recorder:
    def __init__(self, port: int, *topics: str) -> None:
        self.messages: list[tuple[str, bytes, bool]] = []
        self.lock = threading.Lock()
        self.ready = threading.Event()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"rec-{time.monotonic_ns()}")
        self.client.on_connect = lambda c, *_: c.subscribe([(t, 1) for t in topics])
        self.client.on_subscribe = lambda *_: self.ready.set()
        self.client.on_message = self._on
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        assert self.ready.wait(10)

    def _on(self, _c: Any, _u: Any, msg: mqtt.MQTTMessage) -> None:
        with self.lock:
            self.messages.append((msg.topic, msg.payload, bool(msg.retain)))

    def values(self, topic: str) -> list[bytes]:
        with self.lock:
            return [p for t, p, _ in self.messages if t == topic]

    def latest(self) -> dict[str, bytes]:
        with self.lock:
            return {t: p for t, p, _ in self.messages}

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def retained(port: int, *topics: str, settle_s: float = 1.0) -> dict[str, bytes]:
    """What a client connecting now (a Home Assistant starting) gets from the broker: retained messages."""
    rec = Recorder(port, *topics)
    time.sleep(settle_s)
    rec.close()
    with rec.lock:
        assert all(r for _, _, r in rec.messages)
        return {t: p for t, p, _ in rec.messages}


def check_discovery(topic: str, payload: dict[str, Any]) -> str:
    """Validate one discovery config as Home Assistant would; return its component."""
    parts = topic.split("/")
    assert len(parts) == 5 and parts[0] == "homeassistant" and parts[4] == "config", topic
    component, node, object_id = parts[1:4]
    assert component in REQUIRED, topic
    assert all(c.isalnum() or c in "_-" for c in node + object_id), topic
    assert REQUIRED[component] <= payload.keys(), (topic, payload.keys())
    assert payload.keys() <= ALLOWED[component], (topic, payload.keys() - ALLOWED[component])
    assert payload["device"]["identifiers"] and payload["device"].keys() <= DEVICE_KEYS
    assert payload["availability"] == [
        {"topic": "vidpipe/available", "payload_available": "online", "payload_not_available": "offline"}
    ]
    assert payload["origin"]["name"] == "vidpipe"
    if component == "binary_sensor":
        assert payload["device_class"] == "occupancy" and (payload["payload_on"], payload["payload_off"]) == (
            "ON",
            "OFF",
        )
    return component


def _street_clip(path: Path, frames: int = 200) -> Path:
    """The first ``frames`` frames of the shared pedestrian video, stream-copied (no re-encoding)."""
    with av.open(str(DATA / "videos" / "vtest.mp4")) as src, av.open(str(path), "w") as dst:
        s = src.streams.video[0]
        o = dst.add_stream_from_template(s)
        for i, pkt in enumerate(src.demux(s)):
            if i >= frames:
                break
            if pkt.dts is None:
                continue
            pkt.stream = o
            dst.mux(pkt)
    return path


@pytest.mark.skipif(not (DATA / "videos" / "vtest.mp4").is_file(), reason="needs ../shared/data")
def test_discovery_configs_are_valid_and_states_follow_a_person_entering_a_zone_and_the_door(
    mosquitto, redis_server, tmp_path, monkeypatch
):
    monkeypatch.setenv("FRONT_SECRET", SECRET)
    engine = FaceEngine.from_config(FacesConfig())
    gallery = tmp_path / "faces.sqlite"
    faces = {"enabled": True, "gallery_path": str(gallery), "detector_min_face_px": 40}
    with Gallery(gallery) as g:
        ast = cv2.cvtColor(data.astronaut(), cv2.COLOR_RGB2BGR)
        assert enroll_images(g, engine, FacesConfig(**faces), "eileen", [("astronaut.png", ast)]).accepted
    street = _street_clip(tmp_path / "street.mp4")
    door = _door_video(tmp_path / "door.mp4")
    cfg = parse_config(
        {
            "cameras": [
                {
                    "id": "street",
                    "source": str(street),
                    "detect_fps": 5,
                    "analytics": {
                        "zones": {
                            "walkway": {
                                "points": [[0, 0.45], [1, 0.45], [1, 1], [0, 1]],
                                "normalized": True,
                                "inertia": 2,
                            }
                        }
                    },
                },
                {"id": "door", "source": str(door), "detect_fps": 5},
            ],  # fmt: skip
            "detector": {
                "model": str(get_model_path("yolox-nano")),
                "layout": "yolox",
                "score_threshold": 0.3,
                "classes": ["person"],
            },  # fmt: skip
            "redis": {"url": redis_server.url, "spool_path": str(tmp_path / "spool.sqlite")},
            "tracking": {"enabled": True, "min_hits": 2, "default_filter": {"threshold": 0.3}},
            "faces": faces,
            "doors": [
                {
                    "id": "front",
                    "cameras": ["door"],
                    "allow_people": ["eileen"],
                    "k_frames": 3,
                    "window_s": 60,
                    "cooldown_s": 600,
                    "min_face_px": 50,
                    "max_frame_age_s": 600,
                    "liveness": "off",
                    "secret_env": "FRONT_SECRET",
                    "audit_log": str(tmp_path / "front.jsonl"),
                },
            ],  # fmt: skip
            "sinks": {
                "mqtt": {
                    "url": mosquitto.url(),
                    "spool_path": str(tmp_path / "spool-mqtt.sqlite"),
                    "home_assistant": {"enabled": True, "classes": ["person", "car"]},
                }
            },
        }
    )
    rec = Recorder(mosquitto.port, "homeassistant/#", "vidpipe/ha/#", "vidpipe/available")
    events: list[Event] = []
    pipe = Pipeline(cfg, var_dir=tmp_path / "var", event_sinks=[events.append]).start()
    try:
        assert pipe.wait(300), "the pipeline did not finish its two file cameras"
    finally:
        pipe.stop()
        pipe.join(20)
        rec.close()

    # 1. retained, valid discovery configs: a camera, a zone, a door, and the camera (snapshot) entity
    configs = {t: json.loads(p) for t, p in retained(mosquitto.port, "homeassistant/#").items() if p}
    by_id = {}
    for topic, payload in configs.items():
        check_discovery(topic, payload)
        by_id[payload["unique_id"]] = (topic, payload)
    assert len(by_id) == len(configs)  # unique ids are unique
    cam = by_id["vidpipe_street_occupancy"]
    zone = by_id["vidpipe_street_walkway_occupancy"]
    zone_count = by_id["vidpipe_street_walkway_person_count"]
    decision = by_id["vidpipe_door_front_decision"]
    person = by_id["vidpipe_door_front_person"]
    snap = by_id["vidpipe_street_snapshot"]
    assert cam[0] == "homeassistant/binary_sensor/vidpipe/street_occupancy/config"
    assert zone[0] == "homeassistant/binary_sensor/vidpipe/street_walkway_occupancy/config"
    assert decision[0] == "homeassistant/sensor/vidpipe/door_front_decision/config"
    assert snap[0] == "homeassistant/camera/vidpipe/street_snapshot/config"
    assert cam[1]["device"]["identifiers"] == zone[1]["device"]["identifiers"]  # one device per camera
    assert decision[1]["device"]["identifiers"] != cam[1]["device"]["identifiers"]
    assert "vidpipe/available" in rec.latest()  # availability: the event sink's retained topic

    # 2. the states changed as the person entered: OFF -> ON, 0 -> 1+, none -> granted / eileen
    zone_states = [v.decode() for v in rec.values(zone[1]["state_topic"])]
    assert zone_states[0] == "OFF" and "ON" in zone_states, zone_states
    counts = [int(v) for v in rec.values(zone_count[1]["state_topic"])]
    assert counts[0] == 0 and max(counts) >= 1, counts
    cam_states = [v.decode() for v in rec.values(cam[1]["state_topic"])]
    assert "ON" in cam_states and cam_states[-1] == "OFF"  # the file ended: nobody is counted any more
    assert [v.decode() for v in rec.values(decision[1]["state_topic"])][:1] == ["none"]
    assert "granted" in [v.decode() for v in rec.values(decision[1]["state_topic"])]
    assert "eileen" in [v.decode() for v in rec.values(person[1]["state_topic"])]
    jpeg = rec.latest()[snap[1]["topic"]]
    assert (
        jpeg[:2] == b"\xff\xd8" and cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR) is not None
    )
    # the states a Home Assistant starting now would see are retained as well
    states = retained(mosquitto.port, "vidpipe/ha/#")
    # (the last decision: denied, when the door camera's file ended: a lost camera fails closed)
    assert states[decision[1]["state_topic"]] == rec.values(decision[1]["state_topic"])[-1] == b"denied"
    assert states[zone[1]["state_topic"]] == b"OFF" and snap[1]["topic"] in states
    granted = [e for e in events if e.type == "doors.decision" and e.data["decision"] == "granted"]
    assert [e.data["person"] for e in granted] == ["eileen"]


def test_removed_cameras_remove_their_entities(mosquitto):
    cfg = MqttConfig(url=mosquitto.url(), home_assistant={"enabled": True, "classes": ["person"]})
    first = HomeAssistantTransport(cfg, HaSite({"a": ["z1"], "b": []}, ["front"], ["person"]))
    first.send([], replay=False)  # it connects with the first events
    try:
        deadline = time.monotonic() + 10
        while not first.is_connected() and time.monotonic() < deadline:
            time.sleep(0.05)
        first.observe(Event(type="status.camera", camera_id="a", data={"status": "removed"}))
    finally:
        first.close()
    live = {t for t, p in retained(mosquitto.port, "homeassistant/#").items() if p}
    assert any("/b_" in t for t in live) and any("door_front" in t for t in live)
    assert not any("/a_" in t for t in live), live  # removed at run time: empty retained configs

    # a restart whose configuration no longer has camera b: its retained configs are cleared too
    second = HomeAssistantTransport(cfg, HaSite({"c": []}, ["front"], ["person"]))
    second.send([], replay=False)
    try:
        deadline = time.monotonic() + 10
        while not second.is_connected() and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(1.0)  # the broker hands over the retained configs; stale ones are cleared
    finally:
        second.close()
    live = {t for t, p in retained(mosquitto.port, "homeassistant/#").items() if p}
    assert not any("/b_" in t for t in live) and any("/c_" in t for t in live), live
    assert any("door_front" in t for t in live)
