"""User input inside one-line error messages, and the text files a user names.

An argument or a file may be anything (a 100 KB paste, a binary file, a folder),
and whatever is wrong with it must come back as one short line naming the
problem: never a traceback, never the whole value echoed back.
"""

from __future__ import annotations

from pathlib import Path

from llmpulse.processors.errors import InputError

#: Characters of a value shown in an error message before it is cut.
SHOWN_CHARS = 200


def shorten(value: object, limit: int = SHOWN_CHARS) -> str:
    """``repr(str(value))``, cut to ``limit`` characters with the full length noted."""
    text = str(value)
    if len(text) <= limit:
        return repr(text)
    return f"{text[:limit]!r}... ({len(text)} characters)"


def read_text(path: Path, error: type[InputError]) -> str:
    """The UTF-8 text of ``path``; ``error`` (one line) if it is unreadable or not UTF-8."""
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise error(
            f"cannot read {shorten(path)}: not UTF-8 text (invalid byte at offset {exc.start})"
        ) from None
    except OSError as exc:
        raise error(f"cannot read {shorten(path)}: {exc.strerror or exc}") from None
