"""HMAC-SHA256 signatures on door events, and their verification (signature, freshness, replay).

``data.signature`` = ``{"alg": "HMAC-SHA256", "door_id", "signed_at", "nonce", "mac"}``. The MAC is taken
over the canonical JSON (sorted keys, no spaces, UTF-8) of ``{"type", "event_id", "camera_id", "ts",
"frame_seq", "data" (without "signature"), "signature" (without "mac")}``, so it covers everything a door
acts on, plus the signing time and a random 128-bit nonce. See docs/doors.md.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import threading
import time
from collections import OrderedDict
from typing import Any

from pipeline.events import Event

ALG = "HMAC-SHA256"


def canonical(obj: Any) -> bytes:
    return json.dumps(
        obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode()


def _signed_bytes(event: Event, sig_fields: dict[str, Any]) -> bytes:
    data = {k: v for k, v in event.data.items() if k != "signature"}
    return canonical(
        {
            "type": event.type,
            "event_id": event.event_id,
            "camera_id": event.camera_id,
            "ts": event.ts,
            "frame_seq": event.frame_seq,
            "data": data,
            "signature": sig_fields,
        }
    )


def sign_event(event: Event, door_id: str, key: bytes, now: float | None = None) -> Event:
    """Adds ``data.signature`` (in place) and returns the event."""
    sig = {
        "alg": ALG,
        "door_id": door_id,
        "signed_at": time.time() if now is None else now,
        "nonce": secrets.token_hex(16),
    }
    # round-trip through JSON so the signed floats are exactly what a receiver parses
    event = Event.from_json(event.to_json())
    sig = json.loads(json.dumps(sig))
    mac = hmac.new(key, _signed_bytes(event, sig), hashlib.sha256).hexdigest()
    event.data["signature"] = {**sig, "mac": mac}
    return event


class VerifyError(Exception):
    """Why a door event is not to be trusted (bad signature, stale, replayed, malformed)."""


class Verifier:
    """Checks signature, door, age and nonce. A nonce is remembered for ``max_age_s`` (+ skew), the only
    time an event carrying it could pass the age check, so the cache is bounded by the event rate."""

    def __init__(
        self,
        door_id: str,
        key: bytes,
        max_age_s: float = 5.0,
        max_skew_s: float = 2.0,
        max_nonces: int = 100_000,
    ) -> None:
        self.door_id = door_id
        self._key = key
        self.max_age_s = float(max_age_s)
        self.max_skew_s = float(max_skew_s)
        self.max_nonces = int(max_nonces)
        self._nonces: OrderedDict[str, float] = OrderedDict()
        self._lock = threading.Lock()

    def verify(self, raw: str | bytes | Event, now: float | None = None) -> Event:
        now = time.time() if now is None else now
        try:
            event = raw if isinstance(raw, Event) else Event.from_json(raw)
        except ValueError as exc:
            raise VerifyError(f"not a valid event: {str(exc).splitlines()[0]}") from None
        sig = event.data.get("signature")
        if not isinstance(sig, dict) or not {"alg", "door_id", "signed_at", "nonce", "mac"} <= sig.keys():
            raise VerifyError("unsigned or malformed signature")
        if sig["alg"] != ALG:
            raise VerifyError(f"unsupported signature algorithm {sig['alg']!r}")
        fields = {k: sig[k] for k in ("alg", "door_id", "signed_at", "nonce")}
        try:
            expected = hmac.new(self._key, _signed_bytes(event, fields), hashlib.sha256).hexdigest()
        except (TypeError, ValueError):
            raise VerifyError("event cannot be canonicalised") from None
        if not isinstance(sig["mac"], str) or not hmac.compare_digest(expected, sig["mac"]):
            raise VerifyError("bad signature (tampered event or wrong key)")
        if sig["door_id"] != self.door_id or event.data.get("door_id") != self.door_id:
            raise VerifyError(f"event is for door {sig['door_id']!r}, not {self.door_id!r}")
        signed_at = float(sig["signed_at"])
        age = now - signed_at
        if age > self.max_age_s:
            raise VerifyError(f"stale event ({age:.1f} s old > {self.max_age_s} s)")
        if age < -self.max_skew_s:
            raise VerifyError(f"event from the future ({-age:.1f} s ahead)")
        with self._lock:
            horizon = now - self.max_age_s - self.max_skew_s
            while self._nonces and next(iter(self._nonces.values())) < horizon:
                self._nonces.popitem(last=False)
            if sig["nonce"] in self._nonces:
                raise VerifyError("replayed event (nonce already seen)")
            if len(self._nonces) >= self.max_nonces:
                raise VerifyError("nonce cache full; refusing until it drains (flood?)")
            self._nonces[sig["nonce"]] = max(signed_at, horizon)
        return event
