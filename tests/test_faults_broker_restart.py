"""A Kafka broker restart mid-stream under the usage sink, the breaker and the prompts worker.

The test runs on a stack of its own (its own state folder, Kafka, Redis and
Prometheus), so stopping its broker disturbs no other test. The breaker and
prompts workers run as ``llmpulse worker`` processes, the usage sink in the
test process on chDB. Outcomes (and feedback) are produced, the broker is
stopped while the three are consuming and started again with its data on the
same port, the rest of the stream is produced, and once every group has
committed up to the end:

* usage: ``usage_events FINAL`` holds every produced event once, costs exact;
* breaker: the transitions published per breaker equal those of a single
  ``BreakerCore`` fold over the same events (each version once), and Redis
  holds the fold's final state and version (the workload of
  ``tests/test_scale_out.py``, built so that a replayed event cannot flip a
  breaker);
* prompts: the rollups loaded into ClickHouse equal the brute-force sums.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from clickhouse_connect.driver.client import Client

from llmpulse.devstack import stack
from llmpulse.processors.breaker.config import BreakerConfigs
from llmpulse.processors.settings import Settings
from llmpulse.processors.sinks.prompts import PromptPerformanceSink
from llmpulse.processors.sinks.usage import UsageSink
from llmpulse.processors.stream import kafka, redis_client
from llmpulse.processors.stream.faust_app import app_id
from llmpulse.schemas import serving
from llmpulse.schemas.events import BreakerSnapshot
from llmpulse.schemas.topics import FEEDBACK, OUTCOMES
from tests.harness import (
    assigned_members,
    behind,
    caught_up,
    rollups_brute_force,
    running_services,
    spawn_worker,
    stop_worker,
    wait_for,
    wait_until,
    with_unique_topics,
)
from tests.test_scale_out import (
    CONFIG,
    WINDOWS,
    Workload,
    _produce,
    _published_transitions,
    _rollups_loaded,
)

pytestmark = pytest.mark.stack

FLOWS = ("breaker", "prompts")
_SERVICES = ("kafka_bootstrap", "redis_url", "prometheus_url")


@pytest.fixture(scope="module")
def own_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    """A stack of this module's own: its broker is restarted by the test."""
    settings = Settings(
        state_dir=tmp_path_factory.mktemp("restart-stack"), cache_dir=Settings().cache_dir
    ).model_copy(update=dict.fromkeys(_SERVICES))  # never the caller's services
    with running_services(settings) as ready:
        yield ready


def _env(settings: Settings, tmp: Path, flow: str) -> dict[str, str]:
    return settings.child_env(
        LLMPULSE_STATE_DIR=str(tmp / flow),
        LLMPULSE_BREAKER_CONFIG_FILE=str(tmp / "breaker.yaml"),
        LLMPULSE_BREAKER_TICK_SECONDS="0.2",
        LLMPULSE_PROMPT_WINDOWS=json.dumps(WINDOWS),
        LLMPULSE_PROMPT_WINDOW_GRACE_SECONDS="1",
    )


async def test_broker_restart_mid_stream_keeps_every_result_exact(
    own_stack: Settings, ch: Client, tmp_path: Path
) -> None:
    settings = await with_unique_topics(own_stack)
    ch.command("TRUNCATE TABLE prompt_performance")
    (tmp_path / "breaker.yaml").write_text(CONFIG)
    work = Workload(BreakerConfigs.load(tmp_path / "breaker.yaml"), seed=31)
    groups = {flow: app_id(settings, flow) for flow in FLOWS}
    procs = {
        flow: spawn_worker(_env(settings, tmp_path, flow), flow, tmp_path / f"{flow}.log")
        for flow in FLOWS
    }
    stop = asyncio.Event()
    usage = UsageSink(settings, ch, group="sink-restart", max_rows=200, max_seconds=0.3)
    tasks: list[asyncio.Task[Any]] = [asyncio.create_task(usage.run(stop))]
    producer = kafka.producer(settings)
    rds = redis_client.connect(settings)

    async def where() -> str:
        parts = [f"usage consumed {usage.stats.consumed}"]
        for flow, group in groups.items():
            lag = await behind(settings, settings.topic(OUTCOMES), group)
            parts.append(f"{flow}: alive {procs[flow].poll() is None}, behind {lag}")
        return "; ".join(parts) + f"; logs in {tmp_path}"

    async def applied() -> bool:
        checks = [(OUTCOMES, usage.group), (FEEDBACK, groups["prompts"])]
        checks += [(OUTCOMES, group) for group in groups.values()]
        return all([await caught_up(settings, settings.topic(t), g) for t, g in checks])

    try:
        for flow, group in groups.items():

            async def assigned(group: str = group) -> bool:
                return await assigned_members(settings, group) == 1

            await wait_until(assigned, 90, f"the {flow} worker's assignment", explain=where)
        await producer.start()
        await _produce(settings, producer, work.batch(600, auth=("deepseek", "google")))
        await wait_for(lambda: usage.stats.consumed > 0, 60, "consumption under way")

        # Stopped while they consume; back with its data on the same port.
        local = own_stack.model_copy(update=dict.fromkeys(_SERVICES))  # as stack.up saw it
        await asyncio.to_thread(stack.stop_service, local, "kafka")
        await asyncio.sleep(5)  # an outage, not a blip
        await asyncio.to_thread(stack.start_service, local, "kafka", lambda _m: None)
        assert stack.endpoints(local).kafka_bootstrap == settings.kafka_bootstrap

        await _produce(settings, producer, work.batch(600, auth=("openai", "groq")))
        await _produce(settings, producer, work.batch(40, late=True))
        await wait_until(applied, 180, "every group to commit up to the end", explain=where)
        assert all(proc.poll() is None for proc in procs.values()), await where()

        # Usage: every produced event once.
        count, cost = ch.query("SELECT count(), sum(cost_usd) FROM usage_events FINAL").result_rows[
            0
        ]
        assert (count, cost) == (len(work.outcomes), sum(o.cost_usd for o in work.outcomes))

        # Breaker: every breaker's transitions exactly once, as the single fold has them
        # (published in the background: the offsets may be committed before they are).
        expected = work.expected_breakers()
        want_breakers = {k: t for k, t in expected.items() if t}
        assert set(want_breakers) == {"deepseek", "google", "openai", "groq"}
        count = sum(len(t) for t in want_breakers.values())

        async def transitions() -> dict[str, list[tuple[int, str, str, str]]]:
            published = await _published_transitions(settings, count)
            assert all(len(v) == 1 for got in published.values() for v in got.values()), published
            return {
                key: [(v, *next(iter(got[v]))) for v in sorted(got)]
                for key, got in published.items()
            }

        async def all_published() -> bool:
            return await transitions() == want_breakers

        async def explain() -> str:
            redis = {
                k: await rds.hget(serving.breaker_key(settings.topic_prefix, k), "snapshot")
                for k in want_breakers
            }
            return (
                f"published {await transitions()}, want {want_breakers}; redis {redis}; "
                f"{await where()}"
            )

        await wait_until(all_published, 90, "every transition", every=1, explain=explain)
        for key, steps in want_breakers.items():
            raw = await rds.hget(serving.breaker_key(settings.topic_prefix, key), "snapshot")
            assert raw is not None, key
            final = BreakerSnapshot.model_validate_json(raw)
            version, _, state, _ = steps[-1]
            assert (final.version, final.state.value) == (version, state), key

        # Prompts: the rollups loaded into ClickHouse equal the brute-force sums.
        perf = PromptPerformanceSink(settings, ch, group="perf-restart", max_seconds=0.3)
        tasks.append(asyncio.create_task(perf.run(stop)))
        want = rollups_brute_force(work.outcomes, work.feedback, WINDOWS)
        try:
            await wait_for(lambda: _rollups_loaded(ch) == want, 90, "rollups equal brute force")
        except AssertionError:
            loaded = _rollups_loaded(ch)
            diff = {
                k: (loaded.get(k), want.get(k))
                for k in set(loaded) | set(want)
                if loaded.get(k) != want.get(k)
            }
            raise AssertionError(
                f"{len(diff)} windows differ, e.g. {list(diff.items())[:3]}; {await where()}"
            ) from None
    finally:
        stop.set()
        await asyncio.gather(*tasks)
        await producer.stop()
        await rds.aclose()
        for proc in procs.values():
            stop_worker(proc)
