"""Reference door controller: subscribes to door decisions and opens only for verified, fresh grants.

    python -m pipeline.doors.controller --door front --redis redis://127.0.0.1:6379/0 \
        --secret-env DOOR_FRONT_SECRET [--var-dir /var/lib/vidpipe | --state FILE] [--init-state] \
        [--prefix vidpipe] [--max-age 5] [--hook 'relay-on 3']

Every message is checked (HMAC signature with the door's key, door id, age, nonce not seen before, and
the signed per-door counter above the last one accepted, which ``--state`` keeps across restarts) and
only a ``granted`` decision that passes opens the door: the hook command is run (argv, no shell) with
VIDPIPE_DOOR and VIDPIPE_PERSON in its environment, or a line is printed. Anything else is logged and
ignored, so a forged, edited, replayed or stale event never opens it.

The state file (default ``<var dir>/doors/DOOR.counter``, an absolute path whatever the working directory; the
var dir is ``--var-dir``, else ``$VIDPIPE_VAR_DIR``, else ``$XDG_STATE_HOME/vidpipe`` or
``~/.local/state/vidpipe``) must exist: without it every grant captured within ``--max-age`` could be
replayed. A first start, or a start after the state was lost, needs ``--init-state``, which is logged loudly
and recorded in the file; it sets the counter to this host's clock plus the allowed skew, so any grant signed
before it (by a pipeline whose clock is not further ahead than the skew the freshness check allows anyway)
is still refused.
"""

from __future__ import annotations

import argparse
import getpass
import logging
import os
import shlex
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path

import redis

from pipeline.analyze.doors.signing import CounterStore, Verifier, VerifyError
from pipeline.core.events import Event

log = logging.getLogger("pipeline.doors.controller")
_MAX_SKEW_S = 2.0  # the Verifier's default: events signed further ahead of this host's clock are refused


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


def default_var_dir(environ: Mapping[str, str] | None = None) -> Path:
    """``$VIDPIPE_VAR_DIR``, else ``$XDG_STATE_HOME/vidpipe``, else ``~/.local/state/vidpipe`` (absolute)."""
    env = os.environ if environ is None else environ
    if env.get("VIDPIPE_VAR_DIR"):
        return Path(env["VIDPIPE_VAR_DIR"]).expanduser().absolute()
    state_home = env.get("XDG_STATE_HOME") or str(Path(env.get("HOME") or Path.home()) / ".local" / "state")
    return (Path(state_home).expanduser() / "vidpipe").absolute()


def open_state(path: Path, door_id: str, init: bool, max_skew_s: float) -> CounterStore:
    """The door's replay state. Missing: VerifyError unless ``init`` (then created, loudly; see the module
    docstring for why the counter starts at this host's clock plus ``max_skew_s``)."""
    if not init:
        if not path.exists():
            raise VerifyError(
                f"no replay state at {path}: refusing to start (a grant captured within --max-age could be "
                "replayed). First start, or the state was lost: start once with --init-state (logged), or "
                "pass the right --state / --var-dir"
            )
        return CounterStore(path, door_id)
    if path.exists():
        raise VerifyError(
            f"--init-state: {path} exists; it keeps the last accepted counter, not replacing it"
        )
    store = CounterStore(path, door_id)
    counter = time.time_ns() // 1000 + int(max_skew_s * 1_000_000)
    by = os.environ.get("SUDO_USER") or getpass.getuser()
    store.meta = {"initialized_at": time.time(), "initialized_by": by, "initialized_counter": counter}
    store.advance(counter)
    log.warning(
        "door %s: INIT-STATE by %s: new replay state %s with counter %d (this host's clock + %.1f s): grants "
        "signed before now are refused; if the state was lost rather than new, find out why",
        door_id,
        by,
        path,
        counter,
        max_skew_s,
    )
    return store


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
        help="file keeping the last accepted counter across restarts (default: VAR_DIR/doors/DOOR.counter)",
    )
    p.add_argument(
        "--var-dir",
        help="where the default state lives (default: $VIDPIPE_VAR_DIR, else ~/.local/state/vidpipe)",
    )
    p.add_argument(
        "--init-state",
        action="store_true",
        help="create a missing state file (first start; logged loudly and recorded in the file)",
    )
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    key = os.environ.get(args.secret_env, "")
    if not key:
        print(f"error: environment variable {args.secret_env} is not set or empty", file=sys.stderr)
        return 2
    var_dir = Path(args.var_dir).expanduser().absolute() if args.var_dir else default_var_dir()
    state = (
        Path(args.state).expanduser().absolute() if args.state else var_dir / "doors" / f"{args.door}.counter"
    )
    try:
        counters = open_state(state, args.door, args.init_state, _MAX_SKEW_S)
    except VerifyError as exc:
        print(f"error: door {args.door}: {exc}", file=sys.stderr)
        return 2
    log.info("door %s: replay state %s (last accepted counter %d)", args.door, state, counters.last)
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
