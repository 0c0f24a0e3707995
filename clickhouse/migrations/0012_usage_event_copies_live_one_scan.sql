-- The undecided copies, found with one read of the recent inserts (flow: llm.outcomes.v1
-- -> usage sink -> usage_events; read by processors/billing/copies.py and, through
-- usage_event_losing_copies, by every cost report).
--
-- Migration 0010's view read the rows inserted after the reconcile watermark twice: once
-- for the event_ids with two payloads, once more for their sorting keys. That read walks
-- the minmax index of every part (about 15 ms at 100M stored rows, even when nothing was
-- inserted since), and a report pays it on every evaluation. Here one read groups the
-- recent rows by event_id and keeps the keys of those with two payloads. Same rows out:
-- every copy of an undecided event is inserted after the watermark (migration 0010, 3).
CREATE OR REPLACE VIEW usage_event_copies_live AS
WITH (SELECT max(reconciled_through) FROM usage_reconciles) AS reconciled_through
SELECT
    event_id, payload_hash, org_id, operation, event_time, inserted_at,
    argMin(payload_hash, (inserted_at, payload_hash)) OVER (PARTITION BY event_id) AS winner_hash,
    min(inserted_at) OVER (PARTITION BY event_id) AS winner_inserted_at
FROM usage_events FINAL
WHERE (org_id, operation, event_time, event_id) IN (
    SELECT key.1, key.2, key.3, event_id
    FROM
    (
        SELECT event_id, groupUniqArray((org_id, operation, event_time)) AS keys
        FROM usage_events
        WHERE inserted_at > reconciled_through
        GROUP BY event_id
        HAVING uniqExact(payload_hash) > 1
    )
    ARRAY JOIN keys AS key
    WHERE event_id NOT IN (SELECT event_id FROM usage_event_losers));
