"""Cost allocation report: pure shaping and rendering (table, CSV, JSON).

Input rows come from ``clickhouse/queries/usage_events__allocation.sql`` (one
per organization, operation and line kind). Money stays ``Decimal``: reported
costs are exact to 9 places; list cost and charge are rounded half-even to 9
places once per cell, and every total is the sum of the displayed cells, so a
CSV adds up exactly.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from decimal import ROUND_HALF_EVEN, Decimal
from typing import Any

from llmpulse.schemas.events import Operation

NINE_PLACES = Decimal("0.000000001")
MILLION = Decimal(1_000_000)
#: Operations always shown as columns (the seed's CSV dropped moderation).
BASE_OPERATIONS: tuple[str, ...] = (
    Operation.completion.value,
    Operation.embedding.value,
    Operation.moderation.value,
)


def money(value: Decimal) -> Decimal:
    """``value`` rounded half-even to 9 decimal places (exact when it has fewer)."""
    return value.quantize(NINE_PLACES, rounding=ROUND_HALF_EVEN)


@dataclass
class Cell:
    """Usage of one operation on one report line."""

    requests: int = 0
    tokens: int = 0
    cost_usd: Decimal = Decimal(0)
    list_cost_usd: Decimal = Decimal(0)
    unpriced_requests: int = 0
    unpriced_tokens: int = 0
    charge_exact: Decimal = Decimal(0)


@dataclass
class Line:
    """One organization's usage in the period, or an adjustment for a closed month."""

    org_id: str
    org_name: str
    adjusts_period: str = ""
    cells: dict[str, Cell] = field(default_factory=dict)
    rates: set[str] = field(default_factory=set)

    @property
    def kind(self) -> str:
        return f"adjustment {self.adjusts_period[:7]}" if self.adjusts_period else "usage"

    def total(self, attr: str) -> Any:
        return sum(
            (getattr(c, attr) for c in self.cells.values()),
            start=Decimal(0) if attr in _MONEY else 0,
        )

    @property
    def charge_usd(self) -> Decimal:
        return money(sum((c.charge_exact for c in self.cells.values()), start=Decimal(0)))

    @property
    def chargeback_rate(self) -> str:
        if len(self.rates) == 1:
            return next(iter(self.rates))
        return "mixed " + "|".join(sorted(self.rates))


_MONEY = {"cost_usd", "list_cost_usd", "charge_exact"}


@dataclass
class CostReport:
    """The whole report for the half-open UTC period [start, end)."""

    start: datetime
    end: datetime
    operations: list[str]
    lines: list[Line]
    closed_at: datetime | None = None  # set when read from a period-close snapshot

    def grand_total(self, attr: str) -> Any:
        return sum(
            (line.total(attr) for line in self.lines), start=Decimal(0) if attr in _MONEY else 0
        )

    def op_total(self, op: str, attr: str) -> Any:
        zero: Any = Decimal(0) if attr in _MONEY else 0
        return sum((getattr(line.cells.get(op, Cell()), attr) for line in self.lines), start=zero)

    @property
    def charge_total(self) -> Decimal:
        return sum((line.charge_usd for line in self.lines), start=Decimal(0))


def build_report(
    start: datetime,
    end: datetime,
    rows: Iterable[Mapping[str, Any]],
    names: Mapping[str, str],
    closed_at: datetime | None = None,
) -> CostReport:
    """Group allocation query rows into report lines (usage first, then adjustments)."""
    lines: dict[tuple[str, str], Line] = {}
    seen_ops: set[str] = set()
    for row in rows:
        org = str(row["org_id"])
        key = (org, str(row["adjusts_period"]))
        line = lines.setdefault(key, Line(org, names.get(org, org), key[1]))
        op = str(row["operation"])
        seen_ops.add(op)
        list_e6 = row["list_cost_usd_e6"] or Decimal(0)
        line.cells[op] = Cell(
            requests=int(row["requests"]),
            tokens=int(row["tokens"]),
            cost_usd=Decimal(row["cost_usd"]),
            list_cost_usd=money(Decimal(list_e6) / MILLION),
            unpriced_requests=int(row["unpriced_requests"]),
            unpriced_tokens=int(row["unpriced_tokens"]),
            charge_exact=Decimal(row["charge_usd"]),
        )
        line.rates.update(f"{Decimal(str(r)):.4f}" for r in row["rates"])
    extra = sorted(seen_ops - set(BASE_OPERATIONS))
    ordered = sorted(
        lines.values(), key=lambda ln: (ln.adjusts_period != "", ln.org_id, ln.adjusts_period)
    )
    return CostReport(start, end, [*BASE_OPERATIONS, *extra], ordered, closed_at)


# --- rendering -------------------------------------------------------------------
def csv_header(report: CostReport) -> list[str]:
    cols = ["organization_id", "organization_name", "line"]
    for op in report.operations:
        cols += [f"{op}_requests", f"{op}_tokens", f"{op}_cost_usd"]
    return [
        *cols,
        "total_requests",
        "total_tokens",
        "total_cost_usd",
        "list_cost_usd",
        "unpriced_requests",
        "unpriced_tokens",
        "chargeback_rate",
        "total_charge_usd",
    ]


def _fmt(value: Decimal) -> str:
    return f"{money(value):f}"


def _line_values(report: CostReport, line: Line) -> list[str]:
    values = [line.org_id, line.org_name, line.kind]
    for op in report.operations:
        cell = line.cells.get(op, Cell())
        values += [str(cell.requests), str(cell.tokens), _fmt(cell.cost_usd)]
    return [
        *values,
        str(line.total("requests")),
        str(line.total("tokens")),
        _fmt(line.total("cost_usd")),
        _fmt(line.total("list_cost_usd")),
        str(line.total("unpriced_requests")),
        str(line.total("unpriced_tokens")),
        line.chargeback_rate,
        _fmt(line.charge_usd),
    ]


def _total_values(report: CostReport) -> list[str]:
    values = ["TOTAL", "", ""]
    for op in report.operations:
        values += [
            str(report.op_total(op, "requests")),
            str(report.op_total(op, "tokens")),
            _fmt(report.op_total(op, "cost_usd")),
        ]
    return [
        *values,
        str(report.grand_total("requests")),
        str(report.grand_total("tokens")),
        _fmt(report.grand_total("cost_usd")),
        _fmt(report.grand_total("list_cost_usd")),
        str(report.grand_total("unpriced_requests")),
        str(report.grand_total("unpriced_tokens")),
        "",
        _fmt(report.charge_total),
    ]


def render_csv(report: CostReport) -> str:
    """Header, one row per line (organization or adjustment), then a TOTAL row."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(csv_header(report))
    for line in report.lines:
        writer.writerow(_line_values(report, line))
    writer.writerow(_total_values(report))
    return out.getvalue()


def render_json(report: CostReport) -> str:
    """Machine-readable report; every decimal is a string."""
    header = csv_header(report)
    doc = {
        "period": {"start": report.start.isoformat(), "end": report.end.isoformat()},
        "closed_at": report.closed_at.isoformat() if report.closed_at else None,
        "operations": report.operations,
        "lines": [dict(zip(header, _line_values(report, ln), strict=True)) for ln in report.lines],
        "total": dict(zip(header, _total_values(report), strict=True)),
    }
    return json.dumps(doc, indent=2) + "\n"


def render_table(report: CostReport) -> str:
    """Human-readable table: cost per operation, totals, list cost and charge."""
    ops = report.operations
    cols = [
        "organization",
        "line",
        *[f"{op}" for op in ops],
        "requests",
        "cost_usd",
        "list_cost_usd",
        "unpriced",
        "rate",
        "charge_usd",
    ]
    rows = []
    for line in report.lines:
        rows.append(
            [
                line.org_name,
                line.kind,
                *[_fmt(line.cells.get(op, Cell()).cost_usd) for op in ops],
                str(line.total("requests")),
                _fmt(line.total("cost_usd")),
                _fmt(line.total("list_cost_usd")),
                str(line.total("unpriced_requests")),
                line.chargeback_rate,
                _fmt(line.charge_usd),
            ]
        )
    rows.append(
        [
            "TOTAL",
            "",
            *[_fmt(report.op_total(op, "cost_usd")) for op in ops],
            str(report.grand_total("requests")),
            _fmt(report.grand_total("cost_usd")),
            _fmt(report.grand_total("list_cost_usd")),
            str(report.grand_total("unpriced_requests")),
            "",
            _fmt(report.charge_total),
        ]
    )
    widths = [max(len(c), *(len(r[i]) for r in rows)) for i, c in enumerate(cols)]

    def fmt(r: list[str]) -> str:
        return "  ".join(
            v.ljust(w) if i < 2 else v.rjust(w)
            for i, (v, w) in enumerate(zip(r, widths, strict=True))
        )

    title = f"Cost allocation [{report.start.isoformat()}, {report.end.isoformat()}) UTC"
    if report.closed_at:
        title += f" - closed snapshot taken {report.closed_at.isoformat()}"
    rule = "-" * len(fmt(cols))
    body = [fmt(r) for r in rows[:-1]]
    return "\n".join([title, fmt(cols), rule, *body, rule, fmt(rows[-1])]) + "\n"
