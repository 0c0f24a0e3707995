"""llmpulse workers (needs ``llmpulse[worker]``).

* ``settings``: the one ``Settings`` every worker and command reads;
* ``stream``: the stream edge (codec, DLQ, Kafka, Faust app, input cursors, the
  ordered decode -> DLQ -> apply step, ClickHouse access, metrics, topics);
* ``breaker``, ``prompts``, ``billing``, ``sinks``: one subpackage per flow;
* ``supervisor``: worker processes (``llmpulse worker all``).

Never imports ``llmpulse.gateway``, ``llmpulse.devstack`` or
``llmpulse.simulator`` (a layering test enforces it).
"""
