"""Points that follow the checks (grader/harness/points.py): the split, the notebooks' check
calls, and the partial credit nbgrader and the remote grader both read."""

import re

import pytest

from grader.harness.checking import Report, Result
from grader.harness.points import earned, weight
from grader.suites import assignments
from helpers import solution_notebook


@weight(3)
def matches_reference(impl, rng):
    """the algorithm"""


def raises_value_error(impl, rng):
    """the bad-input error"""


CHECKS = [matches_reference, raises_value_error]


def report(*passed, key="wrong_values"):
    results = [Result(f"check {i}", ok, key="" if ok else key) for i, ok in enumerate(passed)]
    return Report("exercise", 0, False, results)


def test_points_are_split_by_the_checks_weights():
    assert earned(report(True, True), CHECKS, 2) == 2.0
    assert earned(report(True, False), CHECKS, 2) == 1.5  # 3 of 4
    assert earned(report(False, True), CHECKS, 2) == 0.5  # 1 of 4
    assert earned(report(False, False), CHECKS, 2) == 0.0


def test_the_share_is_cut_down_never_up_past_the_cells_points():
    thirds = [raises_value_error] * 3
    assert earned(report(True, True, False), thirds, 1) == 0.66


@pytest.mark.parametrize("key", ["shortcut", "not_implemented", "tampering"])
def test_a_shortcut_a_stub_or_tampering_earns_nothing(key):
    assert earned(report(True, False, key=key), CHECKS, 2) == 0.0


@pytest.mark.parametrize("assignment", assignments())
def test_every_check_call_carries_its_cells_points(assignment):
    """nbgrader scores a partial cell by the number it returns: check() must know the points."""
    for cell in solution_notebook(assignment).cells:
        meta = cell.metadata.get("nbgrader", {})
        if cell.cell_type != "code" or not meta.get("grade") or meta.get("solution"):
            continue
        calls = re.findall(r"^check\(.*points=([\d.]+)\)$", cell.source, re.M)
        assert calls, f"{meta['grade_id']}: no check(..., points=N)"
        assert sum(float(p) for p in calls) == float(meta["points"]), meta["grade_id"]
