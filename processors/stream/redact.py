"""Redaction of credential-like values before anything is logged or dead-lettered."""

from __future__ import annotations

import re

from llmpulse.schemas.events import SECRET_PATTERNS

REDACTED = "[REDACTED]"

_SECRET_BYTES = tuple(
    re.compile(p.pattern.encode(), p.flags & ~re.UNICODE) for p in SECRET_PATTERNS
)
# JSON members whose *name* says the value is a secret, whatever the value looks like.
_SECRET_MEMBER = re.compile(
    rb'("(?:[A-Za-z_\-]*(?:api[_\-]?key|apikey|authorization|password|passwd|secret|token)'
    rb'[A-Za-z_\-]*)"\s*:\s*)"(?:[^"\\]|\\.)*"',
    re.IGNORECASE,
)


def redact_bytes(raw: bytes) -> bytes:
    """``raw`` with credential-like values and secret-named JSON members replaced."""
    out = _SECRET_MEMBER.sub(rb'\1"' + REDACTED.encode() + rb'"', raw)
    for pattern in _SECRET_BYTES:
        out = pattern.sub(REDACTED.encode(), out)
    return out


def redact_text(text: str) -> str:
    """String form of ``redact_bytes`` (for error details and log lines)."""
    return redact_bytes(text.encode("utf-8", "surrogateescape")).decode("utf-8", "replace")
