"""Attention in float64 from its definition, each named mistake planted in it, and the
watched call of the student's (out, lse) that the flash checks share."""

import math

import torch

from grader.harness.checking import Mistake, expect_close, expect_tensor, hint, named
from grader.suites._common import randn
from grader.suites.day07_flash_triton.kernel_watch import (
    flash_dtype,
    watched,
    watched_with_counts,
)

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


def attention64(q, k, v, causal=False, kind="bottom_right", scale=None, keep=None):
    """(out, lse) in float64, from the definition; `keep` (Lq, Lk) replaces the causal mask."""
    keep = visible(q.shape[-2], k.shape[-2], causal, kind) if keep is None else keep
    s = scores64(q, k, scale).masked_fill(~keep, float("-inf"))
    lse = torch.logsumexp(s, -1)
    p = torch.exp(s - lse[..., None])
    return p @ f64(v), lse


def untransposed64(q, k, v, causal, block_n):
    """Attention with each key tile's scores computed as q @ k, without tl.trans(k): a
    (BLOCK_N, D) tile read as (D, BLOCK_N), which only runs when BLOCK_N = D. Score (i, c) of
    tile t is sum_a q[i, a] * k[t * BLOCK_N + a, c]; the masks still go by column index."""
    Lq, Lk, D = q.shape[-2], k.shape[-2], q.shape[-1]
    k_padded = torch.nn.functional.pad(f64(k), (0, 0, 0, -Lk % block_n))  # masked loads: 0
    tiles = k_padded.unflatten(-2, (-1, block_n))  # (..., tiles, BLOCK_N, D)
    s = torch.einsum("...ia,...tac->...itc", f64(q), tiles).flatten(-2)[..., :Lk]  # (..., Lq, Lk)
    s = (s / math.sqrt(D)).masked_fill(~visible(Lq, Lk, causal), float("-inf"))
    return torch.softmax(s, -1) @ f64(v)


def short_loop64(q, k, v, block_m, block_n, top_left):
    """Causal attention whose key loop stops at hi = start_m + BLOCK_M (top-left) or
    Lk - Lq + start_m (one tile short): the keys of the tiles from hi on are never seen."""
    Lq, Lk = q.shape[-2], k.shape[-2]
    start_m = torch.arange(Lq) // block_m * block_m
    hi = (start_m + block_m if top_left else Lk - Lq + start_m).clamp(max=Lk)
    seen_until = -(-hi // block_n) * block_n  # every tile with start_n < hi is visited
    keep = visible(Lq, Lk, True) & (torch.arange(Lk)[None, :] < seen_until[:, None])
    return attention64(q, k, v, keep=keep)[0]  # a row with no key left is NaN, as in a kernel


def loop_bound_suspects(q, k, v):
    """What a causal kernel gives with its key loop stopping too early, for each tile size."""
    exact = attention64(q, k, v, True)[0]
    suspects = [
        short_loop64(q, k, v, block_m, block_n, top_left)
        for block_m in BLOCKS
        for block_n in BLOCKS
        for top_left in (True, False)
    ]
    return [
        ("causal_loop_bound", wrong)
        for wrong in suspects
        if not torch.allclose(wrong, exact, equal_nan=True)
    ]


def heads_from(t: torch.Tensor, rows: int, length: int) -> torch.Tensor | None:
    """t's heads as a kernel reads them when head bh starts at row bh * rows (not bh * length);
    None when the last head would run past t (the bounds watch names that)."""
    flat = f64(t).reshape(-1, t.shape[-1])
    heads = flat.shape[0] // length
    if (heads - 1) * rows + length > flat.shape[0]:
        return None
    return torch.stack([flat[h * rows : h * rows + length] for h in range(heads)]).reshape(t.shape)


def head_offset_suspects(q, k, v, causal):
    """Every head after the first read from K/V at bh * Lq * D, or from Q at bh * Lk * D."""
    Lq, Lk = q.shape[-2], k.shape[-2]
    if Lq == Lk or q[..., 0, 0].numel() < 2:
        return []
    k_wrong, v_wrong, q_wrong = heads_from(k, Lq, Lk), heads_from(v, Lq, Lk), heads_from(q, Lk, Lq)
    suspects = []
    if k_wrong is not None:
        suspects.append(("head_offset", attention64(q, k_wrong, v_wrong, causal)[0]))
    if q_wrong is not None:
        suspects.append(("head_offset", attention64(q_wrong, k, v, causal)[0]))
    return suspects


# the slips online64 can plant, and the mistake each is named as
ONLINE_SLIPS = {
    "missing_rescale": "missing_rescale",
    "rescale_l_not_acc": "rescale_l_not_acc",
    "rescale_acc_not_l": "rescale_acc_not_l",
    "rescale_after_tile": "rescale_after_tile",  # acc = (acc + P V) * alpha
    "l_reset": "state_reset_in_loop",  # l_i = 0 inside the key loop
    "acc_reset": "state_reset_in_loop",
    "m_reset": "state_reset_in_loop",
}


def online64(q, k, v, causal, block_n, variant):
    """The online softmax tile by tile in float64 with one planted mistake (a key of
    ONLINE_SLIPS, or pad_keys_not_masked)."""
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
        if variant == "m_reset":  # the old sums then get alpha = exp(-inf - m_new) = 0
            m = torch.full_like(m, float("-inf"))
        if variant == "l_reset":
            l = torch.zeros_like(l)
        if variant == "acc_reset":
            acc = torch.zeros_like(acc)
        m_new = torch.maximum(m, tile.amax(-1))
        p = torch.exp(tile - m_new[..., None])
        pv = p @ v[..., start : start + block_n, :]
        alpha = torch.exp(m - m_new)
        l_kept = variant in ("missing_rescale", "rescale_acc_not_l")
        l = l + p.sum(-1) if l_kept else alpha * l + p.sum(-1)
        if variant == "rescale_after_tile":
            acc = alpha[..., None] * (acc + pv)
        elif variant in ("missing_rescale", "rescale_l_not_acc"):
            acc = acc + pv
        else:
            acc = alpha[..., None] * acc + pv
        m = m_new
    return acc / l[..., None]


def out_suspects(q, k, v, causal):
    Lk, D = k.shape[-2], q.shape[-1]
    suspects = []
    for block_n in BLOCKS:
        if block_n < Lk:
            suspects += [
                (key, online64(q, k, v, causal, block_n, variant))
                for variant, key in ONLINE_SLIPS.items()
                # a reset shows on the last tile a query visits, which a causal kernel's loop
                # bound decides and online64, looping to Lk, does not see
                if not (causal and key == "state_reset_in_loop")
            ]
        if Lk % block_n and not causal:
            suspects.append(
                ("pad_keys_not_masked", online64(q, k, v, causal, block_n, "pad_keys_not_masked"))
            )
        if block_n == D:  # tl.dot(q, k) runs only on square tiles
            suspects.append(("k_not_transposed", untransposed64(q, k, v, causal, block_n)))
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
        suspects += [
            (key, wrong) for key, wrong in loop_bound_suspects(q, k, v) if wrong.isfinite().all()
        ]
    return suspects + head_offset_suspects(q, k, v, causal)


def lse_suspects(q, k, causal):
    s = scores64(q, k).masked_fill(~visible(q.shape[-2], k.shape[-2], causal), float("-inf"))
    lse = torch.logsumexp(s, -1)
    top = s.amax(-1)
    return [
        ("lse_base2", lse / math.log(2)),
        # m_i converted to natural log, log2(l_i) not: top + log(l) / ln 2
        ("lse_base2", top + (lse - top) / math.log(2)),
        # m_i left in log2 units, log(l_i) natural: m_i + tl.log(l_i)
        ("lse_base2", top / math.log(2) + (lse - top)),
        ("lse_without_max", lse - top),
    ]


def expect_no_short_loop(out, q, k, v, what):
    """NaN rows exactly where a causal key loop that stops too early leaves queries no key."""
    for key, wrong in loop_bound_suspects(q, k, v):
        if out.shape == wrong.shape and torch.allclose(
            f64(out), wrong, rtol=1e-3, atol=1e-4, equal_nan=True
        ):
            description, fix = hint(key)
            raise Mistake(
                f"out of {what} has NaN rows (queries that saw no key) and matches the rest: "
                f"it looks like {description}.",
                fix,
                key,
            )


def qkv(rng, lead, Lq, Lk, D, scale=1.0):
    dtype = flash_dtype()
    return (
        randn((*lead, Lq, D), rng, dtype, scale),
        randn((*lead, Lk, D), rng, dtype),
        randn((*lead, Lk, D), rng, dtype),
    )


def call_flash(flash, what, q, k, v, causal, counts=False):
    """The student's (out, lse), watched (and the KernelWatch with `counts`)."""
    try:
        result, watch = watched_with_counts(flash, what, q, k, v, causal=causal)
    except Mistake as mistake:
        if mistake.key != "out_of_bounds":
            raise
        seen = mistake.message.split(": it looks like")[0]  # what strayed, not the usual guess
        if first_head_is_right(flash, q, k, v, causal):
            found, why = "head_offset", "the first head alone stays in bounds and is right"
        elif square_grid_is_right(flash, q.shape[-1], causal):
            found = "grid_axes_swapped"
            why = "with as many heads as query tiles it stays in bounds and is right"
        else:
            raise
        description, fix = hint(found)
        raise Mistake(f"{seen}; {why}: it looks like {description}.", fix, found) from None
    if not isinstance(result, tuple) or len(result) != 2:
        raise Mistake(
            f"{what} returned {type(result).__name__}: it looks like {hint('not_a_pair')[0]}.",
            hint("not_a_pair")[1],
            "not_a_pair",
        )
    return (result, watch) if counts else result


def gives_attention(flash, q, k, v, causal=False) -> bool:
    """Is flash right, out and lse, and in bounds on these inputs? (Raising anything: no.)"""
    try:
        out, lse = watched(flash, "a probe", q, k, v, causal=causal)
        ref_out, ref_lse = attention64(q, k, v, causal)
        return torch.allclose(f64(out), ref_out, rtol=1e-3, atol=1e-4) and torch.allclose(
            f64(lse), ref_lse, rtol=1e-3, atol=1e-4
        )
    except Exception:  # noqa: BLE001  (out of bounds, a crash, a wrong shape: not right)
        return False


def square_grid_is_right(flash, D: int, causal: bool) -> bool:
    """Is the kernel right, in bounds, on 2 heads of 2 query tiles (for some tile size)? A grid
    (BH, query tiles) launched for a kernel that reads (query tile, bh) then covers it all."""
    for block_m in BLOCKS:
        q, k, v = (
            randn((1, 2, L, D), torch.Generator().manual_seed(L), flash_dtype())
            for L in (block_m + 3, block_m + 7, block_m + 7)
        )
        if gives_attention(flash, q, k, v, causal):
            return True
    return False


def first_head_is_right(flash, q, k, v, causal) -> bool:
    """With several heads, does the first head alone, (1, L, D), stay in bounds and come out
    right? Then what strayed is the step from one head to the next."""
    if q[..., 0, 0].numel() < 2:
        return False
    return gives_attention(flash, *(t.reshape(-1, *t.shape[-2:])[:1] for t in (q, k, v)), causal)


def nonfinite_mistake(out: torch.Tensor, causal: bool) -> Mistake | None:
    """Why out has NaN or inf, where the checks' scores (|s| < 30) cannot overflow exp: every
    row is NaN when alpha grows (the first tile's alpha = exp(m_new - (-inf)) = inf); only some
    rows when a causal mask or loop leaves them no key (a single query row: that, with causal)."""
    rows_bad = ~f64(out).isfinite().all(-1)
    if rows_bad.all() and not (causal and out.shape[-2] == 1):
        return named("alpha_inverted")
    return named("causal_row_without_keys") if causal else None


def expect_attention(result, q, k, v, causal, what):
    out, lse = result
    ref_out, ref_lse = attention64(q, k, v, causal)
    nonfinite = None
    if isinstance(out, torch.Tensor) and not f64(out).isfinite().all():
        if causal:
            expect_no_short_loop(out, q, k, v, what)
        nonfinite = nonfinite_mistake(out, causal)
    expect_close(
        out,
        ref_out,
        q.dtype,
        f"out of {what}",
        out_suspects(q, k, v, causal),
        nonfinite=nonfinite,
    )
    expect_tensor(lse, f"lse of {what}", ref_lse.shape, torch.float32)
    # lse is float32 whatever the inputs; judged with the inputs' tolerance
    expect_close(lse.to(q.dtype), ref_lse, q.dtype, f"lse of {what}", lse_suspects(q, k, causal))
