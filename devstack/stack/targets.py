"""Prometheus ``file_sd`` scrape targets: ``<state_dir>/prometheus/targets.json``.

The local Prometheus re-reads the file within a second or two of a change, so
workers can register their metrics endpoint whenever they start.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from llmpulse.devstack.stack.model import split_host_port
from llmpulse.devstack.stack.paths import Paths, locked, write_atomic
from llmpulse.processors.settings import Settings


def register_scrape_target(
    settings: Settings, job: str, host_port: str, *, labels: Mapping[str, str] | None = None
) -> None:
    """Have the local Prometheus scrape ``http://host_port/metrics`` as ``job``.

    Writes ``<state_dir>/prometheus/targets.json`` (file_sd; Prometheus notices
    the change within a second or two). Registering the same ``host_port`` again
    replaces its entry. Safe to call from several processes at once, and before
    the stack is up. An external Prometheus does not read this file.
    """
    host, port = split_host_port(host_port)
    if not job or not 0 < port < 65536:
        raise ValueError(f"need a job name and a host:port, got job={job!r} {host_port!r}")
    target = f"{host}:{port}" if ":" not in host else f"[{host}]:{port}"
    entry_labels = {**(labels or {}), "job": job}
    _update_targets(settings, target, {"targets": [target], "labels": entry_labels})


def unregister_scrape_target(settings: Settings, host_port: str) -> None:
    """Remove a target added with :func:`register_scrape_target` (no-op if absent)."""
    host, port = split_host_port(host_port)
    target = f"{host}:{port}" if ":" not in host else f"[{host}]:{port}"
    _update_targets(settings, target, None)


def _update_targets(settings: Settings, target: str, entry: dict[str, Any] | None) -> None:
    paths = Paths.of(settings)
    path = paths.prometheus_targets
    with locked(path.with_name(".targets.lock")):
        try:
            current = json.loads(path.read_text())
            groups = (
                [g for g in current if isinstance(g, dict)] if isinstance(current, list) else []
            )
        except (OSError, ValueError):
            groups = []
        kept = [g for g in groups if target not in g.get("targets", [])]
        if entry is not None:
            kept.append(entry)
        write_atomic(path, json.dumps(kept, indent=2) + "\n")


def ensure_targets_file(paths: Paths) -> None:
    """Create an empty targets file if there is none; registered targets are kept."""
    if not paths.prometheus_targets.is_file():
        write_atomic(paths.prometheus_targets, "[]\n")
