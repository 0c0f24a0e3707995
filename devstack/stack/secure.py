"""The local stack's secure listeners: Kafka SASL_SSL (SCRAM-SHA-512) and Redis TLS.

``llmpulse stack up --secure`` makes Kafka and Redis also serve what a managed
service demands, besides the PLAINTEXT listener and plain Redis port the demo
uses: TLS with a certificate of the stack's private CA
(:mod:`~llmpulse.devstack.stack.tls`, in ``<state>/tls``) and a password. So
clients can be tested against real authentication and certificate checks.
Inter-broker and controller traffic stays PLAINTEXT on loopback.

The passwords are random, made once per state folder and kept owner-only in
``<state>/credentials.json``; messages and ``stack status`` show user names and
file paths, never a password. Redis reads its ACL user from an owner-only ACL
file holding the password's SHA-256 only. Kafka keeps a SCRAM credential in its
KRaft metadata: added when the storage is formatted (``--add-scram``), or, for a
storage formatted without it, with ``kafka-configs`` over the PLAINTEXT listener
once the broker runs (from an owner-only file). ``StorageTool`` takes the
password only as an argument, so during the format (a few seconds) it shows in
this machine's process list; tool output is scrubbed of it before it is kept.
:func:`secure_endpoints` gives tests and users ready-made connection values.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import SecretStr

from llmpulse.core.kafka_security import KafkaSecurity, SaslMechanism
from llmpulse.devstack.stack.model import HOST, ServiceName, ServiceState, StackError
from llmpulse.devstack.stack.paths import Paths, Record, load, write_atomic
from llmpulse.devstack.stack.prerequisites import ensure_openssl, run, template
from llmpulse.devstack.stack.probes import PROBE_TIMEOUT, describe, probe
from llmpulse.devstack.stack.processes import last_line, owned
from llmpulse.devstack.stack.tls import Certificates, certificates
from llmpulse.processors.settings import Settings

USERNAME = "llmpulse"
SASL_MECHANISM: SaslMechanism = "SCRAM-SHA-512"
#: The key of each secure listener's port in a service's ``Record.ports``: a
#: service serves its secure listener exactly when its ports have that key.
SECURE_PORT: dict[ServiceName, str] = {"kafka": "sasl_ssl", "redis": "tls"}
_OWNER_ONLY = 0o600
_SECURE_READY_TIMEOUT = 60.0


@dataclass(frozen=True)
class Credentials:
    """The secure listeners' user (the same name on Kafka and Redis) and passwords."""

    username: str
    kafka_password: SecretStr
    redis_password: SecretStr


@dataclass(frozen=True)
class SecureEndpoints:
    """How to reach the secure listeners of a running local stack.

    The passwords are :class:`SecretStr` (so is ``redis_url``, which holds one):
    printing this object shows ``**********`` in their place.
    """

    kafka_bootstrap: str
    sasl_mechanism: SaslMechanism
    sasl_username: str
    sasl_password: SecretStr
    ca_file: Path
    redis_url: SecretStr
    redis_address: str
    redis_username: str
    credentials_file: Path

    @property
    def kafka_security(self) -> KafkaSecurity:
        """What every llmpulse Kafka client needs for the SASL_SSL listener."""
        return KafkaSecurity(
            protocol="SASL_SSL",
            sasl_mechanism=SASL_MECHANISM,
            username=self.sasl_username,
            password=self.sasl_password,
            ca_file=self.ca_file,
        )

    def kafka_options(self) -> dict[str, Any]:
        """aiokafka client keyword arguments for the listener (the password in clear text)."""
        return {"bootstrap_servers": self.kafka_bootstrap, **self.kafka_security.aiokafka_options()}

    def apply(self, settings: Settings) -> Settings:
        """``settings`` pointed at the secure listeners: Kafka over SASL_SSL, Redis over TLS."""
        secured = settings.model_copy(
            update={
                "kafka_bootstrap": self.kafka_bootstrap,
                "kafka_security_protocol": "SASL_SSL",
                "kafka_sasl_mechanism": self.sasl_mechanism,
                "kafka_sasl_username": self.sasl_username,
                "kafka_sasl_password": self.sasl_password,
                "kafka_ssl_ca_file": self.ca_file,
                "redis_url": self.redis_url,
            }
        )
        secured.kafka_security  # noqa: B018 (raises if the fields do not work together)
        return secured

    def listener_lines(self) -> list[tuple[str, str]]:
        """``(label, value)`` rows for ``stack up``: addresses and user names, no password."""
        kafka = f"SASL_SSL {self.sasl_mechanism}, user {self.sasl_username}"
        return [
            ("kafka-sasl", f"{self.kafka_bootstrap} ({kafka})"),
            ("redis-tls", f"rediss://{self.redis_address}/0 (ACL user {self.redis_username})"),
        ]

    def file_lines(self) -> list[tuple[str, str]]:
        """``(label, path)`` rows of the CA clients trust and of the passwords' file."""
        return [("tls-ca", str(self.ca_file)), ("secrets", f"{self.credentials_file} (owner only)")]


@dataclass(frozen=True)
class ListenerStatus:
    """One secure listener's line of ``llmpulse stack status``."""

    name: str
    state: ServiceState
    address: str
    detail: str


def is_secure(rec: Record) -> bool:
    """Whether ``rec`` serves its secure listener (Prometheus has none)."""
    key = SECURE_PORT.get(rec.name)
    return key is not None and key in rec.ports


def credentials(paths: Paths, *, create: bool = False) -> Credentials:
    """The stack's credentials; with ``create`` made (random) on first use, owner-only.

    Raises :class:`StackError` when the file is missing (without ``create``) or
    unreadable; its message never holds a password.
    """
    path = paths.credentials_file
    if create and not path.exists():
        doc = {
            "username": USERNAME,
            "kafka_password": secrets.token_hex(24),
            "redis_password": secrets.token_hex(24),
        }
        write_atomic(path, json.dumps(doc, indent=2) + "\n", mode=_OWNER_ONLY)
    try:
        raw = json.loads(path.read_text())
        return Credentials(
            username=str(raw["username"]),
            kafka_password=SecretStr(str(raw["kafka_password"])),
            redis_password=SecretStr(str(raw["redis_password"])),
        )
    except FileNotFoundError as exc:
        raise StackError(
            f"{path} is missing: start the secure listeners with `llmpulse stack up --secure`"
        ) from exc
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise StackError(
            f"{path} is unreadable ({type(exc).__name__}): delete it, then "
            "`llmpulse stack down` and `llmpulse stack up --secure` make new passwords"
        ) from None


def tls_files(paths: Paths, progress: Callable[[str], None]) -> Certificates:
    """The CA and the loopback certificate (made once, with ``openssl`` installed if missing)."""
    if not (paths.tls_dir / "server.pem").exists():
        ensure_openssl(progress)
        progress(f"tls: making a private CA and a loopback certificate in {paths.tls_dir}")
    return certificates(paths.tls_dir)


# ----------------------------------------------------------------------- Kafka


def kafka_template_values(
    paths: Paths, port: int | None, certs: Certificates | None
) -> dict[str, str]:
    """``secure_listener`` and ``secure_settings`` of server.properties.template.

    Empty without ``port``; else the SASL_SSL listener, whose PEM key store (key
    then certificate, owner-only) is written here.
    """
    if port is None or certs is None:
        return {"secure_listener": "", "secure_settings": ""}
    keystore = certs.key_file.read_text().rstrip("\n") + "\n" + certs.cert_file.read_text()
    write_atomic(paths.kafka_keystore, keystore, mode=_OWNER_ONLY)
    listener = template("kafka/sasl_ssl.properties.template").substitute(
        keystore=str(paths.kafka_keystore)
    )
    return {"secure_listener": f",SASL_SSL://{HOST}:{port}", "secure_settings": listener}


def _scram_fingerprint(creds: Credentials) -> str:
    """What the stamp file records: a hash of user and password (not reversible)."""
    material = f"{SASL_MECHANISM}:{creds.username}:{creds.kafka_password.get_secret_value()}"
    return hashlib.sha256(material.encode()).hexdigest()


def scrubbed(text: str, creds: Credentials) -> str:
    """``text`` (a tool's output) with the passwords replaced by ``***``: tools echo arguments."""
    for secret in (creds.kafka_password, creds.redis_password):
        text = text.replace(secret.get_secret_value(), "***")
    return text


def scram_format_args(creds: Credentials) -> list[str]:
    """``StorageTool format`` arguments that create the SCRAM credential (the KRaft way)."""
    password = creds.kafka_password.get_secret_value()
    return ["--add-scram", f"{SASL_MECHANISM}=[name={creds.username},password={password}]"]


def scram_formatted(paths: Paths, creds: Credentials) -> None:
    """Record that Kafka's metadata holds ``creds`` (its storage was formatted with them)."""
    write_atomic(paths.kafka_scram_stamp, _scram_fingerprint(creds) + "\n")


def ensure_scram(
    paths: Paths, java_cmd: list[str], plain_bootstrap: str, progress: Callable[[str], None]
) -> None:
    """Give a running Kafka the SCRAM credential unless its metadata has it already.

    A storage formatted before ``--secure`` was used (or with other credentials)
    gets it through ``kafka-configs`` on the PLAINTEXT listener; the password goes
    in an owner-only file, not on the command line.
    """
    creds = credentials(paths)
    try:
        recorded = paths.kafka_scram_stamp.read_text().strip()
    except OSError:
        recorded = ""
    if recorded == _scram_fingerprint(creds):
        return
    progress(f"kafka: adding the {SASL_MECHANISM} user {creds.username} to the existing storage")
    config = paths.service_dir("kafka") / "scram-user.properties"
    password = creds.kafka_password.get_secret_value()
    # A file's value is taken as it is: no ``[...]`` around it, unlike --add-config.
    write_atomic(config, f"{SASL_MECHANISM}=password={password}\n", mode=_OWNER_ONLY)
    try:
        code, out = run(
            [
                *java_cmd,
                "kafka.admin.ConfigCommand",
                "--bootstrap-server",
                plain_bootstrap,
                "--alter",
                "--entity-type",
                "users",
                "--entity-name",
                creds.username,
                "--add-config-file",
                str(config),
            ],
            timeout=120,
        )
    finally:
        config.unlink(missing_ok=True)
    if code != 0:
        raise StackError(
            f"kafka: could not add the SCRAM user {creds.username}: "
            f"{last_line(scrubbed(out, creds))}; "
            "`llmpulse stack down --wipe` then `llmpulse stack up --secure` formats it anew"
        )
    scram_formatted(paths, creds)


# ----------------------------------------------------------------------- Redis


def redis_args(paths: Paths, port: int | None, certs: Certificates | None) -> list[str]:
    """redis-server arguments of the TLS port and its ACL user (none without ``port``).

    The ACL file (owner-only) holds the password's SHA-256, and keeps the
    password-less ``default`` user of the plain port the demo uses.
    """
    if port is None or certs is None:
        return []
    creds = credentials(paths)
    digest = hashlib.sha256(creds.redis_password.get_secret_value().encode()).hexdigest()
    acl = f"user default on nopass ~* &* +@all\nuser {creds.username} on #{digest} ~* &* +@all\n"
    write_atomic(paths.redis_acl, acl, mode=_OWNER_ONLY)
    return [
        "--tls-port", str(port),
        "--tls-cert-file", str(certs.cert_file),
        "--tls-key-file", str(certs.key_file),
        "--tls-ca-cert-file", str(certs.ca_file),
        "--tls-auth-clients", "no",
        "--aclfile", str(paths.redis_acl),
    ]  # fmt: skip


# ------------------------------------------------------------- endpoints, status


def _endpoints(paths: Paths, records: dict[ServiceName, Record]) -> SecureEndpoints | None:
    kafka, redis = records.get("kafka"), records.get("redis")
    if kafka is None or redis is None or not (is_secure(kafka) and is_secure(redis)):
        return None
    creds = credentials(paths)
    ca_file = paths.tls_dir / "ca.pem"
    redis_address = f"{HOST}:{redis.ports[SECURE_PORT['redis']]}"
    user = urllib.parse.quote(creds.username, safe="")
    password = urllib.parse.quote(creds.redis_password.get_secret_value(), safe="")
    query = "ssl_ca_certs=" + urllib.parse.quote(str(ca_file), safe="/")
    return SecureEndpoints(
        kafka_bootstrap=f"{HOST}:{kafka.ports[SECURE_PORT['kafka']]}",
        sasl_mechanism=SASL_MECHANISM,
        sasl_username=creds.username,
        sasl_password=creds.kafka_password,
        ca_file=ca_file,
        redis_url=SecretStr(f"rediss://{user}:{password}@{redis_address}/0?{query}"),
        redis_address=redis_address,
        redis_username=creds.username,
        credentials_file=paths.credentials_file,
    )


def find_secure_endpoints(settings: Settings) -> SecureEndpoints | None:
    """The secure listeners of the local stack, or None when it serves none."""
    paths = Paths.of(settings)
    return _endpoints(paths, load(paths))


def secure_endpoints(settings: Settings) -> SecureEndpoints:
    """Connection values of the local stack's secure listeners (started or paused).

    Raises :class:`StackError` when the stack does not serve them.
    """
    found = find_secure_endpoints(settings)
    if found is None:
        raise StackError(
            "the local stack serves no secure listeners: run `llmpulse stack up --secure`"
        )
    return found


def probe_secure(name: ServiceName, ep: SecureEndpoints, timeout: float = PROBE_TIMEOUT) -> str:
    """One authenticated TLS request to ``name``'s secure listener: a detail, or it raises."""
    if name == "kafka":
        detail = probe("kafka", ep.kafka_bootstrap, timeout, kafka_security=ep.kafka_security)
        return f"authenticated, {detail}"
    probe("redis", ep.redis_url.get_secret_value(), timeout)
    return "authenticated over TLS"


def wait_secure_ready(name: ServiceName, paths: Paths, records: dict[ServiceName, Record]) -> str:
    """Probe ``name``'s secure listener until it answers; its detail, else :class:`StackError`.

    Called once the plain listener answers, so only the TLS set-up and the
    credential are left to check: a few seconds are enough unless one is wrong.
    """
    ep = _endpoints(paths, records)
    if ep is None:
        raise StackError(
            f"{name}: stack.json lists no secure peer; run `llmpulse stack up --secure`"
        )
    deadline = time.monotonic() + _SECURE_READY_TIMEOUT
    while True:
        try:
            return probe_secure(name, ep, 5.0)
        except Exception as exc:
            if time.monotonic() > deadline:
                raise StackError(
                    f"{name}: the secure listener refuses an authenticated TLS request "
                    f"({describe(exc)}); see {records[name].log}"
                ) from None
        time.sleep(0.5)


def secure_status(settings: Settings) -> list[ListenerStatus]:
    """Health of each secure listener (none when the stack serves none)."""
    paths = Paths.of(settings)
    records = load(paths)
    ep = _endpoints(paths, records)
    if ep is None:
        return []
    listeners: tuple[tuple[ServiceName, str, str, str], ...] = (
        ("kafka", "kafka-sasl", ep.kafka_bootstrap, f"{ep.sasl_mechanism} user {ep.sasl_username}"),
        ("redis", "redis-tls", ep.redis_address, f"ACL user {ep.redis_username}"),
    )
    rows: list[ListenerStatus] = []
    for name, label, address, what in listeners:
        if not owned(records[name]):
            rows.append(ListenerStatus(label, "stopped", address, what))
            continue
        try:
            rows.append(
                ListenerStatus(label, "running", address, f"{what}; {probe_secure(name, ep)}")
            )
        except Exception as exc:
            rows.append(ListenerStatus(label, "unhealthy", address, f"{what}; {describe(exc)}"))
    return rows
