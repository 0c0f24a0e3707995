"""Shared fixtures: the real stack once per session, unique topics per test, chDB."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from clickhouse_connect.driver.client import Client

from llmpulse.processors.settings import Settings
from llmpulse.processors.stream.clickhouse import connect, migrate
from tests.harness import running_services, with_unique_topics


@pytest.fixture(scope="session")
def base_settings(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    """Settings from the environment, with state (and chDB) in a session temp folder."""
    configured = Settings()
    return configured.model_copy(
        update={"state_dir": tmp_path_factory.mktemp("llmpulse-state"), "dlq_max_consecutive": 500}
    )


@pytest.fixture(scope="session")
def services(base_settings: Settings) -> Iterator[Settings]:
    """Real Kafka, Redis and Prometheus for the whole session."""
    with running_services(base_settings) as ready:
        yield ready


@pytest.fixture
async def settings(services: Settings) -> Settings:
    """Per-test settings: every topic created under a unique prefix."""
    return await with_unique_topics(services)


@pytest.fixture(scope="session")
def ch_session(base_settings: Settings) -> Client:
    """One chDB client for the session (chDB allows one data folder per process)."""
    client = connect(base_settings)
    migrate(client)
    return client


@pytest.fixture
def ch(ch_session: Client) -> Client:
    """The chDB client with empty tables for this test."""
    for table in ("usage_events", "usage_conflicts", "breaker_transitions"):
        ch_session.command(f"TRUNCATE TABLE IF EXISTS {table}")
    return ch_session
