"""Prometheus metrics of every llmpulse flow, defined once.

The seed's names are kept so its Grafana dashboard works as written
(``circuit_breaker_state``, ``llm_requests_total``, ``llm_cost_usd_total``,
``cache_hits_total``, ``cache_requests_total``). Labels stay bounded: flows,
topics, reasons, providers and a capped set of organizations, never ids.

``circuit_breaker_state`` values: 0 closed, 1 half_open, 2 open, 3 forced_open,
4 disabled (``llmpulse.schemas.events.BREAKER_STATE_GAUGE``).
"""

from __future__ import annotations

import socket
from threading import Lock

from prometheus_client import Counter, Gauge, Histogram, start_http_server

# --- seed metrics ------------------------------------------------------------
CIRCUIT_BREAKER_STATE = Gauge(
    "circuit_breaker_state",
    "Breaker state per provider: 0 closed, 1 half_open, 2 open, 3 forced_open, 4 disabled",
    ["provider"],
)
LLM_REQUESTS = Counter("llm_requests", "Provider attempts seen, by outcome status", ["status"])
LLM_COST_USD = Counter(
    "llm_cost_usd", "Reported cost in USD by organization (capped label set)", ["organization"]
)
CACHE_HITS = Counter("cache_hits", "Outcomes served from a cache")
CACHE_REQUESTS = Counter("cache_requests", "Outcomes that could have been served from a cache")

# --- processing metrics --------------------------------------------------------
EVENTS_CONSUMED = Counter("llmpulse_events_consumed", "Messages read from Kafka", ["flow", "topic"])
DLQ_EVENTS = Counter(
    "llmpulse_dlq_events", "Messages sent to a dead-letter topic", ["topic", "reason"]
)
EVENT_LAG_SECONDS = Histogram(
    "llmpulse_event_lag_seconds",
    "Seconds from an event's event_time to its result being visible",
    ["flow"],
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 300, 3600),
)
CONSUMER_LAG = Gauge(
    "llmpulse_consumer_lag_messages",
    "Messages behind the log end, summed over partitions",
    ["flow"],
)
SINK_BATCH_ROWS = Histogram(
    "llmpulse_sink_batch_rows",
    "Rows per ClickHouse insert",
    ["flow"],
    buckets=(1, 10, 100, 500, 1000, 2000, 5000, 10000, 50000),
)
SINK_INSERT_SECONDS = Histogram(
    "llmpulse_sink_insert_seconds", "Seconds per acknowledged ClickHouse insert", ["flow"]
)
SINK_UP = Gauge(
    "llmpulse_sink_up",
    "1 while a sink consumes its topic, 0 once it stopped on the consecutive-poison limit",
    ["flow"],
)
SINK_RETRIES = Counter(
    "llmpulse_sink_retries", "ClickHouse operations retried after a transient error", ["flow"]
)
SOURCE_HOLES = Counter(
    "llmpulse_source_holes",
    "Events delivered past an undelivered offset; the partition was re-read from it",
    ["flow", "topic"],
)
SOURCE_EXPIRED = Counter(
    "llmpulse_source_expired",
    "Events deleted by topic retention before the worker applied them (lost)",
    ["flow", "topic"],
)
LATE_EVENTS = Counter(
    "llmpulse_late_events", "Events that arrived after their window or period closed", ["flow"]
)
DEDUP_HORIZON_EXCEEDED = Counter(
    "llmpulse_dedup_horizon_exceeded",
    "Events older than the resend-check horizon of a rollup or breaker: applied unchecked",
    ["flow"],
)
USAGE_DUPLICATES = Counter(
    "llmpulse_usage_duplicates", "Usage events dropped because their event_id was already stored"
)
USAGE_CONFLICTS = Counter(
    "llmpulse_usage_conflicts", "Usage events quarantined: same event_id, different payload"
)
BREAKER_TRANSITIONS = Counter(
    "llmpulse_breaker_transitions",
    "Breaker state transitions",
    ["provider", "from_state", "to_state"],
)

_OTHER_ORG = "__other__"
_org_lock = Lock()
_orgs_seen: set[str] = set()


def org_label(org_id: str, limit: int) -> str:
    """Organization label value, folding orgs beyond the first ``limit`` into ``__other__``."""
    with _org_lock:
        if org_id in _orgs_seen:
            return org_id
        if len(_orgs_seen) < limit:
            _orgs_seen.add(org_id)
            return org_id
    return _OTHER_ORG


def serve(port: int, host: str = "127.0.0.1") -> int:
    """Expose ``/metrics`` on ``host:port`` (``port`` 0 picks a free one); returns the port."""
    if port == 0:
        with socket.socket() as s:
            s.bind((host, 0))
            port = int(s.getsockname()[1])
    start_http_server(port, addr=host)
    return port
