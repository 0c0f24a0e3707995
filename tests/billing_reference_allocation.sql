-- Cost allocation and chargeback per organization and operation for the
-- half-open UTC period [start, end), as stored at {as_of}.
--
-- * Every event_id counts once, whatever its stored copies carry (brute force:
--   every row FINAL reads of every event_id seen in the period, grouped by
--   event_id; the copy with the smallest (inserted_at, payload_hash) is billed,
--   as of its insert time).
-- * Usage of a closed month stored after its close (late usage) is not part of
--   that month any more: it is an adjustment line (adjusts_period = the closed
--   month) in the report whose period contains its insert time.
-- * list_cost_usd_e6 is the list cost times 10^6 (token counts times USD per
--   million tokens): exact; the caller divides by 10^6 in Decimal arithmetic.
-- * Usage without an applicable price is counted as unpriced, never as zero.
-- * charge_usd applies the chargeback rate in effect at each event's time
--   (ASOF), or {default_rate} for organizations without a rate.
-- * {org} = '' means every organization; a value is bound, never spliced.
SELECT
    u.org_id AS org_id,
    u.operation AS operation,
    u.adjusts_period AS adjusts_period,
    count() AS requests,
    sum(u.input_tokens + u.output_tokens) AS tokens,
    sum(toDecimal128(u.cost_usd, 9)) AS cost_usd,
    countIf(p.provider IS NULL) AS unpriced_requests,
    sumIf(u.input_tokens + u.output_tokens, p.provider IS NULL) AS unpriced_tokens,
    ifNull(sumIf(
        toDecimal128(u.input_tokens - u.cached_tokens, 0) * p.input_per_mtok
            + toDecimal128(u.output_tokens, 0) * p.output_per_mtok
            + toDecimal128(u.cached_tokens, 0) * p.cached_per_mtok,
        p.provider IS NOT NULL
    ), toDecimal128(0, 9)) AS list_cost_usd_e6,
    sum(toDecimal128(u.cost_usd, 9) * ifNull(r.rate, {default_rate:Decimal(9, 4)})) AS charge_usd,
    arraySort(groupUniqArray(toString(ifNull(r.rate, {default_rate:Decimal(9, 4)})))) AS rates
FROM
(
    SELECT
        e.org_id, e.operation, e.provider, e.model, e.event_time,
        e.input_tokens, e.output_tokens, e.cached_tokens, e.cost_usd,
        if(c.closed = 1 AND e.inserted_at > c.closed_at, toString(c.period), '') AS adjusts_period
    FROM
    (
        SELECT
            billed.1 AS org_id, billed.2 AS operation, billed.3 AS provider, billed.4 AS model,
            billed.5 AS event_time, billed.6 AS input_tokens, billed.7 AS output_tokens,
            billed.8 AS cached_tokens, billed.9 AS cost_usd, billed.10 AS inserted_at,
            toDate(toStartOfMonth(event_time)) AS month
        FROM
        (
            SELECT
                event_id,
                argMin((org_id, operation, provider, model, event_time, input_tokens, output_tokens,
                        cached_tokens, cost_usd, inserted_at), (inserted_at, payload_hash)) AS billed
            FROM usage_events FINAL
            WHERE event_id IN (
                SELECT event_id FROM usage_events
                WHERE (event_time >= {start:DateTime64(6, 'UTC')} AND event_time < {end:DateTime64(6, 'UTC')})
                   OR (inserted_at >= {start:DateTime64(6, 'UTC')} AND inserted_at < {end:DateTime64(6, 'UTC')}))
            GROUP BY event_id
        )
        WHERE inserted_at <= {as_of:DateTime64(6, 'UTC')}
          AND ({org:String} = '' OR org_id = {org:String})
          AND (
                (event_time >= {start:DateTime64(6, 'UTC')} AND event_time < {end:DateTime64(6, 'UTC')})
             OR (inserted_at >= {start:DateTime64(6, 'UTC')} AND inserted_at < {end:DateTime64(6, 'UTC')})
          )
    ) AS e
    LEFT JOIN (SELECT period, closed_at, 1 AS closed FROM period_closes) AS c ON e.month = c.period
    WHERE (adjusts_period = ''
           AND e.event_time >= {start:DateTime64(6, 'UTC')} AND e.event_time < {end:DateTime64(6, 'UTC')})
       OR (adjusts_period != ''
           AND e.inserted_at >= {start:DateTime64(6, 'UTC')} AND e.inserted_at < {end:DateTime64(6, 'UTC')})
    SETTINGS join_use_nulls = 0
) AS u
ASOF LEFT JOIN (SELECT * FROM prices FINAL) AS p
    ON u.provider = p.provider AND u.model = p.model AND u.event_time >= p.effective_from
ASOF LEFT JOIN (SELECT * FROM chargeback_rates FINAL) AS r
    ON u.org_id = r.org_id AND u.event_time >= r.effective_from
GROUP BY org_id, operation, adjusts_period
ORDER BY org_id, adjusts_period, operation
SETTINGS join_use_nulls = 1
