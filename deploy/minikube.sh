#!/usr/bin/env bash
# Install the webhook into a running minikube and show an injected pod (up), or remove it (down).
# Usage: bash deploy/minikube.sh up|down        Steps and caveats: deploy/README.md
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

PROFILE=${MINIKUBE_PROFILE:-minikube}
NAMESPACE=sidecar-webhook
IMAGE=sidecar-webhook:dev
SEED_POD=tests/fixtures/manifests/01-seed-pod.yaml
MIN_MINOR=30 # matchConditions on admission webhooks are GA since Kubernetes 1.30

die() { echo "minikube.sh: $*" >&2; exit 1; }
step() { echo "==> $*"; }

# Every kubectl call goes to minikube, whatever the current context: this installs a cluster-wide webhook.
# (A function, so the binaries are looked up with `type -P`, which ignores functions.)
kubectl() { command kubectl --context "$PROFILE" "$@"; }

# This repository's CLI: $SIDECAR_WEBHOOK_BIN, else sidecar-webhook on PATH, else the package from source.
sidecar_webhook() {
  if [[ -n "${SIDECAR_WEBHOOK_BIN:-}" ]]; then
    "$SIDECAR_WEBHOOK_BIN" "$@"
  elif type -P sidecar-webhook >/dev/null; then
    sidecar-webhook "$@"
  else
    python3 -m webhook "$@"
  fi
}

preflight() {
  type -P minikube >/dev/null || die "minikube not found on PATH"
  type -P kubectl >/dev/null || die "kubectl not found on PATH"
  minikube -p "$PROFILE" status >/dev/null || die "minikube profile '$PROFILE' is not running"
  local version major minor
  version=$(kubectl get --raw /version)
  major=$(sed -n 's/.*"major": *"\([0-9]*\).*/\1/p' <<<"$version")
  minor=$(sed -n 's/.*"minor": *"\([0-9]*\).*/\1/p' <<<"$version")
  [[ "$major" == 1 && "${minor:-0}" -ge "$MIN_MINOR" ]] ||
    die "Kubernetes ${major:-?}.${minor:-?} is too old: 1.$MIN_MINOR or newer is needed" \
      "(minikube start --kubernetes-version=v1.$MIN_MINOR.0)"
}

up() {
  preflight
  step "build $IMAGE inside minikube"
  minikube -p "$PROFILE" image build -t "$IMAGE" .
  step "create certificates for the Service in certs/ (a valid CA is reused)"
  sidecar_webhook certs create --service sidecar-webhook --namespace "$NAMESPACE" --out certs
  step "apply deploy/"
  kubectl apply -k deploy/
  # After deploy/, never before: deploy/ has no caBundle, so applying it drops the one set here.
  step "apply the TLS Secret and the webhook configuration with its caBundle"
  sidecar_webhook certs manifests --dir certs | kubectl apply -f -
  kubectl -n "$NAMESPACE" rollout status deploy/sidecar-webhook --timeout=120s
  step "create the seed pod (again, so it is injected by this webhook)"
  kubectl -n default delete -f "$SEED_POD" --ignore-not-found --now
  kubectl -n default apply -f "$SEED_POD"
  kubectl -n default wait --for=condition=Ready pod/sidecar --timeout=120s
  step "kubectl logs sidecar -c log-app"
  kubectl -n default logs sidecar -c log-app
}

down() {
  type -P kubectl >/dev/null || die "kubectl not found on PATH"
  kubectl -n default delete -f "$SEED_POD" --ignore-not-found --now
  # The webhook configuration first: no pod creation may wait on a Service that is going away.
  kubectl delete mutatingwebhookconfiguration sidecar-webhook --ignore-not-found
  kubectl delete -k deploy/ --ignore-not-found
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  *) die "usage: bash deploy/minikube.sh up|down" ;;
esac
