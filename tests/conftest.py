"""Shared helpers for the project's tests: where the course lives, and the solution notebooks'
own functions, so the checks are tested against the code students are graded against."""

import functools
import os
from pathlib import Path

import nbformat
import pytest

os.environ.setdefault("MPLBACKEND", "Agg")  # before anything imports pyplot: no display here

ROOT = Path(__file__).resolve().parent.parent


@functools.cache
def solution_functions(assignment: str) -> dict:
    """Run a solution notebook's setup and solution cells; return the names they define."""
    notebook = nbformat.read(ROOT / "solutions" / assignment / f"{assignment}.ipynb", as_version=4)
    namespace = {}
    for cell in notebook.cells:
        meta = cell.metadata.get("nbgrader", {})
        if cell.cell_type == "code" and (meta.get("solution") or meta.get("grade_id") == "setup"):
            exec(compile(cell.source, f"<{assignment}:{meta['grade_id']}>", "exec"), namespace)
    return namespace


@pytest.fixture(scope="session")
def root() -> Path:
    return ROOT


@pytest.fixture(scope="session")
def solution_namespace():
    """solution_namespace("day01-sdpa")["stable_softmax"] is the solution's own function."""
    return solution_functions
