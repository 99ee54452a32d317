"""Checks for FlashAttentionTriton: the Triton forward and backward as a
torch.autograd.Function, gradients against float64 autograd."""

import collections
import math

import torch

from grader.harness.checking import (
    Mistake,
    NotImplementedYet,
    expect_close,
    expect_tensor,
    expect_value_error,
    guarded,
    hint,
    named,
)
from grader.harness.measuring import saved_tensors
from grader.suites._common import draw, randn
from grader.suites.day07_flash_triton.hints import FORBIDDEN
from grader.suites.day07_flash_triton.kernel_watch import expect_triton, watch_kernels, watched
from grader.suites.day07_flash_triton.oracles import (
    BLOCKS,
    attention64,
    f64,
    out_suspects,
    qkv,
    visible,
)


def function_class(impl):
    cls = getattr(impl, "__wrapped__", impl)  # the student's own class behind the guard's wrapper
    if not (isinstance(cls, type) and issubclass(cls, torch.autograd.Function)):
        try:
            impl()  # an untouched stub says so: "not implemented yet", not a wrong type
        except NotImplementedYet:
            raise
        except Exception:  # noqa: BLE001  (anything else: it is simply not a Function)
            pass
        raise named("not_an_autograd_function")
    return cls


def grads64(q, k, v, dout, causal, variant=None):
    """(dq, dk, dv) in float64 from the formulas, with one planted mistake."""
    q, k, v, dout = (f64(t) for t in (q, k, v, dout))
    scale = 1 / math.sqrt(q.shape[-1])
    keep = visible(q.shape[-2], k.shape[-2], causal)
    s = (q @ k.transpose(-1, -2)) * scale
    lse = torch.logsumexp(s.masked_fill(~keep, float("-inf")), -1)
    p = torch.exp(s - lse[..., None])
    p_true = p.masked_fill(~keep, 0.0)
    out = p_true @ v
    if variant == "backward_lse_natural":  # exp2(s * log2(e) - lse) = exp(s - lse * ln 2)
        p = torch.exp(s - lse[..., None] * math.log(2)).masked_fill(~keep, 0.0)
    elif variant == "scales_swapped":  # exp2(s * ds_scale - lse * log2(e)) = exp(s ln 2 - lse)
        p = torch.exp(s * math.log(2) - lse[..., None]).masked_fill(~keep, 0.0)
    elif variant == "lse_first_head":  # every head's P from head 0's lse
        p = torch.exp(s - first_head_everywhere(lse)[..., None]).masked_fill(~keep, 0.0)
    elif variant != "causal_backward":
        p = p_true
    dv = p.transpose(-1, -2) @ dout
    dp = dout @ v.transpose(-1, -2)
    d = {  # D_i = rowsum(dO_i * O_i), or what a slip in the preprocessing kernel sums
        "delta_of_dout": dout.sum(-1, keepdim=True),
        "delta_of_out_squared": (out * out).sum(-1, keepdim=True),
    }.get(variant, (dout * out).sum(-1, keepdim=True))
    if variant == "delta_first_head":
        d = first_head_everywhere(d[..., 0])[..., None]
    ds = p * dp if variant == "no_d_term" else p * (dp - d)
    factor = {
        "grad_wrong_scale": 1.0,
        "grad_scale_twice": scale * scale,
        "scales_swapped": scale / math.log(2),  # ds_scale given qk_scale = log2(e) / sqrt(d)
    }.get(variant, scale)
    dk = ds.transpose(-1, -2) @ (dout if variant == "dk_from_dout" else q) * factor
    return ds @ k * factor, dk, dv


def first_head_everywhere(t: torch.Tensor) -> torch.Tensor:
    """t (..., Lq) with every head's row replaced by the first head's: what a kernel reads from
    a per-row tensor (LSE, DELTA) loaded at offs_m instead of bh * Lq + offs_m."""
    rows = t.reshape(-1, t.shape[-1])
    return rows[:1].expand_as(rows).reshape(t.shape)


def split_tiles(t: torch.Tensor, b: int, dim: int) -> torch.Tensor:
    """t along `dim` (negative) zero-padded to whole tiles of b and split into (tiles, b): what
    a kernel with masked loads sees, tile by tile."""
    pad = [0, 0] * (-dim - 1) + [0, -t.shape[dim] % b]
    return torch.nn.functional.pad(t, pad).unflatten(dim, (-1, b))


def tile_slips64(q, k, v, dout, causal) -> list:
    """(key, gradient index, wrong gradient) for the slips inside a kernel whose tile shapes
    happen to agree (BLOCK_M = BLOCK_N = b, or = D), for each tile size b: the same code with
    other sizes is a shape error instead. In float64, from the formulas, tile by tile."""
    q, k, v, dout = (f64(t) for t in (q, k, v, dout))
    Lq, Lk, D = q.shape[-2], k.shape[-2], q.shape[-1]
    scale = 1 / math.sqrt(D)
    keep = visible(Lq, Lk, causal)
    p = torch.softmax((q @ k.transpose(-1, -2) * scale).masked_fill(~keep, float("-inf")), -1)
    out, dp = p @ v, dout @ v.transpose(-1, -2)
    d = (dout * out).sum(-1, keepdim=True)
    ds = p * (dp - d)
    slips = []
    for b in BLOCKS:
        # (..., Lq, Lk) -> (..., query tiles, b, key tiles, b): [m, a, n, c]
        p4, dp4, ds4 = (split_tiles(split_tiles(t, b, -1), b, -3) for t in (p, dp, ds))
        # dV += P dO: query a of the tile paired with key c, dO read at query c
        dv = torch.einsum("...manc,...mcd->...nad", p4, split_tiles(dout, b, -2))
        slips.append(("dv_p_not_transposed", 2, dv.flatten(-3, -2)[..., :Lk, :]))
        # dS = P * (dP - delta[None, :]): D of query c subtracted in column c
        d4 = split_tiles(d[..., 0], b, -1)[..., :, None, None, :]
        ds_wrong = (p4 * (dp4 - d4)).flatten(-2, -1).flatten(-3, -2)[..., :Lq, :Lk]
        slips += [
            ("delta_wrong_axis", 0, ds_wrong @ k * scale),
            ("delta_wrong_axis", 1, ds_wrong.mT @ q * scale),
        ]
        if b != D:
            continue
        # dQ += dS K^T (b = D): key i of the tile read as head dim i
        dq = torch.einsum("...mani,...nji->...maj", ds4, split_tiles(k, b, -2))
        slips.append(("dq_k_transposed", 0, dq.flatten(-3, -2)[..., :Lq, :] * scale))
        # D = tl.sum(o * do, axis=0) (a preprocess block of b = D rows): a column sum per row
        rows = split_tiles((dout * out).reshape(-1, D), b, -2).sum(-2).flatten()
        d_wrong = rows[: d.numel()].reshape(d.shape)
        ds_wrong = p * (dp - d_wrong)
        slips += [
            ("wrong_delta", 0, ds_wrong @ k * scale),
            ("wrong_delta", 1, ds_wrong.mT @ q * scale),
        ]
    return slips


def late_loop_starts64(q, k, v, dout) -> list:
    """("dkdv_loop_start", gradient index, wrong gradient) for causal dK/dV kernels whose loop
    over query tiles starts late: at start_n (the Lk - Lq shift dropped) or one tile past the
    right start, for each pair of tile sizes. The queries before the start are skipped, so
    their share of dK and dV is missing. In float64, from the formulas."""
    q, k, v, dout = (f64(t) for t in (q, k, v, dout))
    Lq, Lk, D = q.shape[-2], k.shape[-2], q.shape[-1]
    keep = visible(Lq, Lk, True)
    p = torch.softmax((q @ k.mT / math.sqrt(D)).masked_fill(~keep, float("-inf")), -1)
    dp = dout @ v.mT
    ds = p * (dp - (dout * (p @ v)).sum(-1, keepdim=True))  # (..., Lq, Lk)
    queries, keys = torch.arange(Lq)[:, None], torch.arange(Lk)
    slips = []
    for block_m in BLOCKS:
        for block_n in BLOCKS:
            start_n = keys // block_n * block_n  # the first key of each key's tile
            right = (start_n - (Lk - Lq)).clamp(min=0) // block_m * block_m
            for lo in (start_n // block_m * block_m, right + block_m):
                seen = queries >= lo  # (Lq, Lk): the queries the late loop still visits
                slips += [
                    ("dkdv_loop_start", 1, (ds * seen).mT @ q / math.sqrt(D)),
                    ("dkdv_loop_start", 2, (p * seen).mT @ dout),
                ]
    return slips


def run_function(cls, q, k, v, causal, rng, what, dout_transposed=False):
    """Forward and backward through the student's class, watched; returns (out, dout, grads,
    saved). With `dout_transposed`, dout is a non-contiguous view, as behind a downstream
    transpose."""
    apply = guarded(cls.apply, "FlashAttentionTriton", FORBIDDEN)
    leaves = [t.clone().requires_grad_() for t in (q, k, v)]
    out = watched(apply, f"FlashAttentionTriton.apply on {what}", *leaves, causal)
    expect_tensor(out, f"FlashAttentionTriton.apply on {what}", q.shape, q.dtype)
    saved = saved_tensors(out) or ()
    if dout_transposed:  # (..., D, L) memory seen as (..., L, D)
        dout = randn((*out.shape[:-2], out.shape[-1], out.shape[-2]), rng, out.dtype).mT
    else:
        dout = randn(out.shape, rng, out.dtype)
    backward = guarded(
        lambda: torch.autograd.grad(out, leaves, dout), "FlashAttentionTriton", FORBIDDEN
    )
    with watch_kernels() as watch:
        grads = backward()
    expect_triton(watch, f"the backward of FlashAttentionTriton on {what}", "backward_not_triton")
    return out, dout, grads, saved


def delta_rows_written(grads, ref, Lq: int) -> int:
    """How many rows (heads flattened) a preprocessing grid too small wrote D for, or 0: dV
    right (it needs no D), dK wrong, and dQ right exactly on its first rows, a head's Lq rows or
    whole blocks of them. The rows past them read D from uninitialised memory."""
    dq_dk_dv = [torch.isclose(f64(g), r, rtol=1e-3, atol=1e-4) for g, r in zip(grads, ref)]
    rows_right = dq_dk_dv[0].all(-1).reshape(-1)
    if not dq_dk_dv[2].all() or dq_dk_dv[1].all() or rows_right.all():
        return 0
    written = int((~rows_right).nonzero()[0])
    return written if written and any(written % size == 0 for size in (Lq, *BLOCKS)) else 0


def keys_written(grads, ref) -> int:
    """How many keys (of each head) a dK/dV grid too small wrote, or 0: dk and dv right on
    their first keys, a whole number of tiles, and never written (NaN) on every key past them,
    as with one program per query tile, triton.cdiv(Lq, BLOCK), instead of per key tile."""
    rows = []
    for g, r in zip(grads[1:], ref[1:]):
        g, r = f64(g).reshape(-1, *g.shape[-2:]), r.reshape(-1, *r.shape[-2:])
        rows.append((torch.isclose(g, r, rtol=1e-3, atol=1e-4).all(-1), g.isnan().all(-1)))
    right, unwritten = (torch.stack(parts).all(0).all(0) for parts in zip(*rows))  # (Lk,)
    if right.all() or not right[0]:
        return 0
    written = int((~right).nonzero()[0])
    if not unwritten[written:].all() or not any(written % size == 0 for size in BLOCKS):
        return 0
    return written


def expect_grads(grads, q, k, v, dout, causal, what):
    ref = grads64(q, k, v, dout, causal)
    variants = [
        "no_d_term",
        "grad_wrong_scale",
        "grad_scale_twice",
        "backward_lse_natural",
        "delta_of_dout",
        "delta_of_out_squared",
        "dk_from_dout",
        "scales_swapped",
        "lse_first_head",
        "delta_first_head",
    ] + (["causal_backward"] if causal else [])
    named_as = {
        "grad_scale_twice": "grad_wrong_scale",
        "delta_of_dout": "wrong_delta",
        "delta_of_out_squared": "wrong_delta",
        "scales_swapped": "backward_scales_swapped",
        "lse_first_head": "backward_head_offset",
        "delta_first_head": "backward_head_offset",
    }
    wrong = {variant: grads64(q, k, v, dout, causal, variant) for variant in variants}
    slips = tile_slips64(q, k, v, dout, causal) + (
        late_loop_starts64(q, k, v, dout) if causal else []
    )
    if written := delta_rows_written(grads, ref, q.shape[-2]):
        description, fix = hint("delta_rows_missing")
        raise Mistake(
            f"dv of {what} is right, dk wrong, and dq right on its first {written} rows (heads "
            f"flattened) only: it looks like {description}.",
            fix,
            "delta_rows_missing",
        )
    if written := keys_written(grads, ref):
        description, fix = hint("dkdv_grid_too_small")
        raise Mistake(
            f"dk and dv of {what} are right on the first {written} keys of each head and never "
            f"written (NaN) on the {k.shape[-2] - written} keys past them: it looks like "
            f"{description}.",
            fix,
            "dkdv_grid_too_small",
        )
    for i, name in [(2, "dv"), (0, "dq"), (1, "dk")]:
        suspects = [
            (named_as.get(variant, variant), wrong[variant][i])
            for variant in variants
            if not torch.allclose(wrong[variant][i], ref[i])
        ]
        # another input's gradient in this place: torch checks only the shapes, which can agree
        suspects += [
            ("backward_gradient_order", ref[j])
            for j in range(3)
            if j != i and ref[j].shape == ref[i].shape
        ]
        suspects += [(slip, grad) for slip, index, grad in slips if index == i]
        expect_close(grads[i], ref[i], q.dtype, f"{name} of {what}", suspects)


def function_forward(FlashAttentionTriton, rng):
    """apply(q, k, v, is_causal) equals float64 attention; forward saves q, k, v, out and one lse (..., Lq)"""
    cls = function_class(FlashAttentionTriton)
    Lq, Lk = draw(rng, 5, 15), draw(rng, 17, 30)
    q, k, v = qkv(rng, (1, 1), Lq, Lk, 16)
    what = f"q {tuple(q.shape)}, k {tuple(k.shape)}"
    apply = guarded(cls.apply, "FlashAttentionTriton", FORBIDDEN)
    leaves = [t.clone().requires_grad_() for t in (q, k, v)]
    out = watched(apply, f"FlashAttentionTriton.apply on {what}", *leaves, False)
    expect_close(
        out,
        attention64(q, k, v)[0],
        q.dtype,
        f"FlashAttentionTriton.apply on {what}",
        out_suspects(q, k, v, False),
    )
    saved = saved_tensors(out) or ()
    shapes = sorted(tuple(t.shape) for t in saved)
    # listed in the order of the names after it, compared in any order
    in_order = [tuple(q.shape), tuple(k.shape), tuple(v.shape), tuple(q.shape), tuple(q.shape[:-1])]
    expected = sorted(in_order)
    missing = collections.Counter(expected) - collections.Counter(shapes)
    if missing and not collections.Counter(shapes) - collections.Counter(expected):
        description, fix = hint("not_saved_for_backward")
        raise Mistake(
            f"forward saved tensors of shapes {shapes}, expected {in_order} (q, k, v, out, "
            f"lse): {sorted(missing.elements())} missing; it looks like {description}.",
            fix,
            "not_saved_for_backward",
        )
    if shapes != expected:
        description, fix = hint("saves_attention_matrix")
        raise Mistake(
            f"forward saved tensors of shapes {shapes}, expected {in_order} (q, k, v, out, "
            f"lse): it looks like {description}.",
            fix,
            "saves_attention_matrix",
        )


def function_gradients(FlashAttentionTriton, rng):
    """dq, dk, dv match autograd through float64 attention (3-D inputs, ragged lengths, Lq != Lk)"""
    cls = function_class(FlashAttentionTriton)
    for lead, D, (Lq, Lk) in [((2,), 16, (draw(rng, 9, 16), draw(rng, 17, 30)))]:
        q, k, v = qkv(rng, lead, Lq, Lk, D)
        what = f"q {tuple(q.shape)}, k {tuple(k.shape)}"
        out, dout, grads, _ = run_function(cls, q, k, v, False, rng, what)
        expect_close(
            out,
            attention64(q, k, v)[0],
            q.dtype,
            f"FlashAttentionTriton.apply on {what}",
            out_suspects(q, k, v, False),
        )
        expect_grads(grads, q, k, v, dout, False, what)
        what += ", dout non-contiguous"
        _, dout, grads, _ = run_function(cls, q, k, v, False, rng, what, dout_transposed=True)
        read_as_contiguous = dout.mT.reshape(
            dout.shape
        )  # what a kernel reads without .contiguous()
        suspects = grads64(q, k, v, read_as_contiguous, False)
        for i, name in [(2, "dv"), (0, "dq"), (1, "dk")]:
            expect_close(
                grads[i],
                grads64(q, k, v, dout, False)[i],
                q.dtype,
                f"{name} of {what}",
                [("dout_not_contiguous", suspects[i])],
            )


def function_causal_gradients(FlashAttentionTriton, rng):
    """with is_causal=True (bottom-right, Lq < Lk, also by more than a tile, head_dim 16 or 32): output and dq, dk, dv"""
    cls = function_class(FlashAttentionTriton)
    Lq = draw(rng, 17, 28)
    Lk = Lq + draw(rng, 1, 8)  # Lk > Lq: a loop that drops the Lk - Lq shift shows
    q, k, v = qkv(rng, (1, 1), Lq, Lk, (16, 32)[draw(rng, 0, 1)])
    what = f"q {tuple(q.shape)}, k {tuple(k.shape)}, is_causal=True"
    out, dout, grads, _ = run_function(cls, q, k, v, True, rng, what)
    expect_causal_output(out, q, k, v, what)
    try:
        expect_grads(grads, q, k, v, dout, True, what)
    except Mistake as mistake:
        if mistake.key != "wrong_values":
            raise
        _, dout2, grads2, _ = run_function(cls, q, k, v, False, rng, what.replace("True", "False"))
        ref = grads64(q, k, v, dout2, False)
        if all(
            torch.isfinite(g).all() and float((g.double() - r).norm() / r.norm()) < 1e-4
            for g, r in zip(grads2, ref)
        ):
            description, fix = hint("causal_backward")
            raise Mistake(
                f"{mistake.message} With is_causal=False the same inputs give the right "
                f"gradients: it looks like {description}.",
                fix,
                "causal_backward",
            ) from None
        raise
    expect_far_keys_gradients(cls, rng, Lk - Lq)


def expect_causal_output(out, q, k, v, what: str) -> None:
    """The forward's output with is_causal=True against the float64 one."""
    expect_close(
        out,
        attention64(q, k, v, True)[0],
        q.dtype,
        f"FlashAttentionTriton.apply on {what}",
        out_suspects(q, k, v, True),
    )


def expect_far_keys_gradients(cls, rng, near: int):
    """Causal gradients with Lk - Lq past the largest tile: the first key tiles' dK/dV loop
    start, start_n - (Lk - Lq), is then below 0 by a tile or more (with a shift `near` under
    a tile, `//` rounding toward 0 makes an unclamped start 0 anyway), and Lq and Lk need
    different numbers of tiles, whatever the tile size."""
    Lq = draw(rng, 3, 9)
    Lk = Lq + max(BLOCKS) + draw(rng, 1, 8)
    q, k, v = qkv(rng, (1, 1), Lq, Lk, 16)
    what = f"q {tuple(q.shape)}, k {tuple(k.shape)}, is_causal=True"
    try:
        out, dout, grads, _ = run_function(cls, q, k, v, True, rng, what)
    except Mistake as mistake:
        if mistake.key != "out_of_bounds" or not mistake.message.startswith("the backward"):
            raise
        seen = mistake.message.split(": it looks like")[0]  # what strayed, not the usual guess
        description, fix = hint("dkdv_loop_start_unclamped")
        raise Mistake(
            f"{seen}, though with Lk - Lq = {near} it stayed in bounds: it looks like "
            f"{description}.",
            fix,
            "dkdv_loop_start_unclamped",
        ) from None
    expect_causal_output(out, q, k, v, what)
    expect_grads(grads, q, k, v, dout, True, what)


def function_rejects_bad_input(FlashAttentionTriton, rng):
    """head_dim 24 gives a clear ValueError"""
    cls = function_class(FlashAttentionTriton)
    apply = guarded(cls.apply, "FlashAttentionTriton", FORBIDDEN)
    q, k, v = qkv(rng, (1, 1), draw(rng, 4, 9), draw(rng, 4, 9), 24)
    expect_value_error(lambda: apply(q, k, v, False), "head_dim 24", "no_error_for_bad_input")
