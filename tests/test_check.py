"""`sidecar-webhook check` against a real kube-apiserver, in the order a cluster lives: before the install
(everything missing), after `kubectl apply -k deploy/` with the Secret and caBundle written by the
webhook's own code as its account (the configuration, certificate, rights and policy pass; with no node,
no replica runs, so the replicas and the dry-run fail, each with what to do), then with a real server in
the cluster mode that the configuration calls by URL (the dry-run passes; the configuration check names
the URL), and with the account given a right deploy/ never grants."""

import asyncio
import base64
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import ExitStack
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.apiserver import ROOT, ControlPlane, control_plane
from tests.server import free_port, start_server, stop_server, wait_until_ready
from webhook import pki
from webhook.app import ServingState
from webhook.cluster import ClusterCertificates
from webhook.metrics import Metrics
from webhook.settings import Settings

NAMESPACE = "sidecar-webhook"
CHECKS = [
    "namespace",
    "webhook configuration",
    "caBundle",
    "certificate expiry",
    "replicas",
    "ServiceAccount rights",
    "admission policy",
    "dry-run",
]


def check(api: ControlPlane, *args: str) -> tuple[int, list[dict[str, str]]]:
    """`sidecar-webhook check -o json` as a user runs it, with the admin's kubeconfig; its exit status and
    its results."""
    done = subprocess.run(
        [sys.executable, "-m", "webhook", "check", "-o", "json", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "KUBECONFIG": str(api.kubeconfig)},
        check=False,
    )
    assert "Traceback" not in done.stderr, done.stderr
    return done.returncode, json.loads(done.stdout)


def by_check(results: list[dict[str, str]]) -> dict[str, dict[str, str]]:
    assert [r["check"] for r in results] == CHECKS
    return {r["check"]: r for r in results}


def statuses(results: list[dict[str, str]]) -> dict[str, str]:
    return {name: r["status"] for name, r in by_check(results).items()}


@pytest.fixture(scope="module")
def api() -> Iterator[ControlPlane]:
    with control_plane() as running:
        yield running


def fill_as_the_webhook(api: ControlPlane, work: Path) -> None:
    """What the first replica does at its start: one look of its own code (ClusterCertificates.check), as
    its ServiceAccount, fills the Secret deploy/ ships empty and writes the caBundle."""
    token = api.kubectl("create", "token", "sidecar-webhook", "-n", NAMESPACE, "--duration", "1h").strip()
    kubeconfig = api.kubeconfig_for(token, work / "webhook-kubeconfig")
    settings = Settings.model_validate({"certificates": "cluster", "cert_dir": work / "served"})
    with pytest.MonkeyPatch.context() as env:
        env.setenv("KUBECONFIG", str(kubeconfig))
        keeper = ClusterCertificates(settings, ServingState(), Metrics())

        async def once() -> None:
            try:
                await keeper.check()
            finally:
                await keeper.client().close()

        asyncio.run(once())


@pytest.fixture(scope="module")
def installed(api: ControlPlane, tmp_path_factory: pytest.TempPathFactory) -> ControlPlane:
    api.kubectl("apply", "-k", str(ROOT / "deploy"))
    fill_as_the_webhook(api, tmp_path_factory.mktemp("check"))
    return api


def test_before_the_install_every_check_fails_and_says_to_install(api: ControlPlane) -> None:
    code, results = check(api)
    assert code == 1
    found = by_check(results)
    assert statuses(results) == {**dict.fromkeys(CHECKS, "fail"), "dry-run": "fail"}
    assert found["namespace"]["message"] == f"namespace {NAMESPACE} not found"
    assert (
        found["webhook configuration"]["message"] == "mutatingwebhookconfiguration sidecar-webhook not found"
    )
    for name in ("namespace", "webhook configuration", "replicas", "ServiceAccount rights"):
        assert "kubectl apply -k deploy/" in found[name]["hint"], found[name]
    assert "came back from the API server without the sidecar log-app" in found["dry-run"]["message"]
    assert "is the webhook configuration installed" in found["dry-run"]["hint"]


def test_after_the_install_only_the_replicas_and_the_dry_run_fail_for_want_of_a_node(
    installed: ControlPlane,
) -> None:
    code, results = check(installed)
    assert code == 1
    assert statuses(results) == {
        **dict.fromkeys(CHECKS, "ok"),
        "replicas": "fail",
        "dry-run": "fail",
    }, results
    found = by_check(results)
    assert found["replicas"]["message"].startswith("0 of 2 available")
    assert "kubectl -n sidecar-webhook logs deploy/sidecar-webhook" in found["replicas"]["hint"]
    assert "the API server could not call the webhook for an annotated pod" in found["dry-run"]["message"]
    assert "no replica answered: see the replicas check" in found["dry-run"]["hint"], found["dry-run"]
    assert "CAN" not in found["ServiceAccount rights"]["message"]
    days = found["certificate expiry"]["message"]
    assert days.startswith("CA 730 days") and "serving certificate 90 days" in days, days


def test_the_text_output_is_one_line_per_check_with_what_to_do_under_each_failure(
    installed: ControlPlane,
) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "webhook", "check"],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "KUBECONFIG": str(installed.kubeconfig)},
        check=False,
    )
    assert done.returncode == 1
    lines = done.stdout.splitlines()
    assert lines[0] == f"[ok]   namespace: namespace {NAMESPACE} exists"
    (replicas,) = [i for i, line in enumerate(lines) if line.startswith("[FAIL] replicas: 0 of 2 available")]
    assert lines[replicas + 1].startswith("         fix: `kubectl -n sidecar-webhook get pods,events`")
    assert lines[-1] == f"2 of {len(CHECKS)} checks failed, 0 warning(s)"


def test_a_webhook_the_api_server_calls_injects_the_dry_run_pod(
    installed: ControlPlane, tmp_path: Path
) -> None:
    # A replica in the cluster mode outside the cluster, as the webhook's account; the configuration
    # calls it by URL, which the configuration check then names as not deploy/'s.
    token = installed.kubectl("create", "token", "sidecar-webhook", "-n", NAMESPACE).strip()
    kubeconfig = installed.kubeconfig_for(token, tmp_path / "webhook-kubeconfig")
    before = installed.kubectl("get", "mutatingwebhookconfiguration", "sidecar-webhook", "-o", "json")
    with ExitStack() as stack:
        server = start_server(
            tmp_path / "certs",
            *("--certificates", "cluster", "--extra-host", "127.0.0.1", "--extra-host", "localhost"),
            env={"KUBECONFIG": str(kubeconfig)},
        )
        stack.callback(stop_server, server)
        url = [{"op": "replace", "path": "/webhooks/0/clientConfig", "value": _url(before, server.port)}]
        installed.kubectl(
            "patch", "mutatingwebhookconfiguration", "sidecar-webhook", "--type=json", "-p", json.dumps(url)
        )
        stack.callback(_restore, installed, before)
        wait_until_ready(server)
        code, results = check(installed)
    found = by_check(results)
    assert found["dry-run"]["status"] == "ok", found["dry-run"]
    assert "came back with log-app and sidecar.example/injected" in found["dry-run"]["message"]
    assert found["webhook configuration"]["status"] == "fail"
    assert f"https://127.0.0.1:{server.port}/mutate" in found["webhook configuration"]["message"]
    assert code == 1


def _url(configuration_json: str, port: int) -> dict[str, Any]:
    hook = json.loads(configuration_json)["webhooks"][0]
    return {"url": f"https://127.0.0.1:{port}/mutate", "caBundle": hook["clientConfig"]["caBundle"]}


def _restore(api: ControlPlane, configuration_json: str) -> None:
    hook = json.loads(configuration_json)["webhooks"][0]
    back = [{"op": "replace", "path": "/webhooks/0/clientConfig", "value": hook["clientConfig"]}]
    api.kubectl(
        "patch", "mutatingwebhookconfiguration", "sidecar-webhook", "--type=json", "-p", json.dumps(back)
    )


def test_a_right_deploy_never_grants_fails_the_rights_check(installed: ControlPlane) -> None:
    installed.kubectl(
        "create", "role", "too-much", "-n", NAMESPACE, "--verb=create,list", "--resource=secrets"
    )
    installed.kubectl(
        *("create", "rolebinding", "too-much", "-n", NAMESPACE, "--role=too-much"),
        f"--serviceaccount={NAMESPACE}:sidecar-webhook",
    )
    try:
        code, results = check(installed)
    finally:
        installed.kubectl("delete", "rolebinding,role", "too-much", "-n", NAMESPACE)
    rights = by_check(results)["ServiceAccount rights"]
    assert code == 1
    assert rights["status"] == "fail"
    assert rights["message"].endswith("CAN create secrets, CAN list secrets"), rights
    assert "something else grants it" in rights["hint"]


def test_a_user_without_rights_gets_a_failed_check_naming_the_verb_and_object_not_a_traceback(
    installed: ControlPlane, tmp_path: Path
) -> None:
    installed.kubectl("create", "serviceaccount", "nobody", "-n", "default")
    token = installed.kubectl("create", "token", "nobody", "-n", "default").strip()
    nobody = ControlPlane(
        installed.state_dir, installed.kubeconfig_for(token, tmp_path / "kc"), installed.kubectl_path
    )
    code, results = check(nobody)
    assert code == 1
    first = by_check(results)["namespace"]
    assert first["message"].startswith(
        f'your user cannot get namespaces: namespaces "{NAMESPACE}" is forbidden'
    )
    assert "kubectl auth can-i get namespaces" in first["hint"]
    configuration = by_check(results)["webhook configuration"]
    assert configuration["message"].startswith("your user cannot get mutatingwebhookconfigurations")


def test_an_api_server_that_does_not_answer_is_one_failed_check(api: ControlPlane, tmp_path: Path) -> None:
    config = api.config
    config["clusters"][0]["cluster"]["server"] = f"https://127.0.0.1:{free_port()}"
    (tmp_path / "kubeconfig").write_text(yaml.safe_dump(config))
    gone = ControlPlane(api.state_dir, tmp_path / "kubeconfig", api.kubectl_path)
    code, results = check(gone)
    assert code == 1
    (only,) = results
    assert only["check"] == "API server"
    assert only["message"].startswith(f"get namespaces {NAMESPACE}: no answer from the API server")
    assert "kubectl cluster-info" in only["hint"]


def test_a_missing_kubeconfig_or_context_is_one_failed_check_saying_what_to_set(
    api: ControlPlane, tmp_path: Path
) -> None:
    missing = ControlPlane(api.state_dir, tmp_path / "nowhere", api.kubectl_path)
    code, results = check(missing)
    assert code == 1
    assert [r["check"] for r in results] == ["API server"]
    assert "set KUBECONFIG" in results[0]["hint"]
    code, results = check(api, "--context", "no-such-context")
    assert code == 1
    assert results[0]["message"].endswith("Context 'no-such-context' not found"), results


def _set_replicas(api: ControlPlane, wanted: int, available: int) -> None:
    """What the controller-manager would do (none runs here): the spec scaled, the status written."""
    api.kubectl("-n", NAMESPACE, "scale", "deploy/sidecar-webhook", f"--replicas={wanted}")
    status = {"status": {"replicas": available, "readyReplicas": available, "availableReplicas": available}}
    api.kubectl(
        *("-n", NAMESPACE, "patch", "deploy/sidecar-webhook", "--subresource=status", "--type=merge"),
        *("-p", json.dumps(status)),
    )


def test_the_webhook_scaled_to_zero_says_how_to_scale_it_back(installed: ControlPlane) -> None:
    _set_replicas(installed, 0, 0)
    try:
        code, results = check(installed)
    finally:
        _set_replicas(installed, 2, 0)
    found = by_check(results)
    assert code == 1
    assert found["replicas"]["message"].startswith("0 of 0 available")
    assert "scaled to zero" in found["replicas"]["message"]
    assert found["replicas"]["hint"] == f"`kubectl -n {NAMESPACE} scale deploy/sidecar-webhook --replicas=2`"
    assert found["dry-run"]["hint"].startswith("no replica answered: see the replicas check")


@pytest.mark.parametrize(("available", "status"), [(2, "ok"), (1, "warn")])
def test_replicas_available_pass_and_fewer_than_wanted_warn(
    installed: ControlPlane, available: int, status: str
) -> None:
    _set_replicas(installed, 2, available)
    try:
        _, results = check(installed)
    finally:
        _set_replicas(installed, 2, 0)
    replicas = by_check(results)["replicas"]
    assert replicas["status"] == status, replicas
    assert replicas["message"].startswith(f"{available} of 2 available")


def _patch_configuration(api: ControlPlane, path: str, value: Any) -> None:
    patch = [{"op": "replace", "path": f"/webhooks/0/{path}", "value": value}]
    api.kubectl(
        "patch", "mutatingwebhookconfiguration", "sidecar-webhook", "--type=json", "-p", json.dumps(patch)
    )


def test_failure_policy_ignore_is_a_warning_saying_what_it_costs(installed: ControlPlane) -> None:
    # deploy/README.md's documented switch: a choice, not a broken install.
    _patch_configuration(installed, "failurePolicy", "Ignore")
    try:
        _, results = check(installed)
    finally:
        _patch_configuration(installed, "failurePolicy", "Fail")
    configuration = by_check(results)["webhook configuration"]
    assert configuration["status"] == "warn", configuration
    assert "failurePolicy is Ignore, deploy/ has Fail" in configuration["message"]
    assert "start without its sidecar" in configuration["hint"]


def test_a_ca_bundle_that_does_not_trust_the_serving_certificate_fails_with_what_to_do(
    installed: ControlPlane,
) -> None:
    before = json.loads(
        installed.kubectl("get", "mutatingwebhookconfiguration", "sidecar-webhook", "-o", "json")
    )
    other = pki.create_ca("someone else's CA", timedelta(days=30)).cert
    _patch_configuration(installed, "clientConfig/caBundle", base64.b64encode(pki.cert_pem(other)).decode())
    try:
        _, results = check(installed)
    finally:
        _patch_configuration(
            installed, "clientConfig/caBundle", before["webhooks"][0]["clientConfig"]["caBundle"]
        )
    ca_bundle = by_check(results)["caBundle"]
    assert ca_bundle["status"] == "fail"
    assert ca_bundle["message"].startswith("the caBundle of log-sidecar.sidecar.example does not trust")
    assert "the replicas write the caBundle within 30 s" in ca_bundle["hint"]


@pytest.mark.parametrize(
    ("test_namespace", "message", "hint"),
    [
        (
            "kube-system",
            "namespace kube-system is never sent to the webhook (its namespaceSelector)",
            "give --test-namespace another",
        ),
        ("no-such-namespace", "namespace no-such-namespace not found", "give --test-namespace an existing"),
    ],
)
def test_a_test_namespace_the_dry_run_cannot_use_is_named(
    installed: ControlPlane, test_namespace: str, message: str, hint: str
) -> None:
    _, results = check(installed, "--test-namespace", test_namespace)
    dry_run = by_check(results)["dry-run"]
    assert (dry_run["status"], dry_run["message"]) == ("fail", message), dry_run
    assert dry_run["hint"].startswith(hint)


def test_only_runs_the_named_checks_in_their_order_and_an_unknown_name_is_refused(
    installed: ControlPlane,
) -> None:
    code, results = check(installed, "--only", "replicas", "--only", "namespace")
    assert [r["check"] for r in results] == ["namespace", "replicas"]
    assert code == 1 and results[1]["status"] == "fail"  # no node, so no replica
    code, results = check(installed, "--only", "namespace")
    assert code == 0 and [(r["check"], r["status"]) for r in results] == [("namespace", "ok")]
    done = subprocess.run(
        [sys.executable, "-m", "webhook", "check", "--only", "dryrun"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    assert done.stderr.strip() == (
        "sidecar-webhook check: no check named dryrun; --only takes namespace, webhook-configuration, "
        "cabundle, certificate-expiry, replicas, serviceaccount-rights, admission-policy, dry-run"
    )
