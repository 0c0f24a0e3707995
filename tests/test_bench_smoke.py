"""The benchmark code keeps working: each runs at a tiny size (figures are not checked)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.chdb
def test_billing_growth_runs_at_a_tiny_size() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "bench.billing_growth", "--sizes", "0,3000", "--repeat", "1"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    rows = [line for line in done.stdout.splitlines() if line.startswith("| ")]
    assert [r.split("|")[1].strip() for r in rows[1:]] == ["0", "3,000"]
