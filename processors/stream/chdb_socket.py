"""Named ClickHouse operations that the running sink worker answers over a Unix socket.

chDB lets one process open an embedded data folder, and the sink worker keeps it
open (a session per batch would cost the sink its throughput). So while
``llmpulse worker sink`` runs on the embedded default, the commands that read or
load ClickHouse ask it to run their operation instead of opening the folder:

* the socket is ``<chDB folder>.sock`` (``<state_dir>/chdb.sock`` by default),
  mode 0600, served by the worker that holds the folder;
* only the operations the worker was given by name can run (a closed table:
  no SQL crosses the socket). The caller validates its arguments first and
  sends the operation's name with JSON arguments; the worker runs the very same
  function and sends back its text, so the output is byte for byte what the
  caller would have printed with the sink stopped;
* the worker runs operations on a chDB handle of their own (chDB serves several
  handles of its one engine in a process), never under the sinks' client lock:
  an operation neither waits for nor holds up the sinks' writes. One runs at a
  time and each of its queries is bounded by ``max_execution_time``;
* an error comes back as the same one-line message and exit code (an
  ``InputError`` stays one); a worker that is gone leaves a socket that refuses
  connections, and the caller then opens the folder itself.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import socketserver
import stat
import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from clickhouse_connect.driver.client import Client

from llmpulse.processors.errors import InputError, LlmpulseError, ServiceError
from llmpulse.processors.settings import Settings
from llmpulse.processors.stream import clickhouse
from llmpulse.processors.userinput import shorten

log = logging.getLogger(__name__)

#: A named operation: validated JSON arguments in, the command's output text out.
Operation = Callable[[Client, Mapping[str, Any]], str]
#: Bound on each query of an operation in the worker (ClickHouse ``max_execution_time``).
QUERY_SECONDS = 300
#: How long a caller waits for the answer: a few bounded queries, and one operation ahead.
ANSWER_SECONDS = 1200
#: A listening worker accepts at once; longer means it is stuck, not busy.
_CONNECT_SECONDS = 5
_MAX_REQUEST_BYTES = 1 << 20
#: ``sun_path`` holds 108 bytes with the terminating NUL.
_MAX_PATH_BYTES = 107


class OperationInputError(InputError):
    """The sink worker found the input invalid (its one-line message, exit 2)."""


class OperationFailed(ServiceError):
    """The operation failed in the sink worker, or the worker did not answer (exit 1)."""


def socket_path(settings: Settings) -> Path | None:
    """The socket next to the embedded chDB folder; None for a ClickHouse server."""
    dsn = settings.effective_clickhouse_dsn
    if not dsn.startswith("chdb://"):
        return None
    folder = Path(dsn.removeprefix("chdb://"))
    return folder.with_name(f"{folder.name}.sock")


def run(settings: Settings, operation: Operation, arguments: Mapping[str, Any]) -> str:
    """``operation``'s text: from the sink worker holding the embedded folder, else run here."""
    path = socket_path(settings)
    if path is not None and (answer := _ask(path, operation.__name__, arguments)) is not None:
        return answer
    try:
        client = clickhouse.connect(settings)
    except clickhouse.ClickHouseConfigError:
        # A sink worker may have opened the folder since we looked: ask it once more.
        if path is None or (answer := _ask(path, operation.__name__, arguments)) is None:
            raise
        return answer
    return operation(client, arguments)


def _ask(path: Path, name: str, arguments: Mapping[str, Any]) -> str | None:
    """The worker's answer; None when no worker listens on ``path`` (absent or stale)."""
    if not path.is_socket():
        return None
    request = json.dumps({"operation": name, "arguments": arguments}).encode()
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(_CONNECT_SECONDS)
        try:
            sock.connect(str(path))
        except (ConnectionRefusedError, FileNotFoundError):
            return None  # the socket of a worker that is gone
        except OSError as exc:
            raise OperationFailed(
                f"cannot reach the sink worker at {path}: {exc.strerror or 'timed out'}"
            ) from None
        sock.settimeout(ANSWER_SECONDS)
        try:
            sock.sendall(request)
            sock.shutdown(socket.SHUT_WR)
            reply = _read_to_end(sock)
        except TimeoutError:
            raise OperationFailed(
                f"the sink worker did not answer {name} within {ANSWER_SECONDS} s"
            ) from None
        except OSError as exc:
            raise OperationFailed(
                f"lost the sink worker while it ran {name}: {exc.strerror or exc}"
            ) from None
    return _answer(name, reply)


def _read_to_end(sock: socket.socket) -> bytes:
    chunks = []
    while chunk := sock.recv(1 << 16):
        chunks.append(chunk)
    return b"".join(chunks)


def _answer(name: str, reply: bytes) -> str:
    try:
        answer = json.loads(reply)
    except ValueError:  # empty or cut short: the worker stopped while it ran the operation
        raise OperationFailed(f"the sink worker stopped before it answered {name}") from None
    if "text" in answer:
        return str(answer["text"])
    error = OperationInputError if answer["input"] else OperationFailed
    raise error(str(answer["error"]))


@contextmanager
def serving(settings: Settings, operations: Mapping[str, Operation]) -> Iterator[None]:
    """Answer ``operations`` on the socket of the embedded folder while the block runs.

    Nothing to serve for a ClickHouse server. A socket that cannot be served is
    a warning, never a reason to stop ingesting.
    """
    path = socket_path(settings)
    if path is None:
        yield
        return
    try:
        server = _Server(path, operations, lambda: _operations_client(settings))
    except OSError as exc:
        log.warning("reports cannot reach this worker (socket %s): %s", path, exc.strerror or exc)
        yield
        return
    thread = threading.Thread(target=server.serve_forever, name="chdb-socket", daemon=True)
    thread.start()
    try:
        yield
    finally:
        server.shutdown()
        server.server_close()
        path.unlink(missing_ok=True)


def _operations_client(settings: Settings) -> Client:
    client = clickhouse.connect(settings)
    client.set_client_setting("max_execution_time", QUERY_SECONDS)
    return client


class _Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    """One thread per caller; operations run one at a time on their own chDB handle."""

    daemon_threads = True

    def __init__(
        self, path: Path, operations: Mapping[str, Operation], open_client: Callable[[], Client]
    ) -> None:
        if len(os.fsencode(path)) > _MAX_PATH_BYTES:
            raise OSError(f"path longer than {_MAX_PATH_BYTES} bytes")
        if path.is_socket():
            path.unlink()  # left by a worker that was killed: it holds no folder any more
        self.path = path
        self.operations = operations
        self._open_client = open_client
        self._client: Client | None = None
        self._one_at_a_time = threading.Lock()
        super().__init__(str(path), _Handler)

    def server_bind(self) -> None:
        super().server_bind()
        # Before listen(): until then every connection is refused.
        os.chmod(self.path, stat.S_IRUSR | stat.S_IWUSR)

    def answer(self, request: bytes) -> dict[str, Any]:
        """The reply to one request: ``{"text": ...}`` or ``{"error": ..., "input": ...}``."""
        try:
            parsed = json.loads(request)
            name, arguments = str(parsed["operation"]), parsed["arguments"]
        except (ValueError, KeyError, TypeError):
            return {"error": "not a request for a named operation", "input": True}
        operation = self.operations.get(name)
        if operation is None:
            return {"error": f"unknown operation {shorten(name)}", "input": True}
        with self._one_at_a_time:
            try:
                if self._client is None:
                    self._client = self._open_client()
                return {"text": operation(self._client, arguments)}
            except InputError as exc:
                return {"error": str(exc), "input": True}
            except LlmpulseError as exc:
                return {"error": str(exc), "input": False}
            except Exception as exc:
                # A bug or a ClickHouse error: logged in full here, one line for the caller.
                log.warning("operation %s failed", name, exc_info=True)
                return {"error": f"{name} failed: {_first_line(exc)}", "input": False}


def _first_line(exc: Exception, limit: int = 300) -> str:
    lines = str(exc).strip().splitlines()
    first = f"{type(exc).__name__}: {lines[0] if lines else ''}"
    return first if len(first) <= limit else f"{first[:limit]}..."


class _Handler(socketserver.StreamRequestHandler):
    server: _Server

    def handle(self) -> None:
        self.request.settimeout(_CONNECT_SECONDS)  # the request is sent at once, then EOF
        try:
            request = self.rfile.read(_MAX_REQUEST_BYTES + 1)
        except OSError:
            return
        if len(request) > _MAX_REQUEST_BYTES:
            reply: dict[str, Any] = {"error": "request too large", "input": True}
        else:
            reply = self.server.answer(request)
        self.request.settimeout(None)
        try:
            self.wfile.write(json.dumps(reply).encode())
        except OSError:
            log.info("a caller left before its answer")
