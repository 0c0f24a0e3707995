"""Billing cost as stored usage grows: dedup lookup, sink rate and cost reports by table size.

    python -m bench.billing_growth [--sizes 1000000,10000000] [--repeat 5] [--sink-events 20000]

Fills an embedded chDB database (a temporary folder) with synthetic usage, in
steps up to each size: 24 months of events (2025-01 to 2026-12), 50
organizations, three operations, stored 10 s after they happened; the
migrations' materialized view fills ``usage_event_keys`` as the sink's inserts
do. At each size it measures, as the median of ``--repeat`` runs:

* the usage sink's dedup lookup of 5,000 ids as the sink meets them: new ids
  but for 3% stored ones (resends; the at-least-once rate of issue 13's
  scenario), other ids in every run, as the sink never looks an id up twice;
  ``--stored-share 0.5`` measures the half-stored mix of earlier runs: the sink's own lookup
  on ``usage_event_keys`` (on embedded chDB, the ids in a RowBinary file), and
  the bound-ids query on ``usage_events`` (what the sink did before migration
  0007) for comparison;
* ``usage_events__allocation`` for one month (2026-06), every organization and
  one organization, and the brute-force query it replaced
  (``tests/billing_reference_allocation.sql``) for comparison; the two must
  return the same rows (the run stops otherwise), and the table shows how many
  requests the month and the organization hold;
* the usage sink's rate into that database (``--sink-events`` fresh outcome
  events through Kafka on the local stack; ``--sink-events 0`` skips it and
  needs no stack).

Size 0 (the empty table, the baseline of the growth targets) is always measured.
Times are client wall times of the query through clickhouse-connect's chDB
interface (the same path as the sink and ``llmpulse report costs``). Figures
are printed as Markdown tables (``bench.report``); nothing here is asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import random
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

from clickhouse_connect.driver.client import Client
from pydantic import SecretStr

from bench.common import bench_settings, produce_outcomes, progress
from bench.report import growth_tables
from bench.results import GrowthStep
from bench.sink_throughput import sink_rate
from llmpulse.processors.billing import copies
from llmpulse.processors.settings import Settings
from llmpulse.processors.sinks.usage import _LOOKUP, UsageSink
from llmpulse.processors.stream.clickhouse import connect, migrate, run_query

REFERENCE = Path(__file__).resolve().parents[1] / "tests" / "billing_reference_allocation.sql"
CHUNK = 5_000_000
LOOKUP_IDS = 5_000
#: Share of a lookup's ids that are stored already: resends, rare next to new events.
STORED_SHARE = 0.03
MONTHS = 24
START = datetime(2025, 1, 1, tzinfo=UTC)
SPAN_SECONDS = int((datetime(2027, 1, 1, tzinfo=UTC) - START).total_seconds())
JUNE = (datetime(2026, 6, 1, tzinfo=UTC), datetime(2026, 7, 1, tzinfo=UTC))

#: Synthetic rows ``first`` .. ``first + n - 1`` of one growth step that adds
#: ``step`` rows starting at ``step_first``: each step spreads its rows evenly over
#: the 24 months, so every size has the same shape.
_FILL = """
INSERT INTO usage_events (
    event_id, request_id, event_time, org_id, user_id, operation, provider, model,
    prompt_name, prompt_version, status, error_class, http_status, latency_ms, ttft_ms,
    input_tokens, output_tokens, cached_tokens, cost_usd, cache_hit, attempt, is_probe,
    payload_hash, inserted_at)
SELECT
    generateUUIDv4(number), generateUUIDv4(number + 1),
    toDateTime64('2025-01-01 00:00:00', 6, 'UTC')
        + toIntervalMicrosecond(
            toUInt64((number - {step_first:UInt64}) / {step:UInt64} * {span_us:UInt64})
        ) AS t,
    concat('org-', toString(number % 50)), '',
    ['completion', 'embedding', 'moderation'][number % 3 + 1],
    ['openai', 'anthropic'][number % 2 + 1],
    ['gpt-4o', 'claude-sonnet-4'][number % 2 + 1],
    '', 0, 'success', '', 200, 100 + number % 900, NULL,
    100 + number % 4000, number % 800, 0,
    toDecimal64(number % 10000, 9) / 1000000, false, 1, false,
    hex(SHA256(toString(number))), t + toIntervalSecond(10)
FROM numbers({first:UInt64}, {n:UInt64})
"""


def _median_seconds(run: Callable[[], object], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        run()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def _fill(client: Client, first: int, upto: int) -> None:
    """Grow the table from ``first`` to ``upto`` rows (one step, in chunks)."""
    for start in range(first, upto, CHUNK):
        n = min(CHUNK, upto - start)
        client.command(
            _FILL,
            parameters={
                "span_us": SPAN_SECONDS * 1_000_000,
                "step_first": first,
                "step": upto - first,
                "first": start,
                "n": n,
            },
        )
        progress(f"stored {start + n:,} rows")


def _lookup_id_sets(
    client: Client, rng: random.Random, repeat: int, stored_share: float
) -> list[list[uuid.UUID]]:
    """One set of ids per run, ``stored_share`` of them stored, no id in two sets.

    Repeating one set would measure ClickHouse's caches instead of the lookup:
    the query condition cache remembers which granules held none of the ids, so
    a second run of 0007's lookup skipped the reads that its first run made.
    """
    share = round(LOOKUP_IDS * stored_share)
    stored = client.query(
        "SELECT event_id FROM usage_event_keys ORDER BY rand() LIMIT {n:UInt32}",
        parameters={"n": share * repeat},
    )
    known = [uuid.UUID(str(row[0])) for row in stored.result_rows]
    sets = []
    for run in range(repeat):
        mine = known[run * share : (run + 1) * share]
        fresh = LOOKUP_IDS - len(mine)
        sets.append(mine + [uuid.UUID(int=rng.getrandbits(128), version=4) for _ in range(fresh)])
    return sets


def _median_lookup(sink: UsageSink, id_sets: list[list[uuid.UUID]]) -> float:
    """Median time of the sink's own lookup on ``usage_event_keys``, one id set per run."""
    runs = iter(id_sets)
    return _median_seconds(lambda: sink._lookup_by_file(next(runs)), len(id_sets))


def _median_lookup_before(client: Client, id_sets: list[list[uuid.UUID]]) -> float:
    """Median time of the bound-ids lookup on ``usage_events`` (before migration 0007)."""
    runs = iter(id_sets)
    sql = _LOOKUP.replace("usage_event_keys", "usage_events")
    return _median_seconds(lambda: client.query(sql, parameters={"ids": next(runs)}), len(id_sets))


def measure(
    sink: UsageSink, repeat: int, rng: random.Random, total_rows: int, stored_share: float
) -> dict[str, float]:
    client = sink.client
    id_sets = _lookup_id_sets(client, rng, repeat, stored_share)
    reference = REFERENCE.read_text()
    params: dict[str, Any] = {
        "start": JUNE[0],
        "end": JUNE[1],
        "as_of": datetime(2100, 1, 1, tzinfo=UTC),
        "default_rate": Decimal("1.2"),
    }
    figures = {
        "lookup": _median_lookup(sink, id_sets),
        "lookup_before": _median_lookup_before(client, id_sets),
    }
    for label, org in (("report_month", ""), ("report_org", "org-7")):
        bound = {**params, "org": org}
        fast = run_query(client, "usage_events__allocation", bound)
        before = client.query(reference, parameters=bound)
        brute = [dict(zip(before.column_names, r, strict=True)) for r in before.result_rows]
        if fast != brute:  # a speed-up that changes the answer is no speed-up
            raise SystemExit(f"{label}: the report differs from the brute-force query")
        figures[f"{label}_requests"] = float(sum(int(r["requests"]) for r in fast))
        if total_rows and not figures[f"{label}_requests"]:
            raise SystemExit(f"{label}: the measured month holds no usage (bad synthetic data)")
        figures[label] = _median_seconds(
            functools.partial(run_query, client, "usage_events__allocation", bound), repeat
        )
        figures[f"{label}_before"] = _median_seconds(
            functools.partial(client.query, reference, parameters=bound), repeat
        )
    return figures


async def _sink_step(
    base: Settings, client: Client, events: int, batch_rows: int, seed: int
) -> float:
    """The usage sink's events/s into ``client``'s database, on fresh topics.

    Each step needs its own ``seed``: the sample events' ids come from it, and
    ids stored by an earlier step would be dropped as duplicates.
    """
    settings = await bench_settings(base)
    await produce_outcomes(settings, events, seed=seed)
    return (await sink_rate(settings, client, events, batch_rows)).per_second


def run(
    sizes: list[int],
    repeat: int = 5,
    sink_events: int = 20_000,
    batch_rows: int = 5_000,
    stored_share: float = STORED_SHARE,
) -> list[GrowthStep]:
    """One step per size, smallest first, always starting with the empty table."""
    rng = random.Random(7)
    steps = []
    with tempfile.TemporaryDirectory(prefix="llmpulse-billing-growth-") as tmp:
        settings = Settings().model_copy(
            update={"clickhouse_dsn": SecretStr(f"chdb://{Path(tmp) / 'chdb'}")}
        )
        client = connect(settings)
        migrate(client)
        rows = 0
        for size in sorted({0, *sizes}):
            progress(f"filling to {size:,} rows")
            _fill(client, rows, size)
            rows = size
            # As the background compaction would at a sink's pace (the fill is faster).
            client.command("OPTIMIZE TABLE usage_event_keys")
            # As every report does before its query: decide the stored copies (none here),
            # so the query's own check reads only inserts since then. The synthetic rows are
            # stamped up to 2026-12-31, possibly after today: decide up to their last stamp.
            progress(f"reconciling copies at {size:,} rows")
            last = client.query("SELECT max(inserted_at) FROM usage_events").result_rows[0][0]
            copies.reconcile(client, now=last.replace(tzinfo=UTC) + copies.RACE_HORIZON)
            progress(f"measuring at {size:,} rows")
            f = measure(UsageSink(settings, client), repeat, rng, size, stored_share)
            sink = None
            if sink_events:
                progress(f"usage sink, {sink_events:,} events at {size:,} rows")
                sink = asyncio.run(
                    _sink_step(settings, client, sink_events, batch_rows, seed=size + 1)
                )
            steps.append(
                GrowthStep(
                    rows=size,
                    lookup_s=f["lookup"],
                    lookup_before_s=f["lookup_before"],
                    report_month_s=f["report_month"],
                    report_month_before_s=f["report_month_before"],
                    report_org_s=f["report_org"],
                    report_org_before_s=f["report_org_before"],
                    month_requests=int(f["report_month_requests"]),
                    org_requests=int(f["report_org_requests"]),
                    sink_per_second=sink,
                )
            )
    return steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--sizes", default="1000000,10000000", help="comma-separated row counts (0 is added)"
    )
    parser.add_argument("--repeat", type=int, default=5, help="runs per figure (median)")
    parser.add_argument(
        "--sink-events", type=int, default=20_000, help="events per sink step; 0: no sink, no stack"
    )
    parser.add_argument(
        "--stored-share",
        type=float,
        default=STORED_SHARE,
        help=f"share of looked-up ids already stored (default {STORED_SHARE})",
    )
    args = parser.parse_args()
    if not 0 <= args.stored_share <= 1:
        parser.error("--stored-share must be between 0 and 1")
    steps = run(
        [int(s) for s in args.sizes.split(",")],
        args.repeat,
        args.sink_events,
        stored_share=args.stored_share,
    )
    print()
    print(growth_tables(steps))


if __name__ == "__main__":
    main()
