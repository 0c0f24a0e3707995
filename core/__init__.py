"""Core shared by the gateway SDK and the workers: pure logic (no I/O, clocks passed in).

* ``breaker``: the circuit-breaker state machine and the breaker key rule;
* ``rollup``: windowed prompt-performance partials and the latency sketch;
* ``registry``: the prompt registry fold and its validated changes;
* ``ab_stats``: A/B statistics from mergeable moments;
* ``usage``: ``LLMOutcome`` to ``usage_events`` rows and the dedup plan;
* ``kafka_security``: the Kafka clients' security settings (``KafkaSecurity``,
  validated together) and the preflight that tells a broker refusing them from
  an unreachable one. The one module with I/O, only when called: validating a
  ``KafkaSecurity`` checks that the files it names are readable,
  ``KafkaSecurity.ssl_context`` reads them, ``preflight`` connects to Kafka
  (the workers and the gateway both need it, and share only the core);
* ``redis_refusal``: tells a Redis that refused the client (credentials, ACL,
  TLS) from one that is unreachable, for every Redis reader;
* ``exception_chain``: an exception's causes, which both refusal checks read.

Imports only ``llmpulse.schemas``, the standard library and, in
``kafka_security``, pydantic and aiokafka, in ``redis_refusal``, redis's
exception classes (dependencies of the light install; a layering test enforces it).

Errors: ``registry.RegistryError`` (a ``ValueError``): a registry
change the rules refuse (a version that is not the next one, weights over 1, ...);
nothing has been written when it is raised; and
``kafka_security.KafkaSecurityError`` (a ``ValueError`` naming the
``LLMPULSE_KAFKA_*`` setting to fix): Kafka refused the client, or a TLS file
cannot be loaded. Everything else here is total over validated inputs.
"""
