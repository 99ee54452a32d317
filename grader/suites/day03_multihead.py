"""Checks for day03-multihead: split_heads, merge_heads, repeat_kv, MultiHeadAttention,
sinusoidal_positions, apply_rope, alibi_bias, and the advanced part: relative_position_bucket,
shaw_relative_attention, relative_bias_attention, memory_attention.

Oracles: torch.nn.MultiheadAttention (with the student's weights copied in, in float64),
F.scaled_dot_product_attention, and float64 formulas written out here. A suspect (what a named
mistake would give) is computed by the same float64 code with the one thing the mistake changes.

MultiHeadAttention is a class: the check receives it wrapped by the guard, so constructing it is
guarded; every call of the module (its forward) goes through `grader.harness.checking.guarded` too, so a
shortcut inside forward is refused the same way.
"""

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

import course.reference.multihead as library
from grader.harness.checking import (
    TOLERANCE,
    Mistake,
    expect_close,
    expect_tensor,
    expect_value_error,
    guarded,
    hint,
    named,
    relative_error,
)
from grader.suites import Exercise
from grader.suites._common import draw, randn

HINTS = {
    # split_heads / merge_heads
    "split_without_transpose": (
        "x.reshape(B, H, L, dh) without a transpose: each 'head' then holds pieces of several "
        "tokens",
        "reshape to (B, L, H, dh) first, so head h gets features [h*dh, (h+1)*dh) of every token, "
        "then .transpose(1, 2) to (B, H, L, dh).",
    ),
    "heads_interleaved": (
        "head h taking the strided features h, h + H, h + 2H, ... instead of a contiguous slice",
        "view as (B, L, H, dh), not (B, L, dh, H): head h owns features [h*dh, (h+1)*dh).",
    ),
    "merge_without_transpose": (
        "x.reshape(B, L, H*dh) without first moving the heads axis back behind L",
        "transpose (B, H, L, dh) to (B, L, H, dh) first, then reshape to (B, L, H*dh).",
    ),
    "no_clear_error": (
        "bad input accepted, or refused only by an obscure error from deep inside torch",
        "check the arguments first and raise ValueError with a message that names them, e.g. "
        "f'd_model={d_model} is not divisible by num_heads={num_heads}'.",
    ),
    # repeat_kv
    "repeat_tiled": (
        "the KV heads tiled (0, 1, 0, 1, ...) instead of repeated in place (0, 0, 1, 1, ...)",
        "query head h uses KV head h // n_rep: repeat each head n_rep times in a row, "
        "e.g. x.repeat_interleave(n_rep, dim=1), not x.repeat(1, n_rep, 1, 1).",
    ),
    # MultiHeadAttention
    "scaled_by_d_model": (
        "scores divided by sqrt(d_model) instead of sqrt(head_dim)",
        "each head is an attention of its own over head_dim = d_model // num_heads features: "
        "scale by 1 / sqrt(head_dim).",
    ),
    "missing_projection": (
        "a missing or mis-shaped projection",
        "define self.q_proj, self.k_proj, self.v_proj, self.out_proj as nn.Linear; q_proj and "
        "out_proj are (d_model -> d_model), k_proj and v_proj (d_model -> num_kv_heads * head_dim).",
    ),
    "ignores_context": (
        "cross-attention computed from x alone: keys and values must come from `context`",
        "k = k_proj(context), v = v_proj(context), with context = x only when it is None.",
    ),
    "ignores_mask": (
        "the mask ignored",
        "pass the boolean mask (True = may attend) to the attention: scores of blocked keys "
        "get -inf (or the dtype's minimum) before the softmax.",
    ),
    "inverted_mask": (
        "the mask inverted: True must mean 'may attend' (torch's nn.MultiheadAttention uses "
        "the opposite)",
        "block the keys where mask is False: scores.masked_fill(~mask, -inf).",
    ),
    "weights_not_per_head": (
        "weights with the wrong shape: they should be per head, (B, H, Lq, Lk)",
        "return the softmax weights before merging the heads, (B, num_heads, Lq, Lk).",
    ),
    "weights_when_not_needed": (
        "weights returned although need_weights=False",
        "return (out, None) unless need_weights=True.",
    ),
    "gqa_tiled": (
        "query head h paired with KV head h % num_kv_heads instead of h // group",
        "use your repeat_kv: each KV head repeated num_heads // num_kv_heads times in a row.",
    ),
    # sinusoidal_positions
    "positions_from_one": (
        "positions counted from 1 instead of 0",
        "the first row is position 0: torch.arange(length), so PE[0] = [0, 1, 0, 1, ...].",
    ),
    "sin_cos_halves": (
        "sines in the first half and cosines in the second half (concatenated, not interleaved)",
        "interleave them: even columns 0, 2, 4, ... get sin, odd columns 1, 3, 5, ... get cos.",
    ),
    "sin_cos_swapped": (
        "cos in the even columns and sin in the odd ones",
        "PE[p, 2i] = sin(...), PE[p, 2i+1] = cos(...).",
    ),
    "frequency_exponent": (
        "a frequency exponent of i/dim (or 2i/dim per column) instead of 2i/dim per pair",
        "both columns 2i and 2i+1 share the angle p / 10000^(2i/dim): use "
        "torch.arange(0, dim, 2) / dim as the exponent.",
    ),
    # apply_rope
    "rope_interleaved_pairs": (
        "RoPE pairing features (2i, 2i+1) (the original RoFormer layout) instead of (i, i + D/2)",
        "rotate-half: x1, x2 = x[..., :D//2], x[..., D//2:], and return "
        "cat([x1*cos - x2*sin, x2*cos + x1*sin], dim=-1).",
    ),
    "rope_reversed": (
        "the rotation turned the wrong way (angle -p*theta)",
        "the first half is x1*cos - x2*sin and the second x2*cos + x1*sin.",
    ),
    "rope_frequency": (
        "theta_i = base^(-i/D) (or another exponent) instead of base^(-2i/D)",
        "theta = base ** (-torch.arange(0, D, 2) / D): D/2 frequencies, exponent 2i/D.",
    ),
    "positions_offset": (
        "positions offset by one (p + 1 or p - 1)",
        "use the positions you are given, as they are: angle = positions[..., None] * theta.",
    ),
    "rope_ignores_positions": (
        "the positions argument ignored (every sequence starts at 0)",
        "angle = positions[..., None] * theta, with positions broadcast against x's (..., L).",
    ),
    "rope_ignores_base": (
        "the base argument ignored (10000 used anyway)",
        "theta = base ** (-torch.arange(0, D, 2) / D) with the base you are given.",
    ),
    "angles_in_float32": (
        "angles (or cos and sin) computed in float32 for a float64 input",
        "make theta and the angles in x's dtype: torch.arange(0, D, 2, dtype=x.dtype), "
        "positions.to(x.dtype).",
    ),
    # alibi_bias
    "alibi_slopes_from_zero": (
        "slopes 2^(-8h/H) for h = 0..H-1 instead of h = 1..H",
        "the first head's slope is 2^(-8/H): torch.arange(1, H + 1).",
    ),
    "alibi_sign": (
        "the bias with the wrong sign: earlier keys must be penalised (negative)",
        "bias = -m_h * (pos_q - pos_k): 0 on the diagonal, negative for earlier keys.",
    ),
    "alibi_top_left": (
        "queries placed at positions 0..lq-1 instead of bottom-right, lk - lq + i",
        "the queries are the newest tokens: pos_q = lk - lq + i, so the last query sits at lk - 1.",
    ),
    "alibi_clipped": (
        "future keys given 0 (or |distance| used), instead of -m * (pos_q - pos_k) everywhere",
        "keep the sign of pos_q - pos_k: future keys get positive values; masking them is the "
        "causal mask's job.",
    ),
    "alibi_not_interpolated": (
        "2^(-8h/H) used for a number of heads that is not a power of two",
        "for H not a power of two, take the slopes of the closest power of two below, n, then "
        "every other slope of 2n, (the ALiBi paper's get_slopes), until there are H.",
    ),
    # relative_position_bucket
    "bucket_sign": (
        "the relative position taken as query - memory instead of memory - query",
        "relative_position = memory_position - query_position, and T5 buckets n = "
        "-relative_position: keys in the past (n > 0) get the lower buckets, keys in the future "
        "the upper half when bidirectional.",
    ),
    "bucket_always_bidirectional": (
        "bidirectional=False handled as if it were True",
        "when not bidirectional, keep all num_buckets for the past: n = max(-relative_position, 0) "
        "(future keys share bucket 0), and do not halve num_buckets.",
    ),
    "bucket_boundary": (
        "an off-by-one at the boundary between the exact and the log-spaced buckets",
        "max_exact = num_buckets // 2 (after halving when bidirectional); distances n < max_exact "
        "get bucket n, and n >= max_exact get max_exact + floor(log(n / max_exact) / "
        "log(max_distance / max_exact) * (num_buckets - max_exact)).",
    ),
    "bucket_not_clamped": (
        "distances beyond max_distance not clamped to the last bucket",
        "take min(bucket, num_buckets - 1) (num_buckets halved when bidirectional) for the "
        "log-spaced part: every distance from max_distance on shares the last bucket.",
    ),
    "bucket_not_halved": (
        "max_exact computed from num_buckets before halving it for the two directions",
        "when bidirectional, first num_buckets //= 2 (each direction gets half), then "
        "max_exact = num_buckets // 2.",
    ),
    "bucket_rounded": (
        "the log-spaced bucket rounded to the nearest integer instead of truncated",
        "T5 truncates: .long() (or .floor()) of the non-negative log-spaced offset, not .round().",
    ),
    # shaw_relative_attention
    "shaw_not_clipped": (
        "relative distances not clipped to [-max_relative_position, max_relative_position]",
        "index the tables with clamp(j - pos_q(i), -P, P) + P: every distance beyond P reuses the "
        "edge embedding.",
    ),
    "shaw_index_offset": (
        "the table indexed without the offset +max_relative_position (negative distances wrap "
        "around to the end of the table)",
        "row r of the table is distance r - P: index it with clamp(j - pos_q(i), -P, P) + P.",
    ),
    "shaw_sign": (
        "the relative distance taken as i - j (query - key) instead of j - i (key - query)",
        "a^K_{ij} = rel_k[clamp(j - pos_q(i), -P, P) + P]: row 0 is the key P positions before "
        "the query.",
    ),
    "shaw_top_left": (
        "queries placed at positions 0..lq-1 instead of bottom-right, lk - lq + i",
        "the queries are the newest tokens: pos_q(i) = lk - lq + i, as in causal_mask and "
        "alibi_bias.",
    ),
    "shaw_ignores_rel_v": (
        "rel_v ignored: the output misses sum_j w_ij a^V_{ij}",
        "out_i = sum_j w_ij (v_j + rel_v[clamp(j - pos_q(i), -P, P) + P]).",
    ),
    "shaw_rel_not_scaled": (
        "the relative term q_i . a^K_ij not divided by sqrt(D) with q_i . k_j",
        "scores_ij = q_i . (k_j + a^K_ij) / sqrt(D): scale the whole sum.",
    ),
    # relative_bias_attention
    "bias_sign": (
        "the buckets computed from query - memory instead of memory - query",
        "relative_position = memory_position - query_position, i.e. "
        "arange(lk)[None, :] - pos_q[:, None].",
    ),
    "bias_top_left": (
        "queries placed at positions 0..lq-1 instead of bottom-right, lk - lq + i",
        "pos_q(i) = lk - lq + i, so the last query sits at the last key, lk - 1.",
    ),
    "bias_scaled": (
        "the bias multiplied by the score scale (1/sqrt(D)) along with q k^T",
        "scores = scale * q @ k^T + bias: the bias is added after scaling, as it is.",
    ),
    "bias_wrong_heads": (
        "every head given the bias of the wrong head (the table's axes mixed up)",
        "bias_table is (num_buckets, H), like an nn.Embedding's weight: bias = "
        "bias_table[buckets] is (lq, lk, H); move the heads first: .permute(2, 0, 1).",
    ),
    "bias_ignores_bidirectional": (
        "the bidirectional argument not passed on to relative_position_bucket",
        "buckets = relative_position_bucket(relative, bidirectional=bidirectional, "
        "num_buckets=bias_table.shape[0], max_distance=max_distance).",
    ),
    # memory_attention
    "memory_not_detached": (
        "gradients flowing into the memory: it must be detached (Transformer-XL's stop-gradient)",
        "use mem_k.detach() and mem_v.detach(): earlier segments are fixed context, and "
        "backpropagating into them would keep every past segment's graph alive.",
    ),
    "positions_restart": (
        "the segment's positions restarting at 0 instead of continuing after the memory",
        "memory tokens sit at start .. start + M - 1 and the segment at start + M .. "
        "start + M + L - 1: rotate q and k at those positions.",
    ),
    "memory_after_segment": (
        "the memory placed after the segment (positions L .. L + M - 1)",
        "the memory comes from earlier segments: positions start .. start + M - 1, before the "
        "segment's start + M ..",
    ),
    "gate_inverted": (
        "the gate applied the wrong way round: g must weight the memory",
        "out = g * attend(memory) + (1 - g) * attend(local), with g = sigmoid(gate_logits).",
    ),
    "gate_not_squashed": (
        "the gate logits used as the gate without a sigmoid (the gate must lie in (0, 1))",
        "g = torch.sigmoid(gate_logits).",
    ),
    "local_not_causal": (
        "the local attention not causal: a token sees later tokens of its own segment",
        "mask the local scores with a causal mask (True = may attend), e.g. causal_mask(L).",
    ),
    "memory_concatenated": (
        "one softmax over [memory ; segment] (plain concatenation) instead of two gated attentions",
        "attend to the memory and to the segment separately, each with its own softmax, and mix "
        "the two outputs with the gate.",
    ),
}

HEADS_FORBIDDEN = {
    library.split_heads: "write it with view/reshape and transpose.",
    library.merge_heads: "write it with transpose and reshape.",
    library.repeat_kv: "write it with repeat_interleave (or expand and reshape).",
}
MHA_ADVICE = "build it from your split_heads, repeat_kv and merge_heads around course.reference.masks.attention."
MHA_FORBIDDEN = {
    **HEADS_FORBIDDEN,
    "multi_head_attention_forward": MHA_ADVICE,
    "native_multi_head_attention": MHA_ADVICE,
    library.MultiHeadAttention.__init__: MHA_ADVICE,
    library.MultiHeadAttention.forward: MHA_ADVICE,
    library.apply_rope: "write it yourself.",
}
POSITIONS_FORBIDDEN = {
    library.sinusoidal_positions: "write the table from torch.arange, sin and cos.",
    library.apply_rope: "write the rotation from torch.arange, cos and sin.",
    library.alibi_bias: "write the bias from torch.arange.",
    library.alibi_slopes: "write the slopes (get_slopes in the paper's code) yourself.",
}


# ----------------------------------------------------------------------------- split / merge / repeat


def heads_shape(rng):
    """(B, L, H, dh) with all sizes different from each other where possible."""
    return draw(rng, 1, 3), draw(rng, 3, 9), draw(rng, 2, 5), draw(rng, 2, 6)


def split64(x, heads):
    batch, length, d_model = x.shape
    return x.double().view(batch, length, heads, d_model // heads).transpose(1, 2)


def split_suspects(x, heads):
    batch, length, d_model = x.shape
    x = x.double()
    return [
        ("split_without_transpose", x.reshape(batch, heads, length, d_model // heads)),
        ("heads_interleaved", x.view(batch, length, d_model // heads, heads).permute(0, 3, 1, 2)),
    ]


def split_matches_reference(split_heads, rng):
    """(B, L, d_model) -> (B, H, L, dh), head h owning features [h*dh, (h+1)*dh)"""
    batch, length, heads, head_dim = heads_shape(rng)
    x = randn((batch, length, heads * head_dim), rng)
    expect_close(
        split_heads(x, heads),
        split64(x, heads),
        x.dtype,
        what="split_heads(x, H)",
        suspects=split_suspects(x, heads),
    )


def split_square(split_heads, rng):
    """L = H = dh: a split without a transpose cannot hide behind a wrong shape"""
    size = draw(rng, 3, 5)
    x = randn((draw(rng, 1, 2), size, size * size), rng, dtype=torch.float64)
    expect_close(
        split_heads(x, size),
        split64(x, size),
        torch.float64,
        what="split_heads(x, H)",
        suspects=split_suspects(x, size),
    )


def split_one_head(split_heads, rng):
    """one head: (B, L, d) -> (B, 1, L, d); H = d_model: dh = 1"""
    batch, length, d_model = draw(rng, 1, 3), draw(rng, 2, 6), draw(rng, 2, 8)
    x = randn((batch, length, d_model), rng)
    for heads in (1, d_model):
        expect_close(
            split_heads(x, heads),
            split64(x, heads),
            x.dtype,
            what=f"split_heads(x, {heads})",
            suspects=split_suspects(x, heads),
        )


def split_refuses_indivisible(split_heads, rng):
    """d_model not divisible by num_heads raises ValueError"""
    heads = draw(rng, 3, 5)
    x = randn((2, draw(rng, 2, 5), heads * draw(rng, 2, 4) + 1), rng)
    expect_value_error(
        lambda: split_heads(x, heads),
        f"split_heads on d_model={x.shape[-1]} with num_heads={heads}",
        "no_clear_error",
    )


def merge64(x):
    batch, heads, length, head_dim = x.shape
    return x.double().transpose(1, 2).reshape(batch, length, heads * head_dim)


def merge_matches_reference(merge_heads, rng):
    """(B, H, L, dh) -> (B, L, H*dh), the inverse of split_heads"""
    batch, length, heads, head_dim = heads_shape(rng)
    x = randn((batch, heads, length, head_dim), rng)
    expect_close(
        merge_heads(x),
        merge64(x),
        x.dtype,
        what="merge_heads(x)",
        suspects=[("merge_without_transpose", x.double().reshape(batch, length, -1))],
    )


def merge_square(merge_heads, rng):
    """L = H = dh, float64: the heads axis must move back behind L"""
    size = draw(rng, 3, 5)
    x = randn((draw(rng, 1, 2), size, size, size), rng, dtype=torch.float64)
    expect_close(
        merge_heads(x),
        merge64(x),
        torch.float64,
        what="merge_heads(x)",
        suspects=[("merge_without_transpose", x.reshape(x.shape[0], size, -1))],
    )


def merge_inverts_split(merge_heads, rng):
    """merge_heads undoes the reference split exactly, for a non-contiguous input"""
    batch, length, heads, head_dim = heads_shape(rng)
    x = randn((batch, length, heads * head_dim), rng)
    split = x.view(batch, length, heads, head_dim).transpose(1, 2)  # a non-contiguous view
    out = merge_heads(split)
    expect_tensor(out, "merge_heads(split_heads(x))", x.shape, x.dtype)
    if not torch.equal(out, x):
        raise named("merge_without_transpose")


def repeat64(x, n_rep):
    return x.double().repeat_interleave(n_rep, dim=1)


def repeat_matches_reference(repeat_kv, rng):
    """(B, Hkv, L, D) -> (B, Hkv*n_rep, L, D), each KV head n_rep times in a row"""
    batch, length, kv_heads, head_dim = heads_shape(rng)
    n_rep = draw(rng, 2, 4)
    x = randn((batch, kv_heads, length, head_dim), rng)
    expect_close(
        repeat_kv(x, n_rep),
        repeat64(x, n_rep),
        x.dtype,
        what="repeat_kv(x, n_rep)",
        suspects=[("repeat_tiled", x.double().repeat(1, n_rep, 1, 1))],
    )


def repeat_one_is_identity(repeat_kv, rng):
    """n_rep = 1 gives x back; one KV head (MQA) is shared by every query head; float64"""
    batch, length, kv_heads, head_dim = heads_shape(rng)
    x = randn((batch, kv_heads, length, head_dim), rng, dtype=torch.float64)
    expect_close(repeat_kv(x, 1), x, torch.float64, what="repeat_kv(x, 1)")
    one = x[:, :1]
    n_rep = draw(rng, 2, 6)
    expect_close(
        repeat_kv(one, n_rep),
        repeat64(one, n_rep),
        torch.float64,
        what="repeat_kv(x, n_rep) with one KV head",
    )


def repeat_query_head_uses_h_div_n_rep(repeat_kv, rng):
    """query head h reads KV head h // n_rep (each head filled with its own index)"""
    kv_heads, n_rep = draw(rng, 2, 4), draw(rng, 2, 3)
    x = torch.arange(kv_heads, dtype=torch.float32).view(1, kv_heads, 1, 1).expand(2, -1, 3, 2)
    out = repeat_kv(x, n_rep)
    expect_close(
        out,
        repeat64(x, n_rep),
        x.dtype,
        what="repeat_kv(x, n_rep)",
        suspects=[("repeat_tiled", x.double().repeat(1, n_rep, 1, 1))],
    )


# ----------------------------------------------------------------------------- MultiHeadAttention


def build(MultiHeadAttention, *args, **kwargs):
    """The student's module (constructed under the guard) and a guarded way to call it."""
    module = MultiHeadAttention(*args, **kwargs)
    if not isinstance(module, nn.Module):
        raise Mistake(
            f"MultiHeadAttention(...) gave a {type(module).__name__}, not an nn.Module.",
            "subclass nn.Module and call super().__init__() first.",
            "not_a_module",
        )
    return module, guarded(module, "MultiHeadAttention", MHA_FORBIDDEN)


def projections(module, d_model, kv_dim, bias=True):
    """The four nn.Linear projections, with their shapes checked."""
    found = []
    for name, out_features in [
        ("q_proj", d_model),
        ("k_proj", kv_dim),
        ("v_proj", kv_dim),
        ("out_proj", d_model),
    ]:
        layer = getattr(module, name, None)
        description, hint = HINTS["missing_projection"]
        if not isinstance(layer, nn.Linear):
            raise Mistake(
                f"module.{name} is {type(layer).__name__}, expected nn.Linear.",
                hint,
                "missing_projection",
            )
        if (layer.in_features, layer.out_features) != (d_model, out_features):
            raise Mistake(
                f"module.{name} maps {layer.in_features} -> {layer.out_features} "
                f"features, expected {d_model} -> {out_features}.",
                hint,
                "missing_projection",
            )
        if (layer.bias is not None) != bias:
            raise Mistake(
                f"module.{name} {'has no' if bias else 'has a'} bias, with bias={bias}.",
                "pass bias=bias to every nn.Linear.",
                "missing_projection",
            )
        found.append(layer)
    return found


def load(module, weights: dict):
    """Copy float64 `weights` (name -> (weight, bias)) into the student's projections."""
    with torch.no_grad():
        for name, (weight, bias) in weights.items():
            layer = getattr(module, name)
            layer.weight.copy_(weight)
            if bias is not None:
                layer.bias.copy_(bias)


def random_weights(rng, d_model, kv_dim, bias=True, dtype=torch.float64):
    scale = d_model**-0.5
    return {
        name: (
            randn((out, d_model), rng, dtype, scale=scale),
            randn((out,), rng, dtype, scale=0.1) if bias else None,
        )
        for name, out in [
            ("q_proj", d_model),
            ("k_proj", kv_dim),
            ("v_proj", kv_dim),
            ("out_proj", d_model),
        ]
    }


def torch_mha(weights, d_model, heads, n_rep=1):
    """nn.MultiheadAttention in float64 holding `weights`; K/V heads repeated n_rep times."""
    bias = weights["q_proj"][1] is not None
    reference = nn.MultiheadAttention(
        d_model, heads, bias=bias, batch_first=True, dtype=torch.float64
    ).eval()
    head_dim = d_model // heads

    def repeated(weight):  # (Hkv*dh, ...) -> (Hkv*n_rep*dh, ...), each head block n_rep times
        return (
            weight.view(-1, head_dim, *weight.shape[1:]).repeat_interleave(n_rep, 0).flatten(0, 1)
        )

    with torch.no_grad():
        reference.in_proj_weight.copy_(
            torch.cat(
                [
                    weights["q_proj"][0],
                    repeated(weights["k_proj"][0]),
                    repeated(weights["v_proj"][0]),
                ]
            )
        )
        reference.out_proj.weight.copy_(weights["out_proj"][0])
        if bias:
            reference.in_proj_bias.copy_(
                torch.cat(
                    [
                        weights["q_proj"][1],
                        repeated(weights["k_proj"][1]),
                        repeated(weights["v_proj"][1]),
                    ]
                )
            )
            reference.out_proj.bias.copy_(weights["out_proj"][1])
    return reference


def torch_reference(weights, d_model, heads, x, context=None, mask=None, n_rep=1):
    """(out, per-head weights, head-averaged weights) from nn.MultiheadAttention, float64."""
    reference = torch_mha(weights, d_model, heads, n_rep)
    x = x.double()
    context = x if context is None else context.double()
    attn_mask = None if mask is None else ~mask  # torch: True = blocked
    with torch.no_grad():
        out, per_head = reference(
            x, context, context, attn_mask=attn_mask, need_weights=True, average_attn_weights=False
        )
        _, averaged = reference(x, context, context, attn_mask=attn_mask, need_weights=True)
    return out, per_head, averaged


def dense64(
    weights,
    heads,
    kv_heads,
    x,
    context=None,
    mask=None,
    split="contiguous",
    scale=None,
    kv_of_head=None,
):
    """A float64 MHA written out, with the knobs the named mistakes turn: (out, weights)."""
    x = x.double()
    context = x if context is None else context.double()
    d_model = x.shape[-1]
    head_dim = d_model // heads

    def project(name, t):
        weight, bias = weights[name]
        return F.linear(t, weight, bias)

    def to_heads(t, n):
        batch, length, _ = t.shape
        if split in ("no_transpose", "split_only"):
            return t.reshape(batch, n, length, head_dim)
        return t.view(batch, length, n, head_dim).transpose(1, 2)

    q = to_heads(project("q_proj", x), heads)
    k, v = (
        to_heads(project("k_proj", context), kv_heads),
        to_heads(project("v_proj", context), kv_heads),
    )
    index = torch.tensor(
        [h // (heads // kv_heads) if kv_of_head is None else kv_of_head(h) for h in range(heads)]
    )
    k, v = k[:, index], v[:, index]
    scores = q @ k.transpose(-2, -1) * (head_dim**-0.5 if scale is None else scale)
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    attn = torch.softmax(scores, dim=-1)
    out = attn @ v  # (B, H, Lq, dh)
    batch, _, length, _ = out.shape
    if split == "no_transpose":
        merged = out.reshape(batch, length, d_model)
    else:
        merged = out.transpose(1, 2).reshape(batch, length, d_model)
    return project("out_proj", merged), attn


def mha_suspects(weights, heads, kv_heads, x, context=None, mask=None):
    d_model = x.shape[-1]
    suspects = [
        (
            "split_without_transpose",
            dense64(weights, heads, kv_heads, x, context, mask, split="no_transpose"),
        ),
        (
            "split_without_transpose",
            dense64(weights, heads, kv_heads, x, context, mask, split="split_only"),
        ),
        (
            "scaled_by_d_model",
            dense64(weights, heads, kv_heads, x, context, mask, scale=d_model**-0.5),
        ),
    ]
    if context is not None:
        suspects.append(("ignores_context", dense64(weights, heads, kv_heads, x, None, None)))
    if mask is not None:
        suspects += [
            ("ignores_mask", dense64(weights, heads, kv_heads, x, context, None)),
            ("inverted_mask", dense64(weights, heads, kv_heads, x, context, ~mask)),
        ]
    if kv_heads not in (1, heads):
        suspects.append(
            (
                "gqa_tiled",
                dense64(
                    weights, heads, kv_heads, x, context, mask, kv_of_head=lambda h: h % kv_heads
                ),
            )
        )
    return suspects


def unpack_mha(result, batch, heads, lq, lk, d_model, dtype, need_weights=True):
    if not isinstance(result, (tuple, list)) or len(result) != 2:
        raise Mistake(
            f"forward should return a pair (out, weights or None), got {type(result).__name__}.",
            "end forward with `return out, weights` (weights None unless need_weights).",
            "not_a_pair",
        )
    out, weights = result
    expect_tensor(out, "out", (batch, lq, d_model), dtype)
    if not need_weights:
        if weights is not None:
            raise named("weights_when_not_needed")
        return out, None
    if (
        isinstance(weights, torch.Tensor)
        and lq != lk
        and tuple(weights.shape) == (batch, heads, lq, lq)
    ):
        raise named("ignores_context")
    if isinstance(weights, torch.Tensor) and tuple(weights.shape) != (batch, heads, lq, lk):
        description, hint = HINTS["weights_not_per_head"]
        raise Mistake(
            f"weights have shape {tuple(weights.shape)}, expected "
            f"{(batch, heads, lq, lk)}: it looks like {description}.",
            hint,
            "weights_not_per_head",
        )
    expect_tensor(weights, "weights", (batch, heads, lq, lk), dtype)
    return out, weights


def compare_mha(result, reference, suspects, dtype):
    """out, then the head-averaged weights, then the per-head weights against the references."""
    out, weights = result
    out_ref, per_head_ref, averaged_ref = reference
    expect_close(
        out, out_ref, dtype, what="out", suspects=[(key, wrong[0]) for key, wrong in suspects]
    )
    if weights is not None:
        weight_suspects = [(key, wrong[1].mean(1)) for key, wrong in suspects]
        expect_close(
            weights.mean(1),
            averaged_ref,
            dtype,
            what="weights averaged over heads",
            suspects=weight_suspects,
        )
        expect_close(
            weights,
            per_head_ref,
            dtype,
            what="weights",
            suspects=[(key, wrong[1]) for key, wrong in suspects],
        )


def mha_setup(MultiHeadAttention, rng, heads=None, kv_heads=None, bias=True, dtype=torch.float32):
    heads = draw(rng, 2, 4) if heads is None else heads
    d_model = heads * draw(rng, 2, 5)
    kv_heads = heads if kv_heads is None else kv_heads
    if kv_heads == heads:
        module, forward = build(MultiHeadAttention, d_model, heads, bias=bias)
    else:
        module, forward = build(MultiHeadAttention, d_model, heads, kv_heads, bias=bias)
    projections(module, d_model, kv_heads * (d_model // heads), bias)
    module = module.to(dtype).eval()
    weights = random_weights(rng, d_model, kv_heads * (d_model // heads), bias)
    load(module, weights)
    return module, forward, weights, d_model, heads, kv_heads


def mha_self_matches_torch(MultiHeadAttention, rng):
    """self-attention: out and head-averaged weights equal nn.MultiheadAttention's (same weights)"""
    module, forward, weights, d_model, heads, _ = mha_setup(MultiHeadAttention, rng)
    batch, length = draw(rng, 1, 3), draw(rng, 3, 8)
    x = randn((batch, length, d_model), rng)
    result = unpack_mha(
        forward(x, need_weights=True), batch, heads, length, length, d_model, x.dtype
    )
    compare_mha(
        result,
        torch_reference(weights, d_model, heads, x),
        mha_suspects(weights, heads, heads, x),
        x.dtype,
    )


def mha_square_heads(MultiHeadAttention, rng):
    """L = H = head_dim, no bias, float64: a split without a transpose cannot hide"""
    size = draw(rng, 3, 4)
    d_model = size * size
    module, forward = build(MultiHeadAttention, d_model, size, bias=False)
    projections(module, d_model, d_model, bias=False)
    module = module.double().eval()
    weights = random_weights(rng, d_model, d_model, bias=False)
    load(module, weights)
    x = randn((2, size, d_model), rng, dtype=torch.float64, scale=2.0)
    result = unpack_mha(forward(x, need_weights=True), 2, size, size, size, d_model, torch.float64)
    compare_mha(
        result,
        torch_reference(weights, d_model, size, x),
        mha_suspects(weights, size, size, x),
        torch.float64,
    )


def mha_cross_attention_with_mask(MultiHeadAttention, rng):
    """cross-attention (context with Lk ≠ Lq) and a boolean mask (True = may attend)"""
    module, forward, weights, d_model, heads, _ = mha_setup(MultiHeadAttention, rng)
    batch, lq = draw(rng, 1, 3), draw(rng, 2, 6)
    lk = lq + draw(rng, 1, 4)
    x, context = randn((batch, lq, d_model), rng), randn((batch, lk, d_model), rng)
    mask = torch.rand((lq, lk), generator=rng) < 0.6
    mask[torch.arange(lq), torch.randint(0, lk, (lq,), generator=rng)] = True  # no empty row
    result = unpack_mha(
        forward(x, context=context, mask=mask, need_weights=True),
        batch,
        heads,
        lq,
        lk,
        d_model,
        x.dtype,
    )
    compare_mha(
        result,
        torch_reference(weights, d_model, heads, x, context, mask),
        mha_suspects(weights, heads, heads, x, context, mask),
        x.dtype,
    )


def mha_need_weights_false(MultiHeadAttention, rng):
    """need_weights=False (the default) returns (out, None), out unchanged"""
    module, forward, weights, d_model, heads, _ = mha_setup(MultiHeadAttention, rng)
    batch, length = draw(rng, 1, 3), draw(rng, 3, 8)
    x = randn((batch, length, d_model), rng)
    out, _ = unpack_mha(
        forward(x), batch, heads, length, length, d_model, x.dtype, need_weights=False
    )
    reference = torch_reference(weights, d_model, heads, x)
    expect_close(
        out,
        reference[0],
        x.dtype,
        what="out",
        suspects=[(key, wrong[0]) for key, wrong in mha_suspects(weights, heads, heads, x)],
    )


def mha_gqa_equals_repeated_mha(MultiHeadAttention, rng):
    """GQA (num_kv_heads < num_heads) equals MHA with each K/V head repeated for its group"""
    kv_heads = draw(rng, 2, 3)
    heads = kv_heads * draw(rng, 2, 3)
    module, forward, weights, d_model, heads, kv_heads = mha_setup(
        MultiHeadAttention, rng, heads=heads, kv_heads=kv_heads
    )
    batch, length = draw(rng, 1, 3), draw(rng, 3, 8)
    x = randn((batch, length, d_model), rng)
    mask = torch.ones(length, length, dtype=torch.bool).tril()
    result = unpack_mha(
        forward(x, mask=mask, need_weights=True), batch, heads, length, length, d_model, x.dtype
    )
    compare_mha(
        result,
        torch_reference(weights, d_model, heads, x, mask=mask, n_rep=heads // kv_heads),
        mha_suspects(weights, heads, kv_heads, x, mask=mask),
        x.dtype,
    )


def mha_multi_query(MultiHeadAttention, rng):
    """MQA (num_kv_heads = 1): k_proj and v_proj are d_model -> head_dim, one K/V head for all"""
    heads = draw(rng, 2, 5)
    module, forward, weights, d_model, heads, _ = mha_setup(
        MultiHeadAttention, rng, heads=heads, kv_heads=1
    )
    batch, lq = draw(rng, 1, 2), draw(rng, 2, 5)
    lk = lq + draw(rng, 1, 3)
    x, context = randn((batch, lq, d_model), rng), randn((batch, lk, d_model), rng)
    result = unpack_mha(
        forward(x, context, need_weights=True), batch, heads, lq, lk, d_model, x.dtype
    )
    compare_mha(
        result,
        torch_reference(weights, d_model, heads, x, context, n_rep=heads),
        mha_suspects(weights, heads, 1, x, context),
        x.dtype,
    )


def mha_refuses_bad_head_counts(MultiHeadAttention, rng):
    """d_model % num_heads != 0 and num_heads % num_kv_heads != 0 raise ValueError"""
    heads = draw(rng, 3, 5)
    d_model = heads * draw(rng, 2, 4) + 1
    expect_value_error(
        lambda: MultiHeadAttention(d_model, heads),
        f"MultiHeadAttention(d_model={d_model}, num_heads={heads})",
        "no_clear_error",
    )
    heads, kv_heads = draw(rng, 2, 3) * 2 + 1, 2  # an odd number of heads in 2 KV groups
    expect_value_error(
        lambda: MultiHeadAttention(heads * 4, heads, kv_heads),
        f"MultiHeadAttention(d_model={heads * 4}, num_heads={heads}, num_kv_heads={kv_heads})",
        "no_clear_error",
    )


# ----------------------------------------------------------------------------- sinusoidal_positions


def sinusoid64(length, dim, offset=0, exponent="pairs", layout="interleaved"):
    position = torch.arange(length, dtype=torch.float64).unsqueeze(-1) + offset  # (L, 1)
    pair = torch.arange(0, dim, 2, dtype=torch.float64)  # 2i
    if exponent == "pairs":
        angle = position / 10000.0 ** (pair / dim)
    else:  # i / dim: the pair index without the factor 2
        angle = position / 10000.0 ** (pair / 2 / dim)
    table = torch.zeros(length, dim, dtype=torch.float64)
    if layout == "halves":
        return torch.cat([angle.sin(), angle.cos()], dim=-1)[:, :dim]
    sin, cos = (angle.cos(), angle.sin()) if layout == "swapped" else (angle.sin(), angle.cos())
    table[:, 0::2], table[:, 1::2] = sin, cos[:, : dim // 2]
    return table


def sinusoid_suspects(length, dim):
    columns = torch.arange(dim, dtype=torch.float64)
    per_column = torch.arange(length, dtype=torch.float64).unsqueeze(-1) / 10000.0 ** (
        columns / dim
    )
    wrong_exponent = torch.where(columns.long() % 2 == 0, per_column.sin(), per_column.cos())
    return [
        ("positions_from_one", sinusoid64(length, dim, offset=1)),
        ("sin_cos_halves", sinusoid64(length, dim, layout="halves")),
        ("sin_cos_swapped", sinusoid64(length, dim, layout="swapped")),
        ("frequency_exponent", sinusoid64(length, dim, exponent="single")),
        ("frequency_exponent", wrong_exponent),
    ]


def sinusoid_matches_paper(sinusoidal_positions, rng):
    """(length, dim) float32: PE[p, 2i] = sin(p / 10000^(2i/dim)), PE[p, 2i+1] = cos(...)"""
    length, dim = draw(rng, 5, 40), 2 * draw(rng, 2, 16)
    expect_close(
        sinusoidal_positions(length, dim),
        sinusoid64(length, dim),
        torch.float32,
        what=f"sinusoidal_positions({length}, {dim})",
        suspects=sinusoid_suspects(length, dim),
    )


def sinusoid_wide(sinusoidal_positions, rng):
    """a wider table (dim up to 128): every pair has its own frequency"""
    length, dim = draw(rng, 30, 64), 2 * draw(rng, 16, 64)
    table = sinusoidal_positions(length, dim)
    expect_close(
        table,
        sinusoid64(length, dim),
        torch.float32,
        what=f"sinusoidal_positions({length}, {dim})",
        suspects=sinusoid_suspects(length, dim),
    )


def sinusoid_tiny(sinusoidal_positions, rng):
    """tiny tables: dim = 2 (one pair), length = 1"""
    for length, dim in [(draw(rng, 2, 9), 2), (1, 2 * draw(rng, 1, 8))]:
        expect_close(
            sinusoidal_positions(length, dim),
            sinusoid64(length, dim),
            torch.float32,
            what=f"sinusoidal_positions({length}, {dim})",
            suspects=sinusoid_suspects(length, dim),
        )


# ----------------------------------------------------------------------------- apply_rope


def rope64(
    x,
    positions,
    base=10000.0,
    pairs="halves",
    sign=1.0,
    exponent=2.0,
    offset=0,
    angle_dtype=torch.float64,
):
    """Rotary embedding in float64, rotate-half by default; the knobs give the mistakes."""
    x = x.double()
    dim = x.shape[-1]
    theta = base ** (-exponent * torch.arange(dim // 2, dtype=angle_dtype) / dim)
    angle = sign * (torch.as_tensor(positions).to(angle_dtype) + offset).unsqueeze(-1) * theta
    angle = angle.double()
    cos, sin = angle.cos(), angle.sin()
    if pairs == "halves":
        x1, x2 = x[..., : dim // 2], x[..., dim // 2 :]
        return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)
    x1, x2 = x[..., 0::2], x[..., 1::2]
    return torch.stack([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1).flatten(-2)


def rope_suspects(x, positions, base=10000.0):
    return [
        ("rope_interleaved_pairs", rope64(x, positions, base, pairs="interleaved")),
        ("rope_reversed", rope64(x, positions, base, sign=-1.0)),
        ("rope_frequency", rope64(x, positions, base, exponent=1.0)),
        ("positions_offset", rope64(x, positions, base, offset=1)),
        ("positions_offset", rope64(x, positions, base, offset=-1)),
        ("rope_ignores_base", rope64(x, positions, 10000.0)),
        ("rope_ignores_positions", rope64(x, torch.arange(x.shape[-2]), base)),
    ]


def expect_close_float64(out, ref, what, suspects):
    """expect_close for a float64 input, naming float32 arithmetic when only precision is lost."""
    try:
        expect_close(out, ref, torch.float64, what=what, suspects=suspects)
    except Mistake as mistake:
        if mistake.key == "wrong_values" and relative_error(out, ref) <= TOLERANCE[torch.float32]:
            description, hint = HINTS["angles_in_float32"]
            raise Mistake(
                f"{what} is right only to float32 precision (relative error "
                f"{relative_error(out, ref):.1e}): it looks like {description}.",
                hint,
                "angles_in_float32",
            ) from None
        raise


def rope_matches_reference(apply_rope, rng):
    """x (B, H, L, D), positions arange(L): rotate-half at angle p * base^(-2i/D)"""
    length, dim = draw(rng, 3, 12), 2 * draw(rng, 2, 16)
    x = randn((draw(rng, 1, 3), draw(rng, 1, 4), length, dim), rng)
    positions = torch.arange(length)
    expect_close(
        apply_rope(x, positions),
        rope64(x, positions),
        x.dtype,
        what="apply_rope(x, positions)",
        suspects=rope_suspects(x, positions),
    )


def rope_broadcast_positions(apply_rope, rng):
    """positions (B, 1, L) with a different start per sequence (a KV cache's offsets)"""
    batch, heads, length, dim = (
        draw(rng, 2, 4),
        draw(rng, 1, 3),
        draw(rng, 2, 8),
        2 * draw(rng, 2, 12),
    )
    x = randn((batch, heads, length, dim), rng)
    start = torch.randint(1, 40, (batch, 1, 1), generator=rng)
    positions = start + torch.arange(length)  # (B, 1, L)
    expect_close(
        apply_rope(x, positions),
        rope64(x, positions),
        x.dtype,
        what="apply_rope(x, positions) with positions (B, 1, L)",
        suspects=rope_suspects(x, positions),
    )


def rope_base_and_float64(apply_rope, rng):
    """float64 in, float64 out, to 1e-10, with base=500 and (L, D) input"""
    length, dim = draw(rng, 3, 10), 2 * draw(rng, 2, 10)
    x = randn((length, dim), rng, dtype=torch.float64)
    positions = torch.randint(0, 100, (length,), generator=rng)
    expect_close_float64(
        apply_rope(x, positions, base=500.0),
        rope64(x, positions, 500.0),
        "apply_rope(x, positions, base=500.0)",
        rope_suspects(x, positions, 500.0),
    )


def rope_relative_and_norm(apply_rope, rng):
    """norms are preserved and <rope(q, m), rope(k, n)> depends only on m - n"""
    dim = 2 * draw(rng, 2, 16)
    q, k = randn((1, dim), rng, dtype=torch.float64), randn((1, dim), rng, dtype=torch.float64)
    m, n, shift = draw(rng, 0, 50), draw(rng, 0, 50), draw(rng, 1, 200)
    rotated = apply_rope(q, torch.tensor([m]))
    expect_close_float64(
        rotated,
        rope64(q, torch.tensor([m])),
        f"apply_rope(q, [{m}])",
        rope_suspects(q, torch.tensor([m])),
    )
    if abs(rotated.norm() - q.norm()) > 1e-10 * q.norm():
        raise Mistake(
            f"apply_rope changed a vector's norm from {q.norm():.6f} to {rotated.norm():.6f}.",
            "a rotation preserves norms: each pair (x1_i, x2_i) "
            "must be rotated by one angle, with cos and sin of the same angle.",
            "not_a_rotation",
        )
    before = (apply_rope(q, torch.tensor([m])) * apply_rope(k, torch.tensor([n]))).sum()
    after = (
        apply_rope(q, torch.tensor([m + shift])) * apply_rope(k, torch.tensor([n + shift]))
    ).sum()
    if abs(before - after) > 1e-8 * q.norm() * k.norm():
        raise Mistake(
            f"<rope(q, {m}), rope(k, {n})> = {before:.6f} but shifting both positions by "
            f"{shift} gives {after:.6f}.",
            "rotate q and k by angles that grow linearly "
            "with the position, so only the difference m - n survives the dot product.",
            "not_relative",
        )


def rope_refuses_odd_dim(apply_rope, rng):
    """an odd head dimension raises ValueError"""
    dim = 2 * draw(rng, 1, 8) + 1
    x = randn((2, draw(rng, 2, 5), dim), rng)
    expect_value_error(
        lambda: apply_rope(x, torch.arange(x.shape[-2])),
        f"apply_rope with D={dim}",
        "no_clear_error",
    )


# ----------------------------------------------------------------------------- alibi_bias


def slopes64(heads, interpolate=True, first=1):
    """The ALiBi paper's get_slopes, written out in float64."""

    def geometric(n):
        return [2.0 ** (-8.0 * h / n) for h in range(first, n + first)]

    if not interpolate or math.log2(heads).is_integer():
        return torch.tensor(geometric(heads), dtype=torch.float64)
    closest = 2 ** math.floor(math.log2(heads))
    extra = geometric(2 * closest)[0::2][: heads - closest]
    return torch.tensor(geometric(closest) + extra, dtype=torch.float64)


def alibi64(heads, lq, lk, slopes=None, sign=1.0, top_left=False, clip=None):
    slopes = slopes64(heads) if slopes is None else slopes
    pos_q = torch.arange(lq, dtype=torch.float64).unsqueeze(-1) + (0 if top_left else lk - lq)
    distance = pos_q - torch.arange(lk, dtype=torch.float64)
    if clip == "zero":
        distance = distance.clamp_min(0)
    elif clip == "abs":
        distance = distance.abs()
    return -sign * slopes.view(-1, 1, 1) * distance


def alibi_suspects(heads, lq, lk):
    return [
        ("alibi_slopes_from_zero", alibi64(heads, lq, lk, slopes64(heads, first=0))),
        ("alibi_sign", alibi64(heads, lq, lk, sign=-1.0)),
        ("alibi_top_left", alibi64(heads, lq, lk, top_left=True)),
        ("alibi_clipped", alibi64(heads, lq, lk, clip="zero")),
        ("alibi_clipped", alibi64(heads, lq, lk, clip="abs")),
        ("alibi_not_interpolated", alibi64(heads, lq, lk, slopes64(heads, interpolate=False))),
    ]


def alibi_power_of_two(alibi_bias, rng):
    """H a power of two: slopes 2^(-8h/H), h = 1..H; bias -m_h (pos_q - pos_k), (H, L, L) float32"""
    heads, length = 2 ** draw(rng, 0, 4), draw(rng, 3, 12)
    expect_close(
        alibi_bias(heads, length, length),
        alibi64(heads, length, length),
        torch.float32,
        what=f"alibi_bias({heads}, {length}, {length})",
        suspects=alibi_suspects(heads, length, length),
    )


def alibi_interpolated_slopes(alibi_bias, rng):
    """H not a power of two (3, 5, 6, 12, ...): the paper's interleaving rule for the slopes"""
    heads = [3, 5, 6, 7, 10, 12, 20, 24][draw(rng, 0, 7)]
    length = draw(rng, 3, 8)
    expect_close(
        alibi_bias(heads, length, length),
        alibi64(heads, length, length),
        torch.float32,
        what=f"alibi_bias({heads}, {length}, {length})",
        suspects=alibi_suspects(heads, length, length),
    )


def alibi_bottom_right(alibi_bias, rng):
    """lq < lk: query i sits at position lk - lq + i, so its own key (bias 0) is lk - lq + i"""
    heads = draw(rng, 1, 8)
    lq = draw(rng, 1, 5)
    lk = lq + draw(rng, 1, 6)
    expect_close(
        alibi_bias(heads, lq, lk),
        alibi64(heads, lq, lk),
        torch.float32,
        what=f"alibi_bias({heads}, {lq}, {lk})",
        suspects=alibi_suspects(heads, lq, lk),
    )


# ----------------------------------------------------------------------------- relative_position_bucket

RELATIVE_FORBIDDEN = {
    "scaled_dot_product_attention": "write the scores, add the relative term, then softmax and @ v.",
    "multi_head_attention_forward": "write the scores, add the relative term, then softmax and @ v.",
}


def t5_bucket(
    relative_position: int,
    bidirectional=True,
    num_buckets=32,
    max_distance=128,
    sign=1,
    exact_shift=0,
    clamp=True,
    halve_first=True,
    rounding=math.floor,
):
    """One bucket, written out from the T5 paper / Mesh TensorFlow's _relative_position_bucket in
    plain Python; returns (bucket, ambiguous). The knobs give the named mistakes. `ambiguous` is
    True when the log-spaced offset lies within 1e-6 of an integer, where float32 arithmetic may
    round either way."""
    n = -sign * relative_position  # > 0: the memory position is before the query
    bucket = 0
    max_exact = num_buckets // 2 if not halve_first else None
    if bidirectional:
        num_buckets //= 2
        if n < 0:
            bucket += num_buckets  # the future gets the upper half
        n = abs(n)
    else:
        n = max(n, 0)  # the future shares bucket 0
    if max_exact is None:
        max_exact = num_buckets // 2
    max_exact += exact_shift
    if n < max_exact:
        return bucket + n, False
    offset = (
        math.log(n / max_exact) / math.log(max_distance / max_exact) * (num_buckets - max_exact)
    )
    large = max_exact + int(rounding(offset))
    if clamp:
        large = min(large, num_buckets - 1)
    ambiguous = abs(offset - round(offset)) < 1e-6 and round(offset) > 0
    return bucket + large, ambiguous


def buckets64(relative_position, **knobs):
    """(buckets, ambiguous) for every entry of the LongTensor `relative_position`."""
    pairs = [t5_bucket(int(r), **knobs) for r in relative_position.flatten().tolist()]
    buckets = torch.tensor([b for b, _ in pairs], dtype=torch.long).view(relative_position.shape)
    ambiguous = torch.tensor([a for _, a in pairs], dtype=torch.bool).view(relative_position.shape)
    return buckets, ambiguous


def bucket_suspects(relative_position, bidirectional, num_buckets, max_distance):
    args = dict(num_buckets=num_buckets, max_distance=max_distance)
    suspects = [
        ("bucket_sign", dict(sign=-1, bidirectional=bidirectional)),
        ("bucket_boundary", dict(exact_shift=1, bidirectional=bidirectional)),
        ("bucket_boundary", dict(exact_shift=-1, bidirectional=bidirectional)),
        ("bucket_not_clamped", dict(clamp=False, bidirectional=bidirectional)),
        ("bucket_rounded", dict(rounding=round, bidirectional=bidirectional)),
    ]
    if bidirectional:
        suspects.append(("bucket_not_halved", dict(halve_first=False, bidirectional=True)))
    else:
        suspects += [
            ("bucket_always_bidirectional", dict(bidirectional=True)),
            ("bucket_always_bidirectional", dict(bidirectional=True, sign=-1)),
        ]
    found = []
    for key, knobs in suspects:
        try:
            found.append((key, buckets64(relative_position, **args, **knobs)[0]))
        except (ValueError, ZeroDivisionError):  # a knob that makes a log of 0: never a match
            pass
    return found


def expect_buckets(out, relative_position, what, bidirectional, num_buckets, max_distance):
    """Exact comparison of integer buckets, allowing either neighbour where the log-spaced offset
    is an integer up to rounding (float32 arithmetic may land just below it)."""
    ref, ambiguous = buckets64(
        relative_position,
        bidirectional=bidirectional,
        num_buckets=num_buckets,
        max_distance=max_distance,
    )
    expect_tensor(out, what, ref.shape, torch.int64)
    out = out.detach().cpu()
    wrong = (out != ref) & ~(ambiguous & (out == ref - 1))
    if not wrong.any():
        return
    for key, suspect in bucket_suspects(
        relative_position, bidirectional, num_buckets, max_distance
    ):
        if torch.equal(out, suspect):
            description, fix = hint(key)
            raise Mistake(
                f"{what} is off at {int(wrong.sum())} of {wrong.numel()} entries: it "
                f"matches {description}.",
                fix,
                key,
            )
    index = tuple(torch.nonzero(wrong)[0].tolist())
    raise Mistake(
        f"{what} is off at {int(wrong.sum())} of {wrong.numel()} entries; first at "
        f"relative_position={int(relative_position[index])}: got {int(out[index])}, "
        f"expected {int(ref[index])}.",
        "work through the hand-computed buckets in the notebook: sign, halving, "
        "exact part, log part, clamp.",
    )


def relative_grid(lq, lk):
    """memory_position - query_position, (lq, lk), queries at lk - lq + i."""
    return torch.arange(lk).unsqueeze(0) - (torch.arange(lq).unsqueeze(-1) + lk - lq)


def bucket_bidirectional(relative_position_bucket, rng):
    """bidirectional: the past in the lower half, the future in the upper half, exact then log"""
    num_buckets, max_distance = 4 * draw(rng, 2, 8), draw(rng, 20, 60)
    span = max_distance + draw(rng, 5, 30)
    relative = torch.arange(-span, span + 1)
    expect_buckets(
        relative_position_bucket(
            relative, bidirectional=True, num_buckets=num_buckets, max_distance=max_distance
        ),
        relative,
        f"relative_position_bucket(arange({-span}, {span + 1}), True, {num_buckets}, "
        f"{max_distance})",
        True,
        num_buckets,
        max_distance,
    )


def bucket_unidirectional(relative_position_bucket, rng):
    """bidirectional=False (causal): every bucket for the past, the future in bucket 0"""
    num_buckets, max_distance = 2 * draw(rng, 4, 16), draw(rng, 40, 100)
    lq = draw(rng, 3, 8)
    lk = max_distance + draw(rng, 10, 40)
    relative = relative_grid(lq, lk)
    if draw(rng, 0, 1):
        relative = relative.T.contiguous()  # a few future positions too
    expect_buckets(
        relative_position_bucket(
            relative, bidirectional=False, num_buckets=num_buckets, max_distance=max_distance
        ),
        relative,
        f"relative_position_bucket(positions {tuple(relative.shape)}, False, "
        f"{num_buckets}, {max_distance})",
        False,
        num_buckets,
        max_distance,
    )


def bucket_defaults_any_shape(relative_position_bucket, rng):
    """the defaults (bidirectional, 32 buckets, max_distance 128) on a (B, Lq, Lk) tensor"""
    shape = (draw(rng, 1, 3), draw(rng, 2, 6), draw(rng, 2, 9))
    relative = torch.randint(-400, 401, shape, generator=rng)
    relative.view(-1)[:6] = torch.tensor([0, -7, -8, 7, 8, -128])  # the boundaries
    expect_buckets(
        relative_position_bucket(relative),
        relative,
        f"relative_position_bucket(positions {shape})",
        True,
        32,
        128,
    )


def bucket_refuses_bad_parameters(relative_position_bucket, rng):
    """max_distance <= num_buckets // 2 (halved when bidirectional) or too few buckets: ValueError"""
    relative = torch.arange(-5, 6)
    num_buckets = 4 * draw(rng, 2, 6)
    max_exact = num_buckets // 4
    expect_value_error(
        lambda: relative_position_bucket(relative, True, num_buckets, max_exact),
        f"relative_position_bucket(..., bidirectional=True, num_buckets={num_buckets}, "
        f"max_distance={max_exact})",
        "no_clear_error",
    )
    expect_value_error(
        lambda: relative_position_bucket(relative, True, 1, 16),
        "relative_position_bucket(..., bidirectional=True, num_buckets=1)",
        "no_clear_error",
    )


# ----------------------------------------------------------------------------- shaw_relative_attention


def shaw64(
    q,
    k,
    v,
    rel_k,
    rel_v,
    max_relative_position,
    mask=None,
    sign=1,
    offset=True,
    top_left=False,
    use_rel_v=True,
    scale_rel=True,
):
    """Shaw et al.'s relative attention in float64, with a gather; the knobs give the mistakes."""
    q, k, v, rel_k = q.double(), k.double(), v.double(), rel_k.double()
    lq, lk, dim = q.shape[-2], k.shape[-2], q.shape[-1]
    pos_q = torch.arange(lq).unsqueeze(-1) + (0 if top_left else lk - lq)
    distance = (sign * (torch.arange(lk) - pos_q)).clamp(
        -max_relative_position, max_relative_position
    )
    index = distance + max_relative_position if offset else distance  # negative rows wrap around
    a_k = rel_k[index]  # (Lq, Lk, D)
    relative = torch.einsum("...qd,qkd->...qk", q, a_k)
    scores = (q @ k.transpose(-2, -1) + relative) / math.sqrt(dim)
    if not scale_rel:
        scores = scores + relative * (1 - 1 / math.sqrt(dim))
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    weights = torch.softmax(scores, dim=-1)
    out = weights @ v
    if rel_v is not None and use_rel_v:
        out = out + torch.einsum("...qk,qkd->...qd", weights, rel_v.double()[index])
    return out, weights


def shaw_suspects(q, k, v, rel_k, rel_v, p, mask=None):
    suspects = [
        ("shaw_index_offset", dict(offset=False)),
        ("shaw_sign", dict(sign=-1)),
        ("shaw_rel_not_scaled", dict(scale_rel=False)),
    ]
    if q.shape[-2] != k.shape[-2]:
        suspects.append(("shaw_top_left", dict(top_left=True)))
    if rel_v is not None:
        suspects.append(("shaw_ignores_rel_v", dict(use_rel_v=False)))
    return [(key, shaw64(q, k, v, rel_k, rel_v, p, mask, **knobs)) for key, knobs in suspects]


def unpack_pair(result, what, out_shape, weights_shape, dtype):
    if not isinstance(result, (tuple, list)) or len(result) != 2:
        raise Mistake(
            f"{what} should return a pair (out, weights), got {type(result).__name__}.",
            "end with `return out, weights`.",
            "not_a_pair",
        )
    out, weights = result
    expect_tensor(out, "out", out_shape, dtype)
    expect_tensor(weights, "weights", weights_shape, dtype)
    return out, weights


def call_shaw(shaw_relative_attention, *args, **kwargs):
    """The student's call; an index out of range means the distances were not clipped."""
    try:
        return shaw_relative_attention(*args, **kwargs)
    except Mistake as mistake:
        cause = mistake.__cause__
        if mistake.key == "raised" and (isinstance(cause, IndexError) or "out of" in str(cause)):
            description, fix = hint("shaw_not_clipped")
            raise Mistake(
                f"your function raised {type(cause).__name__}: {cause}: it looks like "
                f"{description}.",
                fix,
                "shaw_not_clipped",
            ) from None
        raise


def compare_pair(result, reference, suspects, dtype):
    out, weights = result
    expect_close(
        weights,
        reference[1],
        dtype,
        what="weights",
        suspects=[(key, wrong[1]) for key, wrong in suspects],
    )
    expect_close(
        out, reference[0], dtype, what="out", suspects=[(key, wrong[0]) for key, wrong in suspects]
    )


def shaw_clipped_self_attention(shaw_relative_attention, rng):
    """self-attention, L > max_relative_position + 1: clipped a^K in the scores, a^V in the output"""
    batch, heads, dim = draw(rng, 1, 2), draw(rng, 1, 3), draw(rng, 2, 8)
    p = draw(rng, 1, 3)
    length = p + draw(rng, 3, 6)
    q, k, v = (randn((batch, heads, length, dim), rng) for _ in range(3))
    rel_k, rel_v = randn((2 * p + 1, dim), rng), randn((2 * p + 1, dim), rng)
    result = call_shaw(shaw_relative_attention, q, k, v, rel_k, p, rel_v=rel_v)
    result = unpack_pair(
        result, "shaw_relative_attention", q.shape, (batch, heads, length, length), q.dtype
    )
    compare_pair(
        result, shaw64(q, k, v, rel_k, rel_v, p), shaw_suspects(q, k, v, rel_k, rel_v, p), q.dtype
    )


def shaw_cross_lengths_no_rel_v(shaw_relative_attention, rng):
    """lq < lk (queries bottom-right), Dv != D, rel_v=None (scores only), float64"""
    dim, dv, p = draw(rng, 2, 6), draw(rng, 1, 5), draw(rng, 1, 4)
    lq = draw(rng, 2, 5)
    lk = lq + draw(rng, 2, 6)
    q = randn((2, lq, dim), rng, torch.float64)
    k, v = randn((2, lk, dim), rng, torch.float64), randn((2, lk, dv), rng, torch.float64)
    rel_k = randn((2 * p + 1, dim), rng, torch.float64)
    result = call_shaw(shaw_relative_attention, q, k, v, rel_k, p)
    result = unpack_pair(result, "shaw_relative_attention", (2, lq, dv), (2, lq, lk), torch.float64)
    compare_pair(
        result,
        shaw64(q, k, v, rel_k, None, p),
        shaw_suspects(q, k, v, rel_k, None, p),
        torch.float64,
    )


def shaw_causal_mask(shaw_relative_attention, rng):
    """a causal mask (True = may attend) with lq != lk; a^V added with the masked weights"""
    dim, p = draw(rng, 2, 6), draw(rng, 2, 5)
    lq = draw(rng, 2, 5)
    lk = lq + draw(rng, 1, 4)
    q = randn((draw(rng, 1, 2), 2, lq, dim), rng)
    k, v = randn((q.shape[0], 2, lk, dim), rng), randn((q.shape[0], 2, lk, dim), rng)
    rel_k, rel_v = randn((2 * p + 1, dim), rng), randn((2 * p + 1, dim), rng)
    mask = torch.arange(lk) <= torch.arange(lq).unsqueeze(-1) + (lk - lq)
    result = call_shaw(shaw_relative_attention, q, k, v, rel_k, p, rel_v=rel_v, mask=mask)
    result = unpack_pair(result, "shaw_relative_attention", q.shape, (*q.shape[:-1], lk), q.dtype)
    compare_pair(
        result,
        shaw64(q, k, v, rel_k, rel_v, p, mask),
        shaw_suspects(q, k, v, rel_k, rel_v, p, mask),
        q.dtype,
    )


def shaw_refuses_bad_tables(shaw_relative_attention, rng):
    """a table that is not (2 * max_relative_position + 1, D) raises ValueError"""
    dim, p = draw(rng, 2, 6), draw(rng, 1, 4)
    q, k, v = (randn((1, 4, dim), rng) for _ in range(3))
    expect_value_error(
        lambda: shaw_relative_attention(q, k, v, randn((2 * p, dim), rng), p),
        f"rel_k of shape {(2 * p, dim)} with max_relative_position={p}",
        "no_clear_error",
    )
    expect_value_error(
        lambda: shaw_relative_attention(
            q, k, v, randn((2 * p + 1, dim), rng), p, rel_v=randn((2 * p + 1, dim + 1), rng)
        ),
        f"rel_v of shape {(2 * p + 1, dim + 1)} for v with Dv={dim}",
        "no_clear_error",
    )


# ----------------------------------------------------------------------------- relative_bias_attention


def bias64(bias_table, lq, lk, bidirectional, max_distance, sign=1, top_left=False):
    """(H, lq, lk) float64: bias_table[bucket(memory - query), h], from the brute-force buckets."""
    pos_q = torch.arange(lq).unsqueeze(-1) + (0 if top_left else lk - lq)
    relative = sign * (torch.arange(lk) - pos_q)
    buckets, _ = buckets64(
        relative,
        bidirectional=bidirectional,
        num_buckets=bias_table.shape[0],
        max_distance=max_distance,
    )
    return bias_table.double()[buckets].permute(2, 0, 1)


def relative_bias64(
    q,
    k,
    v,
    bias_table,
    bidirectional=True,
    max_distance=128,
    mask=None,
    scale=None,
    bias=None,
    scale_bias=False,
    **bias_knobs,
):
    q, k, v = q.double(), k.double(), v.double()
    lq, lk = q.shape[-2], k.shape[-2]
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    bias = (
        bias64(bias_table, lq, lk, bidirectional, max_distance, **bias_knobs)
        if bias is None
        else bias
    )
    scores = q @ k.transpose(-2, -1) * scale + bias * (scale if scale_bias else 1.0)
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    weights = torch.softmax(scores, dim=-1)
    return weights @ v, weights


def relative_bias_suspects(q, k, v, bias_table, bidirectional, max_distance, mask=None, scale=None):
    lq, lk, heads = q.shape[-2], k.shape[-2], bias_table.shape[1]
    args = (q, k, v, bias_table, bidirectional, max_distance, mask, scale)
    right = bias64(bias_table, lq, lk, bidirectional, max_distance)
    suspects = [
        ("bias_sign", relative_bias64(*args, sign=-1)),
        ("bias_scaled", relative_bias64(*args, scale_bias=True)),
        ("bias_wrong_heads", relative_bias64(*args, bias=right.flip(0))),
        ("bias_wrong_heads", relative_bias64(*args, bias=right.roll(1, 0))),
    ]
    if lq != lk:
        suspects.append(("bias_top_left", relative_bias64(*args, top_left=True)))
    if not bidirectional:
        suspects.append(
            (
                "bias_ignores_bidirectional",
                relative_bias64(q, k, v, bias_table, True, max_distance, mask, scale),
            )
        )
    if heads > 1:
        suspects.append(("bias_wrong_heads", relative_bias64(*args, bias=right[:1])))
    return suspects


def rb_bidirectional_self(relative_bias_attention, rng):
    """bidirectional, lq = lk, default scale 1/sqrt(D): softmax(q k^T / sqrt(D) + bias_h) v"""
    batch, heads, dim = draw(rng, 1, 2), draw(rng, 2, 4), draw(rng, 2, 8)
    length, num_buckets, max_distance = draw(rng, 6, 14), 4 * draw(rng, 2, 4), draw(rng, 8, 12)
    q, k, v = (randn((batch, heads, length, dim), rng) for _ in range(3))
    table = randn((num_buckets, heads), rng, scale=2.0)
    result = relative_bias_attention(q, k, v, table, max_distance=max_distance)
    result = unpack_pair(
        result, "relative_bias_attention", q.shape, (batch, heads, length, length), q.dtype
    )
    compare_pair(
        result,
        relative_bias64(q, k, v, table, True, max_distance),
        relative_bias_suspects(q, k, v, table, True, max_distance),
        q.dtype,
    )


def rb_causal_t5(relative_bias_attention, rng):
    """T5's decoder: bidirectional=False, scale=1.0, a causal mask, lq < lk (bottom-right)"""
    heads, dim = draw(rng, 2, 4), draw(rng, 2, 6)
    lq = draw(rng, 2, 5)
    lk = lq + draw(rng, 4, 10)
    num_buckets, max_distance = 2 * draw(rng, 3, 5), draw(rng, 8, 12)
    q = randn((1, heads, lq, dim), rng, torch.float64)
    k, v = (
        randn((1, heads, lk, dim), rng, torch.float64),
        randn((1, heads, lk, dim + 1), rng, torch.float64),
    )
    table = randn((num_buckets, heads), rng, torch.float64, scale=2.0)
    mask = torch.arange(lk) <= torch.arange(lq).unsqueeze(-1) + (lk - lq)
    result = relative_bias_attention(
        q, k, v, table, bidirectional=False, max_distance=max_distance, mask=mask, scale=1.0
    )
    result = unpack_pair(
        result,
        "relative_bias_attention",
        (1, heads, lq, dim + 1),
        (1, heads, lq, lk),
        torch.float64,
    )
    compare_pair(
        result,
        relative_bias64(q, k, v, table, False, max_distance, mask, 1.0),
        relative_bias_suspects(q, k, v, table, False, max_distance, mask, 1.0),
        torch.float64,
    )


def rb_refuses_head_mismatch(relative_bias_attention, rng):
    """a bias_table whose number of heads is not q's raises ValueError"""
    heads = draw(rng, 2, 4)
    q, k, v = (randn((1, heads, 5, 4), rng) for _ in range(3))
    table = randn((8, heads + 1), rng)
    expect_value_error(
        lambda: relative_bias_attention(q, k, v, table, max_distance=16),
        f"bias_table of shape {tuple(table.shape)} for q with {heads} heads",
        "no_clear_error",
    )


# ----------------------------------------------------------------------------- memory_attention

MEMORY_FORBIDDEN = {**RELATIVE_FORBIDDEN, library.apply_rope: "use your own apply_rope."}


def softmax_attention64(q, k, v, mask=None):
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    return torch.softmax(scores, dim=-1) @ v


def memory64(
    q,
    k,
    v,
    mem_k,
    mem_v,
    gate_logits,
    start=0,
    base=10000.0,
    memory_at=None,
    segment_at=None,
    invert=False,
    squash=True,
    causal=True,
    concatenate=False,
):
    """Gated memory attention in float64 with explicit absolute positions; the knobs give the
    mistakes. Returns (out, gate)."""
    q, k, v, mem_k, mem_v = (t.double() for t in (q, k, v, mem_k, mem_v))
    length, memory = q.shape[-2], mem_k.shape[-2]
    memory_at = start + torch.arange(memory) if memory_at is None else memory_at
    segment_at = start + memory + torch.arange(length) if segment_at is None else segment_at
    q_rot, k_rot = rope64(q, segment_at, base), rope64(k, segment_at, base)
    mem_rot = rope64(mem_k, memory_at, base)
    local_mask = torch.ones(length, length, dtype=torch.bool).tril() if causal else None
    gate = torch.sigmoid(gate_logits.double()) if squash else gate_logits.double()
    if concatenate:
        keys, values = torch.cat([mem_rot, k_rot], -2), torch.cat([mem_v, v], -2)
        mask = torch.cat([torch.ones(length, memory, dtype=torch.bool), local_mask], -1)
        return softmax_attention64(q_rot, keys, values, mask), gate
    from_memory = softmax_attention64(q_rot, mem_rot, mem_v)
    local = softmax_attention64(q_rot, k_rot, v, local_mask)
    g = (1 - gate if invert else gate).unsqueeze(-1)
    return g * from_memory + (1 - g) * local, gate


def memory_suspects(q, k, v, mem_k, mem_v, gate_logits, start=0, base=10000.0):
    length, memory = q.shape[-2], mem_k.shape[-2]
    args = (q, k, v, mem_k, mem_v, gate_logits, start, base)
    suspects = [
        ("positions_restart", memory64(*args, segment_at=start + torch.arange(length))),
        (
            "positions_restart",
            memory64(*args, segment_at=torch.arange(length), memory_at=torch.arange(memory)),
        ),
        (
            "memory_after_segment",
            memory64(
                *args,
                segment_at=start + torch.arange(length),
                memory_at=start + length + torch.arange(memory),
            ),
        ),
        ("gate_inverted", memory64(*args, invert=True)),
        ("gate_not_squashed", memory64(*args, squash=False)),
        ("local_not_causal", memory64(*args, causal=False)),
        ("memory_concatenated", memory64(*args, concatenate=True)),
    ]
    return suspects


def memory_inputs(rng, dtype=torch.float32, memory=None, length=None):
    batch, heads, dim = draw(rng, 1, 2), draw(rng, 1, 3), 2 * draw(rng, 2, 4)
    length = draw(rng, 2, 6) if length is None else length
    memory = length + draw(rng, 1, 5) if memory is None else memory
    q, k, v = (randn((batch, heads, length, dim), rng, dtype) for _ in range(3))
    mem_k, mem_v = (randn((batch, heads, memory, dim), rng, dtype) for _ in range(2))
    gate_logits = randn((batch, heads, length), rng, dtype, scale=2.0)
    return q, k, v, mem_k, mem_v, gate_logits


def unpack_memory(result, q, v, gate_logits):
    if not isinstance(result, (tuple, list)) or len(result) != 2:
        raise Mistake(
            f"memory_attention should return a pair (out, gate), got {type(result).__name__}.",
            "end with `return out, gate`.",
            "not_a_pair",
        )
    out, gate = result
    expect_tensor(out, "out", (*q.shape[:-1], v.shape[-1]), q.dtype)
    expect_tensor(gate, "gate", gate_logits.shape, q.dtype)
    return out, gate


def compare_memory(result, reference, suspects, dtype):
    out, gate = result
    expect_close(
        out, reference[0], dtype, what="out", suspects=[(key, wrong[0]) for key, wrong in suspects]
    )
    inside = bool(((gate > 0) & (gate < 1)).all())
    if not inside:
        raise named("gate_not_squashed")
    expect_close(
        gate,
        reference[1],
        dtype,
        what="gate",
        suspects=[(key, wrong[1]) for key, wrong in suspects],
    )


def memory_matches_positions_oracle(memory_attention, rng):
    """M > L: memory at 0..M-1, the segment at M..M+L-1 (RoPE), two softmaxes mixed by sigmoid gate"""
    inputs = memory_inputs(rng)
    result = unpack_memory(memory_attention(*inputs), inputs[0], inputs[2], inputs[5])
    compare_memory(result, memory64(*inputs), memory_suspects(*inputs), torch.float32)


def memory_start_and_short_memory(memory_attention, rng):
    """M < L, start > 0 (a later segment of a stream), base=500, float64"""
    length = draw(rng, 4, 8)
    inputs = memory_inputs(rng, torch.float64, memory=draw(rng, 1, length - 1), length=length)
    start = draw(rng, 5, 60)
    result = unpack_memory(
        memory_attention(*inputs, start=start, base=500.0), inputs[0], inputs[2], inputs[5]
    )
    compare_memory(
        result,
        memory64(*inputs, start, 500.0),
        memory_suspects(*inputs, start, 500.0),
        torch.float64,
    )


def memory_is_detached(memory_attention, rng):
    """no gradient reaches the memory (mem_k.grad, mem_v.grad stay None); q, k, v get theirs"""
    q, k, v, mem_k, mem_v, gate_logits = memory_inputs(rng)
    leaves = [t.clone().requires_grad_() for t in (q, k, v, mem_k, mem_v, gate_logits)]
    out, _ = unpack_memory(memory_attention(*leaves), q, v, gate_logits)
    if not out.requires_grad:
        raise Mistake(
            "out does not require grad although q, k, v and gate_logits do.",
            "do not detach the current segment's q, k, v or the gate: only the memory.",
            "no_gradient",
        )
    out.square().sum().backward()
    for name, leaf in zip(("mem_k", "mem_v"), leaves[3:5]):
        if leaf.grad is not None and leaf.grad.abs().sum() > 0:
            description, fix = hint("memory_not_detached")
            raise Mistake(
                f"{name}.grad is not zero after backward: it looks like {description}.",
                fix,
                "memory_not_detached",
            )
    for name, leaf in zip(("q", "k", "v", "gate_logits"), leaves[:3] + leaves[5:]):
        if leaf.grad is None or leaf.grad.abs().sum() == 0:
            raise Mistake(
                f"{name}.grad is {'None' if leaf.grad is None else 'zero'} after backward.",
                "only the memory is detached: the segment's q, k, v and the gate logits "
                "must get gradients.",
                "no_gradient",
            )


def memory_refuses_bad_shapes(memory_attention, rng):
    """mem_k and mem_v of different lengths, a memory head_dim != D, a gate not (..., L): ValueError"""
    q, k, v, mem_k, mem_v, gate_logits = memory_inputs(rng)
    expect_value_error(
        lambda: memory_attention(q, k, v, mem_k, mem_v[..., :-1, :], gate_logits),
        f"mem_k {tuple(mem_k.shape)} with mem_v {tuple(mem_v[..., :-1, :].shape)}",
        "no_clear_error",
    )
    expect_value_error(
        lambda: memory_attention(q, k, v, mem_k[..., :-2], mem_v, gate_logits),
        f"mem_k {tuple(mem_k[..., :-2].shape)} for q {tuple(q.shape)}",
        "no_clear_error",
    )
    expect_value_error(
        lambda: memory_attention(q, k, v, mem_k, mem_v, gate_logits[..., :-1]),
        f"gate_logits {tuple(gate_logits[..., :-1].shape)} for q {tuple(q.shape)}",
        "no_clear_error",
    )


EXERCISES = {
    "split_heads": Exercise(
        checks=[split_matches_reference, split_square, split_one_head, split_refuses_indivisible],
        forbidden=HEADS_FORBIDDEN,
    ),
    "merge_heads": Exercise(
        checks=[merge_matches_reference, merge_square, merge_inverts_split],
        forbidden=HEADS_FORBIDDEN,
    ),
    "repeat_kv": Exercise(
        checks=[
            repeat_matches_reference,
            repeat_one_is_identity,
            repeat_query_head_uses_h_div_n_rep,
        ],
        forbidden=HEADS_FORBIDDEN,
    ),
    "MultiHeadAttention": Exercise(
        checks=[
            mha_self_matches_torch,
            mha_square_heads,
            mha_cross_attention_with_mask,
            mha_need_weights_false,
            mha_gqa_equals_repeated_mha,
            mha_multi_query,
            mha_refuses_bad_head_counts,
        ],
        forbidden=MHA_FORBIDDEN,
    ),
    "sinusoidal_positions": Exercise(
        checks=[sinusoid_matches_paper, sinusoid_wide, sinusoid_tiny], forbidden=POSITIONS_FORBIDDEN
    ),
    "apply_rope": Exercise(
        checks=[
            rope_matches_reference,
            rope_broadcast_positions,
            rope_base_and_float64,
            rope_relative_and_norm,
            rope_refuses_odd_dim,
        ],
        forbidden=POSITIONS_FORBIDDEN,
    ),
    "alibi_bias": Exercise(
        checks=[alibi_power_of_two, alibi_interpolated_slopes, alibi_bottom_right],
        forbidden=POSITIONS_FORBIDDEN,
    ),
    "relative_position_bucket": Exercise(
        checks=[
            bucket_bidirectional,
            bucket_unidirectional,
            bucket_defaults_any_shape,
            bucket_refuses_bad_parameters,
        ],
        forbidden=RELATIVE_FORBIDDEN,
    ),
    "shaw_relative_attention": Exercise(
        checks=[
            shaw_clipped_self_attention,
            shaw_cross_lengths_no_rel_v,
            shaw_causal_mask,
            shaw_refuses_bad_tables,
        ],
        forbidden=RELATIVE_FORBIDDEN,
    ),
    "relative_bias_attention": Exercise(
        checks=[rb_bidirectional_self, rb_causal_t5, rb_refuses_head_mismatch],
        forbidden=RELATIVE_FORBIDDEN,
    ),
    "memory_attention": Exercise(
        checks=[
            memory_matches_positions_oracle,
            memory_start_and_short_memory,
            memory_is_detached,
            memory_refuses_bad_shapes,
        ],
        forbidden=MEMORY_FORBIDDEN,
    ),
}
