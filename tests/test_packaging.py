"""`pip install .` must install what the product imports: no runtime import may be declared only for dev.

Walks every module of pipeline/ and engines/ (the installed packages) and maps each third-party import to
its distribution with importlib.metadata. Module-level imports must be runtime ``dependencies``; no import
anywhere in the product may come from a distribution that only the ``dev`` extra declares (OpenCV was:
``pip install .`` then a run failed with ImportError).
"""

from __future__ import annotations

import ast
import importlib.metadata
import re
import sys
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _names(reqs: list[str]) -> set[str]:
    return {re.split(r"[<>=!~\[; ]", r, maxsplit=1)[0].lower().replace("_", "-") for r in reqs}


def _imports(path: Path) -> list[tuple[str, bool]]:
    """(top-level module name, imported at module level) for every absolute import in a file."""
    tree = ast.parse(path.read_text(), str(path))
    top_level = {id(n) for n in tree.body} | {
        id(c) for n in tree.body if isinstance(n, ast.Try | ast.If) for c in ast.walk(n)
    }
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(a.name.split(".")[0], id(node) in top_level) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            out.append((node.module.split(".")[0], id(node) in top_level))
    return out


def test_product_imports_are_declared_as_runtime_dependencies():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    runtime = _names(project["dependencies"])
    extras = project.get("optional-dependencies", {})
    dev_only = (
        _names(extras.get("dev", []))
        - runtime
        - {n for k, v in extras.items() if k != "dev" for n in _names(v)}
    )
    dists = importlib.metadata.packages_distributions()
    problems = []
    checked = 0
    for path in sorted([*REPO.glob("pipeline/**/*.py"), *REPO.glob("engines/**/*.py")]):
        for module, at_top in _imports(path):
            if module in sys.stdlib_module_names or module in ("pipeline", "engines", "__future__"):
                continue
            names = {d.lower().replace("_", "-") for d in dists.get(module, [])}
            if not names:
                continue  # not installed here (GPU-only packages are imported inside functions)
            checked += 1
            where = f"{path.relative_to(REPO)} imports {module}"
            if names & dev_only:
                problems.append(f"{where}, declared only in the dev extra ({sorted(names & dev_only)})")
            elif at_top and not names & runtime:
                problems.append(f"{where} at module level, not a runtime dependency ({sorted(names)})")
    assert checked > 20
    assert not problems, "\n".join(problems)
