"""Benchmarks of sidecar-webhook: `python -m bench` (see README.md, "Performance")."""
