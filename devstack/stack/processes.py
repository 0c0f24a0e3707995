"""The service processes: spawn, check, stop, pick free ports, read their logs."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import time
from pathlib import Path

from llmpulse.devstack.stack.model import HOST, ServiceName, StackError
from llmpulse.devstack.stack.paths import Record

# Marks the start of each run in a service log (after "=== <timestamp> ").
_HEADER = "llmpulse stack: "

# How long SIGTERM may take before SIGKILL.
_STOP_TIMEOUT: dict[ServiceName, float] = {"kafka": 30.0, "redis": 10.0, "prometheus": 10.0}

# Popen objects of the services this Python process started, so that exited
# children are reaped (a zombie would still answer kill(pid, 0)).
_CHILDREN: dict[int, subprocess.Popen[bytes]] = {}


def spawn(argv: list[str], log: Path, *, cwd: Path) -> int:
    """Start ``argv`` in its own session with stdout/stderr appended to ``log``; return its pid.

    A header line with the command is written first: :func:`log_tail` reads only
    the latest run, so an error of an earlier run is never reported as today's.
    """
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as out:
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        out.write(f"=== {stamp} {_HEADER}{' '.join(argv)}\n".encode())
        out.flush()
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=cwd,
            start_new_session=True,
        )
    _CHILDREN[proc.pid] = proc
    return proc.pid


def alive(pid: int) -> bool:
    """``pid`` exists and is not a zombie (our own exited children are reaped)."""
    child = _CHILDREN.get(pid)
    if child is not None:
        if child.poll() is not None:
            del _CHILDREN[pid]
            return False
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rpartition(")")[2].split()[:1] != ["Z"]


def _cmdline(pid: int) -> str:
    try:
        return (
            Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        )
    except OSError:
        return ""


def owned(rec: Record) -> bool:
    """The recorded pid is alive and still the process we started."""
    if rec.pid is None or not alive(rec.pid):
        return False
    cmd = _cmdline(rec.pid)
    return all(m in cmd for m in rec.match)


def _signal(pid: int, sig: signal.Signals) -> None:
    # Services run in their own session, so the pid is also the process group id.
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, sig)


def terminate(records: list[Record], *, kill_now: bool = False) -> None:
    """SIGTERM (or SIGKILL), wait, then SIGKILL what is left.

    Only processes that are still :func:`owned` are signalled. Returns once all of
    them are gone; raises :class:`StackError` if even SIGKILL does not stop one.
    """
    live = [r for r in records if r.pid is not None and owned(r)]
    for rec in live:
        assert rec.pid is not None
        _signal(rec.pid, signal.SIGKILL if kill_now else signal.SIGTERM)
        # A stopped (SIGSTOP) process would hold SIGTERM pending until the timeout.
        _signal(rec.pid, signal.SIGCONT)
    start = time.monotonic()
    pending = list(live)
    while pending:
        pending = [r for r in pending if r.pid is not None and alive(r.pid)]
        for rec in pending:
            assert rec.pid is not None
            if time.monotonic() - start > _STOP_TIMEOUT[rec.name]:
                _signal(rec.pid, signal.SIGKILL)
        if pending:
            if time.monotonic() - start > max(_STOP_TIMEOUT.values()) + 10:
                pids = ", ".join(str(r.pid) for r in pending)
                raise StackError(f"could not stop pid(s) {pids} even with SIGKILL")
            time.sleep(0.1)


# Ports this process has handed out. A picked port is closed again before the
# service binds it, so without this two services started together (or a JVM that
# is still booting) could be given the same port by the kernel.
_HANDED_OUT: set[int] = set()


def free_port() -> int:
    """A loopback port that is free now and that this process has not handed out before."""
    held: list[socket.socket] = []
    try:
        for _ in range(50):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            held.append(sock)  # keep it bound so the next try gets another port
            sock.bind((HOST, 0))
            port = int(sock.getsockname()[1])
            if port not in _HANDED_OUT:
                _HANDED_OUT.add(port)
                return port
        raise StackError("could not find a free loopback port")
    finally:
        for sock in held:
            sock.close()


# How long a port may stay taken before its service moves: a JVM killed a moment
# ago holds its sockets until its last thread is gone.
_PORT_PATIENCE = 5.0


def reuse_port(port: int) -> bool:
    """Whether ``port`` can be bound on loopback (within a few seconds); then it is handed out.

    The check sets ``SO_REUSEADDR`` as Kafka, Redis and Prometheus do, so a port
    left in TIME_WAIT by the previous run of the same service still counts as free.
    """
    deadline = time.monotonic() + _PORT_PATIENCE
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind((HOST, port))
            except OSError:
                if time.monotonic() > deadline:
                    return False
            else:
                _HANDED_OUT.add(port)
                return True
        time.sleep(0.2)


def log_tail(log: Path, lines: int = 40) -> str:
    """The last ``lines`` lines of the latest run in ``log`` (from its last 64 KiB).

    "" if unreadable.
    """
    try:
        with log.open("rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - 64 * 1024))
            text = fh.read().decode(errors="replace")
    except OSError:
        return ""
    run = text.splitlines()
    starts = [i for i, line in enumerate(run) if line.startswith("=== ") and _HEADER in line]
    return "\n".join(run[starts[-1] if starts else 0 :][-lines:])


def log_hint(log: Path) -> str:
    """The most telling line of a log: the last error, else the last line."""
    lines = [ln.strip() for ln in log_tail(log, 200).splitlines() if ln.strip()]
    for line in reversed(lines):
        if re.search(r"\b(ERROR|FATAL|Exception|error|fatal)\b", line):
            return line[:300]
    return lines[-1][:300] if lines else "(empty log)"


def last_line(output: str) -> str:
    """The last non-blank line of a command's output, cut to 300 characters."""
    lines = [ln.strip() for ln in output.splitlines() if ln.strip()]
    return lines[-1][:300] if lines else "(no output)"
