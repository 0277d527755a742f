"""Benchmarks of the backend: ``python -m bench [--quick] [--profile]`` (see bench/README.md)."""
