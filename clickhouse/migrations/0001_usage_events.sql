-- usage_events: one row per unique usage event (flow: llm.outcomes.v1 -> LLMOutcome
-- -> processors/usage_sink.py -> usage_events -> clickhouse/queries/usage_events__*.sql).
--
-- Exactly-once billing on at-least-once delivery, in three layers:
--  1. The usage sink is the only writer and a Kafka partition has one owner at a
--     time. Before inserting a batch it looks up the batch's event_ids and drops
--     the ones already stored (redelivery after a crash between insert and offset
--     commit, producer retries), so a replay with different batch boundaries
--     inserts nothing twice. A stored event_id whose payload_hash differs is a
--     conflict: quarantined in usage_conflicts and counted, never replaced.
--  2. ReplacingMergeTree with a sorting key that ends in event_id and contains
--     only payload fields: identical duplicates that slip through a race (a
--     zombie owner during a rebalance) collapse on merge.
--  3. Every report reads with FINAL, so a duplicate not yet merged is still
--     counted once. Rollups are computed from these rows at query time, never by
--     materialized views, which would see duplicates at insert time.
CREATE TABLE IF NOT EXISTS usage_events
(
    event_id       UUID,
    request_id     UUID,
    event_time     DateTime64(6, 'UTC'),
    org_id         LowCardinality(String),
    user_id        String,
    operation      LowCardinality(String),
    provider       LowCardinality(String),
    model          LowCardinality(String),
    prompt_name    LowCardinality(String),
    prompt_version UInt32,
    status         LowCardinality(String),
    error_class    LowCardinality(String),
    http_status    UInt16,
    latency_ms     UInt32,
    ttft_ms        Nullable(UInt32),
    input_tokens   UInt64,
    output_tokens  UInt64,
    cached_tokens  UInt64,
    cost_usd       Decimal(18, 9),
    cache_hit      Bool,
    attempt        UInt8,
    is_probe       Bool,
    payload_hash   FixedString(64),
    inserted_at    DateTime64(3, 'UTC') DEFAULT now64(3),
    INDEX idx_event_id event_id TYPE bloom_filter(0.001) GRANULARITY 4
)
ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(event_time)
ORDER BY (org_id, operation, event_time, event_id);
