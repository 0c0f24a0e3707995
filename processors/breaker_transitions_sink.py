"""``llm.breaker-transitions.v1`` -> ClickHouse ``breaker_transitions`` (the outage ledger).

Runs in the sink worker, the one process that writes ClickHouse. Snapshots
re-sent by the breaker agent have the same (provider, version) and collapse
in the ReplacingMergeTree; the ledger queries read with FINAL.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from processors import metrics
from processors.sink import ClickHouseSink
from schemas.events import BreakerSnapshot
from schemas.topics import BREAKER_TRANSITIONS

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


@dataclass(frozen=True)
class TransitionItem:
    snapshot: BreakerSnapshot
    topic: str
    partition: int


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


class BreakerTransitionsSink(ClickHouseSink[TransitionItem]):
    SOURCE: ClassVar[str] = BREAKER_TRANSITIONS
    MODEL = BreakerSnapshot
    FLOW: ClassVar[str] = FLOW

    def pending(self, event: Any, record: Any) -> TransitionItem:
        return TransitionItem(event, record.topic, record.partition)

    def write(self, batch: list[TransitionItem]) -> None:
        self.client.insert(
            "breaker_transitions",
            [transition_row(item.snapshot) for item in batch],
            column_names=list(COLUMNS),
        )
        self.stats.inserted += len(batch)
        metrics.SINK_BATCH_ROWS.labels(flow=FLOW).observe(len(batch))
