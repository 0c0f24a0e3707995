"""The usage sink's dedup lookup reads keys, not tables, and stays exact (migration 0009).

The lookup must find every stored event_id with its payload hash, whatever the
event time of the stored copy or of the new one, so that a resend is dropped and
a conflicting copy quarantined; migration 0009 made it a multi-get on an
EmbeddedRocksDB key table, so its cost no longer grows with usage_events
(``python -m bench.billing_growth`` measures that; nothing here is timed).
"""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from pathlib import Path
from uuid import UUID

import pytest
from clickhouse_connect.driver.client import Client
from pydantic import SecretStr

from llmpulse.core.usage import Pending
from llmpulse.processors.settings import Settings
from llmpulse.processors.sinks.usage import _LOOKUP, _LOOKUP_FILE, UsageSink, uuid_rowbinary
from llmpulse.processors.stream.clickhouse import split_statements
from llmpulse.processors.stream.codec import encode
from llmpulse.schemas import LLMOutcome
from llmpulse.simulator.samples import sample_outcome

pytestmark = pytest.mark.chdb

KEYS = Path(__file__).parents[1] / "clickhouse" / "migrations" / "0009_usage_event_keys_kv.sql"
#: Event times over 200 days (an event may be at most 400 days old).
START = datetime.now(UTC) - timedelta(days=300)


def _outcomes(seed: int, n: int) -> list[LLMOutcome]:
    """Outcomes spread over 200 days of event time."""
    rng = random.Random(seed)
    return [sample_outcome(rng, START + timedelta(days=rng.uniform(0, 200))) for _ in range(n)]


def _pending(outcomes: list[LLMOutcome]) -> list[Pending]:
    return [Pending.of(o, encode(o), "llm.outcomes.v1", 0, i) for i, o in enumerate(outcomes)]


def _sink(ch: Client, server: bool = False) -> UsageSink:
    """The sink on ``ch``; with ``server`` it takes the lookup path of an http(s) DSN."""
    settings = Settings(clickhouse_dsn=SecretStr("http://localhost:8123")) if server else Settings()
    return UsageSink(settings, ch, group="key-lookup")


def test_uuid_rowbinary_is_clickhouses_layout(ch: Client, tmp_path: Path) -> None:
    ids = [
        UUID("00112233-4455-6677-8899-aabbccddeeff"),
        *(UUID(int=i, version=4) for i in range(9)),
    ]
    data = uuid_rowbinary(ids)
    assert data[:16] == bytes.fromhex("77665544332211 00 ffeeddccbbaa9988".replace(" ", ""))
    (tmp_path / "ids.bin").write_bytes(data)
    read = ch.query(
        "SELECT id FROM file({path:String}, 'RowBinary', 'id UUID')",
        parameters={"path": str(tmp_path / "ids.bin")},
    ).result_rows
    assert [UUID(str(row[0])) for row in read] == ids


@pytest.mark.parametrize("by_file", [False, True], ids=["bound ids (server)", "ids file (chDB)"])
def test_the_lookup_is_a_multi_get_on_the_key_table(
    ch: Client, tmp_path: Path, by_file: bool
) -> None:
    ids = [UUID(int=i, version=4) for i in range(3)]
    (tmp_path / "ids.bin").write_bytes(uuid_rowbinary(ids))
    query, parameters = (
        (_LOOKUP_FILE, {"path": str(tmp_path / "ids.bin")}) if by_file else (_LOOKUP, {"ids": ids})
    )
    plan = ch.query(f"EXPLAIN actions = 1 {query}", parameters=parameters).result_rows
    text = "\n".join(row[0] for row in plan)
    assert "ReadFromEmbeddedRocksDB" in text
    assert "ReadType: GetKeys" in text  # point reads of the ids, not a scan


@pytest.mark.parametrize("server", [False, True], ids=["chDB", "server"])
def test_the_sink_finds_every_stored_id_whatever_its_event_time(ch: Client, server: bool) -> None:
    sink = _sink(ch, server)
    stored = _outcomes(1, 600)
    for part in range(3):  # keys come from every insert
        sink.write(_pending(stored[part::3]))
    rng = random.Random(2)
    resent = rng.sample(stored, 100)
    # The same ids with another payload: another event time (months away) or cost.
    conflicting = [
        o.model_copy(update={"event_time": o.event_time + timedelta(days=rng.randint(31, 90))})
        if i % 2
        else o.model_copy(update={"latency_ms": o.latency_ms + 1})
        for i, o in enumerate(rng.sample([o for o in stored if o not in resent], 100))
    ]
    fresh = _outcomes(3, 100)
    batch = _pending([*resent, *conflicting, *fresh])
    rng.shuffle(batch)

    found = sink._stored(batch)
    expected = {p.event_id: p.digest for p in _pending(stored)}
    assert found == {i: expected[i] for i in {p.event_id for p in batch} & set(expected)}

    sink.write(batch)
    assert (sink.stats.inserted, sink.stats.duplicates, sink.stats.conflicts) == (700, 100, 100)
    assert ch.query("SELECT count() FROM usage_conflicts").result_rows == [(100,)]
    assert ch.query("SELECT count() FROM usage_events").result_rows == [(700,)]
    assert ch.query("SELECT count() FROM usage_event_keys").result_rows == [(700,)]


def test_the_migration_copies_the_keys_of_stored_rows(ch: Client) -> None:
    outcomes = _outcomes(4, 300)
    _sink(ch).write(_pending(outcomes))
    ch.command("TRUNCATE TABLE usage_event_keys")  # as before migration 0009
    backfill = split_statements(KEYS.read_text())[-1]
    assert backfill.startswith("INSERT INTO usage_event_keys")
    ch.command(backfill)
    batch = _pending(outcomes)
    assert _sink(ch)._stored(batch) == {p.event_id: p.digest for p in batch}


def _rocksdb_stats(ch: Client) -> dict[str, int]:
    rows = ch.query(
        "SELECT name, value FROM system.rocksdb "
        "WHERE database = currentDatabase() AND table = 'usage_event_keys'"
    ).result_rows
    return {str(name): int(value) for name, value in rows}


def test_a_new_id_is_answered_by_the_bloom_filter(ch: Client) -> None:
    # Most looked-up ids are new: without a filter each one read a data block per level,
    # so the lookup grew with the stored events (clickhouse/chdb.xml configures it).
    ch.command(
        "INSERT INTO usage_event_keys SELECT generateUUIDv4(), repeat('0', 64) FROM numbers(200000)"
    )
    ch.command("OPTIMIZE TABLE usage_event_keys")  # into SST files, where filters live
    new = _pending(_outcomes(5, 1000))
    before = _rocksdb_stats(ch)
    assert _sink(ch)._stored(new) == {}
    after = _rocksdb_stats(ch)
    useful = after.get("bloom.filter.useful", 0) - before.get("bloom.filter.useful", 0)
    assert useful >= 900  # about 1% false positives at 10 bits per key
