"""Writing a command's output to the file the user named (``--output``).

A report holds organization data: a new file is created readable by its owner
only (an existing one keeps its mode). A wrong path (a missing folder, a folder,
no permission) is bad input and exits 2; a failing disk is a runtime failure and
exits 1; both are one line that quotes the path shortened.
"""

from __future__ import annotations

import errno
from pathlib import Path

from llmpulse.cli.common import UsageError
from llmpulse.processors import owner_only
from llmpulse.processors.errors import LlmpulseError
from llmpulse.processors.userinput import shorten

#: ``OSError`` numbers that mean the path itself is wrong, not the disk.
_BAD_PATH = frozenset(
    {errno.ENOENT, errno.ENOTDIR, errno.EISDIR, errno.EACCES, errno.EPERM, errno.ENAMETOOLONG}
)

_REASONS = {errno.ENOENT: "its folder does not exist", errno.EISDIR: "it is a folder"}


def write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` as UTF-8 (new files 0600), mapping failures to one-line errors."""
    try:
        owner_only.write_text(path, text)
    except OSError as exc:
        reason = _REASONS.get(exc.errno or 0, exc.strerror or str(exc))
        message = f"cannot write {shorten(path)}: {reason}"
        if exc.errno in _BAD_PATH:
            raise UsageError(message) from None
        raise LlmpulseError(message) from None
