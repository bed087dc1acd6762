"""Runtime files are private to the user who runs vidpipe.

The var dir holds face templates (``faces.sqlite``), audit logs, event spools (events name people and
doors), track snapshots and the local Redis password. ``use_private_files`` makes everything this process
creates from now on 0600 (dirs 0700) with a umask of 077, makes the var dir 0700, and tightens files an
earlier version left group- or world-readable (the var dir's own files, and configured paths outside it).
"""

from __future__ import annotations

import contextlib
import logging
import os
import stat
from collections.abc import Iterable
from pathlib import Path

log = logging.getLogger("vidpipe")

PRIVATE_UMASK = 0o077
_SIDE_SUFFIXES = ("", "-wal", "-shm", "-journal", ".lock")  # SQLite's companion files, the spool lock


def _tighten(path: Path, mode: int) -> bool:
    """chmod ``path`` to ``mode`` if it is ours and looser; True if it changed."""
    try:
        st = path.lstat()
    except OSError:
        return False
    if stat.S_ISLNK(st.st_mode) or st.st_uid != os.getuid() or not (st.st_mode & 0o077):
        return False
    with contextlib.suppress(OSError):
        path.chmod(mode)
        return True
    return False


def use_private_files(var_dir: Path, files: Iterable[str | Path | None] = ()) -> None:
    """umask 077 for this process; var dir 0700; its files (top level, ``redis/``) and ``files`` 0600."""
    os.umask(PRIVATE_UMASK)
    var_dir.mkdir(parents=True, exist_ok=True)
    changed = [str(var_dir)] if _tighten(var_dir, 0o700) else []
    candidates: list[Path] = []
    for sub in (var_dir, var_dir / "redis"):
        with contextlib.suppress(OSError):
            candidates += [p for p in sub.iterdir() if p.is_file()]
    for f in files:
        if f:
            candidates += [Path(f"{f}{suffix}") for suffix in _SIDE_SUFFIXES]
    changed += [str(p) for p in candidates if _tighten(p, 0o600)]
    if changed:
        log.info("made private (0700 dir / 0600 files): %s", ", ".join(sorted(set(changed))))
