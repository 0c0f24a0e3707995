"""Peak resident memory of the process that ran our side of a benchmark.

Figures are in MB (10^6 bytes), the unit of the targets. A worker subprocess's
peak is its ``VmHWM`` (read from ``/proc`` while it still runs: the kernel
forgets it at exit); a measurement run in its own child process reports
``getrusage(RUSAGE_SELF)`` from inside that child, so neither figure includes
the benchmark's producers or bare consumer.
"""

from __future__ import annotations

import resource
from pathlib import Path

_KB = 1024
MB = 1_000_000


def peak_rss_mb_self() -> float:
    """High-water RSS of this process (Linux reports ``ru_maxrss`` in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * _KB / MB


def peak_rss_mb_of(pid: int) -> float:
    """High-water RSS (``VmHWM``) of a running process; call before it exits."""
    return _status_mb(pid, "VmHWM")


def rss_mb_of(pid: int) -> float:
    """Current resident memory (``VmRSS``) of a running process."""
    return _status_mb(pid, "VmRSS")


def _status_mb(pid: int, field: str) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) * _KB / MB
    raise RuntimeError(f"no {field} in /proc/{pid}/status")
