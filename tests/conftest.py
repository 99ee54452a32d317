"""Fixtures for the project's tests, and how they share the cores; the helpers they share are in
`helpers`.

`make test` runs the suite on every core with pytest-xdist (`-n auto`, `--dist loadgroup`): each
worker is its own process that collects every test and runs the ones it is sent. Two things
follow, both handled here:

- The workers share the machine, so each gets its share of torch's threads, set before torch is
  imported (the variable also reaches the kernels and subprocesses the tests start).
- Some tests must not run at the same time as others, or are cheap only on one worker; they are
  put in an xdist group, and a group's tests all run on one worker, in order (see `GROUPS`).

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


# ----------------------------------------------------------------------------- xdist groups

# Tests that share something that cannot be used twice at once, by group name.
GROUPS = {
    # The servers' logs and timings.json are fixed files in test-artifacts/browser/, and one
    # headless Chromium with its servers is load enough for a 2-core machine.
    "browser": lambda item: item.get_closest_marker("browser") is not None,
}


def own_module_fixtures(item) -> list:
    """The module-scoped fixtures that `item` uses and its own module defines (a graded class,
    a built explorer): expensive, and set up once per worker that runs one of their tests.
    (conftest's `solution` is module-scoped too, but cheap: solution_functions is cached.)"""
    module = item.nodeid.split("::")[0]
    # _fixtureinfo: pytest's record of the fixtures an item uses, the closest definition last
    return [
        name
        for name, definitions in item._fixtureinfo.name2fixturedefs.items()
        if definitions[-1].scope == "module" and definitions[-1].baseid == module
    ]


def xdist_group(item):
    """The group `item` runs in, or None to let xdist send it to any worker."""
    for group, belongs in GROUPS.items():
        if belongs(item):
            return group
    fixtures = own_module_fixtures(item)
    if fixtures:  # the module's tests on one worker; one group per parameter of the fixture
        params = getattr(item, "callspec", None)
        key = [str(params.params[name]) for name in fixtures if params and name in params.params]
        return "::".join([item.nodeid.split("::")[0], *key])
    return None


def pytest_collection_modifyitems(config, items):
    if not config.pluginmanager.hasplugin("xdist"):
        return
    for item in items:
        group = xdist_group(item)
        if group:
            item.add_marker(pytest.mark.xdist_group(group))
