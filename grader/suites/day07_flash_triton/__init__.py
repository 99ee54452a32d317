"""Checks for day07-flash-triton: triton_add, triton_softmax, flash_attention_triton and the
FlashAttentionTriton autograd.Function (Triton forward and backward).

Oracles: torch elementwise add and a float64 softmax; attention in float64 from its definition
(scores, bottom-right causal mask, logsumexp, weights @ v); gradients by autograd through that
float64 attention. Each named mistake is the same oracle with one thing changed: the online
softmax simulated tile by tile in float64 without the rescale of acc (and l), padded keys left
unmasked, the logsumexp in base 2 or without the max, the wrong scale, a top-left or ignored
causal mask, the backward without the D term or without the causal mask.

Honest Triton checks, while a student's function runs (the watch of grader/harness/triton_watch,
as `kernel_watch` applies it to day07):
- every Triton launch is counted (JITFunction.run / the interpreter's InterpretedFunction.run),
  so a pure-torch reimplementation is named `no_triton_kernel`;
- in the interpreter, every load and store is checked against the memory of the tensors given to
  the launch (the interpreter itself does not flag out-of-bounds accesses): a lane outside reads
  NaN, is never written, and the mistake `out_of_bounds` is named. On a GPU the ragged check
  poisons the memory after the inputs with NaN instead;
- the inputs must come back unchanged: an output that is an input's own memory (out = x2, where
  x2 = x.contiguous() is x) is named `modified_input`.
Outside the checks, the notebook's setup cell runs `watch_every_launch()`, so a stray load or
store in any cell raises the named mistake instead of killing the kernel.

Two probes name what a failing flash check cannot see in its own inputs (flash_forward's
`naming_flash_slips`): leading dims handled as one, a row max taken across query rows.

One module per exercise group, in the notebook's order: warmups (triton_add, triton_softmax),
flash_forward (flash_attention_triton), flash_autograd (FlashAttentionTriton); `hints` holds HINTS
and FORBIDDEN, `kernel_watch` where the kernels run and the verdicts on what a watch saw,
`oracles` float64 attention and its named mistakes.
"""

from grader.suites import Exercise
from grader.suites.day07_flash_triton.flash_autograd import (
    function_causal_gradients,
    function_forward,
    function_gradients,
    function_rejects_bad_input,
)
from grader.suites.day07_flash_triton.flash_forward import (
    flash_causal,
    flash_in_bounds,
    flash_matches,
    flash_rejects_bad_input,
    flash_shapes,
    flash_skips_future_tiles,
    flash_unusual_inputs,
    naming_flash_slips,
)
from grader.suites.day07_flash_triton.hints import FORBIDDEN, HINTS, names_crashes
from grader.suites.day07_flash_triton.warmups import (
    add_matches,
    add_non_contiguous,
    add_rejects_bad_input,
    softmax_matches,
    softmax_rejects_bad_input,
    softmax_shapes,
    softmax_stable,
)

CHECKS = {
    "triton_add": [add_matches, add_non_contiguous, add_rejects_bad_input],
    "triton_softmax": [softmax_matches, softmax_stable, softmax_shapes, softmax_rejects_bad_input],
    "flash_attention_triton": [
        naming_flash_slips(check)
        for check in (
            flash_matches,
            flash_causal,
            flash_skips_future_tiles,
            flash_shapes,
            flash_unusual_inputs,
            flash_in_bounds,
            flash_rejects_bad_input,
        )
    ],
    "FlashAttentionTriton": [
        function_forward,
        function_gradients,
        function_causal_gradients,
        function_rejects_bad_input,
    ],
}
# a crash that is the signature of one mistake (hints.CRASHES) is named in every check
EXERCISES = {
    name: Exercise(checks=[names_crashes(check) for check in checks], forbidden=FORBIDDEN)
    for name, checks in CHECKS.items()
}

__all__ = ["EXERCISES", "HINTS"]
