#!/usr/bin/env bash
# Install the webhook into a cluster and show an injected pod (up), or remove it (down).
#
# Usage: bash deploy/install.sh up|image|apply|down          Steps and caveats: deploy/README.md
#   up     image, then apply, then create the seed pod and print its sidecar's log
#   image  build the image from the Dockerfile and make it available to the nodes ($SIDECAR_WEBHOOK_LOAD)
#   apply  `kubectl apply -k deploy/` running $SIDECAR_WEBHOOK_IMAGE and wait for the rollout
#   down   remove everything `up` created
#
# Settings (environment):
#   SIDECAR_WEBHOOK_IMAGE  image the Deployment runs (default sidecar-webhook:dev, what deploy/ names)
#   SIDECAR_WEBHOOK_LOAD   how the image reaches the nodes:
#                            minikube  `minikube image build` inside the minikube profile
#                            kind      `docker build`, then `kind load docker-image` into $KIND_CLUSTER
#                            push      `docker build`, then `docker push` to the registry the image names
#                            kit       CI's test kit's image.sh (buildah into the node's containerd; root)
#                            none      nothing: the nodes can already pull the image
#                          default: minikube for a context named like the minikube profile, kind for a
#                          context kind-NAME, else none
#   KUBE_CONTEXT           kubeconfig context to install into (default: the current context)
#   MINIKUBE_PROFILE       minikube profile (default minikube); KIND_CLUSTER kind cluster (default: from the context)
#   KUBE_KIT               CI's test kit, for LOAD=kit (default ../shared/kube; not part of a clone)
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

NAMESPACE=sidecar-webhook
DEFAULT_IMAGE=sidecar-webhook:dev # what deploy/base/deployment.yaml names
IMAGE=${SIDECAR_WEBHOOK_IMAGE:-$DEFAULT_IMAGE}
PROFILE=${MINIKUBE_PROFILE:-minikube}
SEED_POD=tests/fixtures/manifests/01-seed-pod.yaml
MIN_MINOR=30 # matchConditions on admission webhooks and ValidatingAdmissionPolicy are GA since 1.30

die() { echo "install.sh: $*" >&2; exit 1; }
step() { echo "==> $*"; }

# (Functions, so the binaries are looked up with `type -P`, which ignores functions.)
kubectl() { command kubectl ${KUBE_CONTEXT:+--context "$KUBE_CONTEXT"} "$@"; }

context() { echo "${KUBE_CONTEXT:-$(command kubectl config current-context 2>/dev/null || true)}"; }

load_method() {
  if [[ -n "${SIDECAR_WEBHOOK_LOAD:-}" ]]; then
    echo "$SIDECAR_WEBHOOK_LOAD"
    return
  fi
  local ctx
  ctx=$(context)
  case "$ctx" in
    "$PROFILE") echo minikube ;;
    kind-*) echo kind ;;
    *) echo none ;;
  esac
}

preflight() {
  type -P kubectl >/dev/null || die "kubectl not found on PATH"
  local version major minor
  version=$(kubectl get --raw /version) || die "cannot reach the cluster of context '$(context)'"
  major=$(sed -n 's/.*"major": *"\([0-9]*\).*/\1/p' <<<"$version")
  minor=$(sed -n 's/.*"minor": *"\([0-9]*\).*/\1/p' <<<"$version")
  [[ "$major" == 1 && "${minor:-0}" -ge "$MIN_MINOR" ]] ||
    die "Kubernetes ${major:-?}.${minor:-?} is too old: 1.$MIN_MINOR or newer is needed"
}

image() {
  local method
  method=$(load_method)
  step "image $IMAGE (load: $method)"
  case "$method" in
    minikube)
      type -P minikube >/dev/null || die "minikube not found on PATH"
      minikube -p "$PROFILE" image build -t "$IMAGE" .
      ;;
    kind)
      type -P docker >/dev/null || die "docker not found on PATH"
      type -P kind >/dev/null || die "kind not found on PATH"
      local cluster=${KIND_CLUSTER:-$(context)}
      docker build -t "$IMAGE" .
      kind load docker-image "$IMAGE" --name "${cluster#kind-}"
      ;;
    push)
      type -P docker >/dev/null || die "docker not found on PATH"
      docker build -t "$IMAGE" .
      docker push "$IMAGE"
      ;;
    kit)
      local kit=${KUBE_KIT:-../shared/kube}
      [[ -f "$kit/image.sh" ]] || die "no kit at $kit (set KUBE_KIT)"
      bash "$kit/image.sh" build . "$IMAGE"
      ;;
    none) echo "SIDECAR_WEBHOOK_LOAD=none: the nodes must be able to pull $IMAGE" ;;
    *) die "SIDECAR_WEBHOOK_LOAD=$method: expected minikube, kind, push, kit or none" ;;
  esac
}

# deploy/ as kustomize builds it, running $IMAGE: deploy/ itself for the default image, else an overlay
# of it with kustomize's image override (the same thing a user's own overlay does, see deploy/README.md).
apply_deploy() {
  if [[ "$IMAGE" == "$DEFAULT_IMAGE" ]]; then
    kubectl apply -k deploy/
    return
  fi
  local overlay name=$IMAGE tag="" digest=""
  if [[ "$name" == *@* ]]; then
    digest=${name#*@} name=${name%%@*}
  elif [[ "${name##*/}" == *:* ]]; then
    tag=${name##*:} name=${name%:*}
  fi
  # Beside deploy/, not in it: kustomize refuses an overlay inside the directory it builds on.
  overlay=$(mktemp -d .install-image.XXXXXX)
  {
    printf 'resources:\n  - ../deploy\nimages:\n  - name: %s\n    newName: %s\n' "${DEFAULT_IMAGE%:*}" "$name"
    [[ -z "$tag" ]] || printf '    newTag: "%s"\n' "$tag"
    [[ -z "$digest" ]] || printf '    digest: "%s"\n' "$digest"
  } >"$overlay/kustomization.yaml"
  # shellcheck disable=SC2064 # expanded now: $overlay is local, and gone when the trap runs
  trap "rm -rf '$overlay'" EXIT
  kubectl apply -k "$overlay"
}

# An install of the file mode (`certs manifests | kubectl apply`) left a caBundle in kubectl's record of
# what it last applied. Applying deploy/, which has none, would make kubectl remove it, and the API server
# would refuse the old replicas' certificates until the new ones rewrote it: annotated pods refused in the
# middle of the upgrade. Rewriting the record alone (not the object) keeps the caBundle, which the new
# replicas then extend with their own CA.
keep_ca_bundle() {
  local last
  last=$(kubectl get mutatingwebhookconfiguration sidecar-webhook --ignore-not-found \
    -o jsonpath='{.metadata.annotations.kubectl\.kubernetes\.io/last-applied-configuration}')
  if [[ "$last" == *caBundle* ]]; then
    step "keep the caBundle of the file mode's install while deploy/ is applied"
    kubectl apply set-last-applied -f deploy/base/mutatingwebhookconfiguration.yaml
  fi
}

apply() {
  # The whole install: the replicas make their CA and certificate and write the caBundle themselves.
  keep_ca_bundle
  step "apply deploy/ with image $IMAGE"
  apply_deploy
  kubectl -n "$NAMESPACE" rollout status deploy/sidecar-webhook --timeout=180s
}

seed() {
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
  # One step per line: `set -e` does not apply inside a function called from an && list.
  up)
    preflight
    image
    apply
    seed
    ;;
  image) image ;;
  apply)
    preflight
    apply
    ;;
  down) down ;;
  *) die "usage: bash deploy/install.sh up|image|apply|down" ;;
esac
