"""Fixtures for the project's tests; the helpers they share are in `helpers`."""

from pathlib import Path

import pytest

from helpers import ROOT, solution_functions


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
