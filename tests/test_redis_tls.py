"""Redis over TLS with an ACL user, refusals as errors, and secret addresses (issue 14).

The ``stack`` tests start their own redis-server with TLS only (``--port 0``) on
a free loopback port, with certificates of the local stack's private CA and an
ACL user (the default user is off). The unit tests check the address rules, the
redaction of every secret address and the refusal rules on built exceptions.
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import ssl
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import clickhouse_connect
import pytest
import redis
from pydantic import SecretStr
from redis.exceptions import AuthenticationError, NoPermissionError

from llmpulse.cli import main
from llmpulse.core.redis_refusal import refusal
from llmpulse.devstack import stack
from llmpulse.devstack.stack.tls import certificate_authority, certificates
from llmpulse.gateway.breaker_view import BreakerView
from llmpulse.gateway.config import GatewayConfig, redis_client
from llmpulse.gateway.redis_health import RedisHealth
from llmpulse.processors import addresses
from llmpulse.processors.breaker import ops
from llmpulse.processors.settings import Settings
from llmpulse.processors.stream import clickhouse
from llmpulse.processors.stream import redis_client as worker_redis
from llmpulse.schemas import serving
from llmpulse.schemas.events import BreakerSnapshot, BreakerState

PASSWORD = "canary-pw-7f3a9c"
USER = "app"

# --- unit: the shape of a Redis URL -----------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "redis://127.0.0.1:6379/0",
        f"rediss://{USER}:{PASSWORD}@127.0.0.1:6380/2?ssl_ca_certs=/etc/ca.pem",
        "rediss://h:1/0?ssl_ca_certs=/ca.pem&ssl_certfile=/c.pem&ssl_keyfile=/k.pem"
        "&ssl_check_hostname=false",
        "rediss://h:1",
    ],
)
def test_redis_urls_with_tls_options_are_accepted(url: str) -> None:
    assert addresses.redis_url(url) == url


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("redis://h:1/0?ssl_ca_certs=/ca.pem", "need a rediss:// URL"),
        (f"rediss://h:1/0?password={PASSWORD}", "unknown Redis URL option 'password'"),
        ("rediss://h:1/0?ssl_check_hostname=maybe", "true or false"),
        ("rediss://h:1/0?ssl_keyfile=/k.pem", "needs ssl_certfile"),
        ("rediss://h:1/0?ssl_ca_certs=/a&ssl_ca_certs=/b", "given twice"),
        ("rediss://h:1/0?ssl_ca_certs=", "is empty"),
        ("rediss://h:1/0#x", "no #fragment"),
    ],
)
def test_bad_redis_url_options_are_refused_without_the_value(url: str, message: str) -> None:
    with pytest.raises(ValueError, match=message) as err:
        addresses.redis_url(url)
    assert PASSWORD not in str(err.value)


def test_a_bad_url_is_a_usage_error_naming_the_setting(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _clean_env(monkeypatch, tmp_path)
    monkeypatch.setenv("LLMPULSE_REDIS_URL", f"redis://{USER}:{PASSWORD}@h:1/0?ssl_ca_certs=/x")
    assert main(["breaker", "status"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "LLMPULSE_REDIS_URL" in err
    assert PASSWORD not in err


# --- unit: redaction ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        (
            f"rediss://{USER}:{PASSWORD}@127.0.0.1:6380/0?ssl_ca_certs=/ca.pem",
            "rediss://***@127.0.0.1:6380/0?ssl_ca_certs=/ca.pem",
        ),
        (f"rediss://:{PASSWORD}@h:1", "rediss://***@h:1"),
        ("redis://127.0.0.1:6379/0", "redis://127.0.0.1:6379/0"),
        (f"https://u:{PASSWORD}@ch:8443/db", "https://***@ch:8443/db"),
        # An unencoded / or @ in the password, a password in the query.
        (f"http://u:a/{PASSWORD}@b@ch:8123/db", "http://***@ch:8123/db"),
        (f"http://ch:8123/db?password={PASSWORD}&x=1", "http://ch:8123/db?password=***&x=1"),
        (PASSWORD, "***"),
    ],
)
def test_redacted_keeps_the_location_and_drops_the_credentials(url: str, shown: str) -> None:
    assert addresses.redacted(url) == shown


def test_scrubbed_removes_a_quoted_url_and_a_bare_password() -> None:
    dsn = f"https://u:{PASSWORD}@ch:8443/db"
    text = addresses.scrubbed(f"bad {dsn}; auth {PASSWORD} refused", dsn)
    assert text == "bad https://***@ch:8443/db; auth *** refused"


def test_settings_never_show_the_redis_url_or_the_dsn(tmp_path: Path) -> None:
    url = f"rediss://{USER}:{PASSWORD}@127.0.0.1:6380/0"
    dsn = f"https://u:{PASSWORD}@ch:8443/db"
    settings = Settings(state_dir=tmp_path, redis_url=SecretStr(url), clickhouse_dsn=SecretStr(dsn))
    for shown in (repr(settings), str(settings), settings.model_dump_json()):
        assert PASSWORD not in shown
    # Revealed where it must be: a child process's environment, a client.
    assert settings.child_env()["LLMPULSE_REDIS_URL"] == url
    assert settings.effective_clickhouse_dsn == dsn


def test_gateway_config_never_shows_the_redis_url() -> None:
    url = f"rediss://{USER}:{PASSWORD}@127.0.0.1:6380/0"
    config = GatewayConfig.from_env(
        {"LLMPULSE_KAFKA_BOOTSTRAP": "127.0.0.1:1", "LLMPULSE_REDIS_URL": url}
    )
    assert PASSWORD not in repr(config)
    assert PASSWORD not in config.model_dump_json()
    assert config.redis_url.get_secret_value() == url


def test_a_clickhouse_error_never_shows_the_dsn(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    dsn = f"https://u:{PASSWORD}@ch:8443/db"

    def refuse(**kwargs: Any) -> None:
        raise RuntimeError(f"HTTP 516 from {kwargs['dsn']}: password {PASSWORD} is wrong")

    monkeypatch.setattr(clickhouse_connect, "get_client", refuse)
    settings = Settings(state_dir=tmp_path, clickhouse_dsn=SecretStr(dsn))
    with pytest.raises(clickhouse.ClickHouseConfigError) as err:
        clickhouse.connect(settings)
    assert str(err.value) == (
        "cannot open ClickHouse at https://***@ch:8443/db: "
        "HTTP 516 from https://***@ch:8443/db: password *** is wrong"
    )
    assert err.value.__cause__ is None
    assert err.value.__suppress_context__


@pytest.mark.stack  # a loopback socket stands in for the server
@pytest.mark.parametrize(("scheme", "first"), [("https", 0x16), ("http", ord("P"))])
def test_the_dsn_scheme_decides_tls_on_any_port(tmp_path: Path, scheme: str, first: int) -> None:
    """``https://`` speaks TLS on a port other than 443/8443 (first byte: a handshake record).

    clickhouse-connect alone picks TLS by port, so ``https://host:8123`` went out as
    plain HTTP, password included; ``http://`` stays plain.
    """
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        server.settimeout(30)
        port = server.getsockname()[1]
        dsn = (
            f"{scheme}://u:{PASSWORD}@127.0.0.1:{port}/db?connect_timeout=2&send_receive_timeout=2"
        )
        settings = Settings(state_dir=tmp_path, clickhouse_dsn=SecretStr(dsn))
        seen: list[bytes] = []

        def accept() -> None:
            conn, _ = server.accept()
            with conn:
                seen.append(conn.recv(1))

        thread = threading.Thread(target=accept)
        thread.start()
        with pytest.raises(clickhouse.ClickHouseConfigError):
            clickhouse.connect(settings)
        thread.join(30)
    assert seen
    assert seen[0][0] == first


# --- unit: refused versus unreachable -----------------------------------------------------


def _wrapped(cause: BaseException) -> redis.ConnectionError:
    """What redis-py raises for an ``OSError`` while connecting (the cause as context)."""
    try:
        raise cause
    except OSError:
        try:
            raise redis.ConnectionError("Error 1 connecting to 127.0.0.1:6380.") from None
        except redis.ConnectionError as exc:
            exc.__context__ = cause
            return exc


@pytest.mark.parametrize(
    ("exc", "reason"),
    [
        (AuthenticationError("invalid username-password pair"), "authentication failed"),
        (NoPermissionError("this user has no permissions to run 'scan'"), "lacks a permission"),
        (_wrapped(ssl.SSLCertVerificationError(1, "certificate verify failed")), "TLS failed"),
        (_wrapped(FileNotFoundError(2, "No such file", "/ca.pem")), "cannot read a TLS file"),
        (_wrapped(ConnectionRefusedError(111, "Connection refused")), None),
        (redis.TimeoutError("Timeout connecting to server"), None),
    ],
)
def test_refusal_tells_a_refusal_from_an_outage(exc: BaseException, reason: str | None) -> None:
    found = refusal(exc)
    assert (found is None) if reason is None else (found is not None and reason in found)


def test_a_worker_logs_a_refusal_as_an_error_naming_the_setting(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Breaker and prompts workers carry on without Redis, but a refusal is no outage."""
    log = logging.getLogger("llmpulse.test.worker")
    with caplog.at_level(logging.WARNING, logger=log.name):
        worker_redis.log_failure(log, _wrapped(ConnectionRefusedError(111, "refused")), "later")
        worker_redis.log_failure(log, AuthenticationError("WRONGPASS invalid"), "later")
    outage, refused = caplog.records
    assert outage.levelno == logging.WARNING
    assert outage.getMessage().startswith("redis unavailable, later")
    assert refused.levelno == logging.ERROR
    assert "fix LLMPULSE_REDIS_URL" in refused.getMessage()


def _status_settings(tmp_path: Path, url: str) -> Settings:
    return Settings(state_dir=tmp_path, kafka_bootstrap="127.0.0.1:1", redis_url=SecretStr(url))


async def test_breaker_status_stops_on_a_refusal_and_falls_back_on_an_outage(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    settings = _status_settings(tmp_path, f"rediss://{USER}:{PASSWORD}@127.0.0.1:6380/0")
    raised: list[BaseException] = []

    async def from_redis(_: Settings) -> list[BreakerSnapshot]:
        raise raised[-1]

    async def from_topic(_: Settings) -> list[BreakerSnapshot]:
        return []

    monkeypatch.setattr(ops, "status_from_redis", from_redis)
    monkeypatch.setattr(ops, "status_from_topic", from_topic)
    raised.append(_wrapped(ConnectionRefusedError(111, "Connection refused")))
    assert await ops.status(settings) == ("topic", [])
    raised.append(AuthenticationError("invalid username-password pair"))
    with pytest.raises(worker_redis.RedisRefused) as err:
        await ops.status(settings)
    assert str(err.value) == (
        "Redis at rediss://***@127.0.0.1:6380/0 (LLMPULSE_REDIS_URL) refused llmpulse: "
        "authentication failed: invalid username-password pair"
    )


def test_redis_health_says_a_refusal_once_as_an_error(caplog: pytest.LogCaptureFixture) -> None:
    health = RedisHealth(logging.getLogger("test"), "breaker view", "local breakers decide")
    outage = _wrapped(ConnectionRefusedError(111, "Connection refused"))
    with caplog.at_level(logging.INFO, "test"):
        health.failed(outage)
        health.failed(outage)
        assert "unreachable" in str(health.problem)
        for _ in range(2):
            health.failed(AuthenticationError("invalid username-password pair"))
        assert "LLMPULSE_REDIS_URL" in str(health.problem)
        health.answered()
        assert health.problem is None
    assert [(r.levelname, r.getMessage().split(":")[1].strip()) for r in caplog.records] == [
        ("WARNING", "Redis unreachable (ConnectionError"),
        ("ERROR", "Redis refused this gateway (authentication failed"),
        ("INFO", "Redis reachable again"),
    ]


# --- stack: a real redis-server with TLS and an ACL user ------------------------------------


@dataclass(frozen=True)
class TlsRedis:
    port: int
    ca_file: Path
    other_ca_file: Path

    def url(self, *, user: str = USER, password: str = PASSWORD, ca: Path | None = None) -> str:
        return (
            f"rediss://{user}:{password}@127.0.0.1:{self.port}/0?ssl_ca_certs={ca or self.ca_file}"
        )


@pytest.fixture(scope="module")
def tls_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsRedis]:
    exe = shutil.which("redis-server")
    if exe is None:
        pytest.skip("redis-server not installed")
    folder = tmp_path_factory.mktemp("tls-redis")
    certs = certificates(folder / "tls")
    other_ca, _key = certificate_authority(folder / "tls", "other-ca")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    args = [
        exe, "--port", "0", "--tls-port", str(port), "--bind", "127.0.0.1",
        "--tls-cert-file", str(certs.cert_file), "--tls-key-file", str(certs.key_file),
        "--tls-ca-cert-file", str(certs.ca_file), "--tls-auth-clients", "no",
        "--save", "", "--appendonly", "no", "--dir", str(folder),
        "--user", "default", "off",
        "--user", USER, "on", f">{PASSWORD}", "~*", "&*", "+@all",
    ]  # fmt: skip
    log = (folder / "redis.log").open("wb")
    proc = subprocess.Popen(args, cwd=folder, stdout=log, stderr=subprocess.STDOUT)
    server = TlsRedis(port, certs.ca_file, other_ca)
    try:
        _wait_ready(server, proc, folder / "redis.log")
        yield server
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        log.close()


def _wait_ready(server: TlsRedis, proc: subprocess.Popen[bytes], log: Path) -> None:
    client = redis.Redis.from_url(server.url(), socket_timeout=1, socket_connect_timeout=1)
    deadline = time.monotonic() + 20
    try:
        while True:
            try:
                if client.ping():
                    return
            except (redis.RedisError, OSError):
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(
                        f"TLS redis-server did not start: {log.read_text()}"
                    ) from None
                time.sleep(0.1)
    finally:
        client.close()


def _clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No ``LLMPULSE_*`` of the machine, no ``.env``: the test's settings only."""
    for name in list(os.environ):
        if name.startswith("LLMPULSE_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("LLMPULSE_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("LLMPULSE_KAFKA_BOOTSTRAP", "127.0.0.1:1")  # never reached


def _snapshot(provider: str) -> BreakerSnapshot:
    now = datetime.now(UTC)
    return BreakerSnapshot(
        event_id=uuid.uuid4(),
        event_time=now,
        provider=provider,
        state=BreakerState.open,
        version=7,
        since=now,
        as_of=now,
        failure_rate=0.5,
        calls_in_window=10,
    )


@pytest.mark.stack
def test_breaker_status_reads_through_tls_with_an_acl_user(
    tls_redis: TlsRedis,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    prefix = f"t{uuid.uuid4().hex[:8]}."
    client = redis.Redis.from_url(tls_redis.url())
    try:
        client.hset(
            serving.breaker_key(prefix, "tls-provider"),
            "snapshot",
            _snapshot("tls-provider").model_dump_json(),
        )
    finally:
        client.close()
    _clean_env(monkeypatch, tmp_path)
    monkeypatch.setenv("LLMPULSE_TOPIC_PREFIX", prefix)
    monkeypatch.setenv("LLMPULSE_REDIS_URL", tls_redis.url())
    assert main(["breaker", "status"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("source: redis\n")
    assert "tls-provider" in out
    assert " open " in out


@pytest.mark.stack
@pytest.mark.parametrize(
    ("user", "password", "other_ca", "reason"),
    [
        (USER, "wrong-" + PASSWORD, False, "authentication failed"),
        ("nobody", PASSWORD, False, "authentication failed"),
        (USER, PASSWORD, True, "TLS failed: CERTIFICATE_VERIFY_FAILED"),
    ],
    ids=["wrong-password", "unknown-user", "untrusted-ca"],
)
def test_breaker_status_fails_on_a_refusal_without_showing_the_password(
    tls_redis: TlsRedis,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    user: str,
    password: str,
    other_ca: bool,
    reason: str,
) -> None:
    ca = tls_redis.other_ca_file if other_ca else None
    address = tls_redis.url(user=user, password=password, ca=ca)
    _clean_env(monkeypatch, tmp_path)
    monkeypatch.setenv("LLMPULSE_REDIS_URL", address)
    assert main(["breaker", "status"]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.count("\n") == 1
    assert captured.err.startswith(
        f"llmpulse: error: Redis at rediss://***@127.0.0.1:{tls_redis.port}/0?ssl_ca_certs="
    )
    assert "(LLMPULSE_REDIS_URL) refused llmpulse: " + reason in captured.err
    assert PASSWORD not in captured.err


@pytest.mark.stack
async def test_the_gateway_view_reads_through_tls_and_reports_a_refusal(
    tls_redis: TlsRedis, caplog: pytest.LogCaptureFixture
) -> None:
    prefix = f"t{uuid.uuid4().hex[:8]}."
    good = GatewayConfig(
        bootstrap_servers="127.0.0.1:1",
        redis_url=SecretStr(tls_redis.url()),
        topic_prefix=prefix,
        redis_timeout_seconds=2,
    )
    rds = redis_client(good)
    try:
        await rds.hset(
            serving.breaker_key(prefix, "tls-provider"),
            "snapshot",
            _snapshot("tls-provider").model_dump_json(),
        )
        view = BreakerView(rds, good, ["tls-provider"])
        assert await view.refresh()
        assert view.health()[0].shared_version == 7
        assert view.redis_health.problem is None
    finally:
        await rds.aclose()
    bad = good.model_copy(update={"redis_url": SecretStr(tls_redis.url(password="wrong"))})
    rds = redis_client(bad)
    try:
        view = BreakerView(rds, bad, ["tls-provider"])
        with caplog.at_level(logging.WARNING, "llmpulse.gateway"):
            assert not await view.refresh()
    finally:
        await rds.aclose()
    assert "fix LLMPULSE_REDIS_URL" in str(view.redis_health.problem)
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1
    assert "Redis refused this gateway (authentication failed" in errors[0]
    assert all(PASSWORD not in r.getMessage() for r in caplog.records)


@pytest.mark.stack
def test_stack_status_shows_an_external_redis_without_its_password(
    tls_redis: TlsRedis, tmp_path: Path
) -> None:
    settings = _status_settings(tmp_path, tls_redis.url())
    row = stack.status(settings)["redis"]
    assert (row.state, row.detail.startswith("redis ")) == ("external", True)
    assert PASSWORD not in row.address
    assert f"127.0.0.1:{tls_redis.port}/0" in row.address
