"""Every day's check suite against its own solution notebook: the solution passes on the visible
seed and on 25 hidden ones, and an untouched stub is reported once, as not implemented."""

import ast
import importlib
from pathlib import Path

import pytest

from grader.suites import assignments, exercises
from helpers import day_report, solution_functions

EXERCISES = [(day, name) for day in assignments() for name in exercises(day)]


def stub(*args, **kwargs):
    raise NotImplementedError()


@pytest.mark.parametrize("day, name", EXERCISES, ids=[f"{d}:{n}" for d, n in EXERCISES])
def test_solution_passes_visible_and_many_hidden_seeds(day, name):
    solution = solution_functions(day)[name]
    assert day_report(day, name, solution).passed
    for seed in range(1, 26):
        result = day_report(day, name, solution, hidden=True, seed=seed)
        assert result.passed, [(r.check, r.message) for r in result.results if not r.passed]


@pytest.mark.parametrize("day, name", EXERCISES, ids=[f"{d}:{n}" for d, n in EXERCISES])
def test_untouched_stub_is_not_implemented(day, name):
    result = day_report(day, name, stub)
    assert result.keys == {"not_implemented"} and len(result.results) == 1


def looked_up_keys(tree) -> set:
    """Mistake keys a suite looks up in its HINTS: named("key"), hint("key"),
    expect_value_error(..., "key"), and ("key", tensor) suspects."""
    keys = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) in (
            "named",
            "hint",
            "expect_value_error",
        ):
            args = node.args[2:3] if node.func.id == "expect_value_error" else node.args[:1]
            keys |= {a.value for a in args if isinstance(a, ast.Constant)}
        if (
            isinstance(node, ast.Tuple)
            and len(node.elts) == 2
            and isinstance(node.elts[0], ast.Constant)
            and isinstance(node.elts[0].value, str)
            and not isinstance(node.elts[1], ast.Constant)
        ):
            keys.add(node.elts[0].value)
    return keys


def source_files(suite) -> list:
    """A suite's module, or every module of its package."""
    path = Path(suite.__file__)
    return sorted(path.parent.glob("*.py")) if path.name == "__init__.py" else [path]


SUITES = {
    day: importlib.import_module(f"grader.suites.{day.replace('-', '_')}") for day in assignments()
}
MISTAKES = {key for suite in SUITES.values() for key in suite.HINTS}


@pytest.mark.parametrize("day", assignments())
def test_every_mistake_a_suite_looks_up_is_in_its_own_hints(day):
    """Days may word one key differently, so a suite finds words only in its own HINTS."""
    keys = set().union(
        *(looked_up_keys(ast.parse(f.read_text())) for f in source_files(SUITES[day]))
    )
    assert (keys & MISTAKES) - set(SUITES[day].HINTS) == set()
