"""The shape of every service address a setting may hold, checked when settings load.

A wrong scheme or a malformed port used to surface only when a command first
reached the service, as a traceback or a runtime failure (exit 1) long after
the typo. Each check here raises ``ValueError`` with a message that never
repeats the value: a DSN carries a password, and a pasted value may be huge.
Whether the service answers is not checked here (that is a runtime failure).

:func:`redacted` and :func:`scrubbed` are the one way an address reaches a
message: the user and password of a URL never do.
"""

from __future__ import annotations

import re
from urllib.parse import SplitResult, parse_qsl, urlsplit

#: ``host:port`` of one Kafka broker (a host name, an IPv4 address or a bracketed IPv6 one).
_BROKER = re.compile(r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._-]+):(\d{1,5})$")
#: A ClickHouse database name in an http(s) DSN's path.
_DATABASE = re.compile(r"^[A-Za-z0-9_]+$")
#: TLS options of a ``rediss://`` URL's query, which redis-py hands to its TLS
#: connection (any other name would reach the client as an unknown keyword).
REDIS_TLS_OPTIONS = ("ssl_ca_certs", "ssl_certfile", "ssl_keyfile", "ssl_check_hostname")


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
    """``redis(s)://[user:pw@]host[:port][/db][?tls options]``, ``db`` a number.

    A ``rediss://`` URL may name its TLS files and hostname check in the query
    (:data:`REDIS_TLS_OPTIONS`, e.g. ``?ssl_ca_certs=/path/ca.pem``); a
    ``redis://`` one has no query (TLS options there would be ignored silently).
    """
    parts = _split(value, ("redis", "rediss"))
    _located(parts)
    if not re.fullmatch(r"/?(\d+)?", parts.path):
        raise ValueError("the path of a Redis URL is a database number, e.g. /0")
    if parts.fragment:
        raise ValueError("a Redis URL has no #fragment")
    options = parse_qsl(parts.query, keep_blank_values=True)
    if options and parts.scheme != "rediss":
        raise ValueError("TLS options (?ssl_...) need a rediss:// URL")
    names = [name for name, _ in options]
    for name, option in options:
        if name not in REDIS_TLS_OPTIONS:
            raise ValueError(
                f"unknown Redis URL option {name[:40]!r}: expected one of "
                f"{', '.join(REDIS_TLS_OPTIONS)}"
            )
        if names.count(name) > 1:
            raise ValueError(f"Redis URL option {name} is given twice")
        if not option:
            raise ValueError(f"Redis URL option {name} is empty")
        if name == "ssl_check_hostname" and option not in ("true", "false"):
            raise ValueError("ssl_check_hostname is true or false")
    if "ssl_keyfile" in names and "ssl_certfile" not in names:
        raise ValueError("ssl_keyfile needs ssl_certfile (the client certificate)")
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


def redacted(url: str) -> str:
    """``url`` for a message: scheme, host, port, path and query kept, ``user:pw@`` as ``***@``.

    The credentials end at the last ``@`` before the query (a password may hold
    an unencoded ``/`` or ``@``); a query value whose name says password is
    masked too. Not a URL (no ``scheme://``) comes back as ``***``: it cannot be
    told apart from a secret.
    """
    scheme, sep, rest = url.partition("://")
    if not sep:
        return "***"
    head, mark, query = rest.partition("?")
    _credentials, at, location = head.rpartition("@")
    options = "&".join(
        f"{name}={'***' if 'password' in name.lower() else value}"
        for name, value in parse_qsl(query, keep_blank_values=True)
    )
    return f"{scheme}://{'***@' if at else ''}{location}{mark}{options}"


def scrubbed(text: str, url: str) -> str:
    """``text`` (a client's error message) with ``url`` and its password redacted.

    Client libraries may quote the URL they were given, or its password alone.
    """
    text = text.replace(url, redacted(url))
    try:
        password = urlsplit(url).password
    except ValueError:
        password = None
    return text.replace(password, "***") if password else text
