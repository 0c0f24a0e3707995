"""The ordered step of a stateful agent: skip, decode, apply or dead-letter, then advance.

Every event a Faust agent with state receives goes through the same steps, in
this order:

1. its input cursor classifies it (``InputCursors.step``): a replay already in
   the state, or an event past a hole being re-read, is dropped here, so
   events are applied strictly once and in offset order;
2. it is decoded with the model of its source topic;
3. a valid event is applied by that topic's handler and ends the partition's
   poison run; a poison event (it can never decode) is copied to
   ``<topic>.dlq`` and acknowledged there, then counted against the
   consecutive-poison limit, and is never applied (it must not change state);
4. last, the cursor moves past the event, so no offset is ever committed
   (commits stop at the cursor) before the event's state writes or its
   dead letter.

Steps compose like a chain whose last link commits: the handler is the only
part that differs between agents (``Route`` per source topic).
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

from pydantic import BaseModel

from llmpulse.processors.settings import Settings
from llmpulse.processors.stream.codec import PoisonEvent, decode
from llmpulse.processors.stream.dlq import DeadLetterPublisher, PoisonLimiter, SourceRecord
from llmpulse.processors.stream.faust_app import FaustProducer
from llmpulse.processors.stream.input_cursor import Step
from llmpulse.schemas.events import EventTimeBounds
from llmpulse.schemas.topics import DLQ_SUFFIX

M = TypeVar("M", bound=BaseModel)


class Cursors(Protocol):
    """What the step needs of ``InputCursors``."""

    async def step(self, topic: str, partition: int, offset: int) -> Step: ...

    def advance(self, topic: str, partition: int, offset: int) -> None: ...


class DeadLetters(Protocol):
    """What the step needs of ``DeadLetterPublisher``."""

    async def publish(self, record: SourceRecord, poison: PoisonEvent, dlq_topic: str) -> None: ...

    def poisoned(self, record: SourceRecord) -> None: ...

    def ok(self, record: SourceRecord) -> None: ...


@dataclass(frozen=True)
class Route(Generic[M]):
    """How the events of one source topic are decoded (``model``) and applied.

    ``apply`` gets the validated event and where it came from; it may be a plain
    function or a coroutine function. An exception it raises stops the agent
    (the event is neither dead-lettered nor passed by the cursor).
    """

    model: type[M]
    apply: Callable[[M, SourceRecord], Awaitable[None] | None]


def source_record(event: Any) -> SourceRecord:
    """The ``SourceRecord`` of a Faust stream event (its message's place, key and value)."""
    msg = event.message
    return SourceRecord(msg.topic, msg.partition, msg.offset, event.key, event.value)


class OrderedStep:
    """One agent's ordered step over its source topics (see the module docstring).

    ``routes`` maps each qualified source topic name to its ``Route``; an event
    of any other topic is a wiring error (``KeyError``).
    """

    def __init__(
        self,
        routes: Mapping[str, Route[Any]],
        *,
        cursors: Cursors,
        dead_letters: DeadLetters,
        bounds: EventTimeBounds,
    ) -> None:
        self._routes = dict(routes)
        self._cursors = cursors
        self._dead_letters = dead_letters
        self._bounds = bounds

    @classmethod
    def for_app(
        cls, app: Any, settings: Settings, routes: Mapping[str, Route[Any]], *, cursors: Cursors
    ) -> OrderedStep:
        """The step of an agent of Faust ``app``, configured from ``settings``.

        Poison goes to its DLQ through the app's producer, at most
        ``dlq_max_consecutive`` in a row per partition; event times are checked
        against ``event_time_bounds``.
        """
        dead_letters = DeadLetterPublisher(
            FaustProducer(app), PoisonLimiter(settings.dlq_max_consecutive)
        )
        return cls(
            routes, cursors=cursors, dead_letters=dead_letters, bounds=settings.event_time_bounds
        )

    async def __call__(self, record: SourceRecord) -> Step:
        """Process one event; ``Step.APPLY`` when it was applied or dead-lettered.

        Any other verdict means the event was skipped (nothing changed, the
        cursor did not move).
        """
        route = self._routes[record.topic]
        verdict = await self._cursors.step(record.topic, record.partition, record.offset)
        if verdict is not Step.APPLY:
            return verdict
        try:
            event = decode(route.model, record.value, bounds=self._bounds)
        except PoisonEvent as poison:
            # Never applied: poison must not change state. Raising instead would only
            # let Faust acknowledge it silently; the DLQ keeps it, acknowledged
            # before the cursor passes it.
            await self._dead_letters.publish(record, poison, f"{record.topic}{DLQ_SUFFIX}")
            self._dead_letters.poisoned(record)
        else:
            applied = route.apply(event, record)
            if inspect.isawaitable(applied):
                await applied
            self._dead_letters.ok(record)
        self._cursors.advance(record.topic, record.partition, record.offset)
        return Step.APPLY

    async def processed(self, stream: Any) -> AsyncIterator[SourceRecord]:
        """Run ``stream`` (a Faust stream) through the step; yield each event it processed.

        Yields after the cursor advanced, for work that follows an event of a
        partition (the prompt rollups' window sweep); skipped events are not
        yielded.
        """
        async for event in stream.events():
            record = source_record(event)
            if await self(record) is Step.APPLY:
                yield record

    async def run(self, stream: Any) -> None:
        """Run ``stream`` through the step until it ends (the body of a Faust agent)."""
        async for _ in self.processed(stream):
            pass


__all__ = ["Cursors", "DeadLetters", "OrderedStep", "Route", "source_record"]
