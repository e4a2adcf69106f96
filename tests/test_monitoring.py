"""deploy/monitoring/: the alerts under `promtool`, a real Prometheus scraping a real server with the
rules loaded, and a dashboard that names only metrics the server exports."""

import json
import re
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
import yaml

from tests.server import RunningServer, free_port, running_server, stop_process

ROOT = Path(__file__).resolve().parent.parent
MONITORING = ROOT / "deploy" / "monitoring"
RULE = MONITORING / "prometheusrule.yaml"
DASHBOARD = MONITORING / "dashboard.json"
RULE_TESTS = sorted((Path(__file__).parent / "monitoring").glob("*.yaml"))
JOB = "sidecar-webhook"
# Bounds on the waits for the real Prometheus: it starts in about a second and scrapes every second.
PROMETHEUS_SECONDS = 60
T = TypeVar("T")


def tool(name: str) -> str:
    found = shutil.which(name)
    if found is None:
        pytest.skip(
            f"{name} is not installed: `apt-get install prometheus` (Debian's package ships prometheus and "
            "promtool; .ci/run installs it)"
        )
    return found


def rule_groups() -> list[dict[str, Any]]:
    groups: list[dict[str, Any]] = yaml.safe_load(RULE.read_text())["spec"]["groups"]
    return groups


def alerts() -> dict[str, dict[str, Any]]:
    return {rule["alert"]: rule for group in rule_groups() for rule in group["rules"] if "alert" in rule}


def write_rules(path: Path, *, descriptions: bool = True) -> Path:
    """The PrometheusRule's groups as a plain rules file, as Prometheus and promtool read them."""
    groups = rule_groups()
    if not descriptions:
        for group in groups:
            for rule in group["rules"]:
                rule.get("annotations", {}).pop("description", None)
    path.write_text(yaml.safe_dump({"groups": groups}, sort_keys=False))
    return path


def exported_metric_names(metrics: str) -> set[str]:
    """Every name a query can use: the sample names and, for a family with no sample yet (a labelled
    one never set, as the certificate metrics in the file mode), its TYPE line's name."""
    names = {line.split("{")[0].split(" ")[0] for line in metrics.splitlines() if line and line[0] != "#"}
    for line in metrics.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ")
            names |= {name} if kind != "histogram" else {f"{name}_bucket", f"{name}_sum", f"{name}_count"}
    return names


# A selector in PromQL: a metric name followed by its braces.
SELECTOR = re.compile(r"([a-zA-Z_:][a-zA-Z0-9_:]*)\{")
# Metrics of Prometheus itself that the rules and the dashboard use beside the webhook's own.
PROMETHEUS_METRICS = {"up"}


def metrics_named(expression: str) -> set[str]:
    names = set(SELECTOR.findall(expression)) | set(re.findall(r"sidecar_webhook_\w+", expression))
    assert names, f"no metric selector in {expression!r}"
    return names


# --- The rules, by promtool -----------------------------------------------------------------------------


def test_every_alert_has_a_severity_a_summary_and_a_description_of_what_to_do() -> None:
    assert len(alerts()) >= 9
    for name, rule in alerts().items():
        assert rule["labels"]["severity"] in ("critical", "warning"), name
        assert rule["annotations"]["summary"], name
        assert len(rule["annotations"]["description"]) > 100, f"{name}: say what to do"
        assert re.fullmatch(r"\d+[mh]", rule["for"]), f"{name}: a `for` of minutes or hours"


def test_the_rules_pass_promtool_check(tmp_path: Path) -> None:
    promtool = tool("promtool")
    result = subprocess.run(
        [promtool, "check", "rules", str(write_rules(tmp_path / "rules.yaml"))],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {sum(len(g['rules']) for g in rule_groups())} rules found" in result.stdout


def rule_test_cases() -> list[tuple[str, bool]]:
    """(alert name, whether it is expected to fire) for every case of tests/monitoring/."""
    return [
        (case["alertname"], bool(case["exp_alerts"]))
        for path in RULE_TESTS
        for test in yaml.safe_load(path.read_text())["tests"]
        for case in test["alert_rule_test"]
    ]


def test_every_alert_is_tested_firing_and_not_firing_and_no_test_names_an_unknown_alert() -> None:
    # promtool passes an expectation of no alert for a name no rule has: a typo would test nothing.
    cases = rule_test_cases()
    assert {name for name, _ in cases} == set(alerts())
    assert {name for name, fires in cases if fires} == set(alerts())
    assert {name for name, fires in cases if not fires} == set(alerts())


def test_promtool_unit_tests_of_every_alert_pass(tmp_path: Path) -> None:
    promtool = tool("promtool")
    # The tests expect the summaries; the descriptions are prose checked above and by `check rules`.
    write_rules(tmp_path / "rules.yaml", descriptions=False)
    for path in RULE_TESTS:
        shutil.copy(path, tmp_path / path.name)
    result = subprocess.run(
        [promtool, "test", "rules", *(path.name for path in RULE_TESTS)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("SUCCESS") == len(RULE_TESTS), result.stdout


# --- The dashboard --------------------------------------------------------------------------------------


def dashboard_expressions() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    return [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]


def rule_expressions() -> list[str]:
    return [rule["expr"] for group in rule_groups() for rule in group["rules"]]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    with running_server(tmp_path_factory.mktemp("monitoring") / "certs") as running:
        yield running


def test_dashboard_shows_reviews_latency_refusals_expiry_and_replicas() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] == "sidecar-webhook"
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    named = {name for expr in dashboard_expressions() for name in metrics_named(expr)}
    assert {
        "sidecar_webhook_reviews_total",
        "sidecar_webhook_review_duration_seconds_bucket",
        "sidecar_webhook_refused_calls_total",
        "sidecar_webhook_certificate_expiry_timestamp_seconds",
        "sidecar_webhook_ready",
    } <= named
    assert any("histogram_quantile(0.99" in expr for expr in dashboard_expressions())


def test_dashboard_and_alerts_name_only_metrics_the_server_exports(server: RunningServer) -> None:
    exported = exported_metric_names(server.metrics()) | PROMETHEUS_METRICS
    for expression in dashboard_expressions() + rule_expressions():
        assert metrics_named(expression) <= exported, expression
        assert f'job="{JOB}"' in expression, expression


# --- A real Prometheus ----------------------------------------------------------------------------------


def wait_for(what: str, check: Callable[[], T | None], seconds: float = PROMETHEUS_SECONDS) -> T:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(0.2)
    raise AssertionError(f"not within {seconds} s: {what}")


class Prometheus:
    def __init__(self, url: str, process: subprocess.Popen[bytes], log: Path) -> None:
        self.url, self.process, self.log = url, process, log

    def api(self, path: str, **params: str) -> Any:
        if self.process.poll() is not None:
            raise AssertionError(f"prometheus exited with {self.process.returncode}:\n{self.log.read_text()}")
        try:
            response = httpx.get(f"{self.url}/api/v1/{path}", params=params, timeout=5)
        except httpx.TransportError:
            return None
        return response.json()["data"] if response.status_code == 200 else None

    def target_up(self) -> bool:
        data = self.api("targets")
        return bool(data) and any(
            t["labels"]["job"] == JOB and t["health"] == "up" for t in data["activeTargets"]
        )

    def rule_groups(self) -> list[dict[str, Any]]:
        data = self.api("rules")
        return list(data["groups"]) if data else []

    def alert_states(self) -> dict[str, str] | None:
        """Each active alert's state (pending, firing); None when Prometheus did not answer."""
        data = self.api("alerts")
        return {alert["labels"]["alertname"]: alert["state"] for alert in data["alerts"]} if data else None


@pytest.fixture
def prometheus(server: RunningServer, tmp_path: Path) -> Iterator[Prometheus]:
    binary = tool("prometheus")
    rules = write_rules(tmp_path / "rules.yaml")
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(rules)],
        "scrape_configs": [
            {"job_name": JOB, "static_configs": [{"targets": [f"127.0.0.1:{server.metrics_port}"]}]}
        ],
    }
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    log_file = tmp_path / "prometheus.log"
    log = log_file.open("wb")
    process = subprocess.Popen(
        [
            binary,
            f"--config.file={tmp_path / 'prometheus.yml'}",
            f"--storage.tsdb.path={tmp_path / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        yield Prometheus(f"http://127.0.0.1:{port}", process, log_file)
    finally:
        stop_process(process, seconds=20)
        log.close()


def test_a_real_prometheus_scrapes_the_server_and_loads_every_rule(
    server: RunningServer, prometheus: Prometheus
) -> None:
    wait_for("the webhook's target up", prometheus.target_up)
    groups = wait_for("the rule groups loaded", prometheus.rule_groups)
    assert [group["name"] for group in groups] == [group["name"] for group in rule_groups()]
    loaded = {rule["name"]: rule for group in groups for rule in group["rules"]}
    assert set(loaded) == set(alerts())
    # Each rule evaluated at least once, without error.
    wait_for(
        "every rule evaluated",
        lambda: all(r["health"] == "ok" for g in prometheus.rule_groups() for r in g["rules"]),
    )
    (sample,) = wait_for(
        "the server's readiness in Prometheus",
        lambda: (prometheus.api("query", query=f'sidecar_webhook_ready{{job="{JOB}"}}') or {}).get("result"),
    )
    assert sample["value"][1] == "1"
    # Pending from the evaluations before the first scrape (absent), and resolved once the ready replica
    # is seen: a rule that misnamed the metric would stay pending.
    wait_for(
        "SidecarWebhookNoReadyReplica resolved by the ready replica",
        lambda: (
            (states := prometheus.alert_states()) is not None and "SidecarWebhookNoReadyReplica" not in states
        ),
    )


def test_calls_the_server_refuses_turn_the_refusal_alert_pending_in_a_real_prometheus(
    server: RunningServer, prometheus: Prometheus
) -> None:
    wait_for("the webhook's target up", prometheus.target_up)
    query = f'sidecar_webhook_refused_calls_total{{job="{JOB}", status="415"}}'

    def refuse_and_count() -> float | None:
        # A new series' first sample is no increase: refuse, and again once Prometheus has a value.
        with server.client() as client:
            assert (
                client.post("/mutate", content=b"x", headers={"content-type": "text/plain"}).status_code
                == 415
            )
        result = prometheus.api("query", query=query)
        return float(result["result"][0]["value"][1]) if result and result["result"] else None

    wait_for("a refused call in Prometheus", refuse_and_count)
    refuse_and_count()
    state = wait_for(
        "SidecarWebhookCallsRefused pending",
        lambda: (prometheus.alert_states() or {}).get("SidecarWebhookCallsRefused"),
    )
    assert state == "pending"  # for 10 minutes before it fires
