"""``llmpulse`` command line: one console script, one subcommand per job.

One module per command group (``stack``, ``setup``: topics and migrate,
``worker``, ``breaker``, ``prompts``, ``report``: reports and pricing, ``demo``:
demo and simulate); each adds its parsers with ``add_parser(sub)``. This module
only assembles them and maps errors to exit codes.

Exit codes: 0 success, 1 runtime failure (a service down, a worker stopped on a
fatal error, a missing ``worker`` extra), 2 bad usage or bad input; errors are
one line on stderr. Errors are mapped by their node in
``llmpulse.processors.errors``: an ``InputError`` exits 2, any other
``LlmpulseError`` exits 1.

The console script is installed by the light install too: ``--help`` and
``--version`` need nothing more, and a command that needs ``llmpulse[worker]``
says so in one line instead of a traceback.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from llmpulse import __version__
from llmpulse.cli import breaker, demo, prompts, report, setup, stack, worker
from llmpulse.cli.common import EXIT_FAILURE, EXIT_USAGE, Parser, missing_extra_hint
from llmpulse.cli.worker import worker_flows
from llmpulse.processors.errors import InputError, LlmpulseError

__all__ = ["build_parser", "main", "worker_flows"]


def build_parser() -> argparse.ArgumentParser:
    """The ``llmpulse`` parser with every command group; imports no ``worker`` extra."""
    parser = Parser(
        prog="llmpulse",
        description="Resilience and cost backbone for LLM platforms.",
        epilog="Configuration comes from LLMPULSE_* environment variables; see README.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument(
        "--version",
        action="version",
        version=f"llmpulse {__version__}",
        help="print the version and exit",
    )
    sub = parser.add_subparsers(
        dest="command", required=True, metavar="COMMAND", parser_class=Parser
    )
    # The order of the groups is the order of ``llmpulse --help``.
    for group in (demo, stack, setup, worker, breaker, prompts, report):
        group.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``llmpulse`` console script; returns the exit code."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if args.command != "worker" and not args.verbose:
        # aiokafka logs retried, harmless coordinator errors at ERROR level; a
        # one-shot command reports its own failures as one line.
        logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
    try:
        code: int = args.func(args)
    except InputError as exc:
        print(f"llmpulse: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except LlmpulseError as exc:
        print(f"llmpulse: error: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    except ModuleNotFoundError as exc:
        # Only the worker extra's own modules become the install hint; any
        # other missing module is a bug and keeps its traceback.
        hint = missing_extra_hint(args.command, exc)
        if hint is None:
            raise
        print(f"llmpulse: error: {hint}", file=sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        return 130
    return code


if __name__ == "__main__":
    raise SystemExit(main())
