"""`sidecar-webhook check` on a real cluster: everything failing with "install it" before the install, all
passing after it, and the replicas and the dry-run failing, each with what to do, while the webhook is
scaled to zero.

The session installs once for every test (the `installed` fixture); the test of the state before the
install takes the install down, checks, and applies it again (as the upgrade test of test_on_a_node.py
does), so it holds whichever file runs first."""

import json
import os
import subprocess
import sys
from typing import Any

from tests.e2e.cluster import NAMESPACE, ROOT, install, kubectl, wait_for, webhook_pods
from tests.test_check import CHECKS  # the checks in the order check prints them: one list for both suites

INSTALL = "kubectl apply -k deploy/"


def check(test_namespace: str, *args: str) -> tuple[int, dict[str, dict[str, Any]]]:
    """`sidecar-webhook check -o json ARGS` against the cluster of KUBECONFIG (and KUBE_CONTEXT, as
    deploy/install.sh), its dry-run pods in `test_namespace`: its exit status and its results by check."""
    context = os.environ.get("KUBE_CONTEXT")
    done = subprocess.run(
        [sys.executable, "-m", "webhook", "check", "-o", "json", "--test-namespace", test_namespace, *args]
        + (["--context", context] if context else []),
        capture_output=True,
        text=True,
        timeout=180,
        cwd=ROOT,
        check=False,
    )
    print(done.stdout, done.stderr, sep="\n")
    assert "Traceback" not in done.stderr, done.stderr
    results = json.loads(done.stdout)
    assert [r["check"] for r in results] == CHECKS, results
    return done.returncode, {r["check"]: r for r in results}


def statuses(results: dict[str, dict[str, Any]]) -> dict[str, str]:
    return {name: r["status"] for name, r in results.items()}


def test_before_the_install_every_check_fails_and_says_to_install(namespace: str) -> None:
    install("down")
    try:
        wait_for(
            lambda: kubectl("get", "namespace", NAMESPACE, "--ignore-not-found", "-o", "name") == "",
            f"namespace {NAMESPACE} to be gone",
            timeout=180,
        )
        code, results = check(namespace)
        assert code == 1
        assert statuses(results) == dict.fromkeys(CHECKS, "fail")
        assert results["namespace"]["message"] == f"namespace {NAMESPACE} not found"
        for name in (
            "namespace",
            "webhook configuration",
            "replicas",
            "ServiceAccount rights",
            "admission policy",
        ):
            assert INSTALL in results[name]["hint"], results[name]
    finally:
        install("apply")


def passing(namespace: str) -> dict[str, dict[str, Any]] | None:
    """The results when every check passed and the exit status was 0, else None (printed either way)."""
    code, results = check(namespace)
    return results if code == 0 and statuses(results) == dict.fromkeys(CHECKS, "ok") else None


def test_after_the_install_every_check_passes(namespace: str) -> None:
    # The rollout is complete; the Service's endpoints may follow the pods' readiness a moment later.
    results = wait_for(lambda: passing(namespace), "every check to pass (the last results are printed)", 60)
    assert results["replicas"]["message"].startswith("2 of 2 available")
    assert "came back with log-app and sidecar.example/injected" in results["dry-run"]["message"]


def test_with_the_webhook_scaled_to_zero_the_replicas_and_the_dry_run_fail_with_what_to_do(
    namespace: str,
) -> None:
    kubectl("-n", NAMESPACE, "scale", "deploy/sidecar-webhook", "--replicas=0")
    try:
        wait_for(lambda: webhook_pods() == [], "the webhook's pods to be gone", timeout=180)
        code, results = check(namespace)
        assert code == 1
        assert statuses(results) == {**dict.fromkeys(CHECKS, "ok"), "replicas": "fail", "dry-run": "fail"}
        replicas = results["replicas"]
        assert replicas["message"].startswith("0 of 0 available"), replicas
        assert "scaled to zero" in replicas["message"]
        assert replicas["hint"] == f"`kubectl -n {NAMESPACE} scale deploy/sidecar-webhook --replicas=2`"
        dry_run = results["dry-run"]
        assert "the API server could not call the webhook for an annotated pod" in dry_run["message"]
        assert 'failed calling webhook "log-sidecar.sidecar.example"' in dry_run["message"]
        assert dry_run["hint"].startswith("no replica answered: see the replicas check"), dry_run
    finally:
        kubectl("-n", NAMESPACE, "scale", "deploy/sidecar-webhook", "--replicas=2")
        kubectl("-n", NAMESPACE, "rollout", "status", "deploy/sidecar-webhook", "--timeout=180s", timeout=190)
    wait_for(lambda: passing(namespace), "every check to pass again (the last results are printed)", 60)
