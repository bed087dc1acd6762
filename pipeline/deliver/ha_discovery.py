"""Home Assistant MQTT discovery: vidpipe's cameras, zones and doors appear in Home Assistant by themselves.

With ``sinks.mqtt.home_assistant.enabled``, this sink (its own delivery stage, fed the pipeline's events)
keeps one MQTT connection and publishes, retained:

* discovery configs on ``<discovery_prefix>/<component>/<node_id>/<object_id>/config`` (Home Assistant's
  MQTT discovery layout), each with a ``unique_id``, a ``device`` (one per camera, one per door), an
  ``origin``, and availability from the retained ``<topic_prefix>/available`` the MQTT event sink keeps
  (``online``, and ``offline`` as its last will);
* entity states under ``<topic_prefix>/ha/...`` (plain values, not events; they change when events do):

  ============================================  ===========================  =================================
  entity                                        component                    state topic
  ============================================  ===========================  =================================
  camera occupied                               binary_sensor (occupancy)    ``P/ha/<cam>/occupancy`` ON/OFF
  camera count of <class>                       sensor (measurement)         ``P/ha/<cam>/<class>/count``
  zone occupied                                 binary_sensor (occupancy)    ``P/ha/<cam>/zones/<zone>/occupancy``
  zone count of <class>                         sensor (measurement)         ``P/ha/<cam>/zones/<zone>/<class>/count``
  door last decision / last person              sensor                       ``P/ha/doors/<door>/decision|person``
  camera snapshot (latest annotated snapshot)   camera                       ``P/ha/<cam>/snapshot`` (JPEG bytes)
  ============================================  ===========================  =================================

Occupancy follows the tracker: an object counts from ``tracks.new`` until ``tracks.end``; it is in a zone
from ``tracks.zone_enter`` to ``tracks.zone_exit``. A camera that ends, fails or is removed counts nothing.

Removed cameras remove their entities: a ``status.camera`` event with status ``removed`` clears its configs
(an empty retained payload), and at every connection the retained configs under this node id that the
current configuration no longer has (a camera deleted from the YAML) are cleared too. When Home Assistant
announces itself (``<discovery_prefix>/status`` = ``online``) every config and state is sent again.

paho keeps the connection (its own reconnect); on every (re)connect everything is published again, so
nothing is spooled: entity states are "latest wins".
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import ssl
import threading
import time
import uuid
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

import pipeline
from pipeline.config.sinks import MqttConfig
from pipeline.core.events import Event
from pipeline.core.sources import redact_url
from pipeline.deliver.base import Transport
from pipeline.deliver.mqtt import availability_topic
from pipeline.deliver.spool import SpoolRecord

log = logging.getLogger(__name__)

_UNSAFE = re.compile(r"[^A-Za-z0-9_-]+")
_GONE = ("ended", "failed", "removed")


def slug(text: str) -> str:
    """An MQTT discovery object id / node id part: letters, digits, '_' and '-' only."""
    return _UNSAFE.sub("_", text).strip("_") or "_"


@dataclass
class HaSite:
    """What gets entities: cameras with their zone names, doors, and the classes counted."""

    cameras: dict[str, list[str]] = field(default_factory=dict)  # camera id -> zone names
    doors: list[str] = field(default_factory=list)
    classes: list[str] = field(default_factory=lambda: ["person"])


@dataclass
class _Obj:
    label: str
    zones: set[str] = field(default_factory=set)


class HomeAssistantTransport(Transport):
    name = "home-assistant"
    title = "MQTT broker (Home Assistant discovery)"
    errors = ()  # never "away": paho reconnects by itself and everything is re-sent on connect

    def __init__(self, config: MqttConfig, site: HaSite) -> None:
        self.config = config
        self.ha = config.home_assistant
        self.site = HaSite(dict(site.cameras), list(site.doors), list(site.classes))
        self.prefix = config.topic_prefix
        self.node = self.ha.node_id or slug(self.prefix)
        self.dp = self.ha.discovery_prefix
        self.target = redact_url(config.url)
        self._lock = threading.RLock()
        self._objects: dict[str, dict[str, _Obj]] = {cam: {} for cam in self.site.cameras}
        self._states: dict[str, str | bytes] = {}  # topic -> last value (re-sent on every connect)
        self._snapshots: dict[str, tuple[str, float]] = {}  # camera -> (path, mtime) last sent
        self._client = self._make_client()
        self._connected = threading.Event()
        self._inflight: deque[mqtt.MQTTMessageInfo] = deque(maxlen=10_000)  # awaited (bounded) at close
        for cam in self.site.cameras:
            self._recount(cam)
        for door in self.site.doors:
            self._states[self._door_topic(door, "decision")] = "none"
            self._states[self._door_topic(door, "person")] = "none"
        self._started = False

    def _start(self) -> None:
        """Connect on the first events (not when the pipeline is built: a build that fails leaves no thread)."""
        if self._started:
            return
        self._started = True
        parts = urlsplit(self.config.url)
        port = parts.port or (8883 if parts.scheme == "mqtts" else 1883)
        self._client.connect_async(parts.hostname or "", port, keepalive=self.config.keepalive_s)
        self._client.loop_start()

    # -- topics and configs ----------------------------------------------------------------------------

    def state_topic(self, *parts: str) -> str:
        return "/".join([self.prefix, "ha", *parts])

    def _door_topic(self, door: str, what: str) -> str:
        return self.state_topic("doors", door, what)

    def config_topic(self, component: str, object_id: str) -> str:
        return f"{self.dp}/{component}/{self.node}/{slug(object_id)}/config"

    def _base(self, unique: str, name: str, device: dict[str, Any]) -> dict[str, Any]:
        return {
            "name": name,
            "unique_id": f"{self.node}_{slug(unique)}",
            "device": device,
            "origin": {"name": "vidpipe", "sw_version": pipeline.__version__},
            "availability": [
                {
                    "topic": availability_topic(self.prefix),
                    "payload_available": "online",
                    "payload_not_available": "offline",
                }
            ],
            "qos": 1,
        }

    def _camera_device(self, cam: str) -> dict[str, Any]:
        return {
            "identifiers": [f"{self.node}_camera_{slug(cam)}"],
            "name": f"vidpipe {cam}",
            "manufacturer": "vidpipe",
            "model": "camera",
            "sw_version": pipeline.__version__,
        }

    def camera_configs(self, cam: str) -> dict[str, dict[str, Any]]:
        """config topic -> payload for one camera: occupancy, counts, zones, snapshot."""
        dev = self._camera_device(cam)
        out: dict[str, dict[str, Any]] = {}

        def occupancy(oid: str, name: str, topic: str) -> None:
            out[self.config_topic("binary_sensor", oid)] = {
                **self._base(oid, name, dev),
                "device_class": "occupancy",
                "state_topic": topic,
                "payload_on": "ON",
                "payload_off": "OFF",
            }

        def count(oid: str, name: str, topic: str) -> None:
            out[self.config_topic("sensor", oid)] = {
                **self._base(oid, name, dev),
                "state_topic": topic,
                "state_class": "measurement",
                "icon": "mdi:counter",
            }

        occupancy(f"{cam}_occupancy", "Occupancy", self.state_topic(cam, "occupancy"))
        for cls in self.site.classes:
            count(f"{cam}_{cls}_count", f"{cls} count", self.state_topic(cam, cls, "count"))
        for zone in self.site.cameras.get(cam, []):
            occupancy(
                f"{cam}_{zone}_occupancy",
                f"{zone} occupancy",
                self.state_topic(cam, "zones", zone, "occupancy"),
            )
            for cls in self.site.classes:
                count(f"{cam}_{zone}_{cls}_count", f"{zone} {cls} count",
                      self.state_topic(cam, "zones", zone, cls, "count"))  # fmt: skip
        oid = f"{cam}_snapshot"
        out[self.config_topic("camera", oid)] = {
            **self._base(oid, "Snapshot", dev),
            "topic": self.state_topic(cam, "snapshot"),
        }
        return out

    def door_configs(self, door: str) -> dict[str, dict[str, Any]]:
        dev = {
            "identifiers": [f"{self.node}_door_{slug(door)}"],
            "name": f"vidpipe door {door}",
            "manufacturer": "vidpipe",
            "model": "door",
            "sw_version": pipeline.__version__,
        }
        out = {}
        for what, name, icon in (
            ("decision", "Last decision", "mdi:door"),
            ("person", "Last person", "mdi:account"),
        ):
            oid = f"door_{door}_{what}"
            out[self.config_topic("sensor", oid)] = {
                **self._base(oid, name, dev),
                "state_topic": self._door_topic(door, what),
                "icon": icon,
            }
        return out

    def all_configs(self) -> dict[str, dict[str, Any]]:
        with self._lock:
            out: dict[str, dict[str, Any]] = {}
            for cam in self.site.cameras:
                out.update(self.camera_configs(cam))
            for door in self.site.doors:
                out.update(self.door_configs(door))
            return out

    # -- Transport ------------------------------------------------------------------------------------

    def send(self, records: Sequence[SpoolRecord], *, replay: bool) -> int:
        self._start()
        for r in records:
            try:
                self.observe(Event.from_json(r.event_json))
            except Exception:  # noqa: BLE001 - one odd event must not stop the entity states
                log.exception("home assistant: event %s not applied", r.event_id)
        return len(records)

    def recover(self) -> None:
        return None

    def failed(self, exc: BaseException, in_flight: Sequence[SpoolRecord]) -> str:
        return f"Home Assistant discovery: {exc}"

    def close(self) -> None:
        """At shutdown: give a connection that is still coming up its connect timeout, then wait (bounded)
        for the broker to acknowledge what was published, so the final states are not lost."""
        if not self._started:
            return
        self._connected.wait(self.config.connect_timeout_s)
        deadline = time.monotonic() + self.config.publish_timeout_s
        with self._lock:
            pending = list(self._inflight)
        for info in pending:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            with contextlib.suppress(RuntimeError, ValueError):
                info.wait_for_publish(left)
        self._client.disconnect()
        self._client.loop_stop()

    # -- events -> states ------------------------------------------------------------------------------

    def observe(self, ev: Event) -> None:
        cam = ev.camera_id
        with self._lock:
            if ev.type == "doors.decision":
                door = str(ev.data.get("door_id", ""))
                if door in self.site.doors:
                    self._set(self._door_topic(door, "decision"), str(ev.data.get("decision") or "none"))
                    self._set(self._door_topic(door, "person"), str(ev.data.get("person") or "none"))
                return
            if ev.type == "status.camera":
                self._camera_status(cam, str(ev.data.get("status", "")))
                return
            if not ev.type.startswith("tracks.") or cam not in self.site.cameras:
                return
            objects = self._objects.setdefault(cam, {})
            oid = str(ev.data.get("object_id", ""))
            if ev.type == "tracks.end":
                objects.pop(oid, None)
            elif ev.type in ("tracks.new", "tracks.update"):
                obj = objects.setdefault(oid, _Obj(str(ev.data.get("label", ""))))
                obj.label = str(ev.data.get("label", obj.label))
                if isinstance(ev.data.get("zones"), list):
                    obj.zones = {str(z) for z in ev.data["zones"]}
            elif ev.type == "tracks.zone_enter" and oid in objects:
                objects[oid].zones.add(str(ev.data.get("zone")))
            elif ev.type == "tracks.zone_exit" and oid in objects:
                objects[oid].zones.discard(str(ev.data.get("zone")))
            self._recount(cam, publish=True)
            snap = ev.data.get("snapshot")
            if isinstance(snap, str) and snap:
                self._snapshot(cam, Path(snap))

    def _camera_status(self, cam: str, status: str) -> None:
        if status == "removed":
            self._remove_camera(cam)
        elif status in _GONE and cam in self.site.cameras:
            self._objects[cam] = {}
            self._recount(cam, publish=True)
        elif status == "online" and cam and cam not in self.site.cameras:  # added at run time
            self.site.cameras[cam] = []
            self._objects[cam] = {}
            self._recount(cam, publish=True)
            for topic, payload in self.camera_configs(cam).items():
                self._publish(topic, json.dumps(payload))

    def _remove_camera(self, cam: str) -> None:
        if cam not in self.site.cameras:
            return
        topics = list(self.camera_configs(cam))
        del self.site.cameras[cam]
        self._objects.pop(cam, None)
        prefix = self.state_topic(cam) + "/"
        for t in [t for t in self._states if t.startswith(prefix)]:
            del self._states[t]
        for topic in topics:
            self._publish(topic, "")  # an empty retained config removes the entity
        log.info("home assistant: camera %s removed (%d entities)", cam, len(topics))

    def _recount(self, cam: str, publish: bool = False) -> None:
        objects = self._objects.get(cam, {}).values()
        values: dict[str, str] = {self.state_topic(cam, "occupancy"): "ON" if objects else "OFF"}
        for cls in self.site.classes:
            values[self.state_topic(cam, cls, "count")] = str(sum(o.label == cls for o in objects))
        for zone in self.site.cameras.get(cam, []):
            inside = [o for o in objects if zone in o.zones]
            values[self.state_topic(cam, "zones", zone, "occupancy")] = "ON" if inside else "OFF"
            for cls in self.site.classes:
                values[self.state_topic(cam, "zones", zone, cls, "count")] = str(
                    sum(o.label == cls for o in inside)
                )
        for topic, value in values.items():
            if publish:
                self._set(topic, value)
            else:
                self._states[topic] = value

    def _snapshot(self, cam: str, path: Path) -> None:
        try:
            st = path.stat()
            if (
                self._snapshots.get(cam) == (str(path), st.st_mtime)
                or st.st_size > self.ha.snapshot_max_kb * 1024
            ):
                return
            image = path.read_bytes()
        except OSError:
            return
        self._snapshots[cam] = (str(path), st.st_mtime)
        self._set(self.state_topic(cam, "snapshot"), image)

    def _set(self, topic: str, value: str | bytes) -> None:
        if self._states.get(topic) == value:
            return
        self._states[topic] = value
        self._publish(topic, value)

    def _publish(self, topic: str, payload: str | bytes) -> None:
        if self._connected.is_set():
            self._inflight.append(self._client.publish(topic, payload, qos=1, retain=True))
        # not connected: on_connect sends every config and the latest states

    # -- connection ------------------------------------------------------------------------------------

    def _make_client(self) -> mqtt.Client:
        cfg = self.config
        parts = urlsplit(cfg.url)
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=f"{cfg.client_id or 'vidpipe-' + slug(self.prefix)}-ha-{uuid.uuid4().hex[:6]}",
            clean_session=True,
        )
        client.connect_timeout = cfg.connect_timeout_s
        client.max_queued_messages_set(10_000)  # bounded: a long outage re-sends everything on connect anyway
        client.reconnect_delay_set(1, 30)
        if parts.username is not None:
            client.username_pw_set(
                unquote(parts.username), unquote(parts.password) if parts.password else None
            )
        if parts.scheme == "mqtts":
            client.tls_set(ca_certs=cfg.ca_file, cert_reqs=ssl.CERT_REQUIRED)
            client.tls_insecure_set(cfg.tls_insecure)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        return client

    def _on_connect(self, client: mqtt.Client, _u: Any, _f: Any, code: Any, _p: Any) -> None:
        if getattr(code, "is_failure", False):
            log.warning("home assistant: MQTT broker at %s refused us (%s)", self.target, code)
            return
        self._connected.set()
        if self.ha.remove_stale:
            client.subscribe(f"{self.dp}/+/{self.node}/+/config", qos=1)  # retained configs: stale ones go
        client.subscribe(f"{self.dp}/status", qos=1)  # Home Assistant's birth message
        self._publish_all()
        log.info("home assistant: discovery under %s/…/%s on %s", self.dp, self.node, self.target)

    def _on_disconnect(self, _c: mqtt.Client, _u: Any, _f: Any, _code: Any, _p: Any) -> None:
        self._connected.clear()

    def _on_message(self, client: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        if msg.topic == f"{self.dp}/status":
            if msg.payload == b"online":
                self._publish_all()
            return
        if msg.payload and msg.topic not in self.all_configs():
            log.info("home assistant: removing stale entity %s", msg.topic)
            client.publish(msg.topic, "", qos=1, retain=True)

    def _publish_all(self) -> None:
        with self._lock:
            for topic, payload in self.all_configs().items():
                self._inflight.append(self._client.publish(topic, json.dumps(payload), qos=1, retain=True))
            for topic, value in self._states.items():
                self._inflight.append(self._client.publish(topic, value, qos=1, retain=True))

    def is_connected(self) -> bool:
        return self._connected.is_set()


def site_from(cameras: Sequence[Any], doors: Sequence[Any], classes: Sequence[str]) -> HaSite:
    """The entities of a config: ``cameras`` (CameraConfig: id, analytics.zones), ``doors`` (DoorConfig)."""
    return HaSite(
        {c.id: sorted(c.analytics.zones) for c in cameras},
        [d.id for d in doors],
        list(classes),
    )
