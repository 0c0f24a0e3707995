"""``llmpulse prompts``: the prompt registry (create, activate, deactivate, list), A/B tests."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Mapping
from datetime import datetime
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from llmpulse.cli.common import (
    EXIT_OK,
    SubParsers,
    UsageError,
    load_settings,
    positive_int,
    usage_error,
    with_services,
)
from llmpulse.processors.userinput import shorten

if TYPE_CHECKING:
    from clickhouse_connect.driver.client import Client

    from llmpulse.processors.settings import Settings


def add_parser(sub: SubParsers) -> None:
    """Add ``prompts create|activate|deactivate|list|compare [NAME]``."""
    p = sub.add_parser(
        "prompts",
        help="prompt registry (create, activate, deactivate, list) and A/B comparison",
        description="Versions of a prompt are 1, 2, 3...; activate without --weight makes a "
        "version the only active one; with --weight (0 to 1) it joins the A/B test and the "
        "remainder goes to the version activated without a weight (or weights are scaled to 1).",
    )
    p.add_argument("action", choices=("create", "activate", "deactivate", "list", "compare"))
    p.add_argument("name", nargs="?", help="prompt name")
    p.add_argument("--version", type=positive_int, help="version (create: defaults to next)")
    p.add_argument("--content", help="template text (create)")
    p.add_argument("--content-file", type=Path, help="read the template from a file (create)")
    p.add_argument("--system-message")
    p.add_argument("--temperature", help="0 to 2")
    p.add_argument("--max-tokens", type=positive_int)
    p.add_argument("--model")
    p.add_argument("--tag", action="append", help="repeatable")
    p.add_argument("--weight", help="A/B weight 0 to 1 (activate)")
    p.add_argument("--start", help="compare: period start (inclusive)")
    p.add_argument("--end", help="compare: period end (exclusive)")
    p.add_argument("--window", type=positive_int, help="compare: rollup window size in seconds")
    p.add_argument("--baseline", type=positive_int, help="compare: baseline version")
    p.add_argument("--format", choices=("text", "json"), default="text")
    p.set_defaults(func=cmd_prompts)


def cmd_prompts(args: argparse.Namespace) -> int:
    """List versions, compare them, or append the registry events of one change.

    A change is planned against the current registry first, so an invalid one
    (unknown version, bad weight) appends nothing and exits 2.
    """
    from llmpulse.core.registry import (
        RegistryError,
        VersionRecord,
        plan_activate,
        plan_create,
        plan_deactivate,
    )
    from llmpulse.processors.prompts import ops
    from llmpulse.processors.userinput import read_text

    # Arguments are checked before any service is looked up: bad input exits 2.
    content = args.content
    if args.action == "create" and args.content_file:
        content = read_text(args.content_file, UsageError)
    temperature = _decimal(args.temperature, "temperature")
    weight = _decimal(args.weight, "weight")
    settings = with_services(load_settings())
    if args.action == "compare":
        return _prompts_compare(args, settings)
    state = asyncio.run(ops.read_registry(settings))
    if args.action == "list":
        for name, prompt in sorted(state.items()):
            if args.name and name != args.name:
                continue
            weights = prompt.effective_weights()
            for v in prompt.versions.values():
                share = f"{weights[v.version]:.4f}" if v.version in weights else "-"
                temp = v.temperature if v.temperature is not None else "-"
                status = "active" if v.active else "inactive"
                print(f"{name:<24}v{v.version:<5}{status:<10}share {share:<8}temperature {temp}")
        return EXIT_OK
    if not args.name:
        raise UsageError(f"prompts {args.action} needs a prompt NAME")
    try:
        if args.action == "create":
            if not content:
                raise UsageError("prompts create needs --content or --content-file")
            existing = state.get(args.name)
            record = VersionRecord(
                version=args.version or (existing.latest + 1 if existing else 1),
                content=content,
                system_message=args.system_message,
                temperature=temperature,
                max_tokens=args.max_tokens,
                model=args.model,
                tags=tuple(args.tag or ()),
            )
            events = plan_create(state, args.name, record)
        elif args.action == "activate":
            events = plan_activate(state, args.name, _need_version(args), weight)
        else:
            events = plan_deactivate(state, args.name, _need_version(args))
    except RegistryError as exc:
        # The pure core's error is not an llmpulse InputError (core imports no
        # processors), so it is mapped here.
        raise UsageError(str(exc)) from None
    except ValidationError as exc:
        raise usage_error(exc) from None
    asyncio.run(ops.append(settings, events))
    for e in events:
        print(
            f"{e.action.value} {e.prompt_name} v{e.version}"
            + (f" weight {e.ab_weight}" if e.ab_weight is not None else "")
        )
    return EXIT_OK


def _decimal(text: str | None, what: str) -> Decimal | None:
    if text is None:
        return None
    try:
        value = Decimal(text)
    except InvalidOperation:
        raise UsageError(f"{what} {shorten(text)} is not a number") from None
    if not value.is_finite():
        raise UsageError(f"{what} {shorten(text)} is not a finite number")
    return value


def _need_version(args: argparse.Namespace) -> int:
    if args.version is None:
        raise UsageError(f"prompts {args.action} needs --version N")
    return int(args.version)


def _prompts_compare(args: argparse.Namespace, settings: Settings) -> int:
    """Compare the versions of a prompt (run by a sink worker holding the chDB folder)."""
    from llmpulse.processors.billing import reports
    from llmpulse.processors.prompts import ops
    from llmpulse.processors.stream import chdb_socket

    if not args.name:
        raise UsageError("prompts compare needs a prompt NAME")
    if not (args.start and args.end):
        raise UsageError("prompts compare needs --start and --end")
    start = reports.parse_instant(args.start, "start")
    end = reports.parse_instant(args.end, "end")
    reports.check_period(start, end)
    window = args.window or min(settings.prompt_windows)
    state = asyncio.run(ops.read_registry(settings))
    if args.name not in state:
        raise UsageError(f"unknown prompt {args.name!r}")
    weights = state[args.name].effective_weights()
    arguments = {
        "prompt": args.name,
        "window_seconds": window,
        "start": start.isoformat(),
        "end": end.isoformat(),
        "weights": {str(version): str(share) for version, share in weights.items()},
        "baseline": args.baseline,
        "format": args.format,
    }
    sys.stdout.write(chdb_socket.run(settings, prompts_compare, arguments))
    return EXIT_OK


def prompts_compare(client: Client, arguments: Mapping[str, Any]) -> str:
    """Named ClickHouse operation (see ``chdb_socket``): the rendered comparison."""
    from llmpulse.processors.prompts import comparison
    from llmpulse.processors.stream.clickhouse import run_query

    rows = run_query(
        client,
        "prompt_performance__compare",
        {
            "prompt": arguments["prompt"],
            "window_seconds": arguments["window_seconds"],
            "start": datetime.fromisoformat(arguments["start"]),
            "end": datetime.fromisoformat(arguments["end"]),
        },
    )
    weights = {int(version): Decimal(share) for version, share in arguments["weights"].items()}
    report = comparison.compare(arguments["prompt"], rows, weights, arguments["baseline"])
    render = comparison.render_json if arguments["format"] == "json" else comparison.render_text
    return render(report)
