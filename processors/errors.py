"""The exceptions of the workers, reports, local stack and command line.

Every error llmpulse raises on purpose on the worker side derives from
:class:`LlmpulseError`, grouped by what the caller can do about it, so a caller
catches a node of the tree instead of a list of classes (the ``llmpulse``
command maps :class:`InputError` to exit code 2 and every other node to 1)::

    LlmpulseError
    ├── ConfigError              the configuration cannot work: fix a setting and rerun
    │   ├── ClickHouseConfigError    LLMPULSE_CLICKHOUSE_DSN or the SQL folder is unusable
    │   └── ServiceAddressMissing    a worker got settings without a Kafka or Redis address
    ├── InputError               user input (an argument, a file) is invalid; nothing changed
    │   ├── BillingInputError        a report period or instant is malformed or empty
    │   ├── BreakerConfigError       the breaker configuration file is missing or invalid
    │   ├── PricingFileError         a prices / chargeback rates / organizations file is invalid
    │   ├── ScenarioError            a simulated fault or error rate is malformed
    │   ├── TopicMismatch            an existing Kafka topic differs from the registry
    │   └── UsageError               a command was called wrongly (``llmpulse.cli.common``)
    └── ServiceError             a service is missing, unreachable or would not start
        ├── RedisRefused             Redis refused the credentials or TLS of LLMPULSE_REDIS_URL
        ├── StackError               a local stack operation (up, down, endpoints) failed
        └── TopicMissing             a topic llmpulse reads does not exist on the cluster

Where each one is defined: ``ClickHouseConfigError`` in
``llmpulse.processors.stream.clickhouse``, ``ServiceAddressMissing`` in
``llmpulse.processors.settings``, ``BillingInputError`` in
``llmpulse.processors.billing.reports``, ``BreakerConfigError`` in
``llmpulse.processors.breaker.config``, ``PricingFileError`` in
``llmpulse.processors.billing.pricing``, ``ScenarioError`` in
``llmpulse.devstack.simulate``, ``StackError`` in ``llmpulse.devstack.stack``,
``TopicMismatch`` in ``llmpulse.processors.stream.topics`` and ``TopicMissing`` in
``llmpulse.processors.stream.kafka``, ``RedisRefused`` in
``llmpulse.processors.stream.redis_client``.
The input errors also stay ``ValueError`` and ``ServiceAddressMissing`` stays
``RuntimeError``, so older ``except`` clauses keep working.

Outside the tree, on purpose:

* ``llmpulse.core.registry.RegistryError`` (a ``ValueError``): the pure core
  imports nothing of the workers; the command line turns it into a
  ``UsageError``.
* pydantic's ``ValidationError`` of ``Settings``: the command line turns it
  into a ``UsageError`` naming the ``LLMPULSE_*`` variable.
* Errors inside a stream worker's processing path (poison events, transient
  service errors) decide the event's path (DLQ, retry in place, stop) and are
  defined next to that path, not here.

This module imports nothing but the standard library, so the command line can
catch these classes even when the ``worker`` extra is not installed.
"""

from __future__ import annotations

__all__ = ["ConfigError", "InputError", "LlmpulseError", "ServiceError"]


class LlmpulseError(Exception):
    """Base of every error llmpulse raises on purpose; ``str(error)`` is one line."""


class ConfigError(LlmpulseError):
    """The configuration (settings, DSN, service addresses) cannot work as given."""


class InputError(LlmpulseError):
    """Input from the user (a command argument or a file) is invalid; nothing was changed."""


class ServiceError(LlmpulseError):
    """A service llmpulse needs is missing, unreachable or would not start."""
