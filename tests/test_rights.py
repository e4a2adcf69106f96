"""What the webhook's ServiceAccount may do, against a real kube-apiserver with deploy/ applied: every
harmful change to its webhook configuration refused by the ValidatingAdmissionPolicy, the caBundle
written as webhook/cluster.py writes it, no Secret created, and a caBundle holding only its own CAs.

One control plane for the module, with `kubectl apply -k deploy/` as a user runs it (pods are only
stored: no node runs them). The account acts with a token from TokenRequest (`kubectl create token`), as
a replica does, through kubectl and through the webhook's own code (ClusterCertificates.check, one look
of a replica); the admin only sets up and reads back."""

import asyncio
import base64
import json
import logging
import subprocess
import time
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from lightkube.resources.admissionregistration_v1 import MutatingWebhookConfiguration

from tests.apiserver import ROOT, ControlPlane, control_plane
from webhook import cluster_certs, pki
from webhook.app import ServingState
from webhook.cluster import ApiUnavailable, ClusterCertificates
from webhook.metrics import Metrics
from webhook.settings import Settings

NAMESPACE = "sidecar-webhook"
ACCOUNT = f"system:serviceaccount:{NAMESPACE}:sidecar-webhook"
SECRET = "sidecar-webhook-certs"
CONFIGURATION = "sidecar-webhook"
CONFIGURATION_PATH = f"/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations/{CONFIGURATION}"
SECRET_PATH = f"/api/v1/namespaces/{NAMESPACE}/secrets/{SECRET}"
# What the policy's messages say for each part of the configuration (validatingadmissionpolicy.yaml).
SENT = "not what the API server sends it"
CALLED_WHERE = "not where the API server calls it"
CALLED_HOW = "not how the API server calls it"
WEBHOOKS = "not add, remove or rename webhooks"
METADATA = "not its labels, annotations, finalizers or owners"
# The API server loads a new policy in about a second; a busy machine may take longer.
GUARD_SECONDS = 30


@dataclass
class Install:
    api: ControlPlane
    webhook_kubeconfig: Path
    work: Path

    def as_webhook(self, *args: str, input: str | None = None) -> subprocess.CompletedProcess[str]:
        """kubectl as the webhook's ServiceAccount (its token, not impersonation)."""
        return subprocess.run(
            [str(self.api.kubectl_path), "--kubeconfig", str(self.webhook_kubeconfig), *args],
            input=input,
            capture_output=True,
            text=True,
            timeout=60,
        )

    def wait_until_guarded(self) -> None:
        """Until the API server enforces the policy of deploy/ (below)."""
        patch = [{"op": "replace", "path": "/webhooks/0/failurePolicy", "value": "Ignore"}]
        self.wait_until_refused(patch, "sidecar-webhook")

    def wait_until_refused(self, patch: list[dict[str, Any]], policy: str) -> None:
        """Until `policy` refuses `patch` by the account (tried as a server dry run): the API server loads
        a new policy within about a second (its policy source refreshes them), and until then the
        account's patches are not checked."""
        deadline = time.monotonic() + GUARD_SECONDS
        while True:
            result = self.as_webhook(
                *("patch", "mutatingwebhookconfiguration", CONFIGURATION),
                *("--dry-run=server", "--type=json", "-p", json.dumps(patch)),
            )
            if result.returncode != 0:
                assert f"ValidatingAdmissionPolicy '{policy}'" in result.stderr, result.stderr
                return
            assert time.monotonic() < deadline, (
                f"the policy {policy} is not enforced within {GUARD_SECONDS} s"
            )
            time.sleep(0.1)

    def configuration(self) -> dict[str, Any]:
        with self.api.client() as client:
            response = client.get(CONFIGURATION_PATH)
        response.raise_for_status()
        found: dict[str, Any] = response.json()
        return found

    def secret(self) -> dict[str, Any]:
        with self.api.client() as client:
            response = client.get(SECRET_PATH)
        response.raise_for_status()
        found: dict[str, Any] = response.json()
        return found

    def bundles(self) -> list[list[x509.Certificate]]:
        return [
            cluster_certs.parse_bundle(hook["clientConfig"].get("caBundle"))
            for hook in self.configuration()["webhooks"]
        ]

    def bundle(self) -> list[x509.Certificate]:
        """The caBundle of the configuration, the same in each of its webhooks (/mutate's and /warn's)."""
        first, *others = self.bundles()
        assert len(others) == 1 and all(other == first for other in others), self.bundles()
        return first

    def material(self) -> cluster_certs.Material:
        material = cluster_certs.decode(self.secret().get("data") or {})
        assert material is not None, "the Secret holds no certificates"
        return material

    def settings(self) -> Settings:
        return Settings.model_validate({"certificates": "cluster", "cert_dir": self.work / "served"})

    def look(self, keeper_class: type[ClusterCertificates] = ClusterCertificates) -> bool:
        """One look of a replica (ClusterCertificates.check) as the webhook's account; whether it changed
        anything."""
        keeper = keeper_class(self.settings(), ServingState(), Metrics())

        async def once() -> bool:
            try:
                return await keeper.check()
            finally:
                await keeper.client().close()

        return asyncio.run(once())


@pytest.fixture(scope="module")
def install(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Install]:
    work = tmp_path_factory.mktemp("rights")
    with ExitStack() as stack:
        api = stack.enter_context(control_plane())
        api.kubectl("apply", "-k", str(ROOT / "deploy"))
        token = api.kubectl("create", "token", "sidecar-webhook", "-n", NAMESPACE, "--duration", "1h").strip()
        kubeconfig = api.kubeconfig_for(token, work / "webhook-kubeconfig")
        # lightkube's KubeConfig.from_env, in the keeper of Install.look, reads KUBECONFIG.
        monkeypatch = stack.enter_context(pytest.MonkeyPatch.context())
        monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
        installed = Install(api, kubeconfig, work)
        installed.wait_until_guarded()
        yield installed


# --- What the webhook does: fill the Secret deploy/ ships, write the caBundle through the guard ----------


def test_the_first_look_fills_the_empty_secret_and_writes_the_ca_bundle_as_the_account(
    install: Install, caplog: pytest.LogCaptureFixture
) -> None:
    assert not install.secret().get("data"), "deploy/ ships the Secret empty"
    assert install.bundle() == []
    with caplog.at_level(logging.INFO, logger="sidecar_webhook.certificates"):
        assert install.look() is True
    assert f"secret {NAMESPACE}/{SECRET} is empty: the first start" in caplog.text
    material = install.material()
    # Written by server-side apply as the account, with the policy in force: allowed.
    assert install.bundle() == [material.ca.cert]
    managers = {entry["manager"] for entry in install.configuration()["metadata"]["managedFields"]}
    assert "sidecar-webhook" in managers
    assert install.look() is False, "a second look finds nothing to do"


def test_the_ca_bundle_alone_may_be_patched_by_the_account(install: Install) -> None:
    (ca,) = install.bundle()
    pem = base64.b64encode(pki.cert_pem(ca)).decode()
    patch = [{"op": "replace", "path": "/webhooks/0/clientConfig/caBundle", "value": pem}]
    result = install.as_webhook(
        "patch", "mutatingwebhookconfiguration", CONFIGURATION, "--type=json", "-p", json.dumps(patch)
    )
    assert result.returncode == 0, result.stderr


# --- What the account may not do with its webhook configuration ------------------------------------------

RULE = {"operations": ["CREATE"], "apiGroups": [""], "apiVersions": ["v1"], "scope": "Namespaced"}
HARMFUL_PATCHES: list[tuple[str, list[dict[str, Any]], str]] = [
    (
        "rules to secrets",
        [{"op": "replace", "path": "/webhooks/0/rules", "value": [{**RULE, "resources": ["secrets"]}]}],
        SENT,
    ),
    (
        "rules to pod updates",
        [{"op": "replace", "path": "/webhooks/0/rules/0/operations", "value": ["CREATE", "UPDATE"]}],
        SENT,
    ),
    (
        "rules to rolebindings",
        [
            {
                "op": "add",
                "path": "/webhooks/0/rules/-",
                "value": {**RULE, "apiGroups": ["rbac.authorization.k8s.io"], "resources": ["rolebindings"]},
            }
        ],
        SENT,
    ),
    (
        "an empty namespaceSelector",
        [{"op": "replace", "path": "/webhooks/0/namespaceSelector", "value": {}}],
        SENT,
    ),
    ("matchConditions removed", [{"op": "remove", "path": "/webhooks/0/matchConditions"}], SENT),
    (
        "an objectSelector",
        [{"op": "replace", "path": "/webhooks/0/objectSelector", "value": {"matchLabels": {"a": "b"}}}],
        SENT,
    ),
    (
        "clientConfig.url elsewhere",
        [
            {"op": "remove", "path": "/webhooks/0/clientConfig/service"},
            {"op": "add", "path": "/webhooks/0/clientConfig/url", "value": "https://attacker.example/mutate"},
        ],
        CALLED_WHERE,
    ),
    (
        "the service changed",
        [{"op": "replace", "path": "/webhooks/0/clientConfig/service/namespace", "value": "tenant"}],
        CALLED_WHERE,
    ),
    (
        "failurePolicy Ignore",
        [{"op": "replace", "path": "/webhooks/0/failurePolicy", "value": "Ignore"}],
        CALLED_HOW,
    ),
    ("a longer timeout", [{"op": "replace", "path": "/webhooks/0/timeoutSeconds", "value": 30}], CALLED_HOW),
    ("a second webhook", [{"op": "add", "path": "/webhooks/-", "value": "SECOND"}], WEBHOOKS),
    # The warning webhook (/warn) is guarded alike: sent more, or made to block what it only warns of.
    (
        "the warning webhook's rules to secrets",
        [{"op": "add", "path": "/webhooks/1/rules/-", "value": {**RULE, "resources": ["secrets"]}}],
        SENT,
    ),
    (
        "the warning webhook's matchConditions removed",
        [{"op": "remove", "path": "/webhooks/1/matchConditions"}],
        SENT,
    ),
    (
        "the warning webhook's failurePolicy Fail",
        [{"op": "replace", "path": "/webhooks/1/failurePolicy", "value": "Fail"}],
        CALLED_HOW,
    ),
    (
        "cert-manager's CA injection asked for",
        [
            {
                "op": "add",
                "path": "/metadata/annotations/cert-manager.io~1inject-ca-from",
                "value": "tenant/attacker",
            }
        ],
        METADATA,
    ),
    (
        "an owner that does not exist (the garbage collector would delete the configuration)",
        [
            {
                "op": "add",
                "path": "/metadata/ownerReferences",
                "value": [{"apiVersion": "v1", "kind": "Namespace", "name": "gone", "uid": "0" * 8}],
            }
        ],
        METADATA,
    ),
]


def _second_webhook(configuration: dict[str, Any]) -> dict[str, Any]:
    hook = dict(configuration["webhooks"][0])
    return {**hook, "name": "secrets.attacker.example", "rules": [{**RULE, "resources": ["secrets"]}]}


def _guarded_parts(configuration: dict[str, Any]) -> dict[str, Any]:
    """What the policy keeps: everything but the caBundle and what the API server maintains."""
    metadata = {
        key: configuration["metadata"].get(key) for key in ("labels", "annotations", "ownerReferences")
    }
    hooks = [
        {**hook, "clientConfig": {k: v for k, v in hook["clientConfig"].items() if k != "caBundle"}}
        for hook in configuration["webhooks"]
    ]
    return {"metadata": metadata, "webhooks": hooks}


@pytest.mark.parametrize(
    ("patch", "message"),
    [(patch, message) for _, patch, message in HARMFUL_PATCHES],
    ids=[name for name, _, _ in HARMFUL_PATCHES],
)
def test_a_harmful_patch_by_the_account_is_denied_and_changes_nothing(
    install: Install, patch: list[dict[str, Any]], message: str
) -> None:
    before = install.configuration()
    patch = [{**op, "value": _second_webhook(before)} if op.get("value") == "SECOND" else op for op in patch]
    # Applied for real, not as a dry run: had the policy let it through, the configuration would show it.
    result = install.as_webhook(
        "patch", "mutatingwebhookconfiguration", CONFIGURATION, "--type=json", "-p", json.dumps(patch)
    )
    assert result.returncode != 0
    denied = "ValidatingAdmissionPolicy 'sidecar-webhook' with binding 'sidecar-webhook' denied request"
    assert denied in result.stderr
    assert message in result.stderr, result.stderr
    assert _guarded_parts(install.configuration()) == _guarded_parts(before)


def test_a_server_side_apply_that_carries_more_than_the_ca_bundle_is_denied(install: Install) -> None:
    # The webhook's own way of writing (webhook/cluster.py), with a rule slipped in.
    before = install.configuration()
    body = {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "MutatingWebhookConfiguration",
        "metadata": {"name": CONFIGURATION},
        "webhooks": [
            {
                "name": before["webhooks"][0]["name"],
                "clientConfig": {"caBundle": before["webhooks"][0]["clientConfig"]["caBundle"]},
                "rules": [{**RULE, "resources": ["secrets"]}],
            }
        ],
    }
    result = install.as_webhook(
        *("apply", "--server-side", "--force-conflicts", "--field-manager", "sidecar-webhook", "-f", "-"),
        input=json.dumps(body),
    )
    assert result.returncode != 0
    assert SENT in result.stderr, result.stderr
    assert _guarded_parts(install.configuration()) == _guarded_parts(before)


def test_the_account_cannot_delete_its_webhook_configuration(install: Install) -> None:
    result = install.as_webhook("delete", "mutatingwebhookconfiguration", CONFIGURATION)
    assert result.returncode != 0
    assert "cannot delete resource" in result.stderr, result.stderr


def test_the_guard_holds_only_the_account_a_cluster_admin_still_changes_the_configuration(
    install: Install,
) -> None:
    # deploy/README.md's way to switch to Ignore, by an admin: allowed, then undone.
    for policy in ("Ignore", "Fail"):
        patch = [{"op": "replace", "path": "/webhooks/0/failurePolicy", "value": policy}]
        install.api.kubectl(
            "patch", "mutatingwebhookconfiguration", CONFIGURATION, "--type=json", "-p", json.dumps(patch)
        )
        assert install.configuration()["webhooks"][0]["failurePolicy"] == policy


# --- What the account may not do otherwise ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("verb", "resource", "allowed"),
    [
        ("get", f"secrets/{SECRET}", "yes"),
        ("update", f"secrets/{SECRET}", "yes"),
        ("create", "secrets", "no"),
        ("list", "secrets", "no"),
        ("delete", f"secrets/{SECRET}", "no"),
        ("patch", f"mutatingwebhookconfigurations/{CONFIGURATION}", "yes"),
        ("delete", f"mutatingwebhookconfigurations/{CONFIGURATION}", "no"),
        ("patch", "mutatingwebhookconfigurations/another", "no"),
        ("delete", "validatingadmissionpolicies/sidecar-webhook", "no"),
        ("patch", "validatingadmissionpolicies/sidecar-webhook", "no"),
        ("delete", "validatingadmissionpolicybindings/sidecar-webhook", "no"),
        ("patch", "validatingadmissionpolicybindings/sidecar-webhook", "no"),
        ("create", "rolebindings", "no"),
        ("create", "serviceaccounts/token", "no"),
    ],
)
def test_kubectl_auth_can_i_as_the_account(install: Install, verb: str, resource: str, allowed: str) -> None:
    result = install.api.kubectl(
        *("auth", "can-i", verb, resource, "-n", NAMESPACE, "--as", ACCOUNT), check=False
    )
    assert result.strip() == allowed


@pytest.mark.parametrize("name", [SECRET, "any-other-name"])
@pytest.mark.parametrize("dry_run", [["--dry-run=server"], []], ids=["server dry-run", "for real"])
def test_the_account_cannot_create_a_service_account_token_secret(
    install: Install, name: str, dry_run: list[str]
) -> None:
    # The token controller would fill such a Secret with a token that never expires.
    secret = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name, "annotations": {"kubernetes.io/service-account.name": "sidecar-webhook"}},
        "type": "kubernetes.io/service-account-token",
    }
    result = install.as_webhook("create", "-n", NAMESPACE, *dry_run, "-f", "-", input=json.dumps(secret))
    assert result.returncode != 0
    assert 'cannot create resource "secrets"' in result.stderr, result.stderr


def test_the_account_cannot_turn_its_secret_into_a_token_secret(install: Install) -> None:
    secret = install.secret()
    secret["type"] = "kubernetes.io/service-account-token"
    secret["metadata"].setdefault("annotations", {})["kubernetes.io/service-account.name"] = "sidecar-webhook"
    result = install.as_webhook("replace", "-f", "-", input=json.dumps(secret))
    assert result.returncode != 0
    assert "field is immutable" in result.stderr, result.stderr


# --- The caBundle keeps only the webhook's CAs ---------------------------------------------------------


def _write_bundle_as_admin(install: Install, cas: list[x509.Certificate]) -> None:
    pem = base64.b64encode(cluster_certs.pem_bundle(cas)).decode()
    patch = [
        {"op": "replace", "path": f"/webhooks/{index}/clientConfig/caBundle", "value": pem}
        for index in range(len(install.configuration()["webhooks"]))
    ]
    install.api.kubectl(
        "patch", "mutatingwebhookconfiguration", CONFIGURATION, "--type=json", "-p", json.dumps(patch)
    )


def test_a_foreign_ca_newer_than_the_webhooks_own_is_dropped(
    install: Install, caplog: pytest.LogCaptureFixture
) -> None:
    ours = install.material().ca.cert
    foreign = pki.create_ca(cluster_certs.CA_COMMON_NAME, timedelta(days=800)).cert
    assert foreign.not_valid_before_utc >= ours.not_valid_before_utc
    _write_bundle_as_admin(install, [ours, foreign])
    with caplog.at_level(logging.WARNING, logger="sidecar_webhook.certificates"):
        assert install.look() is True
    assert install.bundle() == [ours]
    assert f"dropping the CA {cluster_certs.serial(foreign)}" in caplog.text


class _StaleReplica(ClusterCertificates):
    """A replica that read the Secret just before another replica added its next CA to the Secret and
    then to the caBundle: the other replica's writes happen between this one's two reads."""

    async def _get_configuration(self) -> MutatingWebhookConfiguration:
        if not getattr(self, "raced", False):
            self.raced = True
            await asyncio.to_thread(_other_replica_adds_a_next_ca, self.install)
        return await super()._get_configuration()

    install: Install


def _other_replica_adds_a_next_ca(install: Install) -> None:
    secret = install.secret()
    material = install.material()
    now = datetime.now(UTC)
    added = replace(material, next_ca=pki.create_ca(cluster_certs.CA_COMMON_NAME, timedelta(days=730), now))
    secret["data"] = cluster_certs.encode(added)
    install.api.kubectl("replace", "-f", "-", input=json.dumps(secret))
    _write_bundle_as_admin(install, added.bundle())


def test_a_replica_whose_secret_is_a_moment_old_keeps_the_next_ca_another_replica_added(
    install: Install,
) -> None:
    _StaleReplica.install = install
    assert install.look(_StaleReplica) is True, "it looks again instead of writing"
    next_ca = install.material().next_ca
    assert next_ca is not None
    assert install.bundle() == [install.material().ca.cert, next_ca.cert]
    # Its next look reads the new Secret: the next CA is its own now, and stays.
    install.look()
    assert install.bundle() == [install.material().ca.cert, next_ca.cert]


# --- Upgrades: the Secret an earlier version created and filled ---------------------------------------


def test_applying_deploy_over_a_filled_secret_keeps_it_and_its_ca(install: Install) -> None:
    # An earlier version created the Secret itself (no kubectl record of it); apply deploy/ as an upgrade.
    data = install.secret()["data"]
    ca = install.material().ca.cert
    install.api.kubectl("delete", "secret", SECRET, "-n", NAMESPACE)
    created = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": SECRET, "namespace": NAMESPACE},
        "type": "Opaque",
        "data": data,
    }
    install.api.kubectl("create", "-f", "-", input=json.dumps(created))
    install.api.kubectl("apply", "-k", str(ROOT / "deploy"))
    assert install.secret()["data"] == data
    install.look()
    assert install.material().ca.cert == ca, "no new CA: the upgrade keeps the one the caBundle trusts"
    assert all(ca in bundle for bundle in install.bundles())


def test_starting_over_by_emptying_the_secret_makes_a_new_ca_and_keeps_the_old_one_trusted_meanwhile(
    install: Install,
) -> None:
    # deploy/README.md, "Starting over": the command a user runs, then the next look of a replica.
    trusted = install.bundle()
    assert install.material().ca.cert in trusted
    install.api.kubectl(
        *("-n", NAMESPACE, "patch", "secret", SECRET, "--type=json"),
        *("-p", '[{"op": "remove", "path": "/data"}]'),
    )
    assert not install.secret().get("data")
    install.look()
    new = install.material()
    assert new.ca.cert not in trusted
    # What the caBundle trusted stays trusted until the old replicas have picked up the new certificate.
    assert install.bundle() == [new.ca.cert, *trusted]
    assert [r.cert for r in new.retired] == trusted


# --- Faults the webhook names: the Secret missing, another policy in the way ------------------------------


def test_a_missing_secret_is_logged_with_what_to_do_and_not_created(
    install: Install, caplog: pytest.LogCaptureFixture
) -> None:
    install.api.kubectl("delete", "secret", SECRET, "-n", NAMESPACE)
    with caplog.at_level(logging.ERROR, logger="sidecar_webhook.certificates"), pytest.raises(ApiUnavailable):
        install.look()
    assert f"get secret {NAMESPACE}/{SECRET}: 404 NotFound; it does not exist: deploy/ ships it empty" in (
        caplog.text
    )
    assert install.api.kubectl("get", "secrets", "-n", NAMESPACE, "-o", "name").split() == []
    # Applied again, deploy/ brings it back empty, and the next look fills it.
    install.api.kubectl("apply", "-k", str(ROOT / "deploy"))
    install.look()
    install.material()


def test_a_ca_bundle_write_refused_by_another_policy_is_logged_as_such(
    install: Install, caplog: pytest.LogCaptureFixture
) -> None:
    stricter = {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingAdmissionPolicy",
        "metadata": {"name": "no-webhook-writes"},
        "spec": {
            "failurePolicy": "Fail",
            "matchConstraints": {
                "resourceRules": [
                    {
                        "apiGroups": ["admissionregistration.k8s.io"],
                        "apiVersions": ["*"],
                        "operations": ["UPDATE"],
                        "resources": ["mutatingwebhookconfigurations"],
                    }
                ]
            },
            "validations": [{"expression": f"request.userInfo.username != '{ACCOUNT}'"}],
        },
    }
    binding = {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingAdmissionPolicyBinding",
        "metadata": {"name": "no-webhook-writes"},
        "spec": {"policyName": "no-webhook-writes", "validationActions": ["Deny"]},
    }
    objects = json.dumps({"apiVersion": "v1", "kind": "List", "items": [stricter, binding]})
    install.api.kubectl("apply", "-f", "-", input=objects)
    try:
        pem = base64.b64encode(pki.cert_pem(pki.create_ca("any", timedelta(days=1)).cert)).decode()
        ca_bundle = [{"op": "add", "path": "/webhooks/0/clientConfig/caBundle", "value": pem}]
        install.wait_until_refused(ca_bundle, "no-webhook-writes")
        _write_bundle_as_admin(install, [])
        with (
            caplog.at_level(logging.ERROR, logger="sidecar_webhook.certificates"),
            pytest.raises(ApiUnavailable),
        ):
            install.look()
        # 422 Invalid: a policy's refusal with no reason of its own (deploy/'s says Forbidden: 403).
        assert "patch mutatingwebhookconfiguration sidecar-webhook: 422 Invalid;" in caplog.text
        assert "ValidatingAdmissionPolicy 'no-webhook-writes'" in caplog.text
        assert "is another policy in the way? retrying" in caplog.text
    finally:
        install.api.kubectl("delete", "-f", "-", input=objects)
    assert install.bundle() == []
