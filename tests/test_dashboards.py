"""Dashboards, alert rules and docker-compose.yml as code: static checks.

The Grafana dashboard must keep the seed's four panels with their metric names, every
metric a dashboard or an alert rule queries must be one llmpulse (or Prometheus itself)
exports, and the compose file must wire the workers to services that exist. When
``promtool`` is installed, the alert rules, their unit tests, the Prometheus config and
every dashboard expression are validated by it as well.
"""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import stat
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import REGISTRY

import llmpulse.gateway.metrics
import llmpulse.processors.stream.metrics  # noqa: F401  (registers the processors' metrics)
from llmpulse.cli import worker_flows
from llmpulse.processors.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
DASHBOARDS = ROOT / "dashboards"
DASHBOARD = DASHBOARDS / "llm-platform.json"
PROVISIONING = DASHBOARDS / "provisioning"
COMPOSE = ROOT / "docker-compose.yml"
PROMETHEUS_CONFIG = ROOT / "ops" / "compose" / "prometheus.yml"
ALERTS = ROOT / "ops" / "compose" / "alerts.yml"
ALERT_TESTS = ROOT / "ops" / "compose" / "alerts.test.yml"
ENV_EXAMPLE = ROOT / ".env.example"
KAFKA_SECURE_CONFIG = ROOT / "ops" / "compose" / "kafka-secure.properties"
KAFKA_SECURE_START = ROOT / "ops" / "compose" / "kafka-secure.sh"
MAKE_CERTS = ROOT / "ops" / "compose" / "make-certs.sh"
#: The folder the user makes with ``sh ops/compose/make-certs.sh`` (not in the checkout),
#: and the files of it that containers mount.
CERTS = "certs"
MADE_CERTS = frozenset({"ca.pem", "kafka.pem"})

# Metric names the dashboards and alert rules may query. The first five are the seed's
# names (kept so its dashboard works as written); the rest are llmpulse's processing
# metrics. A histogram is listed once by its base name.
SEED_METRICS: frozenset[str] = frozenset(
    {
        "circuit_breaker_state",
        "llm_requests_total",
        "llm_cost_usd_total",
        "cache_hits_total",
        "cache_requests_total",
    }
)
HISTOGRAM_METRICS: frozenset[str] = frozenset(
    {
        "llmpulse_event_lag_seconds",
        "llmpulse_sink_batch_rows",
        "llmpulse_sink_insert_seconds",
    }
)
ALLOWED_METRICS: frozenset[str] = (
    SEED_METRICS
    | HISTOGRAM_METRICS
    | frozenset(
        {
            "llmpulse_breaker_transitions_total",
            "llmpulse_dlq_events_total",
            "llmpulse_consumer_lag_messages",
            "llmpulse_events_consumed_total",
            "llmpulse_late_events_total",
            "llmpulse_source_holes_total",
            "llmpulse_source_expired_total",
            "llmpulse_usage_duplicates_total",
            "llmpulse_usage_conflicts_total",
            "llmpulse_sink_retries_total",
            "llmpulse_sink_up",
            "llmpulse_dedup_horizon_exceeded_total",
            "llmpulse_gateway_dropped_events_total",
            "llmpulse_gateway_spooled_events_total",
            "llmpulse_gateway_replayed_events_total",
            "llmpulse_gateway_emit_queue_depth",
            "llmpulse_gateway_attempts_total",
            "llmpulse_gateway_failovers_total",
            "llmpulse_gateway_breaker_decisions_total",
            "up",  # Prometheus' own scrape health, for the WorkerDown alert
        }
    )
)
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")

# The seed dashboard's panels and the expressions llmpulse keeps for them.
SEED_PANELS: dict[str, str] = {
    "Provider Health": "circuit_breaker_state",
    "Request Success Rate": (
        'sum(rate(llm_requests_total{status="success"}[5m])) / sum(rate(llm_requests_total[5m]))'
    ),
    "Cost by Organization": "sum by (organization) (llm_cost_usd_total)",
    "Cache Hit Rate": "sum(rate(cache_hits_total[5m])) / sum(rate(cache_requests_total[5m]))",
}
BREAKER_STATES: dict[str, str] = {
    "0": "closed",
    "1": "half_open",
    "2": "open",
    "3": "forced_open",
    "4": "disabled",
}
# Every worker the CLI offers (so compose stays in step with `llmpulse worker --help`).
WORKER_COMMANDS: frozenset[tuple[str, ...]] = frozenset(("worker", flow) for flow in worker_flows())

# PromQL words that look like identifiers but are not metric names.
_PROMQL_KEYWORDS = frozenset(
    {"by", "without", "on", "ignoring", "group_left", "group_right", "bool"}
    | {"and", "or", "unless", "offset", "atan2", "inf", "nan"}
)
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_MATCHERS = re.compile(r"\{[^{}]*\}")
_RANGE = re.compile(r"\[[^\[\]]*\]")
_LABEL_LIST = re.compile(
    r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)", re.IGNORECASE
)
_OFFSET = re.compile(r"\boffset\s+-?(?:\d+(?:ms|[smhdwy]))+|@\s*[\d.]+", re.IGNORECASE)
_NUMBER = re.compile(r"(?<![A-Za-z_:])\d+(?:\.\d+)?(?:[eE][+-]?\d+)?")
_IDENTIFIER = re.compile(r"[A-Za-z_:][A-Za-z0-9_:]*")


def metric_names(expr: str) -> set[str]:
    """Metric names a PromQL expression selects (functions, labels and keywords removed)."""
    text = _STRING.sub(" ", expr)
    text = _MATCHERS.sub(" ", text)
    text = _RANGE.sub(" ", text)
    text = _LABEL_LIST.sub(" ", text)
    text = _OFFSET.sub(" ", text)
    text = re.sub(r"\$\{?\w+\}?", " ", text)  # Grafana variables such as $__rate_interval
    text = _NUMBER.sub(" ", text)
    names: set[str] = set()
    for match in _IDENTIFIER.finditer(text):
        word = match.group(0)
        is_call = text[match.end() :].lstrip().startswith("(")
        if not is_call and word.lower() not in _PROMQL_KEYWORDS:
            names.add(word)
    return names


def base_metric(name: str) -> str:
    """The allowlisted name a selected series belongs to (histogram series map to their base)."""
    for suffix in HISTOGRAM_SUFFIXES:
        if name.endswith(suffix) and name.removesuffix(suffix) in HISTOGRAM_METRICS:
            return name.removesuffix(suffix)
    return name


def load_dashboard() -> dict[str, Any]:
    """The dashboard JSON model as a dict."""
    data = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    assert isinstance(data, dict)
    return data


def all_panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    """Every panel, including those nested in collapsed rows."""
    found: list[dict[str, Any]] = []
    for panel in dashboard["panels"]:
        found.append(panel)
        found.extend(panel.get("panels", []))
    return found


def query_panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    """Panels that show data (everything except row headers)."""
    return [p for p in all_panels(dashboard) if p.get("type") != "row"]


def dashboard_exprs() -> list[str]:
    """Every PromQL expression of the dashboard."""
    return [
        str(target["expr"])
        for panel in query_panels(load_dashboard())
        for target in panel.get("targets", [])
        if target.get("expr")
    ]


def load_yaml(path: Path) -> dict[str, Any]:
    """A YAML mapping file as a dict."""
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    assert isinstance(data, dict), f"{path} is not a YAML mapping"
    return data


def alert_rules() -> list[dict[str, Any]]:
    """Every rule of ops/compose/alerts.yml."""
    return [rule for group in load_yaml(ALERTS)["groups"] for rule in group["rules"]]


def compose_services() -> dict[str, dict[str, Any]]:
    """The services of docker-compose.yml (YAML anchors and merge keys resolved)."""
    services = load_yaml(COMPOSE)["services"]
    assert isinstance(services, dict)
    return services


def promtool() -> str:
    """Path of promtool, or skip the calling test."""
    found = shutil.which("promtool") or (
        "/usr/bin/promtool" if Path("/usr/bin/promtool").exists() else None
    )
    if found is None:
        pytest.skip("promtool not installed (Debian package prometheus)")
    return found


def run_promtool(*args: str, cwd: Path = ROOT) -> None:
    """Run promtool and fail with its output unless it exits 0."""
    result = subprocess.run(
        [promtool(), *args], cwd=cwd, capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, f"promtool {' '.join(args)}:\n{result.stdout}{result.stderr}"


# --- the PromQL name extraction itself ---------------------------------------------------


def test_metric_names_extraction() -> None:
    expr = (
        "histogram_quantile(0.99, sum by (flow, le) "
        '(rate(llmpulse_event_lag_seconds_bucket{flow!="x"}[5m] offset 1h30m))) > 1e3 '
        "and on (flow) up == bool 1"
    )
    assert metric_names(expr) == {"llmpulse_event_lag_seconds_bucket", "up"}
    assert metric_names(SEED_PANELS["Request Success Rate"]) == {"llm_requests_total"}
    assert base_metric("llmpulse_sink_batch_rows_count") == "llmpulse_sink_batch_rows"
    assert base_metric("llm_requests_total") == "llm_requests_total"


# --- dashboard -----------------------------------------------------------------------------


def test_dashboard_identity() -> None:
    dashboard = load_dashboard()
    assert dashboard["uid"] == "llmpulse-platform"
    assert dashboard["title"] == "LLM Platform Observability"
    assert isinstance(dashboard["schemaVersion"], int)
    assert dashboard["schemaVersion"] >= 36
    assert "dashboard" not in dashboard, "file provisioning expects the plain dashboard model"


def test_every_panel_has_a_query() -> None:
    for panel in query_panels(load_dashboard()):
        exprs = [t.get("expr", "") for t in panel.get("targets", [])]
        assert any(str(e).strip() for e in exprs), f"panel {panel['title']!r} has no expr"


def test_panel_ids_unique() -> None:
    ids = [panel["id"] for panel in all_panels(load_dashboard())]
    assert all(isinstance(i, int) for i in ids)
    assert len(ids) == len(set(ids)), f"duplicate panel ids: {sorted(ids)}"


def test_refids_unique_within_panel() -> None:
    for panel in query_panels(load_dashboard()):
        refs = [t["refId"] for t in panel.get("targets", [])]
        assert len(refs) == len(set(refs)), f"panel {panel['title']!r} repeats a refId"


def test_panels_use_provisioned_datasource() -> None:
    datasources = load_yaml(PROVISIONING / "datasources" / "prometheus.yml")["datasources"]
    uids = {ds["uid"] for ds in datasources}
    assert "prometheus" in uids
    for panel in query_panels(load_dashboard()):
        assert panel["datasource"]["uid"] in uids, panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] in uids, panel["title"]


def test_seed_panels_kept() -> None:
    by_title = {panel["title"]: panel for panel in query_panels(load_dashboard())}
    for title, expr in SEED_PANELS.items():
        assert title in by_title, f"seed panel {title!r} missing"
        exprs = [t["expr"] for t in by_title[title]["targets"]]
        assert expr in exprs, f"{title!r}: expected {expr!r}, got {exprs!r}"
    used = set().union(*(metric_names(e) for e in dashboard_exprs()))
    assert used >= SEED_METRICS


def test_provider_health_maps_breaker_states() -> None:
    panel = next(p for p in query_panels(load_dashboard()) if p["title"] == "Provider Health")
    assert panel["targets"][0]["legendFormat"] == "{{provider}}"
    mappings = panel["fieldConfig"]["defaults"]["mappings"]
    texts = {
        value: option["text"]
        for mapping in mappings
        if mapping["type"] == "value"
        for value, option in mapping["options"].items()
    }
    assert texts == BREAKER_STATES


def test_dashboard_metrics_allowlisted() -> None:
    for expr in dashboard_exprs():
        names = metric_names(expr)
        assert names, f"no metric in {expr!r}"
        unknown = {n for n in names if base_metric(n) not in ALLOWED_METRICS}
        assert not unknown, f"{expr!r} queries metrics outside the allowlist: {unknown}"


def test_dashboard_provider_loads_json_folder() -> None:
    providers = load_yaml(PROVISIONING / "dashboards" / "llmpulse.yml")["providers"]
    assert [p["type"] for p in providers] == ["file"]
    grafana = compose_services()["grafana"]
    mounts = {m.split(":")[1]: m.split(":")[0] for m in grafana["volumes"] if ":" in m}
    assert mounts[providers[0]["options"]["path"]] == "./dashboards"
    assert mounts["/etc/grafana/provisioning"] == "./dashboards/provisioning"


# --- alert rules ---------------------------------------------------------------------------


def test_alert_rules_shape_and_metrics() -> None:
    rules = alert_rules()
    names = {rule["alert"] for rule in rules}
    assert {
        "BreakerOpen",
        "DLQGrowing",
        "SinkInsertRetriesRising",
        "ConsumerLagHigh",
        "RequestSuccessRateBelowSLO",
    } <= names
    for rule in rules:
        assert rule["labels"]["severity"] in {"warning", "critical"}, rule["alert"]
        assert rule["annotations"]["summary"], rule["alert"]
        used = metric_names(str(rule["expr"]))
        unknown = {n for n in used if base_metric(n) not in ALLOWED_METRICS}
        assert used, rule["alert"]
        assert not unknown, f"{rule['alert']} queries metrics outside the allowlist: {unknown}"


def test_breaker_open_rule() -> None:
    rule = next(r for r in alert_rules() if r["alert"] == "BreakerOpen")
    assert rule["expr"].strip() == "circuit_breaker_state >= 2"
    assert rule["for"] == "1m"


def test_promtool_checks_rules_and_config() -> None:
    run_promtool("check", "rules", str(ALERTS))
    run_promtool("test", "rules", str(ALERT_TESTS))
    run_promtool("check", "config", str(PROMETHEUS_CONFIG))


def test_promtool_parses_dashboard_exprs(tmp_path: Path) -> None:
    # promtool cannot evaluate queries offline, but it parses every recording rule:
    # wrapping each dashboard expression in one checks its PromQL syntax.
    tool = promtool()
    rules = [
        {"record": f"llmpulse:dashboard_expr_{i}", "expr": expr}
        for i, expr in enumerate(dashboard_exprs())
    ]
    path = tmp_path / "dashboard_exprs.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    result = subprocess.run(
        [tool, "check", "rules", str(path)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


# --- prometheus config ---------------------------------------------------------------------


def test_prometheus_scrapes_workers_and_loads_alerts() -> None:
    config = load_yaml(PROMETHEUS_CONFIG)
    assert config["rule_files"] == ["alerts.yml"]
    targets = {
        target
        for job in config["scrape_configs"]
        for static in job.get("static_configs", [])
        for target in static["targets"]
    }
    assert {f"worker-{flow}:9464" for flow in worker_flows()} <= targets
    services = compose_services()
    for target in targets - {"localhost:9090"}:
        assert target.split(":")[0] in services, target
    mounts = services["prometheus"]["volumes"]
    assert "./ops/compose/prometheus.yml:/etc/prometheus/prometheus.yml:ro" in mounts
    assert "./ops/compose/alerts.yml:/etc/prometheus/alerts.yml:ro" in mounts


# --- docker compose ------------------------------------------------------------------------


def test_compose_has_no_version_key() -> None:
    assert "version" not in load_yaml(COMPOSE)


def test_compose_depends_on_existing_services() -> None:
    services = compose_services()
    for name, service in services.items():
        depends = service.get("depends_on", {})
        assert isinstance(depends, dict | list), name
        for dep in depends:
            assert dep in services, f"{name} depends on unknown service {dep!r}"
            assert dep != name, f"{name} depends on itself"
        if isinstance(depends, dict):
            for dep, spec in depends.items():
                assert spec["condition"] in {
                    "service_started",
                    "service_healthy",
                    "service_completed_successfully",
                }, f"{name} -> {dep}"
                if spec["condition"] == "service_healthy":
                    assert "healthcheck" in services[dep], f"{dep} has no healthcheck"


@pytest.mark.parametrize(
    ("profile", "suffix", "kafka"),
    [("plaintext", "", "kafka:9092"), ("secure", "-secure", "kafka-secure:9092")],
)
def test_compose_workers(profile: str, suffix: str, kafka: str) -> None:
    services = compose_services()
    workers = {
        name: s
        for name, s in services.items()
        if name.startswith("worker-") and s["profiles"] == [profile]
    }
    assert set(workers) == {f"worker-{flow}{suffix}" for flow in worker_flows()}
    commands: set[tuple[str, ...]] = set()
    for name, service in workers.items():
        command = service["command"]
        cmd = tuple(command.split() if isinstance(command, str) else command)
        assert cmd in WORKER_COMMANDS, f"{name}: {cmd}"
        assert name == f"worker-{cmd[1]}{suffix}"
        commands.add(cmd)
        env = service["environment"]
        assert env["LLMPULSE_KAFKA_BOOTSTRAP"] == kafka
        assert env["LLMPULSE_METRICS_PORT"] == "9464"
        assert service["depends_on"][f"llmpulse-init{suffix}"]["condition"] == (
            "service_completed_successfully"
        )
    assert commands == WORKER_COMMANDS


def test_compose_simulate_job_is_a_valid_command() -> None:
    from llmpulse.cli import build_parser

    sim = compose_services()["simulate"]
    assert sim["profiles"] == ["simulate"]
    args = build_parser().parse_args(sim["command"])
    assert (args.command, args.breaker_worker) == ("simulate", False)
    assert args.outage == ["openai:10-40"]


@pytest.mark.parametrize("name", ["llmpulse-init", "llmpulse-init-secure"])
def test_compose_init_job(name: str) -> None:
    init = compose_services()[name]
    assert init["restart"] == "no"
    assert init["command"] == ["llmpulse topics create && llmpulse migrate"]
    assert name not in init["depends_on"]


def test_compose_named_volumes_declared() -> None:
    compose = load_yaml(COMPOSE)
    declared = set(compose.get("volumes") or {})
    for name, service in compose["services"].items():
        for mount in service.get("volumes", []):
            source = mount.split(":")[0]
            if not source.startswith((".", "/")):
                assert source in declared, f"{name} uses undeclared volume {source!r}"
            elif source.startswith(f"./{CERTS}/"):
                assert source.removeprefix(f"./{CERTS}/") in MADE_CERTS, (name, source)
            else:
                assert (ROOT / source).exists(), f"{name} mounts missing path {source!r}"


# --- docker compose: exposure, credentials, the secure profile (issue 14) -------------------

#: ``${NAME}``, ``${NAME:-default}`` or ``${NAME:?message}``, as Compose interpolates them.
_VARIABLE = re.compile(r"\$\{(?P<name>\w+)(?::(?P<op>[-?])(?P<arg>[^}]*))?\}")


def interpolate(text: str, env: Mapping[str, str]) -> str:
    """``text`` as Compose reads it with ``env`` (.env); KeyError for a required one unset."""

    def value(match: re.Match[str]) -> str:
        got = env.get(match["name"], "")
        if not got and match["op"] == "?":
            raise KeyError(match["name"])
        return got or (match["arg"] if match["op"] == "-" else "")

    return _VARIABLE.sub(value, text)


def env_example() -> dict[str, str]:
    """The settings of .env.example."""
    lines = [line for line in ENV_EXAMPLE.read_text().splitlines() if line.strip()]
    return dict(line.split("=", 1) for line in lines if not line.startswith("#"))


def properties(path: Path) -> dict[str, str]:
    """A Java properties file (one ``key=value`` a line, ``#`` comments)."""
    lines = [line.strip() for line in path.read_text().splitlines()]
    return dict(line.split("=", 1) for line in lines if line and not line.startswith("#"))


def mounts(service: Mapping[str, Any]) -> dict[str, str]:
    """Container path -> host source of a service's volumes."""
    return {m.split(":")[1]: m.split(":")[0] for m in service.get("volumes", [])}


def test_compose_ports_are_published_on_loopback_only() -> None:
    published = {name: s.get("ports", []) for name, s in compose_services().items()}
    assert any(published.values())
    for name, ports in published.items():
        for port in ports:
            assert isinstance(port, str), f"{name}: {port!r}"
            host, _, _ = port.rpartition(":")
            assert host.startswith("127.0.0.1:"), f"{name}: {port}"
            assert host.count(":") == 1, f"{name}: {port}"


def test_compose_images_are_pinned_to_exact_versions() -> None:
    for name, service in compose_services().items():
        image = service["image"]
        if "build" in service:
            assert image == "llmpulse:local", name
            continue
        repository, _, tag = image.rpartition(":")
        assert repository, f"{name}: {image} has no tag"
        assert re.fullmatch(r"v?\d+\.\d+\.\d+(\.\d+)?(-[a-z]+)?", tag), f"{name}: {image}"


def test_prometheus_has_no_lifecycle_api() -> None:
    command = compose_services()["prometheus"]["command"]
    assert "--config.file=/etc/prometheus/prometheus.yml" in command
    assert not [arg for arg in command if "lifecycle" in arg]


def test_compose_has_no_default_credentials() -> None:
    services = compose_services()
    assert services["grafana"]["environment"]["GF_AUTH_ANONYMOUS_ENABLED"] == "false"
    sentinels = {m["name"]: f"<{m['name']}>" for m in _VARIABLE.finditer(COMPOSE.read_text())}
    checked = 0
    for name, service in services.items():
        for key, raw in (service.get("environment") or {}).items():
            if "PASSWORD" in key:  # required from .env, or empty (the secure profile's)
                with contextlib.suppress(KeyError):
                    assert interpolate(str(raw), {}) == "", f"{name}: {key} has a default"
                checked += 1
            for userinfo in re.findall(r"://([^/@]*)@", interpolate(str(raw), sentinels)):
                password = userinfo.partition(":")[2]
                assert re.fullmatch(r"<\w+>", password), f"{name}: {key} has a literal password"
                checked += 1
    assert checked >= 8
    required = {m["name"] for m in _VARIABLE.finditer(COMPOSE.read_text()) if m["op"] == "?"}
    assert {"GRAFANA_ADMIN_PASSWORD", "CLICKHOUSE_PASSWORD", "REDIS_PASSWORD"} <= required


def test_a_missing_secret_stops_compose_with_its_name() -> None:
    required = [m for m in _VARIABLE.finditer(COMPOSE.read_text()) if m["op"] == "?"]
    assert required
    for match in required:
        assert match["name"] in match["arg"], match[0]
        assert ".env.example" in match["arg"], match[0]


def test_env_example_documents_every_compose_variable() -> None:
    example = env_example()
    used = {m["name"] for m in _VARIABLE.finditer(COMPOSE.read_text())}
    assert used <= set(example)
    # The CLI reads LLMPULSE_* from .env as well: Compose's settings must not look like its own.
    assert [name for name in example if name.startswith("LLMPULSE_")] == []
    passwords = {name: value for name, value in example.items() if "PASSWORD" in name}
    assert passwords == dict.fromkeys(passwords, "")
    assert example["COMPOSE_PROFILES"] == "plaintext"


def test_compose_profiles_never_mix_the_two_kafkas() -> None:
    services = compose_services()
    profiles = {name: service.get("profiles", []) for name, service in services.items()}
    assert (profiles["kafka"], profiles["kafka-secure"]) == (["plaintext"], ["secure"])
    for name, service in services.items():
        for dep in service.get("depends_on", {}):
            # Shared services need no Kafka; the simulate job runs on the plaintext one.
            assert profiles[dep] in ([], profiles[name]) or name == "simulate", (name, dep)


def test_compose_secure_profile_runs_kafka_with_sasl_ssl_listeners_only() -> None:
    kafka = compose_services()["kafka-secure"]
    assert kafka["entrypoint"] == ["/bin/bash", "/etc/llmpulse/kafka-secure.sh"]
    assert mounts(kafka) | {"/var/lib/kafka/data": ""} == {
        "/etc/llmpulse/kafka-secure.sh": "./ops/compose/kafka-secure.sh",
        "/etc/llmpulse/server.properties": "./ops/compose/kafka-secure.properties",
        "/etc/llmpulse/certs/kafka.pem": f"./{CERTS}/kafka.pem",
        "/var/lib/kafka/data": "",
    }
    config = properties(KAFKA_SECURE_CONFIG)
    protocols = dict(p.split(":") for p in config["listener.security.protocol.map"].split(","))
    listeners = dict(entry.split("://") for entry in config["listeners"].split(","))
    for listener, address in listeners.items():
        # Only the container's loopback (the broker itself) is not SASL_SSL.
        assert protocols[listener] == "SASL_SSL" or address.startswith("localhost:"), listener
    published = {port.rpartition(":")[2] for port in kafka["ports"]}
    assert {address.rpartition(":")[2] for address in listeners.values()} >= published
    assert [protocols[n] for n, a in listeners.items() if a.endswith(tuple(published))] == [
        "SASL_SSL"
    ]
    advertised = dict(entry.split("://") for entry in config["advertised.listeners"].split(","))
    assert advertised["INTERNAL"] == "kafka-secure:9092"
    assert config["sasl.enabled.mechanisms"] == "SCRAM-SHA-512"
    assert config["ssl.keystore.location"] == "/etc/llmpulse/certs/kafka.pem"
    # The SCRAM credential is made the KRaft way: when the storage is formatted.
    start = KAFKA_SECURE_START.read_text()
    assert "kafka-storage.sh format" in start
    assert '--add-scram "SCRAM-SHA-512=[name=$SCRAM_USERNAME,password=$SCRAM_PASSWORD]"' in start


def test_compose_secure_workers_use_sasl_ssl_settings(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    services = compose_services()
    secure = {n: s for n, s in services.items() if s.get("profiles") == ["secure"] and "build" in s}
    assert set(secure) == {"llmpulse-init-secure"} | {f"worker-{f}-secure" for f in worker_flows()}
    filled = env_example() | {name: "0123abcd" for name in env_example() if "PASSWORD" in name}
    ca_file = tmp_path / "ca.pem"  # stands for the container's mounted file
    ca_file.write_text("")
    for name, service in secure.items():
        env = {
            key: interpolate(str(value), filled) for key, value in service["environment"].items()
        }
        assert env["LLMPULSE_KAFKA_SECURITY_PROTOCOL"] == "SASL_SSL", name
        assert mounts(service)[env["LLMPULSE_KAFKA_SSL_CA_FILE"]] == f"./{CERTS}/ca.pem", name
        if name.startswith("worker-"):  # Prometheus scrapes them under the plaintext names
            assert service["networks"]["default"]["aliases"] == [name.removesuffix("-secure")]
        # Every name and value is one llmpulse accepts.
        for key, value in env.items():
            monkeypatch.setenv(key, value)
        monkeypatch.setenv("LLMPULSE_KAFKA_SSL_CA_FILE", str(ca_file))
        settings = Settings(_env_file=None)
        assert settings.kafka_security_protocol == "SASL_SSL"
        assert (settings.kafka_sasl_mechanism, settings.kafka_sasl_username) == (
            "SCRAM-SHA-512",
            "llmpulse",
        )
        assert settings.kafka_sasl_password is not None
        assert settings.kafka_sasl_password.get_secret_value() == "0123abcd"
        assert settings.kafka_ssl_check_hostname


def test_make_certs_makes_private_files_and_a_certificate_for_kafka_secure(
    tmp_path: Path,
) -> None:
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("no openssl")
    made = subprocess.run(
        ["sh", str(MAKE_CERTS)], cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert made.returncode == 0, made.stderr
    certs = tmp_path / CERTS
    assert {path.name for path in certs.iterdir()} >= MADE_CERTS
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in (certs, certs / "ca.key")}
    modes["kafka.pem"] = stat.S_IMODE((certs / "kafka.pem").stat().st_mode)
    assert modes == {CERTS: 0o700, "ca.key": 0o600, "kafka.pem": 0o600}
    # Kafka's PEM key store: the unencrypted PKCS#8 key, then the certificate.
    assert (certs / "kafka.pem").read_text().startswith("-----BEGIN PRIVATE KEY-----")

    def openssl_out(*args: str) -> str:
        done = subprocess.run([openssl, *args], capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        return done.stdout

    names = openssl_out("x509", "-in", str(certs / "kafka.pem"), "-noout", "-ext", "subjectAltName")
    san = {name.strip() for name in names.splitlines()[-1].split(",")}
    assert san == {"DNS:kafka-secure", "DNS:localhost", "IP Address:127.0.0.1"}
    openssl_out("verify", "-CAfile", str(certs / "ca.pem"), str(certs / "kafka.pem"))


def test_every_llmpulse_metric_queried_is_defined_in_code() -> None:
    """Dashboards and alerts only query metrics that processors or the gateway export."""
    defined: set[str] = set()
    for family in REGISTRY.collect():
        defined.add(family.name)
        if family.type == "counter":
            defined.add(f"{family.name}_total")
    queried = {m for m in ALLOWED_METRICS if m.startswith("llmpulse_")}
    assert queried - defined == set()
