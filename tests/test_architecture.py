"""The layout of docs/architecture.md holds: import contracts pass, and they would catch a break.

The contracts live in pyproject.toml ([tool.importlinter]); .ci/run runs ``lint-imports`` too. Here the
same contracts are also run on a copy of the code with a deliberate upward import and a deliberate cycle,
so a contract that silently stopped checking anything would fail this test.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import grimp
import pytest

ROOT = Path(__file__).resolve().parent.parent
LINT = Path(sys.executable).parent / "lint-imports"


def _lint(root: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(LINT), "--no-cache", "--config", str(root / "pyproject.toml")],
        cwd=root,
        env={"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )


def _copy_code(tmp_path: Path) -> Path:
    for pkg in ("pipeline", "engines"):
        shutil.copytree(
            ROOT / pkg, tmp_path / pkg, ignore=shutil.ignore_patterns("__pycache__", "templates", "static")
        )
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    return tmp_path


def _module_cycles(graph: grimp.ImportGraph) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    out: list[list[str]] = []
    counter = 0
    for root in sorted(graph.modules):
        if root in index:
            continue
        work = [(root, iter(sorted(graph.find_modules_directly_imported_by(root))))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            for child in children:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.find_modules_directly_imported_by(child)))))
                    break
                if child in on_stack:
                    low[node] = min(low[node], index[child])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    comp = []
                    while True:
                        m = stack.pop()
                        on_stack.discard(m)
                        comp.append(m)
                        if m == node:
                            break
                    if len(comp) > 1:
                        out.append(sorted(comp))
    return out


def test_the_import_contracts_pass() -> None:
    proc = _lint(ROOT)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "0 broken" in proc.stdout


def test_no_module_import_cycle_in_pipeline_or_engines() -> None:
    graph = grimp.build_graph("pipeline", "engines")
    assert len(graph.modules) > 100  # the graph really covers the code
    assert _module_cycles(graph) == []


def test_cycle_finder_finds_a_cycle(tmp_path: Path) -> None:
    """The cycle check above is not vacuous: on a copy with one cycle added it reports that cycle."""
    root = _copy_code(tmp_path)
    (root / "pipeline/core/states.py").write_text(
        (root / "pipeline/core/states.py").read_text() + "\nimport pipeline.core.stage  # noqa\n"
    )
    sys.path.insert(0, str(root))
    saved = {k: v for k, v in sys.modules.items() if k.split(".")[0] in ("pipeline", "engines")}
    for k in saved:
        del sys.modules[k]
    try:
        cycles = _module_cycles(grimp.build_graph("pipeline", "engines", cache_dir=None))
    finally:
        sys.path.remove(str(root))
        for k in [k for k in sys.modules if k.split(".")[0] in ("pipeline", "engines")]:
            del sys.modules[k]
        sys.modules.update(saved)
    assert ["pipeline.core.stage", "pipeline.core.states"] in cycles


@pytest.mark.parametrize(
    ("module", "line", "contract"),
    [
        # a core type reaching up into the runner: an upward import across the layers
        ("pipeline/core/types.py", "import pipeline.run.runner  # noqa", "Layers follow the data"),
        # the model store (engines) reaching into the pipeline's demo media, as quantize once did
        ("engines/model_store.py", "import pipeline.ingest.demo_media  # noqa", "Layers follow the data"),
        # a sink that knows about the detector
        ("pipeline/deliver/mqtt.py", "import pipeline.detect.detect_stage  # noqa", "Delivery knows events"),
        # a cycle between two modules of one package
        ("pipeline/core/states.py", "import pipeline.core.stage  # noqa", "No import cycles"),
    ],
)
def test_a_broken_layout_fails_the_contracts(tmp_path: Path, module: str, line: str, contract: str) -> None:
    root = _copy_code(tmp_path)
    path = root / module
    path.write_text(path.read_text() + "\n" + line + "\n")
    proc = _lint(root)
    assert proc.returncode != 0, proc.stdout
    broken = [ln for ln in proc.stdout.splitlines() if "BROKEN" in ln or ln.startswith(contract)]
    assert any(contract in ln for ln in broken), proc.stdout
