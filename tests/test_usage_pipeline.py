"""Integration: events through real Kafka into chDB, invalid ones into the DLQ.

Produces 1,000 valid and 60 invalid outcome events (ten kinds of invalid,
interleaved), runs the usage sink, and checks exact counts everywhere.
"""

from __future__ import annotations

import asyncio
import json
import random
from collections import Counter
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from clickhouse_connect.driver.client import Client

from llmpulse.processors.settings import Settings
from llmpulse.processors.sinks.usage import UsageSink
from llmpulse.processors.stream import kafka
from llmpulse.processors.stream.codec import encode
from llmpulse.processors.stream.dlq import DETAIL_HEADER, REASON_HEADER
from llmpulse.schemas.topics import OUTCOMES, topic_spec
from llmpulse.simulator.samples import sample_outcome
from tests.harness import committed_offsets, read_all, wait_for

pytestmark = pytest.mark.stack

SECRET = "sk-live-0123456789abcdefSECRET"


def _invalid_payloads(rng: random.Random, now: datetime) -> list[tuple[str, str, bytes]]:
    """(kind, expected reason, bytes) for ten kinds of invalid outcome, six of each."""
    out: list[tuple[str, str, bytes]] = []
    for i in range(6):
        good = json.loads(encode(sample_outcome(rng, now)))

        def variant(**changes: Any) -> bytes:
            return json.dumps({**good, **changes}).encode()  # noqa: B023

        out += [
            ("negative_tokens", "schema_violation", variant(input_tokens=-1 - i)),
            ("nan_cost", "schema_violation", variant(cost_usd="NaN")),
            ("negative_cost", "schema_violation", variant(cost_usd=f"-0.{i + 1}")),
            ("key_in_unknown_field", "schema_violation", variant(api_key=SECRET, note=SECRET)),
            ("naive_time", "schema_violation", variant(event_time="2026-01-15T10:00:00")),
            (
                "far_future",
                "schema_violation",
                variant(event_time=(now + timedelta(days=3)).isoformat()),
            ),
            ("tokens_as_string", "schema_violation", variant(output_tokens="12")),
            ("unknown_operation", "schema_violation", variant(operation="chat")),
            ("not_json", "not_json", b"{'cost_usd': 1," + bytes([65 + i])),
            ("empty", "empty_value", b""),
        ]
    return out


async def _produce(settings: Settings, messages: list[tuple[bytes, bytes]]) -> None:
    producer = kafka.producer(settings)
    await producer.start()
    try:
        for key, value in messages:
            await producer.send(settings.topic(OUTCOMES), value, key=key)
        await producer.flush()
    finally:
        await producer.stop()


async def test_thousand_events_exact_counts_and_dlq(settings: Settings, ch: Client) -> None:
    rng = random.Random(11)
    now = datetime.now(UTC)
    valid = [sample_outcome(rng, now) for _ in range(1000)]
    invalid = _invalid_payloads(rng, now)
    assert len(invalid) == 60
    messages = [(b"openai" if o.provider == "openai" else b"anthropic", encode(o)) for o in valid]
    for n, (_kind, _reason, raw) in enumerate(invalid):
        messages.insert(n * 17 + 3, (b"openai", raw))  # interleaved with the valid ones
    await _produce(settings, messages)

    stop = asyncio.Event()
    sink = UsageSink(settings, ch, group="sink-it", max_rows=300, max_seconds=0.5)
    task = asyncio.create_task(sink.run(stop))
    await wait_for(
        lambda: sink.stats.consumed >= 1060 and sink.stats.batches > 0 and not sink._next_offsets,
        90,
        "the sink to consume and flush everything",
    )
    stop.set()
    stats = await task
    assert (stats.consumed, stats.inserted, stats.dead_lettered) == (1060, 1000, 60)

    # ClickHouse: exactly the valid rows, exact money, per organization and operation.
    rows = ch.query(
        "SELECT org_id, operation, count(), sum(cost_usd), sum(input_tokens + output_tokens) "
        "FROM usage_events FINAL GROUP BY org_id, operation"
    ).result_rows
    expected: dict[tuple[str, str], list[Any]] = {}
    for o in valid:
        e = expected.setdefault((o.org_id, o.operation.value), [0, Decimal(0), 0])
        e[0] += 1
        e[1] += o.cost_usd
        e[2] += o.input_tokens + o.output_tokens
    assert {(r[0], r[1]): [r[2], r[3], r[4]] for r in rows} == expected

    # DLQ: every invalid event once, with its reason; the key-like value never copied.
    spec = topic_spec(OUTCOMES)
    dlq = await read_all(settings, settings.topic(spec.dlq), expected=60)
    assert len(dlq) == 60
    reasons = Counter(dict(r.headers)[REASON_HEADER].decode() for r in dlq)
    assert reasons == Counter(reason for _k, reason, _raw in invalid)
    for record in dlq:
        assert SECRET.encode() not in (record.value or b"")
        assert SECRET.encode() not in dict(record.headers)[DETAIL_HEADER]
    originals = {raw for kind, _r, raw in invalid if kind in ("not_json", "empty")}
    assert sum((r.value or b"") in originals for r in dlq) == 12  # untouched copies
    details = b" | ".join(dict(r.headers)[DETAIL_HEADER] for r in dlq)
    for field in (b"input_tokens", b"cost_usd", b"api_key", b"event_time", b"operation"):
        assert field in details

    # Offsets were committed up to the end of every partition.
    committed = await committed_offsets(settings, settings.topic(OUTCOMES), "sink-it")
    assert sum(v or 0 for v in committed.values()) == 1060


async def test_consecutive_poison_limit_stops_the_sink(settings: Settings, ch: Client) -> None:
    limited = settings.model_copy(update={"dlq_max_consecutive": 5})
    await _produce(limited, [(b"openai", b"not json")] * 8)
    sink = UsageSink(limited, ch, group="sink-poison", max_rows=100, max_seconds=0.2)
    stats = await asyncio.wait_for(sink.run(asyncio.Event()), 60)  # stops on its own
    assert stats.stopped is not None
    assert "6 consecutive invalid messages" in stats.stopped
    assert stats.dead_lettered == 6
    dlq = await read_all(limited, limited.topic(topic_spec(OUTCOMES).dlq), expected=6)
    assert len(dlq) == 6  # the message that tripped the limit is in the DLQ too
    # Committed past the dead letters: a restart never copies them to the DLQ again.
    offsets = await committed_offsets(limited, limited.topic(OUTCOMES), "sink-poison")
    assert sum(v or 0 for v in offsets.values()) == 6


async def test_events_deleted_by_retention_while_the_sink_was_down_are_counted(
    settings: Settings, ch: Client, caplog: pytest.LogCaptureFixture
) -> None:
    """Issue 13 item 8: a committed offset below the first stored one is a loss, never silent.

    The sink loaded 10 events, then was down while retention deleted 10 more
    (``delete_records`` moves the log start offset as retention does): on restart
    it counts and logs the 10 lost events and loads the 10 that remain.
    """
    from aiokafka import TopicPartition
    from aiokafka.admin import AIOKafkaAdminClient, RecordsToDelete

    from llmpulse.processors.stream import metrics

    rng = random.Random(8)
    now = datetime.now(UTC)
    events = [sample_outcome(rng, now) for _ in range(30)]
    await _produce(settings, [(b"one-key", encode(o)) for o in events])  # one partition
    topic = settings.topic(OUTCOMES)
    group = f"{settings.consumer_group_prefix}.usage_events"
    consumer = kafka.consumer(settings, group=group)
    await consumer.start()
    try:
        await consumer._client.force_metadata_update()
        parts = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or ()]
        ends = await consumer.end_offsets(parts)
        (tp,) = [p for p in parts if ends[p]]
        consumer.assign([tp])
        await consumer.commit({tp: 10})  # the sink had loaded the first 10
    finally:
        await consumer.stop()
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka.bootstrap(settings))
    await admin.start()
    try:
        await admin.delete_records({tp: RecordsToDelete(before_offset=20)})
    finally:
        await admin.close()

    expired = metrics.SOURCE_EXPIRED.labels(flow="usage_events", topic=topic)
    before = expired._value.get()
    stop = asyncio.Event()
    sink = UsageSink(settings, ch, group=group, max_rows=100, max_seconds=0.2)
    with caplog.at_level("ERROR"):
        task = asyncio.create_task(sink.run(stop))
        await wait_for(lambda: sink.stats.inserted >= 10, 60, "the sink to load what remains")
        stop.set()
        await task
    assert expired._value.get() - before == 10
    assert "10 events of" in caplog.text
    assert "offsets 10-19" in caplog.text
    stored = {r[0] for r in ch.query("SELECT event_id FROM usage_events").result_rows}
    assert stored == {o.event_id for o in events[20:]}
