"""A graded check cell, graded in the grading process: which checks it runs, with which seed,
and what the cell shows.

A check cell of the course is nothing but calls of `check`:

    check("day01-sdpa", "stable_softmax", stable_softmax, hidden=True)

The autograder reads that source from the instructor's notebook (nbgrader puts the locked cells
back before grading), runs those checks here on the student's function through remote.py, and
writes the cell's outputs as the kernel would have: the verdicts, then CheckFailed when a check
failed, so nbgrader scores the cell as usual. A cell of any other form runs in the kernel.

Hidden checks draw their inputs from a seed the kernel never sees: a keyed hash of the course's
secret, the student and the exercise, so a regrade of the same notebook gives the same grade,
and one student's seeds say nothing about another's.
"""

import ast
import contextlib
import dataclasses
import hashlib
import hmac
import io
import os
import secrets
from pathlib import Path

from nbformat.notebooknode import NotebookNode

from grader.autograde import source_scan
from grader.autograde.remote import RemoteKernel
from grader.harness.checking import Mistake, Report, Result, run, shortcut_used
from grader.harness.points import earned
from grader.suites import exercise as suite_exercise

SECRET_FILE = ".grader-secret"  # in the course folder, beside the gradebook; never in a sandbox


@dataclasses.dataclass(frozen=True)
class CheckCall:
    assignment: str
    exercise: str
    name: str  # the notebook's name for the student's function
    hidden: bool
    points: float = None  # its share of the cell's points, if the call says


def check_calls(source: str):
    """The `check(...)` calls that make up `source`, or None if it holds anything else."""
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return None
    calls = []
    for statement in tree.body:
        call = statement.value if isinstance(statement, ast.Expr) else None
        if not (
            isinstance(call, ast.Call)
            and isinstance(call.func, ast.Name)
            and call.func.id == "check"
            and len(call.args) == 3
            and all(isinstance(a, ast.Constant) and isinstance(a.value, str) for a in call.args[:2])
            and isinstance(call.args[2], ast.Name)
            and all(_known_keyword(k) for k in call.keywords)
        ):
            return None
        keywords = {k.arg: k.value.value for k in call.keywords}
        calls.append(
            CheckCall(
                call.args[0].value,
                call.args[1].value,
                call.args[2].id,
                bool(keywords.get("hidden", False)),
                keywords.get("points"),
            )
        )
    return calls or None


def _known_keyword(keyword: ast.keyword) -> bool:
    """hidden=True/False or points=NUMBER, as literals."""
    value = keyword.value.value if isinstance(keyword.value, ast.Constant) else None
    if keyword.arg == "hidden":
        return value in (True, False)
    return keyword.arg == "points" and type(value) in (int, float) and value >= 0


def course_secret(root) -> bytes:
    """The course's secret, made once (readable by its owner only) on first use."""
    path = Path(root) / SECRET_FILE
    if not path.exists():
        with contextlib.suppress(FileExistsError):
            descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(descriptor, "w") as f:
                f.write(secrets.token_hex(32))
    return path.read_text().strip().encode()


def hidden_seed(secret: bytes, student: str, call: CheckCall) -> int:
    """The seed of `student`'s hidden checks of `call`'s exercise: the same on every regrade."""
    message = f"{student}/{call.assignment}/{call.exercise}".encode()
    return int.from_bytes(hmac.new(secret, message, hashlib.sha256).digest()[:4], "big") >> 1


def grade_cell(
    ask,
    calls: list,
    student: str,
    secret: bytes,
    sources: list,
    points: float,
    partial_credit: bool = True,
) -> tuple:
    """Run `calls` on the student's functions in the kernel that `ask` reaches; return the cell's
    outputs (as the kernel would show them) and the (assignment, Report) of each call.
    `sources` are the notebook's code cells, read for forbidden calls before any check runs;
    a notebook that reaches into the grader (source_scan.tampering) is not checked at all.

    A cell that fails ends with CheckFailed (no points) or, with `partial_credit`, with the
    number of its `points` the passed checks earn (harness/points.py), as `check` would."""
    tampering = source_scan.tampering(sources)
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        reports = [
            (
                call.assignment,
                _not_checked(call, tampering[0])
                if tampering
                else check_one(ask, call, student, secret, sources),
            )
            for call in calls
        ]
        failed = [report for _, report in reports if not report.passed]
        if failed and partial_credit:
            got = sum(
                earned(report, suite_exercise(call.assignment, call.exercise).checks, share)
                for call, share, (_, report) in zip(calls, shares(calls, points), reports)
            )
            print(f"{got:g} of {points:g} points. Read the ✗ lines and hints above.")
    outputs = [NotebookNode(output_type="stream", name="stdout", text=printed.getvalue())]
    if failed and partial_credit:
        outputs.append(
            NotebookNode(
                output_type="execute_result",
                execution_count=None,
                metadata={},
                data={"text/plain": repr(got)},
            )
        )
    elif failed:
        summary = f"{failed[0].summary()} Read the ✗ lines and hints above."
        outputs.append(
            NotebookNode(
                output_type="error",
                ename="CheckFailed",
                evalue=summary,
                traceback=[f"CheckFailed: {summary}"],
            )
        )
    return outputs, reports


def shares(calls: list, points: float) -> list:
    """Each call's points: what it says, else an equal share of what the others leave."""
    said = sum(call.points for call in calls if call.points is not None)
    unsaid = [call for call in calls if call.points is None]
    rest = max(0.0, points - said) / len(unsaid) if unsaid else 0.0
    return [call.points if call.points is not None else rest for call in calls]


def check_one(ask, call: CheckCall, student: str, secret: bytes, sources: list) -> Report:
    """The Report of one `check(...)` call, its verdicts printed as `check` prints them."""
    suite = suite_exercise(call.assignment, call.exercise)
    seed = hidden_seed(secret, student, call) if call.hidden else 0
    found = source_scan.shortcuts(sources, call.name, suite.forbidden)
    if found:
        return _failed(call, seed, "uses no shortcut", shortcut_used(call.exercise, *found[0]))
    kernel = RemoteKernel(ask, guard=(call.assignment, call.exercise))
    try:
        impl = kernel.lookup(call.name)
        return run(
            call.exercise,
            impl,
            suite.checks,
            suite.forbidden,
            hints=suite.hints,
            hidden=call.hidden,
            seed=seed,
        )
    except Mistake as mistake:  # no such name in the notebook
        return _failed(call, seed, f"{call.name} is defined", mistake)
    except TypeError as error:  # run's: the name is not a function
        return _failed(
            call, seed, f"{call.name} is a function", Mistake(str(error), "", "not_a_function")
        )


def _not_checked(call: CheckCall, tampering: tuple) -> Report:
    number, what = tampering
    message = (
        f"your notebook reaches into the grader (code cell {number}: {what}), so its answers "
        "cannot be trusted: not checked."
    )
    hint = "remove that code: a notebook calls check() and nothing else of the grader."
    return _failed(call, 0, "leaves the grader alone", Mistake(message, hint, "tampering"))


def _failed(call: CheckCall, seed: int, check: str, mistake: Mistake) -> Report:
    """A Report of one failed check that stops the exercise before its checks run."""
    print(f"{call.exercise}: ✗ {check}\n      {mistake.message}")
    if mistake.hint:
        print(f"      hint: {mistake.hint}")
    result = Result(check, False, mistake.message, mistake.hint, mistake.key)
    return Report(call.exercise, seed, call.hidden, [result])


def report_record(assignment: str, report: Report) -> dict:
    """A Report as the class report and feedback read it (what grader._record leaves)."""
    return {"assignment": assignment, **dataclasses.asdict(report)}
