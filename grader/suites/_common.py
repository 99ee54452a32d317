"""Inputs and oracles that several days' suites share. A suite draws its own shapes and values
from the generator `rng` it is given (seed 0 for the visible checks, a fresh one for the hidden).

A hidden draw must expose the common mistakes on every seed, not on most. The shape helpers here
guarantee it: `attention_shapes` gives a batch and a head count of at least 2 that differ (so
`.T` or `transpose(0, 1)` on batched inputs is wrong in shape), Lq != Lk (a swapped axis cannot
hide), a head dimension that is not a perfect square (so a float32 sqrt(d) differs from
math.sqrt(d)), Dv != D, and no two sizes alike (so no transpose keeps the shape by chance);
`distinct_sizes`, `head_dim` and `two_lengths` give one guarantee at a time.
"""

import dataclasses
import math

import torch

from course.bench import LiveStorage
from grader.harness.checking import Mistake, expect_tensor, hint, student_lines
from grader.harness.measuring import measuring


def draw(rng: torch.Generator, low: int, high: int) -> int:
    """A random int in [low, high]."""
    return int(torch.randint(low, high + 1, (1,), generator=rng))


def randn(shape, rng: torch.Generator, dtype=torch.float32, scale: float = 1.0) -> torch.Tensor:
    return (scale * torch.randn(shape, generator=rng, dtype=torch.float64)).to(dtype)


def two_lengths(rng: torch.Generator) -> tuple:
    """(Lq, Lk) with Lq != Lk, so a swapped axis cannot hide."""
    lq = draw(rng, 2, 7)
    return lq, lq + draw(rng, 1, 5)


def distinct_sizes(rng: torch.Generator, *ranges: tuple, avoid: tuple = ()) -> tuple:
    """One size from each inclusive (low, high) range, each different from the others and from
    the sizes in `avoid`: when every axis has its own size, a swapped axis changes the shape."""
    chosen = []
    for low, high in ranges:
        free = [n for n in range(low, high + 1) if n not in (*avoid, *chosen)]
        if not free:
            raise ValueError(f"no size in [{low}, {high}] differs from {[*avoid, *chosen]}")
        chosen.append(free[draw(rng, 0, len(free) - 1)])
    return tuple(chosen)


def head_dim(
    rng: torch.Generator,
    low: int = 5,
    high: int = 40,
    *,
    powers_of_two: bool = False,
    avoid: tuple = (),
) -> int:
    """A head dimension in [low, high] that is not a perfect square, so that a float32 sqrt(d)
    (torch.sqrt(torch.tensor(d))) differs from math.sqrt(d) and the float64 checks see it. With
    `powers_of_two`, an odd power of two (8, 32, 128: what Triton's tl.dot tiles accept)."""
    choices = [
        d
        for d in range(low, high + 1)
        if math.isqrt(d) ** 2 != d and d not in avoid and (not powers_of_two or d & (d - 1) == 0)
    ]
    if not choices:
        raise ValueError(f"no head dimension in [{low}, {high}] that is not a perfect square")
    return choices[draw(rng, 0, len(choices) - 1)]


@dataclasses.dataclass(frozen=True)
class AttentionShapes:
    """q is (batch, heads, lq, d), k (batch, heads, lk, d), v (batch, heads, lk, dv)."""

    batch: int
    heads: int
    lq: int
    lk: int
    d: int
    dv: int


def attention_shapes(
    rng: torch.Generator, max_length: int = 9, max_dim: int = 40
) -> AttentionShapes:
    """Sizes for attention inputs that expose the common mistakes on every draw: batch and heads
    in 2..4 and different, Lq != Lk in 2..max_length, d not a perfect square, dv != d, and no two
    sizes alike (see the module's docstring)."""
    batch, heads = distinct_sizes(rng, (2, 4), (2, 4))
    lq, lk = distinct_sizes(rng, (2, max_length), (2, max_length), avoid=(batch, heads))
    d = head_dim(rng, 5, max_dim, avoid=(batch, heads, lq, lk))
    (dv,) = distinct_sizes(rng, (2, max_dim), avoid=(batch, heads, lq, lk, d))
    return AttentionShapes(batch, heads, lq, lk, d, dv)


def softmax64(x: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """The float64 softmax, with zeros (not NaN) for a slice that is all -inf."""
    return torch.softmax(x.double(), dim=dim).nan_to_num(0.0)


MODIFIED_INPUT = (
    "an input changed in place",
    "compute into new tensors: x - m, not x -= m or x.sub_(m); q / s, not q /= s. "
    "The caller still needs its own tensor afterwards.",
)


def call_unchanged(fn, inputs: dict, *args, **kwargs):
    """fn(*inputs.values(), *args, **kwargs), where `inputs` maps argument names to the values
    passed; a tensor among them or among `kwargs` (q, mask, lengths, ...) that comes back changed
    in place, in its values or its shape (lengths.unsqueeze_(1)), is the mistake modified_input,
    with the running suite's hint for it. (Graded from outside the kernel, what the student's
    code wrote into its copies is written back into the grader's tensors: autograde/remote.py.)"""
    watched = {
        name: value
        for name, value in [*inputs.items(), *kwargs.items()]
        if isinstance(value, torch.Tensor)
    }
    copies = {name: tensor.clone() for name, tensor in watched.items()}
    result = fn(*inputs.values(), *args, **kwargs)
    for name, tensor in watched.items():
        change = in_place_change(name, tensor, copies[name])
        if change is not None:
            raise Mistake(
                f"your function changed its input {name} in place ({change}): whoever called "
                "it has lost the original.",
                hint("modified_input")[1],
                "modified_input",
            )
    return result


def in_place_change(name: str, tensor: torch.Tensor, before: torch.Tensor):
    """What changed in `tensor` since `before`, its copy from before the call, and an in-place
    operation that does it; None when nothing did. A tensor on PyTorch's 'meta' device has a
    shape but no values, so only its shape is compared."""
    if tensor.shape != before.shape:
        return (
            f"its shape went from {tuple(before.shape)} to {tuple(tensor.shape)}; an in-place "
            f"operation such as {name}.unsqueeze_(1)"
        )
    if tensor.is_meta or torch.equal(tensor, before):
        return None
    if tensor.dtype == torch.bool:  # a mask: the in-place logic operators
        examples = f"{name} &= ..., {name}.logical_not_() or {name}[...] = ..."
    else:
        examples = f"{name}.sub_(...), {name} /= ..., or {name}[...] = ..."
    return f"its values changed; an in-place operation such as {examples}"


def unpack(result, q, k, v) -> tuple:
    """The (out, weights) pair, with exact shape checks and a named mistake for each way it fails."""
    if not isinstance(result, (tuple, list)) or len(result) != 2:
        raise Mistake(
            f"expected a pair (out, weights), got {type(result).__name__}.",
            hint="end with `return out, weights`.",
            key="not_a_pair",
        )
    out, weights = result
    lq, lk, dv = q.shape[-2], k.shape[-2], v.shape[-1]
    for tensor, name, shape in [
        (out, "out", (*q.shape[:-2], lq, dv)),
        (weights, "weights", (*q.shape[:-2], lq, lk)),
    ]:
        try:
            expect_tensor(tensor, name, shape, q.dtype)
        except Mistake as mistake:
            if mistake.key == "wrong_shape":
                mistake.hint = (
                    "weights are (..., Lq, Lk): one row per query, one column per key; "
                    "out = weights @ v is (..., Lq, Dv), and Dv = v.shape[-1] may differ "
                    "from the q/k dimension."
                )
            raise
    return out, weights


class LargestAllocation(LiveStorage):
    """LiveStorage as a probe (grader/harness/measuring.py), in the student's kernel too."""

    def __init__(self):
        super().__init__()
        self.remote = (
            None  # (bytes, shape) of the kernel's largest, when the student's code ran there
        )

    def absorb(self, seen: dict):
        if self.remote is None or seen["largest"] > self.remote[0]:
            shape = seen["largest_shape"]
            self.remote = (seen["largest"], tuple(shape) if shape is not None else None)

    def __exit__(self, *exc_info):
        super().__exit__(*exc_info)
        if self.remote is not None:  # the student's code ran in their kernel: here, the grader's
            self.largest, self.largest_shape = self.remote


def largest_allocation(call) -> tuple:
    """(bytes, shape) of the largest tensor storage that `call()` allocates: a check that memory
    stays below O(L²) compares it with the (L, L) matrix the student must not build."""
    tracker = LargestAllocation()
    with measuring("grader.suites._common:LargestAllocation", tracker.absorb), tracker:
        call()
    return tracker.largest, tracker.largest_shape


def right_answer(run_check) -> bool:
    """Whether `run_check()` passes (raises no Mistake)."""
    try:
        run_check()
    except Mistake:
        return False
    return True


def explain_by_rank(raised: Mistake, rank: int, gives_answer) -> None:
    """After the student's function raised on `rank`-D inputs: if `gives_answer(r)` (it is
    right on r-D inputs) holds for other ranks, name the mistake: right on 2-D is a transpose
    that counts dims from the front, right on others only is code written for those ranks (the
    running suite's HINTS name both: batched_transpose and fixed_rank)."""
    working = [r for r in (2, 3, 4, 5) if r != rank and gives_answer(r)]
    if not working:
        return
    key = "batched_transpose" if 2 in working else "fixed_rank"
    ranks = ", ".join(f"{r}-D" for r in working)
    raise Mistake(
        f"{raised.message}\n      It raised on {rank}-D inputs, but gives the right answer on "
        f"{ranks} ones: it looks like {hint(key)[0]}.",
        hint(key)[1],
        key,
    ) from None


def expect_flat_python_work(name: str, key: str, small: tuple, large: tuple, slack=100) -> None:
    """The student's Python work must not grow with the input. `small` and `large` are
    (size, call) pairs, the same function at two sizes, e.g. ("L = 64", lambda: f(x64)): more
    than `slack` extra lines of the student's own code at the large size is the loop that the
    running suite's HINTS name `key` (vectorised code runs the same lines at any size)."""
    (small_size, call_small), (large_size, call_large) = small, large
    lines_small, lines_large = student_lines(call_small), student_lines(call_large)
    if lines_large > lines_small + slack:
        description, fix = hint(key)
        raise Mistake(
            f"{name} ran {lines_small} lines of Python for {small_size} and {lines_large} for "
            f"{large_size}: it looks like {description}.",
            fix,
            key,
        )
