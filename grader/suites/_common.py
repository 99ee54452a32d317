"""Inputs and oracles that several days' suites share. A suite draws its own shapes and values
from the generator `rng` it is given (seed 0 for the visible checks, a fresh one for the hidden)."""

import torch

from course.bench import LiveStorage
from grader.harness.checking import Mistake, expect_tensor


def draw(rng: torch.Generator, low: int, high: int) -> int:
    """A random int in [low, high]."""
    return int(torch.randint(low, high + 1, (1,), generator=rng))


def randn(shape, rng: torch.Generator, dtype=torch.float32, scale: float = 1.0) -> torch.Tensor:
    return (scale * torch.randn(shape, generator=rng, dtype=torch.float64)).to(dtype)


def two_lengths(rng: torch.Generator) -> tuple:
    """(Lq, Lk) with Lq != Lk, so a swapped axis cannot hide."""
    lq = draw(rng, 2, 7)
    return lq, lq + draw(rng, 1, 5)


def softmax64(x: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """The float64 softmax, with zeros (not NaN) for a slice that is all -inf."""
    return torch.softmax(x.double(), dim=dim).nan_to_num(0.0)


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


def largest_allocation(call) -> tuple:
    """(bytes, shape) of the largest tensor storage that `call()` allocates: a check that memory
    stays below O(L²) compares it with the (L, L) matrix the student must not build."""
    tracker = LiveStorage()
    with tracker:
        call()
    return tracker.largest, tracker.largest_shape
