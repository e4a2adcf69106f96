"""sidecar-webhook: a Kubernetes mutating admission webhook that injects a log-streaming sidecar."""

__version__ = "0.1.0"
