"""Benchmark scripts, run as modules: `python -m course.benchmarks.sparse --help`."""
