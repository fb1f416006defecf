"""The house plan's direction of imports (../shared/DESIGN.md), checked on the source.

Each top-level unit of ``nimbus`` (a subpackage such as ``stores``, or a module such as
``governance``) may import others only one way: no two units import each other, and the
adapters in ``stores`` import no domain package.
"""

from __future__ import annotations

import ast
from pathlib import Path

from tests.conftest import ROOT

PACKAGE = ROOT / "shared" / "nimbus"
DOMAIN = {"recommend", "experiments", "monitoring", "validation", "batch", "automl", "api", "local"}


def unit_of(path: Path) -> str:
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    return parts[0]


def imports() -> dict[str, dict[str, set[str]]]:
    """unit -> imported unit -> the files that import it."""
    edges: dict[str, dict[str, set[str]]] = {}
    for path in PACKAGE.rglob("*.py"):
        here = unit_of(path)
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            else:
                continue
            for name in names:
                parts = name.split(".")
                if parts[0] != "nimbus" or len(parts) < 2 or parts[1] == here:
                    continue
                if (PACKAGE / parts[1]).is_dir() or (PACKAGE / f"{parts[1]}.py").is_file():
                    edges.setdefault(here, {}).setdefault(parts[1], set()).add(str(path.relative_to(PACKAGE)))
    return edges


def test_no_two_parts_of_the_core_import_each_other() -> None:
    edges = imports()
    cycles = sorted(f"{a} <-> {b}: {sorted(edges[a][b])} / {sorted(edges[b][a])}"
                    for a in edges for b in edges[a] if a < b and a in edges.get(b, {}))
    assert cycles == []


def test_stores_import_no_domain_package() -> None:
    assert set(imports().get("stores", {})) & (DOMAIN | {"governance", "dashboard", "demo", "cli"}) == set()


def test_the_check_sees_imports() -> None:  # a broken walker would pass the two tests above vacuously
    edges = imports()
    assert "stores" in edges["recommend"] and "config" in edges["stores"]
