"""Shared helpers for the project's tests (imported as `helpers`: pytest puts tests/ on the path):
where the course lives, and the solution notebooks' own functions, so the checks are tested
against the code students are graded against."""

import functools
import os
from pathlib import Path

import nbformat
import pytest

from grader import CheckFailed, check, run_exercise

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


@functools.cache
def solution_cells(assignment: str) -> dict:
    """grade id -> source of every solution cell of a solution notebook."""
    notebook = nbformat.read(ROOT / "solutions" / assignment / f"{assignment}.ipynb", as_version=4)
    return {
        cell.metadata["nbgrader"]["grade_id"]: cell.source
        for cell in notebook.cells
        if cell.metadata.get("nbgrader", {}).get("solution")
    }


def edited_solution(assignment: str, solution: dict, cell: str, edits, name: str = None):
    """A planted bug: the solution's `name` (default: the cell's grade id) after the (old, new)
    `edits` to solution cell `cell`, each `old` found exactly once, run on top of `solution`."""
    source = solution_cells(assignment)[cell]
    for old, new in edits:
        assert source.count(old) == 1, f"{old!r} is not once in cell {cell}"
        source = source.replace(old, new)
    namespace = dict(solution)
    exec(compile(source, f"<{assignment}:{cell} edited>", "exec"), namespace)
    return namespace[name or cell]


def day_report(day: str, name: str, impl, **kwargs):
    """The Report of exercise `name` of `day` on `impl`, printed nowhere."""
    return run_exercise(day, name, impl, verbose=False, **kwargs)


def assert_mistake_named(day: str, name: str, bug, key: str, capsys) -> None:
    """The bug fails, the mistake `key` is recognised, and check() prints its hint and raises."""
    result = day_report(day, name, bug)
    assert not result.passed and key in result.keys, [(r.key, r.message) for r in result.results]
    named = next(r for r in result.results if r.key == key)
    assert named.hint
    with pytest.raises(CheckFailed):
        check(day, name, bug)
    assert f"hint: {named.hint}" in capsys.readouterr().out
