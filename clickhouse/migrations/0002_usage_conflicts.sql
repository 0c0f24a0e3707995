-- usage_conflicts: events whose event_id was already stored with a different
-- payload. Billing keeps the first stored version; the conflicting copy is kept
-- here for investigation and counted (llmpulse_usage_conflicts_total), never
-- silently replacing the billed row.
CREATE TABLE IF NOT EXISTS usage_conflicts
(
    event_id        UUID,
    stored_hash     FixedString(64),
    incoming_hash   FixedString(64),
    incoming_json   String,
    source_topic    LowCardinality(String),
    source_partition UInt32,
    source_offset   UInt64,
    detected_at     DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = ReplacingMergeTree
ORDER BY (event_id, incoming_hash);
