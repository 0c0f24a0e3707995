"""The local real-services stack: Kafka, Redis and Prometheus as plain processes.

``llmpulse stack up|down|status``, the demo and the integration-test fixtures all
go through this module. Nothing here is a mock: every service is the real thing,
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
"""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import contextlib
import fcntl
import json
import os
import re
import shutil
import signal
import socket
import string
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable, Coroutine, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Literal, TypeVar, cast, get_args

import redis

from llmpulse.processors.settings import Settings

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

ServiceName = Literal["kafka", "redis", "prometheus"]
ServiceState = Literal["running", "stopped", "external", "unhealthy"]
SERVICES: tuple[ServiceName, ...] = get_args(ServiceName)

#: Kafka and Prometheus templates: package data of ``llmpulse.ops`` (``ops/`` in the
#: checkout). Wheels install them as plain files, so Maven can be given the pom's path.
_OPS_DIR = Path(str(resources.files("llmpulse.ops")))
_HOST = "127.0.0.1"
_STATE_FORMAT = 1

# How long a service may take to answer its health check after being started.
_READY_TIMEOUT: dict[ServiceName, float] = {"kafka": 60.0, "redis": 15.0, "prometheus": 30.0}
# How long SIGTERM may take before SIGKILL.
_STOP_TIMEOUT: dict[ServiceName, float] = {"kafka": 30.0, "redis": 10.0, "prometheus": 10.0}
# Single health-check attempt, used by status() and by up() when reusing.
_PROBE_TIMEOUT = 3.0
# How long up() keeps probing a recorded, live service before replacing it.
_REUSE_GRACE = 15.0

_KAFKA_JAVA_OPTS = (
    "-Xms256m",
    "-Xmx512m",
    "-XX:+UseG1GC",
    "-XX:MaxGCPauseMillis=20",
    "-XX:+ExitOnOutOfMemoryError",
    "-Djava.awt.headless=true",
)
_PROMETHEUS_SCRAPE_INTERVAL = "1s"
_DEBIAN_PACKAGES: dict[ServiceName, tuple[str, str]] = {
    # service -> (binary, Debian package)
    "redis": ("redis-server", "redis-server"),
    "prometheus": ("prometheus", "prometheus"),
}

_T = TypeVar("_T")


class StackError(Exception):
    """A stack operation failed; ``str(error)`` is one line saying what to do.

    ``details`` may hold more context (for example the tail of a service log).
    """

    def __init__(self, message: str, details: str = "") -> None:
        super().__init__(message)
        self.details = details


@dataclass(frozen=True)
class StackEndpoints:
    """Where the services are: local stack or external."""

    kafka_bootstrap: str
    redis_url: str
    prometheus_url: str


@dataclass(frozen=True)
class ServiceStatus:
    """One line of ``llmpulse stack status``."""

    name: ServiceName
    state: ServiceState
    address: str
    pid: int | None
    detail: str


def print_progress(message: str) -> None:
    """Default progress sink: one line on stderr (stdout stays for results)."""
    print(message, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- paths


@dataclass(frozen=True)
class _Paths:
    state: Path
    cache: Path

    @classmethod
    def of(cls, settings: Settings) -> _Paths:
        return cls(state=settings.state_dir.resolve(), cache=settings.cache_dir.resolve())

    @property
    def stack_file(self) -> Path:
        return self.state / "stack.json"

    @property
    def lock_file(self) -> Path:
        return self.state / ".stack.lock"

    def service_dir(self, name: ServiceName) -> Path:
        return self.state / name

    def log(self, name: ServiceName) -> Path:
        return self.service_dir(name) / f"{name}.log"

    @property
    def kafka_config(self) -> Path:
        return self.service_dir("kafka") / "server.properties"

    @property
    def kafka_log4j(self) -> Path:
        return self.service_dir("kafka") / "log4j2.properties"

    @property
    def kafka_data(self) -> Path:
        return self.service_dir("kafka") / "data"

    @property
    def prometheus_config(self) -> Path:
        return self.service_dir("prometheus") / "prometheus.yml"

    @property
    def prometheus_targets(self) -> Path:
        return self.service_dir("prometheus") / "targets.json"

    @property
    def prometheus_data(self) -> Path:
        return self.service_dir("prometheus") / "data"

    def kafka_home(self, version: str) -> Path:
        return self.cache / f"kafka-{version}"


# ---------------------------------------------------------------------- stack.json


@dataclass
class _Record:
    """A local service as persisted in stack.json."""

    name: ServiceName
    pid: int | None
    ports: dict[str, int]
    address: str
    url: str
    log: str
    # Every string must occur in /proc/<pid>/cmdline before we signal the pid.
    match: list[str]
    version: str = ""
    stopped: bool = False  # True after stop_service(): restart on the same ports
    started_at: float = field(default_factory=time.time)

    @classmethod
    def from_json(cls, name: ServiceName, raw: Mapping[str, Any]) -> _Record:
        return cls(
            name=name,
            pid=int(raw["pid"]) if raw.get("pid") is not None else None,
            ports={str(k): int(v) for k, v in dict(raw["ports"]).items()},
            address=str(raw["address"]),
            url=str(raw["url"]),
            log=str(raw["log"]),
            match=[str(m) for m in raw["match"]],
            version=str(raw.get("version", "")),
            stopped=bool(raw.get("stopped", False)),
            started_at=float(raw.get("started_at", 0.0)),
        )


def _load(paths: _Paths) -> dict[ServiceName, _Record]:
    try:
        raw = json.loads(paths.stack_file.read_text())
        services = dict(raw["services"])
    except FileNotFoundError:
        return {}
    except (ValueError, KeyError, TypeError):
        return {}  # unreadable: treated as "nothing running"
    out: dict[ServiceName, _Record] = {}
    for name in SERVICES:
        if name in services:
            with contextlib.suppress(KeyError, TypeError, ValueError):
                out[name] = _Record.from_json(name, services[name])
    return out


def _save(paths: _Paths, records: Mapping[ServiceName, _Record]) -> None:
    doc: dict[str, Any] = {"format": _STATE_FORMAT, "state_dir": str(paths.state)}
    keys: dict[ServiceName, str] = {
        "kafka": "kafka_bootstrap",
        "redis": "redis_url",
        "prometheus": "prometheus_url",
    }
    for name, rec in records.items():
        doc[keys[name]] = rec.url
    doc["services"] = {name: asdict(rec) for name, rec in records.items()}
    _write_atomic(paths.stack_file, json.dumps(doc, indent=2, sort_keys=True) + "\n")


def _write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


@contextlib.contextmanager
def _locked(lock_path: Path) -> Iterator[None]:
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with lock_path.open("a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


# ------------------------------------------------------------------- processes

# Popen objects of the services this Python process started, so that exited
# children are reaped (a zombie would still answer kill(pid, 0)).
_CHILDREN: dict[int, subprocess.Popen[bytes]] = {}


def _spawn(argv: list[str], log: Path, *, truncate: bool, cwd: Path) -> int:
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("wb" if truncate else "ab") as out:
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        out.write(f"=== {stamp} llmpulse stack: {' '.join(argv)}\n".encode())
        out.flush()
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=cwd,
            start_new_session=True,
        )
    _CHILDREN[proc.pid] = proc
    return proc.pid


def _alive(pid: int) -> bool:
    child = _CHILDREN.get(pid)
    if child is not None:
        if child.poll() is not None:
            del _CHILDREN[pid]
            return False
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rpartition(")")[2].split()[:1] != ["Z"]


def _cmdline(pid: int) -> str:
    try:
        return (
            Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        )
    except OSError:
        return ""


def _owned(rec: _Record) -> bool:
    """The recorded pid is alive and still the process we started."""
    if rec.pid is None or not _alive(rec.pid):
        return False
    cmd = _cmdline(rec.pid)
    return all(m in cmd for m in rec.match)


def _signal(pid: int, sig: signal.Signals) -> None:
    # Services run in their own session, so the pid is also the process group id.
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, sig)


def _terminate(records: list[_Record], *, kill_now: bool = False) -> None:
    """SIGTERM (or SIGKILL), wait, then SIGKILL what is left."""
    live = [r for r in records if r.pid is not None and _owned(r)]
    for rec in live:
        assert rec.pid is not None
        _signal(rec.pid, signal.SIGKILL if kill_now else signal.SIGTERM)
    start = time.monotonic()
    pending = list(live)
    while pending:
        pending = [r for r in pending if r.pid is not None and _alive(r.pid)]
        for rec in pending:
            assert rec.pid is not None
            if time.monotonic() - start > _STOP_TIMEOUT[rec.name]:
                _signal(rec.pid, signal.SIGKILL)
        if pending:
            if time.monotonic() - start > max(_STOP_TIMEOUT.values()) + 10:
                pids = ", ".join(str(r.pid) for r in pending)
                raise StackError(f"could not stop pid(s) {pids} even with SIGKILL")
            time.sleep(0.1)


# Ports this process has handed out. A picked port is closed again before the
# service binds it, so without this two services started together (or a JVM that
# is still booting) could be given the same port by the kernel.
_HANDED_OUT: set[int] = set()


def _free_port() -> int:
    held: list[socket.socket] = []
    try:
        for _ in range(50):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            held.append(sock)  # keep it bound so the next try gets another port
            sock.bind((_HOST, 0))
            port = int(sock.getsockname()[1])
            if port not in _HANDED_OUT:
                _HANDED_OUT.add(port)
                return port
        raise StackError("could not find a free loopback port")
    finally:
        for sock in held:
            sock.close()


def _log_tail(log: Path, lines: int = 40) -> str:
    try:
        with log.open("rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - 64 * 1024))
            text = fh.read().decode(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


def _log_hint(log: Path) -> str:
    """The most telling line of a log: the last error, else the last line."""
    lines = [ln.strip() for ln in _log_tail(log, 200).splitlines() if ln.strip()]
    for line in reversed(lines):
        if re.search(r"\b(ERROR|FATAL|Exception|error|fatal)\b", line):
            return line[:300]
    return lines[-1][:300] if lines else "(empty log)"


def _last_line(output: str) -> str:
    lines = [ln.strip() for ln in output.splitlines() if ln.strip()]
    return lines[-1][:300] if lines else "(no output)"


# ---------------------------------------------------------------- health checks


def _run_async(factory: Callable[[], Coroutine[Any, Any, _T]]) -> _T:
    """Run a coroutine to completion even when the caller is inside an event loop."""
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(lambda: asyncio.run(factory())).result()


def _split_host_port(address: str) -> tuple[str, int]:
    host, _, port = address.strip().rpartition(":")
    return host.strip("[]") or _HOST, int(port)


def _probe_kafka(bootstrap: str, timeout: float) -> str:
    # A cheap TCP check first: aiokafka logs an error for every refused connection.
    first = bootstrap.split(",")[0]
    with socket.create_connection(_split_host_port(first), timeout=timeout):
        pass

    async def metadata() -> str:
        from aiokafka.admin import AIOKafkaAdminClient

        admin = AIOKafkaAdminClient(
            bootstrap_servers=bootstrap,
            client_id="llmpulse-stack-health",
            request_timeout_ms=int(timeout * 1000),
        )
        try:
            await asyncio.wait_for(admin.start(), timeout)
            cluster = await asyncio.wait_for(admin.describe_cluster(), timeout)
            topics = await asyncio.wait_for(admin.list_topics(), timeout)
        finally:
            with contextlib.suppress(Exception):
                await admin.close()
        brokers = cluster.get("brokers") or []
        if not brokers:
            raise RuntimeError("metadata lists no brokers yet")
        return f"{len(brokers)} broker(s), {len(topics)} topic(s)"

    return _run_async(metadata)


def _probe_redis(url: str, timeout: float) -> str:
    client = redis.Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout)
    try:
        if not client.ping():
            raise RuntimeError("PING did not answer PONG")
        info = client.info("server")
        return f"redis {info.get('redis_version', '?')}"
    finally:
        client.close()


def _http_get(url: str, timeout: float) -> bytes:
    if urllib.parse.urlsplit(url).scheme not in ("http", "https"):
        raise ValueError(f"not an http(s) URL: {url}")
    with urllib.request.urlopen(url, timeout=timeout) as resp:  # noqa: S310 (scheme checked)
        return cast(bytes, resp.read())


def _probe_prometheus(url: str, timeout: float) -> str:
    body = _http_get(url.rstrip("/") + "/-/ready", timeout)
    return body.decode(errors="replace").strip() or "ready"


def _probe(name: ServiceName, url: str, timeout: float = _PROBE_TIMEOUT) -> str:
    if name == "kafka":
        return _probe_kafka(url, timeout)
    if name == "redis":
        return _probe_redis(url, timeout)
    return _probe_prometheus(url, timeout)


def _describe(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:200]}" if text else type(exc).__name__


def _wait_ready(rec: _Record) -> str:
    log = Path(rec.log)
    timeout = _READY_TIMEOUT[rec.name]
    start = time.monotonic()
    last = "no answer yet"
    while True:
        if rec.pid is not None and not _alive(rec.pid):
            raise StackError(
                f"{rec.name} exited during startup: {_log_hint(log)} (log: {log})",
                details=_log_tail(log),
            )
        try:
            return _probe(rec.name, rec.url, 5.0 if rec.name == "kafka" else 2.0)
        except Exception as exc:
            last = _describe(exc)
        if time.monotonic() - start > timeout:
            raise StackError(
                f"{rec.name} not ready after {timeout:.0f} s on {rec.address} ({last}); "
                f"last log line: {_log_hint(log)} (log: {log})",
                details=_log_tail(log),
            )
        time.sleep(0.25)


def _redact(url: str) -> str:
    parts = urllib.parse.urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rpartition("@")[2]
    user = f"{parts.username}:***@" if parts.username else ":***@"
    return urllib.parse.urlunsplit(parts._replace(netloc=user + netloc))


def _external(settings: Settings, name: ServiceName) -> str | None:
    value = {
        "kafka": settings.kafka_bootstrap,
        "redis": settings.redis_url,
        "prometheus": settings.prometheus_url,
    }[name]
    return value or None


# ------------------------------------------------------------ prerequisites


def _run(argv: list[str], timeout: float, env: Mapping[str, str] | None = None) -> tuple[int, str]:
    try:
        done = subprocess.run(
            argv,
            capture_output=True,
            text=True,
            timeout=timeout,
            env=dict(env) if env is not None else None,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        out = exc.stdout if isinstance(exc.stdout, str) else ""
        return 124, (out or "") + f"\ntimed out after {timeout:.0f} s"
    except OSError as exc:
        return 127, str(exc)
    return done.returncode, (done.stdout or "") + (done.stderr or "")


_java_checked: str | None = None


def _require_java() -> str:
    global _java_checked
    if _java_checked is not None:
        return _java_checked
    java = shutil.which("java")
    if java is None:
        raise StackError(
            "java not found: install OpenJDK 17+ (apt-get install openjdk-17-jre-headless)"
        )
    code, out = _run([java, "-version"], timeout=30)
    found = re.search(r'version "(\d+)(?:\.(\d+))?', out)
    if code != 0 or found is None:
        raise StackError(f"could not run `{java} -version`: {_last_line(out)}")
    major = int(found.group(1))
    if major == 1 and found.group(2):
        major = int(found.group(2))
    if major < 17:
        raise StackError(
            f"Kafka 4 needs Java 17+, but {java} is Java {major}: "
            "install OpenJDK 17+ (apt-get install openjdk-17-jre-headless)"
        )
    _java_checked = java
    return java


def _ensure_kafka_jars(settings: Settings, paths: _Paths, progress: Callable[[str], None]) -> Path:
    version = settings.kafka_version
    home = paths.kafka_home(version)
    libs = home / "libs"
    stamp = home / ".complete"
    main_jar = f"kafka_2.13-{version}.jar"
    if stamp.is_file() and (libs / main_jar).is_file():
        return libs
    pom = _OPS_DIR / "kafka" / "pom.xml"
    if not pom.is_file():
        raise StackError(f"{pom} is missing: reinstall llmpulse (package data of llmpulse.ops)")
    mvn = shutil.which("mvn")
    if mvn is None:
        raise StackError("mvn not found: install Maven 3.6+ (apt-get install maven)")
    with _locked(home.parent / f".kafka-{version}.lock"):
        if stamp.is_file() and (libs / main_jar).is_file():
            return libs  # another process finished the download meanwhile
        progress(f"kafka: downloading Kafka {version} jars via Maven (first run only)...")
        start = time.monotonic()
        tmp = home / f"libs.tmp-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        code, out = _run(
            [
                mvn,
                "-q",
                "-B",
                "-U",  # retry artifacts whose earlier failure Maven has cached
                "-Dstyle.color=never",
                "-f",
                str(pom),
                f"-Dkafka.version={version}",
                "dependency:copy-dependencies",
                "-DincludeScope=runtime",
                f"-DoutputDirectory={tmp}",
            ],
            timeout=900,
        )
        if code != 0 or not (tmp / main_jar).is_file():
            shutil.rmtree(tmp, ignore_errors=True)
            why = _maven_error(out)
            raise StackError(
                f"kafka: Maven could not download org.apache.kafka:kafka_2.13:{version}: {why}",
                details=out[-4000:],
            )
        shutil.rmtree(libs, ignore_errors=True)
        os.replace(tmp, libs)
        jars = sorted(p.name for p in libs.glob("*.jar"))
        stamp.write_text(json.dumps({"version": version, "jars": jars, "at": time.time()}) + "\n")
        progress(f"kafka: {len(jars)} jars cached in {libs} ({time.monotonic() - start:.1f} s)")
    return libs


_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def _maven_error(output: str) -> str:
    """The first informative ``[ERROR]`` line of Maven's output, else its last line."""
    lines = [_ANSI.sub("", ln).strip() for ln in output.splitlines()]
    for line in lines:
        _, tag, rest = line.partition("[ERROR]")
        rest = rest.split(" -> [Help", 1)[0].strip()
        if tag and rest:
            return rest[:300]
    return _last_line("\n".join(lines))


def _find_binary(binary: str) -> str | None:
    return shutil.which(binary) or next(
        (str(p) for p in (Path("/usr/bin") / binary, Path("/usr/sbin") / binary) if p.is_file()),
        None,
    )


def _ensure_debian_binaries(
    services: list[ServiceName], progress: Callable[[str], None]
) -> dict[ServiceName, str]:
    found: dict[ServiceName, str] = {}
    missing: dict[ServiceName, str] = {}
    for name in services:
        binary, package = _DEBIAN_PACKAGES[name]
        path = _find_binary(binary)
        if path is None:
            missing[name] = package
        else:
            found[name] = path
    if not missing:
        return found
    packages = sorted(set(missing.values()))
    apt = shutil.which("apt-get")
    if apt is None:
        raise StackError(
            f"{', '.join(missing)} not installed and apt-get is unavailable: "
            f"install the {' '.join(packages)} package(s) yourself"
        )
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    lock_wait = ["-o", "DPkg::Lock::Timeout=300"]
    install = [apt, "install", "-y", "-q", "--no-install-recommends", *lock_wait, *packages]
    progress(
        f"{', '.join(missing)}: installing Debian package(s) {' '.join(packages)} "
        "with apt-get (first run only)..."
    )
    start = time.monotonic()
    code, out = _run(install, timeout=900, env=env)
    if code != 0:
        progress("apt-get install failed; running apt-get update and retrying...")
        code, out = _run([apt, "update", "-q", *lock_wait], timeout=600, env=env)
        if code == 0:
            code, out = _run(install, timeout=900, env=env)
    if code != 0:
        hint = "" if os.geteuid() == 0 else " (needs root; or install them yourself)"
        raise StackError(
            f"apt-get install {' '.join(packages)} failed{hint}: {_last_line(out)}",
            details=out[-4000:],
        )
    for name in missing:
        binary = _DEBIAN_PACKAGES[name][0]
        path = _find_binary(binary)
        if path is None:
            raise StackError(f"apt-get installed {missing[name]} but {binary} is not on PATH")
        found[name] = path
    progress(f"{', '.join(missing)}: installed ({time.monotonic() - start:.1f} s)")
    return found


def _template(name: str) -> string.Template:
    path = _OPS_DIR / name
    try:
        return string.Template(path.read_text())
    except OSError as exc:
        raise StackError(
            f"{path} is unreadable ({exc}): reinstall llmpulse (package data of llmpulse.ops)"
        ) from exc


# ----------------------------------------------------------------- launching


def _kafka_cluster_id() -> str:
    while True:  # Kafka's Uuid.randomUuid() never starts with '-'
        cid = base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()
        if not cid.startswith("-"):
            return cid


def _launch_kafka(
    settings: Settings,
    paths: _Paths,
    libs: Path,
    ports: dict[str, int] | None,
    progress: Callable[[str], None],
) -> _Record:
    java = _require_java()
    kdir = paths.service_dir("kafka")
    kdir.mkdir(parents=True, exist_ok=True)
    fresh = ports is None or not paths.kafka_config.is_file()
    if fresh or ports is None:
        ports = {"broker": _free_port(), "controller": _free_port()}
        shutil.rmtree(paths.kafka_data, ignore_errors=True)
        config = _template("kafka/server.properties.template").substitute(
            broker_port=ports["broker"],
            controller_port=ports["controller"],
            log_dir=str(paths.kafka_data),
        )
        _write_atomic(paths.kafka_config, config)
        shutil.copyfile(_OPS_DIR / "kafka" / "log4j2.properties", paths.kafka_log4j)
    java_cmd = [
        java,
        *_KAFKA_JAVA_OPTS,
        f"-Dlog4j2.configurationFile={paths.kafka_log4j}",
        f"-Dkafka.logs.dir={kdir}",
        "-cp",
        f"{libs}/*",
    ]
    if not (paths.kafka_data / "meta.properties").is_file():
        cluster_id = _kafka_cluster_id()
        progress(f"kafka: formatting KRaft storage (cluster id {cluster_id})")
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
        ]
        code, out = _run(fmt, timeout=120)
        (kdir / "format.log").write_text(out)
        if code != 0:
            raise StackError(f"kafka: storage format failed: {_last_line(out)}", details=out)
    bootstrap = f"{_HOST}:{ports['broker']}"
    progress(
        f"kafka: starting {settings.kafka_version} on {bootstrap} "
        f"(controller {_HOST}:{ports['controller']})..."
    )
    log = paths.log("kafka")
    pid = _spawn([*java_cmd, "kafka.Kafka", str(paths.kafka_config)], log, truncate=fresh, cwd=kdir)
    return _Record(
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
    binary: str, paths: _Paths, ports: dict[str, int] | None, progress: Callable[[str], None]
) -> _Record:
    rdir = paths.service_dir("redis")
    rdir.mkdir(parents=True, exist_ok=True)
    fresh = ports is None
    if ports is None:
        ports = {"redis": _free_port()}
        (rdir / "dump.rdb").unlink(missing_ok=True)
    port = ports["redis"]
    address = f"{_HOST}:{port}"
    progress(f"redis: starting on {address}...")
    argv = [
        binary,
        "--bind", _HOST,
        "--port", str(port),
        "--dir", str(rdir),
        "--dbfilename", "dump.rdb",
        "--save", "",
        "--appendonly", "no",
        "--daemonize", "no",
        "--protected-mode", "yes",
        "--logfile", "",
    ]  # fmt: skip
    log = paths.log("redis")
    pid = _spawn(argv, log, truncate=fresh, cwd=rdir)
    return _Record(
        name="redis",
        pid=pid,
        ports=ports,
        address=address,
        url=f"redis://{address}/0",
        log=str(log),
        match=["redis-server", str(port)],
    )


def _ensure_targets_file(paths: _Paths) -> None:
    if not paths.prometheus_targets.is_file():
        _write_atomic(paths.prometheus_targets, "[]\n")


def _launch_prometheus(
    binary: str, paths: _Paths, ports: dict[str, int] | None, progress: Callable[[str], None]
) -> _Record:
    pdir = paths.service_dir("prometheus")
    pdir.mkdir(parents=True, exist_ok=True)
    fresh = ports is None
    if ports is None:
        ports = {"http": _free_port()}
        shutil.rmtree(paths.prometheus_data, ignore_errors=True)
    address = f"{_HOST}:{ports['http']}"
    _ensure_targets_file(paths)
    config = _template("prometheus/prometheus.yml.template").substitute(
        scrape_interval=_PROMETHEUS_SCRAPE_INTERVAL,
        self_address=address,
        targets_file=str(paths.prometheus_targets),
    )
    _write_atomic(paths.prometheus_config, config)
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
    pid = _spawn(argv, log, truncate=fresh, cwd=pdir)
    return _Record(
        name="prometheus",
        pid=pid,
        ports=ports,
        address=address,
        url=f"http://{address}",
        log=str(log),
        match=["prometheus", str(paths.prometheus_config)],
    )


def _prepare_and_launch(
    settings: Settings,
    paths: _Paths,
    plan: Mapping[ServiceName, dict[str, int] | None],
    records: dict[ServiceName, _Record],
    progress: Callable[[str], None],
) -> None:
    """Install what is missing, start every planned service, wait until all are ready.

    ``plan`` maps a service to its old ports (restart keeping data) or None (fresh).
    Each pid is written to stack.json as soon as it exists, so ``down()`` can
    always clean up; a service that fails to become ready is killed and forgotten.
    """
    if not plan:
        return
    libs = None
    if "kafka" in plan:
        _require_java()
        libs = _ensure_kafka_jars(settings, paths, progress)
    binaries = _ensure_debian_binaries([n for n in plan if n != "kafka"], progress)

    def launch(name: ServiceName, ports: dict[str, int] | None) -> _Record:
        if name == "kafka":
            assert libs is not None
            rec = _launch_kafka(settings, paths, libs, ports, progress)
        elif name == "redis":
            rec = _launch_redis(binaries["redis"], paths, ports, progress)
        else:
            rec = _launch_prometheus(binaries["prometheus"], paths, ports, progress)
        records[name] = rec
        _save(paths, records)
        return rec

    # Kafka first, so its JVM boots while the others start.
    launched = [launch(name, _copy(plan[name])) for name in sorted(plan, key=SERVICES.index)]
    for rec in sorted(launched, key=lambda r: _READY_TIMEOUT[r.name]):
        fresh = plan[rec.name] is None
        for attempt in (1, 2):
            try:
                detail = _wait_ready(rec)
                break
            except StackError:
                _terminate([rec], kill_now=True)
                if fresh and attempt == 1 and _PORT_CLASH.search(_log_tail(Path(rec.log))):
                    # Another process took the port between our pick and the bind.
                    progress(f"{rec.name}: port {rec.address} was taken; retrying on new ports")
                    rec = launch(rec.name, None)
                    continue
                if fresh:
                    del records[rec.name]  # a fresh start failed: forget it
                else:
                    rec.pid, rec.stopped = None, True  # a restart failed: still "stopped"
                _save(paths, records)
                raise
        took = time.time() - rec.started_at
        progress(f"{rec.name}: ready on {rec.address} ({took:.1f} s; {detail})")


_PORT_CLASH = re.compile(r"address already in use|Failed listening on port", re.IGNORECASE)


def _copy(ports: dict[str, int] | None) -> dict[str, int] | None:
    return dict(ports) if ports is not None else None


# ------------------------------------------------------------------ public API


def up(settings: Settings, progress: Callable[[str], None] = print_progress) -> StackEndpoints:
    """Start (or reuse) the local stack and return its endpoints.

    Idempotent: healthy services recorded in ``stack.json`` are reused. Raises
    :class:`StackError` with a one-line reason when something cannot start.
    """
    paths = _Paths.of(settings)
    paths.state.mkdir(parents=True, exist_ok=True)
    with _locked(paths.lock_file):
        records = _load(paths)
        plan: dict[ServiceName, dict[str, int] | None] = {}
        for name in SERVICES:
            ext = _external(settings, name)
            if ext is not None:
                _check_external(name, ext, progress)
                continue
            rec = records.get(name)
            if rec is None:
                plan[name] = None
            elif rec.stopped and not _owned(rec):
                plan[name] = rec.ports  # stopped by stop_service(): same ports and data
            elif _owned(rec):
                if name == "kafka" and rec.version != settings.kafka_version:
                    progress(
                        f"kafka: running {rec.version}, wanted {settings.kafka_version}; "
                        "replacing it"
                    )
                    _terminate([rec])
                    plan[name] = None
                    continue
                problem = _unhealthy_for(rec, _REUSE_GRACE)
                if problem is None:
                    progress(f"{name}: already running on {rec.address} (pid {rec.pid})")
                else:
                    progress(f"{name}: pid {rec.pid} is unhealthy ({problem}); restarting fresh")
                    _terminate([rec])
                    plan[name] = None
            else:
                progress(f"{name}: recorded pid {rec.pid} is gone; starting fresh")
                plan[name] = None
        for name in plan:
            records.pop(name, None)
        _save(paths, records)
        _prepare_and_launch(settings, paths, plan, records, progress)
        _save(paths, records)
    return endpoints(settings)


def _unhealthy_for(rec: _Record, grace: float) -> str | None:
    """None once ``rec`` answers its health check; the last problem after ``grace`` s.

    A busy service (e.g. a JVM in a long GC) gets some slack before ``up()``
    replaces it, since a fresh Kafka starts with empty data.
    """
    deadline = time.monotonic() + grace
    while True:
        try:
            _probe(rec.name, rec.url)
        except Exception as exc:
            if time.monotonic() > deadline or not _owned(rec):
                return _describe(exc)
            time.sleep(0.5)
        else:
            return None


def _check_external(name: ServiceName, url: str, progress: Callable[[str], None]) -> None:
    deadline = time.monotonic() + 10.0
    while True:
        try:
            detail = _probe(name, url, _PROBE_TIMEOUT)
        except Exception as exc:
            if time.monotonic() > deadline:
                raise StackError(
                    f"external {name} at {_redact(url)} is not reachable: {_describe(exc)}"
                ) from exc
            time.sleep(0.5)
        else:
            progress(f"{name}: using external {_redact(url)} ({detail})")
            return


def down(settings: Settings, progress: Callable[[str], None] = print_progress) -> None:
    """Stop every local service (SIGTERM, then SIGKILL after a timeout).

    Removes ``stack.json`` and the Prometheus scrape targets; logs and data stay
    until the next fresh start. External services are left alone.
    """
    paths = _Paths.of(settings)
    if not paths.state.is_dir():
        progress("stack: nothing to stop")
        return
    with _locked(paths.lock_file):
        records = _load(paths)
        live = [r for r in records.values() if _owned(r)]
        start = time.monotonic()
        for rec in live:
            progress(f"{rec.name}: stopping pid {rec.pid}...")
        _terminate(live)
        paths.stack_file.unlink(missing_ok=True)
        paths.prometheus_targets.unlink(missing_ok=True)
        if live:
            progress(f"stack: stopped {len(live)} service(s) in {time.monotonic() - start:.1f} s")
        else:
            progress("stack: nothing was running")


def status(settings: Settings) -> dict[str, ServiceStatus]:
    """Health of every service, keyed by name (kafka, redis, prometheus)."""
    paths = _Paths.of(settings)
    records = _load(paths)
    out: dict[str, ServiceStatus] = {}
    for name in SERVICES:
        ext = _external(settings, name)
        if ext is not None:
            try:
                detail = _probe(name, ext)
                out[name] = ServiceStatus(name, "external", _redact(ext), None, detail)
            except Exception as exc:
                out[name] = ServiceStatus(name, "unhealthy", _redact(ext), None, _describe(exc))
            continue
        rec = records.get(name)
        if rec is None:
            out[name] = ServiceStatus(name, "stopped", "", None, "not started (llmpulse stack up)")
        elif rec.stopped and not _owned(rec):
            out[name] = ServiceStatus(
                name, "stopped", rec.address, None, "stopped by stop_service(); port kept"
            )
        elif not _owned(rec):
            out[name] = ServiceStatus(
                name, "stopped", rec.address, None, f"pid {rec.pid} exited; see {rec.log}"
            )
        else:
            try:
                detail = _probe(name, rec.url)
                out[name] = ServiceStatus(name, "running", rec.address, rec.pid, detail)
            except Exception as exc:
                out[name] = ServiceStatus(
                    name, "unhealthy", rec.address, rec.pid, f"{_describe(exc)}; see {rec.log}"
                )
    return out


def endpoints(settings: Settings) -> StackEndpoints:
    """Endpoints of the running local stack and/or the external services.

    Starts nothing and runs no health check. A service paused with
    :func:`stop_service` still yields its (reserved) endpoint; a service that
    was never started or whose process died raises :class:`StackError`.
    """
    paths = _Paths.of(settings)
    records = _load(paths)
    urls: dict[ServiceName, str] = {}
    for name in SERVICES:
        ext = _external(settings, name)
        if ext is not None:
            urls[name] = ext
            continue
        rec = records.get(name)
        if rec is None:
            raise StackError(
                f"{name} is not running: start the local stack with `llmpulse stack up` "
                f"(state dir {paths.state})"
            )
        if not rec.stopped and not _owned(rec):
            raise StackError(
                f"{name} (pid {rec.pid}) is no longer running: run `llmpulse stack up` "
                f"(log: {rec.log})"
            )
        urls[name] = rec.url
    return StackEndpoints(
        kafka_bootstrap=urls["kafka"], redis_url=urls["redis"], prometheus_url=urls["prometheus"]
    )


def _local_record(paths: _Paths, settings: Settings, name: str) -> tuple[ServiceName, _Record]:
    if name not in SERVICES:
        raise StackError(f"unknown service {name!r}: expected one of {', '.join(SERVICES)}")
    service: ServiceName = name
    if _external(settings, service) is not None:
        raise StackError(f"{service} is external; llmpulse does not start or stop it")
    rec = _load(paths).get(service)
    if rec is None:
        raise StackError(f"{service} is not part of a running stack: run `llmpulse stack up`")
    return service, rec


def stop_service(settings: Settings, name: str, *, graceful: bool = True) -> None:
    """Stop one local service but keep its ports and data, to simulate an outage.

    ``graceful=False`` SIGKILLs it instead (a crash: Redis then loses its data).
    :func:`start_service` or :func:`up` brings it back on the same port.
    """
    paths = _Paths.of(settings)
    with _locked(paths.lock_file):
        service, rec = _local_record(paths, settings, name)
        if _owned(rec):
            if service == "redis" and graceful:
                _redis_shutdown_save(rec)
            _terminate([rec], kill_now=not graceful)
        records = _load(paths)
        rec.pid = None
        rec.stopped = True
        records[service] = rec
        _save(paths, records)


def _redis_shutdown_save(rec: _Record) -> None:
    """SHUTDOWN SAVE: write dump.rdb so that start_service() gets the data back."""
    client = redis.Redis.from_url(rec.url, socket_timeout=5, socket_connect_timeout=5)
    try:
        client.shutdown(save=True)
    except redis.RedisError:
        pass  # already going down; _terminate() finishes the job
    finally:
        client.close()
    deadline = time.monotonic() + 10
    while rec.pid is not None and _alive(rec.pid) and time.monotonic() < deadline:
        time.sleep(0.05)


def start_service(
    settings: Settings, name: str, progress: Callable[[str], None] = print_progress
) -> None:
    """Start a service stopped with :func:`stop_service` on its old port, with its data.

    Blocks until it answers its health check. A running service is left alone.
    """
    paths = _Paths.of(settings)
    with _locked(paths.lock_file):
        service, rec = _local_record(paths, settings, name)
        if _owned(rec):
            progress(f"{service}: already running on {rec.address} (pid {rec.pid})")
            return
        records = _load(paths)
        records.pop(service, None)
        _prepare_and_launch(settings, paths, {service: rec.ports}, records, progress)
        _save(paths, records)


def register_scrape_target(
    settings: Settings, job: str, host_port: str, *, labels: Mapping[str, str] | None = None
) -> None:
    """Have the local Prometheus scrape ``http://host_port/metrics`` as ``job``.

    Writes ``<state_dir>/prometheus/targets.json`` (file_sd; Prometheus notices
    the change within a second or two). Registering the same ``host_port`` again
    replaces its entry. Safe to call from several processes at once, and before
    the stack is up. An external Prometheus does not read this file.
    """
    host, port = _split_host_port(host_port)
    if not job or not 0 < port < 65536:
        raise ValueError(f"need a job name and a host:port, got job={job!r} {host_port!r}")
    target = f"{host}:{port}" if ":" not in host else f"[{host}]:{port}"
    entry_labels = {**(labels or {}), "job": job}
    _update_targets(settings, target, {"targets": [target], "labels": entry_labels})


def unregister_scrape_target(settings: Settings, host_port: str) -> None:
    """Remove a target added with :func:`register_scrape_target` (no-op if absent)."""
    host, port = _split_host_port(host_port)
    target = f"{host}:{port}" if ":" not in host else f"[{host}]:{port}"
    _update_targets(settings, target, None)


def _update_targets(settings: Settings, target: str, entry: dict[str, Any] | None) -> None:
    paths = _Paths.of(settings)
    path = paths.prometheus_targets
    with _locked(path.with_name(".targets.lock")):
        try:
            current = json.loads(path.read_text())
            groups = (
                [g for g in current if isinstance(g, dict)] if isinstance(current, list) else []
            )
        except (OSError, ValueError):
            groups = []
        kept = [g for g in groups if target not in g.get("targets", [])]
        if entry is not None:
            kept.append(entry)
        _write_atomic(path, json.dumps(kept, indent=2) + "\n")


def with_endpoints(settings: Settings, ep: StackEndpoints) -> Settings:
    """``settings`` with every unset service address taken from ``ep``."""
    return settings.model_copy(
        update={
            "kafka_bootstrap": settings.kafka_bootstrap or ep.kafka_bootstrap,
            "redis_url": settings.redis_url or ep.redis_url,
            "prometheus_url": settings.prometheus_url or ep.prometheus_url,
        }
    )
