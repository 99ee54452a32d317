"""Checks for day01-sdpa: stable_softmax, attention_scores, scaled_dot_product_attention.

Oracles are torch's own softmax and F.scaled_dot_product_attention in float64. Each check draws
its shapes and values from `rng`, so hidden tests (fresh seed) see shapes nobody hard-coded.
"""

import math

import torch
import torch.nn.functional as F

from grader.harness.checking import Mistake, expect_close, named
from grader.harness.guard import SDPA, SOFTMAX
from grader.suites import Exercise
from grader.suites._common import draw, randn, softmax64, two_lengths, unpack

HINTS = {
    "wrong_axis": (
        "softmax taken over another axis than `dim`",
        "normalise along `dim`: max and sum both over dim, with keepdim=True.",
    ),
    "ignores_dim": (
        "softmax over the last axis, whatever `dim` says",
        "pass `dim` to your max and sum instead of -1.",
    ),
    "no_max_subtraction": (
        "exp(x) overflowing because the max was not subtracted",
        "exp overflows float32 above x = 88: compute exp(x - max) with the max "
        "along dim (softmax(x) = softmax(x - c) for any c).",
    ),
    "global_max": (
        "a max taken over the whole tensor instead of along dim",
        "take the max along dim: x.amax(dim=dim, keepdim=True); a global max sends "
        "the rows far below it to exp(-inf) = 0, then 0/0.",
    ),
    "nan_on_neg_inf": (
        "NaN where some entries are -inf",
        "-inf entries must get weight exp(-inf) = 0; do not add, subtract or "
        "multiply the -inf entries by anything else first.",
    ),
    "nan_on_all_masked_row": (
        "NaN on a row whose entries are all -inf",
        "that row's max is -inf and -inf - (-inf) is NaN: replace a -inf "
        "max by 0 (torch.where), and divide by a sum that is 0 only when "
        "the row is empty, using torch.where(sum > 0, ...) to give 0 there.",
    ),
    "missing_scale": (
        "q kᵀ without the 1/sqrt(d) scale",
        "divide the scores by math.sqrt(d) with d = q.shape[-1].",
    ),
    "divided_by_d": (
        "q kᵀ / d instead of / sqrt(d)",
        "divide by the square root of the head dimension, math.sqrt(d), not d.",
    ),
    "times_sqrt_d": (
        "q kᵀ * sqrt(d) instead of / sqrt(d)",
        "divide by math.sqrt(d); multiplying makes the scores grow with d.",
    ),
    "scaled_by_length": (
        "q kᵀ scaled by a sequence length instead of the head dimension",
        "d is the head dimension q.shape[-1], not q.shape[-2] or k.shape[-2].",
    ),
    "swapped_q_k": (
        "k qᵀ: queries and keys swapped",
        "scores[..., i, j] = q_i · k_j / sqrt(d): compute q @ k.transpose(-2, -1).",
    ),
    "softmax_over_queries": (
        "softmax over the query axis (dim=-2)",
        "each query's weights must sum to 1 over the keys: softmax over dim=-1.",
    ),
    "transposed_v": (
        "weights @ vᵀ",
        "out = weights @ v: weights (..., Lq, Lk) times v (..., Lk, Dv).",
    ),
    "transposed_weights": (
        "weightsᵀ @ v",
        "out = weights @ v with weights (..., Lq, Lk): do not transpose them.",
    ),
}


# ----------------------------------------------------------------------------- inputs and oracles


def scaled_scores(q: torch.Tensor, k: torch.Tensor, scale: float) -> torch.Tensor:
    return q.double() @ k.double().transpose(-2, -1) * scale  # (..., Lq, Lk)


# ----------------------------------------------------------------------------- stable_softmax


def other_axes(x: torch.Tensor, dim: int = -1) -> list:
    """The softmax over every axis but `dim`: what normalising the wrong axis gives."""
    return [
        ("wrong_axis", softmax64(x, other)) for other in range(x.dim()) if other != dim % x.dim()
    ]


def softmax_matches_reference(stable_softmax, rng):
    """matches the float64 softmax on random (B, H, Lq, Lk) scores, default dim"""
    lq, lk = two_lengths(rng)
    x = randn((draw(rng, 1, 3), draw(rng, 1, 4), lq, lk), rng, scale=3.0)  # (B, H, Lq, Lk)
    expect_close(stable_softmax(x), softmax64(x), x.dtype, suspects=other_axes(x))


def softmax_follows_dim(stable_softmax, rng):
    """normalises along the `dim` argument (dim=0, 1, -2 of a 3-D tensor)"""
    shape = (draw(rng, 2, 4), draw(rng, 5, 7), draw(rng, 8, 10))  # all different sizes
    x = randn(shape, rng, scale=2.0)
    for dim in (0, 1, -2):
        suspects = [("ignores_dim", softmax64(x, -1)), *other_axes(x, dim)]
        expect_close(
            stable_softmax(x, dim=dim),
            softmax64(x, dim),
            x.dtype,
            what=f"stable_softmax(x, dim={dim})",
            suspects=suspects,
        )


def softmax_keeps_float64(stable_softmax, rng):
    """float64 in, float64 out, to 1e-10"""
    x = randn((draw(rng, 2, 6), draw(rng, 2, 9)), rng, dtype=torch.float64, scale=4.0)
    expect_close(stable_softmax(x, dim=-1), softmax64(x), torch.float64, suspects=other_axes(x))


def softmax_survives_large_logits(stable_softmax, rng):
    """large logits (x ≈ 1000) stay finite: the max is subtracted"""
    x = 1000 + randn((draw(rng, 2, 5), draw(rng, 3, 9)), rng, scale=5.0)
    expect_close(
        stable_softmax(x, dim=-1),
        softmax64(x),
        x.dtype,
        suspects=other_axes(x),
        nonfinite=named("no_max_subtraction"),
    )


def softmax_uses_max_per_row(stable_softmax, rng):
    """rows at very different scales (one near -70, one near +40) all come out right"""
    rows, lk = draw(rng, 3, 6), draw(rng, 3, 9)
    offsets = torch.linspace(-70.0, 40.0, rows).unsqueeze(-1)  # (rows, 1)
    x = (offsets + randn((rows, lk), rng, dtype=torch.float64)).float()
    expect_close(
        stable_softmax(x, dim=-1),
        softmax64(x),
        x.dtype,
        suspects=other_axes(x),
        nonfinite=named("global_max"),
    )


def softmax_zero_weight_for_neg_inf(stable_softmax, rng):
    """-inf entries get exactly zero weight, the others still sum to 1"""
    lq, lk = two_lengths(rng)
    x = randn((lq, lk), rng, scale=2.0)
    blocked = torch.rand((lq, lk), generator=rng) < 0.4
    blocked[:, 0] = False  # every row keeps at least one finite entry
    x = x.masked_fill(blocked, float("-inf"))
    out = stable_softmax(x, dim=-1)
    expect_close(
        out, softmax64(x), x.dtype, suspects=other_axes(x), nonfinite=named("nan_on_neg_inf")
    )
    if (out[blocked] != 0).any():
        raise Mistake(
            "entries that were -inf got a non-zero weight.",
            HINTS["nan_on_neg_inf"][1],
            "nan_on_neg_inf",
        )


def softmax_all_neg_inf_row_is_zero(stable_softmax, rng):
    """a row that is all -inf (nothing to attend to) gives zeros, not NaN"""
    x = randn((draw(rng, 3, 6), draw(rng, 2, 8)), rng)
    x[draw(rng, 0, x.shape[0] - 1)] = float("-inf")
    expect_close(
        stable_softmax(x, dim=-1),
        softmax64(x),
        x.dtype,
        suspects=other_axes(x),
        nonfinite=named("nan_on_all_masked_row"),
    )


# ----------------------------------------------------------------------------- attention_scores


def scale_suspects(q: torch.Tensor, k: torch.Tensor) -> list:
    """What the usual scaling mistakes would give for these q and k."""
    d, lq, lk = q.shape[-1], q.shape[-2], k.shape[-2]
    return [
        ("missing_scale", scaled_scores(q, k, 1.0)),
        ("divided_by_d", scaled_scores(q, k, 1 / d)),
        ("times_sqrt_d", scaled_scores(q, k, math.sqrt(d))),
        ("scaled_by_length", scaled_scores(q, k, 1 / math.sqrt(lq))),
        ("scaled_by_length", scaled_scores(q, k, 1 / math.sqrt(lk))),
        ("swapped_q_k", scaled_scores(k, q, 1 / math.sqrt(d))),
    ]


def scores_match_reference(attention_scores, rng):
    """(B, H, Lq, D) and (B, H, Lk, D) give q kᵀ / sqrt(D), shape (B, H, Lq, Lk), Lq ≠ Lk"""
    lq, lk = two_lengths(rng)
    batch, heads, d = draw(rng, 1, 3), draw(rng, 1, 4), 2 ** draw(rng, 3, 5)
    q = randn((batch, heads, lq, d), rng)  # (B, H, Lq, D)
    k = randn((batch, heads, lk, d), rng)  # (B, H, Lk, D)
    expect_close(
        attention_scores(q, k),
        scaled_scores(q, k, 1 / math.sqrt(d)),
        q.dtype,
        what="scores",
        suspects=scale_suspects(q, k),
    )


def scores_any_leading_dims(attention_scores, rng):
    """any leading dims: (L, D), (B, L, D) and (B, H, G, L, D)"""
    lq, lk = two_lengths(rng)
    d = 2 ** draw(rng, 2, 5)
    for leading in [(), (draw(rng, 1, 3),), (2, draw(rng, 1, 3), 2)]:
        q, k = randn((*leading, lq, d), rng), randn((*leading, lk, d), rng)
        expect_close(
            attention_scores(q, k),
            scaled_scores(q, k, 1 / math.sqrt(d)),
            q.dtype,
            what=f"scores for q of shape {tuple(q.shape)}",
            suspects=scale_suspects(q, k),
        )


def scores_keep_float64(attention_scores, rng):
    """float64 in, float64 out, to 1e-10"""
    lq, lk = two_lengths(rng)
    d = 2 ** draw(rng, 2, 6)
    q = randn((lq, d), rng, dtype=torch.float64)
    k = randn((lk, d), rng, dtype=torch.float64)
    expect_close(
        attention_scores(q, k),
        scaled_scores(q, k, 1 / math.sqrt(d)),
        torch.float64,
        what="scores",
        suspects=scale_suspects(q, k),
    )


# ----------------------------------------------------------------------------- scaled_dot_product_attention


def sdpa64(q, k, v) -> tuple:
    """The float64 oracle: (out, weights), out from F.scaled_dot_product_attention."""
    weights = torch.softmax(scaled_scores(q, k, 1 / math.sqrt(q.shape[-1])), dim=-1)
    batched = [
        t.double().reshape(-1, *t.shape[-2:]) for t in (q, k, v)
    ]  # (N, L, D): any leading dims
    out = F.scaled_dot_product_attention(*batched).reshape(*q.shape[:-1], v.shape[-1])
    return out, weights


def weight_suspects(q, k) -> list:
    d = q.shape[-1]
    return [
        ("softmax_over_queries", softmax64(scaled_scores(q, k, 1 / math.sqrt(d)), dim=-2)),
        ("missing_scale", softmax64(scaled_scores(q, k, 1.0))),
        ("divided_by_d", softmax64(scaled_scores(q, k, 1 / d))),
        ("times_sqrt_d", softmax64(scaled_scores(q, k, math.sqrt(d)))),
        ("swapped_q_k", softmax64(scaled_scores(k, q, 1 / math.sqrt(d)))),
    ]


def sdpa_shapes(scaled_dot_product_attention, rng):
    """returns (out, weights): out (B, H, Lq, Dv), weights (B, H, Lq, Lk), with Lq ≠ Lk, Dv ≠ Dk"""
    lq, lk = two_lengths(rng)
    batch, heads, dk = draw(rng, 1, 3), draw(rng, 1, 3), 2 ** draw(rng, 3, 5)
    dv = dk + draw(rng, 1, 8)
    q, k = randn((batch, heads, lq, dk), rng), randn((batch, heads, lk, dk), rng)
    v = randn((batch, heads, lk, dv), rng)
    unpack(scaled_dot_product_attention(q, k, v), q, k, v)


def sdpa_matches_reference(scaled_dot_product_attention, rng):
    """weights = softmax(q kᵀ / sqrt(d)) over keys, out equals F.scaled_dot_product_attention"""
    lq, lk = two_lengths(rng)
    dk, dv = 2 ** draw(rng, 3, 5), lk  # Dv = Lk, so that weights @ vᵀ has the right shape
    q, k = randn((2, 3, lq, dk), rng, scale=2.0), randn((2, 3, lk, dk), rng, scale=2.0)
    v = randn((2, 3, lk, dv), rng)
    out, weights = unpack(scaled_dot_product_attention(q, k, v), q, k, v)
    out_ref, weights_ref = sdpa64(q, k, v)
    expect_close(weights, weights_ref, q.dtype, what="weights", suspects=weight_suspects(q, k))
    expect_close(
        out,
        out_ref,
        q.dtype,
        what="out",
        suspects=[("transposed_v", weights_ref @ v.double().transpose(-2, -1))],
    )


def sdpa_self_attention(scaled_dot_product_attention, rng):
    """self-attention (Lq = Lk): queries, keys and weights each play their own role"""
    length = draw(rng, 4, 9)
    shape = (draw(rng, 1, 3), length, length)  # (B, L, D) with D = L: every transpose fits
    q, k, v = (randn(shape, rng, scale=2.0) for _ in range(3))
    out, weights = unpack(scaled_dot_product_attention(q, k, v), q, k, v)
    out_ref, weights_ref = sdpa64(q, k, v)
    expect_close(weights, weights_ref, q.dtype, what="weights", suspects=weight_suspects(q, k))
    expect_close(
        out,
        out_ref,
        q.dtype,
        what="out",
        suspects=[
            ("transposed_weights", weights_ref.transpose(-2, -1) @ v.double()),
            ("transposed_v", weights_ref @ v.double().transpose(-2, -1)),
        ],
    )


def sdpa_survives_large_scores(scaled_dot_product_attention, rng):
    """large scores (q·k / sqrt(d) in the hundreds) stay finite"""
    lq, lk = two_lengths(rng)
    d = 2 ** draw(rng, 3, 5)
    q, k, v = randn((lq, d), rng, scale=20.0), randn((lk, d), rng, scale=20.0), randn((lk, d), rng)
    out, weights = unpack(scaled_dot_product_attention(q, k, v), q, k, v)
    out_ref, weights_ref = sdpa64(q, k, v)
    overflow = Mistake(
        "Your softmax overflowed.",
        "use your stable_softmax for the weights: it "
        "subtracts the max, so large scores stay finite.",
        "no_max_subtraction",
    )
    expect_close(
        weights,
        weights_ref,
        q.dtype,
        what="weights",
        suspects=weight_suspects(q, k),
        nonfinite=overflow,
    )
    expect_close(out, out_ref, q.dtype, what="out")


def sdpa_keeps_float64(scaled_dot_product_attention, rng):
    """float64 in, float64 out, to 1e-10, with a 5-D input (B, H, G, L, D)"""
    lq, lk = two_lengths(rng)
    d, leading = 2 ** draw(rng, 2, 5), (2, draw(rng, 1, 3), 2)
    q = randn((*leading, lq, d), rng, dtype=torch.float64)
    k = randn((*leading, lk, d), rng, dtype=torch.float64)
    v = randn((*leading, lk, d + 1), rng, dtype=torch.float64)
    out, weights = unpack(scaled_dot_product_attention(q, k, v), q, k, v)
    out_ref, weights_ref = sdpa64(q, k, v)
    expect_close(
        weights, weights_ref, torch.float64, what="weights", suspects=weight_suspects(q, k)
    )
    expect_close(out, out_ref, torch.float64, what="out")


EXERCISES = {
    "stable_softmax": Exercise(
        checks=[
            softmax_matches_reference,
            softmax_follows_dim,
            softmax_keeps_float64,
            softmax_survives_large_logits,
            softmax_uses_max_per_row,
            softmax_zero_weight_for_neg_inf,
            softmax_all_neg_inf_row_is_zero,
        ],
        forbidden=SOFTMAX,
    ),
    "attention_scores": Exercise(
        checks=[scores_match_reference, scores_any_leading_dims, scores_keep_float64],
        forbidden=SDPA,
    ),
    "scaled_dot_product_attention": Exercise(
        checks=[
            sdpa_shapes,
            sdpa_matches_reference,
            sdpa_self_attention,
            sdpa_survives_large_scores,
            sdpa_keeps_float64,
        ],
        forbidden={**SOFTMAX, **SDPA},
    ),
}
