"""Worker processes started by the demo and the simulator (real ``llmpulse worker FLOW``)."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import Callable

from processors.settings import Settings


def start_worker(
    settings: Settings, flow: str, say: Callable[[str], None] = print, **extra_env: str
) -> subprocess.Popen[bytes]:
    """Start ``llmpulse worker FLOW`` on ``settings``' services; its log goes to the state dir."""
    env = settings.child_env(**extra_env)
    log = settings.state_dir / f"{flow}-worker.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    say(f"==> starting the {flow} worker (log: {log})")
    return subprocess.Popen(
        [sys.executable, "-m", "processors.cli", "worker", flow],
        env=env,
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
    )


async def wait_ready(*procs: subprocess.Popen[bytes], seconds: int = 8) -> None:
    """Give workers time to join their groups and recover their tables; fail if one exits."""
    for _ in range(seconds):
        if any(p.poll() is not None for p in procs):
            raise RuntimeError("a worker exited early; see the *-worker.log files in the state dir")
        await asyncio.sleep(1)


def stop_workers(*procs: subprocess.Popen[bytes], timeout: float = 20) -> None:
    """SIGTERM every worker, then wait for each (a stuck one is killed)."""
    for p in procs:
        if p.poll() is None:
            p.terminate()
    for p in procs:
        try:
            p.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
