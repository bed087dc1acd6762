"""Darknet ``.cfg`` reading without torch: the sections in file order, and the class count of a detector.

pipeline/models/darknet.py builds the PyTorch module from these sections; this part is separate so that a
Darknet model whose ONNX export is cached (engines/onnx_cache.py) learns its classes without importing torch.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from pipeline.models.errors import ModelError


@dataclass
class Section:
    type: str
    line: int  # 1-based line of the ``[type]`` header
    options: dict[str, str] = field(default_factory=dict)


def parse_cfg(path: str | Path) -> list[Section]:
    """Sections of a darknet cfg in file order, the first being ``[net]``/``[network]``."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        raise ModelError(f"cannot read darknet cfg {path}: {exc}") from None
    sections: list[Section] = []
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].split(";", 1)[0].strip()
        if not line:
            continue
        if line.startswith("["):
            if not line.endswith("]"):
                raise ModelError(f"{path}:{lineno}: malformed section header {raw.strip()!r}")
            sections.append(Section(line[1:-1].strip().lower(), lineno))
        elif "=" in line:
            if not sections:
                raise ModelError(f"{path}:{lineno}: option before the first [section]")
            key, value = line.split("=", 1)
            sections[-1].options[key.strip()] = value.strip()
        else:
            raise ModelError(f"{path}:{lineno}: expected 'key=value' or '[section]', got {raw.strip()!r}")
    if not sections or sections[0].type not in ("net", "network"):
        raise ModelError(f"{path}: a darknet cfg must start with a [net] section")
    return sections


def yolo_classes(path: str | Path) -> int | None:
    """The class count of the cfg's ``[yolo]`` layers (darknet's default 80 where unset), None without one.

    Only reads the cfg; pipeline/models/darknet.py checks that every layer agrees when it builds the module.
    """
    for sec in parse_cfg(path):
        if sec.type == "yolo":
            value = sec.options.get("classes", "80")
            try:
                return int(value)
            except ValueError:
                raise ModelError(f"{path}:{sec.line}: [yolo] classes={value!r} is not an integer") from None
    return None
