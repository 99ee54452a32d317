"""How work is checked and graded.

In a notebook, one call checks one exercise and prints a verdict per check:

    from grader import check
    check("day01-sdpa", "stable_softmax", stable_softmax)               # visible, seed 0
    check("day01-sdpa", "stable_softmax", stable_softmax, hidden=True)  # fresh seed

It raises CheckFailed when anything is wrong, so nbgrader awards the cell's points only to a
function that passes every check. `python -m grader --help` wraps the instructor's nbgrader flow.
"""

import dataclasses
import sys

from grader.harness.checking import CheckFailed, Report, run
from grader.suites import exercise

__all__ = ["check", "run_exercise", "CheckFailed", "Report"]


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


def check(assignment: str, name: str, impl, *, hidden: bool = False, seed: int = None) -> None:
    """Print a verdict per check of exercise `name`; raise CheckFailed unless all pass."""
    report = run_exercise(assignment, name, impl, hidden=hidden, seed=seed)
    if not report.passed:
        raise CheckFailed(f"{report.summary()} Read the ✗ lines and hints above.")
