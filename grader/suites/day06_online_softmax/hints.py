"""What day06's checks tell the student: HINTS, the mistakes they name, and FORBIDDEN, what
the student's functions must not call."""

import course.reference.masks
import course.reference.online_softmax
import course.reference.sdpa
from grader.suites import day01_sdpa

HINTS = {
    "missing_scale": (
        "q kᵀ without the 1/sqrt(d) scale",
        "multiply each tile's scores by 1 / math.sqrt(d), d = q.shape[-1]: "
        "s = q_tile @ k_tile.transpose(-2, -1) / math.sqrt(d).",
    ),
    "no_error_for_bad_params": (
        "a bad argument accepted silently",
        "check the arguments before any work and raise ValueError with a message that names "
        "the bad argument and what it was (its value, or the shapes that do not fit).",
    ),
    # online softmax
    "missing_rescale": (
        "the running sums not rescaled when the max changes",
        "terms summed so far were taken against the old max m; when a block "
        "raises it to m_new, multiply the running sums by exp(m - m_new) before "
        "adding the new block's exp(x - m_new).",
    ),
    "rescale_inverted": (
        "the rescale factor upside down: exp(m_new - m) instead of exp(m - m_new)",
        "the old terms exp(x - m) become exp(x - m_new) = exp(x - m) * "
        "exp(m - m_new): the factor is at most 1.",
    ),
    "block_sum_logged": (
        "the log of each block's sum added to the running sum (a log where none belongs)",
        "the running sum adds the block's terms themselves: l = l * exp(m - m_new) + "
        "exp(block - m_new).sum(-1), with no log; a log appears only in attention's "
        "lse = m + log(l), once, after the last block.",
    ),
    "returns_log": (
        "log(sum_exp) (a logsumexp) where sum_exp itself is asked for",
        "return the running sum of exp(x - max) itself, not its log and not max + log.",
    ),
    "modified_input": (
        "an input changed in place (an in-place op on it, or on a slice of it, which is a view)",
        "leave the caller's tensors as they are: no masked_fill_, mul_, -=, *= or t[...] = ... "
        "on an input or on a slice of one (a slice shares the input's memory). Make new "
        "tensors instead (t.masked_fill(...), t * c, t - c), and handle -inf with the "
        "shift-by-0 guard (torch.where(m_new == -inf, 0, m_new)).",
    ),
    "dim_ignored": (
        "the statistics taken along the last dim whatever `dim` says",
        "bring `dim` last first, x = x.movedim(dim, -1), then run the block loop over it.",
    ),
    "dim_mishandled": (
        "statistics right along the last dim but not along another: `dim` not brought last",
        "x = x.movedim(dim, -1) (from dim, to -1) puts the axis to reduce last; then every "
        "block is x[..., start:start + block_size] and every max and sum is over dim -1.",
    ),
    "block_sum_all_rows": (
        "each block's exp summed over every entry (.sum() without a dim), not along the block",
        "sum along the streamed axis only, one number per row: "
        "torch.exp(block - shift[..., None]).sum(-1).",
    ),
    "last_block_dropped": (
        "the last, shorter block dropped when block_size does not divide the length",
        "loop over range(0, N, block_size): the last block x[..., start:N] may be shorter.",
    ),
    "not_streaming": (
        "a pass over the whole of x before the blocks (e.g. the global max first): "
        "two passes, not one streaming pass",
        "keep the running max and sum as the blocks arrive: every max, sum or exp "
        "reads one block x[..., start:start + block_size] only.",
    ),
    "nan_for_masked": (
        "NaN where a row (or every row so far) is all -inf",
        "exp(-inf - (-inf)) is NaN: shift by the NEW max m_new, and by 0 while it is still "
        "-inf: shift = torch.where(m_new == -inf, 0, m_new), then exp(m - shift) and "
        "exp(block - shift); an all -inf row gives max = -inf, sum = 0 and, in attention, a "
        "zero output with lse = -inf.",
    ),
    "guard_tests_old_max": (
        "a shift-by-0 guard that tests the old max m (torch.where(m == -inf, 0, m_new)): m is "
        "-inf before the first block, so that block is never shifted and exp(x) overflows for "
        "large x (exp(1000) = inf)",
        "test the NEW max: shift = torch.where(m_new == -inf, 0, m_new); it is -inf only while "
        "every entry so far is -inf, which is when shifting by 0 is needed.",
    ),
    "finite_for_all_inf": (
        "a finite stand-in for -inf (e.g. -1e9, or x passed through nan_to_num) where a slice "
        "is all -inf",
        "keep the infinities: start the running max at float('-inf'), leave x's -inf entries "
        "as they are, and shift by 0 while the max is still -inf "
        "(torch.where(m_new == -inf, 0, m_new)); an all -inf slice gives max = -inf, sum = 0.",
    ),
    "shift_not_unsqueezed": (
        "a per-row value (the max or the shift, shape (rows,)) subtracted from a block "
        "(rows, block_size) without unsqueeze(-1): it lines up with the block's entries, not its "
        "rows",
        "give the per-row value a last dim of 1 so that each row is shifted by its own value: "
        "block - shift.unsqueeze(-1) (or shift[..., None]).",
    ),
    "stats_swapped": (
        "the pair returned as (sum_exp, max)",
        "return the max first, as the docstring says: `return m, l`.",
    ),
    "blocks_overlap": (
        "blocks longer than block_size, so that neighbours overlap (e.g. "
        "x[..., start:start + block_size + 1]): the shared entries are counted twice",
        "a slice's end is exclusive: block = x[..., start:start + block_size] holds "
        "block_size entries, and the next block starts where this one stops.",
    ),
    # tiled attention
    "empty_rows_divided_by_zero": (
        "out = acc / l computed where l = 0 (a query that sees no key): 0 / 0 is NaN",
        "divide by 1 where l = 0: out = acc / torch.where(l > 0, l, 1)[..., None]; acc is "
        "0 there, so the output is 0.",
    ),
    "lse_finite_for_empty": (
        "a finite lse for a query that sees no key",
        "lse = m + log(l) is already -inf where l = 0 (log 0 = -inf): return it as it is, "
        "without nan_to_num or a where that replaces it.",
    ),
    "no_key_tile_crashes": (
        "code that needs the key loop to run: a query tile whose queries see no key (causal, "
        "Lq > Lk) never enters it",
        "a query tile with no key keeps m = -inf, l = 0 and acc = 0 from before the key loop: "
        "compute out and lse from those (lse = m + log(l) = -inf there), not from a variable "
        "that only the key loop sets (shift, p, ...).",
    ),
    "returns_swapped": (
        "the pair returned as (lse, out)",
        "return out first, as the docstring says: `return out, lse`.",
    ),
    "causal_tile_stops_early": (
        "a causal key loop that stops one key early: the last query of each query tile "
        "misses its own (diagonal) key",
        "for query tile [q_start, q_end) the last key needed is Lk - Lq + q_end - 1: stop the "
        "key loop at min(Lk, Lk - Lq + q_end) (an exclusive end), not one before.",
    ),
    "batched_transpose": day01_sdpa.HINTS["batched_transpose"],
    "scale_one_over_d": (
        "the scores scaled by 1/d instead of 1/sqrt(d)",
        "the scale is 1 / math.sqrt(d), d = q.shape[-1]: s = q_tile @ k_tile.transpose(-2, -1) "
        "/ math.sqrt(d).",
    ),
    "last_key_tile_dropped": (
        "the last, shorter key tile dropped when block_k does not divide the keys the loop covers",
        "loop over range(0, key_end, block_k): the last tile k[..., k_start:key_end] may be "
        "shorter than block_k.",
    ),
    "out_like_q": (
        "out (or the accumulator) made in q's shape (e.g. torch.zeros_like(q)): d columns "
        "where v has dv",
        "out and acc have v's last dim: (..., Lq, dv) and (..., bq, dv); make them with "
        "v.shape[-1], not like q.",
    ),
    "state_not_reset": (
        "m, l and acc made once, before the loop over query tiles, instead of afresh for each "
        "query tile",
        "each query tile starts its own running statistics: inside the query-tile loop, before "
        "the key loop, set m = -inf, l = 0 and acc = 0 with the tile's shape (..., bq) and "
        "(..., bq, dv); the last query tile may be shorter.",
    ),
    "rescale_l_only": (
        "the denominator l rescaled when the max changes, but not the accumulator",
        "both running sums were taken against the old max: multiply acc (the "
        "running numerator, (bq, dv)) by exp(m_old - m_new) as well as l.",
    ),
    "rescale_acc_only": (
        "the accumulator rescaled when the max changes, but not the denominator l",
        "both running sums were taken against the old max: multiply l by "
        "exp(m_old - m_new) as well as acc.",
    ),
    "lse_base2": (
        "the logsumexp in base 2 (log2 instead of the natural log)",
        "lse = m + log(l) with the natural log (torch.log); base 2 belongs to kernels "
        "that use exp2, and must be converted back: lse_e = lse_2 * ln 2.",
    ),
    "lse_missing_max": (
        "log(l) without the running max: lse must be m + log(l)",
        "l = sum exp(s - m) was shifted by the max: logsumexp(s) = m + log(l).",
    ),
    "causal_top_left": (
        "a causal mask aligned top-left (query i sees keys 0..i) when Lq != Lk",
        "the course aligns bottom-right: query i sits at absolute position "
        "Lk - Lq + i and sees keys j <= Lk - Lq + i.",
    ),
    "causal_loop_end_no_offset": (
        "a causal key loop that stops at the query tile's end q_end instead of Lk - Lq + q_end: "
        "when Lq < Lk the queries miss their latest keys",
        "query i sits at absolute position Lk - Lq + i: for the query tile [q_start, q_end) "
        "stop the key loop at min(Lk, Lk - Lq + q_end).",
    ),
    "causal_diagonal_unmasked": (
        "key tiles that straddle the diagonal left (partly) unmasked (no mask there, or one that "
        "hides nothing, as a top-left one does when Lq > Lk): a query sees keys after its own "
        "position inside them",
        "set -inf where key j > Lk - Lq + i (query i's absolute position) in every tile that "
        "holds such a key: each tile straddling the diagonal (its last key after its first "
        "query's position), or simply every tile of a causal call.",
    ),
    "causal_local_query_index": (
        "a causal mask built from each query's index inside its tile (0, 1, ...) instead of its "
        "index in q: the tile's start q_start left out",
        "query_pos = Lk - Lq + q_start + torch.arange(bq): the tile's queries start at q_start, "
        "as its keys start at k_start.",
    ),
    "causal_strict": (
        "a causal mask that hides the diagonal (j < i instead of j <= i)",
        "a query sees its own key: the mask is key_pos <= query_pos, both ends "
        "counted from the same origin.",
    ),
    "causal_wrong_side": (
        "the causal mask on the wrong side of the diagonal (queries see the future, not the past)",
        "mask the keys *after* the query: set -inf where key_pos > query_pos.",
    ),
    "ignores_causal": (
        "causal=True ignored",
        "with causal=True query i (at Lk - Lq + i) sees keys j <= Lk - Lq + i only.",
    ),
    "builds_full_matrix": (
        "an (Lq, Lk)-sized tensor: the matrix that tiling avoids",
        "compute one (block_q, block_k) tile of scores at a time and keep only "
        "running statistics per query: no tensor, mask included, has Lq * Lk "
        "entries.",
    ),
    "computes_masked_tiles": (
        "tiles entirely above the causal diagonal computed (then masked) instead of skipped",
        "for query tile [q_start, q_end) stop the key loop at "
        "min(Lk, Lk - Lq + q_end): the keys after that are masked for every "
        "query of the tile, so their tiles are never computed.",
    ),
    # backward
    "missing_D_term": (
        "a backward without FlashAttention-2's D term: ds = p * dp instead of p * (dp - D)",
        "the softmax Jacobian gives ds = p * (dp - D) with D = rowsum(dO * O) per "
        "query (equal to rowsum(p * dp)); compute D once before the tile loop.",
    ),
    "D_per_tile": (
        "D summed over the current key tile only (rowsum(p * dp) of one tile)",
        "D is the sum over *all* keys of the row: compute it once before the tile loop as "
        "D = (dO * O).sum(-1), which equals rowsum(p * dp) over the whole row.",
    ),
    "D_not_per_query": (
        "D summed into one number over every query (d_out * out).sum() instead of one per query",
        "D_i = dO_i · O_i, one number per query: D = (d_out * out).sum(-1), shape (..., Lq), "
        "and each tile uses its queries' D[..., q_start:q_end, None].",
    ),
    "grad_scores_unscaled": (
        "p recomputed in backward from scores without the 1/sqrt(d) that forward used",
        "recompute exactly forward's scores, s = q_tile @ k_tile.transpose(-2, -1) / sqrt(d), "
        "before p = exp(s - lse): lse was taken over the scaled scores.",
    ),
    "grad_overwritten": (
        "dk or dv written with = for each query tile instead of added with +=: only the last "
        "query tile's share is left",
        "every query tile adds its share to the key tile's gradients: "
        "dk[..., k_start:k_end, :] += ..., and the same for dv and dq.",
    ),
    "forward_ignores_causal": (
        "a forward that does not pass is_causal on to tiled_attention",
        "forward's is_causal decides the mask: tiled_attention(q, k, v, causal=is_causal), "
        "and keep it on ctx for backward.",
    ),
    "dv_not_transposed": (
        "dv = p @ dO instead of pᵀ @ dO",
        "out = p @ v, so dv = pᵀ @ dO: p.transpose(-2, -1) @ dO, (Lk, Lq) @ (Lq, dv).",
    ),
    "dk_not_transposed": (
        "dk = ds @ q instead of dsᵀ @ q",
        "s = q kᵀ, so dk = dsᵀ q / sqrt(d): ds.transpose(-2, -1) @ q, (Lk, Lq) @ (Lq, d).",
    ),
    "lse_modified_in_place": (
        "a saved tensor (the lse) changed in place in backward (e.g. lse[lse == -inf] = inf)",
        "ctx.saved_tensors are the forward's own tensors: autograd refuses a second backward "
        "(or gradcheck) once one was modified. Make a new tensor: "
        "lse = torch.where(lse == float('-inf'), float('inf'), lse).",
    ),
    "backward_computes_masked_tiles": (
        "a causal backward that computes (then masks) the tiles above the diagonal",
        "skip them as forward does: for query tile [q_start, q_end) stop the key loop at "
        "min(Lk, Lk - Lq + q_end).",
    ),
    "backward_one_tile": (
        "a backward whose tiles are as long as L (one tile of all Lq queries and Lk keys): no "
        "tile lies wholly above the diagonal, so there is nothing to skip",
        "tile the backward as forward does, with tiles of 64 (block = 64): for each query tile "
        "q[..., q_start:q_start + 64] loop over key tiles k[..., k_start:k_start + 64] and stop "
        "the key loop at min(Lk, Lk - Lq + q_end).",
    ),
    "grad_missing_scale": (
        "dq and dk without the 1 / sqrt(d) of the scores",
        "s = q kᵀ / sqrt(d), so dq = ds k / sqrt(d) and dk = dsᵀ q / sqrt(d).",
    ),
    "grads_wrong_only_causal": (
        "gradients right without causal but wrong with causal=True",
        "backward must recompute exactly the forward's tiles: the same "
        "bottom-right mask on straddling tiles, the same skipped tiles, "
        "and zero for fully masked rows.",
    ),
    "causal_backward_unmasked": (
        "a causal backward that recomputes p without the mask",
        "recompute the scores of each tile with the same causal mask "
        "as in forward before p = exp(s - lse).",
    ),
    "saves_too_much": (
        "an (Lq, Lk)-sized tensor saved for backward (the probabilities?)",
        "save q, k, v, out and the logsumexp only (ctx.save_for_backward); the "
        "backward recomputes each tile of p from them.",
    ),
    "saves_two_stats": (
        "the max and the sum saved as two tensors",
        "fold them into one logsumexp per query, lse = m + log(l), and save that: "
        "p = exp(s - lse) in backward.",
    ),
    "no_lse_saved": (
        "no logsumexp tensor of shape (..., Lq) among ctx.saved_tensors",
        "save q, k, v, out and lse with ctx.save_for_backward(q, k, v, out, lse).",
    ),
    "grad_not_finite": (
        "NaN or inf in the gradient of a fully masked row",
        "a row that sees no key has lse = -inf and p = exp(s - lse) must be 0: "
        "replace lse = -inf by +inf (or mask those rows) before the exp.",
    ),
    "autograd_broken": (
        "a Function that autograd cannot run backward through",
        "forward(ctx, q, k, v, is_causal=False) saves with ctx.save_for_backward "
        "and returns out; backward(ctx, d_out) returns one gradient per forward "
        "input: (dq, dk, dv, None).",
    ),
}

FLASH = (
    "course.reference.online_softmax is the course's library version, for later days: write yours."
)
NO_BUILTIN = (
    "it computes the whole softmax at once; this exercise builds it from running "
    "statistics, block by block."
)
FORBIDDEN_LIBRARY = {
    fn: FLASH
    for fn in (
        course.reference.online_softmax.online_softmax_stats,
        course.reference.online_softmax.tiled_attention,
        course.reference.online_softmax._forward,
        course.reference.online_softmax._backward,
        course.reference.online_softmax.flash_attention_torch,
        course.reference.online_softmax.FlashAttentionTorch.forward,
    )
}
FORBIDDEN = {
    **FORBIDDEN_LIBRARY,
    "softmax": NO_BUILTIN,
    "log_softmax": NO_BUILTIN,
    "logsumexp": NO_BUILTIN,
    "scaled_dot_product_attention": NO_BUILTIN,
    course.reference.masks.attention: NO_BUILTIN,
    course.reference.sdpa.stable_softmax: NO_BUILTIN,
}
