"""HMAC-SHA256 signatures on door events, and their verification (signature, freshness, replay).

``data.signature`` = ``{"alg": "HMAC-SHA256", "door_id", "signed_at", "nonce", "counter", "mac"}``. The
MAC is taken over the canonical JSON (sorted keys, no spaces, UTF-8) of ``{"type", "event_id", "camera_id",
"ts", "frame_seq", "data" (without "signature"), "signature" (without "mac")}``, so it covers everything a
door acts on, plus the signing time, a random 128-bit nonce and a per-door counter. See docs/doors.md.

Why a counter as well as a nonce: a nonce cache lives in the receiver's memory, so a controller restart
forgets it and a captured grant could be replayed within its max age. The counter strictly increases per
door (microseconds of the signing clock, bumped past the last one issued, so it keeps increasing across a
pipeline restart too); a receiver that persists the last counter it accepted (``CounterStore``) refuses any
event at or below it, which also refuses a delayed (reordered) older event once a newer one was accepted.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
import threading
import time
from collections import OrderedDict
from pathlib import Path
from typing import Any

from pipeline.core.events import Event

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


_SIG_FIELDS = ("alg", "door_id", "signed_at", "nonce", "counter")
_counters: dict[str, int] = {}  # door id -> last counter issued by this process (one signer per door)
_counters_lock = threading.Lock()


def next_counter(door_id: str) -> int:
    """The door's next counter: wall-clock microseconds, or one more than the last issued if that is not
    larger (several events in one microsecond, or the clock stepped back). Taken from the real clock, not
    the ``now`` a caller passes, so test clocks cannot lower it."""
    with _counters_lock:
        value = max(time.time_ns() // 1000, _counters.get(door_id, 0) + 1)
        _counters[door_id] = value
        return value


def sign_event(event: Event, door_id: str, key: bytes, now: float | None = None) -> Event:
    """Returns a signed copy of ``event`` (``data.signature`` added)."""
    sig = {
        "alg": ALG,
        "door_id": door_id,
        "signed_at": time.time() if now is None else now,
        "nonce": secrets.token_hex(16),
        "counter": next_counter(door_id),
    }
    # round-trip through JSON so the signed floats are exactly what a receiver parses
    event = Event.from_json(event.to_json())
    sig = json.loads(json.dumps(sig))
    mac = hmac.new(key, _signed_bytes(event, sig), hashlib.sha256).hexdigest()
    event.data["signature"] = {**sig, "mac": mac}
    return event


class VerifyError(Exception):
    """Why a door event is not to be trusted (bad signature, stale, replayed, malformed)."""


class CounterStore:
    """The last counter a door controller accepted, kept in a small JSON file that survives restarts.

    Written to a temporary file, fsynced and renamed over the old one (then the directory fsynced), so a
    crash leaves the old or the new value, never a torn one. An unreadable file is an error: starting from
    zero would accept every replay, so the controller refuses to start instead (fail closed).
    """

    def __init__(self, path: str | Path, door_id: str) -> None:
        self.path = Path(path)
        self.door_id = door_id
        self.last = 0
        self.meta: dict[str, Any] = {}  # other facts kept with the counter (how the state was initialised)
        if self.path.exists():
            try:
                state = json.loads(self.path.read_text(encoding="utf-8"))
                if state.get("door_id") != door_id:
                    raise ValueError(f"it belongs to door {state.get('door_id')!r}, not {door_id!r}")
                self.last = int(state["counter"])
                self.meta = {k: v for k, v in state.items() if k not in ("door_id", "counter")}
            except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
                raise VerifyError(
                    f"replay state {self.path} is unreadable ({exc}); refusing to start without it"
                ) from None

    def advance(self, counter: int) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".tmp")
        with open(tmp, "w", encoding="utf-8") as fh:
            json.dump({**self.meta, "door_id": self.door_id, "counter": counter}, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self.path)
        dir_fd = os.open(self.path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
        self.last = counter


class Verifier:
    """Checks signature, door, age, nonce and (with a ``CounterStore``) the per-door counter.

    A nonce is remembered for ``max_age_s`` (+ skew), the only time an event carrying it could pass the age
    check, so the cache is bounded by the event rate. The nonce cache is lost on restart; the counter store
    is not, and it also refuses events older than the newest one accepted (reordering)."""

    def __init__(
        self,
        door_id: str,
        key: bytes,
        max_age_s: float = 5.0,
        max_skew_s: float = 2.0,
        max_nonces: int = 100_000,
        counters: CounterStore | None = None,
    ) -> None:
        self.door_id = door_id
        self._key = key
        self.max_age_s = float(max_age_s)
        self.max_skew_s = float(max_skew_s)
        self.max_nonces = int(max_nonces)
        self.counters = counters
        self._nonces: OrderedDict[str, float] = OrderedDict()
        self._lock = threading.Lock()

    def verify(self, raw: str | bytes | Event, now: float | None = None) -> Event:
        now = time.time() if now is None else now
        try:
            event = raw if isinstance(raw, Event) else Event.from_json(raw)
        except ValueError as exc:
            raise VerifyError(f"not a valid event: {str(exc).splitlines()[0]}") from None
        sig = event.data.get("signature")
        if not isinstance(sig, dict) or not {*_SIG_FIELDS, "mac"} <= sig.keys():
            raise VerifyError("unsigned or malformed signature")
        if sig["alg"] != ALG:
            raise VerifyError(f"unsupported signature algorithm {sig['alg']!r}")
        fields = {k: sig[k] for k in _SIG_FIELDS}
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
        counter = sig["counter"]
        if not isinstance(counter, int) or isinstance(counter, bool) or counter <= 0:
            raise VerifyError("malformed signature counter")
        with self._lock:
            if self.counters is not None and counter <= self.counters.last:
                raise VerifyError(
                    f"replayed or reordered event (counter {counter} is not above the last accepted, "
                    f"{self.counters.last})"
                )
            horizon = now - self.max_age_s - self.max_skew_s
            while self._nonces and next(iter(self._nonces.values())) < horizon:
                self._nonces.popitem(last=False)
            if sig["nonce"] in self._nonces:
                raise VerifyError("replayed event (nonce already seen)")
            if len(self._nonces) >= self.max_nonces:
                raise VerifyError("nonce cache full; refusing until it drains (flood?)")
            self._nonces[sig["nonce"]] = max(signed_at, horizon)
            if self.counters is not None:
                try:
                    self.counters.advance(counter)  # persisted before the caller may act on the event
                except OSError as exc:  # a replay could pass after a restart: do not act on it
                    raise VerifyError(f"cannot persist replay state {self.counters.path}: {exc}") from None
        return event
