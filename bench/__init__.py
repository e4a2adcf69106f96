"""Benchmarks of sidecar-webhook: `python -m bench` (see docs/performance.md)."""
