"""``llmpulse topics create`` and ``llmpulse migrate``: prepare Kafka and ClickHouse."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from llmpulse.cli.common import EXIT_OK, SubParsers, load_settings, with_services

if TYPE_CHECKING:
    from clickhouse_connect.driver.client import Client


def add_parser(sub: SubParsers) -> None:
    """Add ``topics create`` and ``migrate``."""
    p = sub.add_parser(
        "topics",
        help="create every topic and its DLQ with their configuration; check the existing "
        "ones (exit 2 naming a topic whose partitions, cleanup policy or retention differ)",
    )
    p.add_argument("action", choices=("create",))
    p.set_defaults(func=cmd_topics)

    p = sub.add_parser("migrate", help="apply ClickHouse migrations (idempotent)")
    p.set_defaults(func=cmd_migrate)


def cmd_topics(args: argparse.Namespace) -> int:
    """Create every missing topic and check the existing ones; one line per topic.

    A mismatched existing topic raises ``TopicMismatch`` (an input error, exit
    2) naming the topic, the expected and the actual value.
    """
    from llmpulse.processors.stream.topics import create_topics

    for result in asyncio.run(create_topics(with_services(load_settings()))):
        print(f"{result.status:<8} {result.name}")
    return EXIT_OK


def cmd_migrate(args: argparse.Namespace) -> int:
    """Apply the pending ClickHouse migrations; one line per migration applied.

    While a sink worker holds the embedded chDB folder, it applies them.
    """
    from llmpulse.processors.stream import chdb_socket

    sys.stdout.write(chdb_socket.run(load_settings(), migrate_schema, {}))
    return EXIT_OK


def migrate_schema(client: Client, arguments: Mapping[str, Any]) -> str:
    """Named ClickHouse operation (see ``chdb_socket``): apply migrations, list them."""
    from llmpulse.processors.stream.clickhouse import migrate

    lines = [f"applied {name}" for name in migrate(client)] or ["schema up to date"]
    return "".join(f"{line}\n" for line in lines)
