"""What a ClickHouse client costs a worker's memory: ``connect``'s allocator and imports.

chDB's jemalloc reads its options once, when the library loads, so each case
runs in a fresh interpreter (this one may have loaded chDB already) and reads
the engine's own report of its options; imports are likewise seen only in a
fresh interpreter.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.chdb

_PROBE = """
import sys
from llmpulse.processors.settings import Settings
from llmpulse.processors.stream.clickhouse import connect
client = connect(Settings(clickhouse_dsn="chdb://" + sys.argv[1]))
stats = client.query("SELECT * FROM system.jemalloc_stats").result_rows[0][0]
print(next(line.strip() for line in stats.splitlines() if "opt.dirty_decay_ms" in line))
"""


def _dirty_decay(folder: Path, **env: str) -> str:
    """The engine's ``opt.dirty_decay_ms`` line after ``connect`` in a fresh process."""
    base = {k: v for k, v in os.environ.items() if k != "JE_MALLOC_CONF"}
    done = subprocess.run(
        [sys.executable, "-c", _PROBE, str(folder)],
        env={**base, **env},
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return done.stdout.strip().splitlines()[-1]


def test_embedded_engine_returns_freed_pages_at_once(tmp_path: Path) -> None:
    # ClickHouse's default (5000 ms) kept a merge's freed buffers resident under the next
    # ones: the usage sink's peak RSS went over its 600 MB target.
    assert _dirty_decay(tmp_path / "chdb").startswith("opt.dirty_decay_ms: 0 ")


def test_an_operators_allocator_options_win(tmp_path: Path) -> None:
    line = _dirty_decay(tmp_path / "chdb", JE_MALLOC_CONF="dirty_decay_ms:2000")
    assert line.startswith("opt.dirty_decay_ms: 2000 ")


_INSERT_PROBE = """
import sys
from llmpulse.processors.settings import Settings
from llmpulse.processors.stream.clickhouse import connect
client = connect(Settings(clickhouse_dsn="chdb://" + sys.argv[1]))
client.command("CREATE TABLE t (a UInt32, s String) ENGINE = MergeTree ORDER BY a")
client.insert("t", [[1, 2], ["a", "b"]], column_names=["a", "s"], column_oriented=True)
assert client.query("SELECT count() FROM t").result_rows == [(2,)]
print("pandas imported" if "pandas" in sys.modules else "no pandas")
"""


def test_an_insert_does_not_import_pandas(tmp_path: Path) -> None:
    # clickhouse-connect imports pandas on the first insert to ask whether the data is a
    # DataFrame: 45-80 MB more resident memory in a sink worker, for lists.
    done = subprocess.run(
        [sys.executable, "-c", _INSERT_PROBE, str(tmp_path / "chdb")],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    assert done.stdout.strip().splitlines()[-1] == "no pandas"
