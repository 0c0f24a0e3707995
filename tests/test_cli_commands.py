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


# Issue 13 items 9 and 10: files and arguments the user names fail as one line,
# exit 2, before any service or database is reached, and never echo a long value.

_PRICE_ROW = (
    "  - {provider: openai, model: gpt-4o, effective_from: %s, input_per_mtok: %s,"
    " output_per_mtok: 10, cached_per_mtok: 1}\n"
)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (
            ("prices:\n" + _PRICE_ROW % ("2026-01-01", ".nan")).encode(),
            "prices.yaml: prices row 1: input_per_mtok: Input should be a finite number",
        ),
        (
            ("prices:\n" + _PRICE_ROW % ("2026-01-01", ".inf")).encode(),
            "prices.yaml: prices row 1: input_per_mtok: Input should be a finite number",
        ),
        (
            ("prices:\n" + _PRICE_ROW % ("2026-02-30", "1")).encode(),
            "prices.yaml: prices row 1: effective_from: Value error, "
            "value '2026-02-30' is not a date",
        ),
        (b"prices: []\n# \xff\n", "not UTF-8 text (invalid byte at offset 13)"),
        (
            (
                "prices:\n"
                + _PRICE_ROW % ("2026-01-01T00:00:00Z", "1")
                + _PRICE_ROW % ("2026-01-01T01:00:00+01:00", "2")
            ).encode(),
            "prices.yaml: prices rows 1 and 2 conflict: same provider, model, effective_from "
            "(openai, gpt-4o, 2026-01-01T00:00:00+00:00); keep one",
        ),
    ],
)
def test_pricing_load_of_a_bad_file_is_one_line_and_exit_2(
    tmp_path: Path, content: bytes, message: str
) -> None:
    (tmp_path / "prices.yaml").write_bytes(content)
    result = _run(tmp_path, "pricing", "load", "prices.yaml")
    assert result.returncode == 2, result.stderr
    assert message in _one_line(result.stderr)
    assert result.stdout == ""


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["report", "close", "--period", "0000-01"],
            "period '0000-01' is outside the months billing supports (1970-01 to 2149-05)",
        ),
        (
            ["report", "costs", "--start", "0001-01-01", "--end", "2026-01-01"],
            "start '0001-01-01' is outside the dates billing supports "
            "(1970-01-01 to 2149-06-01 UTC)",
        ),
        (["prompts", "create", "greeting", "--content-file", "missing.txt"], "No such file"),
        (["prompts", "create", "greeting", "--content-file", "."], "Is a directory"),
        (["prompts", "create", "greeting", "--content-file", "latin1.txt"], "not UTF-8 text"),
    ],
)
def test_bad_periods_and_content_files_are_one_line_and_exit_2(
    tmp_path: Path, args: list[str], message: str
) -> None:
    (tmp_path / "latin1.txt").write_bytes("Grüße".encode("latin-1"))
    result = _run(tmp_path, *args)
    assert result.returncode == 2, result.stderr
    assert message in _one_line(result.stderr)
    assert result.stdout == ""


@pytest.mark.parametrize(
    "args",
    [
        ["report", "costs", "--start", "{long}", "--end", "2026-01-01"],
        ["report", "close", "--period", "{long}"],
        ["pricing", "load", "{long}"],
        ["prompts", "create", "greeting", "--content-file", "{long}"],
        ["prompts", "activate", "greeting", "--version", "1", "--weight", "{long}"],
        ["prompts", "create", "greeting", "--content", "c", "--temperature", "{long}"],
    ],
)
def test_a_100_kb_argument_is_not_echoed_back(tmp_path: Path, args: list[str]) -> None:
    long = "x" * 100_000
    result = _run(tmp_path, *(a.replace("{long}", long) for a in args))
    assert result.returncode == 2, result.stderr[:500]
    line = _one_line(result.stderr)
    assert len(line) < 400, line[:500]
    assert "(100000 characters)" in line


@pytest.mark.parametrize(
    ("output", "code", "message"),
    [
        ("missing/report.csv", 2, "its folder does not exist"),
        (".", 2, "it is a folder"),
        ("full-disk.csv", 1, "No space left on device"),
    ],
)
def test_report_output_that_cannot_be_written_is_one_line(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    output: str,
    code: int,
    message: str,
) -> None:
    from llmpulse.processors.billing.allocation import build_report

    # The report itself is empty and needs no database; only writing it fails.
    monkeypatch.setenv("LLMPULSE_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("llmpulse.processors.stream.clickhouse.connect", lambda settings: None)
    monkeypatch.setattr(
        "llmpulse.processors.billing.reports.cost_report",
        lambda client, start, end, **kwargs: build_report(start, end, [], {}),
    )
    if output == "full-disk.csv":
        (tmp_path / output).symlink_to("/dev/full")  # refuses every write, like a full disk
    args = ["report", "costs", "--start", "2026-03-01", "--end", "2026-04-01"]
    assert main([*args, "--format", "csv", "--output", output]) == code
    out, err = capsys.readouterr()
    assert out == ""
    assert _one_line(err) == f"llmpulse: error: cannot write {output!r}: {message}"
