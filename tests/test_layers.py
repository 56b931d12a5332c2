"""The package's layers import one way down, and there is no import cycle.

    cli
    recipes          (pretrain, adapt, continual, evaluate, demo)
    report
    train | eval     (the engine; the evaluator; neither imports the other)
    tuners
    models
    data
    tasks
    runtime
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "dtune"
RANK = {"runtime": 0, "tasks": 1, "data": 2, "models": 3, "tuners": 4, "train": 5, "eval": 5, "report": 6,
        "recipes": 7, "cli": 8}


def package_of(module: str) -> str | None:
    parts = module.split(".")
    if parts[0] != "dtune" or len(parts) < 2:
        return None
    return parts[1]


def imports(path: Path) -> list[tuple[int, str]]:
    """Every ``dtune`` module a file imports, at any depth (function-level imports count too)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.lineno, node.module))
            found += [(node.lineno, f"{node.module}.{a.name}") for a in node.names if node.module == "dtune"]
        elif isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
    return [(line, m) for line, m in found if m.startswith("dtune.")]


FILES = sorted(p for p in SRC.rglob("*.py"))


def test_every_package_has_a_layer():
    packages = {p.relative_to(SRC).parts[0].removesuffix(".py") for p in FILES} - {"__init__"}
    assert packages == set(RANK), "a new package needs a place in RANK (and in the README's layer list)"


@pytest.mark.parametrize("path", FILES, ids=lambda p: str(p.relative_to(SRC)))
def test_imports_run_one_way_down(path):
    rel = path.relative_to(SRC)
    own = rel.parts[0].removesuffix(".py")
    if own == "__init__":
        assert not imports(path), "dtune/__init__.py imports nothing of dtune"
        return
    bad = []
    for line, module in imports(path):
        other = package_of(module)
        if other is None or other == own or other == "__version__":
            continue
        if RANK[other] >= RANK[own]:
            bad.append(f"line {line}: {module} ({other}, layer {RANK[other]}) from {own} (layer {RANK[own]})")
    assert not bad, f"{rel} imports up or sideways: " + "; ".join(bad)
