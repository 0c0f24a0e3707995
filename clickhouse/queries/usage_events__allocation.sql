-- Cost allocation and chargeback per organization and operation for the
-- half-open UTC period [start, end), as stored at {as_of}.
--
-- * Every event_id counts once, whatever its stored copies carry: of its
--   payloads (one row each under FINAL), the one with the smallest
--   (inserted_at, payload_hash), as of that insert; the other copies are in
--   usage_event_losing_copies (migration 0010) and never counted. The reference
--   is tests/billing_reference_allocation.sql, equal to the last decimal.
-- * Usage of a closed month stored after its close (late usage) is not part of
--   that month any more: it is an adjustment line (adjusts_period = the closed
--   month) in the report whose period contains its insert time.
-- * list_cost_usd_e6 is the list cost times 10^6 (token counts times USD per
--   million tokens): exact; the caller divides by 10^6 in Decimal arithmetic.
-- * Usage without an applicable price is counted as unpriced, never as zero.
-- * charge_usd applies the chargeback rate in effect at each event's time
--   (ASOF), or {default_rate} for organizations without a rate.
-- * {org} = '' means every organization; a value is bound, never spliced.
--
-- How it stays fast as usage grows:
-- * The losing copies are read once per report (a scalar), not once per use: the
--   view reads the recent inserts of every part, a fixed cost per evaluation.
-- * Usage is summed per bucket of event time before prices and rates are
--   joined. A bucket holds no price or rate change: it is a UTC day, or for a
--   day with a change inside it an hour, or for such an hour one instant. So
--   every event of a bucket has the same price row and rate row, and summing
--   first then multiplying gives the same exact decimals as per event.
-- * Whole days of an all-organization report come from the daily rollup
--   (usage_daily, migration 0008) where it provably holds the rows FINAL
--   reads and no losing copy (the rollup saw those rows too); every other day
--   of the period is read from usage_events FINAL, losing copies excluded.
-- * Adjustments (earlier months stored during the period) are found without a
--   full scan: their keys through the minmax index on inserted_at, then every
--   version of those keys through the primary key.
WITH
    (SELECT groupArray(effective_from)
     FROM (SELECT effective_from FROM prices UNION ALL SELECT effective_from FROM chargeback_rates)
    ) AS changes,
    arrayDistinct(arrayMap(t -> toDate(t), arrayFilter(t -> t != toStartOfDay(t), changes))) AS split_days,
    arrayDistinct(arrayMap(t -> toStartOfHour(t), arrayFilter(t -> t != toStartOfHour(t), changes))) AS split_hours,
    (SELECT (groupArray(period), groupArray(closed_at)) FROM period_closes) AS closes,
    -- The copies never billed (rare: a race), read once: (event_id, payload_hash) of
    -- each, and the days holding one. Both usage reads below exclude them.
    (SELECT (groupArray((event_id, payload_hash)), groupUniqArray(toDate(event_time)))
     FROM usage_event_losing_copies) AS losing,
    losing.2 AS loser_days,
    arrayMap(
        i -> toDate({start:DateTime64(6, 'UTC')}) + i,
        range(toUInt32(greatest(0, dateDiff('day', toDate({start:DateTime64(6, 'UTC')}),
                                            toDate({end:DateTime64(6, 'UTC')} - toIntervalMicrosecond(1))) + 1)))
    ) AS period_days,
    -- plan = (days the rollup answers, days read with FINAL, and the instants
    -- bounding the latter), decided once for the whole query.
    -- A month qualifies when the rows its view saw are the rows it stores, with
    -- no sort key twice (see migration 0008), none stored after {as_of}, and
    -- none stored after the month's close (it has no adjustments inside it).
    (
        SELECT tuple(
            rolled_days,
            raw_days,
            toDateTime64(if(empty(raw_days), toDate({end:DateTime64(6, 'UTC')}), arrayMin(raw_days)), 6, 'UTC'),
            toDateTime64(if(empty(raw_days), toDate({start:DateTime64(6, 'UTC')}), arrayMax(raw_days) + 1), 6, 'UTC'))
        FROM
        (
            SELECT
                arrayFilter(
                    d -> has(groupArrayIf(month, qualifies), toStartOfMonth(d))
                        AND toDateTime64(d, 6, 'UTC') >= {start:DateTime64(6, 'UTC')}
                        AND toDateTime64(d + 1, 6, 'UTC') <= {end:DateTime64(6, 'UTC')}
                        AND NOT has(split_days, d)
                        AND NOT has(loser_days, d),
                    period_days) AS rolled_days,
                arrayFilter(d -> NOT has(rolled_days, d), period_days) AS raw_days
            FROM
            (
                SELECT
                    r.month AS month,
                    r.unique_keys = 1
                        AND r.month_requests = s.stored AND s.changed = 0
                        AND r.last_insert <= {as_of:DateTime64(6, 'UTC')}
                        AND (indexOf(closes.1, r.month) = 0
                             OR r.last_insert <= closes.2[indexOf(closes.1, r.month)]) AS qualifies
                FROM
                (
                    SELECT
                        month,
                        min(day_requests = day_keys) AS unique_keys,
                        sum(day_requests) AS month_requests,
                        max(day_last_insert) AS last_insert
                    FROM
                    (
                        SELECT
                            month,
                            sum(requests) AS day_requests,
                            length(arrayDistinct(groupArrayMerge(1000000)(event_keys))) AS day_keys,
                            max(last_inserted_at) AS day_last_insert
                        FROM usage_daily
                        WHERE {org:String} = ''
                          AND month >= toStartOfMonth({start:DateTime64(6, 'UTC')})
                          AND month <= toStartOfMonth({end:DateTime64(6, 'UTC')} - toIntervalMicrosecond(1))
                        GROUP BY month, org_id, operation, day
                    )
                    GROUP BY month
                ) AS r
                LEFT JOIN
                (
                    SELECT
                        partition_id,
                        sum(rows) AS stored,
                        max(has_lightweight_delete OR data_version != min_block_number) AS changed
                    FROM system.parts
                    WHERE database = currentDatabase() AND table = 'usage_events' AND active
                    GROUP BY partition_id
                ) AS s ON toString(toYYYYMM(r.month)) = s.partition_id
                SETTINGS join_use_nulls = 0
            )
        )
    ) AS plan
SELECT
    g.org_id AS org_id,
    g.operation AS operation,
    if(g.adjusts = 0, '', toString(closes.1[g.adjusts])) AS adjusts_period,
    sum(g.n_requests) AS requests,
    sum(g.n_tokens) AS tokens,
    sum(g.sum_cost) AS cost_usd,
    sumIf(g.n_requests, p.provider IS NULL) AS unpriced_requests,
    sumIf(g.n_tokens, p.provider IS NULL) AS unpriced_tokens,
    ifNull(sumIf(
        toDecimal128(g.n_uncached_input, 0) * p.input_per_mtok
            + toDecimal128(g.n_output, 0) * p.output_per_mtok
            + toDecimal128(g.n_cached, 0) * p.cached_per_mtok,
        p.provider IS NOT NULL
    ), toDecimal128(0, 9)) AS list_cost_usd_e6,
    sum(g.sum_cost * ifNull(r.rate, {default_rate:Decimal(9, 4)})) AS charge_usd,
    arraySort(groupUniqArray(toString(ifNull(r.rate, {default_rate:Decimal(9, 4)})))) AS rates
FROM
(
    -- Rolled days, from the rollup. The check is repeated in this read: a
    -- duplicate stored since the plan was made stops the report (the caller
    -- runs it again) instead of being counted twice.
    SELECT
        org_id, operation, row.1 AS provider, row.2 AS model, toUInt64(0) AS close_index,
        toUInt64(0) AS adjusts, toDateTime64(day, 6, 'UTC') AS bucket,
        row.3 AS n_requests, row.4 AS n_tokens, row.5 AS n_uncached_input, row.6 AS n_output,
        row.7 AS n_cached, row.8 AS sum_cost
    FROM
    (
        SELECT
            org_id, operation, day,
            groupArray((provider, model, requests, sum_tokens, sum_uncached_input, sum_output,
                        sum_cached, sum_cost_usd)) AS day_rows,
            throwIf(sum(requests) != length(arrayDistinct(groupArrayMerge(1000000)(event_keys))),
                    'usage_daily gained a duplicate during the cost report; run it again') AS changed
        FROM usage_daily
        WHERE month >= toStartOfMonth({start:DateTime64(6, 'UTC')})
          AND month <= toStartOfMonth({end:DateTime64(6, 'UTC')} - toIntervalMicrosecond(1))
          AND day IN plan.1
        GROUP BY org_id, operation, day
    )
    ARRAY JOIN day_rows AS row
    WHERE changed = 0
    UNION ALL
    -- Every other day of the period: usage_events FINAL.
    SELECT
        org_id, operation, provider, model,
        indexOf(closes.1, toStartOfMonth(event_time)) AS close_index,
        if(close_index > 0 AND inserted_at > closes.2[close_index], close_index, 0) AS adjusts,
        multiIf(
            NOT has(split_days, toDate(event_time)), toDateTime64(toStartOfDay(event_time), 6, 'UTC'),
            NOT has(split_hours, toStartOfHour(event_time)), toDateTime64(toStartOfHour(event_time), 6, 'UTC'),
            event_time) AS bucket,
        count() AS n_requests,
        sum(input_tokens + output_tokens) AS n_tokens,
        sum(input_tokens - cached_tokens) AS n_uncached_input,
        sum(output_tokens) AS n_output,
        sum(cached_tokens) AS n_cached,
        sum(cost_usd) AS sum_cost
    FROM usage_events FINAL
    WHERE inserted_at <= {as_of:DateTime64(6, 'UTC')}
      AND ({org:String} = '' OR org_id = {org:String})
      AND event_time >= {start:DateTime64(6, 'UTC')} AND event_time < {end:DateTime64(6, 'UTC')}
      AND event_time >= plan.3 AND event_time < plan.4
      AND toDate(event_time) IN plan.2
      AND (adjusts = 0 OR (inserted_at >= {start:DateTime64(6, 'UTC')} AND inserted_at < {end:DateTime64(6, 'UTC')}))
      AND (event_id, copy_hash) NOT IN (SELECT arrayJoin(losing.1))
    GROUP BY org_id, operation, provider, model, close_index, adjusts, bucket
    UNION ALL
    -- Adjustment lines: usage of closed months before the period, stored during
    -- it. Their keys are found without FINAL (the minmax index on inserted_at
    -- skips what was stored before the period; the keys carry the org filter);
    -- FINAL then reads every version of just those keys, through the primary key.
    SELECT
        org_id, operation, provider, model,
        indexOf(closes.1, toStartOfMonth(event_time)) AS close_index,
        if(close_index > 0 AND inserted_at > closes.2[close_index], close_index, 0) AS adjusts,
        multiIf(
            NOT has(split_days, toDate(event_time)), toDateTime64(toStartOfDay(event_time), 6, 'UTC'),
            NOT has(split_hours, toStartOfHour(event_time)), toDateTime64(toStartOfHour(event_time), 6, 'UTC'),
            event_time) AS bucket,
        count() AS n_requests,
        sum(input_tokens + output_tokens) AS n_tokens,
        sum(input_tokens - cached_tokens) AS n_uncached_input,
        sum(output_tokens) AS n_output,
        sum(cached_tokens) AS n_cached,
        sum(cost_usd) AS sum_cost
    FROM usage_events FINAL
    WHERE (org_id, operation, event_time, event_id) IN (
            SELECT org_id, operation, event_time, event_id FROM usage_events
            WHERE event_time < {start:DateTime64(6, 'UTC')}
              AND inserted_at >= {start:DateTime64(6, 'UTC')} AND inserted_at < {end:DateTime64(6, 'UTC')}
              AND ({org:String} = '' OR org_id = {org:String}))
      AND inserted_at <= {as_of:DateTime64(6, 'UTC')}
      AND event_time < {start:DateTime64(6, 'UTC')}
      AND inserted_at >= {start:DateTime64(6, 'UTC')} AND inserted_at < {end:DateTime64(6, 'UTC')}
      AND adjusts != 0
      AND (event_id, copy_hash) NOT IN (SELECT arrayJoin(losing.1))
    GROUP BY org_id, operation, provider, model, close_index, adjusts, bucket
) AS g
ASOF LEFT JOIN (SELECT * FROM prices FINAL) AS p
    ON g.provider = p.provider AND g.model = p.model AND g.bucket >= p.effective_from
ASOF LEFT JOIN (SELECT * FROM chargeback_rates FINAL) AS r
    ON g.org_id = r.org_id AND g.bucket >= r.effective_from
GROUP BY org_id, operation, adjusts_period
ORDER BY org_id, adjusts_period, operation
SETTINGS join_use_nulls = 1
