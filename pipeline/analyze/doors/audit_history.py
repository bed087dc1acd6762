"""The checkpoint chain of a door audit log: the log's whole history, which no deletion can shorten unseen.

A log's own chain proves its lines were not edited, but not that the log is the only one there ever was:
delete the log together with its ``.checkpoints`` and a writer starting afresh makes a new, valid chain.
So the checkpoints are chained too. Each one carries

- ``cseq``: its number in the history (1, 2, 3, ... across every generation of the log, never restarting),
- ``prev``: the MAC of the checkpoint before it (64 zeros for the first),
- ``gen``: the log's generation (1 at first; an operator's audited reset, ``faces audit-reset``, closes a
  generation, archives its log as ``<log>.gen<N>`` and starts the next),
- ``path``: the log's absolute path when it was written (tells apart logs of the same name sharing a Redis),
- ``lines`` and ``head``: how many entries the generation's log had and the hash of the last one,
- ``reset`` (only on the first checkpoint of a generation after the first): who reset it, why, and what
  happened to the previous generation's log (``archived`` as a file, or ``missing``),

and a MAC (HMAC-SHA256, the audit key) over all of them. Copies live in ``<log>.checkpoints`` and in the
Redis stream ``{prefix}:stream:audit`` (``audit.checkpoint`` events). :func:`check_history` joins both copies
and fails on a gap in the numbers, a checkpoint that does not link to the one before, or two different
checkpoints with one number (a restarted chain). Checkpoints written before this format (no ``cseq``) are
"legacy": they still verify (MAC over ``log, lines, head, time``) and belong to generation 1.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.analyze.doors.signing import canonical

GENESIS = "0" * 64
CHECKPOINT_EVENT = "audit.checkpoint"
_LEGACY_FIELDS = ("log", "lines", "head", "time")


def checkpoints_path(path: str | Path) -> Path:
    p = Path(path)
    return p.with_name(p.name + ".checkpoints")


def generation_path(path: str | Path, gen: int) -> Path:
    """Where generation ``gen`` of a log lives once an audited reset has closed it."""
    p = Path(path)
    return p.with_name(f"{p.name}.gen{gen}")


def checkpoint_mac(key: bytes, cp: Mapping[str, Any]) -> str:
    """HMAC over every field but ``mac`` (legacy checkpoints, without ``cseq``: over log/lines/head/time)."""
    if "cseq" in cp:
        body = {k: v for k, v in cp.items() if k != "mac"}
    else:
        body = {k: cp.get(k) for k in _LEGACY_FIELDS}
    return hmac.new(key, canonical(body), hashlib.sha256).hexdigest()


def sign_checkpoint(key: bytes, cp: dict[str, Any]) -> dict[str, Any]:
    # round-trip through JSON so the signed floats are exactly what a reader parses
    cp = json.loads(json.dumps(cp))
    cp["mac"] = checkpoint_mac(key, cp)
    return cp


def iter_checkpoints(path: str | Path) -> Iterator[dict[str, Any]]:
    """The checkpoints kept beside a log, streamed (none if the side file does not exist). A line that is
    not a JSON object comes out as ``{"malformed": line number}`` so verification reports it."""
    try:
        fh = open(checkpoints_path(path), encoding="utf-8")  # noqa: SIM115
    except FileNotFoundError:
        return
    with fh:
        for i, line in enumerate(fh, 1):
            try:
                cp = json.loads(line)
            except ValueError:
                cp = None
            yield cp if isinstance(cp, dict) else {"malformed": i}


def read_checkpoints(path: str | Path) -> list[dict[str, Any]]:
    return list(iter_checkpoints(path))


def when(cp: Mapping[str, Any]) -> str:
    t = cp.get("time")
    if not isinstance(t, int | float):
        return "?"
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


def _int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


@dataclass
class History:
    """What the checkpoints of one log show. ``problems`` empty: the history is whole."""

    problems: list[str] = field(default_factory=list)
    chain: list[dict[str, Any]] = field(default_factory=list)  # checkpoints in cseq order (no legacy)
    legacy: list[dict[str, Any]] = field(default_factory=list)  # old-format checkpoints (generation 1)
    side: int = 0  # checkpoints read from the side file
    remote: int = 0  # checkpoints read from Redis

    @property
    def last(self) -> dict[str, Any] | None:
        return self.chain[-1] if self.chain else None

    @property
    def gen(self) -> int:
        """The current generation (1 when only legacy checkpoints or none exist)."""
        return int(self.chain[-1]["gen"]) if self.chain else 1

    def of_generation(self, gen: int) -> list[dict[str, Any]]:
        out = [cp for cp in self.chain if cp["gen"] == gen]
        return ([*self.legacy, *out]) if gen == 1 else out

    def generations(self) -> list[int]:
        gens = sorted({int(cp["gen"]) for cp in self.chain})
        return gens if gens or not self.legacy else [1]

    def closed_as(self, gen: int) -> str | None:
        """How the reset that closed ``gen`` found its log: "archived", "missing" (None: not closed)."""
        for cp in self.chain:
            if cp["gen"] == gen + 1 and isinstance(cp.get("reset"), dict):
                return str(cp["reset"].get("prior_log"))
        return None


def check_history(
    log_name: str, key: bytes, side: Iterable[Mapping[str, Any]], remote: Iterable[Mapping[str, Any]] = ()
) -> History:
    """Joins the side file's and Redis's checkpoints of log ``log_name`` into one history and checks it:
    every MAC, no two different checkpoints with one number, no gap, every link."""
    h = History()
    by_seq: dict[int, dict[str, Any]] = {}
    for source, cps in (("side file", side), ("Redis", remote)):
        for i, raw in enumerate(cps, 1):
            where = f"checkpoint {i}" + ("" if source == "side file" else " from Redis")
            if source == "side file":
                h.side += 1
            else:
                h.remote += 1
            if "malformed" in raw:
                h.problems.append(f"checkpoint {raw['malformed']}: not a valid checkpoint")
                continue
            cp = dict(raw)
            mac = cp.get("mac")
            if not isinstance(mac, str) or not hmac.compare_digest(mac, checkpoint_mac(key, cp)):
                h.problems.append(f"{where}: bad MAC (forged checkpoint, or a wrong audit key)")
                continue
            if cp.get("log") != log_name:
                h.problems.append(f"{where}: it is for log {cp.get('log')!r}")
                continue
            lines = cp.get("lines")
            if not isinstance(lines, int) or isinstance(lines, bool) or lines < 1:
                h.problems.append(f"{where}: bad line count {lines!r}")
                continue
            if "cseq" not in cp:
                if source == "side file":
                    h.legacy.append(cp)
                continue
            if not (_int(cp["cseq"]) and cp["cseq"] >= 1 and _int(cp.get("gen")) and cp["gen"] >= 1):
                h.problems.append(f"{where}: bad sequence or generation number")
                continue
            seen = by_seq.get(cp["cseq"])
            if seen is None:
                by_seq[cp["cseq"]] = cp
            elif seen["mac"] != cp["mac"]:
                h.problems.append(
                    f"restarted chain: two different checkpoints numbered {cp['cseq']} (generation "
                    f"{seen['gen']} entry {seen['lines']} signed at {when(seen)}, and generation {cp['gen']} "
                    f"entry {cp['lines']} signed at {when(cp)}): the history before one of them was "
                    "dropped (log deleted together with its .checkpoints?)"
                )
    h.chain = [by_seq[s] for s in sorted(by_seq)]
    if not h.chain:
        return h
    first = h.chain[0]
    if first["cseq"] != 1 and not isinstance(first.get("reset"), dict):
        h.problems.append(
            f"checkpoints 1-{first['cseq'] - 1} missing: neither the side file nor Redis holds the start of "
            "the history (cut)"
        )
    elif first["cseq"] == 1 and first.get("prev") != GENESIS:
        h.problems.append("checkpoint 1 does not start a history")
    for a, b in zip(h.chain, h.chain[1:], strict=False):
        if b["cseq"] != a["cseq"] + 1:
            h.problems.append(
                f"checkpoints {a['cseq'] + 1}-{b['cseq'] - 1} missing (between generation {a['gen']} entry "
                f"{a['lines']} signed at {when(a)} and generation {b['gen']} entry {b['lines']} signed at "
                f"{when(b)}): history dropped"
            )
        elif b.get("prev") != a["mac"]:
            h.problems.append(
                f"checkpoint {b['cseq']} does not follow checkpoint {a['cseq']} (spliced chain)"
            )
        elif b["gen"] == a["gen"]:
            if b["lines"] <= a["lines"] or isinstance(b.get("reset"), dict):
                h.problems.append(
                    f"checkpoint {b['cseq']}: generation {b['gen']} goes from {a['lines']} to {b['lines']} "
                    "entries (restarted chain)"
                )
        elif b["gen"] != a["gen"] + 1 or not isinstance(b.get("reset"), dict):
            h.problems.append(
                f"checkpoint {b['cseq']}: generation {a['gen']} -> {b['gen']} without an audited reset"
            )
    return h
