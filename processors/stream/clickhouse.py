"""ClickHouse access through clickhouse-connect: embedded chDB or a server.

The same client code and the same SQL run against ``chdb:///path`` (the
in-process engine used in tests and the demo) and ``http(s)://`` servers.
Migrations in ``clickhouse/migrations/NNNN_name.sql`` are applied in order,
once each, recorded with a checksum; named queries live in
``clickhouse/queries/*.sql`` and take ``{name:Type}`` parameters that the
engine binds, never string formatting.

chDB note: one process at a time may open a chDB data folder. While
``llmpulse worker sink`` holds it, the report, load and migrate commands do
not open it: the worker runs them for them over a Unix socket next to the
folder (``llmpulse.processors.stream.chdb_socket``).
"""

from __future__ import annotations

import hashlib
import os
import re
import sys
from dataclasses import dataclass
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any

import clickhouse_connect
from clickhouse_connect.driver import options
from clickhouse_connect.driver.client import Client

from llmpulse.processors import addresses
from llmpulse.processors.errors import ConfigError
from llmpulse.processors.owner_only import private_dir
from llmpulse.processors.settings import Settings

_MIGRATION_NAME = re.compile(r"^(\d{4})_[a-z0-9_]+\.sql$")
#: jemalloc options of the embedded engine, read once when chDB loads (its ``JE_MALLOC_CONF``).
#: ClickHouse keeps freed pages for 5 s (``dirty_decay_ms:5000``), which suits a server that
#: owns its machine; in a worker, the buffers a merge or an insert freed then stayed resident
#: under the next ones' (up to 140 MB more at the usage sink's peak RSS). Returned at once.
CHDB_MALLOC_CONF = "dirty_decay_ms:0"
#: Server settings of the embedded engine (package data next to the SQL): RocksDB
#: bloom filters, so the dedup lookup's misses stay flat as stored events grow.
CHDB_CONFIG = "chdb.xml"


class ClickHouseConfigError(ConfigError):
    """The DSN or the SQL folder is wrong; a one-line message says which."""


def sql_dir() -> Traversable:
    """The SQL files (``clickhouse/`` in the checkout), package data of ``llmpulse.clickhouse``.

    Read through ``importlib.resources``, so an installed wheel finds them in any
    working directory.
    """
    return resources.files("llmpulse.clickhouse")


def connect(settings: Settings) -> Client:
    """A client for ``settings.effective_clickhouse_dsn`` (creates the chDB folder if needed)."""
    _skip_dataframe_probe()
    dsn = settings.effective_clickhouse_dsn
    if dsn.startswith("chdb://"):
        # Before chDB is imported (clickhouse-connect imports it on the first chdb client);
        # an operator's own JE_MALLOC_CONF wins.
        os.environ.setdefault("JE_MALLOC_CONF", CHDB_MALLOC_CONF)
        try:
            private_dir(Path(dsn.removeprefix("chdb://")))
        except OSError as exc:
            raise ClickHouseConfigError(
                "cannot create the chDB folder (LLMPULSE_CLICKHOUSE_DSN or LLMPULSE_STATE_DIR): "
                f"{exc.strerror or exc}"
            ) from None
    elif not dsn.startswith(("http://", "https://")):
        raise ClickHouseConfigError(
            f"unsupported ClickHouse DSN scheme {addresses.redacted(dsn).split('://')[0]!r}: "
            "use chdb:// or http(s)://"
        )
    try:
        if dsn.startswith("chdb://"):
            folder = os.path.realpath(dsn.removeprefix("chdb://"))
            with resources.as_file(sql_dir() / CHDB_CONFIG) as config:
                # A ``file:`` location reaches chDB verbatim (``chdb_options`` would be
                # percent-encoded, which chDB does not decode); read once, at start.
                return clickhouse_connect.get_client(
                    interface="chdb", path=f"file:{folder}?config-file={config}"
                )
        # The scheme decides TLS: clickhouse-connect alone would speak plain HTTP to an
        # https:// DSN on any port but 443 and 8443.
        return clickhouse_connect.get_client(dsn=dsn, interface=dsn.split("://", 1)[0])
    except Exception as exc:
        # The client's message may quote the DSN or its password; the chained
        # exception would show them unredacted, so it is dropped.
        raise ClickHouseConfigError(
            f"cannot open ClickHouse at {addresses.redacted(dsn)}: "
            f"{addresses.scrubbed(str(exc), dsn)}"
        ) from None


def _skip_dataframe_probe() -> None:
    """Keep clickhouse-connect from importing pandas on the first insert.

    Each insert asks whether its data is a pandas DataFrame, and asking imports
    pandas: in a sink worker, 45-80 MB more resident memory and about a second
    of CPU in its first batch, after the startup heap was frozen for the garbage
    collector. llmpulse inserts lists only, so the question is answered "no
    pandas" up front; a process that has imported pandas itself keeps it.
    """
    if "pandas" not in sys.modules:
        options.pd = None


def split_statements(sql: str) -> list[str]:
    """Statements of a migration file: ``--`` comment lines dropped, split on ``;`` line ends."""
    body = "\n".join(line for line in sql.splitlines() if not line.lstrip().startswith("--"))
    return [s.strip() for s in re.split(r";\s*(?:\n|$)", body) if s.strip()]


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


def migrations(folder: Traversable | None = None) -> list[Migration]:
    """All migration files in version order; refuses gaps and duplicate numbers."""
    folder = folder or sql_dir() / "migrations"
    found: list[Migration] = []
    files = sorted((f for f in folder.iterdir() if f.name.endswith(".sql")), key=lambda f: f.name)
    for path in files:
        m = _MIGRATION_NAME.match(path.name)
        if not m:
            raise ClickHouseConfigError(f"migration file name {path.name!r} is not NNNN_name.sql")
        found.append(Migration(int(m.group(1)), path.name.removesuffix(".sql"), path.read_text()))
    for expected, mig in enumerate(found, start=1):
        if mig.version != expected:
            raise ClickHouseConfigError(f"migration {mig.name} should be number {expected:04d}")
    return found


_LEDGER = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version UInt32,
    name String,
    checksum String,
    applied_at DateTime64(3, 'UTC') DEFAULT now64(3)
) ENGINE = MergeTree ORDER BY version
"""


def migrate(client: Client, folder: Traversable | None = None) -> list[str]:
    """Apply pending migrations; returns the names applied (empty when up to date).

    Idempotent: each statement uses ``IF NOT EXISTS`` and applied versions are
    recorded; a changed file that was already applied is an error, not a rerun.
    """
    client.command(_LEDGER)
    applied = {
        int(v): str(c)
        for v, c in client.query("SELECT version, checksum FROM schema_migrations").result_rows
    }
    done: list[str] = []
    for mig in migrations(folder):
        if mig.version in applied:
            if applied[mig.version] != mig.checksum:
                raise ClickHouseConfigError(
                    f"migration {mig.name} changed after it was applied; add a new one instead"
                )
            continue
        for statement in split_statements(mig.sql):
            client.command(statement)
        client.insert(
            "schema_migrations",
            [[mig.version, mig.name, mig.checksum]],
            column_names=["version", "name", "checksum"],
        )
        done.append(mig.name)
    return done


def load_query(name: str) -> str:
    """Text of ``clickhouse/queries/<name>.sql``."""
    path = sql_dir() / "queries" / f"{name}.sql"
    if not path.is_file():
        raise ClickHouseConfigError(f"no named query {name!r} in llmpulse.clickhouse/queries")
    return path.read_text()


def run_query(client: Client, name: str, parameters: dict[str, Any]) -> list[dict[str, Any]]:
    """Run a named query with server-side bound parameters; rows as dicts."""
    result = client.query(load_query(name), parameters=parameters)
    cols = result.column_names
    return [dict(zip(cols, row, strict=True)) for row in result.result_rows]
