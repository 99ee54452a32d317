"""Checks for the advanced part, learned sparsity.

topk_gated_attention: per query, attention over the k_keep keys with the highest gate scores;
the selection is detached (no gradient reaches gate_scores). adaptive_window_attention: a
sliding window whose width is given per query. Oracles: masks from Python loops (sorting each
row's gate scores; comparing positions one pair at a time), attention in float64 under them.
"""

import math

import torch

from grader.harness.checking import (
    TOLERANCE,
    Mistake,
    expect_close,
    expect_tensor,
    expect_value_error,
    hint,
    named,
    relative_error,
)
from grader.suites import Exercise, day01_sdpa
from grader.suites._common import (
    MODIFIED_INPUT,
    call_unchanged,
    draw,
    expect_flat_python_work,
    randn,
)
from grader.suites.day05_sparse.shared import FORBIDDEN_BUILDERS, matched

HINTS = {
    "modified_input": MODIFIED_INPUT,
    "fixed_rank": day01_sdpa.HINTS["fixed_rank"],
    "topk_wrong_axis": (
        "top-k taken over the queries (dim=-2) instead of over the keys",
        "each query keeps its own k_keep keys: gate_scores.topk(k_keep, dim=-1), "
        "then scatter True into those key columns.",
    ),
    "keeps_wrong_count": (
        "k_keep - 1 or k_keep + 1 keys kept per query",
        "exactly k_keep keys per query: topk(k_keep, dim=-1) (not a threshold "
        "with > or >= at the k-th value, not k_keep - 1 or + 1).",
    ),
    "mask_not_applied": (
        "a softmax over all keys: the top-k mask was not applied",
        "fill the scores of the keys that are not kept with -inf *before* the "
        "softmax: scores.masked_fill(~keep, float('-inf')).",
    ),
    "not_renormalised": (
        "the full softmax with the dropped keys zeroed afterwards (weights that "
        "no longer sum to 1)",
        "mask the scores before the softmax, so the kept keys' weights sum to 1.",
    ),
    "keeps_lowest": (
        "the k_keep keys with the *lowest* gate scores",
        "topk returns the largest by default (largest=True); do not negate the gate "
        "or sort ascending.",
    ),
    "ignores_gate": (
        "keys chosen by the attention scores q·k instead of by gate_scores",
        "the selection is the gate's job: topk over gate_scores, then attention over "
        "the kept keys.",
    ),
    "gradient_through_selection": (
        "a gradient reaching gate_scores, but the selection is documented as detached",
        "use gate_scores only to pick indices (topk(...).indices, or "
        "gate_scores.detach()): do not add, multiply or softmax the "
        "gate into the scores or the output.",
    ),
    "wrong_gradient": (
        "gradients with respect to q, k or v that differ from those of attention "
        "over the kept keys",
        "let autograd differentiate the masked softmax: no .detach() on q, k, v, "
        "no in-place writes into tensors autograd saved.",
    ),
    "width_per_key": (
        "each key's width used instead of each query's (widths[j] for mask[i, j])",
        "widths[..., i] is the window of *query* i: compare with widths.unsqueeze(-1), "
        "a (..., L, 1) column, against the key positions j.",
    ),
    "single_width": (
        "one width for every query (the first, the largest, or the mean)",
        "each query has its own width: broadcast widths.unsqueeze(-1) (shape (..., L, 1)) "
        "against j, never widths[0] or widths.max().",
    ),
    "loop_over_rows": (
        "a Python loop over batch rows or heads",
        "broadcast over every leading dim at once: @ and softmax work on (..., L, L) whole.",
    ),
}


FORBIDDEN_LEARNED = FORBIDDEN_BUILDERS


def flat(t: torch.Tensor) -> torch.Tensor:
    return t.reshape(-1, *t.shape[-2:])


def brute_topk_mask(gate: torch.Tensor, k_keep: int, largest: bool = True) -> torch.Tensor:
    """(..., Lq, Lk) bool: per query, the k_keep keys with the highest gate scores, by sorting each
    row in Python (the checks draw gates without ties)."""
    rows = gate.reshape(-1, gate.shape[-1]).tolist()
    mask = torch.zeros(len(rows), gate.shape[-1], dtype=torch.bool)
    for r, row in enumerate(rows):
        order = sorted(range(len(row)), key=lambda j: -row[j] if largest else row[j])
        mask[r, order[: max(0, k_keep)]] = True
    return mask.reshape(gate.shape)


def masked64(q, k, v, mask, scale: bool = True, renormalise: bool = True) -> torch.Tensor:
    """Float64 attention under a broadcastable bool mask; fully masked rows give zeros."""
    q, k, v = q.double(), k.double(), v.double()
    scores = q @ k.transpose(-2, -1) / (math.sqrt(q.shape[-1]) if scale else 1.0)
    if not renormalise:
        return (torch.softmax(scores, -1) * mask) @ v
    scores = scores.masked_fill(~mask, float("-inf"))
    weights = torch.softmax(scores, -1).nan_to_num(0.0)
    return weights @ v


def distinct_gate(shape, rng, dtype=torch.float32) -> torch.Tensor:
    """Gate scores without ties in any row or column: a random permutation of the Lq * Lk entries
    of each (Lq, Lk) matrix, scaled to [-2, 2)."""
    n = shape[-2] * shape[-1]
    perm = torch.rand(math.prod(shape[:-2]), n, generator=rng).argsort(-1).to(dtype)
    return (perm / n * 4 - 2).reshape(shape)


def expect_masked_attention(out, q, k, v, mask, what: str, suspects=()) -> None:
    """Compare with float64 attention under `mask`; NaN rows matching a suspect are named too."""
    ref = masked64(q, k, v, mask)
    wrong = [
        (
            key,
            (masked64(q, k, v, m) if isinstance(m, torch.Tensor) and m.dtype == torch.bool else m),
        )
        for key, m in suspects
    ]
    wrong.append(("missing_scale", masked64(q, k, v, mask, scale=False)))
    if (
        isinstance(out, torch.Tensor)
        and out.shape == ref.shape
        and not torch.isfinite(out.detach()).all()
    ):
        for key, w in wrong:
            if relative_error(out.detach().nan_to_num(0.0), w) <= TOLERANCE[q.dtype]:
                description, fix = hint(key)
                raise Mistake(f"{what} has NaN rows: it looks like {description}.", fix, key)
    expect_close(out, ref, q.dtype, what=what, suspects=[(key, w) for key, w in wrong])


# ----------------------------------------------------------------------------- topk_gated_attention


def topk_inputs(rng, leading, Lq, Lk, dtype=torch.float32, gate_leading=None):
    d = 2 ** draw(rng, 2, 4)
    dv = d + draw(rng, 1, 3)
    q, k, v = (
        randn((*leading, Lq, d), rng, dtype),
        randn((*leading, Lk, d), rng, dtype),
        randn((*leading, Lk, dv), rng, dtype),
    )
    gate = distinct_gate((*(leading if gate_leading is None else gate_leading), Lq, Lk), rng, dtype)
    return q, k, v, gate


def topk_suspects(q, k, gate, k_keep) -> list:
    Lq, Lk = gate.shape[-2:]
    scores = (q.double() @ k.double().transpose(-2, -1)).expand(
        *torch.broadcast_shapes(q.shape[:-2], gate.shape[:-2]), Lq, Lk
    )
    suspects = [
        ("keeps_wrong_count", brute_topk_mask(gate, k_keep - 1)),
        ("keeps_lowest", brute_topk_mask(gate, k_keep, largest=False)),
        ("ignores_gate", brute_topk_mask(scores, k_keep)),
        ("mask_not_applied", torch.ones(Lq, Lk, dtype=torch.bool)),
    ]
    if k_keep + 1 <= Lk:
        suspects.append(("keeps_wrong_count", brute_topk_mask(gate, k_keep + 1)))
    if k_keep <= Lq:
        suspects.append(
            ("topk_wrong_axis", brute_topk_mask(gate.transpose(-2, -1), k_keep).transpose(-2, -1))
        )
    return suspects


def topk_keeping_inputs(topk_gated_attention, q, k, v, gate, k_keep):
    """topk_gated_attention(q, k, v, gate, k_keep); an input written into in place (a tie-break
    offset added to the caller's gate scores, say) is the mistake modified_input."""
    inputs = {"q": q, "k": k, "v": v, "gate_scores": gate}
    return call_unchanged(topk_gated_attention, inputs, k_keep)


def expect_topk(topk_gated_attention, q, k, v, gate, k_keep, what: str) -> None:
    out = topk_keeping_inputs(topk_gated_attention, q, k, v, gate, k_keep)
    expect_topk_output(out, q, k, v, gate, k_keep, what)


def expect_topk_output(out, q, k, v, gate, k_keep, what: str) -> None:
    """`out` must be attention over each query's k_keep highest-gated keys; suspects named."""
    mask = brute_topk_mask(gate, k_keep)
    suspects = topk_suspects(q, k, gate, k_keep)
    suspects.append(("not_renormalised", masked64(q, k, v, mask, renormalise=False)))
    expect_masked_attention(out, q, k, v, mask, what, suspects)


def topk_matches(topk_gated_attention, rng):
    """(B, H, Lq, Lk) with Lq != Lk: attention over each query's k_keep highest-gated keys"""
    Lq, Lk = draw(rng, 6, 14), draw(rng, 8, 20)
    q, k, v, gate = topk_inputs(rng, (2, 3), Lq, Lk)
    for k_keep in (draw(rng, 2, 4), draw(rng, 5, min(Lq, Lk) - 1)):
        expect_topk(
            topk_gated_attention,
            q,
            k,
            v,
            gate,
            k_keep,
            f"topk_gated_attention with Lq = {Lq}, Lk = {Lk}, k_keep = {k_keep}",
        )


def topk_shapes_and_float64(topk_gated_attention, rng):
    """a gate shared by heads ((B, 1, Lq, Lk)), (L, D) inputs, float64 to 1e-10"""
    Lq, Lk = draw(rng, 5, 12), draw(rng, 5, 12)
    B, H = draw(rng, 1, 3), draw(rng, 2, 4)
    q, k, v, gate = topk_inputs(rng, (B, H), Lq, Lk, gate_leading=(B, 1))
    k_keep = draw(rng, 2, min(Lq, Lk) - 1)
    expect_topk(
        topk_gated_attention,
        q,
        k,
        v,
        gate,
        k_keep,
        f"topk_gated_attention with a gate of shape {tuple(gate.shape)}, k_keep = {k_keep}",
    )
    q, k, v, gate = topk_inputs(rng, (), Lq, Lk, torch.float64)
    what = f"topk_gated_attention on (L, D) float64, k_keep = {k_keep}"
    try:
        expect_topk(topk_gated_attention, q, k, v, gate, k_keep, what)
    except Mistake as raised:
        if raised.key != "raised" or not right_with_a_leading_dim(
            topk_gated_attention, q, k, v, gate, k_keep
        ):
            raise
        description, fix = hint("fixed_rank")
        raise Mistake(
            f"{raised.message}\n      It raised on (L, D) inputs, but gives the right answer on "
            f"the same inputs as (1, L, D): it looks like {description}.",
            fix,
            "fixed_rank",
        ) from None


def right_with_a_leading_dim(topk_gated_attention, q, k, v, gate, k_keep) -> bool:
    """topk_gated_attention is right on (q, k, v, gate) given one leading dim of size 1."""
    try:
        expect_topk(
            topk_gated_attention,
            *(t.unsqueeze(0) for t in (q, k, v, gate)),
            k_keep,
            "topk_gated_attention on (1, L, D)",
        )
    except Mistake:
        return False
    return True


def topk_extremes(topk_gated_attention, rng):
    """k_keep = 1 (one key: its value exactly) and k_keep = Lk (dense attention)"""
    Lq, Lk = draw(rng, 4, 10), draw(rng, 4, 10)
    q, k, v, gate = topk_inputs(rng, (2,), Lq, Lk, torch.float64)
    for k_keep in (1, Lk):
        expect_topk(
            topk_gated_attention,
            q,
            k,
            v,
            gate,
            k_keep,
            f"topk_gated_attention with k_keep = {k_keep}, Lk = {Lk}",
        )


def topk_gradients(topk_gated_attention, rng):
    """detached selection: gradients reach q, k, v through the kept keys only, none reach the gate"""
    Lq, Lk = draw(rng, 5, 10), draw(rng, 6, 12)
    q, k, v, gate = topk_inputs(rng, (2, 2), Lq, Lk, torch.float64)
    k_keep = draw(rng, 2, min(Lq, Lk) - 2)  # k_keep + 1 < Lk: keeping one more is not all keys
    grad_out = randn((2, 2, Lq, v.shape[-1]), rng, torch.float64)
    mask = brute_topk_mask(gate, k_keep)
    leaves = [t.clone().requires_grad_(True) for t in (q, k, v)]
    ref_grads = torch.autograd.grad(masked64(*leaves, mask), leaves, grad_out)
    inputs = [t.clone().requires_grad_(True) for t in (q, k, v, gate)]
    out = output_with_grad(topk_gated_attention, inputs, k_keep)
    expect_tensor(out, "topk_gated_attention's output", (2, 2, Lq, v.shape[-1]), torch.float64)
    # A wrong output has wrong gradients too: name what is wrong with it first.
    expect_topk_output(
        out.detach(), q, k, v, gate, k_keep, f"topk_gated_attention with k_keep = {k_keep}"
    )
    if not out.requires_grad:
        description, fix = hint("wrong_gradient")
        raise Mistake(
            "the output does not require grad although q, k and v do: it looks like "
            f"{description}.",
            fix,
            "wrong_gradient",
        )
    grads = torch.autograd.grad(out, inputs, grad_out, allow_unused=True)
    gate_grad = grads[3]
    if gate_grad is not None and gate_grad.abs().max() > 0:
        raise named("gradient_through_selection")
    for name, got, ref in zip("qkv", grads[:3], ref_grads):
        if got is None or relative_error(got, ref) > TOLERANCE[torch.float64]:
            description, fix = hint("wrong_gradient")
            raise Mistake(
                f"the gradient with respect to {name} is off: it looks like {description}.",
                fix,
                "wrong_gradient",
            )


def output_with_grad(topk_gated_attention, inputs: list, k_keep: int):
    """topk_gated_attention on inputs that require grad; autograd's refusal to let an input
    that requires grad be written into in place is named."""
    try:
        return topk_gated_attention(*inputs, k_keep)
    except Mistake as mistake:
        if mistake.key != "raised" or "leaf Variable" not in mistake.message:
            raise
        description, fix = hint("modified_input")
        raise Mistake(
            f"{mistake.message}\n      On inputs that require grad, autograd refuses an "
            f"in-place write into them: it looks like {description}.",
            fix,
            "modified_input",
        ) from None


def topk_rejects_bad_parameters(topk_gated_attention, rng):
    """ValueError for k_keep < 1, k_keep > Lk, and a gate whose last dims are not (Lq, Lk)"""
    Lq, Lk = draw(rng, 4, 8), draw(rng, 4, 8)
    q, k, v, gate = topk_inputs(rng, (2,), Lq, Lk)
    for k_keep in (0, Lk + draw(rng, 1, 3)):
        expect_value_error(
            lambda: topk_gated_attention(q, k, v, gate, k_keep),
            f"topk_gated_attention(..., k_keep={k_keep}) with Lk = {Lk}",
            "no_error_for_bad_params",
        )
    expect_value_error(
        lambda: topk_gated_attention(q, k, v, gate.transpose(-2, -1)[..., : Lk - 1, :], 2),
        f"topk_gated_attention with gate_scores of shape ({Lk - 1}, {Lq}) for Lq = {Lq}, Lk = {Lk}",
        "no_error_for_bad_params",
    )


def topk_vectorised(topk_gated_attention, rng):
    """no Python loop over queries or batch rows (lines run at two sizes)"""

    def call(leading, L):
        q, k, v, gate = topk_inputs(rng, leading, L, L)
        return lambda: topk_gated_attention(q, k, v, gate, 4)

    expect_vectorised(
        "topk_gated_attention",
        call,
        "gate_scores.topk(k_keep, dim=-1) ranks every row of every batch at once, and "
        "scatter(-1, indices, True) marks their keys.",
    )


def expect_vectorised(name: str, call, idiom: str) -> None:
    """No Python loop over positions (L = 32 against 256), nor over batch rows (2 against 64):
    `call(leading, L)` gives the call at a size; `idiom`, the exercise's way to do every row at
    once, ends the hint."""
    try:
        expect_flat_python_work(
            name, "python_loop", ("L = 32", call((1,), 32)), ("L = 256", call((1,), 256))
        )
        expect_flat_python_work(
            name, "loop_over_rows", ("2 batch rows", call((2,), 16)), ("64", call((64,), 16))
        )
    except Mistake as loop:
        raise Mistake(loop.message, f"{loop.hint} {idiom}", loop.key) from None


# ----------------------------------------------------------------------------- adaptive_window_attention


def adaptive_rule(causal: bool, extra: int = 0):
    """allowed(i, j, w) for the query's width w, with `extra` keys more on each side."""
    if causal:
        return lambda i, j, w: i - (w - 1 + extra) <= j <= i
    return lambda i, j, w: abs(i - j) <= w // 2 + extra


def brute_adaptive_mask(widths: torch.Tensor, allowed, per_key: bool = False) -> torch.Tensor:
    """(..., L, L) bool from allowed(i, j, width), width = widths[..., i] (or [..., j])."""
    rows = widths.reshape(-1, widths.shape[-1]).tolist()
    L = widths.shape[-1]
    out = [
        [[bool(allowed(i, j, w[j] if per_key else w[i])) for j in range(L)] for i in range(L)]
        for w in rows
    ]
    return torch.tensor(out, dtype=torch.bool).reshape(*widths.shape, L)


def adaptive_suspects(widths: torch.Tensor, causal: bool) -> list:
    suspects = [
        ("window_off_by_one", brute_adaptive_mask(widths, adaptive_rule(causal, e)))
        for e in (-1, 1)
    ]
    suspects.append(
        ("width_per_key", brute_adaptive_mask(widths, adaptive_rule(causal), per_key=True))
    )
    everywhere = widths.amax().reshape((1,) * widths.dim())  # one max over every row too
    for single in (widths[..., :1], widths.amax(-1, keepdim=True), widths[..., -1:], everywhere):
        suspects.append(
            (
                "single_width",
                brute_adaptive_mask(single.expand(widths.shape), adaptive_rule(causal)),
            )
        )
    if causal:
        suspects += [
            ("ignores_causal", brute_adaptive_mask(widths, adaptive_rule(False))),
            (
                "causal_looks_ahead",
                brute_adaptive_mask(widths, lambda i, j, w: i <= j <= i + w - 1),
            ),
            ("window_off_by_one", brute_adaptive_mask(widths, lambda i, j, w: i - w <= j < i)),
            # one key too narrow, with the query itself kept for width 1
            (
                "window_off_by_one",
                brute_adaptive_mask(widths, lambda i, j, w: i - max(w - 2, 0) <= j <= i),
            ),
        ]
    else:
        suspects += [
            ("causal_when_symmetric", brute_adaptive_mask(widths, adaptive_rule(True))),
            ("window_each_side", brute_adaptive_mask(widths, lambda i, j, w: abs(i - j) <= w)),
        ]
    return suspects


def adaptive_inputs(rng, leading, L, dtype=torch.float32, widths_leading=None):
    d = 2 ** draw(rng, 2, 4)
    dv = d + draw(rng, 1, 3)
    q, k, v = (
        randn((*leading, L, d), rng, dtype),
        randn((*leading, L, d), rng, dtype),
        randn((*leading, L, dv), rng, dtype),
    )
    shape = (*(leading if widths_leading is None else widths_leading), L)
    widths = torch.randint(1, L + 3, shape, generator=rng)
    widths.view(-1)[::3] = torch.randint(
        1, 4, widths.view(-1)[::3].shape, generator=rng
    )  # narrow ones too
    return q, k, v, widths


def expect_adaptive(adaptive_window_attention, q, k, v, widths, causal, what) -> None:
    out = adaptive_window_attention(q, k, v, widths, causal=causal)
    expect_window_output(out, q, k, v, widths, causal, what)


def expect_window_output(out, q, k, v, widths, causal, what) -> None:
    """`out` against float64 attention under the adaptive window. On extreme widths (all 1, say)
    two mistakes can give the same mask: an output under it names both, not one that may mislead."""
    mask = brute_adaptive_mask(widths, adaptive_rule(causal))
    suspects = [
        (key, m) for key, m in adaptive_suspects(widths, causal) if not torch.equal(m, mask)
    ]
    shared = [
        (key, m)
        for key, m in suspects
        if any(other != key and torch.equal(m, wrong) for other, wrong in suspects)
    ]
    for key, m in shared:
        wrong = masked64(q, k, v, m)
        same_shape = isinstance(out, torch.Tensor) and out.shape == wrong.shape
        if same_shape and relative_error(out.detach(), wrong) <= TOLERANCE[q.dtype]:
            raise matched(what, key, m, suspects)
    alone = [(key, m) for key, m in suspects if not any(m is same for _, same in shared)]
    expect_masked_attention(out, q, k, v, mask, what, alone)


def adaptive_causal(adaptive_window_attention, rng):
    """causal (the default): query i sees keys i - widths[i] + 1 .. i, per (batch, head) widths"""
    L = draw(rng, 8, 20)
    q, k, v, widths = adaptive_inputs(rng, (2, 3), L)
    out = adaptive_window_attention(q, k, v, widths)
    expect_window_output(
        out, q, k, v, widths, True, f"adaptive_window_attention with L = {L}, causal"
    )


def adaptive_symmetric(adaptive_window_attention, rng):
    """causal=False: keys with |i - j| <= widths[i] // 2"""
    L = draw(rng, 8, 20)
    q, k, v, widths = adaptive_inputs(rng, (2, 2), L)
    expect_adaptive(
        adaptive_window_attention,
        q,
        k,
        v,
        widths,
        False,
        f"adaptive_window_attention with L = {L}, causal=False",
    )


def adaptive_shapes_and_float64(adaptive_window_attention, rng):
    """widths shared by heads ((B, 1, L)), (L, D) inputs with (L,) widths, float64 to 1e-10"""
    L, B, H = draw(rng, 6, 16), draw(rng, 1, 3), draw(rng, 2, 4)
    q, k, v, widths = adaptive_inputs(rng, (B, H), L, widths_leading=(B, 1))
    expect_adaptive(
        adaptive_window_attention,
        q,
        k,
        v,
        widths,
        True,
        f"adaptive_window_attention with widths of shape {tuple(widths.shape)}",
    )
    q, k, v, widths = adaptive_inputs(rng, (), L, torch.float64)
    for causal in (True, False):
        expect_adaptive(
            adaptive_window_attention,
            q,
            k,
            v,
            widths,
            causal,
            f"adaptive_window_attention on (L, D) float64, causal={causal}",
        )


def adaptive_extremes(adaptive_window_attention, rng):
    """all widths 1 (each query sees itself: out = v) and all widths >= L (causal attention)"""
    L = draw(rng, 4, 12)
    q, k, v, _ = adaptive_inputs(rng, (2,), L, torch.float64)
    for widths in (torch.ones(2, L, dtype=torch.long), torch.full((2, L), L + draw(rng, 0, 4))):
        for causal in (True, False):
            expect_adaptive(
                adaptive_window_attention,
                q,
                k,
                v,
                widths,
                causal,
                f"adaptive_window_attention with every width {int(widths[0, 0])}, "
                f"L = {L}, causal={causal}",
            )


def adaptive_rejects_bad_widths(adaptive_window_attention, rng):
    """ValueError for a width < 1, float widths, widths of the wrong length, and Lq != Lk"""
    L = draw(rng, 5, 10)
    q, k, v, widths = adaptive_inputs(rng, (2,), L)
    zero = widths.clone()
    zero[0, draw(rng, 0, L - 1)] = 0
    cases = [
        (zero, q, k, v, "a width of 0"),
        (widths.float(), q, k, v, "float widths"),
        (widths[..., :-1], q, k, v, f"widths of length {L - 1} for L = {L}"),
        (widths, q[..., :-1, :], k, v, f"Lq = {L - 1} != Lk = {L}, widths of length Lk"),
        # widths that fit q: only a test of Lq against Lk itself finds this one
        (widths[..., :-1], q[..., :-1, :], k, v, f"Lq = {L - 1} != Lk = {L}, widths of length Lq"),
    ]
    for w, qq, kk, vv, what in cases:
        expect_value_error(
            lambda: adaptive_window_attention(qq, kk, vv, w),
            f"adaptive_window_attention with {what}",
            "no_error_for_bad_params",
        )


def adaptive_vectorised(adaptive_window_attention, rng):
    """no Python loop over positions or batch rows (lines run at two sizes)"""

    def call(leading, L):
        q, k, v, widths = adaptive_inputs(rng, leading, L)
        return lambda: adaptive_window_attention(q, k, v, widths)

    expect_vectorised(
        "adaptive_window_attention",
        call,
        "widths.unsqueeze(-1), (..., L, 1), compares with the (L, L) grid of positions in one go.",
    )


EXERCISES = {
    "topk_gated_attention": Exercise(
        checks=[
            topk_matches,
            topk_shapes_and_float64,
            topk_extremes,
            topk_gradients,
            topk_rejects_bad_parameters,
            topk_vectorised,
        ],
        forbidden=FORBIDDEN_LEARNED,
    ),
    "adaptive_window_attention": Exercise(
        checks=[
            adaptive_causal,
            adaptive_symmetric,
            adaptive_shapes_and_float64,
            adaptive_extremes,
            adaptive_rejects_bad_widths,
            adaptive_vectorised,
        ],
        forbidden=FORBIDDEN_LEARNED,
    ),
}
