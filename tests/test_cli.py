"""The command line: --help everywhere, one-line errors with exit code 2 on bad input."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from llmpulse.cli import build_parser, main


def _run(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LLMPULSE_")}
    env["LLMPULSE_STATE_DIR"] = str(tmp_path / "state")
    return subprocess.run(
        [sys.executable, "-m", "llmpulse", *args],
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


@pytest.mark.chdb  # the subprocesses use chDB
def test_pricing_load_and_report_roundtrip(tmp_path: Path) -> None:
    example = Path(__file__).resolve().parents[1] / "examples" / "pricing.yaml"
    assert _run(tmp_path, "migrate").returncode == 0
    loaded = _run(tmp_path, "pricing", "load", str(example))
    assert loaded.returncode == 0, loaded.stderr
    assert "prices" in loaded.stdout
    out = tmp_path / "r.csv"
    report = _run(
        tmp_path,
        "report",
        "costs",
        "--start",
        "2026-03-01",
        "--end",
        "2026-04-01",
        "--format",
        "csv",
        "--output",
        str(out),
    )
    assert report.returncode == 0, report.stderr
    header, total = out.read_text().splitlines()
    assert header.startswith("organization_id,organization_name,line,completion_requests")
    assert total.startswith("TOTAL,,,0,0,0.000000000")
