"""The files of docker/ (no broker, no Docker): every YAML and JSON file parses, compose
refers to files that exist, Prometheus scrapes every worker and each connector (gateway,
deliver: the opt-in compose profile `connectors`), the dashboard and the alert rules use
only metrics the process they come from declares and cover what an SRE needs, every alert
has a runbook entry, and `promtool` accepts the config and the rules and passes their unit
tests (docker/alerts_test.yaml).

The helpers at the top are shared with tests/integration/test_prometheus_scrape.py and
tests/integration/test_connectors_prometheus.py, which check the same metric names against
a real worker's, gateway's and deliver's /metrics."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import generate_latest

from churnguard.access_tokens import load_token_file
from churnguard.metrics import Metrics
from connectors.delivery.metrics import OUTCOMES, DeliveryMetrics
from connectors.gateway.metrics import GatewayMetrics
from streams.metrics_export import PartitionOffsets, WorkerCollector, WorkerView, registry_for

ROOT = Path(__file__).resolve().parents[2]
DOCKER = ROOT / "docker"
COMPOSE = DOCKER / "compose.yaml"
PROMETHEUS_CONFIG = DOCKER / "prometheus.yml"
ALERTS = DOCKER / "alerts.yaml"
ALERTS_TEST = DOCKER / "alerts_test.yaml"
DASHBOARDS = DOCKER / "grafana" / "dashboards"
DATASOURCES = DOCKER / "grafana" / "provisioning" / "datasources"
DASHBOARD_PROVIDERS = DOCKER / "grafana" / "provisioning" / "dashboards"
WEB_PORT = 6066  # the workers' CHURNGUARD_WEB_PORT default
GATEWAY_PORT = 8080  # CHURNGUARD_GATEWAY__PORT's default
DELIVER_PORT = 6068  # CHURNGUARD_DELIVERY__WEB_PORT's default
# Prometheus job of each connector (docker/prometheus.yml), by the churnguard command run.
CONNECTOR_JOBS = {"gateway": "churnguard-gateway", "deliver": "churnguard-deliver"}
CONNECTOR_PROFILE = "connectors"

# --- shared helpers -------------------------------------------------------------------------

# String literals (label values, regexes) and comments are not metric names.
_PROMQL_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_PROMQL_COMMENT = re.compile(r"#[^\n]*")
# A whole identifier: not the tail of a longer name, not a recording rule's `a:b` name.
_METRIC = re.compile(r"(?<![A-Za-z0-9_:])churnguard_[a-z0-9_]+(?![A-Za-z0-9_:])")
_SAMPLE_NAME = re.compile(r"[A-Za-z_:][A-Za-z0-9_:]*")
_SUFFIXES = {"histogram": ("_bucket", "_sum", "_count"), "summary": ("", "_sum", "_count")}


def metric_names_in(expr: str) -> set[str]:
    """churnguard metric names a PromQL expression reads."""
    code = _PROMQL_COMMENT.sub(" ", _PROMQL_STRING.sub('""', expr))
    return set(_METRIC.findall(code))


def alert_rules() -> list[dict[str, Any]]:
    document = yaml.safe_load(ALERTS.read_text())
    return [rule for group in document["groups"] for rule in group["rules"]]


def _exprs(node: Any) -> Iterator[str]:
    """PromQL of a Grafana dashboard: targets' `expr`, template variables' `query`."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key in {"expr", "query"} and isinstance(value, str):
                yield value
            elif key == "query" and isinstance(value, dict) and isinstance(
                    value.get("query"), str):
                yield value["query"]
            else:
                yield from _exprs(value)
    elif isinstance(node, list):
        for item in node:
            yield from _exprs(item)


def dashboard_exprs() -> dict[str, list[str]]:
    """Every dashboard file's PromQL expressions, by file name."""
    return {path.name: list(_exprs(json.loads(path.read_text())))
            for path in sorted(DASHBOARDS.glob("*.json"))}


def connector_declared_names() -> dict[str, set[str]]:
    """Names each connector's registry declares (`# TYPE` lines expanded), by process."""
    return {
        "gateway": exposed_names(generate_latest(GatewayMetrics().registry).decode())[1],
        "deliver": exposed_names(generate_latest(DeliveryMetrics().registry).decode())[1],
    }


def process_of(name: str, connectors: dict[str, set[str]] | None = None) -> str:
    """Which process exports a churnguard metric: a connector that declares it, else the
    worker (a misspelt name lands there, and the worker's check reports it)."""
    declared = connector_declared_names() if connectors is None else connectors
    for process, names in declared.items():
        if name in names:
            return process
    return "worker"


def used_metric_names(process: str | None = "worker") -> dict[str, set[str]]:
    """churnguard metric name -> where it is used (alert names, dashboard files), of the
    metrics `process` exports ("worker", "gateway", "deliver"; None: all of them)."""
    connectors = connector_declared_names()
    used: dict[str, set[str]] = {}
    for rule in alert_rules():
        for name in metric_names_in(rule["expr"]):
            used.setdefault(name, set()).add(f"alerts.yaml:{rule['alert']}")
    for file, exprs in dashboard_exprs().items():
        for expr in exprs:
            for name in metric_names_in(expr):
                used.setdefault(name, set()).add(f"grafana/dashboards/{file}")
    if process is None:
        return used
    return {name: where for name, where in used.items()
            if process_of(name, connectors) == process}


def exposed_names(text: str) -> tuple[set[str], set[str]]:
    """(names with at least one sample, names declared by `# TYPE`) of a Prometheus text
    exposition, declared families expanded with their types' suffixes."""
    sampled: set[str] = set()
    declared: set[str] = set()
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(maxsplit=3)
            if kind == "counter":  # OpenMetrics declares the family without `_total`
                declared.add(name if name.endswith("_total") else f"{name}_total")
            else:
                declared.update(name + suffix for suffix in _SUFFIXES.get(kind, ("",)))
        elif line and not line.startswith("#"):
            match = _SAMPLE_NAME.match(line)
            if match:
                sampled.add(match.group())
    return sampled, declared


def _load(path: Path) -> Any:
    if path.suffix == ".json":
        return json.loads(path.read_text())
    return yaml.safe_load(path.read_text())


# --- every file parses ----------------------------------------------------------------------

DATA_FILES = sorted(p for p in DOCKER.rglob("*") if p.suffix in {".yaml", ".yml", ".json"})


def test_docker_has_the_monitoring_files() -> None:
    names = {str(p.relative_to(DOCKER)) for p in DATA_FILES}
    assert {"compose.yaml", "prometheus.yml", "alerts.yaml", "alerts_test.yaml",
            "grafana/provisioning/datasources/prometheus.yaml",
            "grafana/provisioning/dashboards/churnguard.yaml",
            "grafana/dashboards/churnguard.json"} <= names


@pytest.mark.parametrize("path", DATA_FILES, ids=lambda p: str(p.relative_to(DOCKER)))
def test_every_yaml_and_json_file_parses(path: Path) -> None:
    assert isinstance(_load(path), dict)


# --- compose --------------------------------------------------------------------------------


def _compose() -> dict[str, Any]:
    compose: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
    return compose


def _bind_mounts(service: dict[str, Any]) -> list[tuple[Path, str]]:
    """(host path, container path) of a service's bind mounts (short syntax)."""
    mounts = []
    for volume in service.get("volumes", []):
        source, target = volume.split(":")[:2]
        if source.startswith((".", "/")):
            mounts.append(((COMPOSE.parent / source).resolve(), target))
    return mounts


def _container_path(service: dict[str, Any], inside: str) -> Path | None:
    """The host file a service sees at `inside`, through its bind mounts."""
    for host, target in _bind_mounts(service):
        if inside == target or inside.startswith(target.rstrip("/") + "/"):
            return host / inside[len(target):].lstrip("/")
    return None


def _worker_services(compose: dict[str, Any]) -> list[str]:
    return sorted(name for name, service in compose["services"].items()
                  if service.get("command") == ["worker"])


def _connector_services(compose: dict[str, Any], command: str) -> list[str]:
    """Services running `churnguard <command>` (gateway, deliver)."""
    return sorted(name for name, service in compose["services"].items()
                  if (service.get("command") or [None])[0] == command)


def test_compose_services_refer_to_files_that_exist() -> None:
    compose = _compose()
    declared_volumes = set(compose.get("volumes") or {})
    services = compose["services"]
    for name, service in services.items():
        build = service.get("build")
        if build is not None:
            context = (COMPOSE.parent / build["context"]).resolve()
            dockerfile = context / build.get("dockerfile", "Dockerfile")
            assert dockerfile.is_file(), f"{name}: {dockerfile}"
            # Every COPY source of the Dockerfile is in the build context.
            for line in dockerfile.read_text().splitlines():
                if line.startswith("COPY "):
                    *sources, _ = line.split()[1:]
                    for source in sources:
                        assert (context / source).exists(), f"{name}: COPY {source}"
        for host, target in _bind_mounts(service):
            assert host.exists(), f"{name}: {host} (mounted at {target})"
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if not source.startswith((".", "/")):
                assert source in declared_volumes, f"{name}: volume {source} not declared"
        depends = service.get("depends_on") or []
        for other in depends if isinstance(depends, list) else depends.keys():
            assert other in services, f"{name} depends on unknown {other}"
    # Other images are pinned to a version: a monitoring stack that changes under you is no
    # baseline. churnguard's own is built here.
    for name, service in services.items():
        image = service.get("image", "")
        if not image.startswith("churnguard:"):
            assert re.fullmatch(r"[\w./-]+:v?\d+(\.\d+)+", image), f"{name}: {image!r}"


def test_workers_have_their_own_state_volume() -> None:
    compose = _compose()
    workers = _worker_services(compose)
    assert len(workers) >= 2
    volumes = [tuple(v for v in compose["services"][w]["volumes"]
                     if v.endswith(":/var/lib/churnguard")) for w in workers]
    assert all(len(v) == 1 for v in volumes)
    assert len(set(volumes)) == len(workers), "two workers share a store volume"


def _healthcheck_url(service: dict[str, Any]) -> str:
    [url] = re.findall(r"http://127\.0\.0\.1:\d+/\w+", " ".join(service["healthcheck"]["test"]))
    return url


def test_the_connectors_are_an_opt_in_profile() -> None:
    """`docker compose up` runs what it ran before; `--profile connectors` adds exactly
    one gateway and one deliver, after the topics exist, checked on /health like the
    workers."""
    compose = _compose()
    services = compose["services"]
    profiled = {name: service["profiles"] for name, service in services.items()
                if "profiles" in service}
    gateways = _connector_services(compose, "gateway")
    delivers = _connector_services(compose, "deliver")
    assert len(gateways) == 1
    assert len(delivers) == 1
    assert profiled == {name: [CONNECTOR_PROFILE] for name in [*gateways, *delivers]}
    worker = services[_worker_services(compose)[0]]
    for name in [*gateways, *delivers]:
        service = services[name]
        assert service["image"] == "churnguard:latest", name
        assert service["depends_on"] == {
            "topics": {"condition": "service_completed_successfully"}}, name
        # The workers' broker, partitions and topics: the same deployment.
        for key, value in worker["environment"].items():
            if not key.startswith("CHURNGUARD_WEB_"):  # the workers' own endpoints
                assert service["environment"][key] == value, (name, key)
        assert service["restart"] == "unless-stopped", name
        assert service["healthcheck"]["test"][0] == "CMD", name
    [gateway], [deliver] = gateways, delivers
    assert services[gateway]["command"] == ["gateway"]
    command = services[deliver]["command"]
    assert len(command) == 3, command
    assert command[1] in {"--url", "--routes"}, command
    assert services[gateway]["environment"]["CHURNGUARD_GATEWAY__PORT"] == str(GATEWAY_PORT)
    assert services[deliver]["environment"]["CHURNGUARD_DELIVERY__WEB_PORT"] == \
        str(DELIVER_PORT)
    assert _healthcheck_url(services[gateway]) == f"http://127.0.0.1:{GATEWAY_PORT}/health"
    assert _healthcheck_url(services[deliver]) == f"http://127.0.0.1:{DELIVER_PORT}/health"
    assert _healthcheck_url(worker) == f"http://127.0.0.1:{WEB_PORT}/health"
    # The gateway is published on the host's loopback only; deliver not at all.
    assert services[gateway]["ports"] == [f"127.0.0.1:{GATEWAY_PORT}:{GATEWAY_PORT}"]
    assert "ports" not in services[deliver]
    assert str(DELIVER_PORT) in str(services[deliver].get("expose"))


def test_the_workers_and_the_gateway_read_one_token_file() -> None:
    """docker/tokens.jsonl, mounted read-only: the workers' tokens (viewer, agent, admin)
    and the gateway's (ingest) are added and revoked in one place."""
    compose = _compose()
    services = compose["services"]
    [gateway] = [services[n] for n in _connector_services(compose, "gateway")]
    readers = [(services[n], "CHURNGUARD_WEB_TOKEN_FILE") for n in _worker_services(compose)]
    assert len(readers) == 2
    files = set()
    for service, setting in [*readers, (gateway, "CHURNGUARD_GATEWAY__TOKEN_FILE")]:
        path = _container_path(service, service["environment"][setting])
        assert path is not None
        assert next(v for v in service["volumes"] if path.name in v).endswith(":ro")
        files.add(path)
    assert files == {DOCKER / "tokens.jsonl"}
    for service, _ in readers:
        assert re.fullmatch(r"\$\{CHURNGUARD_WEB_TOKENS:-\[\]\}",
                            service["environment"]["CHURNGUARD_WEB_TOKENS"])
        assert "CHURNGUARD_WEB_OPEN_PROBES" not in service["environment"]  # open: scraped


def test_the_connectors_secrets_come_from_outside_the_files() -> None:
    """The gateway's token file is mounted from here and holds no token (the gateway
    loads it as it would: comments only, or stored hashes); deliver's secret is the
    environment's, never written in compose.yaml."""
    compose = _compose()
    [gateway] = [compose["services"][n] for n in _connector_services(compose, "gateway")]
    [deliver] = [compose["services"][n] for n in _connector_services(compose, "deliver")]
    token_file = _container_path(gateway,
                                 gateway["environment"]["CHURNGUARD_GATEWAY__TOKEN_FILE"])
    assert token_file is not None
    assert token_file.is_file()
    assert next(v for v in gateway["volumes"] if token_file.name in v).endswith(":ro")
    assert all(t.sha256 for t in load_token_file(token_file))
    assert re.fullmatch(r"\$\{CHURNGUARD_GATEWAY_TOKENS:-\[\]\}",
                        gateway["environment"]["CHURNGUARD_GATEWAY__TOKENS"])
    assert re.fullmatch(r"\$\{CHURNGUARD_DELIVERY_SECRET:-\}",
                        deliver["environment"]["CHURNGUARD_DELIVERY__SECRET"])


def test_prometheus_gets_its_config_and_alert_rules_from_this_directory() -> None:
    prometheus = _compose()["services"]["prometheus"]
    flags = dict(f.split("=", 1) for f in prometheus["command"] if "=" in f)
    config = _container_path(prometheus, flags["--config.file"])
    assert config == PROMETHEUS_CONFIG.resolve()
    inside = Path(flags["--config.file"]).parent
    for rule_file in yaml.safe_load(PROMETHEUS_CONFIG.read_text())["rule_files"]:
        # Relative to the config file: the same name here and in the container.
        assert _container_path(prometheus, str(inside / rule_file)) == (
            PROMETHEUS_CONFIG.parent / rule_file).resolve()
        assert (PROMETHEUS_CONFIG.parent / rule_file).resolve() == ALERTS.resolve()


def test_prometheus_scrapes_every_worker_and_only_workers() -> None:
    config = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
    [job] = [j for j in config["scrape_configs"] if j["job_name"] == "churnguard"]
    assert job.get("metrics_path", "/metrics") == "/metrics"
    targets = {t for static in job["static_configs"] for t in static["targets"]}
    assert targets == {f"{w}:{WEB_PORT}" for w in _worker_services(_compose())}
    assert "6066" in str(_compose()["services"]["worker-1"].get("expose"))


def _jobs() -> dict[str, dict[str, Any]]:
    config = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
    return {job["job_name"]: job for job in config["scrape_configs"]}


def test_prometheus_scrapes_each_connector_in_its_own_job() -> None:
    """One job per connector, its targets listed (a connector that is down stays a target
    with up == 0); the workers' job `churnguard` stays the workers' only."""
    compose = _compose()
    jobs = _jobs()
    ports = {"gateway": GATEWAY_PORT, "deliver": DELIVER_PORT}
    for command, job_name in CONNECTOR_JOBS.items():
        job = jobs[job_name]
        assert job.get("metrics_path", "/metrics") == "/metrics"
        assert "dns_sd_configs" not in job
        assert "file_sd_configs" not in job
        targets = {t for static in job["static_configs"] for t in static["targets"]}
        assert targets == {f"{s}:{ports[command]}"
                           for s in _connector_services(compose, command)}, job_name
    assert set(jobs) == {"churnguard", "prometheus", *CONNECTOR_JOBS.values()}


def test_grafana_provisions_the_datasource_and_dashboards_it_is_given() -> None:
    grafana = _compose()["services"]["grafana"]
    [datasource] = [d for p in sorted(DATASOURCES.glob("*.yaml"))
                    for d in yaml.safe_load(p.read_text())["datasources"]]
    assert datasource["type"] == "prometheus"
    assert datasource["url"] == "http://prometheus:9090"
    assert "prometheus" in _compose()["services"]
    assert _container_path(grafana, "/etc/grafana/provisioning/datasources") == \
        DATASOURCES.resolve()
    assert _container_path(grafana, "/etc/grafana/provisioning/dashboards") == \
        DASHBOARD_PROVIDERS.resolve()
    [provider] = [d for p in sorted(DASHBOARD_PROVIDERS.glob("*.yaml"))
                  for d in yaml.safe_load(p.read_text())["providers"]]
    assert _container_path(grafana, provider["options"]["path"]) == DASHBOARDS.resolve()
    home = grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert _container_path(grafana, home) == (DASHBOARDS / "churnguard.json").resolve()
    # Every panel and target uses the provisioned datasource, by uid.
    for path in DASHBOARDS.glob("*.json"):
        uids = {json.dumps(n) for n in _datasource_refs(json.loads(path.read_text()))}
        assert uids == {json.dumps({"type": "prometheus", "uid": datasource["uid"]})}, path


def _datasource_refs(node: Any) -> Iterator[Any]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "datasource" and value.get("type") != "grafana":
                yield value
            else:
                yield from _datasource_refs(value)
    elif isinstance(node, list):
        for item in node:
            yield from _datasource_refs(item)


# --- the dashboard --------------------------------------------------------------------------


def _panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    found = []
    for panel in dashboard["panels"]:
        found.append(panel)
        found.extend(panel.get("panels", []))
    return found


def test_dashboard_panels_are_well_formed() -> None:
    for path in DASHBOARDS.glob("*.json"):
        dashboard = json.loads(path.read_text())
        assert dashboard["uid"]
        assert dashboard["title"]
        panels = _panels(dashboard)
        ids = [p["id"] for p in panels]
        assert len(ids) == len(set(ids)), "panel ids repeat"
        for panel in panels:
            grid = panel["gridPos"]
            assert grid["x"] + grid["w"] <= 24, panel["title"]
            if panel["type"] != "row":
                assert panel["targets"], panel["title"]
                refs = [t["refId"] for t in panel["targets"]]
                assert len(refs) == len(set(refs)), panel["title"]
                assert all(t["expr"].strip() for t in panel["targets"]), panel["title"]


def test_dashboard_shows_what_the_issue_asks_for() -> None:
    exprs = [e for file in dashboard_exprs().values() for e in file]

    def uses(name: str, *also: str) -> bool:
        return any(name in metric_names_in(e) and all(a in e for a in also) for e in exprs)

    assert uses("churnguard_consumer_lag_records", "partition")
    assert uses("churnguard_consumer_lag_seconds", "partition")
    assert uses("churnguard_events_consumed_total", "rate(")
    for quantile in ("0.5", "0.95", "0.99"):
        assert uses("churnguard_event_to_action_latency_seconds_bucket",
                    f"histogram_quantile({quantile}")
    assert uses("churnguard_actions_emitted_total", "rule_id")
    assert uses("churnguard_dead_letters_total", "rate(")
    assert uses("churnguard_rebalances_total")


# --- the alert rules ------------------------------------------------------------------------

REQUIRED_ALERTS = {
    # alert: (metric it must read, minimum `for`)
    "ChurnguardConsumerLagHigh": ("churnguard_consumer_lag_seconds", "5m"),
    "ChurnguardPartitionStopped": ("churnguard_partition_status", None),
    "ChurnguardPartitionStalled": ("churnguard_partition_status", None),
    "ChurnguardDeadLetterRate": ("churnguard_dead_letters_total", None),
    "ChurnguardTimersPendingGrowing": ("churnguard_timers_pending", None),
    "ChurnguardWorkerNotReady": ("churnguard_ready", None),
    "ChurnguardWorkerDown": (None, None),
}


CONNECTOR_ALERTS = {
    # alert: (metric it must read, text its expression must hold)
    "ChurnguardDeliveriesFailing": ("churnguard_deliveries_total",
                                    'status=~"refused|gave_up|no_route|unreadable|error"'),
    "ChurnguardDeliveryDeadLetters": ("churnguard_deliveries_total",
                                      'status=~"refused|gave_up|no_route|unreadable|error"'),
    "ChurnguardDeliveryStalled": ("churnguard_delivery_lag_records", "churnguard_deliveries"),
    "ChurnguardDeliveryLagGrowing": ("churnguard_delivery_lag_records", "by (topic, partition)"),
    "ChurnguardDeliveryRetriesHigh": ("churnguard_delivery_retries_total", "rate("),
    "ChurnguardGatewayServerErrors": ("churnguard_gateway_requests_total", 'status=~"5.."'),
    "ChurnguardGatewayNotReady": ("churnguard_gateway_ready", "== 0"),
    "ChurnguardConnectorDown": (None, "up{"),
}


def _anchors(markdown: str) -> set[str]:
    """GitHub's anchors of a Markdown file's headings."""
    anchors = set()
    for line in markdown.splitlines():
        if line.startswith("#"):
            title = line.lstrip("#").strip().lower()
            anchors.add(re.sub(r"[^\w\- ]", "", title).replace(" ", "-"))
    return anchors


def test_alert_rules_cover_what_an_sre_pages_on() -> None:
    rules = {rule["alert"]: rule for rule in alert_rules()}
    assert set(REQUIRED_ALERTS) <= set(rules)
    for alert, (metric, at_least) in REQUIRED_ALERTS.items():
        rule = rules[alert]
        if metric is not None:
            assert metric in metric_names_in(rule["expr"]), alert
        if at_least is not None:
            assert rule["for"] == at_least, alert
    assert 'status="STOP"' in rules["ChurnguardPartitionStopped"]["expr"]
    assert 'status="STALL"' in rules["ChurnguardPartitionStalled"]["expr"]
    assert "> 300" in rules["ChurnguardConsumerLagHigh"]["expr"]
    assert re.search(r"\bup\{", rules["ChurnguardWorkerDown"]["expr"])


def test_alert_rules_cover_what_an_sre_pages_on_for_the_connectors() -> None:
    rules = {rule["alert"]: rule for rule in alert_rules()}
    assert set(CONNECTOR_ALERTS) <= set(rules)
    for alert, (metric, text) in CONNECTOR_ALERTS.items():
        expr = rules[alert]["expr"]
        if metric is not None:
            assert metric in metric_names_in(expr), alert
        assert text in expr, alert
    # Every status deliver dead-letters with is in the failure alerts; no other.
    failed = set(re.search(r'status=~"([^"]+)"', rules["ChurnguardDeliveriesFailing"]["expr"])
                 .group(1).split("|"))
    assert failed == set(OUTCOMES) - {"delivered", "skipped"}


def test_every_up_alert_names_scrape_jobs_that_exist() -> None:
    """An `up{job=...}` matcher of a job renamed in prometheus.yml would never fire."""
    jobs = set(_jobs())
    covered: set[str] = set()
    for rule in alert_rules():
        for matcher in re.findall(r'\bup\{job(=~?)"([^"]+)"\}', rule["expr"]):
            names = set(matcher[1].split("|")) if matcher[0] == "=~" else {matcher[1]}
            assert names <= jobs, (rule["alert"], names - jobs)
            covered |= names
    assert covered == jobs - {"prometheus"}, "a churnguard job without a down alert"


def test_every_alert_has_a_severity_and_a_runbook_entry() -> None:
    anchors = _anchors((DOCKER / "README.md").read_text())
    for rule in alert_rules():
        assert rule["labels"]["severity"] in {"page", "ticket"}, rule["alert"]
        annotations = rule["annotations"]
        assert annotations["summary"], rule["alert"]
        assert annotations["description"], rule["alert"]
        file, _, anchor = annotations["runbook_url"].partition("#")
        assert file == "docker/README.md"
        assert anchor == rule["alert"].lower()
        assert anchor in anchors, f"docker/README.md has no section {rule['alert']}"


# --- metric names against what the worker declares ------------------------------------------


def test_metric_name_extraction() -> None:
    expr = '''sum by (kind) (rate(churnguard_dead_letters_total{kind=~"churnguard_x|y"}[5m]))
      / on () group_left churnguard:recorded_rate  # churnguard_in_a_comment
      and churnguard_ready == 1 unless xchurnguard_no'''
    assert metric_names_in(expr) == {"churnguard_dead_letters_total", "churnguard_ready"}
    text = ("# TYPE churnguard_a_total counter\nchurnguard_a_total{x=\"1\"} 1.0\n"
            "# TYPE churnguard_c counter\n# TYPE churnguard_h histogram\n"
            "# TYPE churnguard_b_info gauge\n# TYPE churnguard_g gauge\n"
            "churnguard_h_bucket{le=\"+Inf\"} 0\n")
    sampled, declared = exposed_names(text)
    assert sampled == {"churnguard_a_total", "churnguard_h_bucket"}
    assert declared == {"churnguard_a_total", "churnguard_c_total", "churnguard_h_bucket",
                        "churnguard_h_sum", "churnguard_h_count", "churnguard_b_info",
                        "churnguard_g"}


def test_the_processes_metric_names_do_not_overlap() -> None:
    """A name tells which process it comes from (used_metric_names relies on it)."""
    declared = {"worker": _worker_declared(), **connector_declared_names()}
    for a, names in declared.items():
        assert names, a
        for b, others in declared.items():
            if a < b:
                assert not names & others, (a, b, names & others)


def test_used_metric_names_by_process() -> None:
    every = used_metric_names(None)
    parts = [used_metric_names(p) for p in ("worker", "gateway", "deliver")]
    assert sum(len(part) for part in parts) == len(every)
    assert "churnguard_ready" in parts[0]
    assert "churnguard_gateway_requests_total" in parts[1]
    assert "churnguard_delivery_lag_records" in parts[2]


def _worker_declared() -> set[str]:
    view = WorkerView(offsets=[PartitionOffsets("t", 0, 1, 2, 0.5)], timers_pending={0: 1},
                      recovery_remaining={0: 1}, store_bytes={}, customers={},
                      customers_by_band={}, statuses={("t", 0): "OK"}, ready=True)
    collector = WorkerCollector(Metrics(), lambda: view, version="0", contract_version="1")
    return exposed_names(generate_latest(registry_for(collector)).decode())[1]


def test_connector_alerts_use_only_metrics_the_connectors_declare() -> None:
    """The alerts of the group `churnguard-connectors` read only the gateway's and
    deliver's metrics (their registries, built as the processes build them), and the
    workers' group none of those."""
    connectors = connector_declared_names()
    document = yaml.safe_load(ALERTS.read_text())
    groups = {group["name"]: group["rules"] for group in document["groups"]}
    assert set(groups) == {"churnguard", "churnguard-connectors"}
    used = {name for rule in groups["churnguard-connectors"]
            for name in metric_names_in(rule["expr"])}
    assert len(used) >= 6
    unknown = used - connectors["gateway"] - connectors["deliver"]
    assert not unknown, f"not declared by connectors/*/metrics.py: {sorted(unknown)}"
    for rule in groups["churnguard"]:
        assert {process_of(n, connectors) for n in metric_names_in(rule["expr"])} <= \
            {"worker"}, rule["alert"]


def test_dashboard_and_alerts_use_only_metrics_the_worker_declares() -> None:
    """The collector's families, rendered without a broker: catches a misspelt name early
    (tests/integration/test_prometheus_scrape.py checks a real worker's samples)."""
    declared = _worker_declared()
    used = used_metric_names()
    assert len(used) >= 15
    unknown = {name: sorted(where) for name, where in used.items() if name not in declared}
    assert not unknown, f"not declared by streams/metrics_export.py: {unknown}"


# --- promtool -------------------------------------------------------------------------------

PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None,
    reason="promtool not installed (Debian: apt-get install prometheus; CI must install it)")


def _promtool(*args: str) -> subprocess.CompletedProcess[str]:
    assert PROMTOOL is not None
    return subprocess.run([PROMTOOL, *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=60, check=False)


@needs_promtool
def test_promtool_checks_the_alert_rules() -> None:
    result = _promtool("check", "rules", str(ALERTS.relative_to(ROOT)))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(alert_rules())} rules found" in result.stdout


@needs_promtool
def test_promtool_checks_the_prometheus_config() -> None:
    result = _promtool("check", "config", str(PROMETHEUS_CONFIG.relative_to(ROOT)))
    assert result.returncode == 0, result.stdout + result.stderr


@needs_promtool
def test_promtool_unit_tests_of_the_alerts_pass() -> None:
    result = _promtool("test", "rules", str(ALERTS_TEST.relative_to(ROOT)))
    assert result.returncode == 0, result.stdout + result.stderr
    # Every alert is proven to fire by at least one test case.
    tested = {case["alertname"] for test in yaml.safe_load(ALERTS_TEST.read_text())["tests"]
              for case in test.get("alert_rule_test", []) if case["exp_alerts"]}
    assert tested == {rule["alert"] for rule in alert_rules()}
