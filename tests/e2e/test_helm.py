"""The Helm chart on a real cluster: a kustomize install taken over in place while pods are created; then,
in a namespace of its choosing, `helm install`, `helm test`, `sidecar-webhook check` against the release,
`helm upgrade` while pods are created (none refused, the new values in force after it), and `helm
uninstall` leaving nothing. The tests run in that order, after every other end-to-end test (conftest.py):
the release has the kustomize install's cluster-wide objects, which Helm takes over only when told to."""

import base64
import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.e2e.cluster import MEASURED, NAMESPACE, ROOT, get, install, kubectl, wait_for, webhook_pods
from tests.e2e.test_check import check
from tests.e2e.test_on_a_node import assert_all_injected, create_pods_until, restart_finished

CHART = ROOT / "deploy" / "helm" / "sidecar-webhook"
RELEASE = "sidecar-webhook"
# Not deploy/'s namespace: the chart installs into whichever it is given.
RELEASE_NAMESPACE = "webhooks"
CLUSTER_WIDE = (
    "mutatingwebhookconfigurations,validatingadmissionpolicies,validatingadmissionpolicybindings,"
    "clusterroles,clusterrolebindings"
)


HOW_TO_GET_HELM = "the kit's: export PATH=$(bash ../shared/kube/helm.sh | tail -1):$PATH"


def helm_command(*args: str, namespace: str = RELEASE_NAMESPACE) -> list[str]:
    """A helm call on the release's namespace and KUBE_CONTEXT (as deploy/install.sh)."""
    found = shutil.which("helm")
    if found is None:
        pytest.fail(f"the chart's tests need helm on PATH ({HOW_TO_GET_HELM})")
    context = os.environ.get("KUBE_CONTEXT")
    return [found, *args, "--namespace", namespace, *(["--kube-context", context] if context else [])]


def helm(*args: str, timeout: float = 300, namespace: str = RELEASE_NAMESPACE) -> str:
    done = subprocess.run(
        helm_command(*args, namespace=namespace), capture_output=True, text=True, timeout=timeout, check=False
    )
    print(f"$ helm {' '.join(args)}", done.stdout, done.stderr, sep="\n")
    assert done.returncode == 0, f"helm {' '.join(args)} exited {done.returncode}:\n{done.stderr}"
    return done.stdout


@pytest.fixture(scope="module")
def release(image: None) -> Iterator[str]:
    """deploy/'s install gone (conftest.py runs this module last), then the chart installed with its
    defaults into RELEASE_NAMESPACE. Uninstalled and the namespace deleted at the end, whatever happened."""
    install("down")
    started = time.monotonic()
    try:
        helm("install", RELEASE, str(CHART), "--create-namespace", "--wait", "--timeout", "5m")
        MEASURED["helm install --wait, s"] = time.monotonic() - started
        yield RELEASE_NAMESPACE
    finally:
        if kubectl("get", "namespace", RELEASE_NAMESPACE, "--ignore-not-found", "-o", "name"):
            subprocess.run(helm_command("uninstall", RELEASE, "--wait"), check=False, timeout=300)
            kubectl("delete", "namespace", RELEASE_NAMESPACE, "--ignore-not-found", timeout=300)


@pytest.fixture
def apps(image: None) -> Iterator[str]:
    """A namespace for the test's pods; the suite's `namespace` fixture would install deploy/ first."""
    name = f"e2e-helm-{uuid.uuid4().hex[:5]}"
    kubectl("create", "namespace", name)
    yield name
    kubectl("delete", "namespace", name, "--wait=false")


def dry_run_annotated_pod(namespace: str) -> dict[str, Any]:
    """An annotated pod as the API server would create it now (server-side dry-run)."""
    manifest = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "dry-run", "annotations": {"sidecar.example/log-path": "/var/log/app.log"}},
        "spec": {
            "containers": [{"name": "app", "image": "docker.io/library/busybox:1.37", "command": ["true"]}]
        },
    }
    created: dict[str, Any] = json.loads(
        kubectl(
            "-n", namespace, "create", "--dry-run=server", "-o", "json", "-f", "-", stdin=json.dumps(manifest)
        )
    )
    return created


def the_webhook_as_it_runs(namespace: str) -> dict[str, Any]:
    """What an adoption must not change: the replicas (a restart would be a rollout), the certificates they
    serve and the caBundle that trusts them."""
    return {
        "replicas": sorted(p["metadata"]["uid"] for p in webhook_pods(namespace)),
        "certificates": get("-n", namespace, "secret", "sidecar-webhook-certs")["data"],
        "caBundles": [
            h["clientConfig"]["caBundle"]
            for h in get("mutatingwebhookconfiguration", "sidecar-webhook")["webhooks"]
        ],
    }


def kinds_and_names(manifests: str) -> set[tuple[str, str]]:
    return {(o["kind"], o["metadata"]["name"]) for o in yaml.safe_load_all(manifests) if o}


def test_helm_takes_over_a_kustomize_install_in_place_with_no_pod_refused(apps: str) -> None:
    """The chart README's `helm upgrade --install --take-ownership --force-conflicts` over `kubectl apply -k
    deploy/`, while annotated pods are created: none refused, the same replicas serving the same
    certificates after it, every object but the namespace the release's; `helm uninstall` then removes them
    as for any release."""
    install("apply")
    before = the_webhook_as_it_runs(NAMESPACE)
    adopt = ["upgrade", "--install", RELEASE, str(CHART), "--take-ownership", "--force-conflicts", "--wait"]
    started = time.monotonic()
    with subprocess.Popen(
        helm_command(*adopt, namespace=NAMESPACE), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    ) as adoption:
        created, failures = create_pods_until(lambda: adoption.poll() is not None, apps, "during-adoption-")
        output = adoption.communicate()[0]
    MEASURED["helm taking over the kustomize install, s"] = time.monotonic() - started
    MEASURED["pods created during the takeover"] = created
    assert adoption.returncode == 0, output
    assert failures == []
    assert_all_injected(apps, created)
    assert the_webhook_as_it_runs(NAMESPACE) == before, "no replica restarted, the certificates kept"

    kustomized = kubectl("kustomize", str(ROOT / "deploy"))
    released = helm("get", "manifest", RELEASE, namespace=NAMESPACE)
    assert kinds_and_names(released) == kinds_and_names(kustomized) - {("Namespace", NAMESPACE)}
    for live in json.loads(kubectl("get", "-o", "json", "-f", "-", stdin=released))["items"]:
        assert live["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "Helm", live["metadata"]["name"]
        assert live["metadata"]["annotations"]["meta.helm.sh/release-namespace"] == NAMESPACE

    helm("uninstall", RELEASE, "--wait", "--timeout", "3m", namespace=NAMESPACE)
    assert kubectl("get", CLUSTER_WIDE, "-l", "app.kubernetes.io/name=sidecar-webhook", "-o", "name") == ""
    install("down")  # the namespace, which stays kustomize's


def test_helm_test_passes_an_annotated_dry_run_pod_comes_back_injected(release: str) -> None:
    started = time.monotonic()
    output = helm("test", RELEASE, "--logs", "--timeout", "3m")
    MEASURED["helm test, s"] = time.monotonic() - started
    assert "Phase:          Succeeded" in output or "Phase: Succeeded" in output, output
    assert (
        "[ok]" in output
        and "dry-run: in namespace default, an annotated pod came back with log-app" in output
    )
    # hook-succeeded: the test's pod, account and rights are gone once it passed.
    assert (
        kubectl(
            "get",
            "pods,serviceaccounts",
            "-n",
            release,
            "-l",
            "app.kubernetes.io/component=test",
            "-o",
            "name",
        )
        == ""
    )
    assert (
        kubectl(
            "get", "clusterroles,clusterrolebindings", "-l", "app.kubernetes.io/component=test", "-o", "name"
        )
        == ""
    )


def test_check_passes_every_check_against_the_release(release: str, apps: str) -> None:
    code, results = check(apps, "--namespace", release)
    assert code == 0
    assert [r for r in results.values() if r["status"] != "ok"] == []


def test_helm_upgrade_while_pods_are_created_refuses_none_and_brings_the_new_values(
    release: str, apps: str
) -> None:
    upgrade_values = ["--set", "sidecar.resources.limits.memory=48Mi", "--set", "podAnnotations.upgraded=yes"]
    started = time.monotonic()
    with subprocess.Popen(
        helm_command("upgrade", RELEASE, str(CHART), "--wait", "--timeout", "5m", *upgrade_values),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    ) as upgrade:
        created, failures = create_pods_until(
            lambda: upgrade.poll() is not None and restart_finished(release),
            apps,
            "during-helm-upgrade-",
        )
        output = upgrade.communicate()[0]
    MEASURED["helm upgrade --wait (a rolling restart), s"] = time.monotonic() - started
    MEASURED["pods created during helm upgrade"] = created
    assert upgrade.returncode == 0, output
    assert failures == []
    assert created >= 10, "the loop ran across the upgrade"
    assert_all_injected(apps, created)
    # The webhook's certificates and caBundle survived the upgrade (Helm owns neither's data).
    assert get("-n", release, "secret", "sidecar-webhook-certs")["data"]
    configuration = get("mutatingwebhookconfiguration", "sidecar-webhook")
    assert all(hook["clientConfig"].get("caBundle") for hook in configuration["webhooks"])
    # And the new value is in force: a pod created now gets the sidecar with the upgraded limit.
    (sidecar,) = [c for c in dry_run_annotated_pod(apps)["spec"]["containers"] if c["name"] == "log-app"]
    assert sidecar["resources"]["limits"]["memory"] == "48Mi"


def namespaced_objects(namespace: str) -> list[str]:
    kinds = "all,secrets,configmaps,serviceaccounts,roles,rolebindings,poddisruptionbudgets,resourcequotas"
    return sorted(kubectl("get", kinds, "-n", namespace, "-o", "name").split())


def test_helm_uninstall_leaves_nothing_and_pods_are_no_longer_injected(release: str, apps: str) -> None:
    helm("uninstall", RELEASE, "--wait", "--timeout", "3m")
    assert kubectl("get", CLUSTER_WIDE, "-l", "app.kubernetes.io/name=sidecar-webhook", "-o", "name") == ""
    assert (
        kubectl("get", "mutatingwebhookconfiguration", "sidecar-webhook", "--ignore-not-found", "-o", "name")
        == ""
    )
    # The replicas end after their preStop (the Deployment's garbage collection does not wait for them).
    wait_for(lambda: kubectl("get", "pods", "-n", release, "-o", "name") == "", "the webhook's pods to end")
    # What is left is what Kubernetes keeps in every namespace: the same as in a fresh one.
    assert namespaced_objects(release) == namespaced_objects(apps)
    assert kubectl("get", "secrets", "-n", release, "-l", "owner=helm", "-o", "name") == "", (
        "no release record"
    )
    created = dry_run_annotated_pod(apps)
    assert [c["name"] for c in created["spec"]["containers"]] == ["app"], "nothing intercepts pods any more"


def test_the_secret_mode_serves_your_own_certificate_under_the_ca_bundle_of_the_values(
    release: str, apps: str, tmp_path: Path
) -> None:
    """certificates.mode=secret: a TLS Secret of the user's (here from `certs create`) and its CA as
    certificates.secret.caBundle; the replicas serve it and `helm test` passes. Runs after the uninstall
    above, in the namespace Helm left."""
    certs = tmp_path / "certs"
    cli = Path(sys.executable).with_name("sidecar-webhook")
    subprocess.run(
        [cli, "certs", "create", "--service", "sidecar-webhook", "--namespace", release, "--out", certs],
        check=True,
    )
    kubectl(
        "-n",
        release,
        "create",
        "secret",
        "tls",
        "sidecar-webhook-tls",
        "--cert",
        str(certs / "tls.crt"),
        "--key",
        str(certs / "tls.key"),
    )
    ca_bundle = base64.b64encode((certs / "ca.crt").read_bytes()).decode()
    try:
        helm(
            "install",
            RELEASE,
            str(CHART),
            "--wait",
            "--timeout",
            "5m",
            "--set",
            "certificates.mode=secret",
            "--set",
            f"certificates.secret.caBundle={ca_bundle}",
        )
        for hook in get("mutatingwebhookconfiguration", "sidecar-webhook")["webhooks"]:
            assert hook["clientConfig"]["caBundle"] == ca_bundle
        helm("test", RELEASE, "--logs", "--timeout", "3m")
        (sidecar,) = [c for c in dry_run_annotated_pod(apps)["spec"]["containers"] if c["name"] == "log-app"]
        assert sidecar["image"] == "docker.io/library/busybox:1.37"
        assert "secret/sidecar-webhook-certs" not in kubectl("get", "secrets", "-n", release, "-o", "name")
    finally:
        helm("uninstall", RELEASE, "--wait", "--timeout", "3m")
    # The Secret was the user's, not the release's: it stays.
    assert (
        kubectl("-n", release, "get", "secret", "sidecar-webhook-tls", "-o", "name")
        == "secret/sidecar-webhook-tls\n"
    )
