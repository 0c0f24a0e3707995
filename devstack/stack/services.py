"""Launching the services: Kafka (KRaft), Redis and Prometheus as plain processes.

:func:`prepare_and_launch` is the one entry point: it installs what is missing,
starts the planned services on their last loopback ports (new ones where those
are taken, or for a first start) and waits until each answers its health check.
A launch never deletes data: Kafka's storage is formatted only when it holds no
``meta.properties`` yet, Redis loads its ``dump.rdb`` and Prometheus its TSDB.
With ``secure``, Kafka and Redis also serve the listeners of
:mod:`~llmpulse.devstack.stack.secure`, each checked with an authenticated
request before the launch counts as ready.
"""

from __future__ import annotations

import base64
import re
import shutil
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

# Imported as a module (not its names) so that tests can replace processes.free_port.
from llmpulse.devstack.stack import processes
from llmpulse.devstack.stack import secure as secure_listeners
from llmpulse.devstack.stack.model import HOST, SERVICES, ServiceName, StackError
from llmpulse.devstack.stack.paths import Paths, Record, save, write_atomic
from llmpulse.devstack.stack.prerequisites import (
    OPS_DIR,
    ensure_debian_binaries,
    ensure_kafka_jars,
    require_java,
    run,
    template,
)
from llmpulse.devstack.stack.probes import READY_TIMEOUT, wait_ready
from llmpulse.devstack.stack.targets import ensure_targets_file
from llmpulse.devstack.stack.tls import Certificates
from llmpulse.processors.settings import Settings

_KAFKA_JAVA_OPTS = (
    "-Xms256m",
    "-Xmx512m",
    "-XX:+UseG1GC",
    "-XX:MaxGCPauseMillis=20",
    "-XX:+ExitOnOutOfMemoryError",
    "-Djava.awt.headless=true",
)
_PROMETHEUS_SCRAPE_INTERVAL = "1s"


def _kafka_cluster_id() -> str:
    while True:  # Kafka's Uuid.randomUuid() never starts with '-'
        cid = base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()
        if not cid.startswith("-"):
            return cid


def _ports(
    name: ServiceName,
    keys: Sequence[str],
    wanted: Mapping[str, int] | None,
    progress: Callable[[str], None],
) -> dict[str, int]:
    """``wanted`` (the service's last ports) where still free, new free ports otherwise.

    Clients find a moved service through stack.json, but one that keeps its port
    needs no reconfiguration, so a changed port is announced.
    """
    ports: dict[str, int] = {}
    for key in keys:
        old = (wanted or {}).get(key)
        if old is not None and processes.reuse_port(old):
            ports[key] = old
            continue
        ports[key] = processes.free_port()
        if old is not None:
            progress(f"{name}: port {old} ({key}) is taken; moving to {ports[key]}")
    return ports


def _kafka_java(paths: Paths, libs: Path) -> list[str]:
    """The ``java`` command line (before the main class) of the broker and its tools."""
    return [
        require_java(),
        *_KAFKA_JAVA_OPTS,
        f"-Dlog4j2.configurationFile={paths.kafka_log4j}",
        f"-Dkafka.logs.dir={paths.service_dir('kafka')}",
        "-cp",
        f"{libs}/*",
    ]


def _secure_keys(name: ServiceName, certs: Certificates | None) -> tuple[str, ...]:
    """The port key of ``name``'s secure listener, if it is to serve one."""
    return (secure_listeners.SECURE_PORT[name],) if certs is not None else ()


def _launch_kafka(
    settings: Settings,
    paths: Paths,
    libs: Path,
    wanted: Mapping[str, int] | None,
    progress: Callable[[str], None],
    certs: Certificates | None,
) -> Record:
    kdir = paths.service_dir("kafka")
    kdir.mkdir(parents=True, exist_ok=True)
    keys = ("broker", "controller", *_secure_keys("kafka", certs))
    ports = _ports("kafka", keys, wanted, progress)
    secure_port = ports.get(secure_listeners.SECURE_PORT["kafka"])
    # Regenerated on every launch: only the ports change, the storage is kept.
    config = template("kafka/server.properties.template").substitute(
        broker_port=ports["broker"],
        controller_port=ports["controller"],
        log_dir=str(paths.kafka_data),
        **secure_listeners.kafka_template_values(paths, secure_port, certs),
    )
    write_atomic(paths.kafka_config, config)
    shutil.copyfile(OPS_DIR / "kafka" / "log4j2.properties", paths.kafka_log4j)
    java_cmd = _kafka_java(paths, libs)
    if not (paths.kafka_data / "meta.properties").is_file():
        cluster_id = _kafka_cluster_id()
        progress(f"kafka: formatting KRaft storage (cluster id {cluster_id})")
        creds = secure_listeners.credentials(paths) if certs is not None else None
        fmt = [
            *java_cmd,
            "kafka.tools.StorageTool",
            "format",
            "--cluster-id",
            cluster_id,
            "--config",
            str(paths.kafka_config),
            "--standalone",
            "--ignore-formatted",
            *(secure_listeners.scram_format_args(creds) if creds is not None else ()),
        ]
        code, out = run(fmt, timeout=120)
        if creds is not None:
            out = secure_listeners.scrubbed(out, creds)
        (kdir / "format.log").write_text(out)
        if code != 0:
            raise StackError(
                f"kafka: storage format failed: {processes.last_line(out)}", details=out
            )
        if creds is not None:
            secure_listeners.scram_formatted(paths, creds)
    bootstrap = f"{HOST}:{ports['broker']}"
    also = f", SASL_SSL {HOST}:{secure_port}" if secure_port is not None else ""
    progress(
        f"kafka: starting {settings.kafka_version} on {bootstrap} "
        f"(controller {HOST}:{ports['controller']}{also})..."
    )
    log = paths.log("kafka")
    pid = processes.spawn([*java_cmd, "kafka.Kafka", str(paths.kafka_config)], log, cwd=kdir)
    return Record(
        name="kafka",
        pid=pid,
        ports=ports,
        address=bootstrap,
        url=bootstrap,
        log=str(log),
        match=["kafka.Kafka", str(paths.kafka_config)],
        version=settings.kafka_version,
    )


def _launch_redis(
    binary: str,
    paths: Paths,
    wanted: Mapping[str, int] | None,
    progress: Callable[[str], None],
    certs: Certificates | None,
) -> Record:
    rdir = paths.service_dir("redis")
    rdir.mkdir(parents=True, exist_ok=True)
    ports = _ports("redis", ("redis", *_secure_keys("redis", certs)), wanted, progress)
    port = ports["redis"]
    address = f"{HOST}:{port}"
    tls_port = ports.get(secure_listeners.SECURE_PORT["redis"])
    also = f" (TLS {HOST}:{tls_port})" if tls_port is not None else ""
    progress(f"redis: starting on {address}{also}...")
    argv = [
        binary,
        "--bind", HOST,
        "--port", str(port),
        "--dir", str(rdir),
        "--dbfilename", "dump.rdb",
        "--save", "",
        "--shutdown-on-sigterm", "save",
        "--appendonly", "no",
        "--daemonize", "no",
        "--protected-mode", "yes",
        "--logfile", "",
        *secure_listeners.redis_args(paths, tls_port, certs),
    ]  # fmt: skip
    log = paths.log("redis")
    pid = processes.spawn(argv, log, cwd=rdir)
    return Record(
        name="redis",
        pid=pid,
        ports=ports,
        address=address,
        url=f"redis://{address}/0",
        log=str(log),
        match=["redis-server", str(port)],
    )


def _launch_prometheus(
    binary: str, paths: Paths, wanted: Mapping[str, int] | None, progress: Callable[[str], None]
) -> Record:
    pdir = paths.service_dir("prometheus")
    pdir.mkdir(parents=True, exist_ok=True)
    ports = _ports("prometheus", ("http",), wanted, progress)
    address = f"{HOST}:{ports['http']}"
    ensure_targets_file(paths)
    config = template("prometheus/prometheus.yml.template").substitute(
        scrape_interval=_PROMETHEUS_SCRAPE_INTERVAL,
        self_address=address,
        targets_file=str(paths.prometheus_targets),
    )
    write_atomic(paths.prometheus_config, config)
    progress(f"prometheus: starting on {address}...")
    argv = [
        binary,
        f"--config.file={paths.prometheus_config}",
        f"--web.listen-address={address}",
        f"--storage.tsdb.path={paths.prometheus_data}",
        "--storage.tsdb.retention.time=2d",
        "--web.enable-lifecycle",
    ]
    log = paths.log("prometheus")
    pid = processes.spawn(argv, log, cwd=pdir)
    return Record(
        name="prometheus",
        pid=pid,
        ports=ports,
        address=address,
        url=f"http://{address}",
        log=str(log),
        match=["prometheus", str(paths.prometheus_config)],
    )


def prepare_and_launch(
    settings: Settings,
    paths: Paths,
    plan: Mapping[ServiceName, Mapping[str, int] | None],
    records: dict[ServiceName, Record],
    progress: Callable[[str], None],
    *,
    keep_stopped: bool = False,
    secure: bool = False,
) -> None:
    """Install what is missing, start every planned service, wait until all are ready.

    ``plan`` maps a service to the ports it should get back (None: new ports);
    its data is kept either way. Each pid is written to stack.json as soon as it
    exists, so ``down()`` can always clean up. A service that fails to become
    ready is killed and dropped from stack.json, or with ``keep_stopped`` left
    there as stopped (the outage helpers keep its endpoint reserved). With
    ``secure`` the planned Kafka and Redis also serve their secure listeners.
    """
    if not plan:
        return
    libs = None
    if "kafka" in plan:
        require_java()
        libs = ensure_kafka_jars(settings, paths, progress)
    binaries = ensure_debian_binaries([n for n in plan if n != "kafka"], progress)
    certs = None
    if secure:
        secure_listeners.credentials(paths, create=True)
        certs = secure_listeners.tls_files(paths, progress)

    def launch(name: ServiceName, ports: Mapping[str, int] | None) -> Record:
        if name == "kafka":
            assert libs is not None
            rec = _launch_kafka(settings, paths, libs, ports, progress, certs)
        elif name == "redis":
            rec = _launch_redis(binaries["redis"], paths, ports, progress, certs)
        else:
            rec = _launch_prometheus(binaries["prometheus"], paths, ports, progress)
        records[name] = rec
        save(paths, records)
        return rec

    # Kafka first, so its JVM boots while the others start.
    launched = [launch(name, plan[name]) for name in sorted(plan, key=SERVICES.index)]
    for rec in sorted(launched, key=lambda r: READY_TIMEOUT[r.name]):
        for attempt in (1, 2):
            try:
                detail = wait_ready(rec)
                if secure_listeners.is_secure(rec):
                    detail += "; " + _secure_ready(rec, paths, libs, records, progress)
                break
            except StackError:
                processes.terminate([rec], kill_now=True)
                if attempt == 1 and _PORT_CLASH.search(processes.log_tail(Path(rec.log))):
                    # Another process took the port between our check and the bind.
                    progress(f"{rec.name}: port {rec.address} was taken; retrying on new ports")
                    rec = launch(rec.name, None)
                    continue
                if keep_stopped:
                    rec.pid, rec.stopped = None, True
                else:
                    del records[rec.name]
                save(paths, records)
                raise
        took = time.time() - rec.started_at
        progress(f"{rec.name}: ready on {rec.address} ({took:.1f} s; {detail})")


def _secure_ready(
    rec: Record,
    paths: Paths,
    libs: Path | None,
    records: dict[ServiceName, Record],
    progress: Callable[[str], None],
) -> str:
    """Once ``rec`` answers on its plain port: give Kafka its SCRAM user, probe the secure one."""
    if rec.name == "kafka":
        assert libs is not None
        secure_listeners.ensure_scram(paths, _kafka_java(paths, libs), rec.address, progress)
    return secure_listeners.wait_secure_ready(rec.name, paths, records)


_PORT_CLASH = re.compile(r"address already in use|Failed listening on port", re.IGNORECASE)
