"""Checks for day06-online-softmax: online softmax statistics, tiled attention with its
logsumexp, and FlashAttention's tiled backward as a torch.autograd.Function.

Oracles: torch's amax and logsumexp in float64, dense float64 attention (full score matrix,
bottom-right causal mask, fully masked rows giving zeros), and float64 autograd through it.
Suspects (what a named mistake would return) come from the same dense formulas with the mistake
put in, or, for the rescaling mistakes, from a float64 tile loop with the same tile sizes.

Three checks watch how the student's code works rather than what it returns, through a torch
dispatch mode that sees every aten op: the statistics must be streamed (no reduction ever reads
more than one block of x), tiled attention must never allocate an (Lq, Lk)-sized tensor, and
causal tiles entirely above the diagonal must be skipped (the matmul FLOPs of a causal call
must be about half of a full one's, not equal).

FlashAttentionTorch is a class: autograd runs a Function's backward where torch function modes
do not see it, so the checks call `FlashAttentionTorch.backward(out.grad_fn, grad)` themselves
under the guard (out.grad_fn is the ctx that forward filled), and also run real autograd once.

One module per exercise, in the notebook's order: online_softmax_stats, tiled_attention,
flash_autograd (FlashAttentionTorch); `hints` holds HINTS and FORBIDDEN, `oracles` the dense
float64 attention and the inputs that the last two share.
"""

from grader.suites import Exercise
from grader.suites.day06_online_softmax.flash_autograd import (
    flash_autograd_and_shapes,
    flash_backward_skips_masked_tiles,
    flash_causal_gradients,
    flash_forward,
    flash_gradients,
    flash_saves_lse,
)
from grader.suites.day06_online_softmax.hints import FORBIDDEN, HINTS
from grader.suites.day06_online_softmax.online_softmax_stats import (
    stats_dims_and_float64,
    stats_extremes,
    stats_match,
    stats_rejects_bad_block,
    stats_streaming,
)
from grader.suites.day06_online_softmax.tiled_attention import (
    tiled_causal,
    tiled_fully_masked_rows,
    tiled_matches,
    tiled_never_full_matrix,
    tiled_rejects_bad_input,
    tiled_shapes_and_float64,
    tiled_skips_masked_tiles,
)

EXERCISES = {
    "online_softmax_stats": Exercise(
        checks=[
            stats_match,
            stats_dims_and_float64,
            stats_extremes,
            stats_streaming,
            stats_rejects_bad_block,
        ],
        forbidden=FORBIDDEN,
    ),
    "tiled_attention": Exercise(
        checks=[
            tiled_matches,
            tiled_causal,
            tiled_fully_masked_rows,
            tiled_shapes_and_float64,
            tiled_never_full_matrix,
            tiled_skips_masked_tiles,
            tiled_rejects_bad_input,
        ],
        forbidden=FORBIDDEN,
    ),
    "FlashAttentionTorch": Exercise(
        checks=[
            flash_forward,
            flash_saves_lse,
            flash_gradients,
            flash_causal_gradients,
            flash_autograd_and_shapes,
            flash_backward_skips_masked_tiles,
        ],
        forbidden=FORBIDDEN,
    ),
}

__all__ = ["EXERCISES", "HINTS"]
