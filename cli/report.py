"""``llmpulse report`` (cost allocation, chargeback, period close) and ``llmpulse pricing load``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from llmpulse.cli.common import EXIT_OK, SubParsers, UsageError, load_settings
from llmpulse.cli.files import write_text


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
    p.add_argument("--output", type=Path, help="write to this file instead of stdout")
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
    """
    from llmpulse.processors.billing import allocation, reports
    from llmpulse.processors.stream.clickhouse import connect

    settings = load_settings()
    rate = settings.chargeback_default_rate
    if args.action == "close":
        if not args.period:
            raise UsageError("report close needs --period YYYY-MM")
        reports.parse_period(args.period)
        closed = reports.close_period(connect(settings), args.period, default_rate=rate)
        print(
            f"closed {args.period}: {len(closed.lines)} lines, "
            f"total cost {closed.grand_total('cost_usd')} USD, charge {closed.charge_total} USD"
        )
        return EXIT_OK
    if not (args.start and args.end):
        raise UsageError("report costs needs --start and --end")
    start = reports.parse_instant(args.start, "start")
    end = reports.parse_instant(args.end, "end")
    reports.check_period(start, end)
    report = reports.cost_report(
        connect(settings), start, end, default_rate=rate, org=args.org, live=args.live
    )
    render = {
        "table": allocation.render_table,
        "csv": allocation.render_csv,
        "json": allocation.render_json,
    }[args.format]
    text = render(report)
    if args.output:
        write_text(args.output, text)
        print(f"wrote {args.output}", file=sys.stderr)
    else:
        sys.stdout.write(text)
    return EXIT_OK


def cmd_pricing(args: argparse.Namespace) -> int:
    """Load a prices / rates / organizations file; a bad file (``PricingFileError``) exits 2."""
    from llmpulse.processors.billing import pricing
    from llmpulse.processors.stream.clickhouse import connect

    data = pricing.parse_file(args.file)
    counts = pricing.load(connect(load_settings()), data)
    print(", ".join(f"{n} {table}" for table, n in counts.items()) + " loaded")
    return EXIT_OK
