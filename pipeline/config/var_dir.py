"""Where one run keeps its files: the ``var/`` rule, with no knowledge of the config model.

The config sections (``sinks:`` among them) resolve their own spool paths with it, and
:mod:`pipeline.config.paths` applies it to a whole loaded config; keeping it free of the config model is
what lets both import it without an import cycle.
"""

from __future__ import annotations

from pathlib import Path

VAR_PREFIX = "var/"


class RuntimePaths:
    """Where one run keeps its files (``var_dir`` is made absolute, so resolving twice changes nothing)."""

    def __init__(self, var_dir: str | Path = "var") -> None:
        self.var_dir = Path(var_dir).expanduser().absolute()

    def resolve(self, configured: str | Path) -> Path:
        """A configured path: ``var/x`` -> ``<var_dir>/x``; anything else unchanged."""
        text = str(configured)
        if text.startswith(VAR_PREFIX):
            return self.var_dir / text[len(VAR_PREFIX) :]
        return Path(text)

    @property
    def snapshots(self) -> Path:
        return self.var_dir / "snapshots"

    @property
    def demo(self) -> Path:
        return self.var_dir / "demo"

    @property
    def redis(self) -> Path:
        return self.var_dir / "redis"
