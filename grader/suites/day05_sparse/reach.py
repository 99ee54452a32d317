"""Checks for mask_density and layers_to_full_reach, against the fraction counted here and a
brute-force reach: the set of keys each query hears, grown one layer at a time.
"""

import torch

from grader.harness.checking import (
    Mistake,
    hint,
    named,
)
from grader.suites import Exercise
from grader.suites._common import draw
from grader.suites.day05_sparse.masks import global_rule, strided_rule
from grader.suites.day05_sparse.shared import FORBIDDEN_BUILDERS, brute_mask, window_rule

HINTS = {
    "count_not_fraction": (
        "the number of True entries instead of their fraction",
        "divide by the number of entries, mask.numel().",
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
    "should_be_none": (
        "a number where full reach never happens",
        "once the reach matrix stops growing it never changes again: return None "
        "when a step adds nothing and it is not all True.",
    ),
}


# ----------------------------------------------------------------------------- mask_density


def expect_number(out, expected: float, what: str, mask) -> None:
    if isinstance(out, torch.Tensor) and out.numel() == 1:
        out = out.item()
    if isinstance(out, bool) or not isinstance(out, (int, float)):
        raise Mistake(
            f"{what} should be a number, got {type(out).__name__}.",
            hint="return a Python float: e.g. mask.float().mean().item().",
            key="not_a_number",
        )
    if abs(out - expected) <= 1e-6:  # float32 arithmetic is fine; one entry more is >= 1/400
        return
    if abs(out - expected * mask.numel()) <= 1e-3:
        raise named("count_not_fraction")
    raise Mistake(
        f"{what} = {out}, expected {expected}.",
        hint="the fraction of True entries over the whole mask: count / mask.numel().",
        key="wrong_density",
    )


def density_matches(mask_density, rng):
    """the fraction of True entries, for random masks (square and not)"""
    for shape in [(draw(rng, 5, 20),) * 2, (draw(rng, 3, 9), draw(rng, 10, 15))]:
        mask = torch.rand(shape, generator=rng) < 0.3
        expected = sum(map(sum, mask.tolist())) / (shape[0] * shape[1])
        expect_number(mask_density(mask), expected, f"mask_density of a {shape} mask", mask)


def density_extremes(mask_density, rng):
    """all False gives 0.0, all True 1.0, a batch (B, L, L) counts every entry"""
    L = draw(rng, 3, 9)
    expect_number(
        mask_density(torch.zeros(L, L, dtype=torch.bool)),
        0.0,
        "mask_density(all False)",
        torch.zeros(L, L),
    )
    expect_number(
        mask_density(torch.ones(L, L, dtype=torch.bool)),
        1.0,
        "mask_density(all True)",
        torch.ones(L, L),
    )
    batch = torch.rand(draw(rng, 2, 4), L, L, generator=rng) < 0.5
    expect_number(
        mask_density(batch),
        batch.sum().item() / batch.numel(),
        f"mask_density of a {tuple(batch.shape)} batch",
        batch,
    )


# ----------------------------------------------------------------------------- layers_to_full_reach


def reach_oracle(mask: torch.Tensor, self_loops: bool = True):
    """Brute force: sets of keys heard by each query, one layer at a time."""
    L = mask.shape[0]
    sees = [{j for j in range(L) if mask[i, j] or (self_loops and i == j)} for i in range(L)]
    heard = [set(s) for s in sees]
    for layers in range(1, L + 2):
        if all(len(h) == L for h in heard):
            return layers
        grown = [set().union(*(heard[k] for k in sees[i])) if sees[i] else set() for i in range(L)]
        if grown == heard:
            return None
        heard = grown
    return None


def expect_layers(layers_to_full_reach, mask, what: str) -> None:
    expected, out = reach_oracle(mask), layers_to_full_reach(mask)
    if isinstance(out, torch.Tensor) and out.numel() == 1:
        out = int(out.item())
    if out == expected and (out is None) == (expected is None):
        return
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
    for attempt in range(3):
        mask = torch.rand(L, L, generator=rng) < 0.25
        mask.fill_diagonal_(False)
        expect_layers(layers_to_full_reach, mask, f"a random mask (no diagonal), L = {L}")
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
        ],
        forbidden=FORBIDDEN_BUILDERS,
    ),
}
