"""The local real-services stack: Kafka, Redis and Prometheus as plain processes.

``llmpulse stack up|down|status``, the demo and the integration-test fixtures all
go through this package. Nothing here is a mock: every service is the real thing,
started on loopback ports and checked with a real protocol request.

* **Kafka** (``settings.kafka_version``, 4.x): a single KRaft node acting as
  broker and controller. Its jars come from Maven Central through
  ``ops/kafka/pom.xml`` (``mvn dependency:copy-dependencies``) and are cached in
  ``<cache_dir>/kafka-<version>/libs`` (a ``.complete`` stamp marks a finished
  download). The storage is formatted with ``kafka.tools.StorageTool format
  --standalone`` and the broker runs as ``java -cp 'libs/*' kafka.Kafka``.
* **Redis**: Debian's ``redis-server`` without periodic snapshots (``--save ''``)
  that writes ``dump.rdb`` when it is stopped cleanly (``--shutdown-on-sigterm
  save``), so :func:`down` and :func:`stop_service` keep its keys, as a real
  restart of a persistent Redis would; a SIGKILL loses what it wrote since.
* **Prometheus**: Debian's ``prometheus`` with a 1 s scrape interval; its targets
  come from a ``file_sd`` file that :func:`register_scrape_target` maintains.
* **Secure listeners** (``up(secure=True)``, ``llmpulse stack up --secure``):
  Kafka also serves SASL_SSL (SCRAM-SHA-512) and Redis a TLS port with an ACL
  user, on their own loopback ports; see :mod:`~llmpulse.devstack.stack.secure`
  and :func:`secure_endpoints`. A later ``up`` keeps serving them (``secure=False``
  drops them).

Missing ``redis-server``/``prometheus``/``openssl`` binaries are installed with
``apt-get``; Java 17+ and Maven must already be installed. The Debian packages may start their
own system services on 6379/9090: the stack never uses them.

Layout under ``state_dir`` (every path is resolved to an absolute one)::

    stack.json                  pids, ports and endpoints of the running stack
    ports.json                  every service's last ports (kept by down)
    credentials.json            secure listeners' user and random passwords (0600)
    tls/                        their private CA (ca.pem) and loopback certificate
    kafka/server.properties     generated from ops/kafka/server.properties.template
    kafka/data/                 KRaft metadata (meta.properties) and topic data
    kafka/kafka.log             broker stdout/stderr (log4j2 via ops/kafka/log4j2.properties)
    kafka/keystore.pem          SASL_SSL key and certificate (0600)
    kafka/scram.stamp           hash of the SCRAM credential Kafka's metadata holds
    redis/redis.log, redis/dump.rdb
    redis/users.acl             ACL users of the TLS port (password hash only; 0600)
    prometheus/prometheus.yml   generated from ops/prometheus/prometheus.yml.template
    prometheus/targets.json     file_sd scrape targets
    prometheus/data/            TSDB

:func:`up` is idempotent: services whose recorded pid is alive and healthy are
reused. Every other one (stopped by :func:`down` or :func:`stop_service`, dead
after a SIGKILL, not answering within a minute, wrong Kafka version) is stopped
if it is still around and started again with its data, on its last ports where
they are free (else on new ones, announced; clients read them from stack.json).
Kafka's storage is formatted only when it has no ``meta.properties``: the data
goes only with ``down(wipe=True)`` (``llmpulse stack down --wipe``), which
deletes the three service folders (credentials.json and tls/ are kept, so a
wiped secure stack comes back with the same passwords and CA). Services
configured through ``settings.kafka_bootstrap``/``redis_url``/``prometheus_url``
are never started or stopped, only health-checked and reported as ``"external"``.

The package, one module per job: :mod:`~llmpulse.devstack.stack.model` (names,
results, :class:`StackError`), :mod:`~llmpulse.devstack.stack.paths` (state
layout, stack.json, locking), :mod:`~llmpulse.devstack.stack.processes` (spawn,
stop, free ports, logs), :mod:`~llmpulse.devstack.stack.probes` (health checks),
:mod:`~llmpulse.devstack.stack.prerequisites` (Java, Kafka jars, Debian binaries,
templates), :mod:`~llmpulse.devstack.stack.services` (launching),
:mod:`~llmpulse.devstack.stack.secure` (secure listeners, credentials),
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
from llmpulse.devstack.stack.secure import (
    ListenerStatus,
    SecureEndpoints,
    find_secure_endpoints,
    secure_endpoints,
    secure_status,
)
from llmpulse.devstack.stack.targets import register_scrape_target, unregister_scrape_target

__all__ = [
    "SERVICES",
    "ListenerStatus",
    "SecureEndpoints",
    "ServiceName",
    "ServiceState",
    "ServiceStatus",
    "StackEndpoints",
    "StackError",
    "down",
    "endpoints",
    "find_secure_endpoints",
    "print_progress",
    "register_scrape_target",
    "secure_endpoints",
    "secure_status",
    "start_service",
    "status",
    "stop_service",
    "unregister_scrape_target",
    "up",
]
