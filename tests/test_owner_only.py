"""State, spool and report files are created readable by their owner only (issue 14, item 5).

Every test runs under the common umask 022, which would leave new files 0644 and
folders 0755: the modes below come from llmpulse, not from the umask.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from llmpulse.cli.files import write_text as write_report
from llmpulse.devstack.stack.paths import Paths, locked, save, write_atomic
from llmpulse.gateway.spool import Spool, SpoolRecord
from llmpulse.processors import owner_only
from llmpulse.processors.settings import Settings
from llmpulse.processors.stream.faust_app import create_app


@pytest.fixture(autouse=True)
def _umask_022() -> Iterator[None]:
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# --- the helpers ---------------------------------------------------------------------------


def test_private_dir_makes_every_missing_folder_0700(tmp_path: Path) -> None:
    leaf = tmp_path / "a" / "b" / "c"
    assert owner_only.private_dir(leaf) == leaf
    assert [mode(p) for p in (tmp_path / "a", tmp_path / "a" / "b", leaf)] == [0o700] * 3


def test_private_dir_does_not_depend_on_the_umask(tmp_path: Path) -> None:
    os.umask(0o277)  # would even take the owner's write and search bits
    owner_only.private_dir(tmp_path / "a" / "b")
    assert mode(tmp_path / "a") == mode(tmp_path / "a" / "b") == 0o700


def test_private_dir_tightens_an_existing_folder_but_not_a_shared_one(tmp_path: Path) -> None:
    old = tmp_path / "old-state"
    old.mkdir(mode=0o755)
    owner_only.private_dir(old)
    assert mode(old) == 0o700
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o1777)  # like /tmp
    owner_only.private_dir(shared)
    assert mode(shared) == 0o1777


def test_private_dir_refuses_a_file(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("")
    with pytest.raises(NotADirectoryError):
        owner_only.private_dir(tmp_path / "f")


def test_write_text_creates_0600_and_keeps_the_mode_of_an_existing_file(tmp_path: Path) -> None:
    new = tmp_path / "new.txt"
    owner_only.write_text(new, "acme,12.50\n")
    assert (mode(new), new.read_text()) == (0o600, "acme,12.50\n")
    chosen = tmp_path / "chosen.txt"
    chosen.write_text("old, longer content\n")
    chosen.chmod(0o640)
    owner_only.write_text(chosen, "new\n")
    assert (mode(chosen), chosen.read_text()) == (0o640, "new\n")


# --- report files (cli --output) -------------------------------------------------------------


def test_report_output_file_is_created_0600(tmp_path: Path) -> None:
    report = tmp_path / "costs.csv"
    write_report(report, "organization_id,total_charge_usd\nacme,12.50\n")
    assert mode(report) == 0o600
    assert report.read_text().endswith("acme,12.50\n")


# --- the gateway spool ---------------------------------------------------------------------


def test_spool_folder_and_files_are_owner_only(tmp_path: Path) -> None:
    folder = tmp_path / "spool"
    spool = Spool(folder, max_segment_records=1)
    try:
        record = SpoolRecord("llm.usage", b"acme", b'{"prompt":"secret plans"}', "e1")
        assert spool.append([record, record]) == 2
        segment = spool.segments()[0]
        spool.advance(segment, segment.stat().st_size, 1)
        files = sorted(folder.iterdir())
        assert {p.suffix for p in files} == {"", ".jsonl", ".acked"}  # .lock, segments, cursor
        assert mode(folder) == 0o700
        assert {p.name: mode(p) for p in files} == {p.name: 0o600 for p in files}
    finally:
        spool.close()


def test_spool_of_an_older_version_is_tightened(tmp_path: Path) -> None:
    folder = tmp_path / "spool"
    folder.mkdir(mode=0o755)
    (folder / ".lock").touch(mode=0o644)
    Spool(folder).close()
    assert (mode(folder), mode(folder / ".lock")) == (0o700, 0o600)


# --- the local stack's state folder --------------------------------------------------------


def test_stack_state_folder_and_files_are_owner_only(tmp_path: Path) -> None:
    paths = Paths(state=tmp_path / "state", cache=tmp_path / "cache")
    paths.state.mkdir(mode=0o755)  # as `stack up` of an older version left it
    with locked(paths.lock_file):
        save(paths, {})
    assert mode(paths.state) == 0o700
    assert (mode(paths.stack_file), mode(paths.ports_file)) == (0o600, 0o600)


def test_write_atomic_replaces_a_readable_file_with_a_private_one(tmp_path: Path) -> None:
    config = tmp_path / "state" / "kafka" / "server.properties"
    config.parent.mkdir(parents=True)
    config.write_text("old\n")
    config.chmod(0o644)
    write_atomic(config, "listeners=...\n")
    assert (mode(config.parent), mode(config), config.read_text()) == (
        0o700,
        0o600,
        "listeners=...\n",
    )


# --- the workers' state --------------------------------------------------------------------


def test_faust_state_folder_is_owner_only(tmp_path: Path) -> None:
    settings = Settings(state_dir=tmp_path / "state", kafka_bootstrap="127.0.0.1:1")
    create_app(settings, "prompts")
    assert mode(tmp_path / "state") == mode(tmp_path / "state" / "faust") == 0o700
