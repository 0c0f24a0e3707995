"""ClickHouse sinks: each loads one topic into its table, in its own consumer group.

``build_sinks`` is the one list of the sink worker's sinks (``llmpulse worker sink``
and the demo both run it), so a new sink is added in one place.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from clickhouse_connect.driver.client import Client

from llmpulse.processors.settings import Settings
from llmpulse.processors.sinks.base import ClickHouseSink
from llmpulse.processors.sinks.breaker_transitions import BreakerTransitionsSink
from llmpulse.processors.sinks.prompts import PromptPerformanceSink, PromptVersionsSink
from llmpulse.processors.sinks.usage import UsageSink


@dataclass(frozen=True)
class Sinks:
    """The sink worker's sinks, by name; iterating gives each once."""

    usage: UsageSink
    breaker_transitions: BreakerTransitionsSink
    prompt_versions: PromptVersionsSink
    prompt_performance: PromptPerformanceSink

    def __iter__(self) -> Iterator[ClickHouseSink[Any]]:
        yield self.usage
        yield self.breaker_transitions
        yield self.prompt_versions
        yield self.prompt_performance


#: Every sink of the worker, in start order.
SINK_TYPES: tuple[type[ClickHouseSink[Any]], ...] = (
    UsageSink,
    BreakerTransitionsSink,
    PromptVersionsSink,
    PromptPerformanceSink,
)


def build_sinks(
    settings: Settings,
    client: Client,
    *,
    usage_max_rows: int | None = None,
    usage_max_seconds: float | None = None,
    max_seconds: float | None = None,
    groups: Mapping[str, str] | None = None,
) -> Sinks:
    """One sink per entry of ``SINK_TYPES``, all writing through ``client``.

    ``usage_max_rows`` / ``usage_max_seconds`` bound the usage sink's batches (the
    ``--batch-rows`` / ``--batch-seconds`` of ``llmpulse worker sink``);
    ``max_seconds`` bounds the batch age of every other sink. ``groups`` maps a
    sink's flow (``FLOW``) to the consumer group it uses instead of its own
    (``<consumer_group_prefix>.<flow>``). None means the settings' default.
    Raises ValueError for a group of an unknown flow.
    """
    groups = dict(groups or {})
    unknown = set(groups) - {sink.FLOW for sink in SINK_TYPES}
    if unknown:
        raise ValueError(f"no sink has the flow(s) {', '.join(sorted(unknown))}")
    return Sinks(
        usage=UsageSink(
            settings,
            client,
            group=groups.get(UsageSink.FLOW),
            max_rows=usage_max_rows,
            max_seconds=usage_max_seconds,
        ),
        breaker_transitions=BreakerTransitionsSink(
            settings,
            client,
            group=groups.get(BreakerTransitionsSink.FLOW),
            max_seconds=max_seconds,
        ),
        prompt_versions=PromptVersionsSink(
            settings, client, group=groups.get(PromptVersionsSink.FLOW), max_seconds=max_seconds
        ),
        prompt_performance=PromptPerformanceSink(
            settings, client, group=groups.get(PromptPerformanceSink.FLOW), max_seconds=max_seconds
        ),
    )


__all__ = ["SINK_TYPES", "Sinks", "build_sinks"]
