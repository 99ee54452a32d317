"""One check suite per day: `grader/suites/dayNN_slug.py` holds the checks of assignment
`dayNN-slug` (a long suite is a package, `grader/suites/dayNN_slug/`, with a module per exercise
or group of exercises, put together by its `__init__`). Its `EXERCISES` maps each exercise (the
student's function name) to its checks and to what that function must not call, and its `HINTS`
names the mistakes the checks recognise.
"""

import dataclasses
import importlib
import pkgutil


@dataclasses.dataclass(frozen=True)
class Exercise:
    checks: list
    forbidden: dict
    hints: dict = None  # the suite's HINTS, filled in by `exercise`


def assignments() -> list:
    """The assignments that have a check suite, e.g. ['day01-sdpa']."""
    return sorted(
        module.name.replace("_", "-")
        for module in pkgutil.iter_modules(__path__)
        if not module.name.startswith("_")  # _common: what the suites share
    )


def exercises(assignment: str) -> list:
    """The exercise names of `assignment`, in the notebook's order."""
    return list(_suite(assignment).EXERCISES)


def _suite(assignment: str):
    if assignment not in assignments():
        raise ValueError(
            f"no check suite for assignment {assignment!r}; expected one of {assignments()}."
        )
    return importlib.import_module(f"{__name__}.{assignment.replace('-', '_')}")


def exercise(assignment: str, name: str) -> Exercise:
    """The checks for exercise `name` of `assignment`, with a clear error for a wrong name."""
    suite = _suite(assignment)
    if name not in suite.EXERCISES:
        raise ValueError(
            f"{assignment} has no exercise {name!r}; expected one of {sorted(suite.EXERCISES)}."
        )
    return dataclasses.replace(suite.EXERCISES[name], hints=suite.HINTS)
