"""What day07's checks tell the student: HINTS, the mistakes they name, the crashes that are
the signature of one mistake (`naming_crashes`), and FORBIDDEN, what the student's functions
must not call."""

import contextlib
import functools
import math
import re

import course.reference.flash_triton
from grader.harness.checking import Mistake, crashed_with, hint
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
    "offsets_without_block_start": (
        "offsets without pid * BLOCK, or a pid that is always 0 (tl.program_id(1) on a 1-D "
        "grid): every program covers the first block (offsets = tl.arange(0, BLOCK)) or nearly "
        "(pid + tl.arange(0, BLOCK)), so the programs overlap and the elements past them are "
        "never written",
        "each program starts a whole block further: pid = tl.program_id(0) (axis 0, the only "
        "axis of a 1-D grid) and offs = pid * BLOCK + tl.arange(0, BLOCK).",
    ),
    "mask_against_block": (
        "only the first block written: the mask compares the offsets with BLOCK instead of n, "
        "so every later program is masked off entirely",
        "mask the lanes past the end of the tensor: mask = offs < n (n the number of elements).",
    ),
    "modified_input": (
        "an input changed in place: the output is the input's own memory (out = xc, out = x2 "
        "or out = q3, and .contiguous() or .reshape() of a contiguous tensor is that tensor), "
        "so the kernel stores into the caller's tensor",
        "allocate a new output, out = torch.empty_like(xc) (or x2, q3), and store into it; the "
        "caller's inputs must come back unchanged.",
    ),
    "add_accepts_bad_input": (
        "x and y of different shapes or dtypes accepted without a clear error",
        "check before the launch and raise a ValueError naming both, e.g. "
        '`raise ValueError(f"x {tuple(x.shape)} and y {tuple(y.shape)} differ")`; the same '
        "for x.dtype != y.dtype.",
    ),
    "softmax_accepts_bad_input": (
        "a 0-d tensor accepted without a clear error: it has no row to normalise",
        "check before the launch: "
        '`if x.ndim == 0: raise ValueError("triton_softmax needs at least one dimension, '
        'got a 0-d tensor")`.',
    ),
    "output_like_input": (
        "an output allocated with torch.empty_like(x) of a non-contiguous x: it keeps x's "
        "strides, but the kernel writes it as if it were contiguous",
        "allocate the output like the contiguous copy: out = torch.empty_like(xc) with "
        "xc = x.contiguous() (or torch.empty(x.shape, dtype=x.dtype, device=x.device)).",
    ),
    "view_of_non_contiguous": (
        "x.view(...) of a non-contiguous input (a transpose or a strided slice): view cannot "
        "flatten memory that is not one block",
        "make the input contiguous first: x.contiguous().view(-1), or x.reshape(-1).contiguous() "
        "(reshape alone may return a strided view, which the kernel misreads).",
    ),
    "one_program_for_all_rows": (
        "only the first row written: a grid of one program, where each program handles one row",
        "launch one program per row, softmax_kernel[(n_rows,)](...), and let each read its row "
        "with tl.program_id(0) * n_cols.",
    ),
    "row_stride_block": (
        "rows read at row * BLOCK (the padded block) instead of row * n_cols: row 0 is right, "
        "every later row starts in the wrong place and the last runs past the end",
        "step over whole rows of the tensor, x_ptr + row * n_cols + cols: BLOCK only sizes the "
        "lanes of one row.",
    ),
    "block_not_power_of_two": (
        "a block size that is not a power of two: tl.arange(0, BLOCK) needs a power of two",
        "round the block up, BLOCK = triton.next_power_of_2(n_cols), and mask the lanes past "
        "n_cols (mask=cols < n_cols, other=float('-inf')).",
    ),
    "dot_shapes": (
        "tl.dot(a, b) of tiles whose inner sizes differ: a (M, K) needs b (K, N)",
        "for q (BLOCK_M, D) and k (BLOCK_N, D) the scores are tl.dot(q, tl.trans(k)) "
        "(BLOCK_M, BLOCK_N); then tl.dot(p, v) (BLOCK_M, D). Write each tile's shape beside it.",
    ),
    "k_not_transposed": (
        "scores as tl.dot(q, k) without tl.trans(k): with BLOCK_N = D the tile shapes agree, "
        "so no error, but each key tile's rows are read as head dims",
        "for q (BLOCK_M, D) and k (BLOCK_N, D) the scores are tl.dot(q, tl.trans(k)), "
        "(BLOCK_M, BLOCK_N). While debugging pick BLOCK_N != D: the slip is then a shape error.",
    ),
    "tile_shapes": (
        "two tiles combined elementwise whose shapes do not broadcast (a per-row vector against "
        "a per-column one, or a sum over the wrong axis)",
        "write each tile's shape beside it: a per-row vector is used as v[:, None], a per-column "
        "one as v[None, :]; tl.sum(x, axis=1) gives one value per row of x.",
    ),
    "alpha_inverted": (
        "a rescale factor that grows: alpha = exp(m_new - m_i) instead of exp(m_i - m_new), so "
        "acc and l blow up to inf and out is inf / inf",
        "alpha = tl.exp2(m_i - m_new) (old max minus new max) is at most 1: it shrinks the old "
        "sums to the new max.",
    ),
    "causal_row_without_keys": (
        "with causal=True some query rows see no key at all (all scores -inf, 0 / 0): the "
        "causal positions or the loop bound leave them nothing",
        "query i sits at position Lk - Lq + i and sees keys j <= Lk - Lq + i, always at least "
        "one: pos = Lk - Lq + offs_m, hi = tl.minimum(Lk, Lk - Lq + start_m + BLOCK_M).",
    ),
    "wrong_delta": (
        "D_i computed from something else than rowsum(dO_i * O_i) (dO alone, O * O, or summed "
        "down the rows, axis=0, instead of along each row)",
        "D_i = sum over d of dO[i, d] * O[i, d]: delta = tl.sum(o * do, axis=1) in the "
        "preprocessing kernel, o and do loaded as float32.",
    ),
    "delta_rows_missing": (
        "D = rowsum(dO * O) written for the first rows only: the preprocessing kernel's grid or "
        "row count covers fewer than BH * Lq rows (n_rows = Lq, or n_rows // BLOCK programs), "
        "so the other rows read D from uninitialised memory",
        "flatten every head's rows, n_rows = BH * Lq, and launch triton.cdiv(n_rows, BLOCK) "
        "programs with the last block masked (rows < n_rows).",
    ),
    "dv_p_not_transposed": (
        "dV += P dO instead of P^T dO (the tile shapes agree when BLOCK_M = BLOCK_N, so no error)",
        "dV sums over queries: dv += tl.dot(tl.trans(p), do), (BLOCK_N, BLOCK_M) @ (BLOCK_M, D).",
    ),
    "dq_k_transposed": (
        "dQ += dS K^T instead of dS K (the tile shapes agree when BLOCK_N = D, so no error)",
        "dS is (BLOCK_M, BLOCK_N) and k (BLOCK_N, D): dq += tl.dot(ds, k), no transpose.",
    ),
    "delta_wrong_axis": (
        "D broadcast along the wrong axis in dS = P * (dP - D): delta[None, :] (one value per "
        "key column) instead of delta[:, None] (one per query row)",
        "D_i belongs to query row i: ds = p * (dp - delta[:, None]).",
    ),
    "dk_from_dout": (
        "dK = dS^T dO instead of dS^T Q",
        "S = scale * Q K^T, so dK = scale * dS^T Q: accumulate dk += tl.dot(tl.trans(ds), q).",
    ),
    "backward_gradient_count": (
        "backward returning a different number of gradients than forward has inputs",
        "return one per input of forward after ctx: dq, dk, dv, None (None for is_causal).",
    ),
    "backward_gradient_order": (
        "gradients returned in another order than forward's inputs",
        "return them in the order of forward(ctx, q, k, v, is_causal): dq, dk, dv, None.",
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
    "row_length_wrong": (
        "rows of the wrong length: n_cols taken from x.shape[0] (or x reshaped to (n_cols, -1)), "
        "so each row the kernel normalises is a run of x.shape[0] (or of the number of rows) "
        "consecutive elements, not one row of the last axis",
        "the rows are the last axis: n_cols = x.shape[-1] and rows = "
        "x.contiguous().reshape(-1, n_cols), so every leading dim goes into the number of rows.",
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
    "grid_axes_swapped": (
        "the grid's axes swapped: (BH, query tiles) launched for a kernel that reads "
        "tl.program_id(0) as the query tile and tl.program_id(1) as bh",
        "launch grid = (triton.cdiv(Lq, BLOCK_M), BH), in the order the kernel reads "
        "tl.program_id(0) and tl.program_id(1).",
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
    "rescale_after_tile": (
        "acc rescaled after the new tile is added, acc = (acc + P V) * alpha: P V is already "
        "relative to the new max, so alpha shrinks it too (and the first tile, alpha = 0, is lost)",
        "rescale the old sum first, then add the new tile: "
        "acc = acc * alpha[:, None] + tl.dot(p, v), and l_i = l_i * alpha + tl.sum(p, axis=1).",
    ),
    "state_reset_in_loop": (
        "a running statistic (l_i, acc or m_i) set to its start value inside the key loop: each "
        "tile starts over, so only the last tile's sum is kept",
        "initialise m_i, l_i and acc once, before `for start_n in range(...)`; inside the loop "
        "only update them.",
    ),
    "max_not_per_row": (
        "the running max taken across query rows: tl.max(s, axis=0) (a max per key column, "
        "which runs without an error when BLOCK_M = BLOCK_N) or tl.max(s) over the whole tile. "
        "A row shifted by another row's larger max underflows to exp(-big) = 0, and a padded "
        "key's column gives a max of -inf (exp(s + inf) = inf)",
        "each query row needs its own max, over its keys: m_new = tl.maximum(m_i, "
        "tl.max(s, axis=1)) for s of shape (BLOCK_M, BLOCK_N). While debugging pick "
        "BLOCK_M != BLOCK_N: the slip is then a shape error.",
    ),
    "leading_dims_not_flattened": (
        "(B, H, L, D) inputs handled as if they had one leading dim: BH taken from q.shape[0] "
        "(B) instead of every leading dim (B * H), so only B heads get programs or rows of lse",
        "flatten first, q3 = q.reshape(-1, Lq, D).contiguous(), and take BH = q3.shape[0] "
        "(B * H, the product of every leading dim) for the grid and for lse.",
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
    "not_saved_for_backward": (
        "a tensor the backward needs (lse, or q, k, v, out) kept on ctx (ctx.lse = lse) or "
        "recomputed instead of saved with ctx.save_for_backward",
        "ctx.save_for_backward(q, k, v, out, lse) and q, k, v, out, lse = ctx.saved_tensors in "
        "backward: save_for_backward keeps the tensors for backward and checks that nothing "
        "changed them in between; ctx attributes are for the rest (ctx.is_causal).",
    ),
    "gradients_not_reshaped": (
        "gradients returned in the kernels' flattened (BH, L, D) shape instead of the inputs' "
        "shapes",
        "reshape each back before returning it: dq.reshape(q.shape), dk.reshape(k.shape), "
        "dv.reshape(v.shape), None.",
    ),
    "backward_head_offset": (
        "a per-row tensor of the backward (DELTA or LSE) read without its per-head offset, "
        "at offs_m instead of bh * Lq + offs_m: every head uses the first head's values",
        "DELTA and LSE hold Lq values per head: load them at DELTA + bh * Lq + offs_m and "
        "LSE + bh * Lq + offs_m, in both backward kernels.",
    ),
    "backward_scales_swapped": (
        "qk_scale and ds_scale swapped in a backward launch: P = exp2(s - lse * log2(e)) from "
        "scores scaled by 1 / sqrt(d), and dQ, dK scaled by log2(e) / sqrt(d)",
        "pass them in the order the kernel reads them: qk_scale = log2(e) / sqrt(d) for the "
        "scores, then ds_scale = 1 / sqrt(d) for dQ and dK.",
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
    "dkdv_loop_start": (
        "a causal dK/dV loop over query tiles that starts too late (at start_n, without the "
        "Lk - Lq shift, or one tile past the rounded start): the first queries that see the "
        "key tile are skipped, so their share of dK and dV is missing",
        "start at the first query that sees the tile's first key, clamped at 0 and rounded "
        "down to a whole tile: lo = (tl.maximum(start_n - (Lk - Lq), 0) // BLOCK_M) * BLOCK_M.",
    ),
    "dkdv_loop_start_unclamped": (
        "a causal dK/dV loop start not clamped at 0: for the first key tiles "
        "start_n - (Lk - Lq) is negative, by a whole tile or more when Lk - Lq >= BLOCK_M, so "
        "the loop reads Q, dO, LSE and DELTA at query rows before the first one (on a GPU: "
        "garbage gradients or a crash)",
        "clamp the start before rounding it down to a tile: "
        "lo = (tl.maximum(start_n - (Lk - Lq), 0) // BLOCK_M) * BLOCK_M.",
    ),
    "dkdv_grid_too_small": (
        "the dK/dV kernel launched with one program per query tile, triton.cdiv(Lq, BLOCK), "
        "instead of one per key tile: the key tiles past them are never written",
        "the dK/dV kernel owns a key tile: grid = (triton.cdiv(Lk, BLOCK_N), BH); only the dQ "
        "kernel's grid goes by Lq, (triton.cdiv(Lq, BLOCK_M), BH).",
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

# (mistake, error type, text fragments...): a crash whose error says so is this mistake
CRASHES = [
    ("block_not_power_of_two", "InterpreterError", "arange's range must be a power of 2"),
    ("block_not_power_of_two", "CompilationError", "arange's range must be a power of 2"),
    ("dot_shapes", "InterpreterError", "must have equal reduction dimensions"),
    ("dot_shapes", "CompilationError", "must have equal reduction dimensions"),
    ("tile_shapes", "InterpreterError", "Cannot make_shape_compatible"),
    ("tile_shapes", "CompilationError", "Cannot make_shape_compatible"),
    ("view_of_non_contiguous", "RuntimeError", "view size is not compatible"),
    ("backward_gradient_count", "RuntimeError", "returned an incorrect number of gradients"),
    ("backward_gradient_order", "RuntimeError", "returned an invalid gradient at index"),
]


REFUSED_GRADIENT = re.compile(r"got \[([\d, ]*)\] but expected shape compatible with \[([\d, ]*)\]")


def refused_gradient_of_the_right_size(message: str) -> bool:
    """Does torch's "invalid gradient at index i - got [...] but expected shape compatible with
    [...]" name a gradient with as many elements as the input's? Then it was not reshaped back."""
    shapes = REFUSED_GRADIENT.search(message)
    if shapes is None:
        return False
    got, expected = ([int(n) for n in group.split(",") if n.strip()] for group in shapes.groups())
    return got != expected and math.prod(got) == math.prod(expected)


@contextlib.contextmanager
def naming_crashes():
    """Inside, a crash of the student's function that is the signature of one mistake (CRASHES)
    is reported as that mistake; the error's text stays, without an "at:" line inside Triton."""
    try:
        yield
    except Mistake as mistake:
        for key, error, *fragments in CRASHES:
            if crashed_with(mistake, error, *fragments):
                if key == "backward_gradient_order" and refused_gradient_of_the_right_size(
                    mistake.message
                ):
                    key = "gradients_not_reshaped"
                message = mistake.message.split("\n      at: raise InterpreterError")[0]
                description, fix = hint(key)
                raise Mistake(f"{message}\n      It looks like {description}.", fix, key) from None
        raise


def names_crashes(check):
    """`check` with naming_crashes() around it, as an Exercise's check."""

    @functools.wraps(check)
    def check_naming_crashes(student, rng):
        with naming_crashes():
            check(student, rng)

    return check_naming_crashes


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
