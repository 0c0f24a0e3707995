"""Usage sink: ``llm.outcomes.v1`` -> ClickHouse ``usage_events`` (exactly once per event_id).

Delivery, batching, retries and rebalances are ``llmpulse.processors.sinks.base``'s. This
flow adds the dedup step: before inserting, the batch's event_ids are looked up
so redelivered events are dropped and same-id-different-payload events are
quarantined in ``usage_conflicts`` (see ``usage_rows`` and the
``usage_events`` migration).
"""

from __future__ import annotations

import time
from collections import Counter, defaultdict
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, ClassVar
from uuid import UUID

from llmpulse.core.usage import (
    CONFLICT_COLUMNS,
    USAGE_COLUMNS,
    BatchPlan,
    Pending,
    conflict_row,
    payload_hash,
    plan_batch,
    usage_row,
)
from llmpulse.processors.sinks.base import ClickHouseSink, SinkStats
from llmpulse.processors.stream import metrics
from llmpulse.schemas.events import LLMOutcome
from llmpulse.schemas.topics import OUTCOMES

FLOW = "usage_events"
#: Stored ids and payload hashes, from the table sorted by event_id (migration 0007):
#: one small granule per id, so the lookup stays flat as usage_events grows.
_LOOKUP = "SELECT event_id, payload_hash FROM usage_event_keys WHERE event_id IN {ids:Array(UUID)}"

__all__ = ["FLOW", "SinkStats", "UsageSink"]


class UsageSink(ClickHouseSink[Pending]):
    """Consumes outcomes and loads unique usage rows into ClickHouse."""

    SOURCE: ClassVar[str] = OUTCOMES
    MODEL = LLMOutcome
    FLOW: ClassVar[str] = FLOW

    def pending(self, event: Any, record: Any) -> Pending:
        return Pending(event, payload_hash(event), record.topic, record.partition, record.offset)

    def write(self, batch: list[Pending]) -> None:
        """Dedup lookup, conflict quarantine and insert (blocking; runs in a thread)."""
        ids = list({p.outcome.event_id for p in batch})
        stored: dict[UUID, str] = {}
        for chunk_start in range(0, len(ids), 10_000):
            rows = self.client.query(
                _LOOKUP, parameters={"ids": ids[chunk_start : chunk_start + 10_000]}
            ).result_rows
            stored.update({UUID(str(eid)): _text(h) for eid, h in rows})
        plan = plan_batch(batch, stored)
        if plan.conflicts:
            self.client.insert(
                "usage_conflicts",
                [conflict_row(item, known) for item, known in plan.conflicts],
                column_names=list(CONFLICT_COLUMNS),
            )
        started = time.perf_counter()
        if plan.insert:
            self.client.insert(
                "usage_events",
                [usage_row(p.outcome, p.digest) for p in plan.insert],
                column_names=list(USAGE_COLUMNS),
            )
        self._record(plan, time.perf_counter() - started)

    def _record(self, plan: BatchPlan, seconds: float) -> None:
        self.stats.inserted += len(plan.insert)
        self.stats.duplicates += len(plan.duplicates)
        self.stats.conflicts += len(plan.conflicts)
        metrics.USAGE_DUPLICATES.inc(len(plan.duplicates))
        metrics.USAGE_CONFLICTS.inc(len(plan.conflicts))
        if not plan.insert:
            return
        metrics.SINK_BATCH_ROWS.labels(flow=FLOW).observe(len(plan.insert))
        metrics.SINK_INSERT_SECONDS.labels(flow=FLOW).observe(seconds)
        now = datetime.now(UTC).timestamp()
        lag = metrics.EVENT_LAG_SECONDS.labels(flow=FLOW)
        statuses: Counter[str] = Counter()
        cost_by_org: dict[str, Decimal] = defaultdict(Decimal)
        for p in plan.insert:
            o = p.outcome
            lag.observe(max(0.0, now - o.event_time.timestamp()))
            statuses[o.status] += 1
            cost_by_org[o.org_id] += o.cost_usd
        for status, n in statuses.items():
            metrics.LLM_REQUESTS.labels(status=status).inc(n)
        limit = self.settings.metrics_org_label_limit
        for org, cost in cost_by_org.items():
            # Prometheus counters are floats; billing never reads them.
            metrics.LLM_COST_USD.labels(organization=metrics.org_label(org, limit)).inc(float(cost))
        metrics.CACHE_REQUESTS.inc(len(plan.insert))
        metrics.CACHE_HITS.inc(sum(p.outcome.cache_hit for p in plan.insert))


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes | bytearray) else str(value)
