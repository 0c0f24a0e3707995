-- Period close: a month's allocation frozen at close time. Rows are inserted
-- once by `llmpulse report close` and never updated (the command refuses a
-- period that is already closed). Usage for a closed period that is stored
-- after closed_at (usage_events.inserted_at) is reported as an adjustment in
-- the report whose period contains its insert time, so each late event is
-- billed exactly once and the snapshot never changes.
CREATE TABLE IF NOT EXISTS period_closes
(
    period       Date,
    period_start DateTime64(6, 'UTC'),
    period_end   DateTime64(6, 'UTC'),
    closed_at    DateTime64(6, 'UTC')
)
ENGINE = MergeTree
ORDER BY period;

CREATE TABLE IF NOT EXISTS closed_allocations
(
    period            Date,
    org_id            LowCardinality(String),
    operation         LowCardinality(String),
    adjusts_period    String,
    requests          UInt64,
    tokens            UInt64,
    cost_usd          Decimal(38, 9),
    list_cost_usd_e6  Decimal(38, 9),
    unpriced_requests UInt64,
    unpriced_tokens   UInt64,
    charge_usd        Decimal(38, 13),
    rates             Array(String),
    closed_at         DateTime64(6, 'UTC')
)
ENGINE = MergeTree
ORDER BY (period, org_id, adjusts_period, operation);
