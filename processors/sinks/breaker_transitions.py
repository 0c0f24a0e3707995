"""``llm.breaker-transitions.v1`` -> ClickHouse ``breaker_transitions`` (the outage ledger).

Runs in the sink worker, the one process that writes ClickHouse. Snapshots
re-sent by the breaker agent have the same (provider, version) and collapse
in the ReplacingMergeTree; the ledger queries read with FINAL.
"""

from __future__ import annotations

from typing import Any, ClassVar

from llmpulse.processors.sinks.base import RowSink
from llmpulse.schemas.events import BreakerSnapshot
from llmpulse.schemas.topics import BREAKER_TRANSITIONS

FLOW = "breaker_transitions"
COLUMNS: tuple[str, ...] = (
    "provider",
    "version",
    "from_state",
    "to_state",
    "at",
    "reason",
    "next_attempt_at",
    "failure_rate",
    "calls_in_window",
    "event_id",
)


def transition_row(s: BreakerSnapshot) -> list[Any]:
    """One ``breaker_transitions`` row in ``COLUMNS`` order."""
    return [
        s.provider,
        s.version,
        s.previous_state.value if s.previous_state else "",
        s.state.value,
        s.since,
        s.reason or "",
        s.next_attempt_at,
        s.failure_rate,
        s.calls_in_window,
        s.event_id,
    ]


class BreakerTransitionsSink(RowSink):
    SOURCE: ClassVar[str] = BREAKER_TRANSITIONS
    MODEL = BreakerSnapshot
    FLOW: ClassVar[str] = FLOW
    TABLE: ClassVar[str] = "breaker_transitions"
    COLUMNS: ClassVar[tuple[str, ...]] = COLUMNS

    def row(self, event: Any) -> list[Any]:
        return transition_row(event)
