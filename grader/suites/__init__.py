"""One check suite per day: `grader/suites/dayNN_slug.py` holds the checks of assignment
`dayNN-slug`, and its `EXERCISES` maps each exercise (the student's function name) to its checks
and to the built-ins that function must not call.
"""

import dataclasses
import importlib
import pkgutil


@dataclasses.dataclass(frozen=True)
class Exercise:
    checks: list
    forbidden: dict


def assignments() -> list:
    """The assignments that have a check suite, e.g. ['day01-sdpa']."""
    return sorted(module.name.replace("_", "-") for module in pkgutil.iter_modules(__path__))


def exercise(assignment: str, name: str) -> Exercise:
    """The checks for exercise `name` of `assignment`, with a clear error for a wrong name."""
    if assignment not in assignments():
        raise ValueError(f"no check suite for assignment {assignment!r}; "
                         f"expected one of {assignments()}.")
    suite = importlib.import_module(f"{__name__}.{assignment.replace('-', '_')}")
    if name not in suite.EXERCISES:
        raise ValueError(f"{assignment} has no exercise {name!r}; "
                         f"expected one of {sorted(suite.EXERCISES)}.")
    return suite.EXERCISES[name]
