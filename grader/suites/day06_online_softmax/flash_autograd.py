"""Checks for FlashAttentionTorch: the tiled forward saving one logsumexp, and the tiled
backward, as a torch.autograd.Function."""

import contextlib
import math

import torch

from grader.harness.checking import (
    Mistake,
    expect_close,
    expect_tensor,
    guarded,
    named,
    relative_error,
)
from grader.harness.measuring import measuring, saved_tensors
from grader.suites._common import draw, randn
from grader.suites.day06_online_softmax.hints import FORBIDDEN, HINTS
from grader.suites.day06_online_softmax.oracles import causal_rule, dense64, dense_max64, qkv
from grader.suites.day06_online_softmax.tiled_attention import MatmulFlops


def dense_grads64(
    q,
    k,
    v,
    d_out,
    mask=None,
    use_D=True,
    scale_grads=True,
    backward_mask=True,
    transpose=True,
    D_per_query=True,
    recompute_scale=True,
):
    """(dq, dk, dv) in float64 by the FlashAttention-2 formulas on the full matrix, with the named
    mistakes switchable: use_D=False drops D; scale_grads=False drops 1/sqrt(d) from dq and dk;
    backward_mask=False recomputes p = exp(s - lse) from unmasked scores, a bool tensor from
    scores under that mask instead of the forward's; transpose=False gives
    dk = ds q and dv = p dO (their shapes fit when Lq == Lk only); D_per_query=False sums D over
    every query into one number; recompute_scale=False recomputes p from unscaled q kᵀ."""
    q, k, v, d_out = q.double(), k.double(), v.double(), d_out.double()
    scale = q.shape[-1] ** -0.5
    out, lse = dense64(q, k, v, mask)
    s = q @ k.transpose(-2, -1) * (scale if recompute_scale else 1.0)
    if mask is not None and backward_mask is not False:
        s = s.masked_fill(~(mask if backward_mask is True else backward_mask), float("-inf"))
    lse = torch.where(torch.isinf(lse), torch.full_like(lse, float("inf")), lse)
    p = torch.exp(s - lse.unsqueeze(-1))
    dv = (p.transpose(-2, -1) if transpose else p) @ d_out  # (..., Lk, dv)
    dp = d_out @ v.transpose(-2, -1)
    D = (d_out * out).sum(-1, keepdim=True) if D_per_query else (d_out * out).sum()
    ds = p * (dp - D) if use_D else p * dp  # (..., Lq, Lk)
    g = scale if scale_grads else 1.0
    return ds @ k * g, (ds.transpose(-2, -1) if transpose else ds) @ q * g, dv


def autograd64(q, k, v, d_out, mask=None):
    """(dq, dk, dv): float64 autograd through dense attention (the gradients' oracle)."""
    leaves = [t.detach().double().requires_grad_() for t in (q, k, v)]
    out, _ = dense64(*leaves, mask)
    return torch.autograd.grad(out, leaves, d_out.double())


def function_class(impl):
    cls = getattr(impl, "__wrapped__", impl)  # the student's own class behind the guard's wrapper
    if not (isinstance(cls, type) and issubclass(cls, torch.autograd.Function)):
        impl()  # a stub function still says "not implemented yet"
        raise Mistake(
            f"FlashAttentionTorch should be a torch.autograd.Function subclass, got {cls!r}.",
            hint="class FlashAttentionTorch(torch.autograd.Function): with "
            "@staticmethod forward(ctx, q, k, v, is_causal=False) and backward(ctx, d_out).",
            key="not_a_function",
        )
    return cls


def run_flash(impl, q, k, v, causal, d_out=None, watch_backward=None, explain=True):
    """out, and (dq, dk, dv) when d_out is given: forward by .apply and backward by calling
    FlashAttentionTorch.backward(out.grad_fn, d_out), both under the guard; the backward inside
    the context manager `watch_backward`, when given. A crash in backward is explained where a
    square tile shows why (explain_backward_crash), unless explain=False."""
    cls = function_class(impl)
    forbidden = FORBIDDEN
    leaves = [t.detach().clone().requires_grad_() for t in (q, k, v)]
    out = guarded(cls.apply, "FlashAttentionTorch", forbidden)(*leaves, causal)
    if d_out is None:
        return out, leaves
    expect_tensor(
        out, "FlashAttentionTorch.apply(q, k, v)'s output", (*q.shape[:-1], v.shape[-1]), q.dtype
    )
    ctx = out.grad_fn
    if ctx is None:
        raise named("autograd_broken")
    try:
        with watch_backward or contextlib.nullcontext():
            grads = guarded(cls.backward, "FlashAttentionTorch", forbidden)(ctx, d_out)
    except Mistake as raised:
        if explain and raised.key == "raised":
            explain_backward_crash(impl, raised)
        raise
    if not isinstance(grads, (tuple, list)) or len(grads) < 3:
        raise Mistake(
            f"FlashAttentionTorch.backward returned {type(grads).__name__}, expected "
            f"(dq, dk, dv, None).",
            HINTS["autograd_broken"][1],
            "autograd_broken",
        )
    return out, grads[:3]


def explain_backward_crash(impl, raised: Mistake) -> None:
    """After backward crashed: if it runs on one square tile (5 queries, 5 keys) and gives there
    what dv = p dO or dk = ds q gives (shapes that fit only when a tile is square), name that
    mistake; else return, and the crash stands."""
    rng = torch.Generator().manual_seed(0)
    q, k, v = qkv(rng, 5, 5, torch.float64, leading=(2,))
    d_out = randn((2, 5, v.shape[-1]), rng, torch.float64)
    try:
        _, grads = run_flash(impl, q, k, v, False, d_out, explain=False)
    except Mistake:
        return
    untransposed = dense_grads64(q, k, v, d_out, transpose=False)
    for key, name, index in (("dv_not_transposed", "dv", 2), ("dk_not_transposed", "dk", 1)):
        got = grads[index]
        if isinstance(got, torch.Tensor) and got.shape == untransposed[index].shape:
            if relative_error(got, untransposed[index]) <= 1e-8:
                description, fix = HINTS[key]
                raise Mistake(
                    f"{raised.message}\n      With 5 queries and 5 keys (one square tile) it "
                    f"runs, and its {name} is what {description} gives.",
                    fix,
                    key,
                ) from None


def expect_grads(grads, q, k, v, d_out, mask, what, causal_only=False):
    refs = autograd64(q, k, v, d_out, mask)
    wrong = [  # (key, (dq, dk, dv)), None for a gradient the mistake leaves right
        ("missing_D_term", dense_grads64(q, k, v, d_out, mask, use_D=False)),
        ("grad_missing_scale", dense_grads64(q, k, v, d_out, mask, scale_grads=False)),
        ("D_not_per_query", dense_grads64(q, k, v, d_out, mask, D_per_query=False)),
        ("grad_scores_unscaled", dense_grads64(q, k, v, d_out, mask, recompute_scale=False)),
    ]
    for tile in (64, 32):  # dk and dv overwritten: the last query tile's share (it sees every key)
        last = slice((q.shape[-2] - 1) // tile * tile, None)
        rows = [t[..., last, :] for t in (q, d_out)]
        _, dk, dv = dense_grads64(rows[0], k, v, rows[1], None if mask is None else mask[last])
        wrong.append(("grad_overwritten", (None, dk, dv)))
    if mask is not None:
        unmasked = dense_grads64(q, k, v, d_out, mask, backward_mask=False)
        wrong.append(("causal_backward_unmasked", unmasked))
        top_left = causal_rule(q.shape[-2], k.shape[-2], offset=0)
        if not torch.equal(top_left, mask):
            grads_top_left = dense_grads64(q, k, v, d_out, mask, backward_mask=top_left)
            wrong.append(("causal_top_left", grads_top_left))
    if q.shape[-2] == k.shape[-2]:  # square: p dO and ds q have the right shapes
        untransposed = dense_grads64(q, k, v, d_out, mask, transpose=False)
        wrong.append(("dk_not_transposed", (None, untransposed[1], None)))
        wrong.append(("dv_not_transposed", (None, None, untransposed[2])))
    for name, grad, ref, index in zip(("dq", "dk", "dv"), grads, refs, range(3)):
        suspects = [
            (key, values[index])
            for key, values in wrong
            if values[index] is not None and relative_error(values[index], ref) > 1e-6
        ]
        try:
            expect_close(
                grad,
                ref,
                q.dtype,
                what=f"{what}: {name}",
                suspects=suspects,
                nonfinite=named("grad_not_finite"),
            )
        except Mistake as mistake:
            if causal_only and mistake.key in ("wrong_values",):
                description, fix = HINTS["grads_wrong_only_causal"]
                raise Mistake(
                    f"{mistake.message} Without causal the gradients are right: it looks "
                    f"like {description}.",
                    fix,
                    "grads_wrong_only_causal",
                ) from None
            raise


def grads_right_without_causal(impl, rng, Lq, Lk):
    q, k, v = qkv(rng, Lq, Lk, torch.float64, leading=(2,))
    d_out = randn((2, Lq, v.shape[-1]), rng, torch.float64)
    _, grads = run_flash(impl, q, k, v, False, d_out)
    refs = autograd64(q, k, v, d_out)
    return all(
        isinstance(g, torch.Tensor) and g.shape == r.shape and relative_error(g, r) <= 1e-8
        for g, r in zip(grads, refs)
    )


def expect_flash_out(out, q, k, v, causal):
    """FlashAttentionTorch's output against dense attention, naming a forward without the scale
    or without the causal mask."""
    mask = causal_rule(q.shape[-2], k.shape[-2]) if causal else None
    suspects = [("missing_scale", dense64(q, k, v, mask, scale=1.0)[0])]
    if causal:
        suspects.append(("forward_ignores_causal", dense64(q, k, v)[0]))
    expect_close(
        out,
        dense64(q, k, v, mask)[0],
        q.dtype,
        what=f"FlashAttentionTorch.apply(q {tuple(q.shape)}, k {tuple(k.shape)}, v, {causal})",
        suspects=suspects,
    )


def flash_forward(FlashAttentionTorch, rng):
    """FlashAttentionTorch.apply(q, k, v, is_causal) matches dense attention (both causal values)"""
    Lq, Lk = draw(rng, 40, 70), draw(rng, 66, 100)
    q, k, v = qkv(rng, Lq, Lk)
    for causal in (False, True):
        out, _ = run_flash(FlashAttentionTorch, q, k, v, causal)
        expect_flash_out(out, q, k, v, causal)


def flash_saves_lse(FlashAttentionTorch, rng):
    """saves q, k, v, out and exactly one logsumexp (..., Lq) (natural log), no (Lq, Lk) tensor"""
    Lq, Lk = draw(rng, 20, 30), draw(rng, 34, 40)  # Lq * Lk above any of q, k, v, out (d <= 16)
    q, k, v = qkv(rng, Lq, Lk, leading=(2, 3))
    for causal in (False, True):
        out, _ = run_flash(FlashAttentionTorch, q, k, v, causal)
        saved = saved_tensors(out) if isinstance(out, torch.Tensor) else None
        if saved is None:
            raise named("autograd_broken")
        big = [t for t in saved if t.numel() >= math.prod(q.shape[:-2]) * Lq * Lk]
        if big:
            description, fix = HINTS["saves_too_much"]
            raise Mistake(
                f"ctx.saved_tensors holds a tensor of shape {tuple(big[0].shape)} for Lq = "
                f"{Lq}, Lk = {Lk}: it looks like {description}.",
                fix,
                "saves_too_much",
            )
        stats = [t for t in saved if tuple(t.shape) == (*q.shape[:-2], Lq)]
        if len(stats) > 1:
            raise named("saves_two_stats")
        if not stats:
            raise named("no_lse_saved")
        mask = causal_rule(Lq, Lk) if causal else None
        _, ref = dense64(q, k, v, mask)
        m = dense_max64(q, k, mask)
        expect_close(
            stats[0],
            ref,
            q.dtype,
            what=f"the saved logsumexp (causal={causal})",
            suspects=[
                ("lse_base2", ref / math.log(2)),
                ("lse_base2", m + (ref - m) / math.log(2)),
                ("lse_missing_max", ref - m),
                *([("forward_ignores_causal", dense64(q, k, v)[1])] if causal else []),
            ],
        )
        shapes = sorted(tuple(t.shape) for t in saved)
        for tensor, name in ((q, "q"), (k, "k"), (v, "v"), (out, "out")):
            if tuple(tensor.shape) not in shapes:
                raise Mistake(
                    f"ctx.saved_tensors has no tensor shaped like {name} {tuple(tensor.shape)} "
                    f"(saved: {shapes}).",
                    HINTS["no_lse_saved"][1],
                    "missing_saved",
                )


def wrong_grads(impl, rng, Lq, Lk) -> list:
    """The names of the non-causal gradients that are wrong for q (2, Lq, d), k (2, Lk, d)."""
    q, k, v = qkv(rng, Lq, Lk, torch.float64, leading=(2,))
    d_out = randn((2, Lq, v.shape[-1]), rng, torch.float64)
    _, grads = run_flash(impl, q, k, v, False, d_out)
    return [
        name
        for name, g, r in zip(("dq", "dk", "dv"), grads, autograd64(q, k, v, d_out))
        if not (isinstance(g, torch.Tensor) and g.shape == r.shape and relative_error(g, r) <= 1e-8)
    ]


def explain_by_one_tile(impl, rng, raised: Mistake) -> None:
    """After wrong gradients on several tiles: gradients right when every length fits one tile
    (5 queries, 7 keys) name a per-tile mistake, by which gradient is wrong. D summed over one
    key tile spoils dq and dk only; p @ dO for dv (its shapes fit on square tiles) dv only."""
    if wrong_grads(impl, rng, 5, 7):
        return
    wrong = wrong_grads(impl, rng, 66, 88)
    key = {("dq", "dk"): "D_per_tile", ("dv",): "dv_not_transposed"}.get(tuple(wrong))
    if key is None:
        return
    description, fix = HINTS[key]
    raise Mistake(
        f"{raised.message}\n      With 5 queries and 7 keys (one tile) the gradients are "
        f"right; with several tiles {' and '.join(wrong)} are wrong: it looks like {description}.",
        fix,
        key,
    ) from None


def flash_gradients(FlashAttentionTorch, rng):
    """gradients dq, dk, dv match float64 autograd through dense attention (non-causal, Lq != Lk)"""
    # Lk > 64: several key tiles of the usual 64 (per-tile mistakes show), Lq < Lk.
    Lq, Lk = draw(rng, 66, 80), draw(rng, 81, 100)
    q, k, v = qkv(rng, Lq, Lk, torch.float64, leading=(2,))
    d_out = randn((2, Lq, v.shape[-1]), rng, torch.float64)
    _, grads = run_flash(FlashAttentionTorch, q, k, v, False, d_out)
    try:
        expect_grads(
            grads, q, k, v, d_out, None, f"backward for q {tuple(q.shape)}, k {tuple(k.shape)}"
        )
    except Mistake as raised:
        if raised.key == "wrong_values":
            explain_by_one_tile(FlashAttentionTorch, rng, raised)
        raise


def flash_backward_skips_masked_tiles(FlashAttentionTorch, rng):
    """causal backward skips the tiles above the diagonal, as forward does"""
    L = 256 + draw(rng, 0, 8)  # 4 tiles of 64: skipping gives 62% of the work, 128-tiles 75%
    q, k, v = qkv(rng, L, L, leading=(1,))
    d_out = randn((1, L, v.shape[-1]), rng)
    flops = {}
    for causal in (False, True):
        counter = MatmulFlops()
        with measuring(f"{MatmulFlops.__module__}:MatmulFlops", counter.absorb):
            run_flash(FlashAttentionTorch, q, k, v, causal, d_out, watch_backward=counter)
        flops[causal] = counter.flops
    if flops[False] and flops[True] > 0.8 * flops[False]:
        seen = (
            f"with L = {L}, the causal backward did {flops[True] / flops[False]:.0%} of the "
            f"matmul work of the non-causal one (skipping the tiles above the diagonal gives "
            f"about 62% with tiles of 64)"
        )
        # A product of (L, L): one tile holds every query and key, and no tile is left to skip
        one_tile = counter.largest == (L, L)
        if one_tile:
            seen += f", and its largest matrix product was {counter.largest}"
        key = "backward_one_tile" if one_tile else "backward_computes_masked_tiles"
        description, fix = HINTS[key]
        raise Mistake(f"{seen}: it looks like {description}.", fix, key)


def flash_causal_gradients(FlashAttentionTorch, rng):
    """causal gradients (bottom-right): Lq == Lk, Lq < Lk, and Lq > Lk (masked rows: zero, finite)"""
    L = draw(rng, 66, 90)
    right_otherwise = grads_right_without_causal(FlashAttentionTorch, rng, 66, 70)
    for Lq, Lk in [(L, L), (draw(rng, 10, 50), L), (L, draw(rng, 20, 50))]:
        q, k, v = qkv(rng, Lq, Lk, torch.float64, leading=(2,))
        d_out = randn((2, Lq, v.shape[-1]), rng, torch.float64)
        out, grads = run_flash(FlashAttentionTorch, q, k, v, True, d_out)
        expect_flash_out(out, q, k, v, True)  # a wrong forward is no backward's mistake
        try:
            expect_grads(
                grads,
                q,
                k,
                v,
                d_out,
                causal_rule(Lq, Lk),
                f"causal backward for q {tuple(q.shape)}, k {tuple(k.shape)}",
                causal_only=right_otherwise,
            )
        except Mistake as raised:
            if raised.key == "wrong_values":  # wrong without causal too: a per-tile mistake?
                explain_by_one_tile(FlashAttentionTorch, rng, raised)
            raise


def flash_autograd_and_shapes(FlashAttentionTorch, rng):
    """real autograd: .backward() fills q.grad, k.grad, v.grad; (L, D) and (B, H, L, D) inputs; gradcheck"""
    cls = function_class(FlashAttentionTorch)
    for leading in ((), (2, 2)):
        Lq, Lk = draw(rng, 3, 6), draw(rng, 3, 6)
        q, k, v = qkv(rng, Lq, Lk, torch.float64, leading=leading)
        d_out = randn((*leading, Lq, v.shape[-1]), rng, torch.float64)
        for causal in (False, True):
            out, leaves = run_flash(FlashAttentionTorch, q, k, v, causal)
            expect_flash_out(out, q, k, v, causal)
            try:
                out.backward(d_out)
            except Exception as exc:
                crash = Mistake(f"out.backward(...) raised {type(exc).__name__}: {exc}")
                explain_backward_crash(FlashAttentionTorch, crash)
                raise Mistake(
                    crash.message, HINTS["autograd_broken"][1], "autograd_broken"
                ) from None
            expect_grads(
                [t.grad for t in leaves],
                q,
                k,
                v,
                d_out,
                causal_rule(Lq, Lk) if causal else None,
                f"autograd with q {tuple(q.shape)}, causal={causal}",
            )
    q, k, v = qkv(rng, 4, 5, torch.float64, leading=(1,))
    inputs = tuple(t.requires_grad_() for t in (q, k, v))
    try:
        ok = torch.autograd.gradcheck(lambda a, b, c: cls.apply(a, b, c, True), inputs)
    except Exception as exc:  # gradcheck runs backward more than once on one graph
        if "modified by an inplace operation" in str(exc):
            description, fix = HINTS["lse_modified_in_place"]
            raise Mistake(
                f"torch.autograd.gradcheck, which runs backward more than once, raised: "
                f"{str(exc).splitlines()[0]} It looks like {description}.",
                fix,
                "lse_modified_in_place",
            ) from None
        ok = False
    if not ok:
        raise Mistake(
            "torch.autograd.gradcheck (finite differences, float64) disagrees with your "
            "backward for causal q (1, 4, d), k (1, 5, d).",
            hint="compare dq, dk, dv with autograd through a naive float64 attention on a "
            "tiny example.",
            key="gradcheck",
        )
