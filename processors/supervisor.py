"""Worker processes (real ``llmpulse worker FLOW``): started by the demo, the simulator
and ``llmpulse worker all``."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # FLOWS is read by `llmpulse --help`, which needs no worker extra
    from llmpulse.processors.settings import Settings

#: The processors ``llmpulse worker`` runs (docker-compose has one service each).
FLOWS = ("sink", "breaker", "prompts")


def start_worker(
    settings: Settings,
    flow: str,
    say: Callable[[str], None] = print,
    *,
    args: Sequence[str] = (),
    **extra_env: str,
) -> subprocess.Popen[bytes]:
    """Start ``llmpulse worker FLOW`` on ``settings``' services; its log goes to the state dir."""
    env = settings.child_env(**extra_env)
    log = settings.state_dir / f"{flow}-worker.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    say(f"==> starting the {flow} worker (log: {log})")
    return subprocess.Popen(
        [sys.executable, "-m", "llmpulse", "worker", flow, *args],
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


def run_all(
    settings: Settings,
    env: Mapping[str, str],
    say: Callable[[str], None] = print,
    *,
    sink_args: Sequence[str] = (),
) -> int:
    """``llmpulse worker all``: every flow as its own process until SIGINT/SIGTERM.

    With a fixed ``metrics_port`` P the flows serve metrics on P, P+1, P+2 (in
    ``FLOWS`` order); with 0 each picks a free port. If one worker exits on its
    own, the others are stopped and the exit code is 1. ``env`` (``LLMPULSE_*``)
    is passed to every worker, ``sink_args`` (batch options) to the sink.
    """
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    procs: dict[str, subprocess.Popen[bytes]] = {}
    try:
        for i, flow in enumerate(FLOWS):
            port = settings.metrics_port + i if settings.metrics_port else 0
            procs[flow] = start_worker(
                settings,
                flow,
                say,
                args=sink_args if flow == "sink" else (),
                **{**env, "LLMPULSE_METRICS_PORT": str(port)},
            )
        pids = ", ".join(f"{flow} {p.pid}" for flow, p in procs.items())
        say(f"==> workers running ({pids}); Ctrl-C or SIGTERM stops them")
        while not stop.wait(0.5):
            exited = {flow: p.returncode for flow, p in procs.items() if p.poll() is not None}
            if exited:
                flow, code = next(iter(exited.items()))
                say(f"==> the {flow} worker exited with code {code}; stopping the others")
                return 1
        say("==> stopping the workers")
        return 0
    finally:
        stop_workers(*procs.values())
