"""The local real-services stack: Kafka, Redis and Prometheus as plain processes.

``llmpulse stack up|down|status``, the demo and the integration-test fixtures all
go through this package. Nothing here is a mock: every service is the real thing,
started on free loopback ports and checked with a real protocol request.

* **Kafka** (``settings.kafka_version``, 4.x): a single KRaft node acting as
  broker and controller. Its jars come from Maven Central through
  ``ops/kafka/pom.xml`` (``mvn dependency:copy-dependencies``) and are cached in
  ``<cache_dir>/kafka-<version>/libs`` (a ``.complete`` stamp marks a finished
  download). The storage is formatted with ``kafka.tools.StorageTool format
  --standalone`` and the broker runs as ``java -cp 'libs/*' kafka.Kafka``.
* **Redis**: Debian's ``redis-server`` without persistence (``--save ''``),
  except that :func:`stop_service` asks it for ``SHUTDOWN SAVE`` so a simulated
  outage keeps the data, as a real restart of a persistent Redis would.
* **Prometheus**: Debian's ``prometheus`` with a 1 s scrape interval; its targets
  come from a ``file_sd`` file that :func:`register_scrape_target` maintains.

Missing ``redis-server``/``prometheus`` binaries are installed with ``apt-get``;
Java 17+ and Maven must already be installed. The Debian packages may start their
own system services on 6379/9090: the stack never uses them.

Layout under ``state_dir`` (every path is resolved to an absolute one)::

    stack.json                  pids, ports and endpoints of the running stack
    kafka/server.properties     generated from ops/kafka/server.properties.template
    kafka/data/                 KRaft metadata and topic data (wiped on a fresh start)
    kafka/kafka.log             broker stdout/stderr (log4j2 via ops/kafka/log4j2.properties)
    redis/redis.log, redis/dump.rdb
    prometheus/prometheus.yml   generated from ops/prometheus/prometheus.yml.template
    prometheus/targets.json     file_sd scrape targets
    prometheus/data/            TSDB (wiped on a fresh start)

:func:`up` is idempotent: services whose recorded pid is alive and healthy are
reused; services stopped with :func:`stop_service` are restarted on their old
ports with their data; anything else (dead, unhealthy, wrong Kafka version) is
killed if it is still around and started fresh on new ports, which for Kafka
means an empty, newly formatted data directory. Services configured through
``settings.kafka_bootstrap``/``redis_url``/``prometheus_url`` are never
started or stopped, only health-checked and reported as ``"external"``.

The package, one module per job: :mod:`~llmpulse.devstack.stack.model` (names,
results, :class:`StackError`), :mod:`~llmpulse.devstack.stack.paths` (state
layout, stack.json, locking), :mod:`~llmpulse.devstack.stack.processes` (spawn,
stop, free ports, logs), :mod:`~llmpulse.devstack.stack.probes` (health checks),
:mod:`~llmpulse.devstack.stack.prerequisites` (Java, Kafka jars, Debian binaries,
templates), :mod:`~llmpulse.devstack.stack.services` (launching),
:mod:`~llmpulse.devstack.stack.targets` (Prometheus file_sd targets) and
:mod:`~llmpulse.devstack.stack.lifecycle` (up, down, status, endpoints, outages).
Callers import the public names below from the package itself.
"""

from __future__ import annotations

from llmpulse.devstack.stack.lifecycle import (
    down,
    endpoints,
    start_service,
    status,
    stop_service,
    up,
)
from llmpulse.devstack.stack.lifecycle import with_endpoints as with_endpoints
from llmpulse.devstack.stack.model import (
    SERVICES,
    ServiceName,
    ServiceState,
    ServiceStatus,
    StackEndpoints,
    StackError,
    print_progress,
)
from llmpulse.devstack.stack.targets import register_scrape_target, unregister_scrape_target

__all__ = [
    "SERVICES",
    "ServiceName",
    "ServiceState",
    "ServiceStatus",
    "StackEndpoints",
    "StackError",
    "down",
    "endpoints",
    "print_progress",
    "register_scrape_target",
    "start_service",
    "status",
    "stop_service",
    "unregister_scrape_target",
    "up",
]
