"""The check harness: run an exercise's checks on a student's function and explain each failure.

A check is a plain function `check_something(impl, rng)`. The first line of its docstring says
what it verifies. It draws inputs from `rng`, calls `impl` (the student's function, already wrapped
by `guarded`), compares the result with a trusted oracle computed in float64, and raises `Mistake`
when it is wrong: a message that says what was seen, a hint that says how to fix it, and a key
that names the mistake (so the project's tests can assert *which* mistake was recognised).

The same checks run three ways: in the notebook's visible check cells (fixed seed), in nbgrader's
hidden test cells (fresh seed every grading run), and under pytest.
"""

import contextlib
import contextvars
import dataclasses
import inspect
import linecache
import os
import secrets
import sys
import sysconfig
import traceback

import torch

from grader.harness.guard import ShortcutGuard, ShortcutUsed

# Relative error ||out - ref|| / ||ref|| allowed against a float64 reference, by input dtype.
TOLERANCE = {
    torch.float64: 1e-10,
    torch.float32: 1e-5,
    torch.float16: 1e-2,
    torch.bfloat16: 2e-2,
}


class Mistake(AssertionError):
    """A check found a wrong result. `key` names the mistake; `hint` says how to fix it."""

    def __init__(self, message: str, hint: str = "", key: str = "wrong_values"):
        super().__init__(message)
        self.message = message
        self.hint = hint
        self.key = key


class NotImplementedYet(Exception):
    """The student's function still raises the stub's NotImplementedError."""


class CheckFailed(AssertionError):
    """Raised at the end of a check cell when any check failed, so nbgrader awards no points."""

    def _render_traceback_(self):
        # IPython shows this line instead of a traceback: the verdicts printed above say it all.
        return [f"CheckFailed: {self}"]


@dataclasses.dataclass
class Result:
    check: str
    passed: bool
    message: str = ""
    hint: str = ""
    key: str = ""


@dataclasses.dataclass
class Report:
    exercise: str
    seed: int
    hidden: bool
    results: list

    @property
    def passed(self) -> bool:
        return all(result.passed for result in self.results)

    @property
    def keys(self) -> set:
        """The names of the mistakes that were recognised."""
        return {result.key for result in self.results if not result.passed}

    def summary(self) -> str:
        n_passed = sum(result.passed for result in self.results)
        return f"{self.exercise}: {n_passed} of {len(self.results)} checks passed."


# ----------------------------------------------------------------------------- naming mistakes

# The mistakes the running suite can name: key -> (what it looks like, how to fix it). Each suite
# has its own HINTS dict (days may give one key different words); `run` makes it the active one.
_active_hints = contextvars.ContextVar("hints", default={})


def hint(key: str) -> tuple:
    """(what it looks like, how to fix it) for mistake `key` of the running suite."""
    hints = _active_hints.get()
    if key not in hints:
        raise KeyError(f"the running suite names no mistake {key!r} in its HINTS")
    return hints[key]


def named(key: str) -> Mistake:
    """The Mistake for a known mistake in HINTS, for checks that recognise it without a suspect."""
    description, fix = hint(key)
    return Mistake(f"It looks like {description}.", fix, key)


# ----------------------------------------------------------------------------- comparing tensors


def relative_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    """||out - ref|| / ||ref|| in float64 (the plain norm of `out` when `ref` is all zeros)."""
    out, ref = out.detach().double().cpu(), ref.detach().double().cpu()
    diff = torch.linalg.vector_norm(out - ref).item()
    scale = torch.linalg.vector_norm(ref).item()
    return diff / scale if scale > 0 else diff


def expect_tensor(out, what: str, shape: tuple, dtype: torch.dtype) -> None:
    """Exact checks first: a tensor, of the expected shape and dtype."""
    if not isinstance(out, torch.Tensor):
        raise Mistake(
            f"{what} should be a torch.Tensor, got {type(out).__name__}.",
            hint="return the tensor itself (not a list, a number or None).",
            key="not_a_tensor",
        )
    if tuple(out.shape) != tuple(shape):
        raise Mistake(
            f"{what} has shape {tuple(out.shape)}, expected {tuple(shape)}.",
            hint="follow the shapes in the docstring through each step of your code.",
            key="wrong_shape",
        )
    if out.dtype != dtype:
        raise Mistake(
            f"{what} has dtype {out.dtype}, expected {dtype} (the input's dtype).",
            hint="compute in the input's dtype: no .float(), .double() or new "
            "tensors created without dtype=.",
            key="wrong_dtype",
        )


def expect_close(
    out,
    ref: torch.Tensor,
    dtype: torch.dtype,
    what: str = "output",
    suspects: list = (),
    nonfinite: Mistake = None,
) -> None:
    """Check `out` (expected in `dtype`) against the float64 reference `ref`; name the mistake.

    `suspects` lists `(key, tensor)` pairs: the result that the mistake named `key` in HINTS would
    have produced on these inputs. When `out` is off but matches a suspect, that mistake and its
    hint are reported. `nonfinite` is the Mistake to raise when `out` has NaN or inf where the
    reference is finite.
    """
    if isinstance(out, torch.Tensor) and tuple(out.shape) != tuple(ref.shape):
        _raise_if_suspect(out, suspects, what, TOLERANCE.get(dtype, 0.0), "the wrong shape")
    expect_tensor(out, what, ref.shape, dtype)
    tol = TOLERANCE[dtype]
    bad = ~torch.isfinite(out.detach()) & torch.isfinite(ref)
    if bad.any():
        where = tuple(torch.nonzero(bad)[0].tolist())
        seen = (
            f"{what} has {int(bad.sum())} NaN/inf values where the answer is finite "
            f"(first at index {where})."
        )
        if nonfinite is not None:
            raise Mistake(f"{seen} {nonfinite.message}", nonfinite.hint, nonfinite.key)
        raise Mistake(
            seen, hint="look for exp() of a large number, 0/0, or inf - inf.", key="not_finite"
        )
    error = relative_error(out, ref)
    if error <= tol:
        return
    _raise_if_suspect(out, suspects, what, tol, f"relative error {error:.1e}")
    raise Mistake(
        f"{what} is off: relative error {error:.1e} against the float64 reference "
        f"(allowed {tol:.0e} for {dtype}).",
        hint="work through the tiny example above by hand and compare with your result.",
    )


def _raise_if_suspect(out: torch.Tensor, suspects: list, what: str, tol: float, seen: str) -> None:
    for key, wrong in suspects:
        if wrong.shape == out.shape and relative_error(out, wrong) <= tol:
            description, fix = hint(key)
            raise Mistake(f"{what} is off ({seen}): it matches {description}.", fix, key)


def expect_value_error(call, what: str, key: str) -> None:
    """`call()`, which calls the student's guarded function with a bad argument, must raise
    ValueError, the clear error for bad input. Returning, or raising anything else, is the
    mistake `key` (from HINTS)."""
    try:
        call()
    except Mistake as mistake:
        if mistake.key != "raised":
            raise
        if isinstance(mistake.__cause__, ValueError):
            return
        raise Mistake(
            f"{what} raised {type(mistake.__cause__).__name__}, not ValueError: "
            f"{mistake.__cause__}",
            hint(key)[1],
            key,
        ) from None
    raise Mistake(f"{what} was accepted without an error.", hint(key)[1], key)


# Where code that is not the student's lives: torch, the grader, the standard library, packages.
GRADER_DIR = os.path.dirname(
    os.path.dirname(__file__)
)  # grader/, suites included, not only harness/
NOT_STUDENT_CODE = tuple(
    {
        os.path.dirname(torch.__file__),
        GRADER_DIR,
        *(sysconfig.get_paths()[key] for key in ("stdlib", "purelib", "platlib")),
    }
)


def student_lines(call) -> int:
    """How many lines of the student's own Python run while `call()` runs: a loop over positions
    shows up as a count that grows with the length."""
    count = 0

    def local(frame, event, arg):
        nonlocal count
        if event == "line":
            count += 1
        return local

    def trace(frame, event, arg):
        return None if frame.f_code.co_filename.startswith(NOT_STUDENT_CODE) else local

    outer = sys.gettrace()
    sys.settrace(trace)
    try:
        call()
    finally:
        sys.settrace(outer)
    return count


# ----------------------------------------------------------------------------- calling the student


def course_references(exercise: str) -> dict:
    """The course's own library versions of `exercise` (a function of the `course` package with
    the exercise's name, e.g. course.reference.sdpa.stable_softmax): calling one from the student's
    function is a shortcut, whether or not the day's suite lists it."""
    found = {}
    for name, module in list(sys.modules.items()):
        if module is None or not (name == "course" or name.startswith("course.")):
            continue
        fn = getattr(module, exercise, None)
        if fn is None:
            continue
        # Unwrapped: a decorator's wrapper (torch.no_grad's, say) shares its code with every
        # function it decorates, the student's too.
        fn = inspect.unwrap(fn)
        if (
            callable(fn)
            and getattr(fn, "__code__", None) is not None
            and getattr(fn, "__module__", "").startswith("course")
        ):
            found[fn] = (
                f"write {exercise} yourself: {fn.__module__}.{fn.__qualname__} is the "
                "course's reference version."
            )
    return found


def guarded(fn, exercise: str, forbidden: dict):
    """Wrap the student's `fn` so that a shortcut, a stub or a crash becomes a readable Mistake."""
    forbidden = {**course_references(exercise), **forbidden}

    def call(*args, **kwargs):
        guard = ShortcutGuard(exercise, forbidden)
        try:
            # What the student's code prints to stderr (a debugging line, a warning) shows on
            # stdout: nbgrader zeroes a test cell with any stderr output, correct or not.
            with guard, contextlib.redirect_stderr(sys.stdout):
                result = fn(*args, **kwargs)
        except ShortcutUsed:
            pass  # reported below, from the guard's record, even if the student's code caught it
        except NotImplementedError as exc:
            raise NotImplementedYet() from exc
        except Exception as exc:
            raise Mistake(
                f"your function raised {type(exc).__name__}: {exc}{_student_line(exc)}",
                hint="read the error and the line it points to; shape errors name both shapes.",
                key="raised",
            ) from exc
        if guard.tripped:
            name, advice = guard.tripped
            raise Mistake(
                f"{exercise} calls {name}, which this exercise asks you to write yourself.",
                hint=advice,
                key="shortcut",
            )
        return result

    call.__wrapped__ = fn  # the student's own object, for suites that need the class itself
    return call


def _student_line(exc: BaseException) -> str:
    """An 'at: <code>' line for the innermost frame of the student's own code, or ''."""
    torch_dir, grader_dir = os.path.dirname(torch.__file__), GRADER_DIR
    frames = [
        frame
        for frame in traceback.extract_tb(exc.__traceback__)
        if not frame.filename.startswith((torch_dir, grader_dir))
    ]
    if not frames:
        return ""
    line = frames[-1].line or linecache.getline(frames[-1].filename, frames[-1].lineno).strip()
    return f"\n      at: {line}" if line else ""


# ----------------------------------------------------------------------------- running a suite


def run(
    exercise: str,
    impl,
    checks: list,
    forbidden: dict,
    *,
    hints: dict = None,
    hidden: bool = False,
    seed: int = None,
    verbose: bool = True,
) -> Report:
    """Run `checks` on `impl` and return a Report; print the verdicts when `verbose`.

    Visible checks use seed 0; hidden checks draw a fresh seed, printed so a failure can be
    reproduced with `seed=`.
    """
    if not callable(impl):
        raise TypeError(
            f"expected your function {exercise}, got {type(impl).__name__}: "
            f"pass the function itself, e.g. check(..., {exercise})."
        )
    if seed is None:
        seed = secrets.randbelow(2**31) if hidden else 0
    student = guarded(impl, exercise, forbidden)
    active = _active_hints.set(hints or {})
    try:
        return _run_checks(exercise, student, checks, seed, hidden, verbose)
    finally:
        _active_hints.reset(active)


def _run_checks(exercise, student, checks, seed, hidden, verbose) -> Report:
    say = print if verbose else (lambda *args: None)
    say(f"{exercise}: {'hidden checks' if hidden else 'checks'} with seed {seed}")
    results = []
    for i, check in enumerate(checks):
        description = check.__doc__.strip().splitlines()[0]
        rng = torch.Generator().manual_seed(seed + i)
        try:
            check(student, rng)
        except NotImplementedYet:
            mistake = Mistake(
                f"{exercise} is not implemented yet.",
                "replace `raise NotImplementedError()` with your code, then run this cell again.",
                "not_implemented",
            )
        except Mistake as found:
            mistake = found
        else:
            results.append(Result(description, True))
            say(f"  ✓ {description}")
            continue
        results.append(Result(description, False, mistake.message, mistake.hint, mistake.key))
        say(f"  ✗ {description}\n      {mistake.message}\n      hint: {mistake.hint}")
        if mistake.key in ("not_implemented", "shortcut"):
            break  # every other check would fail the same way
    report = Report(exercise, seed, hidden, results)
    say(report.summary())
    return report
