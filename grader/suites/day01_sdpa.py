"""Checks for day01-sdpa: stable_softmax, attention_scores, scaled_dot_product_attention.

Oracles are torch's own softmax and F.scaled_dot_product_attention in float64. Each check draws
its shapes and values from `rng`, so hidden tests (fresh seed) see shapes nobody hard-coded.

A crash is explained where it can be: a broadcast error in a softmax is a reduction without
keepdim=True; a function that raises on batched inputs but is right on 2-D ones has a transpose
that reverses or picks the leading dims (`explain_by_rank`); an attention that raises when
Lq != Lk != D but runs when every size is equal is run there and its mistake named
(`explain_by_square_inputs`); scores that raise unless Lq = Lk = D are run there, which names
`q @ k` and `(q * k).sum(-1)` (`explain_by_square_keys`); right answers there are sizes mixed up.
Weights that turn NaN on large scores are run on moderate ones first, so a mistake that shows
there is not called an overflow (`explain_by_moderate_scores`); a NaN on an all -inf row is
traced to the operation that made it (`FirstNaN`: x - max, or 0 / 0). An out or weights of the
wrong shape is named by its values where they explain it (`explain_wrong_shapes`: a squeeze,
weights @ k). A function that writes into its inputs is named before its output is compared
(`call_unchanged`), and one whose backward fails or stops short is named too
(`sdpa_passes_gradients`). Weights that are all 0 on extreme logits are rerun on logits near 0
before an inverted torch.where is named (`explain_all_zero`), a global max only when the row it
spoils is right alone (`expect_lowest_row_alone`), and code right at one rank only that swaps
the last two dims by numbers counted from the front is named as that transpose
(`FrontCountedDims`).
"""

import math

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from grader.harness.checking import (
    Mistake,
    NotImplementedYet,
    crashed_with,
    expect_close,
    named,
    named_crash,
    naming_crashes,
)
from grader.harness.guard import SDPA, SOFTMAX
from grader.harness.measuring import measuring
from grader.suites import Exercise
from grader.suites._common import (
    MODIFIED_INPUT,
    attention_shapes,
    call_unchanged,
    distinct_sizes,
    draw,
    explain_by_rank,
    head_dim,
    randn,
    right_answer,
    softmax64,
    two_lengths,
    unpack,
)

HINTS = {
    "ignores_device": (
        "a tensor made without device= (torch.zeros(shape), say), which lands on the CPU "
        "whatever device x is on",
        "make new tensors on x's device: torch.zeros_like(m), torch.zeros(m.shape, "
        "device=x.device), or none at all: torch.where(cond, 0.0, m) takes a plain number.",
    ),
    "wrong_axis": (
        "softmax taken over another axis than `dim`",
        "normalise along `dim`: max and sum both over dim, with keepdim=True.",
    ),
    "ignores_dim": (
        "softmax over the last axis, whatever `dim` says",
        "pass `dim` to your max and sum instead of -1.",
    ),
    "no_max_subtraction": (
        "exp overflowing because the row's max was not subtracted (no shift at all, or a "
        "shift by another number such as the min or the mean)",
        "exp overflows float32 above 88: compute exp(x - max) with the max along dim, so every "
        "exponent is <= 0 (softmax(x) = softmax(x - c) for any c, but only c = max keeps "
        "them all small).",
    ),
    "global_max": (
        "a max taken over the whole tensor instead of along dim",
        "take the max along dim: x.amax(dim=dim, keepdim=True); a global max sends "
        "the rows far below it to exp(-inf) = 0, then 0/0.",
    ),
    "missing_keepdim": (
        "a max or sum taken without keepdim=True, so it no longer lines up with x",
        "reduce with keepdim=True: x.amax(dim=dim, keepdim=True) and exps.sum(dim=dim, "
        "keepdim=True) keep a size-1 axis where dim was, so x - max and exps / sum broadcast "
        "along the right axis.",
    ),
    "max_without_values": (
        "x.max(dim=...) used as a tensor: with a dim it returns a pair (values, indices)",
        "take the values: x.amax(dim=dim, keepdim=True), or x.max(dim=dim, keepdim=True).values.",
    ),
    "nan_on_neg_inf": (
        "NaN where some entries are -inf",
        "-inf entries must get weight exp(-inf) = 0; do not add, subtract or "
        "multiply the -inf entries by anything else first.",
    ),
    "nan_on_all_masked_row": (
        "NaN on a row whose entries are all -inf, from x - max: that row's max is -inf, "
        "and -inf - (-inf) is NaN",
        "replace a -inf max by 0 (torch.where) before subtracting it; that row's exps are then "
        "all 0, so also divide with torch.where(sum > 0, ...) to give 0 there.",
    ),
    "zero_sum_division": (
        "NaN on a row whose entries are all -inf, from exps / sum: the max was replaced, so "
        "that row's exps are all 0, their sum is 0, and 0 / 0 is NaN",
        "keep the max guard and guard the division too: torch.where(sum > 0, exps / sum, 0.0) "
        "(or divide by torch.where(sum > 0, sum, 1.0)), so an empty row gets zeros.",
    ),
    "neg_inf_replaced": (
        "-inf entries replaced by a finite number (0, or the row's max) before the softmax, so "
        "they get that logit's weight",
        "leave the -inf entries as they are: exp(-inf - max) = 0 is exactly the zero weight "
        "they must get. Only a row's max that is -inf (a row with nothing finite) needs "
        "replacing by 0.",
    ),
    "max_clamped": (
        "a shift by 0 instead of the row's max where that max is below 0 (no shift at all, a "
        "max clamped at 0 with .clamp(min=0), or a guard turned around that replaces every "
        "finite max: torch.where(torch.isfinite(max), 0.0, max)): exp(-120) is 0 in float32, "
        "so a row far below 0 has nothing left to normalise",
        "shift every row by its own max, whatever its sign; only a max that is -inf (a row "
        "with nothing finite) needs replacing: torch.where(torch.isinf(max), 0.0, max).",
    ),
    "epsilon_in_sum": (
        "exps / (sum + eps): a small number added to the sum to avoid 0 / 0, so every row "
        "sums to a little less than 1",
        "guard the division instead of changing it: torch.where(sum > 0, exps / sum, 0.0), or "
        "divide by torch.where(sum > 0, sum, 1.0); a row with a finite entry then sums to 1.",
    ),
    "division_guard_inverted": (
        "every weight 0: a torch.where whose condition is inverted, such as "
        "torch.where(sum == 0, exps / sum, 0.0), which keeps the division only where the sum "
        "is 0",
        "torch.where(condition, a, b) takes a where the condition is True: "
        "torch.where(sum > 0, exps / sum, 0.0).",
    ),
    "max_instead_of_sum": (
        "exps divided by their max instead of their sum, or not divided at all (exp(x - max) "
        "already has max 1), so the largest weight is 1",
        "normalise by the sum: exps / exps.sum(dim=dim, keepdim=True), so each row sums to 1.",
    ),
    "all_masked_row_uniform": (
        "equal weights 1/n on a row that is all -inf (the -inf turned into a finite number, "
        "by clamp or nan_to_num, before the softmax)",
        "keep -inf as it is: exp(-inf) = 0, so an all -inf row sums to 0. Shift that row by 0 "
        "instead of its max, and give it zeros with torch.where(sum > 0, ...).",
    ),
    "unshifted_sum": (
        "exp(x - max) divided by exp(x).sum(): the exps shifted by the max, but their sum taken "
        "over the unshifted exps, so each row is off by its own factor exp(-max) (and on large "
        "logits the sum overflows to inf, so every weight is 0)",
        "divide by the sum of the same shifted exps: exps = torch.exp(x - max), then "
        "exps / exps.sum(dim=dim, keepdim=True).",
    ),
    "weights_vanished": (
        "exps that all underflowed to 0, from a shift by more than the row's max (such as its "
        "largest absolute value, x.abs().amax(dim)), or exps divided by a sum that overflowed "
        "to inf",
        "shift each row by exactly its max, x.amax(dim=dim, keepdim=True), so that its largest "
        "exponent is 0 and gives exp(0) = 1; then divide by the sum of those same shifted exps.",
    ),
    "modified_input": MODIFIED_INPUT,
    "missing_scale": (
        "q kᵀ without the 1/sqrt(d) scale",
        "divide the scores by math.sqrt(d) with d = q.shape[-1]. The scale belongs in "
        "attention_scores: if scaled_dot_product_attention calls it, fix it there (exercise 2).",
    ),
    "divided_by_d": (
        "q kᵀ / d instead of / sqrt(d)",
        "divide by the square root of the head dimension, math.sqrt(d), once. Scaling both q "
        "and k by it divides twice, and so does dividing again scores that attention_scores "
        "already divided.",
    ),
    "power_precedence": (
        "`d ** 1/2`, which is (d ** 1) / 2 since ** binds tighter than /: q kᵀ / d / 2 "
        "(or q kᵀ / (d / 2)) instead of q kᵀ / sqrt(d)",
        "write d ** 0.5 or math.sqrt(d); an exponent 1/2 needs brackets: d ** (1 / 2).",
    ),
    "times_sqrt_d": (
        "q kᵀ * sqrt(d) instead of / sqrt(d)",
        "divide by math.sqrt(d); multiplying makes the scores grow with d.",
    ),
    "float32_constant": (
        "a scale computed in float32 (a tensor made without dtype=, such as "
        "torch.sqrt(torch.tensor(d)))",
        "use math.sqrt(d), a Python float, which keeps the input's precision; or create the "
        "tensor with dtype=q.dtype.",
    ),
    "integer_sqrt": (
        "q kᵀ / isqrt(d): the square root of d rounded down to a whole number",
        "divide by math.sqrt(d); math.isqrt(d) and int(d ** 0.5) round it down.",
    ),
    "cosine_similarity": (
        "cosine similarity: q and k each divided by their norm, instead of q kᵀ divided by sqrt(d)",
        "divide the dot products q kᵀ by math.sqrt(d), one constant: dividing each vector by "
        "its norm throws its length away, and every score lands between -1 and 1.",
    ),
    "scaled_by_length": (
        "q kᵀ scaled by a sequence length instead of the head dimension",
        "d is the head dimension q.shape[-1], not q.shape[-2] or k.shape[-2] (nor q.shape[0], "
        "which is the length on 2-D inputs): count from the end.",
    ),
    "d_from_wrong_axis": (
        "q kᵀ scaled by the size of a leading dim (q.shape[0] or q.shape[1]) instead of the "
        "head dimension",
        "d is the last axis: q.shape[-1]. Count from the end, since the number of leading "
        "dims varies.",
    ),
    "swapped_q_k": (
        "k qᵀ: queries and keys swapped",
        "scores[..., i, j] = q_i · k_j / sqrt(d): compute q @ k.transpose(-2, -1).",
    ),
    "keys_not_transposed": (
        "q @ k: the keys not transposed, so it runs only when k's length equals d",
        "transpose the last two axes of k once: q @ k.transpose(-2, -1), (..., Lq, d) @ "
        "(..., d, Lk). attention_scores transposes k itself: pass it k as it is.",
    ),
    "elementwise_product": (
        "(q * k).sum(-1): an elementwise product, which pairs query i with key i only and "
        "needs Lq = Lk",
        "every query meets every key: q @ k.transpose(-2, -1) gives the (..., Lq, Lk) matrix of "
        "all dot products q_i · k_j.",
    ),
    "misaligned_broadcast": (
        "a broadcast product of q and k whose axes do not line up, such as "
        "q.unsqueeze(-1) * k.unsqueeze(-2): it runs only when sizes happen to be equal",
        "every query meets every key: q @ k.transpose(-2, -1); or, broadcasting, "
        "(q.unsqueeze(-2) * k.unsqueeze(-3)).sum(-1), (..., Lq, 1, d) * (..., 1, Lk, d).",
    ),
    "sizes_mixed_up": (
        "one size standing for another (Lq where Lk belongs, or d): the code raises when Lq, "
        "Lk and d differ, but is right when they are equal",
        "check each size you read and each reshape or view: Lq = q.shape[-2], "
        "Lk = k.shape[-2], d = q.shape[-1], and the scores are (..., Lq, Lk).",
    ),
    "batched_transpose": (
        "a transpose or permute that counts its dims from the front (k.T, k.transpose(0, 1), "
        "k.transpose(1, -1), k.transpose(1, 2), k.permute(0, 1, 3, 2)): right for one number "
        "of leading dims only (often none), wrong with any other",
        "swap the last two axes only, counted from the end: k.transpose(-2, -1) (or k.mT). k.T "
        "reverses every axis, transpose(0, 1) swaps the first two, and transpose(1, 2) or a "
        "permute listing every dim swap the last two only at one number of dims.",
    ),
    "fixed_rank": (
        "code written for one number of dims only",
        "support any leading dims: use @ (torch.matmul broadcasts over them; torch.bmm takes "
        "3-D tensors only) and read sizes from the end (q.shape[-1]) instead of unpacking "
        "B, H, L, d = q.shape.",
    ),
    "softmax_over_queries": (
        "softmax over the query axis (dim=-2)",
        "each query's weights must sum to 1 over the keys: softmax over dim=-1.",
    ),
    "softmax_over_leading_dim": (
        "softmax over a leading axis (dim=0 or 1: the batch or the heads)",
        "each query's weights must sum to 1 over the keys, the last axis: softmax over dim=-1.",
    ),
    "sum_over_queries": (
        "exps divided by their sum over the queries (dim=-2) instead of over the keys",
        "take the max and the sum over the keys, dim=-1 with keepdim=True; or call your "
        "stable_softmax(scores, dim=-1).",
    ),
    "softmax_twice": (
        "the softmax applied twice, so the weights are flattened towards 1/Lk",
        "take the softmax once: weights = stable_softmax(attention_scores(q, k), dim=-1).",
    ),
    "softmax_without_exp": (
        "the scores divided by their sum with no exp: scores / scores.sum(-1), which gives "
        "negative weights, and huge ones where a row's scores sum to nearly 0",
        "take the softmax of the scores, exp included: call your stable_softmax(scores, "
        "dim=-1), which shifts by the max, takes exp, then divides by the sum.",
    ),
    "out_divided_by_length": (
        "out divided by the number of keys Lk, as if the weights had to be averaged again",
        "return weights @ v as it is: each row of weights already sums to 1, so weights @ v is "
        "already a weighted average of the values.",
    ),
    "scores_not_weights": (
        "out = scores @ v: the scores, not the softmax weights, multiply v",
        "multiply v by the weights: out = weights @ v.",
    ),
    "scaled_by_value_dim": (
        "q kᵀ / sqrt(dv): the values' width instead of the head dimension of q and k",
        "d = q.shape[-1], the width q and k share; v.shape[-1] may differ from it.",
    ),
    "scores_as_weights": (
        "the scores returned as the weights: the pair's second tensor is q kᵀ / sqrt(d) before "
        "the softmax",
        "return the softmax of the scores, the tensor that multiplies v: `return out, weights` "
        "with weights = stable_softmax(scores, dim=-1).",
    ),
    "values_from_keys": (
        "out = weights @ k: the keys averaged instead of the values",
        "multiply the weights by the values: out = weights @ v, (..., Lq, Lk) @ (..., Lk, Dv).",
    ),
    "squeezed": (
        "a .squeeze() that dropped a leading dim of size 1 (a batch or a head count of 1)",
        "keep every leading dim, even of size 1: out is (..., Lq, Dv) and weights (..., Lq, Lk) "
        "with q's leading dims; drop .squeeze() (or squeeze one named dim outside the function).",
    ),
    "no_gradient": (
        "the graph cut inside the function (.detach(), torch.no_grad(), or a tensor rebuilt "
        "from values), so no gradient reaches the inputs before the cut",
        "keep every step differentiable: training backpropagates through out into q, k and v. "
        "To plot the weights, detach them outside the function: weights.detach().",
    ),
    "in_place_breaks_gradient": (
        "an in-place operation (exp_, /=, -=) on a tensor that autograd saved for the "
        "backward pass: the forward is right, but out.backward() fails",
        "write those steps out of place: s = s - s.amax(...), w = torch.exp(s), "
        "w = w / w.sum(...); autograd needs the tensors it saved unchanged.",
    ),
    "renormalised_over_queries": (
        "the weights divided again by their sum over the queries (dim=-2), so each column sums "
        "to 1 instead of each row",
        "the softmax over the keys already makes each row sum to 1: use its weights as they "
        "are, with no second normalisation.",
    ),
    "scale_after_softmax": (
        "the 1/sqrt(d) scale applied after the softmax, so the rows sum to 1/sqrt(d)",
        "scale the scores, then take the softmax: stable_softmax(attention_scores(q, k)), "
        "and attention_scores already divides by sqrt(d).",
    ),
    "transposed_v": (
        "weights @ vᵀ",
        "out = weights @ v: weights (..., Lq, Lk) times v (..., Lk, Dv).",
    ),
    "transposed_weights": (
        "weightsᵀ @ v",
        "out = weights @ v with weights (..., Lq, Lk): do not transpose them.",
    ),
    "weights_transposed": (
        "the weights returned transposed, (..., Lk, Lq): one row per key instead of per query",
        "return the weights as the softmax gave them, (..., Lq, Lk), without a transpose.",
    ),
    "swapped_outputs": (
        "the pair returned as (weights, out)",
        "return out first, as the docstring says: `return out, weights`.",
    ),
}


# ----------------------------------------------------------------------------- calling the student


def explain_by_square(raised: Mistake, run_on_square, square: str) -> None:
    """After the student's function raised: run the check `run_on_square()` on inputs where
    every size is equal (`square` says which) and name what it shows there, a known mistake or a
    right answer (then one size stands for another somewhere)."""
    try:
        run_on_square()
    except Mistake as mistake:
        if mistake.key not in HINTS:
            return
        seen, fix, key = mistake.message, mistake.hint, mistake.key
    else:
        description, fix = HINTS["sizes_mixed_up"]
        seen, key = f"gives the right answer: it looks like {description}.", "sizes_mixed_up"
    raise Mistake(
        f"{raised.message}\n      It raised on these shapes; on inputs where {square} it runs, "
        f"and {seen}",
        fix,
        key,
    ) from None


# Sizes for the probes below, all different from each other and from the probes' leading dims.
PROBE_LEADING, PROBE_LQ, PROBE_LK, PROBE_D = (2, 3, 4), 5, 6, 7


def probe_inputs(rng, rank: int, dtype, *widths) -> list:
    """Random inputs of rank `rank`, one per (length, width) pair in `widths`."""
    leading = PROBE_LEADING[: rank - 2]
    return [randn((*leading, length, width), rng, dtype) for length, width in widths]


class FrontCountedDims(TorchFunctionMode):
    """A probe (grader/harness/measuring.py): whether the call swapped the last two dims of a
    tensor with leading dims by numbers counted from the front (k.transpose(1, 2) of a 3-D k,
    k.permute(0, 1, 3, 2) of a 4-D one), which picks other dims at another rank; and whether it
    called torch.bmm, which is 3-D only whatever its dims."""

    def __init__(self):
        super().__init__()
        self.front, self.bmm = False, False

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "")
        self.bmm = self.bmm or name == "bmm"
        if args and isinstance(args[0], torch.Tensor) and args[0].dim() > 2:
            self.front = self.front or swaps_last_two_from_front(name, args[0].dim(), args[1:])
        return func(*args, **kwargs)

    def absorb(self, seen: dict):
        self.front, self.bmm = self.front or seen["front"], self.bmm or seen["bmm"]


def swaps_last_two_from_front(name: str, rank: int, dims: tuple) -> bool:
    """transpose/swapaxes(a, b) or permute(...) of a rank-`rank` tensor that swaps its last
    two dims, named by non-negative numbers."""
    if name in ("transpose", "swapaxes", "swapdims"):
        return sorted(dims[:2]) == [rank - 2, rank - 1] if len(dims) >= 2 else False
    if name == "permute":
        order = list(dims[0]) if len(dims) == 1 and isinstance(dims[0], (list, tuple)) else dims
        return list(order) == [*range(rank - 2), rank - 1, rank - 2]
    return False


def explain_by_rank_and_dims(raised: Mistake, rank: int, gives_answer) -> None:
    """`explain_by_rank`, where code right at one rank only that swaps the last two dims by
    numbers counted from the front is named as that transpose: the probe FrontCountedDims
    watches each rank where `gives_answer(r)` holds. Code that also calls torch.bmm or unpacks
    the shape (B, H, L, d = q.shape) keeps the fixed-rank hint, which names both."""
    seen = []

    def watched(other: int) -> bool:
        probe = FrontCountedDims()
        with measuring(f"{__name__}:FrontCountedDims", probe.absorb), probe:
            right = gives_answer(other)
        if right:
            seen.append((other, probe))
        return right

    try:
        explain_by_rank(raised, rank, watched)
    except Mistake as by_rank:
        unpacked = crashed_with(raised, "ValueError", "values to unpack")
        if (
            by_rank.key != "fixed_rank"
            or unpacked
            or not all(p.front and not p.bmm for _, p in seen)
        ):
            raise
        description, fix = HINTS["batched_transpose"]
        ranks = ", ".join(f"{other}-D" for other, _ in seen)
        raise Mistake(
            f"{raised.message}\n      It raised on {rank}-D inputs, but gives the right answer "
            f"on {ranks} ones, where it swaps the last two dims by numbers counted from the "
            f"front: it looks like {description}.",
            fix,
            "batched_transpose",
        ) from None


# ----------------------------------------------------------------------------- inputs and oracles


def scaled_scores(q: torch.Tensor, k: torch.Tensor, scale: float) -> torch.Tensor:
    return q.double() @ k.double().transpose(-2, -1) * scale  # (..., Lq, Lk)


# ----------------------------------------------------------------------------- stable_softmax

# What a crash of a softmax says about it: (text in the error message, the mistake).
# (mistake, error type, text): a crash of stable_softmax whose error says so is this mistake
SOFTMAX_CRASHES = [
    ("missing_keepdim", "RuntimeError", "must match the size of tensor"),
    ("max_without_values", "TypeError", "torch.return_types"),
]


def call_softmax(stable_softmax, x: torch.Tensor, **kwargs):
    """stable_softmax(x, **kwargs); an input written into, or a crash SOFTMAX_CRASHES
    recognises, is named."""
    with naming_crashes(*SOFTMAX_CRASHES):
        return call_unchanged(stable_softmax, {"x": x}, **kwargs)


def softmax_mistakes(x: torch.Tensor, dim: int = -1) -> list:
    """What the common mistakes give on x: the softmax over every other axis (or only its sum
    there), a max or sum taken without keepdim=True where it still broadcasts (it lines up with
    the wrong axis), and a division by the max instead of the sum."""
    others = [other for other in range(x.dim()) if other != dim % x.dim()]
    found = [("wrong_axis", softmax64(x, other)) for other in others]
    found += [("wrong_axis", shifted_softmax(x, max_dim=dim, sum_dim=other)) for other in others]
    x64 = x.double()
    top = x64.amax(dim, keepdim=True)
    top = torch.where(torch.isfinite(top), top, 0.0)
    for flat_max, flat_sum in ((True, False), (False, True), (True, True)):
        try:
            shift = top.squeeze(dim) if flat_max else top
            exps = exps_in_dtype(x, shift)
            total = exps.sum(dim, keepdim=not flat_sum)
            found.append(("missing_keepdim", exps / torch.where(total > 0, total, 1.0)))
        except RuntimeError:
            continue  # it does not broadcast: the student's code raises, named in call_softmax
    found.append(("max_instead_of_sum", torch.exp(x64 - top)))  # exps / their max (which is 1)
    found.append(("unshifted_sum", unshifted_sum_softmax(x, top, dim)))
    found.append(("division_guard_inverted", torch.zeros_like(x64)))
    return found


def unshifted_sum_softmax(x: torch.Tensor, top: torch.Tensor, dim: int) -> torch.Tensor:
    """exp(x - top) / exp(x).sum(dim): the numerator shifted by the (guarded, float64) max `top`,
    the sum not. The sum is taken in x's dtype, where it overflows to inf (every weight 0) or
    underflows to 0 (a guarded division gives 0), as the student's does."""
    total = torch.exp(x).sum(dim, keepdim=True).double()
    return torch.where(total > 0, torch.exp(x.double() - top) / total, 0.0)


def epsilon_suspect(x: torch.Tensor, out, dim: int = -1) -> list:
    """exps / (sum + eps), with the eps that the student's row sums imply: sum / (sum + eps)
    each, a little under 1. Named only when one eps explains every row."""
    if not isinstance(out, torch.Tensor) or out.shape != x.shape:
        return []
    x64 = x.double()
    top = x64.amax(dim, keepdim=True)
    exps = torch.exp(x64 - torch.where(torch.isfinite(top), top, 0.0))
    total = exps.sum(dim, keepdim=True)
    implied = total * (1 / out.detach().double().sum(dim, keepdim=True) - 1)  # sum*(1/r - 1)
    implied = implied[(total > 0) & torch.isfinite(implied)]
    if not implied.numel() or not 0 < float(implied.median()) < 1:
        return []
    return [("epsilon_in_sum", exps / (total + implied.median()))]


def shifted_softmax(x: torch.Tensor, max_dim: int, sum_dim: int) -> torch.Tensor:
    """exp(x - max along max_dim) / its sum along sum_dim: `dim` passed to one reduction and
    -1 to the other (or another axis), with the guards for a slice that is all -inf."""
    top = x.double().amax(max_dim, keepdim=True)
    exps = exps_in_dtype(x, torch.where(torch.isfinite(top), top, 0.0))
    total = exps.sum(sum_dim, keepdim=True)
    return exps / torch.where(total > 0, total, 1.0)


def exps_in_dtype(x: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """exp(x - shift) taken in x's dtype, as the student's code takes it, then in float64: a
    slice of large logits whose exps all underflow sums to 0 here too (float64 would keep
    exp(-300) and give that slice weights the student's division cannot)."""
    return torch.exp(x - shift.to(x.dtype)).double()


def softmax_matches_reference(stable_softmax, rng):
    """matches the float64 softmax on random (B, H, Lq, Lk) scores, default dim"""
    lq, lk = two_lengths(rng)
    x = randn((draw(rng, 1, 3), draw(rng, 1, 4), lq, lk), rng, scale=3.0)  # (B, H, Lq, Lk)
    out = call_softmax(stable_softmax, x)
    suspects = [*softmax_mistakes(x), *epsilon_suspect(x, out)]
    expect_close(out, softmax64(x), x.dtype, suspects=suspects)


def softmax_follows_dim(stable_softmax, rng):
    """normalises along the `dim` argument (dim=0, 1, -2 of a 3-D tensor)"""
    shape = (draw(rng, 2, 4), draw(rng, 5, 7), draw(rng, 8, 10))  # all different sizes
    x = randn(shape, rng, scale=2.0)
    for dim in (0, 1, -2):
        suspects = [
            ("ignores_dim", softmax64(x, -1)),
            ("ignores_dim", shifted_softmax(x, max_dim=dim, sum_dim=-1)),
            ("ignores_dim", shifted_softmax(x, max_dim=-1, sum_dim=dim)),
            *softmax_mistakes(x, dim),
        ]
        expect_close(
            call_softmax(stable_softmax, x, dim=dim),
            softmax64(x, dim),
            x.dtype,
            what=f"stable_softmax(x, dim={dim})",
            suspects=suspects,
        )


def softmax_keeps_float64(stable_softmax, rng):
    """float64 in, float64 out, to 1e-10"""
    x = randn((draw(rng, 2, 6), draw(rng, 2, 9)), rng, dtype=torch.float64, scale=4.0)
    out = call_softmax(stable_softmax, x, dim=-1)
    suspects = [*softmax_mistakes(x), *epsilon_suspect(x, out)]
    expect_close(out, softmax64(x), torch.float64, suspects=suspects)


def softmax_follows_device(stable_softmax, rng):
    """x on PyTorch's 'meta' device (shapes, no values) gives its weights on 'meta' too"""
    # A tensor made on the CPU here would break the same way on a GPU.
    x = randn((draw(rng, 2, 5), draw(rng, 3, 9)), rng).to("meta")  # (rows, cols), no data
    try:
        out = stable_softmax(x)
    except NotImplementedYet:  # "Cannot copy out of meta tensor": code that reads values
        return
    except Mistake as mistake:
        if mistake.key == "raised" and "device" in mistake.message:
            raise named_crash(mistake, "ignores_device") from None
        if mistake.key == "raised":  # another crash on 'meta' says nothing about devices
            return
        raise
    if isinstance(out, torch.Tensor) and not out.is_meta:
        raise Mistake(
            f"stable_softmax(x on 'meta') returned a tensor on {out.device}: it looks like "
            f"{HINTS['ignores_device'][0]}.",
            HINTS["ignores_device"][1],
            "ignores_device",
        )


def softmax_survives_large_logits(stable_softmax, rng):
    """large logits (x ≈ 1000, half of each row 300 lower) stay finite: the max is subtracted"""
    rows, lk = draw(rng, 2, 5), draw(rng, 3, 9)
    x = 1000 + randn((rows, lk), rng, scale=5.0)
    # ceil(lk / 2) entries of each row 300 lower: exp(x - min) overflows, and so does a shift by
    # the mean, which lies at least 150 below the max (one low entry moves it by only 300 / lk)
    low = torch.rand((rows, lk), generator=rng).argsort(-1) < (lk + 1) // 2  # (rows, lk)
    x = torch.where(low, x - 300, x)
    out = call_softmax(stable_softmax, x, dim=-1)
    explain_all_zero(stable_softmax, out, x, rng, "these large logits")
    expect_close(
        out,
        softmax64(x),
        x.dtype,
        suspects=softmax_mistakes(x),
        nonfinite=named("no_max_subtraction"),
    )


def explain_all_zero(stable_softmax, out, x: torch.Tensor, rng, inputs: str) -> None:
    """Weights that are all 0 on extreme logits (`inputs`) either were 0 on any logits (an
    inverted torch.where) or vanished here only (exps that underflowed, or a sum that
    overflowed): rerun on logits near 0 to tell which, and say so."""
    if not isinstance(out, torch.Tensor) or out.shape != x.shape or out.detach().any():
        return
    moderate = randn(x.shape, rng)
    try:
        expect_close(
            call_softmax(stable_softmax, moderate, dim=-1),
            softmax64(moderate),
            x.dtype,
            suspects=softmax_mistakes(moderate),
        )
    except Mistake as found:
        raise Mistake(
            f"every weight is 0 on {inputs}, and on logits near 0 (shape {tuple(x.shape)}) "
            f"{found.message}",
            found.hint,
            found.key,
            found.diagnosis,
        ) from None
    description, fix = HINTS["weights_vanished"]
    raise Mistake(
        f"every weight is 0 on {inputs}, but right on logits near 0 (shape {tuple(x.shape)}): "
        f"it looks like {description}.",
        fix,
        "weights_vanished",
    )


def softmax_shifted_by_max_or_zero(x: torch.Tensor) -> torch.Tensor:
    """A softmax shifted by max(row max, 0), its exp taken in x's dtype: a row far below 0
    underflows to 0 (and comes out as zeros, with an empty-row guard)."""
    top = x.amax(-1, keepdim=True).clamp(min=0)
    exps = torch.exp(x - top).double()
    total = exps.sum(-1, keepdim=True)
    return exps / torch.where(total > 0, total, 1.0)


def softmax_shifts_rows_below_zero(stable_softmax, rng):
    """rows far below 0 (x ≈ -120 and -70) still sum to 1: each is shifted by its own max
    (float32's exp(x) is 0 below x = -104, so a shift by 0 leaves the rows near -120 nothing)"""
    rows, lk = draw(rng, 2, 5), draw(rng, 3, 9)
    # Rows where exp underflows whatever small shift is used, and rows where it does not: no row
    # in between (where exp(x) is subnormal) to blur the two. Within 80 of each other, so that a
    # max over the whole tensor is still right here.
    offsets = torch.where(torch.arange(rows) % 2 == 0, -120.0, -70.0).unsqueeze(-1)  # (rows, 1)
    x = (offsets + randn((rows, lk), rng, dtype=torch.float64, scale=2.0)).float()
    out = call_softmax(stable_softmax, x, dim=-1)
    explain_all_zero(stable_softmax, out, x, rng, "rows far below 0")
    expect_close(
        out,
        softmax64(x),
        x.dtype,
        suspects=[("max_clamped", softmax_shifted_by_max_or_zero(x)), *softmax_mistakes(x)],
        nonfinite=named("max_clamped"),
    )


def global_max_softmax(x: torch.Tensor) -> torch.Tensor:
    """A softmax shifted by the max of the whole tensor, its exp taken in x's dtype: the rows
    far below that max underflow to 0 (and come out as zeros, with an empty-row guard)."""
    exps = torch.exp(x - x.max()).double()
    total = exps.sum(-1, keepdim=True)
    return exps / torch.where(total > 0, total, 1.0)


def softmax_uses_max_per_row(stable_softmax, rng):
    """rows at very different scales (one near -70, one near +40) all come out right"""
    rows, lk = draw(rng, 3, 6), draw(rng, 3, 9)
    offsets = torch.linspace(-70.0, 40.0, rows).unsqueeze(-1)  # (rows, 1)
    x = (offsets + randn((rows, lk), rng, dtype=torch.float64)).float()
    out = call_softmax(stable_softmax, x, dim=-1)
    explain_all_zero(stable_softmax, out, x, rng, "rows at very different scales")
    try:
        expect_close(
            out,
            softmax64(x),
            x.dtype,
            suspects=[("global_max", global_max_softmax(x)), *softmax_mistakes(x)],
            nonfinite=named("global_max"),
        )
    except Mistake:  # probed only when wrong: a right answer is compared with the oracle alone
        if looks_like_global_max(out, x):
            expect_lowest_row_alone(stable_softmax, x, rng)
        raise


def looks_like_global_max(out, x: torch.Tensor) -> bool:
    """out is what a max over the whole tensor gives on x, or NaN/inf (its 0 / 0)."""
    if not isinstance(out, torch.Tensor) or out.shape != x.shape:
        return False
    return not torch.isfinite(out).all() or matches(out, global_max_softmax(x), x.dtype)


def expect_lowest_row_alone(stable_softmax, x: torch.Tensor, rng) -> None:
    """x's first row (the lowest, near -70) on its own, where a max over the whole tensor is
    that row's max: a softmax wrong there too shifts each row by something else than its max,
    and is not called a global max."""
    row = x[:1]
    try:
        out = call_softmax(stable_softmax, row, dim=-1)
        explain_all_zero(stable_softmax, out, row, rng, "the row near -70 alone")
        expect_close(out, softmax64(row), row.dtype, suspects=softmax_mistakes(row))
    except Mistake as found:
        raise Mistake(
            f"the row near -70 comes out wrong even alone (x[:1]), so its mistake is not a max "
            f"taken over other rows: {found.message}",
            found.hint,
            found.key,
            found.diagnosis,
        ) from None


def softmax_zero_weight_for_neg_inf(stable_softmax, rng):
    """-inf entries get exactly zero weight, the others still sum to 1"""
    lq, lk = two_lengths(rng)
    x = randn((lq, lk), rng, scale=2.0)
    blocked = torch.rand((lq, lk), generator=rng) < 0.4
    blocked[:, 0] = False  # every row keeps at least one finite entry
    x = x.masked_fill(blocked, float("-inf"))
    out = call_softmax(stable_softmax, x, dim=-1)
    expect_close(
        out,
        softmax64(x),
        x.dtype,
        suspects=[
            ("neg_inf_replaced", softmax64(x.masked_fill(blocked, 0.0))),
            ("neg_inf_replaced", softmax64(torch.where(blocked, x.amax(-1, keepdim=True), x))),
            *softmax_mistakes(x),
        ],
        nonfinite=named("nan_on_neg_inf"),
    )
    if (out[blocked] != 0).any():
        raise Mistake(
            "entries that were -inf got a non-zero weight.",
            HINTS["nan_on_neg_inf"][1],
            "nan_on_neg_inf",
        )


class FirstNaN(TorchFunctionMode):
    """A probe (grader/harness/measuring.py): the name of the first torch operation in the call
    that made a NaN out of inputs that had none, "" if none did. An all -inf row turns into NaN
    either at x - max (-inf - (-inf)) or, with the max guarded, at exps / sum (0 / 0)."""

    def __init__(self):
        super().__init__()
        self.operation = ""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        result = func(*args, **(kwargs or {}))
        if not self.operation and has_nan(result) and not any(map(has_nan, args)):
            self.operation = getattr(func, "__name__", "")
        return result

    def absorb(self, seen: dict):
        self.operation = self.operation or seen["operation"]


def has_nan(value) -> bool:
    return (
        isinstance(value, torch.Tensor) and value.is_floating_point() and bool(value.isnan().any())
    )


def softmax_all_neg_inf_row_is_zero(stable_softmax, rng):
    """a row that is all -inf (nothing to attend to) gives zeros, not NaN"""
    x = randn((draw(rng, 3, 6), draw(rng, 2, 8)), rng)
    empty = draw(rng, 0, x.shape[0] - 1)
    x[empty] = float("-inf")
    ref = softmax64(x)
    uniform = ref.clone()
    uniform[empty] = 1 / x.shape[1]  # what a -inf clamped to a finite number gives
    first_nan = FirstNaN()
    with measuring(f"{__name__}:FirstNaN", first_nan.absorb), first_nan:
        out = call_softmax(stable_softmax, x, dim=-1)
    divided = any(step in first_nan.operation for step in ("div", "mul", "reciprocal"))
    expect_close(
        out,
        ref,
        x.dtype,
        suspects=[("all_masked_row_uniform", uniform), *softmax_mistakes(x)],
        nonfinite=nan_on_empty_row(out, empty) if divided else named("nan_on_all_masked_row"),
    )


def nan_on_empty_row(out, empty: int) -> Mistake:
    """The Mistake for a NaN that a division made on the all -inf row `empty`: an unguarded
    0 / 0, or, where every other row came out all 0, a guard whose condition is inverted (it
    kept the division on the empty row only)."""
    others = torch.cat([out[:empty], out[empty + 1 :]]).detach()
    if not others.numel() or others.any():
        return named("zero_sum_division")
    description, fix = HINTS["division_guard_inverted"]
    return Mistake(
        f"Every other row is all 0 too: it looks like {description}.",
        fix,
        "division_guard_inverted",
    )


# ----------------------------------------------------------------------------- attention_scores


def float32_scales(d: int) -> list:
    """1/sqrt(d) as float32 code computes it: 1 / sqrt(d) and rsqrt(d), each rounded to float32."""
    d32 = torch.tensor(float(d))  # float32, as torch.tensor(d) without dtype= makes it
    return [1 / float(d32.sqrt()), float(d32.rsqrt())]


def halved_d_scales(d: int) -> list:
    """The scales that `d ** 1/2` gives: x / d ** 1/2 is x / d / 2, and s = d ** 1/2 then x / s
    is x / (d / 2)."""
    return [1 / (2 * d), 2 / d]


def scale_suspects(q: torch.Tensor, k: torch.Tensor) -> list:
    """What the usual scaling mistakes would give for these q and k."""
    d, lq, lk = q.shape[-1], q.shape[-2], k.shape[-2]
    untransposed = (
        [("keys_not_transposed", q.double() @ k.double() / math.sqrt(d))] if lk == d else []
    )
    return [
        *untransposed,
        ("missing_scale", scaled_scores(q, k, 1.0)),
        ("divided_by_d", scaled_scores(q, k, 1 / d)),
        ("times_sqrt_d", scaled_scores(q, k, math.sqrt(d))),
        *[("float32_constant", scaled_scores(q, k, scale)) for scale in float32_scales(d)],
        ("integer_sqrt", scaled_scores(q, k, 1 / math.isqrt(d))),
        ("scaled_by_length", scaled_scores(q, k, 1 / math.sqrt(lq))),
        ("scaled_by_length", scaled_scores(q, k, 1 / math.sqrt(lk))),
        *[("d_from_wrong_axis", scaled_scores(q, k, 1 / math.sqrt(size))) for size in q.shape[:-2]],
        ("swapped_q_k", scaled_scores(k, q, 1 / math.sqrt(d))),
        *[("power_precedence", scaled_scores(q, k, scale)) for scale in halved_d_scales(d)],
        ("cosine_similarity", cosine_scores(q, k)),
    ]


def cosine_scores(q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """q kᵀ with every query and key divided by its norm: cosine similarity, no 1/sqrt(d)."""
    q64, k64 = q.double(), k.double()
    q64, k64 = q64 / q64.norm(dim=-1, keepdim=True), k64 / k64.norm(dim=-1, keepdim=True)
    return q64 @ k64.transpose(-2, -1)


def call_scores(attention_scores, q: torch.Tensor, k: torch.Tensor, rng):
    """attention_scores(q, k); an input written into, or a crash on these leading dims only,
    is named."""
    try:
        return call_unchanged(attention_scores, {"q": q, "k": k})
    except Mistake as mistake:
        if mistake.key != "raised":
            raise

        def gives_answer(rank):
            probe_q, probe_k = probe_inputs(
                rng, rank, q.dtype, (PROBE_LQ, PROBE_D), (PROBE_LK, PROBE_D)
            )
            return right_answer(
                lambda: expect_close(
                    attention_scores(probe_q, probe_k),
                    scaled_scores(probe_q, probe_k, 1 / math.sqrt(PROBE_D)),
                    q.dtype,
                )
            )

        explain_by_rank_and_dims(mistake, q.dim(), gives_answer)
        explain_by_square_keys(attention_scores, mistake, rng, q.dtype)
        if crashed_with(mistake, "RuntimeError", "must match the size of tensor"):
            raise named_crash(mistake, "misaligned_broadcast") from None
        raise


def explain_by_square_keys(attention_scores, raised: Mistake, rng, dtype) -> None:
    """After the student's scores raised: run them where Lq = Lk = D, where q @ k and
    (q * k).sum(-1) run too, and name what they return there."""
    size = PROBE_LQ
    q, k = (randn((*PROBE_LEADING[:2], size, size), rng, dtype) for _ in range(2))  # (B, H, L, L)
    scale = 1 / math.sqrt(size)
    suspects = [
        ("keys_not_transposed", (q.double() @ k.double()) * scale),  # (B, H, L, L)
        ("elementwise_product", (q.double() * k.double()).sum(-1) * scale),  # (B, H, L)
    ]
    explain_by_square(
        raised,
        lambda: expect_close(
            attention_scores(q, k), scaled_scores(q, k, scale), dtype, suspects=suspects
        ),
        f"Lq = Lk = D (shape {tuple(q.shape)})",
    )


def expect_scores(attention_scores, q, k, rng, what="scores") -> None:
    expect_close(
        call_scores(attention_scores, q, k, rng),
        scaled_scores(q, k, 1 / math.sqrt(q.shape[-1])),
        q.dtype,
        what=what,
        suspects=scale_suspects(q, k),
    )


def scores_shapes(rng):
    """attention_shapes where no size is isqrt(D)²: a scale by sqrt(q.shape[0]) must not read as
    the integer square root of D."""
    while True:
        size = attention_shapes(rng)  # every size different, D not a perfect square
        if math.isqrt(size.d) ** 2 not in (size.batch, size.heads, size.lq, size.lk):
            return size


def scores_match_reference(attention_scores, rng):
    """(B, H, Lq, D) and (B, H, Lk, D) give q kᵀ / sqrt(D), shape (B, H, Lq, Lk), Lq ≠ Lk"""
    size = scores_shapes(rng)
    q = randn((size.batch, size.heads, size.lq, size.d), rng)  # (B, H, Lq, D)
    k = randn((size.batch, size.heads, size.lk, size.d), rng)  # (B, H, Lk, D)
    expect_scores(attention_scores, q, k, rng)


def scores_any_leading_dims(attention_scores, rng):
    """any leading dims: (L, D), (B, L, D) and (B, H, G, L, D)"""
    d = 2 ** draw(rng, 3, 5)  # not 4, where 2 / d (`d ** 1/2`) is 1 / sqrt(d)
    # q.shape[0] is no other size, nor isqrt(d)²: each scale by a wrong size names one mistake
    lq, lk = distinct_sizes(rng, (2, 7), (3, 12), avoid=(math.isqrt(d) ** 2,))
    (batch,) = distinct_sizes(rng, (2, 6), avoid=(lq, lk, math.isqrt(d) ** 2))
    for leading in [(), (batch,), (batch, draw(rng, 1, 3), 2)]:
        q, k = randn((*leading, lq, d), rng), randn((*leading, lk, d), rng)
        expect_scores(attention_scores, q, k, rng, what=f"scores for q of shape {tuple(q.shape)}")


def scores_keep_float64(attention_scores, rng):
    """float64 in, float64 out, to 1e-10"""
    lq, lk = two_lengths(rng)
    # not a perfect square (a float32 sqrt(d) is off in float64), nor isqrt(d)² = Lq or Lk
    d = head_dim(rng, avoid=tuple(n for n in range(5, 41) if math.isqrt(n) ** 2 in (lq, lk)))
    q = randn((lq, d), rng, dtype=torch.float64)
    k = randn((lk, d), rng, dtype=torch.float64)
    expect_scores(attention_scores, q, k, rng)


# ----------------------------------------------------------------------------- scaled_dot_product_attention


def sdpa64(q, k, v) -> tuple:
    """The float64 oracle: (out, weights), out from F.scaled_dot_product_attention."""
    weights = torch.softmax(scaled_scores(q, k, 1 / math.sqrt(q.shape[-1])), dim=-1)
    batched = [
        t.double().reshape(-1, *t.shape[-2:]) for t in (q, k, v)
    ]  # (N, L, D): any leading dims
    out = F.scaled_dot_product_attention(*batched).reshape(*q.shape[:-1], v.shape[-1])
    return out, weights


def weight_suspects(q, k, v) -> list:
    d, dv = q.shape[-1], v.shape[-1]
    scores = scaled_scores(q, k, 1 / math.sqrt(d))  # (..., Lq, Lk)
    exps = torch.exp(scores - scores.amax(-1, keepdim=True))
    weights = softmax64(scores)  # (..., Lq, Lk)
    return [
        ("softmax_over_queries", softmax64(scores, dim=-2)),
        *[("softmax_over_leading_dim", softmax64(scores, dim)) for dim in range(q.dim() - 2)],
        ("sum_over_queries", exps / exps.sum(-2, keepdim=True)),
        ("softmax_twice", softmax64(softmax64(scores))),
        ("renormalised_over_queries", weights / weights.sum(-2, keepdim=True)),
        ("missing_scale", softmax64(scaled_scores(q, k, 1.0))),
        ("divided_by_d", softmax64(scaled_scores(q, k, 1 / d))),
        ("times_sqrt_d", softmax64(scaled_scores(q, k, math.sqrt(d)))),
        ("scaled_by_value_dim", softmax64(scaled_scores(q, k, 1 / math.sqrt(dv)))),
        *[
            ("float32_constant", softmax64(scaled_scores(q, k, scale)))
            for scale in float32_scales(d)
        ],
        ("scale_after_softmax", softmax64(scaled_scores(q, k, 1.0)) / math.sqrt(d)),
        ("swapped_q_k", softmax64(scaled_scores(k, q, 1 / math.sqrt(d)))),
        *[("power_precedence", softmax64(scaled_scores(q, k, s))) for s in halved_d_scales(d)],
        ("scores_as_weights", scores),
        ("softmax_without_exp", scores / scores.sum(-1, keepdim=True)),
        *untransposed_keys(q, k),
    ]


def untransposed_keys(q, k) -> list:
    """The weights of q @ k (keys not transposed, or transposed twice), where Lk = d lets it run."""
    if k.shape[-2] != q.shape[-1]:
        return []
    return [("keys_not_transposed", softmax64(q.double() @ k.double() / math.sqrt(q.shape[-1])))]


def out_suspects(q, k, v, weights_ref: torch.Tensor) -> list:
    """What out would be with the scores in place of the weights, or with the weights or v
    transposed (where the shapes allow it)."""
    v64 = v.double()
    lq, lk, dv = weights_ref.shape[-2], weights_ref.shape[-1], v.shape[-1]
    found = [
        ("scores_not_weights", scaled_scores(q, k, 1 / math.sqrt(q.shape[-1])) @ v64),
        ("values_from_keys", weights_ref @ k.double()),
        ("out_divided_by_length", weights_ref @ v64 / lk),
    ]
    if lq == lk:
        found.append(("transposed_weights", weights_ref.transpose(-2, -1) @ v64))
    if dv == lk:
        found.append(("transposed_v", weights_ref @ v64.transpose(-2, -1)))
    return found


def unpack_attention(result, q, k, v) -> tuple:
    """`unpack`, with the pair in the wrong order named."""
    out_shape = (*q.shape[:-1], v.shape[-1])
    weights_shape = (*q.shape[:-1], k.shape[-2])
    if (
        isinstance(result, (tuple, list))
        and len(result) == 2
        and all(isinstance(t, torch.Tensor) for t in result)
        and out_shape != weights_shape
        and (tuple(result[0].shape), tuple(result[1].shape)) == (weights_shape, out_shape)
    ):
        raise Mistake(
            f"the first tensor returned has the weights' shape {weights_shape} and the second "
            f"the output's {out_shape}: it looks like {HINTS['swapped_outputs'][0]}.",
            HINTS["swapped_outputs"][1],
            "swapped_outputs",
        )
    if (
        isinstance(result, (tuple, list))
        and len(result) == 2
        and isinstance(result[1], torch.Tensor)
        and k.shape[-2] != q.shape[-2]
        and tuple(result[1].shape) == (*q.shape[:-2], k.shape[-2], q.shape[-2])
    ):
        raise Mistake(
            f"weights has shape {tuple(result[1].shape)}, expected {weights_shape}: it looks "
            f"like {HINTS['weights_transposed'][0]}.",
            HINTS["weights_transposed"][1],
            "weights_transposed",
        )
    if isinstance(result, (tuple, list)) and len(result) == 2:
        explain_wrong_shapes(*result, q.detach(), k.detach(), v.detach())
    return unpack(result, q, k, v)


def matches(got: torch.Tensor, expected: torch.Tensor, dtype) -> bool:
    return right_answer(lambda: expect_close(got, expected, dtype))


def explain_wrong_shapes(out, weights, q, k, v) -> None:
    """An out or weights of the wrong shape, named where its values say why: the right values
    with a size-1 dim squeezed away, or out from another formula (weights @ k)."""
    out_ref, weights_ref = sdpa64(q, k, v)
    for got, ref, name in ((out, out_ref, "out"), (weights, weights_ref, "weights")):
        if not isinstance(got, torch.Tensor) or got.shape == ref.shape:
            continue
        squeezed = tuple(size for size in ref.shape if size != 1)
        if tuple(got.shape) == squeezed and matches(got.reshape(ref.shape), ref, q.dtype):
            raise Mistake(
                f"{name} has shape {tuple(got.shape)}, expected {tuple(ref.shape)}, with the "
                f"right values: it looks like {HINTS['squeezed'][0]}.",
                HINTS["squeezed"][1],
                "squeezed",
            )
    if not isinstance(out, torch.Tensor) or out.shape == out_ref.shape:
        return
    for key, wrong in out_suspects(q, k, v, weights_ref):
        if out.shape == wrong.shape and matches(out, wrong, q.dtype):
            description, fix = HINTS[key]
            raise Mistake(
                f"out has shape {tuple(out.shape)}, expected {tuple(out_ref.shape)}: it "
                f"matches {description}.",
                fix,
                key,
            )


def expect_attention(result, q, k, v, what="") -> None:
    """The student's (out, weights) against the oracle, each common mistake named."""
    out, weights = unpack_attention(result, q, k, v)
    out_ref, weights_ref = sdpa64(q, k, v)
    # where out and weights have one shape, only their values tell a swapped pair
    swapped = ("swapped_outputs", out_ref)
    expect_close(
        weights,
        weights_ref,
        q.dtype,
        what=f"weights{what}",
        suspects=[*weight_suspects(q, k, v), swapped],
    )
    expect_close(
        out, out_ref, q.dtype, what=f"out{what}", suspects=out_suspects(q, k, v, weights_ref)
    )


def explain_by_square_inputs(sdpa, raised: Mistake, rng, dtype) -> None:
    """After the student's attention raised: run it where Lq = Lk = D = Dv, where transposed
    weights, a transposed v or swapped q and k fit, and name what it returns there."""
    size = PROBE_LQ
    q, k, v = (randn((*PROBE_LEADING[:2], size, size), rng, dtype, scale=2.0) for _ in range(3))
    explain_by_square(
        raised,
        lambda: expect_attention(sdpa(q, k, v), q, k, v),
        f"Lq = Lk = D = Dv (shape {tuple(q.shape)})",
    )


def call_attention(sdpa, q, k, v, rng):
    """sdpa(q, k, v); an input written into, or a crash that other shapes explain, is named."""
    try:
        return call_unchanged(sdpa, {"q": q, "k": k, "v": v})
    except Mistake as mistake:
        if mistake.key != "raised":
            raise

        def gives_answer(rank):
            widths = (PROBE_LQ, PROBE_D), (PROBE_LK, PROBE_D), (PROBE_LK, PROBE_D + 1)
            probe = probe_inputs(rng, rank, q.dtype, *widths)
            return right_answer(lambda: expect_attention(sdpa(*probe), *probe))

        explain_by_rank_and_dims(mistake, q.dim(), gives_answer)
        explain_by_square_inputs(sdpa, mistake, rng, q.dtype)
        raise


def sdpa_shapes(scaled_dot_product_attention, rng):
    """returns (out, weights): out (1, H, Lq, Dv), weights (1, H, Lq, Lk), with Lq ≠ Lk, Dv ≠ Dk
    (a batch of 1 keeps its dim)"""
    lq, lk = two_lengths(rng)
    batch, heads, dk = 1, draw(rng, 2, 3), 2 ** draw(rng, 3, 5)
    dv = dk + draw(rng, 1, 8)
    q, k = randn((batch, heads, lq, dk), rng), randn((batch, heads, lk, dk), rng)
    v = randn((batch, heads, lk, dv), rng)
    unpack_attention(call_attention(scaled_dot_product_attention, q, k, v, rng), q, k, v)


def sdpa_matches_reference(scaled_dot_product_attention, rng):
    """weights = softmax(q kᵀ / sqrt(d)) over keys, out equals F.scaled_dot_product_attention"""
    lq, lk = two_lengths(rng)
    dk, dv = 2 ** draw(rng, 3, 5), lk  # Dv = Lk, so that weights @ vᵀ has the right shape
    q, k = randn((2, 3, lq, dk), rng, scale=2.0), randn((2, 3, lk, dk), rng, scale=2.0)
    v = randn((2, 3, lk, dv), rng)
    expect_attention(call_attention(scaled_dot_product_attention, q, k, v, rng), q, k, v)


def sdpa_self_attention(scaled_dot_product_attention, rng):
    """self-attention (Lq = Lk): queries, keys and weights each play their own role"""
    length = draw(rng, 4, 9)
    shape = (draw(rng, 1, 3), length, length)  # (B, L, D) with D = L: every transpose fits
    q, k, v = (randn(shape, rng, scale=2.0) for _ in range(3))
    expect_attention(call_attention(scaled_dot_product_attention, q, k, v, rng), q, k, v)


def sdpa_survives_large_scores(scaled_dot_product_attention, rng):
    """large scores (q·k / sqrt(d) in the hundreds) stay finite"""
    lq, lk = two_lengths(rng)
    d = 2 ** draw(rng, 3, 5)
    q, k, v = randn((lq, d), rng, scale=20.0), randn((lk, d), rng, scale=20.0), randn((lk, d), rng)
    result = call_attention(scaled_dot_product_attention, q, k, v, rng)
    out, weights = unpack_attention(result, q, k, v)
    out_ref, weights_ref = sdpa64(q, k, v)
    # the logits, not q and k, go through exp: their rounding is what a right answer carries
    logits = q.double() @ k.double().transpose(-2, -1) / math.sqrt(d)  # (lq, lk)
    condition = float(logits.abs().max())
    if not torch.isfinite(weights).all():
        explain_by_moderate_scores(scaled_dot_product_attention, rng, q.dtype)
    overflow = Mistake(
        "Your softmax overflowed: it is right on moderate scores. If your function calls your "
        "stable_softmax and exercise 1's large-logits check fails, the overflow is there: fix "
        "exercise 1 first.",
        "the softmax of the weights must subtract each row's max before exp, so that large "
        "scores stay finite: call your stable_softmax, once it passes its own checks.",
        "no_max_subtraction",
    )
    expect_close(
        weights,
        weights_ref,
        q.dtype,
        what="weights",
        suspects=weight_suspects(q, k, v),
        nonfinite=overflow,
        condition=condition,
    )
    expect_close(
        out,
        out_ref,
        q.dtype,
        what="out",
        suspects=out_suspects(q, k, v, weights_ref),
        condition=condition,
    )


def explain_by_moderate_scores(sdpa, rng, dtype) -> None:
    """After the student's weights came out NaN or inf on large scores: a mistake that shows on
    scores near 1 as well is reported as that, not as an overflow."""
    lq, lk = two_lengths(rng)
    q, k, v = (randn((length, PROBE_D), rng, dtype) for length in (lq, lk, lk))
    try:
        expect_attention(sdpa(q, k, v), q, k, v)
    except Mistake as found:
        raise Mistake(
            f"weights has NaN or inf values on these large scores, and on scores near 1 (q and "
            f"k of shapes {tuple(q.shape)} and {tuple(k.shape)}) {found.message}",
            found.hint,
            found.key,
            found.diagnosis,
        ) from None


def sdpa_grads64(q, k, v, d_out) -> tuple:
    """(dq, dk, dv): float64 autograd through the oracle, for the gradient d_out of out."""
    leaves = [t.detach().double().requires_grad_() for t in (q, k, v)]
    out, _ = sdpa64(*leaves)
    return torch.autograd.grad(out, leaves, d_out.double())


def sdpa_passes_gradients(scaled_dot_product_attention, rng):
    """gradients flow from out back to q, k and v as through the float64 oracle: nothing detached"""
    lq, lk = two_lengths(rng)
    d = head_dim(rng, 5, 16)
    shapes = (2, lq, d), (2, lk, d), (2, lk, d + 1)  # q, k, v
    leaves = [randn(shape, rng).requires_grad_() for shape in shapes]
    d_out = randn((2, lq, d + 1), rng)  # the gradient of a loss with respect to out
    # copies, not the leaves themselves: an in-place edit is then named, not refused by autograd
    q, k, v = (leaf.clone() for leaf in leaves)
    result = call_attention(scaled_dot_product_attention, q, k, v, rng)
    expect_attention(result, q, k, v)  # a wrong forward is named as such, not by its gradients
    out, _ = result
    description, fix = HINTS["no_gradient"]
    if not out.requires_grad:
        raise Mistake(
            f"out does not require grad although q, k and v do: it looks like {description}.",
            fix,
            "no_gradient",
        )
    backward_or_named(out, d_out)
    missing = [name for name, leaf in zip("qkv", leaves) if leaf.grad is None]
    if missing:
        raise Mistake(
            f"after out.backward(), {' and '.join(f'{name}.grad' for name in missing)} "
            f"{'is' if len(missing) == 1 else 'are'} None: it looks like {description}.",
            fix,
            "no_gradient",
        )
    for name, leaf, ref in zip("qkv", leaves, sdpa_grads64(q, k, v, d_out)):
        expect_close(leaf.grad, ref, q.dtype, what=f"{name}.grad")


def backward_or_named(out: torch.Tensor, d_out: torch.Tensor) -> None:
    """out.backward(d_out); autograd refusing a tensor it saved that was changed in place is
    named (here a RuntimeError, from the student's kernel a Mistake that quotes it)."""
    try:
        out.backward(d_out)
    except (RuntimeError, Mistake) as error:
        if "modified by an inplace operation" not in str(error):
            raise
        description, fix = HINTS["in_place_breaks_gradient"]
        raise Mistake(
            f"out.backward() raised: {str(error).splitlines()[0]} It looks like {description}.",
            fix,
            "in_place_breaks_gradient",
        ) from None


def sdpa_keeps_float64(scaled_dot_product_attention, rng):
    """float64 in, float64 out, to 1e-10, with a 5-D input (B, H, G, L, D)"""
    lq, lk = two_lengths(rng)
    d, leading = head_dim(rng), (2, draw(rng, 1, 3), 2)  # d not a perfect square
    q = randn((*leading, lq, d), rng, dtype=torch.float64)
    k = randn((*leading, lk, d), rng, dtype=torch.float64)
    v = randn((*leading, lk, d + 1), rng, dtype=torch.float64)
    expect_attention(call_attention(scaled_dot_product_attention, q, k, v, rng), q, k, v)


EXERCISES = {
    "stable_softmax": Exercise(
        checks=[
            softmax_matches_reference,
            softmax_follows_dim,
            softmax_keeps_float64,
            softmax_survives_large_logits,
            softmax_uses_max_per_row,
            softmax_shifts_rows_below_zero,
            softmax_zero_weight_for_neg_inf,
            softmax_all_neg_inf_row_is_zero,
            softmax_follows_device,
        ],
        forbidden=SOFTMAX,
    ),
    "attention_scores": Exercise(
        checks=[scores_match_reference, scores_any_leading_dims, scores_keep_float64],
        forbidden=SDPA,
    ),
    "scaled_dot_product_attention": Exercise(
        checks=[
            sdpa_shapes,
            sdpa_matches_reference,
            sdpa_self_attention,
            sdpa_survives_large_scores,
            sdpa_keeps_float64,
            sdpa_passes_gradients,
        ],
        forbidden={**SOFTMAX, **SDPA},
    ),
}
