"""The vocabulary every part of the local stack shares: service names, results, errors."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Literal, get_args

from llmpulse.processors.errors import ServiceError

ServiceName = Literal["kafka", "redis", "prometheus"]
ServiceState = Literal["running", "stopped", "external", "unhealthy"]
SERVICES: tuple[ServiceName, ...] = get_args(ServiceName)

#: Every local service listens on loopback only.
HOST = "127.0.0.1"


class StackError(ServiceError):
    """A stack operation failed; ``str(error)`` is one line saying what to do.

    ``details`` may hold more context (for example the tail of a service log).
    """

    def __init__(self, message: str, details: str = "") -> None:
        super().__init__(message)
        self.details = details


@dataclass(frozen=True)
class StackEndpoints:
    """Where the services are: local stack or external."""

    kafka_bootstrap: str
    redis_url: str
    prometheus_url: str


@dataclass(frozen=True)
class ServiceStatus:
    """One line of ``llmpulse stack status``."""

    name: ServiceName
    state: ServiceState
    address: str
    pid: int | None
    detail: str


def print_progress(message: str) -> None:
    """Default progress sink: one line on stderr (stdout stays for results)."""
    print(message, file=sys.stderr, flush=True)


def split_host_port(address: str) -> tuple[str, int]:
    """``(host, port)`` of ``host:port`` or ``[v6]:port``; an empty host means :data:`HOST`.

    Raises ``ValueError`` when the port is not an integer.
    """
    host, _, port = address.strip().rpartition(":")
    return host.strip("[]") or HOST, int(port)
