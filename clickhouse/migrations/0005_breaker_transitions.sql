-- breaker_transitions: every breaker state change (flow: llm.breaker-transitions.v1
-- -> BreakerSnapshot -> processors/breaker_transitions_sink.py -> breaker_transitions
-- -> clickhouse/queries/breaker_transitions__*.sql). A snapshot re-sent by the agent
-- carries the same (provider, version), so ReplacingMergeTree plus FINAL keeps one.
CREATE TABLE IF NOT EXISTS breaker_transitions
(
    provider        LowCardinality(String),
    version         UInt64,
    from_state      LowCardinality(String),
    to_state        LowCardinality(String),
    at              DateTime64(6, 'UTC'),
    reason          LowCardinality(String),
    next_attempt_at Nullable(DateTime64(6, 'UTC')),
    failure_rate    Float64,
    calls_in_window UInt32,
    event_id        UUID,
    inserted_at     DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(at)
ORDER BY (provider, version);
