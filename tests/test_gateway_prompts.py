"""Sticky prompt A/B selection: rendezvous assignment, view parsing, selector on real Redis."""

from __future__ import annotations

import asyncio
import json
import logging
import shutil
import socket
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import cast

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from redis import Redis as SyncRedis
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from llmpulse.core.registry import PromptState, VersionRecord
from llmpulse.gateway.config import GatewayConfig
from llmpulse.gateway.prompts import (
    PromptSelector,
    PromptUnavailable,
    PromptVersionView,
    assign,
    parse_view,
)
from llmpulse.processors.prompts.agent import registry_view
from llmpulse.schemas.serving import prompt_key

D = Decimal
SUBJECTS = [f"user-{i}" for i in range(400)]


def _shares(weights: list[tuple[int, Decimal]], n: int, prompt: str = "greet") -> dict[int, float]:
    counts = Counter(assign(prompt, f"subject-{i}", weights) for i in range(n))
    return {v: counts[v] / n for v, _ in weights}


# --- assign: distribution and stickiness ---------------------------------------------------


def test_distribution_matches_weights() -> None:
    shares = _shares([(1, D("0.7")), (2, D("0.2")), (3, D("0.1"))], 100_000)
    assert shares[1] == pytest.approx(0.7, abs=0.01)
    assert shares[2] == pytest.approx(0.2, abs=0.01)
    assert shares[3] == pytest.approx(0.1, abs=0.01)


def test_weights_need_not_sum_to_one() -> None:
    shares = _shares([(1, D("3")), (2, D("1"))], 20_000)
    assert shares[1] == pytest.approx(0.75, abs=0.02)


def test_same_subject_same_version() -> None:
    weights = [(1, D("0.5")), (2, D("0.3")), (3, D("0.2"))]
    first = [assign("greet", s, weights) for s in SUBJECTS]
    for _ in range(3):
        assert [assign("greet", s, weights) for s in SUBJECTS] == first
    # Order of the weights list is irrelevant.
    assert [assign("greet", s, list(reversed(weights))) for s in SUBJECTS] == first
    # And the split is not degenerate (every version is used).
    assert set(first) == {1, 2, 3}


def test_assignment_is_stable_across_releases() -> None:
    # Pinned outputs: changing the hash input or score would silently reshuffle
    # every subject between prompt versions on deploy, corrupting running A/B tests.
    weights = [(1, D("0.5")), (2, D("0.5"))]
    got = [assign("greet", f"user-{i}", weights) for i in range(12)]
    assert got == [2, 2, 1, 1, 1, 1, 2, 1, 1, 1, 1, 2]


def test_prompts_are_assigned_independently() -> None:
    # A subject in version 1 of one prompt must not be more likely to be in
    # version 1 of another (the prompt name is part of the hash).
    weights = [(1, D("0.5")), (2, D("0.5"))]
    subjects = [f"s{i}" for i in range(20_000)]
    in_v1 = [s for s in subjects if assign("a", s, weights) == 1]
    also_v1 = sum(assign("b", s, weights) == 1 for s in in_v1) / len(in_v1)
    assert also_v1 == pytest.approx(0.5, abs=0.03)


def test_zero_weight_never_chosen() -> None:
    weights = [(1, D("0")), (2, D("1")), (3, D("0"))]
    assert {assign("greet", s, weights) for s in SUBJECTS} == {2}


@pytest.mark.parametrize(
    ("weights", "match"),
    [
        ([], "no version with weight > 0"),
        ([(1, D("0")), (2, D("0"))], "no version with weight > 0"),
        ([(1, D("-0.1")), (2, D("1"))], "finite and >= 0"),
        ([(1, D("NaN")), (2, D("1"))], "finite and >= 0"),
        ([(1, D("Infinity"))], "finite and >= 0"),
    ],
)
def test_assign_rejects_bad_weights(weights: list[tuple[int, Decimal]], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        assign("greet", "u", weights)


# --- assign: minimal movement (properties) -------------------------------------------------

weight_st = st.integers(min_value=1, max_value=1000).map(lambda n: D(n) / 1000)
weights_st = st.lists(weight_st, min_size=2, max_size=6).map(
    lambda ws: [(i + 1, w) for i, w in enumerate(ws)]
)
prompt_st = st.text(min_size=1, max_size=20)


def _all(prompt: str, weights: list[tuple[int, Decimal]]) -> list[int]:
    return [assign(prompt, s, weights) for s in SUBJECTS]


@settings(max_examples=60, deadline=None)
@given(prompt=prompt_st, weights=weights_st, new_weight=weight_st)
def test_adding_a_version_only_moves_subjects_to_it(
    prompt: str, weights: list[tuple[int, Decimal]], new_weight: Decimal
) -> None:
    new = len(weights) + 1
    before = _all(prompt, weights)
    after = _all(prompt, [*weights, (new, new_weight)])
    assert all(b == a or a == new for b, a in zip(before, after, strict=True))


@settings(max_examples=60, deadline=None)
@given(prompt=prompt_st, weights=weights_st, data=st.data())
def test_removing_a_version_only_moves_its_subjects(
    prompt: str, weights: list[tuple[int, Decimal]], data: st.DataObject
) -> None:
    gone = data.draw(st.sampled_from([v for v, _ in weights]))
    before = _all(prompt, weights)
    after = _all(prompt, [(v, w) for v, w in weights if v != gone])
    assert all(b == a for b, a in zip(before, after, strict=True) if b != gone)
    assert gone not in after


@settings(max_examples=60, deadline=None)
@given(prompt=prompt_st, w1=weight_st, w2=weight_st, w3=weight_st, w3_new=weight_st)
def test_reweighting_version_3_leaves_1_and_2_alone(
    prompt: str, w1: Decimal, w2: Decimal, w3: Decimal, w3_new: Decimal
) -> None:
    before = _all(prompt, [(1, w1), (2, w2), (3, w3)])
    after = _all(prompt, [(1, w1), (2, w2), (3, w3_new)])
    for b, a in zip(before, after, strict=True):
        assert b == a or 3 in (b, a)
        # Monotone: more weight only pulls subjects in, less only lets them go.
        if w3_new > w3:
            assert not (b == 3 and a != 3)
        if w3_new < w3:
            assert not (b != 3 and a == 3)


def test_added_version_takes_its_share_from_every_version() -> None:
    # Without this, "nobody moves except to the new version" would also hold for
    # an assign() that ignored new versions altogether.
    weights = [(1, D("0.7")), (2, D("0.2")), (3, D("0.1"))]
    subjects = [f"s{i}" for i in range(50_000)]
    before = [assign("greet", s, weights) for s in subjects]
    after = [assign("greet", s, [*weights, (4, D("0.25"))]) for s in subjects]
    assert after.count(4) / len(subjects) == pytest.approx(0.2, abs=0.01)  # 0.25 / 1.25
    for v in (1, 2, 3):
        moved = sum(1 for b, a in zip(before, after, strict=True) if b == v and a == 4)
        assert moved / before.count(v) == pytest.approx(0.2, abs=0.03)


# --- parse_view ----------------------------------------------------------------------------


def _state() -> PromptState:
    return PromptState(
        "greet",
        {
            1: VersionRecord(1, "Hello {name}", "Be brief.", D("0.70"), 256, "gpt-4o", active=True),
            2: VersionRecord(2, "Hi {name}!", active=True, weight=D("0.25")),
            3: VersionRecord(3, "retired"),
        },
    )


def test_parse_registry_view_output() -> None:
    raw = registry_view(_state()).model_dump_json()
    assert parse_view(raw) == [
        PromptVersionView(1, D("0.75"), "Hello {name}", "Be brief.", D("0.70"), 256, "gpt-4o"),
        PromptVersionView(2, D("0.25"), "Hi {name}!", None, None, None, None),
    ]
    assert parse_view(raw.encode()) == parse_view(raw)


def test_parse_view_minimal_and_empty() -> None:
    assert parse_view('{"versions": []}') == []
    assert parse_view('{"versions": [{"version": 4, "weight": "1", "extra": 1}]}') == [
        PromptVersionView(4, D("1"), None, None, None, None, None)
    ]


def _one(**fields: object) -> str:
    entry: dict[str, object] = {"version": 1, "weight": "1"}
    entry.update(fields)
    return json.dumps({"prompt_name": "p", "versions": [entry]})


@pytest.mark.parametrize(
    ("raw", "match"),
    [
        ("not json", "not valid JSON"),
        (b"\xff\xfe", "not valid JSON"),
        ("[]", "<view>: Input should be an object"),
        ('{"prompt_name": "p"}', "versions: Field required"),
        ('{"versions": {}}', "versions: Input should be a valid array"),
        ('{"versions": [1]}', r"versions\.0: Input should be an object"),
        (_one(version="1"), r"versions\.0\.version: Input should be a valid integer"),
        (_one(version=True), r"versions\.0\.version: Input should be a valid integer"),
        (_one(weight=None), r"versions\.0\.weight: must be a decimal string"),
        (_one(weight=0.5), r"versions\.0\.weight: must be a decimal string"),
        (_one(weight="half"), r"versions\.0\.weight: must be a decimal string"),
        (_one(weight="NaN"), r"versions\.0\.weight: must be finite"),
        (_one(weight="-0.1"), r"versions\.0\.weight: Input should be greater than or equal to 0"),
        (_one(temperature=0.7), r"versions\.0\.temperature: must be a decimal string"),
        (_one(temperature="hot"), r"versions\.0\.temperature: must be a decimal string"),
        (_one(max_tokens="100"), r"versions\.0\.max_tokens: Input should be a valid integer"),
        (_one(content=5), r"versions\.0\.content: Input should be a valid string"),
        (_one(model=["x"]), r"versions\.0\.model: Input should be a valid string"),
        (
            '{"versions": [{"version": 1, "weight": "0.5"}, {"version": 1, "weight": "0.5"}]}',
            "version twice",
        ),
    ],
)
def test_parse_view_rejects_malformed(raw: str | bytes, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        parse_view(raw)


# --- PromptSelector against a real redis-server --------------------------------------------


class RedisServer:
    """A throwaway redis-server on a free port (no persistence), restartable on that port."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port: int = s.getsockname()[1]
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        exe = shutil.which("redis-server")
        assert exe is not None
        # --save "" and --appendonly no: no persistence, so a restart comes back empty.
        flags = f"--port {self.port} --bind 127.0.0.1 --appendonly no"
        self.proc = subprocess.Popen(
            [exe, *flags.split(), "--dir", str(self.workdir), "--save", ""],
            cwd=self.workdir,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        client = SyncRedis(port=self.port, socket_timeout=0.5, socket_connect_timeout=0.5)
        deadline = time.monotonic() + 10
        try:
            while time.monotonic() < deadline:
                try:
                    if client.ping():
                        return
                except (RedisError, OSError):
                    time.sleep(0.05)
            raise RuntimeError(f"redis-server on port {self.port} did not answer PING")
        finally:
            client.close()

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            self.proc = None


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server not installed")
    server = RedisServer(tmp_path)
    server.start()
    try:
        yield server
    finally:
        server.stop()


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


CONFIG = GatewayConfig(bootstrap_servers="127.0.0.1:9", topic_prefix="t-sel-")


def _client(server: RedisServer) -> Redis:
    # No client-side retries: an outage must show up within the socket timeout.
    return Redis(
        port=server.port,
        socket_timeout=0.25,
        socket_connect_timeout=0.25,
        retry=Retry(NoBackoff(), 0),
    )


def _view(versions: dict[int, tuple[str, str | None]]) -> str:
    """Registry view JSON via the agent's own writer; ``{version: (content, weight)}``."""
    records = {
        v: VersionRecord(v, content, active=True, weight=None if w is None else D(w))
        for v, (content, w) in versions.items()
    }
    return registry_view(PromptState("greet", records)).model_dump_json()


@pytest.mark.stack
async def test_selector_serves_caches_and_survives_outage(
    redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="llmpulse.gateway.prompts")
    key = prompt_key(CONFIG.topic_prefix, "greet")
    rds = _client(redis_server)
    clock = FakeClock()
    selector = PromptSelector(rds, CONFIG, refresh_seconds=1.0, clock=clock)
    try:
        await rds.set(key, registry_view(_state()).model_dump_json())
        weights = [(1, D("0.75")), (2, D("0.25"))]
        for s in SUBJECTS[:50]:
            choice = await selector.select("greet", s)
            assert choice.prompt_name == "greet"
            assert choice.version.version == assign("greet", s, weights)
            if choice.version.version == 1:
                assert choice.version.content == "Hello {name}"
                assert choice.version.temperature == D("0.70")
                assert choice.version.max_tokens == 256
        got = {(await selector.select("greet", s)).version.version for s in SUBJECTS}
        assert got == {1, 2}

        # A new view is not read before refresh_seconds, and is read after.
        await rds.set(key, _view({2: ("only two", None)}))
        clock.now += 0.5
        assert {(await selector.select("greet", s)).version.version for s in SUBJECTS} == {1, 2}
        clock.now += 0.5
        assert {(await selector.select("greet", s)).version.version for s in SUBJECTS} == {2}

        with pytest.raises(PromptUnavailable):
            await selector.select("no-such-prompt", "u")
        await rds.set(prompt_key(CONFIG.topic_prefix, "retired"), '{"versions": []}')
        with pytest.raises(PromptUnavailable):
            await selector.select("retired", "u")

        # Outage: the last known view keeps being served, no exception, one warning.
        redis_server.stop()
        for _ in range(3):
            clock.now += 1.5
            choice = await selector.select("greet", "user-1")
            assert (choice.version.version, choice.version.content) == (2, "only two")
        with pytest.raises(PromptUnavailable):
            await selector.select("never-seen", "u")
        warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
        assert len(warnings) == 1
        assert "Redis unreachable" in warnings[0].getMessage()

        # Redis comes back empty (no persistence): the last known view stays until
        # the registry writes the prompt again, then the new view is served.
        redis_server.start()
        clock.now += 1.5
        assert (await selector.select("greet", "user-1")).version.content == "only two"
        assert any("reachable again" in r.getMessage() for r in caplog.records)
        await rds.set(key, _view({3: ("three", None)}))
        clock.now += 1.5
        assert (await selector.select("greet", "user-1")).version.version == 3
    finally:
        await rds.aclose()


@pytest.mark.stack
async def test_selector_keeps_view_when_redis_value_is_malformed(
    redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    key = prompt_key(CONFIG.topic_prefix, "greet")
    rds = _client(redis_server)
    clock = FakeClock()
    selector = PromptSelector(rds, CONFIG, clock=clock)
    try:
        await rds.set(key, _view({1: ("one", None)}))
        assert (await selector.select("greet", "u")).version.version == 1
        await rds.set(key, '{"versions": [{"version": 1, "weight": 0.5}]}')
        clock.now += 2
        with caplog.at_level(logging.WARNING, logger="llmpulse.gateway.prompts"):
            assert (await selector.select("greet", "u")).version.content == "one"
        assert any("malformed prompt view" in r.getMessage() for r in caplog.records)
        # Nothing cached and only a malformed value: unavailable, not a ValueError.
        await rds.set(prompt_key(CONFIG.topic_prefix, "broken"), "{")
        with pytest.raises(PromptUnavailable):
            await selector.select("broken", "u")
    finally:
        await rds.aclose()


@pytest.mark.stack
async def test_concurrent_selects_share_one_redis_read(redis_server: RedisServer) -> None:
    rds = _client(redis_server)
    clock = FakeClock()
    selector = PromptSelector(rds, CONFIG, clock=clock)
    try:
        await rds.set(prompt_key(CONFIG.topic_prefix, "greet"), _view({1: ("one", None)}))
        await rds.config_resetstat()
        choices = await asyncio.gather(*(selector.select("greet", s) for s in SUBJECTS[:100]))
        assert {c.version.version for c in choices} == {1}
        clock.now += 0.5
        await asyncio.gather(*(selector.select("greet", s) for s in SUBJECTS[:100]))
        stats = await rds.info("commandstats")
        assert stats["cmdstat_get"]["calls"] == 1
    finally:
        await rds.aclose()


class FlakyRedis:
    """Stands in for the client: serves ``value`` until ``down``, then raises OSError."""

    def __init__(self, value: str) -> None:
        self.value = value
        self.down = False
        self.gets = 0

    async def get(self, key: str) -> str:
        self.gets += 1
        if self.down:
            raise OSError("connection reset")
        return self.value


async def test_outage_retries_redis_once_per_refresh_period() -> None:
    fake = FlakyRedis(_view({1: ("one", None)}))
    clock = FakeClock()
    selector = PromptSelector(cast(Redis, fake), CONFIG, refresh_seconds=1.0, clock=clock)
    assert (await selector.select("greet", "u")).version.content == "one"
    fake.down = True
    clock.now += 1.0
    for _ in range(20):
        assert (await selector.select("greet", "u")).version.content == "one"
    # One failed read, then the view is served without asking Redis again...
    assert fake.gets == 2
    clock.now += 0.9
    await selector.select("greet", "u")
    assert fake.gets == 2
    # ...until refresh_seconds after the failed attempt.
    clock.now += 0.1
    await selector.select("greet", "u")
    assert fake.gets == 3


def test_selector_rejects_bad_refresh() -> None:
    with pytest.raises(ValueError, match="refresh_seconds"):
        PromptSelector(Redis(), CONFIG, refresh_seconds=0)
