"""The wire bytes of every event: one encoding for every producer.

The workers (``llmpulse.processors.stream.codec``, which re-exports ``encode``)
and the in-app emitter (``llmpulse.gateway.emitter``) both publish events;
they must put the same bytes on a topic, so the encoding is spelled only here.
Decoding stays at the consumer edge (``llmpulse.processors.stream.codec.decode``),
which owns the poison handling.
"""

from __future__ import annotations

from pydantic import BaseModel


def encode(event: BaseModel) -> bytes:
    """Canonical JSON bytes of ``event``: UTF-8, Decimals as plain strings, UTC timestamps.

    Deterministic: the same event always gives the same bytes (field order is
    the model's), so a spooled and re-sent event is byte-identical.
    """
    return event.model_dump_json().encode("utf-8")


__all__ = ["encode"]
