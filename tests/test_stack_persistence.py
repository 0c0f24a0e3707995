"""A local stack keeps its data across restarts (issue 13 item 3).

``stack down`` then ``stack up``, a SIGKILLed Kafka and a Kafka that does not
answer used to give a freshly formatted Kafka on new ports (and an empty Redis):
every event not yet sunk was gone. Here every restart must come back on the same
ports with the same messages, keys and Prometheus series; only ``down --wipe``
deletes them. The integration tests share one private stack (its own state dir)
and run in file order; each starts from a running stack.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import threading
import time
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from llmpulse.cli import main
from llmpulse.devstack import stack
from llmpulse.devstack.stack import lifecycle
from llmpulse.devstack.stack.processes import log_tail
from llmpulse.processors.settings import Settings

_MESSAGES = 50


def _settings(state_dir: Path) -> Settings:
    """Settings isolated from the caller's LLMPULSE_* services, sharing the jar cache."""
    return Settings(
        state_dir=state_dir,
        cache_dir=Settings().cache_dir,
        kafka_bootstrap=None,
        redis_url=None,
        prometheus_url=None,
    )


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    return stat.exists() and stat.read_text().rpartition(")")[2].split()[:1] != ["Z"]


def _kafka_pid(settings: Settings) -> int:
    pid = stack.status(settings)["kafka"].pid
    assert pid is not None
    return pid


async def _produce(bootstrap: str, topic: str) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, num_partitions=1, replication_factor=1)])
    finally:
        await admin.close()
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        for i in range(_MESSAGES):
            await producer.send(topic, f"m{i}".encode())
        await producer.flush()
    finally:
        await producer.stop()


async def _read(bootstrap: str, topic: str) -> list[bytes]:
    """Every message of ``topic`` (no consumer group, so nothing is committed)."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        if topic not in await consumer.topics():
            return []
        tp = TopicPartition(topic, 0)
        consumer.assign([tp])
        await consumer.seek_to_beginning(tp)
        end = (await consumer.end_offsets([tp]))[tp]
        values: list[bytes] = []
        for _ in range(60):  # bounded: a broken broker fails the test, not hangs it
            if await consumer.position(tp) >= end:
                break
            batch = await consumer.getmany(tp, timeout_ms=1000)
            values += [m.value for m in batch.get(tp, []) if m.value is not None]
        return values
    finally:
        await consumer.stop()


def _messages(settings: Settings, topic: str) -> list[bytes]:
    return asyncio.run(_read(stack.endpoints(settings).kafka_bootstrap, topic))


def _prometheus_samples(url: str) -> int:
    """How many samples of Prometheus' own ``up`` series its TSDB holds."""
    query = urllib.parse.quote('count_over_time(up{job="prometheus"}[1h])')
    assert url.startswith("http://")
    with urllib.request.urlopen(f"{url}/api/v1/query?query={query}", timeout=10) as resp:  # noqa: S310
        result = json.loads(resp.read())["data"]["result"]
    return int(result[0]["value"][1]) if result else 0


class _Durable:
    """The shared stack and what the first test stored in it."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.endpoints = stack.up(settings, progress=lambda _m: None)
        self.topic = f"durable-{uuid.uuid4().hex[:8]}"
        asyncio.run(_produce(self.endpoints.kafka_bootstrap, self.topic))
        client = redis.Redis.from_url(self.endpoints.redis_url, socket_timeout=5)
        try:
            client.set("durable-key", "kept")
        finally:
            client.close()
        self.expected = [f"m{i}".encode() for i in range(_MESSAGES)]

    def redis_value(self) -> bytes | None:
        client = redis.Redis.from_url(stack.endpoints(self.settings).redis_url, socket_timeout=5)
        try:
            value = client.get("durable-key")
        finally:
            client.close()
        assert value is None or isinstance(value, bytes)
        return value

    def up(self) -> list[str]:
        messages: list[str] = []
        stack.up(self.settings, progress=messages.append)
        return messages


@pytest.fixture(scope="module")
def durable(tmp_path_factory: pytest.TempPathFactory) -> Iterator[_Durable]:
    settings = _settings(tmp_path_factory.mktemp("durable-stack"))
    try:
        yield _Durable(settings)
    finally:
        stack.down(settings, progress=lambda _m: None)


# ----------------------------------------------------------------- unit tests


def _fake_data(state: Path) -> list[Path]:
    files = [
        state / "kafka" / "data" / "meta.properties",
        state / "redis" / "dump.rdb",
        state / "prometheus" / "data" / "wal" / "00000000",
        state / "chdb" / "status",
    ]
    for path in files:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("x")
    return files


def test_stack_down_keeps_data_without_wipe(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    files = _fake_data(tmp_path)
    monkeypatch.setenv("LLMPULSE_STATE_DIR", str(tmp_path))
    assert main(["stack", "down"]) == 0
    assert all(path.exists() for path in files)


def test_stack_down_wipe_deletes_service_data_but_not_clickhouse(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    *services, chdb = _fake_data(tmp_path)
    monkeypatch.setenv("LLMPULSE_STATE_DIR", str(tmp_path))
    assert main(["stack", "down", "--wipe"]) == 0
    assert not any(path.exists() for path in services)
    assert chdb.exists()


def test_wipe_goes_with_down_only(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["stack", "up", "--wipe"]) == 2
    assert capsys.readouterr().err.strip() == (
        "llmpulse: error: --wipe goes with `stack down`, not `stack up`"
    )


def test_log_tail_reads_the_latest_run_only(tmp_path: Path) -> None:
    log = tmp_path / "kafka.log"
    log.write_text(
        "=== 2026-01-01 00:00:00 llmpulse stack: java kafka.Kafka\n"
        "ERROR Failed listening on port 1234\n"
        "=== 2026-01-02 00:00:00 llmpulse stack: java kafka.Kafka\n"
        "INFO started\n"
    )
    assert log_tail(log) == "=== 2026-01-02 00:00:00 llmpulse stack: java kafka.Kafka\nINFO started"


# ---------------------------------------------------------- integration tests


@pytest.mark.stack
def test_down_then_up_keeps_ports_messages_keys_and_series(durable: _Durable) -> None:
    settings = durable.settings
    prometheus = durable.endpoints.prometheus_url
    deadline = time.monotonic() + 30
    while (before := _prometheus_samples(prometheus)) < 3:
        assert time.monotonic() < deadline, "Prometheus did not scrape itself"
        time.sleep(0.5)
    pids = [s.pid for s in stack.status(settings).values()]

    stack.down(settings, progress=lambda _m: None)
    assert not any(pid is not None and _pid_alive(pid) for pid in pids)
    messages = durable.up()

    assert stack.endpoints(settings) == durable.endpoints, messages
    assert not any("formatting" in m for m in messages), messages
    assert _messages(settings, durable.topic) == durable.expected
    assert durable.redis_value() == b"kept"
    assert _prometheus_samples(prometheus) >= before


@pytest.mark.stack
def test_sigkilled_kafka_comes_back_with_its_messages(durable: _Durable) -> None:
    settings = durable.settings
    pid = _kafka_pid(settings)
    os.killpg(pid, signal.SIGKILL)
    while _pid_alive(pid):
        time.sleep(0.1)

    messages = durable.up()

    assert stack.endpoints(settings) == durable.endpoints, messages
    assert _messages(settings, durable.topic) == durable.expected
    assert any("is gone; restarting it with its data" in m for m in messages), messages


@pytest.mark.stack
def test_kafka_slower_than_the_old_grace_is_waited_for(durable: _Durable) -> None:
    # Paused for longer than the 15 s that up() used to wait before reformatting.
    settings = durable.settings
    pid = _kafka_pid(settings)
    os.kill(pid, signal.SIGSTOP)
    resume = threading.Timer(20.0, os.kill, (pid, signal.SIGCONT))
    resume.start()
    try:
        messages = durable.up()
    finally:
        resume.cancel()
        with contextlib.suppress(ProcessLookupError):  # the old code killed it
            os.kill(pid, signal.SIGCONT)

    assert _kafka_pid(settings) == pid, messages
    assert _messages(settings, durable.topic) == durable.expected


@pytest.mark.stack
def test_hung_kafka_is_restarted_with_its_messages(
    durable: _Durable, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = durable.settings
    pid = _kafka_pid(settings)
    monkeypatch.setattr(lifecycle, "_REUSE_GRACE", 1.0)
    os.kill(pid, signal.SIGSTOP)
    try:
        messages = durable.up()
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGCONT)

    assert stack.endpoints(settings) == durable.endpoints, messages
    assert _messages(settings, durable.topic) == durable.expected
    assert any("is not answering" in m and "with its data" in m for m in messages), messages
    assert not _pid_alive(pid)


@pytest.mark.stack
def test_a_taken_port_moves_the_service_and_says_so(durable: _Durable) -> None:
    settings = durable.settings
    stack.down(settings, progress=lambda _m: None)
    old = urllib.parse.urlsplit(durable.endpoints.redis_url).port
    assert old is not None
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", old))
        squatter.listen()
        messages = durable.up()

    moved = stack.endpoints(settings)
    assert f"redis: port {old} (redis) is taken; moving to" in "\n".join(messages)
    assert moved.redis_url != durable.endpoints.redis_url
    state: dict[str, Any] = json.loads((settings.state_dir / "stack.json").read_text())
    assert state["redis_url"] == moved.redis_url  # what clients read
    assert moved.kafka_bootstrap == durable.endpoints.kafka_bootstrap
    assert durable.redis_value() == b"kept"
    assert _messages(settings, durable.topic) == durable.expected


@pytest.mark.stack
def test_down_wipe_starts_the_next_up_empty(durable: _Durable) -> None:
    settings = durable.settings
    stack.down(settings, progress=lambda _m: None, wipe=True)
    messages = durable.up()

    assert any("formatting KRaft storage" in m for m in messages), messages
    assert _messages(settings, durable.topic) == []
    assert durable.redis_value() is None
