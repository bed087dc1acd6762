"""An operator's audited reset of a door audit log: the only way to start a new generation of its chain.

The writer refuses to start a new chain over a log whose history (side file, Redis) shows entries it cannot
find, and over a damaged log. When the loss is real (a disk died, a log was wiped), the operator records it:
the current log, if any, is archived as ``<log>.gen<N>`` (kept: ``verify-audit`` still checks it, unless it was
damaged), the new generation's log starts with an ``audit.reset`` entry (who, why, what was found), and its
first checkpoint carries the same ``reset`` facts, continues the checkpoint chain and goes to Redis. So the
reset itself is in the keyed history, and cannot be used to hide a deletion: the lost generation stays
visible as "missing when an operator reset it", with the operator's name and reason.

A history whose checkpoint chain is itself broken (a restarted or forked chain, forged checkpoints) is not
reset: that is evidence of tampering, and it stays where ``verify-audit`` reports it.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.analyze.doors.audit import AuditError, _hash, verify_log
from pipeline.analyze.doors.audit_history import (
    GENESIS,
    check_history,
    checkpoints_path,
    generation_path,
    iter_checkpoints,
    sign_checkpoint,
)

RESET_RECORD = "audit.reset"


@dataclass(frozen=True)
class ResetResult:
    checkpoint: dict[str, Any]  # the new generation's first checkpoint (publish it)
    prior_gen: int
    prior_log: str  # "archived" | "damaged" | "missing"
    archived_as: Path | None
    problem: str  # what was wrong with the prior log ("" when it was whole)


def reset_log(
    path: str | Path, key: bytes, *, by: str, reason: str, remote: Iterable[Mapping[str, Any]] = ()
) -> ResetResult:
    """Closes the current generation of the log at ``path`` and starts the next (see the module docstring).
    Raises AuditError when there is nothing to reset or the checkpoint chain itself is broken. The pipeline
    must not be writing this log meanwhile (stop it first)."""
    path = Path(path)
    if not reason.strip():
        raise AuditError("a reset needs a --reason")
    hist = check_history(path.name, key, iter_checkpoints(path), remote)
    if hist.problems:
        raise AuditError(
            f"the checkpoint history of {path} is broken ({'; '.join(hist.problems)}); that is evidence, "
            "not something a reset may paper over: keep it, and start a log under a new name if needed"
        )
    gen = hist.gen
    archived = generation_path(path, gen)
    if not path.exists() and not hist.chain and not hist.legacy:
        raise AuditError(f"nothing to reset: {path} does not exist and no checkpoint shows any history")
    if path.exists() and archived.exists():
        raise AuditError(f"{archived} already exists; move it away first (it must not be overwritten)")
    source = path if path.exists() else archived if archived.exists() else None  # an interrupted reset
    if source is None:
        prior, problem, lines, head = "missing", "no such file", 0, GENESIS
    else:
        ok, lines, head, problem = verify_log(source, key, hist.of_generation(gen), log_name=path.name)
        prior = "archived" if ok else "damaged"
        if source == path:
            os.replace(path, archived)
    reset = {
        "by": by,
        "reason": reason,
        "prior_gen": gen,
        "prior_log": prior,
        "prior_lines": lines,
        "prior_head": head,
        "problem": problem,
    }
    record = {"type": RESET_RECORD, "ts": time.time(), **reset}
    first = _hash(key, GENESIS, record, 1)
    with open(path, "x", encoding="utf-8") as fh:
        fh.write(
            json.dumps({"seq": 1, "prev": GENESIS, "record": record, "hash": first}, sort_keys=True) + "\n"
        )
        fh.flush()
        os.fsync(fh.fileno())
    cp = sign_checkpoint(
        key,
        {
            "log": path.name,
            "path": str(path.resolve()),
            "gen": gen + 1,
            "cseq": int(hist.last["cseq"]) + 1 if hist.last else 1,
            "prev": str(hist.last["mac"]) if hist.last else GENESIS,
            "lines": 1,
            "head": first,
            "time": time.time(),
            "reset": reset,
        },
    )
    with open(checkpoints_path(path), "a", encoding="utf-8") as fh:
        fh.write(json.dumps(cp, sort_keys=True) + "\n")
        fh.flush()
        os.fsync(fh.fileno())
    return ResetResult(cp, gen, prior, archived if source is not None else None, problem)
