-- Billing cost flat as stored usage grows (flow: llm.outcomes.v1 -> usage sink ->
-- usage_events; the dedup lookup of processors/sinks/usage.py and the report
-- queries clickhouse/queries/usage_events__*.sql).
--
-- 1. The sink's dedup lookup asks "which of these event_ids are stored, with which
--    payload hash?" for every batch. usage_events is sorted by org and time, so no
--    index can answer that for thousands of random ids (a bloom filter cannot skip
--    granules once a batch's ids touch them all): the lookup read the whole table.
--    usage_event_keys is sorted by event_id with small granules and small
--    compression blocks, so each id costs one 128-row granule (a 2 KiB block to
--    decompress per column) instead of a share of the table. A materialized view
--    fills it from every insert into usage_events, in the same insert, so a row is
--    never stored without its key. Repeated keys (a duplicate that a race let
--    through, the backfill below) collapse on merge and are harmless before: the
--    lookup only asks whether an id exists and with which hash.
-- 2. Reports find late usage (adjustments) by insert time. A minmax index on
--    inserted_at lets those queries skip every granule stored before the report
--    period instead of scanning all partitions.
CREATE TABLE IF NOT EXISTS usage_event_keys
(
    event_id     UUID,
    payload_hash FixedString(64)
)
ENGINE = ReplacingMergeTree
ORDER BY event_id
SETTINGS index_granularity = 128, min_compress_block_size = 2048, max_compress_block_size = 2048;

CREATE MATERIALIZED VIEW IF NOT EXISTS usage_event_keys_mv TO usage_event_keys AS
SELECT event_id, payload_hash FROM usage_events;

INSERT INTO usage_event_keys SELECT event_id, payload_hash FROM usage_events;

ALTER TABLE usage_events ADD INDEX IF NOT EXISTS idx_inserted_at inserted_at TYPE minmax GRANULARITY 1;

ALTER TABLE usage_events MATERIALIZE INDEX idx_inserted_at;

ALTER TABLE usage_events DROP INDEX IF EXISTS idx_event_id;
