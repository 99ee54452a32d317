"""Checks for flash_attention_triton: (out, lse) from one Triton forward kernel, in bounds on
ragged lengths."""

import functools
import itertools

import torch

from grader.harness.checking import Mistake, expect_close, expect_value_error, hint
from grader.suites._common import draw, randn
from grader.suites.day07_flash_triton.kernel_watch import flash_dtype, run_device, watched
from grader.suites.day07_flash_triton.oracles import (
    ONLINE_SLIPS,
    attention64,
    call_flash,
    expect_attention,
    f64,
    gives_attention,
    nonfinite_mistake,
    out_suspects,
    qkv,
)


def one_leading_dim_only(flash) -> bool:
    """Is flash right on 2 heads as (2, L, D) but not on the same data as (1, 2, L, D)? Then BH
    (the grid, or lse's rows) came from q.shape[0], not from every leading dim."""
    q, k, v = (
        randn((2, L, 16), torch.Generator().manual_seed(L), flash_dtype()) for L in (20, 24, 24)
    )
    return gives_attention(flash, q, k, v) and not gives_attention(flash, q[None], k[None], v[None])


def max_across_rows(flash) -> bool:
    """Does each query row's max come from other rows too (tl.max(s, axis=0), or over the whole
    tile)? On 64 queries and keys (no ragged tile): right with scores near 0, and, when query 0
    alone scores near 200, right on query 0 but wrong on rows of its tile, whose scores near 0
    shifted by 200 underflow. A max of their own, or a max started at 0, is right on both."""
    gen = torch.Generator().manual_seed(64)
    q, k, v = (randn((1, 1, 64, 16), gen, flash_dtype()) for _ in range(3))
    if not gives_attention(flash, q, k, v):
        return False
    q, k = 0.1 * q, 1.0 + 0.1 * k  # every key near (1, ..., 1): q_0 . k / 4 near 200
    q[..., 0, :] = 50.0
    try:
        out = watched(flash, "a probe", q, k, v)[0]
    except Exception:  # noqa: BLE001  (out of bounds, or a crash: not this mistake)
        return False
    right = torch.isclose(f64(out), attention64(q, k, v)[0], rtol=1e-3, atol=1e-4).all(-1)
    return bool(right[..., 0].all() and not right.all())


def naming_flash_slips(check):
    """`check`, with a failure that two probes explain named: BH from one leading dim
    (leading_dims_not_flattened), a row max across rows (max_not_per_row)."""

    @functools.wraps(check)
    def check_naming_slips(flash, rng):
        try:
            check(flash, rng)
        except Mistake as mistake:
            if mistake.key in ("not_finite", "m_i_not_minus_inf") and max_across_rows(flash):
                found, why = "max_not_per_row", "a probe with one query of large scores"
            elif mistake.key in ("raised", "wrong_values", "not_finite") and (
                one_leading_dim_only(flash)
            ):
                found, why = "leading_dims_not_flattened", "right on (2, L, D), not on (1, 2, L, D)"
            else:
                raise
            seen = mistake.message.split(": it looks like")[0]  # what failed, not the old guess
            description, fix = hint(found)
            raise Mistake(
                f"{seen}\n      {why}: it looks like {description}.", fix, found
            ) from None

    return check_naming_slips


def flash_matches(flash, rng):
    """(out, lse) match float64 attention: Lq != Lk, ragged lengths, head_dim 16 and 32"""
    Lq = draw(rng, 17, 28)
    Lk = Lq + draw(rng, 1, 8)
    D = (16, 32)[draw(rng, 0, 1)]
    q, k, v = qkv(rng, (1, 2), Lq, Lk, D, scale=draw(rng, 2, 4))
    what = f"flash_attention_triton on q {tuple(q.shape)}, k {tuple(k.shape)}"
    expect_attention(call_flash(flash, what, q, k, v, False), q, k, v, False, what)


def flash_causal(flash, rng):
    """causal=True, bottom-right aligned (query i at position Lk - Lq + i), diagonal tiles masked"""
    Lq = draw(rng, 17, 32)
    Lk = Lq + draw(rng, 0, 1) * draw(rng, 1, 16)
    q, k, v = qkv(rng, (1, 1), Lq, Lk, 16, scale=2.0)
    what = f"flash_attention_triton(causal=True) on q {tuple(q.shape)}, k {tuple(k.shape)}"
    result = call_flash(flash, what, q, k, v, True)
    try:
        expect_attention(result, q, k, v, True, what)
    except Mistake as mistake:
        if mistake.key not in ("wrong_values", "not_finite", "causal_row_without_keys"):
            raise
        non_causal = mistake_without_mask(flash, q, k, v, what)
        if mistake.key != "wrong_values" and non_causal in ONLINE_SLIPS.values():
            seen = mistake.message.split(" It looks like")[0]  # the NaN seen, not the old guess
            description, fix = hint(non_causal)
            raise Mistake(
                f"{seen} With causal=False the same inputs show the slip: it looks like "
                f"{description}.",
                fix,
                non_causal,
            ) from None
        # does a query's output move when only keys after its position change?
        r = Lq // 2
        k2, v2 = k.clone(), v.clone()
        k2[..., Lk - Lq + r :, :] = randn(k2[..., Lk - Lq + r :, :].shape, rng)
        v2[..., Lk - Lq + r :, :] = randn(v2[..., Lk - Lq + r :, :].shape, rng) + 5
        out2 = call_flash(flash, what, q, k2, v2, True)[0]
        if not torch.allclose(
            result[0][..., :r, :], out2[..., :r, :], rtol=1e-4, atol=1e-5, equal_nan=True
        ):
            description, fix = hint("causal_wrong_side")
            raise Mistake(
                f"{what}: queries 0..{r - 1} changed when only keys from position "
                f"{Lk - Lq + r} on did: it looks like {description}.",
                fix,
                "causal_wrong_side",
            ) from None
        raise


def mistake_without_mask(flash, q, k, v, what) -> str | None:
    """The key of the mistake flash shows on these inputs with causal=False, or None if none:
    NaN rows of a causal run can come from a slip in the online softmax that the mask only
    brings out (l_i reset in the loop: a last tile whose keys are all masked gives 0 / 0)."""
    what = what.replace("causal=True", "causal=False")
    try:
        expect_attention(call_flash(flash, what, q, k, v, False), q, k, v, False, what)
    except Mistake as mistake:
        return mistake.key
    return None


def flash_skips_future_tiles(flash, rng):
    """causal=True skips the key tiles above the diagonal: fewer elements loaded than without"""
    L = draw(rng, 100, 128)
    q, k, v = qkv(rng, (1, 1), L, L, 16)
    what = f"flash_attention_triton on q, k, v {tuple(q.shape)}"
    loaded = {}
    for causal in (False, True):
        result, watch = call_flash(flash, f"{what}, causal={causal}", q, k, v, causal, counts=True)
        expect_attention(result, q, k, v, causal, f"{what}, causal={causal}")
        loaded[causal] = watch.elements_loaded
    # only the interpreter counts loads; compiled for a GPU both counts are 0
    if loaded[False] and loaded[True] >= loaded[False]:
        description, fix = hint("causal_tiles_not_skipped")
        raise Mistake(
            f"{what}: causal=True loaded {loaded[True]} elements, causal=False {loaded[False]}: "
            f"it looks like {description}.",
            fix,
            "causal_tiles_not_skipped",
        )


def flash_shapes(flash, rng):
    """any leading dims: (L, D), (B, L, D), (B, H, L, D); Lq = 1; L < 16; head_dim 64"""
    cases = [
        ((), draw(rng, 5, 15), draw(rng, 17, 30), 16, False),
        ((2,), draw(rng, 17, 24), draw(rng, 5, 15), 32, False),
        # Lk > 17: a loop stop one tile of 16 short then misses more than the diagonal key
        ((1, 1), 1, draw(rng, 18, 30), 16, True),
        ((1, 1), draw(rng, 3, 12), draw(rng, 12, 15), 64, True),
    ]
    for lead, Lq, Lk, D, causal in cases:
        q, k, v = qkv(rng, lead, Lq, Lk, D)
        what = f"flash_attention_triton(causal={causal}) on q {tuple(q.shape)}, k {tuple(k.shape)}"
        expect_attention(call_flash(flash, what, q, k, v, causal), q, k, v, causal, what)


def heads_transposed(shape, rng) -> tuple:
    """(t, memory): t of `shape` (B, H, L, D) as the non-contiguous transpose of a (B, L, H, D)
    tensor, and t's memory read as if t were contiguous (what a kernel sees without .contiguous())."""
    B, H, L, D = shape
    base = randn((B, L, H, D), rng, flash_dtype())
    return base.transpose(1, 2), base.reshape(shape)


def flash_unusual_inputs(flash, rng):
    """non-contiguous q, k, v (heads transposed), and rows whose scores are all below -100"""
    Lq, Lk = draw(rng, 5, 20), draw(rng, 17, 30)
    (q, q_mem), (k, k_mem), (v, v_mem) = (
        heads_transposed((1, 2, L, 16), rng) for L in (Lq, Lk, Lk)
    )
    what = f"flash_attention_triton on non-contiguous q {tuple(q.shape)}, k {tuple(k.shape)}"
    out, lse = call_flash(flash, what, q, k, v, False)
    suspects = []
    for used in itertools.product((q, q_mem), (k, k_mem), (v, v_mem)):
        if all(t is orig for t, orig in zip(used, (q, k, v))):
            continue
        written = attention64(*used)[0]  # in memory order, into a contiguous out ...
        suspects.append(("inputs_not_contiguous", written))
        if used[0] is q_mem:  # ... or into an out laid out like q (torch.empty_like)
            laid_out = written.reshape(-1).as_strided(q.shape, q.stride())
            suspects.append(("inputs_not_contiguous", laid_out))
    expect_close(
        out,
        attention64(q, k, v)[0],
        q.dtype,
        f"out of {what}",
        suspects + out_suspects(q, k, v, False),  # and the mistakes of contiguous inputs
        nonfinite=nonfinite_mistake(out, False) if isinstance(out, torch.Tensor) else None,
    )
    # q . k / 4 near -150 for every key: exp(s - 0) underflows to 0 unless m_i starts at -inf
    q = 6.0 + randn((1, 1, Lq, 16), rng, flash_dtype(), 0.3)
    k, v = -6.0 - randn((1, 1, Lk, 16), rng, flash_dtype(), 0.3), randn((1, 1, Lk, 16), rng)
    what = f"flash_attention_triton on q {tuple(q.shape)} with every score near -150"
    out, lse = call_flash(flash, what, q, k, v.to(q.dtype), False)
    if isinstance(out, torch.Tensor) and out.is_floating_point() and not out.isfinite().all():
        description, fix = hint("m_i_not_minus_inf")
        raise Mistake(
            f"{what} has NaN or inf where the answer is finite: it looks like {description}.",
            fix,
            "m_i_not_minus_inf",
        )
    expect_attention((out, lse), q, k, v.to(q.dtype), False, what)


def poisoned(t: torch.Tensor, extra: int = 4096) -> torch.Tensor:
    """A contiguous copy of t followed in memory by NaN."""
    storage = torch.full((t.numel() + extra,), float("nan"), dtype=t.dtype, device=run_device())
    view = storage[: t.numel()].view(t.shape)
    view.copy_(t)
    return view


def flash_in_bounds(flash, rng):
    """ragged last tiles (Lq, Lk not multiples of 16) stay inside q, k, v, out and lse"""
    Lq, Lk = draw(rng, 1, 15), 16 + draw(rng, 1, 15)
    q, k, v = (poisoned(t) for t in qkv(rng, (1, 1), Lq, Lk, 16))
    what = (
        f"flash_attention_triton on ragged q {tuple(q.shape)}, k {tuple(k.shape)} (NaN after them)"
    )
    out, lse = call_flash(flash, what, q, k, v, False)
    if (
        isinstance(out, torch.Tensor)
        and out.is_floating_point()
        and not torch.isfinite(out).all()
        # the NaN came from after the inputs only if the same inputs, followed by something
        # else, give none (a rescale that grows gives NaN wherever the inputs lie)
        and f64(call_flash(flash, what, q.clone(), k.clone(), v.clone(), False)[0]).isfinite().all()
    ):
        description, fix = hint("out_of_bounds")
        raise Mistake(
            f"{what}: the output has NaN, read from past the end of the inputs: it looks "
            f"like {description}.",
            fix,
            "out_of_bounds",
        )
    expect_attention((out, lse), q, k, v, False, what)


def flash_rejects_bad_input(flash, rng):
    """head_dim 24 or 48, mismatched head_dims or lengths, float64 on the CPU: a clear ValueError"""
    L = draw(rng, 4, 9)
    for D in (24, 48):  # 48: a multiple of 16 but not a power of two (tl.arange needs one)
        q, k, v = qkv(rng, (1, 1), L, L, D)
        expect_value_error(lambda: flash(q, k, v), f"head_dim {D}", "no_error_for_bad_input")
    q, k, v = qkv(rng, (1, 1), L, L, 16)
    expect_value_error(
        lambda: flash(q, randn((1, 1, L, 32), rng), randn((1, 1, L, 32), rng)),
        "q with head_dim 16, k and v with 32",
        "no_error_for_bad_input",
    )
    other = torch.float64 if run_device().type == "cpu" else torch.float32
    expect_value_error(
        lambda: flash(q, k.to(other), v.to(other)),
        f"q {q.dtype}, k and v {other}",
        "no_error_for_bad_input",
    )
    expect_value_error(
        lambda: flash(q, k, v[..., :-1, :]),
        f"k {tuple(k.shape)}, v {tuple(v[..., :-1, :].shape)}",
        "no_error_for_bad_input",
    )
    if run_device().type == "cpu":
        expect_value_error(
            lambda: flash(q.double(), k.double(), v.double()),
            "float64 on the CPU interpreter",
            "no_error_for_bad_input",
        )
