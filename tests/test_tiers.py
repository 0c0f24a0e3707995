"""The test tiers guard themselves (tests/tiers.py).

The guard's refusals are checked in small suites run by pytester in a subprocess, with
the tiers plugin loaded: a refusal fails the refused test, so it cannot be shown by a
test of this suite that passes.
"""

from __future__ import annotations

import re
import socket
from pathlib import Path

import pytest

from tests import tiers

ROOT = Path(__file__).resolve().parent.parent

# A fake stack fixture and a fake chDB fixture: the guard must refuse them before they run.
INNER_CONFTEST = """
import pytest

@pytest.fixture
def services():
    raise AssertionError("the guard let a stack fixture run")

@pytest.fixture
def ch():
    raise AssertionError("the guard let a chDB fixture run")
"""

INNER_TESTS = """
import asyncio
import socket

import clickhouse_connect
import pytest

from llmpulse.processors.settings import Settings
from llmpulse.processors.stream import clickhouse


@pytest.fixture
def listener():
    # A server that would accept: a refusal can only come from the guard.
    server = socket.create_server(("127.0.0.1", 0))
    yield server.getsockname()[1]
    server.close()


def test_unit_connect(listener):
    socket.socket().connect(("127.0.0.1", listener))


def test_unit_create_connection(listener):
    socket.create_connection(("127.0.0.1", listener))


def test_unit_asyncio_connect(listener):
    asyncio.run(asyncio.open_connection("127.0.0.1", listener))


def test_unit_swallowed(listener):
    try:
        socket.socket().connect_ex(("127.0.0.1", listener))
    except Exception:
        pass  # like a client that falls back when its server "is down"


@pytest.mark.chdb
def test_chdb_connect(listener):
    socket.create_connection(("127.0.0.1", listener))


@pytest.mark.stack
def test_stack_connect(listener):
    socket.create_connection(("127.0.0.1", listener)).close()


def test_unit_chdb(tmp_path):
    clickhouse.connect(Settings(state_dir=tmp_path, clickhouse_dsn=f"chdb://{tmp_path}/db"))


def test_unit_chdb_client(tmp_path):
    clickhouse_connect.get_client(dsn=f"chdb://{tmp_path}/db")


@pytest.mark.chdb
def test_chdb_chdb(tmp_path):
    client = clickhouse.connect(
        Settings(state_dir=tmp_path, clickhouse_dsn=f"chdb://{tmp_path}/db")
    )
    assert client.command("SELECT 1") == 1


def test_unit_requests_services(services):
    pass


@pytest.mark.chdb
def test_chdb_requests_services(services):
    pass


def test_unit_requests_ch(ch):
    pass
"""


@pytest.fixture
def inner(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> pytest.Pytester:
    """A pytester folder with the tiers plugin importable (``-p tests.tiers``)."""
    monkeypatch.setenv("PYTHONPATH", str(ROOT))
    pytester.makeconftest(INNER_CONFTEST)
    pytester.makepyfile(test_inner=INNER_TESTS)
    return pytester


def _run(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    return pytester.runpytest_subprocess(
        "-p", "tests.tiers", "-p", "no:cacheprovider", "-p", "no:asyncio", "--strict-markers", *args
    )


def _failures(result: pytest.RunResult) -> dict[str, str]:
    """``{test name: its failure or error text}`` from the ``-rfE`` summary."""
    found: dict[str, str] = {}
    for line in result.outlines:
        m = re.match(r"(?:FAILED|ERROR) test_inner\.py::(\w+) - (.*)", line)
        if m:
            found[m[1]] = m[2]
    return found


def test_the_guard_refuses_what_the_tier_does_not_allow(inner: pytest.Pytester) -> None:
    result = _run(inner, "-rfE", "--tb=short")
    text = result.stdout.str()
    failures = _failures(result)
    network = [
        "test_unit_connect",
        "test_unit_create_connection",
        "test_unit_asyncio_connect",
        "test_chdb_connect",
    ]
    for name in network:
        assert name in failures, text
        assert re.search(
            rf"{name} is a (unit|chdb)-tier test but opened a network connection to "
            r"127\.0\.0\.1:\d+: mark the test @pytest\.mark\.stack",
            text,
        ), text
        # The guard's own exception, not a refused connection.
        assert failures[name].startswith("tests.tiers.TierViolation"), failures[name]
    # Swallowed by the code under test, and still a failure.
    assert "test_unit_swallowed" in failures, text
    assert "TierViolation (caught by the code under test)" in text
    for name in ("test_unit_chdb", "test_unit_chdb_client"):
        assert failures[name].startswith("tests.tiers.TierViolation"), failures[name]
        assert re.search(rf"{name} is a unit-tier test but opened chDB.*@pytest\.mark\.chdb", text)
    # Fixtures above the tier are refused in setup, before they run.
    assert "the guard let" not in text
    for name, fixture, mark in [
        ("test_unit_requests_services", "services", "stack"),
        ("test_chdb_requests_services", "services", "stack"),
        ("test_unit_requests_ch", "ch", "chdb"),
    ]:
        assert re.search(
            rf"ERROR at setup of {name} _+\n.*{name} is a \w+-tier test but requests the "
            rf"fixture\(s\) {fixture}: mark the test @pytest\.mark\.{mark}",
            text,
        ), text
    result.assert_outcomes(passed=2, failed=7, errors=3)
    assert set(failures) == {
        *network,
        "test_unit_swallowed",
        "test_unit_chdb",
        "test_unit_chdb_client",
        "test_unit_requests_services",
        "test_chdb_requests_services",
        "test_unit_requests_ch",
    }


def test_minus_m_unit_selects_the_unmarked_tests(inner: pytest.Pytester) -> None:
    # ``unit`` is added at collection, before ``-m`` deselects; chdb and stack are
    # explicit marks (and test_every_collected_test_is_in_exactly_one_tier checks them).
    result = _run(inner, "--collect-only", "-q", "-m", "unit")
    assert result.ret == 0, result.stdout.str()
    names = {line.split("::")[1] for line in result.outlines if line.startswith("test_inner.py::")}
    assert names == {
        "test_unit_connect",
        "test_unit_create_connection",
        "test_unit_asyncio_connect",
        "test_unit_swallowed",
        "test_unit_chdb",
        "test_unit_chdb_client",
        "test_unit_requests_services",
        "test_unit_requests_ch",
    }


def test_two_tiers_on_one_test_is_an_error(inner: pytest.Pytester) -> None:
    inner.makepyfile(
        test_both="""
import pytest

@pytest.mark.chdb
@pytest.mark.stack
def test_both():
    pass
"""
    )
    result = _run(inner, "--collect-only", "-q", "test_both.py")
    assert result.ret != 0
    assert (
        "test_both.py::test_both is marked chdb and stack"
        in result.stderr.str() + result.stdout.str()
    )


def test_unix_sockets_and_socketpairs_are_allowed(tmp_path: Path) -> None:
    left, right = socket.socketpair()
    with left, right:
        left.sendall(b"x")
        assert right.recv(1) == b"x"
    path = str(tmp_path / "s")
    with socket.socket(socket.AF_UNIX) as server, socket.socket(socket.AF_UNIX) as client:
        server.bind(path)
        server.listen()
        client.connect(path)
        client.sendall(b"y")
        conn, _ = server.accept()
        with conn:
            assert conn.recv(1) == b"y"


def test_every_collected_test_is_in_exactly_one_tier(request: pytest.FixtureRequest) -> None:
    items = request.session.items
    assert items
    for item in items:
        marked = [t for t in tiers.TIERS if item.get_closest_marker(t) is not None]
        assert marked == [tiers.tier_of(item)], item.nodeid
