"""Outage ledger queries on chDB: time open, openings, failovers, against hand-computed values."""

from __future__ import annotations

import random
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from clickhouse_connect.driver.client import Client

from llmpulse.core.usage import USAGE_COLUMNS, payload_hash, usage_row
from llmpulse.processors.sinks.breaker_transitions import COLUMNS, transition_row
from llmpulse.processors.stream.clickhouse import run_query
from llmpulse.schemas.events import BreakerSnapshot, BreakerState
from llmpulse.simulator.samples import sample_outcome

pytestmark = pytest.mark.chdb

T = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
S = timedelta(seconds=1)


def snap(
    provider: str, version: int, prev: BreakerState | None, state: BreakerState, at: datetime
) -> BreakerSnapshot:
    return BreakerSnapshot(
        event_id=uuid.uuid4(),
        event_time=at,
        provider=provider,
        state=state,
        version=version,
        since=at,
        as_of=at,
        failure_rate=0.0,
        calls_in_window=0,
        previous_state=prev,
        reason="test",
    )


def test_time_open_and_openings(ch: Client) -> None:
    o, h, c = BreakerState.open, BreakerState.half_open, BreakerState.closed
    rows = [
        # prov-x: open before the period starts, 10 s of it inside the period ...
        snap("prov-x", 1, c, o, T - 50 * S),
        snap("prov-x", 2, o, h, T + 10 * S),
        snap("prov-x", 3, h, c, T + 11 * S),
        # ... then 60 s open, a failed probe, and open until past the period end.
        snap("prov-x", 4, c, o, T + 20 * S),
        snap("prov-x", 5, o, h, T + 80 * S),
        snap("prov-x", 6, h, o, T + 81 * S),
        snap("prov-x", 6, h, o, T + 81 * S),  # re-sent snapshot: counted once
        # prov-y: never opened.
        snap("prov-y", 1, c, BreakerState.disabled, T + 5 * S),
    ]
    ch.insert("breaker_transitions", [transition_row(r) for r in rows], column_names=list(COLUMNS))
    ledger = {
        r["provider"]: r
        for r in run_query(
            ch, "breaker_transitions__outage_ledger", {"start": T, "end": T + 200 * S}
        )
    }
    assert ledger["prov-x"]["seconds_open"] == 10 + 60 + (200 - 81)
    assert ledger["prov-x"]["openings"] == 2  # the one before the period is not counted
    assert ledger["prov-y"]["seconds_open"] == 0


def test_failovers_and_their_extra_cost(ch: Client) -> None:
    rng = random.Random(2)
    first = sample_outcome(rng, T).model_copy(update={"provider": "openai", "attempt": 1})
    second = first.model_copy(
        update={
            "event_id": uuid.uuid4(),
            "provider": "anthropic",
            "attempt": 2,
            "cost_usd": Decimal("0.004"),
        }
    )
    same_provider_retry = sample_outcome(rng, T).model_copy(update={"attempt": 2})
    rows = [first, second, same_provider_retry, sample_outcome(rng, T)]
    ch.insert(
        "usage_events",
        [usage_row(r, payload_hash(r)) for r in rows],
        column_names=list(USAGE_COLUMNS),
    )
    result = run_query(ch, "usage_events__failovers", {"start": T, "end": T + S})
    assert result == [{"provider": "openai", "failovers": 1, "failover_cost_usd": Decimal("0.004")}]
