"""``llmpulse report`` (cost allocation, chargeback, period close) and ``llmpulse pricing load``."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any

from llmpulse.cli.common import EXIT_OK, SubParsers, UsageError, load_settings
from llmpulse.cli.files import write_text

if TYPE_CHECKING:
    from clickhouse_connect.driver.client import Client


def add_parser(sub: SubParsers) -> None:
    """Add ``report costs|close`` and ``pricing load FILE``."""
    p = sub.add_parser(
        "report",
        help="cost allocation and chargeback reports, period close",
        description="costs: allocation per organization for the half-open UTC period "
        "[--start, --end); dates are YYYY-MM-DD (midnight UTC) or RFC 3339 with a zone. "
        "close: freeze a finished month (--period YYYY-MM); later usage for it becomes "
        "adjustment lines.",
    )
    p.add_argument("action", choices=("costs", "close"))
    p.add_argument("--start", help="period start (inclusive), e.g. 2026-03-01")
    p.add_argument("--end", help="period end (exclusive), e.g. 2026-04-01")
    p.add_argument("--org", help="only this organization id")
    p.add_argument("--period", help="month to close, YYYY-MM")
    p.add_argument("--format", choices=("table", "csv", "json"), default="table")
    p.add_argument(
        "--output",
        type=Path,
        help="write to this file instead of stdout (a new file is readable by its owner only)",
    )
    p.add_argument(
        "--live", action="store_true", help="recompute a closed month instead of its snapshot"
    )
    p.set_defaults(func=cmd_report)

    p = sub.add_parser(
        "pricing",
        help="load prices, chargeback rates and organization names",
        description="load FILE: YAML with prices / chargeback_rates / organizations lists, or "
        "CSV whose header names one row kind. Prices are USD per million tokens.",
    )
    p.add_argument("action", choices=("load",))
    p.add_argument("file", type=Path)
    p.set_defaults(func=cmd_pricing)


def cmd_report(args: argparse.Namespace) -> int:
    """Close a month (one summary line) or render a cost report to stdout or --output.

    Malformed periods and unknown organizations raise ``BillingInputError``
    (an ``InputError``: exit code 2) before anything is written; an --output
    that cannot be written is one line too (exit 2, or 1 for a failing disk).
    While a sink worker holds the embedded chDB folder, it runs the report.
    """
    from llmpulse.processors.billing import reports
    from llmpulse.processors.stream import chdb_socket

    settings = load_settings()
    rate = str(settings.chargeback_default_rate)
    if args.action == "close":
        if not args.period:
            raise UsageError("report close needs --period YYYY-MM")
        reports.parse_period(args.period)
        arguments = {"period": args.period, "default_rate": rate}
        sys.stdout.write(chdb_socket.run(settings, report_close, arguments))
        return EXIT_OK
    if not (args.start and args.end):
        raise UsageError("report costs needs --start and --end")
    start = reports.parse_instant(args.start, "start")
    end = reports.parse_instant(args.end, "end")
    reports.check_period(start, end)
    arguments = {
        "start": start.isoformat(),
        "end": end.isoformat(),
        "default_rate": rate,
        "org": args.org,
        "live": args.live,
        "format": args.format,
    }
    text = chdb_socket.run(settings, report_costs, arguments)
    if args.output:
        write_text(args.output, text)
        print(f"wrote {args.output}", file=sys.stderr)
    else:
        sys.stdout.write(text)
    return EXIT_OK


def cmd_pricing(args: argparse.Namespace) -> int:
    """Load a prices / rates / organizations file; a bad file (``PricingFileError``) exits 2.

    The file is checked here first; a sink worker holding the embedded chDB
    folder loads it (by its absolute path) with the same code.
    """
    from llmpulse.processors.billing import pricing
    from llmpulse.processors.stream import chdb_socket

    pricing.parse_file(args.file)
    arguments = {"file": str(args.file.resolve())}
    sys.stdout.write(chdb_socket.run(load_settings(), pricing_load, arguments))
    return EXIT_OK


# --- named ClickHouse operations (run here, or in the sink worker: see chdb_socket) ---------


def report_costs(client: Client, arguments: Mapping[str, Any]) -> str:
    """The rendered cost report for ``cmd_report``'s validated arguments."""
    from llmpulse.processors.billing import allocation, reports

    report = reports.cost_report(
        client,
        datetime.fromisoformat(arguments["start"]),
        datetime.fromisoformat(arguments["end"]),
        default_rate=Decimal(arguments["default_rate"]),
        org=arguments["org"],
        live=arguments["live"],
    )
    render = {
        "table": allocation.render_table,
        "csv": allocation.render_csv,
        "json": allocation.render_json,
    }[arguments["format"]]
    return render(report)


def report_close(client: Client, arguments: Mapping[str, Any]) -> str:
    """Close the month; its one summary line."""
    from llmpulse.processors.billing import reports

    period = arguments["period"]
    closed = reports.close_period(client, period, default_rate=Decimal(arguments["default_rate"]))
    return (
        f"closed {period}: {len(closed.lines)} lines, "
        f"total cost {closed.grand_total('cost_usd')} USD, charge {closed.charge_total} USD\n"
    )


def pricing_load(client: Client, arguments: Mapping[str, Any]) -> str:
    """Load the pricing file at the absolute path ``arguments["file"]``; one summary line."""
    from llmpulse.processors.billing import pricing

    counts = pricing.load(client, pricing.parse_file(Path(arguments["file"])))
    return ", ".join(f"{n} {table}" for table, n in counts.items()) + " loaded\n"
