"""Attention in float64 from its definition, each named mistake planted in it, and the
watched call of the student's (out, lse) that the flash checks share."""

import math

import torch

from grader.harness.checking import Mistake, expect_close, expect_tensor, hint, named
from grader.suites._common import randn
from grader.suites.day07_flash_triton.kernel_watch import flash_dtype, watched

BLOCKS = (16, 32, 64)  # key-tile sizes a student's kernel may use on the CPU


def visible(Lq: int, Lk: int, causal, kind: str = "bottom_right") -> torch.Tensor:
    """(Lq, Lk) bool, True = may attend."""
    i, j = torch.arange(Lq)[:, None], torch.arange(Lk)[None, :]
    if not causal:
        return torch.ones(Lq, Lk, dtype=torch.bool)
    if kind == "top_left":
        return j <= i
    if kind == "strict":
        return j < Lk - Lq + i
    return j <= Lk - Lq + i


def f64(t: torch.Tensor) -> torch.Tensor:
    return t.detach().cpu().double()


def scores64(q, k, scale=None):
    scale = 1 / math.sqrt(q.shape[-1]) if scale is None else scale
    return (f64(q) @ f64(k).transpose(-1, -2)) * scale


def attention64(q, k, v, causal=False, kind="bottom_right", scale=None):
    """(out, lse) in float64, from the definition."""
    s = scores64(q, k, scale).masked_fill(
        ~visible(q.shape[-2], k.shape[-2], causal, kind), float("-inf")
    )
    lse = torch.logsumexp(s, -1)
    p = torch.exp(s - lse[..., None])
    return p @ f64(v), lse


def online64(q, k, v, causal, block_n, variant):
    """The online softmax tile by tile in float64 with one planted mistake."""
    s = scores64(q, k).masked_fill(~visible(q.shape[-2], k.shape[-2], causal), float("-inf"))
    v = f64(v)
    Lk = s.shape[-1]
    if variant == "pad_keys_not_masked":
        pad = -Lk % block_n
        s = torch.cat([s, s.new_zeros(*s.shape[:-1], pad)], -1)
        v = torch.cat([v, v.new_zeros(*v.shape[:-2], pad, v.shape[-1])], -2)
    m = torch.full(s.shape[:-1], float("-inf"), dtype=torch.float64)
    l = torch.zeros_like(m)
    acc = torch.zeros(*s.shape[:-1], v.shape[-1], dtype=torch.float64)
    for start in range(0, s.shape[-1], block_n):
        tile = s[..., start : start + block_n]
        m_new = torch.maximum(m, tile.amax(-1))
        p = torch.exp(tile - m_new[..., None])
        alpha = torch.exp(m - m_new)
        l = l + p.sum(-1) if variant == "missing_rescale" else alpha * l + p.sum(-1)
        scale_acc = 1.0 if variant in ("missing_rescale", "rescale_l_not_acc") else alpha[..., None]
        acc = scale_acc * acc + p @ v[..., start : start + block_n, :]
        m = m_new
    return acc / l[..., None]


def out_suspects(q, k, v, causal):
    Lk, D = k.shape[-2], q.shape[-1]
    suspects = []
    for block_n in BLOCKS:
        if block_n < Lk:
            suspects += [
                (key, online64(q, k, v, causal, block_n, key))
                for key in ("missing_rescale", "rescale_l_not_acc")
            ]
        if Lk % block_n and not causal:
            suspects.append(
                ("pad_keys_not_masked", online64(q, k, v, causal, block_n, "pad_keys_not_masked"))
            )
    s = scores64(q, k).masked_fill(~visible(q.shape[-2], Lk, causal), float("-inf"))
    suspects.append(("not_normalised", torch.exp(s - s.amax(-1, keepdim=True)) @ f64(v)))
    for scale in (1.0, 1 / D, math.log(2) / math.sqrt(D), 1 / (math.log(2) * math.sqrt(D))):
        suspects.append(("wrong_scale", attention64(q, k, v, causal, scale=scale)[0]))
    if causal:
        suspects += [
            ("causal_ignored", attention64(q, k, v, False)[0]),
            ("causal_top_left", attention64(q, k, v, True, "top_left")[0]),
        ]
        if q.shape[-2] < Lk:
            suspects.append(("causal_wrong_side", attention64(q, k, v, True, "strict")[0]))
    return suspects


def lse_suspects(q, k, causal):
    s = scores64(q, k).masked_fill(~visible(q.shape[-2], k.shape[-2], causal), float("-inf"))
    lse = torch.logsumexp(s, -1)
    return [("lse_base2", lse / math.log(2)), ("lse_without_max", lse - s.amax(-1))]


def qkv(rng, lead, Lq, Lk, D, scale=1.0):
    dtype = flash_dtype()
    return (
        randn((*lead, Lq, D), rng, dtype, scale),
        randn((*lead, Lk, D), rng, dtype),
        randn((*lead, Lk, D), rng, dtype),
    )


def call_flash(flash, what, q, k, v, causal):
    """The student's (out, lse), watched."""
    result = watched(flash, what, q, k, v, causal=causal)
    if not isinstance(result, tuple) or len(result) != 2:
        raise Mistake(
            f"{what} returned {type(result).__name__}: it looks like {hint('not_a_pair')[0]}.",
            hint("not_a_pair")[1],
            "not_a_pair",
        )
    return result


def expect_attention(result, q, k, v, causal, what):
    out, lse = result
    ref_out, ref_lse = attention64(q, k, v, causal)
    expect_close(
        out,
        ref_out,
        q.dtype,
        f"out of {what}",
        out_suspects(q, k, v, causal),
        nonfinite=named("not_stable"),
    )
    expect_tensor(lse, f"lse of {what}", ref_lse.shape, torch.float32)
    # lse is float32 whatever the inputs; judged with the inputs' tolerance
    expect_close(lse.to(q.dtype), ref_lse, q.dtype, f"lse of {what}", lse_suspects(q, k, causal))
