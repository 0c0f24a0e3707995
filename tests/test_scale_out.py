"""Scale-out: two breaker and two prompt workers per consumer group, one of each SIGKILLed.

Four real worker processes (``llmpulse worker breaker`` twice, ``llmpulse
worker prompts`` twice, each with a state folder of its own as on separate
machines) share the topics of one prefix, so each flow is one consumer group
that splits the 6 outcome partitions between its two members. Outcomes of 8
providers (covering all 6 partitions) and 3 prompt versions, plus feedback,
are produced in phases; mid-way through the second phase one worker of each
group is SIGKILLed, its partitions move to the survivor with the state their
changelogs hold, and the rest of the stream arrives meanwhile. The kill comes
early in a 30 s rollup window, so that window is still open when the survivor
takes over (after the 10 s session timeout) and its partials must cross over.
Afterwards:

* prompts: the rollups loaded into ClickHouse equal the brute-force sums over
  every produced event (``tests.harness.rollups_brute_force``), per (prompt,
  version, window size, window start), exactly;
* breaker: the transitions published per breaker (a provider, and one
  ``provider/model`` breaker from the config's model keys) equal those of an
  in-process ``BreakerCore`` fold over the same events in partition order:
  same versions, states and reasons, each version once, and Redis holds the
  fold's final state and version.

The breaker's guarantee across a crash is about state, version and open
deadline; window counts of the last second may be replayed or lost
(``processors/breaker/agent.py``, ``_store``). So its transitions here come from
events that decide on their own (an auth error opens, an operator
``force_close`` closes), and ordinary failures never come two in a row for a
breaker: with ``consecutive_failures: 4`` no replayed count can open one. The
operator controls go out only once every outcome before them is applied (the
group's committed offsets, held at the input cursors, reach the end), which
fixes their place in each breaker's sequence.
"""

from __future__ import annotations

import asyncio
import json
import random
import subprocess
import time
import uuid
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from aiokafka.partitioner import DefaultPartitioner
from clickhouse_connect.driver.client import Client

from llmpulse.core.breaker import BreakerCore, classify
from llmpulse.processors.breaker.config import BreakerConfigs
from llmpulse.processors.breaker.ops import send_control
from llmpulse.processors.settings import Settings
from llmpulse.processors.sinks.prompts import PromptPerformanceSink
from llmpulse.processors.stream import kafka, redis_client
from llmpulse.processors.stream.codec import encode
from llmpulse.processors.stream.faust_app import app_id
from llmpulse.schemas import ErrorClass, Feedback, LLMOutcome, Operation, OutcomeStatus, serving
from llmpulse.schemas.events import BreakerAction, BreakerSnapshot, BreakerState
from llmpulse.schemas.topics import (
    BREAKER_CONTROL,
    BREAKER_TRANSITIONS,
    FEEDBACK,
    OUTCOMES,
    topic_spec,
)
from tests.harness import (
    assigned_members,
    behind,
    caught_up,
    end_offsets,
    read_all,
    rollups_brute_force,
    sigkill,
    spawn_worker,
    stop_worker,
    wait_for,
    wait_until,
)

pytestmark = pytest.mark.stack

# One provider per outcome partition at least (murmur2 of the key, checked below).
PROVIDERS = ("deepseek", "openai", "google", "mistral", "vertex", "groq", "anthropic", "azure")
OWN_MODEL = "gpt-own"
OWN_KEY = f"openai/{OWN_MODEL}"  # a breaker of its own (a model key of the config)
# Rollup windows: a 30 s window is still open when the survivor takes over (at least
# the 10 s session timeout after the kill), so its partials cross the takeover.
WINDOWS = (2, 30)
CONFIG = """
default:
  window_seconds: 3600
  consecutive_failures: 4
  failure_rate_threshold: null
  open_seconds: 3600
  open_max_seconds: 3600
  jitter_fraction: 0
providers:
  openai/gpt-own: {open_seconds: 1800}
"""


class Workload:
    """The produced events, in production order, built so that replays cannot flip a breaker."""

    def __init__(self, configs: BreakerConfigs, seed: int) -> None:
        self.configs = configs
        self.rng = random.Random(seed)
        self.outcomes: list[LLMOutcome] = []
        self.feedback: list[Feedback] = []
        # Per breaker: outcomes and controls in the order the breaker applies them.
        self.sequence: dict[str, list[LLMOutcome | BreakerAction]] = defaultdict(list)
        self._last_failed: dict[str, bool] = {}

    def batch(self, n: int, auth: tuple[str, ...] = (), late: bool = False) -> list[Any]:
        """``n`` outcomes over all providers (each breaker in ``auth`` gets one auth error)
        and feedback for about a third of them; late ones are 3 minutes old."""
        rng = self.rng
        routes = [(PROVIDERS[i % len(PROVIDERS)], rng.random() < 0.5) for i in range(n)]
        rng.shuffle(routes)
        models = [OWN_MODEL if own and p == "openai" else "m" for p, own in routes]
        keys = [self.configs.key_for(p, m) for (p, _), m in zip(routes, models, strict=True)]
        auth_at = {rng.choice([i for i, k in enumerate(keys) if k == key]) for key in auth}
        now = datetime.now(UTC)
        events: list[Any] = []
        for i, ((provider, _), model, key) in enumerate(zip(routes, models, keys, strict=True)):
            at = now - timedelta(seconds=rng.uniform(0, 3) + (180 if late else 0))
            if i in auth_at:
                verdict = ErrorClass.auth_error
            elif not self._last_failed.get(key) and rng.random() < 0.3:
                verdict = ErrorClass.server_error
            else:
                verdict = None
            self._last_failed[key] = verdict is not None
            o = _outcome(provider, model, rng.choice((1, 2, 3)), at, verdict, rng)
            self.outcomes.append(o)
            self.sequence[key].append(o)
            events.append(o)
            if rng.random() < 0.3:
                f = Feedback(
                    event_id=uuid.uuid4(),
                    event_time=at + timedelta(milliseconds=rng.randint(0, 500)),
                    request_id=o.request_id,
                    org_id="acme",
                    prompt_name="summarize",
                    prompt_version=o.prompt_version or 0,
                    score=Decimal(rng.randint(0, 10)) / 2,
                )
                self.feedback.append(f)
                events.append(f)
        return events

    def control(self, key: str, action: BreakerAction) -> None:
        self.sequence[key].append(action)

    def expected_breakers(self) -> dict[str, list[tuple[int, str, str, str]]]:
        """Per breaker, its transitions (version, from, to, reason) from a single fold."""
        now = datetime.now(UTC)
        out: dict[str, list[tuple[int, str, str, str]]] = {}
        for key, steps in self.sequence.items():
            core = BreakerCore(key, self.configs.config_for(key))
            transitions = []
            for step in steps:
                if isinstance(step, BreakerAction):
                    transitions += core.control(step, now, None)
                else:
                    transitions += core.record(classify(step, core.config), now)
            out[key] = [
                (t.version, t.from_state.value, t.to_state.value, t.reason) for t in transitions
            ]
        return out


def _outcome(
    provider: str,
    model: str,
    version: int,
    at: datetime,
    error: ErrorClass | None,
    rng: random.Random,
) -> LLMOutcome:
    return LLMOutcome(
        event_id=uuid.uuid4(),
        event_time=at,
        request_id=uuid.uuid4(),
        org_id="acme",
        operation=Operation.completion,
        provider=provider,
        model=model,
        prompt_name="summarize",
        prompt_version=version,
        status=OutcomeStatus.success if error is None else OutcomeStatus.failure,
        error_class=error,
        http_status=200 if error is None else 401 if error is ErrorClass.auth_error else 503,
        latency_ms=int(rng.lognormvariate(6, 0.5)),
        input_tokens=rng.randint(10, 900),
        output_tokens=rng.randint(0, 300),
        cost_usd=Decimal(rng.randint(0, 10**6)).scaleb(-9),
    )


class Fleet:
    """Two breaker and two prompts workers, each with a state folder of its own."""

    FLOWS = ("breaker", "prompts")

    def __init__(self, settings: Settings, tmp: Path) -> None:
        self.settings = settings
        self.tmp = tmp
        self.groups = {flow: app_id(settings, flow) for flow in self.FLOWS}
        (tmp / "breaker.yaml").write_text(CONFIG)
        self.configs = BreakerConfigs.load(tmp / "breaker.yaml")
        self.procs: dict[str, list[subprocess.Popen[bytes]]] = {}

    def _env(self, flow: str, i: int) -> dict[str, str]:
        return self.settings.child_env(
            LLMPULSE_STATE_DIR=str(self.tmp / f"{flow}{i}"),
            LLMPULSE_BREAKER_CONFIG_FILE=str(self.tmp / "breaker.yaml"),
            LLMPULSE_BREAKER_TICK_SECONDS="0.2",
            LLMPULSE_PROMPT_WINDOWS=json.dumps(WINDOWS),
            LLMPULSE_PROMPT_WINDOW_GRACE_SECONDS="1",
        )

    async def start(self) -> None:
        """Start the four workers; return once each group has two members with partitions."""
        for flow in self.FLOWS:
            self.procs[flow] = [
                spawn_worker(self._env(flow, i), flow, self.tmp / f"{flow}{i}.log") for i in (0, 1)
            ]
        for flow, group in self.groups.items():

            async def both_assigned(group: str = group) -> bool:
                return await assigned_members(self.settings, group) == 2

            await wait_until(both_assigned, 60, f"two {flow} members", explain=self.where)

    async def applied(self, flow: str, topic: str, ends: dict[int, int] | None = None) -> bool:
        """Whether ``flow`` applied every event of ``topic`` before ``ends`` (default: all)."""
        return await caught_up(self.settings, self.settings.topic(topic), self.groups[flow], ends)

    def kill_one_of_each(self) -> None:
        for flow in self.FLOWS:
            sigkill(self.procs[flow][0])

    def survivors_alive(self) -> bool:
        return all(self.procs[flow][1].poll() is None for flow in self.FLOWS)

    async def where(self) -> str:
        """Where the groups stand (for a failure message): members, lag, live processes."""
        parts = []
        for flow, group in self.groups.items():
            members = await assigned_members(self.settings, group)
            alive = [p.poll() is None for p in self.procs.get(flow, [])]
            lag = {
                topic: await behind(self.settings, self.settings.topic(topic), group)
                for topic in (OUTCOMES, BREAKER_CONTROL if flow == "breaker" else FEEDBACK)
            }
            parts.append(f"{flow}: {members} assigned, alive {alive}, behind {lag}")
        return "; ".join(parts) + f"; logs in {self.tmp}"

    def stop(self) -> None:
        for procs in self.procs.values():
            for proc in procs:
                stop_worker(proc)


async def _produce(settings: Settings, producer: Any, events: list[Any]) -> None:
    for e in events:
        if isinstance(e, LLMOutcome):
            await producer.send(settings.topic(OUTCOMES), encode(e), key=e.provider.encode())
        else:
            await producer.send(settings.topic(FEEDBACK), encode(e), key=b"summarize")
    await producer.flush()


def _rollups_loaded(ch: Client) -> dict[tuple[str, int, int, int], tuple[Any, ...]]:
    """Loaded rollups summed per (prompt, version, window size, window start)."""
    rows = ch.query(
        "SELECT prompt_name, prompt_version, window_seconds, toUnixTimestamp(window_start),"
        " sum(executions), sum(successes), sum(latency_sum_ms),"
        " sum(input_tokens + output_tokens), sum(cost_usd), sum(feedback_count),"
        " sum(feedback_sum)"
        " FROM prompt_performance FINAL"
        " GROUP BY prompt_name, prompt_version, window_seconds, window_start"
    ).result_rows
    return {(r[0], r[1], r[2], r[3]): tuple(r[4:]) for r in rows}


async def _published_transitions(
    settings: Settings, expected: int
) -> dict[str, dict[int, set[tuple[str, str, str]]]]:
    """Per breaker and version, every distinct (from, to, reason) published for it."""
    records = await read_all(
        settings, settings.topic(BREAKER_TRANSITIONS), expected=expected, timeout=20
    )
    out: dict[str, dict[int, set[tuple[str, str, str]]]] = defaultdict(lambda: defaultdict(set))
    for r in records:
        s = BreakerSnapshot.model_validate_json(r.value)
        previous = s.previous_state.value if s.previous_state else ""
        out[s.provider][s.version].add((previous, s.state.value, s.reason or ""))
    return out


async def test_two_workers_per_group_survive_a_sigkill_exactly(
    settings: Settings, ch: Client, tmp_path: Path
) -> None:
    partitions = topic_spec(OUTCOMES).partitions
    spread = {
        DefaultPartitioner()(p.encode(), list(range(partitions)), list(range(partitions)))
        for p in PROVIDERS
    }
    assert spread == set(range(partitions))  # both members of each group get outcomes
    ch.command("TRUNCATE TABLE prompt_performance")
    fleet = Fleet(settings, tmp_path)
    work = Workload(fleet.configs, seed=12)
    producer = kafka.producer(settings)
    stop = asyncio.Event()
    sink_task: asyncio.Task[Any] | None = None
    rds = redis_client.connect(settings)
    try:
        await producer.start()
        await fleet.start()

        # Phase 1, then an operator force_close of every provider's breaker once the
        # breaker group has applied all of phase 1.
        auth_1 = ("deepseek", "google", "vertex", "azure")
        await _produce(settings, producer, work.batch(400, auth=auth_1))
        await wait_until(
            lambda: fleet.applied("breaker", OUTCOMES), 30, "phase 1", explain=fleet.where
        )
        for provider in PROVIDERS:
            await send_control(settings, provider, BreakerAction.force_close, "scale-out", None)
            work.control(provider, BreakerAction.force_close)
        await wait_until(
            lambda: fleet.applied("breaker", BREAKER_CONTROL), 30, "controls", explain=fleet.where
        )

        # Phase 2: a live stream until both groups applied some of it on every partition
        # and the current 30 s window has 20 s to go (open still when the survivor takes
        # over); then SIGKILL one worker of each, and the stream goes on meanwhile.
        before = await end_offsets(settings, settings.topic(OUTCOMES))
        started = {p: offset + 1 for p, offset in before.items()}
        await _produce(settings, producer, work.batch(100, auth=("openai", "google")))

        async def kill_now() -> bool:
            await _produce(settings, producer, work.batch(40))
            if time.time() % WINDOWS[-1] > WINDOWS[-1] - 20:
                return False
            return all([await fleet.applied(flow, OUTCOMES, started) for flow in Fleet.FLOWS])

        await wait_until(kill_now, 45, "phase 2 under way", explain=fleet.where)
        fleet.kill_one_of_each()
        for n, auth in ((100, ("groq",)), (100, ()), (100, ()), (150, ("mistral", OWN_KEY))):
            await _produce(settings, producer, work.batch(n, auth=auth))
        await _produce(settings, producer, work.batch(40, late=True))
        assert fleet.survivors_alive()

        # Breaker: every breaker's transitions exactly once, as the single fold has them.
        await wait_until(
            lambda: fleet.applied("breaker", OUTCOMES), 60, "breaker catch-up", explain=fleet.where
        )
        expected = work.expected_breakers()
        published = await _published_transitions(settings, sum(len(t) for t in expected.values()))
        for key, transitions in expected.items():
            got = published.get(key, {})
            assert all(len(v) == 1 for v in got.values()), (key, dict(got))
            assert [(v, *next(iter(got[v]))) for v in sorted(got)] == transitions, key
            raw = await rds.hget(serving.breaker_key(settings.topic_prefix, key), "snapshot")
            assert raw is not None, key
            final = BreakerSnapshot.model_validate_json(raw)
            version, _, state, _ = transitions[-1]
            assert (final.version, final.state.value) == (version, state), key
        opened = {k for k, t in expected.items() if t[-1][2] == BreakerState.open.value}
        assert opened == {"openai", "google", "groq", "mistral", OWN_KEY}

        # Prompts: the rollups loaded into ClickHouse equal the brute-force sums.
        sink = PromptPerformanceSink(settings, ch, group="perf-scale", max_seconds=0.3)
        sink_task = asyncio.create_task(sink.run(stop))
        want = rollups_brute_force(work.outcomes, work.feedback, WINDOWS)
        try:
            await wait_for(lambda: _rollups_loaded(ch) == want, 60, "rollups equal brute force")
        except AssertionError:
            loaded = _rollups_loaded(ch)
            diff = {
                k: (loaded.get(k), want.get(k))
                for k in set(loaded) | set(want)
                if loaded.get(k) != want.get(k)
            }
            sample = list(diff.items())[:3]
            raise AssertionError(
                f"{len(diff)} windows differ, e.g. {sample}; {await fleet.where()}"
            ) from None
    finally:
        stop.set()
        if sink_task is not None:
            await sink_task
        await producer.stop()
        await rds.aclose()
        fleet.stop()
