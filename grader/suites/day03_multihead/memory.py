"""Checks for memory_attention: gated attention to a detached memory of earlier segments, against
a float64 oracle with explicit absolute positions.
"""

import math

import torch

import course.reference.multihead as library
from grader.harness.checking import (
    Mistake,
    crashed_with,
    expect_close,
    expect_tensor,
    hint,
    named,
    named_crash,
)
from grader.suites import Exercise
from grader.suites._common import draw, randn
from grader.suites.day03_multihead.crashes import expect_clear_error
from grader.suites.day03_multihead.positions import rope64
from grader.suites.day03_multihead.relative import RELATIVE_FORBIDDEN

HINTS = {
    "memory_not_detached": (
        "gradients flowing into the memory: it must be detached (Transformer-XL's stop-gradient)",
        "use mem_k.detach() and mem_v.detach(): earlier segments are fixed context, and "
        "backpropagating into them would keep every past segment's graph alive.",
    ),
    "positions_restart": (
        "the segment's positions (of q, k or both) restarting at 0 or at start instead of "
        "continuing after the memory",
        "memory tokens sit at start .. start + M - 1 and the segment at start + M .. "
        "start + M + L - 1: rotate q and k at those positions.",
    ),
    "positions_off_by_one": (
        "the segment's positions one off: a gap after the memory (start + M + 1 ..) or an "
        "overlap with its last token (start + M - 1 ..)",
        "the memory takes start .. start + M - 1, so the segment starts right after it: "
        "start + M + arange(L).",
    ),
    "values_rotated": (
        "the values rotated with RoPE too",
        "RoPE rotates q and k only, so that their scores depend on the distance; v (and mem_v) "
        "go into the attention as they are.",
    ),
    "gate_softmax": (
        "the gate from a softmax (over the heads or the tokens) instead of a sigmoid: the gates "
        "then compete and sum to 1",
        "each token and head has its own gate: g = torch.sigmoid(gate_logits).",
    ),
    "memory_after_segment": (
        "the memory placed after the segment (positions L .. L + M - 1)",
        "the memory comes from earlier segments: positions start .. start + M - 1, before the "
        "segment's start + M ..",
    ),
    "gate_inverted": (
        "the gate applied the wrong way round: g must weight the memory",
        "out = g * attend(memory) + (1 - g) * attend(local), with g = sigmoid(gate_logits).",
    ),
    "gate_not_squashed": (
        "the gate logits used as the gate without a sigmoid (the gate must lie in (0, 1))",
        "g = torch.sigmoid(gate_logits).",
    ),
    "memory_detached_in_place": (
        "the caller's memory detached in place (mem_k.detach_()): it loses its graph for whoever "
        "passed it, and a memory that is a view (a slice of a cache) cannot be detached in "
        "place at all",
        "use mem_k = mem_k.detach() (and the same for mem_v): a new tensor, the caller's left as "
        "it was.",
    ),
    "causal_mask_inverted": (
        "the local causal mask inverted (`triu(..., 1)`, True where a token must not look): in "
        "the course's masks True means 'may attend'",
        "use causal_mask(L) (True on and below the diagonal), or torch.ones(L, L, "
        "dtype=torch.bool).tril().",
    ),
    "local_not_causal": (
        "the local attention not causal: a token sees later tokens of its own segment",
        "mask the local scores with a causal mask (True = may attend), e.g. causal_mask(L).",
    ),
    "memory_concatenated": (
        "one softmax over [memory ; segment] (plain concatenation) instead of two gated attentions",
        "attend to the memory and to the segment separately, each with its own softmax, and mix "
        "the two outputs with the gate.",
    ),
    "gate_ignored_on_empty": (
        "with an empty memory (M = 0) the local attention alone: the gate ignored there (an "
        "early `return local`), or one softmax over [memory ; segment]",
        "the gate applies whatever M is: with no memory, the attention over it gives zeros, so "
        "out = (1 - g) * local.",
    ),
    "memory_masked": (
        "a causal mask on the memory keys too: every memory token comes before the whole "
        "segment, so each query may see all of them",
        "attend to the memory without a mask, attention(q, mem_k, mem_v); only the local "
        "attention over the segment is causal.",
    ),
    "gate_not_unsqueezed": (
        "the gate (B, H, L) multiplied into outputs (B, H, L, D) without a last axis: it "
        "broadcasts against the features, not the tokens",
        "g = gate.unsqueeze(-1) (or gate[..., None]), (B, H, L, 1), then g * from_memory + "
        "(1 - g) * local.",
    ),
    "memory_not_rotated": (
        "the memory keys used without RoPE (only q and k rotated)",
        "rotate mem_k too, at the memory's positions: apply_rope(mem_k, start + arange(M), base).",
    ),
    "memory_ignores_base": (
        "the base argument not passed on to apply_rope (its default 10000 used) for q and k, "
        "for mem_k, or for all three",
        "apply_rope(t, positions, base) for q, k and mem_k alike.",
    ),
    "empty_memory": (
        "an empty memory (M = 0, a stream's first segment) not handled",
        "with M = 0 attention over the memory gives zeros (no key to attend to) and out = "
        "(1 - g) * local; a max or a reduction over an empty axis fails, so skip it "
        "(`if M == 0`) or use the course's attention, which handles it.",
    ),
}


MEMORY_FORBIDDEN = {**RELATIVE_FORBIDDEN, library.apply_rope: "use your own apply_rope."}


def softmax_attention64(q, k, v, mask=None):
    """softmax(q k^T / sqrt(D)) v; a query with every key blocked gets zeros, as from the
    course's attention."""
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    return torch.softmax(scores, dim=-1).nan_to_num(0.0) @ v


def memory64(
    q,
    k,
    v,
    mem_k,
    mem_v,
    gate_logits,
    start=0,
    base=10000.0,
    memory_base=None,
    memory_at=None,
    segment_at=None,
    query_at=None,
    invert=False,
    squash=True,
    gate_softmax_dim=None,
    rotate_values=False,
    causal=True,
    local_mask=None,
    concatenate=False,
    rotate_memory=True,
    gate_axis=-1,
    memory_mask=None,
):
    """Gated memory attention in float64 with explicit absolute positions; the knobs give the
    mistakes (memory_base: mem_k's RoPE base when it is not `base`; query_at: q's positions when
    they are not k's; local_mask: the segment's own mask when it is not causal). Returns (out,
    gate)."""
    q, k, v, mem_k, mem_v = (t.double() for t in (q, k, v, mem_k, mem_v))
    length, memory = q.shape[-2], mem_k.shape[-2]
    memory_at = start + torch.arange(memory) if memory_at is None else memory_at
    segment_at = start + memory + torch.arange(length) if segment_at is None else segment_at
    query_at = segment_at if query_at is None else query_at
    q_rot, k_rot = rope64(q, query_at, base), rope64(k, segment_at, base)
    if rotate_values:
        v, mem_v = rope64(v, segment_at, base), rope64(mem_v, memory_at, base)
    memory_base = base if memory_base is None else memory_base
    mem_rot = rope64(mem_k, memory_at, memory_base) if rotate_memory else mem_k
    if local_mask is None and causal:
        local_mask = torch.ones(length, length, dtype=torch.bool).tril()
    gate = torch.sigmoid(gate_logits.double()) if squash else gate_logits.double()
    if gate_softmax_dim is not None:
        gate = torch.softmax(gate_logits.double(), dim=gate_softmax_dim)
    if concatenate:
        keys, values = torch.cat([mem_rot, k_rot], -2), torch.cat([mem_v, v], -2)
        mask = torch.cat([torch.ones(length, memory, dtype=torch.bool), local_mask], -1)
        return softmax_attention64(q_rot, keys, values, mask), gate
    from_memory = softmax_attention64(q_rot, mem_rot, mem_v, memory_mask)
    local = softmax_attention64(q_rot, k_rot, v, local_mask)
    g = (1 - gate if invert else gate).unsqueeze(gate_axis)
    return g * from_memory + (1 - g) * local, gate


def memory_suspects(q, k, v, mem_k, mem_v, gate_logits, start=0, base=10000.0):
    length, memory = q.shape[-2], mem_k.shape[-2]
    args = (q, k, v, mem_k, mem_v, gate_logits, start, base)
    suspects = [
        ("positions_restart", memory64(*args, segment_at=start + torch.arange(length))),
        (
            "positions_restart",
            memory64(*args, segment_at=torch.arange(length), memory_at=torch.arange(memory)),
        ),
        ("positions_restart", memory64(*args, segment_at=torch.arange(length))),  # at 0, not start
        ("positions_restart", memory64(*args, query_at=start + torch.arange(length))),
        ("positions_restart", memory64(*args, query_at=torch.arange(length))),
        (
            "positions_off_by_one",
            memory64(*args, segment_at=start + memory + 1 + torch.arange(length)),
        ),
        (
            "positions_off_by_one",
            memory64(*args, segment_at=start + memory - 1 + torch.arange(length)),
        ),
        (
            "memory_after_segment",
            memory64(
                *args,
                segment_at=start + torch.arange(length),
                memory_at=start + length + torch.arange(memory),
            ),
        ),
        ("gate_inverted", memory64(*args, invert=True)),
        ("gate_not_squashed", memory64(*args, squash=False)),
        ("gate_softmax", memory64(*args, gate_softmax_dim=-2)),  # over the heads
        ("gate_softmax", memory64(*args, gate_softmax_dim=-1)),  # over the tokens
        ("values_rotated", memory64(*args, rotate_values=True)),
        ("local_not_causal", memory64(*args, causal=False)),
        (
            "causal_mask_inverted",
            memory64(*args, local_mask=torch.ones(length, length, dtype=torch.bool).triu(1)),
        ),
        ("memory_not_rotated", memory64(*args, rotate_memory=False)),
    ]
    # with M = 0, one softmax over [memory ; segment] is the local attention alone
    concatenated = "memory_concatenated" if memory else "gate_ignored_on_empty"
    suspects.append((concatenated, memory64(*args, concatenate=True)))
    if memory:  # a causal mask on the (L, M) memory scores, bottom-right or top-left
        bottom_right = torch.arange(memory) <= torch.arange(length).unsqueeze(-1) + memory - length
        top_left = torch.ones(length, memory, dtype=torch.bool).tril()
        suspects += [
            ("memory_masked", memory64(*args, memory_mask=bottom_right)),
            ("memory_masked", memory64(*args, memory_mask=top_left)),
        ]
    if base != 10000.0:  # the default base for all of q, k, mem_k, or for some of them
        suspects += [
            ("memory_ignores_base", memory64(*args[:-1], 10000.0)),
            ("memory_ignores_base", memory64(*args[:-1], 10000.0, memory_base=base)),
            ("memory_ignores_base", memory64(*args, memory_base=10000.0)),
        ]
    if length == q.shape[-1]:  # a gate without its last axis broadcasts against the features
        suspects.append(("gate_not_unsqueezed", memory64(*args, gate_axis=-2)))
    return suspects


def call_memory(memory_attention, inputs, **kwargs):
    """The student's call; a broadcast that pairs the gate's L with out's D names the gate."""
    length, dim = inputs[0].shape[-2:]
    try:
        return memory_attention(*inputs, **kwargs)
    except Mistake as crash:
        sizes = f"({length})" in crash.message and f"({dim})" in crash.message
        if crash.key == "raised" and "must match the size" in crash.message and sizes:
            raise named_crash(crash, "gate_not_unsqueezed") from None
        raise


def memory_inputs(rng, dtype=torch.float32, memory=None, length=None):
    batch, heads, dim = draw(rng, 1, 2), draw(rng, 1, 3), 2 * draw(rng, 2, 4)
    length = draw(rng, 2, 6) if length is None else length
    memory = length + draw(rng, 1, 5) if memory is None else memory
    q, k, v = (randn((batch, heads, length, dim), rng, dtype) for _ in range(3))
    mem_k, mem_v = (randn((batch, heads, memory, dim), rng, dtype) for _ in range(2))
    gate_logits = randn((batch, heads, length), rng, dtype, scale=2.0)
    return q, k, v, mem_k, mem_v, gate_logits


def unpack_memory(result, q, v, gate_logits):
    if not isinstance(result, (tuple, list)) or len(result) != 2:
        raise Mistake(
            f"memory_attention should return a pair (out, gate), got {type(result).__name__}.",
            "end with `return out, gate`.",
            "not_a_pair",
        )
    out, gate = result
    expect_tensor(out, "out", (*q.shape[:-1], v.shape[-1]), q.dtype)
    expect_tensor(gate, "gate", gate_logits.shape, q.dtype)
    return out, gate


def compare_memory(result, reference, suspects, dtype, nonfinite=None):
    out, gate = result
    expect_close(
        out,
        reference[0],
        dtype,
        what="out",
        suspects=[(key, wrong[0]) for key, wrong in suspects],
        nonfinite=nonfinite,
    )
    inside = bool(((gate > 0) & (gate < 1)).all())
    if not inside:
        raise named("gate_not_squashed")
    expect_close(
        gate,
        reference[1],
        dtype,
        what="gate",
        suspects=[(key, wrong[1]) for key, wrong in suspects],
    )


def memory_matches_positions_oracle(memory_attention, rng):
    """M > L: memory at 0..M-1, the segment at M..M+L-1 (RoPE), two softmaxes mixed by sigmoid gate"""
    inputs = memory_inputs(rng)
    result = unpack_memory(call_memory(memory_attention, inputs), inputs[0], inputs[2], inputs[5])
    compare_memory(result, memory64(*inputs), memory_suspects(*inputs), torch.float32)


def memory_start_and_short_memory(memory_attention, rng):
    """M < L, start > 0 (a later segment of a stream), base=500, float64"""
    length = draw(rng, 4, 8)
    inputs = memory_inputs(rng, torch.float64, memory=draw(rng, 1, length - 1), length=length)
    start = draw(rng, 5, 60)
    result = unpack_memory(
        call_memory(memory_attention, inputs, start=start, base=500.0),
        inputs[0],
        inputs[2],
        inputs[5],
    )
    compare_memory(
        result,
        memory64(*inputs, start, 500.0),
        memory_suspects(*inputs, start, 500.0),
        torch.float64,
    )


def memory_empty(memory_attention, rng):
    """an empty memory (M = 0, a stream's first segment): out = (1 - g) * local attention"""
    inputs = memory_inputs(rng, memory=0)
    try:
        result = call_memory(memory_attention, inputs)
    except Mistake as crash:
        # causal_mask(L, M) refusing M = 0 keys: a mask meant for the memory, which needs none
        if crashed_with(crash, "ValueError", "need lq >= 1 and lk >= 1", "lk=0"):
            raise named_crash(crash, "memory_masked") from None
        if crash.key == "raised":  # not a crash of the gate's: one of the empty memory's
            raise named_crash(crash, "empty_memory") from None
        raise
    result = unpack_memory(result, inputs[0], inputs[2], inputs[5])
    # NaN: a softmax over no key at all (every score -inf), where attention gives zeros
    compare_memory(
        result,
        memory64(*inputs),
        memory_suspects(*inputs),
        torch.float32,
        nonfinite=named("empty_memory"),
    )


def memory_is_detached(memory_attention, rng):
    """no gradient reaches the memory, whose tensors are not detached in place; q, k, v get theirs"""
    q, k, v, mem_k, mem_v, gate_logits = memory_inputs(rng)
    leaves = [t.clone().requires_grad_() for t in (q, k, v, mem_k, mem_v, gate_logits)]
    out, _ = unpack_memory(memory_attention(*leaves), q, v, gate_logits)
    if not all(leaf.requires_grad for leaf in leaves[3:5]):
        raise named("memory_detached_in_place")
    if not out.requires_grad:
        raise Mistake(
            "out does not require grad although q, k, v and gate_logits do.",
            "do not detach the current segment's q, k, v or the gate: only the memory.",
            "no_gradient",
        )
    out.square().sum().backward()
    for name, leaf in zip(("mem_k", "mem_v"), leaves[3:5]):
        if leaf.grad is not None and leaf.grad.abs().sum() > 0:
            description, fix = hint("memory_not_detached")
            raise Mistake(
                f"{name}.grad is not zero after backward: it looks like {description}.",
                fix,
                "memory_not_detached",
            )
    for name, leaf in zip(("q", "k", "v", "gate_logits"), leaves[:3] + leaves[5:]):
        if leaf.grad is None or leaf.grad.abs().sum() == 0:
            raise Mistake(
                f"{name}.grad is {'None' if leaf.grad is None else 'zero'} after backward.",
                "only the memory is detached: the segment's q, k, v and the gate logits "
                "must get gradients.",
                "no_gradient",
            )


def memory_refuses_bad_shapes(memory_attention, rng):
    """mem_k and mem_v of different lengths, a memory head_dim != D, a gate not (..., L): ValueError"""
    q, k, v, mem_k, mem_v, gate_logits = memory_inputs(rng)
    expect_clear_error(
        lambda: memory_attention(q, k, v, mem_k, mem_v[..., :-1, :], gate_logits),
        f"mem_k {tuple(mem_k.shape)} with mem_v {tuple(mem_v[..., :-1, :].shape)}",
        'raise ValueError(f"mem_k has {mem_k.shape[-2]} tokens, mem_v {mem_v.shape[-2]}")',
    )
    expect_clear_error(
        lambda: memory_attention(q, k, v, mem_k[..., :-2], mem_v, gate_logits),
        f"mem_k {tuple(mem_k[..., :-2].shape)} for q {tuple(q.shape)}",
        'raise ValueError(f"mem_k has head size {mem_k.shape[-1]}, q has {q.shape[-1]}")',
    )
    expect_clear_error(
        lambda: memory_attention(q, k, v, mem_k, mem_v, gate_logits[..., :-1]),
        f"gate_logits {tuple(gate_logits[..., :-1].shape)} for q {tuple(q.shape)}",
        'raise ValueError(f"gate_logits must be {tuple(q.shape[:-1])}, got '
        '{tuple(gate_logits.shape)}")',
    )


EXERCISES = {
    "memory_attention": Exercise(
        checks=[
            memory_matches_positions_oracle,
            memory_start_and_short_memory,
            memory_empty,
            memory_is_detached,
            memory_refuses_bad_shapes,
        ],
        forbidden=MEMORY_FORBIDDEN,
    ),
}
