"""What the services need before they can start: Java, the Kafka jars, Debian binaries,
and the config templates shipped as package data of ``llmpulse.ops``.

Java 17+ and Maven must already be installed; missing ``redis-server``,
``prometheus`` and (for the secure listeners) ``openssl`` binaries are installed
with ``apt-get``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import string
import subprocess
import time
from collections.abc import Callable, Mapping
from importlib import resources
from pathlib import Path

from llmpulse.devstack.stack.model import ServiceName, StackError
from llmpulse.devstack.stack.paths import Paths, locked
from llmpulse.devstack.stack.processes import last_line
from llmpulse.processors.settings import Settings

#: Kafka and Prometheus templates: package data of ``llmpulse.ops`` (``ops/`` in the
#: checkout). Wheels install them as plain files, so Maven can be given the pom's path.
OPS_DIR = Path(str(resources.files("llmpulse.ops")))

_DEBIAN_PACKAGES: dict[ServiceName, tuple[str, str]] = {
    # service -> (binary, Debian package)
    "redis": ("redis-server", "redis-server"),
    "prometheus": ("prometheus", "prometheus"),
}


def run(argv: list[str], timeout: float, env: Mapping[str, str] | None = None) -> tuple[int, str]:
    """Run ``argv`` to completion: ``(exit code, stdout + stderr)``; never raises.

    A timeout gives code 124 and a command that cannot be started code 127.
    """
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


def require_java() -> str:
    """Path of a Java 17+ ``java`` (checked once per process), else :class:`StackError`."""
    global _java_checked
    if _java_checked is not None:
        return _java_checked
    java = shutil.which("java")
    if java is None:
        raise StackError(
            "java not found: install OpenJDK 17+ (apt-get install openjdk-17-jre-headless)"
        )
    code, out = run([java, "-version"], timeout=30)
    found = re.search(r'version "(\d+)(?:\.(\d+))?', out)
    if code != 0 or found is None:
        raise StackError(f"could not run `{java} -version`: {last_line(out)}")
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


def ensure_kafka_jars(settings: Settings, paths: Paths, progress: Callable[[str], None]) -> Path:
    """The ``libs`` directory holding every jar of ``settings.kafka_version``.

    Downloads them with Maven on first use (one process at a time, into a temporary
    directory renamed when complete); raises :class:`StackError` if that fails.
    """
    version = settings.kafka_version
    home = paths.kafka_home(version)
    libs = home / "libs"
    stamp = home / ".complete"
    main_jar = f"kafka_2.13-{version}.jar"
    if stamp.is_file() and (libs / main_jar).is_file():
        return libs
    pom = OPS_DIR / "kafka" / "pom.xml"
    if not pom.is_file():
        raise StackError(f"{pom} is missing: reinstall llmpulse (package data of llmpulse.ops)")
    mvn = shutil.which("mvn")
    if mvn is None:
        raise StackError("mvn not found: install Maven 3.6+ (apt-get install maven)")
    with locked(home.parent / f".kafka-{version}.lock"):
        if stamp.is_file() and (libs / main_jar).is_file():
            return libs  # another process finished the download meanwhile
        progress(f"kafka: downloading Kafka {version} jars via Maven (first run only)...")
        start = time.monotonic()
        tmp = home / f"libs.tmp-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        code, out = run(
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
    return last_line("\n".join(lines))


def _find_binary(binary: str) -> str | None:
    return shutil.which(binary) or next(
        (str(p) for p in (Path("/usr/bin") / binary, Path("/usr/sbin") / binary) if p.is_file()),
        None,
    )


def ensure_debian_binaries(
    services: list[ServiceName], progress: Callable[[str], None]
) -> dict[ServiceName, str]:
    """Path of the server binary of each of ``services`` (redis, prometheus).

    Missing ones are installed as :func:`ensure_binaries` does.
    """
    paths = ensure_binaries(
        {_DEBIAN_PACKAGES[name][0]: _DEBIAN_PACKAGES[name][1] for name in services}, progress
    )
    return {name: paths[_DEBIAN_PACKAGES[name][0]] for name in services}


def ensure_openssl(progress: Callable[[str], None]) -> str:
    """Path of ``openssl`` (it makes the secure listeners' certificates), installed if missing."""
    return ensure_binaries({"openssl": "openssl"}, progress)["openssl"]


def ensure_binaries(wanted: Mapping[str, str], progress: Callable[[str], None]) -> dict[str, str]:
    """Path of each binary of ``wanted`` (binary -> Debian package that ships it).

    Missing ones are installed with ``apt-get`` (retried once after ``apt-get
    update``); raises :class:`StackError` if they cannot be.
    """
    found: dict[str, str] = {}
    missing: dict[str, str] = {}
    for binary, package in wanted.items():
        path = _find_binary(binary)
        if path is None:
            missing[binary] = package
        else:
            found[binary] = path
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
    code, out = run(install, timeout=900, env=env)
    if code != 0:
        progress("apt-get install failed; running apt-get update and retrying...")
        code, out = run([apt, "update", "-q", *lock_wait], timeout=600, env=env)
        if code == 0:
            code, out = run(install, timeout=900, env=env)
    if code != 0:
        hint = "" if os.geteuid() == 0 else " (needs root; or install them yourself)"
        raise StackError(
            f"apt-get install {' '.join(packages)} failed{hint}: {last_line(out)}",
            details=out[-4000:],
        )
    for binary, package in missing.items():
        path = _find_binary(binary)
        if path is None:
            raise StackError(f"apt-get installed {package} but {binary} is not on PATH")
        found[binary] = path
    progress(f"{', '.join(missing)}: installed ({time.monotonic() - start:.1f} s)")
    return found


def template(name: str) -> string.Template:
    """The template ``OPS_DIR/name``; raises :class:`StackError` if it cannot be read."""
    path = OPS_DIR / name
    try:
        return string.Template(path.read_text())
    except OSError as exc:
        raise StackError(
            f"{path} is unreadable ({exc}): reinstall llmpulse (package data of llmpulse.ops)"
        ) from exc
