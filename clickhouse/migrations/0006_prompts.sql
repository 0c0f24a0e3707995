-- prompt_versions: the registry (flow: llm.prompt-versions.v1 -> PromptVersionEvent
-- -> processors/prompt_sinks.py -> prompt_versions). One row per registry event;
-- the latest event_time per (prompt_name, version) is the version's state.
-- Template content is stored here on purpose: this is the registry itself.
CREATE TABLE IF NOT EXISTS prompt_versions
(
    prompt_name    LowCardinality(String),
    version        UInt32,
    action         LowCardinality(String),
    ab_weight      Nullable(Decimal(9, 4)),
    temperature    Nullable(Decimal(9, 2)),
    max_tokens     Nullable(UInt32),
    model          String,
    tags           Array(String),
    content        String,
    system_message String,
    event_id       UUID,
    event_time     DateTime64(6, 'UTC')
)
ENGINE = ReplacingMergeTree
ORDER BY (prompt_name, version, event_time, event_id);

-- prompt_performance: closed windowed rollups (flow: llm.prompt-performance.v1 ->
-- PromptPerformance -> processors/prompt_sinks.py -> prompt_performance ->
-- clickhouse/queries/prompt_performance__*.sql). Each row is a partial from one
-- source partition (or a late-event correction); queries add partials up. A
-- re-emitted partial has the same sorting key and collapses under FINAL to the
-- copy that counted the most events (a correction may be emitted, grow, and be
-- emitted again).
CREATE TABLE IF NOT EXISTS prompt_performance
(
    prompt_name      LowCardinality(String),
    prompt_version   UInt32,
    window_seconds   UInt32,
    window_start     DateTime64(6, 'UTC'),
    source_topic     LowCardinality(String),
    source_partition UInt16,
    first_offset     UInt64,
    is_correction    Bool,
    executions       UInt64,
    successes        UInt64,
    failures         UInt64,
    latency_sum_ms   UInt64,
    latency_sq_ms    UInt64,
    latency_sketch   Map(UInt16, UInt64),
    input_tokens     UInt64,
    output_tokens    UInt64,
    cost_usd         Decimal(38, 9),
    cost_sq          Float64,
    feedback_count   UInt64,
    feedback_sum     Decimal(38, 2),
    feedback_sq      Decimal(38, 4),
    event_id         UUID,
    events_counted   UInt64 MATERIALIZED executions + feedback_count
)
ENGINE = ReplacingMergeTree(events_counted)
PARTITION BY toYYYYMM(window_start)
ORDER BY (prompt_name, prompt_version, window_seconds, window_start, source_topic,
          source_partition, is_correction, first_offset);
