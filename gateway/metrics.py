"""Prometheus metrics of the gateway SDK (labels bounded: provider names, no ids)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge

EVENTS_SPOOLED = Counter(
    "llmpulse_gateway_spooled_events_total",
    "Events written to the local disk spool because Kafka could not take them.",
    ["topic"],
)
EVENTS_DROPPED = Counter(
    "llmpulse_gateway_dropped_events_total",
    "Events lost because the local disk refused the spool write (full, read only).",
    ["topic"],
)
EVENTS_REPLAYED = Counter(
    "llmpulse_gateway_replayed_events_total",
    "Spooled events acknowledged by Kafka after replay.",
    ["topic"],
)
EMIT_QUEUE_DEPTH = Gauge(
    "llmpulse_gateway_emit_queue_depth", "Events waiting in the emitter's memory queue."
)
ATTEMPTS = Counter(
    "llmpulse_gateway_attempts_total",
    "Provider attempts by outcome (success, failure, timeout, rejected).",
    ["provider", "status"],
)
FAILOVERS = Counter(
    "llmpulse_gateway_failovers_total",
    "Requests served by another provider than the first one tried or skipped.",
    ["provider"],
)
BREAKER_VIEW_SOURCE = Counter(
    "llmpulse_gateway_breaker_decisions_total",
    "Routing decisions by the breaker view that made them (shared or local).",
    ["provider", "source"],
)
