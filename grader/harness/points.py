"""Points that follow the checks: an exercise's points are split by its checks' weights.

A check weighs 1 unless its suite says otherwise, beside the check:

    @weight(3)
    def sdpa_matches_reference(impl, rng):
        ...

An exercise with 7 of its 8 checks right earns the share of its points those 7 weigh, not 0. A
shortcut, a stub or a notebook that reaches into the grader earns nothing. The share is cut
down to the hundredth, never rounded up, so it never passes the cell's points (nbgrader refuses
a partial grade above them).

nbgrader's own partial-credit convention carries it: a check cell whose last output is a number
scores that number. `check(..., points=2)` returns the points earned instead of raising, so
stock `nbgrader autograde` and `python -m grader autograde` agree.
"""

import math

# Mistakes that void the whole exercise, whatever the other checks say.
VOIDING = {"not_implemented", "shortcut", "tampering", "not_defined", "not_a_function"}


def weight(value: float):
    """Declare a check's weight in its exercise's points (1 when undeclared)."""

    def declare(check):
        check.weight = value
        return check

    return declare


def earned(report, checks: list, points: float) -> float:
    """The share of `points` that `report`'s passed checks weigh among all of `checks`."""
    if report.passed:
        return float(points)
    if report.keys & VOIDING:
        return 0.0
    weights = [getattr(check, "weight", 1) for check in checks]
    passed = sum(w for w, result in zip(weights, report.results) if result.passed)
    return math.floor(100 * points * passed / sum(weights)) / 100
