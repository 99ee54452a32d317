"""Checks for mask_density and layers_to_full_reach, against the fraction counted here and a
brute-force reach: the set of keys each query hears, grown one layer at a time.

A reach loop whose stopping test never fires runs forever, so the student's function runs under
a time limit that stops it wherever it runs (here, or in the student's kernel when grading).
"""

import math
import time

import torch

from grader.harness.checking import (
    Mistake,
    NotImplementedYet,
    hint,
    on_student_lines,
)
from grader.harness.measuring import measuring
from grader.suites import Exercise
from grader.suites._common import draw
from grader.suites.day05_sparse.masks import global_rule, strided_rule
from grader.suites.day05_sparse.shared import FORBIDDEN_BUILDERS, brute_mask, window_rule

HINTS = {
    "count_not_fraction": (
        "the number of True entries instead of their fraction",
        "divide by the number of entries, mask.numel().",
    ),
    "per_row_count": (
        "the number of keys per query (a row's count) instead of the fraction of all entries",
        "divide the whole count by mask.numel(), not by the number of rows.",
    ),
    "square_count": (
        "a count divided by the square of one side, shape[0] ** 2 or shape[-1] ** 2",
        "mask.numel() counts every entry, for non-square and batched masks too.",
    ),
    "first_row_only": (
        "the density of one row, or of one mask of a batch (mask[0], or mean(-1)[0]), "
        "instead of the whole mask's",
        "average over every entry at once: mask.float().mean().item(), with no dim and no "
        "indexing, or mask.sum().item() / mask.numel().",
    ),
    "mean_over_one_dim": (
        "a mean (or sum) over one dim only, which leaves several numbers: .item() then fails",
        "reduce over every entry: mask.float().mean() with no dim (a batch (B, L, L) too), "
        "then .item().",
    ),
    "fraction_of_false": (
        "the fraction of False entries (1 - density)",
        "count the True entries: True = may attend, the pairs that are computed.",
    ),
    "integer_division": (
        "integer division: count // numel is 0 below 1",
        "divide with /, which gives a float: mask.sum().item() / mask.numel().",
    ),
    "low_precision": (
        "a mean in float16 or bfloat16 (about 3 significant digits)",
        "count in float32 or as an int: mask.float().mean().item(), or "
        "mask.sum().item() / mask.numel().",
    ),
    "mean_of_bool": (
        "mean() of a bool tensor, which torch does not define",
        "convert first: mask.float().mean().item().",
    ),
    "tensor_not_float": (
        "a 0-d tensor, not a Python float",
        "return a number: .item() turns a one-element tensor into a Python float.",
    ),
    "forgot_self": (
        "reach through the mask alone, without each position keeping its own state",
        "a layer keeps what a position already knew (the residual stream): one "
        "step is mask | I, with I = torch.eye(L, dtype=torch.bool).",
    ),
    "off_by_one_layers": (
        "a layer count one too high or too low",
        "one layer of mask | I is n = 1; count the layers applied until the "
        "reach matrix is all True.",
    ),
    "never_stops": (
        "a loop that never stops when full reach never happens (no test for a step that adds "
        "nothing)",
        "once a step adds nothing, R_{n+1} == R_n, nothing will ever grow: return None then "
        "(and at most L - 1 layers are ever needed, so `for n in range(1, L + 1)` is a safe "
        "bound).",
    ),
    "cycles_without_self": (
        "a loop whose 'nothing new' test never fires: without I the reach can cycle "
        "(a ring passes each key on) instead of settling",
        "step with mask | I, I = torch.eye(L, dtype=torch.bool): with each position keeping its "
        "own state the reach only grows, so R_{n+1} == R_n is sure to come.",
    ),
    "bool_matmul": (
        "a matrix product of bool tensors, which torch does not implement",
        "multiply as floats and compare: (A.float() @ R.float()) > 0.",
    ),
    "counts_squarings": (
        "the number of squarings R <- R @ R (each doubles the layers) instead of the layers",
        "one layer more is R <- A @ R with A = mask | I: multiply by A, not by R itself; "
        "count the layers applied until the reach matrix is all True.",
    ),
    "tensor_not_int": (
        "a 0-d tensor, not a Python int",
        "return a number: int(n), or n.item(), turns a one-element tensor into a Python int.",
    ),
    "one_query_only": (
        "a stopping test on one query (row 0) instead of on every query",
        "full reach means every query hears every key: stop when the whole reach matrix is "
        "True, R.all(), not one row of it.",
    ),
    "counts_overflow": (
        "reach kept as path counts (A @ R never compared with > 0): the counts grow like "
        "(keys per query) ** n, overflow to inf and then give NaN (0 * inf) on long masks",
        "keep the reach bool after every step: R = (A.float() @ R.float()) > 0.",
    ),
    "should_be_none": (
        "a number where full reach never happens",
        "once the reach matrix stops growing it never changes again: return None "
        "when a step adds nothing and it is not all True.",
    ),
}


# ----------------------------------------------------------------------------- mask_density


def density_suspects(mask, expected: float) -> list:
    """(key, value) of the common wrong densities of `mask`."""
    count, shape = expected * mask.numel(), tuple(mask.shape)
    return [
        ("count_not_fraction", count),
        ("per_row_count", expected * shape[-1]),
        *[("square_count", count / side**2) for side in (shape[0], shape[-1])],
        ("fraction_of_false", 1 - expected),
        ("first_row_only", mask[0].float().mean().item()),
    ]


def expect_number(out, expected: float, what: str, mask) -> None:
    """`out` must be the Python float `expected` (float32 arithmetic is fine); a wrong value is
    named when a suspect of density_suspects matches it."""
    number = out.item() if isinstance(out, torch.Tensor) and out.numel() == 1 else out
    if isinstance(number, bool) or not isinstance(number, (int, float)):
        raise Mistake(
            f"{what} should be a number, got {type(out).__name__}.",
            hint="return a Python float: e.g. mask.float().mean().item().",
            key="not_a_number",
        )
    if abs(number - expected) > 1e-6:  # one entry more or less is >= 1/400
        raise wrong_density(number, expected, what, mask)
    if isinstance(out, torch.Tensor):
        raise Mistake(
            f"{what} = {out!r}: it looks like {hint('tensor_not_float')[0]}.",
            hint("tensor_not_float")[1],
            "tensor_not_float",
        )


def wrong_density(number, expected: float, what: str, mask) -> Mistake:
    """The Mistake for a wrong density: a suspect's when one matches."""
    found = [key for key, wrong in density_suspects(mask, expected) if abs(number - wrong) <= 1e-3]
    if abs(number - expected) <= 1e-3:
        found = ["low_precision"]
    elif isinstance(number, int) and number == int(expected):
        found = ["integer_division"]
    if not found:
        return Mistake(
            f"{what} = {number}, expected {expected}.",
            hint="the fraction of True entries over the whole mask: count / mask.numel().",
            key="wrong_density",
        )
    description, fix = hint(found[0])
    return Mistake(
        f"{what} = {number}, expected {expected}: it looks like {description}.", fix, found[0]
    )


def density_of(mask_density, mask):
    """mask_density(mask); torch's errors for the mean of a bool tensor, and for .item() of
    several numbers, are named."""
    try:
        return mask_density(mask)
    except Mistake as mistake:
        if mistake.key != "raised":
            raise
        if "Got: Bool" in mistake.message:
            key = "mean_of_bool"
        elif "cannot be converted to Scalar" in mistake.message:
            key = "mean_over_one_dim"
        else:
            raise
        description, fix = hint(key)
        raise Mistake(
            f"mask_density of a {tuple(mask.shape)} mask raised: "
            f"{mistake.message.split(': ', 1)[-1]}\n      it looks like {description}.",
            fix,
            key,
        ) from None


def density_matches(mask_density, rng):
    """the fraction of True entries, for random masks (square and not)"""
    for shape in [(draw(rng, 5, 20),) * 2, (draw(rng, 3, 9), draw(rng, 10, 15))]:
        mask = torch.rand(shape, generator=rng) < 0.3
        expected = sum(map(sum, mask.tolist())) / (shape[0] * shape[1])
        expect_number(
            density_of(mask_density, mask), expected, f"mask_density of a {shape} mask", mask
        )


def density_extremes(mask_density, rng):
    """all False gives 0.0, all True 1.0, a batch (B, L, L) counts every entry"""
    L = draw(rng, 3, 9)
    expect_number(
        density_of(mask_density, torch.zeros(L, L, dtype=torch.bool)),
        0.0,
        "mask_density(all False)",
        torch.zeros(L, L),
    )
    expect_number(
        density_of(mask_density, torch.ones(L, L, dtype=torch.bool)),
        1.0,
        "mask_density(all True)",
        torch.ones(L, L),
    )
    batch = torch.rand(draw(rng, 2, 4), L, L, generator=rng) < 0.5
    expect_number(
        density_of(mask_density, batch),
        batch.sum().item() / batch.numel(),
        f"mask_density of a {tuple(batch.shape)} batch",
        batch,
    )


# ----------------------------------------------------------------------------- layers_to_full_reach


def reach_oracle(mask: torch.Tensor, self_loops: bool = True, queries: int = None):
    """Brute force: sets of keys heard by each query, one layer at a time, until the first
    `queries` queries (default: all of them) hear every key."""
    L = mask.shape[0]
    sees = [{j for j in range(L) if mask[i, j] or (self_loops and i == j)} for i in range(L)]
    heard = [set(s) for s in sees]
    for layers in range(1, L + 2):
        if all(len(h) == L for h in heard[:queries]):
            return layers
        grown = [set().union(*(heard[k] for k in sees[i])) if sees[i] else set() for i in range(L)]
        if grown == heard:
            return None
        heard = grown
    return None


class StillRunning(Exception):
    """Raised inside the student's function once it has run past TimeLimit.seconds."""


class TimeLimit:
    """A probe (grader/harness/measuring.py) that raises StillRunning in the student's code
    once it has run `seconds`: the reach of a 30-token mask takes milliseconds, and a loop
    that never ends must give a message, not a kernel that hangs."""

    seconds = 10

    def __enter__(self):
        self._deadline = time.monotonic() + self.seconds
        self._tracing = on_student_lines(self._stop_when_late)
        self._tracing.__enter__()
        return self

    def _stop_when_late(self):
        if time.monotonic() > self._deadline:
            raise StillRunning(f"still running after {self.seconds} s")

    def __exit__(self, *exc_info):
        self._tracing.__exit__(*exc_info)


def stopped_by_the_limit(mistake: Mistake) -> bool:
    """The student's function raised StillRunning (in the kernel, only its name comes back)."""
    return isinstance(mistake.__cause__, StillRunning) or "raised StillRunning" in mistake.message


def torch_bool_product(stub: NotImplementedYet) -> bool:
    """torch's NotImplementedError for a bool matmul, not the stub's: its message (here) names
    'Bool'; in the kernel only the student's line comes back."""
    said = f"{stub} {stub.__cause__ or ''}"
    return "'Bool'" in said or any(op in str(stub) for op in ("@", "matmul", "mm("))


def layers_within_limit(layers_to_full_reach, mask, what: str):
    """layers_to_full_reach(mask), or a Mistake that names an endless loop or a bool product."""
    L = mask.shape[-1]
    try:
        with measuring(f"{__name__}:TimeLimit", lambda seen: None), TimeLimit():
            return layers_to_full_reach(mask)
    except Mistake as mistake:
        if not stopped_by_the_limit(mistake):
            raise
        # No exit when full reach never happens; or, when it does, a reach that cycles.
        key = "never_stops" if reach_oracle(mask) is None else "cycles_without_self"
        seen = f"ran past {TimeLimit.seconds} s, yet at most {L - 1} layers are ever needed"
    except NotImplementedYet as stub:
        if not torch_bool_product(stub):
            raise
        key, seen = "bool_matmul", "raised torch's NotImplementedError"
    description, fix = hint(key)
    raise Mistake(
        f"layers_to_full_reach on {what} {seen}: it looks like {description}.", fix, key
    ) from None


def expect_layers(layers_to_full_reach, mask, what: str) -> None:
    expected = reach_oracle(mask)
    out = layers_within_limit(layers_to_full_reach, mask, what)
    returned_tensor = isinstance(out, torch.Tensor) and out.numel() == 1
    if returned_tensor:
        out = int(out.item())
    if out == expected and (out is None) == (expected is None):
        if returned_tensor:
            description, fix = hint("tensor_not_int")
            raise Mistake(f"{what}: got {expected} as {description}.", fix, "tensor_not_int")
        return
    if judges_query_0_only(layers_to_full_reach, mask, out, expected):
        description, fix = hint("one_query_only")
        raise Mistake(
            f"{what}: got {out}, expected {expected}: it looks like {description}.",
            fix,
            "one_query_only",
        )
    if expected is None:
        description, fix = hint("should_be_none")
        raise Mistake(
            f"{what}: got {out!r}, but some key never reaches some query: it looks like "
            f"{description}.",
            fix,
            "should_be_none",
        )
    if not isinstance(out, int) or isinstance(out, bool):
        raise Mistake(
            f"{what}: got {out!r}, expected {expected}.",
            hint="return an int (the number of layers), or None when full reach never happens.",
            key="wrong_layers",
        )
    if out == reach_oracle(mask, self_loops=False) and out != expected:
        raise Mistake(
            f"{what}: got {out}, expected {expected}.", hint("forgot_self")[1], "forgot_self"
        )
    if counts_squarings(layers_to_full_reach, out, expected):
        description, fix = hint("counts_squarings")
        raise Mistake(
            f"{what}: got {out}, expected {expected}: it looks like {description}.",
            fix,
            "counts_squarings",
        )
    if abs(out - expected) == 1:
        raise Mistake(
            f"{what}: got {out}, expected {expected}.",
            hint("off_by_one_layers")[1],
            "off_by_one_layers",
        )
    raise Mistake(
        f"{what}: got {out}, expected {expected}.",
        hint="reach after n layers is the boolean n-th power of (mask | I); "
        "count until it is all True.",
        key="wrong_layers",
    )


def squarings_for(layers: int) -> set:
    """The counts of squarings R <- R R that first reach `layers` layers (R = mask | I is one
    layer, each squaring doubles them), counted from 0, from 1, or from 0 but at least 1."""
    squarings = math.ceil(math.log2(layers))
    return {squarings, squarings + 1, max(squarings, 1)}


def counts_squarings(layers_to_full_reach, out: int, expected: int) -> bool:
    """`out` counts squarings instead of layers. Where the two are one apart (2 or 3 layers) an
    off-by-one count looks the same: a probe tells them apart, a band of 3 on L = 17 that
    takes 16 layers, 4 squarings (5 counted from 1), never 15 or 17."""
    if out == expected or out not in squarings_for(expected):
        return False
    if abs(out - expected) != 1:
        return True
    probe = brute_mask(17, window_rule(3, False))
    return layers_within_limit(layers_to_full_reach, probe, "a probe") in squarings_for(16)


def judges_query_0_only(layers_to_full_reach, mask, out, expected) -> bool:
    """`out` is the layers until query 0 alone hears every key; when that is also one off
    `expected`, a probe tells it from an off-by-one count: there query 0 sees every key and
    the others only the key before them, so row 0 is full after 1 layer, the whole reach
    several layers later."""
    if not isinstance(out, int) or isinstance(out, bool) or out != reach_oracle(mask, queries=1):
        return False
    if expected is None or abs(out - expected) != 1:
        return True
    probe = brute_mask(8, lambda i, j: i == 0 or j == i - 1)
    return layers_within_limit(layers_to_full_reach, probe, "a probe (query 0 sees all)") == 1


def reach_windows(layers_to_full_reach, rng):
    """symmetric windows need about L / (window // 2) layers; a causal one never gets there"""
    L = draw(rng, 12, 30)
    for window in (draw(rng, 2, 4), draw(rng, 5, 9)):
        mask = brute_mask(L, window_rule(window, False))
        expect_layers(layers_to_full_reach, mask, f"sliding window {window} on L = {L}")
    expect_layers(
        layers_to_full_reach, brute_mask(L, window_rule(3, True)), f"causal window 3 on L = {L}"
    )


def reach_global_and_strided(layers_to_full_reach, rng):
    """a global token connects everything in 2 layers; strided patterns; all True takes 1"""
    L = draw(rng, 12, 30)
    g = draw(rng, 0, L - 1)
    expect_layers(
        layers_to_full_reach, brute_mask(L, global_rule(1, [g])), f"global token {g}, L = {L}"
    )
    stride = draw(rng, 3, 6)
    expect_layers(
        layers_to_full_reach, brute_mask(L, strided_rule(stride, 3)), f"strided {stride}, L = {L}"
    )
    expect_layers(layers_to_full_reach, torch.ones(L, L, dtype=torch.bool), f"all True, L = {L}")


def reach_random_without_diagonal(layers_to_full_reach, rng):
    """random masks without their diagonal: each position still keeps its own state"""
    L = draw(rng, 10, 20)
    for draw_number in (1, 2, 3):  # named in the message: each mask has its own answer
        mask = torch.rand(L, L, generator=rng) < 0.25
        mask.fill_diagonal_(False)
        what = f"random mask {draw_number} of 3 (no diagonal), L = {L}"
        expect_layers(layers_to_full_reach, mask, what)
    ring = brute_mask(L, lambda i, j: j == (i - 1) % L)  # i hears i-1 only: L - 1 layers
    expect_layers(layers_to_full_reach, ring, f"a ring (query i sees key i-1), L = {L}")


def reach_never(layers_to_full_reach, rng):
    """None when full reach never happens: separate blocks, or the identity"""
    L = draw(rng, 6, 16)
    half = draw(rng, 2, L - 2)
    expect_layers(
        layers_to_full_reach,
        brute_mask(L, lambda i, j: (i < half) == (j < half)),
        f"two separate blocks, L = {L}",
    )
    expect_layers(layers_to_full_reach, torch.eye(L, dtype=torch.bool), f"the identity, L = {L}")
    expect_layers(layers_to_full_reach, torch.ones(1, 1, dtype=torch.bool), "L = 1")


def reach_long_band(layers_to_full_reach, rng):
    """a window on L = 140 .. 180: about L / (window // 2) layers, too many paths to count"""
    L, window = draw(rng, 140, 180), draw(rng, 2, 5)
    what = f"sliding window {window} on L = {L}"
    try:
        expect_layers(layers_to_full_reach, brute_mask(L, window_rule(window, False)), what)
    except Mistake as mistake:
        if mistake.key != "wrong_layers":
            raise
        description, fix = hint("counts_overflow")
        raise Mistake(
            f"{mistake.message[:-1]}: on this long mask it looks like {description}.",
            fix,
            "counts_overflow",
        ) from None


EXERCISES = {
    "mask_density": Exercise(
        checks=[density_matches, density_extremes], forbidden=FORBIDDEN_BUILDERS
    ),
    "layers_to_full_reach": Exercise(
        checks=[
            reach_windows,
            reach_global_and_strided,
            reach_random_without_diagonal,
            reach_never,
            reach_long_band,
        ],
        forbidden=FORBIDDEN_BUILDERS,
    ),
}
