"""The fast billing paths give exactly what the brute-force ones gave.

``usage_events__allocation.sql`` sums usage per bucket of event time before
joining prices and rates, reads whole days of all-organization reports from the
daily rollup (migration 0008) where that is proven equal to FINAL, and finds
adjustments without a full scan; the usage sink looks ids up in
``usage_event_keys`` instead of ``usage_events``. All must answer the same
questions as before, to the last decimal. The reference is the brute-force
query (``tests/billing_reference_allocation.sql``: every row FINAL reads of the
period's event_ids grouped by event_id, the first stored copy billed, one join
per event) and a lookup in ``usage_events`` itself. The datasets are
randomized: duplicates stored at other times, same-id conflicts as racing
writers store them (another cost, organization, provider, or time in the same
or another month, stored seconds before or after the first copy: migration
0010's bound), late events of a closed month, price and rate changes at
midnight and inside a day, cached tokens, and events on the period edges; the
comparison is repeated before any reconcile, and after reconciles that decided
some or all of the copies. One dataset has no duplicate so that the rollup
answers, and the tests check that it did, that it stops answering a month once
a duplicate is stored there, and a day once a losing copy is stored there.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from types import SimpleNamespace
from typing import Any
from uuid import UUID

import pytest
from clickhouse_connect.driver.client import Client
from clickhouse_connect.driver.exceptions import DatabaseError

from llmpulse.core.usage import USAGE_COLUMNS, payload_hash, usage_row
from llmpulse.processors.billing import copies, pricing, reports
from llmpulse.processors.sinks.usage import _LOOKUP
from llmpulse.processors.stream.clickhouse import run_query, split_statements
from llmpulse.schemas import LLMOutcome
from llmpulse.simulator.samples import ORGS, sample_outcome

pytestmark = pytest.mark.chdb

REFERENCE = (Path(__file__).parent / "billing_reference_allocation.sql").read_text()
FEB, MAR, APR, MAY = (datetime(2026, m, 1, tzinfo=UTC) for m in (2, 3, 4, 5))
#: February is closed at this instant; usage of February stored later is late.
CLOSED_AT = datetime(2026, 3, 3, 12, tzinfo=UTC)
FAR_FUTURE = datetime(2100, 1, 1, tzinfo=UTC)
RATE = Decimal("1.2")
#: A list price change inside a day and inside an hour; a rate change on the hour.
PRICE_CHANGE = datetime(2026, 3, 20, 13, 27, 45, 500000, tzinfo=UTC)
RATE_CHANGE = datetime(2026, 4, 2, 6, tzinfo=UTC)
#: Period edges: months, the close, and instants inside a day.
EDGES = [
    FEB,
    MAR,
    APR,
    MAY,
    CLOSED_AT,
    datetime(2026, 3, 10, tzinfo=UTC),
    datetime(2026, 3, 20, 13, 30, tzinfo=UTC),
    datetime(2026, 4, 2, 7, 15, tzinfo=UTC),
]
ROLLUP = Path(__file__).parents[1] / "clickhouse" / "migrations" / "0008_usage_daily.sql"
#: Columns of a marker row in the rollup: no request, no token, one dollar.
MARKER = ["month", "day", "org_id", "operation", "provider", "model", "requests", "sum_tokens",
          "sum_uncached_input", "sum_output", "sum_cached", "sum_cost_usd"]  # fmt: skip


@pytest.fixture
def db(ch: Client) -> Client:
    """``ch`` with an empty rollup and no reconcile (the shared fixture empties usage only)."""
    for table in ("usage_daily", "usage_event_losers", "usage_reconciles"):
        ch.command(f"TRUNCATE TABLE {table}")
    _dimensions(ch)
    return ch


def _store(ch: Client, rows: list[tuple[LLMOutcome, datetime]]) -> None:
    """Insert outcomes with the given ``inserted_at`` (the sink lets ClickHouse stamp it)."""
    ch.insert(
        "usage_events",
        [[*usage_row(o, payload_hash(o)), at] for o, at in rows],
        column_names=[*USAGE_COLUMNS, "inserted_at"],
    )


def _outcome(rng: random.Random, when: datetime) -> LLMOutcome:
    """A sample outcome; about a third read part of their input from a cache."""
    outcome = sample_outcome(rng, when)
    if rng.random() < 0.3:
        cached = rng.randint(0, outcome.input_tokens)
        outcome = outcome.model_copy(update={"cached_tokens": cached})
    return outcome


def _unique_usage(seed: int) -> list[tuple[LLMOutcome, datetime]]:
    """Usage from February to April, each event stored once, on every edge too."""
    rng = random.Random(seed)
    span = (MAY - FEB).total_seconds()
    rows: list[tuple[LLMOutcome, datetime]] = []
    for _ in range(1500):
        when = FEB + timedelta(seconds=rng.uniform(0, span))
        # Stored a few seconds to hours after it happened; sometimes days later
        # (late), which for February usage after CLOSED_AT makes an adjustment.
        delay = timedelta(seconds=rng.choice((2, 60, 3600, 86400 * rng.randint(1, 40))))
        rows.append((_outcome(rng, when), when + delay))
    for edge in (*EDGES, MAY - timedelta(microseconds=1), PRICE_CHANGE, RATE_CHANGE):
        rows.append((_outcome(rng, edge), edge + timedelta(seconds=1)))
    # Late February usage stored exactly at and just after the close.
    rows.append((_outcome(rng, MAR - timedelta(seconds=5)), CLOSED_AT))
    rows.append((_outcome(rng, FEB + timedelta(days=3)), CLOSED_AT + timedelta(seconds=1)))
    rng.shuffle(rows)
    return rows


def _conflicting_copy(rng: random.Random, outcome: LLMOutcome) -> LLMOutcome:
    """``outcome`` with another payload, as a second writer may have stored it."""
    cost = {"cost_usd": outcome.cost_usd + Decimal("0.5")}
    change: dict[str, Any] = rng.choice(
        [
            cost,
            {**cost, "org_id": rng.choice([o for o in ORGS if o != outcome.org_id])},
            {"provider": "anthropic", "model": "claude-sonnet-4", "attempt": 2},
            {**cost, "event_time": outcome.event_time + timedelta(days=rng.choice((-20, 1, 35)))},
        ]
    )
    return outcome.model_copy(update=change)


def _dataset(seed: int) -> list[tuple[LLMOutcome, datetime]]:
    """``_unique_usage`` plus duplicates stored later and same-id conflicts.

    A conflicting copy is stored within 50 s of the first copy, before or after
    it: the sink refuses an insert more than 60 s after its lookup (migration
    0010), so a racing writer cannot store it later.
    """
    rng = random.Random(seed)
    rows = _unique_usage(seed)
    duplicated = rng.sample(rows, 150)
    for outcome, at in duplicated:  # duplicates stored again, later
        rows.append((outcome, at + timedelta(days=rng.randint(0, 30))))
    for outcome, at in rng.sample([r for r in rows if r not in duplicated], 40):
        rows.append((_conflicting_copy(rng, outcome), at + timedelta(seconds=rng.uniform(-50, 50))))
    rng.shuffle(rows)
    return rows


def _dimensions(ch: Client) -> None:
    for table in ("prices", "chargeback_rates", "organizations", "period_closes"):
        ch.command(f"TRUNCATE TABLE {table}")
    jan = datetime(2026, 1, 1, tzinfo=UTC)
    mid_march = datetime(2026, 3, 15, tzinfo=UTC)
    prices = [
        pricing.PriceRow(
            provider="openai",
            model="gpt-4o",
            effective_from=t,
            input_per_mtok=Decimal(i),
            output_per_mtok=Decimal(o),
            cached_per_mtok=Decimal(c),
        )
        for t, i, o, c in (
            (jan, "2.5", "10", "1.25"),
            (mid_march, "2.0", "8", "1.0"),
            (PRICE_CHANGE, "1.75", "7", "0.875"),
        )
    ] + [
        pricing.PriceRow(
            provider="anthropic",
            model="claude-sonnet-4",
            effective_from=jan,
            input_per_mtok=Decimal("3"),
            output_per_mtok=Decimal("15"),
            cached_per_mtok=Decimal("0.3"),
        )
    ]
    rates = [
        pricing.RateRow(org_id="acme", effective_from=jan, rate=Decimal("1.25")),
        pricing.RateRow(org_id="acme", effective_from=RATE_CHANGE, rate=Decimal("1.15")),
        pricing.RateRow(org_id="hooli", effective_from=jan, rate=Decimal("1.1")),
        pricing.RateRow(org_id="hooli", effective_from=mid_march, rate=Decimal("1.3333")),
    ]
    pricing.load(ch, pricing.PricingData(prices=prices, chargeback_rates=rates, organizations=[]))
    ch.insert(
        "period_closes",
        [[FEB.date(), FEB, MAR, CLOSED_AT]],
        column_names=["period", "period_start", "period_end", "closed_at"],
    )


def _params(start: datetime, end: datetime, org: str = "", as_of: datetime = FAR_FUTURE) -> Any:
    return {"start": start, "end": end, "org": org, "as_of": as_of, "default_rate": RATE}


def _rows(ch: Client, sql: str | None, params: dict[str, Any]) -> list[dict[str, Any]]:
    if sql is None:
        return run_query(ch, "usage_events__allocation", params)
    result = ch.query(sql, parameters=params)
    return [dict(zip(result.column_names, row, strict=True)) for row in result.result_rows]


def _compare_periods(ch: Client, seed: int) -> int:
    """Fast and brute-force reports for many periods, orgs and ``as_of``; lines compared."""
    rng = random.Random(100 + seed)
    periods = [(FEB, MAR), (MAR, APR), (APR, MAY), (FEB, MAY), (MAR, CLOSED_AT)]
    for _ in range(8):
        start, end = sorted(rng.sample(EDGES, 2))
        periods.append((start, end))
    compared = 0
    for start, end in periods:
        for org in ("", *rng.sample(ORGS, 2)):
            for as_of in (FAR_FUTURE, CLOSED_AT, datetime(2026, 4, 20, tzinfo=UTC)):
                params = _params(start, end, org, as_of)
                brute = _rows(ch, REFERENCE, params)
                assert _rows(ch, None, params) == brute, (start, end, org, as_of)
                compared += len(brute)
    return compared


@pytest.mark.parametrize("seed", [1, 2])
def test_pruned_allocation_equals_the_brute_force_query(db: Client, seed: int) -> None:
    _store(db, _dataset(seed))
    # The comparison covered real lines, adjustments among them.
    assert _compare_periods(db, seed) > 100
    march = _rows(db, None, _params(MAR, APR))
    assert any(r["adjusts_period"] == "2026-02-01" for r in march)
    assert all(isinstance(r["cost_usd"], Decimal) for r in march)


@pytest.mark.parametrize("seed", [1, 2])
def test_reconciled_allocation_equals_the_brute_force_query(db: Client, seed: int) -> None:
    """Copies decided by reconciles and copies a report finds itself add up the same."""
    rows = _dataset(seed)
    _store(db, rows)
    decided = "SELECT count(), uniqExact(event_id) FROM usage_event_losers"
    # Watermarks inside the data: some copies are decided, the later ones live.
    for now in (datetime(2026, 3, 10, tzinfo=UTC), datetime(2026, 4, 5, tzinfo=UTC)):
        copies.reconcile(db, now)
        assert 0 < db.query(decided).result_rows[0][0] < 40
        assert _compare_periods(db, seed) > 100
    copies.reconcile(db)  # everything decided
    assert db.query("SELECT count() FROM usage_event_copies_live").result_rows == [(0,)]
    assert _compare_periods(db, seed) > 100
    assert db.query(decided).result_rows == [(40, 40)]
    quarantined = db.query(
        "SELECT count() FROM usage_conflicts FINAL WHERE source_topic = 'usage_events'"
    ).result_rows
    assert quarantined == [(40,)]


@pytest.mark.parametrize("seed", [3, 4])
def test_rollup_equals_the_brute_force_query(db: Client, seed: int) -> None:
    rows = _unique_usage(seed)
    for part in range(3):  # several inserts: the rollup holds several rows per key
        _store(db, rows[part::3])
    assert _compare_periods(db, seed) > 100


def _cost_gap(ch: Client, start: datetime, end: datetime, as_of: datetime = FAR_FUTURE) -> Decimal:
    """Total cost of the fast report minus the brute-force one."""
    params = _params(start, end, as_of=as_of)
    fast = sum((r["cost_usd"] for r in _rows(ch, None, params)), start=Decimal(0))
    return fast - sum((r["cost_usd"] for r in _rows(ch, REFERENCE, params)), start=Decimal(0))


def test_rollup_answers_only_where_it_is_proven(db: Client) -> None:
    """A marker row in the rollup (no request, one dollar) shows which days it answered."""
    rows = _unique_usage(5)
    _store(db, rows)
    marker = ["acme", "completion", "openai", "gpt-4o", 0, 0, 0, 0, 0, Decimal(1)]
    days = (date(2026, 2, 10), date(2026, 3, 20), date(2026, 3, 21), date(2026, 4, 10))
    db.insert("usage_daily", [[d.replace(day=1), d, *marker] for d in days], column_names=MARKER)
    # April and whole March days answer from the rollup; not March 20 (a price
    # changes inside it), not February (usage stored after its close).
    assert _cost_gap(db, APR, MAY) == 1
    assert _cost_gap(db, MAR, APR) == 1
    assert _cost_gap(db, FEB, MAR) == 0
    assert _cost_gap(db, FEB, MAY) == 2
    # Not for part of a day, one organization, or as of before the last insert.
    assert _cost_gap(db, datetime(2026, 4, 10, 12, tzinfo=UTC), MAY) == 0
    assert _rows(db, None, _params(APR, MAY, "acme")) == _rows(
        db, REFERENCE, _params(APR, MAY, "acme")
    )
    assert _cost_gap(db, APR, MAY, as_of=datetime(2026, 5, 2, tzinfo=UTC)) == 0
    # A copy of an April 9 event in another organization, stored by a racing
    # writer: that day reads FINAL without the losing copy, April 10 still rolls up.
    ninth, at = next((o, at) for o, at in rows if o.event_time.date() == date(2026, 4, 9))
    elsewhere = ninth.model_copy(update={"org_id": "acme" if ninth.org_id != "acme" else "hooli"})
    _store(db, [(elsewhere, at + timedelta(seconds=9))])
    assert _cost_gap(db, APR, MAY) == 1
    copies.reconcile(db)
    assert _cost_gap(db, APR, MAY) == 1
    # A duplicate stored in April (a race between two sinks): April reads FINAL.
    april = next((o, at) for o, at in rows if APR <= o.event_time < MAY)
    _store(db, [april])
    assert _cost_gap(db, APR, MAY) == 0
    assert _cost_gap(db, MAR, APR) == 1


class _RacingClient:
    """Answers like ClickHouse after the allocation query stopped ``failures`` times."""

    def __init__(self, failures: int, message: str) -> None:
        self.failures, self.message, self.calls = failures, message, 0

    def query(self, sql: str, parameters: dict[str, Any]) -> Any:
        self.calls += 1
        if self.calls <= self.failures:
            raise DatabaseError(f"Code: 395. DB::Exception: {self.message}; run it again")
        return SimpleNamespace(column_names=["requests"], result_rows=[(7,)])


def test_a_report_stopped_by_a_racing_duplicate_runs_again() -> None:
    racing = _RacingClient(2, "usage_daily gained a duplicate during the cost report")
    rows = reports.allocation_rows(racing, APR, MAY, default_rate=RATE)  # type: ignore[arg-type]
    assert (rows, racing.calls) == ([{"requests": 7}], 3)
    stuck = _RacingClient(3, "usage_daily gained a duplicate during the cost report")
    with pytest.raises(DatabaseError):
        reports.allocation_rows(stuck, APR, MAY, default_rate=RATE)  # type: ignore[arg-type]
    broken = _RacingClient(1, "Table default.usage_daily does not exist")
    with pytest.raises(DatabaseError):
        reports.allocation_rows(broken, APR, MAY, default_rate=RATE)  # type: ignore[arg-type]
    assert broken.calls == 1


def _rollup_content(ch: Client) -> Sequence[Sequence[Any]]:
    return ch.query(
        "SELECT month, org_id, operation, day, provider, model, sum(requests), sum(sum_tokens), "
        "sum(sum_uncached_input), sum(sum_output), sum(sum_cached), sum(sum_cost_usd), "
        "max(last_inserted_at), arraySort(groupArrayMerge(1000000)(event_keys)) FROM usage_daily "
        "GROUP BY ALL ORDER BY ALL"
    ).result_rows


def test_migration_backfill_equals_the_view(db: Client) -> None:
    # Without duplicates: the view sees every inserted row, the backfill what was kept.
    _store(db, _unique_usage(6))
    by_view = _rollup_content(db)
    db.command("TRUNCATE TABLE usage_daily")
    backfill = split_statements(ROLLUP.read_text())[-1]
    assert backfill.startswith("INSERT INTO usage_daily")
    db.command(backfill)
    assert _rollup_content(db) == by_view


def test_key_lookup_equals_a_lookup_in_usage_events(ch: Client) -> None:
    rows = _dataset(3)
    _store(ch, rows[:800])
    _store(ch, rows[800:])  # a second insert: keys come from every insert
    rng = random.Random(4)
    stored = [o.event_id for o, _ in rows]
    unknown = [UUID(int=rng.getrandbits(128), version=4) for _ in range(300)]
    ids = rng.sample(stored, 500) + unknown

    def lookup(sql: str) -> set[tuple[str, str]]:
        found = ch.query(sql, parameters={"ids": ids}).result_rows
        return {(str(eid), h.decode() if isinstance(h, bytes) else str(h)) for eid, h in found}

    brute = lookup(_LOOKUP.replace("usage_event_keys", "usage_events"))
    assert {eid for eid, _ in brute} == {str(i) for i in set(ids) & set(stored)}
    # The key table holds one hash per id (migration 0009): the only one stored, or
    # for an id stored with several payloads (a race), one of them.
    keys = dict(lookup(_LOOKUP))
    copies: dict[str, set[str]] = {}
    for eid, digest in brute:
        copies.setdefault(eid, set()).add(digest)
    assert keys.keys() == copies.keys()
    assert all(keys[eid] in hashes for eid, hashes in copies.items())
    single = {eid: next(iter(h)) for eid, h in copies.items() if len(h) == 1}
    assert {eid: keys[eid] for eid in single} == single
