"""How work is checked and graded.

In a notebook, one call checks one exercise and prints a verdict per check:

    from grader import check
    check("day01-sdpa", "stable_softmax", stable_softmax, points=2)               # seed 0
    check("day01-sdpa", "stable_softmax", stable_softmax, hidden=True, points=1)  # fresh seed

A cell that passes prints its ✓ lines. One that fails returns the points its passed checks earn,
split by their weights (grader/harness/points.py), which nbgrader scores as the cell's partial
credit; without `points`, it raises CheckFailed instead (all or nothing). `python -m grader
--help` wraps the instructor's nbgrader flow.
"""

import dataclasses
import sys

from grader.harness.checking import CheckFailed, Report, run
from grader.harness.points import earned
from grader.harness.triton_watch import watch_every_launch
from grader.suites import exercise

__all__ = ["check", "run_exercise", "watch_every_launch", "CheckFailed", "Report"]


def run_exercise(
    assignment: str,
    name: str,
    impl,
    *,
    hidden: bool = False,
    seed: int = None,
    verbose: bool = True,
) -> Report:
    """Run the checks of exercise `name` of `assignment` on `impl` and return the Report."""
    suite = exercise(assignment, name)
    report = run(
        name,
        impl,
        suite.checks,
        suite.forbidden,
        hints=suite.hints,
        hidden=hidden,
        seed=seed,
        verbose=verbose,
    )
    _record(assignment, report)
    return report


def _record(assignment: str, report: Report) -> None:
    """Under `python -m grader autograde --workers`, hand the verdicts to the autograder
    (grader/autograde/kernel_side.py collects them after each graded cell, for feedback and the class report)."""
    state = sys.modules.get("_grader_state")
    if state is not None:
        state.reports.append({"assignment": assignment, **dataclasses.asdict(report)})


def check(
    assignment: str,
    name: str,
    impl,
    *,
    hidden: bool = False,
    seed: int = None,
    points: float = None,
):
    """Print a verdict per check of exercise `name`.

    Without `points`, raise CheckFailed unless all pass. With `points` (the cell's), a failing
    exercise returns the points its passed checks earn (grader/harness/points.py): nbgrader
    scores a cell whose last output is a number with that number."""
    report = run_exercise(assignment, name, impl, hidden=hidden, seed=seed)
    if report.passed:
        return None
    if points is None:
        raise CheckFailed(f"{report.summary()} Read the ✗ lines and hints above.")
    got = earned(report, exercise(assignment, name).checks, points)
    print(f"{got:g} of {points:g} points. Read the ✗ lines and hints above.")
    return got
