"""Checks for day02-masks: causal_mask, padding_mask, to_additive_mask, masked_attention.

Masks are checked exactly, against `torch.ones(...).tril(diagonal=...)` and brute-force loops.
Attention is checked against F.scaled_dot_product_attention with the same boolean mask, in
float64, with the course's rule for a query that may attend to nothing: zero weights and a zero
output. Shapes, lengths and masks are drawn from `rng`, so hidden tests see fresh ones.
"""

import functools
import math
import re

import torch
import torch.nn.functional as F

import course.reference.masks as library
from grader.harness.checking import (
    Mistake,
    NotImplementedYet,
    crashed_with,
    expect_close,
    expect_tensor,
    named,
    named_crash,
)
from grader.harness.guard import SDPA, SOFTMAX
from grader.harness.measuring import measuring
from grader.suites import Exercise, day01_sdpa
from grader.suites._common import (
    call_unchanged,
    draw,
    explain_by_rank,
    randn,
    right_answer,
    softmax64,
    two_lengths,
    unpack,
)

HINTS = {
    **{
        key: day01_sdpa.HINTS[key]
        for key in (
            "softmax_over_queries",
            "modified_input",
            "scaled_by_length",
            "scaled_by_value_dim",
            "batched_transpose",
            "fixed_rank",
        )
    },
    "missing_scale": (
        "q kᵀ without the 1/sqrt(d) scale",
        "divide the scores by math.sqrt(d) with d = q.shape[-1]: q @ k.transpose(-2, -1) / "
        "math.sqrt(d), before the mask and the softmax.",
    ),
    "multiplied_by_sqrt_d": (
        "q kᵀ multiplied by sqrt(d) instead of divided by it",
        "divide the scores by math.sqrt(d): q @ k.transpose(-2, -1) / math.sqrt(d) (or times "
        "1 / math.sqrt(d)).",
    ),
    "transposed_q": (
        "q transposed instead of k: q.transpose(-2, -1) @ k multiplies (..., d, Lq) by "
        "(..., Lk, d)",
        "the scores are (..., Lq, Lk), one row per query: q @ k.transpose(-2, -1) is "
        "(..., Lq, d) @ (..., d, Lk). Transpose k, not q.",
    ),
    "divided_by_d": (
        "q kᵀ / d instead of / sqrt(d)",
        "divide the scores by math.sqrt(d), the square root of the head dimension q.shape[-1].",
    ),
    "dtype_not_restored": (
        "a computation moved to another dtype (q.float(), say) and never cast back",
        "compute in q's dtype, or cast back: weights.to(v.dtype) before weights @ v, and out "
        "and weights returned in q's dtype (out.to(q.dtype), weights.to(q.dtype)). Computing "
        "in float32 or float64 inside is fine once cast back; a tensor made without dtype= is "
        "float32.",
    ),
    "empty_rows_with_all": (
        "the rows to zero found with all() instead of any(): every query with a blocked key "
        "lost its weights, not only the queries with no key at all",
        "a query has something to attend to when any of its keys is allowed: "
        "weights * mask.any(dim=-1, keepdim=True), not mask.all(...).",
    ),
    "empty_rows_over_queries": (
        "the rows with nothing to attend to found with any(dim=-2), over the queries",
        "a query's row is empty when none of its keys is allowed: look along the keys, "
        "weights * mask.any(dim=-1, keepdim=True).",
    ),
    "not_boolean": (
        "a mask that is not a torch.bool tensor",
        "masks are torch.bool with True = may attend: a comparison such as "
        "`keys <= queries` gives one, or pass dtype=torch.bool.",
    ),
    "inverted_mask": (
        "the mask inverted: True read as blocked",
        "the course's masks say True = may attend. Keep the True entries and "
        "block the False ones (masked_fill(~mask, ...), not masked_fill(mask, ...)).",
    ),
    "excludes_diagonal": (
        "a causal mask without its diagonal: each query blocked from itself (`<` instead of "
        "`<=`, or key positions counted from 1)",
        "query i may attend to key i too: keep the diagonal (tril(diagonal=0) for a square "
        "mask, `<=` rather than `<`), and count key positions from 0: torch.arange(lk), not "
        "torch.arange(1, lk + 1).",
    ),
    "upper_triangular": (
        "the upper triangle: queries attending to the future instead of the past (which is "
        "also the right mask transposed, rows as keys)",
        "key j is visible to query i when j <= i (the lower triangle, tril); rows are queries "
        "and columns keys: query positions as a column [:, None], key positions as a row.",
    ),
    "shifted_by_one": (
        "a causal mask shifted by one: each query also sees the next key (query positions "
        "counted from 1, or `<= i + 1`)",
        "count positions from 0: query i (absolute position lk - lq + i) sees keys "
        "j <= lk - lq + i, so torch.arange(lq) and torch.arange(lk), both starting at 0.",
    ),
    "top_left_causal": (
        "a top-left aligned causal mask (what is_causal=True does in "
        "F.scaled_dot_product_attention)",
        "the course's causal mask is bottom-right aligned: query i is at absolute "
        "position lk - lq + i, so it sees keys j <= lk - lq + i "
        "(tril(diagonal=lk - lq)).",
    ),
    "offset_sign": (
        "a causal mask with its offset's sign flipped: tril(diagonal=lq - lk)",
        "query i sits at absolute position lk - lq + i, so it sees keys j <= i + (lk - lq): "
        "the diagonal is lk - lq, positive when there are more keys than queries.",
    ),
    "first_key_always_visible": (
        "every query allowed key 0, even the first lq - lk queries, which come before every key",
        "when lq > lk, queries 0 .. lq - lk - 1 come before the first key: their rows are all "
        "False (tril(diagonal=lk - lq) gives that; a slice [:max(..., 0) + 1] does not).",
    ),
    "square_then_sliced": (
        "the last lq rows of a square (lk, lk) causal mask: right while lq <= lk, but [-lq:] "
        "cannot give more than lk rows",
        "when lq > lk, the first lq - lk queries come before every key and need rows of False: "
        "build the (lq, lk) mask directly, torch.ones(lq, lk, dtype=torch.bool, "
        "device=device).tril(diagonal=lk - lq), or compare positions with torch.arange.",
    ),
    "device_none_unhandled": (
        "device=None (the default) not handled: it raised, while device='cpu' works",
        "pass device straight to torch.arange(..., device=device) or torch.ones(..., "
        "device=device): they read None as the default device, the CPU; torch.device(None) "
        "does not.",
    ),
    "lk_none_unhandled": (
        "lk=None (left out) not replaced by lq",
        "begin with `if lk is None: lk = lq`: causal_mask(L) is the square (L, L) mask.",
    ),
    "extra_dims": (
        "the right mask with extra size-1 dims",
        "return the documented shape only; whoever uses the mask adds the dims it needs "
        "(mask[:, None, None, :]).",
    ),
    "width_from_lengths": (
        "a mask as wide as the longest length instead of max_len",
        "make max_len columns: torch.arange(max_len). A batch may be padded beyond its "
        "longest sequence.",
    ),
    "padding_no_unsqueeze": (
        "positions and lengths compared as two 1-D tensors, without making one a column",
        "compare a row with a column: torch.arange(max_len)[None, :] < lengths[:, None] "
        "broadcasts to (B, max_len).",
    ),
    "additive_positive": (
        "a large positive number (torch.finfo(dtype).max) where blocked entries need the most "
        "negative one",
        "use torch.finfo(dtype).min: added to a score, it sends that key's weight to 0; a "
        "positive number would make the blocked key win.",
    ),
    "finfo_tiny": (
        "torch.finfo(dtype).tiny (about 1e-38 in float32, almost 0; with or without a minus "
        "sign) instead of the most negative number",
        "use torch.finfo(dtype).min (about -3.4e38 in float32): .tiny is the smallest positive "
        "normal number, not the minimum.",
    ),
    "none_not_handled": (
        "mask or key_padding_mask used without checking for None",
        "both are optional: start with no mask (all True) and AND in each one only when it "
        "is not None.",
    ),
    "masks_combined_with_or": (
        "mask and key_padding_mask combined with OR (a key allowed by either one)",
        "a key is visible only if both allow it: AND them, mask & key_padding_mask viewed as "
        "(B, 1, ..., 1, Lk).",
    ),
    "key_padding_fixed_rank": (
        "key_padding_mask reshaped for one number of dims only ((B, 1, 1, Lk) fits 4-D inputs, "
        "(B, 1, Lk) 3-D ones)",
        "view key_padding_mask (B, Lk) as (B, 1, ..., 1, Lk), with as many 1s as q has dims "
        "between the batch and the last two: key_padding_mask.view(B, *[1] * (q.dim() - 2), "
        "Lk).",
    ),
    "swapped_lengths": (
        "a mask of shape (lk, lq) instead of (lq, lk)",
        "rows are queries and columns are keys: the mask is (lq, lk).",
    ),
    "ignores_device": (
        "a mask made on the CPU whatever `device` says",
        "create it where it will be used: torch.arange(..., device=device) or "
        "torch.ones(..., device=device).",
    ),
    "off_by_one": (
        "an off-by-one in the padding mask",
        "sequence b has real tokens at positions 0 .. lengths[b] - 1: "
        "position < length, not <=, and not < length - 1.",
    ),
    "padding_transposed": (
        "a padding mask of shape (max_len, B) instead of (B, max_len)",
        "one row per sequence: compare torch.arange(max_len) (positions, a row) "
        "with lengths[:, None] (one length per row).",
    ),
    "left_padded": (
        "a mask for left padding (real tokens at the end)",
        "the real tokens come first and the padding after them (right padding).",
    ),
    "ones_where_allowed": (
        "1 where the mask is True (mask.to(dtype) as the start) instead of 0",
        "allowed entries must add nothing to the scores: start from zeros, torch.zeros(mask.shape, "
        "dtype=dtype, device=mask.device), then masked_fill(~mask, torch.finfo(dtype).min).",
    ),
    "range_includes_end": (
        "one position too many: positions from torch.range(0, max_len) or "
        "torch.arange(max_len + 1), which include max_len",
        "make exactly max_len positions, 0 .. max_len - 1: torch.arange(max_len) stops before "
        "its end (torch.range, deprecated, includes it).",
    ),
    "not_additive": (
        "the mask returned as 0/1 numbers instead of 0 / a large negative",
        "blocked entries are added to the scores, so they must be hugely negative: "
        "0 where allowed, torch.finfo(dtype).min where blocked.",
    ),
    "additive_neg_inf": (
        "-inf for blocked entries",
        "use torch.finfo(dtype).min: with -inf, a query that may attend to nothing "
        "gets a row of -inf, and softmax turns it into NaN.",
    ),
    "not_dtype_min": (
        "a large negative other than the dtype's own minimum (a fixed -1e9, say, or a multiple "
        "of finfo.min)",
        "use torch.finfo(dtype).min: a fixed number is either too small for one "
        "dtype or overflows another (float16 stops at -65504).",
    ),
    "float16_overflow": (
        "a large negative like -1e9 overflowing float16",
        "float16's range ends at -65504: -1e9 (or float32's minimum) becomes -inf "
        "or cannot be written at all. Use the dtype's own minimum, "
        "torch.finfo(dtype).min (inside attention, -inf also works with a softmax "
        "that gives zeros for an all -inf row).",
    ),
    "mask_ignored": (
        "attention with the mask left out",
        "apply the mask to the scores before the softmax: blocked keys must get "
        "exactly zero weight.",
    ),
    "key_padding_inverted": (
        "key_padding_mask read as True = padding (nn.MultiheadAttention's convention), the "
        "opposite of the course's",
        "here key_padding_mask is True for a real token, like every mask of the course "
        "(nn.MultiheadAttention's key_padding_mask means the opposite): use it as it is, "
        "without ~.",
    ),
    "blocked_scores_zero": (
        "blocked scores set to 0 (masked_fill(~mask, 0)) instead of a large negative: a blocked "
        "key still gets weight, since exp(0) is not 0",
        "give blocked scores the most negative number, scores.masked_fill(~mask, "
        "torch.finfo(scores.dtype).min) (or add to_additive_mask(mask, scores.dtype)): the "
        "softmax then gives them weight 0.",
    ),
    "key_padding_ignored": (
        "attention that ignores key_padding_mask",
        "combine it with the mask: view it as (B, 1, ..., 1, Lk) and AND it "
        "with mask (or use it alone when mask is None).",
    ),
    "masked_queries": (
        "the padding mask applied to queries instead of keys",
        "padding hides *keys* from every query: key_padding_mask (B, Lk) becomes "
        "(B, 1, 1, Lk), broadcast over heads and queries, not (B, 1, Lk, 1).",
    ),
    "nan_on_fully_masked_row": (
        "NaN for a query that may attend to no key",
        "a row that is all blocked has no key to normalise over: give it "
        "zero weights and a zero output. Either fill with -inf and use a "
        "softmax that returns zeros for an all -inf row "
        "(course.reference.sdpa.stable_softmax does), or multiply the weights "
        "by mask.any(dim=-1, keepdim=True).",
    ),
    "fully_masked_row_uniform": (
        "uniform weights 1/Lk for a query that may attend to no key",
        "a fully blocked row of equal large negatives softmaxes to 1/Lk: "
        "zero those rows, weights * mask.any(dim=-1, keepdim=True).",
    ),
    "mask_after_softmax": (
        "the mask applied after the softmax (weights * mask): the allowed keys' weights no "
        "longer sum to 1",
        "mask the scores before the softmax: scores.masked_fill(~mask, torch.finfo(scores.dtype)"
        ".min) (or + to_additive_mask), then softmax; blocked keys get 0, the rest sum to 1.",
    ),
    "scaled_after_softmax": (
        "the weights divided by sqrt(d) after the softmax, instead of the scores before it",
        "scale the scores, q @ k.transpose(-2, -1) / math.sqrt(d), then mask and softmax: "
        "each query's weights sum to 1.",
    ),
    "outputs_swapped": (
        "(weights, out) returned instead of (out, weights)",
        "end with `return out, weights`: the output first, then the weights.",
    ),
    "any_without_keepdim": (
        "the rows with nothing to attend to found with any(dim=-1) without keepdim=True: "
        "(..., Lq) does not line up with the weights (..., Lq, Lk)",
        "keep the reduced axis: mask.any(dim=-1, keepdim=True) is (..., Lq, 1), one flag per "
        "query, which broadcasts over the keys.",
    ),
    "mask_truth_value": (
        "a tensor tested with `if mask:` (a tensor of many values is neither True nor False)",
        "test whether a mask was given with `if mask is not None:`.",
    ),
    "mask_not_broadcast": (
        "a mask that does not broadcast over batch and heads",
        "the mask may be (Lq, Lk), (B, 1, Lq, Lk), (B, 1, 1, Lk), ...: use "
        "scores.masked_fill(~mask, value) or torch.where(mask, scores, value), "
        "which broadcast. Boolean indexing scores[~mask] needs the full shape.",
    ),
}


# ----------------------------------------------------------------------------- exact mask checks


def expect_mask(
    out, ref: torch.Tensor, what: str, suspects: list = (), transposed: str = "swapped_lengths"
) -> None:
    """`out` must equal the boolean `ref` exactly; name the mistake when it matches a suspect,
    and name `transposed` when a non-square `ref` comes back with its two dims swapped."""
    for key, wrong in suspects:
        if (
            isinstance(out, torch.Tensor)
            and out.shape == wrong.shape
            and torch.equal(out.detach().cpu().bool(), wrong)
            and not torch.equal(wrong, ref)
        ):
            description, hint = HINTS[key]
            if key == "inverted_mask":  # this mask is built, not applied: no masked_fill here
                hint = INVERTED_BUILT_MASK
            raise Mistake(f"{what} is wrong: it matches {description}.", hint, key)
    if (
        isinstance(out, torch.Tensor)
        and ref.dim() == 2
        and out.shape == ref.shape[::-1] != ref.shape
    ):
        description, hint = HINTS[transposed]
        raise Mistake(
            f"{what} has shape {tuple(out.shape)}, expected {tuple(ref.shape)}: it looks like "
            f"{description}.",
            hint,
            transposed,
        )
    if (
        isinstance(out, torch.Tensor)
        and out.dim() > ref.dim()
        and out.numel() == ref.numel()
        and out.squeeze().shape == ref.squeeze().shape
        and torch.equal(out.detach().cpu().reshape(ref.shape).bool(), ref)
    ):
        raise Mistake(
            f"{what} has shape {tuple(out.shape)}, expected {tuple(ref.shape)}: it holds the "
            f"right mask, as {HINTS['extra_dims'][0]}.",
            HINTS["extra_dims"][1],
            "extra_dims",
        )
    try:
        expect_tensor(out, what, ref.shape, torch.bool)
    except Mistake as mistake:
        if mistake.key != "wrong_dtype":
            raise
        raise Mistake(
            f"{what} has dtype {out.dtype}, expected torch.bool.",
            HINTS["not_boolean"][1],
            "not_boolean",
        ) from None
    out = out.detach().cpu()
    if torch.equal(out, ref):
        return
    wrong = torch.nonzero(out != ref)
    first = tuple(wrong[0].tolist())
    raise Mistake(
        f"{what} differs in {len(wrong)} of {ref.numel()} entries; the first is at "
        f"index {first}: {bool(out[first])}, expected {bool(ref[first])}.",
        hint="draw the tiny example above by hand and compare it with your mask, "
        "row by row (rows are queries, columns are keys).",
        key="wrong_mask",
    )


INVERTED_BUILT_MASK = (
    "the course's masks say True = may attend (a key the query may see, a real token) and "
    "False = blocked: turn your comparison around (`<=` rather than `>`, `<` rather than "
    "`>=`), or drop the ~."
)


def causal_reference(lq: int, lk: int) -> torch.Tensor:
    """(lq, lk): query i, at absolute position lk - lq + i, sees keys 0 .. lk - lq + i."""
    return torch.ones(lq, lk, dtype=torch.bool).tril(diagonal=lk - lq)


def causal_suspects(lq: int, lk: int) -> list:
    ones = torch.ones(lq, lk, dtype=torch.bool)
    ref = causal_reference(lq, lk)
    # lq > lk: the square (lk, lk) mask cut to its last lq rows keeps only lk of them
    sliced = [("square_then_sliced", ref[-lk:])] if lq > lk else []
    return [
        ("inverted_mask", ~ref),
        ("top_left_causal", ones.tril()),
        ("excludes_diagonal", ones.tril(diagonal=lk - lq - 1)),
        ("excludes_diagonal", ones.tril(diagonal=-1)),
        ("upper_triangular", ones.triu(diagonal=lk - lq)),
        ("upper_triangular", ones.triu()),
        ("swapped_lengths", torch.ones(lk, lq, dtype=torch.bool).tril(diagonal=lq - lk)),
        ("swapped_lengths", torch.ones(lk, lq, dtype=torch.bool).tril()),
        ("offset_sign", ones.tril(diagonal=lq - lk)),
        ("first_key_always_visible", ref | (torch.arange(lk) == 0)),
        ("shifted_by_one", ones.tril(diagonal=lk - lq + 1)),
        *sliced,
    ]


# ----------------------------------------------------------------------------- causal_mask


def naming_device_none(check):
    """The check, with a crash of causal_mask on device=None (left out, or passed) named when the
    same call with device='cpu' works."""

    @functools.wraps(check)
    def with_device_none_named(causal_mask, rng):
        def call(*args, **kwargs):
            try:
                return causal_mask(*args, **kwargs)
            except Mistake as mistake:
                if mistake.key != "raised" or kwargs.get("device") is not None:
                    raise
                if not right_answer(lambda: causal_mask(*args, **{**kwargs, "device": "cpu"})):
                    raise
                description, fix = HINTS["device_none_unhandled"]
                raise Mistake(
                    f"{mistake.message}\n      It looks like {description}.",
                    fix,
                    "device_none_unhandled",
                ) from None

        return check(call, rng)

    return with_device_none_named


@naming_device_none
def causal_square(causal_mask, rng):
    """lq = lk (lk left out, then given): query i sees keys 0 .. i, diagonal included"""
    length = draw(rng, 2, 9)
    ref = causal_reference(length, length)
    try:
        square = causal_mask(length)
    except Mistake as mistake:
        if mistake.key == "raised" and isinstance(causal_mask(length, length), torch.Tensor):
            raise Mistake(
                f"causal_mask({length}) {mistake.message.removeprefix('your function ')} "
                f"while causal_mask({length}, {length}) works: it looks like "
                f"{HINTS['lk_none_unhandled'][0]}.",
                HINTS["lk_none_unhandled"][1],
                "lk_none_unhandled",
            ) from None
        raise
    expect_mask(square, ref, f"causal_mask({length})", causal_suspects(length, length))
    expect_mask(
        causal_mask(length, length),
        ref,
        f"causal_mask({length}, {length})",
        causal_suspects(length, length),
    )


@naming_device_none
def causal_more_keys(causal_mask, rng):
    """lq < lk (new queries after cached keys): bottom-right aligned, not top-left"""
    lq, lk = two_lengths(rng)
    expect_mask(
        causal_mask(lq, lk),
        causal_reference(lq, lk),
        f"causal_mask({lq}, {lk})",
        causal_suspects(lq, lk),
    )


@naming_device_none
def causal_one_query(causal_mask, rng):
    """lq = 1 (one decoding step with a KV cache): the new query sees every key"""
    lk = draw(rng, 2, 12)
    suspects = causal_suspects(1, lk)
    if is_right_square_mask(causal_mask, lk):  # only the mistakes a square mask hides remain
        square = causal_suspects(lk, lk)
        ref = causal_reference(lk, lk)
        suspects = [s for s, (_, wrong) in zip(suspects, square) if torch.equal(wrong, ref)]
    expect_mask(causal_mask(1, lk), causal_reference(1, lk), f"causal_mask(1, {lk})", suspects)


def is_right_square_mask(causal_mask, length: int) -> bool:
    """Whether causal_mask(length, length) is right. One row of False, causal_mask(1, lk), may be
    the mask inverted or its offset flipped; only the second is right on a square mask."""
    try:
        square = causal_mask(length, length)
    except Mistake:
        return False
    ref = causal_reference(length, length)
    return (
        isinstance(square, torch.Tensor)
        and square.shape == ref.shape
        and torch.equal(square.detach().cpu().bool(), ref)
    )


@naming_device_none
def causal_more_queries(causal_mask, rng):
    """lq > lk: the first lq - lk queries see no key at all (rows of False)"""
    lk, lq = two_lengths(rng)
    expect_mask(
        causal_mask(lq, lk),
        causal_reference(lq, lk),
        f"causal_mask({lq}, {lk})",
        causal_suspects(lq, lk),
    )


@naming_device_none
def causal_follows_device(causal_mask, rng):
    """device= is honoured (a mask made on PyTorch's 'meta' device), and None means the CPU"""
    lq, lk = two_lengths(rng)
    out = causal_mask(lq, lk, device=None)
    what = f"causal_mask({lq}, {lk}, device=None)"
    expect_mask(out, causal_reference(lq, lk), what, causal_suspects(lq, lk))
    if out.device.type != "cpu":
        raise Mistake(
            f"causal_mask(..., device=None) is on {out.device}, expected the CPU.",
            HINTS["ignores_device"][1],
            "ignores_device",
        )
    try:
        out = causal_mask(lq, lk, device=torch.device("meta"))
    except Mistake as mistake:  # one tensor on 'meta', one on the CPU: device= given to only one
        if mistake.key != "raised" or "expected device" not in mistake.message:
            raise
        raise Mistake(
            f"causal_mask({lq}, {lk}, device='meta'): {mistake.message}\n      It looks like "
            "one tensor made on the CPU, whatever device= says, next to one made on it.",
            "pass device=device to every tensor you create (both torch.arange calls), not to "
            "one of them only.",
            "ignores_device",
        ) from None
    if not isinstance(out, torch.Tensor) or out.device.type != "meta":
        where = out.device if isinstance(out, torch.Tensor) else type(out).__name__
        raise Mistake(
            f"causal_mask({lq}, {lk}, device='meta') returned a mask on {where}.",
            HINTS["ignores_device"][1],
            "ignores_device",
        )
    expect_tensor(out, f"causal_mask({lq}, {lk}, device='meta')", (lq, lk), torch.bool)


# ----------------------------------------------------------------------------- padding_mask


def padding_reference(lengths: torch.Tensor, max_len: int) -> torch.Tensor:
    """A brute-force loop: row b is True at positions 0 .. lengths[b] - 1."""
    mask = torch.zeros(len(lengths), max_len, dtype=torch.bool)
    for b, length in enumerate(lengths.tolist()):
        for position in range(length):
            mask[b, position] = True
    return mask


def padding_suspects(lengths: torch.Tensor, max_len: int) -> list:
    ref = padding_reference(lengths, max_len)
    positions = torch.arange(max_len)
    suspects = [
        ("inverted_mask", ~ref),
        ("width_from_lengths", padding_reference(lengths, int(lengths.max()))),
        ("off_by_one", positions <= lengths[:, None]),
        ("off_by_one", positions < lengths[:, None] - 1),
        ("off_by_one", positions[1:] <= lengths[:, None]),
        ("padding_transposed", ref.T),
        ("left_padded", ref.flip(-1)),
        ("range_includes_end", torch.arange(max_len + 1) < lengths[:, None]),
    ]
    if len(lengths) in (1, max_len):  # 1-D positions against 1-D lengths: it runs, elementwise
        suspects.append(("padding_no_unsqueeze", positions < lengths))
    return suspects


def draw_lengths(rng: torch.Generator, batch: int, max_len: int, dtype=torch.long) -> torch.Tensor:
    """(batch,) lengths in [0, max_len], with one empty and one full sequence among them."""
    lengths = torch.randint(1, max_len, (batch,), generator=rng)
    lengths[0], lengths[-1] = 0, max_len
    return lengths[torch.randperm(batch, generator=rng)].to(dtype)


def expect_padding(padding_mask, lengths: torch.Tensor, max_len: int, what: str) -> None:
    """padding_mask(lengths, max_len) must be the brute-force loop's mask, exactly."""
    expect_mask(
        call_padding(padding_mask, lengths, max_len),
        padding_reference(lengths, max_len),
        what,
        padding_suspects(lengths.long(), max_len),
        transposed="padding_transposed",
    )


def call_padding(padding_mask, lengths: torch.Tensor, max_len: int):
    """padding_mask(a copy of lengths, max_len); a broadcast error is named."""
    try:
        return call_unchanged(padding_mask, {"lengths": lengths.clone(), "max_len": max_len})
    except Mistake as mistake:
        if mistake.key == "raised" and "must match the size of tensor" in mistake.message:
            raise Mistake(
                f"{mistake.message}\n      It looks like {HINTS['padding_no_unsqueeze'][0]}.",
                HINTS["padding_no_unsqueeze"][1],
                "padding_no_unsqueeze",
            ) from None
        raise


def padding_matches_loop(padding_mask, rng):
    """True for the first lengths[b] positions of each row, exactly (lengths 0 and max_len too)"""
    batch, max_len = draw(rng, 3, 6), draw(rng, 4, 10)
    lengths = draw_lengths(rng, batch, max_len)
    expect_padding(padding_mask, lengths, max_len, f"padding_mask({lengths.tolist()}, {max_len})")


def padding_int32_and_square(padding_mask, rng):
    """int32 lengths, and B = max_len (so a transposed mask cannot hide behind its shape)"""
    max_len = draw(rng, 3, 8)
    lengths = draw_lengths(rng, max_len, max_len, dtype=torch.int32)
    what = f"padding_mask({lengths.tolist()} (int32), {max_len})"
    expect_padding(padding_mask, lengths, max_len, what)


def padding_one_sequence(padding_mask, rng):
    """B = 1, and max_len longer than every length"""
    max_len = draw(rng, 4, 12)
    lengths = torch.tensor([draw(rng, 1, max_len - 1)])
    expect_padding(padding_mask, lengths, max_len, f"padding_mask({lengths.tolist()}, {max_len})")


def padding_follows_device(padding_mask, rng):
    """lengths on PyTorch's 'meta' device give a mask there (on lengths' device)"""
    batch, max_len = draw(rng, 2, 5), draw(rng, 4, 9)
    lengths = draw_lengths(rng, batch, max_len)
    expect_on_meta(
        lambda device: padding_mask(lengths.to(device), max_len),
        f"padding_mask(lengths on 'meta', {max_len})",
    )


def expect_on_meta(call, what: str) -> None:
    """`call("meta")`, given inputs on PyTorch's 'meta' device (shapes, no data), must return a
    tensor there. A crash that says a tensor was on the CPU is ignores_device. Code that reads
    the values (a loop over lengths.tolist(), say) cannot run without data: it is tested by
    `expect_made_on_input_device` instead, unless the line that raised moves a tensor to the
    CPU. First `call("cpu")`: code that raises on ordinary inputs is reported with its own
    error, never passed (on 'meta', with no values to read, some crashes do not happen)."""
    call("cpu")
    try:
        out = call("meta")
    except NotImplementedYet as stopped:  # "Cannot copy out of meta tensor": values were read
        if not moves_to_cpu(stopped.line):
            return expect_made_on_input_device(call, what)
        raise Mistake(
            f"{what} stopped at `{stopped.line}`, which copies the input to the CPU: the mask "
            "would then be made on the CPU, whatever device the input is on.",
            ON_INPUT_DEVICE,
            "ignores_device",
        ) from None
    except Mistake as mistake:
        if mistake.key != "raised":
            raise
        if "expected device" not in mistake.message:
            return expect_made_on_input_device(call, what)
        raise Mistake(
            f"{what}: {mistake.message} It looks like a tensor made on the CPU, whatever "
            "device the input is on.",
            ON_INPUT_DEVICE,
            "ignores_device",
        ) from None
    if isinstance(out, torch.Tensor) and out.device.type != "meta":
        raise Mistake(
            f"{what} returned a tensor on {out.device}, not on the input's device.",
            ON_INPUT_DEVICE,
            "ignores_device",
        )


def expect_made_on_input_device(call, what: str) -> None:
    """`call("cpu")` with 'meta' as PyTorch's default device: a tensor made without device=
    lands on 'meta' then, so a result there, or a crash where it meets the input, was built
    without the input's device. Another crash says nothing (torch.arange(n).to(lengths.device)
    cannot copy out of 'meta'), and passes: `expect_on_meta` has seen the same call run on
    the CPU."""
    try:
        with measuring(f"{__name__}:MetaByDefault", lambda seen: None), MetaByDefault():
            out = call("cpu")
    except NotImplementedYet:
        return
    except Mistake as mistake:
        if mistake.key == "raised" and "meta" in mistake.message:  # a tensor there met the input
            raise Mistake(
                f"{what} reads the values, so it ran again on the CPU, with 'meta' as PyTorch's "
                f"default device: {mistake.message}\n      It looks like a tensor created "
                "without device=, which goes to the default device, not the input's.",
                ON_INPUT_DEVICE,
                "ignores_device",
            ) from None
        if mistake.key != "raised":
            raise
        return
    if isinstance(out, torch.Tensor) and out.is_meta:
        raise Mistake(
            f"{what} reads the values, so it ran again on the CPU, with 'meta' as PyTorch's "
            "default device: it returned a tensor on 'meta', not on the input's device. A "
            "tensor created without device= goes to the default device, not the input's.",
            ON_INPUT_DEVICE,
            "ignores_device",
        )


class MetaByDefault:
    """A probe (grader/harness/measuring.py) that makes 'meta' PyTorch's default device during
    the student's call, wherever it runs: torch.zeros(n) then lands on 'meta', while
    torch.zeros(n, device=lengths.device) stays with the input."""

    def __enter__(self):
        self._default = torch.device("meta")
        self._default.__enter__()
        return self

    def __exit__(self, *exc_info):
        self._default.__exit__(*exc_info)


def moves_to_cpu(line: str) -> bool:
    """Whether a line of code copies a tensor to the CPU (.cpu(), .to("cpu"), .numpy())."""
    code = line.replace(" ", "").replace("'", '"')
    return any(move in code for move in (".cpu()", '"cpu"', ".numpy()"))


ON_INPUT_DEVICE = (
    "make each new tensor on the input's device: torch.arange(max_len, device=lengths.device), "
    "torch.zeros(mask.shape, dtype=dtype, device=mask.device)."
)


# ----------------------------------------------------------------------------- to_additive_mask


def random_mask(shape, rng: torch.Generator, p_true: float = 0.6) -> torch.Tensor:
    return torch.rand(shape, generator=rng) < p_true


def expect_additive(out, mask: torch.Tensor, dtype: torch.dtype, what: str) -> None:
    """0 where `mask` is True and the dtype's minimum where it is False, exactly."""
    low = torch.finfo(dtype).min
    try:
        expect_tensor(out, what, mask.shape, dtype)
    except Mistake as mistake:
        if mistake.key == "wrong_dtype":
            mistake.message = (
                f"{what} has dtype {out.dtype}, expected {dtype} (the dtype asked for)."
            )
            mistake.hint = (
                "create the result with dtype=dtype: it is added to scores of that dtype."
            )
        raise
    out = out.detach().cpu().double()
    allowed, blocked = out[mask], out[~mask]
    if torch.equal(allowed, torch.zeros_like(allowed)) and (blocked == low).all():
        return
    if (allowed == low).all() and (blocked == 0).all():
        raise named_mistake("inverted_mask", what)
    if (allowed == 1).all() and (blocked == low).all():
        raise named_mistake("ones_where_allowed", what)
    if (
        (allowed == 0).all()
        and blocked.numel()
        and (blocked.abs() == torch.finfo(dtype).tiny).all()
    ):
        raise named_mistake("finfo_tiny", what)
    if (allowed == 0).all() and blocked.numel() and (blocked > 0).all():
        raise named_mistake("additive_positive", what)
    if torch.isin(out, torch.tensor([0.0, 1.0], dtype=torch.float64)).all():
        raise named_mistake("not_additive", what)
    if (allowed == 0).all() and blocked.numel():
        if (blocked == -math.inf).all():
            raise named_mistake("additive_neg_inf", what)
        if torch.isfinite(blocked).all() and (blocked < 0).all():
            raise Mistake(
                f"{what} has {blocked[0].item():.4g} where the mask is False, expected "
                f"torch.finfo({dtype}).min = {low:.4g}. It looks like "
                f"{HINTS['not_dtype_min'][0]}.",
                HINTS["not_dtype_min"][1],
                "not_dtype_min",
            )
    raise Mistake(
        f"{what} should be 0 where the mask is True and torch.finfo({dtype}).min where "
        f"it is False.",
        hint="start from zeros of the mask's shape in `dtype`, then "
        "masked_fill(~mask, torch.finfo(dtype).min).",
        key="wrong_values",
    )


def named_mistake(key: str, what: str) -> Mistake:
    description, hint = HINTS[key]
    return Mistake(f"{what} is wrong: it looks like {description}.", hint, key)


def overflow_is_named(mistake: Mistake, dtype: torch.dtype = torch.float16) -> Mistake:
    """A crash that says 'overflow' becomes float16_overflow when `dtype` is float16 (it cannot
    hold -1e9); asked for a wider dtype, the tensor written into was made in a narrower one."""
    if mistake.key != "raised" or "overflow" not in mistake.message:
        return mistake
    if dtype == torch.float16:
        return Mistake(mistake.message, HINTS["float16_overflow"][1], "float16_overflow")
    return Mistake(
        f"{mistake.message}\n      Asked for {dtype}, your function wrote "
        f"torch.finfo({dtype}).min into a tensor of a narrower dtype: it looks like a result "
        "made without dtype=dtype (torch.zeros(...) is float32 by default).",
        "create the result with dtype=dtype: torch.zeros(mask.shape, dtype=dtype, "
        "device=mask.device).",
        "wrong_dtype",
    )


def call_additive(to_additive_mask, mask: torch.Tensor, dtype: torch.dtype):
    """to_additive_mask(a copy of mask, dtype); an overflow is named for what it says of dtype."""
    try:
        return call_unchanged(to_additive_mask, {"mask": mask.clone(), "dtype": dtype})
    except Mistake as mistake:
        raise overflow_is_named(mistake, dtype) from None


def additive_float32(to_additive_mask, rng):
    """float32: 0.0 where the mask is True, torch.finfo(float32).min where it is False"""
    lq, lk = two_lengths(rng)
    mask = random_mask((draw(rng, 1, 3), 1, lq, lk), rng)  # (B, 1, Lq, Lk)
    mask[..., 0, :] = False  # a query that may attend to nothing
    expect_additive(
        call_additive(to_additive_mask, mask, torch.float32),
        mask,
        torch.float32,
        f"to_additive_mask(mask of shape {tuple(mask.shape)}, torch.float32)",
    )


def additive_float16(to_additive_mask, rng):
    """float16: blocked entries are float16's minimum, -65504, not -inf (-1e9 overflows)"""
    lq, lk = two_lengths(rng)
    mask = random_mask((lq, lk), rng)
    mask[0, 0], mask[-1, -1] = True, False
    what = f"to_additive_mask(mask of shape {(lq, lk)}, torch.float16)"
    out = call_additive(to_additive_mask, mask, torch.float16)
    if (
        isinstance(out, torch.Tensor)
        and out.dtype == torch.float16
        and out.shape == mask.shape
        and (out[~mask] == -math.inf).all()
    ):
        float32 = call_additive(to_additive_mask, mask, torch.float32)
        if isinstance(float32, torch.Tensor) and torch.isfinite(float32).all():
            raise Mistake(
                f"{what} has -inf where the mask is False, though your float32 result "
                f"is finite. It looks like {HINTS['float16_overflow'][0]}.",
                HINTS["float16_overflow"][1],
                "float16_overflow",
            )
    expect_additive(out, mask, torch.float16, what)


def additive_other_dtypes(to_additive_mask, rng):
    """float64 and bfloat16, with a (Lq, Lk) and a (B, 1, 1, Lk) mask"""
    lq, lk = two_lengths(rng)
    for dtype, shape in [(torch.float64, (lq, lk)), (torch.bfloat16, (draw(rng, 2, 4), 1, 1, lk))]:
        mask = random_mask(shape, rng)
        out = call_additive(to_additive_mask, mask, dtype)
        expect_additive(out, mask, dtype, f"to_additive_mask(mask of shape {shape}, {dtype})")


def additive_follows_device(to_additive_mask, rng):
    """a mask on PyTorch's 'meta' device gives an additive mask there (on mask's device)"""
    lq, lk = two_lengths(rng)
    mask = random_mask((lq, lk), rng)
    expect_on_meta(
        lambda device: to_additive_mask(mask.to(device), torch.float32),
        "to_additive_mask(mask on 'meta', torch.float32)",
    )


# ----------------------------------------------------------------------------- masked_attention


def attention64(
    q, k, v, mask=None, empty_rows="zero", scale=None, dim=-1, blocked=-math.inf
) -> tuple:
    """The float64 oracle (out, weights); out from F.scaled_dot_product_attention with `mask`.

    A query whose row of the mask is all False gets zero weights and a zero output; with
    empty_rows="uniform", weights 1/Lk (what a mistake gives), with "over_queries" those
    uniform weights times mask.any(dim=-2) (another), and with "with_all" every row that has a
    blocked key zeroed (mask.all instead of mask.any). `scale`, `dim` (the softmax axis) and
    `blocked` (the score a blocked key gets) describe other mistakes.
    """
    q64, k64, v64 = q.double(), k.double(), v.double()
    scale = 1 / math.sqrt(q.shape[-1]) if scale is None else scale
    scores = q64 @ k64.transpose(-2, -1) * scale  # (..., Lq, Lk)
    full = torch.ones_like(scores, dtype=torch.bool) if mask is None else mask.expand(scores.shape)
    empty = ~full.any(dim=-1, keepdim=True)  # (..., Lq, 1)
    weights = softmax64(scores.masked_fill(~full, blocked), dim=dim)
    flat = [
        t.reshape(-1, *t.shape[-2:]) for t in (q64, k64, v64, full)
    ]  # (N, L, D): any leading dims
    out = F.scaled_dot_product_attention(*flat[:3], attn_mask=flat[3], scale=scale)
    out = out.reshape(*scores.shape[:-1], v.shape[-1])
    if dim != -1 or blocked != -math.inf:  # only a mistake's weights; its output follows
        out = weights @ v64
    if empty_rows == "uniform":
        weights = torch.where(empty, 1 / scores.shape[-1], weights)
        out = torch.where(empty, v64.mean(dim=-2, keepdim=True), out)
    elif empty_rows == "over_queries":
        weights = torch.where(empty, 1 / scores.shape[-1], weights)
        weights = weights * full.any(dim=-2, keepdim=True)  # (..., 1, Lk): keys, not rows
        out = weights @ v64
    elif empty_rows == "with_all":
        weights = weights * full.all(dim=-1, keepdim=True)
        out = weights @ v64
    else:
        weights = weights.masked_fill(empty, 0.0)  # already 0 when blocked scores are -inf
        out = out.nan_to_num(0.0).masked_fill(empty, 0.0)
    return out, weights


def attention_suspects(q, k, v, mask, **named_masks) -> tuple:
    """What the usual mistakes give: (weight suspects, output suspects). `named_masks` (key ->
    the mask that mistake applies, None for none) come first: they know this check's masks."""
    cases = [(key, {"mask": other}) for key, other in named_masks.items()]
    cases += [
        ("mask_ignored", {"mask": None}),
        ("inverted_mask", {"mask": ~mask}),
        ("inverted_mask", {"mask": ~mask, "empty_rows": "uniform"}),
        ("fully_masked_row_uniform", {"mask": mask, "empty_rows": "uniform"}),
        ("softmax_over_queries", {"mask": mask, "dim": -2}),
        ("empty_rows_over_queries", {"mask": mask, "empty_rows": "over_queries"}),
        ("empty_rows_with_all", {"mask": mask, "empty_rows": "with_all"}),
        ("blocked_scores_zero", {"mask": mask, "blocked": 0.0}),
    ]
    cases += [(key, {"mask": mask, "scale": scale}) for key, scale in wrong_scales(q, k, v)]
    weights, outs = [], []
    for key, kwargs in cases:
        out, weight = attention64(q, k, v, **kwargs)
        weights.append((key, weight))
        outs.append((key, out))
    for key, weight in weights_changed_after_softmax(q, k, v, mask):
        weights.append((key, weight))
        outs.append((key, weight @ v.double()))
    return weights, outs


def weights_changed_after_softmax(q, k, v, mask=None) -> list:
    """(key, weights) for the mistakes that change the weights after the softmax: divided by
    sqrt(d) there, not the scores before it; and multiplied by the mask, not masked before."""
    unscaled = attention64(q, k, v, mask, scale=1.0)[1]  # (..., Lq, Lk)
    suspects = [("scaled_after_softmax", unscaled / math.sqrt(q.shape[-1]))]
    if mask is not None:
        suspects.append(("mask_after_softmax", attention64(q, k, v)[1] * mask))
    return suspects


def wrong_scales(q, k, v) -> list:
    """(key, scale) for the usual wrong scales of q kᵀ, each only where it differs from the
    right 1/sqrt(d)."""
    d, lq, lk, dv = q.shape[-1], q.shape[-2], k.shape[-2], v.shape[-1]
    scales = [
        ("missing_scale", 1.0),
        ("divided_by_d", 1 / d),
        ("scaled_by_length", 1 / math.sqrt(lk)),
        ("scaled_by_length", 1 / math.sqrt(lq)),
        ("scaled_by_value_dim", 1 / math.sqrt(dv)),
        ("multiplied_by_sqrt_d", math.sqrt(d)),
    ]
    return [(key, scale) for key, scale in scales if scale != 1 / math.sqrt(d)]


def expect_attention(result, q, k, v, mask, what="", nonfinite=None, **named_masks) -> None:
    out, weights = unpack(result, q, k, v)
    out_ref, weights_ref = attention64(q, k, v, mask)
    weight_suspects, out_suspects = attention_suspects(q, k, v, mask, **named_masks)
    nonfinite = nonfinite or named("nan_on_fully_masked_row")
    expect_close(
        weights,
        weights_ref,
        q.dtype,
        what=f"weights{what}",
        suspects=weight_suspects,
        nonfinite=nonfinite,
    )
    expect_close(
        out, out_ref, q.dtype, what=f"out{what}", suspects=out_suspects, nonfinite=nonfinite
    )


def call_masked(masked_attention, q, k, v, mask=None, **kwargs):
    """The student's result. A crash or a wrong shape is named only where the evidence shows
    its cause (`explain_failure`); otherwise it is reported as it is, with the line that raised."""
    padding = kwargs.get("key_padding_mask")
    try:
        result = call_unchanged(masked_attention, {"q": q, "k": k, "v": v}, mask=mask, **kwargs)
    except Mistake as mistake:
        mistake = overflow_is_named(mistake)
        for key, crashed in CRASHES:
            if crashed(mistake, q):
                raise named_crash(mistake, key) from None
        # A TypeError is an argument missing (key_padding_mask, say), not a shape.
        if mistake.key == "raised" and "raised TypeError" not in mistake.message:
            explain_failure(masked_attention, mistake, q, k, v, mask, padding)
        raise mistake from None
    try:
        unpack(result, q, k, v)
    except Mistake as mistake:
        if mistake.key == "wrong_dtype":  # q is a float: the result left q's dtype somewhere
            raise Mistake(
                f"{mistake.message} It looks like {HINTS['dtype_not_restored'][0]}.",
                HINTS["dtype_not_restored"][1],
                "dtype_not_restored",
            ) from None
        if mistake.key != "wrong_shape":
            raise
        if right_answer(lambda: unpack(result[::-1], q, k, v)):
            raise Mistake(
                f"{mistake.message.rstrip('.')}: it looks like {HINTS['outputs_swapped'][0]}.",
                HINTS["outputs_swapped"][1],
                "outputs_swapped",
            ) from None
        explain_failure(masked_attention, mistake, q, k, v, mask, padding)
        raise
    return result


def explain_failure(masked_attention, failed: Mistake, q, k, v, mask, padding) -> None:
    """After `failed` (a crash or a wrong shape) with a mask or key_padding_mask: the function is
    called again with the same keys allowed, given another way. If it works with key_padding_mask
    viewed as (B, 1, ..., 1, Lk) and passed as `mask`, its own view of key_padding_mask was
    wrong; if it works with the mask in another shape (the scores' full shape, or (B, Lq, Lk)),
    its mask does not broadcast; if it works on inputs with another number of dims, it was
    written for those. Otherwise `failed` stands as it is."""
    if mask is None and padding is None:
        return
    allowed = padding_view(padding, q) if padding is not None else None  # (B, 1, ..., 1, Lk)
    if mask is not None:
        allowed = mask if allowed is None else mask & allowed
    full = allowed.expand(*q.shape[:-1], k.shape[-2]).clone()  # (..., Lq, Lk)
    given = [
        f"{name} of shape {tuple(m.shape)}"
        for name, m in (("a mask", mask), ("key_padding_mask", padding))
        if m is not None
    ]
    context = f"with q {tuple(q.shape)} and {' and '.join(given)}: {failed.message}"
    other_shapes = [full, full[:, 0]] if full.dim() > 3 else [full]  # full[:, 0]: (B, Lq, Lk)
    other_shapes = [m for m in other_shapes if m.shape != allowed.shape]
    if padding is not None and works(masked_attention, q, k, v, allowed):
        key, evidence = (
            "key_padding_fixed_rank",
            f"the same keys passed as a mask of shape {tuple(allowed.shape)}",
        )
    elif working := [m for m in other_shapes if works(masked_attention, q, k, v, m)]:
        key, evidence = "mask_not_broadcast", f"a mask of shape {tuple(working[0].shape)}"
    else:
        if failed.key == "raised":
            explain_by_rank(
                failed, q.dim(), lambda rank: right_at_rank(masked_attention, q, k, v, full, rank)
            )
        return
    raise Mistake(
        f"{context}\n      It works with {evidence}: it looks like {HINTS[key][0]}.",
        HINTS[key][1],
        key,
    ) from None


def padding_view(padding: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """key_padding_mask (B, Lk) as (B, 1, ..., 1, Lk): the same for every head and query."""
    batch, lk = padding.shape
    return padding.view(batch, *[1] * (q.dim() - 2), lk)


def works(masked_attention, q, k, v, mask) -> bool:
    """Whether masked_attention(q, k, v, mask) runs and returns the documented shapes."""
    return right_answer(lambda: unpack(masked_attention(q, k, v, mask.clone()), q, k, v))


def right_at_rank(masked_attention, q, k, v, mask, rank: int) -> bool:
    """Whether masked_attention is right on the same problem with `rank`-D inputs: size-1 dims
    put after the batch, or the first of each dim dropped there; the mask has the full shape."""
    if rank < 3:  # keep the batch: key_padding_mask and the mask have it
        return False
    inputs = [at_rank(t, rank) for t in (q, k, v, mask)]
    return right_answer(lambda: expect_attention(masked_attention(*inputs), *inputs))


def at_rank(t: torch.Tensor, rank: int) -> torch.Tensor:
    """t (..., X, Y) with `rank` dims: size-1 dims added after the first, or dims dropped
    there (their first entry kept); the last two dims stay."""
    while t.dim() < rank:
        t = t.unsqueeze(1)
    while t.dim() > rank:
        t = t[0] if t.dim() == 3 else t[:, 0]
    return t.contiguous()


# A crash that is the signature of one mistake: (key, whether `mistake` on input q is it).
CRASHES = [
    (
        "none_not_handled",
        lambda mistake, q: mistake.key == "raised" and "NoneType" in mistake.message,
    ),
    (
        "any_without_keepdim",
        lambda mistake, q: (
            crashed_with(mistake, "RuntimeError", "must match the size")
            and re.search(r"\bany\((?![^)]*keepdim)", student_line(mistake.message)) is not None
        ),
    ),
    (
        "mask_truth_value",
        lambda mistake, q: crashed_with(mistake, "RuntimeError", "Boolean value of Tensor"),
    ),
    (
        "batched_transpose",
        lambda mistake, q: q.dim() > 2 and transposes_from_the_front(mistake.message),
    ),
    (
        "transposed_q",
        lambda mistake, q: (
            crashed_with(mistake, "RuntimeError") and transposes_q(student_line(mistake.message))
        ),
    ),
    ("dtype_not_restored", lambda mistake, q: crashed_with(mistake, "RuntimeError", "same dtype")),
    (
        "dtype_not_restored",
        lambda mistake, q: crashed_with(mistake, "RuntimeError", "expected scalar type"),
    ),
    (  # mask &= key_padding_mask: an in-place op that cannot grow the caller's mask
        "modified_input",
        lambda mistake, q: (
            crashed_with(mistake, "RuntimeError", "match the broadcast shape")
            and re.search(r"[&|]=", student_line(mistake.message)) is not None
        ),
    ),
]


def transposes_from_the_front(message: str) -> bool:
    """Whether the student's line that raised has k.T or .transpose(0, 1)."""
    line = student_line(message)
    return re.search(r"\.T\b|\.transpose\(\s*0\s*,\s*1\s*\)", line) is not None


def transposes_q(line: str) -> bool:
    """Whether a line of code transposes q (q.transpose(...), q.mT, torch.transpose(q, ...)):
    on the line that raised, the product that should transpose k."""
    return (
        re.search(r"\bq\w*\s*\.\s*(?:transpose\(|mT\b|T\b)|torch\.transpose\(\s*q\w*\s*,", line)
        is not None
    )


def student_line(message: str) -> str:
    """The student's line that raised, from a crash's message ('' when it names none)."""
    return message.partition("\n      at: ")[2]


def qkv(rng, leading, lq, lk, dtype=torch.float32, dv=None) -> tuple:
    d = 2 ** draw(rng, 2, 4)
    dv = dv or d + draw(rng, 0, 3)
    return (
        randn((*leading, lq, d), rng, dtype, scale=1.5),
        randn((*leading, lk, d), rng, dtype, scale=1.5),
        randn((*leading, lk, dv), rng, dtype),
    )


def masked_no_mask(masked_attention, rng):
    """mask=None is plain attention: out (B, H, Lq, Dv), weights (B, H, Lq, Lk), Lq ≠ Lk"""
    lq, lk = two_lengths(rng)
    q, k, v = qkv(rng, (draw(rng, 1, 3), draw(rng, 1, 3)), lq, lk)
    out, weights = call_masked(masked_attention, q, k, v)
    out_ref, weights_ref = attention64(q, k, v)
    expect_close(
        weights,
        weights_ref,
        q.dtype,
        what="weights",
        suspects=[
            *[(key, attention64(q, k, v, scale=scale)[1]) for key, scale in wrong_scales(q, k, v)],
            ("softmax_over_queries", attention64(q, k, v, dim=-2)[1]),
            *weights_changed_after_softmax(q, k, v),
            ("inverted_mask", torch.zeros_like(weights_ref)),  # no mask inverted: all blocked
            ("inverted_mask", torch.full_like(weights_ref, 1 / lk)),
        ],
    )
    expect_close(out, out_ref, q.dtype, what="out")


def masked_causal(masked_attention, rng):
    """a bottom-right causal (Lq, Lk) mask, Lq < Lk, broadcast over batch and heads"""
    lq, lk = two_lengths(rng)
    q, k, v = qkv(rng, (draw(rng, 1, 3), draw(rng, 2, 3)), lq, lk)
    mask = causal_reference(lq, lk)
    expect_attention(call_masked(masked_attention, q, k, v, mask), q, k, v, mask, " (causal mask)")


def masked_padding(masked_attention, rng):
    """a key padding mask (B, 1, 1, Lk): padded keys get zero weight in every head and query"""
    lq, lk = two_lengths(rng)
    batch = draw(rng, 2, 4)
    q, k, v = qkv(rng, (batch, draw(rng, 2, 3)), lq, lk)
    lengths = torch.randint(1, lk, (batch,), generator=rng)  # every sequence has real tokens
    mask = (torch.arange(lk) < lengths[:, None])[:, None, None, :]  # (B, 1, 1, Lk)
    expect_attention(call_masked(masked_attention, q, k, v, mask), q, k, v, mask, " (padding mask)")


def masked_key_padding(masked_attention, rng):
    """key_padding_mask (B, Lk) hides keys, not queries, empty sequences too; with a causal mask"""
    length, batch = draw(rng, 4, 8), draw(rng, 2, 4)
    heads = draw(rng, 1, 3)
    q, k, v = qkv(rng, (batch, heads), length, length)
    lengths = torch.randint(2, length, (batch,), generator=rng)  # padding in every sequence
    lengths[draw(rng, 0, batch - 1)] = 0  # and one sequence with no real token at all
    real = torch.arange(length) < lengths[:, None]  # (B, L)
    keys, queries = real[:, None, None, :], real[:, None, :, None]  # (B, 1, 1, L), (B, 1, L, 1)
    misaligned = {}
    if heads == batch:  # (B, 1, L) against (B, H, L, L): the batch lines up with the heads
        misaligned["key_padding_fixed_rank"] = real[None, :, None, :]
    result = call_masked(masked_attention, q, k, v, None, key_padding_mask=real.clone())
    expect_attention(
        result,
        q,
        k,
        v,
        keys,
        " (key_padding_mask only)",
        masked_queries=queries,
        key_padding_ignored=None,  # with no mask, ignoring it leaves no mask at all
        key_padding_inverted=~keys,  # before inverted_mask: only key_padding_mask is given
        **misaligned,
    )
    causal = causal_reference(length, length)
    result = call_masked(masked_attention, q, k, v, causal, key_padding_mask=real.clone())
    expect_attention(
        result,
        q,
        k,
        v,
        causal & keys,
        " (causal mask and key_padding_mask)",
        masked_queries=causal & queries,
        key_padding_inverted=causal & ~keys,
        key_padding_ignored=causal.expand_as(causal & keys),
        mask_ignored=keys.expand_as(causal & keys),
        masks_combined_with_or=causal | keys,
    )


def masked_fully_masked_rows(masked_attention, rng):
    """a query that may attend to no key gets zero weights and a zero output, never NaN"""
    lk, lq = two_lengths(rng)  # lq > lk: the first lq - lk queries see nothing
    batch, heads = draw(rng, 1, 3), draw(rng, 1, 3)
    q, k, v = qkv(rng, (batch, heads), lq, lk)
    mask = causal_reference(lq, lk) & random_mask((batch, heads, 1, lk), rng, p_true=0.8)
    mask[..., -1, -1] = True  # the last query keeps a key
    mask[0, 0, :, 0] = False  # and key 0 is hidden from every query of one head
    empty = ~mask.any(dim=-1)  # (B, H, Lq)
    out, weights = call_masked(masked_attention, q, k, v, mask)
    expect_attention((out, weights), q, k, v, mask, " (rows with nothing to attend to)")
    if (weights[empty] != 0).any() or (out[empty] != 0).any():
        raise named_mistake("fully_masked_row_uniform", "a fully masked row")


def masked_broadcasts(masked_attention, rng):
    """masks of shape (Lq, Lk), (B, 1, Lq, Lk), (1, H, 1, Lk) and (B, H, Lq, Lk) all broadcast"""
    lq, lk = two_lengths(rng)
    batch, heads = draw(rng, 2, 3), draw(rng, 2, 4)
    q, k, v = qkv(rng, (batch, heads), lq, lk)
    for shape in [(lq, lk), (batch, 1, lq, lk), (1, heads, 1, lk), (batch, heads, lq, lk)]:
        mask = random_mask(shape, rng, p_true=0.7)
        mask[..., 0] = True  # no empty rows here
        expect_attention(
            call_masked(masked_attention, q, k, v, mask), q, k, v, mask, f" (mask of shape {shape})"
        )


def masked_float16(masked_attention, rng):
    """float16 (to 1e-2): no overflow from a large negative such as -1e9, rows of nothing stay 0"""
    lk, lq = two_lengths(rng)
    q, k, v = qkv(rng, (draw(rng, 1, 2), 2), lq, lk, dtype=torch.float16)
    mask = causal_reference(lq, lk)  # its first rows are empty
    result = call_masked(masked_attention, q, k, v, mask)
    expect_attention(
        result, q, k, v, mask, " (float16)", nonfinite=nonfinite_in_float16(result, mask)
    )


def nonfinite_in_float16(result, mask: torch.Tensor) -> Mistake:
    """What NaN/inf in a float16 result means: only in rows with nothing to attend to, a softmax
    that divides 0 by 0 there (whatever the dtype); elsewhere too, an overflow of float16."""
    empty = ~mask.any(dim=-1, keepdim=True)  # (Lq, 1)
    if all(
        isinstance(t, torch.Tensor) and torch.isfinite(t.masked_fill(empty, 0)).all()
        for t in result
    ):
        return named("nan_on_fully_masked_row")
    return named("float16_overflow")


def masked_float64_3d(masked_attention, rng):
    """float64 to 1e-10, 3-D inputs (B, L, D) with a (B, Lq, Lk) mask, then a key_padding_mask"""
    lq, lk = two_lengths(rng)
    batch = draw(rng, 2, 4)
    q, k, v = qkv(rng, (batch,), lq, lk, dtype=torch.float64)
    mask = causal_reference(lq, lk) | random_mask((batch, lq, lk), rng, p_true=0.3)
    expect_attention(call_masked(masked_attention, q, k, v, mask), q, k, v, mask, " (float64)")
    real = torch.arange(lk) < torch.randint(1, lk + 1, (batch, 1), generator=rng)  # (B, Lk)
    result = call_masked(masked_attention, q, k, v, mask, key_padding_mask=real.clone())
    keys = real[:, None, :]  # (B, 1, Lk)
    expect_attention(
        result,
        q,
        k,
        v,
        mask & keys,
        " (float64, 3-D, with key_padding_mask)",
        key_padding_inverted=mask & ~keys,
        key_padding_ignored=mask,
        mask_ignored=keys,
        masks_combined_with_or=mask | keys,
    )


# ----------------------------------------------------------------------------- the suite

LIBRARY_MASKS = "build it yourself from torch.arange comparisons or torch.ones(...).tril(...)."
LIBRARY_ATTENTION = (
    "build it from your own pieces: scores, your to_additive_mask (or "
    "masked_fill), course.reference.sdpa.stable_softmax, then weights @ v."
)

# The notebook gives stable_softmax to use, so the shared "write softmax yourself" does not apply.
USE_STABLE_SOFTMAX = (
    "here, call the notebook's stable_softmax(scores, dim=-1) (course.reference.sdpa."
    "stable_softmax) instead of the built-in: it gives zeros for a row that is all -inf."
)

EXERCISES = {
    "causal_mask": Exercise(
        checks=[
            causal_square,
            causal_more_keys,
            causal_one_query,
            causal_more_queries,
            causal_follows_device,
        ],
        forbidden={library.causal_mask: LIBRARY_MASKS},
    ),
    "padding_mask": Exercise(
        checks=[
            padding_matches_loop,
            padding_int32_and_square,
            padding_one_sequence,
            padding_follows_device,
        ],
        forbidden={library.padding_mask: LIBRARY_MASKS},
    ),
    "to_additive_mask": Exercise(
        checks=[
            additive_float32,
            additive_float16,
            additive_other_dtypes,
            additive_follows_device,
        ],
        forbidden={},
    ),
    "masked_attention": Exercise(
        checks=[
            masked_no_mask,
            masked_causal,
            masked_padding,
            masked_key_padding,
            masked_fully_masked_rows,
            masked_broadcasts,
            masked_float16,
            masked_float64_3d,
        ],
        forbidden={
            **{name: USE_STABLE_SOFTMAX for name in SOFTMAX},
            **SDPA,
            library.attention: LIBRARY_ATTENTION,
            library.causal_mask: LIBRARY_MASKS,
            library.padding_mask: LIBRARY_MASKS,
        },
    ),
}
