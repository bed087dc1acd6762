"""Reference door controller: subscribes to door decisions and opens only for verified, fresh grants.

    python -m pipeline.doors.controller --door front --redis redis://127.0.0.1:6379/0 \
        --secret-env DOOR_FRONT_SECRET [--state var/doors/front.counter] [--prefix vidpipe] [--max-age 5] \
        [--hook 'relay-on 3']

Every message is checked (HMAC signature with the door's key, door id, age, nonce not seen before, and
the signed per-door counter above the last one accepted, which ``--state`` keeps across restarts) and
only a ``granted`` decision that passes opens the door: the hook command is run (argv, no shell) with
VIDPIPE_DOOR and VIDPIPE_PERSON in its environment, or a line is printed. Anything else is logged and
ignored, so a forged, edited, replayed or stale event never opens it.
"""

from __future__ import annotations

import argparse
import logging
import os
import shlex
import subprocess
import sys
import time
from collections.abc import Callable

import redis

from pipeline.analyze.doors.signing import CounterStore, Verifier, VerifyError
from pipeline.core.events import Event

log = logging.getLogger("pipeline.doors.controller")


class DoorController:
    def __init__(
        self,
        door_id: str,
        key: bytes,
        open_door: Callable[[Event], None],
        max_age_s: float = 5.0,
        counters: CounterStore | None = None,
    ) -> None:
        self.door_id = door_id
        self.verifier = Verifier(door_id, key, max_age_s=max_age_s, counters=counters)
        self.open_door = open_door
        self.opened = 0
        self.rejected = 0

    def handle(self, raw: str | bytes, now: float | None = None) -> tuple[bool, str]:
        """(opened, why). Never raises on bad input."""
        try:
            event = Event.from_json(raw)
        except ValueError:
            self.rejected += 1
            return False, "not an event"
        if event.type != "doors.decision" or event.data.get("door_id") != self.door_id:
            return False, "not for this door"
        try:
            event = self.verifier.verify(event, now=now)
        except VerifyError as exc:
            self.rejected += 1
            log.warning("door %s: rejected event %s: %s", self.door_id, event.event_id, exc)
            return False, str(exc)
        if event.data.get("decision") != "granted":
            return False, f"decision {event.data.get('decision')}: {event.data.get('reason')}"
        self.open_door(event)
        self.opened += 1
        return True, f"opened for {event.data.get('person')}"

    def run(
        self, client: redis.Redis, prefix: str = "vidpipe", stop: Callable[[], bool] = lambda: False
    ) -> None:
        """Listen on ``{prefix}:doors:*`` (pub/sub: live decisions only; a missed one is not replayed)."""
        pubsub = client.pubsub(ignore_subscribe_messages=True)
        pubsub.psubscribe(f"{prefix}:doors:*")
        try:
            while not stop():
                msg = pubsub.get_message(timeout=0.5)
                if msg and msg.get("type") == "pmessage":
                    self.handle(msg["data"])
        finally:
            pubsub.close()


def hook_opener(door_id: str, hook: str | None) -> Callable[[Event], None]:
    argv = shlex.split(hook) if hook else None

    def open_door(event: Event) -> None:
        person = str(event.data.get("person"))
        if argv is None:
            print(f"OPEN door={door_id} person={person} event={event.event_id}", flush=True)
            return
        env = {
            **os.environ,
            "VIDPIPE_DOOR": door_id,
            "VIDPIPE_PERSON": person,
            "VIDPIPE_EVENT_ID": event.event_id,
        }
        rc = subprocess.run(argv, env=env, timeout=30, check=False).returncode
        if rc:
            log.error("door %s: hook %s exited with %d", door_id, argv[0], rc)

    return open_door


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m pipeline.doors.controller", description=__doc__.split("\n")[0]
    )
    p.add_argument("--door", required=True)
    p.add_argument("--redis", required=True, help="redis:// URL")
    p.add_argument("--secret-env", required=True, help="environment variable holding the door's HMAC key")
    p.add_argument("--prefix", default="vidpipe")
    p.add_argument("--max-age", type=float, default=5.0, help="reject events signed longer ago than this (s)")
    p.add_argument("--hook", help="command run to open the door (default: print a line)")
    p.add_argument(
        "--state",
        help="file keeping the last accepted counter across restarts (default: var/doors/DOOR.counter)",
    )
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    key = os.environ.get(args.secret_env, "")
    if not key:
        print(f"error: environment variable {args.secret_env} is not set or empty", file=sys.stderr)
        return 2
    try:
        counters = CounterStore(args.state or f"var/doors/{args.door}.counter", args.door)
    except VerifyError as exc:
        print(f"error: door {args.door}: {exc}", file=sys.stderr)
        return 2
    ctl = DoorController(
        args.door, key.encode(), hook_opener(args.door, args.hook), max_age_s=args.max_age, counters=counters
    )
    client = redis.Redis.from_url(args.redis, decode_responses=True)
    while True:
        try:
            ctl.run(client, args.prefix)
        except KeyboardInterrupt:
            return 0
        except redis.RedisError as exc:
            log.error("door %s: Redis error (%s); retrying in 2 s", args.door, exc)
            time.sleep(2)


if __name__ == "__main__":
    sys.exit(main())
