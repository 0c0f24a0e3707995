"""The stack as a whole: up, down, status, endpoints, and the outage helpers.

Every operation reads stack.json, compares it with the live processes and, for
the ones that change something, holds the stack lock while doing so.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable, Mapping

from pydantic import SecretStr

from llmpulse.devstack.stack.model import (
    SERVICES,
    ServiceName,
    ServiceStatus,
    StackEndpoints,
    StackError,
    print_progress,
)
from llmpulse.devstack.stack.paths import Paths, Record, load, load_ports, locked, save
from llmpulse.devstack.stack.probes import PROBE_TIMEOUT, describe, probe, redact
from llmpulse.devstack.stack.processes import owned, terminate
from llmpulse.devstack.stack.secure import SECURE_PORT, is_secure
from llmpulse.devstack.stack.services import prepare_and_launch
from llmpulse.processors import owner_only
from llmpulse.processors.settings import Settings

# How long up() keeps probing a recorded, live service before restarting it: a
# JVM in a long GC pause or a Kafka recovering its logs is slow, not dead.
_REUSE_GRACE = 60.0


def up(
    settings: Settings,
    progress: Callable[[str], None] = print_progress,
    *,
    secure: bool | None = None,
) -> StackEndpoints:
    """Start (or reuse) the local stack and return its endpoints.

    Idempotent: healthy services recorded in ``stack.json`` are reused. Any other
    local service (never started, stopped by :func:`down` or :func:`stop_service`,
    crashed, hung, or running another Kafka version) is started on its last ports
    where they are still free, with its data: only ``down(wipe=True)`` deletes
    data. ``secure=True`` makes Kafka and Redis also serve their secure listeners
    (:mod:`~llmpulse.devstack.stack.secure`), ``False`` drops them (a running
    service is restarted with its data either way), None keeps what the stack
    served last. Raises :class:`StackError` with a one-line reason when
    something cannot start.
    """
    paths = Paths.of(settings)
    owner_only.private_dir(paths.state)
    with locked(paths.lock_file):
        records = load(paths)
        last_ports = load_ports(paths)
        want_secure = _want_secure(settings, secure, records, last_ports)
        plan: dict[ServiceName, Mapping[str, int] | None] = {}
        for name in SERVICES:
            ext = _external(settings, name)
            if ext is not None:
                _check_external(settings, name, ext, progress)
                continue
            rec = records.get(name)
            if rec is not None and owned(rec):
                problem = _replace_because(settings, rec, want_secure)
                if problem is None:
                    progress(f"{name}: already running on {rec.address} (pid {rec.pid})")
                    continue
                progress(f"{name}: pid {rec.pid} {problem}; restarting it with its data")
                terminate([rec])
            elif rec is not None and not rec.stopped:
                progress(f"{name}: recorded pid {rec.pid} is gone; restarting it with its data")
            plan[name] = rec.ports if rec is not None else last_ports.get(name)
        for name in plan:
            records.pop(name, None)
        save(paths, records)
        prepare_and_launch(settings, paths, plan, records, progress, secure=want_secure)
        save(paths, records)
    return endpoints(settings)


def _want_secure(
    settings: Settings,
    secure: bool | None,
    records: Mapping[ServiceName, Record],
    last_ports: Mapping[ServiceName, Mapping[str, int]],
) -> bool:
    """Whether Kafka and Redis are to serve their secure listeners (both or neither).

    None: as they did last (running, or their last ports), so a plain ``up``
    after ``up --secure`` keeps the listeners its clients were given.
    """
    external = [name for name in SECURE_PORT if _external(settings, name) is not None]
    if secure is None:
        secure = not external and any(
            key in (rec.ports if (rec := records.get(name)) else last_ports.get(name, {}))
            for name, key in SECURE_PORT.items()
        )
    if secure and external:
        raise StackError(
            f"the secure listeners need the local {' and '.join(external)}: unset "
            + " and ".join(_EXTERNAL_SETTING[name] for name in external)
        )
    return secure


_EXTERNAL_SETTING: dict[ServiceName, str] = {
    "kafka": "LLMPULSE_KAFKA_BOOTSTRAP",
    "redis": "LLMPULSE_REDIS_URL",
    "prometheus": "LLMPULSE_PROMETHEUS_URL",
}


def _replace_because(settings: Settings, rec: Record, want_secure: bool) -> str | None:
    """Why the running ``rec`` must be restarted, or None to reuse it."""
    if rec.name == "kafka" and rec.version != settings.kafka_version:
        return f"runs kafka {rec.version}, wanted {settings.kafka_version}"
    if rec.name in SECURE_PORT and is_secure(rec) != want_secure:
        return "serves a secure listener" if is_secure(rec) else "serves no secure listener"
    problem = _unhealthy_for(rec, _REUSE_GRACE)
    return None if problem is None else f"is not answering ({problem})"


def _unhealthy_for(rec: Record, grace: float) -> str | None:
    """None once ``rec`` answers its health check; the last problem after ``grace`` s."""
    deadline = time.monotonic() + grace
    while True:
        try:
            probe(rec.name, rec.url)
        except Exception as exc:
            if time.monotonic() > deadline or not owned(rec):
                return describe(exc)
            time.sleep(0.5)
        else:
            return None


def _check_external(
    settings: Settings, name: ServiceName, url: str, progress: Callable[[str], None]
) -> None:
    deadline = time.monotonic() + 10.0
    while True:
        try:
            detail = probe(name, url, PROBE_TIMEOUT, kafka_security=settings.kafka_security)
        except Exception as exc:
            if time.monotonic() > deadline:
                raise StackError(
                    f"external {name} at {redact(url)} is not reachable: {describe(exc)}"
                ) from exc
            time.sleep(0.5)
        else:
            progress(f"{name}: using external {redact(url)} ({detail})")
            return


def _external(settings: Settings, name: ServiceName) -> str | None:
    value = {
        "kafka": settings.kafka_bootstrap,
        # Revealed for the probe's client; messages show it through ``redact``.
        "redis": settings.redis_url.get_secret_value() if settings.redis_url else None,
        "prometheus": settings.prometheus_url,
    }[name]
    return value or None


def down(
    settings: Settings, progress: Callable[[str], None] = print_progress, *, wipe: bool = False
) -> None:
    """Stop every local service (SIGTERM, then SIGKILL after a timeout).

    Removes ``stack.json`` and the Prometheus scrape targets. Data, logs and
    ports stay for the next :func:`up` (Redis writes ``dump.rdb`` on SIGTERM);
    ``wipe`` also deletes the data and logs of the local services (Kafka's
    storage, Redis' dump, Prometheus' TSDB, not ClickHouse), so the next
    :func:`up` starts empty. External services are left alone.
    """
    paths = Paths.of(settings)
    if not paths.state.is_dir():
        progress("stack: nothing to stop")
        return
    with locked(paths.lock_file):
        records = load(paths)
        live = [r for r in records.values() if owned(r)]
        start = time.monotonic()
        for rec in live:
            progress(f"{rec.name}: stopping pid {rec.pid}...")
        terminate(live)
        paths.stack_file.unlink(missing_ok=True)
        paths.prometheus_targets.unlink(missing_ok=True)
        if live:
            progress(f"stack: stopped {len(live)} service(s) in {time.monotonic() - start:.1f} s")
        else:
            progress("stack: nothing was running")
        if wipe:
            for name in SERVICES:
                shutil.rmtree(paths.service_dir(name), ignore_errors=True)
            progress(f"stack: deleted the Kafka, Redis and Prometheus data in {paths.state}")


def status(settings: Settings) -> dict[str, ServiceStatus]:
    """Health of every service, keyed by name (kafka, redis, prometheus)."""
    paths = Paths.of(settings)
    records = load(paths)
    out: dict[str, ServiceStatus] = {}
    for name in SERVICES:
        ext = _external(settings, name)
        if ext is not None:
            try:
                detail = probe(name, ext, kafka_security=settings.kafka_security)
                out[name] = ServiceStatus(name, "external", redact(ext), None, detail)
            except Exception as exc:
                out[name] = ServiceStatus(name, "unhealthy", redact(ext), None, describe(exc))
            continue
        rec = records.get(name)
        if rec is None:
            out[name] = ServiceStatus(name, "stopped", "", None, "not running (llmpulse stack up)")
        elif rec.stopped and not owned(rec):
            out[name] = ServiceStatus(
                name, "stopped", rec.address, None, "stopped by stop_service(); port kept"
            )
        elif not owned(rec):
            out[name] = ServiceStatus(
                name, "stopped", rec.address, None, f"pid {rec.pid} exited; see {rec.log}"
            )
        else:
            try:
                detail = probe(name, rec.url)
                out[name] = ServiceStatus(name, "running", rec.address, rec.pid, detail)
            except Exception as exc:
                out[name] = ServiceStatus(
                    name, "unhealthy", rec.address, rec.pid, f"{describe(exc)}; see {rec.log}"
                )
    return out


def endpoints(settings: Settings) -> StackEndpoints:
    """Endpoints of the running local stack and/or the external services.

    Starts nothing and runs no health check. A service paused with
    :func:`stop_service` still yields its (reserved) endpoint; a service that
    was never started or whose process died raises :class:`StackError`.
    """
    paths = Paths.of(settings)
    records = load(paths)
    urls: dict[ServiceName, str] = {}
    for name in SERVICES:
        ext = _external(settings, name)
        if ext is not None:
            urls[name] = ext
            continue
        rec = records.get(name)
        if rec is None:
            raise StackError(
                f"{name} is not running: start the local stack with `llmpulse stack up` "
                f"(state dir {paths.state})"
            )
        if not rec.stopped and not owned(rec):
            raise StackError(
                f"{name} (pid {rec.pid}) is no longer running: run `llmpulse stack up` "
                f"(log: {rec.log})"
            )
        urls[name] = rec.url
    return StackEndpoints(
        kafka_bootstrap=urls["kafka"], redis_url=urls["redis"], prometheus_url=urls["prometheus"]
    )


def _local_record(paths: Paths, settings: Settings, name: str) -> tuple[ServiceName, Record]:
    if name not in SERVICES:
        raise StackError(f"unknown service {name!r}: expected one of {', '.join(SERVICES)}")
    service: ServiceName = name
    if _external(settings, service) is not None:
        raise StackError(f"{service} is external; llmpulse does not start or stop it")
    rec = load(paths).get(service)
    if rec is None:
        raise StackError(f"{service} is not part of a running stack: run `llmpulse stack up`")
    return service, rec


def stop_service(settings: Settings, name: str, *, graceful: bool = True) -> None:
    """Stop one local service but keep its ports and data, to simulate an outage.

    ``graceful=False`` SIGKILLs it instead (a crash: Redis then loses what it
    wrote since its last clean shutdown). :func:`start_service` or :func:`up`
    brings it back on the same port.
    """
    paths = Paths.of(settings)
    with locked(paths.lock_file):
        service, rec = _local_record(paths, settings, name)
        if owned(rec):
            terminate([rec], kill_now=not graceful)
        records = load(paths)
        rec.pid = None
        rec.stopped = True
        records[service] = rec
        save(paths, records)


def start_service(
    settings: Settings, name: str, progress: Callable[[str], None] = print_progress
) -> None:
    """Start a service stopped with :func:`stop_service` on its old port, with its data.

    Blocks until it answers its health check. A running service is left alone.
    """
    paths = Paths.of(settings)
    with locked(paths.lock_file):
        service, rec = _local_record(paths, settings, name)
        if owned(rec):
            progress(f"{service}: already running on {rec.address} (pid {rec.pid})")
            return
        records = load(paths)
        records.pop(service, None)
        prepare_and_launch(
            settings,
            paths,
            {service: rec.ports},
            records,
            progress,
            keep_stopped=True,
            secure=is_secure(rec),
        )
        save(paths, records)


def with_endpoints(settings: Settings, ep: StackEndpoints) -> Settings:
    """``settings`` with every unset service address taken from ``ep``."""
    return settings.model_copy(
        update={
            "kafka_bootstrap": settings.kafka_bootstrap or ep.kafka_bootstrap,
            "redis_url": settings.redis_url or SecretStr(ep.redis_url),
            "prometheus_url": settings.prometheus_url or ep.prometheus_url,
        }
    )
