"""The Helm chart (deploy/helm/sidecar-webhook): `helm lint`, its values schema refusing typos, and what
`helm template` renders: valid for Kubernetes, and for the defaults the same objects as `kubectl kustomize
deploy/` (each certificate mode, the NetworkPolicy and the monitoring against their kustomize overlay).
On a real node, tests/e2e/test_helm.py installs, tests, upgrades and uninstalls it."""

from __future__ import annotations

import copy
import functools
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from tests.test_deploy import DEPLOY, KUBERNETES_VERSIONS, NAMESPACE, kustomized
from webhook import check
from webhook.settings import Settings

CHART = DEPLOY / "helm" / "sidecar-webhook"
RELEASE = "sidecar-webhook"
# Labels Helm's conventions add to every object; deploy/'s own two are the same in both.
HELM_LABELS = {
    "helm.sh/chart",
    "app.kubernetes.io/instance",
    "app.kubernetes.io/managed-by",
    "app.kubernetes.io/version",
}
# Kinds of CRDs (the Prometheus Operator's, cert-manager's) the Kubernetes schema does not hold.
CUSTOM_KINDS = {"PodMonitor", "ServiceMonitor", "PrometheusRule", "Certificate", "Issuer"}
EVERYTHING_ON = (
    "metrics.podMonitor.enabled=true",
    "metrics.serviceMonitor.enabled=true",
    "alerts.enabled=true",
    "dashboard.enabled=true",
    "networkPolicy.enabled=true",
)
CA_BUNDLE = "LS0tLS1CRUdJTiBDRVJUSUZJQ0FURS0tLS0tCg=="


@functools.cache
def helm() -> str:
    """The helm of PATH; skip saying how to get one."""
    found = shutil.which("helm")
    if found is None:
        pytest.skip(
            "helm (v3.8 or newer) is needed to test the chart: put it on PATH, or "
            "export PATH=$(bash ../shared/kube/helm.sh | tail -1):$PATH with the kit"
        )
    return found


def run_helm(*args: str) -> subprocess.CompletedProcess[str]:
    # HELM_* paths in a temporary home: no user's repositories or plugins change what the chart renders.
    env = {
        **os.environ,
        "HELM_CACHE_HOME": "/tmp/helm-test/cache",
        "HELM_CONFIG_HOME": "/tmp/helm-test/config",
    }
    return subprocess.run([helm(), *args], capture_output=True, text=True, check=False, timeout=60, env=env)


@functools.cache
def template(*values: str, namespace: str = NAMESPACE) -> dict[str, dict[str, Any]]:
    """`helm template` with --set VALUES, by kind/name; the test hooks are under their own kinds too."""
    sets = [arg for value in values for arg in ("--set", value)]
    done = run_helm("template", RELEASE, str(CHART), "--namespace", namespace, *sets)
    assert done.returncode == 0, done.stderr
    return {f"{d['kind']}/{d['metadata']['name']}": d for d in yaml.safe_load_all(done.stdout) if d}


def installed_objects(objects: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """What `helm install` applies: the objects without the `helm test` hooks."""
    return {
        key: obj
        for key, obj in objects.items()
        if "helm.sh/hook" not in (obj["metadata"].get("annotations") or {})
    }


def hooks(objects: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {key: obj for key, obj in objects.items() if key not in installed_objects(objects)}


def in_substance(objects: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The objects without Helm's labels, and without a namespace on cluster-scoped objects (kustomize
    gives one to the admission policy, which it does not know as cluster-scoped; the API server ignores
    it). The Namespace object is left out: Helm installs into a namespace it is given, never one of its
    own (README of the chart: label it for Pod Security as deploy/ does)."""
    result = {}
    for key, obj in objects.items():
        if obj["kind"] == "Namespace":
            continue
        obj = copy.deepcopy(obj)
        labels = obj["metadata"].get("labels") or {}
        for label in HELM_LABELS:
            labels.pop(label, None)
        if obj["kind"].startswith("ValidatingAdmissionPolicy"):
            obj["metadata"].pop("namespace", None)
        result[key] = obj
    return result


def differences(
    helm_objects: dict[str, dict[str, Any]], kustomize_objects: dict[str, dict[str, Any]]
) -> list[str]:
    ours, theirs = in_substance(installed_objects(helm_objects)), in_substance(kustomize_objects)
    found = [f"only helm: {key}" for key in sorted(set(ours) - set(theirs))]
    found += [f"only kustomize: {key}" for key in sorted(set(theirs) - set(ours))]
    found += [
        f"{key} differs:\n{yaml.safe_dump(ours[key])}\nkustomize:\n{yaml.safe_dump(theirs[key])}"
        for key in sorted(set(ours) & set(theirs))
        if ours[key] != theirs[key]
    ]
    return found


# --- helm lint and the values schema ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "values",
    [
        (),
        EVERYTHING_ON,
        ("certificates.mode=cert-manager",),
        ("certificates.mode=secret", f"certificates.secret.caBundle={CA_BUNDLE}"),
    ],
    ids=["defaults", "everything-on", "cert-manager", "secret"],
)
def test_helm_lint_passes_strict(values: tuple[str, ...]) -> None:
    done = run_helm("lint", "--strict", str(CHART), *[arg for value in values for arg in ("--set", value)])
    assert done.returncode == 0, done.stdout + done.stderr
    assert "0 chart(s) failed" in done.stdout


@pytest.mark.parametrize(
    ("value", "named"),
    [
        ("replica=3", "additional properties 'replica' not allowed"),
        ("webhook.failurePolicy=ignore", "/webhook/failurePolicy"),
        ("sidecar.resources.requests.cpu=100mm", "/sidecar/resources/requests/cpu"),
        ("certificates.mode=secret", "/certificates/secret/caBundle"),
        ("certificates.mode=vault", "/certificates/mode"),
        ("image.digest=sha256:abc", "/image/digest"),
        ("metrics.port=8443", "/metrics/port"),
        ("resources.limit.cpu=1", "additional properties 'limit' not allowed"),
        ("test.namespace=Not_A_Namespace", "/test/namespace"),
    ],
)
def test_a_value_the_schema_refuses_fails_the_install_naming_the_value(value: str, named: str) -> None:
    done = run_helm("template", RELEASE, str(CHART), "--namespace", NAMESPACE, "--set", value)
    assert done.returncode != 0
    assert "values don't meet the specifications of the schema" in done.stderr, done.stderr
    assert named in done.stderr, done.stderr


# --- what the defaults install: deploy/'s objects ---------------------------------------------------------


def test_the_defaults_render_what_kubectl_kustomize_deploy_renders() -> None:
    assert differences(template(), kustomized(DEPLOY)) == []


def test_the_file_mode_with_your_own_secret_is_the_bring_your_own_certs_overlay_with_its_ca_bundle() -> None:
    objects = template("certificates.mode=secret", f"certificates.secret.caBundle={CA_BUNDLE}")
    for hook in objects["MutatingWebhookConfiguration/sidecar-webhook"]["webhooks"]:
        assert hook["clientConfig"].pop("caBundle") == CA_BUNDLE
    assert differences(objects, kustomized(DEPLOY / "overlays" / "bring-your-own-certs")) == []


@pytest.mark.parametrize(
    ("value", "overlay"),
    [("certificates.mode=cert-manager", "cert-manager"), ("networkPolicy.enabled=true", "network-policy")],
)
def test_a_value_renders_what_its_kustomize_overlay_does(value: str, overlay: str) -> None:
    assert differences(template(value), kustomized(DEPLOY / "overlays" / overlay)) == []


def test_the_cert_manager_mode_with_an_issuer_of_yours_makes_no_ca_and_issues_from_yours() -> None:
    objects = installed_objects(
        template(
            "certificates.mode=cert-manager",
            "certificates.certManager.issuerRef.name=corporate",
            "certificates.certManager.issuerRef.kind=ClusterIssuer",
        )
    )
    assert not [key for key in objects if key.startswith("Issuer/")]
    assert objects["Certificate/sidecar-webhook-tls"]["spec"]["issuerRef"] == {
        "name": "corporate",
        "kind": "ClusterIssuer",
    }


def test_the_pod_monitor_alerts_and_dashboard_are_deploy_monitoring() -> None:
    objects = template("metrics.podMonitor.enabled=true", "alerts.enabled=true", "dashboard.enabled=true")
    monitoring = {key: obj for key, obj in objects.items() if key not in template()}
    assert differences(monitoring, kustomized(DEPLOY / "monitoring")) == []


def test_the_service_monitor_scrapes_the_metrics_port_by_a_service_of_its_own_as_job_sidecar_webhook() -> (
    None
):
    objects = template("metrics.serviceMonitor.enabled=true", "metrics.port=9100")
    service, monitor = objects["Service/sidecar-webhook-metrics"], objects["ServiceMonitor/sidecar-webhook"]
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    (endpoint,) = monitor["spec"]["endpoints"]
    (port,) = service["spec"]["ports"]
    assert endpoint["port"] == port["name"] == port["targetPort"] == "metrics" and port["port"] == 9100
    assert {"action": "replace", "targetLabel": "job", "replacement": "sidecar-webhook"} in endpoint[
        "relabelings"
    ]
    pods = objects["Deployment/sidecar-webhook"]["spec"]["template"]
    assert service["spec"]["selector"].items() <= pods["metadata"]["labels"].items()
    (container,) = pods["spec"]["containers"]
    assert {"name": "metrics", "containerPort": 9100, "protocol": "TCP"} in container["ports"]
    assert {"name": "SIDECAR_WEBHOOK_METRICS_PORT", "value": "9100"} in container["env"]


@pytest.mark.parametrize(
    "values",
    [(), EVERYTHING_ON, ("certificates.mode=cert-manager",)],
    ids=["defaults", "everything-on", "cert-manager"],
)
@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_every_rendered_object_is_valid_for_kubernetes(values: tuple[str, ...], version: str) -> None:
    for key, obj in template(*values).items():
        if obj["kind"] not in CUSTOM_KINDS:
            assert kubernetes_validate.validate(obj, version, strict=True) == version, key


# --- what the values change -------------------------------------------------------------------------------


def webhook_env(objects: dict[str, dict[str, Any]]) -> dict[str, str]:
    (container,) = objects["Deployment/sidecar-webhook"]["spec"]["template"]["spec"]["containers"]
    return {e["name"]: e["value"] for e in container["env"] if "value" in e}


def test_the_sidecar_values_reach_the_server_as_the_settings_they_name() -> None:
    objects = template(
        "sidecar.image=registry.example/busybox:1.37",
        "sidecar.resources.requests.cpu=10m",
        "sidecar.resources.requests.memory=16Mi",
        "sidecar.resources.limits.cpu=100m",
        "sidecar.resources.limits.memory=64Mi",
        "sidecar.maxima.cpu=2",
        "sidecar.maxima.memory=1Gi",
        "sidecar.logVolumeSize=1Gi",
        "sidecar.logVolumeSizeMax=20Gi",
        "logLevel=debug",
    )
    env = webhook_env(objects)
    settings = Settings.model_validate(
        {name.removeprefix("SIDECAR_WEBHOOK_").lower(): value for name, value in env.items()}
    )
    assert (settings.sidecar_image, settings.sidecar_cpu_request, settings.sidecar_memory_request) == (
        "registry.example/busybox:1.37",
        "10m",
        "16Mi",
    )
    assert (settings.sidecar_cpu_limit, settings.sidecar_memory_limit) == ("100m", "64Mi")
    assert (settings.sidecar_cpu_max, settings.sidecar_memory_max) == ("2", "1Gi")
    assert (settings.log_volume_size, settings.log_volume_size_max, settings.log_level) == (
        "1Gi",
        "20Gi",
        "debug",
    )


def test_empty_sidecar_values_leave_the_servers_defaults() -> None:
    env = webhook_env(template())
    assert not [
        name for name in env if "CPU" in name or "MEMORY" in name or "VOLUME" in name or "LEVEL" in name
    ]


def test_image_replicas_resources_and_scheduling_values_reach_the_deployment() -> None:
    objects = template(
        "image.repository=registry.example/sidecar-webhook",
        "image.digest=sha256:" + "a" * 64,
        "replicas=3",
        "resources.limits.memory=512Mi",
        "priorityClassName=platform-critical",
        "nodeSelector.pool=system",
        "imagePullSecrets[0].name=registry",
    )
    deployment = objects["Deployment/sidecar-webhook"]
    spec = deployment["spec"]["template"]["spec"]
    (container,) = spec["containers"]
    assert container["image"] == "registry.example/sidecar-webhook@sha256:" + "a" * 64
    assert deployment["spec"]["replicas"] == 3
    assert container["resources"]["limits"] == {"cpu": "1", "memory": "512Mi"}
    assert spec["priorityClassName"] == "platform-critical" and spec["nodeSelector"] == {"pool": "system"}
    assert spec["imagePullSecrets"] == [{"name": "registry"}]
    quota = objects["ResourceQuota/sidecar-webhook"]["spec"]["scopeSelector"]["matchExpressions"]
    assert quota == [{"scopeName": "PriorityClass", "operator": "In", "values": ["platform-critical"]}]
    assert "ResourceQuota/sidecar-webhook" not in template("priorityClassName=")


def configuration(objects: dict[str, dict[str, Any]]) -> dict[str, Any]:
    found: dict[str, Any] = objects["MutatingWebhookConfiguration/sidecar-webhook"]
    return found


def test_failure_policy_and_the_warning_webhook_follow_the_values_and_check_warns_of_each() -> None:
    found = configuration(template("webhook.failurePolicy=Ignore", "webhook.warnings=false"))
    (mutating,) = found["webhooks"]
    assert mutating["failurePolicy"] == "Ignore"
    result = check.compare_configuration(found, NAMESPACE)
    assert result.status == "warn"
    assert result.message == (
        "webhook slips.sidecar.example is not installed; log-sidecar.sidecar.example: failurePolicy is "
        "Ignore, deploy/ has Fail"
    )
    assert "webhook.warnings=true" in result.hint and "apply deploy/ again for Fail" in result.hint


def test_a_narrower_namespace_selector_keeps_every_exclusion_and_check_accepts_it() -> None:
    objects = template(
        "webhook.namespaceSelector.matchLabels.sidecar-injection=enabled",
        "webhook.excludedNamespaces={kube-system,kube-public,kube-node-lease,tenant-a}",
        namespace="platform",
    )
    for hook in configuration(objects)["webhooks"]:
        selector = hook["namespaceSelector"]
        assert selector["matchLabels"] == {"sidecar-injection": "enabled"}
        (expression,) = selector["matchExpressions"]
        assert expression["values"] == [
            "kube-system",
            "kube-public",
            "kube-node-lease",
            "tenant-a",
            "platform",
        ]
    assert check.compare_configuration(configuration(objects), "platform").status == "ok"


def test_check_accepts_the_charts_configuration_in_any_namespace_and_refuses_a_wider_selector() -> None:
    objects = template(namespace="platform")
    assert check.compare_configuration(configuration(objects), "platform").status == "ok"
    wider = copy.deepcopy(configuration(objects))
    wider["webhooks"][0]["namespaceSelector"]["matchExpressions"][0]["values"].remove("platform")
    result = check.compare_configuration(wider, "platform")
    assert result.status == "fail"
    assert (
        "does not keep out namespaces kube-node-lease, kube-public, kube-system, platform" in result.message
    )


def test_the_release_namespace_is_the_install_namespace_throughout() -> None:
    for key, obj in installed_objects(template(namespace="platform")).items():
        assert obj["metadata"].get("namespace") in (None, "platform"), key
    for subject in template(namespace="platform")["ClusterRoleBinding/sidecar-webhook"]["subjects"]:
        assert subject["namespace"] == "platform"


# --- helm test --------------------------------------------------------------------------------------------


def test_helm_test_runs_the_dry_run_check_with_rights_to_nothing_else() -> None:
    objects = hooks(template("test.namespace=apps"))
    pod = objects["Pod/sidecar-webhook-test"]
    (container,) = pod["spec"]["containers"]
    assert container["image"] == "sidecar-webhook:dev"
    assert container["args"] == [
        "check",
        "--only",
        "dry-run",
        "--namespace",
        NAMESPACE,
        "--test-namespace",
        "apps",
    ]
    assert objects["ClusterRole/sidecar-webhook-test"]["rules"] == [
        {"apiGroups": [""], "resources": ["namespaces"], "resourceNames": ["apps"], "verbs": ["get"]}
    ]
    role = objects["Role/sidecar-webhook-test"]
    assert role["metadata"]["namespace"] == "apps"
    assert role["rules"] == [{"apiGroups": [""], "resources": ["pods"], "verbs": ["create"]}]
    for key, obj in objects.items():
        annotations = obj["metadata"]["annotations"]
        assert annotations["helm.sh/hook"] == "test", key
        assert annotations["helm.sh/hook-delete-policy"] == "before-hook-creation,hook-succeeded", key


def test_the_chart_links_deploys_policy_alerts_and_dashboard_rather_than_copying_them() -> None:
    for name, target in (
        ("validatingadmissionpolicy.yaml", DEPLOY / "base" / "validatingadmissionpolicy.yaml"),
        ("prometheusrule.yaml", DEPLOY / "monitoring" / "prometheusrule.yaml"),
        ("dashboard.json", DEPLOY / "monitoring" / "dashboard.json"),
    ):
        link = CHART / "files" / name
        assert link.is_symlink() and link.resolve() == target.resolve(), name
    assert Path(CHART / "values.schema.json").is_file()
