"""Checks for FlashAttentionTriton: the Triton forward and backward as a
torch.autograd.Function, gradients against float64 autograd."""

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
from grader.suites.day07_flash_triton.oracles import attention64, f64, out_suspects, qkv, visible


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
    elif variant != "causal_backward":
        p = p_true
    dv = p.transpose(-1, -2) @ dout
    dp = dout @ v.transpose(-1, -2)
    d = (dout * out).sum(-1, keepdim=True)
    ds = p * dp if variant == "no_d_term" else p * (dp - d)
    factor = {"grad_wrong_scale": 1.0, "grad_scale_twice": scale * scale}.get(variant, scale)
    return ds @ k * factor, ds.transpose(-1, -2) @ q * factor, dv


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


def expect_grads(grads, q, k, v, dout, causal, what):
    ref = grads64(q, k, v, dout, causal)
    variants = ["no_d_term", "grad_wrong_scale", "grad_scale_twice", "backward_lse_natural"] + (
        ["causal_backward"] if causal else []
    )
    wrong = {variant: grads64(q, k, v, dout, causal, variant) for variant in variants}
    for i, name in [(2, "dv"), (0, "dq"), (1, "dk")]:
        suspects = [
            ("grad_wrong_scale" if variant == "grad_scale_twice" else variant, wrong[variant][i])
            for variant in variants
            if not torch.allclose(wrong[variant][i], ref[i])
        ]
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
    expected = sorted(
        [tuple(q.shape), tuple(k.shape), tuple(v.shape), tuple(q.shape), tuple(q.shape[:-1])]
    )
    if shapes != expected:
        description, fix = hint("saves_attention_matrix")
        raise Mistake(
            f"forward saved tensors of shapes {shapes}, expected {expected} (q, k, v, out, "
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
    """with is_causal=True (bottom-right, Lq <= Lk, head_dim 16 or 32): output and dq, dk, dv"""
    cls = function_class(FlashAttentionTriton)
    Lq = draw(rng, 17, 28)
    Lk = Lq + draw(rng, 0, 1) * draw(rng, 1, 8)
    q, k, v = qkv(rng, (1, 1), Lq, Lk, (16, 32)[draw(rng, 0, 1)])
    what = f"q {tuple(q.shape)}, k {tuple(k.shape)}, is_causal=True"
    out, dout, grads, _ = run_function(cls, q, k, v, True, rng, what)
    expect_close(
        out,
        attention64(q, k, v, True)[0],
        q.dtype,
        f"FlashAttentionTriton.apply on {what}",
        out_suspects(q, k, v, True),
    )
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


def function_rejects_bad_input(FlashAttentionTriton, rng):
    """head_dim 24 gives a clear ValueError"""
    cls = function_class(FlashAttentionTriton)
    apply = guarded(cls.apply, "FlashAttentionTriton", FORBIDDEN)
    q, k, v = qkv(rng, (1, 1), draw(rng, 4, 9), draw(rng, 4, 9), 24)
    expect_value_error(lambda: apply(q, k, v, False), "head_dim 24", "no_error_for_bad_input")
