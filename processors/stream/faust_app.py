"""Faust app factory: configuration only from Settings (``env={}``)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import faust
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import TP
from faust.types.tuples import FutureMessage

from llmpulse.processors.owner_only import private_dir
from llmpulse.processors.settings import Settings
from llmpulse.processors.stream import kafka
from llmpulse.schemas.topics import BREAKER_CONTROL, FEEDBACK, OUTCOMES, topic_spec

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TableSpec:
    """A changelog-backed table of a Faust app, and the source topics it is keyed like.

    An agent writes the table from the source partition it is processing, so the
    table must have exactly as many partitions as its sources (Faust's
    co-partitioning): the count is taken from the topic registry, never spelled
    twice, and sources with different counts are refused here.
    """

    app: str
    name: str
    sources: tuple[str, ...]

    def __post_init__(self) -> None:
        counts = {topic_spec(source).partitions for source in self.sources}
        if len(counts) != 1:
            raise ValueError(
                f"table {self.name}: sources {', '.join(self.sources)} are not co-partitioned"
            )

    @property
    def partitions(self) -> int:
        """Partition count of the table, its changelog and each of its sources."""
        return topic_spec(self.sources[0]).partitions

    def changelog(self, settings: Settings) -> str:
        """Name of the table's changelog topic (Faust's naming, with the app id)."""
        return f"{app_id(settings, self.app)}-{self.name}-changelog"

    def create(self, app: faust.App) -> Any:
        """The table in ``app`` (call once per app, before it starts)."""
        return app.Table(self.name, default=None, partitions=self.partitions)


#: The breaker agent's state per breaker key: outcomes and operator controls.
BREAKER_STATE_TABLE = TableSpec("breaker", "breaker_state", (OUTCOMES, BREAKER_CONTROL))
#: The prompt rollups' partials (and input cursors) of each source topic.
OUTCOME_PARTIALS_TABLE = TableSpec("prompts", "partials_outcomes", (OUTCOMES,))
FEEDBACK_PARTIALS_TABLE = TableSpec("prompts", "partials_feedback", (FEEDBACK,))

#: Every changelog-backed table of the Faust apps. ``llmpulse topics create``
#: creates their changelog topics up front: a topic that Faust creates lazily can
#: be missing from its metadata when the first event arrives, and the table write
#: then crashes the agent (losing the event).
TABLES: tuple[TableSpec, ...] = (
    BREAKER_STATE_TABLE,
    OUTCOME_PARTIALS_TABLE,
    FEEDBACK_PARTIALS_TABLE,
)


def app_id(settings: Settings, name: str) -> str:
    """Faust app id (and consumer group) of flow ``name``, carrying the topic prefix."""
    return f"{settings.topic_prefix}llmpulse-{name}"


def changelog_topics(settings: Settings) -> list[tuple[str, int]]:
    """(changelog topic, partitions) of every Faust table."""
    return [(table.changelog(settings), table.partitions) for table in TABLES]


class AckTrackingProducer(faust_aiokafka.Producer):
    """Faust's producer, remembering every buffered message until Kafka acknowledged it.

    Table changelog writes go through ``send_soon`` (a buffer); the returned
    ``FutureMessage`` resolves on the broker's acknowledgement (or fails).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.unacknowledged: set[FutureMessage] = set()

    def send_soon(self, fut: FutureMessage) -> None:
        self.unacknowledged.add(fut)
        fut.add_done_callback(self.unacknowledged.discard)
        super().send_soon(fut)


#: ``(tp, offset) -> offset that may be committed`` (None: commit nothing for tp).
CommitLimit = Callable[[TP, int], "int | None"]


class BatchSource(Protocol):
    """Takes the fetched records of its topics a partition batch at a time (``deliver_batches``).

    Faust's per-message path (conductor, stream, event, ack: about 130 µs per
    message on the development machine, more than a bare consumer's fetch and
    decode together) is bypassed for these topics: the consumer hands every
    fetched batch of one partition, in offset order, to the source, and commits
    the source's ``position`` (the next offset its state expects) instead of
    acknowledged messages.
    """

    topics: frozenset[str]

    async def batch(self, tp: TP, records: Sequence[Any]) -> None:
        """Process aiokafka ``ConsumerRecord`` s of ``tp`` (one fetch, offset order)."""
        ...

    def position(self, tp: TP) -> int | None:
        """The offset that may be committed for ``tp`` (None: nothing yet)."""
        ...


def table_set(table: Any, partition: int, key: str, value: Any) -> None:
    """``table[key] = value`` with the changelog partition given (outside a stream event)."""
    table.data[key] = value
    # Faust's memory store drops the keys of partitions this worker lost once a
    # rebalance's recovery completes, but it knows the partition only of the keys it
    # recovered from the changelog or wrote in a stream event: record it for ours.
    table.data._key_partition[key] = partition
    table.send_changelog(partition, key, value)


def table_delete(table: Any, partition: int, key: str) -> None:
    """``del table[key]`` with the changelog partition given (a tombstone)."""
    table.data.pop(key, None)
    table.data._key_partition.pop(key, None)
    table.send_changelog(partition, key, None, value_serializer="raw")


async def changelog_written(app: Any) -> None:
    """Wait until every changelog write buffered so far is acknowledged (raise the first failure).

    Before an offset commit (``ChangelogFirstConsumer``) and before a result
    derived from table state is published: what leaves the worker is durable.
    """
    pending = list(getattr(app.producer, "unacknowledged", ()))
    if pending:
        results = await asyncio.gather(*pending, return_exceptions=True)
        failed = next((r for r in results if isinstance(r, BaseException)), None)
        if failed is not None:
            raise failed


class ChangelogFirstConsumer(faust_aiokafka.Consumer):
    """Commits source offsets only after the table changelog writes before them.

    Faust commits source offsets on a timer after a best-effort producer flush
    (its buffer flush gives up after 0.1 s without progress and does not see a
    send that is waiting for metadata). A worker killed after such a commit
    restarts from an offset whose table updates never reached the changelog:
    those events are lost from the restored state. Here every changelog write
    buffered before the commit must be acknowledged (``acks=all``) first, so the
    changelog is always at or ahead of the committed offsets; replays past it are
    skipped by the tables' own per-partition offset bookkeeping. A write that
    failed stops the worker (fatal): committing past it would lose it for good,
    and a restart replays from the last safe offset.

    Offsets are also held at the app's commit limit, if it set one
    (``limit_commits``): the input cursors of its tables
    (``llmpulse.processors.stream.input_cursor``), so a commit never passes an event that Faust
    acknowledged without delivering it.
    """

    async def _commit_offsets(
        self, offsets: Mapping[TP, int], start_new_transaction: bool = True
    ) -> bool:
        limit: CommitLimit | None = getattr(self.transport, "commit_limit", None)
        if limit is not None:
            limited = {tp: limit(tp, offset) for tp, offset in offsets.items()}
            offsets = {tp: offset for tp, offset in limited.items() if offset is not None}
            if not offsets:
                return False
        try:
            await changelog_written(self.app)
        except Exception as failed:
            log.error("a changelog write failed; stopping before committing past it")
            await self.crash(failed)
            return False
        return await super()._commit_offsets(offsets, start_new_transaction=start_new_transaction)

    def _batches(self) -> BatchSource | None:
        source: BatchSource | None = getattr(self.transport, "batches", None)
        return source

    async def _drain_messages(self, fetcher: Any) -> None:
        """Fetch loop: batch topics go to the app's ``BatchSource``, a partition at a time.

        Mirrors Faust's loop (flow control, active partitions, generation) for
        everything but the per-message delivery. Records of other topics (the
        tables' changelogs, read on recovery) take Faust's per-message path.
        """
        batches = self._batches()
        if batches is None:
            await super()._drain_messages(fetcher)
            return
        lock = self._batch_lock = asyncio.Lock()
        try:
            while not (self._stopped.is_set() or fetcher._stopped.is_set()):
                records, active = await self._wait_next_records(1.0)
                if not records or self.should_stop:
                    continue
                if not self.flow_active:
                    await self.perform_seek()
                    continue
                generation = self.app.consumer_generation_id
                for tp, fetched in records.items():
                    if active is not None and tp not in active:
                        continue
                    if not self._still(generation):
                        break  # rebalanced: the new assignment re-reads from its cursors
                    if tp.topic in batches.topics:
                        async with lock:
                            await batches.batch(tp, fetched)
                    else:  # a table's changelog being recovered: Faust's own path
                        for record in fetched:
                            await self.callback(self._to_message(tp, record))
                await self.sleep(0)
        except self.consumer_stopped_errors:
            if not self.transport.app.should_stop:
                raise
        except asyncio.CancelledError:
            if not self.transport.app.should_stop:
                raise

    def _still(self, generation: int) -> bool:
        """Whether the assignment of ``generation`` still holds (no rebalance since)."""
        return bool(self.flow_active) and self.app.consumer_generation_id == generation

    async def on_partitions_revoked(self, revoked: set[TP]) -> None:
        """A batch in progress ends first (its state written, its cursor moved).

        Otherwise the revocation's commit and the agents forgetting the revoked
        partitions' state would interleave with the batch at its awaits, and it
        would go on writing state of partitions another worker may own by then.
        """
        lock: asyncio.Lock | None = getattr(self, "_batch_lock", None)
        if lock is None:
            await super().on_partitions_revoked(revoked)
            return
        async with lock:
            await super().on_partitions_revoked(revoked)

    def _filter_tps_with_pending_acks(self, topics: Any = None) -> Any:
        tps = set(super()._filter_tps_with_pending_acks(topics))
        batches = self._batches()
        if batches is not None:
            tps.update(
                tp
                for tp in self.assignment()
                if tp.topic in batches.topics
                and (topics is None or tp in topics or tp.topic in topics)
            )
        return iter(tps)

    def _new_offset(self, tp: TP) -> int | None:
        batches = self._batches()
        if batches is not None and tp.topic in batches.topics:
            return batches.position(tp)
        offset: int | None = super()._new_offset(tp)
        return offset

    async def committed(self, tp: TP) -> int | None:
        """The group's committed offset of ``tp`` (None: nothing committed yet)."""
        thread: Any = self._thread  # Faust's aiokafka consumer thread
        offset = await thread.call_thread(thread._ensure_consumer().committed, tp)
        return None if offset is None else int(offset)


class ChangelogFirstTransport(faust_aiokafka.Transport):
    Consumer = ChangelogFirstConsumer
    Producer = AckTrackingProducer
    commit_limit: CommitLimit | None = None
    batches: BatchSource | None = None


def deliver_batches(app: faust.App, source: BatchSource) -> None:
    """Subscribe ``app`` to ``source.topics`` and hand their records to it in batches."""
    transport = app.transport
    assert isinstance(transport, ChangelogFirstTransport), "app not made by create_app"
    transport.batches = source
    raw: dict[str, Any] = {"key_serializer": "raw", "value_serializer": "raw"}
    app.topics.add(app.topic(*sorted(source.topics), **raw))


def limit_commits(app: faust.App, limit: CommitLimit) -> None:
    """Commit source offsets of ``app`` only up to ``limit`` (its input cursors)."""
    transport = app.transport
    assert isinstance(transport, ChangelogFirstTransport), "app not made by create_app"
    transport.commit_limit = limit


def broker_credentials(settings: Settings) -> faust.SASLCredentials | faust.SSLCredentials | None:
    """The Kafka security of ``settings`` in Faust's form (None: plaintext).

    faust-streaming hands these to every aiokafka client it makes (consumer,
    producer, the producer's client that creates topics) as the same options
    as ``kafka.client_options``: SASL credentials with a TLS context mean
    SASL_SSL, without one SASL_PLAINTEXT; TLS credentials alone mean SSL.
    """
    options = kafka.client_options(settings)
    context = options.get("ssl_context")
    if "sasl_mechanism" in options:
        return faust.SASLCredentials(
            username=options["sasl_plain_username"],
            password=options["sasl_plain_password"],
            ssl_context=context,
            mechanism=options["sasl_mechanism"],
        )
    return None if context is None else faust.SSLCredentials(context)


def create_app(settings: Settings, name: str, **overrides: Any) -> faust.App:
    """A Faust app for one flow; its id (and consumer group) carries the topic prefix.

    Tables use the in-memory store and are rebuilt from their changelog topics on
    start, so a crashed worker restarts with the state it had committed.
    """
    options: dict[str, Any] = {
        "broker": f"kafka://{kafka.bootstrap(settings)}",
        "broker_credentials": broker_credentials(settings),
        "store": "memory://",
        "env": {},  # stray FAUST_* / environment variables must not override Settings
        "topic_replication_factor": settings.topic_replication,
        "topic_partitions": 6,
        "web_enabled": False,
        "consumer_auto_offset_reset": "earliest",
        "processing_guarantee": "at_least_once",
        "broker_commit_every": 1000,
        # Large fetches: a partition's fetch stops at this size, and Faust then
        # waits up to a second for the next (measured: 3,400 -> 6,200 events/s
        # for an agent doing nothing, 1 MiB -> 16 MiB).
        "consumer_max_fetch_size": 16 * 1024 * 1024,
        "broker_max_poll_records": None,
        "broker_commit_interval": 1.0,
        "table_standby_replicas": 0,
        # A crashed worker's partitions move to its replacement within seconds.
        "broker_session_timeout": 10.0,
        "broker_heartbeat_interval": 1.0,
        "producer_acks": -1,
        "datadir": str((settings.state_dir / "faust" / f"{settings.topic_prefix}{name}").resolve()),
    }
    options.update(overrides)
    private_dir(settings.state_dir / "faust")  # the tables' data: owner only
    app = faust.App(app_id(settings, name), **options)
    app.transport = ChangelogFirstTransport(app.conf.broker_consumer, app)
    return app


def run(app: faust.App) -> None:
    """Run ``app`` in a Faust worker until SIGINT/SIGTERM (the worker owns the event loop).

    An exception escaping an ``app.task``, an ``app.timer`` or the batch path
    (``BatchSource.batch``, through ``ChangelogFirstConsumer``) crashes the app;
    the worker then stops and exits with code 1 (``SystemExit`` from mode's
    ``exiting``), so its supervisor restarts it instead of a process that stays
    up doing nothing. Errors a worker must survive are handled where they occur.

    Without its terminal spinner: Faust sets the root logger to DEBUG for it,
    so every debug call in Faust and aiokafka built a log record per message
    (about 8% of the rollup worker's CPU).
    """
    worker = faust.Worker(app, loglevel="WARNING", redirect_stdouts=False)
    worker.spinner = None
    worker.execute_from_commandline()


class FaustProducer:
    """``send_and_wait`` shape expected by ``DeadLetterPublisher``, over Faust's producer."""

    def __init__(self, app: faust.App) -> None:
        self._app = app

    async def send_and_wait(
        self,
        topic: str,
        value: bytes | None = None,
        key: bytes | None = None,
        partition: int | None = None,
        timestamp_ms: int | None = None,
        headers: list[tuple[str, bytes]] | None = None,
    ) -> object:
        return await self._app.producer.send_and_wait(topic, key, value, partition, None, headers)
