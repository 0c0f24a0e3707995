-- Outage ledger per provider for the half-open UTC period [start, end):
-- seconds spent open (open or forced_open, clipped to the period), number of
-- openings, and when the provider was last opened. A state lasts from its
-- transition until the provider's next transition (or the period end).
SELECT
    provider,
    sumIf(
        dateDiff('microsecond',
                 greatest(at, {start:DateTime64(6, 'UTC')}),
                 least(next_at, {end:DateTime64(6, 'UTC')})) / 1e6,
        to_state IN ('open', 'forced_open') AND next_at > {start:DateTime64(6, 'UTC')}
    ) AS seconds_open,
    countIf(to_state = 'open' AND at >= {start:DateTime64(6, 'UTC')}) AS openings,
    maxIf(at, to_state = 'open') AS last_opened_at
FROM
(
    SELECT
        provider,
        to_state,
        at,
        if(n = 0, {end:DateTime64(6, 'UTC')}, next_raw) AS next_at
    FROM
    (
        SELECT
            provider,
            to_state,
            at,
            leadInFrame(at) OVER w AS next_raw,
            leadInFrame(version) OVER w AS n
        FROM breaker_transitions FINAL
        WHERE at < {end:DateTime64(6, 'UTC')}
        WINDOW w AS (PARTITION BY provider ORDER BY version
                     ROWS BETWEEN CURRENT ROW AND 1 FOLLOWING)
    )
)
GROUP BY provider
ORDER BY provider
