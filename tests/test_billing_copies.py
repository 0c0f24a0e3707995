"""One event_id is billed once whatever its stored copies carry (issue 13 item 6).

Two writers that both passed the usage sink's lookup (a resend with another
provider on another partition, a zombie owner during a rebalance) store one
event_id twice with different payloads. Every report bills the copy stored
first and never the other, before any reconcile ran and after; a reconcile
quarantines the losing copy in usage_conflicts; and a writer whose lookup is
stale cannot store its copy late (migration 0010).
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from clickhouse_connect.driver.client import Client
from clickhouse_connect.driver.exceptions import DatabaseError

from llmpulse.core.usage import USAGE_COLUMNS, Pending, payload_hash, usage_row
from llmpulse.processors.billing import copies, reports
from llmpulse.processors.billing.allocation import CostReport
from llmpulse.processors.settings import Settings
from llmpulse.processors.sinks import usage as usage_sink
from llmpulse.processors.stream.clickhouse import run_query
from llmpulse.processors.stream.codec import encode
from llmpulse.schemas import LLMOutcome
from llmpulse.simulator.samples import sample_outcome

pytestmark = pytest.mark.chdb

RATE = Decimal("1.2")
WHEN = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) - timedelta(days=3)
START, END = WHEN - timedelta(days=1), WHEN + timedelta(days=1)
#: A period that also holds the copies moved 40 days earlier.
WIDE = (WHEN - timedelta(days=60), END)


@pytest.fixture
def db(ch: Client) -> Iterator[Client]:
    """``ch`` without reconcile decisions, before and after (no watermark leaks out)."""

    def empty() -> None:
        for table in ("usage_event_losers", "usage_reconciles", "period_closes"):
            ch.command(f"TRUNCATE TABLE {table}")

    empty()
    yield ch
    empty()


def _outcomes(seed: int, n: int) -> list[LLMOutcome]:
    rng = random.Random(seed)
    return [sample_outcome(rng, WHEN + timedelta(seconds=rng.uniform(0, 3600))) for _ in range(n)]


def _copy(outcome: LLMOutcome, kind: str) -> LLMOutcome:
    """``outcome`` with another payload, as a second writer would store it."""
    changes: dict[str, dict[str, Any]] = {
        "another cost": {"cost_usd": outcome.cost_usd + Decimal("1.5")},
        "another provider": {"provider": "anthropic", "model": "claude-sonnet-4", "attempt": 2},
        "another org": {"org_id": "initech-x", "cost_usd": Decimal("3.5")},
        "another month": {"event_time": outcome.event_time - timedelta(days=40)},
    }
    return outcome.model_copy(update=changes[kind])


KINDS = ("another cost", "another provider", "another org", "another month")


def _pending(outcomes: list[LLMOutcome]) -> list[Pending]:
    return [Pending.of(o, encode(o), "llm.outcomes.v1", 0, i) for i, o in enumerate(outcomes)]


def _sink(ch: Client, group: str) -> usage_sink.UsageSink:
    return usage_sink.UsageSink(Settings(), ch, group=group)


def _figures(report: CostReport) -> dict[tuple[str, str, str], tuple[Any, ...]]:
    return {
        (line.org_id, line.adjusts_period, op): (
            cell.requests,
            cell.tokens,
            cell.cost_usd,
            cell.unpriced_requests,
            cell.charge_exact,
        )
        for line in report.lines
        for op, cell in line.cells.items()
    }


def _reports(ch: Client) -> dict[str, Any]:
    """Every report over the stored usage: the period, the wide one, per org, failovers."""
    got: dict[str, Any] = {
        "period": _figures(reports.cost_report(ch, START, END, default_rate=RATE)),
        "wide": _figures(reports.cost_report(ch, *WIDE, default_rate=RATE)),
        "failovers": run_query(ch, "usage_events__failovers", {"start": WIDE[0], "end": WIDE[1]}),
    }
    for org in ("acme", "initech-x"):  # initech-x is known once a copy names it: billed or not
        if run_query(ch, "usage_events__org_known", {"org": org})[0]["hits"]:
            figures = _figures(reports.cost_report(ch, *WIDE, default_rate=RATE, org=org))
            got[org] = figures or None
    return {k: v for k, v in got.items() if v is not None}


def _quarantined(ch: Client) -> set[tuple[str, str, str]]:
    rows = ch.query(
        "SELECT toString(event_id), stored_hash, incoming_hash FROM usage_conflicts FINAL"
    ).result_rows
    return {(eid, _text(stored), _text(incoming)) for eid, stored, incoming in rows}


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def test_an_event_id_stored_by_two_racing_sinks_is_billed_once(
    db: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Sink B looked its batch up before sink A's insert landed: both copies stored."""
    firsts = _outcomes(1, 200)
    _sink(db, "a").write(_pending(firsts))
    before = _reports(db)
    late = _sink(db, "b")
    monkeypatch.setattr(late, "_stored", lambda batch: {})  # its lookup ran before A's insert
    victims = firsts[:40]
    seconds = [_copy(o, KINDS[i % len(KINDS)]) for i, o in enumerate(victims)]
    late.write(_pending(seconds))
    assert db.query("SELECT count() FROM usage_events").result_rows == [(240,)]

    assert _reports(db) == before  # found by the report itself: no reconcile decided them
    assert db.query("SELECT count() FROM usage_event_losers").result_rows == [(0,)]
    copies.reconcile(db, datetime.now(UTC) + copies.RACE_HORIZON + timedelta(seconds=1))
    assert _reports(db) == before
    assert _quarantined(db) == {
        (str(o.event_id), payload_hash(o), payload_hash(c))
        for o, c in zip(victims, seconds, strict=True)
    }


@pytest.mark.parametrize("kind", KINDS)
def test_copies_inserted_directly_are_billed_once_as_the_first(db: Client, kind: str) -> None:
    """The copy stored first is billed, whichever payload it has; the other never is."""
    originals = _outcomes(2, 100)
    at = datetime.now(UTC)
    _store(db, [(o, at) for o in originals[1:]])
    _store(db, [(_copy(originals[0], kind), at)])  # the racing copy, stored first
    expected = _reports(db)
    _store(db, [(originals[0], at + timedelta(seconds=30))])
    assert _reports(db) == expected
    copies.reconcile(db, at + copies.RACE_HORIZON + timedelta(minutes=1))  # decides it
    assert _reports(db) == expected
    first = payload_hash(_copy(originals[0], kind))
    assert _quarantined(db) == {(str(originals[0].event_id), first, payload_hash(originals[0]))}


def test_a_stale_lookup_cannot_store_a_copy_late(
    db: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A zombie's insert 61 s after its lookup is refused; its retry quarantines the copy."""
    firsts = _outcomes(3, 20)
    _sink(db, "owner").write(_pending(firsts))
    zombie = _sink(db, "zombie")
    seconds = [_copy(o, "another org") for o in firsts[:5]]
    with monkeypatch.context() as patch:
        patch.setattr(zombie, "_stored", lambda batch: {})  # looked up before the owner's insert
        patch.setattr(usage_sink, "datetime", _Clock(timedelta(seconds=-61)))  # ...61 s ago
        with pytest.raises(DatabaseError, match="stored_soon_after_lookup"):
            zombie.write(_pending(seconds))
    zombie.write(_pending(seconds))  # the sink's retry looks up again
    assert zombie.stats.conflicts == 5
    assert db.query("SELECT count() FROM usage_events").result_rows == [(20,)]


class _Clock:
    """``datetime`` as the sink uses it, ``shift`` off the real clock."""

    def __init__(self, shift: timedelta) -> None:
        self.shift = shift

    def now(self, tz: Any) -> datetime:
        return datetime.now(tz) + self.shift


def _store(ch: Client, rows: list[tuple[LLMOutcome, datetime]]) -> None:
    """Insert outcomes with the given ``inserted_at`` (a writer other than the sink)."""
    ch.insert(
        "usage_events",
        [[*usage_row(o, payload_hash(o)), at] for o, at in rows],
        column_names=[*USAGE_COLUMNS, "inserted_at"],
    )
