"""Checks for discretize_zoh: the zero-order hold of (delta, A, B)."""

import torch

from grader.harness.checking import (
    Mistake,
    expect_close,
    expect_value_error,
    named,
    naming_crashes,
    relative_error,
)
from grader.suites._common import call_unchanged, distinct_sizes, randn

SCAN_SIZES = {"batch": (1, 3), "dim": (2, 5), "L": (3, 12), "state": (2, 6)}


def scan_shapes(rng, **given):
    """(batch, dim, L, state), no two alike (sizes in `given` are kept): a swapped layout then
    always changes a shape, and a broadcast error's two sizes say which axes met."""
    sizes = dict(given)
    for axis, bounds in SCAN_SIZES.items():
        if axis not in sizes:
            (sizes[axis],) = distinct_sizes(rng, bounds, avoid=tuple(sizes.values()))
    return tuple(sizes[axis] for axis in SCAN_SIZES)


def axes_clash(key, size, other):
    """The crash of a broadcast that lines an axis of `size` up against one of `other` (either
    way round), named as the mistake `key`: with no two sizes alike, the two sizes in torch's
    error say which axes met."""
    return tuple(
        (key, "RuntimeError", f"tensor a ({x}) must match the size of tensor b ({y})")
        for x, y in ((size, other), (other, size))
    )


def zoh_call(discretize_zoh, delta, A, B):
    """discretize_zoh(delta, A, B), which must leave its inputs as they were; a crash of crossed
    L and state axes is named."""
    (dim, state), L = A.shape, delta.shape[-1]
    crossed = (*axes_clash("l_state_crossed", L, state), *axes_clash("per_channel_along_l", L, dim))
    with naming_crashes(*crossed):
        return call_unchanged(discretize_zoh, {"delta": delta, "A": A, "B": B})


def zoh_inputs(rng, batch, dim, L, state, dtype=torch.float64):
    delta = (0.05 + torch.rand(batch, dim, L, generator=rng, dtype=torch.float64)).to(dtype)
    A = -(0.2 + 2 * torch.rand(dim, state, generator=rng, dtype=torch.float64)).to(dtype)
    B = randn((batch, state, L), rng, dtype)
    return delta, A, B


def zoh64(delta, A, B, variant=None):
    """(A_bar, B_bar) in float64; `variant` plants a mistake."""
    dA = delta.double().unsqueeze(-1) * A.double()[:, None, :]
    if variant == "b_reshaped":
        Bt = B.double().reshape(B.shape[0], B.shape[2], B.shape[1]).unsqueeze(1)
    else:
        Bt = B.double().transpose(1, 2).unsqueeze(1)
    A_bar = 1 + dA if variant == "euler_a" else torch.exp(dA)
    A4 = A.double()[:, None, :].expand_as(dA)
    step = delta.double().unsqueeze(-1).expand_as(dA)  # (batch, dim, L, state)
    ratio = {
        "simplified_b": step,
        "b_not_divided": torch.expm1(dA),
        "missing_minus_one": torch.exp(dA) / A4,
    }.get(variant)
    if ratio is None:
        limit = {"zero_a_limit_b": torch.ones_like(dA), "zero_a_zeroed": torch.zeros_like(dA)}
        ratio = torch.where(A4 == 0, limit.get(variant, step), expm1_over(delta, A, variant))
    if variant == "b_delta_twice":
        ratio = ratio * step
    return A_bar, ratio * Bt


def expm1_over(delta, A, variant=None):
    """(exp(delta A) - 1) / A, (batch, dim, L, state), in float64; the variant exp_minus_one
    computes exp(delta A) - 1 as written in the inputs' dtype, where it cancels for tiny steps."""
    if variant == "exp_minus_one":
        dA = delta.unsqueeze(-1) * A[:, None, :]
        return ((torch.exp(dA) - 1) / A[:, None, :]).double()
    return torch.expm1(delta.double().unsqueeze(-1) * A.double()[:, None, :]) / A.double()[:, None]


def expect_pair(out, what):
    if not isinstance(out, (tuple, list)) or len(out) != 2:
        raise Mistake(
            f"{what} should return a pair (A_bar, B_bar), got {type(out).__name__}.",
            "return A_bar, B_bar.",
            "not_a_pair",
        )


def expect_zoh(out, delta, A, B, what):
    expect_pair(out, what)
    ref_a, ref_b = zoh64(delta, A, B)
    if out[0].shape == ref_b.shape and relative_error(out[0], ref_b) < 1e-6 < relative_error(
        out[1], ref_b
    ):
        raise named("pair_swapped")
    expect_close(
        out[0],
        ref_a,
        delta.dtype,
        f"A_bar of {what}",
        [
            ("euler_a", zoh64(delta, A, B, "euler_a")[0]),
            ("a_bar_without_delta", torch.exp(A.double())[:, None, :].expand_as(ref_a)),
        ],
    )
    expect_close(
        out[1],
        ref_b,
        delta.dtype,
        f"B_bar of {what}",
        [
            (key, zoh64(delta, A, B, key)[1])
            for key in (
                "simplified_b",
                "b_not_divided",
                "missing_minus_one",
                "zero_a_limit_b",
                "zero_a_zeroed",
                "b_delta_twice",
                "b_reshaped",
                "exp_minus_one",
            )
        ],
        nonfinite=named("zero_a_nan"),
    )


def zoh_matches(discretize_zoh, rng):
    """A_bar = exp(delta A), B_bar = (exp(delta A) - 1) / A * B, shapes (batch, dim, L, state)"""
    for dtype in (torch.float64, torch.float32):
        shape = scan_shapes(rng)
        delta, A, B = zoh_inputs(rng, *shape, dtype)
        out = zoh_call(discretize_zoh, delta, A, B)
        expect_zoh(out, delta, A, B, f"discretize_zoh on {shape} {dtype}")


def zoh_large_steps(discretize_zoh, rng):
    """large steps (delta up to 5) where Euler and ZOH differ most; tiny steps (1e-4), in
    float32 too, where exp(delta A) - 1 as written loses most of its digits"""
    shape = scan_shapes(rng)
    delta, A, B = zoh_inputs(rng, *shape)
    for scale, dtype in ((5.0, torch.float64), (1e-4, torch.float64), (1e-4, torch.float32)):
        d, A_, B_ = (delta * scale).to(dtype), A.to(dtype), B.to(dtype)
        out = zoh_call(discretize_zoh, d, A_, B_)
        expect_zoh(out, d, A_, B_, f"discretize_zoh with delta ~ {scale:g} {dtype}")


def zoh_zero_a(discretize_zoh, rng):
    """A = 0 in some entries: B_bar = delta * B there (the limit), never NaN"""
    shape = scan_shapes(rng)
    delta, A, B = zoh_inputs(rng, *shape)
    A[0, 0] = 0.0
    A[-1, -1] = 0.0
    out = zoh_call(discretize_zoh, delta, A, B)
    expect_zoh(out, delta, A, B, "discretize_zoh with A[0, 0] = 0")


def zoh_rejects_bad_layout(discretize_zoh, rng):
    """wrong layouts (B as (batch, L, state), A as (state, dim)) give a clear ValueError"""
    batch, dim, L, state = scan_shapes(rng, dim=3, state=5)
    delta, A, B = zoh_inputs(rng, batch, dim, L, state)
    expect_value_error(
        lambda: discretize_zoh(delta, A, B.transpose(1, 2)),
        f"B of shape {tuple(B.transpose(1, 2).shape)} (batch, L, state)",
        "no_error_for_bad_layout",
    )
    expect_value_error(
        lambda: discretize_zoh(delta, A.T, B),
        f"A of shape {tuple(A.T.shape)} (state, dim)",
        "no_error_for_bad_layout",
    )
