"""Breaker flow: the fleet-wide circuit-breaker agent, its configuration, operator controls."""
