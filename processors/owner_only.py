"""Folders and files that hold organization or user data, readable by their owner only.

State folders, stack files and cost reports carry organization names, usage and
charges, so llmpulse makes them private whatever the process umask: a folder it
creates is 0700 and a file it creates is 0600, the mode being set explicitly
right after creation and before any data is written (a umask only ever removes
bits, and an unusual one could even remove the owner's).

An existing folder given to :func:`private_dir` is tightened to 0700 too (state
left by an older version), unless another user owns it or it is a shared
folder with the sticky bit, like ``/tmp``. An existing file keeps its mode: the
user chose it, and it may be a terminal or a pipe (``--output /dev/stdout``).
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

__all__ = ["FILE_MODE", "FOLDER_MODE", "open_for_writing", "private_dir", "write_text"]

FOLDER_MODE = 0o700
FILE_MODE = 0o600


def private_dir(path: Path) -> Path:
    """Make ``path`` and its missing parents 0700 folders; tighten ``path`` if it exists.

    Returns ``path``. Raises ``NotADirectoryError`` when ``path`` is a file and
    the usual ``OSError`` when a folder cannot be made.
    """
    missing: list[Path] = []
    folder = path
    while not folder.exists() and folder != folder.parent:
        missing.append(folder)
        folder = folder.parent
    for new in reversed(missing):
        try:
            os.mkdir(new, FOLDER_MODE)
        except FileExistsError:
            continue  # made at the same time by another process, which sets its mode
        os.chmod(new, FOLDER_MODE)
    info = path.stat()
    if not stat.S_ISDIR(info.st_mode):
        raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), str(path))
    shared = info.st_mode & stat.S_ISVTX or info.st_uid != os.geteuid()
    if not shared and stat.S_IMODE(info.st_mode) != FOLDER_MODE:
        os.chmod(path, FOLDER_MODE)
    return path


def open_for_writing(path: Path, flags: int = os.O_WRONLY | os.O_TRUNC) -> int:
    """A descriptor opened with ``flags``: a new file is created 0600, an existing one kept."""
    try:
        fd = os.open(path, flags | os.O_CREAT | os.O_EXCL, FILE_MODE)
    except FileExistsError:
        return os.open(path, flags)
    try:
        os.fchmod(fd, FILE_MODE)
    except OSError:
        os.close(fd)
        raise
    return fd


def write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` as UTF-8, a new file being created readable by its owner only."""
    with os.fdopen(open_for_writing(path), "w", encoding="utf-8") as fh:
        fh.write(text)
