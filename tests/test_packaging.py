"""Acceptance of the packaging: the wheel built from this checkout, used as a user would.

The wheel is built once per session from a copy of the checkout, then installed
into fresh virtual environments outside it: a light one (``pip install
llmpulse``: the gateway SDK and the event contracts) and a worker one (``pip
install 'llmpulse[worker]'``). Every command runs with the venv's own
interpreter or console script, in an empty directory, with a clean environment
(no ``LLMPULSE_*``, ``PYTHONPATH`` or ``VIRTUAL_ENV`` inherited), so nothing can
come from the checkout or from the developer's virtualenv.

These tests are in the slow tier: they download packages through pip (its HTTP
cache makes a second run faster) and the worker install brings chDB (~530 MB).
Run them alone with ``pytest -s tests/test_packaging.py``: ``-s`` shows the
install sizes and times that the README quotes.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
import zipfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

# Building, two pip installs (one with chDB) and a cold pip cache can take
# minutes; the session fixtures run inside the first test that needs them.
pytestmark = [pytest.mark.stack, pytest.mark.timeout(1800)]

ROOT = Path(__file__).resolve().parents[1]

#: What ``pip install llmpulse`` must not bring: the worker extra and its heavy deps.
WORKER_ONLY_DISTRIBUTIONS = frozenset(
    {"faust-streaming", "pydantic-settings", "clickhouse-connect", "chdb", "pyyaml", "pandas"}
)

#: The package-data folders (under ``llmpulse/``) whose every non-Python file ships.
DATA_FOLDERS = (
    "schemas/json",
    "schemas/examples",
    "clickhouse",
    "ops",
    "examples",
)

#: Names that must never reach the wheel: caches, build debris, the tests.
_COPY_IGNORE = shutil.ignore_patterns(
    ".git",
    ".venv",
    "build",
    "dist",
    "*.egg-info",
    "__pycache__",
    "*.pyc",
    ".mypy_cache",
    ".ruff_cache",
    ".pytest_cache",
    ".hypothesis",
    ".llmpulse",
    "reports",
)


@dataclass(frozen=True)
class Venv:
    """A virtual environment made by a fixture, and what it took to make it."""

    root: Path
    install_seconds: float

    @property
    def python(self) -> Path:
        return self.root / "bin" / "python"

    def script(self, name: str) -> Path:
        return self.root / "bin" / name

    @property
    def site_packages(self) -> Path:
        (found,) = (self.root / "lib").glob("python3*/site-packages")
        return found


def clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without anything that could leak the checkout in.

    pip's own settings (cache, certificates, find-links) are kept: they are how
    this machine reaches the package index.
    """
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("LLMPULSE_")
        and k not in {"PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "VIRTUAL_ENV", "MYPYPATH"}
    }
    env["PYTHONNOUSERSITE"] = "1"
    env.update(extra)
    return env


def run(
    argv: Sequence[str | Path],
    cwd: Path,
    env: Mapping[str, str] | None = None,
    timeout: float = 900,
) -> subprocess.CompletedProcess[str]:
    """Run a command to completion and capture its output (never raises on exit code)."""
    return subprocess.run(
        [str(a) for a in argv],
        cwd=cwd,
        env=dict(env) if env is not None else clean_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def ok(result: subprocess.CompletedProcess[str]) -> str:
    """The stdout of a command that must have exited 0 (its output in the failure)."""
    assert result.returncode == 0, (
        f"{result.args} exited {result.returncode}\n"
        f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    )
    return result.stdout


def make_venv(root: Path, requirement: str | None, cwd: Path) -> Venv:
    """A fresh venv with pip, and ``requirement`` installed into it (timed)."""
    ok(run([sys.executable, "-m", "venv", root], cwd=cwd, timeout=300))
    venv = Venv(root, 0.0)
    if requirement is None:
        return venv
    started = time.monotonic()
    ok(
        run(
            [venv.python, "-m", "pip", "install", "--quiet", "--no-input", requirement],
            cwd=cwd,
        )
    )
    return Venv(root, time.monotonic() - started)


def installed_distributions(venv: Venv, cwd: Path) -> set[str]:
    """Normalized names of every distribution installed in ``venv``."""
    out = ok(
        run(
            [
                venv.python,
                "-c",
                "import importlib.metadata as m, json; "
                "print(json.dumps(sorted({d.metadata['Name'] for d in m.distributions()})))",
            ],
            cwd=cwd,
        )
    )
    return {re.sub(r"[-_.]+", "-", name).lower() for name in json.loads(out)}


def disk_usage(path: Path) -> int:
    """Bytes that ``path`` takes on disk, counted like ``du`` (allocated blocks)."""
    total = 0
    for folder, _dirs, files in os.walk(path):
        for name in files:
            total += os.lstat(os.path.join(folder, name)).st_blocks * 512
    return total


def checkout_files(suffix_filter: str | None = None) -> set[str]:
    """Files of the ``llmpulse`` tree in the checkout, as wheel paths (symlinks followed)."""
    found = set()
    for folder, dirs, files in os.walk(ROOT / "llmpulse", followlinks=True):
        dirs[:] = [d for d in dirs if d != "__pycache__"]
        rel = Path(folder).relative_to(ROOT)
        for name in files:
            if name.endswith(".pyc"):
                continue
            if suffix_filter is None or name.endswith(suffix_filter):
                found.add((rel / name).as_posix())
    return found


# --- fixtures ------------------------------------------------------------------------
@pytest.fixture(scope="session")
def outside(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An empty directory outside the checkout, the cwd of every command below."""
    path = tmp_path_factory.mktemp("outside")
    assert not path.resolve().is_relative_to(ROOT)
    return path


@pytest.fixture(scope="session")
def wheel(tmp_path_factory: pytest.TempPathFactory, outside: Path) -> Path:
    """The wheel built from this checkout (once per session).

    Built from a copy, not in place: an in-tree setuptools build reuses
    ``build/lib``, where a module deleted from the checkout survives and would
    ship; and two builds at once would share that folder.
    """
    work = tmp_path_factory.mktemp("wheel-build")
    source = work / "src"
    shutil.copytree(ROOT, source, symlinks=True, ignore=_COPY_IGNORE)
    ok(
        run(
            [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", work / "dist", source],
            cwd=outside,
        )
    )
    (built,) = (work / "dist").glob("llmpulse-*.whl")
    return built


@pytest.fixture(scope="session")
def bare_venv(tmp_path_factory: pytest.TempPathFactory, outside: Path) -> Venv:
    """A venv with nothing installed: the baseline of the install sizes."""
    return make_venv(tmp_path_factory.mktemp("venvs") / "bare", None, outside)


@pytest.fixture(scope="session")
def light_venv(tmp_path_factory: pytest.TempPathFactory, wheel: Path, outside: Path) -> Venv:
    """``pip install llmpulse`` (the wheel) in a fresh venv."""
    return make_venv(tmp_path_factory.mktemp("venvs") / "light", str(wheel), outside)


@pytest.fixture(scope="session")
def worker_venv(tmp_path_factory: pytest.TempPathFactory, wheel: Path, outside: Path) -> Venv:
    """``pip install 'llmpulse[worker]'`` (the wheel) in a fresh venv."""
    return make_venv(tmp_path_factory.mktemp("venvs") / "worker", f"{wheel}[worker]", outside)


@pytest.fixture
def empty_dir(tmp_path: Path) -> Iterator[Path]:
    """An empty working directory that must still be empty after the test's commands."""
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    yield cwd
    assert list(cwd.iterdir()) == [], "a command wrote into its working directory"


# --- the wheel itself ----------------------------------------------------------------
def test_wheel_holds_one_package_with_its_data(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as zf:
        names = {n for n in zf.namelist() if not n.endswith("/")}
        (dist_info,) = {n.split("/")[0] for n in names if ".dist-info/" in n}
        top_level = zf.read(f"{dist_info}/top_level.txt").decode().split()
        metadata = zf.read(f"{dist_info}/METADATA").decode()
        entry_points = zf.read(f"{dist_info}/entry_points.txt").decode()
        record = zf.read(f"{dist_info}/RECORD").decode().splitlines()

    assert re.fullmatch(r"llmpulse-[0-9][^-]*\.dist-info", dist_info)
    assert {n.split("/")[0] for n in names} == {"llmpulse", dist_info}
    assert top_level == ["llmpulse"]
    assert {line.split(",")[0].split("/")[0] for line in record} == {"llmpulse", dist_info}

    package = {n for n in names if n.startswith("llmpulse/")}
    # Every module of the checkout, and no other (no tests, no caches, no stale build).
    assert {n for n in package if n.endswith(".py")} == checkout_files(".py")
    assert "llmpulse/py.typed" in package
    # Runtime files are package data: every file of the data folders ships.
    data = {n for n in package if not n.endswith(".py") and n != "llmpulse/py.typed"}
    expected = {f for f in checkout_files() if not f.endswith(".py") and f != "llmpulse/py.typed"}
    assert data == expected
    for folder in DATA_FOLDERS:
        assert any(n.startswith(f"llmpulse/{folder}/") for n in data), folder
    assert "llmpulse/ops/kafka/pom.xml" in data
    assert "llmpulse/examples/pricing.yaml" in data

    assert f"{dist_info}/licenses/LICENSE" in names
    assert "License-Expression: Apache-2.0" in metadata
    base = {
        re.split(r"[<>=!~;\[ ]", line.removeprefix("Requires-Dist: "))[0].lower()
        for line in metadata.splitlines()
        if line.startswith("Requires-Dist: ") and "extra ==" not in line
    }
    assert base == {"aiokafka", "pydantic", "redis", "prometheus-client"}
    assert "Provides-Extra: worker" in metadata
    assert re.search(r"^llmpulse = llmpulse\.cli:main$", entry_points, re.MULTILINE)


# --- the light install ---------------------------------------------------------------
def test_light_install_is_the_sdk_only(light_venv: Venv, outside: Path) -> None:
    for module in ("llmpulse.gateway", "llmpulse.schemas.events", "llmpulse.core"):
        ok(run([light_venv.python, "-c", f"import {module}"], cwd=outside))
    # The extras are absent, and no generic top-level name is installed.
    for module in ("faust", "chdb", "pydantic_settings", "clickhouse_connect", "yaml"):
        result = run([light_venv.python, "-c", f"import {module}"], cwd=outside)
        assert result.returncode == 1, module
        assert f"No module named '{module}'" in result.stderr
    for module in ("schemas", "processors", "gateway", "simulator", "core", "cli"):
        result = run([light_venv.python, "-c", f"import {module}"], cwd=outside)
        assert result.returncode == 1, module
        assert f"No module named '{module}'" in result.stderr

    # What the installed distribution says it provides, from its RECORD.
    provided = ok(
        run(
            [
                light_venv.python,
                "-c",
                "import importlib.metadata as m, json; print(json.dumps(sorted("
                "k for k, v in m.packages_distributions().items() if 'llmpulse' in v)))",
            ],
            cwd=outside,
        )
    )
    assert json.loads(provided) == ["llmpulse"]
    assert not installed_distributions(light_venv, outside) & WORKER_ONLY_DISTRIBUTIONS


def test_light_install_cli_version_and_extras_hint(
    light_venv: Venv, wheel: Path, empty_dir: Path
) -> None:
    version = wheel.name.split("-")[1]
    llmpulse = light_venv.script("llmpulse")
    assert ok(run([llmpulse, "--version"], cwd=empty_dir)).strip() == f"llmpulse {version}"
    ok(run([llmpulse, "--help"], cwd=empty_dir))

    for argv in (["migrate"], ["report", "costs", "--start", "2026-01-01", "--end", "2026-02-01"]):
        result = run([llmpulse, *argv], cwd=empty_dir)
        assert result.returncode == 1, result
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1, result.stderr
        assert re.fullmatch(
            rf"llmpulse: error: 'llmpulse {argv[0]}[^']*' needs the worker extra: "
            r"pip install 'llmpulse\[worker\]' \(missing module: [\w.]+\)",
            lines[0],
        ), lines[0]


APP_HEAD = """\
from decimal import Decimal

from llmpulse.gateway import GatewayConfig
from llmpulse.schemas.events import LLMOutcome


def config() -> GatewayConfig:
    return GatewayConfig(bootstrap_servers="127.0.0.1:9092")


"""

APP_GOOD = """\
def outcomes_topic(config: GatewayConfig) -> str:
    return config.topic("llm.outcomes")


def cost(outcome: LLMOutcome) -> Decimal:
    return outcome.cost_usd
"""

# Both errors need the SDK's own types: without them mypy would see ``Any``.
APP_BAD = """\
def outcomes_topic(config: GatewayConfig) -> int:
    return config.topic("llm.outcomes")


def cost(outcome: LLMOutcome) -> float:
    return outcome.cost_usd
"""


def test_app_mypy_strict_sees_the_sdk_types(light_venv: Venv, tmp_path: Path) -> None:
    def mypy(source: str, folder: str) -> subprocess.CompletedProcess[str]:
        cwd = tmp_path / folder
        cwd.mkdir()
        (cwd / "app.py").write_text(APP_HEAD + source)
        # mypy from the dev environment, resolving imports in the light venv only.
        argv = [sys.executable, "-m", "mypy", "--strict", "--python-executable"]
        return run([*argv, light_venv.python, "--cache-dir", cwd / ".cache", "app.py"], cwd=cwd)

    good = mypy(APP_GOOD, "good")
    bad = mypy(APP_BAD, "bad")
    for result in (good, bad):
        assert "missing library stubs or py.typed marker" not in result.stdout
        assert "import-untyped" not in result.stdout
    assert good.returncode == 0, good.stdout
    assert "Success: no issues found in 1 source file" in good.stdout

    assert bad.returncode == 1, bad.stdout
    errors = [line for line in bad.stdout.splitlines() if ": error: " in line]
    assert len(errors) == 2, bad.stdout
    assert 'Incompatible return value type (got "str", expected "int")' in errors[0]
    assert 'Incompatible return value type (got "Decimal", expected "float")' in errors[1]


# --- the worker install --------------------------------------------------------------
def test_worker_commands_from_an_empty_directory(
    worker_venv: Venv, wheel: Path, empty_dir: Path, tmp_path: Path
) -> None:
    env = clean_env(
        LLMPULSE_STATE_DIR=str(tmp_path / "state"),
        LLMPULSE_CLICKHOUSE_DSN=f"chdb://{tmp_path / 'chdb'}",
    )
    llmpulse = worker_venv.script("llmpulse")
    version = wheel.name.split("-")[1]
    assert ok(run([llmpulse, "--version"], empty_dir, env)).strip() == f"llmpulse {version}"
    out = ok(run([worker_venv.python, "-m", "llmpulse", "--version"], empty_dir, env))
    assert out.strip() == f"llmpulse {version}"

    # Migrations come from the installed package data, not from a checkout or cwd.
    applied = ok(run([llmpulse, "migrate"], empty_dir, env)).splitlines()
    migrations = sorted(
        p.removeprefix("llmpulse/clickhouse/migrations/").removesuffix(".sql")
        for p in checkout_files(".sql")
        if p.startswith("llmpulse/clickhouse/migrations/")
    )
    assert applied == [f"applied {name}" for name in migrations]
    assert ok(run([llmpulse, "migrate"], empty_dir, env)).strip() == "schema up to date"

    pricing = ok(
        run(
            [
                worker_venv.python,
                "-c",
                "from importlib.resources import files; "
                "print(files('llmpulse.examples') / 'pricing.yaml')",
            ],
            empty_dir,
            env,
        )
    ).strip()
    assert Path(pricing).is_relative_to(worker_venv.site_packages)
    loaded = ok(run([llmpulse, "pricing", "load", pricing], empty_dir, env))
    assert re.fullmatch(r"\d+ prices, \d+ chargeback_rates, \d+ organizations loaded\n", loaded)

    period = ["--start", "2026-01-01", "--end", "2026-02-01"]
    table = ok(run([llmpulse, "report", "costs", *period], empty_dir, env)).splitlines()
    assert table[0].startswith("Cost allocation [2026-01-01T00:00:00+00:00, 2026-02-01")
    assert table[1].split()[:2] == ["organization", "line"]
    assert table[1].split()[-3:] == ["unpriced", "rate", "charge_usd"]
    assert table[-1].startswith("TOTAL")

    csv = ok(run([llmpulse, "report", "costs", *period, "--format", "csv"], empty_dir, env))
    header, *rows = csv.splitlines()
    assert header.startswith("organization_id,organization_name,line,completion_requests,")
    assert header.endswith(",chargeback_rate,total_charge_usd")
    assert rows[-1].startswith("TOTAL,")


def test_worker_install_ships_the_stack_files(worker_venv: Venv, outside: Path) -> None:
    # ``llmpulse stack up`` fetches Kafka's jars with Maven from this pom and
    # renders these templates; the stack itself is not started here.
    script = """
import json
from importlib.resources import files
ops = files("llmpulse.ops")
names = ["kafka/pom.xml", "kafka/server.properties.template", "kafka/log4j2.properties",
         "prometheus/prometheus.yml.template", "compose/prometheus.yml", "compose/alerts.yml"]
print(json.dumps({"root": str(ops), "files": {n: ops.joinpath(n).is_file() for n in names}}))
"""
    found = json.loads(ok(run([worker_venv.python, "-c", script], cwd=outside)))
    assert Path(found["root"]).is_relative_to(worker_venv.site_packages)
    assert all(found["files"].values()), found["files"]


def test_worker_stack_up_and_down_from_an_empty_directory(
    worker_venv: Venv, empty_dir: Path, tmp_path: Path
) -> None:
    """``stack up`` from the wheel: Maven reads the installed pom, templates render."""
    env = clean_env(LLMPULSE_STATE_DIR=str(tmp_path / "state"))
    if "LLMPULSE_CACHE_DIR" in os.environ:  # the Kafka jars the stack tier already fetched
        env["LLMPULSE_CACHE_DIR"] = os.environ["LLMPULSE_CACHE_DIR"]
    llmpulse = worker_venv.script("llmpulse")
    try:
        up = ok(run([llmpulse, "stack", "up"], empty_dir, env, timeout=300))
        assert [line.split()[0] for line in up.splitlines()] == ["kafka", "redis", "prometheus"]
        status = ok(run([llmpulse, "stack", "status"], empty_dir, env))
        assert [line.split()[1] for line in status.splitlines()] == ["running"] * 3
    finally:
        ok(run([llmpulse, "stack", "down"], empty_dir, env))
    stopped = run([llmpulse, "stack", "status"], empty_dir, env)
    assert stopped.returncode == 1, stopped.stdout


# --- the figures for the README ------------------------------------------------------
def test_install_sizes(bare_venv: Venv, light_venv: Venv, worker_venv: Venv, outside: Path) -> None:
    base_bytes = disk_usage(bare_venv.site_packages)
    base_dists = installed_distributions(bare_venv, outside)
    figures = {}
    for label, venv in (("llmpulse", light_venv), ("llmpulse[worker]", worker_venv)):
        dists = installed_distributions(venv, outside) - base_dists
        megabytes = (disk_usage(venv.site_packages) - base_bytes) / 1e6
        figures[label] = (megabytes, len(dists))
        print(
            f"\npip install {label}: {megabytes:.0f} MB in site-packages, "
            f"{len(dists)} distributions (llmpulse included), "
            f"installed in {venv.install_seconds:.0f} s"
        )
    # The light install is a small fraction of the worker one (chDB alone is ~530 MB).
    assert figures["llmpulse"][0] * 10 < figures["llmpulse[worker]"][0]
    assert figures["llmpulse"][1] < figures["llmpulse[worker]"][1]
