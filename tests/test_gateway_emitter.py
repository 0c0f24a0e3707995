"""The gateway's event emitter on real Kafka: normal path, outage, restart, spool.

* 2,000 requests and outcomes arrive exactly once, keyed by provider, with the
  canonical bytes of ``llmpulse.processors.stream.codec.encode``.
* Kafka stopped for ~30 s while events keep coming: they are spooled, replayed
  after the restart, and every event id is in Kafka exactly once.
* Events emitted while Kafka is down and then closed are in the spool; a new
  emitter on the same spool directory delivers all of them exactly once.
* The spool skips a partially written last line; a full memory queue spills to
  the spool instead of blocking; one spool directory has one owner.
"""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from collections import Counter
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from aiokafka import TopicPartition

from llmpulse.devstack import stack
from llmpulse.gateway.config import GatewayConfig
from llmpulse.gateway.emitter import EventEmitter
from llmpulse.gateway.spool import Spool, SpoolLocked, SpoolRecord, read_segment
from llmpulse.processors.settings import Settings
from llmpulse.processors.stream import kafka
from llmpulse.processors.stream.codec import encode
from llmpulse.schemas.events import (
    Event,
    Feedback,
    LLMOutcome,
    LLMRequest,
    Operation,
    OutcomeStatus,
)
from llmpulse.schemas.topics import FEEDBACK, OUTCOMES, REQUESTS, topic_spec
from tests.harness import wait_for

PROVIDERS = ("openai", "anthropic", "mistral")


def _config(settings: Settings, spool: Path, **overrides: Any) -> GatewayConfig:
    return GatewayConfig(
        bootstrap_servers=kafka.bootstrap(settings),
        topic_prefix=settings.topic_prefix,
        spool_dir=spool,
        **overrides,
    )


def _request(i: int) -> LLMRequest:
    return LLMRequest(
        event_id=uuid.uuid4(),
        event_time=datetime.now(UTC),
        request_id=uuid.uuid4(),
        org_id=f"org-{i % 7}",
        operation=Operation.completion,
        provider=PROVIDERS[i % len(PROVIDERS)],
        model="model-a",
    )


def _outcome(i: int) -> LLMOutcome:
    return LLMOutcome(
        event_id=uuid.uuid4(),
        event_time=datetime.now(UTC),
        request_id=uuid.uuid4(),
        org_id=f"org-{i % 7}",
        operation=Operation.completion,
        provider=PROVIDERS[i % len(PROVIDERS)],
        model="model-a",
        status=OutcomeStatus.success,
        latency_ms=100 + i % 900,
        input_tokens=i % 1000,
        output_tokens=i % 300,
        cost_usd=Decimal(i % 10_000).scaleb(-6),
    )


async def _ids(settings: Settings, name: str, model: type[Event]) -> Counter[str]:
    """How often each event id is in the topic (decoded as the consumers decode it)."""
    events = await kafka.read_from_start(
        settings, settings.topic(name), topic_spec(name).partitions, model
    )
    return Counter(str(e.event_id) for e in events)


async def _raw(settings: Settings, name: str) -> list[tuple[bytes | None, bytes]]:
    """(key, value) of every record now in the topic."""
    reader = kafka.consumer(settings, group=f"emitter-test-{uuid.uuid4().hex[:8]}")
    await reader.start()
    out: list[tuple[bytes | None, bytes]] = []
    try:
        parts = [
            TopicPartition(settings.topic(name), p) for p in range(topic_spec(name).partitions)
        ]
        reader.assign(parts)
        await reader.seek_to_beginning(*parts)
        ends = await reader.end_offsets(parts)
        while [tp for tp in parts if await reader.position(tp) < ends[tp]]:
            for records in (await reader.getmany(timeout_ms=500)).values():
                out.extend((r.key, r.value) for r in records)
    finally:
        await reader.stop()
    return out


def _exactly_once(counts: Counter[str], events: list[Any]) -> None:
    expected = Counter(str(e.event_id) for e in events)
    missing = len(expected - counts)
    extra = sum((counts - expected).values())
    assert (missing, extra) == (0, 0), f"{missing} events missing, {extra} extra copies"


def _local_kafka(base_settings: Settings) -> None:
    if base_settings.kafka_bootstrap:
        pytest.skip("Kafka is external: the test cannot stop and start it")


# ----------------------------------------------------------------------- integration


@pytest.mark.stack
async def test_normal_path_delivers_each_event_once_keyed_by_provider(
    settings: Settings, tmp_path: Path
) -> None:
    requests = [_request(i) for i in range(1_000)]
    outcomes = [_outcome(i) for i in range(1_000)]
    async with EventEmitter(_config(settings, tmp_path / "spool")) as emitter:
        for req, out in zip(requests, outcomes, strict=True):
            emitter.emit(req)
            emitter.emit(out)
        assert emitter.emitted == 2_000
        await wait_for(lambda: emitter.pending() == 0, 60, "every event acknowledged")
    assert (emitter.sent, emitter.spooled, emitter.replayed, emitter.dropped) == (2_000, 0, 0, 0)

    _exactly_once(await _ids(settings, REQUESTS, LLMRequest), requests)
    _exactly_once(await _ids(settings, OUTCOMES, LLMOutcome), outcomes)
    by_id = {str(e.event_id): e for e in [*requests, *outcomes]}
    for name in (REQUESTS, OUTCOMES):
        raw = await _raw(settings, name)
        assert len(raw) == 1_000
        for key, value in raw:
            sent = by_id[json.loads(value)["event_id"]]
            assert key == getattr(sent, "provider").encode()  # noqa: B009
            assert value == encode(sent)  # the processors' canonical bytes
    assert not list((tmp_path / "spool").glob("*.jsonl"))


@pytest.mark.stack
async def test_kafka_outage_spools_and_replays_every_event_exactly_once(
    settings: Settings, base_settings: Settings, tmp_path: Path
) -> None:
    _local_kafka(base_settings)
    loop = asyncio.get_running_loop()
    emitted: list[LLMOutcome] = []
    stop_emitting = asyncio.Event()
    config = _config(settings, tmp_path / "spool")

    async with EventEmitter(config, probe_interval=0.5, max_segment_records=2_000) as emitter:

        async def emit_continuously() -> None:
            i = 0
            while not stop_emitting.is_set():
                for _ in range(50):
                    event = _outcome(i)
                    emitter.emit(event)
                    emitted.append(event)
                    i += 1
                await asyncio.sleep(0.1)

        producer_task = asyncio.create_task(emit_continuously())
        kafka_down = False
        try:
            await asyncio.sleep(2)
            assert emitter.sent > 0
            assert not emitter.spooling
            kafka_down = True
            await asyncio.to_thread(stack.stop_service, base_settings, "kafka")
            down_since = loop.time()
            await wait_for(lambda: emitter.spooling, 30, "the emitter to notice the outage")
            await asyncio.sleep(max(0.0, 30 - (loop.time() - down_since)))
            assert emitter.spooling
            assert emitter.spooled > 0
            emitted_while_down = len(emitted)
            await asyncio.to_thread(stack.start_service, base_settings, "kafka")
            kafka_down = False
            await wait_for(lambda: not emitter.spooling, 60, "the spool to be replayed")
            sent_at_recovery = emitter.sent
            await asyncio.sleep(2)
            assert emitter.sent > sent_at_recovery  # new events go straight to Kafka again
            assert not emitter.spooling
        finally:
            stop_emitting.set()
            await producer_task
            if kafka_down:
                await asyncio.to_thread(stack.start_service, base_settings, "kafka")
        await wait_for(lambda: emitter.pending() == 0, 60, "every event acknowledged")

    _exactly_once(await _ids(settings, OUTCOMES, LLMOutcome), emitted)
    assert emitter.emitted == len(emitted) > emitted_while_down
    assert emitter.spooled > 0
    assert emitter.spooled == emitter.replayed
    assert emitter.sent + emitter.replayed == len(emitted)
    assert emitter.dropped == 0
    assert not list((tmp_path / "spool").glob("*.jsonl"))


@pytest.mark.stack
async def test_events_spooled_while_kafka_is_down_are_delivered_after_restart(
    settings: Settings, base_settings: Settings, tmp_path: Path
) -> None:
    _local_kafka(base_settings)
    config = _config(settings, tmp_path / "spool")
    events: list[LLMRequest | LLMOutcome] = [
        _request(i) if i % 2 else _outcome(i) for i in range(600)
    ]
    try:
        await asyncio.to_thread(stack.stop_service, base_settings, "kafka")
        # start() must neither fail nor hang with Kafka down.
        async with EventEmitter(config, max_segment_records=250) as first:
            assert first.spooling
            for event in events:
                first.emit(event)
        assert (first.sent, first.spooled, first.dropped) == (0, 600, 0)
        assert len(list(config.spool_dir.glob("*.jsonl"))) == 3
    finally:
        await asyncio.to_thread(stack.start_service, base_settings, "kafka")

    second = EventEmitter(config)  # the application restarted
    assert second.pending() == 600
    async with second:
        await wait_for(lambda: second.pending() == 0 and not second.spooling, 60, "the replay")
    assert (second.replayed, second.spooled, second.sent) == (600, 0, 0)
    requests = [e for e in events if isinstance(e, LLMRequest)]
    outcomes = [e for e in events if isinstance(e, LLMOutcome)]
    _exactly_once(await _ids(settings, REQUESTS, LLMRequest), requests)
    _exactly_once(await _ids(settings, OUTCOMES, LLMOutcome), outcomes)
    assert not list(config.spool_dir.glob("*.jsonl"))


@pytest.mark.stack
async def test_truncated_last_spool_line_is_skipped_and_the_rest_replayed(
    settings: Settings, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    spool_dir = tmp_path / "spool"
    spec = topic_spec(FEEDBACK)
    feedback = [
        Feedback(
            event_id=uuid.uuid4(),
            event_time=datetime.now(UTC),
            request_id=uuid.uuid4(),
            org_id="org-1",
            prompt_name=f"prompt-{i % 2}",
            prompt_version=1,
            score=Decimal("4.5"),
        )
        for i in range(5)
    ]
    spool = Spool(spool_dir)
    spool.append(
        [
            SpoolRecord(settings.topic(FEEDBACK), spec.key_of(f), encode(f), str(f.event_id))
            for f in feedback
        ]
    )
    spool.close()
    (segment,) = spool_dir.glob("*.jsonl")
    with segment.open("ab") as fh:  # a crash in the middle of the sixth write
        fh.write(b'{"topic":"' + settings.topic(FEEDBACK).encode() + b'","key":"pro')

    with caplog.at_level(logging.WARNING, logger="llmpulse.gateway.emitter"):
        read = read_segment(segment)
    assert (read.truncated, read.skipped) == (True, 0)
    assert [r.event_id for r in read.records] == [str(f.event_id) for f in feedback]
    assert "partially written last line" in caplog.text

    async with EventEmitter(_config(settings, spool_dir)) as emitter:
        assert emitter.pending() == 5
        await wait_for(lambda: emitter.pending() == 0, 60, "the replay")
    assert emitter.replayed == 5
    _exactly_once(await _ids(settings, FEEDBACK, Feedback), feedback)
    assert not list(spool_dir.glob("*.jsonl"))


@pytest.mark.stack
async def test_full_queue_spills_to_the_spool_without_blocking(
    settings: Settings, tmp_path: Path
) -> None:
    emitter = EventEmitter(_config(settings, tmp_path / "spool", emit_queue_size=10))
    events = [_request(i) for i in range(25)]
    for event in events:  # not started: nothing drains the queue
        emitter.emit(event)
    assert (emitter.emitted, emitter.spooled, emitter.pending()) == (25, 15, 25)

    await emitter.start()  # Kafka is up: the queue goes straight to Kafka, the spill is replayed
    await wait_for(lambda: emitter.pending() == 0, 60, "delivery")
    await emitter.close()
    assert (emitter.sent, emitter.replayed, emitter.spooled) == (10, 15, 15)
    _exactly_once(await _ids(settings, REQUESTS, LLMRequest), events)


# ------------------------------------------------------------------------------ unit


def _records(n: int) -> list[SpoolRecord]:
    return [
        SpoolRecord("t.llm.requests.v1", b"openai", b'{"n":%d}' % i, f"id-{i}") for i in range(n)
    ]


def test_spool_rotates_segments_and_keeps_the_acknowledged_cursor(tmp_path: Path) -> None:
    spool = Spool(tmp_path, max_segment_records=4)
    spool.append(_records(10))
    spool.seal()
    segments = spool.segments()
    assert (len(segments), spool.pending()) == (3, 10)
    first = read_segment(segments[0])
    assert [r.event_id for r in first.records] == ["id-0", "id-1", "id-2", "id-3"]
    spool.advance(segments[0], first.ends[1], 2)  # two acknowledged
    spool.close()

    reopened = Spool(tmp_path, max_segment_records=4)
    assert reopened.pending() == 8
    rest = read_segment(segments[0], reopened.cursor(segments[0]))
    assert [r.event_id for r in rest.records] == ["id-2", "id-3"]
    reopened.remove(segments[0])
    assert reopened.pending() == 6
    reopened.append(_records(1))  # a new process never appends to old segments
    assert len(reopened.segments()) == 2
    reopened.close()
    assert len(list(tmp_path.glob("*.jsonl"))) == 3


def test_spool_skips_invalid_lines(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    segment = tmp_path / "000000000001.jsonl"
    good = _records(2)
    segment.write_bytes(good[0].to_line() + b"not json\n" + b'{"topic":1}\n' + good[1].to_line())
    with caplog.at_level(logging.WARNING, logger="llmpulse.gateway.emitter"):
        read = read_segment(segment)
    assert (read.records, read.skipped, read.truncated) == (good, 2, False)
    assert read.end == segment.stat().st_size
    assert "not json" not in caplog.text  # positions are logged, never content


async def test_one_spool_directory_has_one_owner(tmp_path: Path) -> None:
    config = GatewayConfig(bootstrap_servers="127.0.0.1:1", spool_dir=tmp_path / "spool")
    first = EventEmitter(config)
    with pytest.raises(SpoolLocked):
        EventEmitter(config)
    await first.close()
    second = EventEmitter(config)
    await second.close()


async def test_emit_rejects_unknown_types_and_use_after_close(tmp_path: Path) -> None:
    emitter = EventEmitter(
        GatewayConfig(bootstrap_servers="127.0.0.1:1", spool_dir=tmp_path / "spool")
    )
    with pytest.raises(TypeError):
        emitter.emit("not an event")  # type: ignore[arg-type]
    emitter.emit(_request(1))
    await emitter.close()
    assert emitter.spooled == 1  # never started: close() spooled the queued event
    with pytest.raises(RuntimeError):
        emitter.emit(_request(2))


def test_forgetting_invalid_lines_is_idempotent(tmp_path: Path) -> None:
    spool = Spool(tmp_path, max_segment_bytes=1 << 20, max_segment_records=100)
    try:
        records = [SpoolRecord("t", b"k", b'{"event_id":"%d"}' % i, str(i)) for i in range(5)]
        spool.append(records)
        spool.seal()
        (segment,) = spool.segments()
        assert spool.pending() == 5
        spool.forget(segment, 2)  # a replay found 2 invalid lines...
        spool.forget(segment, 2)  # ...and its retry the same 2 again
        assert spool.pending() == 3
    finally:
        spool.close()
