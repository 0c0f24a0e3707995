"""Certificates for the local stack's TLS listeners, made with the ``openssl`` command.

A private certificate authority signs one certificate for the loopback services
(``localhost`` and ``127.0.0.1``), used by Kafka's SASL_SSL listener and Redis's
TLS port alike; tests make a second, unrelated authority to show that a client
refuses a certificate it does not trust. Keys are PKCS#8 PEM without a
passphrase (Kafka's PEM key store and Redis read them as they are), readable by
the owner only. Nothing is made again when the files exist, so a restarted stack
keeps the certificate its clients were given.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from llmpulse.devstack.stack.model import StackError
from llmpulse.devstack.stack.prerequisites import run

#: Days a certificate is valid; a local stack outlives no such span.
_DAYS = "825"
_TIMEOUT = 60.0
_HOSTS = "subjectAltName=DNS:localhost,IP:127.0.0.1\n"


@dataclass(frozen=True)
class Certificates:
    """PEM files: the authority's certificate, and a certificate and key it signed."""

    ca_file: Path
    cert_file: Path
    key_file: Path


def _openssl(*args: str) -> None:
    code, output = run(["openssl", *args], timeout=_TIMEOUT)
    if code != 0:
        tail = output.strip().splitlines()[-1:] or ["no output"]
        raise StackError(f"openssl {args[0]} failed (exit {code}): {tail[0]}")


def certificate_authority(folder: Path, name: str = "ca") -> tuple[Path, Path]:
    """``(certificate, key)`` of a self-signed authority in ``folder`` (made once)."""
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    cert, key = folder / f"{name}.pem", folder / f"{name}.key"
    if not (cert.exists() and key.exists()):
        _openssl(
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", _DAYS,
            "-subj", f"/CN=llmpulse local {name}", "-keyout", str(key), "-out", str(cert),
        )  # fmt: skip
        key.chmod(0o600)
    return cert, key


def certificates(folder: Path, name: str = "server", ca: str = "ca") -> Certificates:
    """A certificate for the loopback services signed by ``ca`` (both made once)."""
    ca_cert, ca_key = certificate_authority(folder, ca)
    cert, key, csr = folder / f"{name}.pem", folder / f"{name}.key", folder / f"{name}.csr"
    if not (cert.exists() and key.exists()):
        extensions = folder / f"{name}.ext"
        extensions.write_text(_HOSTS)
        _openssl(
            "req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}",
            "-keyout", str(key), "-out", str(csr),
        )  # fmt: skip
        key.chmod(0o600)
        _openssl(
            "x509", "-req", "-in", str(csr), "-CA", str(ca_cert), "-CAkey", str(ca_key),
            "-CAcreateserial", "-days", _DAYS, "-extfile", str(extensions), "-out", str(cert),
        )  # fmt: skip
        csr.unlink()
        extensions.unlink()
    return Certificates(ca_file=ca_cert, cert_file=cert, key_file=key)
