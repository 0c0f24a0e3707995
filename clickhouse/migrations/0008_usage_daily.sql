-- usage_daily: usage summed per organization, operation, UTC day, provider and
-- model (flow: llm.outcomes.v1 -> usage sink -> usage_events -> this view ->
-- clickhouse/queries/usage_events__allocation.sql), so a month's report reads
-- thousands of rows instead of every event of the month.
--
-- A materialized view sees every row inserted into usage_events, duplicates
-- included (a race between two sink owners, a retried insert whose keys were
-- lost with a failed view, a direct insert): it cannot know what FINAL will
-- drop. So the rollup is used only where it is proven to hold the rows FINAL
-- reads, and the allocation query checks that on every run:
--  * event_keys keeps a 64-bit hash of each row's sort key (event_time,
--    event_id; org and operation are the rollup key). A day whose requests
--    exceed its distinct hashes saw some sort key twice; so does a day where
--    two different keys share a hash, which only costs the fast path. A day
--    keeps at most a million hashes per organization and operation (bounded
--    states, merges that cannot fail an insert); a month with a busier day is
--    read with FINAL.
--  * requests summed over a month must equal the rows stored in that month's
--    usage_events partition (system.parts): a view write that failed or a
--    duplicate merged away changes one count and not the other.
--  * last_inserted_at bounds `as_of` and the month's close (late usage).
-- Anything else falls back to reading usage_events with FINAL.
--
-- Token sums are UInt64/Int64 like the report's token totals: exact below
-- 9.2e18 tokens per organization, operation, model and day.
CREATE TABLE IF NOT EXISTS usage_daily
(
    month              Date,
    org_id             LowCardinality(String),
    operation          LowCardinality(String),
    day                Date,
    provider           LowCardinality(String),
    model              LowCardinality(String),
    requests           SimpleAggregateFunction(sum, UInt64),
    sum_tokens         SimpleAggregateFunction(sum, UInt64),
    sum_uncached_input SimpleAggregateFunction(sum, Int64),
    sum_output         SimpleAggregateFunction(sum, UInt64),
    sum_cached         SimpleAggregateFunction(sum, UInt64),
    sum_cost_usd       SimpleAggregateFunction(sum, Decimal(38, 9)),
    last_inserted_at   SimpleAggregateFunction(max, DateTime64(3, 'UTC')),
    event_keys         AggregateFunction(groupArray(1000000), UInt64)
)
ENGINE = AggregatingMergeTree
PARTITION BY month
ORDER BY (org_id, operation, day, provider, model);

CREATE MATERIALIZED VIEW IF NOT EXISTS usage_daily_mv TO usage_daily AS
SELECT
    toStartOfMonth(event_time) AS month,
    org_id,
    operation,
    toDate(event_time) AS day,
    provider,
    model,
    count() AS requests,
    sum(input_tokens + output_tokens) AS sum_tokens,
    sum(input_tokens - cached_tokens) AS sum_uncached_input,
    sum(output_tokens) AS sum_output,
    sum(cached_tokens) AS sum_cached,
    sum(cost_usd) AS sum_cost_usd,
    max(inserted_at) AS last_inserted_at,
    groupArrayState(1000000)(cityHash64(event_time, event_id)) AS event_keys
FROM usage_events
GROUP BY month, org_id, operation, day, provider, model;

-- Usage stored before this migration. Rows inserted while it runs may be
-- counted twice, which the checks above see (the month falls back).
INSERT INTO usage_daily
SELECT
    toStartOfMonth(event_time) AS month,
    org_id,
    operation,
    toDate(event_time) AS day,
    provider,
    model,
    count() AS requests,
    sum(input_tokens + output_tokens) AS sum_tokens,
    sum(input_tokens - cached_tokens) AS sum_uncached_input,
    sum(output_tokens) AS sum_output,
    sum(cached_tokens) AS sum_cached,
    sum(cost_usd) AS sum_cost_usd,
    max(inserted_at) AS last_inserted_at,
    groupArrayState(1000000)(cityHash64(event_time, event_id)) AS event_keys
FROM usage_events
GROUP BY month, org_id, operation, day, provider, model;
