"""The pruned billing paths give exactly what the brute-force ones gave.

``usage_events__allocation.sql`` reads only the period's partitions plus the
granules stored during the period (migration 0007), and the usage sink looks ids
up in ``usage_event_keys`` instead of ``usage_events``. Both must be answers to
the same questions as before, to the last decimal. The reference is the query as
it was before (``tests/billing_reference_allocation.sql``: it scanned every
partition because of its ``OR inserted_at`` condition) and a lookup in
``usage_events`` itself; the dataset is randomized with duplicates stored at
other times, same-id conflicts, late events of a closed month, price and rate
changes, and events on the period edges.
"""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest
from clickhouse_connect.driver.client import Client

from llmpulse.core.usage import USAGE_COLUMNS, payload_hash, usage_row
from llmpulse.processors.billing import pricing
from llmpulse.processors.sinks.usage import _LOOKUP
from llmpulse.processors.stream.clickhouse import run_query
from llmpulse.schemas import LLMOutcome
from llmpulse.simulator.samples import ORGS, sample_outcome

pytestmark = pytest.mark.chdb

REFERENCE = (Path(__file__).parent / "billing_reference_allocation.sql").read_text()
FEB, MAR, APR, MAY = (datetime(2026, m, 1, tzinfo=UTC) for m in (2, 3, 4, 5))
#: February is closed at this instant; usage of February stored later is late.
CLOSED_AT = datetime(2026, 3, 3, 12, tzinfo=UTC)
FAR_FUTURE = datetime(2100, 1, 1, tzinfo=UTC)
RATE = Decimal("1.2")


def _store(ch: Client, rows: list[tuple[LLMOutcome, datetime]]) -> None:
    """Insert outcomes with the given ``inserted_at`` (the sink lets ClickHouse stamp it)."""
    ch.insert(
        "usage_events",
        [[*usage_row(o, payload_hash(o)), at] for o, at in rows],
        column_names=[*USAGE_COLUMNS, "inserted_at"],
    )


def _dataset(seed: int) -> list[tuple[LLMOutcome, datetime]]:
    """Usage from February to April with every shape the reports must handle."""
    rng = random.Random(seed)
    span = (MAY - FEB).total_seconds()
    rows: list[tuple[LLMOutcome, datetime]] = []
    for _ in range(1500):
        when = FEB + timedelta(seconds=rng.uniform(0, span))
        outcome = sample_outcome(rng, when)
        # Stored a few seconds to hours after it happened; sometimes days later
        # (late), which for February usage after CLOSED_AT makes an adjustment.
        delay = timedelta(seconds=rng.choice((2, 60, 3600, 86400 * rng.randint(1, 40))))
        rows.append((outcome, when + delay))
    for outcome, at in rng.sample(rows, 150):  # duplicates stored again, later
        rows.append((outcome, at + timedelta(days=rng.randint(0, 30))))
    for outcome, at in rng.sample(rows, 40):  # same event_id, another payload
        changed = outcome.model_copy(update={"cost_usd": outcome.cost_usd + Decimal("0.5")})
        rows.append((changed, at + timedelta(hours=1)))
    for edge in (FEB, MAR, APR, MAY - timedelta(microseconds=1), CLOSED_AT):
        rows.append((sample_outcome(rng, edge), edge + timedelta(seconds=1)))
    # Late February usage stored exactly at and just after the close.
    rows.append((sample_outcome(rng, MAR - timedelta(seconds=5)), CLOSED_AT))
    rows.append((sample_outcome(rng, FEB + timedelta(days=3)), CLOSED_AT + timedelta(seconds=1)))
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
        for t, i, o, c in ((jan, "2.5", "10", "1.25"), (mid_march, "2.0", "8", "1.0"))
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
        pricing.RateRow(org_id="hooli", effective_from=jan, rate=Decimal("1.1")),
        pricing.RateRow(org_id="hooli", effective_from=mid_march, rate=Decimal("1.3333")),
    ]
    pricing.load(ch, pricing.PricingData(prices=prices, chargeback_rates=rates, organizations=[]))
    ch.insert(
        "period_closes",
        [[FEB.date(), FEB, MAR, CLOSED_AT]],
        column_names=["period", "period_start", "period_end", "closed_at"],
    )


def _rows(ch: Client, sql: str | None, params: dict[str, Any]) -> list[dict[str, Any]]:
    if sql is None:
        return run_query(ch, "usage_events__allocation", params)
    result = ch.query(sql, parameters=params)
    return [dict(zip(result.column_names, row, strict=True)) for row in result.result_rows]


@pytest.mark.parametrize("seed", [1, 2])
def test_pruned_allocation_equals_the_brute_force_query(ch: Client, seed: int) -> None:
    _dimensions(ch)
    rows = _dataset(seed)
    _store(ch, rows)
    rng = random.Random(100 + seed)
    edges = [FEB, MAR, APR, MAY, CLOSED_AT, datetime(2026, 3, 10, tzinfo=UTC)]
    periods = [(FEB, MAR), (MAR, APR), (APR, MAY), (FEB, MAY), (MAR, CLOSED_AT)]
    for _ in range(6):
        start, end = sorted(rng.sample(edges, 2))
        periods.append((start, end))
    compared = 0
    for start, end in periods:
        for org in ("", *rng.sample(ORGS, 2)):
            for as_of in (FAR_FUTURE, CLOSED_AT, datetime(2026, 4, 20, tzinfo=UTC)):
                params = {
                    "start": start,
                    "end": end,
                    "org": org,
                    "as_of": as_of,
                    "default_rate": RATE,
                }
                fast = _rows(ch, None, params)
                brute = _rows(ch, REFERENCE, params)
                assert fast == brute, (start, end, org, as_of)
                compared += len(brute)
    # The comparison covered real lines, adjustments among them.
    assert compared > 100
    march = _rows(ch, None, {"start": MAR, "end": APR, "org": "", "as_of": FAR_FUTURE,
                             "default_rate": RATE})  # fmt: skip
    assert any(r["adjusts_period"] == "2026-02-01" for r in march)
    assert all(isinstance(r["cost_usd"], Decimal) for r in march)


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
    assert lookup(_LOOKUP) == brute
    assert {eid for eid, _ in brute} == {str(i) for i in set(ids) & set(stored)}
