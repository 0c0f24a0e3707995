-- Billing dimensions, all effective-dated and reloadable (ReplacingMergeTree on
-- the natural key, newest load wins; queries read them with FINAL).
--
-- prices: list price per provider and model in USD per million tokens, by kind.
-- A row applies from effective_from until the next row of the same provider and
-- model (reports join usage to it with ASOF on event_time). Usage with no
-- applicable row is reported as unpriced, never as zero.
CREATE TABLE IF NOT EXISTS prices
(
    provider        LowCardinality(String),
    model           LowCardinality(String),
    effective_from  DateTime64(6, 'UTC'),
    input_per_mtok  Decimal(18, 9),
    output_per_mtok Decimal(18, 9),
    cached_per_mtok Decimal(18, 9),
    loaded_at       DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = ReplacingMergeTree(loaded_at)
ORDER BY (provider, model, effective_from);

-- chargeback_rates: multiplier applied to an organization's reported cost, from
-- effective_from on (ASOF by event_time). Organizations without a row use the
-- configured default (1.2, a 20% markup, as in the original design).
CREATE TABLE IF NOT EXISTS chargeback_rates
(
    org_id         LowCardinality(String),
    effective_from DateTime64(6, 'UTC'),
    rate           Decimal(9, 4),
    loaded_at      DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = ReplacingMergeTree(loaded_at)
ORDER BY (org_id, effective_from);

-- organizations: display names (usage of an org missing here shows its id).
CREATE TABLE IF NOT EXISTS organizations
(
    org_id    LowCardinality(String),
    name      String,
    loaded_at DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = ReplacingMergeTree(loaded_at)
ORDER BY org_id;
