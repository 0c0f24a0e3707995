"""Where and when a benchmark run happened: date, commit, machine."""

from __future__ import annotations

import os
import platform
import subprocess
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
#: The runner's own output: rewriting it must not make the next run "dirty".
OUTPUT = "BENCHMARKS.md"


@dataclass(frozen=True)
class RunInfo:
    started: datetime
    seconds: float
    command: str
    commit: str
    #: Uncommitted changes (tracked or untracked, other than BENCHMARKS.md).
    dirty: bool
    cores: int
    cpu: str
    system: str
    python: str


def _git(*args: str) -> str:
    done = subprocess.run(
        ["git", *args], cwd=ROOT, capture_output=True, text=True, check=False, timeout=30
    )
    return done.stdout.strip() if done.returncode == 0 else ""


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def collect(started: datetime, seconds: float, command: str) -> RunInfo:
    """Facts about this run; the commit is ``unknown`` outside a git checkout."""
    return RunInfo(
        started=started.astimezone(UTC),
        seconds=seconds,
        command=command,
        commit=_git("rev-parse", "HEAD") or "unknown",
        dirty=bool(_git("status", "--porcelain", "--", ".", f":!{OUTPUT}")),
        cores=os.cpu_count() or 0,
        cpu=_cpu_model(),
        system=f"{platform.system()} {platform.release()} {platform.machine()}",
        python=platform.python_version(),
    )
