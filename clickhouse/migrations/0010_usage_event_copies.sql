-- One event_id is billed once whatever its stored copies carry (flow: llm.outcomes.v1
-- -> usage sink -> usage_events; reconciled by processors/billing/copies.py; read by
-- clickhouse/queries/usage_events__allocation.sql and usage_events__failovers.sql).
--
-- The sink stores an event_id once and quarantines a copy with another payload in
-- usage_conflicts (migration 0002). Two writers can still both pass its lookup (a
-- resend on another partition racing it, a zombie owner), and FINAL kept both copies
-- when they differed in the sorting key: reports billed both. Rule: of an event_id's
-- stored payloads (one row each under FINAL), the one with the smallest (inserted_at,
-- payload_hash) is billed, with its own insert time; the others ("losing copies") are
-- never billed. A copy stored later never displaces one already billed.
--
-- Nothing here runs per insert (a materialized view doing this cost +40% sink CPU):
-- 1. copy_hash (= payload_hash) ends usage_events' sorting key, so FINAL and merges
--    collapse identical copies only; two payloads of one id both stay visible.
--    (A column added to the sorting key cannot get its default in the same ALTER;
--    parts stored before hold one row per former key, so they stay sorted.)
-- 2. Copies can only come from writers racing, which the sink bounds: it stamps
--    looked_up_at before its lookup and the constraint below refuses an insert that
--    comes more than 60 s later (the sink retries it, looks up again and quarantines
--    the copy). A copy passed the lookup before the first copy's key was written, so
--    every copy of an event_id is stored within 60 s of its first copy, plus clock
--    skew between the sink and the server and the first insert's own duration.
--    Other writers (tests, backfills) leave looked_up_at to default: they are trusted.
-- 3. usage_event_losers: the losing copies decided by a reconcile, which looks only at
--    rows inserted after the previous reconcile's watermark and decides the events
--    whose first copy is at least 5 minutes old (all their copies are stored by then:
--    the 60 s bound plus 4 minutes for skew and slow inserts), quarantines those
--    copies in usage_conflicts (source_topic 'usage_events'), then records that
--    watermark in usage_reconciles. An undecided event therefore has every copy
--    inserted after the watermark. The horizon also bounds replication lag where
--    sinks write to different replicas (README "Scaling").
-- 4. usage_event_copies_live (a plain view, computed when read): the copies of the
--    events not yet decided, found among the rows inserted after the watermark, with
--    their winner. usage_event_losing_copies: the decided and the live losing copies,
--    which reports exclude, so a report is exact before any reconcile ran (it then
--    scans every row's insert; a reconcile keeps that scan to the recent inserts).
ALTER TABLE usage_events
    ADD COLUMN IF NOT EXISTS copy_hash FixedString(64),
    MODIFY ORDER BY (org_id, operation, event_time, event_id, copy_hash);

ALTER TABLE usage_events MODIFY COLUMN copy_hash DEFAULT payload_hash;

ALTER TABLE usage_events ADD COLUMN IF NOT EXISTS looked_up_at DateTime64(3, 'UTC') DEFAULT inserted_at;

ALTER TABLE usage_events ADD CONSTRAINT IF NOT EXISTS stored_soon_after_lookup
    CHECK inserted_at <= looked_up_at + toIntervalSecond(60);

CREATE TABLE IF NOT EXISTS usage_event_losers
(
    event_id      UUID,
    payload_hash  FixedString(64),
    org_id        LowCardinality(String),
    operation     LowCardinality(String),
    event_time    DateTime64(6, 'UTC'),
    inserted_at   DateTime64(3, 'UTC'),
    winner_hash   FixedString(64),
    reconciled_at DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = ReplacingMergeTree
ORDER BY (event_id, payload_hash);

CREATE TABLE IF NOT EXISTS usage_reconciles
(
    reconciled_through DateTime64(3, 'UTC'),
    ran_at             DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = MergeTree
ORDER BY reconciled_through;

-- Rows inserted after the watermark are found through the minmax index on
-- inserted_at (migration 0007); every version of their keys is then read with
-- FINAL through the primary key, as the allocation query's adjustments are.
CREATE VIEW IF NOT EXISTS usage_event_copies_live AS
WITH (SELECT max(reconciled_through) FROM usage_reconciles) AS reconciled_through
SELECT
    event_id, payload_hash, org_id, operation, event_time, inserted_at,
    argMin(payload_hash, (inserted_at, payload_hash)) OVER (PARTITION BY event_id) AS winner_hash,
    min(inserted_at) OVER (PARTITION BY event_id) AS winner_inserted_at
FROM usage_events FINAL
WHERE (org_id, operation, event_time, event_id) IN (
    SELECT org_id, operation, event_time, event_id FROM usage_events
    WHERE inserted_at > reconciled_through
      AND event_id IN (
          SELECT event_id FROM usage_events
          WHERE inserted_at > reconciled_through
          GROUP BY event_id
          HAVING uniqExact(payload_hash) > 1)
      AND event_id NOT IN (SELECT event_id FROM usage_event_losers));

CREATE VIEW IF NOT EXISTS usage_event_losing_copies AS
SELECT event_id, payload_hash, event_time FROM usage_event_losers
UNION ALL
SELECT event_id, payload_hash, event_time FROM usage_event_copies_live
WHERE payload_hash != winner_hash;
