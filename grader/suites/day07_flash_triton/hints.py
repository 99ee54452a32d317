"""What day07's checks tell the student: HINTS, the mistakes they name, and FORBIDDEN, what
the student's functions must not call."""

import course.reference.flash_triton
from grader.harness.guard import SDPA, SOFTMAX

HINTS = {
    "no_triton_kernel": (
        "no Triton kernel launched: the result was computed with torch operations",
        "launch your @triton.jit kernel with kernel[grid](...); torch may only allocate the "
        "output, reshape and check the inputs.",
    ),
    "out_of_bounds": (
        "a load or store outside the tensors (a lane past the end of the last, partial block)",
        "mask every tl.load and tl.store of a block that can stick out: offsets < n for rows "
        "and columns, e.g. tl.load(ptr + offs, mask=offs < n, other=0.0).",
    ),
    "grid_too_small": (
        "the last elements never written: the grid has n // BLOCK programs instead of ceil(n / BLOCK)",
        "launch triton.cdiv(n, BLOCK) programs and mask the last block with offsets < n.",
    ),
    "non_contiguous": (
        "wrong values for non-contiguous inputs (a transpose or a strided slice) though right "
        "for contiguous ones",
        "the kernel assumes rows one after the other: call .contiguous() on the inputs (or pass "
        "the strides) before launching.",
    ),
    "padding_counted": (
        "the padded lanes of the block counted in the sum: loaded with other=0.0, so each adds exp(0 - max)",
        "load the lanes past n_cols with other=float('-inf'): exp(-inf) = 0 leaves max and sum alone.",
    ),
    "padding_wins_max": (
        "the padded lanes in the max: loaded as 0.0, they win it for a row far below 0, so "
        "exp(x - 0) is 0 everywhere and the row is 0 / 0",
        "load the lanes past n_cols with other=float('-inf'), so they never win the max and add "
        "exp(-inf) = 0 to the sum.",
    ),
    "softmax_not_divided": (
        "exp(x - max) not divided by its row sum (returned as is, or divided by its max, 1)",
        "y = e / tl.sum(e, axis=0): the row sum of e = exp(x - max) is the softmax denominator.",
    ),
    "softmax_exp2": (
        "tl.exp2(x) without log2(e): a softmax in base 2",
        "use tl.exp(x), or tl.exp2(x * 1.4426950408889634) (e^x = 2^(x log2 e)).",
    ),
    "wrong_axis": (
        "softmax over the wrong axis (columns instead of rows)",
        "one program per row: normalise along the last axis, tl.max(x, axis=0) and "
        "tl.sum(x, axis=0) over the row's block.",
    ),
    "not_stable": (
        "inf or NaN for large inputs: exp() of an unshifted score overflows",
        "subtract the (running) max before exp: exp(x - max) is at most 1.",
    ),
    "head_offset": (
        "a per-head base offset with the wrong length: K/V at bh * Lq * D (or Q at bh * Lk * D), "
        "right for the first head only",
        "each tensor steps over its own rows: q and out at bh * Lq * HEAD_DIM, k and v at "
        "bh * Lk * HEAD_DIM, lse at bh * Lq.",
    ),
    "causal_tiles_not_skipped": (
        "the key tiles above the diagonal loaded with causal=True: the loop runs to Lk and only "
        "masks them",
        "with causal=True stop the key loop at hi = tl.minimum(Lk, Lk - Lq + start_m + BLOCK_M): "
        "the tiles from hi on are all in the future and must not be loaded.",
    ),
    "causal_loop_bound": (
        "a causal key loop that stops too early (hi = start_m + BLOCK_M, top-left, or "
        "Lk - Lq + start_m, one tile short): the last queries of a tile miss keys they may see",
        "a program's last query sits at Lk - Lq + start_m + BLOCK_M - 1, so loop up to "
        "hi = tl.minimum(Lk, Lk - Lq + start_m + BLOCK_M).",
    ),
    "not_a_pair": (
        "something other than the pair (out, lse)",
        "return out, lse: out (..., Lq, D) in q's dtype, lse (..., Lq) float32.",
    ),
    "missing_rescale": (
        "the online softmax without any rescale: acc and l summed tile by tile with the "
        "newest max only",
        "when the running max grows from m_i to m_new, multiply both l_i and acc by "
        "alpha = exp(m_i - m_new) before adding the new tile.",
    ),
    "rescale_l_not_acc": (
        "l rescaled when the max changes but acc not",
        "acc holds sums of exp(s - m_i) * v, so it needs the same alpha = exp(m_i - m_new) as l: "
        "acc = acc * alpha[:, None] + tl.dot(p, v).",
    ),
    "rescale_acc_not_l": (
        "acc rescaled when the max changes but l not",
        "l_i holds sums of exp(s - m_i) too, so it needs the same alpha = exp(m_i - m_new): "
        "l_i = l_i * alpha + tl.sum(p, axis=1).",
    ),
    "m_i_not_minus_inf": (
        "a running max that starts at 0 instead of -inf: a row whose scores are all very "
        "negative gets exp(s - 0) = 0 everywhere, l = 0 and out = 0 / 0",
        'start it at -inf: m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32).',
    ),
    "inputs_not_contiguous": (
        "wrong values for non-contiguous q, k, v (a transpose of the heads axis) though right "
        "for contiguous ones",
        "reshape may return a strided view: flatten with t.reshape(-1, L, D).contiguous() "
        "before the launch.",
    ),
    "dout_not_contiguous": (
        "gradients wrong for a non-contiguous dout (the gradient of a transposed output) though "
        "right for a contiguous one",
        "the kernels read dO row by row: dout.reshape(-1, Lq, D).contiguous() in backward.",
    ),
    "not_normalised": (
        "the output not divided by the softmax denominator l",
        "after the last key tile, out = acc / l_i[:, None].",
    ),
    "pad_keys_not_masked": (
        "the keys past Lk in the last, partial tile counted (their score 0 added to the softmax)",
        "set the scores of keys with offs_n >= Lk to -inf (tl.where) before the max and exp: "
        "masking the load alone gives them score 0, not -inf.",
    ),
    "wrong_scale": (
        "scores scaled by something other than 1 / sqrt(D) (no scale, 1 / D, or exp2 without "
        "log2(e) folded in)",
        "s = (q @ k^T) / sqrt(D); with tl.exp2, multiply the scores by log2(e) / sqrt(D) and "
        "keep m_i in the same base-2 units.",
    ),
    "lse_base2": (
        "the logsumexp in base 2 (m + log2(l) in exp2 units) instead of the natural log",
        "with exp2, m_i is in log2 units: lse = (m_i + tl.log2(l_i)) * ln(2); or work in "
        "natural units with tl.exp and tl.log.",
    ),
    "lse_without_max": (
        "the logsumexp without the running max (log(l) alone)",
        "lse_i = m_i + log(l_i): l_i is a sum of exp(s - m_i).",
    ),
    "causal_ignored": (
        "causal=True ignored: every query sees every key",
        "with causal=True, key j is visible to query i only when j <= Lk - Lq + i.",
    ),
    "causal_top_left": (
        "a top-left causal mask (query i sees keys j <= i) instead of the course's bottom-right one",
        "query i sits at absolute position Lk - Lq + i (day02's causal_mask): keep key j when "
        "j <= Lk - Lq + i, and loop over key tiles up to min(Lk, Lk - Lq + start_m + BLOCK_M).",
    ),
    "causal_wrong_side": (
        "the causal mask on the wrong side of the diagonal (later keys kept, or the diagonal dropped)",
        "in the diagonal tile keep key j for query i when j <= Lk - Lq + i: tl.where(offs_n[None, :] "
        "<= (Lk - Lq) + offs_m[:, None], s, float('-inf')).",
    ),
    "not_an_autograd_function": (
        "FlashAttentionTriton is not a torch.autograd.Function subclass",
        "class FlashAttentionTriton(torch.autograd.Function) with @staticmethod forward(ctx, q, k, "
        "v, is_causal=False) and backward(ctx, dout); it is used as FlashAttentionTriton.apply(...).",
    ),
    "saves_attention_matrix": (
        "forward saving the (Lq, Lk) attention matrix (or something else than q, k, v, out and one lse)",
        "ctx.save_for_backward(q, k, v, out, lse): five tensors, lse of shape (..., Lq); the "
        "backward recomputes P = exp(S - lse) tile by tile.",
    ),
    "backward_not_triton": (
        "a backward pass that launches no Triton kernel",
        "write the backward in Triton: a kernel for D = rowsum(dO * O), one for dK, dV per key "
        "tile, one for dQ per query tile (or atomics for dQ).",
    ),
    "no_d_term": (
        "dS = P * dP, without the D term",
        "dS = P * (dP - D[:, None]) with D_i = rowsum(dO_i * O_i) (the softmax Jacobian's row term); "
        "compute D in a small preprocessing kernel.",
    ),
    "grad_wrong_scale": (
        "dQ and dK off by the softmax scale (missing, or applied twice)",
        "S = scale * Q K^T, so dQ = scale * dS K and dK = scale * dS^T Q (once each); dV = P^T dO "
        "has no scale.",
    ),
    "causal_backward": (
        "gradients right without a mask but wrong with is_causal=True",
        "recompute P with the forward's causal mask (keys j <= Lk - Lq + i), and start / stop the "
        "tile loops where the forward does: the backward must zero exactly the same entries.",
    ),
    "backward_lse_natural": (
        "P recomputed as exp2(s - lse) with lse still in natural log (s in base-2 units)",
        "the forward stored lse in natural log: convert it for exp2, "
        "P = tl.exp2(s - lse * 1.4426950408889634) (log2(e)); or use tl.exp with natural-unit "
        "scores.",
    ),
    "no_error_for_bad_input": (
        "bad input accepted without a clear error",
        "check shapes, head_dim and dtype first and raise ValueError naming them, e.g. "
        '`raise ValueError(f"head_dim must be one of (16, 32, 64, 128), got {D}")`.',
    ),
}

LIBRARY = "course.reference.flash_triton is the course's library version: write yours."
FORBIDDEN = {
    **{
        name: "use tl.max, tl.exp and tl.sum inside your kernel; no torch softmax."
        for name in SOFTMAX
    },
    **{
        name: "write the attention in your Triton kernel; F.scaled_dot_product_attention is what "
        "you compare against in the Measure section, not what you call."
        for name in SDPA
    },
    **{
        fn: LIBRARY
        for fn in (
            course.reference.flash_triton.triton_add,
            course.reference.flash_triton.triton_softmax,
            course.reference.flash_triton.flash_attention_triton,
            course.reference.flash_triton._forward,
            course.reference.flash_triton._backward,
            course.reference.flash_triton.flash_attention,
            course.reference.flash_triton.FlashAttentionTriton.forward,
            course.reference.flash_triton.FlashAttentionTriton.backward,
        )
    },
}
try:  # day06's PyTorch version, when it exists: not a shortcut either
    import course.reference.online_softmax as _day06

    FORBIDDEN.update(
        {
            fn: "course.reference.online_softmax is day06's library version: today's answer is a Triton kernel."
            for name in ("tiled_attention", "flash_attention_torch")
            if callable(fn := getattr(_day06, name, None)) and hasattr(fn, "__code__")
        }
    )
    for _name in ("forward", "backward"):
        _fn = getattr(getattr(_day06, "FlashAttentionTorch", None), _name, None)
        if hasattr(_fn, "__code__"):
            FORBIDDEN[_fn] = (
                "course.reference.online_softmax is day06's library version: today's answer is a Triton kernel."
            )
except Exception:  # noqa: BLE001  (absent or broken: nothing to forbid)
    pass
