"""Pure core shared by the gateway SDK and the workers: no I/O, clocks passed in.

* ``breaker``: the circuit-breaker state machine and the breaker key rule;
* ``rollup``: windowed prompt-performance partials and the latency sketch;
* ``registry``: the prompt registry fold and its validated changes;
* ``ab_stats``: A/B statistics from mergeable moments;
* ``usage``: ``LLMOutcome`` to ``usage_events`` rows and the dedup plan.

Imports only ``llmpulse.schemas`` and the standard library (a layering test
enforces it).

Errors: one class, ``registry.RegistryError`` (a ``ValueError``): a registry
change the rules refuse (a version that is not the next one, weights over 1, ...);
nothing has been written when it is raised. Everything else here is total over
validated inputs.
"""
