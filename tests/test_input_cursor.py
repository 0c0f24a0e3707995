"""Input cursors: events applied strictly in offset order, holes re-read, commits held."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from types import SimpleNamespace
from typing import Any

from faust.types import TP
from hypothesis import given
from hypothesis import strategies as st

from llmpulse.processors.stream import metrics
from llmpulse.processors.stream.faust_app import ChangelogFirstTransport
from llmpulse.processors.stream.input_cursor import (
    CursorStore,
    InputCursors,
    MemoryCursors,
    Step,
    TableCursors,
    cursor_key,
    is_cursor_key,
    step,
)


class _FakeConsumer:
    def __init__(self, earliest: int = 0, committed: int | None = None) -> None:
        self.earliest = earliest
        self.committed_offset = committed
        self.seeks: list[tuple[TP, int]] = []
        self.refuse_seeks = False

    async def seek(self, tp: TP, offset: int) -> None:
        self.seeks.append((tp, offset))
        if self.refuse_seeks:
            raise RuntimeError("No current assignment for partition")

    async def earliest_offsets(self, *tps: TP) -> dict[TP, int]:
        return {tp: self.earliest for tp in tps}

    async def committed(self, tp: TP) -> int | None:
        return self.committed_offset


class _Clock:
    now = 100.0

    def __call__(self) -> float:
        return self.now


class _FakeApp:
    """What InputCursors uses of a Faust app: consumer, revoke signal, timer, transport."""

    def __init__(self, consumer: _FakeConsumer) -> None:
        self.consumer = consumer
        self.revoked: list[Callable[..., Awaitable[None]]] = []
        self.timers: list[Callable[[], Awaitable[None]]] = []
        self.transport = ChangelogFirstTransport.__new__(ChangelogFirstTransport)
        self.on_partitions_revoked = SimpleNamespace(connect=self.revoked.append)

    def timer(self, seconds: float) -> Callable[[Any], Any]:
        return self.timers.append


class _Store(dict[str, Any]):
    """A Faust memory store's data: its keys and the partition of each."""

    def __init__(self) -> None:
        super().__init__()
        self._key_partition: dict[str, int] = {}


class _Table:
    """What the cursors use of a Faust table: its store and changelog writes by partition."""

    def __init__(self) -> None:
        self.data = _Store()
        self.changelog: list[tuple[int, str, Any]] = []

    def get(self, key: str) -> Any:
        return self.data.get(key)

    def send_changelog(self, partition: int, key: str, value: Any, **_: Any) -> None:
        self.changelog.append((partition, key, value))


def _cursors(
    earliest: int = 0, *, store: CursorStore | None = None, committed: int | None = None
) -> tuple[InputCursors, _FakeConsumer, dict[str, Any], _Clock]:
    consumer = _FakeConsumer(earliest, committed)
    table = _Table()
    clock = _Clock()
    app: Any = _FakeApp(consumer)
    cursors = InputCursors(app, store or TableCursors({"src": table}), "test", clock=clock)
    return cursors, consumer, table.data, clock


async def _deliver(cursors: InputCursors, offsets: list[int]) -> list[int]:
    """Offsets the state applies, in order, when Faust delivers ``offsets``."""
    applied = []
    for offset in offsets:
        if await cursors.step("src", 0, offset) is Step.APPLY:
            applied.append(offset)
            cursors.advance("src", 0, offset)
    return applied


def test_step() -> None:
    assert [step(5, o) for o in (4, 5, 6)] == [Step.REPLAY, Step.APPLY, Step.HOLE]
    assert is_cursor_key(cursor_key(3))
    assert not is_cursor_key("summarize|1|60|0|3|w")


async def test_a_hole_is_not_applied_and_the_partition_is_read_again_from_it() -> None:
    cursors, consumer, table, _ = _cursors()
    # The restarted worker's pattern: 0-3 delivered, 4-7 dropped, then 8-9, then
    # the re-read from 4 once the consumer was sought back.
    assert await _deliver(cursors, [0, 1, 2, 3, 8, 9]) == [0, 1, 2, 3]
    assert consumer.seeks == [(TP("src", 0), 4)]  # once, not per event past the hole
    assert table[cursor_key(0)] == 4
    assert await _deliver(cursors, [2, 3, 4, 5, 6, 7, 8, 9, 10]) == [4, 5, 6, 7, 8, 9, 10]
    assert cursors.commit_limit(TP("src", 0), 11) == 11


async def test_a_hole_that_stays_open_is_sought_again_every_retry() -> None:
    cursors, consumer, _, clock = _cursors()
    await _deliver(cursors, [0, 2, 3])
    await cursors.repair_holes()
    assert consumer.seeks == [(TP("src", 0), 1)]  # within the retry interval
    clock.now += 1.0
    await cursors.repair_holes()
    assert consumer.seeks == [(TP("src", 0), 1)] * 2
    await _deliver(cursors, [1])
    clock.now += 5.0
    await cursors.repair_holes()
    assert len(consumer.seeks) == 2  # closed: nothing more to repair


async def test_a_failed_seek_leaves_the_hole_to_be_repaired() -> None:
    cursors, consumer, _, clock = _cursors()
    consumer.refuse_seeks = True
    assert await _deliver(cursors, [0, 3]) == [0]  # no exception into the agent
    consumer.refuse_seeks = False
    clock.now += 1.0
    await cursors.repair_holes()
    assert consumer.seeks == [(TP("src", 0), 1)] * 2


async def test_a_hole_deleted_by_retention_is_counted_as_lost_not_sought_forever() -> None:
    cursors, consumer, table, clock = _cursors()
    assert await _deliver(cursors, [0, 1, 2, 12]) == [0, 1, 2]
    consumer.earliest = 10  # retention removed 3-9 while the hole was open
    expired = metrics.SOURCE_EXPIRED.labels(flow="test", topic="src")
    before = expired._value.get()
    clock.now += 1.0
    await cursors.repair_holes()
    assert consumer.seeks[-1] == (TP("src", 0), 10)
    assert expired._value.get() - before == 7
    assert await _deliver(cursors, [10, 11]) == [10, 11]
    assert table[cursor_key(0)] == 12


async def test_without_a_cursor_the_first_event_must_be_the_earliest_offset() -> None:
    cursors, consumer, _, _ = _cursors(earliest=40)
    assert await _deliver(cursors, [41, 40, 41]) == [40, 41]
    assert consumer.seeks == [(TP("src", 0), 40)]


async def test_commits_stop_at_the_cursor() -> None:
    cursors, _, _, _ = _cursors()
    assert cursors.commit_limit(TP("src", 0), 9) is None  # nothing applied yet
    await _deliver(cursors, [0, 1, 2, 5])
    assert cursors.commit_limit(TP("src", 0), 6) == 3  # 5 was acknowledged, not applied
    assert cursors.commit_limit(TP("src", 0), 2) == 2
    assert cursors.commit_limit(TP("other", 0), 9) == 9  # not a cursor topic


async def test_commit_limit_is_installed_on_the_transport() -> None:
    cursors, _, _, _ = _cursors()
    app: Any = cursors.app
    assert app.transport.commit_limit == cursors.commit_limit
    assert app.timers == [cursors.repair_holes]


async def test_memory_cursors_start_at_the_committed_offset_and_forget_on_revoke() -> None:
    cursors, consumer, _, _ = _cursors(earliest=0, committed=50, store=MemoryCursors(["src"]))
    assert await _deliver(cursors, [49, 50, 52]) == [50]  # 49 was committed already
    assert consumer.seeks == [(TP("src", 0), 51)]
    assert cursors.commit_limit(TP("src", 0), 53) == 51
    app: Any = cursors.app
    (on_revoked,) = app.revoked
    await on_revoked(app, {TP("src", 0)})
    assert cursors.commit_limit(TP("src", 0), 53) is None  # another worker's now
    await cursors.repair_holes()
    assert len(consumer.seeks) == 1  # the revoked hole is not repaired here
    consumer.committed_offset = 60
    assert await _deliver(cursors, [60]) == [60]


async def test_memory_cursors_without_a_commit_start_at_the_earliest_offset() -> None:
    cursors, _, _, _ = _cursors(earliest=7, store=MemoryCursors(["src"]))
    assert await _deliver(cursors, [7, 8]) == [7, 8]


@given(
    st.lists(st.tuples(st.sampled_from(["next", "drop", "rewind"]), st.integers(1, 6)), max_size=40)
)
def test_any_delivery_applies_each_offset_once_in_order(moves: list[tuple[str, int]]) -> None:
    """Whatever Faust delivers (holes, re-reads), the state applies 0, 1, 2, ... once each."""

    async def run() -> list[int]:
        cursors, consumer, _, _ = _cursors()
        position, applied = 0, []
        for move, n in moves:
            if move == "drop":
                position += n  # n offsets acknowledged but never delivered
            elif move == "rewind":
                position = max(0, position - n)  # already delivered ones again
            for _ in range(n if move == "next" else 1):
                applied += await _deliver(cursors, [position])
                position += 1
                if consumer.seeks:  # the consumer honours a seek
                    position = consumer.seeks.pop()[1]
        return applied

    applied = asyncio.run(run())
    assert applied == list(range(len(applied)))
