-- Requests, tokens and reported cost per organization and operation for the
-- half-open UTC period [start, end). FINAL: every unique event_id counts once.
SELECT
    org_id,
    operation,
    count() AS requests,
    sum(input_tokens + output_tokens) AS tokens,
    sum(cost_usd) AS cost_usd
FROM usage_events FINAL
WHERE event_time >= {start:DateTime64(6, 'UTC')}
  AND event_time < {end:DateTime64(6, 'UTC')}
GROUP BY org_id, operation
ORDER BY org_id, operation
