"""Benchmarks of L9 (run as modules: ``python -m benchmarks.<name>``)."""
