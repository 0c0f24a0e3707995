-- Per version of {prompt} over windows of {window_seconds} starting in the
-- half-open UTC period [start, end): sufficient statistics for the comparison
-- (sums and sums of squares, merged latency sketch). Partials and late
-- corrections add up; FINAL drops re-emitted copies.
SELECT
    prompt_version,
    sum(executions) AS executions,
    sum(successes) AS successes,
    sum(failures) AS failures,
    sum(latency_sum_ms) AS latency_sum_ms,
    sum(latency_sq_ms) AS latency_sq_ms,
    sumMap(latency_sketch) AS latency_sketch,
    sum(input_tokens) AS input_tokens,
    sum(output_tokens) AS output_tokens,
    sum(cost_usd) AS cost_usd,
    sum(cost_sq) AS cost_sq,
    sum(feedback_count) AS feedback_count,
    sum(feedback_sum) AS feedback_sum,
    sum(feedback_sq) AS feedback_sq,
    countIf(is_correction) AS corrections
FROM prompt_performance FINAL
WHERE prompt_name = {prompt:String}
  AND window_seconds = {window_seconds:UInt32}
  AND window_start >= {start:DateTime64(6, 'UTC')}
  AND window_start < {end:DateTime64(6, 'UTC')}
GROUP BY prompt_version
ORDER BY prompt_version
