"""The local stack's secure listeners: Kafka SASL_SSL (SCRAM-SHA-512) and Redis TLS (issue 14).

`llmpulse stack up --secure` must serve, besides the plain listeners, a Kafka
listener that takes only TLS clients trusting the stack's CA and knowing the
SCRAM password, and a Redis TLS port with an ACL user; the passwords are random,
kept owner-only, and appear in no output or log. The integration tests share
one private stack (its own state dir) and run in file order: it is first started
plain, so ``--secure`` has to add the SCRAM user to an existing storage; the last
restart wipes it, so the user is created again when the storage is formatted.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import ssl
import stat
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import redis
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaConnectionError

from llmpulse.cli import main
from llmpulse.devstack import stack
from llmpulse.devstack.stack.model import StackError
from llmpulse.devstack.stack.paths import Paths
from llmpulse.devstack.stack.secure import credentials, ensure_scram, scrubbed
from llmpulse.devstack.stack.tls import certificate_authority
from llmpulse.processors.settings import Settings

# Bounds every client call: a refused credential or certificate must fail, not hang.
_CLIENT_TIMEOUT = 60.0
_SERVICE_VARIABLES = ("LLMPULSE_KAFKA_BOOTSTRAP", "LLMPULSE_REDIS_URL", "LLMPULSE_PROMETHEUS_URL")


def _settings(state_dir: Path) -> Settings:
    """Settings isolated from the caller's LLMPULSE_* services, sharing the jar cache."""
    return Settings(
        state_dir=state_dir,
        cache_dir=Settings().cache_dir,
        kafka_bootstrap=None,
        redis_url=None,
        prometheus_url=None,
    )


@dataclass
class _Secure:
    """The shared stack, driven through the CLI, and everything it printed."""

    settings: Settings
    monkeypatch: pytest.MonkeyPatch
    output: list[str] = field(default_factory=list)

    def cli(self, *argv: str) -> tuple[int, str]:
        """Run ``llmpulse stack ...`` in this stack's state dir: exit code and stdout."""
        out, err = io.StringIO(), io.StringIO()
        self.monkeypatch.setenv("LLMPULSE_STATE_DIR", str(self.settings.state_dir))
        self.monkeypatch.setenv("LLMPULSE_CACHE_DIR", str(self.settings.cache_dir))
        for name in _SERVICE_VARIABLES:
            self.monkeypatch.delenv(name, raising=False)
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main(["stack", *argv])
        self.output += [out.getvalue(), err.getvalue()]
        return code, out.getvalue()

    def endpoints(self) -> stack.SecureEndpoints:
        return stack.secure_endpoints(self.settings)

    def passwords(self) -> list[str]:
        creds = credentials(Paths.of(self.settings))
        return [creds.kafka_password.get_secret_value(), creds.redis_password.get_secret_value()]


@pytest.fixture(scope="module")
def secure(tmp_path_factory: pytest.TempPathFactory) -> Iterator[_Secure]:
    settings = _settings(tmp_path_factory.mktemp("secure-stack"))
    with pytest.MonkeyPatch.context() as monkeypatch:
        shared = _Secure(settings, monkeypatch)
        try:
            assert shared.cli("up")[0] == 0  # plain first: its storage has no SCRAM user
            assert shared.cli("up", "--secure")[0] == 0
            yield shared
        finally:
            stack.down(settings, progress=lambda _m: None)


def _ssl(ca_file: Path) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(ca_file))


async def _bounded(awaitable: Any) -> Any:
    return await asyncio.wait_for(awaitable, _CLIENT_TIMEOUT)


async def _produce(options: dict[str, Any], topic: str, value: bytes) -> None:
    admin = AIOKafkaAdminClient(**options)
    await _bounded(admin.start())
    try:
        await _bounded(
            admin.create_topics([NewTopic(topic, num_partitions=1, replication_factor=1)])
        )
    finally:
        await admin.close()
    producer = AIOKafkaProducer(**options, acks="all")
    await _bounded(producer.start())
    try:
        await _bounded(producer.send_and_wait(topic, value))
    finally:
        await producer.stop()


async def _read(options: dict[str, Any], topic: str) -> list[bytes]:
    """Every message of ``topic`` (no consumer group, so nothing is committed)."""
    consumer = AIOKafkaConsumer(**options, enable_auto_commit=False)
    await _bounded(consumer.start())
    try:
        tp = TopicPartition(topic, 0)
        consumer.assign([tp])
        await consumer.seek_to_beginning(tp)
        end = (await _bounded(consumer.end_offsets([tp])))[tp]
        values: list[bytes] = []
        for _ in range(60):  # bounded: a broken listener fails the test, not hangs it
            if await consumer.position(tp) >= end:
                break
            batch = await consumer.getmany(tp, timeout_ms=1000)
            values += [m.value for m in batch.get(tp, []) if m.value is not None]
        return values
    finally:
        await consumer.stop()


async def _connect(options: dict[str, Any]) -> None:
    producer = AIOKafkaProducer(**options, request_timeout_ms=10_000)
    try:
        await _bounded(producer.start())
    finally:
        await producer.stop()


def _redis(url: str) -> redis.Redis:
    return redis.Redis.from_url(url, socket_timeout=10, socket_connect_timeout=10)


def _replaced(url: str, old: str, new: str) -> str:
    assert url.count(old) == 1
    return url.replace(old, new)


# ----------------------------------------------------------------- unit tests


def test_secure_goes_with_up_only(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["stack", "status", "--secure"]) == 2
    assert capsys.readouterr().err.strip() == (
        "llmpulse: error: --secure goes with `stack up`, not `stack status`"
    )


def test_credentials_are_random_once_per_stack_and_owner_only(tmp_path: Path) -> None:
    first, other = Paths.of(_settings(tmp_path / "a")), Paths.of(_settings(tmp_path / "b"))
    made = credentials(first, create=True)

    assert credentials(first, create=True) == made
    assert credentials(other, create=True).kafka_password != made.kafka_password
    assert made.kafka_password != made.redis_password
    assert stat.S_IMODE(first.credentials_file.stat().st_mode) == 0o600
    assert made.kafka_password.get_secret_value() not in repr(made)


def test_no_secure_listeners_is_a_one_line_error(tmp_path: Path) -> None:
    with pytest.raises(
        StackError, match=r"serves no secure listeners: run `llmpulse stack up --secure`"
    ):
        stack.secure_endpoints(_settings(tmp_path))
    assert stack.find_secure_endpoints(_settings(tmp_path)) is None


def test_tool_output_is_scrubbed_of_passwords(tmp_path: Path) -> None:
    creds = credentials(Paths.of(_settings(tmp_path)), create=True)
    password = creds.kafka_password.get_secret_value()
    assert scrubbed(f"Invalid credential SCRAM-SHA-512=password={password}", creds) == (
        "Invalid credential SCRAM-SHA-512=password=***"
    )


def test_a_failed_scram_update_names_no_password(tmp_path: Path) -> None:
    paths = Paths.of(_settings(tmp_path))
    password = credentials(paths, create=True).kafka_password.get_secret_value()
    # Stands in for kafka-configs: echoes the file it was given (the last argument), then fails.
    echo_and_fail = ["/bin/sh", "-c", 'for a; do last="$a"; done; cat "$last"; exit 1']

    with pytest.raises(StackError) as failed:
        ensure_scram(paths, echo_and_fail, "127.0.0.1:9", lambda _m: None)

    assert "SCRAM-SHA-512=password=***" in str(failed.value)
    assert password not in str(failed.value)
    assert list(paths.service_dir("kafka").iterdir()) == []  # the password file is gone


def test_stack_up_prints_an_external_redis_without_its_password(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    external = stack.StackEndpoints(
        kafka_bootstrap="127.0.0.1:9092",
        redis_url="rediss://ops:canary-pw@127.0.0.1:6380/0",
        prometheus_url="http://127.0.0.1:9090",
    )
    monkeypatch.setattr(stack, "up", lambda _settings, secure=None: external)
    monkeypatch.setenv("LLMPULSE_STATE_DIR", str(tmp_path))

    assert main(["stack", "up"]) == 0

    out = capsys.readouterr().out
    assert "redis      rediss://***@127.0.0.1:6380/0" in out.splitlines()
    assert "canary-pw" not in out


# ---------------------------------------------------------- integration tests


@pytest.mark.stack
def test_secure_needs_the_local_kafka_and_redis(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("LLMPULSE_STATE_DIR", str(tmp_path))
    for name in _SERVICE_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("LLMPULSE_KAFKA_BOOTSTRAP", "127.0.0.1:9")
    assert main(["stack", "up", "--secure"]) == 1
    assert capsys.readouterr().err.strip() == (
        "llmpulse: error: the secure listeners need the local kafka: unset LLMPULSE_KAFKA_BOOTSTRAP"
    )


@pytest.mark.stack
def test_kafka_sasl_ssl_produces_and_consumes(secure: _Secure) -> None:
    options = secure.endpoints().kafka_options()
    topic = f"secure-{uuid.uuid4().hex[:8]}"
    asyncio.run(_produce(options, topic, b"over SASL_SSL"))
    assert asyncio.run(_read(options, topic)) == [b"over SASL_SSL"]


# aiokafka says why in its log; the exception only says "Unable to bootstrap".
@pytest.mark.stack
def test_kafka_refuses_a_wrong_password(secure: _Secure, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.ERROR, logger="aiokafka")  # the CLI silenced it
    options = {**secure.endpoints().kafka_options(), "sasl_plain_password": "wrong"}
    with pytest.raises(KafkaConnectionError):
        asyncio.run(_connect(options))
    assert "SaslAuthenticationFailed" in caplog.text


@pytest.mark.stack
def test_kafka_client_trusting_another_ca_fails(
    secure: _Secure, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger="aiokafka")
    other_ca, _key = certificate_authority(tmp_path, "other-ca")
    options = {**secure.endpoints().kafka_options(), "ssl_context": _ssl(other_ca)}
    with pytest.raises(KafkaConnectionError):
        asyncio.run(_connect(options))
    assert "CERTIFICATE_VERIFY_FAILED" in caplog.text


@pytest.mark.stack
def test_redis_acl_user_over_tls(secure: _Secure, tmp_path: Path) -> None:
    ep = secure.endpoints()
    url = ep.redis_url.get_secret_value()
    assert url.startswith("rediss://llmpulse:")
    assert f"@{ep.redis_address}/0?" in url
    client = _redis(url)
    try:
        client.set("secure-key", "kept")
        assert client.acl_whoami() == "llmpulse"
    finally:
        client.close()

    wrong = _redis(_replaced(url, secure.passwords()[1], "wrong"))
    with pytest.raises(redis.AuthenticationError):
        wrong.ping()
    other_ca, _key = certificate_authority(tmp_path, "other-ca")
    untrusted = _redis(_replaced(url, f"={ep.ca_file}", f"={other_ca}"))
    with pytest.raises(redis.ConnectionError, match="certificate verify failed"):
        untrusted.ping()


@pytest.mark.stack
def test_settings_applied_reach_both_listeners(secure: _Secure) -> None:
    settings = secure.endpoints().apply(secure.settings)
    assert settings.kafka_bootstrap is not None
    assert settings.redis_url is not None
    options = {"bootstrap_servers": settings.kafka_bootstrap}
    asyncio.run(_connect({**options, **settings.kafka_security.aiokafka_options()}))
    client = _redis(settings.redis_url.get_secret_value())
    try:
        assert client.acl_whoami() == "llmpulse"
    finally:
        client.close()


@pytest.mark.stack
def test_status_lists_the_listeners_users_and_files(secure: _Secure) -> None:
    ep = secure.endpoints()
    code, out = secure.cli("status")

    assert code == 0, out
    lines = {line.split()[0]: line for line in out.splitlines()}
    assert "running" in lines["kafka-sasl"]
    assert ep.kafka_bootstrap in lines["kafka-sasl"]
    assert "SCRAM-SHA-512 user llmpulse" in lines["kafka-sasl"]
    assert "running" in lines["redis-tls"]
    assert "ACL user llmpulse" in lines["redis-tls"]
    assert str(ep.ca_file) in lines["tls-ca"]
    assert str(ep.credentials_file) in lines["secrets"]


@pytest.mark.stack
def test_secret_files_are_owner_only(secure: _Secure) -> None:
    paths = Paths.of(secure.settings)
    for path in (paths.credentials_file, paths.kafka_keystore, paths.redis_acl):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    assert secure.passwords()[1] not in paths.redis_acl.read_text()  # a hash only


@pytest.mark.stack
def test_down_then_up_keeps_the_secure_listeners(secure: _Secure) -> None:
    before = secure.endpoints()
    topic = f"restart-{uuid.uuid4().hex[:8]}"
    asyncio.run(_produce(before.kafka_options(), topic, b"before the restart"))

    assert secure.cli("down")[0] == 0
    code, out = secure.cli("up")  # no flag: the stack comes back as it was

    assert code == 0, out
    after = secure.endpoints()
    assert after == before
    assert asyncio.run(_read(after.kafka_options(), topic)) == [b"before the restart"]
    client = _redis(after.redis_url.get_secret_value())
    try:
        assert client.get("secure-key") == b"kept"
    finally:
        client.close()


@pytest.mark.stack
def test_passwords_appear_in_no_output_or_file(secure: _Secure) -> None:
    # The first `up --secure` added the user to the plain storage: it said so.
    assert any("adding the SCRAM-SHA-512 user llmpulse" in text for text in secure.output)
    _assert_no_leaks(secure)


def _assert_no_leaks(secure: _Secure) -> None:
    """No password in anything the CLI printed nor in any file of the state dir but its own."""
    state = secure.settings.state_dir
    files = [p for p in state.rglob("*") if p.is_file() and p.name != "credentials.json"]
    assert any(p.name == "kafka.log" for p in files)
    assert any(p.name == "redis.log" for p in files)
    for password in secure.passwords():
        assert not any(password in text for text in secure.output)
        assert [p for p in files if password.encode() in p.read_bytes()] == []


@pytest.mark.stack
def test_wiped_storage_is_formatted_with_the_scram_user(secure: _Secure) -> None:
    assert secure.cli("down", "--wipe")[0] == 0
    code, out = secure.cli("up")

    assert code == 0, out
    assert "formatting KRaft storage" in secure.output[-1]
    assert "adding the SCRAM-SHA-512 user" not in secure.output[-1]
    topic = f"formatted-{uuid.uuid4().hex[:8]}"
    options = secure.endpoints().kafka_options()
    asyncio.run(_produce(options, topic, b"after the wipe"))
    assert asyncio.run(_read(options, topic)) == [b"after the wipe"]
    _assert_no_leaks(secure)
