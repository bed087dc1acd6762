"""MQTT transport (paho-mqtt): the events JSON (identical to Redis's) on topics Home Assistant and Frigate users
know, QoS 1, a retained availability topic with a last will.

Topics (``P`` = ``sinks.mqtt.topic_prefix``, default ``vidpipe``):
  * ``P/<camera>/<family>/<kind>`` for an event of type ``<family>.<kind>``, e.g. ``vidpipe/front/tracks/new``,
    ``vidpipe/door1/doors/decision``; process-wide events use the camera level ``_pipeline``.
  * ``P/available``: ``online`` (retained) while connected, ``offline`` on a clean stop and, as the broker's
    last will, when the connection dies.

Delivery is at least once: a batch is done when every message has its PUBACK; a batch cut off by an outage
is re-sent from the spool, so a subscriber may see an event twice (de-duplicate by ``event_id``). paho's own
reconnect and resend are off (``reconnect_on_failure=False``; a fresh client per connection), so the spool is
the only replay and order is kept.
"""

from __future__ import annotations

import logging
import ssl
import threading
import time
import uuid
from collections.abc import Sequence
from typing import Any
from urllib.parse import unquote, urlsplit

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from pipeline.config.sinks import MqttConfig
from pipeline.core.events import Event
from pipeline.core.sources import redact_url
from pipeline.deliver.base import Transport
from pipeline.deliver.spool import SpoolRecord

log = logging.getLogger(__name__)

PROCESS_CAMERA = "_pipeline"  # the camera topic level of process-wide events (camera_id "")


class MqttError(ConnectionError):
    """The broker is unreachable, refused us, or did not acknowledge in time. The message says which."""


def topic_for(prefix: str, event: Event) -> str:
    kind = event.type.replace(".", "/")
    return f"{prefix}/{event.camera_id or PROCESS_CAMERA}/{kind}"


def availability_topic(prefix: str) -> str:
    return f"{prefix}/available"


class MqttTransport(Transport):
    name = "mqtt"
    title = "MQTT broker"
    errors = (OSError,)  # MqttError, refused/reset connections, DNS failures, TLS errors

    def __init__(self, config: MqttConfig) -> None:
        self.config = config
        self.target = redact_url(config.url)
        parts = urlsplit(config.url)
        self.tls = parts.scheme == "mqtts"
        self.host = parts.hostname or ""
        self.port = parts.port or (8883 if self.tls else 1883)
        self.username = unquote(parts.username) if parts.username else None
        self.password = unquote(parts.password) if parts.password else None
        self.prefix = config.topic_prefix
        self.client_id = config.client_id or f"vidpipe-{self.prefix}-{uuid.uuid4().hex[:8]}"
        self._client: mqtt.Client | None = None
        self._lost = threading.Event()
        self._connack = threading.Event()
        self._connack_code: Any = None

    def addresses(self, event: Event) -> tuple[str, str]:
        return "", topic_for(self.prefix, event)

    # -- Transport -------------------------------------------------------------------------------------

    def send(self, records: Sequence[SpoolRecord], *, replay: bool) -> int:
        client = self._client if self._client is not None and not self._lost.is_set() else self._connect()
        infos = []
        for r in records:
            info = client.publish(r.channel, r.event_json, qos=self.config.qos)
            if info.rc != mqtt.MQTT_ERR_SUCCESS:
                raise MqttError(
                    f"MQTT broker at {self.target}: publish failed ({mqtt.error_string(info.rc)})"
                )
            infos.append(info)
        deadline = time.monotonic() + self.config.publish_timeout_s
        for info in infos:
            while not info.is_published():
                if self._lost.is_set():
                    raise MqttError(f"MQTT broker at {self.target} closed the connection")
                if time.monotonic() > deadline:
                    raise MqttError(
                        f"MQTT broker at {self.target} did not acknowledge within "
                        f"sinks.mqtt.publish_timeout_s={self.config.publish_timeout_s}s"
                    )
                try:
                    info.wait_for_publish(0.05)
                except (RuntimeError, ValueError) as exc:
                    raise MqttError(f"MQTT broker at {self.target}: {exc}") from None
        return len(records)

    def recover(self) -> None:
        self._connect()

    def failed(self, exc: BaseException, in_flight: Sequence[SpoolRecord]) -> str:
        self._teardown()
        if isinstance(exc, MqttError):
            return str(exc)
        return f"MQTT broker at {self.target} is unreachable ({type(exc).__name__}: {exc})"

    def close(self) -> None:
        client = self._client
        if client is not None and not self._lost.is_set():
            try:
                info = client.publish(availability_topic(self.prefix), "offline", qos=1, retain=True)
                info.wait_for_publish(2.0)
            except (RuntimeError, ValueError) as exc:
                log.debug("mqtt: offline notice not sent: %s", exc)
        self._teardown()

    # -- connection ------------------------------------------------------------------------------------

    def _connect(self) -> mqtt.Client:
        """A fresh client per connection: nothing paho queued for an old one is ever resent behind our back."""
        self._teardown()
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=self.client_id,
            clean_session=True,
            reconnect_on_failure=False,
        )
        client.connect_timeout = self.config.connect_timeout_s
        client.max_inflight_messages_set(max(20, min(self.config.batch_size, 1000)))
        if self.username is not None:
            client.username_pw_set(self.username, self.password)
        if self.tls:
            client.tls_set(ca_certs=self.config.ca_file, cert_reqs=ssl.CERT_REQUIRED)
            client.tls_insecure_set(self.config.tls_insecure)
        client.will_set(availability_topic(self.prefix), "offline", qos=1, retain=True)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        self._lost.clear()
        self._connack.clear()
        self._connack_code = None
        client.connect(self.host, self.port, keepalive=self.config.keepalive_s)
        client.loop_start()
        self._client = client
        if not self._connack.wait(self.config.connect_timeout_s):
            raise MqttError(
                f"MQTT broker at {self.target} did not answer CONNECT within {client.connect_timeout}s"
            )
        code = self._connack_code
        if code is not None and getattr(code, "is_failure", False):
            what = (
                "refused the credentials in sinks.mqtt.url"
                if "authori" in str(code).lower()
                else "refused us"
            )
            raise MqttError(f"MQTT broker at {self.target} {what} ({code})")
        client.publish(availability_topic(self.prefix), "online", qos=1, retain=True)
        return client

    def _teardown(self) -> None:
        client, self._client = self._client, None
        if client is None:
            return
        client.on_disconnect = None
        try:
            client.disconnect()
        finally:
            client.loop_stop()

    def _on_connect(self, _client: mqtt.Client, _userdata: Any, _flags: Any, code: Any, _props: Any) -> None:
        self._connack_code = code
        self._connack.set()

    def _on_disconnect(
        self, _client: mqtt.Client, _userdata: Any, _flags: Any, code: Any, _props: Any
    ) -> None:
        self._lost.set()
        self._connack.set()
        if self._connack_code is None:
            self._connack_code = code
