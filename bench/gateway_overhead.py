"""Gateway costs on the application's request path, on the real local stack.

    python -m bench.gateway_overhead [--decisions 100000] [--events 50000]

* routing decision: ``ProviderOrchestrator.order()`` plus ``BreakerView.route()``
  of each provider until one is allowed (the preferred one is open, so every
  decision skips it), microseconds per decision;
* orchestration overhead: a whole ``execute()`` against an instant provider
  (two events built and handed to the emitter, local breaker fed), per request;
* ``emit`` on the caller's path: ``EventEmitter.emit`` of a built event while
  its sender drains to Kafka, compared with the bare aiokafka path an app
  would otherwise take in the same run: ``model_dump_json`` plus
  ``await AIOKafkaProducer.send`` (enqueue only, acks awaited later).

The measurements run in a child process, whose peak RSS is reported (the
gateway lives in the application's process; this is its footprint alone).
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

from bench.child import in_child
from bench.common import bench_outcome, bench_settings, progress
from bench.results import GatewayResult
from llmpulse.gateway.breaker_view import BreakerView
from llmpulse.gateway.config import GatewayConfig, redis_client
from llmpulse.gateway.emitter import EventEmitter
from llmpulse.gateway.orchestrator import Completion, LLMCall, Provider, ProviderOrchestrator
from llmpulse.processors.settings import Settings
from llmpulse.processors.stream import kafka
from llmpulse.processors.stream.redis_client import url as redis_url
from llmpulse.schemas import serving
from llmpulse.schemas.events import BreakerSnapshot, BreakerState
from llmpulse.schemas.topics import OUTCOMES


async def _instant(call: LLMCall, model: str) -> Completion:
    return Completion(input_tokens=10, output_tokens=10)


class _NullEmitter:
    def emit(self, event: object) -> None:
        pass


async def _routing(gw: GatewayConfig, decisions: int) -> tuple[float, float]:
    rds = redis_client(gw)
    now = datetime.now(UTC)
    opened = BreakerSnapshot(
        event_id=uuid.uuid4(),
        event_time=now,
        provider="p0",
        state=BreakerState.open,
        version=1,
        since=now,
        as_of=now,
        failure_rate=1.0,
        calls_in_window=50,
    )
    key = serving.breaker_key(gw.topic_prefix, "p0")
    await rds.hset(key, mapping={"version": 1, "snapshot": opened.model_dump_json()})
    view = BreakerView(rds, gw, ["p0", "p1", "p2"])
    await view.refresh()
    orch = ProviderOrchestrator(
        [Provider(f"p{i}", "m", _instant, priority=i) for i in range(3)],
        view=view,
        emitter=_NullEmitter(),
    )
    started = time.perf_counter()
    for _ in range(decisions):
        for p in orch.order():
            if view.route(p.name).allowed:
                break
    routing_us = (time.perf_counter() - started) / decisions * 1e6
    call = LLMCall(org_id="bench")
    n = decisions // 10
    started = time.perf_counter()
    for _ in range(n):
        await orch.execute(call)
    execute_us = (time.perf_counter() - started) / n * 1e6
    await rds.aclose()
    return routing_us, execute_us


async def _emit(settings: Settings, gw: GatewayConfig, events: int) -> tuple[float, float]:
    batch = [bench_outcome(input_tokens=100, output_tokens=50) for _ in range(events)]
    emitter = EventEmitter(gw)
    await emitter.start()
    spent = 0.0
    for i in range(0, events, 1000):
        t0 = time.perf_counter()
        for e in batch[i : i + 1000]:
            emitter.emit(e)
        spent += time.perf_counter() - t0
        await asyncio.sleep(0)  # let the sender drain, as an app's loop would
    await emitter.close()
    assert emitter.dropped == 0
    assert emitter.sent + emitter.spooled == events
    emit_us = spent / events * 1e6

    producer = kafka.producer(settings)
    await producer.start()
    topic = settings.topic(OUTCOMES)
    spent = 0.0
    futures = []
    for i in range(0, events, 1000):
        t0 = time.perf_counter()
        for e in batch[i : i + 1000]:
            futures.append(await producer.send(topic, e.model_dump_json().encode(), key=b"p1"))
        spent += time.perf_counter() - t0
        await asyncio.sleep(0)
    await asyncio.gather(*futures)
    await producer.stop()
    return emit_us, spent / events * 1e6


async def _measure(settings: Settings, decisions: int, events: int) -> tuple[float, ...]:
    """Runs in the child process: (routing, execute, emit, bare emit) microseconds."""
    with tempfile.TemporaryDirectory(prefix="llmpulse-bench-") as tmp:
        gw = GatewayConfig(
            bootstrap_servers=kafka.bootstrap(settings),
            redis_url=redis_url(settings),
            topic_prefix=settings.topic_prefix,
            spool_dir=Path(tmp) / "spool",
            kafka_security=settings.kafka_security,
        )
        routing_us, execute_us = await _routing(gw, decisions)
        emit_us, bare_us = await _emit(settings, gw, events)
    return routing_us, execute_us, emit_us, bare_us


async def run(decisions: int = 100_000, events: int = 50_000) -> GatewayResult:
    """Routing, ``execute()`` and ``emit()`` costs, measured in a child process."""
    settings = await bench_settings(Settings())
    progress(f"{decisions:,} routing decisions, {events:,} emitted events (child process)")
    (routing_us, execute_us, emit_us, bare_us), rss = await in_child(
        _measure, settings, decisions, events
    )
    return GatewayResult(routing_us, execute_us, emit_us, bare_us, rss)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--decisions", type=int, default=100_000)
    parser.add_argument("--events", type=int, default=50_000)
    args = parser.parse_args()
    r = asyncio.run(run(args.decisions, args.events))
    print(f"routing decision (preferred provider open): {r.routing_us:8.2f} us")
    print(f"execute() overhead, instant provider:       {r.execute_us:8.2f} us per request")
    print(
        f"emit() on the caller's path:                {r.emit_us:8.2f} us per event "
        f"(bare aiokafka dump+send {r.bare_emit_us:.2f} us; ratio {r.emit_ratio:.2f})"
    )
    print(f"peak RSS of the measuring process: {r.peak_rss_mb:.0f} MB")


if __name__ == "__main__":
    main()
