"""The shape of every service address a setting may hold, checked when settings load.

A wrong scheme or a malformed port used to surface only when a command first
reached the service, as a traceback or a runtime failure (exit 1) long after
the typo. Each check here raises ``ValueError`` with a message that never
repeats the value: a DSN carries a password, and a pasted value may be huge.
Whether the service answers is not checked here (that is a runtime failure).
"""

from __future__ import annotations

import re
from urllib.parse import SplitResult, urlsplit

#: ``host:port`` of one Kafka broker (a host name, an IPv4 address or a bracketed IPv6 one).
_BROKER = re.compile(r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._-]+):(\d{1,5})$")
#: A ClickHouse database name in an http(s) DSN's path.
_DATABASE = re.compile(r"^[A-Za-z0-9_]+$")


def kafka_bootstrap(value: str) -> str:
    """``host:port[,host:port...]``, every port in 1-65535."""
    for broker in value.split(","):
        match = _BROKER.match(broker)
        if not match or not 0 < int(match[2]) < 65536:
            raise ValueError("expected host:port[,host:port...] with ports 1-65535")
    return value


def prometheus_url(value: str) -> str:
    """``http(s)://host[:port][/path]``."""
    _located(_split(value, ("http", "https")))
    return value


def redis_url(value: str) -> str:
    """``redis(s)://[user:pw@]host[:port][/db]``, ``db`` a number."""
    parts = _split(value, ("redis", "rediss"))
    _located(parts)
    if not re.fullmatch(r"/?(\d+)?", parts.path):
        raise ValueError("the path of a Redis URL is a database number, e.g. /0")
    return value


def clickhouse_dsn(value: str) -> str:
    """``chdb:///absolute/folder`` or ``http(s)://[user:pw@]host[:port][/database]``.

    ``chdb://memory`` and relative folders are refused: every llmpulse command
    is its own process, so an in-memory or working-folder database would not be
    the one the sink writes to.
    """
    parts = _split(value, ("chdb", "http", "https"))
    if parts.scheme == "chdb":
        if parts.netloc or not parts.path.startswith("/") or parts.query or parts.fragment:
            raise ValueError("an embedded chDB DSN is chdb:///absolute/folder (three slashes)")
        return value
    _located(parts)
    database = parts.path.strip("/")
    if database and not _DATABASE.match(database):
        raise ValueError("the path of an http(s) DSN is one database name ([A-Za-z0-9_])")
    return value


def _split(value: str, schemes: tuple[str, ...]) -> SplitResult:
    """``value`` split, if it starts with one of ``schemes`` (lower case, as the clients want)."""
    prefixes = tuple(f"{scheme}://" for scheme in schemes)
    if not value.startswith(prefixes):
        raise ValueError(f"the scheme must be {' or '.join(prefixes)}")
    return urlsplit(value)


def _located(parts: SplitResult) -> None:
    """A host, and a port in 1-65535 if one is given."""
    try:
        port = parts.port
    except ValueError:
        port = 0
    if not parts.hostname:
        raise ValueError(f"no host: expected {parts.scheme}://host:port")
    if port == 0 or parts.netloc.endswith(":"):
        raise ValueError("the port must be a number in 1-65535")
