"""How every llmpulse Kafka client authenticates: one validated model, one set of options.

The workers (``Settings``) and the gateway (``GatewayConfig``) read the same
``LLMPULSE_KAFKA_*`` variables (:data:`ENV_VARS`) into a :class:`KafkaSecurity`;
each client (producers, consumers, admin clients, Faust) takes its options from
:meth:`KafkaSecurity.aiokafka_options`, so no client can connect differently.

Mistakes are told apart from outages. A combination that cannot work (SASL
without a password, a client certificate without its key, a TLS file on a
plaintext connection, a file that cannot be read) is refused when the model is
built. A broker that refuses the credentials or whose certificate is not trusted
is found by :func:`preflight` before a client starts: aiokafka itself only logs
the cause and raises "Unable to bootstrap", which looks like an outage that a
retry would fix, while no retry fixes a wrong password. Every error names the
``LLMPULSE_*`` setting to fix, in one line, and never shows the password.

I/O only when called: :meth:`KafkaSecurity.ssl_context` reads the files it
names, :func:`preflight` opens one connection per bootstrap address (it lives
here because the workers and the gateway SDK both need it and share only the
core).
"""

from __future__ import annotations

import asyncio
import os
import ssl
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

from aiokafka.conn import create_conn
from aiokafka.errors import (
    IllegalSaslStateError,
    KafkaConnectionError,
    KafkaError,
    SaslAuthenticationFailed,
    UnsupportedSaslMechanismError,
)
from aiokafka.protocol.metadata import MetadataRequest
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import InitErrorDetails, PydanticCustomError

from llmpulse.core.exception_chain import chain

__all__ = [
    "ENV_VARS",
    "KafkaSecurity",
    "KafkaSecurityError",
    "SaslMechanism",
    "SecurityProtocol",
    "preflight",
    "refusal",
]

SecurityProtocol = Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"]
SaslMechanism = Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"]

#: The environment variable of each field (the workers' ``Settings`` field is the
#: name without ``LLMPULSE_``, lower case).
ENV_VARS: Mapping[str, str] = {
    "protocol": "LLMPULSE_KAFKA_SECURITY_PROTOCOL",
    "sasl_mechanism": "LLMPULSE_KAFKA_SASL_MECHANISM",
    "username": "LLMPULSE_KAFKA_SASL_USERNAME",
    "password": "LLMPULSE_KAFKA_SASL_PASSWORD",
    "ca_file": "LLMPULSE_KAFKA_SSL_CA_FILE",
    "cert_file": "LLMPULSE_KAFKA_SSL_CERT_FILE",
    "key_file": "LLMPULSE_KAFKA_SSL_KEY_FILE",
    "check_hostname": "LLMPULSE_KAFKA_SSL_CHECK_HOSTNAME",
}
_TLS = ("SSL", "SASL_SSL")
_SASL_FIELDS = ("sasl_mechanism", "username", "password")
_FILE_FIELDS = ("ca_file", "cert_file", "key_file")
#: Longest path shown in a message (a pasted value may be huge).
_SHOWN = 200


class KafkaSecurityError(ValueError):
    """Kafka refused this client, or a file of its TLS settings is unusable: fix ``setting``.

    ``str(error)`` is one line that starts with the setting's variable.
    """

    def __init__(self, setting: str, problem: str) -> None:
        super().__init__(f"{setting}: {problem}")
        self.setting = setting


class KafkaSecurity(BaseModel):
    """Security protocol, SASL credentials and TLS files of the Kafka clients.

    Frozen and validated: an instance always describes settings that can work
    (see the module docstring); an invalid one raises pydantic's
    ``ValidationError`` with one error per field at fault, located at that field
    and naming the variables involved. ``repr`` and ``str`` show the password as
    ``**********``.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    protocol: SecurityProtocol = "PLAINTEXT"
    sasl_mechanism: SaslMechanism | None = None
    username: Annotated[str, Field(max_length=1024)] | None = None
    password: SecretStr | None = None  # unbounded: a length error would show part of it
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    check_hostname: bool = True

    @field_validator("sasl_mechanism", "username", "password", *_FILE_FIELDS, mode="before")
    @classmethod
    def _empty_is_unset(cls, value: Any) -> Any:
        # An empty variable is an unset one, as everywhere in llmpulse.
        return None if value == "" else value

    @model_validator(mode="after")
    def _rules(self) -> KafkaSecurity:
        errors = list(self._problems())
        if errors:
            raise ValidationError.from_exception_data(
                type(self).__name__,
                [
                    InitErrorDetails(
                        type=PydanticCustomError("kafka_security", problem),
                        loc=(field,),
                        input=None,  # never echoed: it may be the password
                    )
                    for field, problem in errors
                ],
            )
        return self

    def _problems(self) -> Iterator[tuple[str, str]]:
        """``(field, problem)`` of each rule broken (the problem reads after the variable)."""
        protocol = f"{ENV_VARS['protocol']} is {self.protocol}"
        sasl = self.protocol.startswith("SASL_")
        for field in _SASL_FIELDS:
            value = getattr(self, field)
            if sasl and value is None:
                yield field, f"not set; {protocol}, which needs a SASL mechanism, user and password"
            elif not sasl and value is not None:
                yield field, f"set, but {protocol} (SASL needs SASL_PLAINTEXT or SASL_SSL)"
        for field in _FILE_FIELDS:
            if getattr(self, field) is not None and self.protocol not in _TLS:
                yield field, f"set, but {protocol} (TLS files need SSL or SASL_SSL)"
        pair = ("cert_file", "key_file")
        for field, other in (pair, pair[::-1]):
            if getattr(self, field) is None and getattr(self, other) is not None:
                yield field, f"not set; {ENV_VARS[other]} is, and a certificate needs its key"
        for field in _FILE_FIELDS:
            path: Path | None = getattr(self, field)
            if path is not None and not path.is_file():
                yield field, f"no such file: {_shown(path)}"
            elif path is not None and not os.access(path, os.R_OK):
                yield field, f"not readable by this user: {_shown(path)}"

    @property
    def tls(self) -> bool:
        """Whether the connection is encrypted (SSL or SASL_SSL)."""
        return self.protocol in _TLS

    @property
    def sasl(self) -> bool:
        """Whether the client authenticates with SASL (SASL_PLAINTEXT or SASL_SSL)."""
        return self.protocol.startswith("SASL_")

    def ssl_context(self) -> ssl.SSLContext:
        """A client TLS context: the CA file (or the system's CAs), the client certificate if set.

        The broker's certificate is always verified; its host name too unless
        ``check_hostname`` is off. Reads the files on each call; raises
        :class:`KafkaSecurityError` naming the file's variable when one is not
        what it should be (an encrypted key is refused, never prompted for).
        """
        try:
            context = ssl.create_default_context(
                ssl.Purpose.SERVER_AUTH, cafile=str(self.ca_file) if self.ca_file else None
            )
        except (ssl.SSLError, OSError) as exc:
            raise KafkaSecurityError(
                ENV_VARS["ca_file"], f"not a PEM certificate file ({_reason(exc)})"
            ) from None
        context.check_hostname = self.check_hostname
        if self.cert_file is not None:
            try:
                context.load_cert_chain(self.cert_file, self.key_file, password=_no_passphrase)
            except (ssl.SSLError, OSError) as exc:
                raise KafkaSecurityError(
                    ENV_VARS["cert_file"],
                    f"not a PEM certificate matching the unencrypted key of "
                    f"{ENV_VARS['key_file']} ({_reason(exc)})",
                ) from None
        return context

    def aiokafka_options(self) -> dict[str, Any]:
        """Keyword options of aiokafka's producer, consumer and admin client.

        Holds the password in clear text (aiokafka needs it): never log them.
        Builds a fresh :meth:`ssl_context` for a TLS protocol (so it raises as that does).
        """
        options: dict[str, Any] = {"security_protocol": self.protocol}
        if self.tls:
            options["ssl_context"] = self.ssl_context()
        if self.sasl and self.password is not None:
            options["sasl_mechanism"] = self.sasl_mechanism
            options["sasl_plain_username"] = self.username
            options["sasl_plain_password"] = self.password.get_secret_value()
        return options

    def environment(self) -> dict[str, str]:
        """The ``LLMPULSE_KAFKA_*`` variables that give these settings back (unset ones left out).

        For a child process on the same cluster: it holds the password in clear
        text (the child needs it), so never log it.
        """
        env: dict[str, str] = {}
        for field, var in ENV_VARS.items():
            value = getattr(self, field)
            if isinstance(value, SecretStr):
                value = value.get_secret_value()
            elif isinstance(value, bool):
                value = "true" if value else "false"
            elif isinstance(value, Path):
                value = value.resolve()  # the child may run in another folder
            if value is not None:
                env[var] = str(value)
        return env


def _no_passphrase() -> bytes:
    """The passphrase callback of an encrypted key: none (OpenSSL would prompt on the tty)."""
    return b""


def _shown(path: Path) -> str:
    text = str(path)
    return text if len(text) <= _SHOWN else text[:_SHOWN] + "..."


def _reason(exc: BaseException) -> str:
    """A short reason of a TLS or OS error (OpenSSL's reason code, else the first line)."""
    reason = getattr(exc, "verify_message", None) or getattr(exc, "reason", None)
    if not reason:
        lines = str(exc).strip().splitlines()
        reason = lines[0] if lines else type(exc).__name__
    return str(reason)[:_SHOWN]


async def preflight(
    bootstrap_servers: str, security: KafkaSecurity, *, timeout: float = 10.0
) -> str | None:
    """Connect to the bootstrap addresses as a client would, until one lets this client in.

    Each attempt (at most ``timeout`` seconds) opens TCP, does the TLS and SASL
    handshakes of ``security`` and asks for the cluster metadata. Returns None
    once one succeeded; returns one line saying why none did when none answered
    (unreachable: a caller retries or reports an outage); raises
    :class:`KafkaSecurityError` naming the setting when a broker refused the
    credentials, its certificate is not trusted or the TLS handshake failed
    (no retry fixes those).
    """
    options = security.aiokafka_options()
    problems: list[str] = []
    for address in bootstrap_servers.split(","):
        host, port = _host_port(address.strip())
        try:
            await asyncio.wait_for(_connect(host, port, options, timeout), timeout)
            return None
        except (OSError, KafkaError, TimeoutError) as exc:
            refused = refusal(exc, security, address)
            if refused is not None:
                raise refused from None
            problems.append(f"{address}: {_unreachable(exc)}")
    return "; ".join(problems)


def _host_port(address: str) -> tuple[str, int]:
    """``host:port`` (``[v6]:port``) split; Kafka's port 9092 when there is none."""
    host, colon, port = address.rpartition(":")
    if colon and port.isdigit():
        return host.strip("[]"), int(port)
    return address.strip("[]"), 9092


class _TlsDropped(ConnectionError):
    """A broker that took the TCP connection dropped it during the TLS handshake."""


async def _connect(host: str, port: int, options: dict[str, Any], timeout: float) -> None:
    tls = "ssl_context" in options
    if tls:
        # A plaintext listener resets a TLS handshake, which looks like an outage:
        # a bare TCP connection first tells the two apart.
        _, writer = await asyncio.open_connection(host, port)
        writer.close()
        await writer.wait_closed()
    try:
        conn = await create_conn(
            host,
            port,
            client_id="llmpulse-preflight",
            request_timeout_ms=int(timeout * 1000),
            **options,
        )
    except (ConnectionResetError, ssl.SSLEOFError) as exc:
        if tls:
            raise _TlsDropped(_reason(exc)) from exc
        raise
    try:
        # A listener expecting SASL answers the version lookup, then drops a
        # client that asks for anything else: ask, as every client does first.
        await conn.send(MetadataRequest([]))
    finally:
        conn.close()


def refusal(exc: BaseException, security: KafkaSecurity, address: str) -> KafkaSecurityError | None:
    """The error naming the setting at fault when ``exc`` means a broker refused this client.

    None when ``exc`` means it could not be reached (refused or closed
    connection, timeout). Pure: looks at ``exc`` and its causes only.
    """
    for link in chain(exc):
        if isinstance(link, _TlsDropped):
            return KafkaSecurityError(
                ENV_VARS["protocol"],
                f"Kafka at {address} took the connection but dropped the TLS handshake: "
                f"is it a TLS listener ({security.protocol})?",
            )
        if isinstance(link, ssl.SSLCertVerificationError):
            return _untrusted(link, security, address)
        if isinstance(link, ssl.SSLError):
            if "CERTIFICATE" in str(getattr(link, "reason", None) or link).upper():
                # The broker refused our certificate (or wants one): TLS alerts
                # "certificate required", "unknown ca", "bad certificate".
                return KafkaSecurityError(
                    ENV_VARS["cert_file"],
                    f"Kafka at {address} refused the client certificate ({_reason(link)})",
                )
            return KafkaSecurityError(
                ENV_VARS["protocol"],
                f"the TLS handshake with Kafka at {address} failed ({_reason(link)}); "
                f"is it a TLS listener ({security.protocol})?",
            )
        if isinstance(link, SaslAuthenticationFailed):
            return KafkaSecurityError(
                ENV_VARS["password"],
                f"Kafka at {address} refused the {security.sasl_mechanism} credentials of user "
                f"{(security.username or '')[:_SHOWN]!r} (check the password and "
                f"{ENV_VARS['username']})",
            )
        if isinstance(link, UnsupportedSaslMechanismError):
            return KafkaSecurityError(
                ENV_VARS["sasl_mechanism"],
                f"Kafka at {address} does not enable {security.sasl_mechanism} on this listener",
            )
        if isinstance(link, IllegalSaslStateError):
            return KafkaSecurityError(
                ENV_VARS["protocol"],
                f"Kafka at {address} does not expect SASL on this listener ({security.protocol})",
            )
    return None


def _untrusted(
    exc: ssl.SSLCertVerificationError, security: KafkaSecurity, address: str
) -> KafkaSecurityError:
    if exc.verify_code in (62, 64):  # X509_V_ERR_HOSTNAME_MISMATCH, _IP_ADDRESS_MISMATCH
        return KafkaSecurityError(
            ENV_VARS["check_hostname"],
            f"the certificate of Kafka at {address} is for another host ({_reason(exc)}); "
            "use the name it was issued for in the bootstrap addresses",
        )
    trusted = (
        f"the CA of {_shown(security.ca_file)}"
        if security.ca_file
        else f"the system's CAs ({ENV_VARS['ca_file']} is not set)"
    )
    return KafkaSecurityError(
        ENV_VARS["ca_file"],
        f"the certificate of Kafka at {address} is not signed by {trusted} ({_reason(exc)})",
    )


def _unreachable(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "no answer (timed out)"
    if isinstance(exc, KafkaConnectionError) and not isinstance(exc.__cause__, OSError):
        return (
            f"the broker closed the connection ({_reason(exc)}); does its listener expect "
            f"another {ENV_VARS['protocol']}?"
        )
    return _reason(exc)
