"""Usage sink: ``llm.outcomes.v1`` -> ClickHouse ``usage_events`` (exactly once per event_id).

Delivery, batching, retries and rebalances are ``llmpulse.processors.sinks.base``'s. This
flow adds the dedup step: before inserting, the batch's event_ids are looked up
so redelivered events are dropped and same-id-different-payload events are
quarantined in ``usage_conflicts`` (see ``plan_batch`` and the
``usage_events`` migration).

Per event the hot path does the decode, one SHA-256 of the consumed bytes
(``wire_hash``: no second serialisation) and the row tuple; the decoded model
is dropped at once (``Pending``). Everything else is done per batch in the
writer thread: the rows go to ClickHouse as columns (``usage_columns``) and the
Prometheus counters get one increment per batch and label (the lag histogram,
one observation per event).
"""

from __future__ import annotations

import os
import tempfile
import time
from array import array
from collections import Counter
from collections.abc import Sequence
from datetime import UTC, datetime
from decimal import Decimal
from functools import cached_property
from typing import Any, ClassVar
from uuid import UUID

from clickhouse_connect.driver.insert import InsertContext

from llmpulse.core.usage import (
    CONFLICT_COLUMNS,
    USAGE_COLUMNS,
    BatchPlan,
    Pending,
    conflict_row,
    plan_batch,
    usage_columns,
)
from llmpulse.processors.sinks.base import ClickHouseSink, SinkStats
from llmpulse.processors.stream import metrics
from llmpulse.schemas.events import LLMOutcome
from llmpulse.schemas.topics import OUTCOMES

FLOW = "usage_events"
#: Stored ids and payload hashes, from the key-value table of migration 0009: a
#: multi-get, one point read per id, so the lookup stays flat as usage_events grows.
_LOOKUP = "SELECT event_id, payload_hash FROM usage_event_keys WHERE event_id IN {ids:Array(UUID)}"
_LOOKUP_CHUNK = 10_000
#: The same lookup on embedded chDB, with the ids in a RowBinary file the engine reads
#: (still a multi-get: ``IN`` a subquery's set). A bound ``Array(UUID)`` is formatted into
#: the query's text in Python and parsed back by the engine: about 60 ms for 5,000 ids,
#: most of it holding the GIL that the consuming loop needs; the file costs about 1 ms of
#: Python and 20 ms in the engine. A server reads ``file()`` on its own disk, so it keeps
#: the bound parameter.
_LOOKUP_FILE = (
    "SELECT event_id, payload_hash FROM usage_event_keys WHERE event_id IN "
    "(SELECT id FROM file({path:String}, 'RowBinary', 'id UUID'))"
)
#: One batch's lookup and insert are small: more threads only add scheduling work on
#: the engine's side (measured on embedded chDB: -20% CPU for the lookup, -10% for the
#: insert), while the sink's own threads need the cores.
_BATCH_SETTINGS = {"max_threads": 1}
#: The insert's event_ids are unique (``plan_batch``), so ReplacingMergeTree's collapse of
#: equal sorting keys within the inserted block has nothing to do: skip that pass.
_INSERT_SETTINGS = {**_BATCH_SETTINGS, "optimize_on_insert": 0}
#: The insert carries the instant its lookup started: migration 0010 refuses it more
#: than 60 s later (a stalled or zombie writer looks up again), which bounds how late
#: a copy racing another writer can be stored.
_INSERT_COLUMNS = [*USAGE_COLUMNS, "looked_up_at"]

__all__ = ["FLOW", "SinkStats", "UsageSink"]


class UsageSink(ClickHouseSink[Pending]):
    """Consumes outcomes and loads unique usage rows into ClickHouse."""

    SOURCE: ClassVar[str] = OUTCOMES
    MODEL = LLMOutcome
    FLOW: ClassVar[str] = FLOW

    def pending(self, event: Any, record: Any) -> Pending:
        return Pending.of(event, record.value, record.topic, record.partition, record.offset)

    def write(self, batch: list[Pending]) -> None:
        """Dedup lookup, conflict quarantine and insert (blocking; runs in a thread)."""
        looked_up_at = datetime.now(UTC)
        plan = plan_batch(batch, self._stored(batch))
        if plan.conflicts:
            self.client.insert(
                "usage_conflicts",
                [conflict_row(item, known) for item, known in plan.conflicts],
                column_names=list(CONFLICT_COLUMNS),
            )
        if not plan.insert:
            self._record(plan, {}, 0.0)
            return
        columns = usage_columns(plan.insert)
        started = time.perf_counter()
        looked_up = [looked_up_at] * len(plan.insert)
        self.client.insert(data=[*columns, looked_up], context=self._insert_context)
        seconds = time.perf_counter() - started
        self._record(plan, dict(zip(USAGE_COLUMNS, columns, strict=True)), seconds)

    @cached_property
    def _insert_context(self) -> InsertContext:
        """One insert context for every batch (clickhouse-connect's reusable context).

        The table's column types are read once instead of per insert, and each
        batch's columns replace the previous ones here: a context made per insert
        kept its batch alive in a reference cycle until a garbage collection.
        """
        return self.client.create_insert_context(
            "usage_events",
            column_names=_INSERT_COLUMNS,
            column_oriented=True,
            settings=_INSERT_SETTINGS,
        )

    def _stored(self, batch: list[Pending]) -> dict[UUID, str]:
        """Payload hash already stored for each event_id of ``batch`` that is stored at all."""
        ids = list({p.event_id.int: p.event_id for p in batch}.values())  # each id once
        if self.settings.effective_clickhouse_dsn.startswith("chdb://"):
            rows = self._lookup_by_file(ids)
        else:
            rows = []
            for start in range(0, len(ids), _LOOKUP_CHUNK):
                chunk = ids[start : start + _LOOKUP_CHUNK]
                query = self.client.query(
                    _LOOKUP, parameters={"ids": chunk}, settings=_BATCH_SETTINGS
                )
                rows.extend(query.result_rows)
        return {UUID(str(eid)): _text(h) for eid, h in rows}

    def _lookup_by_file(self, ids: list[UUID]) -> Sequence[Sequence[Any]]:
        """``_LOOKUP_FILE`` on ``ids``, written to a private temporary file for the engine."""
        fd, path = tempfile.mkstemp(prefix="llmpulse-lookup-", suffix=".rowbinary")
        try:
            with os.fdopen(fd, "wb") as out:
                out.write(uuid_rowbinary(ids))
            query = self.client.query(
                _LOOKUP_FILE, parameters={"path": path}, settings=_BATCH_SETTINGS
            )
            return query.result_rows
        finally:
            os.unlink(path)

    def _record(self, plan: BatchPlan, inserted: dict[str, list[Any]], seconds: float) -> None:
        """Stats and metrics of a written batch; ``inserted`` is its columns by name."""
        self.stats.inserted += len(plan.insert)
        self.stats.duplicates += len(plan.duplicates)
        self.stats.conflicts += len(plan.conflicts)
        metrics.USAGE_DUPLICATES.inc(len(plan.duplicates))
        metrics.USAGE_CONFLICTS.inc(len(plan.conflicts))
        if not plan.insert:
            return
        metrics.SINK_BATCH_ROWS.labels(flow=FLOW).observe(len(plan.insert))
        metrics.SINK_INSERT_SECONDS.labels(flow=FLOW).observe(seconds)
        now = time.time()
        observe = metrics.EVENT_LAG_SECONDS.labels(flow=FLOW).observe
        for event_time in inserted["event_time"]:  # a histogram takes one observation per event
            observe(max(0.0, now - event_time.timestamp()))
        for status, n in Counter(inserted["status"]).items():
            metrics.LLM_REQUESTS.labels(status=status).inc(n)
        cost_by_org: dict[str, Decimal] = {}
        for org, cost in zip(inserted["org_id"], inserted["cost_usd"], strict=True):
            cost_by_org[org] = cost_by_org.get(org, Decimal(0)) + cost
        limit = self.settings.metrics_org_label_limit
        for org, cost in cost_by_org.items():
            # Prometheus counters are floats; billing never reads them.
            metrics.LLM_COST_USD.labels(organization=metrics.org_label(org, limit)).inc(float(cost))
        metrics.CACHE_REQUESTS.inc(len(plan.insert))
        metrics.CACHE_HITS.inc(sum(inserted["cache_hit"]))


def uuid_rowbinary(ids: Sequence[UUID]) -> bytes:
    """``ids`` as ClickHouse's RowBinary ``UUID``: each the two 64-bit halves, little-endian.

    ``UUID.bytes`` is big-endian, so reversing each 8 bytes gives the high half
    then the low half, each little-endian, in one C pass.
    """
    words = array("Q", b"".join(u.bytes for u in ids))
    words.byteswap()  # reverses each 8 bytes in memory, whatever the host's byte order
    return words.tobytes()


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes | bytearray) else str(value)
