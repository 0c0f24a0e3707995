"""Billing on chDB: allocation exactness, CSV totals, unpriced usage, period close, injection."""

from __future__ import annotations

import csv
import io
import json
import random
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest
from clickhouse_connect.driver.client import Client

from llmpulse.core.usage import USAGE_COLUMNS, payload_hash, usage_row
from llmpulse.processors.billing import pricing, reports
from llmpulse.processors.billing.allocation import render_csv, render_json, render_table
from llmpulse.schemas import LLMOutcome, Operation
from llmpulse.simulator.samples import sample_outcome
from tests.billing_fixtures import Price, expected_allocation, round9

MARCH = datetime(2026, 3, 1, tzinfo=UTC)
APRIL = datetime(2026, 4, 1, tzinfo=UTC)
RATE = Decimal("1.2")
PRICES = {
    ("openai", "gpt-4o"): [
        Price(datetime(2026, 1, 1, tzinfo=UTC), Decimal("2.5"), Decimal("10"), Decimal("1.25")),
        # A price change mid-March: events after it use the new price (ASOF).
        Price(datetime(2026, 3, 15, tzinfo=UTC), Decimal("2.0"), Decimal("8"), Decimal("1.0")),
    ],
    ("anthropic", "claude-sonnet-4"): [
        Price(datetime(2026, 1, 1, tzinfo=UTC), Decimal("3"), Decimal("15"), Decimal("0.3")),
    ],
}
RATES = {
    "acme": [(datetime(2026, 1, 1, tzinfo=UTC), Decimal("1.25"))],
    "hooli": [
        (datetime(2026, 1, 1, tzinfo=UTC), Decimal("1.1")),
        (datetime(2026, 3, 20, tzinfo=UTC), Decimal("1.3333")),
    ],
}


def _insert(ch: Client, outcomes: list[LLMOutcome]) -> None:
    ch.insert(
        "usage_events",
        [usage_row(o, payload_hash(o)) for o in outcomes],
        column_names=list(USAGE_COLUMNS),
    )


def _load_dimensions(ch: Client) -> None:
    data = pricing.PricingData(
        prices=[
            pricing.PriceRow(
                provider=prov,
                model=model,
                effective_from=p.effective_from,
                input_per_mtok=p.input_per_mtok,
                output_per_mtok=p.output_per_mtok,
                cached_per_mtok=p.cached_per_mtok,
            )
            for (prov, model), ps in PRICES.items()
            for p in ps
        ],
        chargeback_rates=[
            pricing.RateRow(org_id=org, effective_from=t, rate=r)
            for org, rows in RATES.items()
            for t, r in rows
        ],
        organizations=[pricing.OrgRow(org_id="acme", name="Acme Corp")],
    )
    pricing.load(ch, data)


def _march_outcomes(n: int, seed: int = 3) -> list[LLMOutcome]:
    rng = random.Random(seed)
    span = (APRIL - MARCH).total_seconds()
    out = [
        sample_outcome(rng, MARCH + timedelta(seconds=rng.uniform(0, span - 1))) for _ in range(n)
    ]
    # One operation beyond the seed's three, and events on both period edges.
    out[0] = out[0].model_copy(update={"operation": Operation.image, "event_time": MARCH})
    out[1] = out[1].model_copy(update={"event_time": APRIL - timedelta(microseconds=1)})
    return out


@pytest.fixture
def march(ch: Client) -> list[LLMOutcome]:
    for table in (
        "prices",
        "chargeback_rates",
        "organizations",
        "period_closes",
        "closed_allocations",
    ):
        ch.command(f"TRUNCATE TABLE {table}")
    outcomes = _march_outcomes(3000)
    outside = [
        sample_outcome(random.Random(9), APRIL),  # end is exclusive
        sample_outcome(random.Random(8), MARCH - timedelta(microseconds=1)),
    ]
    _insert(ch, outcomes + outside)
    _insert(ch, outcomes[:200])  # duplicates that a race let through: FINAL counts them once
    _load_dimensions(ch)
    return outcomes


@pytest.mark.chdb
def test_allocation_is_exact_per_org_and_operation(ch: Client, march: list[LLMOutcome]) -> None:
    report = reports.cost_report(ch, MARCH, APRIL, default_rate=RATE)
    expected = expected_allocation(march, PRICES, RATES, RATE)
    got = {}
    for line in report.lines:
        assert line.adjusts_period == ""
        for op, cell in line.cells.items():
            got[(line.org_id, op)] = {
                "requests": cell.requests,
                "tokens": cell.tokens,
                "cost": cell.cost_usd,
                "list": cell.list_cost_usd,
                "unpriced": cell.unpriced_requests,
                "charge": cell.charge_exact,
            }
    want = {k: {**v, "list": round9(Decimal(v["list"]))} for k, v in expected.items()}
    assert got == want
    assert "image" in report.operations
    assert report.operations[:3] == ["completion", "embedding", "moderation"]
    hooli = next(line for line in report.lines if line.org_id == "hooli")
    assert hooli.chargeback_rate == "mixed 1.1000|1.3333"
    assert next(ln for ln in report.lines if ln.org_id == "acme").org_name == "Acme Corp"


@pytest.mark.chdb
def test_unpriced_usage_is_never_zero_priced(ch: Client, march: list[LLMOutcome]) -> None:
    report = reports.cost_report(ch, MARCH, APRIL, default_rate=RATE)
    unpriced = sum(1 for o in march if (o.provider, o.model) not in PRICES)
    assert report.grand_total("unpriced_requests") == unpriced > 0
    for line in report.lines:
        emb = line.cells.get("embedding")
        if emb:  # no embedding model has a price in this test
            assert emb.unpriced_requests == emb.requests
            assert emb.list_cost_usd == 0


@pytest.mark.chdb
def test_csv_has_every_operation_and_totals_add_up(ch: Client, march: list[LLMOutcome]) -> None:
    report = reports.cost_report(ch, MARCH, APRIL, default_rate=RATE)
    rows = list(csv.DictReader(io.StringIO(render_csv(report))))
    *lines, total = rows
    assert total["organization_id"] == "TOTAL"
    assert len(lines) == len({o.org_id for o in march})
    for op in ("completion", "embedding", "moderation", "image"):
        assert f"{op}_cost_usd" in rows[0]
    money_cols = [c for c in rows[0] if c.endswith("_usd")]
    for col in money_cols:
        assert all(len(r[col].split(".")[1]) == 9 for r in rows), col  # fixed precision
        assert sum(Decimal(r[col]) for r in lines) == Decimal(total[col]), col
    for col in [c for c in rows[0] if c.endswith(("_requests", "_tokens"))]:
        assert sum(int(r[col]) for r in lines) == int(total[col]), col
    assert Decimal(total["total_cost_usd"]) == sum(o.cost_usd for o in march)
    assert int(total["total_requests"]) == len(march)
    for r in lines:
        ops_cost = sum(Decimal(r[f"{op}_cost_usd"]) for op in report.operations)
        assert ops_cost == Decimal(r["total_cost_usd"])
    doc = json.loads(render_json(report))
    assert doc["total"]["total_charge_usd"] == total["total_charge_usd"]
    assert "TOTAL" in render_table(report)


@pytest.mark.chdb
def test_period_close_snapshot_and_late_adjustment(ch: Client, march: list[LLMOutcome]) -> None:
    closed = reports.close_period(ch, "2026-03", default_rate=RATE, settle_seconds=0.2)
    before = render_csv(closed)
    with pytest.raises(reports.BillingInputError, match="already closed"):
        reports.close_period(ch, "2026-03", default_rate=RATE, settle_seconds=0)

    late = sample_outcome(random.Random(77), MARCH + timedelta(days=10))
    _insert(ch, [late])

    snapshot = reports.cost_report(ch, MARCH, APRIL, default_rate=RATE)
    assert snapshot.closed_at is not None
    assert render_csv(snapshot) == before  # the closed snapshot never changes
    live = reports.cost_report(ch, MARCH, APRIL, default_rate=RATE, live=True)
    assert render_csv(live).replace("\r", "") == before  # late usage is not March any more

    now = datetime.now(UTC)
    month_start = now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    current = reports.cost_report(ch, month_start, now + timedelta(days=1), default_rate=RATE)
    adjustments = [ln for ln in current.lines if ln.adjusts_period]
    assert len(adjustments) == 1
    adj = adjustments[0]
    assert adj.kind == "adjustment 2026-03"
    assert adj.org_id == late.org_id
    assert adj.total("requests") == 1
    assert adj.total("cost_usd") == late.cost_usd


@pytest.mark.chdb
def test_close_refuses_unfinished_month(ch: Client) -> None:
    now = datetime.now(UTC)
    with pytest.raises(reports.BillingInputError, match="has not ended yet"):
        reports.close_period(ch, now.strftime("%Y-%m"), default_rate=RATE, settle_seconds=0)


@pytest.mark.chdb
@pytest.mark.parametrize(
    "org",
    ["acme' OR '1'='1", "acme'; DROP TABLE usage_events; --", "x\\' OR 1=1 --", "{org:String}"],
)
def test_org_filter_is_bound_not_spliced(ch: Client, march: list[LLMOutcome], org: str) -> None:
    with pytest.raises(reports.BillingInputError, match="unknown organization"):
        reports.cost_report(ch, MARCH, APRIL, default_rate=RATE, org=org)
    # Bypassing the check: a spliced value would match every row; a bound one matches none.
    assert reports.allocation_rows(ch, MARCH, APRIL, default_rate=RATE, org=org) == []
    assert ch.query("SELECT count() FROM usage_events").result_rows[0][0] > 0


@pytest.mark.chdb
def test_org_filter_selects_one_org(ch: Client, march: list[LLMOutcome]) -> None:
    report = reports.cost_report(ch, MARCH, APRIL, default_rate=RATE, org="acme")
    assert {ln.org_id for ln in report.lines} == {"acme"}
    assert report.grand_total("requests") == sum(o.org_id == "acme" for o in march)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("2026-02-30", "not a date"),
        ("yesterday", "not a date"),
        ("2026-03-01T00:00:00", "no time zone"),
    ],
)
def test_parse_instant_rejects(text: str, message: str) -> None:
    with pytest.raises(reports.BillingInputError, match=message):
        reports.parse_instant(text, "start")


def test_parse_instant_and_period() -> None:
    assert reports.parse_instant("2026-03-01", "start") == MARCH
    assert reports.parse_instant("2026-03-01T02:00:00+02:00", "start") == MARCH
    assert reports.parse_period("2026-12")[1:] == (
        datetime(2026, 12, 1, tzinfo=UTC),
        datetime(2027, 1, 1, tzinfo=UTC),
    )
    for bad in ("2026-13", "2026-3", "March"):
        with pytest.raises(reports.BillingInputError):
            reports.parse_period(bad)


def test_pricing_yaml_reads_exact_decimals(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_text(
        "prices:\n  - {provider: openai, model: gpt-4o, effective_from: 2026-01-01,"
        " input_per_mtok: 0.1, output_per_mtok: 10, cached_per_mtok: 0.000000001}\n"
        "chargeback_rates:\n  - {org_id: acme, effective_from: 2026-01-01T00:00:00Z, rate: 1.25}\n"
    )
    data = pricing.parse_file(path)
    assert data.prices[0].input_per_mtok == Decimal("0.1")
    assert data.prices[0].cached_per_mtok == Decimal("0.000000001")
    assert data.prices[0].effective_from == datetime(2026, 1, 1, tzinfo=UTC)
    assert data.chargeback_rates[0].rate == Decimal("1.25")


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        ("a.yaml", "prices:\n  - {provider: openai}\n", "prices row 1"),
        ("a.yaml", "rates: []\n", "unknown section"),
        (
            "a.yaml",
            "chargeback_rates:\n  - {org_id: a, effective_from: 2026-01-01, rate: -1}\n",
            "rate",
        ),
        ("a.csv", "org_id,name,extra\nacme,Acme,1\n", "matches none"),
        ("a.csv", "org_id,effective_from,rate\nacme,2026-01-01,abc\n", "row 2"),
        ("a.txt", "x", "unknown file type"),
    ],
)
def test_pricing_file_errors(tmp_path: Path, name: str, text: str, message: str) -> None:
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(pricing.PricingFileError, match=message):
        pricing.parse_file(path)


@pytest.mark.chdb
def test_pricing_csv_and_example_file(tmp_path: Path, ch: Client) -> None:
    path = tmp_path / "rates.csv"
    path.write_text("org_id,effective_from,rate\nacme,2026-01-01,1.5\nglobex,2026-02-01,1.0\n")
    data = pricing.parse_file(path)
    assert [r.rate for r in data.chargeback_rates] == [Decimal("1.5"), Decimal("1.0")]
    example = Path(__file__).resolve().parents[1] / "examples" / "pricing.yaml"
    counts = pricing.load(ch, pricing.parse_file(example))
    assert counts["prices"] >= 4
