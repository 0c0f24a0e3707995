-- Failovers in the half-open UTC period [start, end): requests that were tried
-- on more than one provider, counted against the provider tried first, with the
-- extra cost of the attempts after the first (the price of failing over).
-- An event_id stored with more than one payload counts once, as its billed copy
-- (the losing copies are excluded, migration 0010).
SELECT
    first_provider AS provider,
    count() AS failovers,
    sum(extra_cost) AS failover_cost_usd
FROM
(
    SELECT
        request_id,
        argMin(provider, attempt) AS first_provider,
        uniqExact(provider) AS providers,
        sumIf(toDecimal128(cost_usd, 9), attempt > 1) AS extra_cost
    FROM usage_events FINAL
    WHERE event_time >= {start:DateTime64(6, 'UTC')} AND event_time < {end:DateTime64(6, 'UTC')}
      AND (event_id, copy_hash) NOT IN (SELECT event_id, payload_hash FROM usage_event_losing_copies)
    GROUP BY request_id
    HAVING providers > 1
)
GROUP BY provider
ORDER BY provider
