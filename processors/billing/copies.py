"""Reconcile stored copies of one event_id: decide once which copy is billed.

Two writers that both passed the usage sink's lookup (a resend on another
partition racing it, a zombie owner) can store one event_id twice with different
payloads. Every report bills the copy with the smallest (inserted_at,
payload_hash) and excludes the others; migration 0010 explains why that is
complete. Reports find undecided copies themselves (``usage_event_copies_live``
scans the rows inserted since the last reconcile), so they are exact whether or
not a reconcile ran; a reconcile records the decisions (``usage_event_losers``,
and the losing copies in ``usage_conflicts``, the sink's quarantine) and moves
the watermark, which keeps that scan to recent inserts. It is cheap (it reads
only what was inserted since the previous run) and idempotent, so any process
may run it at any time: ``cost_report`` and ``close_period`` do.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from clickhouse_connect.driver.client import Client

#: Age of an event's first copy after which all its copies are stored: the sink's
#: 60 s lookup-to-insert bound (the constraint of migration 0010) plus 4 minutes
#: for clock skew between sink and server and for a slow insert.
RACE_HORIZON = timedelta(minutes=5)

_WATERMARK = "SELECT max(reconciled_through), now64(3) FROM usage_reconciles"
#: The losing copies of the events whose first copy is old enough, recorded.
_RECORD = """
    INSERT INTO usage_event_losers
        (org_id, operation, event_time, event_id, payload_hash, inserted_at, winner_hash)
    SELECT org_id, operation, event_time, event_id, payload_hash, inserted_at, winner_hash
    FROM usage_event_copies_live
    WHERE payload_hash != winner_hash AND winner_inserted_at <= {through:DateTime64(3, 'UTC')}
"""
#: Recorded losing copies not yet in the quarantine, as stored (read by primary key).
_QUARANTINE = """
    INSERT INTO usage_conflicts
        (event_id, stored_hash, incoming_hash, incoming_json, source_topic, source_partition,
         source_offset)
    SELECT e.event_id, l.winner_hash, e.payload_hash, e.json, 'usage_events', 0, 0
    FROM
    (
        SELECT event_id, payload_hash,
               formatRowNoNewline('JSONEachRow', * EXCEPT (copy_hash, looked_up_at)) AS json
        FROM usage_events FINAL
        WHERE (org_id, operation, event_time, event_id, copy_hash) IN (
            SELECT org_id, operation, event_time, event_id, payload_hash FROM usage_event_losers
            WHERE (event_id, payload_hash) NOT IN (
                SELECT event_id, incoming_hash FROM usage_conflicts))
    ) AS e
    INNER JOIN usage_event_losers AS l
        ON e.event_id = l.event_id AND e.payload_hash = l.payload_hash
"""
#: Last: a reader that sees the new watermark sees the decisions. A run that died
#: before it is repeated by the next one (equal rows collapse, the quarantine
#: takes only what it lacks).
_ADVANCE = """
    INSERT INTO usage_reconciles (reconciled_through) VALUES ({through:DateTime64(3, 'UTC')})
"""


def reconcile(client: Client, now: datetime | None = None) -> datetime:
    """Decide the events whose first copy is ``RACE_HORIZON`` old; returns the new watermark.

    ``now`` defaults to the server's clock (the one that stamps ``inserted_at``).
    """
    stored, server_now = client.query(_WATERMARK).result_rows[0]
    watermark: datetime = stored.replace(tzinfo=UTC)
    through = (now or server_now.replace(tzinfo=UTC)) - RACE_HORIZON
    if through <= watermark:
        return watermark
    params = {"through": through}
    for statement in (_RECORD, _QUARANTINE, _ADVANCE):
        client.command(statement, parameters=params)
    return through.astimezone(UTC)
