"""Import rules of the layout (DESIGN.md, house style), checked on the source.

Every import counts, lazy ones inside functions too. The layers, bottom up::

    schemas     contracts                    imports nothing of the project
    core        pure logic, no I/O           schemas
    gateway     in-app SDK                   schemas, core
    processors  stream edge and flows        schemas, core
    simulator   simulated fleet              schemas, core, gateway
    devstack    local stack, demo, simulate  all of the above
    cli         the ``llmpulse`` command     all of the above

So the workers (``processors``) never reach the SDK, the dev stack, the simulator
or the CLI, and nothing imports a layer above its own. The light install
(``pip install llmpulse``: schemas, core, gateway) imports only the standard
library and its four declared dependencies.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LAYERS: dict[str, set[str]] = {
    "schemas": set(),
    "core": {"schemas"},
    "gateway": {"schemas", "core"},
    "processors": {"schemas", "core"},
    "simulator": {"schemas", "core", "gateway"},
    "devstack": {"schemas", "core", "gateway", "processors", "simulator"},
    "cli": {"schemas", "core", "gateway", "processors", "simulator", "devstack"},
}
#: Distributions of the light install, by import name.
LIGHT_DEPENDENCIES = {"pydantic", "pydantic_core", "redis", "aiokafka", "prometheus_client"}
#: Folders whose code is installed, plus the ones that use it (never installed).
OLD_TOP_LEVEL = {*LAYERS, "clickhouse", "ops", "examples"}


def _imports(path: Path) -> list[str]:
    """Absolute module names imported by ``path`` (relative imports resolved)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    names: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"{path}: relative import (use absolute llmpulse.* paths)"
            if node.module:
                names.append(node.module)
    return names


def _modules(folder: str) -> list[Path]:
    found = sorted((ROOT / folder).rglob("*.py"))
    assert found, f"no modules in {folder}/"
    return found


def _layer(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if parts[0] == "llmpulse" and len(parts) > 1 else None


@pytest.mark.parametrize("layer", sorted(LAYERS))
def test_each_layer_imports_only_the_layers_below_it(layer: str) -> None:
    allowed = LAYERS[layer] | {layer}
    wrong = {
        str(path.relative_to(ROOT)): sorted(bad)
        for path in _modules(layer)
        if (bad := {m for m in _imports(path) if _layer(m) not in (None, *allowed)})
    }
    assert wrong == {}


@pytest.mark.parametrize("folder", [*sorted(LAYERS), "tests", "bench"])
def test_project_code_is_imported_only_as_llmpulse(folder: str) -> None:
    """No module imports a bare ``gateway`` or ``schemas``: those names are not installed."""
    bare = {
        str(path.relative_to(ROOT)): sorted(hits)
        for path in _modules(folder)
        if (hits := {m for m in _imports(path) if m.split(".")[0] in OLD_TOP_LEVEL})
    }
    assert bare == {}


@pytest.mark.parametrize("layer", ["schemas", "core", "gateway"])
def test_the_light_install_needs_only_its_declared_dependencies(layer: str) -> None:
    stdlib = set(sys.stdlib_module_names) | {"__future__"}
    foreign = {
        str(path.relative_to(ROOT)): sorted(extra)
        for path in _modules(layer)
        if (
            extra := {
                m.split(".")[0]
                for m in _imports(path)
                if m.split(".")[0] not in stdlib | LIGHT_DEPENDENCIES | {"llmpulse"}
            }
        )
    }
    assert foreign == {}


def test_every_subpackage_is_linked_into_the_llmpulse_package() -> None:
    """``llmpulse/`` holds one relative symlink per top-level code or data folder."""
    links = {p.name: p for p in (ROOT / "llmpulse").iterdir() if p.is_symlink()}
    assert set(links) == OLD_TOP_LEVEL
    for name, link in links.items():
        assert link.readlink() == Path("..") / name
        assert (link / "__init__.py").is_file(), f"{name}/ is not a package"
