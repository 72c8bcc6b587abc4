"""Benchmarks: `python -m bench` measures the service against a baseline in the same run."""
