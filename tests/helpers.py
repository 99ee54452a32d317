"""Shared helpers for the project's tests (imported as `helpers`: pytest puts tests/ on the path):
where the course lives, and the solution notebooks' own functions, so the checks are tested
against the code students are graded against."""

import functools
import os
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from grader import CheckFailed, check, run_exercise

os.environ.setdefault("MPLBACKEND", "Agg")  # before anything imports pyplot: no display here

ROOT = Path(__file__).resolve().parent.parent


@functools.cache
def solution_functions(assignment: str) -> dict:
    """Run a solution notebook's setup and solution cells; return the names they define."""
    namespace = {}
    for cell in solution_notebook(assignment).cells:
        meta = cell.metadata.get("nbgrader", {})
        if cell.cell_type == "code" and (meta.get("solution") or meta.get("grade_id") == "setup"):
            exec(compile(cell.source, f"<{assignment}:{meta['grade_id']}>", "exec"), namespace)
    return namespace


def solution_notebook(assignment: str) -> nbformat.NotebookNode:
    """solutions/DAY/DAY.ipynb, as nbgrader reads it (tests/test_setup.py checks that it is the
    build of its text, DAY.py)."""
    return nbformat.read(ROOT / "solutions" / assignment / f"{assignment}.ipynb", as_version=4)


@functools.cache
def solution_cells(assignment: str) -> dict:
    """grade id -> source of every solution cell of a solution notebook."""
    return {
        cell.metadata["nbgrader"]["grade_id"]: cell.source
        for cell in solution_notebook(assignment).cells
        if cell.metadata.get("nbgrader", {}).get("solution")
    }


@functools.cache
def exercise_cells(assignment: str) -> dict:
    """grade id -> the grade ids of the solution cells of its exercise, in notebook order.

    An exercise is the run of solution cells between two graded cells: the code one check grades,
    one step per cell (day 7's forward kernel and its launcher; the three backward kernels and
    the autograd.Function that launches them)."""
    exercises, run = {}, []
    for cell in solution_notebook(assignment).cells:
        meta = cell.metadata.get("nbgrader", {})
        if meta.get("solution") and cell.cell_type == "code":
            run.append(meta["grade_id"])
            for grade_id in run:
                exercises[grade_id] = tuple(run)
        elif meta.get("grade"):
            run = []
    return exercises


def edited_solution(assignment: str, solution: dict, cell: str, edits, name: str = None):
    """A planted bug: the solution's `name` (default: the cell's grade id) after the (old, new)
    `edits` to the exercise of solution cell `cell`, each `old` found exactly once in its cells,
    which then run again, in order, on top of `solution` (so a launcher sees its edited kernel)."""
    sources = {
        grade_id: solution_cells(assignment)[grade_id]
        for grade_id in exercise_cells(assignment)[cell]
    }
    for old, new in edits:
        assert sum(source.count(old) for source in sources.values()) == 1, (
            f"{old!r} is not once in cell {cell}"
            + (f" and {sorted(set(sources) - {cell})}" if len(sources) > 1 else "")
        )
        (where,) = [grade_id for grade_id, source in sources.items() if old in source]
        sources[where] = sources[where].replace(old, new)
    namespace = dict(solution)
    for grade_id, source in sources.items():
        exec(compile(source, f"<{assignment}:{grade_id} edited>", "exec"), namespace)
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


def assert_named_on_seeds(day: str, name: str, bug, key: str, capsys, seeds) -> None:
    """assert_mistake_named, and the same mistake named by the hidden checks on every seed of
    `seeds`, whatever shapes they draw."""
    assert_mistake_named(day, name, bug, key, capsys)
    for seed in seeds:
        result = day_report(day, name, bug, hidden=True, seed=seed)
        assert key in result.keys, (seed, [(r.key, r.message) for r in result.results])


def planted_keys(test) -> set:
    """The keys a planted-bug test, parametrized over ("bug, key"), expects to be named."""
    (marker,) = [m for m in test.pytestmark if m.name == "parametrize" and m.args[0] == "bug, key"]
    return {key for _, key in marker.args[1]}


def promised(promises: dict) -> list:
    """(exercise, phrase) for each phrase in a day's `promises` (exercise -> {phrase of the
    notebook's "The checks recognise: ..." text -> the mistake key, or keys, it stands for}):
    one test case per phrase."""
    return [(name, phrase) for name, phrases in promises.items() for phrase in phrases]


def assert_promise_kept(day: str, promises: dict, name: str, phrase: str, planted: set) -> None:
    """The notebook of `day` says, just before exercise `name`, that its checks recognise
    `phrase`, and every key the phrase stands for is one a planted bug is named under (in
    `planted`, the keys the day's planted-bug tests expect). The list stands just before the
    exercise's solution cell, or after it, just before its check cell (check_NAME)."""
    cells = solution_notebook(day).cells
    (promise,) = [
        cell.source
        for cell, following in zip(cells, cells[1:])
        if "recognise" in cell.source
        and following.metadata.get("nbgrader", {}).get("grade_id") in (name, f"check_{name}")
    ]
    assert phrase in promise, phrase
    keys = promises[name][phrase]
    keys = {keys} if isinstance(keys, str) else set(keys)
    assert keys <= planted, keys - planted


def grader(*args, cwd=ROOT, env=None) -> subprocess.CompletedProcess:
    """`python -m grader ARGS` run in `cwd` (the repository by default), its output as text."""
    return subprocess.run(
        [sys.executable, "-m", "grader", *args], cwd=cwd, env=env, text=True, capture_output=True
    )


def nbgrader_cell(source: str, grade_id: str, points: int = None):
    """A code cell of an nbgrader source notebook: a locked test worth `points`, or else a
    solution cell."""
    meta = {"grade": points is not None, "solution": points is None, "locked": points is not None}
    meta.update(grade_id=grade_id, schema_version=3)
    if points is not None:
        meta["points"] = points
    return nbformat.v4.new_code_cell(source, metadata={"nbgrader": meta})
