"""The resend memory of the stateful agents (``llmpulse.core.dedup``), pure."""

from __future__ import annotations

import random
import uuid

from hypothesis import given, settings
from hypothesis import strategies as st

from llmpulse.core.dedup import BUCKET_SECONDS, Seen, SeenIds, id_key, minute_of, pack, unpack

HORIZON = 3_610.0
T0 = 1_780_000_000.0  # a clock reading, seconds


def test_a_resend_is_a_duplicate_open_or_sealed() -> None:
    seen = SeenIds(HORIZON)
    key = id_key(uuid.uuid4())
    assert seen.check(key, T0, T0) is Seen.NEW
    assert seen.check(key, T0, T0 + 1) is Seen.DUPLICATE
    seen.seal(T0 + 5 * BUCKET_SECONDS)
    assert seen.check(key, T0, T0 + 5 * BUCKET_SECONDS) is Seen.DUPLICATE
    # A late event of a sealed minute is remembered too, and survives the next seal.
    late = id_key(uuid.uuid4())
    assert seen.check(late, T0, T0 + 6 * BUCKET_SECONDS) is Seen.NEW
    assert seen.check(late, T0, T0 + 6 * BUCKET_SECONDS) is Seen.DUPLICATE
    seen.seal(T0 + 7 * BUCKET_SECONDS)
    assert seen.check(late, T0, T0 + 7 * BUCKET_SECONDS) is Seen.DUPLICATE
    assert seen.check(key, T0, T0 + 7 * BUCKET_SECONDS) is Seen.DUPLICATE


def test_the_same_id_at_another_minute_is_another_event() -> None:
    seen = SeenIds(HORIZON)
    key = id_key(uuid.uuid4())
    assert seen.check(key, T0, T0) is Seen.NEW
    assert seen.check(key, T0 + BUCKET_SECONDS, T0) is Seen.NEW


def test_beyond_the_horizon_an_event_is_unchecked_and_its_minute_dropped() -> None:
    seen = SeenIds(HORIZON)
    key = id_key(uuid.uuid4())
    assert seen.check(key, T0, T0) is Seen.NEW
    later = minute_of(T0) + BUCKET_SECONDS + HORIZON  # the minute of T0 ends at now - horizon
    assert seen.check(key, T0, later) is Seen.UNCHECKED
    assert seen.seal(T0 + 3 * BUCKET_SECONDS) == ([minute_of(T0)], [])
    assert seen.seal(later) == ([], [minute_of(T0)])
    assert len(seen) == 0
    # A clock that steps back does not bring a dropped minute back half empty.
    assert seen.check(key, T0, T0) is Seen.UNCHECKED


def test_take_new_hands_out_each_recorded_key_once_and_restore_rebuilds() -> None:
    seen = SeenIds(HORIZON)
    keys = [id_key(uuid.uuid4()) for _ in range(5)]
    for i, key in enumerate(keys):
        assert seen.check(key, T0 + i * BUCKET_SECONDS, T0 + 300) is Seen.NEW
    seen.check(keys[0], T0, T0 + 300)  # a duplicate is not new
    new = seen.take_new()
    assert sorted(k for ks in new.values() for k in ks) == sorted(keys)
    assert seen.take_new() == {}

    restored = SeenIds(HORIZON)
    for minute, ks in new.items():
        restored.restore(minute, unpack(pack(ks)))
    assert restored.take_new() == {}
    for i, key in enumerate(keys):
        assert restored.check(key, T0 + i * BUCKET_SECONDS, T0 + 300) is Seen.DUPLICATE


def test_pack_round_trips_full_64_bit_keys() -> None:
    keys = [0, 1, 2**63, 2**64 - 1, id_key(uuid.uuid4())]
    assert list(unpack(pack(keys))) == sorted(keys)
    assert len(pack(range(1000))) <= 1000 * 8 * 4 // 3 + 4


@settings(max_examples=200, deadline=None)
@given(
    events=st.lists(st.tuples(st.integers(0, 40), st.integers(0, 7_200)), min_size=1, max_size=300),
    resends=st.lists(st.tuples(st.integers(0, 299), st.integers(0, 4_000)), max_size=100),
    horizon=st.integers(61, 4_000),
)
def test_a_resend_within_the_horizon_is_always_caught(
    events: list[tuple[int, int]], resends: list[tuple[int, int]], horizon: int
) -> None:
    """Event ``i`` (event time ``lag`` s before it arrives) and resends ``delay`` s later.

    Every copy whose event time is within the horizon of the clock is checked,
    and an event none of whose copies went unchecked is applied exactly once.
    """
    rng = random.Random(len(events))
    ids = [uuid.UUID(int=rng.getrandbits(128)) for _ in events]
    arrivals = [(T0 + arrival, i) for i, (_, arrival) in enumerate(events)]
    arrivals += [(T0 + events[i][1] + delay, i) for i, delay in resends if i < len(events)]
    arrivals.sort()
    seen = SeenIds(horizon)
    verdicts: dict[int, list[Seen]] = {i: [] for i in range(len(events))}
    last_seal = T0
    for now, i in arrivals:
        if now - last_seal >= 1:
            seen.seal(now)
            last_seal = now
        lag, arrival = events[i]
        event_time = T0 + arrival - lag
        verdict = seen.check(id_key(ids[i]), event_time, now)
        verdicts[i].append(verdict)
        if event_time >= now - horizon:
            assert verdict is not Seen.UNCHECKED
    for copies in verdicts.values():
        applied = sum(v is not Seen.DUPLICATE for v in copies)
        assert applied == 1 or Seen.UNCHECKED in copies


def test_distinct_ids_are_never_duplicates_at_realistic_sizes() -> None:
    """200,000 random ids in one minute (plus 100,000 in the next): no false duplicate."""
    seen = SeenIds(HORIZON)
    for _ in range(200_000):
        assert seen.check(id_key(uuid.uuid4()), T0, T0) is Seen.NEW
    seen.seal(T0 + 3 * BUCKET_SECONDS)
    for _ in range(100_000):
        assert seen.check(id_key(uuid.uuid4()), T0, T0 + 3 * BUCKET_SECONDS) is Seen.NEW


def test_memory_is_bounded_by_the_horizon() -> None:
    """A steady stream for three horizons keeps at most a horizon plus two minutes of ids."""
    horizon = 600.0
    seen = SeenIds(horizon)
    per_second = 20
    most = 0
    for second in range(int(3 * horizon)):
        now = T0 + second
        for _ in range(per_second):
            seen.check(id_key(uuid.uuid4()), now - 5, now)
        seen.seal(now)
        most = max(most, len(seen))
    assert most <= (horizon + 2 * BUCKET_SECONDS) * per_second
    assert len(seen) >= horizon * per_second  # and everything within the horizon is kept
