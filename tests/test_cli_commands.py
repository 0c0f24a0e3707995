"""The command line around the commands: --version, the worker-extra hint, the error tree.

Every test here is unit tier: subprocesses run ``python -m llmpulse`` against an
empty state folder, so the commands that need Kafka or Redis stop at the local
stack lookup (no stack is running there) before any connection is attempted.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import llmpulse
from llmpulse.cli import build_parser, main
from llmpulse.cli.common import WORKER_EXTRA_MODULES, UsageError
from llmpulse.devstack.simulate import ScenarioError
from llmpulse.devstack.stack import StackError
from llmpulse.processors.billing.pricing import PricingFileError
from llmpulse.processors.billing.reports import BillingInputError
from llmpulse.processors.errors import ConfigError, InputError, LlmpulseError, ServiceError
from llmpulse.processors.settings import ServiceAddressMissing
from llmpulse.processors.stream.clickhouse import ClickHouseConfigError

#: Every command group, as ``llmpulse --help`` lists them.
GROUPS = (
    "demo",
    "simulate",
    "stack",
    "topics",
    "migrate",
    "worker",
    "breaker",
    "prompts",
    "report",
    "pricing",
)

# Runs the CLI with the given top-level modules made unimportable, as on a
# light install (`pip install llmpulse` without the worker extra).
_WITHOUT_MODULES = """
import sys
from importlib.abc import MetaPathFinder

blocked = set(sys.argv[1].split(","))


class Blocker(MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in blocked:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None


sys.meta_path.insert(0, Blocker())
from llmpulse.cli import main

raise SystemExit(main(sys.argv[2:]))
"""


def _env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LLMPULSE_")}
    env["LLMPULSE_STATE_DIR"] = str(tmp_path / "state")
    env["LLMPULSE_CLICKHOUSE_DSN"] = f"chdb://{tmp_path / 'chdb'}"
    return env


def _run(
    tmp_path: Path, *args: str, without: frozenset[str] = frozenset()
) -> subprocess.CompletedProcess[str]:
    if without:
        argv = [sys.executable, "-c", _WITHOUT_MODULES, ",".join(sorted(without)), *args]
    else:
        argv = [sys.executable, "-m", "llmpulse", *args]
    # cwd is an empty folder so that no .env file of the checkout is read.
    return subprocess.run(
        argv,
        env=_env(tmp_path),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def _one_line(text: str) -> str:
    lines = text.strip().splitlines()
    assert len(lines) == 1, text
    return lines[0]


def test_version_prints_the_package_version(tmp_path: Path) -> None:
    result = _run(tmp_path, "--version")
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"llmpulse {llmpulse.__version__}\n"


@pytest.mark.parametrize("group", GROUPS)
def test_help_of_every_group(group: str) -> None:
    with pytest.raises(SystemExit) as info:
        build_parser().parse_args([group, "--help"])
    assert info.value.code == 0


@pytest.mark.parametrize("args", [["--help"], ["--version"], *([g, "--help"] for g in GROUPS)])
def test_help_and_version_need_no_worker_extra(tmp_path: Path, args: list[str]) -> None:
    result = _run(tmp_path, *args, without=WORKER_EXTRA_MODULES)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    assert result.stdout.startswith("usage: llmpulse" if "--help" in args else "llmpulse ")


_HINT = re.compile(
    r"llmpulse: error: 'llmpulse (?P<command>[a-z]+)' needs the worker extra: "
    r"pip install 'llmpulse\[worker\]' \(missing module: (?P<module>[a-z_]+)\)"
)


@pytest.mark.parametrize(
    "args",
    [
        ["report", "costs", "--start", "2026-03-01", "--end", "2026-04-01"],
        ["report", "close", "--period", "2026-03"],
        ["pricing", "load", "prices.yaml"],
        ["migrate"],
        ["topics", "create"],
        ["stack", "status"],
        ["worker", "sink"],
        ["worker", "all"],
        ["breaker", "status"],
        ["prompts", "list"],
        ["demo"],
        ["simulate"],
    ],
)
def test_a_command_without_the_worker_extra_prints_the_install_hint(
    tmp_path: Path, args: list[str]
) -> None:
    result = _run(tmp_path, *args, without=WORKER_EXTRA_MODULES)
    assert result.returncode == 1, result.stderr
    assert result.stdout == ""
    hint = _HINT.fullmatch(_one_line(result.stderr))
    assert hint is not None, result.stderr
    assert hint["command"] == args[0]
    assert hint["module"] in WORKER_EXTRA_MODULES


def test_the_hint_names_the_missing_module(tmp_path: Path) -> None:
    result = _run(tmp_path, "pricing", "load", "prices.yaml", without=frozenset({"yaml"}))
    assert result.returncode == 1, result.stderr
    assert _one_line(result.stderr) == (
        "llmpulse: error: 'llmpulse pricing' needs the worker extra: "
        "pip install 'llmpulse[worker]' (missing module: yaml)"
    )


def test_another_missing_module_keeps_its_traceback(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(args: object) -> int:
        import llmpulse_no_such_module  # type: ignore[import-not-found]  # noqa: F401

        return 0

    monkeypatch.setattr("llmpulse.cli.setup.cmd_migrate", broken)
    with pytest.raises(ModuleNotFoundError, match="llmpulse_no_such_module"):
        main(["migrate"])


@pytest.mark.parametrize(
    "args",
    [
        ["topics", "create"],
        ["worker", "sink"],
        ["worker", "breaker"],
        ["worker", "prompts"],
        ["worker", "all"],
        ["breaker", "status"],
        ["breaker", "reset", "openai"],
        ["prompts", "list"],
        ["prompts", "compare", "greeting", "--start", "2026-03-01", "--end", "2026-04-01"],
    ],
)
def test_commands_that_reach_kafka_or_redis_look_up_the_local_stack_first(
    tmp_path: Path, args: list[str]
) -> None:
    # No stack runs in the empty state folder: the lookup fails with the stack's
    # one-line hint (exit 1), never with a worker's ServiceAddressMissing.
    result = _run(tmp_path, *args)
    assert result.returncode == 1, result.stderr
    line = _one_line(result.stderr)
    assert line.startswith("llmpulse: error: kafka is not running"), line
    assert "llmpulse stack up" in line
    assert result.stdout == ""


def test_service_address_missing_is_one_line_and_exit_1(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # Skip the stack lookup, so the worker code meets settings without an address.
    for name in ("KAFKA_BOOTSTRAP", "REDIS_URL", "PROMETHEUS_URL"):
        monkeypatch.delenv(f"LLMPULSE_{name}", raising=False)
    monkeypatch.setenv("LLMPULSE_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("llmpulse.cli.setup.with_services", lambda settings: settings)
    assert main(["topics", "create"]) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert _one_line(err) == (
        "llmpulse: error: LLMPULSE_KAFKA_BOOTSTRAP is not set and no local stack address was "
        "filled in (run `llmpulse stack up`, or set it)"
    )


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (UsageError("bad usage"), 2),
        (BillingInputError("bad period"), 2),
        (PricingFileError("bad file"), 2),
        (ScenarioError("bad fault"), 2),
        (ClickHouseConfigError("bad dsn"), 1),
        (ServiceAddressMissing("redis_url"), 1),
        (StackError("stack down", details="log tail"), 1),
    ],
)
def test_errors_map_to_exit_codes_by_their_node(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    error: LlmpulseError,
    code: int,
) -> None:
    def fail(args: object) -> int:
        raise error

    monkeypatch.setattr("llmpulse.cli.setup.cmd_migrate", fail)
    assert main(["migrate"]) == code
    out, err = capsys.readouterr()
    assert out == ""
    assert _one_line(err) == f"llmpulse: error: {error}"


def test_the_error_tree() -> None:
    tree: dict[type[LlmpulseError], tuple[type[Exception], ...]] = {
        ConfigError: (ClickHouseConfigError, ServiceAddressMissing),
        InputError: (BillingInputError, PricingFileError, ScenarioError, UsageError),
        ServiceError: (StackError,),
    }
    for node, leaves in tree.items():
        assert issubclass(node, LlmpulseError)
        for leaf in leaves:
            assert issubclass(leaf, node), (leaf, node)
            others = set(tree) - {node}
            assert not any(issubclass(leaf, other) for other in others), leaf
    # Kept for callers that caught the old bases.
    for leaf in (BillingInputError, PricingFileError, ScenarioError):
        assert issubclass(leaf, ValueError)
    assert issubclass(ServiceAddressMissing, RuntimeError)
