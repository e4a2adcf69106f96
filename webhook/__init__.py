"""sidecar-webhook: a Kubernetes mutating admission webhook that injects a log-tailing sidecar."""

__version__ = "0.1.0"
