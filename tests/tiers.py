"""Test tiers that enforce themselves (a pytest plugin, loaded by tests/conftest.py).

Every test is in exactly one tier:

* ``unit``: no marker. No network, no chDB, no services. Fast.
* ``chdb`` (``@pytest.mark.chdb``): embedded chDB in a temp folder; still no network.
* ``stack`` (``@pytest.mark.stack``): the real local stack (Kafka, Redis, Prometheus)
  and chDB; anything goes.

Collection adds the ``unit`` marker to unmarked tests, so ``-m unit``, ``-m chdb`` and
``-m stack`` each select exactly one tier. The tiers are enforced while a test runs (setup,
call and its own teardown), because a mark that nothing checks rots:

* a test outside ``stack`` that opens a TCP or UDP connection (``socket.socket.connect`` /
  ``connect_ex`` / ``socket.create_connection`` on AF_INET or AF_INET6: asyncio, redis-py
  and aiokafka all end there) gets :class:`TierViolation`, naming the address;
* a test in ``unit`` that opens chDB gets :class:`TierViolation`;
* starting the local stack (``llmpulse.devstack.stack.up``) outside ``stack`` likewise;
* a test that requests a stack fixture (``services``, ``settings`` or anything built on
  them) outside ``stack``, or a chDB fixture (``ch``, ``ch_session``) in ``unit``, errors
  in setup before the fixture runs, so the stack is never started for it.

A violation fails the test even if the code under test swallowed the exception (a gateway
falling back when Redis "is down" would otherwise hide it). Unix sockets, socketpairs and
subprocesses are not guarded: a unit test may run ``python -m llmpulse --help``.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Generator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import pytest

UNIT = "unit"
CHDB = "chdb"
STACK = "stack"
TIERS = (UNIT, CHDB, STACK)
MARKERS = {
    UNIT: "no I/O beyond temp files and subprocesses (added to every test without chdb/stack)",
    CHDB: "needs embedded chDB (no network)",
    STACK: "needs the real local stack (Kafka, Redis, Prometheus) and chDB",
}

#: Fixtures that start or use the real stack: allowed only in the stack tier.
STACK_FIXTURES = frozenset({"services", "settings"})
#: Fixtures that open chDB: allowed in the chdb and stack tiers.
CHDB_FIXTURES = frozenset({"ch", "ch_session"})

_INET = (socket.AF_INET, socket.AF_INET6)


class TierViolation(Exception):
    """A test did I/O its tier does not allow (see the module docstring)."""


def tier_of(item: pytest.Item) -> str:
    """The one tier of ``item``: ``stack``, ``chdb`` or ``unit``.

    Raises :class:`pytest.UsageError` if the test carries more than one tier marker.
    """
    marked = [t for t in TIERS if item.get_closest_marker(t) is not None]
    if len(marked) > 1:
        raise pytest.UsageError(
            f"{item.nodeid} is marked {' and '.join(marked)}: a test is in exactly one tier"
        )
    return marked[0] if marked else UNIT


def _allowed(tier: str, needs: str) -> bool:
    return tier == STACK or (needs == CHDB and tier == CHDB)


def _advice(needs: str) -> str:
    if needs == CHDB:
        return "mark the test @pytest.mark.chdb (or @pytest.mark.stack if it also needs services)"
    return "mark the test @pytest.mark.stack"


@dataclass
class _Running:
    """The test phase being guarded and the violations seen in it."""

    nodeid: str
    tier: str
    violations: list[str] = field(default_factory=list)


# Module state rather than a contextvar: connections made from worker threads
# (asyncio.to_thread, executors) must be seen too. One test runs at a time.
_lock = threading.Lock()
_running: _Running | None = None


def check(needs: str, what: str) -> None:
    """Raise :class:`TierViolation` if the running test's tier does not allow ``needs``.

    ``needs`` is ``chdb`` or ``stack``; ``what`` says what was attempted. Outside a
    guarded test phase (collection, session teardown) everything is allowed. The
    violation is also recorded, so the test fails even if the caller swallows it.
    """
    running = _running
    if running is None or _allowed(running.tier, needs):
        return
    message = (
        f"{running.nodeid} is a {running.tier}-tier test but {what}: {_advice(needs)} "
        f"(test tiers: see tests/tiers.py)"
    )
    with _lock:
        running.violations.append(message)
    raise TierViolation(message)


def _describe(address: Any) -> str:
    if isinstance(address, tuple) and len(address) >= 2:
        host, port = address[0], address[1]
        return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"
    return repr(address)


# ------------------------------------------------------------------------ patches

_Restore = Callable[[], None]


def _patch(owner: Any, name: str, make: Callable[[Any], Any]) -> _Restore:
    original = getattr(owner, name)
    setattr(owner, name, make(original))
    return lambda: setattr(owner, name, original)


def _guard_socket_method(original: Callable[..., Any]) -> Callable[..., Any]:
    def guarded(self: socket.socket, address: Any, /) -> Any:
        if self.family in _INET:
            check(STACK, f"opened a network connection to {_describe(address)}")
        return original(self, address)

    return guarded


def _guard_create_connection(original: Callable[..., Any]) -> Callable[..., Any]:
    def guarded(address: Any, *args: Any, **kwargs: Any) -> Any:
        # Before name resolution: a test must not even look the server up.
        check(STACK, f"opened a network connection to {_describe(address)}")
        return original(address, *args, **kwargs)

    return guarded


def _guard_clickhouse_connect(original: Callable[..., Any]) -> Callable[..., Any]:
    def guarded(settings: Any) -> Any:
        dsn = str(settings.effective_clickhouse_dsn)
        if dsn.startswith("chdb://"):
            check(CHDB, f"opened chDB ({dsn})")
        # An http(s) DSN is a network connection: the socket guard names it.
        return original(settings)

    return guarded


def _guard_chdb_client(original: Callable[..., Any]) -> Callable[..., Any]:
    def guarded(*args: Any, **kwargs: Any) -> Any:
        check(CHDB, "opened chDB through clickhouse_connect")
        return original(*args, **kwargs)

    return guarded


def _guard_stack_up(original: Callable[..., Any]) -> Callable[..., Any]:
    def guarded(*args: Any, **kwargs: Any) -> Any:
        check(STACK, "started the local stack (llmpulse.devstack.stack.up)")
        return original(*args, **kwargs)

    return guarded


def _install() -> list[_Restore]:
    """Wrap every entry point the tiers guard; returns the undo functions."""
    restores = [
        _patch(socket.socket, "connect", _guard_socket_method),
        _patch(socket.socket, "connect_ex", _guard_socket_method),
        _patch(socket, "create_connection", _guard_create_connection),
    ]
    # Imported here, not at the top: the plugin is also loaded by test_tiers' inner runs.
    import clickhouse_connect.driver

    from llmpulse.devstack import stack
    from llmpulse.processors.stream import clickhouse

    restores.append(_patch(clickhouse, "connect", _guard_clickhouse_connect))
    # Every chDB client is built here, whoever calls it (also code that imported
    # ``connect`` by name before the patch). A private name: guard only if present.
    if hasattr(clickhouse_connect.driver, "_create_chdb_client"):
        restores.append(
            _patch(clickhouse_connect.driver, "_create_chdb_client", _guard_chdb_client)
        )
    restores.append(_patch(stack, "up", _guard_stack_up))
    return restores


# -------------------------------------------------------------------------- hooks

_restores: list[_Restore] = []
_violations_key = pytest.StashKey[dict[str, list[str]]]()


def pytest_configure(config: pytest.Config) -> None:
    """Register the tier markers (if the ini did not) and install the guards."""
    registered = {line.split(":")[0].strip() for line in config.getini("markers")}
    for name, help_text in MARKERS.items():
        if name not in registered:
            config.addinivalue_line("markers", f"{name}: {help_text}")
    _restores.extend(_install())


def pytest_unconfigure(config: pytest.Config) -> None:
    while _restores:
        _restores.pop()()


@pytest.hookimpl(tryfirst=True)  # before ``-m`` deselects by marker
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Put every test without ``chdb``/``stack`` into the ``unit`` tier (for ``-m unit``)."""
    for item in items:
        if tier_of(item) == UNIT and item.get_closest_marker(UNIT) is None:
            item.add_marker(UNIT)


@contextmanager
def _guarded(item: pytest.Item, when: str) -> Iterator[None]:
    global _running
    running = _Running(item.nodeid, tier_of(item))
    _running = running
    try:
        yield
    finally:
        _running = None
        item.stash.setdefault(_violations_key, {})[when] = running.violations


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    """Refuse fixtures above the test's tier before any fixture starts."""
    # A plain hook, not the wrapper below: it runs before pytest's own setup (which
    # starts the fixtures), yet inside the other plugins' wrappers, which expect
    # their setup to have run when teardown comes.
    tier = tier_of(item)
    names = set(getattr(item, "fixturenames", ()))
    for needs, fixtures in ((STACK, STACK_FIXTURES), (CHDB, CHDB_FIXTURES)):
        wanted = sorted(names & fixtures)
        if wanted and not _allowed(tier, needs):
            pytest.fail(
                f"{item.nodeid} is a {tier}-tier test but requests the fixture(s) "
                f"{', '.join(wanted)}: {_advice(needs)}",
                pytrace=False,
            )


@pytest.hookimpl(wrapper=True, tryfirst=True, specname="pytest_runtest_setup")
def _guard_setup(item: pytest.Item) -> Generator[None, None, None]:
    with _guarded(item, "setup"):
        return (yield)


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_call(item: pytest.Item) -> Generator[None, None, None]:
    with _guarded(item, "call"):
        return (yield)


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_teardown(
    item: pytest.Item, nextitem: pytest.Item | None
) -> Generator[None, None, None]:
    # Only when the next test shares this test's parent: otherwise this teardown also
    # finalizes module- or session-scoped fixtures that other (stack) tests set up,
    # such as the session's stack itself.
    if nextitem is None or nextitem.parent is not item.parent:
        return (yield)
    with _guarded(item, "teardown"):
        return (yield)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """Fail a phase that violated its tier, even if the test caught the error."""
    report = yield
    violations = item.stash.get(_violations_key, {}).get(call.when, [])
    if violations:
        text = "\n".join(dict.fromkeys(violations))
        if report.passed:
            report.outcome = "failed"
            report.longrepr = f"TierViolation (caught by the code under test):\n{text}"
        else:
            report.sections.append(("tier violations", text))
    return report
