-- The frozen allocation of a closed month, in the allocation query's shape.
SELECT
    org_id, operation, adjusts_period, requests, tokens, cost_usd, unpriced_requests,
    unpriced_tokens, list_cost_usd_e6, charge_usd, rates
FROM closed_allocations
WHERE period = {period:Date}
ORDER BY org_id, adjusts_period, operation
