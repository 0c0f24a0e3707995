"""Pure core shared by the gateway SDK and the workers: no I/O, clocks passed in.

* ``breaker``: the circuit-breaker state machine and the breaker key rule;
* ``rollup``: windowed prompt-performance partials and the latency sketch;
* ``registry``: the prompt registry fold and its validated changes;
* ``ab_stats``: A/B statistics from mergeable moments;
* ``usage``: ``LLMOutcome`` to ``usage_events`` rows and the dedup plan.

Imports only ``llmpulse.schemas`` and the standard library (a layering test
enforces it).
"""
