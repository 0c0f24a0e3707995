"""Kafka refusing a client fails fast, naming the setting: real TLS handshakes, a real broker.

aiokafka's clients only log why a connection failed and then raise "Unable to
bootstrap", as for an outage (and the workers' side readers wait outages out).
``kafka.preflight`` (run by every command that uses Kafka, by a side reader
whose start failed, and by the gateway emitter's start) tells a refusal from
an outage. Here against TLS servers with certificates made at test time (an
untrusted authority, another host name, a plaintext listener) and against the
local stack's plaintext Kafka with TLS and SASL clients. A broker that refuses
SASL credentials needs a SASL listener: see the end-to-end tests of the secure
stack.

Stack tier: these tests open TCP connections.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import ssl
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from llmpulse.core.kafka_security import ENV_VARS, KafkaSecurity
from llmpulse.devstack.stack.tls import Certificates, certificate_authority, certificates
from llmpulse.gateway.config import GatewayConfig
from llmpulse.gateway.emitter import EventEmitter
from llmpulse.gateway.exceptions import ConfigError as GatewayConfigError
from llmpulse.processors.errors import ConfigError
from llmpulse.processors.settings import Settings
from llmpulse.processors.stream import kafka

pytestmark = pytest.mark.stack

CANARY = "canary-pw-51d0e2"
SASL: dict[str, Any] = {"sasl_mechanism": "SCRAM-SHA-512", "username": "svc", "password": CANARY}


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certificates:
    return certificates(tmp_path_factory.mktemp("tls"))


@pytest.fixture(scope="module")
def other_ca(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return certificate_authority(tmp_path_factory.mktemp("other"), "other-ca")[0]


async def _drop(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(Exception):
        await reader.read(1)
    writer.close()


@contextlib.asynccontextmanager
async def _server(certs: Certificates | None, host: str = "127.0.0.1") -> AsyncIterator[str]:
    """``host:port`` of a server that drops each client: TLS with ``certs``, else plaintext."""
    context = None
    if certs is not None:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(certs.cert_file, certs.key_file)
    server = await asyncio.start_server(_drop, host, 0, ssl=context)
    try:
        yield f"{host}:{server.sockets[0].getsockname()[1]}"
    finally:
        server.close()


def _settings(bootstrap: str, security: KafkaSecurity) -> Settings:
    fields = {
        v.removeprefix("LLMPULSE_").lower(): getattr(security, f) for f, v in ENV_VARS.items()
    }
    return Settings(kafka_bootstrap=bootstrap, **fields)


async def _refused(bootstrap: str, security: KafkaSecurity) -> str:
    with pytest.raises(ConfigError) as caught:
        await kafka.preflight(_settings(bootstrap, security), timeout=10)
    text = str(caught.value)
    assert "\n" not in text
    assert CANARY not in text
    return text


# --- TLS servers made at test time ------------------------------------------------------


async def test_an_untrusted_certificate_names_the_ca_file(
    certs: Certificates, other_ca: Path
) -> None:
    async with _server(certs) as address:
        text = await _refused(
            address,
            KafkaSecurity(protocol="SASL_SSL", ca_file=other_ca, **SASL),
        )
    assert text.startswith(
        f"LLMPULSE_KAFKA_SSL_CA_FILE: the certificate of Kafka at {address} is not signed by "
        f"the CA of {other_ca}"
    )


async def test_without_a_ca_file_a_private_certificate_is_untrusted(certs: Certificates) -> None:
    async with _server(certs) as address:
        text = await _refused(address, KafkaSecurity(protocol="SSL"))
    assert text.startswith("LLMPULSE_KAFKA_SSL_CA_FILE: ")
    assert "the system's CAs (LLMPULSE_KAFKA_SSL_CA_FILE is not set)" in text


async def test_a_certificate_for_another_host_names_the_host_name_check(
    certs: Certificates,
) -> None:
    # The certificate names localhost and 127.0.0.1; 127.0.0.2 is loopback too.
    async with _server(certs, "127.0.0.2") as address:
        text = await _refused(address, KafkaSecurity(protocol="SSL", ca_file=certs.ca_file))
        assert text.startswith("LLMPULSE_KAFKA_SSL_CHECK_HOSTNAME: ")
        # Turned off, the handshake passes; this server then drops the client (no Kafka).
        unchecked = KafkaSecurity(protocol="SSL", ca_file=certs.ca_file, check_hostname=False)
        problem = await kafka.preflight(_settings(address, unchecked), timeout=10)
    assert problem is not None
    assert "the broker closed the connection" in problem


async def test_tls_to_a_plaintext_listener_names_the_protocol(certs: Certificates) -> None:
    async with _server(None) as address:
        text = await _refused(address, KafkaSecurity(protocol="SSL", ca_file=certs.ca_file))
    assert text == (
        f"LLMPULSE_KAFKA_SECURITY_PROTOCOL: Kafka at {address} took the connection but "
        "dropped the TLS handshake: is it a TLS listener (SSL)?"
    )


async def test_an_unreachable_kafka_is_no_refusal() -> None:
    async with _server(None) as address:
        pass  # closed: nothing listens there now
    problem = await kafka.preflight(_settings(address, KafkaSecurity()), timeout=10)
    assert problem is not None
    assert problem.startswith(f"{address}: ")


async def test_the_gateway_emitter_does_not_start_with_an_untrusted_certificate(
    certs: Certificates, other_ca: Path, tmp_path: Path
) -> None:
    async with _server(certs) as address:
        config = GatewayConfig(
            bootstrap_servers=address,
            spool_dir=tmp_path / "spool",
            kafka_security=KafkaSecurity(protocol="SASL_SSL", ca_file=other_ca, **SASL),
        )
        emitter = EventEmitter(config)
        with pytest.raises(GatewayConfigError) as caught:
            await emitter.start()
        await emitter.close()
    assert caught.value.names == ("LLMPULSE_KAFKA_SSL_CA_FILE",)
    assert str(caught.value).startswith(
        "Kafka refused the gateway: LLMPULSE_KAFKA_SSL_CA_FILE: the certificate of Kafka at "
    )
    assert CANARY not in str(caught.value)


def _kafka_env(bootstrap: str, security: KafkaSecurity, tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LLMPULSE_")}
    env.update(security.environment())
    env |= {"LLMPULSE_KAFKA_BOOTSTRAP": bootstrap, "LLMPULSE_REDIS_URL": "redis://127.0.0.1:1/0"}
    env["LLMPULSE_STATE_DIR"] = str(tmp_path / "state")
    return env


async def test_a_command_exits_1_on_an_untrusted_certificate(
    certs: Certificates, other_ca: Path, tmp_path: Path
) -> None:
    security = KafkaSecurity(protocol="SASL_SSL", ca_file=other_ca, **SASL)
    async with _server(certs) as address:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "llmpulse", "topics", "create",
            env=_kafka_env(address, security, tmp_path), cwd=tmp_path,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )  # fmt: skip
        out, err = await proc.communicate()
    assert proc.returncode == 1, err
    assert out == b""
    lines = err.decode().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("llmpulse: error: LLMPULSE_KAFKA_SSL_CA_FILE: the certificate")
    assert CANARY.encode() not in err


# --- the local stack's plaintext Kafka --------------------------------------------------


async def test_tls_and_sasl_clients_of_a_plaintext_broker_name_the_protocol(
    settings: Settings, certs: Certificates
) -> None:
    bootstrap = kafka.bootstrap(settings)
    assert await kafka.preflight(settings) is None
    tls = await _refused(
        bootstrap, KafkaSecurity(protocol="SASL_SSL", ca_file=certs.ca_file, **SASL)
    )
    assert tls.startswith(f"LLMPULSE_KAFKA_SECURITY_PROTOCOL: Kafka at {bootstrap} took ")
    sasl = await _refused(bootstrap, KafkaSecurity(protocol="SASL_PLAINTEXT", **SASL))
    assert sasl == (
        f"LLMPULSE_KAFKA_SECURITY_PROTOCOL: Kafka at {bootstrap} does not expect SASL on this "
        "listener (SASL_PLAINTEXT)"
    )


async def test_a_side_reader_refused_by_the_broker_fails_instead_of_waiting(
    settings: Settings, certs: Certificates
) -> None:
    """Before: ``kafka.started`` retried "Unable to bootstrap" forever (the worker hung)."""
    refused = _settings(
        kafka.bootstrap(settings), KafkaSecurity(protocol="SSL", ca_file=certs.ca_file)
    )
    made: list[Any] = []

    def make() -> Any:
        made.append(kafka.consumer(refused, group="llmpulse-test-refused", request_timeout_ms=5000))
        return made[-1]

    with pytest.raises(ConfigError, match=r"^LLMPULSE_KAFKA_SECURITY_PROTOCOL: "):
        await kafka.started(make, "test reader", max_delay=0.01, settings=refused)
    assert len(made) == 1


async def test_a_command_exits_1_when_the_broker_refuses_the_protocol(
    settings: Settings, certs: Certificates, tmp_path: Path
) -> None:
    security = KafkaSecurity(protocol="SASL_SSL", ca_file=certs.ca_file, **SASL)
    env = _kafka_env(kafka.bootstrap(settings), security, tmp_path)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "llmpulse", "worker", "breaker",
        env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    out, err = await proc.communicate()
    assert proc.returncode == 1, err
    lines = err.decode().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("llmpulse: error: LLMPULSE_KAFKA_SECURITY_PROTOCOL: Kafka at ")
    assert CANARY.encode() not in out + err
