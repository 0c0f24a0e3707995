"""Walk an exception's chain: clients wrap the cause that tells what went wrong.

redis-py wraps a TLS or file error in its ``ConnectionError``, aiokafka a
refused handshake in ``KafkaConnectionError``; the refusal checks of
``kafka_security`` and ``redis_refusal`` look through the whole chain.
"""

from __future__ import annotations

from collections.abc import Iterator

__all__ = ["chain"]


def chain(exc: BaseException) -> Iterator[BaseException]:
    """``exc``, then its causes and contexts (each once)."""
    seen: set[int] = set()
    link: BaseException | None = exc
    while link is not None and id(link) not in seen:
        seen.add(id(link))
        yield link
        link = link.__cause__ or link.__context__
