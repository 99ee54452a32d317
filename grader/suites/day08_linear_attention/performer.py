"""Checks for the Performer: orthogonal_random_features, favor_feature_map and
performer_attention."""

import math

import torch
import torch.nn.functional as F

from grader.harness.checking import (
    Mistake,
    expect_tensor,
    expect_value_error,
    named,
    relative_error,
)
from grader.suites._common import draw, randn
from grader.suites.day08_linear_attention.hints import HINTS
from grader.suites.day08_linear_attention.oracles import bad_inputs, inputs

# ----------------------------------------------------------------------------- orthogonal_random_features


def chi_moments(d: int) -> tuple:
    mean = math.sqrt(2) * math.exp(math.lgamma((d + 1) / 2) - math.lgamma(d / 2))
    return mean, d - mean**2


def orf_blocks(orthogonal_random_features, rng):
    """(num_features, dim); rows orthogonal within each block of dim rows (exactly), last block partial"""
    d = draw(rng, 3, 12)
    m = d * draw(rng, 1, 3) + draw(rng, 1, d - 1)
    g = torch.Generator().manual_seed(draw(rng, 0, 10**6))
    w = orthogonal_random_features(m, d, g)
    expect_tensor(w, f"orthogonal_random_features({m}, {d}, generator)", (m, d), torch.float32)
    w = w.double()
    norms = w.norm(dim=-1)
    if torch.allclose(norms, torch.ones_like(norms), atol=1e-4):
        raise named("unit_norms")
    for start in range(0, m, d):
        block = w[start : start + d]
        gram = block @ block.T
        off = gram - torch.diag(torch.diagonal(gram))
        if off.abs().max() > 1e-4 * gram.diagonal().max():
            description, hint = HINTS["not_orthogonal"]
            raise Mistake(
                f"rows {start} .. {start + block.shape[0] - 1} are not orthogonal: the "
                f"largest |w_i . w_j| / |w|^2 is {(off.abs().max() / gram.diagonal().max()).item():.2f}; "
                f"it looks like {description}.",
                hint,
                "not_orthogonal",
            )


def orf_norms_chi(orthogonal_random_features, rng):
    """row norms distributed like chi(dim): mean and variance over many rows, within 5 sigma"""
    d = draw(rng, 4, 16)
    g = torch.Generator().manual_seed(draw(rng, 0, 10**6))
    norms = torch.cat(
        [orthogonal_random_features(4 * d, d, g).double().norm(dim=-1) for _ in range(25)]
    )
    n = norms.numel()
    mean, var = chi_moments(d)
    if norms.std() < 1e-3 * norms.mean():
        raise named("unit_norms") if abs(norms.mean() - 1) < 1e-3 else named("fixed_norms")
    # chi is well concentrated: the fourth central moment is below 3 var^2 for d >= 4
    mean_sigma, var_sigma = math.sqrt(var / n), var * math.sqrt(2 / (n - 1)) * 1.5
    if (
        abs(norms.mean().item() - mean) > 5 * mean_sigma
        or abs(norms.var().item() - var) > 5 * var_sigma
    ):
        description, hint = HINTS["fixed_norms"]
        raise Mistake(
            f"over {n} rows with dim {d} the norms have mean {norms.mean().item():.3f} and "
            f"variance {norms.var().item():.3f}; chi({d}) has mean {mean:.3f} and variance "
            f"{var:.3f}.",
            hint,
            "fixed_norms",
        )


def orf_reproducible(orthogonal_random_features, rng):
    """the same generator state gives the same features; the next call gives new ones"""
    d, m = draw(rng, 3, 10), draw(rng, 3, 25)
    seed = draw(rng, 0, 10**6)
    torch.manual_seed(draw(rng, 0, 10**6))
    a = orthogonal_random_features(m, d, torch.Generator().manual_seed(seed))
    torch.manual_seed(draw(rng, 0, 10**6))
    g = torch.Generator().manual_seed(seed)
    b = orthogonal_random_features(m, d, g)
    expect_tensor(a, f"orthogonal_random_features({m}, {d}, generator)", (m, d), torch.float32)
    if not torch.equal(a, b):
        raise named("not_reproducible")
    if torch.equal(orthogonal_random_features(m, d, g), b):
        raise named("not_random")


# ----------------------------------------------------------------------------- favor_feature_map


def favor64(x, w):
    """The float64 exponent w . x - |x|^2 / 2, (..., L, m)."""
    x, w = x.double(), w.double()
    return x @ w.T - (x * x).sum(-1, keepdim=True) / 2


def expect_favor(out, x, w, is_query: bool, what: str) -> None:
    m = w.shape[0]
    expect_tensor(out, what, (*x.shape[:-1], m), x.dtype)
    out64 = out.double()
    if not torch.isfinite(out64).all():
        raise Mistake(f"{what} has NaN/inf values.", HINTS["no_stabiliser"][1], "no_stabiliser")
    if (out64 < 0).any():
        raise named("negative_features")
    if (out64 == 0).all(dim=-1).any():
        raise named("no_stabiliser")
    log_ratio = (
        torch.log(out64) - favor64(x, w) + 0.5 * math.log(m)
    )  # -s, constant per row or slice
    tol = 1e-9 if x.dtype == torch.float64 else 2e-3

    def constant_over(dims):
        return (log_ratio.amax(dims) - log_ratio.amin(dims)).max().item() <= tol

    if not constant_over((-1,)):
        alt = log_ratio - (x.double() ** 2).sum(-1, keepdim=True) / 2
        if (alt.amax(-1) - alt.amin(-1)).max().item() <= tol:
            raise named("missing_norm_term")
        raise Mistake(
            f"{what} is not proportional to exp(w . x - |x|^2 / 2) along the features: "
            f"log(phi) - (w . x - |x|^2/2) varies by "
            f"{(log_ratio.amax(-1) - log_ratio.amin(-1)).max().item():.1e} within a row.",
            "phi_i(x) = exp(w_i . x - |x|^2 / 2 - s) / sqrt(m), with w_i the rows of projection.",
            "wrong_values",
        )
    if not is_query and not constant_over((-2, -1)):
        alt = log_ratio - (x.double() ** 2).sum(-1, keepdim=True) / 2
        if (alt.amax((-2, -1)) - alt.amin((-2, -1))).max().item() <= tol:
            raise named("missing_norm_term")
        raise named("per_key_stabiliser")


def favor_matches(favor_feature_map, rng):
    """exp(w . x - |x|^2/2 - s) / sqrt(m), positive; s per row for queries, per slice for keys"""
    d, m, L = draw(rng, 4, 16), draw(rng, 8, 40), draw(rng, 5, 20)
    w = randn((m, d), rng, torch.float64)
    for dtype in (torch.float32, torch.float64):
        x = randn((2, 3, L, d), rng, dtype, scale=0.7)
        expect_favor(
            favor_feature_map(x, w.to(dtype), is_query=True),
            x,
            w,
            True,
            f"favor_feature_map(x, projection, is_query=True), {dtype}",
        )
        expect_favor(
            favor_feature_map(x, w.to(dtype)),
            x,
            w,
            False,
            f"favor_feature_map(x, projection) (keys), {dtype}",
        )


def favor_stabilised(favor_feature_map, rng):
    """large inputs: finite, and no query row underflows to all zeros (the max-stabiliser)"""
    d, m, L = draw(rng, 8, 16), draw(rng, 16, 64), draw(rng, 5, 20)
    w = randn((m, d), rng)
    x = randn((2, L, d), rng)
    x = 25 * x / x.norm(dim=-1, keepdim=True)  # |x|^2 / 2 = 312: exp underflows without s
    what = "favor_feature_map(x, projection, is_query=True) with |x| = 25"
    out = favor_feature_map(x, w, is_query=True)
    expect_tensor(out, what, (*x.shape[:-1], w.shape[0]), x.dtype)
    if not torch.isfinite(out).all():
        raise Mistake(f"{what} has NaN/inf values.", HINTS["no_stabiliser"][1], "no_stabiliser")
    if (out < 0).any():
        raise named("negative_features")
    if (out == 0).all(dim=-1).any():
        raise named("no_stabiliser")
    top = out.double().amax(-1) * math.sqrt(w.shape[0])  # the stabilised max feature is exp(0)
    if (top - 1).abs().max() > 1e-4:
        raise Mistake(
            f"{what}: the largest feature of a query row is {top.min().item():.3g} / sqrt(m), "
            "expected exactly 1 / sqrt(m) (exp(0) after subtracting the row's max).",
            HINTS["no_stabiliser"][1],
            "no_stabiliser",
        )


def favor_bad_input(favor_feature_map, rng):
    """x and projection with different D raise ValueError"""
    x, w = randn((4, 6), rng), randn((10, 5), rng)
    expect_value_error(
        lambda: favor_feature_map(x, w),
        "x (4, 6) with projection (10, 5)",
        "no_error_for_bad_input",
    )


# ----------------------------------------------------------------------------- performer_attention


def performer_error(performer_attention, q, k, v, m, seeds) -> float:
    ref = F.scaled_dot_product_attention(q.double(), k.double(), v.double())
    errors = [
        relative_error(
            performer_attention(
                q, k, v, num_features=m, generator=torch.Generator().manual_seed(s)
            ),
            ref,
        )
        for s in seeds
    ]
    return sum(errors) / len(errors)


def performer_shapes(performer_attention, rng):
    """(..., Lq, Dv) in the input's dtype; the same generator state gives the same output"""
    L = draw(rng, 5, 20)
    q, k, v = inputs(rng, L, lk=L + draw(rng, 1, 5))
    seed = draw(rng, 0, 10**6)
    a = performer_attention(q, k, v, num_features=32, generator=torch.Generator().manual_seed(seed))
    expect_tensor(
        a, "performer_attention(q, k, v, 32, generator)", (*q.shape[:-1], v.shape[-1]), q.dtype
    )
    b = performer_attention(q, k, v, num_features=32, generator=torch.Generator().manual_seed(seed))
    if not torch.equal(a, b):
        raise named("not_reproducible")
    x64 = [t.double() for t in (q, k, v)]
    expect_tensor(
        performer_attention(*x64, num_features=8, generator=torch.Generator().manual_seed(seed)),
        "performer_attention on float64",
        (*q.shape[:-1], v.shape[-1]),
        torch.float64,
    )


def performer_converges(performer_attention, rng):
    """approximates softmax attention: the error falls as num_features grows (16 -> 512)"""
    L, d = draw(rng, 24, 48), 2 ** draw(rng, 3, 4)
    q, k, v = (randn((2, L, d), rng, torch.float64, scale=s) for s in (0.5, 0.5, 1.0))
    seeds = [draw(rng, 0, 10**6) for _ in range(2)]
    small, large = (
        performer_error(performer_attention, q, k, v, 16, seeds),
        performer_error(performer_attention, q, k, v, 512, seeds),
    )
    unscaled = F.scaled_dot_product_attention(q, k, v, scale=1.0)
    out = performer_attention(
        q, k, v, num_features=512, generator=torch.Generator().manual_seed(seeds[0])
    )
    ref = F.scaled_dot_product_attention(q, k, v)
    if (
        relative_error(out, unscaled) < relative_error(out, ref)
        and relative_error(ref, unscaled) > 0.1
    ):
        raise named("missing_scale")
    if not (large < 0.75 * small and large < 0.5):
        description, hint = HINTS["error_does_not_fall"]
        raise Mistake(
            f"relative error against softmax attention: {small:.3f} with 16 features, "
            f"{large:.3f} with 512 (expected below 0.5 and falling): it looks like "
            f"{description}.",
            hint,
            "error_does_not_fall",
        )


def performer_bad_input(performer_attention, rng):
    """mismatched lengths or dims and wrong layouts raise ValueError"""
    bad_inputs(lambda q, k, v: performer_attention(q, k, v, num_features=8), rng, causal=False)
