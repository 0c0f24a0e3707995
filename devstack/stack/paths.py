"""Where the stack keeps its state: ``stack.json`` (what runs where) and ``ports.json``.

``stack.json`` describes the running stack and goes away with ``stack down``;
``ports.json`` keeps each service's last ports across ``down``/``up`` so that a
restarted stack comes back where its clients expect it. Writers take
:func:`locked` on :attr:`Paths.lock_file`, so ``up``, ``down`` and the outage
helpers of several processes never interleave.

The state folder holds the services' data and logs (organization and user
data): the folders these helpers make or lock in are 0700 and the files they
write 0600 (``llmpulse.processors.owner_only``).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import time
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from llmpulse.devstack.stack.model import SERVICES, ServiceName
from llmpulse.processors import owner_only
from llmpulse.processors.settings import Settings

_STATE_FORMAT = 1


@dataclass(frozen=True)
class Paths:
    """The absolute layout under ``settings.state_dir`` and ``settings.cache_dir``."""

    state: Path
    cache: Path

    @classmethod
    def of(cls, settings: Settings) -> Paths:
        """The layout of ``settings``, with both directories resolved to absolute paths."""
        return cls(state=settings.state_dir.resolve(), cache=settings.cache_dir.resolve())

    @property
    def stack_file(self) -> Path:
        return self.state / "stack.json"

    @property
    def ports_file(self) -> Path:
        return self.state / "ports.json"

    @property
    def lock_file(self) -> Path:
        return self.state / ".stack.lock"

    def service_dir(self, name: ServiceName) -> Path:
        return self.state / name

    def log(self, name: ServiceName) -> Path:
        return self.service_dir(name) / f"{name}.log"

    @property
    def kafka_config(self) -> Path:
        return self.service_dir("kafka") / "server.properties"

    @property
    def kafka_log4j(self) -> Path:
        return self.service_dir("kafka") / "log4j2.properties"

    @property
    def kafka_data(self) -> Path:
        return self.service_dir("kafka") / "data"

    @property
    def kafka_keystore(self) -> Path:
        """Key and certificate of the SASL_SSL listener in one PEM file (Kafka's PEM key store)."""
        return self.service_dir("kafka") / "keystore.pem"

    @property
    def kafka_scram_stamp(self) -> Path:
        """Fingerprint of the SCRAM credential Kafka's metadata holds (no secret in it)."""
        return self.service_dir("kafka") / "scram.stamp"

    @property
    def redis_acl(self) -> Path:
        return self.service_dir("redis") / "users.acl"

    @property
    def credentials_file(self) -> Path:
        """Passwords of the secure listeners, readable by the owner only."""
        return self.state / "credentials.json"

    @property
    def tls_dir(self) -> Path:
        """The private CA and the loopback certificate of the secure listeners."""
        return self.state / "tls"

    @property
    def prometheus_config(self) -> Path:
        return self.service_dir("prometheus") / "prometheus.yml"

    @property
    def prometheus_targets(self) -> Path:
        return self.service_dir("prometheus") / "targets.json"

    @property
    def prometheus_data(self) -> Path:
        return self.service_dir("prometheus") / "data"

    def kafka_home(self, version: str) -> Path:
        return self.cache / f"kafka-{version}"


@dataclass
class Record:
    """A local service as persisted in stack.json."""

    name: ServiceName
    pid: int | None
    ports: dict[str, int]
    address: str
    url: str
    log: str
    # Every string must occur in /proc/<pid>/cmdline before we signal the pid.
    match: list[str]
    version: str = ""
    stopped: bool = False  # True after stop_service(): restart on the same ports
    started_at: float = field(default_factory=time.time)

    @classmethod
    def from_json(cls, name: ServiceName, raw: Mapping[str, Any]) -> Record:
        """Parse one entry of stack.json; raises KeyError/TypeError/ValueError if malformed."""
        return cls(
            name=name,
            pid=int(raw["pid"]) if raw.get("pid") is not None else None,
            ports={str(k): int(v) for k, v in dict(raw["ports"]).items()},
            address=str(raw["address"]),
            url=str(raw["url"]),
            log=str(raw["log"]),
            match=[str(m) for m in raw["match"]],
            version=str(raw.get("version", "")),
            stopped=bool(raw.get("stopped", False)),
            started_at=float(raw.get("started_at", 0.0)),
        )


def load(paths: Paths) -> dict[ServiceName, Record]:
    """The recorded services; a missing or unreadable stack.json (or entry) is left out."""
    try:
        raw = json.loads(paths.stack_file.read_text())
        services = dict(raw["services"])
    except FileNotFoundError:
        return {}
    except (ValueError, KeyError, TypeError):
        return {}  # unreadable: treated as "nothing running"
    out: dict[ServiceName, Record] = {}
    for name in SERVICES:
        if name in services:
            with contextlib.suppress(KeyError, TypeError, ValueError):
                out[name] = Record.from_json(name, services[name])
    return out


def save(paths: Paths, records: Mapping[ServiceName, Record]) -> None:
    """Replace stack.json atomically with ``records`` and their top-level endpoint keys."""
    doc: dict[str, Any] = {"format": _STATE_FORMAT, "state_dir": str(paths.state)}
    keys: dict[ServiceName, str] = {
        "kafka": "kafka_bootstrap",
        "redis": "redis_url",
        "prometheus": "prometheus_url",
    }
    for name, rec in records.items():
        doc[keys[name]] = rec.url
    doc["services"] = {name: asdict(rec) for name, rec in records.items()}
    write_atomic(paths.stack_file, json.dumps(doc, indent=2, sort_keys=True) + "\n")
    ports = load_ports(paths)
    ports.update({name: rec.ports for name, rec in records.items()})
    write_atomic(paths.ports_file, json.dumps(ports, indent=2, sort_keys=True) + "\n")


def load_ports(paths: Paths) -> dict[ServiceName, dict[str, int]]:
    """The last ports of every service ever started in this state dir (kept by ``down``).

    A missing or unreadable ports.json (or entry) is left out: the service then
    gets new ports.
    """
    try:
        raw = json.loads(paths.ports_file.read_text())
    except (OSError, ValueError):
        return {}
    out: dict[ServiceName, dict[str, int]] = {}
    for name in SERVICES:
        with contextlib.suppress(AttributeError, TypeError, ValueError):
            out[name] = {str(k): int(v) for k, v in dict(raw.get(name) or {}).items()}
    return {name: ports for name, ports in out.items() if ports}


def write_atomic(path: Path, text: str, *, mode: int | None = None) -> None:
    """Write ``text`` to ``path`` so that readers see the old or the new file, never half.

    With ``mode`` (e.g. ``0o600`` for secrets) the file has that mode from its
    creation on, so no other user can ever open it. Without, it is 0600 too (it
    holds state); the folder is made or tightened to 0700.
    """
    owner_only.private_dir(path.parent)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)  # left by a crash: the new file gets its mode afresh
    if mode is None:
        owner_only.write_text(tmp, text)
    else:
        with os.fdopen(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode), "w") as fh:
            fh.write(text)
    os.replace(tmp, path)


@contextlib.contextmanager
def locked(lock_path: Path) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``lock_path`` (created if missing) for the block.

    The lock's folder (the state folder, a service's folder or the cache) is
    made, or tightened to, 0700.
    """
    owner_only.private_dir(lock_path.parent)
    with lock_path.open("a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)
