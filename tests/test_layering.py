"""Package boundaries from DESIGN.md, checked on the source (every import, lazy ones too).

* ``schemas`` imports nothing from the project;
* ``gateway`` (the in-app SDK) imports ``schemas`` only, never ``processors``;
* ``processors`` never imports ``gateway`` itself (the fleet simulator, which
  runs the real gateway, is the one bridge: ``simulator``).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PROJECT = {"schemas", "processors", "gateway", "simulator", "bench", "tests"}


def _imported_packages(package: str) -> dict[str, set[str]]:
    """Top-level project packages each module of ``package`` imports."""
    found: dict[str, set[str]] = {}
    for path in sorted((ROOT / package).rglob("*.py")):
        tree = ast.parse(path.read_text(), filename=str(path))
        names: set[str] = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names.add(node.module.split(".")[0])
        found[str(path.relative_to(ROOT))] = names & PROJECT
    return found


@pytest.mark.parametrize(
    ("package", "allowed"),
    [
        ("schemas", {"schemas"}),
        ("gateway", {"gateway", "schemas"}),
        ("processors", {"processors", "schemas", "simulator"}),
        ("simulator", {"simulator", "gateway", "schemas", "processors"}),
    ],
)
def test_package_imports_stay_within_their_layer(package: str, allowed: set[str]) -> None:
    modules = _imported_packages(package)
    assert modules, f"no modules found in {package}"
    wrong = {m: sorted(names - allowed) for m, names in modules.items() if names - allowed}
    assert wrong == {}


def test_only_the_bridge_module_of_the_simulator_imports_processors() -> None:
    users = sorted(
        m for m, names in _imported_packages("simulator").items() if "processors" in names
    )
    assert users == ["simulator/run.py"]
