"""Sign a badge / PIN reader message (and optionally publish it): what a reader integration sends.

    READER_KEY=... python -m pipeline.doors.reader --reader badge-front-1 --door front \
        --key-env READER_KEY [--person alice] [--publish redis://127.0.0.1:6379/0 --channel badges]

Prints the signed JSON message (one line). With ``--publish`` it is also published on ``--channel``; the
exit status is 0 only when it was. The format is in docs/doors.md ("Second factor") and
``pipeline/analyze/doors/reader_messages.py``: an integrator in another language signs the same canonical JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from pipeline.analyze.doors.reader_messages import sign_reader_message


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m pipeline.doors.reader", description=__doc__.split("\n")[0])
    p.add_argument(
        "--reader", required=True, help="this reader's id (as in the door's second_factor.readers)"
    )
    p.add_argument("--door", required=True, help="door id the message is for")
    p.add_argument("--person", help="badge holder's enrolled name (omit for a PIN pad)")
    key = p.add_mutually_exclusive_group(required=True)
    key.add_argument("--key-env", help="environment variable holding the reader's key")
    key.add_argument("--key-file", help="file holding the reader's key")
    p.add_argument("--publish", metavar="REDIS_URL", help="also publish it (redis:// URL)")
    p.add_argument("--channel", help="channel to publish on (the door's second_factor.channel)")
    args = p.parse_args(argv)
    if args.key_env:
        value = os.environ.get(args.key_env, "")
        if not value:
            print(f"error: environment variable {args.key_env} is not set or empty", file=sys.stderr)
            return 2
    else:
        try:
            value = Path(args.key_file).read_text(encoding="utf-8").strip()
        except OSError as exc:
            print(f"error: cannot read key file {args.key_file}: {exc.strerror}", file=sys.stderr)
            return 2
    if len(value) < 16:
        print("error: the reader key must be at least 16 characters", file=sys.stderr)
        return 2
    if args.publish and not args.channel:
        print("error: --publish needs --channel", file=sys.stderr)
        return 2
    msg = json.dumps(sign_reader_message(value.encode(), args.reader, args.door, args.person))
    print(msg, flush=True)
    if args.publish:
        import redis

        from pipeline.core.sources import redact_url

        try:
            client = redis.Redis.from_url(args.publish, socket_timeout=5, socket_connect_timeout=5)
            receivers = client.publish(args.channel, msg)
            client.close()
        except redis.RedisError as exc:
            print(f"error: cannot publish to {redact_url(args.publish)}: {exc}", file=sys.stderr)
            return 1
        print(f"published on {args.channel} ({receivers} listener(s))", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
