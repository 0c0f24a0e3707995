"""Health checks: one real protocol request per service (Kafka metadata, Redis PING, HTTP)."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import socket
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar, cast

import redis

from llmpulse.core.kafka_security import KafkaSecurity
from llmpulse.devstack.stack.model import ServiceName, StackError, split_host_port
from llmpulse.devstack.stack.paths import Record
from llmpulse.devstack.stack.processes import alive, log_hint, log_tail

#: How long a service may take to answer its health check after being started. A
#: Kafka restarted after a crash first recovers its logs, hence the long wait (a
#: process that exits is reported at once).
READY_TIMEOUT: dict[ServiceName, float] = {"kafka": 180.0, "redis": 15.0, "prometheus": 30.0}
#: Single health-check attempt, used by status() and by up() when reusing.
PROBE_TIMEOUT = 3.0

_T = TypeVar("_T")
_PLAINTEXT = KafkaSecurity()


def _run_async(factory: Callable[[], Coroutine[Any, Any, _T]]) -> _T:
    """Run a coroutine to completion even when the caller is inside an event loop."""
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(lambda: asyncio.run(factory())).result()


def _probe_kafka(bootstrap: str, timeout: float, security: KafkaSecurity) -> str:
    # A cheap TCP check first: aiokafka logs an error for every refused connection.
    first = bootstrap.split(",")[0]
    with socket.create_connection(split_host_port(first), timeout=timeout):
        pass

    async def metadata() -> str:
        from aiokafka.admin import AIOKafkaAdminClient

        admin = AIOKafkaAdminClient(
            bootstrap_servers=bootstrap,
            client_id="llmpulse-stack-health",
            request_timeout_ms=int(timeout * 1000),
            **security.aiokafka_options(),
        )
        try:
            await asyncio.wait_for(admin.start(), timeout)
            cluster = await asyncio.wait_for(admin.describe_cluster(), timeout)
            topics = await asyncio.wait_for(admin.list_topics(), timeout)
        finally:
            with contextlib.suppress(Exception):
                await admin.close()
        brokers = cluster.get("brokers") or []
        if not brokers:
            raise RuntimeError("metadata lists no brokers yet")
        return f"{len(brokers)} broker(s), {len(topics)} topic(s)"

    return _run_async(metadata)


def _probe_redis(url: str, timeout: float) -> str:
    client = redis.Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout)
    try:
        if not client.ping():
            raise RuntimeError("PING did not answer PONG")
        info = client.info("server")
        return f"redis {info.get('redis_version', '?')}"
    finally:
        client.close()


def _http_get(url: str, timeout: float) -> bytes:
    if urllib.parse.urlsplit(url).scheme not in ("http", "https"):
        raise ValueError(f"not an http(s) URL: {url}")
    with urllib.request.urlopen(url, timeout=timeout) as resp:  # noqa: S310 (scheme checked)
        return cast(bytes, resp.read())


def _probe_prometheus(url: str, timeout: float) -> str:
    body = _http_get(url.rstrip("/") + "/-/ready", timeout)
    return body.decode(errors="replace").strip() or "ready"


def probe(
    name: ServiceName,
    url: str,
    timeout: float = PROBE_TIMEOUT,
    *,
    kafka_security: KafkaSecurity = _PLAINTEXT,
) -> str:
    """One health check of ``name`` at ``url``: a short detail if healthy, else it raises.

    Kafka is asked as a client with ``kafka_security`` would (a secured listener).

    Any exception means "not healthy (yet)"; :func:`describe` makes it one line.
    """
    if name == "kafka":
        return _probe_kafka(url, timeout, kafka_security)
    if name == "redis":
        return _probe_redis(url, timeout)
    return _probe_prometheus(url, timeout)


def describe(exc: BaseException) -> str:
    """``Type: first line of the message`` (cut to 200 characters)."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:200]}" if text else type(exc).__name__


def wait_ready(rec: Record) -> str:
    """Probe ``rec`` until it answers; return the probe's detail.

    Raises :class:`StackError` (with the log tail as details) if the process exits
    or does not answer within :data:`READY_TIMEOUT`.
    """
    log = Path(rec.log)
    timeout = READY_TIMEOUT[rec.name]
    start = time.monotonic()
    last = "no answer yet"
    while True:
        if rec.pid is not None and not alive(rec.pid):
            raise StackError(
                f"{rec.name} exited during startup: {log_hint(log)} (log: {log})",
                details=log_tail(log),
            )
        try:
            return probe(rec.name, rec.url, 5.0 if rec.name == "kafka" else 2.0)
        except Exception as exc:
            last = describe(exc)
        if time.monotonic() - start > timeout:
            raise StackError(
                f"{rec.name} not ready after {timeout:.0f} s on {rec.address} ({last}); "
                f"last log line: {log_hint(log)} (log: {log})",
                details=log_tail(log),
            )
        time.sleep(0.25)


def redact(url: str) -> str:
    """``url`` with its password (if any) replaced by ``***``, for messages."""
    parts = urllib.parse.urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rpartition("@")[2]
    user = f"{parts.username}:***@" if parts.username else ":***@"
    return urllib.parse.urlunsplit(parts._replace(netloc=user + netloc))
