"""The day03 check suite, tested: the solution passes on every seed, each planted bug is caught
with its named hint, and correct implementations written differently pass too."""

import functools
import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import course.reference.multihead as library
from course.reference.masks import attention
from helpers import (
    assert_mistake_named,
    assert_promise_kept,
    day_report,
    edited_solution,
    planted_keys,
    promised,
)

DAY = "day03-multihead"

# For tests/test_nbgrader_e2e.py: RoPE positions offset by one cost apply_rope's visible and
# hidden points (2 + 1); no other graded cell uses apply_rope.
PLANTED_SUBMISSION = {
    "cell": "apply_rope",
    "old": "angle = positions.to(device=x.device, dtype=x.dtype)",
    "new": "angle = (positions + 1).to(device=x.device, dtype=x.dtype)",
    "points_lost": 3,
    "hint": "use the positions you are given, as they are",
}


report = functools.partial(day_report, DAY)
assert_named = functools.partial(assert_mistake_named, DAY)


def stub(*args, **kwargs):
    raise NotImplementedError()


# ----------------------------------------------------------------------------- the solution


# ----------------------------------------------------------------------------- split / merge / repeat


def split_no_transpose(x, num_heads):
    batch, length, d_model = x.shape
    return x.reshape(batch, num_heads, length, d_model // num_heads)


def split_strided(x, num_heads):
    batch, length, d_model = x.shape
    return x.view(batch, length, d_model // num_heads, num_heads).permute(0, 3, 1, 2)


def split_unchecked(x, num_heads):
    batch, length, d_model = x.shape
    return x.view(batch, length, num_heads, d_model // num_heads).transpose(1, 2)


def split_assert(x, num_heads):
    assert x.shape[-1] % num_heads == 0
    return split_unchecked(x, num_heads)


@pytest.mark.parametrize(
    "bug, key",
    [
        (split_no_transpose, "split_without_transpose"),
        (split_strided, "heads_interleaved"),
        (split_unchecked, "no_clear_error"),
        (split_assert, "no_clear_error"),
        (lambda x, h: library.split_heads(x, h), "shortcut"),
        (stub, "not_implemented"),
    ],
    ids=["no_transpose", "strided", "unchecked", "assert", "library", "stub"],
)
def test_split_heads_bug_is_named(bug, key, capsys):
    assert_named("split_heads", bug, key, capsys)


@pytest.mark.parametrize(
    "bug, key",
    [
        (lambda x: x.reshape(x.shape[0], x.shape[2], -1), "merge_without_transpose"),
        (lambda x: x.transpose(1, 2).reshape(x.shape[0], x.shape[2], -1).float(), "wrong_dtype"),
        (lambda x: library.merge_heads(x), "shortcut"),
        (stub, "not_implemented"),
    ],
    ids=["no_transpose", "float32", "library", "stub"],
)
def test_merge_heads_bug_is_named(bug, key, capsys):
    assert_named("merge_heads", bug, key, capsys)


@pytest.mark.parametrize(
    "bug, key",
    [
        (lambda x, n: x.repeat(1, n, 1, 1), "repeat_tiled"),
        (lambda x, n: torch.cat([x] * n, dim=1), "repeat_tiled"),
        (lambda x, n: x.repeat_interleave(n, dim=2), "repeat_wrong_dim"),
        # right count, but for n_rep > 2 the copies of a head are not all adjacent
        (
            lambda x, n: torch.cat([x.repeat_interleave(n - 1, dim=1), x], dim=1),
            "repeat_heads_misordered",
        ),
        (lambda x, n: library.repeat_kv(x, n), "shortcut"),
        (stub, "not_implemented"),
    ],
    ids=["tiled", "cat", "wrong_axis", "cat_pieces", "library", "stub"],
)
def test_repeat_kv_bug_is_named(bug, key, capsys):
    assert_named("repeat_kv", bug, key, capsys)


@pytest.mark.parametrize(
    "split",
    [
        lambda x, h: (
            x.unflatten(-1, (h, -1)).transpose(1, 2) if x.shape[-1] % h == 0 else library_error()
        ),
        lambda x, h: (
            torch.einsum("blhd->bhld", x.reshape(*x.shape[:2], h, x.shape[-1] // h))
            if x.shape[-1] % h == 0
            else library_error()
        ),
        lambda x, h: (
            torch.stack(x.split(x.shape[-1] // h, dim=-1), dim=1)
            if x.shape[-1] % h == 0
            else library_error()
        ),
    ],
    ids=["unflatten", "einsum", "split-stack"],
)
def test_other_correct_splits_pass(split):
    for seed in range(5):
        assert report("split_heads", split, hidden=True, seed=seed).passed


def library_error():
    raise ValueError("d_model is not divisible by num_heads")


@pytest.mark.parametrize(
    "merge",
    [
        lambda x: x.permute(0, 2, 1, 3).flatten(2),
        lambda x: torch.cat(x.unbind(1), dim=-1),
        lambda x: torch.einsum("bhld->blhd", x).contiguous().view(x.shape[0], x.shape[2], -1),
    ],
    ids=["permute-flatten", "cat-heads", "einsum"],
)
def test_other_correct_merges_pass(merge):
    for seed in range(5):
        assert report("merge_heads", merge, hidden=True, seed=seed).passed


@pytest.mark.parametrize(
    "repeat",
    [
        lambda x, n: x[:, :, None].expand(-1, -1, n, -1, -1).reshape(x.shape[0], -1, *x.shape[2:]),
        lambda x, n: x[:, torch.arange(x.shape[1] * n) // n],
    ],
    ids=["expand (Hugging Face)", "index"],
)
def test_other_correct_repeats_pass(repeat):
    for seed in range(5):
        assert report("repeat_kv", repeat, hidden=True, seed=seed).passed


# ----------------------------------------------------------------------------- MultiHeadAttention


def make_mha(
    split="right",
    merge="right",
    scale="head_dim",
    use_context=True,
    mask_mode="right",
    weights_mode="per_head",
    kv_repeat="interleave",
    check_args=True,
    names=None,
    core=None,
):
    """A MultiHeadAttention class built from replaceable parts, so each bug changes one of them."""

    class Bugged(nn.Module):
        def __init__(self, d_model, num_heads, num_kv_heads=None, bias=True):
            super().__init__()
            num_kv_heads = num_heads if num_kv_heads is None else num_kv_heads
            if check_args and (d_model % num_heads or num_heads % num_kv_heads):
                raise ValueError(
                    f"bad head counts: d_model={d_model}, num_heads={num_heads}, "
                    f"num_kv_heads={num_kv_heads}"
                )
            self.d_model, self.h, self.hkv = d_model, num_heads, num_kv_heads
            self.dh = d_model // num_heads
            q, k, v, o = names or ("q_proj", "k_proj", "v_proj", "out_proj")
            setattr(self, q, nn.Linear(d_model, d_model, bias=bias))
            setattr(self, k, nn.Linear(d_model, num_kv_heads * self.dh, bias=bias))
            setattr(self, v, nn.Linear(d_model, num_kv_heads * self.dh, bias=bias))
            setattr(self, o, nn.Linear(d_model, d_model, bias=bias))

        def to_heads(self, t, n):
            b, length, _ = t.shape
            if split == "no_transpose":
                return t.reshape(b, n, length, self.dh)
            return t.view(b, length, n, self.dh).transpose(1, 2)

        def forward(self, x, context=None, mask=None, need_weights=False):
            context = x if context is None or not use_context else context
            q = self.to_heads(self.q_proj(x), self.h)
            k = self.to_heads(self.k_proj(context), self.hkv)
            v = self.to_heads(self.v_proj(context), self.hkv)
            n_rep = self.h // self.hkv
            if kv_repeat == "interleave":
                k, v = k.repeat_interleave(n_rep, 1), v.repeat_interleave(n_rep, 1)
            else:
                k, v = k.repeat(1, n_rep, 1, 1), v.repeat(1, n_rep, 1, 1)
            if scale == "d_model":
                q = q * math.sqrt(self.dh / self.d_model)  # attention divides by sqrt(dh) again
            if mask is not None and mask_mode == "ignore":
                mask = None
            elif mask is not None and mask_mode == "invert":
                mask = ~mask
            out, weights = (core or attention)(q, k, v, mask)
            b, _, length, _ = out.shape
            if merge == "no_transpose":
                merged = out.reshape(b, length, self.d_model)
            else:
                merged = out.transpose(1, 2).reshape(b, length, self.d_model)
            if weights_mode == "averaged":
                weights = weights.mean(1)
            if not need_weights and weights_mode != "always":
                weights = None
            return self.out_proj(merged), weights

    return Bugged


class UsesTorch(nn.Module):
    def __init__(self, d_model, num_heads, num_kv_heads=None, bias=True):
        super().__init__()
        self.inner = nn.MultiheadAttention(d_model, num_heads, bias=bias, batch_first=True)
        self.q_proj = nn.Linear(d_model, d_model, bias=bias)
        self.k_proj = nn.Linear(d_model, d_model, bias=bias)
        self.v_proj = nn.Linear(d_model, d_model, bias=bias)
        self.out_proj = nn.Linear(d_model, d_model, bias=bias)

    def forward(self, x, context=None, mask=None, need_weights=False):
        context = x if context is None else context
        return self.inner(x, context, context, need_weights=need_weights)


class UsesLibrary(library.MultiHeadAttention):
    """Inherits the course's own layer: its __init__ and forward run inside the guard."""


@pytest.mark.parametrize(
    "bug, key",
    [
        (make_mha(split="no_transpose", merge="no_transpose"), "split_without_transpose"),
        (make_mha(split="no_transpose"), "split_without_transpose"),
        (make_mha(scale="d_model"), "scaled_by_d_model"),
        (make_mha(use_context=False), "ignores_context"),
        (make_mha(mask_mode="ignore"), "ignores_mask"),
        (make_mha(mask_mode="invert"), "inverted_mask"),
        (make_mha(weights_mode="averaged"), "weights_not_per_head"),
        (make_mha(weights_mode="always"), "weights_when_not_needed"),
        (make_mha(kv_repeat="tile"), "gqa_tiled"),
        (make_mha(check_args=False), "no_clear_error"),
        (make_mha(names=("q", "k", "v", "o")), "missing_projection"),
        (UsesTorch, "shortcut"),
        (UsesLibrary, "shortcut"),
        (stub, "not_implemented"),
    ],
    ids=[
        "split_and_merge",
        "split_only",
        "d_model",
        "context",
        "no_mask",
        "inverted",
        "averaged",
        "always_weights",
        "gqa_tiled",
        "unchecked",
        "names",
        "nn.MultiheadAttention",
        "library",
        "stub",
    ],
)
def test_multihead_attention_bug_is_named(bug, key, capsys):
    assert_named("MultiHeadAttention", bug, key, capsys)


def einsum_core(q, k, v, mask):
    scores = torch.einsum("bhqd,bhkd->bhqk", q, k) / math.sqrt(q.shape[-1])
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    weights = F.softmax(scores, dim=-1)
    return torch.einsum("bhqk,bhkd->bhqd", weights, v), weights


def sdpa_core(q, k, v, mask):
    """F.scaled_dot_product_attention for the output, the weights written out."""
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    return out, einsum_core(q, k, v, mask)[1]


@pytest.mark.parametrize(
    "mha", [make_mha(core=einsum_core), make_mha(core=sdpa_core)], ids=["einsum", "sdpa"]
)
def test_other_correct_multihead_attentions_pass(mha):
    for seed in range(5):
        assert report("MultiHeadAttention", mha, hidden=True, seed=seed).passed


# ----------------------------------------------------------------------------- sinusoidal_positions


def make_sinusoid(offset=0, layout="interleaved", exponent=2):
    def sinusoidal_positions(length, dim):
        position = torch.arange(length, dtype=torch.float32).unsqueeze(-1) + offset
        pair = torch.arange(0, dim, 2, dtype=torch.float32)
        angle = position / 10000.0 ** (pair * exponent / 2 / dim)
        if layout == "halves":
            return torch.cat([angle.sin(), angle.cos()], dim=-1)
        table = torch.empty(length, dim)
        first, second = (
            (angle.cos(), angle.sin()) if layout == "swapped" else (angle.sin(), angle.cos())
        )
        table[:, 0::2], table[:, 1::2] = first, second
        return table

    return sinusoidal_positions


@pytest.mark.parametrize(
    "bug, key",
    [
        (make_sinusoid(offset=1), "positions_from_one"),
        (make_sinusoid(layout="halves"), "sin_cos_halves"),
        (make_sinusoid(layout="swapped"), "sin_cos_swapped"),
        (make_sinusoid(exponent=1), "frequency_exponent"),
        (lambda n, d: make_sinusoid()(n, d).double(), "table_not_float32"),
        (lambda n, d: library.sinusoidal_positions(n, d), "shortcut"),
        (stub, "not_implemented"),
    ],
    ids=["from_one", "halves", "swapped", "exponent", "float64", "library", "stub"],
)
def test_sinusoidal_positions_bug_is_named(bug, key, capsys):
    assert_named("sinusoidal_positions", bug, key, capsys)


def annotated_transformer_pe(length, dim):
    """The Annotated Transformer's version: exp(-log(10000) * 2i / d), all in float32."""
    pe = torch.zeros(length, dim)
    position = torch.arange(0, length).unsqueeze(1)
    div_term = torch.exp(torch.arange(0, dim, 2) * -(math.log(10000.0) / dim))
    pe[:, 0::2] = torch.sin(position * div_term)
    pe[:, 1::2] = torch.cos(position * div_term)
    return pe


def loop_pe(length, dim):
    rows = [
        [
            math.sin(p / 10000 ** (2 * (c // 2) / dim))
            if c % 2 == 0
            else math.cos(p / 10000 ** (2 * (c // 2) / dim))
            for c in range(dim)
        ]
        for p in range(length)
    ]
    return torch.tensor(rows, dtype=torch.float32)


@pytest.mark.parametrize(
    "impl",
    [
        annotated_transformer_pe,
        loop_pe,
        lambda n, d: torch.stack(
            [make_sinusoid()(n, d)[:, 0::2], make_sinusoid()(n, d)[:, 1::2]], -1
        ).flatten(-2),
    ],
    ids=["annotated", "python loops", "stack-flatten"],
)
def test_other_correct_sinusoids_pass(impl):
    for seed in range(5):
        assert report("sinusoidal_positions", impl, hidden=True, seed=seed).passed


# ----------------------------------------------------------------------------- apply_rope


def make_rope(
    pairs="halves",
    sign=1.0,
    exponent=2.0,
    offset=0,
    use_positions=True,
    use_base=True,
    angle_dtype=None,
    check_dim=True,
):
    def apply_rope(x, positions, base=10000.0):
        dim = x.shape[-1]
        if check_dim and dim % 2:
            raise ValueError(f"odd D={dim}")
        dtype = angle_dtype or x.dtype
        base = base if use_base else 10000.0
        theta = base ** (-exponent * torch.arange(dim // 2, dtype=dtype) / dim)
        positions = positions if use_positions else torch.arange(x.shape[-2])
        angle = sign * (positions.to(dtype) + offset).unsqueeze(-1) * theta
        cos, sin = angle.cos().to(x.dtype), angle.sin().to(x.dtype)
        if pairs == "halves":
            x1, x2 = x[..., : dim // 2], x[..., dim // 2 :]
            return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)
        x1, x2 = x[..., 0::2], x[..., 1::2]
        return torch.stack([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1).flatten(-2)

    return apply_rope


@pytest.mark.parametrize(
    "bug, key",
    [
        (make_rope(pairs="interleaved"), "rope_interleaved_pairs"),
        (make_rope(sign=-1.0), "rope_reversed"),
        (make_rope(exponent=1.0), "rope_frequency"),
        (make_rope(offset=1), "positions_offset"),
        (make_rope(offset=-1), "positions_offset"),
        (make_rope(use_positions=False), "rope_ignores_positions"),
        (make_rope(use_base=False), "rope_ignores_base"),
        (make_rope(angle_dtype=torch.float32), "angles_in_float32"),
        (make_rope(check_dim=False), "no_clear_error"),
        (lambda x, p, base=10000.0: library.apply_rope(x, p, base), "shortcut"),
        (stub, "not_implemented"),
    ],
    ids=[
        "interleaved",
        "reversed",
        "frequency",
        "plus_one",
        "minus_one",
        "no_positions",
        "no_base",
        "float32_angles",
        "odd_dim",
        "library",
        "stub",
    ],
)
def test_apply_rope_bug_is_named(bug, key, capsys):
    assert_named("apply_rope", bug, key, capsys)


def not_a_rotation(x, positions, base=10000.0):
    out = make_rope()(x, positions, base)
    return out * (1 + 1e-3 * (positions.unsqueeze(-1) > 0))  # scales every non-zero position


def test_rope_that_is_not_a_rotation_fails():
    assert not report("apply_rope", not_a_rotation).passed


def complex_rope(x, positions, base=10000.0):
    """RoPE with complex numbers, in rotate-half order: z = x1 + i x2, times e^{i p theta}."""
    dim = x.shape[-1]
    if dim % 2:
        raise ValueError("odd D")
    theta = base ** (-torch.arange(0, dim, 2, dtype=torch.float64) / dim)
    angle = positions.double().unsqueeze(-1) * theta
    z = torch.complex(x[..., : dim // 2].double(), x[..., dim // 2 :].double()) * torch.polar(
        torch.ones_like(angle), angle
    )
    return torch.cat([z.real, z.imag], dim=-1).to(x.dtype)


def llama_rope(x, positions, base=10000.0):
    """Hugging Face's Llama: emb = cat(freqs, freqs), x * cos + rotate_half(x) * sin."""
    dim = x.shape[-1]
    if dim % 2:
        raise ValueError("odd D")
    inv_freq = 1.0 / (base ** (torch.arange(0, dim, 2, dtype=x.dtype) / dim))
    freqs = positions.to(x.dtype)[..., None] * inv_freq
    emb = torch.cat([freqs, freqs], dim=-1)

    def rotate_half(t):
        return torch.cat([-t[..., dim // 2 :], t[..., : dim // 2]], dim=-1)

    return x * emb.cos() + rotate_half(x) * emb.sin()


@pytest.mark.parametrize("rope", [complex_rope, llama_rope], ids=["complex", "llama"])
def test_other_correct_ropes_pass(rope):
    for seed in range(5):
        assert report("apply_rope", rope, hidden=True, seed=seed).passed


# ----------------------------------------------------------------------------- alibi_bias


def make_alibi(first=1, sign=1.0, top_left=False, clip=None, interpolate=True):
    def alibi_bias(num_heads, lq, lk):
        def geometric(n):
            return [2 ** (-8 * h / n) for h in range(first, n + first)]

        closest = 2 ** int(math.log2(num_heads))
        slopes = geometric(num_heads if not interpolate else closest)
        if interpolate and closest < num_heads:
            slopes += geometric(2 * closest)[0::2][: num_heads - closest]
        pos_q = torch.arange(lq).unsqueeze(-1) + (0 if top_left else lk - lq)
        distance = (pos_q - torch.arange(lk)).float()
        if clip == "zero":
            distance = distance.clamp_min(0)
        elif clip == "abs":
            distance = distance.abs()
        return -sign * torch.tensor(slopes).view(-1, 1, 1) * distance

    return alibi_bias


@pytest.mark.parametrize(
    "bug, key",
    [
        (make_alibi(first=0), "alibi_slopes_from_zero"),
        (make_alibi(sign=-1.0), "alibi_sign"),
        (make_alibi(top_left=True), "alibi_top_left"),
        (make_alibi(clip="zero"), "alibi_clipped"),
        (make_alibi(clip="abs"), "alibi_clipped"),
        (make_alibi(interpolate=False), "alibi_not_interpolated"),
        (lambda h, q, k: library.alibi_bias(h, q, k), "shortcut"),
        (stub, "not_implemented"),
    ],
    ids=[
        "from_zero",
        "sign",
        "top_left",
        "clip_zero",
        "abs",
        "not_interpolated",
        "library",
        "stub",
    ],
)
def test_alibi_bias_bug_is_named(bug, key, capsys):
    assert_named("alibi_bias", bug, key, capsys)


def paper_get_slopes(n):
    """Verbatim logic of the ALiBi reference code's get_slopes (ofirpress/attention_with_linear_biases)."""

    def get_slopes_power_of_2(n):
        start = 2 ** (-(2 ** -(math.log2(n) - 3)))
        ratio = start
        return [start * ratio**i for i in range(n)]

    if math.log2(n).is_integer():
        return get_slopes_power_of_2(n)
    closest_power_of_2 = 2 ** math.floor(math.log2(n))
    return (
        get_slopes_power_of_2(closest_power_of_2)
        + paper_get_slopes(2 * closest_power_of_2)[0::2][: n - closest_power_of_2]
    )


def paper_alibi(num_heads, lq, lk):
    slopes = torch.tensor(paper_get_slopes(num_heads))
    relative = torch.arange(lk)[None, :] - (torch.arange(lq)[:, None] + lk - lq)  # key - query
    return (slopes[:, None, None] * relative).float()


def test_the_papers_get_slopes_passes():
    for seed in range(8):
        assert report("alibi_bias", paper_alibi, hidden=True, seed=seed).passed


def test_slopes_for_six_heads_follow_the_interleaving_rule():
    # The worked example in the notebook: 4 slopes of n = 4, then slopes 0 and 2 (from 0) of 8.
    expected = [2**-2, 2**-4, 2**-6, 2**-8, 2**-1, 2**-3]
    assert paper_get_slopes(6) == pytest.approx(expected)
    assert library.alibi_slopes(6).tolist() == pytest.approx(expected)


# ----------------------------------------------------------------------------- relative_position_bucket


def make_bucket(
    sign=1,
    always_bidirectional=False,
    exact_shift=0,
    clamp=True,
    halve_first=True,
    rounding="trunc",
    check_args=True,
):
    """Hugging Face's T5 _relative_position_bucket (float32 logs), with one knob per mistake."""

    def relative_position_bucket(
        relative_position, bidirectional=True, num_buckets=32, max_distance=128
    ):
        bidirectional = bidirectional or always_bidirectional
        relative_position = sign * relative_position
        buckets = torch.zeros_like(relative_position)
        max_exact = None if halve_first else num_buckets // 2
        if bidirectional:
            num_buckets //= 2
            buckets += (relative_position > 0).long() * num_buckets
            relative_position = relative_position.abs()
        else:
            relative_position = -torch.min(relative_position, torch.zeros_like(relative_position))
        max_exact = (num_buckets // 2 if max_exact is None else max_exact) + exact_shift
        if check_args and (max_exact < 1 or max_distance <= max_exact):
            raise ValueError("bad bucket parameters")
        is_small = relative_position < max_exact
        offset = (
            torch.log(relative_position.float() / max_exact)
            / math.log(max_distance / max_exact)
            * (num_buckets - max_exact)
        )
        offset = offset.round() if rounding == "round" else offset
        large = max_exact + offset.to(torch.long)
        if clamp:
            large = torch.min(large, torch.full_like(large, num_buckets - 1))
        return buckets + torch.where(is_small, relative_position, large)

    return relative_position_bucket


def test_hand_computed_buckets_match_the_suites_oracle_and_the_solution(solution):
    from grader.suites.day03_multihead.relative import buckets64

    # 32 buckets, bidirectional: 16 per direction, max_exact 8, log-spaced 8..15 up to 128.
    # -16: 8 + floor(log(2) / log(16) * 8) = 10; +20: 16 + 8 + floor(log(2.5) / log(16) * 8) = 26.
    relative = torch.tensor([0, -1, 1, -7, -8, -16, 20, -127, -128, -1000, 1000])
    expected = [0, 1, 17, 7, 8, 10, 26, 15, 15, 15, 31]
    assert buckets64(relative)[0].tolist() == expected
    assert solution["relative_position_bucket"](relative).tolist() == expected
    assert make_bucket()(relative).tolist() == expected
    # Causal: 32 buckets for the past, max_exact 16; -20: 16 + floor(log(1.25) / log(8) * 16) = 17.
    relative = torch.tensor([5, 0, -15, -16, -20, -200])
    expected = [0, 0, 15, 16, 17, 31]
    assert buckets64(relative, bidirectional=False)[0].tolist() == expected
    assert solution["relative_position_bucket"](relative, bidirectional=False).tolist() == expected


@pytest.mark.parametrize(
    "bug, key",
    [
        (make_bucket(sign=-1), "bucket_sign"),
        (make_bucket(always_bidirectional=True), "bucket_always_bidirectional"),
        (make_bucket(exact_shift=1), "bucket_boundary"),
        (make_bucket(exact_shift=-1), "bucket_boundary"),
        (make_bucket(clamp=False), "bucket_not_clamped"),
        (make_bucket(halve_first=False), "bucket_not_halved"),
        (make_bucket(rounding="round"), "bucket_rounded"),
        (make_bucket(check_args=False), "no_clear_error"),
        (lambda r, b=True, n=32, m=128: make_bucket()(r, b, n, m).int(), "wrong_dtype"),
        (stub, "not_implemented"),
    ],
    ids=[
        "sign",
        "always_bidirectional",
        "boundary_plus",
        "boundary_minus",
        "no_clamp",
        "not_halved",
        "rounded",
        "unchecked",
        "int32",
        "stub",
    ],
)
def test_relative_position_bucket_bug_is_named(bug, key, capsys):
    assert_named("relative_position_bucket", bug, key, capsys)


def loop_bucket(relative_position, bidirectional=True, num_buckets=32, max_distance=128):
    """Mesh TensorFlow's logic in a Python loop over the entries."""
    half = num_buckets // 2 if bidirectional else num_buckets
    max_exact = half // 2
    if max_exact < 1 or max_distance <= max_exact:
        raise ValueError("bad bucket parameters")
    out = []
    for r in relative_position.flatten().tolist():
        n, base = -r, 0
        if bidirectional:
            base, n = (half if n < 0 else 0), abs(n)
        n = max(n, 0)
        if n < max_exact:
            out.append(base + n)
        else:
            large = max_exact + int(
                math.log(n / max_exact) / math.log(max_distance / max_exact) * (half - max_exact)
            )
            out.append(base + min(large, half - 1))
    return torch.tensor(out, dtype=torch.long).view(relative_position.shape)


@pytest.mark.parametrize("impl", [make_bucket(), loop_bucket], ids=["hugging_face", "python_loop"])
def test_other_correct_buckets_pass(impl):
    for seed in range(5):
        assert report("relative_position_bucket", impl, hidden=True, seed=seed).passed


# ----------------------------------------------------------------------------- shaw_relative_attention


def make_shaw(
    clip=True,
    offset=True,
    sign=1,
    top_left=False,
    use_rel_v=True,
    scale_rel=True,
    check_tables=True,
    core="einsum",
):
    def shaw_relative_attention(q, k, v, rel_k, max_relative_position, rel_v=None, mask=None):
        p, dim, lq, lk = max_relative_position, q.shape[-1], q.shape[-2], k.shape[-2]
        if check_tables and (
            rel_k.shape != (2 * p + 1, dim)
            or rel_v is not None
            and rel_v.shape != (2 * p + 1, v.shape[-1])
        ):
            raise ValueError("bad relative tables")
        pos_q = torch.arange(lq).unsqueeze(-1) + (0 if top_left else lk - lq)
        distance = sign * (torch.arange(lk) - pos_q)
        if clip:
            distance = distance.clamp(-p, p)
        index = distance + p if offset else distance
        relative = torch.einsum("...qd,qkd->...qk", q, rel_k[index])
        scores = q @ k.transpose(-2, -1) / math.sqrt(dim)
        scores = scores + (relative / math.sqrt(dim) if scale_rel else relative)
        if mask is not None:
            scores = scores.masked_fill(~mask, float("-inf"))
        if core == "sdpa":
            weights = torch.softmax(scores, -1)
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=torch.log(weights))
        else:
            weights = torch.softmax(scores, -1)
            out = weights @ v
        if rel_v is not None and use_rel_v:
            out = out + torch.einsum("...qk,qkd->...qd", weights, rel_v[index])
        return out, weights

    return shaw_relative_attention


@pytest.mark.parametrize(
    "bug, key",
    [
        (make_shaw(clip=False), "shaw_not_clipped"),
        (make_shaw(offset=False), "shaw_index_offset"),
        (make_shaw(sign=-1), "shaw_sign"),
        (make_shaw(top_left=True), "shaw_top_left"),
        (make_shaw(use_rel_v=False), "shaw_ignores_rel_v"),
        (make_shaw(scale_rel=False), "shaw_rel_not_scaled"),
        (make_shaw(check_tables=False), "no_clear_error"),
        (make_shaw(core="sdpa"), "shortcut"),
        (stub, "not_implemented"),
    ],
    ids=[
        "not_clipped",
        "offset",
        "sign",
        "top_left",
        "no_rel_v",
        "rel_not_scaled",
        "unchecked",
        "sdpa",
        "stub",
    ],
)
def test_shaw_relative_attention_bug_is_named(bug, key, capsys):
    assert_named("shaw_relative_attention", bug, key, capsys)


def loop_shaw(q, k, v, rel_k, max_relative_position, rel_v=None, mask=None):
    """Shaw's equations with explicit loops over the query and key positions."""
    p, lq, lk = max_relative_position, q.shape[-2], k.shape[-2]
    if (
        rel_k.shape != (2 * p + 1, q.shape[-1])
        or rel_v is not None
        and rel_v.shape[-1] != v.shape[-1]
    ):
        raise ValueError("bad relative tables")
    scores = torch.empty(*q.shape[:-1], lk, dtype=q.dtype)
    for i in range(lq):
        for j in range(lk):
            row = min(max(j - (lk - lq + i), -p), p) + p
            scores[..., i, j] = (q[..., i, :] * (k[..., j, :] + rel_k[row])).sum(-1)
    scores = scores / math.sqrt(q.shape[-1])
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    weights = torch.softmax(scores, -1)
    out = weights @ v
    if rel_v is not None:
        out = out + torch.stack(
            [
                sum(
                    weights[..., i, j, None] * rel_v[min(max(j - (lk - lq + i), -p), p) + p]
                    for j in range(lk)
                )
                for i in range(lq)
            ],
            dim=-2,
        )
    return out, weights


@pytest.mark.parametrize("impl", [loop_shaw, make_shaw()], ids=["loops", "gather"])
def test_other_correct_shaws_pass(impl):
    for seed in range(5):
        assert report("shaw_relative_attention", impl, hidden=True, seed=seed).passed


# ----------------------------------------------------------------------------- relative_bias_attention


def make_relative_bias(
    sign=1,
    top_left=False,
    scale_bias=False,
    heads="permute",
    pass_bidirectional=True,
    check_heads=True,
    core="manual",
):
    bucket = make_bucket()

    def relative_bias_attention(
        q, k, v, bias_table, *, bidirectional=True, max_distance=128, mask=None, scale=None
    ):
        num_heads, lq, lk = q.shape[-3], q.shape[-2], k.shape[-2]
        if check_heads and bias_table.shape[1] != num_heads:
            raise ValueError("bias_table has the wrong number of heads")
        scale = q.shape[-1] ** -0.5 if scale is None else scale
        pos_q = torch.arange(lq).unsqueeze(-1) + (0 if top_left else lk - lq)
        relative = sign * (torch.arange(lk) - pos_q)
        buckets = bucket(
            relative,
            bidirectional if pass_bidirectional else True,
            bias_table.shape[0],
            max_distance,
        )
        values = bias_table[buckets]  # (Lq, Lk, H)
        if heads == "permute":
            bias = values.permute(2, 0, 1)
        elif heads == "flip":
            bias = values.permute(2, 0, 1).flip(0)
        else:  # the first head's bias for every head
            bias = values[..., :1].permute(2, 0, 1)
        if core == "sdpa":
            attn_mask = bias if mask is None else bias.masked_fill(~mask, float("-inf"))
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, scale=scale)
            return out, None
        scores = q @ k.transpose(-2, -1) * scale + bias * (scale if scale_bias else 1.0)
        if mask is not None:
            scores = scores.masked_fill(~mask, float("-inf"))
        weights = torch.softmax(scores, -1)
        return weights @ v, weights

    return relative_bias_attention


@pytest.mark.parametrize(
    "bug, key",
    [
        (make_relative_bias(sign=-1), "bias_sign"),
        (make_relative_bias(top_left=True), "bias_top_left"),
        (make_relative_bias(scale_bias=True), "bias_scaled"),
        (make_relative_bias(heads="flip"), "bias_wrong_heads"),
        (make_relative_bias(heads="first"), "bias_one_head"),
        (make_relative_bias(pass_bidirectional=False), "bias_ignores_bidirectional"),
        (make_relative_bias(check_heads=False), "no_clear_error"),
        (make_relative_bias(core="sdpa"), "shortcut"),
        (stub, "not_implemented"),
    ],
    ids=[
        "sign",
        "top_left",
        "scaled",
        "flipped_heads",
        "first_head",
        "bidirectional",
        "unchecked",
        "sdpa",
        "stub",
    ],
)
def test_relative_bias_attention_bug_is_named(bug, key, capsys):
    assert_named("relative_bias_attention", bug, key, capsys)


def test_another_correct_relative_bias_passes():
    for seed in range(5):
        assert report(
            "relative_bias_attention", make_relative_bias(), hidden=True, seed=seed
        ).passed


# ----------------------------------------------------------------------------- memory_attention

rope = make_rope()  # a correct rotate-half RoPE of the tests above (the library's is refused)


def make_memory(
    detach=True,
    segment_from=None,
    memory_after=False,
    use_start=True,
    invert=False,
    squash=True,
    causal=True,
    concatenate=False,
    check_shapes=True,
    core=None,
):
    """Gated memory attention built from course.reference.masks, with one knob per mistake."""

    def memory_attention(q, k, v, mem_k, mem_v, gate_logits, *, start=0, base=10000.0):
        length, memory = q.shape[-2], mem_k.shape[-2]
        if check_shapes and (
            mem_k.shape[:-1] != mem_v.shape[:-1]
            or mem_k.shape[-1] != q.shape[-1]
            or gate_logits.shape != q.shape[:-1]
        ):
            raise ValueError("bad shapes")
        if detach:
            mem_k, mem_v = mem_k.detach(), mem_v.detach()
        start = start if use_start else 0
        memory_at = start + torch.arange(memory)
        segment_at = start + memory + torch.arange(length)
        if segment_from == "zero":
            segment_at = start + torch.arange(length)
        if memory_after:
            segment_at, memory_at = (
                start + torch.arange(length),
                start + length + torch.arange(memory),
            )
        q, k, mem_k = (
            rope(q, segment_at, base),
            rope(k, segment_at, base),
            rope(mem_k, memory_at, base),
        )
        local_mask = torch.ones(length, length, dtype=torch.bool).tril() if causal else None
        gate = torch.sigmoid(gate_logits) if squash else gate_logits
        if concatenate:
            mask = torch.cat([torch.ones(length, memory, dtype=torch.bool), local_mask], -1)
            out, _ = attention(q, torch.cat([mem_k, k], -2), torch.cat([mem_v, v], -2), mask)
            return out, gate
        attend = core or attention
        from_memory, _ = attend(q, mem_k, mem_v)
        local, _ = attend(q, k, v, local_mask)
        g = (1 - gate if invert else gate).unsqueeze(-1)
        return g * from_memory + (1 - g) * local, gate

    return memory_attention


def sdpa_pair(q, k, v, mask=None):
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask), None


@pytest.mark.parametrize(
    "bug, key",
    [
        (make_memory(detach=False), "memory_not_detached"),
        (make_memory(segment_from="zero"), "positions_restart"),
        (make_memory(memory_after=True), "memory_after_segment"),
        (make_memory(invert=True), "gate_inverted"),
        (make_memory(squash=False), "gate_not_squashed"),
        (make_memory(causal=False), "local_not_causal"),
        (make_memory(concatenate=True), "memory_concatenated"),
        (make_memory(check_shapes=False), "no_clear_error"),
        (make_memory(core=sdpa_pair), "shortcut"),
        (stub, "not_implemented"),
    ],
    ids=[
        "not_detached",
        "positions_restart",
        "memory_after",
        "gate_inverted",
        "not_squashed",
        "not_causal",
        "concatenated",
        "unchecked",
        "sdpa",
        "stub",
    ],
)
def test_memory_attention_bug_is_named(bug, key, capsys):
    assert_named("memory_attention", bug, key, capsys)


def test_memory_that_uses_the_library_rope_is_refused(capsys):
    def uses_library(q, k, v, mem_k, mem_v, gate_logits, *, start=0, base=10000.0):
        length, memory = q.shape[-2], mem_k.shape[-2]
        segment_at = start + memory + torch.arange(length)
        q = library.apply_rope(q, segment_at, base)
        return make_memory()(q, k, v, mem_k, mem_v, gate_logits, start=start, base=base)

    assert_named("memory_attention", uses_library, "shortcut", capsys)


def explicit_memory(q, k, v, mem_k, mem_v, gate_logits, *, start=0, base=10000.0):
    """Concatenated keys with explicit absolute positions and two masked softmaxes, no library."""
    length, memory, dim = q.shape[-2], mem_k.shape[-2], q.shape[-1]
    if (
        mem_k.shape[:-1] != mem_v.shape[:-1]
        or mem_k.shape[-1] != dim
        or gate_logits.shape != q.shape[:-1]
    ):
        raise ValueError("bad shapes")
    positions = start + torch.arange(memory + length)  # [memory ; segment]

    def rotate(x, at):  # rotate-half RoPE, written out
        theta = base ** (-torch.arange(0, dim, 2, dtype=x.dtype) / dim)
        angle = at.to(x.dtype).unsqueeze(-1) * theta
        x1, x2 = x[..., : dim // 2], x[..., dim // 2 :]
        return torch.cat(
            [x1 * angle.cos() - x2 * angle.sin(), x2 * angle.cos() + x1 * angle.sin()], -1
        )

    keys = rotate(torch.cat([mem_k.detach(), k], -2), positions)
    values = torch.cat([mem_v.detach(), v], -2)
    scores = rotate(q, positions[memory:]) @ keys.transpose(-2, -1) / math.sqrt(dim)
    is_memory = torch.arange(memory + length) < memory
    visible_local = (~is_memory) & (positions <= positions[memory:].unsqueeze(-1))
    from_memory = torch.softmax(scores.masked_fill(~is_memory, float("-inf")), -1)
    from_memory = from_memory.nan_to_num(0.0) @ values  # no memory (M = 0): nothing from it
    local = torch.softmax(scores.masked_fill(~visible_local, float("-inf")), -1) @ values
    gate = torch.sigmoid(gate_logits)
    return gate[..., None] * from_memory + (1 - gate[..., None]) * local, gate


def test_start_only_shifts_every_position_so_rope_scores_do_not_change(solution):
    # RoPE scores depend on differences of positions: start moves memory and segment together.
    memory_attention = solution["memory_attention"]
    inputs = [torch.randn(1, 2, 5, 8, dtype=torch.float64) for _ in range(3)]
    inputs += [torch.randn(1, 2, 3, 8, dtype=torch.float64) for _ in range(2)]
    inputs.append(torch.randn(1, 2, 5, dtype=torch.float64))
    assert torch.allclose(memory_attention(*inputs)[0], memory_attention(*inputs, start=40)[0])
    assert torch.allclose(
        make_memory(use_start=False)(*inputs, start=40)[0], memory_attention(*inputs, start=40)[0]
    )


def test_another_correct_memory_attention_passes():
    for seed in range(5):
        assert report("memory_attention", explicit_memory, hidden=True, seed=seed).passed


# ----------------------------------------------------------------------------- a beginner's mistakes

# A beginner's pass through the notebook (issue #18): each mistake as an edit of the solution's
# cell, and the key that must name it, on the visible seed and on fresh hidden ones.

# The mask applied to the scores in shaw_relative_attention and relative_bias_attention, and the
# mistake of applying it to the weights after the softmax (no renormalisation).
MASK_BEFORE_SOFTMAX = """    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    weights = torch.softmax(scores, dim=-1)
"""
MASK_AFTER_SOFTMAX = """    weights = torch.softmax(scores, dim=-1)
    if mask is not None:
        weights = weights * mask
"""
BEGINNER_MISTAKES = {
    "transpose_first": (
        "split_heads",
        [
            (
                "return x.view(batch, length, num_heads, d_model // num_heads).transpose(1, 2)",
                "return x.transpose(1, 2).reshape(batch, num_heads, length, d_model // num_heads)",
            )
        ],
        "transpose_before_reshape",
    ),
    "true_division": (
        "split_heads",
        [("d_model // num_heads).transpose", "d_model / num_heads).transpose")],
        "float_head_size",
    ),
    "transpose_1_3": (
        "split_heads",
        [(".transpose(1, 2)  # (B, H, L, dh)", ".transpose(1, 3)  # (B, H, L, dh)")],
        "split_wrong_dims_swapped",
    ),
    "dot_T": ("split_heads", [(".transpose(1, 2)  # (B, H, L, dh)", ".T")], "T_on_batched"),
    "guard_inverted": (
        "split_heads",
        [("if d_model % num_heads != 0:", "if num_heads % d_model != 0:")],
        "refuses_valid_input",
    ),
    "merge_view": (
        "merge_heads",
        [(".reshape(batch, length, heads * head_dim)", ".view(batch, length, heads * head_dim)")],
        "view_after_transpose",
    ),
    "merge_heads_last": (
        "merge_heads",
        [("x.transpose(1, 2).reshape", "x.permute(0, 2, 3, 1).reshape")],
        "merge_heads_last",
    ),
    "merge_cat_tokens": (
        "merge_heads",
        [
            (
                "return x.transpose(1, 2).reshape(batch, length, heads * head_dim)",
                "return torch.cat(x.unbind(1), dim=1)",
            )
        ],
        "merge_heads_along_tokens",
    ),
    "merge_unpacked_wrong": (
        "merge_heads",
        [("batch, heads, length, head_dim = x.shape", "batch, length, heads, head_dim = x.shape")],
        "shape_unpacked_wrong",
    ),
    "merge_transpose_2_3": (
        "merge_heads",
        [("x.transpose(1, 2)", "x.transpose(2, 3)")],
        "merge_wrong_dims_swapped",
    ),
    "split_chunks_of_num_heads": (
        "split_heads",
        [
            (
                "return x.view(batch, length, num_heads, d_model // num_heads).transpose(1, 2)",
                "return torch.stack(x.split(num_heads, dim=-1), dim=1)",
            )
        ],
        "split_chunk_size",
    ),
    "merge_transpose_1_3": (
        "merge_heads",
        [("x.transpose(1, 2)", "x.transpose(1, 3)")],
        "merge_wrong_dims_swapped",
    ),
    "repeat_length_axis": (
        "repeat_kv",
        [("repeat_interleave(n_rep, dim=1)", "repeat_interleave(n_rep, dim=2)")],
        "repeat_wrong_dim",
    ),
    "repeat_no_dim": (
        "repeat_kv",
        [("repeat_interleave(n_rep, dim=1)", "repeat_interleave(n_rep)")],
        "repeat_flattened",
    ),
    "repeat_stack_last": (
        "repeat_kv",
        [
            (
                "return x.repeat_interleave(n_rep, dim=1)",
                "return torch.stack([x] * n_rep, dim=-1).reshape(x.shape[0], -1, *x.shape[2:])",
            )
        ],
        "repeat_features_interleaved",
    ),
    "mha_context_ignored": (
        "MultiHeadAttention",
        [
            ("split_heads(self.k_proj(context)", "split_heads(self.k_proj(x)"),
            ("split_heads(self.v_proj(context)", "split_heads(self.v_proj(x)"),
        ],
        "ignores_context",
    ),
    "mha_inverted_mask": (
        "MultiHeadAttention",
        [("= attention(q, k, v, mask)", "= attention(q, k, v, None if mask is None else ~mask)")],
        "inverted_mask",
    ),
    "mha_out_proj_unused": (
        "MultiHeadAttention",
        [("out = self.out_proj(merge_heads(out))", "out = merge_heads(out)")],
        "out_proj_unused",
    ),
    "mha_no_super_init": (
        "MultiHeadAttention",
        [("super().__init__()", "pass")],
        "no_super_init",
    ),
    "mha_mask_unsqueezed": (
        "MultiHeadAttention",
        [
            (
                "= attention(q, k, v, mask)",
                "= attention(q, k, v, None if mask is None else mask.unsqueeze(1))",
            )
        ],
        "mask_not_broadcastable",
    ),
    "mha_if_not_context": (
        "MultiHeadAttention",
        [
            (
                "context = x if context is None else context",
                "context = x if not context else context",
            )
        ],
        "tensor_truth_value",
    ),
    "sin_multiplied": (
        "sinusoidal_positions",
        [("10000.0 ** (-torch.arange", "10000.0 ** (torch.arange")],
        "frequency_inverted",
    ),
    "sin_integer_exponent": (
        "sinusoidal_positions",
        [
            (
                "(-torch.arange(0, dim, 2, dtype=torch.float32) / dim)",
                "(-(torch.arange(0, dim, 2) // dim))",
            )
        ],
        "integer_exponent",
    ),
    "sin_one_row_short": (
        "sinusoidal_positions",
        [("torch.arange(length, dtype", "torch.arange(length - 1, dtype")],
        "positions_one_short",
    ),
    "sin_transposed": (
        "sinusoidal_positions",
        [("    return table", "    return table.T")],
        "table_transposed",
    ),
    "sin_float64": (
        "sinusoidal_positions",
        [("torch.empty(length, dim)", "torch.empty(length, dim, dtype=torch.float64)")],
        "table_not_float32",
    ),
    "rope_no_minus": (
        "apply_rope",
        [("torch.cat([x1 * cos - x2 * sin", "torch.cat([x1 * cos + x2 * sin")],
        "not_a_rotation",
    ),
    "rope_in_place": (
        "apply_rope",
        [
            (
                "return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)",
                "x1[...], x2[...] = x1 * cos - x2 * sin, x2 * cos + x1 * sin\n    return x",
            )
        ],
        "rope_in_place",
    ),
    "rope_no_unsqueeze": (
        "apply_rope",
        [
            (
                "angle = positions.to(device=x.device, dtype=x.dtype).unsqueeze(-1) * theta",
                "angle = (theta[:, None] * positions.to(x.dtype)).transpose(-1, -2)",
            )
        ],
        "rope_positions_not_unsqueezed",
    ),
    "alibi_first_of_2n": (
        "alibi_bias",
        [("geometric(2 * closest)[0::2]", "geometric(2 * closest)")],
        "alibi_wrong_extra_slopes",
    ),
    "alibi_odd_of_2n": (
        "alibi_bias",
        [("geometric(2 * closest)[0::2]", "geometric(2 * closest)[1::2]")],
        "alibi_wrong_extra_slopes",
    ),
    "alibi_floor_division": (
        "alibi_bias",
        [
            (
                "2.0 ** (-8.0 * torch.arange(1, n + 1, dtype=torch.float64) / n)",
                "2.0 ** (-8 * torch.arange(1, n + 1) // n).double()",
            )
        ],
        "alibi_floored_exponent",
    ),
    "alibi_query_one_before": (
        "alibi_bias",
        [("unsqueeze(-1) + (lk - lq)  # (lq, 1)", "unsqueeze(-1) + (lk - lq - 1)  # (lq, 1)")],
        "alibi_query_off_by_one",
    ),
    "rope_second_half_sign": (
        "apply_rope",
        [("x2 * cos + x1 * sin", "x2 * cos - x1 * sin")],
        "not_a_rotation",
    ),
    "rope_outer": (
        "apply_rope",
        [
            (
                "angle = positions.to(device=x.device, dtype=x.dtype).unsqueeze(-1) * theta",
                "angle = torch.outer(positions.to(device=x.device, dtype=x.dtype), theta)",
            )
        ],
        "rope_positions_outer",
    ),
    "shaw_scaled_by_dv": (
        "shaw_relative_attention",
        [("scores = scores / math.sqrt(dim)", "scores = scores / math.sqrt(v.shape[-1])")],
        "shaw_scaled_by_dv",
    ),
    "shaw_rel_v_with_unmasked_weights": (
        "shaw_relative_attention",
        [
            (
                'scores = scores.masked_fill(~mask, float("-inf"))',
                'masked = scores.masked_fill(~mask, float("-inf"))',
            ),
            (
                "weights = torch.softmax(scores, dim=-1)",
                "weights = torch.softmax(scores if mask is None else masked, dim=-1)",
            ),
            (
                'einsum("...qk,qkd->...qd", weights, rel_v[index])',
                'einsum("...qk,qkd->...qd", torch.softmax(scores, dim=-1), rel_v[index])',
            ),
        ],
        "shaw_rel_v_unmasked",
    ),
    "bias_scale_as_divisor": (
        "relative_bias_attention",
        [
            ("q.shape[-1] ** -0.5 if scale is None", "q.shape[-1] ** 0.5 if scale is None"),
            ("q @ k.transpose(-2, -1) * scale + bias", "q @ k.transpose(-2, -1) / scale + bias"),
        ],
        "bias_scale_divides",
    ),
    "alibi_float64": (
        "alibi_bias",
        [("(-slopes.view(-1, 1, 1) * distance).float()", "(-slopes.view(-1, 1, 1) * distance)")],
        "alibi_not_float32",
    ),
    "bucket_future_abs": (
        "relative_position_bucket",
        [("n = n.clamp_min(0)", "n = n.abs()")],
        "bucket_future_not_zero",
    ),
    "bucket_integer_ratio": (
        "relative_position_bucket",
        [
            (
                "torch.log(n.clamp_min(max_exact).double() / max_exact)",
                "torch.log((n // max_exact).clamp_min(1).double())",
            )
        ],
        "bucket_integer_ratio",
    ),
    "bucket_exact_ends_early": (
        "relative_position_bucket",
        [("is_small = n < max_exact", "is_small = n < max_exact - 1")],
        "bucket_boundary",
    ),
    "bucket_rounded": (
        "relative_position_bucket",
        [("* (num_buckets - max_exact)).long()", "* (num_buckets - max_exact)).round().long()")],
        "bucket_rounded",
    ),
    "shaw_inverted_mask": (
        "shaw_relative_attention",
        [("masked_fill(~mask, ", "masked_fill(mask, ")],
        "inverted_mask",
    ),
    "shaw_fill_zero": (
        "shaw_relative_attention",
        [('masked_fill(~mask, float("-inf"))', "masked_fill(~mask, 0.0)")],
        "mask_fill_zero",
    ),
    "shaw_softmax_queries": (
        "shaw_relative_attention",
        [("torch.softmax(scores, dim=-1)", "torch.softmax(scores, dim=-2)")],
        "softmax_wrong_dim",
    ),
    "shaw_rel_k_for_values": (
        "shaw_relative_attention",
        [("weights, rel_v[index])", "weights, rel_k[index])")],
        "shaw_rel_k_for_values",
    ),
    "bias_reshaped_lookup": (
        "relative_bias_attention",
        [(".permute(2, 0, 1)", ".reshape(heads, lq, lk)")],
        "bias_wrong_heads",
    ),
    "bias_table_reshaped": (
        "relative_bias_attention",
        [("bias_table[buckets].permute(2, 0, 1)", "bias_table.reshape(heads, -1)[:, buckets]")],
        "bias_wrong_heads",
    ),
    "bias_scale_one": (
        "relative_bias_attention",
        [("scale = q.shape[-1] ** -0.5 if scale", "scale = 1.0 if scale")],
        "bias_scale_default",
    ),
    "bias_num_buckets_dropped": (
        "relative_bias_attention",
        [
            (
                "bidirectional, bias_table.shape[0], max_distance)",
                "bidirectional, max_distance=max_distance)",
            )
        ],
        "bias_bucket_arguments",
    ),
    "bias_max_distance_in_num_buckets": (
        "relative_bias_attention",
        [("bidirectional, bias_table.shape[0], max_distance)", "bidirectional, max_distance)")],
        "bias_bucket_arguments",
    ),
    "bias_inverted_mask": (
        "relative_bias_attention",
        [("masked_fill(~mask, ", "masked_fill(mask, ")],
        "inverted_mask",
    ),
    "memory_gate_not_unsqueezed": (
        "memory_attention",
        [("g = gate.unsqueeze(-1)", "g = gate")],
        "gate_not_unsqueezed",
    ),
    "memory_keys_not_rotated": (
        "memory_attention",
        [("mem_k = apply_rope(mem_k, memory_at, base)", "mem_k = mem_k")],
        "memory_not_rotated",
    ),
    "memory_base_dropped": (
        "memory_attention",
        [
            (
                "apply_rope(q, segment_at, base), apply_rope(k, segment_at, base)",
                "apply_rope(q, segment_at), apply_rope(k, segment_at)",
            ),
            ("apply_rope(mem_k, memory_at, base)", "apply_rope(mem_k, memory_at)"),
        ],
        "memory_ignores_base",
    ),
    "memory_amax_on_empty": (
        "memory_attention",
        [
            (
                "from_memory, _ = attention(q, mem_k, mem_v)",
                "s = q @ mem_k.transpose(-2, -1) / dim**0.5\n"
                "    from_memory = torch.softmax(s - s.amax(-1, keepdim=True), -1) @ mem_v",
            )
        ],
        "empty_memory",
    ),
    # the second pass (issue #18): mistakes that got the generic hint
    "transpose_2_3": (
        "split_heads",
        [(".transpose(1, 2)  # (B, H, L, dh)", ".transpose(2, 3)  # (B, H, L, dh)")],
        "split_wrong_dims_swapped",
    ),
    "chunks_stacked_first": (
        "split_heads",
        [
            (
                "return x.view(batch, length, num_heads, d_model // num_heads).transpose(1, 2)",
                "return torch.stack(x.chunk(num_heads, dim=-1), dim=0)",
            )
        ],
        "heads_stacked_first",
    ),
    "merge_not_flattened": (
        "merge_heads",
        [
            (
                "return x.transpose(1, 2).reshape(batch, length, heads * head_dim)",
                "return x.transpose(1, 2)",
            )
        ],
        "merge_not_flattened",
    ),
    "repeat_expand_not_reshaped": (
        "repeat_kv",
        [
            (
                "return x.repeat_interleave(n_rep, dim=1)",
                "return x[:, :, None].expand(-1, -1, n_rep, -1, -1)",
            )
        ],
        "repeat_not_reshaped",
    ),
    "alibi_heads_last": (
        "alibi_bias",
        [
            (
                "(-slopes.view(-1, 1, 1) * distance).float()",
                "(-distance[..., None] * slopes).float()",
            )
        ],
        "alibi_heads_last",
    ),
    "repeat_one_copy_too_many": (
        "repeat_kv",
        [
            (
                "return x.repeat_interleave(n_rep, dim=1)",
                "return torch.cat([x] + [x] * n_rep, dim=1)",
            )
        ],
        "repeat_count_off",
    ),
    "repeat_interleave_n_rep_plus_one": (
        "repeat_kv",
        [("repeat_interleave(n_rep, dim=1)", "repeat_interleave(n_rep + 1, dim=1)")],
        "repeat_count_off",
    ),
    "mha_query_split_by_hand": (
        "MultiHeadAttention",
        [
            (
                "q = split_heads(self.q_proj(x), self.num_heads)",
                "q = self.q_proj(x).reshape(x.shape[0], self.num_heads, x.shape[1], -1)",
            )
        ],
        "split_without_transpose",
    ),
    "sin_multiplied_in_float64": (
        "sinusoidal_positions",
        [
            (
                "torch.arange(length, dtype=torch.float32)",
                "torch.arange(length, dtype=torch.float64)",
            ),
            (
                "10000.0 ** (-torch.arange(0, dim, 2, dtype=torch.float32) / dim)",
                "10000.0 ** (torch.arange(0, dim, 2, dtype=torch.float64) / dim)",
            ),
        ],
        "frequency_inverted",
    ),
    "bucket_causal_future_above": (
        "relative_position_bucket",
        [
            (
                "n = n.clamp_min(0)",
                "buckets = buckets + (n < 0).long() * num_buckets\n        n = n.abs()",
            )
        ],
        "bucket_always_bidirectional",
    ),
    "bucket_exact_inclusive": (
        "relative_position_bucket",
        [
            ("is_small = n < max_exact", "is_small = n <= max_exact"),
            ("large = max_exact + (log_ratio", "large = max_exact + 1 + (log_ratio"),
        ],
        "bucket_boundary",
    ),
    "shaw_mask_after_softmax": (
        "shaw_relative_attention",
        [(MASK_BEFORE_SOFTMAX, MASK_AFTER_SOFTMAX)],
        "mask_after_softmax",
    ),
    "bias_permute_2_1_0": (
        "relative_bias_attention",
        [(".permute(2, 0, 1)", ".permute(2, 1, 0)")],
        "bias_transposed",
    ),
    "bias_max_distance_dropped": (
        "relative_bias_attention",
        [
            (
                "bidirectional, bias_table.shape[0], max_distance)",
                "bidirectional, bias_table.shape[0])",
            )
        ],
        "bias_ignores_max_distance",
    ),
    "bias_mask_ignored": (
        "relative_bias_attention",
        [(MASK_BEFORE_SOFTMAX, "    weights = torch.softmax(scores, dim=-1)\n")],
        "ignores_mask",
    ),
    "bias_mask_after_softmax": (
        "relative_bias_attention",
        [(MASK_BEFORE_SOFTMAX, MASK_AFTER_SOFTMAX)],
        "mask_after_softmax",
    ),
    "memory_empty_returns_local": (
        "memory_attention",
        [
            (
                "from_memory, _ = attention(q, mem_k, mem_v)",
                "if memory == 0:\n"
                "        local, _ = attention(q, k, v, causal_mask(length, device=q.device))\n"
                "        return local, torch.sigmoid(gate_logits)\n"
                "    from_memory, _ = attention(q, mem_k, mem_v)",
            )
        ],
        "gate_ignored_on_empty",
    ),
    "memory_segment_from_zero": (
        "memory_attention",
        [("segment_at = start + memory + torch.arange", "segment_at = torch.arange")],
        "positions_restart",
    ),
    "memory_causal_mask_on_memory": (
        "memory_attention",
        [
            (
                "from_memory, _ = attention(q, mem_k, mem_v)",
                "memory_mask = causal_mask(length, memory, device=q.device) if memory else None\n"
                "    from_memory, _ = attention(q, mem_k, mem_v, memory_mask)",
            )
        ],
        "memory_masked",
    ),
    "memory_top_left_mask_on_memory": (
        "memory_attention",
        [
            (
                "from_memory, _ = attention(q, mem_k, mem_v)",
                "memory_mask = torch.ones(length, memory, dtype=torch.bool).tril()\n"
                "    from_memory, _ = attention(q, mem_k, mem_v, memory_mask)",
            )
        ],
        "memory_masked",
    ),
    # the third pass (student9): mistakes that passed, got a misleading name, or a generic hint
    "repeat_batch_axis": (
        "repeat_kv",
        [("repeat_interleave(n_rep, dim=1)", "repeat_interleave(n_rep, dim=0)")],
        "repeat_wrong_dim",
    ),
    "alibi_next_power_of_two": (
        "alibi_bias",
        [
            (
                "closest = 2 ** int(math.log2(num_heads))",
                "closest = 2 ** math.ceil(math.log2(num_heads))",
            ),
            ("slopes = geometric(closest)", "slopes = geometric(closest)[:num_heads]"),
        ],
        "alibi_next_power_of_two",
    ),
    "alibi_extra_slopes_first": (
        "alibi_bias",
        [
            (
                "torch.cat([slopes, geometric(2 * closest)[0::2][: num_heads - closest]])",
                "torch.cat([geometric(2 * closest)[0::2][: num_heads - closest], slopes])",
            )
        ],
        "alibi_slopes_reordered",
    ),
    "alibi_slopes_sorted": (
        "alibi_bias",
        [
            (
                "(-slopes.view(-1, 1, 1) * distance).float()",
                "(-slopes.sort().values.view(-1, 1, 1) * distance).float()",
            )
        ],
        "alibi_slopes_reordered",
    ),
    "bias_scale_ignored": (
        "relative_bias_attention",
        [
            (
                "scale = q.shape[-1] ** -0.5 if scale is None else scale",
                "scale = q.shape[-1] ** -0.5",
            )
        ],
        "bias_ignores_scale",
    ),
    "bias_fill_zero": (
        "relative_bias_attention",
        [('masked_fill(~mask, float("-inf"))', "masked_fill(~mask, 0.0)")],
        "mask_fill_zero",
    ),
    "repeat_expand_heads_axis": (
        "repeat_kv",
        [
            (
                "return x.repeat_interleave(n_rep, dim=1)",
                "return x.expand(x.shape[0], x.shape[1] * n_rep, *x.shape[2:])",
            )
        ],
        "repeat_expanded_heads",
    ),
    "mha_kv_kept_on_self": (
        "MultiHeadAttention",
        [
            (
                "k, v = repeat_kv(k, n_rep), repeat_kv(v, n_rep)",
                "if getattr(self, 'kv', None) is None:\n"
                "            self.kv = repeat_kv(k, n_rep), repeat_kv(v, n_rep)\n"
                "        k, v = self.kv",
            )
        ],
        "state_kept_across_calls",
    ),
    "mha_q_prescaled": (
        "MultiHeadAttention",
        [
            (
                "q = split_heads(self.q_proj(x), self.num_heads)",
                "q = split_heads(self.q_proj(x), self.num_heads) / math.sqrt(x.shape[-1] "
                "// self.num_heads)",
            )
        ],
        "scaled_twice",
    ),
    "mha_queries_from_context": (
        "MultiHeadAttention",
        [("split_heads(self.q_proj(x)", "split_heads(self.q_proj(context)")],
        "queries_from_context",
    ),
    "mha_kv_split_into_num_heads": (
        "MultiHeadAttention",
        [
            ("self.k_proj(context), self.num_kv_heads", "self.k_proj(context), self.num_heads"),
            ("self.v_proj(context), self.num_kv_heads", "self.v_proj(context), self.num_heads"),
            ("n_rep = self.num_heads // self.num_kv_heads", "n_rep = 1"),
        ],
        "kv_heads_miscounted",
    ),
    "mha_repeat_by_kv_heads": (
        "MultiHeadAttention",
        [("n_rep = self.num_heads // self.num_kv_heads", "n_rep = self.num_kv_heads")],
        "kv_heads_miscounted",
    ),
    "bucket_negated_in_place": (
        "relative_position_bucket",
        [("n = -relative_position.long()", "n = relative_position.long().neg_()")],
        "modified_input",
    ),
    "memory_detached_in_place": (
        "memory_attention",
        [("mem_k, mem_v = mem_k.detach(), mem_v.detach()", "mem_k.detach_(), mem_v.detach_()")],
        "memory_detached_in_place",
    ),
    "memory_triu_as_causal_mask": (
        "memory_attention",
        [
            (
                "causal_mask(length, device=q.device)",
                "torch.ones(length, length, dtype=torch.bool, device=q.device).triu(1)",
            )
        ],
        "causal_mask_inverted",
    ),
    "memory_segment_one_late": (
        "memory_attention",
        [
            (
                "segment_at = start + memory + torch.arange",
                "segment_at = start + memory + 1 + torch.arange",
            )
        ],
        "positions_off_by_one",
    ),
    "memory_queries_at_start": (
        "memory_attention",
        [("apply_rope(q, segment_at, base)", "apply_rope(q, start + torch.arange(length), base)")],
        "positions_restart",
    ),
    "memory_gate_softmax_over_heads": (
        "memory_attention",
        [("gate = torch.sigmoid(gate_logits)", "gate = torch.softmax(gate_logits, dim=-2)")],
        "gate_softmax",
    ),
    "memory_values_rotated": (
        "memory_attention",
        [
            (
                "from_memory, _ = attention(q, mem_k, mem_v)",
                "from_memory, _ = attention(q, mem_k, apply_rope(mem_v, memory_at, base))",
            ),
            (
                "attention(q, k, v, causal_mask",
                "attention(q, k, apply_rope(v, segment_at, base), causal_mask",
            ),
        ],
        "values_rotated",
    ),
    "memory_base_only_for_memory_keys": (
        "memory_attention",
        [
            (
                "apply_rope(q, segment_at, base), apply_rope(k, segment_at, base)",
                "apply_rope(q, segment_at), apply_rope(k, segment_at)",
            )
        ],
        "memory_ignores_base",
    ),
}


@pytest.mark.parametrize("mistake", BEGINNER_MISTAKES)
def test_beginner_mistake_is_named_on_every_seed(mistake, solution, capsys):
    cell, edits, key = BEGINNER_MISTAKES[mistake]
    bug = edited_solution(DAY, solution, cell, edits)
    assert_named(cell, bug, key, capsys)
    for seed in (11, 12, 13):  # hidden checks draw fresh inputs
        result = report(cell, bug, hidden=True, seed=seed)
        assert key in result.keys, (seed, [(r.key, r.message) for r in result.results])


def exp_log_einsum_rope(x, positions, base=10000.0):
    """theta = exp(-2i/D * log(base)) and an einsum outer product, all in x's dtype: equal to the
    reference in exact arithmetic, a few ulps off in float64 (once rejected as float32 angles)."""
    dim = x.shape[-1]
    if dim % 2:
        raise ValueError(f"D={dim} is odd")
    pair = torch.arange(0, dim, 2, dtype=x.dtype)
    theta = torch.exp(-pair / dim * math.log(base))
    angle = torch.einsum("...l,d->...ld", positions.to(x.dtype), theta)
    x1, x2 = x[..., : dim // 2], x[..., dim // 2 :]
    return torch.cat([x1 * angle.cos() - x2 * angle.sin(), x2 * angle.cos() + x1 * angle.sin()], -1)


def float64_then_float32_table(length, dim):
    position = torch.arange(length, dtype=torch.float64)[:, None]
    angle = position * 10000.0 ** (-torch.arange(0, dim, 2, dtype=torch.float64) / dim)
    return torch.stack([angle.sin(), angle.cos()], dim=-1).flatten(-2).float()


def index_select_repeat(x, n_rep):
    return x.index_select(1, torch.arange(x.shape[1] * n_rep) // n_rep)


def phase_shifted_sines(length, dim):
    """cos written as sin(x + pi/2), every column from its own (col - col % 2) exponent."""
    column = torch.arange(dim)
    frequency = 10000.0 ** (-(column - column % 2).double() / dim)
    phase = (column % 2).double() * (math.pi / 2)
    return torch.sin(torch.outer(torch.arange(length).double(), frequency) + phase).float()


def where_even_sin_else_cos(length, dim):
    column = torch.arange(dim)
    angle = torch.arange(length, dtype=torch.float32)[:, None] / torch.pow(
        10000.0, (column - column % 2).float() / dim
    )
    return torch.where(column % 2 == 0, torch.sin(angle), torch.cos(angle))


def floor_of_float64_buckets(
    relative_position, bidirectional=True, num_buckets=32, max_distance=128
):
    per_side = num_buckets // 2 if bidirectional else num_buckets
    max_exact = per_side // 2
    if max_exact < 1 or max_distance <= max_exact:
        raise ValueError(f"max_exact={max_exact}, max_distance={max_distance}")
    if bidirectional:
        offset = torch.where(relative_position > 0, per_side, 0)
        n = relative_position.abs()
    else:
        offset = torch.zeros_like(relative_position)
        n = (-relative_position).clamp(min=0)
    log_part = torch.log(n.double().clamp(min=1) / max_exact) / math.log(max_distance / max_exact)
    large = (max_exact + torch.floor(log_part * (per_side - max_exact))).long()
    return offset + torch.where(n < max_exact, n, large.clamp(max=per_side - 1))


def gathered_shaw(q, k, v, rel_k, max_relative_position, rel_v=None, mask=None):
    """q @ rel_k^T (..., Lq, 2P+1) gathered by distance; the weights scattered into distance
    buckets for rel_v."""
    p, lq, lk = max_relative_position, q.shape[-2], k.shape[-2]
    if rel_k.shape != (2 * p + 1, q.shape[-1]):
        raise ValueError(f"rel_k has shape {tuple(rel_k.shape)}")
    if rel_v is not None and rel_v.shape != (2 * p + 1, v.shape[-1]):
        raise ValueError(f"rel_v has shape {tuple(rel_v.shape)}")
    index = (torch.arange(lk)[None, :] - torch.arange(lk - lq, lk)[:, None]).clamp(-p, p) + p
    by_distance = q @ rel_k.T  # (..., Lq, 2P+1)
    relative = torch.gather(by_distance, -1, index.expand(*by_distance.shape[:-1], lk))
    scores = (q @ k.transpose(-1, -2) + relative) / math.sqrt(q.shape[-1])
    if mask is not None:
        scores = scores.masked_fill(~mask, -math.inf)
    weights = torch.softmax(scores, -1)
    out = weights @ v
    if rel_v is not None:
        buckets = torch.zeros(*weights.shape[:-1], 2 * p + 1, dtype=weights.dtype)
        out = out + buckets.scatter_add(-1, index.expand_as(weights), weights) @ rel_v
    return out, weights


def table_transposed_bias(
    q, k, v, bias_table, *, bidirectional=True, max_distance=128, mask=None, scale=None
):
    """bias_table.T[:, buckets] (H, Lq, Lk), and a softmax written out."""
    if bias_table.shape[-1] != q.shape[-3]:
        raise ValueError(f"bias_table has {bias_table.shape[-1]} heads")
    lq, lk = q.shape[-2], k.shape[-2]
    relative = torch.arange(lk) - (torch.arange(lq) + lk - lq).unsqueeze(-1)
    buckets = make_bucket()(relative, bidirectional, bias_table.shape[0], max_distance)
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    scores = q @ k.mT * scale + bias_table.T[:, buckets]
    if mask is not None:
        scores = torch.where(mask, scores, scores.new_tensor(-torch.inf))
    e = torch.exp(scores - scores.amax(-1, keepdim=True))
    weights = e / e.sum(-1, keepdim=True)
    return weights @ v, weights


def memory_before_zero(q, k, v, mem_k, mem_v, gate_logits, *, start=0, base=10000.0):
    """RoPE scores see only differences: the memory rotated at -M..-1, the segment at 0..L-1."""
    length, memory = q.shape[-2], mem_k.shape[-2]
    if mem_v.shape[-2] != memory or mem_k.shape[-1] != q.shape[-1]:
        raise ValueError("mem_k and mem_v do not fit")
    if gate_logits.shape != q.shape[:-1]:
        raise ValueError(f"gate_logits has shape {tuple(gate_logits.shape)}")
    segment = torch.arange(length)
    q, k = rope(q, segment, base), rope(k, segment, base)
    from_memory, _ = attention(
        q, rope(mem_k.detach(), torch.arange(-memory, 0), base), mem_v.detach()
    )
    local, _ = attention(q, k, v, torch.ones(length, length, dtype=torch.bool).tril())
    gate = gate_logits.sigmoid()
    return torch.lerp(local, from_memory, gate.unsqueeze(-1)), gate


def test_a_causal_mask_on_an_empty_memory_is_named_as_the_mask(solution):
    """causal_mask(L, M) on the memory keys refuses M = 0: the empty memory's check names the
    mask, not an empty memory left unhandled."""
    bug = edited_solution(
        DAY,
        solution,
        "memory_attention",
        [
            (
                "from_memory, _ = attention(q, mem_k, mem_v)",
                "from_memory, _ = attention(q, mem_k, mem_v, causal_mask(length, memory))",
            )
        ],
    )
    keys = [result.key for result in report("memory_attention", bug).results if not result.passed]
    assert keys and set(keys) == {"memory_masked"}, keys


def merge_into_new_zeros(x):
    """Head by head into x.new_zeros (which keeps x's dtype and device)."""
    batch, heads, length, head_dim = x.shape
    out = x.new_zeros(batch, length, heads * head_dim)
    for head in range(heads):
        out[..., head * head_dim : (head + 1) * head_dim] = x[:, head]
    return out


def repeat_by_cat_of_slices(x, n_rep):
    """Every head's n_rep copies, in a row, joined by one torch.cat."""
    return torch.cat([x[:, h : h + 1] for h in range(x.shape[1]) for _ in range(n_rep)], dim=1)


def float64_inside_rope(x, positions, base=10000.0):
    dim = x.shape[-1]
    if dim % 2:
        raise ValueError(f"D={dim} must be even")
    i = torch.arange(dim // 2, dtype=torch.float64)
    angle = positions.to(torch.float64).unsqueeze(-1) * torch.pow(
        torch.tensor(float(base), dtype=torch.float64), -2 * i / dim
    )
    x1, x2 = x.double()[..., : dim // 2], x.double()[..., dim // 2 :]
    out = torch.cat([x1 * angle.cos() - x2 * angle.sin(), x2 * angle.cos() + x1 * angle.sin()], -1)
    return out.to(x.dtype)


def odd_exponent_alibi(num_heads, lq, lk):
    """The extra slopes as the odd exponents 1, 3, 5, ... of 2n, and the bias as m * (j - pos_q)."""
    n = 2 ** math.floor(math.log2(num_heads))
    slopes = 2.0 ** (-8.0 * torch.arange(1, n + 1, dtype=torch.float64) / n)
    if n < num_heads:
        odd = torch.arange(1, 2 * (num_heads - n), 2, dtype=torch.float64)
        slopes = torch.cat([slopes, 2.0 ** (-8.0 * odd / (2 * n))])
    relative = torch.arange(lk)[None, :] - (torch.arange(lq)[:, None] + lk - lq)
    return (slopes[:, None, None] * relative).float()


def square_alibi_last_rows(num_heads, lq, lk):
    """The (lk, lk) bias of lk queries, of which the last lq rows are the answer."""
    slopes = torch.tensor(paper_get_slopes(num_heads)).view(-1, 1, 1)
    position = torch.arange(lk, dtype=torch.float32)
    square = -(position[:, None] - position[None, :]) * slopes
    return square[:, lk - lq :, :].float().contiguous()


def one_hot_bias(
    q, k, v, bias_table, *, bidirectional=True, max_distance=128, mask=None, scale=None
):
    """The bias as one_hot(buckets) @ bias_table, einsum scores, a torch.where mask."""
    heads, lq, dim, lk = q.shape[1], q.shape[2], q.shape[3], k.shape[-2]
    if bias_table.shape[-1] != heads:
        raise ValueError(f"bias_table has {bias_table.shape[-1]} heads, q has {heads}")
    relative = torch.arange(lk)[None, :] - torch.arange(lk - lq, lk)[:, None]
    num_buckets = bias_table.shape[0]
    buckets = make_bucket()(relative, bidirectional, num_buckets, max_distance)
    one_hot = F.one_hot(buckets, num_buckets).to(bias_table.dtype)
    bias = torch.einsum("qkn,nh->hqk", one_hot, bias_table)
    scale = dim**-0.5 if scale is None else scale
    scores = torch.einsum("bhqd,bhkd->bhqk", q, k) * scale + bias
    if mask is not None:
        scores = torch.where(mask, scores, float("-inf"))
    weights = torch.softmax(scores, dim=-1)
    return torch.einsum("bhqk,bhkd->bhqd", weights, v), weights


def float64_bias_by_head(
    q, k, v, bias_table, *, bidirectional=True, max_distance=128, mask=None, scale=None
):
    """float64 inside, the bias stacked head by head, blocked scores filled with float64's min."""
    heads, lq, dim, lk = q.shape[1], q.shape[2], q.shape[3], k.shape[2]
    if bias_table.ndim != 2 or bias_table.shape[1] != heads:
        raise ValueError("bias_table must be (num_buckets, H) with q's H")
    relative = torch.arange(lk)[None, :] - (torch.arange(lq) + lk - lq)[:, None]
    buckets = make_bucket()(relative, bidirectional, bias_table.shape[0], max_distance)
    bias = torch.stack([bias_table[:, h][buckets] for h in range(heads)]).double()
    scale = 1.0 / math.sqrt(dim) if scale is None else scale
    scores = scale * q.double() @ k.double().transpose(-1, -2) + bias
    if mask is not None:
        scores = scores.masked_fill(~mask, torch.finfo(torch.float64).min)
    weights = scores.softmax(-1)
    return (weights @ v.double()).to(q.dtype), weights.to(q.dtype)


@pytest.mark.parametrize(
    "name, impl",
    [
        ("apply_rope", exp_log_einsum_rope),
        ("sinusoidal_positions", float64_then_float32_table),
        ("repeat_kv", index_select_repeat),
        ("sinusoidal_positions", phase_shifted_sines),
        ("sinusoidal_positions", where_even_sin_else_cos),
        ("relative_position_bucket", floor_of_float64_buckets),
        ("shaw_relative_attention", gathered_shaw),
        ("relative_bias_attention", table_transposed_bias),
        ("memory_attention", memory_before_zero),
        ("merge_heads", merge_into_new_zeros),
        ("repeat_kv", repeat_by_cat_of_slices),
        ("apply_rope", float64_inside_rope),
        ("alibi_bias", odd_exponent_alibi),
        ("alibi_bias", square_alibi_last_rows),
        ("relative_bias_attention", one_hot_bias),
        ("relative_bias_attention", float64_bias_by_head),
    ],
    ids=[
        "rope_exp_log_einsum",
        "sinusoid_float64_cast",
        "repeat_index_select",
        "sinusoid_phase_shift",
        "sinusoid_where",
        "bucket_float64_floor",
        "shaw_gather_scatter",
        "bias_table_transposed",
        "memory_before_zero",
        "merge_new_zeros_loop",
        "repeat_cat_of_slices",
        "rope_float64_inside",
        "alibi_odd_exponents",
        "alibi_square_last_rows",
        "bias_one_hot",
        "bias_float64_by_head",
    ],
)
def test_beginners_correct_alternatives_pass(name, impl):
    for seed in (0, 1, 2, 1056, 1512190363):  # 1056 and 1512190363 once rejected the rope
        assert report(name, impl, hidden=seed != 0, seed=seed).passed, seed


# ----------------------------------------------------------------------------- clear errors


@pytest.mark.parametrize(
    "name, bug, example",
    [
        ("split_heads", split_unchecked, "d_model={d_model} is not divisible by"),
        ("MultiHeadAttention", make_mha(check_args=False), "d_model={d_model} is not divisible"),
        ("apply_rope", make_rope(check_dim=False), "D={x.shape[-1]} is odd"),
        ("relative_position_bucket", make_bucket(check_args=False), "max_distance={max_distance}"),
        ("shaw_relative_attention", make_shaw(check_tables=False), "rel_k has shape"),
        ("relative_bias_attention", make_relative_bias(check_heads=False), "bias_table has"),
        ("memory_attention", make_memory(check_shapes=False), "gate_logits must be"),
    ],
    ids=["split", "mha", "rope", "bucket", "shaw", "bias", "memory"],
)
def test_a_missing_value_error_is_shown_its_own_exercises_example(name, bug, example):
    hints = [r.hint for r in report(name, bug).results if r.key == "no_clear_error"]
    assert hints and all(f'raise ValueError(f"{example}' in hint for hint in hints), hints


# ----------------------------------------------------------------------------- the notebook's promises

# Each exercise's "The checks recognise: ..." list in the notebook, phrase by phrase, and the key a
# planted bug above is named under: every promise is kept by a test.
PROMISES = {
    "split_heads": {
        "a reshape without a transpose": "split_without_transpose",
        "heads that take strided features": "heads_interleaved",
        "not refused with a clear `ValueError`": "no_clear_error",
    },
    "merge_heads": {
        "a reshape without moving the heads axis back first": "merge_without_transpose",
    },
    "repeat_kv": {
        "heads tiled": "repeat_tiled",
        "the repeat along the wrong axis (the batch, `dim=0`, or the length)": "repeat_wrong_dim",
        "or without `dim=`": "repeat_flattened",
        "each head copied $n_{\\text{rep}} + 1$ times": "repeat_count_off",
    },
    "MultiHeadAttention": {
        "heads split without a transpose (all of them, or only the queries)": (
            "split_without_transpose"
        ),
        "scores scaled by $d_{\\text{model}}$": "scaled_by_d_model",
        "or scaled twice": "scaled_twice",
        "queries computed from `context`": "queries_from_context",
        "split into `num_heads` heads or repeated by the wrong count": "kv_heads_miscounted",
        "kept on `self` from an earlier call": "state_kept_across_calls",
        "a missing or mis-shaped projection": "missing_projection",
        "`context` or `mask` ignored": ("ignores_context", "ignores_mask"),
        "an inverted mask": "inverted_mask",
        "weights averaged over heads instead of per head": "weights_not_per_head",
        "weights returned when `need_weights=False`": "weights_when_not_needed",
        "paired with K/V head `h % Hkv`": "gqa_tiled",
        "bad head counts not refused with a `ValueError`": "no_clear_error",
    },
    "sinusoidal_positions": {
        "positions counted from 1": "positions_from_one",
        "concatenated in halves instead of interleaved": "sin_cos_halves",
        "sin and cos swapped": "sin_cos_swapped",
        "a frequency exponent of $i/d$ instead of $2i/d$": "frequency_exponent",
        "angles multiplied by $10000^{2i/d}$": "frequency_inverted",
    },
    "apply_rope": {
        "pairs $(2i, 2i+1)$ instead of $(i, i + D/2)$": "rope_interleaved_pairs",
        "rotation in the wrong direction": "rope_reversed",
        "$\\theta_i = \\text{base}^{-i/D}$": "rope_frequency",
        "positions offset by one": "positions_offset",
        "`positions` or `base` ignored": ("rope_ignores_positions", "rope_ignores_base"),
        "angles computed in float32 for a float64 input": "angles_in_float32",
        "a rotation that changes norms": "not_a_rotation",
        "an odd $D$ not refused with a `ValueError`": "no_clear_error",
    },
    "alibi_bias": {
        "slopes counted from $h = 0$": "alibi_slopes_from_zero",
        "the wrong sign": "alibi_sign",
        "(top-left)": "alibi_top_left",
        "future keys clipped to 0 or $|\\,i - j\\,|$ used": "alibi_clipped",
        "$2^{-8h/H}$ used when $H$ is not a power of two": "alibi_not_interpolated",
        "$H$ rounded up to the next power of two": "alibi_next_power_of_two",
        "the slopes sorted or the extra ones put first": "alibi_slopes_reordered",
    },
    "relative_position_bucket": {
        "the sign flipped (query − memory)": "bucket_sign",
        "`bidirectional=False` treated as bidirectional": "bucket_always_bidirectional",
        "an off-by-one at the exact/log boundary": "bucket_boundary",
        "no clamp at the last bucket": "bucket_not_clamped",
        "computed before halving": "bucket_not_halved",
        "the log part rounded instead of truncated": "bucket_rounded",
        "`relative_position` changed in place (`abs_()`)": "modified_input",
        "not refused with a `ValueError`": "no_clear_error",
    },
    "shaw_relative_attention": {
        "distances not clipped": "shaw_not_clipped",
        "the table indexed without the `+P` offset": "shaw_index_offset",
        "the distance taken as $i - j$": "shaw_sign",
        "queries top-left": "shaw_top_left",
        "`rel_v` ignored": "shaw_ignores_rel_v",
        "the relative term not divided by $\\sqrt{D}$": "shaw_rel_not_scaled",
        "the mask applied after the softmax": "mask_after_softmax",
        "tables of the wrong shape not refused with a `ValueError`": "no_clear_error",
    },
    "relative_bias_attention": {
        "buckets of query − memory": "bias_sign",
        "queries top-left": "bias_top_left",
        "the bias multiplied by the score scale": "bias_scaled",
        "the heads' biases mixed up (the table's axes)": "bias_wrong_heads",
        "or transposed (`.permute(2, 1, 0)`)": "bias_transposed",
        "`bidirectional` or `max_distance` not passed on": (
            "bias_ignores_bidirectional",
            "bias_ignores_max_distance",
        ),
        "the mask ignored or applied after the softmax": ("ignores_mask", "mask_after_softmax"),
        "blocked scores filled with 0": "mask_fill_zero",
        "the `scale` argument ignored": "bias_ignores_scale",
        "every head given head 0's bias": "bias_one_head",
        "not refused with a `ValueError`": "no_clear_error",
    },
    "memory_attention": {
        "the memory not detached": "memory_not_detached",
        "or detached in place (`mem_k.detach_()`": "memory_detached_in_place",
        "the segment's positions restarting at 0": "positions_restart",
        "(for `q`, `k` or both) or one off": ("positions_restart", "positions_off_by_one"),
        "or put through a softmax": "gate_softmax",
        "values rotated with RoPE too": "values_rotated",
        "the memory placed after the segment": "memory_after_segment",
        "the gate inverted": "gate_inverted",
        "the logits used without a sigmoid": "gate_not_squashed",
        "a local attention that is not causal": "local_not_causal",
        "causal mask is inverted (`triu(..., 1)`, True = blocked)": "causal_mask_inverted",
        "one softmax over the concatenation": "memory_concatenated",
        "a causal mask on the memory keys": "memory_masked",
        "memory keys not rotated or `base` not passed on (to any of `q`, `k`, `mem_k`)": (
            "memory_not_rotated",
            "memory_ignores_base",
        ),
        "a gate without its last axis": "gate_not_unsqueezed",
        "not handled or answered with the local attention alone (the gate skipped)": (
            "empty_memory",
            "gate_ignored_on_empty",
        ),
        "not refused with a `ValueError`": "no_clear_error",
    },
}


PLANTED_BUG_TESTS = {
    "split_heads": test_split_heads_bug_is_named,
    "merge_heads": test_merge_heads_bug_is_named,
    "repeat_kv": test_repeat_kv_bug_is_named,
    "MultiHeadAttention": test_multihead_attention_bug_is_named,
    "sinusoidal_positions": test_sinusoidal_positions_bug_is_named,
    "apply_rope": test_apply_rope_bug_is_named,
    "alibi_bias": test_alibi_bias_bug_is_named,
    "relative_position_bucket": test_relative_position_bucket_bug_is_named,
    "shaw_relative_attention": test_shaw_relative_attention_bug_is_named,
    "relative_bias_attention": test_relative_bias_attention_bug_is_named,
    "memory_attention": test_memory_attention_bug_is_named,
}


def planted(name) -> set:
    """The keys the planted bugs of exercise `name` are named under, here and in the beginner's
    mistakes."""
    beginners = {key for cell, _, key in BEGINNER_MISTAKES.values() if cell == name}
    return planted_keys(PLANTED_BUG_TESTS[name]) | beginners


@pytest.mark.parametrize("name, phrase", promised(PROMISES))
def test_the_notebook_lists_only_mistakes_the_checks_name(name, phrase):
    assert_promise_kept(DAY, PROMISES, name, phrase, planted(name))
