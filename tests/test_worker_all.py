"""``llmpulse worker all``: every flow as a child process, scraped by the real Prometheus."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from llmpulse.processors.settings import Settings
from tests.harness import wait_for

pytestmark = pytest.mark.stack


def _start(
    settings: Settings, tmp_path: Path, name: str, *args: str
) -> tuple[subprocess.Popen[bytes], Path]:
    # Same state folder as the session's Prometheus (its scrape targets), own chDB.
    env = settings.child_env(LLMPULSE_CLICKHOUSE_DSN=f"chdb://{tmp_path / name / 'chdb'}")
    out = tmp_path / f"{name}.out"
    proc = subprocess.Popen(
        [sys.executable, "-m", "llmpulse", "worker", "all", *args],
        env=env,
        stdout=out.open("wb"),
        stderr=subprocess.STDOUT,
    )
    return proc, out


async def _pids(out: Path) -> dict[str, int]:
    found: dict[str, int] = {}

    def running() -> bool:
        match = re.search(r"workers running \(([^)]*)\)", out.read_text())
        if match:
            found.update({f: int(p) for f, p in (x.split() for x in match[1].split(", "))})
        return bool(found)

    await wait_for(running, 60, "the workers to start")
    return found


def _up(settings: Settings, pid: int) -> str | None:
    query = urllib.parse.urlencode({"query": f'up{{pid="{pid}"}}'})
    url = f"{settings.prometheus_url}/api/v1/query?{query}"
    body = urllib.request.urlopen(url, timeout=5).read()  # noqa: S310 - local Prometheus
    result = json.loads(body)["data"]["result"]
    return str(result[0]["value"][1]) if result else None


def _cmdline(pid: int) -> list[str]:
    return Path(f"/proc/{pid}/cmdline").read_text().split("\0")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


async def test_worker_all_runs_each_flow_and_stops_them_together(
    settings: Settings, tmp_path: Path
) -> None:
    proc, out = _start(settings, tmp_path, "graceful", "--batch-rows", "500")
    try:
        pids = await _pids(out)
        assert set(pids) == {"sink", "breaker", "prompts"}
        assert "--batch-rows=500" in _cmdline(pids["sink"])  # batch options go to the sink
        # Each worker listed its /metrics for the local Prometheus, which scrapes it.
        for flow, pid in pids.items():
            deadline = time.monotonic() + 40
            while _up(settings, pid) != "1" and time.monotonic() < deadline:
                await asyncio.sleep(0.5)
            assert _up(settings, pid) == "1", (flow, out.read_text())
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
        assert not any(_alive(pid) for pid in pids.values())
        targets = json.loads((settings.state_dir / "prometheus" / "targets.json").read_text())
        listed = {g["labels"].get("pid") for g in targets}
        assert not listed & {str(pid) for pid in pids.values()}  # unregistered on exit
    finally:
        if proc.poll() is None:
            proc.kill()

    # A worker that dies takes the others down with it, and the exit code says so.
    proc, out = _start(settings, tmp_path, "crash")
    try:
        pids = await _pids(out)
        os.kill(pids["breaker"], signal.SIGKILL)
        assert proc.wait(timeout=60) == 1
        assert "the breaker worker exited with code -9" in out.read_text()
        assert not any(_alive(pid) for pid in pids.values())
    finally:
        if proc.poll() is None:
            proc.kill()
