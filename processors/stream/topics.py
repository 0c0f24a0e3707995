"""``llmpulse topics create``: every registry topic and its DLQ, and the Faust changelogs.

Topics that already exist are checked, not trusted: a topic made by hand or by
an older release with another partition count or cleanup policy would break
guarantees silently (co-partitioned tables, one order of the prompt registry,
compacted state that must never expire). The workers check the topics their
tables are co-partitioned with before they start.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.errors import (
    KafkaConnectionError,
    LeaderNotAvailableError,
    TopicAlreadyExistsError,
    UnknownTopicOrPartitionError,
    for_code,
)

from llmpulse.processors.errors import InputError, ServiceError
from llmpulse.processors.settings import Settings
from llmpulse.processors.stream import kafka
from llmpulse.processors.stream.faust_app import TABLES, changelog_topics
from llmpulse.schemas.topics import TOPICS

_DLQ_CONFIGS = {"cleanup.policy": "delete", "retention.ms": str(30 * 24 * 3600 * 1000)}
#: Broker settings that are checked on existing topics (the rest is tuning).
_CHECKED_CONFIGS = ("cleanup.policy", "retention.ms")
#: How often (and how far apart) an existing topic missing from the metadata is asked for.
_METADATA_ATTEMPTS, _METADATA_RETRY_SECONDS = 50, 0.2


class TopicMismatch(InputError):
    """An existing topic is not configured as llmpulse needs it (exit code 2).

    The topics of a cluster are set up by the operator, so a mismatch is bad
    input to fix (or a new ``LLMPULSE_TOPIC_PREFIX``), not a runtime failure.
    """


@dataclass(frozen=True)
class TopicResult:
    name: str
    status: str  # "created" or "exists" (and checked)


@dataclass(frozen=True)
class _Actual:
    """What the broker says about one existing topic."""

    partitions: int
    configs: dict[str, str]


def planned_topics(settings: Settings) -> list[NewTopic]:
    """The topics ``create_topics`` makes: each registry entry plus its DLQ."""
    out: list[NewTopic] = []
    for spec in TOPICS.values():
        out.append(
            NewTopic(
                settings.topic(spec.name),
                spec.partitions,
                settings.topic_replication,
                topic_configs=spec.topic_configs(),
            )
        )
        out.append(
            NewTopic(
                settings.topic(spec.dlq), 1, settings.topic_replication, topic_configs=_DLQ_CONFIGS
            )
        )
    for name, partitions in changelog_topics(settings):
        out.append(
            NewTopic(
                name,
                partitions,
                settings.topic_replication,
                topic_configs={"cleanup.policy": "compact"},
            )
        )
    return out


def _mismatches(planned: NewTopic, actual: _Actual, *, check_partitions: bool) -> list[str]:
    """How ``actual`` differs from ``planned`` where it matters, one phrase per setting.

    Partitions must be equal (keys map to partitions: more partitions move keys
    away from their state); the cleanup policy must be equal (a compacted topic
    with ``delete`` loses its registry or state, a compacted event topic loses
    events); retention must be at least the planned one (or infinite).
    """
    found: list[str] = []
    name = planned.name
    if check_partitions and actual.partitions != planned.num_partitions:
        found.append(
            f"topic {name}: {actual.partitions} partitions, expected {planned.num_partitions}"
        )
    want = planned.topic_configs
    policy = actual.configs.get("cleanup.policy", "")
    if _policies(policy) != _policies(want["cleanup.policy"]):
        found.append(f"topic {name}: cleanup.policy {policy}, expected {want['cleanup.policy']}")
    if "retention.ms" in want:
        retention = int(actual.configs.get("retention.ms", "-1"))
        if retention != -1 and retention < int(want["retention.ms"]):
            found.append(
                f"topic {name}: retention.ms {retention}, expected at least "
                f"{want['retention.ms']} (or -1)"
            )
    return found


@contextlib.asynccontextmanager
async def _admin(settings: Settings) -> AsyncIterator[AIOKafkaAdminClient]:
    admin = AIOKafkaAdminClient(**kafka.client_options(settings))
    try:
        await admin.start()
    except KafkaConnectionError:
        raise ServiceError(f"cannot reach Kafka at {kafka.bootstrap(settings)}") from None
    try:
        yield admin
    finally:
        await admin.close()


def _policies(value: str) -> frozenset[str]:
    return frozenset(p.strip() for p in value.split(",") if p.strip())


async def _partition_counts(
    admin: AIOKafkaAdminClient, names: list[str], *, known_to_exist: bool
) -> dict[str, int]:
    """Partition count of each topic of ``names`` in the broker's metadata.

    A topic just created (here or by another client) can be missing from the
    metadata for a moment, so topics ``known_to_exist`` are asked for again;
    otherwise a missing topic is left out.
    """
    counts: dict[str, int] = {}
    for _ in range(_METADATA_ATTEMPTS):
        missing: list[str] = []
        for topic in await admin.describe_topics(names):
            code = topic["error_code"]
            if code in (UnknownTopicOrPartitionError.errno, LeaderNotAvailableError.errno):
                missing.append(topic["topic"])
            elif code:
                raise for_code(code)(f"describing topic {topic['topic']}")
            else:
                counts[topic["topic"]] = len(topic["partitions"])
        if not (known_to_exist and missing):
            return counts
        names = missing
        await asyncio.sleep(_METADATA_RETRY_SECONDS)
    raise ServiceError(f"Kafka lists no metadata for the existing topic {missing[0]}")


async def _describe(
    admin: AIOKafkaAdminClient, names: list[str], *, known_to_exist: bool
) -> dict[str, _Actual]:
    """Partition count and checked configs of each topic of ``names`` (see above)."""
    if not names:
        return {}
    partitions = await _partition_counts(admin, names, known_to_exist=known_to_exist)
    configs: dict[str, dict[str, str]] = {name: {} for name in partitions}
    if partitions:
        wanted = dict.fromkeys(_CHECKED_CONFIGS)
        resources = [
            ConfigResource(ConfigResourceType.TOPIC, name, configs=wanted) for name in partitions
        ]
        for response in await admin.describe_configs(resources):
            for resource in response.to_object()["resources"]:
                if resource["error_code"]:
                    raise for_code(resource["error_code"])(
                        f"describing topic {resource['resource_name']}"
                    )
                configs[resource["resource_name"]] = {
                    e["config_names"]: e["config_value"] for e in resource["config_entries"]
                }
    return {name: _Actual(count, configs[name]) for name, count in partitions.items()}


def _raise_mismatches(found: list[str], hint: str) -> None:
    if found:
        raise TopicMismatch(f"{'; '.join(found)} ({hint})")


async def create_topics(settings: Settings) -> list[TopicResult]:
    """Create missing topics and check the existing ones (idempotent).

    Raises :class:`TopicMismatch` naming each existing topic whose partitions
    (registry and changelog topics; a DLQ may have more), cleanup policy or
    retention differ from the plan, after the missing ones were created; any
    other broker error is raised as the broker's error.
    """
    planned = planned_topics(settings)
    dlqs = {settings.topic(spec.dlq) for spec in TOPICS.values()}
    async with _admin(settings) as admin:
        response = await admin.create_topics(planned, timeout_ms=30_000)
        results: list[TopicResult] = []
        for entry in response.topic_errors:
            name, code = entry[0], entry[1]
            if code == 0:
                results.append(TopicResult(name, "created"))
            elif code == TopicAlreadyExistsError.errno:
                results.append(TopicResult(name, "exists"))
            else:
                raise for_code(code)(f"creating topic {name}")
        existing = {r.name for r in results if r.status == "exists"}
        actual = await _describe(admin, sorted(existing), known_to_exist=True)
    found: list[str] = []
    for topic in planned:
        if topic.name in actual:
            found += _mismatches(topic, actual[topic.name], check_partitions=topic.name not in dlqs)
    _raise_mismatches(found, "fix them, or use a new LLMPULSE_TOPIC_PREFIX")
    return sorted(results, key=lambda r: r.name)


async def verify_copartitioned(settings: Settings, flows: Iterable[str]) -> None:
    """Raise :class:`TopicMismatch` if a table of ``flows`` and its sources differ in partitions.

    A Faust table is written from the source partition being processed, so
    each source topic and the table's changelog must have the partitions of
    the registry (``faust_app.TableSpec``); otherwise state lands in the wrong
    changelog partition (or the wrong worker) silently. Topics that do not
    exist yet are left to ``llmpulse topics create``.
    """
    wanted = set(flows)
    tables = [t for t in TABLES if t.app in wanted]
    groups = {t: [*(settings.topic(s) for s in t.sources), t.changelog(settings)] for t in tables}
    if not groups:
        return
    async with _admin(settings) as admin:
        every = sorted({name for group in groups.values() for name in group})
        actual = await _describe(admin, every, known_to_exist=False)
    found: list[str] = []
    for table, names in groups.items():
        counts = {n: actual[n].partitions for n in names if n in actual}
        if any(c != table.partitions for c in counts.values()):
            listed = ", ".join(f"{n} {c}" for n, c in counts.items())
            found.append(
                f"table {table.name} needs {table.partitions} partitions on each of its "
                f"co-partitioned topics, found {listed}"
            )
    _raise_mismatches(found, "recreate them, or use a new LLMPULSE_TOPIC_PREFIX")


def check_copartitioned(settings: Settings, flows: Iterable[str]) -> None:
    """:func:`verify_copartitioned` for a worker's start (``kafka.on_own_loop``)."""
    kafka.on_own_loop(verify_copartitioned(settings, flows))
