"""ONNX exports cached by the digest of their source files, looked up without importing torch.

A model that reaches ONNX Runtime through a PyTorch export (a Darknet ``.cfg`` + ``.weights``, read into
``pipeline/models/darknet.py``) would otherwise import torch (about 1.5 s of a 2-core machine's start-up) and
rebuild the module on every start only to find that its export is already cached. Here the export is keyed
by what it is made from, all readable without torch:

- the sha256 of every source file's bytes (cfg, weights: a changed byte is another key),
- the export settings (input shape, opset, dynamic axes, metadata written into the file),
- the exporter (:func:`exporter_fingerprint`: the source of the modules that build and export the graph and
  the installed torch's ``version.py``), so an upgraded torch or an edited importer exports again.

The file is ``<cache>/onnx/<name>-<key[:16]>.onnx`` with a manifest beside it
(``<name>-<key[:16]>.export.json``: the full key, the file's size and sha256). A hit is a manifest with this
key whose size and sha256 match the file on disk; anything else (no manifest, a file from before this cache,
a truncated or altered file, another key) is a miss, logged when it is not simply absent, and the export runs
again. Exports write a temporary file and rename it, then write the manifest the same way, under a lock
file, so a crash or a second process never leaves a manifest that vouches for a partial file.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import importlib.util
import json
import logging
import os
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path

from engines.model_store import cache_dir, sha256_file

log = logging.getLogger(__name__)

#: ONNX opset of every export (engines/export.py)
DEFAULT_OPSET = 17

#: bump when the manifest's meaning changes
MANIFEST_VERSION = 1


def _module_file(module: str) -> Path | None:
    """The source file of ``module`` without importing it (its parent packages are imported)."""
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        return None
    return Path(spec.origin) if spec is not None and spec.origin and spec.has_location else None


def exporter_fingerprint(modules: Iterable[str] = ()) -> dict[str, str]:
    """Digests naming the exporter: the source of ``engines.export`` and of ``modules`` (e.g. the importer
    that builds the nn.Module), and torch's ``version.py`` (version + git commit), none of them imported."""
    out: dict[str, str] = {}
    for name in ("engines.export", *modules):
        f = _module_file(name)
        out[name] = hashlib.sha256(f.read_bytes()).hexdigest() if f and f.is_file() else "missing"
    torch_spec = importlib.util.find_spec("torch")
    version_py = (
        Path(next(iter(torch_spec.submodule_search_locations))) / "version.py"
        if torch_spec is not None and torch_spec.submodule_search_locations
        else None
    )
    out["torch"] = (
        hashlib.sha256(version_py.read_bytes()).hexdigest()
        if version_py is not None and version_py.is_file()
        else "missing"
    )
    return out


def source_key(files: Iterable[str | Path], settings: Mapping[str, object]) -> str:
    """sha256 over every source file's bytes (in the given order) and ``settings`` (JSON-serialisable)."""
    h = hashlib.sha256()
    for f in files:
        h.update(bytes.fromhex(sha256_file(Path(f))))
    h.update(json.dumps(settings, sort_keys=True, default=str).encode())
    return h.hexdigest()


def cache_path(name: str, key: str) -> Path:
    return cache_dir() / "onnx" / f"{name}-{key[:16]}.onnx"


def manifest_path(onnx_path: Path) -> Path:
    return onnx_path.with_name(onnx_path.stem + ".export.json")


def verify(onnx_path: Path, key: str) -> str | None:
    """None when ``onnx_path`` is a complete export for ``key``; otherwise why not (for the log)."""
    if not onnx_path.is_file():
        return "absent"
    man = manifest_path(onnx_path)
    try:
        record = json.loads(man.read_text())
    except FileNotFoundError:
        return f"no manifest {man.name} (written before this cache, or the export did not finish)"
    except (OSError, ValueError) as exc:
        return f"unreadable manifest {man}: {exc}"
    if not isinstance(record, dict) or record.get("version") != MANIFEST_VERSION:
        return f"manifest {man.name} of another format"
    if record.get("key") != key:
        return f"manifest {man.name} is for another source (key {str(record.get('key'))[:16]}...)"
    size = onnx_path.stat().st_size
    if size != record.get("size"):
        return (
            f"{onnx_path.name} is {size} bytes, its export wrote {record.get('size')} (truncated or replaced)"
        )
    if sha256_file(onnx_path) != record.get("sha256"):
        return f"{onnx_path.name} does not have the sha256 its export wrote (corrupt or replaced)"
    return None


def _write_json_atomic(path: Path, data: dict) -> None:
    tmp = path.with_name(f"{path.name}.{os.getpid()}.part")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
    os.replace(tmp, path)


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive lock on ``<path>.lock`` so two processes do not export the same file at once."""
    lock = path.with_name(path.name + ".lock")
    with open(lock, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def lookup(name: str, key: str) -> Path | None:
    """The cached export of ``name`` for ``key`` if it is complete and unaltered, else None (why: logged)."""
    path = cache_path(name, key)
    why = verify(path, key)
    if why is None:
        return path
    if why != "absent":
        log.warning("ONNX export cache: %s not used (%s); exporting %s again", path, why, name)
    return None


def cached_export(name: str, key: str, export: Callable[[Path], object]) -> Path:
    """The verified cached export of ``name`` for ``key``; on a miss ``export(path)`` writes it (atomically:
    engines/export.py writes a temporary file and renames it) and the manifest is written after it."""
    found = lookup(name, key)
    if found is not None:
        return found
    path = cache_path(name, key)
    path.parent.mkdir(parents=True, exist_ok=True)
    with _locked(path):
        if verify(path, key) is None:  # another process exported it while this one waited
            return path
        manifest_path(path).unlink(missing_ok=True)  # no manifest vouches for a file being replaced
        export(path)
        record = {
            "version": MANIFEST_VERSION,
            "key": key,
            "size": path.stat().st_size,
            "sha256": sha256_file(path),
        }
        _write_json_atomic(manifest_path(path), record)
    return path


def invalidate(onnx_path: Path) -> None:
    """Forget a cached export (its manifest), e.g. when ONNX Runtime cannot load it."""
    manifest_path(onnx_path).unlink(missing_ok=True)
