"""Fixtures for the project's tests, and how they share the cores; the helpers they share are in
`helpers`.

`make test` runs the suite on every core with pytest-xdist (`-n auto`, `--dist loadscope`): each
worker is its own process that collects every test and runs whole test modules, so a module's
expensive fixtures (a graded class, a browser and its servers) are set up once. The workers share
the machine, so each gets its share of torch's threads, set here before torch is imported (the
variable also reaches the kernels and subprocesses the tests start).

Session-scoped fixtures run once per worker, not once per run: none of them may write into the
repository (tests write under `tmp_path`).
"""

import os

if "PYTEST_XDIST_WORKER_COUNT" in os.environ:  # an xdist worker, before anything imports torch
    share = (os.cpu_count() or 1) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"])
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, share)))

from pathlib import Path  # noqa: E402 (after the thread count: helpers imports torch)

import pytest  # noqa: E402

from helpers import ROOT, solution_functions  # noqa: E402


@pytest.fixture(scope="session")
def root() -> Path:
    return ROOT


@pytest.fixture(scope="session")
def solution_namespace():
    """solution_namespace("day01-sdpa")["stable_softmax"] is the solution's own function."""
    return solution_functions


@pytest.fixture(scope="module")
def solution(request):
    """The solution notebook's own functions, for the test module's DAY."""
    return solution_functions(request.module.DAY)
