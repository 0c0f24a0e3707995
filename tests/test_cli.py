"""The command line: --help everywhere, one-line errors with exit code 2 on bad input."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from llmpulse.cli import build_parser, main


def _run(tmp_path: Path, *args: str, **settings: str) -> subprocess.CompletedProcess[str]:
    """``llmpulse ARGS`` in ``tmp_path`` (its ``.env``) with only the ``LLMPULSE_*`` given."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LLMPULSE_")}
    env["LLMPULSE_STATE_DIR"] = str(tmp_path / "state")
    env.update(settings)
    return subprocess.run(
        [sys.executable, "-m", "llmpulse", *args],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.mark.parametrize(
    "args",
    [
        [],
        ["demo"],
        ["stack"],
        ["topics"],
        ["migrate"],
        ["worker"],
        ["breaker"],
        ["prompts"],
        ["report"],
        ["pricing"],
        ["simulate"],
    ],
)
def test_help_exits_zero(args: list[str]) -> None:
    with pytest.raises(SystemExit) as info:
        build_parser().parse_args([*args, "--help"])
    assert info.value.code == 0


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["report", "costs", "--start", "2026-04-01", "--end", "2026-03-01"],
            "must be after start",
        ),
        (
            ["report", "costs", "--start", "2026-03-01", "--end", "2026-03-01"],
            "must be after start",
        ),
        (["report", "costs", "--start", "03/01/2026", "--end", "2026-04-01"], "not a date"),
        (["report", "costs", "--start", "2026-03-01T00:00", "--end", "2026-04-01"], "no time zone"),
        (
            ["report", "costs", "--start", "2026-03-01", "--end", "2026-04-01", "--format", "xml"],
            "invalid choice: 'xml'",
        ),
        (["report", "costs", "--start", "2026-03-01"], "needs --start and --end"),
        (["report", "close", "--period", "2026-3"], "not a month"),
        pytest.param(
            ["report", "costs", "--start", "2026-03-01", "--end", "2026-04-01", "--org", "nobody"],
            "unknown organization 'nobody'",
            marks=pytest.mark.chdb,  # the subprocess migrates chDB first
        ),
        pytest.param(
            [
                "report",
                "costs",
                "--start",
                "2026-03-01",
                "--end",
                "2026-04-01",
                "--org",
                "x' OR '1'='1",
            ],
            "unknown organization",
            marks=pytest.mark.chdb,  # the subprocess migrates chDB first
        ),
        (["pricing", "load", "missing.yaml"], "cannot read"),
        (["bogus"], "invalid choice"),
        (["demo", "--rate", "0"], "must be greater than 0"),
        (["simulate", "--instances", "0"], "must be greater than 0"),
        (["simulate", "--outage", "openai"], "expected PROVIDER:START-END"),
        (["simulate", "--outage", "openai:40-10"], "END must be after START"),
        (["simulate", "--rate-limit", "mistral:1-5"], "unknown provider"),
        (["simulate", "--error-rate", "openai:1.5"], "RATE must be between 0 and 1"),
        (["simulate", "--error-rate", "openai:lots"], "expected PROVIDER:RATE"),
        (["worker", "breaker", "--batch-rows", "10"], "apply to the sink worker only"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(tmp_path: Path, args: list[str], message: str) -> None:
    if "--org" in args:  # unknown-org needs the tables to exist
        assert _run(tmp_path, "migrate").returncode == 0
    result = _run(tmp_path, *args)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert message in lines[0]
    assert result.stdout == ""


def test_invalid_setting_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLMPULSE_SINK_BATCH_MAX_ROWS", "lots")
    assert main(["migrate"]) == 2


_EXAMPLE_PRICES = str(Path(__file__).resolve().parents[1] / "examples" / "pricing.yaml")

#: A command of each group that loads settings (``demo`` and ``simulate`` load them
#: through the same ``load_settings``; were that broken, they would start a stack).
_LOADING_SETTINGS = [
    ["migrate"],
    ["topics", "create"],
    ["stack", "status"],
    ["worker", "prompts"],
    ["worker", "all"],
    ["breaker", "status"],
    ["prompts", "list"],
    ["report", "costs", "--start", "2026-03-01", "--end", "2026-04-01"],
    ["pricing", "load", _EXAMPLE_PRICES],
]


@pytest.mark.parametrize("args", _LOADING_SETTINGS)
def test_every_command_refuses_a_bad_setting_in_one_line(tmp_path: Path, args: list[str]) -> None:
    # [0] made the prompts worker raise ZeroDivisionError on every event (issue 13 item 4).
    result = _run(tmp_path, *args, LLMPULSE_PROMPT_WINDOWS="[0]")
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith("llmpulse: error: invalid setting LLMPULSE_PROMPT_WINDOWS: ")
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert result.stdout == ""


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("LLMPULSE_PROMPT_WINDOWS", "notjson"),  # a SettingsError traceback before
        ("LLMPULSE_CLICKHOUSE_DSN", "ftp://x"),  # exit 1 at the first connect before
        ("LLMPULSE_CLICKHOUSE_DSN", "chdb://relative/x"),  # chDB database "x" in folder "relative"
        ("LLMPULSE_EVENT_MAX_FUTURE", "P100000000D"),  # OverflowError in the decoder before
        ("LLMPULSE_SINK_RETRY_MAX_SECONDS", "inf"),
    ],
)
def test_bad_setting_exits_2_in_one_line(tmp_path: Path, name: str, value: str) -> None:
    result = _run(tmp_path, "migrate", **{name: value})
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith(f"llmpulse: error: invalid setting {name}: "), result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_chdb_folder_that_cannot_be_created_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "afile").write_text("")
    result = _run(tmp_path, "migrate", LLMPULSE_CLICKHOUSE_DSN=f"chdb://{tmp_path}/afile/db")
    assert result.returncode == 1, result.stderr
    assert result.stderr.startswith("llmpulse: error: cannot create the chDB folder"), result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_bad_setting_value_is_never_echoed(tmp_path: Path) -> None:
    result = _run(
        tmp_path, "migrate", LLMPULSE_CLICKHOUSE_DSN="http://u:hunter2@h:0/" + "d" * 100_000
    )
    assert result.returncode == 2, result.stderr[:300]
    assert "hunter2" not in result.stderr
    assert len(result.stderr) < 200, result.stderr[:300]


def test_dotenv_of_another_tool_is_ignored_and_typos_warned(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text(
        "DATABASE_URL=postgres://u:p@db/app\nLLMPULSE_SINK_BATCH_MAX_ROW=10\n"
    )
    result = _run(tmp_path, "stack", "status")  # no stack here: it reports each service stopped
    assert "invalid setting" not in result.stderr
    assert "not running" in result.stdout, result.stderr
    warning = (
        "unknown setting LLMPULSE_SINK_BATCH_MAX_ROW in .env is ignored; "
        "did you mean LLMPULSE_SINK_BATCH_MAX_ROWS?"
    )
    assert warning in result.stderr
    assert "DATABASE_URL" not in result.stderr
