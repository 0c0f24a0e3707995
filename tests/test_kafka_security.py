"""Kafka client security: the model's rules, the options every client gets, secrets kept.

``llmpulse.core.kafka_security.KafkaSecurity`` is the one place the
``LLMPULSE_KAFKA_*`` security settings become aiokafka options; the workers'
``Settings``, the gateway's ``GatewayConfig`` and Faust all take them from there.
Connections (real TLS handshakes, a real broker) are in test_kafka_security_tls.py.
"""

from __future__ import annotations

import os
import ssl
from pathlib import Path
from typing import Any

import faust
import pytest
from aiokafka.errors import (
    IllegalSaslStateError,
    KafkaConnectionError,
    SaslAuthenticationFailed,
    UnsupportedSaslMechanismError,
)
from faust.transport.drivers.aiokafka import credentials_to_aiokafka_auth
from pydantic import SecretStr, ValidationError

from llmpulse.cli import main
from llmpulse.core.kafka_security import ENV_VARS, KafkaSecurity, KafkaSecurityError, refusal
from llmpulse.devstack.stack.tls import Certificates, certificate_authority, certificates
from llmpulse.gateway.config import GatewayConfig
from llmpulse.gateway.exceptions import ConfigError as GatewayConfigError
from llmpulse.processors.errors import ConfigError
from llmpulse.processors.settings import Settings
from llmpulse.processors.stream import faust_app, kafka

CANARY = "canary-pw-7f3a9c"
SASL: dict[str, Any] = {"sasl_mechanism": "SCRAM-SHA-512", "username": "svc", "password": CANARY}


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certificates:
    return certificates(tmp_path_factory.mktemp("tls"))


def _errors(**fields: Any) -> dict[str, str]:
    """``{field: message}`` of the ``ValidationError`` that ``KafkaSecurity(**fields)`` raises."""
    with pytest.raises(ValidationError) as caught:
        KafkaSecurity(**fields)
    assert CANARY not in str(caught.value)
    return {str(e["loc"][0]): e["msg"] for e in caught.value.errors(include_input=False)}


# --- rules ------------------------------------------------------------------------


def test_plaintext_is_the_default_and_needs_nothing() -> None:
    assert KafkaSecurity().aiokafka_options() == {"security_protocol": "PLAINTEXT"}


@pytest.mark.parametrize("protocol", ["SASL_PLAINTEXT", "SASL_SSL"])
@pytest.mark.parametrize("missing", ["sasl_mechanism", "username", "password"])
def test_sasl_needs_a_mechanism_a_user_and_a_password(protocol: str, missing: str) -> None:
    given = {k: v for k, v in SASL.items() if k != missing}
    errors = _errors(protocol=protocol, **given)
    assert list(errors) == [missing]
    assert errors[missing].startswith(f"not set; LLMPULSE_KAFKA_SECURITY_PROTOCOL is {protocol}")


@pytest.mark.parametrize("protocol", ["PLAINTEXT", "SSL"])
@pytest.mark.parametrize("field", ["sasl_mechanism", "username", "password"])
def test_a_sasl_setting_without_a_sasl_protocol_is_a_forgotten_protocol(
    protocol: str, field: str
) -> None:
    errors = _errors(protocol=protocol, **{field: SASL[field]})
    assert errors == {
        field: f"set, but LLMPULSE_KAFKA_SECURITY_PROTOCOL is {protocol} "
        "(SASL needs SASL_PLAINTEXT or SASL_SSL)"
    }


@pytest.mark.parametrize("protocol", ["PLAINTEXT", "SASL_PLAINTEXT"])
def test_tls_files_need_a_tls_protocol(protocol: str, certs: Certificates) -> None:
    sasl = SASL if protocol.startswith("SASL") else {}
    errors = _errors(protocol=protocol, ca_file=certs.ca_file, **sasl)
    assert errors == {
        "ca_file": f"set, but LLMPULSE_KAFKA_SECURITY_PROTOCOL is {protocol} "
        "(TLS files need SSL or SASL_SSL)"
    }


@pytest.mark.parametrize(
    ("given", "missing"), [("cert_file", "key_file"), ("key_file", "cert_file")]
)
def test_the_client_certificate_and_its_key_go_together(
    given: str, missing: str, certs: Certificates
) -> None:
    errors = _errors(protocol="SSL", **{given: getattr(certs, given)})
    assert errors == {
        missing: f"not set; {ENV_VARS[given]} is, and a certificate needs its key",
    }


@pytest.mark.parametrize("field", ["ca_file", "cert_file", "key_file"])
def test_a_missing_file_is_named(field: str, certs: Certificates, tmp_path: Path) -> None:
    files = {"cert_file": certs.cert_file, "key_file": certs.key_file}
    files[field] = tmp_path / "nope.pem"
    assert _errors(protocol="SSL", **files) == {field: f"no such file: {tmp_path / 'nope.pem'}"}


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file")
def test_an_unreadable_file_is_named(tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("x")
    ca.chmod(0)
    assert _errors(protocol="SSL", ca_file=ca) == {"ca_file": f"not readable by this user: {ca}"}


def test_empty_values_are_unset() -> None:
    blank: dict[str, Any] = dict.fromkeys(("sasl_mechanism", "username", "password", "ca_file"), "")
    empty = KafkaSecurity(**blank)
    assert empty == KafkaSecurity()


# --- options ----------------------------------------------------------------------


def test_sasl_ssl_options_carry_the_credentials_and_a_verifying_context(
    certs: Certificates,
) -> None:
    security = KafkaSecurity(protocol="SASL_SSL", ca_file=certs.ca_file, **SASL)
    options = security.aiokafka_options()
    context = options.pop("ssl_context")
    assert options == {
        "security_protocol": "SASL_SSL",
        "sasl_mechanism": "SCRAM-SHA-512",
        "sasl_plain_username": "svc",
        "sasl_plain_password": CANARY,
    }
    assert isinstance(context, ssl.SSLContext)
    assert context.verify_mode == ssl.CERT_REQUIRED
    assert context.check_hostname
    assert [c["subject"] for c in context.get_ca_certs()] == [
        ((("commonName", "llmpulse local ca"),),)
    ]


def test_sasl_plaintext_options_have_no_tls() -> None:
    options = KafkaSecurity(protocol="SASL_PLAINTEXT", **SASL).aiokafka_options()
    assert "ssl_context" not in options
    assert options["security_protocol"] == "SASL_PLAINTEXT"


def test_ssl_with_a_client_certificate_and_no_host_name_check(certs: Certificates) -> None:
    security = KafkaSecurity(
        protocol="SSL",
        ca_file=certs.ca_file,
        cert_file=certs.cert_file,
        key_file=certs.key_file,
        check_hostname=False,
    )
    options = security.aiokafka_options()
    assert set(options) == {"security_protocol", "ssl_context"}
    assert not options["ssl_context"].check_hostname
    assert options["ssl_context"].verify_mode == ssl.CERT_REQUIRED  # still verified


def test_without_a_ca_file_the_system_cas_are_trusted() -> None:
    context = KafkaSecurity(protocol="SSL").ssl_context()
    assert context.verify_mode == ssl.CERT_REQUIRED
    assert context.check_hostname


def test_a_ca_file_that_is_not_pem_names_its_setting(tmp_path: Path) -> None:
    bad = tmp_path / "ca.pem"
    bad.write_text("not a certificate")
    with pytest.raises(KafkaSecurityError, match=r"^LLMPULSE_KAFKA_SSL_CA_FILE: not a PEM"):
        KafkaSecurity(protocol="SSL", ca_file=bad).ssl_context()


def test_a_key_of_another_certificate_names_the_certificate_setting(
    certs: Certificates, tmp_path: Path
) -> None:
    _, other_key = certificate_authority(tmp_path, "other-ca")
    security = KafkaSecurity(protocol="SSL", cert_file=certs.cert_file, key_file=other_key)
    with pytest.raises(KafkaSecurityError) as caught:
        security.ssl_context()
    assert caught.value.setting == "LLMPULSE_KAFKA_SSL_CERT_FILE"
    assert "\n" not in str(caught.value)


# --- secrets ----------------------------------------------------------------------


def test_the_password_never_shows(certs: Certificates) -> None:
    security = KafkaSecurity(protocol="SASL_SSL", ca_file=certs.ca_file, **SASL)
    for text in (repr(security), str(security), security.model_dump_json()):
        assert CANARY not in text
    credentials = faust_app.broker_credentials(_settings(security))
    assert CANARY not in repr(credentials)


def test_settings_errors_never_show_the_password() -> None:
    long = CANARY * 300  # no length limit: pydantic's length error would quote it
    with pytest.raises(ValidationError) as caught:
        Settings(kafka_sasl_password=SecretStr(long), kafka_sasl_username="svc")
    errors = caught.value.errors(include_input=False)
    assert [e["loc"] for e in errors] == [("kafka_sasl_username",), ("kafka_sasl_password",)]
    assert CANARY not in str(caught.value)
    ok = Settings(
        kafka_security_protocol="SASL_SSL",
        kafka_sasl_mechanism="PLAIN",
        kafka_sasl_username="svc",
        kafka_sasl_password=SecretStr(long),
    )
    assert CANARY not in repr(ok) + str(ok)


def test_a_refused_setting_error_never_shows_the_password() -> None:
    security = KafkaSecurity(protocol="SASL_SSL", **SASL)
    error = refusal(SaslAuthenticationFailed("Authentication failed"), security, "k:9093")
    assert error is not None
    assert CANARY not in str(error)


# --- refusals ---------------------------------------------------------------------

_SASL_SSL = KafkaSecurity(protocol="SASL_SSL", **SASL)


def _verification(code: int, message: str) -> ssl.SSLCertVerificationError:
    error = ssl.SSLCertVerificationError(1, message)
    error.verify_code, error.verify_message = code, message
    return error


@pytest.mark.parametrize(
    ("exc", "setting"),
    [
        (SaslAuthenticationFailed("Authentication failed"), "LLMPULSE_KAFKA_SASL_PASSWORD"),
        (UnsupportedSaslMechanismError("no SCRAM"), "LLMPULSE_KAFKA_SASL_MECHANISM"),
        (IllegalSaslStateError("no SASL here"), "LLMPULSE_KAFKA_SECURITY_PROTOCOL"),
        (_verification(20, "unable to get local issuer"), "LLMPULSE_KAFKA_SSL_CA_FILE"),
        (_verification(62, "Hostname mismatch"), "LLMPULSE_KAFKA_SSL_CHECK_HOSTNAME"),
        (ssl.SSLError(1, "[SSL: WRONG_VERSION_NUMBER]"), "LLMPULSE_KAFKA_SECURITY_PROTOCOL"),
    ],
)
def test_what_a_broker_refused_names_the_setting(exc: BaseException, setting: str) -> None:
    wrapped = KafkaConnectionError("Connection at k:9093 broken")
    wrapped.__cause__ = exc  # aiokafka chains the cause when a connection breaks
    for raised in (exc, wrapped):
        error = refusal(raised, _SASL_SSL, "k:9093")
        assert error is not None
        assert error.setting == setting
        assert str(error).startswith(f"{setting}: ")
        assert "k:9093" in str(error)


@pytest.mark.parametrize(
    "exc",
    [ConnectionRefusedError(111, "refused"), TimeoutError(), KafkaConnectionError("closed")],
)
def test_an_unreachable_broker_is_no_refusal(exc: BaseException) -> None:
    assert refusal(exc, _SASL_SSL, "k:9093") is None


# --- Settings, child processes, the gateway, Faust ---------------------------------


def _settings(security: KafkaSecurity, **more: Any) -> Settings:
    fields = {
        name.removeprefix("LLMPULSE_").lower(): getattr(security, f) for f, name in ENV_VARS.items()
    }
    return Settings(kafka_bootstrap="127.0.0.1:9093", **fields, **more)


def _env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, **values: str) -> None:
    for name in list(os.environ):
        if name.startswith("LLMPULSE_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)  # no .env
    for name, value in values.items():
        monkeypatch.setenv(name, value)


def test_settings_read_the_variables_and_child_processes_get_them(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, certs: Certificates
) -> None:
    _env(
        monkeypatch,
        tmp_path,
        LLMPULSE_KAFKA_SECURITY_PROTOCOL="SASL_SSL",
        LLMPULSE_KAFKA_SASL_MECHANISM="SCRAM-SHA-256",
        LLMPULSE_KAFKA_SASL_USERNAME="svc",
        LLMPULSE_KAFKA_SASL_PASSWORD=CANARY,
        LLMPULSE_KAFKA_SSL_CHECK_HOSTNAME="false",
    )
    relative = Path(os.path.relpath(certs.ca_file))
    monkeypatch.setenv("LLMPULSE_KAFKA_SSL_CA_FILE", str(relative))
    settings = Settings()
    expected = KafkaSecurity(
        protocol="SASL_SSL",
        sasl_mechanism="SCRAM-SHA-256",
        username="svc",
        password=SecretStr(CANARY),
        ca_file=relative,
        check_hostname=False,
    )
    assert settings.kafka_security == expected
    assert CANARY not in repr(settings)
    env = settings.child_env()
    assert env["LLMPULSE_KAFKA_SASL_PASSWORD"] == CANARY  # the child needs it
    assert env["LLMPULSE_KAFKA_SSL_CA_FILE"] == str(certs.ca_file.resolve())  # from any folder
    (tmp_path / "child").mkdir()
    passed = {k: v for k, v in env.items() if k.startswith("LLMPULSE_KAFKA")}
    _env(monkeypatch, tmp_path / "child", **passed)
    child = Settings().kafka_security
    assert child == expected.model_copy(update={"ca_file": certs.ca_file.resolve()})


def test_plaintext_children_get_only_the_protocol(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    _env(monkeypatch, tmp_path)
    env = Settings().child_env()
    kafka_env = {k: v for k, v in env.items() if k.startswith("LLMPULSE_KAFKA_S")}
    assert kafka_env == {
        "LLMPULSE_KAFKA_SECURITY_PROTOCOL": "PLAINTEXT",
        "LLMPULSE_KAFKA_SSL_CHECK_HOSTNAME": "true",
    }


def test_a_bad_combination_is_one_line_naming_the_variable_exit_2(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _env(
        monkeypatch,
        tmp_path,
        LLMPULSE_KAFKA_SECURITY_PROTOCOL="SASL_SSL",
        LLMPULSE_KAFKA_SASL_MECHANISM="PLAIN",
        LLMPULSE_KAFKA_SASL_PASSWORD=CANARY,
    )
    assert main(["topics", "create"]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err == (
        "llmpulse: error: invalid setting LLMPULSE_KAFKA_SASL_USERNAME: not set; "
        "LLMPULSE_KAFKA_SECURITY_PROTOCOL is SASL_SSL, which needs a SASL mechanism, user and "
        "password\n"
    )


def test_a_tls_file_that_cannot_load_is_a_config_error_for_every_client(
    tmp_path: Path,
) -> None:
    bad = tmp_path / "ca.pem"
    bad.write_text("not a certificate")
    settings = _settings(KafkaSecurity(protocol="SSL", ca_file=bad))
    for build in (kafka.client_options, faust_app.broker_credentials):
        with pytest.raises(ConfigError, match=r"^LLMPULSE_KAFKA_SSL_CA_FILE: not a PEM"):
            build(settings)


def test_the_gateway_reads_the_same_variables() -> None:
    env = {
        "LLMPULSE_KAFKA_BOOTSTRAP": "k:9093",
        "LLMPULSE_KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
        "LLMPULSE_KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
        "LLMPULSE_KAFKA_SASL_USERNAME": "svc",
        "LLMPULSE_KAFKA_SASL_PASSWORD": CANARY,
    }
    config = GatewayConfig.from_env(env)
    assert config.kafka_security == KafkaSecurity(protocol="SASL_PLAINTEXT", **SASL)
    assert CANARY not in repr(config)
    assert GatewayConfig(bootstrap_servers="k:1").kafka_security == KafkaSecurity()
    del env["LLMPULSE_KAFKA_SASL_USERNAME"]
    with pytest.raises(GatewayConfigError) as caught:
        GatewayConfig.from_env(env)
    assert caught.value.names == ("LLMPULSE_KAFKA_SASL_USERNAME",)
    assert str(caught.value).startswith(
        "invalid gateway environment: LLMPULSE_KAFKA_SASL_USERNAME: not set; "
    )
    assert CANARY not in str(caught.value)


@pytest.mark.parametrize(
    ("security", "kind"),
    [
        (KafkaSecurity(), type(None)),
        (KafkaSecurity(protocol="SSL"), faust.SSLCredentials),
        (KafkaSecurity(protocol="SASL_PLAINTEXT", **SASL), faust.SASLCredentials),
        (KafkaSecurity(protocol="SASL_SSL", **SASL), faust.SASLCredentials),
    ],
)
def test_faust_gets_the_options_every_other_client_gets(
    security: KafkaSecurity, kind: type
) -> None:
    settings = _settings(security)
    credentials = faust_app.broker_credentials(settings)
    assert isinstance(credentials, kind)
    # What faust-streaming hands to aiokafka (its consumer, producer and topic creation).
    faust_options = credentials_to_aiokafka_auth(credentials)
    ours = kafka.client_options(settings)
    del ours["bootstrap_servers"]
    assert set(faust_options) >= set(ours)
    for name, value in ours.items():
        if name == "ssl_context":
            assert faust_options[name].verify_mode == ssl.CERT_REQUIRED
        else:
            assert faust_options[name] == value


def test_a_faust_app_is_made_with_the_credentials(tmp_path: Path) -> None:
    settings = _settings(KafkaSecurity(protocol="SASL_PLAINTEXT", **SASL), state_dir=tmp_path)
    app = faust_app.create_app(settings, "test")
    assert isinstance(app.conf.broker_credentials, faust.SASLCredentials)
    assert app.conf.broker_credentials.username == "svc"


async def test_a_side_reader_stops_retrying_when_kafka_refuses_the_settings(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``kafka.started`` waits out an unreachable Kafka, not a refusal (checked by preflight)."""

    class _Refused:
        stopped = False

        async def start(self) -> None:
            raise KafkaConnectionError("Unable to bootstrap from [('k', 9093, 'IPv4')]")

        async def stop(self) -> None:
            self.stopped = True

    async def refused(settings: Settings, **_: Any) -> str | None:
        raise ConfigError("LLMPULSE_KAFKA_SASL_PASSWORD: refused")

    monkeypatch.setattr(kafka, "preflight", refused)
    reader: Any = _Refused()
    with pytest.raises(ConfigError, match="LLMPULSE_KAFKA_SASL_PASSWORD"):
        await kafka.started(lambda: reader, "test reader", settings=_settings(KafkaSecurity()))
    assert reader.stopped
