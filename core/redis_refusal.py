"""Tell "Redis refused us" (credentials, ACL, TLS) from "Redis is unreachable".

An unreachable Redis is an outage: readers fall back (the gateway to its local
breakers, ``breaker status`` to the state topic) and retry. A refusal is a
configuration error that no retry fixes: a wrong password, an unknown ACL user,
a missing permission, a certificate the client does not trust or a TLS file it
cannot read. Falling back silently would hide it, so callers surface it as an
error naming ``LLMPULSE_REDIS_URL``. redis-py wraps the cause (an ``ssl`` or
file error) in its ``ConnectionError``; the whole chain is inspected here.
Pure: no I/O, shared by the workers, the command line and the gateway.
"""

from __future__ import annotations

import ssl

from redis.exceptions import (
    AuthenticationError,
    AuthenticationWrongNumberOfArgsError,
    NoPermissionError,
)

from llmpulse.core.exception_chain import chain

__all__ = ["refusal"]

#: Errors of a TLS file named in the URL (``ssl_ca_certs``, ``ssl_certfile``, ``ssl_keyfile``).
_FILE_ERRORS = (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError)


def refusal(exc: BaseException) -> str | None:
    """Why Redis refused this client, in a few words; None when it was merely unreachable.

    The text is the server's or the TLS library's reason, which never holds the
    password (redis-py never quotes its URL).
    """
    for link in chain(exc):
        if isinstance(link, AuthenticationError | AuthenticationWrongNumberOfArgsError):
            return f"authentication failed: {_first_line(link)}"
        if isinstance(link, NoPermissionError):
            return f"the ACL user lacks a permission: {_first_line(link)}"
        if isinstance(link, ssl.SSLError):
            return f"TLS failed: {_tls_reason(link)}"
        if isinstance(link, _FILE_ERRORS):
            return f"cannot read a TLS file: {link.strerror or _first_line(link)}: {link.filename}"
    return None


def _tls_reason(exc: ssl.SSLError) -> str:
    """``CERTIFICATE_VERIFY_FAILED (unable to get local issuer certificate)`` and the like.

    The attributes are set by the ``ssl`` module when it raises, not when built by hand.
    """
    reason = getattr(exc, "reason", None)
    detail = getattr(exc, "verify_message", None)
    if reason and detail:
        return f"{reason} ({detail})"
    return str(reason or _first_line(exc))


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0][:200] if lines else type(exc).__name__
