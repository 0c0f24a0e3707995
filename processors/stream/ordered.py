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

The agents take their records a fetched partition batch at a time (``batch``,
installed with ``faust_app.deliver_batches``): the same steps per event, but
consecutive events are applied without asking the cursor again, the agent
writes the batch's state once per touched key (``flush``), and only then does
the cursor move, once per batch.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

from faust.types import TP
from pydantic import BaseModel

from llmpulse.processors.settings import Settings
from llmpulse.processors.stream.codec import PoisonEvent, decode
from llmpulse.processors.stream.dlq import DeadLetterPublisher, PoisonLimiter, Record
from llmpulse.processors.stream.faust_app import FaustProducer
from llmpulse.processors.stream.input_cursor import Step
from llmpulse.schemas.events import EventTimeBounds
from llmpulse.schemas.topics import DLQ_SUFFIX

M = TypeVar("M", bound=BaseModel)

#: ``(topic, partition, records of the run)``: write the run's state, before its cursor moves.
Flush = Callable[[str, int, Sequence[Record]], Awaitable[None]]


async def _nothing_to_flush(topic: str, partition: int, applied: Sequence[Record]) -> None:
    return None


class Cursors(Protocol):
    """What the step needs of ``InputCursors``."""

    async def step(self, topic: str, partition: int, offset: int) -> Step: ...

    def advance(self, topic: str, partition: int, offset: int) -> None: ...

    def position(self, tp: TP) -> int | None: ...


class DeadLetters(Protocol):
    """What the step needs of ``DeadLetterPublisher``."""

    async def publish(self, record: Record, poison: PoisonEvent, dlq_topic: str) -> None: ...

    def poisoned(self, record: Record) -> None: ...

    def ok(self, record: Record) -> None: ...


@dataclass(frozen=True)
class Route(Generic[M]):
    """How the events of one source topic are decoded (``model``) and applied.

    ``apply`` gets the validated event and where it came from; it returns None
    when it is done, or an awaitable when it must wait (a coroutine function
    qualifies; so does a plain function that returns a coroutine only on its
    rare slow path). An exception it raises stops the agent (the event is
    neither dead-lettered nor passed by the cursor).
    """

    model: type[M]
    apply: Callable[[M, Record], Awaitable[None] | None]


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
        flush: Flush = _nothing_to_flush,
    ) -> None:
        self._routes = dict(routes)
        self._cursors = cursors
        self._dead_letters = dead_letters
        self._bounds = bounds
        self._flush = flush
        self.topics = frozenset(self._routes)

    @classmethod
    def for_app(
        cls,
        app: Any,
        settings: Settings,
        routes: Mapping[str, Route[Any]],
        *,
        cursors: Cursors,
        flush: Flush = _nothing_to_flush,
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
            routes,
            cursors=cursors,
            dead_letters=dead_letters,
            bounds=settings.event_time_bounds,
            flush=flush,
        )

    async def __call__(self, record: Record) -> Step:
        """Process one event; ``Step.APPLY`` when it was applied or dead-lettered.

        Any other verdict means the event was skipped (nothing changed, the
        cursor did not move).
        """
        verdict = await self._cursors.step(record.topic, record.partition, record.offset)
        if verdict is Step.APPLY:
            await self._run(record.topic, record.partition, (record,))
        return verdict

    async def batch(self, tp: TP, records: Sequence[Record]) -> None:
        """Process one fetched batch of ``tp`` (aiokafka ``ConsumerRecord`` s, offset order).

        A run of consecutive offsets is applied without asking the cursor again,
        then flushed and the cursor moved once; any other offset goes through
        the cursor (a replay is skipped, a hole ends the batch: the consumer is
        sought back to the cursor and the rest of the batch lies beyond it).
        """
        topic, partition = tp.topic, tp.partition
        i, n = 0, len(records)
        while i < n:
            verdict = await self._cursors.step(topic, partition, records[i].offset)
            if verdict is Step.HOLE:
                return
            if verdict is Step.REPLAY:
                i += 1
                continue
            end = i + 1
            while end < n and records[end].offset == records[end - 1].offset + 1:
                end += 1
            await self._run(topic, partition, records[i:end])
            i = end

    def position(self, tp: TP) -> int | None:
        """The offset that may be committed for ``tp``: its cursor."""
        return self._cursors.position(tp)

    async def _run(self, topic: str, partition: int, run: Sequence[Record]) -> None:
        """Decode and apply (or dead-letter) a run of consecutive offsets, flush, advance.

        The hot path of every stateful agent: the consumed record itself is
        handed to the handler, and a handler returns an awaitable only when it
        must wait.
        """
        route = self._routes[topic]
        model, apply, bounds = route.model, route.apply, self._bounds
        after_poison = True  # a poison run may have ended the previous run
        for record in run:
            try:
                event = decode(model, record.value, bounds=bounds)
            except PoisonEvent as poison:
                await self._dead_letter(record, poison)
                after_poison = True
                continue
            pending = apply(event, record)
            if pending is not None:
                await pending
            if after_poison:
                self._dead_letters.ok(record)
                after_poison = False
        await self._flush(topic, partition, run)
        self._cursors.advance(topic, partition, run[-1].offset)

    async def _dead_letter(self, record: Record, poison: PoisonEvent) -> None:
        # Never applied: poison must not change state. Raising instead would only
        # let Faust acknowledge it silently; the DLQ keeps it, acknowledged
        # before the cursor passes it.
        await self._dead_letters.publish(record, poison, f"{record.topic}{DLQ_SUFFIX}")
        self._dead_letters.poisoned(record)


__all__ = ["Cursors", "DeadLetters", "Flush", "OrderedStep", "Route"]
