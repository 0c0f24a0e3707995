"""What every command group shares: exit codes, the parser class, settings, argument types.

Nothing here imports the ``worker`` extra at import time (settings and the
local stack are imported inside the functions), so ``llmpulse --help`` and
``llmpulse --version`` work on the light install.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, NoReturn, TypeAlias

from pydantic import ValidationError

from llmpulse.processors.errors import InputError

if TYPE_CHECKING:
    from llmpulse.processors.settings import Settings

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2

#: What ``add_subparsers`` returns; each command group adds its parsers to it.
SubParsers: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"

#: Top-level import names of the ``worker`` extra's distributions (faust-streaming,
#: pydantic-settings, clickhouse-connect, chdb, PyYAML).
WORKER_EXTRA_MODULES = frozenset(
    {"faust", "pydantic_settings", "clickhouse_connect", "chdb", "yaml"}
)


class UsageError(InputError):
    """Bad input from the user: printed as one line, exit code 2."""


class Parser(argparse.ArgumentParser):
    """Argument errors as one line (``llmpulse: error: ...``), exit code 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see --help)\n")


def load_settings() -> Settings:
    """The validated ``Settings``; a bad ``LLMPULSE_*`` value raises a ``UsageError`` naming it.

    The message never repeats the value (it may hold a password, or be huge).
    """
    from pydantic_settings import SettingsError

    from llmpulse.processors.settings import PREFIX, Settings

    try:
        return Settings()
    except ValidationError as exc:
        first = exc.errors(include_input=False)[0]
        field, *item = first["loc"]
        where = f"item {item[0]}: " if item else ""
        message = first["msg"].removeprefix("Value error, ")
        raise UsageError(
            f"invalid setting {PREFIX}{str(field).upper()}: {where}{message}"
        ) from None
    except UnicodeDecodeError as exc:
        raise UsageError(
            f"cannot read .env: not UTF-8 (invalid byte at offset {exc.start})"
        ) from None
    except SettingsError as exc:
        raise UsageError(f"invalid settings: {exc}") from None


def with_services(settings: Settings, *, kafka_required: bool = True) -> Settings:
    """Settings with Kafka, Redis (and Prometheus) addresses filled in from the local stack.

    Workers never look the local stack up themselves (they raise
    ``ServiceAddressMissing``), so every command that reaches Kafka or Redis
    passes its settings through here first. Addresses that are set are kept;
    raises ``StackError`` if one is unset and the local stack is not running.

    Then Kafka is asked once whether it lets these settings in
    (``kafka.preflight``, bounded): a wrong password or an untrusted
    certificate is a ``ConfigError`` naming the setting (exit 1) before
    anything starts, not a client that waits for Kafka forever. An unreachable
    Kafka is a ``ServiceError`` saying why, unless not ``kafka_required`` (a
    command that can answer without Kafka).
    """
    from llmpulse.processors.errors import ServiceError
    from llmpulse.processors.stream import kafka

    if not (settings.kafka_bootstrap and settings.redis_url):
        from llmpulse.devstack import stack

        settings = stack.with_endpoints(settings, stack.endpoints(settings))
    unreachable = kafka.on_own_loop(kafka.preflight(settings))
    if unreachable is not None and kafka_required:
        raise ServiceError(f"cannot reach Kafka: {unreachable}")
    return settings


def usage_error(exc: ValidationError) -> UsageError:
    """The first error of a model validation as a one-line ``UsageError`` (``field: message``)."""
    first = exc.errors(include_input=False)[0]
    return UsageError(f"{'.'.join(map(str, first['loc']))}: {first['msg']}")


def missing_extra_hint(command: str, exc: ModuleNotFoundError) -> str | None:
    """The one-line install hint when ``exc`` is a module of the ``worker`` extra, else None."""
    module = (exc.name or "").partition(".")[0]
    if module not in WORKER_EXTRA_MODULES:
        return None
    return (
        f"'llmpulse {command}' needs the worker extra: pip install 'llmpulse[worker]' "
        f"(missing module: {module})"
    )


def positive_int(text: str) -> int:
    """argparse type: a whole number greater than 0."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be greater than 0: {value}")
    return value


def positive_float(text: str) -> float:
    """argparse type: a number greater than 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be greater than 0: {text}")
    return value
