-- The close record of a month, if it was closed.
SELECT period, period_start, period_end, closed_at FROM period_closes WHERE period = {period:Date}
