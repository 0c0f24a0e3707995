"""The local real-services stack (llmpulse.devstack.stack): real Kafka, Redis, Prometheus.

The integration tests bring up a private stack in a temporary state dir (the
Kafka jars come from the normal cache dir, so only the first run downloads),
and the module fixture always tears it down, also when a test fails.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from llmpulse.devstack import stack
from llmpulse.devstack.stack import processes as stack_processes
from llmpulse.processors.settings import Settings


def _settings(state_dir: Path, **overrides: Any) -> Settings:
    """Settings isolated from the caller's LLMPULSE_* services, sharing the jar cache."""
    values: dict[str, Any] = {
        "state_dir": state_dir,
        "cache_dir": Settings().cache_dir,
        "kafka_bootstrap": None,
        "redis_url": None,
        "prometheus_url": None,
    }
    values.update(overrides)
    return Settings(**values)


def _get_json(url: str) -> Any:
    assert url.startswith("http://")
    with urllib.request.urlopen(url, timeout=10) as resp:  # noqa: S310 (http only)
        return json.loads(resp.read())


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    return stat.exists() and stat.read_text().rpartition(")")[2].split()[:1] != ["Z"]


class _Stack:
    def __init__(self, settings: Settings, endpoints: stack.StackEndpoints) -> None:
        self.settings = settings
        self.endpoints = endpoints


@pytest.fixture(scope="module")
def local_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[_Stack]:
    settings = _settings(tmp_path_factory.mktemp("stack"))
    try:
        yield _Stack(settings, stack.up(settings))
    finally:
        stack.down(settings)


# ----------------------------------------------------------------- unit tests


def test_endpoints_without_a_stack_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(stack.StackError, match="llmpulse stack up"):
        stack.endpoints(_settings(tmp_path))


def test_status_without_a_stack_reports_stopped(tmp_path: Path) -> None:
    result = stack.status(_settings(tmp_path))
    assert list(result) == ["kafka", "redis", "prometheus"]
    assert {s.state for s in result.values()} == {"stopped"}


def test_register_scrape_target_writes_file_sd(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    stack.register_scrape_target(settings, "usage-sink", "127.0.0.1:9101")
    stack.register_scrape_target(settings, "breaker", "127.0.0.1:9102", labels={"worker": "w1"})
    stack.register_scrape_target(settings, "usage-sink-2", "127.0.0.1:9101")  # replaces
    groups = json.loads((tmp_path / "prometheus" / "targets.json").read_text())
    assert groups == [
        {"targets": ["127.0.0.1:9102"], "labels": {"worker": "w1", "job": "breaker"}},
        {"targets": ["127.0.0.1:9101"], "labels": {"job": "usage-sink-2"}},
    ]
    stack.unregister_scrape_target(settings, "127.0.0.1:9102")
    groups = json.loads((tmp_path / "prometheus" / "targets.json").read_text())
    assert [g["targets"] for g in groups] == [["127.0.0.1:9101"]]
    with pytest.raises(ValueError, match="host:port"):
        stack.register_scrape_target(settings, "", "127.0.0.1:1")


def test_start_service_rejects_unknown_names(tmp_path: Path) -> None:
    with pytest.raises(stack.StackError, match="unknown service"):
        stack.start_service(_settings(tmp_path), "zookeeper")


# ---------------------------------------------------------- integration tests


@pytest.mark.stack
def test_up_reports_all_services_running(local_stack: _Stack) -> None:
    result = stack.status(local_stack.settings)
    assert {name: s.state for name, s in result.items()} == {
        "kafka": "running",
        "redis": "running",
        "prometheus": "running",
    }, result
    assert all(s.pid is not None and _pid_alive(s.pid) for s in result.values())
    eps = local_stack.endpoints
    assert eps.kafka_bootstrap == result["kafka"].address
    assert eps.redis_url.startswith("redis://127.0.0.1:")
    assert eps.prometheus_url.startswith("http://127.0.0.1:")
    assert stack.endpoints(local_stack.settings) == eps


@pytest.mark.stack
async def test_kafka_topic_produce_consume(local_stack: _Stack) -> None:
    bootstrap = local_stack.endpoints.kafka_bootstrap
    topic = f"stack-smoke-{uuid.uuid4().hex[:8]}"
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, num_partitions=1, replication_factor=1)])
    finally:
        await admin.close()

    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        await producer.send_and_wait(topic, b"hello", key=b"k")
    finally:
        await producer.stop()

    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=f"{topic}-group",
        auto_offset_reset="earliest",
    )
    await consumer.start()
    try:
        message = await asyncio.wait_for(consumer.getone(), timeout=30)
        await consumer.commit()
    finally:
        await consumer.stop()
    assert (message.key, message.value) == (b"k", b"hello")


@pytest.mark.stack
def test_redis_ping(local_stack: _Stack) -> None:
    client = redis.Redis.from_url(local_stack.endpoints.redis_url, socket_timeout=5)
    try:
        assert client.ping()
    finally:
        client.close()


@pytest.mark.stack
def test_prometheus_config_and_file_sd_targets(local_stack: _Stack) -> None:
    url = local_stack.endpoints.prometheus_url
    config = _get_json(f"{url}/api/v1/status/config")
    assert config["status"] == "success"
    assert "file_sd_configs" in config["data"]["yaml"]

    # Prometheus' own /metrics, registered as a worker would register its endpoint.
    host_port = url.removeprefix("http://")
    stack.register_scrape_target(local_stack.settings, "stack-selftest", host_port)
    deadline = time.monotonic() + 20
    while True:
        active = _get_json(f"{url}/api/v1/targets?state=active")["data"]["activeTargets"]
        jobs = {t["labels"].get("job"): t["health"] for t in active}
        if jobs.get("stack-selftest") == "up":
            break
        assert time.monotonic() < deadline, f"file_sd target not scraped: {jobs}"
        time.sleep(0.5)


@pytest.mark.stack
def test_up_again_is_idempotent(local_stack: _Stack) -> None:
    before = stack.status(local_stack.settings)
    messages: list[str] = []
    assert stack.up(local_stack.settings, progress=messages.append) == local_stack.endpoints
    after = stack.status(local_stack.settings)
    assert {n: s.pid for n, s in after.items()} == {n: s.pid for n, s in before.items()}
    assert all("already running" in m for m in messages), messages


@pytest.mark.stack
def test_external_services_are_not_started(local_stack: _Stack, tmp_path: Path) -> None:
    eps = local_stack.endpoints
    external = _settings(
        tmp_path,
        kafka_bootstrap=eps.kafka_bootstrap,
        redis_url=eps.redis_url,
        prometheus_url=eps.prometheus_url,
    )
    result = stack.status(external)
    assert {s.state for s in result.values()} == {"external"}, result
    assert all(s.pid is None for s in result.values())

    assert stack.up(external, progress=lambda _m: None) == eps
    state = json.loads((tmp_path / "stack.json").read_text())
    assert state["services"] == {}  # nothing local was started
    assert stack.endpoints(external) == eps
    with pytest.raises(stack.StackError, match="external"):
        stack.stop_service(external, "redis")


@pytest.mark.stack
def test_port_taken_between_pick_and_bind_is_retried(
    local_stack: _Stack, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    eps = local_stack.endpoints
    mixed = _settings(
        tmp_path, kafka_bootstrap=eps.kafka_bootstrap, prometheus_url=eps.prometheus_url
    )
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        taken = squatter.getsockname()[1]
        picks = iter([taken])
        real_pick = stack_processes.free_port
        monkeypatch.setattr(stack_processes, "free_port", lambda: next(picks, None) or real_pick())
        messages: list[str] = []
        try:
            redis_url = stack.up(mixed, progress=messages.append).redis_url
            assert any("was taken; retrying" in m for m in messages), messages
            assert redis_url != f"redis://127.0.0.1:{taken}/0"
            assert stack.status(mixed)["redis"].state == "running"
            assert stack.status(mixed)["kafka"].state == "external"
        finally:
            stack.down(mixed, progress=messages.append)


@pytest.mark.stack
def test_stop_and_start_redis_keeps_port_and_data(local_stack: _Stack) -> None:
    settings = local_stack.settings
    url = local_stack.endpoints.redis_url
    client = redis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=2)
    try:
        client.set("stack-test", "kept")
        stack.stop_service(settings, "redis")
        assert stack.status(settings)["redis"].state == "stopped"
        assert stack.endpoints(settings).redis_url == url  # endpoint stays reserved
        with pytest.raises(redis.ConnectionError):
            client.ping()

        stack.start_service(settings, "redis")
        assert stack.status(settings)["redis"].state == "running"
        assert stack.endpoints(settings).redis_url == url
        assert client.get("stack-test") == b"kept"
    finally:
        client.close()


@pytest.mark.stack
async def test_kafka_crash_and_restart_keeps_port_and_topics(local_stack: _Stack) -> None:
    settings = local_stack.settings
    bootstrap = local_stack.endpoints.kafka_bootstrap
    topic = f"stack-restart-{uuid.uuid4().hex[:8]}"
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, num_partitions=1, replication_factor=1)])
    finally:
        await admin.close()

    await asyncio.to_thread(stack.stop_service, settings, "kafka", graceful=False)
    assert stack.status(settings)["kafka"].state == "stopped"
    await asyncio.to_thread(stack.start_service, settings, "kafka")
    assert stack.endpoints(settings).kafka_bootstrap == bootstrap

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        assert topic in await admin.list_topics()
    finally:
        await admin.close()


@pytest.mark.stack
def test_down_stops_everything(local_stack: _Stack) -> None:
    pids = [s.pid for s in stack.status(local_stack.settings).values()]
    stack.down(local_stack.settings)
    result = stack.status(local_stack.settings)
    assert {s.state for s in result.values()} == {"stopped"}
    assert not any(pid is not None and _pid_alive(pid) for pid in pids)
    assert not (local_stack.settings.state_dir / "stack.json").exists()
    with pytest.raises(stack.StackError):
        stack.endpoints(local_stack.settings)
