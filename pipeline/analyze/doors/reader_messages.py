"""Signed badge / PIN reader messages: the format, signing (for readers and integrators) and verification.

A reader publishes one JSON object per swipe or PIN entry on the door's second-factor Redis channel::

    {"v": 1, "reader": "badge-front-1", "door_id": "front", "person": "alice" | null,
     "ts": 1765100000.123, "nonce": "<32 hex>", "mac": "<64 hex>"}

``mac`` = hex HMAC-SHA256, with the reader's own key, over the canonical JSON (keys sorted, separators ``,``
``:``, UTF-8, no NaN) of every field but ``mac``. Why each field: ``reader`` picks the key (each reader has
its own, so a stolen key opens nothing but that reader's doors); ``door_id`` binds the message to one door;
``ts`` (the reader's clock, seconds since the epoch) makes it expire; ``nonce`` (random, 16-64 hex
characters) makes it single-use. Anyone who can publish to Redis but does not hold a reader's key can then
neither forge a message nor reuse one: unsigned, forged, unknown-reader, other-door, stale (older than the
door's ``max_age_s``), future (more than 2 s ahead), replayed (nonce seen) and pre-start (signed before this
listener started: the nonce cache does not survive a restart, so nothing older than the start is taken)
messages are refused, each with its reason, counted and logged.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import secrets
import time
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pipeline.analyze.doors.signing import canonical

VERSION = 1
_SIGNED = ("v", "reader", "door_id", "person", "ts", "nonce")
_NONCE = re.compile(r"^[0-9a-f]{16,64}$")


def reader_mac(key: bytes, msg: Mapping[str, Any]) -> str:
    return hmac.new(key, canonical({k: msg.get(k) for k in _SIGNED}), hashlib.sha256).hexdigest()


def sign_reader_message(
    key: bytes, reader: str, door_id: str, person: str | None = None, now: float | None = None
) -> dict[str, Any]:
    """A signed message as a reader sends it (``json.dumps`` it and publish it on the door's channel)."""
    msg: dict[str, Any] = {
        "v": VERSION,
        "reader": reader,
        "door_id": door_id,
        "person": person,
        "ts": round(time.time() if now is None else now, 6),
        "nonce": secrets.token_hex(16),
    }
    msg = json.loads(json.dumps(msg))  # the exact values a receiver parses
    msg["mac"] = reader_mac(key, msg)
    return msg


class ReaderMessageError(Exception):
    """A refused reader message; ``reason`` is the short name it is counted under."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason


@dataclass(frozen=True)
class DoorReaders:
    """The readers (id -> key) that may give one door its second factor, and how old a message may be."""

    keys: Mapping[str, bytes]
    max_age_s: float = 5.0


class ReaderVerifier:
    """Checks reader messages for a set of doors. Nonces are remembered for max age + skew (after that the
    age check alone refuses the message), bounded by ``max_nonces``."""

    def __init__(
        self,
        doors: Mapping[str, DoorReaders],
        not_before: float,
        max_skew_s: float = 2.0,
        max_nonces: int = 100_000,
    ) -> None:
        self.doors = dict(doors)
        self.not_before = not_before
        self.max_skew_s = max_skew_s
        self.max_nonces = max_nonces
        self._nonces: OrderedDict[str, float] = OrderedDict()
        self._horizon = max((d.max_age_s for d in self.doors.values()), default=5.0) + max_skew_s

    def verify(self, raw: str | bytes, now: float) -> tuple[str, str | None]:
        """(door id, person or None) of an accepted message; raises ReaderMessageError otherwise."""
        try:
            msg = json.loads(raw)
        except ValueError:
            raise ReaderMessageError("malformed", "not JSON") from None
        if not isinstance(msg, dict):
            raise ReaderMessageError("malformed", "not a JSON object")
        if "mac" not in msg:
            raise ReaderMessageError("unsigned", "no mac (reader messages must be signed: docs/doors.md)")
        reader, door_id, person, ts, nonce = (
            msg.get(k) for k in ("reader", "door_id", "person", "ts", "nonce")
        )
        if (
            msg.get("v") != VERSION
            or not isinstance(reader, str)
            or not isinstance(door_id, str)
            or not (person is None or isinstance(person, str))
            or not isinstance(ts, int | float)
            or isinstance(ts, bool)
            or not isinstance(nonce, str)
            or not _NONCE.match(nonce)
            or not isinstance(msg["mac"], str)
        ):
            raise ReaderMessageError(
                "malformed", f"fields v/reader/door_id/person/ts/nonce/mac: {msg!r:.200}"
            )
        key = self._key(door_id, reader)
        if key is None:
            other = next((d for d, r in self.doors.items() if reader in r.keys), None)
            if other is None:
                raise ReaderMessageError("unknown reader", f"reader {reader!r} is not configured")
            if hmac.compare_digest(reader_mac(self.doors[other].keys[reader], msg), msg["mac"]):
                raise ReaderMessageError(
                    "other door",
                    f"reader {reader!r} belongs to door {other!r}, the message names {door_id!r}",
                )
            raise ReaderMessageError("bad signature", f"reader {reader!r} (forged, or a wrong key)")
        if not hmac.compare_digest(reader_mac(key, msg), msg["mac"]):
            raise ReaderMessageError("bad signature", f"reader {reader!r} (forged, edited, or a wrong key)")
        age = now - float(ts)
        if age > self.doors[door_id].max_age_s:
            raise ReaderMessageError("stale", f"{age:.1f} s old > max_age_s {self.doors[door_id].max_age_s}")
        if age < -self.max_skew_s:
            raise ReaderMessageError("future", f"signed {-age:.1f} s ahead of this host's clock")
        if float(ts) < self.not_before:
            raise ReaderMessageError("replayed", "signed before this listener started")
        while self._nonces and next(iter(self._nonces.values())) < now - self._horizon:
            self._nonces.popitem(last=False)
        if nonce in self._nonces:
            raise ReaderMessageError("replayed", f"nonce already used (reader {reader!r})")
        if len(self._nonces) >= self.max_nonces:
            raise ReaderMessageError("flood", "nonce cache full; refusing until it drains")
        self._nonces[nonce] = now
        return door_id, person

    def _key(self, door_id: str, reader: str) -> bytes | None:
        door = self.doors.get(door_id)
        return None if door is None else door.keys.get(reader)
