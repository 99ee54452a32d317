"""Benchmark scripts, run as modules: `python -m course.bench.sparse --help`."""
