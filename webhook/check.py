"""`sidecar-webhook check`: ask the cluster, through its API server, whether the installed webhook works.

One result per check, each failure with what to do. What proves what:
- the caBundle check compares the caBundle with the certificate the replicas are given (the Secret in the
  cluster mode, sidecar-webhook-tls in the file modes); the API server's service proxy answers for a pod
  but does not show the certificate it served, so what each replica really serves is proven by
- the replicas check (a replica is Ready only while its /readyz says the caBundle trusts the certificate
  it serves), and by
- the dry-run, which makes the API server call the webhook for real over TLS verified with the caBundle:
  an annotated pod that comes back injected proves the whole path for the replica that answered.

Imported only when `check` runs: lightkube and cryptography stay out of the server's memory.
"""

import base64
import binascii
import json
import os
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any, Literal, TypeVar

import httpx2
import yaml
from cryptography import x509
from lightkube import ApiError, Client, ConfigError, KubeConfig
from lightkube.models.authorization_v1 import ResourceAttributes, SubjectAccessReviewSpec
from lightkube.resources.admissionregistration_v1 import (
    MutatingWebhookConfiguration,
    ValidatingAdmissionPolicy,
    ValidatingAdmissionPolicyBinding,
)
from lightkube.resources.apps_v1 import Deployment
from lightkube.resources.authorization_v1 import SubjectAccessReview
from lightkube.resources.core_v1 import Namespace, Pod, Secret
from lightkube.resources.policy_v1 import PodDisruptionBudget

from webhook import certs, cluster_certs, pki, tls
from webhook.annotations import INJECTED, LOG_PATH

Status = Literal["ok", "warn", "fail"]
T = TypeVar("T")

NAME = "sidecar-webhook"  # the Deployment, Service, PDB, ServiceAccount, configuration and policy
SECRET = "sidecar-webhook-certs"
# Each call answers in milliseconds; one that takes this long is as good as no answer.
API_TIMEOUT_SECONDS = 10.0
# As `certs check` and the renewal window: the webhook renews the serving certificate 30 days before its
# end, so under 30 days renewal is late; under 7 there is barely time to act.
WARN_DAYS = 30
FAIL_DAYS = 7
# Never sent to the webhook (deploy/base/mutatingwebhookconfiguration.yaml's namespaceSelector), so a
# dry-run there proves nothing.
EXCLUDED_NAMESPACES = ("kube-system", "kube-public", "kube-node-lease")
NAMESPACE_LABEL = "kubernetes.io/metadata.name"
# What a configuration must equal deploy/'s in; the caBundle and the API server's defaults are not. The
# namespaceSelector is judged apart (selector_problem): the Helm chart's values may narrow it.
COMPARED = ("rules", "matchConditions", "sideEffects", "failurePolicy")
# The checks by the name --only takes, in the order they run.
SLUGS = (
    "namespace",
    "webhook-configuration",
    "cabundle",
    "certificate-expiry",
    "replicas",
    "serviceaccount-rights",
    "admission-policy",
    "dry-run",
)
SIDECAR = "log-app"  # the container the webhook adds for LOG_PATH below
TEST_LOG = "/var/log/app.log"
INSTALL = (
    "install it: `kubectl apply -k deploy/` (deploy/README.md) or "
    "`helm install sidecar-webhook deploy/helm/sidecar-webhook -n sidecar-webhook --create-namespace`"
)


@dataclass(frozen=True)
class Result:
    check: str
    status: Status
    message: str
    hint: str = ""


@dataclass(frozen=True)
class Target:
    namespace: str = NAME
    test_namespace: str = "default"


class Failed(Exception):
    """A check cannot go on: `message` says why, `hint` what to do."""

    def __init__(self, message: str, hint: str) -> None:
        super().__init__(message)
        self.message, self.hint = message, hint


def connect(context: str | None, timeout: float = API_TIMEOUT_SECONDS) -> Client:
    """A client of the cluster in KUBECONFIG (or ~/.kube/config), `context` or the current one."""
    path = os.environ.get("KUBECONFIG", "").split(os.pathsep)[0] or str(Path.home() / ".kube" / "config")
    in_a_pod = bool(os.environ.get("KUBERNETES_SERVICE_HOST"))
    if in_a_pod and "KUBECONFIG" not in os.environ and not Path(path).exists():
        # In a pod (`helm test`) with no kubeconfig: its ServiceAccount, as kubectl and client-go do.
        try:
            return Client(KubeConfig.from_service_account(), timeout=httpx2.Timeout(timeout), trust_env=False)
        except (ConfigError, OSError) as error:
            raise Failed(
                f"no kubeconfig, and this pod's ServiceAccount token cannot be read: {error}",
                "mount the pod's ServiceAccount token, or set KUBECONFIG",
            ) from None
    try:
        config = KubeConfig.from_file(path).get(context_name=context)
    except (ConfigError, OSError, yaml.YAMLError, KeyError, TypeError) as error:
        raise Failed(
            f"cannot read the kubeconfig {path}: {error}",
            "set KUBECONFIG to a kubeconfig of the cluster, and --context to one of its contexts",
        ) from None
    return Client(config, timeout=httpx2.Timeout(timeout), trust_env=False)


def main(context: str | None, target: Target, output: str, only: tuple[str, ...] = ()) -> int:
    """The command: every check (or those named in `only`) printed as text or JSON; 1 when one failed."""
    try:
        with connect(context) as client:
            results = run(client, target, only=only)
    except Failed as failed:
        results = [Result("API server", "fail", failed.message, failed.hint)]
    if output == "json":
        print(json.dumps(as_json(results), indent=2, ensure_ascii=False))
    else:
        print(render(results), end="")
    return exit_code(results)


def run(
    client: Client, target: Target, now: datetime | None = None, only: tuple[str, ...] = ()
) -> list[Result]:
    """Every check, in order, or those whose SLUGS are in `only`. When the API server does not answer, the
    first check's failure alone."""
    look = Look(client, target, now or datetime.now(UTC))
    checks: list[tuple[str, Callable[[], Result]]] = [
        ("namespace", look.namespace),
        ("webhook configuration", look.configuration_check),
        ("caBundle", look.ca_bundle_check),
        ("certificate expiry", look.expiry_check),
        ("replicas", look.replicas_check),
        ("ServiceAccount rights", look.rights_check),
        ("admission policy", look.policy_check),
        ("dry-run", look.dry_run_check),
    ]
    results: list[Result] = []
    for slug, (name, check) in zip(SLUGS, checks, strict=True):
        if only and slug not in only:
            continue
        result = _checked(name, check)
        if not results and result.status == "fail" and "no answer from the API server" in result.message:
            return [Result("API server", "fail", result.message, result.hint)]
        results.append(result)
    return results


def _checked(name: str, check: Callable[[], Result]) -> Result:
    try:
        found = check()
    except Failed as failed:
        return Result(name, "fail", failed.message, failed.hint)
    except ConfigError as error:  # lightkube raises it at a call when the credentials fail (an exec plugin)
        return Result(
            name,
            "fail",
            f"the kubeconfig's user cannot authenticate: {error}",
            "does `kubectl get --raw /version` work with the same KUBECONFIG and --context?",
        )
    return Result(name, found.status, found.message, found.hint)


def render(results: list[Result]) -> str:
    """One line per check, readable without colour; each failure and warning followed by what to do."""
    tags = {"ok": "[ok]", "warn": "[warn]", "fail": "[FAIL]"}
    lines = []
    for result in results:
        lines.append(f"{tags[result.status]:<6} {result.check}: {result.message}")
        if result.hint and result.status != "ok":
            lines.append(f"{'':<6}   fix: {result.hint}")
    failed = sum(r.status == "fail" for r in results)
    warned = sum(r.status == "warn" for r in results)
    lines.append(
        f"{failed} of {len(results)} checks failed, {warned} warning(s)"
        if failed
        else f"all {len(results)} checks passed" + (f", {warned} warning(s)" if warned else "")
    )
    return "\n".join(lines) + "\n"


def as_json(results: list[Result]) -> list[dict[str, str]]:
    return [asdict(result) for result in results]


def exit_code(results: list[Result]) -> int:
    return 1 if any(r.status == "fail" for r in results) else 0


# --- The judgements: plain dicts and certificates in, a Result out ----------------------------------------


def expected_webhooks(namespace: str) -> dict[str, dict[str, Any]]:
    """deploy/'s webhooks by name (the packaged copy), their Service in `namespace`."""
    (configuration,) = [
        d for d in yaml.safe_load_all((certs.DEPLOY_DIR / certs.WEBHOOK_CONFIGURATION).read_text()) if d
    ]
    hooks = {}
    for hook in configuration["webhooks"]:
        hook["clientConfig"]["service"]["namespace"] = namespace
        for expression in hook["namespaceSelector"]["matchExpressions"]:
            if expression["key"] == NAMESPACE_LABEL:
                # deploy/ leaves out its own namespace; an install elsewhere leaves out that one.
                expression["values"] = [*EXCLUDED_NAMESPACES, namespace]
        hooks[hook["name"]] = hook
    return hooks


def selector_problem(found: Mapping[str, Any], wanted: Mapping[str, Any]) -> str:
    """What lets a namespace in that `wanted` keeps out, or "". The found selector may be narrower (more
    names left out, labels a namespace must have: the Helm chart's values), never wider."""
    for expression in wanted["matchExpressions"]:
        kept_out = set(expression["values"])
        if not any(
            have.get("key") == expression["key"]
            and have.get("operator") == expression["operator"]
            and kept_out <= set(have.get("values") or ())
            for have in found.get("matchExpressions") or ()
        ):
            return (
                f"namespaceSelector {_short(dict(found))} does not keep out namespaces "
                f"{', '.join(sorted(kept_out))} as deploy/'s does"
            )
    return ""


def compare_configuration(found: Mapping[str, Any], namespace: str) -> Result:
    expected = expected_webhooks(namespace)
    live = {hook["name"]: hook for hook in found.get("webhooks") or []}
    problems: list[str] = []
    warnings: list[str] = []
    hints: list[str] = []
    for name in sorted(set(expected) - set(live)):
        if expected[name].get("failurePolicy") == "Ignore":
            # The webhook that only warns, turned off (the chart's webhook.warnings): a choice, not a break.
            warnings.append(f"webhook {name} is not installed")
            hints.append(
                "without it kubectl does not warn of log-path on a workload's own metadata or of a "
                "misspelled sidecar.example/ name (Helm: webhook.warnings=true)"
            )
        else:
            problems.append(f"webhook {name} is missing")
    for name in sorted(set(live) - set(expected)):
        problems.append(f"webhook {name} is not deploy/'s")
    for name in sorted(set(expected) & set(live)):
        want, have = expected[name], live[name]
        selector = selector_problem(have.get("namespaceSelector") or {}, want["namespaceSelector"])
        if selector:
            problems.append(f"{name}: {selector}")
        for field in COMPARED:
            if have.get(field) != want.get(field):
                differs = (
                    f"{name}: {field} is {_short(have.get(field))}, deploy/ has {_short(want.get(field))}"
                )
                if field == "failurePolicy":
                    warnings.append(differs)
                    hints.append(
                        "failurePolicy Ignore lets an annotated pod start without its sidecar while the "
                        "webhook is down (deploy/README.md, 'failurePolicy'); apply deploy/ again for Fail"
                    )
                else:
                    problems.append(differs)
        service = {k: v for k, v in (have.get("clientConfig") or {}).items() if k != "caBundle"}
        if service != {"service": want["clientConfig"]["service"]}:
            problems.append(
                f"{name}: clientConfig is {_short(service)}, deploy/ calls the Service "
                f"{_short(want['clientConfig']['service'])}"
            )
    if problems:
        return Result(
            "",
            "fail",
            "; ".join(problems + warnings),
            "apply deploy/ again: `kubectl apply -k deploy/` (or `bash deploy/install.sh apply`); an "
            "overlay that changes these must be kept in step with `sidecar-webhook check`",
        )
    if warnings:
        return Result("", "warn", "; ".join(warnings), "; ".join(dict.fromkeys(hints)))
    return Result(
        "",
        "ok",
        f"{NAME}: rules, namespaceSelector, matchConditions, sideEffects, failurePolicy and the Service "
        "are deploy/'s",
    )


def days_left(cert: x509.Certificate, now: datetime) -> float:
    return (cert.not_valid_after_utc - now) / timedelta(days=1)


def expiry(named: list[tuple[str, x509.Certificate]], now: datetime, hint: str) -> Result:
    parts = [
        f"{what} {days_left(cert, now):.0f} days (until {cert.not_valid_after_utc:%Y-%m-%d})"
        for what, cert in named
    ]
    least = min(days_left(cert, now) for _, cert in named)
    status: Status = "fail" if least < FAIL_DAYS else "warn" if least < WARN_DAYS else "ok"
    return Result("", status, ", ".join(parts), hint if status != "ok" else "")


def is_injected(pod: Mapping[str, Any]) -> bool:
    spec = pod.get("spec") or {}
    names = [c.get("name") for c in [*(spec.get("initContainers") or []), *(spec.get("containers") or [])]]
    return SIDECAR in names and INJECTED in ((pod.get("metadata") or {}).get("annotations") or {})


def test_pod(annotated: bool) -> dict[str, Any]:
    """A pod the check creates as a dry run: admitted under Pod Security "restricted" and a quota that
    wants requests and limits, so only the webhook decides how it comes back."""
    limits = {"cpu": "10m", "memory": "16Mi"}
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "generateName": "sidecar-webhook-check-",
            "labels": {"app.kubernetes.io/name": "sidecar-webhook-check"},
            "annotations": {LOG_PATH: TEST_LOG} if annotated else {},
        },
        "spec": {
            "securityContext": {
                "runAsNonRoot": True,
                "runAsUser": 65534,
                "runAsGroup": 65534,
                "seccompProfile": {"type": "RuntimeDefault"},
            },
            "containers": [
                {
                    "name": "app",
                    "image": "docker.io/library/busybox:1.37",
                    "command": ["sh", "-c", f"date >> {TEST_LOG}"],
                    "resources": {"requests": limits, "limits": limits},
                    "securityContext": {
                        "allowPrivilegeEscalation": False,
                        "capabilities": {"drop": ["ALL"]},
                    },
                }
            ],
        },
    }


def _pod(manifest: dict[str, Any]) -> Pod:
    pod: Pod = Pod.from_dict(manifest)  # type: ignore[assignment]
    return pod


def _short(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, separators=(", ", ": "))
    return text if len(text) <= 200 else text[:197] + "..."


# --- The looks: one API call each, failures as Failed ----------------------------------------------------


class Look:
    """The calls each check makes, and what they found (each object read once)."""

    def __init__(self, client: Client, target: Target, now: datetime) -> None:
        self.client, self.target, self.now = client, target, now
        self.ns = target.namespace
        self._cache: dict[str, Any] = {}

    def call(self, verb: str, resource: str, name: str, call: Callable[[], T], missing: str = "") -> T:
        """One API call; a failure raises Failed naming the verb, the object and what to do. `missing`
        is the hint for 404 (without it, 404 is raised as ApiError to the caller)."""
        what = f"{resource} {name}".strip()
        try:
            return call()
        except ApiError as error:
            code, message = error.status.code or 0, error.status.message or ""
            if code == 404 and missing:
                raise Failed(f"{resource.removesuffix('s')} {name} not found", missing) from None
            if code == 404:
                raise
            if code in (401, 403):
                raise Failed(
                    f"your user cannot {verb} {resource}: {message}",
                    f"check needs to {verb} {resource}: ask a cluster admin for it "
                    f"(`kubectl auth can-i {verb} {resource}` shows what you have)",
                ) from None
            raise Failed(
                f"{verb} {what}: {code} {error.status.reason or ''}: {message}",
                "retry; if it persists, look at the API server's health (`kubectl get --raw /readyz`)",
            ) from None
        except httpx2.HTTPError as error:
            raise Failed(
                f"{verb} {what}: no answer from the API server ({type(error).__name__}: {error})",
                "is the cluster reachable? `kubectl cluster-info`; pick its context with --context",
            ) from None

    def cached(self, key: str, read: Callable[[], T]) -> T:
        """`read()` once; a Failed is remembered too, so each check that needs the object says the same."""
        if key not in self._cache:
            try:
                self._cache[key] = read()
            except Failed as failed:
                self._cache[key] = failed
        found = self._cache[key]
        if isinstance(found, Failed):
            raise found
        value: T = found
        return value

    # Objects

    def configuration(self) -> dict[str, Any]:
        def read() -> dict[str, Any]:
            found = self.call(
                "get",
                "mutatingwebhookconfigurations",
                NAME,
                lambda: self.client.get(MutatingWebhookConfiguration, NAME),
                missing=INSTALL,
            )
            return dict(found.to_dict())

        return self.cached("configuration", read)

    def secret(self, name: str) -> dict[str, str] | None:
        """The data (base64 values) of Secret `name` of the install's namespace; None when it does not
        exist."""

        def read() -> dict[str, str] | None:
            try:
                found = self.call(
                    "get",
                    "secrets",
                    f"{self.ns}/{name}",
                    lambda: self.client.get(Secret, name, namespace=self.ns),
                )
            except ApiError:
                return None
            return dict(found.data or {})

        return self.cached(f"secret/{name}", read)

    def served(self) -> tuple[str, dict[str, x509.Certificate]]:
        """Where the replicas' certificate comes from, and the certificates there: "cluster" (the CA and
        serving certificate of sidecar-webhook-certs) or "files" (tls.crt of sidecar-webhook-tls)."""
        data = self.secret(SECRET)
        if data is not None:
            material = cluster_certs.decode(data)
            if material is None:
                raise Failed(
                    f"secret {self.ns}/{SECRET} is {'empty' if not data else 'incomplete'}: no replica has "
                    "filled it yet",
                    f"the first replica to start fills it: see the replicas check and "
                    f"`kubectl -n {self.ns} logs deploy/{NAME}`",
                )
            return "cluster", {"CA": material.ca.cert, "serving certificate": material.serving.cert}
        files = self.secret(certs.TLS_SECRET)
        if files is None or tls.TLS_CERT not in files:
            raise Failed(
                f"neither secret {self.ns}/{SECRET} (the cluster mode) nor {self.ns}/{certs.TLS_SECRET} with "
                f"{tls.TLS_CERT} (the file modes) exists",
                INSTALL,
            )
        try:
            cert = x509.load_pem_x509_certificate(base64.b64decode(files[tls.TLS_CERT], validate=True))
        except (ValueError, binascii.Error):
            raise Failed(
                f"{tls.TLS_CERT} of secret {self.ns}/{certs.TLS_SECRET} is not a PEM certificate",
                "write it again: `sidecar-webhook certs manifests | kubectl apply -f -`",
            ) from None
        return "files", {"serving certificate": cert}

    def file_mode(self) -> bool:
        """Whether the install serves certificates from files (overlays/bring-your-own-certs,
        overlays/cert-manager): no sidecar-webhook-certs, a sidecar-webhook-tls. Otherwise the cluster
        mode, which deploy/ installs, is what is checked."""
        return self.secret(SECRET) is None and self.secret(certs.TLS_SECRET) is not None

    # Checks

    def namespace(self) -> Result:
        self.call(
            "get",
            "namespaces",
            self.ns,
            lambda: self.client.get(Namespace, self.ns),
            missing=f"{INSTALL}; or name the install's namespace with --namespace",
        )
        return Result("", "ok", f"namespace {self.ns} exists")

    def configuration_check(self) -> Result:
        return compare_configuration(self.configuration(), self.ns)

    def ca_bundle_check(self) -> Result:
        hooks = self.configuration().get("webhooks") or []
        mode, found = self.served()
        serving = found["serving certificate"]
        where = f"secret {self.ns}/{SECRET if mode == 'cluster' else certs.TLS_SECRET}"
        repair = (
            f"the replicas write the caBundle within 30 s of a change: see the replicas check and "
            f"`kubectl -n {self.ns} logs deploy/{NAME} | grep caBundle`"
            if mode == "cluster"
            else "write it again: `sidecar-webhook certs manifests | kubectl apply -f -` (deploy/README.md)"
        )
        untrusting = [
            hook["name"]
            for hook in hooks
            if not cluster_certs.trusted(
                serving, cluster_certs.parse_bundle(hook["clientConfig"].get("caBundle")), self.now
            )
        ]
        if untrusting:
            return Result(
                "",
                "fail",
                f"the caBundle of {', '.join(untrusting)} does not trust the serving certificate of {where} "
                f"({cluster_certs.serial(serving)}): the API server refuses what the replicas serve",
                repair,
            )
        host = f"{NAME}.{self.ns}.svc"
        if host not in (hosts := pki.hosts_of(serving)):
            return Result(
                "",
                "fail",
                f"the serving certificate of {where} is for {', '.join(hosts)}, not {host}, which the API "
                "server calls",
                repair,
            )
        return Result(
            "",
            "ok",
            f"trusts the serving certificate {cluster_certs.serial(serving)} of {where} (for {host}); what "
            "each replica serves: see replicas and dry-run",
        )

    def expiry_check(self) -> Result:
        try:
            mode, found = self.served()
            named = list(found.items())
        except Failed:
            # The file modes without a readable Secret: the CAs the caBundle holds.
            hooks = self.configuration().get("webhooks") or []
            cas = [
                ca
                for hook in hooks
                for ca in cluster_certs.parse_bundle(hook["clientConfig"].get("caBundle"))
            ]
            if not cas:
                raise
            mode, named = "files", [("caBundle CA", ca) for ca in cas]
        hint = (
            "the webhook renews the serving certificate 30 days before its end and the CA 243 days before: "
            f"renewal is not happening; see `kubectl -n {self.ns} logs deploy/{NAME} | grep -i certificate` "
            "and the rights check"
            if mode == "cluster"
            else "issue new ones: `sidecar-webhook certs create ...` and `sidecar-webhook certs manifests | "
            "kubectl apply -f -` (with cert-manager: `kubectl describe certificate -A`)"
        )
        return expiry(named, self.now, hint)

    def replicas(self) -> tuple[int, int]:
        """The Deployment's available and desired replicas."""

        def read() -> tuple[int, int]:
            deployment = self.call(
                "get",
                "deployments",
                f"{self.ns}/{NAME}",
                lambda: self.client.get(Deployment, NAME, namespace=self.ns),
                missing=INSTALL,
            )
            wanted = (deployment.spec.replicas if deployment.spec else None) or 0
            available = (deployment.status.availableReplicas if deployment.status else None) or 0
            return available, wanted

        return self.cached("replicas", read)

    def replicas_check(self) -> Result:
        available, wanted = self.replicas()
        try:
            pdb = self.call(
                "get",
                "poddisruptionbudgets",
                f"{self.ns}/{NAME}",
                lambda: self.client.get(PodDisruptionBudget, NAME, namespace=self.ns),
            )
            status = pdb.status
            budget = (
                f"PodDisruptionBudget: {status.currentHealthy} healthy, {status.disruptionsAllowed} "
                "disruption(s) allowed"
                if status is not None
                else "PodDisruptionBudget: no status yet"
            )
        except ApiError:
            budget = "no PodDisruptionBudget"
        said = f"{available} of {wanted} available; {budget}"
        look = (
            f"`kubectl -n {self.ns} get pods,events` and `kubectl -n {self.ns} logs deploy/{NAME}`: a "
            "replica is ready once it serves a certificate the caBundle trusts"
        )
        if wanted == 0:
            return Result(
                "",
                "fail",
                f"{said}: scaled to zero, annotated pods are refused (failurePolicy Fail)",
                f"`kubectl -n {self.ns} scale deploy/{NAME} --replicas=2`",
            )
        if available == 0:
            return Result("", "fail", f"{said}: nothing answers, annotated pods are refused", look)
        if available < wanted or budget == "no PodDisruptionBudget":
            hint = (
                look if available < wanted else f"{INSTALL} (base/pdb.yaml keeps one replica through drains)"
            )
            return Result("", "warn", said, hint)
        return Result(
            "", "ok", f"{said}; each Ready replica's /readyz says the caBundle trusts what it serves"
        )

    def rights_check(self) -> Result:
        account = f"system:serviceaccount:{self.ns}:{NAME}"
        # What deploy/base/rbac.yaml grants, and what it must not (create: any Secret, a token Secret among
        # them; list: every Secret's data).
        wanted = [
            ("get", "secrets", SECRET, True),
            ("update", "secrets", SECRET, True),
            ("get", "mutatingwebhookconfigurations", NAME, True),
            ("patch", "mutatingwebhookconfigurations", NAME, True),
            ("create", "secrets", "", False),
            ("list", "secrets", "", False),
        ]
        if self.file_mode():  # the account calls nothing
            wanted = [w for w in wanted if not w[3]]
        wrong = []
        for verb, resource, name, allowed in wanted:
            group = "admissionregistration.k8s.io" if resource.startswith("mutating") else ""
            review = SubjectAccessReview(
                spec=SubjectAccessReviewSpec(
                    user=account,
                    groups=[
                        "system:serviceaccounts",
                        f"system:serviceaccounts:{self.ns}",
                        "system:authenticated",
                    ],
                    resourceAttributes=ResourceAttributes(
                        verb=verb,
                        group=group,
                        resource=resource,
                        name=name or None,
                        namespace=None if group else self.ns,
                    ),
                )
            )
            answer: SubjectAccessReview = self.call(
                "create", "subjectaccessreviews", "", partial(self.client.create, review)
            )
            if bool(answer.status and answer.status.allowed) != allowed:
                wrong.append(
                    f"{'cannot' if allowed else 'CAN'} {verb} {resource}{'/' + name if name else ''}"
                )
        if wrong:
            granted_too_much = any(w.startswith("CAN") for w in wrong)
            return Result(
                "",
                "fail",
                f"{account} {', '.join(wrong)}",
                "something else grants it: find it with `kubectl get rolebindings,clusterrolebindings -A "
                f"-o wide | grep {NAME}` and remove it"
                if granted_too_much
                else f"{INSTALL} (base/rbac.yaml)",
            )
        verbs: dict[tuple[bool, str], list[str]] = {}
        for verb, resource, name, allowed in wanted:
            verbs.setdefault((allowed, f"{resource}/{name}" if name else resource), []).append(verb)
        said = "; ".join(
            f"may {' and '.join(v)} {what}" if allowed else f"may not {' or '.join(v)} {what}"
            for (allowed, what), v in verbs.items()
        )
        return Result("", "ok", f"{account}: {said}")

    def policy_check(self) -> Result:
        if self.file_mode():
            return Result("", "ok", "the file mode: the account writes nothing, no policy needed")
        self.call(
            "get",
            "validatingadmissionpolicies",
            NAME,
            lambda: self.client.get(ValidatingAdmissionPolicy, NAME),
            missing=f"{INSTALL} (base/validatingadmissionpolicy.yaml)",
        )
        binding = self.call(
            "get",
            "validatingadmissionpolicybindings",
            NAME,
            lambda: self.client.get(ValidatingAdmissionPolicyBinding, NAME),
            missing=f"{INSTALL} (base/validatingadmissionpolicy.yaml)",
        )
        spec = binding.spec
        if spec is None or spec.policyName != NAME or "Deny" not in (spec.validationActions or []):
            return Result(
                "",
                "fail",
                f"the binding {NAME} does not bind the policy {NAME} with Deny",
                f"{INSTALL} (base/validatingadmissionpolicy.yaml)",
            )
        return Result(
            "",
            "ok",
            f"ValidatingAdmissionPolicy {NAME} and its binding (Deny): the account may change the caBundle "
            "alone",
        )

    def dry_run_check(self) -> Result:
        test = self.target.test_namespace
        if test in (*EXCLUDED_NAMESPACES, self.ns):
            return Result(
                "",
                "fail",
                f"namespace {test} is never sent to the webhook (its namespaceSelector)",
                "give --test-namespace another namespace, e.g. default",
            )
        self.call(
            "get",
            "namespaces",
            test,
            lambda: self.client.get(Namespace, test),
            missing="give --test-namespace an existing namespace where pods may be created",
        )
        annotated = self._dry_run(test_pod(annotated=True), "an annotated pod")
        if not isinstance(annotated, dict):
            return annotated
        plain = self._dry_run(test_pod(annotated=False), "a pod without the annotation")
        if not isinstance(plain, dict):
            return plain
        if is_injected(plain):
            return Result(
                "",
                "fail",
                f"a pod without {LOG_PATH} came back injected",
                "the configuration's matchConditions are not deploy/'s: see the configuration check",
            )
        if not is_injected(annotated):
            return Result(
                "",
                "fail",
                f"a pod with {LOG_PATH} came back from the API server without the sidecar {SIDECAR}: no "
                f"webhook changed it",
                f"is the webhook configuration installed, and does its namespaceSelector send namespace "
                f"{test}? ({INSTALL})",
            )
        return Result(
            "",
            "ok",
            f"in namespace {test}, an annotated pod came back with {SIDECAR} and {INJECTED}, one without the "
            "annotation untouched: the API server called a replica over TLS and trusted it",
        )

    def _dry_run(self, pod: dict[str, Any], which: str) -> dict[str, Any] | Result:
        """The pod as the API server would store it, or the failed Result naming why it refused it."""
        test = self.target.test_namespace
        try:
            created = self.call(
                "create",
                "pods",
                f"(dry-run) in {test}",
                lambda: self.client.create(_pod(pod), namespace=test, dry_run=True),
            )
        except ApiError as error:
            return self._refused(which, error.status.message or str(error))
        except Failed as failed:
            if "failed calling webhook" not in failed.message and "denied the request" not in failed.message:
                raise
            return self._refused(which, failed.message)
        found: dict[str, Any] = created.to_dict()
        return found

    def _refused(self, which: str, message: str) -> Result:
        if "failed calling webhook" in message:
            try:
                none_ready = self.replicas()[0] == 0
            except Failed:
                none_ready = True
            # With no replica, whatever the API server reached instead (a TLS error included) is not ours.
            if none_ready:
                hint = (
                    f"no replica answered: see the replicas check (`kubectl -n {self.ns} get endpointslices "
                    f"-l kubernetes.io/service-name={NAME}`); with failurePolicy Fail annotated pods are "
                    "refused meanwhile"
                )
            elif any(word in message for word in ("x509", "certificate", "tls:")):
                hint = "the caBundle does not trust what the replica serves: see the caBundle check"
            else:
                hint = (
                    f"the replica did not answer in time: `kubectl -n {self.ns} logs deploy/{NAME}`, and "
                    "a NetworkPolicy must admit the API server (deploy/README.md)"
                )
            return Result(
                "", "fail", f"the API server could not call the webhook for {which}: {message}", hint
            )
        return Result(
            "",
            "fail",
            f"the dry-run of {which} was refused: {message}",
            "an admission webhook or policy refused it: the message names which",
        )
