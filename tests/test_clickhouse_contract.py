"""Contract tests on chDB: migrations, row models vs DESCRIBE TABLE, every named query runs."""

from __future__ import annotations

import random
import re
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any

import pytest
from clickhouse_connect.driver.client import Client

from llmpulse.core.usage import CONFLICT_COLUMNS, USAGE_COLUMNS, payload_hash, usage_row
from llmpulse.processors.billing.reports import allocation_rows
from llmpulse.processors.sinks.breaker_transitions import COLUMNS as TRANSITION_COLUMNS
from llmpulse.processors.sinks.prompts import PERFORMANCE_COLUMNS, VERSION_COLUMNS
from llmpulse.processors.stream.clickhouse import (
    ClickHouseConfigError,
    migrate,
    migrations,
    run_query,
    split_statements,
    sql_dir,
)
from llmpulse.simulator.samples import sample_outcome

_PARAM = re.compile(r"\{(\w+):([^}]+)\}")
_DEFAULTS: dict[str, Any] = {
    "String": "acme",
    "UUID": "00000000-0000-4000-8000-000000000000",
    "Date": datetime(2026, 1, 1).date(),
    "UInt32": 1,
    "UInt64": 1,
    "Int64": 1,
    "Decimal": Decimal("1.2"),
}


def _default_for(sql_type: str) -> Any:
    if sql_type.startswith("DateTime"):
        return datetime(2026, 1, 1, tzinfo=UTC)
    if sql_type.startswith("Array("):
        return [_default_for(sql_type[6:-1])]
    if sql_type.startswith("Nullable("):
        return None
    for prefix, value in _DEFAULTS.items():
        if sql_type.startswith(prefix):
            return value
    raise AssertionError(f"no default for parameter type {sql_type}")


@pytest.mark.chdb
def test_migrations_are_idempotent(ch: Client) -> None:
    assert migrate(ch) == []  # the session fixture applied them already
    versions = [
        v for (v,) in ch.query("SELECT version FROM schema_migrations ORDER BY version").result_rows
    ]
    assert versions == [m.version for m in migrations()]


@pytest.mark.chdb
def test_changed_migration_is_refused(tmp_path: Path, ch: Client) -> None:
    folder = tmp_path / "migrations"
    folder.mkdir()
    for mig in migrations():
        (folder / f"{mig.name}.sql").write_text(mig.sql + "\n-- edited\n")
    with pytest.raises(ClickHouseConfigError, match="changed after it was applied"):
        migrate(ch, folder)


def test_migration_numbering_gaps_are_refused(tmp_path: Path) -> None:
    (tmp_path / "0001_a.sql").write_text("SELECT 1")
    (tmp_path / "0003_b.sql").write_text("SELECT 1")
    with pytest.raises(ClickHouseConfigError, match="should be number 0002"):
        migrations(tmp_path)


def test_split_statements_ignores_comments() -> None:
    sql = "-- a; comment\nCREATE TABLE a (x UInt8) ENGINE=Memory;\n\nSELECT 1;\n"
    assert split_statements(sql) == ["CREATE TABLE a (x UInt8) ENGINE=Memory", "SELECT 1"]


@pytest.mark.chdb
@pytest.mark.parametrize(
    ("table", "columns"),
    [
        ("usage_events", USAGE_COLUMNS),
        ("usage_conflicts", CONFLICT_COLUMNS),
        ("breaker_transitions", TRANSITION_COLUMNS),
        ("prompt_versions", VERSION_COLUMNS),
        ("prompt_performance", PERFORMANCE_COLUMNS),
    ],
)
def test_row_models_match_describe_table(ch: Client, table: str, columns: tuple[str, ...]) -> None:
    described = {r[0]: r[1] for r in ch.query(f"DESCRIBE TABLE {table}").result_rows}
    assert set(columns) <= set(described)
    missing_defaults = {
        r[0] for r in ch.query(f"DESCRIBE TABLE {table}").result_rows if r[2] == ""
    } - set(columns)
    assert not missing_defaults, (
        f"columns without default not written by the sink: {missing_defaults}"
    )
    if table == "usage_events":
        assert described["cost_usd"].startswith("Decimal")
        assert described["event_time"] == "DateTime64(6, 'UTC')"


_QUERIES: list[Traversable] = sorted(
    (sql_dir() / "queries").iterdir(), key=lambda path: str(path.name)
)


@pytest.mark.chdb
@pytest.mark.parametrize(
    "path", [q for q in _QUERIES if q.name.endswith(".sql")], ids=lambda q: str(q.name)
)
def test_every_named_query_runs(ch: Client, path: Traversable) -> None:
    params = {name: _default_for(t) for name, t in _PARAM.findall(path.read_text())}
    run_query(ch, path.name.removesuffix(".sql"), params)


@pytest.mark.chdb
def test_usage_rows_roundtrip_exactly(ch: Client) -> None:
    rng = random.Random(5)
    start = datetime(2026, 2, 1, tzinfo=UTC)
    outcomes = [sample_outcome(rng, start + timedelta(minutes=i)) for i in range(500)]
    ch.insert(
        "usage_events",
        [usage_row(o, payload_hash(o)) for o in outcomes],
        column_names=list(USAGE_COLUMNS),
    )
    # Same rows again: FINAL collapses identical duplicates.
    ch.insert(
        "usage_events",
        [usage_row(o, payload_hash(o)) for o in outcomes[:50]],
        column_names=list(USAGE_COLUMNS),
    )
    rows = allocation_rows(
        ch, start - timedelta(hours=1), start + timedelta(days=1), default_rate=Decimal("1.2")
    )
    assert sum(r["requests"] for r in rows) == 500
    assert sum(r["cost_usd"] for r in rows) == sum(o.cost_usd for o in outcomes)
