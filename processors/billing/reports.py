"""Cost reports and period close against ClickHouse (``usage_events__allocation``).

Input validation lives here so every caller (CLI, demo, tests) gets the same
one-line ``BillingInputError``: periods are explicit UTC instants between
``EARLIEST`` and ``LATEST``, ``end`` must follow ``start``, an organization
filter must name a known organization.
"""

from __future__ import annotations

import re
import time
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

from clickhouse_connect.driver.client import Client
from clickhouse_connect.driver.exceptions import DatabaseError

from llmpulse.processors.billing import copies
from llmpulse.processors.billing.allocation import CostReport, build_report
from llmpulse.processors.errors import InputError
from llmpulse.processors.stream.clickhouse import run_query
from llmpulse.processors.userinput import shorten

FAR_FUTURE = datetime(2200, 1, 1, tzinfo=UTC)
#: The instants a report period (and a price or rate change) may name: ClickHouse
#: ``Date`` columns (the daily rollup, closed months) hold 1970-01-01 to
#: 2149-06-06, and ``toDate`` wraps around silently outside that range.
EARLIEST = datetime(1970, 1, 1, tzinfo=UTC)
LATEST = datetime(2149, 6, 1, tzinfo=UTC)
#: The allocation query's message when the rollup changed under it (see allocation_rows).
_ROLLUP_CHANGED = "usage_daily gained a duplicate during the cost report"
_ALLOCATION_ATTEMPTS = 3
_PERIOD = re.compile(r"^([0-9]{4})-([0-9]{2})$")
_ALLOCATION_COLUMNS = (
    "org_id",
    "operation",
    "adjusts_period",
    "requests",
    "tokens",
    "cost_usd",
    "unpriced_requests",
    "unpriced_tokens",
    "list_cost_usd_e6",
    "charge_usd",
    "rates",
)


class BillingInputError(InputError, ValueError):
    """Bad report input: printed as one line, exit code 2."""


def parse_instant(text: str, what: str) -> datetime:
    """``YYYY-MM-DD`` (midnight UTC) or an RFC 3339 timestamp with a zone, as UTC."""
    try:
        if re.fullmatch(r"[0-9]{4}-[0-9]{2}-[0-9]{2}", text):
            value = datetime.fromisoformat(text).replace(tzinfo=UTC)
        else:
            value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise BillingInputError(
            f"{what} {shorten(text)} is not a date (YYYY-MM-DD) or RFC 3339 timestamp"
        ) from None
    return utc_instant(value, what, shorten(text))


def utc_instant(value: datetime, what: str, shown: str) -> datetime:
    """``value`` in UTC; it must name its zone and lie in [``EARLIEST``, ``LATEST``].

    ``shown`` is how the error message quotes the value (as the user wrote it).
    """
    if value.tzinfo is None:
        raise BillingInputError(f"{what} {shown} has no time zone; add Z or an offset")
    # Compared before converting: 0001-01-01T00:00:00+01:00 has no UTC datetime.
    if not EARLIEST <= value <= LATEST:
        raise BillingInputError(
            f"{what} {shown} is outside the dates billing supports "
            f"({EARLIEST:%Y-%m-%d} to {LATEST:%Y-%m-%d} UTC)"
        )
    return value.astimezone(UTC)


def parse_period(text: str) -> tuple[date, datetime, datetime]:
    """``YYYY-MM`` -> (first day, start, end) of that UTC month."""
    m = _PERIOD.match(text)
    if not m or not 1 <= int(m.group(2)) <= 12:
        raise BillingInputError(f"period {shorten(text)} is not a month in the form YYYY-MM")
    year, month = int(m.group(1)), int(m.group(2))
    if not (EARLIEST.year, EARLIEST.month) <= (year, month) < (LATEST.year, LATEST.month):
        raise BillingInputError(
            f"period {text!r} is outside the months billing supports "
            f"({EARLIEST:%Y-%m} to {LATEST - timedelta(days=1):%Y-%m})"
        )
    start = datetime(year, month, 1, tzinfo=UTC)
    end = datetime(year + month // 12, month % 12 + 1, 1, tzinfo=UTC)
    return start.date(), start, end


def check_period(start: datetime, end: datetime) -> None:
    """Both ends are supported UTC instants and ``end`` follows ``start``."""
    for value, what in ((start, "start"), (end, "end")):
        utc_instant(value, what, shorten(value.isoformat()))
    if end <= start:
        raise BillingInputError(
            f"end {end.isoformat()} must be after start {start.isoformat()} "
            "(periods are [start, end))"
        )


def org_names(client: Client) -> dict[str, str]:
    return {str(r["org_id"]): str(r["name"]) for r in run_query(client, "organizations__names", {})}


def check_org(client: Client, org: str) -> None:
    hits = run_query(client, "usage_events__org_known", {"org": org})[0]["hits"]
    if not hits:
        raise BillingInputError(
            f"unknown organization {shorten(org)}: no usage and no organizations entry"
        )


def allocation_rows(
    client: Client,
    start: datetime,
    end: datetime,
    *,
    default_rate: Decimal,
    org: str = "",
    as_of: datetime = FAR_FUTURE,
) -> list[dict[str, Any]]:
    """Rows of ``usage_events__allocation`` (values bound server-side).

    The query stops rather than count an event twice when a duplicate reaches
    the daily rollup while it runs (a sink race during the report); running it
    again then reads that month with FINAL.
    """
    params = {"start": start, "end": end, "org": org, "as_of": as_of, "default_rate": default_rate}
    attempts = _ALLOCATION_ATTEMPTS
    while True:
        try:
            return run_query(client, "usage_events__allocation", params)
        except DatabaseError as exc:
            attempts -= 1
            if attempts == 0 or _ROLLUP_CHANGED not in str(exc):
                raise


def closed_month(client: Client, period: date) -> dict[str, Any] | None:
    rows = run_query(client, "period_closes__get", {"period": period})
    return rows[0] if rows else None


def cost_report(
    client: Client,
    start: datetime,
    end: datetime,
    *,
    default_rate: Decimal,
    org: str | None = None,
    live: bool = False,
) -> CostReport:
    """The allocation report for [start, end).

    For a whole closed month (and no org filter) the frozen snapshot is returned
    unless ``live``; otherwise usage is computed now, with late usage of closed
    months as adjustment lines of the period in which it was stored. Copies of
    one event_id are reconciled first (``copies.reconcile``): the report would be
    exact without it, but it keeps the report's own check to recent inserts.
    """
    check_period(start, end)
    if org:
        check_org(client, org)
    names = org_names(client)
    if not live and not org and start.day == 1 and start.time() == datetime.min.time():
        first, p_start, p_end = parse_period(start.strftime("%Y-%m"))
        close = closed_month(client, first)
        if close and (p_start, p_end) == (start, end):
            rows = run_query(client, "closed_allocations__snapshot", {"period": first})
            closed_at = close["closed_at"]
            assert isinstance(closed_at, datetime)
            return build_report(start, end, rows, names, closed_at=closed_at.replace(tzinfo=UTC))
    copies.reconcile(client)
    rows = allocation_rows(client, start, end, default_rate=default_rate, org=org or "")
    return build_report(start, end, rows, names)


def close_period(
    client: Client,
    period: str,
    *,
    default_rate: Decimal,
    settle_seconds: float = 1.0,
    now: datetime | None = None,
) -> CostReport:
    """Freeze a finished month's allocation; refuses a month already closed or not over.

    ``closed_at`` is fixed first; after ``settle_seconds`` (so inserts stamped
    before it are visible) the snapshot takes exactly the rows stored up to
    ``closed_at``. Rows stored later are adjustments (see the allocation query).
    """
    first, start, end = parse_period(period)
    closed_at = now or datetime.now(UTC)
    if end > closed_at:
        raise BillingInputError(f"period {period} has not ended yet (it ends {end.isoformat()})")
    if closed_month(client, first):
        raise BillingInputError(f"period {period} is already closed; its snapshot never changes")
    # A crash between the two inserts below leaves rows without a close record.
    client.command(
        "ALTER TABLE closed_allocations DELETE WHERE period = {period:Date} "
        "SETTINGS mutations_sync = 1",
        parameters={"period": first},
    )
    time.sleep(settle_seconds)
    copies.reconcile(client)
    rows = allocation_rows(client, start, end, default_rate=default_rate, as_of=closed_at)
    if rows:
        client.insert(
            "closed_allocations",
            [[first, *(r[c] for c in _ALLOCATION_COLUMNS), closed_at] for r in rows],
            column_names=["period", *_ALLOCATION_COLUMNS, "closed_at"],
        )
    client.insert(
        "period_closes",
        [[first, start, end, closed_at]],
        column_names=["period", "period_start", "period_end", "closed_at"],
    )
    return build_report(start, end, rows, org_names(client), closed_at=closed_at)
