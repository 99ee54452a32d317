"""Inputs and oracles that several days' suites share. A suite draws its own shapes and values
from the generator `rng` it is given (seed 0 for the visible checks, a fresh one for the hidden)."""

import torch


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
