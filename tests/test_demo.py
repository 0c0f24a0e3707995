"""The main job: ``llmpulse demo`` end to end (short run, on the session's services)."""

from __future__ import annotations

import csv
import re
import subprocess
import sys
from decimal import Decimal
from pathlib import Path

import pytest

from llmpulse.processors.settings import Settings

pytestmark = pytest.mark.stack


def test_demo_runs_and_reports(services: Settings, tmp_path: Path) -> None:
    env = services.child_env(
        # The session's state folder, so its Prometheus scrapes the demo's workers
        # (they list themselves in its targets file); a chDB of its own.
        LLMPULSE_CLICKHOUSE_DSN=f"chdb://{tmp_path / 'chdb'}",
        LLMPULSE_TOPIC_PREFIX="demo-test.",
    )
    result = subprocess.run(
        [sys.executable, "-m", "llmpulse", "demo", "--seconds", "14", "--rate", "60"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    out = result.stdout
    assert result.returncode == 0, out[-3000:] + result.stderr[-3000:]
    assert "closed -> open" in out  # the outage opened the breaker
    assert "Outage ledger" in out
    # The real Prometheus scraped the workers: the breaker was open (2) at some point.
    assert re.search(r"openai breaker state, highest \[provider=openai, worker=breaker\]: 2", out)
    assert "Fleet (gateway) report" in out
    assert re.search(r"requests \d+: \d+ succeeded .* 0 failed", out), out[-3000:]
    assert "TOTAL" in out
    written = re.search(r"cost allocation CSV written to (\S+)", out)
    assert written, out[-3000:]
    csv_path = Path(written[1])
    *lines, total = list(csv.DictReader(csv_path.open()))
    assert sum(Decimal(r["total_cost_usd"]) for r in lines) == Decimal(total["total_cost_usd"])
