"""The check harness: run an exercise's checks on a student's function and explain each failure.

A check is a plain function `check_something(impl, rng)`. The first line of its docstring says
what it verifies. It draws inputs from `rng`, calls `impl` (the student's function, already wrapped
by `guarded`), compares the result with a trusted oracle computed in float64, and raises `Mistake`
when it is wrong: a message that says what was seen, a hint that says how to fix it, and a key
that names the mistake (so the project's tests can assert *which* mistake was recognised).

The same checks run three ways: in the notebook's visible check cells (fixed seed), in nbgrader's
hidden test cells (fresh seed every grading run), and under pytest.

What a suite uses to compare a result with its oracle:

    expect_close(out, ref, dtype, what, suspects, nonfinite, *, reduction=None, condition=None)

checks shape, dtype, NaN/inf, then the relative error ||out - ref|| / ||ref|| against
`tolerance(dtype, reduction, condition)`: the rounding a right answer computed in `dtype` can show
(see `tolerance` for why this bound). By default `reduction` is the longest axis of the reference
and of the tensors the check passed to the student's function, and `condition` the largest
magnitude among those inputs' entries (`note_inputs` notes them; `guarded` does it for every
call); pass either where the check knows better, e.g. `condition=` the largest |logit| when the
logits are products of the inputs. When `out` is off, the first suspect it matches names the
mistake (`Mistake.key`); when it matches none, `diagnose` says what it shows: `Mistake.key` stays
"wrong_values" (or "wrong_shape") and `Mistake.diagnosis` is one of DIAGNOSES (transposed,
permuted, reshaped, wrong_axis, scaled, scaled_per_slice, wrong_order, partly_wrong, all_zero,
lost_precision, imprecise, first_wrong_entry), which `Report.diagnoses` collects. The message
always ends with the first wrong entry (index, got, expected) and the shape.
`recorded_comparisons()` records every comparison's error and tolerance (tools/seed_sweep.py).
"""

import contextlib
import contextvars
import dataclasses
import importlib.util
import inspect
import itertools
import linecache
import math
import os
import secrets
import sys
import sysconfig
import traceback

import torch

from grader.harness.guard import ShortcutGuard, ShortcutUsed
from grader.harness.measuring import measuring


class Mistake(AssertionError):
    """A check found a wrong result. `key` names the mistake; `hint` says how to fix it;
    `diagnosis` names what `diagnose` saw in a wrong result no named mistake matches (a key of
    DIAGNOSES, or "")."""

    def __init__(
        self, message: str, hint: str = "", key: str = "wrong_values", diagnosis: str = ""
    ):
        super().__init__(message)
        self.message = message
        self.hint = hint
        self.key = key
        self.diagnosis = diagnosis


class NotImplementedYet(Exception):
    """The student's function raised NotImplementedError: the stub's, or torch's own (a 'meta'
    tensor's values read, an operation a dtype lacks). `line` is the student's line that raised
    it ('' when unknown), `message` the error's text."""

    def __init__(self, line: str = "", message: str = ""):
        super().__init__(line)
        self.line, self.message = line, message

    @property
    def is_stub(self) -> bool:
        """Raised by a `raise` of the student's own (the stub's), not by torch inside a call."""
        return not self.line or self.line.lstrip().startswith("raise")


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
    diagnosis: str = ""


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

    @property
    def diagnoses(self) -> set:
        """What `diagnose` saw in the wrong results that no named mistake matched."""
        return {result.diagnosis for result in self.results if result.diagnosis}

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


def crashed_with(mistake: Mistake, error: str, *fragments: str) -> bool:
    """The student's function raised `error` (a type name) with every fragment in its text.

    The error is read from the Mistake's message ("your function raised TypeError: ..."), which
    reads the same whether the function ran here or in the student's kernel (autograde/remote.py,
    where only the message comes back)."""
    return (
        mistake.key == "raised"
        and mistake.message.startswith(f"your function raised {error}:")
        and all(fragment in mistake.message for fragment in fragments)
    )


def named_crash(mistake: Mistake, key: str) -> Mistake:
    """The crash `mistake`, reported as the mistake `key` of HINTS: the error's text stays, so the
    student sees both what torch said and what it means."""
    description, fix = hint(key)
    return Mistake(f"{mistake.message}\n      It looks like {description}.", fix, key)


@contextlib.contextmanager
def naming_crashes(*rules):
    """Inside, a crash that is the signature of one mistake is reported as that mistake: each
    rule is (key, error type name, text fragments...), and the first that matches wins."""
    try:
        yield
    except Mistake as mistake:
        for key, error, *fragments in rules:
            if crashed_with(mistake, error, *fragments):
                raise named_crash(mistake, key) from None
        raise


# ----------------------------------------------------------------------------- how close is right

# How far above the typical rounding error a right answer may land: the reference solutions'
# worst error over thousands of seeds (tools/seed_sweep.py) stays well below `tolerance`.
ROUNDING_SAFETY = 4


def unit_roundoff(dtype: torch.dtype) -> float:
    """u = eps / 2: the largest relative error of rounding one real number to `dtype` (0 for
    integers and booleans, which are compared exactly)."""
    if not (dtype.is_floating_point or dtype.is_complex):
        return 0.0
    return torch.finfo(dtype).eps / 2


def tolerance(dtype: torch.dtype, reduction: int = 1, condition: float = 1.0) -> float:
    """The relative error ||out - ref|| / ||ref|| that a right answer computed in `dtype` may
    show against the float64 reference:

        ROUNDING_SAFETY * u * (sqrt(reduction) + condition)  +  u ** (2/3)

    The first term is the rounding of a stable computation. Each intermediate result is rounded
    to `dtype`, each time by a relative error of at most u (`unit_roundoff`), and that grows:
    - a sum of n terms (a dot product, a row sum, a scan over n steps) rounds n partial sums;
      their errors have random signs and grow like sqrt(n) * u (the worst case, n * u, is not
      approached by random data, and blocked or pairwise sums stay below sqrt(n) * u);
    - exp(z) turns an absolute error of z into the same relative error of exp(z), and a z of
      magnitude M computed in `dtype` carries an absolute error of about M * u. So softmax
      weights of logits near 1000 are right only to about 1000 * u in *any* formulation:
      exp(x - max) and exp(x - logsumexp(x)) differ by that much in float32. `condition` is
      that M, how many times the computation may amplify a rounding error (at least 1);
    - a handful of other operations per entry add a few u more: ROUNDING_SAFETY covers them
      and the seeds where the errors happen to line up.
    The second term lets a right formula be computed in a way that cancels: exp(x) - 1 for a
    small x, or the difference of two nearly equal sums, loses digits to the cancellation. Up to
    a third of the dtype's digits may go (float64 2.4e-11, float32 1.5e-5, float16 6.2e-3,
    bfloat16 2.5e-2); a mistake costs far more (a float32 step in float64 work 1e-8 and up, a
    wrong formula 1e-2 and up).
    """
    return _tolerance(dtype, math.sqrt(max(reduction, 1)) + max(condition, 1.0))


def _tolerance(dtype: torch.dtype, growth: float) -> float:
    """`tolerance` for a rounding error that grows `growth` = sqrt(reduction) + condition times."""
    u = unit_roundoff(dtype)
    return ROUNDING_SAFETY * u * growth + u ** (2 / 3)


# The tolerance by dtype for comparisons a suite makes itself, outside expect_close: sums of up
# to 64 terms of values up to 4. (expect_close works out its own from what it is given.)
TOLERANCE = {
    dtype: tolerance(dtype, reduction=64, condition=4.0)
    for dtype in (torch.float64, torch.float32, torch.float16, torch.bfloat16)
}

# The tensors the running check has passed to the student's function (see `guarded`): the
# rounding a right answer may show depends on their sizes and magnitudes.
_check_inputs = contextvars.ContextVar("check_inputs", default=None)


def note_inputs(*values) -> None:
    """Note the tensors among `values` as inputs of the running check (a no-op outside one):
    whatever calls the student's function on a check's behalf passes it the call's arguments."""
    noted = _check_inputs.get()
    if noted is not None:
        noted.extend(value for value in values if isinstance(value, torch.Tensor))


def rounding_scales(ref: torch.Tensor) -> tuple:
    """(reduction, condition) for `tolerance` when a check does not say: the longest axis of the
    reference and of the check's inputs (no sum can be longer in an attention-like computation),
    and the largest magnitude among the inputs' entries (a softmax amplifies rounding by the
    logits' magnitude)."""
    tensors = [ref, *(_check_inputs.get() or ())]
    reduction = max(max(t.shape, default=1) for t in tensors)
    magnitudes = [_magnitude(t) for t in tensors[1:] if t.is_floating_point()]
    return reduction, max(magnitudes, default=1.0)


def _magnitude(t: torch.Tensor) -> float:
    """The largest |entry| of `t` that carries information through exp: finite, and below 1 / u,
    beyond which the entry's own rounding error exceeds 1 (a stand-in for -inf in a mask)."""
    values = t.detach().abs()
    kept = values[torch.isfinite(values) & (values < 1 / unit_roundoff(t.dtype))]
    return float(kept.max()) if kept.numel() else 0.0


@dataclasses.dataclass
class Comparison:
    """One comparison expect_close made: the relative error it saw and the tolerance."""

    what: str
    error: float
    allowed: float


_comparisons = contextvars.ContextVar("comparisons", default=None)


@contextlib.contextmanager
def recorded_comparisons():
    """Inside, every comparison expect_close makes is appended to the list this yields, as a
    Comparison: how close right answers come to their tolerance (tools/seed_sweep.py)."""
    comparisons = []
    token = _comparisons.set(comparisons)
    try:
        yield comparisons
    finally:
        _comparisons.reset(token)


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
        inputs = _check_inputs.get() or ()
        if any(t.is_floating_point() and t.dtype == dtype for t in inputs):
            raise Mistake(
                f"{what} has dtype {out.dtype}, expected {dtype} (the input's dtype).",
                hint="return the input's dtype: compute in it, or cast back before returning "
                "(out.to(x.dtype)); a tensor made without dtype= is float32, and .float() or "
                ".double() is fine inside only when the result is cast back.",
                key="wrong_dtype",
            )
        raise Mistake(  # nothing given has that dtype: the function's docstring says it
            f"{what} has dtype {out.dtype}, expected {dtype}.",
            hint="return the dtype the docstring asks for (a dtype= argument, or the default).",
            key="wrong_dtype",
        )


def expect_close(
    out,
    ref: torch.Tensor,
    dtype: torch.dtype,
    what: str = "output",
    suspects: list = (),
    nonfinite: Mistake = None,
    *,
    reduction: int = None,
    condition: float = None,
) -> None:
    """Check `out` (expected in `dtype`) against the float64 reference `ref`; name the mistake.

    `suspects` lists `(key, tensor)` pairs: the result that the mistake named `key` in HINTS would
    have produced on these inputs. When `out` is off but matches a suspect, that mistake and its
    hint are reported; when it matches none, `diagnose` says what it sees. `nonfinite` is the
    Mistake to raise when `out` has NaN or inf where the reference is finite.

    The error allowed is `tolerance(dtype, reduction, condition)`; each defaults to what
    `rounding_scales` reads from the reference and the check's inputs. Pass `reduction` (the
    longest sum behind one entry) or `condition` (the largest magnitude that goes through exp,
    e.g. of the logits when only q and k are inputs) where the check knows better.
    """
    default_reduction, default_condition = rounding_scales(ref)
    reduction = default_reduction if reduction is None else reduction
    condition = default_condition if condition is None else condition
    growth = math.sqrt(max(reduction, 1)) + max(condition, 1.0)
    tol = _tolerance(dtype, growth)
    if isinstance(out, torch.Tensor) and tuple(out.shape) != tuple(ref.shape):
        _raise_if_suspect(out, suspects, what, tol, "the wrong shape")
        _raise_if_rearranged(out, ref, what, tol)
    expect_tensor(out, what, ref.shape, dtype)
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
    recorded = _comparisons.get()
    if recorded is not None:
        recorded.append(Comparison(what, error, tol))
    if error <= tol:
        return
    _raise_if_suspect(out, suspects, what, tol, f"relative error {error:.1e}")
    diagnosis = diagnose(out.detach().double().cpu(), ref.detach().double().cpu(), dtype, growth)
    seen = [
        f"{what} is off: relative error {error:.1e} against the float64 reference (allowed "
        f"{tol:.1e} for {dtype}).",
        diagnosis.seen,
        first_wrong_entry(out, ref, tol),
    ]
    raise Mistake(" ".join(part for part in seen if part), diagnosis.fix, diagnosis=diagnosis.key)


def _raise_if_suspect(out: torch.Tensor, suspects: list, what: str, tol: float, seen: str) -> None:
    for key, wrong in suspects:
        if wrong.shape == out.shape and relative_error(out, wrong) <= tol:
            description, fix = hint(key)
            raise Mistake(f"{what} is off ({seen}): it matches {description}.", fix, key)


# ----------------------------------------------------------------------------- what a wrong result shows

# What the diagnostics below can recognise in a wrong result that no named mistake matches. Keys
# go to Mistake.diagnosis (Mistake.key stays "wrong_values", or "wrong_shape", so a suite can
# still refine an unnamed mistake); suites and their tests may rely on these keys.
DIAGNOSES = {
    "all_zero": (
        "It is all zeros.",
        "something zeroes every entry: a condition turned around (torch.where's two branches "
        "swapped, a mask that hides everything), a factor that is 0, or a result that is "
        "never written (a loop step or a kernel's tile not stored into the tensor you return).",
    ),
    "imprecise": (
        "It is close, but {ratio:.2g} times further off than rounding explains.",
        "the formula is right but computed in a way that loses precision: exp of a large "
        "number, a difference of two nearly equal large numbers, or a long sum kept in a "
        "lower precision than the input's.",
    ),
    "lost_precision": (
        "It is right only to {low} precision, as if part of your function computed in {low}.",
        "keep every tensor in the input's dtype: a tensor made without dtype= "
        "(torch.tensor(d), torch.ones(n), torch.arange(n) as floats) is float32, and so is a "
        ".float(); use math.sqrt(d) for a number, or dtype=x.dtype for a new tensor.",
    ),
    "transposed": (
        "It equals the answer with its last two dims swapped.",
        "swap only the dims you mean to, by number: x.transpose(-2, -1), never .T or "
        "transpose(0, 1), which pick other dims when there are leading ones.",
    ),
    "permuted": (
        "It equals the answer with its dims reordered: answer.permute{order}.",
        "follow the shape comments through each step: a transpose or permute that moves "
        "the wrong dims, or dims indexed from the front where the leading dims vary.",
    ),
    "reshaped": (
        "It holds the answer's values in the answer's order, in shape {shape}.",
        "dims were merged, split, kept or dropped: check keepdim=, squeeze and unsqueeze, "
        "and reshape the result back to the documented shape.",
    ),
    "wrong_axis": (
        "It sums to 1 over {got} where the answer sums to 1 over {expected}.",
        "normalise along the dim the docstring names: pass that dim (and keepdim=True) to "
        "every max and sum, not a different one or none at all.",
    ),
    "scaled": (
        "It is the answer times {factor}.",
        "a scale factor is missing, doubled or inverted: check each multiplication and "
        "division by a constant (1/sqrt(d), a normalisation, a sign).",
    ),
    "wrong_order": (
        "It has the answer's values, in the wrong places.",
        "the values are right but land elsewhere: a reshape or view where a transpose was "
        "needed, an index or an offset mixed up, or a flip/roll along an axis.",
    ),
    "partly_wrong": (
        "Only the entries with index {where} along dim {dim} (of {size}) are wrong.",
        "look at what those positions share, and at what in your code depends on the index "
        "there: a mask (what it hides, where its edge is, its fill value); a bound that stops "
        "one short or goes one too far; a formula of the position (an exponent, an angle, an "
        "offset); a last block shorter than the others.",
    ),
    "scaled_per_slice": (
        "Each slice at one index along dim {dim} is the answer times a factor of its own "
        "({low} to {high}).",
        "something computed once per slice is missing or taken over the wrong entries: a "
        "normalisation (a sum, a count, a softmax's denominator), a decay or a gate, or a max "
        "or scale taken for another slice.",
    ),
    "first_wrong_entry": (
        "",
        "no known mistake matches: follow the docstring's formula step by step on a small "
        "input of your own, printing the shape and a few values after each step.",
    ),
}


@dataclasses.dataclass
class Diagnosis:
    key: str
    seen: str
    fix: str


def _diagnosis(key: str, **details) -> Diagnosis:
    seen, fix = DIAGNOSES[key]
    return Diagnosis(key, seen.format(**details), fix)


def diagnose(out: torch.Tensor, ref: torch.Tensor, dtype: torch.dtype, growth: float) -> Diagnosis:
    """What a wrong `out` (expected in `dtype`; same shape as `ref`, finite where `ref` is, both
    float64) shows, from the most specific to the least: the first diagnostic that recognises
    it, else first_wrong_entry. `growth` is the rounding's growth `tolerance` allowed for."""
    if not torch.isfinite(ref).all() or not torch.isfinite(out).all():
        return _diagnosis("first_wrong_entry")  # -inf where expected: compare entry by entry
    tol = _tolerance(dtype, growth)
    if not out.any() and ref.any():
        return _diagnosis("all_zero")
    found = _lost_precision(out, ref, dtype, growth)
    if found is not None:
        return found
    for recognise in (
        _imprecise,
        _rearranged,
        _normalised_elsewhere,
        _scaled,
        _wrong_order,
        _scaled_per_slice,
        _partly_wrong,
    ):
        found = recognise(out, ref, tol)
        if found is not None:
            return found
    return _diagnosis("first_wrong_entry")


def first_wrong_entry(out: torch.Tensor, ref: torch.Tensor, tol: float) -> str:
    """'First wrong entry at index (...): got ..., expected ...; n of N entries are wrong, shape
    (...).': one entry the student can work out by hand for the same inputs."""
    out, ref = out.detach().double().cpu(), ref.detach().double().cpu()
    wrong = wrong_entries(out, ref, tol)
    # when the error is spread thinly over every entry, none is wrong alone: show the largest
    first = wrong if wrong.any() else (out - ref).abs() == (out - ref).abs().max()
    index = tuple(torch.nonzero(first)[0].tolist())
    got, expected = out[index].item(), ref[index].item()
    digits = _digits_that_differ(got, expected)
    return (
        f"First wrong entry at index {index}: got {got:.{digits}g}, expected "
        f"{expected:.{digits}g}; {int(wrong.sum())} of {ref.numel()} entries are wrong, "
        f"shape {tuple(ref.shape)}."
    )


def _digits_that_differ(a: float, b: float) -> int:
    """Significant digits enough to show where a and b differ (6 at least, 17 at most)."""
    if a == b or not math.isfinite(a - b) or b == 0:
        return 6
    return min(17, max(6, 2 - math.floor(math.log10(abs(a - b) / abs(b)))))


def wrong_entries(out: torch.Tensor, ref: torch.Tensor, tol: float) -> torch.Tensor:
    """Where `out` is off by more than its share of the tolerance: tol times the entry's own
    size plus the typical size of the reference's entries (float64 inputs, bool result)."""
    typical = ref.pow(2).mean().sqrt() if ref.numel() else ref.new_zeros(())
    allowed = tol * (ref.abs() + typical)
    return ~((out - ref).abs() <= allowed)  # NaN counts as wrong


# Floating dtypes from the most precise down: a result right only to a less precise one's tolerance
# was computed, in part, in that dtype.
_PRECISIONS = (torch.float64, torch.float32, torch.float16, torch.bfloat16)


def _lost_precision(out, ref, dtype, growth):
    error = relative_error(out, ref)
    for low in _PRECISIONS[_PRECISIONS.index(dtype) + 1 :] if dtype in _PRECISIONS else ():
        # a half-precision result gives itself away: each value is one that dtype can hold
        held = low == torch.float32 or torch.equal(out.to(low).double(), out)
        if held and error <= _tolerance(low, growth):
            return _diagnosis("lost_precision", low=str(low).replace("torch.", ""))
    return None


# An error up to this many times the tolerance, and below 0.1%, is a matter of precision only.
IMPRECISE = 100


def _imprecise(out, ref, tol):
    error = relative_error(out, ref)
    if error <= min(IMPRECISE * tol, 1e-3):
        return _diagnosis("imprecise", ratio=error / tol)
    return None


def _raise_if_rearranged(out, ref: torch.Tensor, what: str, tol: float) -> None:
    """A result of the wrong shape that holds the answer transposed, permuted or reshaped."""
    if out.numel() != ref.numel() or out.is_complex() or not out.is_floating_point():
        return
    found = _rearranged(out.detach().double().cpu(), ref.detach().double().cpu(), tol)
    if found is None and relative_error(out.reshape(ref.shape), ref) <= tol:
        found = _diagnosis("reshaped", shape=tuple(out.shape))
    if found is not None:
        raise Mistake(
            f"{what} has shape {tuple(out.shape)}, expected {tuple(ref.shape)}. {found.seen}",
            found.fix,
            "wrong_shape",
            diagnosis=found.key,
        )


def _rearranged(out, ref, tol):
    """The answer with its dims transposed or permuted (any order that gives out's shape)."""
    if ref.dim() > 6:
        return None  # 720 orders is the most worth trying
    for order in itertools.permutations(range(ref.dim())):
        if order == tuple(range(ref.dim())):
            continue
        moved = ref.permute(order)
        if moved.shape == out.shape and relative_error(out, moved) <= tol:
            swapped_last_two = (*range(ref.dim() - 2), ref.dim() - 1, ref.dim() - 2)
            if order == swapped_last_two:
                return _diagnosis("transposed")
            return _diagnosis("permuted", order=order)
    return None


def _normalised_elsewhere(out, ref, tol):
    """A distribution over the wrong dims: out sums to 1 over dims where the answer does not."""
    if (ref < 0).any() or (out < 0).any() or ref.dim() == 0:
        return None
    groups = [(d,) for d in range(ref.dim())] + [
        tuple(range(first, ref.dim())) for first in range(ref.dim() - 1)
    ]  # each dim alone, and each run of trailing dims (all of them: the whole tensor)
    groups = [dims for dims in groups if math.prod(ref.shape[d] for d in dims) > 1]
    expected = [dims for dims in groups if _sums_to_one(ref, dims)]
    got = [dims for dims in groups if _sums_to_one(out, dims) and dims not in expected]
    if not expected or not got:
        return None
    return _diagnosis(
        "wrong_axis", got=_dims(got[0], ref.dim()), expected=_dims(expected[0], ref.dim())
    )


def _sums_to_one(x: torch.Tensor, dims: tuple) -> bool:
    """Every slice over `dims` sums to 1 (or to 0: a slice with nothing to attend to), some to 1."""
    sums = x.sum(dim=dims)
    one, zero = (sums - 1).abs() <= 1e-3, sums.abs() <= 1e-3
    return bool((one | zero).all() and one.any())


def _dims(dims: tuple, ndim: int) -> str:
    if len(dims) == ndim and ndim > 1:
        return "the whole tensor"
    if len(dims) == 1:
        return f"dim {dims[0]}"
    return f"dims {dims} together"


def _scaled(out, ref, tol):
    """out = c * ref for one number c."""
    factor = float((out * ref).sum() / ref.pow(2).sum())
    if relative_error(out, factor * ref) <= tol:
        return _diagnosis("scaled", factor=_describe_factor(factor))
    return None


def _describe_factor(c: float) -> str:
    """c, and the simple number it is when it is one: n, 1/n, sqrt(n) or 1/sqrt(n), n <= 4096."""
    sign, size = ("-" if c < 0 else ""), abs(c)
    if abs(size - 1) <= 1e-6:
        return f"{c:.6g} (the sign is flipped)"
    for form, value in (
        ("{}", size),
        ("1/{}", 1 / size),
        ("sqrt({})", size**2),
        ("1/sqrt({})", size**-2),
    ):
        n = round(value)
        if 2 <= n <= 4096 and abs(value - n) <= 1e-6 * n:
            return f"{c:.6g} = {sign}{form.format(n)}"
    return f"{c:.6g}"


def _wrong_order(out, ref, tol):
    """The same values as the answer (sorted, they match), in other places."""
    if relative_error(out.flatten().sort().values, ref.flatten().sort().values) <= tol:
        return _diagnosis("wrong_order")
    return None


def _partly_wrong(out, ref, tol):
    """The wrong entries all sit at a few indices along one dim; the rest is right."""
    wrong = wrong_entries(out, ref, tol)
    best = None
    for dim in range(ref.dim()):
        others = [d for d in range(ref.dim()) if d != dim]
        indices = wrong.any(dim=others) if others else wrong  # (size of dim,)
        if indices.any() and not indices.all():
            share = float(indices.float().mean())
            if best is None or share < best[0]:
                best = (share, dim, torch.nonzero(indices).flatten().tolist())
    if best is None:
        return None
    _, dim, where = best
    return _diagnosis("partly_wrong", where=_ranges(where), dim=dim, size=ref.shape[dim])


def _ranges(indices: list) -> str:
    """[0, 1, 2, 5, 7, 8] -> '0..2, 5, 7..8' (at most four runs, then how many more)."""
    runs = []
    for i in indices:
        if runs and i == runs[-1][1] + 1:
            runs[-1][1] = i
        else:
            runs.append([i, i])
    text = [f"{a}..{b}" if b > a else f"{a}" for a, b in runs[:4]]
    if len(runs) > 4:
        text.append(f"and {len(runs) - 4} more runs")
    return ", ".join(text)


def _scaled_per_slice(out, ref, tol):
    """out = c * ref with one c per slice along a dim (a row's missing normalisation, say)."""
    for dim in reversed(range(ref.dim())):
        if ref.shape[dim] < 2:
            continue
        norms = ref.pow(2).sum(dim, keepdim=True)
        factors = torch.where(norms > 0, (out * ref).sum(dim, keepdim=True) / norms, 1.0)
        if relative_error(out, factors * ref) <= tol:
            low, high = float(factors.min()), float(factors.max())
            return _diagnosis("scaled_per_slice", dim=dim, low=f"{low:.3g}", high=f"{high:.3g}")
    return None


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


# Where code that is not the student's lives: torch, the grader, the course's own library (an
# editable install keeps it outside site-packages), the standard library, packages.
GRADER_DIR = os.path.dirname(
    os.path.dirname(__file__)
)  # grader/, suites included, not only harness/
COURSE_DIR = os.path.dirname(importlib.util.find_spec("course").origin)
NOT_STUDENT_CODE = tuple(
    {
        os.path.dirname(torch.__file__),
        GRADER_DIR,
        COURSE_DIR,
        *(sysconfig.get_paths()[key] for key in ("stdlib", "purelib", "platlib")),
    }
)


@contextlib.contextmanager
def on_student_lines(on_line):
    """Inside, `on_line()` runs before each line of the student's own Python (not the grader's,
    torch's or the standard library's: their frames are not traced at all, which keeps it fast)."""

    def local(frame, event, arg):
        if event == "line":
            on_line()
        return local

    def trace(frame, event, arg):
        return None if frame.f_code.co_filename.startswith(NOT_STUDENT_CODE) else local

    outer = sys.gettrace()
    sys.settrace(trace)
    try:
        yield
    finally:
        sys.settrace(outer)


class StudentLines:
    """Counts the lines of the student's own Python that run inside the block (`.count`)."""

    def __enter__(self):
        self.count = 0
        self.remote = None  # the kernel's count, when the student's code ran there
        self._tracing = on_student_lines(self._count_line)
        self._tracing.__enter__()
        return self

    def _count_line(self):
        self.count += 1

    def __exit__(self, *exc_info):
        self._tracing.__exit__(*exc_info)
        if self.remote is not None:  # the student's code ran in their kernel: here, the grader's
            self.count = self.remote

    def absorb(self, seen: dict):
        """Count the lines the same probe counted in the student's kernel (see measuring)."""
        self.remote = (self.remote or 0) + seen["count"]


def student_lines(call) -> int:
    """How many lines of the student's own Python run while `call()` runs: a loop over positions
    shows up as a count that grows with the length (in the student's kernel too)."""
    lines = StudentLines()
    with measuring("grader.harness.checking:StudentLines", lines.absorb), lines:
        call()
    return lines.count


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
    """Wrap the student's `fn` so that a shortcut, a stub or a crash becomes a readable Mistake.

    A function the autograder calls in the student's kernel (grader/autograde/remote.py) is
    guarded there, and raises these Mistakes itself: it is returned as it is."""
    if getattr(type(fn), "guards_its_calls", False):
        return fn
    forbidden = {**course_references(exercise), **forbidden}

    def call(*args, **kwargs):
        note_inputs(*args, *kwargs.values())
        guard = ShortcutGuard(exercise, forbidden)
        try:
            # What the student's code prints to stderr (a debugging line, a warning) shows on
            # stdout: nbgrader zeroes a test cell with any stderr output, correct or not.
            with guard, contextlib.redirect_stderr(sys.stdout):
                result = fn(*args, **kwargs)
        except ShortcutUsed:
            pass  # reported below, from the guard's record, even if the student's code caught it
        except NotImplementedError as exc:
            raise NotImplementedYet(_student_code(exc), str(exc)) from exc
        except Exception as exc:
            raise Mistake(
                f"your function raised {type(exc).__name__}: {exc}{_student_line(exc)}",
                hint=raised_hint(type(exc).__name__, str(exc), _student_code(exc)),
                key="raised",
            ) from exc
        if guard.tripped:
            raise shortcut_used(exercise, *guard.tripped)
        return result

    call.__wrapped__ = fn  # the student's own object, for suites that need the class itself
    return call


def shortcut_used(exercise: str, name: str, advice: str) -> Mistake:
    """The mistake of calling `name`, which `exercise` forbids; `advice` says what to do instead
    (write the step yourself, or call what the notebook gives)."""
    return Mistake(
        f"{exercise} calls {name}, which this exercise does not allow.", advice, "shortcut"
    )


def raised_hint(error: str, message: str, line: str) -> str:
    """The hint for an exception the student's code raised (of type name `error`, at their
    `line`) that no check names: what that kind of error usually means."""
    if line.lstrip().startswith("raise "):
        device = (
            " (a device kept as None or 'cpu' never equals a torch.device)"
            if "device" in line or "device" in message
            else ""
        )
        return (
            "your own raise fired on the check's input, which is valid: print the values its "
            f"condition compares, and their types{device}."
        )
    if "meta tensor" in message:
        return (
            "the check passed tensors on the 'meta' device, which have shapes but no values: "
            "code that reads values (.item(), .tolist(), a Python if on a tensor) cannot run "
            "there; compute with tensor operations, on the input's device."
        )
    if "expected device" in message or "same device" in message:
        return (
            "two tensors on different devices met in one operation: a tensor made without "
            "device= is on the CPU. Pass device=x.device (x an input) to every torch.arange, "
            "torch.ones, torch.zeros or torch.full that you create."
        )
    if "not implemented for" in message:
        return (
            "this operation does not take that dtype (e.g. & and | need bool or integer "
            "tensors, not floats): print the dtype of each operand at that line."
        )
    if error == "KeyError":
        return (
            f"a KeyError is a dict read with a key it does not hold ({message}): find where that "
            "entry should have been stored (d[key] = ...) and check that it was."
        )
    if error == "IndexError":
        return "an index past the end of a dim: print the shapes and the index at that line."
    if error == "RuntimeError" and ("size" in message or "shape" in message):
        return "read the error and the line it points to: shape errors name both shapes."
    return "read the error and the line it points to."


def _student_line(exc: BaseException) -> str:
    """An 'at: <code>' line for the innermost frame of the student's own code, or ''."""
    line = _student_code(exc)
    return f"\n      at: {line}" if line else ""


def _student_code(exc: BaseException) -> str:
    """The code of the innermost frame of the student's own code that `exc` went through, or ''."""
    frames = [
        frame
        for frame in traceback.extract_tb(exc.__traceback__)
        if not frame.filename.startswith(NOT_STUDENT_CODE)
    ]
    if not frames:
        return ""
    return frames[-1].line or linecache.getline(frames[-1].filename, frames[-1].lineno).strip()


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
    shown = set()  # messages and hints already printed: a repeat says "as above", not all again
    for i, check in enumerate(checks):
        description = check.__doc__.strip().splitlines()[0]
        mistake = _mistake_found(exercise, check, student, torch.Generator().manual_seed(seed + i))
        if mistake is None:
            results.append(Result(description, True))
            say(f"  ✓ {description}")
            continue
        results.append(
            Result(
                description,
                False,
                mistake.message,
                mistake.hint,
                mistake.key,
                mistake.diagnosis,
            )
        )
        say(f"  ✗ {description}\n      {_unless_shown(mistake.message, shown)}")
        say(f"      hint: {_unless_shown(mistake.hint, shown)}")
        if mistake.key in ("not_implemented", "shortcut"):
            break  # every other check would fail the same way
    report = Report(exercise, seed, hidden, results)
    say(report.summary())
    return report


def _unless_shown(text: str, shown: set) -> str:
    """`text`, or "as above" when this report printed it already (one mistake often fails
    several checks the same way)."""
    if text in shown:
        return "as above."
    shown.add(text)
    return text


def _mistake_found(exercise: str, check, student, rng):
    """The Mistake that `check` finds in `student`, or None when it passes."""
    inputs = _check_inputs.set([])  # what the check passes to the student: see rounding_scales
    try:
        check(student, rng)
    except NotImplementedYet as stopped:
        if not stopped.is_stub:  # torch's own: an operation the student's tensors do not support
            return Mistake(
                f"your function raised NotImplementedError: {stopped.message}\n"
                f"      at: {stopped.line}",
                raised_hint("NotImplementedError", stopped.message, stopped.line),
                "raised",
            )
        return Mistake(
            f"{exercise} is not implemented yet.",
            "replace `raise NotImplementedError()` with your code, then run this cell again.",
            "not_implemented",
        )
    except Mistake as found:
        return found
    finally:
        _check_inputs.reset(inputs)
    return None
