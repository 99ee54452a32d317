"""Checks for elu_feature_map and the non-causal linear_attention."""

import torch
import torch.nn.functional as F

from grader.harness.checking import Mistake, expect_close, named
from grader.suites._common import draw, randn
from grader.suites.day08_linear_attention.oracles import (
    bad_inputs,
    call_any_rank,
    expect_eps_guard,
    expect_no_quadratic,
    inputs,
    la_suspects,
    phi64,
    quadratic64,
    runs,
)


def elu_matches(elu_feature_map, rng):
    """equals elu(x) + 1 elementwise, positive, any shape, float32 and float64"""
    for shape, dtype in [
        ((draw(rng, 2, 9), draw(rng, 2, 9)), torch.float32),
        ((2, draw(rng, 2, 5), 7), torch.float64),
    ]:
        x = randn(shape, rng, dtype, scale=3.0)
        x[..., 0] = -30.0  # elu(-30) + 1 is tiny but positive
        kept = x.clone()
        out = elu_feature_map(x)
        if not torch.equal(x, kept):
            raise named("modified_input")
        if isinstance(out, torch.Tensor) and out.shape == x.shape and (out < 0).any():
            raise named("negative_features")
        x64 = x.double()
        expect_close(
            out,
            phi64(x),
            dtype,
            "elu_feature_map(x)",
            suspects=[
                ("negative_features", F.elu(x64)),
                ("negative_features", x64),
                ("wrong_positive_map", F.relu(x64) + 1),
                ("wrong_positive_map", torch.exp(x64)),
                ("wrong_positive_map", F.softplus(x64)),
                ("positive_side_without_one", torch.where(x64 >= 0, x64, torch.exp(x64))),
                ("negative_side_plus_one", torch.where(x64 > 0, x64 + 1, torch.exp(x64) + 1)),
                ("elu_alpha_changed", F.elu(x64, alpha=0.5) + 1),
                ("elu_alpha_changed", F.elu(x64, alpha=2.0) + 1),
            ],
        )


def la_matches(linear_attention, rng):
    """equals the quadratic form (phi(Q) phi(K)^T) V row-normalised, Lq != Lk, Dv != D"""
    L = draw(rng, 5, 20)
    q, k, v = inputs(rng, L, lk=L + draw(rng, 1, 6))
    try:
        out = call_any_rank(linear_attention, q, k, v)
    except Mistake as mistake:  # runs only when Lq == Lk: a causal, position-by-position sum?
        same_length = [t[..., :L, :] for t in (k, v)]
        if mistake.key == "raised" and runs(lambda: linear_attention(q, *same_length)):
            raise named("causal_when_not") from None
        raise
    expect_close(
        out,
        quadratic64(q, k, v, False),
        q.dtype,
        "linear_attention(q, k, v)",
        la_suspects(q, k, v, False),
    )


def la_feature_map_and_eps(linear_attention, rng):
    """uses the given feature_map and eps; float64 and any leading dims ((L, D), (B, L, D))"""
    for leading in [(), (draw(rng, 1, 3),)]:
        L = draw(rng, 3, 12)
        q, k, v = inputs(rng, L, torch.float64, leading)
        eps = 0.5
        expect_close(
            call_any_rank(linear_attention, q, k, v, feature_map=torch.exp, eps=eps),
            quadratic64(q, k, v, False, eps, lambda t: torch.exp(t.double())),
            q.dtype,
            f"linear_attention on {tuple(q.shape)} with feature_map=exp, eps={eps}",
            la_suspects(q, k, v, False, eps, lambda t: torch.exp(t.double())),
        )


def la_eps_guard(linear_attention, rng):
    """a query with phi(q) = 0 (relu feature map) gets 0, not NaN: the eps in the normaliser"""
    expect_eps_guard(linear_attention, rng, False, "linear_attention")


def la_linear_memory(linear_attention, rng):
    """never allocates an (L, L)-sized tensor (L = 4096): O(L) memory"""
    L = 4096
    q, k, v = (randn((1, 1, L, 8), rng) for _ in range(3))
    expect_no_quadratic(lambda: linear_attention(q, k, v), L, "linear_attention")


def la_bad_input(linear_attention, rng):
    """mismatched lengths or dims and wrong layouts raise ValueError"""
    bad_inputs(linear_attention, rng, causal=False)
