"""Bytes to models exactly once, at the consumer edge; models to bytes exactly once.

``encode`` is ``llmpulse.schemas.wire.encode`` (shared with the in-app emitter).

``decode`` either returns a validated model or raises ``PoisonEvent`` with a
reason code and a detail that never contains the offending input values (they
may be secrets or prompt text); only field locations and constraint messages.
"""

from __future__ import annotations

from datetime import datetime
from typing import TypeVar

from pydantic import BaseModel, ValidationError

from llmpulse.processors.stream.redact import redact_text
from llmpulse.schemas.events import EventTimeBounds
from llmpulse.schemas.wire import encode  # re-exported: the one encoding (schemas.wire)

M = TypeVar("M", bound=BaseModel)

#: Reason codes carried in the ``dlq.reason`` header.
EMPTY_VALUE = "empty_value"
INVALID_UTF8 = "invalid_utf8"
NOT_JSON = "not_json"
NOT_AN_OBJECT = "not_an_object"
SCHEMA_VIOLATION = "schema_violation"


class PoisonEvent(Exception):
    """A message that can never be processed: it goes to the DLQ, never retried."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


def describe_validation_error(exc: ValidationError, limit: int = 5) -> str:
    """``field: message`` pairs without input values, redacted, bounded in length."""
    parts = []
    for err in exc.errors(include_input=False, include_url=False)[:limit]:
        loc = ".".join(str(p) for p in err["loc"]) or "<root>"
        parts.append(f"{loc}: {err['msg']}")
    more = exc.error_count() - limit
    if more > 0:
        parts.append(f"(+{more} more)")
    return redact_text("; ".join(parts))[:1000]


def decode(
    model: type[M],
    raw: bytes | None,
    *,
    bounds: EventTimeBounds,
    now: datetime | None = None,
) -> M:
    """Validate one message value into ``model`` or raise ``PoisonEvent``."""
    if not raw:
        raise PoisonEvent(EMPTY_VALUE, "message value is empty")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise PoisonEvent(INVALID_UTF8, f"value is not UTF-8 (byte {exc.start})") from None
    context: dict[str, object] = {EventTimeBounds.CONTEXT_KEY: bounds}
    if now is not None:
        context["now"] = now
    try:
        # Validate from the JSON text in one pass, so strict JSON rules apply: ISO
        # timestamps and UUID strings are accepted, "12" for an integer is not.
        return model.model_validate_json(text, strict=True, context=context)
    except ValidationError as exc:
        first = exc.errors(include_input=False, include_url=False)[0]
        if first["type"] == "json_invalid":
            raise PoisonEvent(NOT_JSON, f"value is not JSON: {first['msg']}") from None
        if first["type"] == "model_type" and not first["loc"]:
            raise PoisonEvent(NOT_AN_OBJECT, "value is JSON but not an object") from None
        raise PoisonEvent(SCHEMA_VIOLATION, describe_validation_error(exc)) from None


__all__ = [
    "EMPTY_VALUE",
    "INVALID_UTF8",
    "NOT_AN_OBJECT",
    "NOT_JSON",
    "SCHEMA_VIOLATION",
    "PoisonEvent",
    "decode",
    "describe_validation_error",
    "encode",
]
