"""Shared fixtures: the real stack once per session, unique topics per test, chDB.

The test tiers (unit, chdb, stack) and their guards live in tests/tiers.py: the
``services``/``settings`` fixtures are refused to tests not marked ``stack``, and
``ch``/``ch_session`` to tests marked neither ``chdb`` nor ``stack``.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from clickhouse_connect.driver.client import Client
from hypothesis import settings as hypothesis_settings

from llmpulse.processors.settings import Settings
from llmpulse.processors.stream import clickhouse
from tests.harness import running_secure_services, running_services, with_unique_topics

# No test asserts on time: a property test's examples may take as long as the machine needs.
hypothesis_settings.register_profile("llmpulse", deadline=None)
hypothesis_settings.load_profile("llmpulse")

# pytester: tests/test_tiers.py runs small suites through the tiers plugin.
pytest_plugins = ["pytester", "tests.tiers"]


@pytest.fixture(scope="session")
def base_settings(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    """Settings from the environment, with state (and chDB) in a session temp folder."""
    configured = Settings()
    return configured.model_copy(
        update={"state_dir": tmp_path_factory.mktemp("llmpulse-state"), "dlq_max_consecutive": 500}
    )


@pytest.fixture(scope="session")
def services(base_settings: Settings) -> Iterator[Settings]:
    """Real Kafka, Redis and Prometheus for the whole session (stack tier only)."""
    with running_services(base_settings) as ready:
        yield ready


@pytest.fixture(scope="session")
def secure_services(
    services: Settings, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Settings]:
    """Session settings pointed at a second stack's SASL_SSL Kafka and TLS Redis (stack tier)."""
    with running_secure_services(services, tmp_path_factory.mktemp("secure-stack")) as ready:
        yield ready


@pytest.fixture
async def settings(services: Settings) -> Settings:
    """Per-test settings: every topic created under a unique prefix."""
    return await with_unique_topics(services)


@pytest.fixture(scope="session")
def ch_session(base_settings: Settings) -> Client:
    """One chDB client for the session (chDB allows one data folder per process).

    chdb and stack tiers only.
    """
    # Through the module attribute, so the tier guard on ``connect`` sees this call.
    client = clickhouse.connect(base_settings)
    clickhouse.migrate(client)
    return client


@pytest.fixture
def ch(ch_session: Client) -> Client:
    """The chDB client with empty usage tables and no closed month for this test."""
    for table in (
        "usage_events",
        "usage_event_keys",
        "usage_daily",
        "usage_conflicts",
        "usage_event_losers",
        "usage_reconciles",
        "breaker_transitions",
        "period_closes",
        "closed_allocations",
    ):
        ch_session.command(f"TRUNCATE TABLE IF EXISTS {table}")
    return ch_session
