"""Checks for MultiHeadAttention against torch.nn.MultiheadAttention, with the student's weights
copied in, in float64.

MultiHeadAttention is a class: the check receives it wrapped by the guard, so constructing it is
guarded; every call of the module (its forward) goes through `grader.harness.checking.guarded`
too, so a shortcut inside forward is refused the same way.
"""

import torch
import torch.nn as nn
import torch.nn.functional as F

import course.reference.multihead as library
from grader.harness.checking import (
    Mistake,
    expect_close,
    expect_tensor,
    guarded,
    named,
    named_crash,
    naming_crashes,
)
from grader.suites import Exercise
from grader.suites._common import draw, randn
from grader.suites.day03_multihead.crashes import (
    REFUSES_VALID,
    TENSOR_TRUTH,
    expect_clear_error,
)
from grader.suites.day03_multihead.heads import HEADS_FORBIDDEN

HINTS = {
    "scaled_by_d_model": (
        "scores divided by sqrt(d_model) instead of sqrt(head_dim) (or, the same when d_model = "
        "head_dim², by sqrt(head_dim) twice)",
        "each head is an attention of its own over head_dim = d_model // num_heads features: "
        "scale by 1 / sqrt(head_dim), once.",
    ),
    "scaled_twice": (
        "scores divided by sqrt(head_dim) twice: q (or the scores) scaled before attention(), "
        "which scales them again",
        "leave q as it is: attention(q, k, v, mask) already divides the scores by sqrt(head_dim).",
    ),
    "queries_from_context": (
        "queries computed from `context`: only keys and values come from it",
        "q = q_proj(x), k = k_proj(context), v = v_proj(context): the output has one row per "
        "token of x.",
    ),
    "kv_heads_miscounted": (
        "keys and values split into the wrong number of heads, or repeated by the wrong count",
        "k = split_heads(self.k_proj(context), num_kv_heads), then repeat_kv(k, num_heads // "
        "num_kv_heads), so that k and v end with num_heads heads, like q (v the same way).",
    ),
    "state_kept_across_calls": (
        "keys and values (or another tensor) kept on `self` from an earlier call: a second call "
        "with new inputs reused them",
        "compute everything forward needs from its arguments, on every call: a module holds "
        "its weights, not the tensors of the last input (a KV cache is the caller's, day 4).",
    ),
    "missing_projection": (
        "a missing or mis-shaped projection",
        "define self.q_proj, self.k_proj, self.v_proj, self.out_proj as nn.Linear; q_proj and "
        "out_proj are (d_model -> d_model), k_proj and v_proj (d_model -> num_kv_heads * head_dim).",
    ),
    "out_proj_unused": (
        "the output projection (out_proj) never applied: the merged heads returned as they are",
        "finish with the output projection: out = self.out_proj(merge_heads(out)).",
    ),
    "ignores_context": (
        "cross-attention computed from x alone: keys and values must come from `context`",
        "k = k_proj(context), v = v_proj(context), with context = x only when it is None.",
    ),
    "ignores_mask": (
        "the mask ignored",
        "pass the boolean mask (True = may attend) to the attention: scores of blocked keys "
        "get -inf (or the dtype's minimum) before the softmax.",
    ),
    "inverted_mask": (
        "the mask inverted: True must mean 'may attend' (torch's nn.MultiheadAttention uses "
        "the opposite)",
        "block the keys where mask is False: scores.masked_fill(~mask, -inf).",
    ),
    "mask_not_broadcastable": (
        "the mask reshaped (an unsqueeze, a view) so that it no longer broadcasts against the "
        "scores (B, H, Lq, Lk)",
        "pass the (Lq, Lk) mask as it is: it broadcasts over batch and heads by itself.",
    ),
    "no_super_init": (
        "super().__init__() not called before the layers are assigned",
        "start __init__ with super().__init__(): nn.Module must set itself up before it can hold "
        "layers.",
    ),
    "weights_not_per_head": (
        "weights with the wrong shape: they should be per head, (B, H, Lq, Lk)",
        "return the softmax weights before merging the heads, (B, num_heads, Lq, Lk).",
    ),
    "weights_when_not_needed": (
        "weights returned although need_weights=False",
        "return (out, None) unless need_weights=True.",
    ),
    "gqa_tiled": (
        "query head h paired with KV head h % num_kv_heads instead of h // group",
        "use your repeat_kv: each KV head repeated num_heads // num_kv_heads times in a row.",
    ),
}


MHA_ADVICE = "build it from your split_heads, repeat_kv and merge_heads around course.reference.masks.attention."
MHA_FORBIDDEN = {
    **HEADS_FORBIDDEN,
    "multi_head_attention_forward": MHA_ADVICE,
    "native_multi_head_attention": MHA_ADVICE,
    library.MultiHeadAttention.__init__: MHA_ADVICE,
    library.MultiHeadAttention.forward: MHA_ADVICE,
    library.apply_rope: "write it yourself.",
}


# The crashes that name a mistake of MultiHeadAttention.__init__ and of forward.
INIT_CRASHES = (
    ("no_super_init", "AttributeError", "before Module.__init__() call"),
    REFUSES_VALID,
)
FORWARD_CRASHES = (TENSOR_TRUTH,)
# q @ k^T with k's heads not q's (k split into num_heads heads of too few features, or repeated
# by the wrong count); a ValueError of split_heads: K/V split into num_heads heads under GQA.
KV_REPEAT_CRASH = (
    "kv_heads_miscounted",
    "RuntimeError",
    "must match the size",
    "at non-singleton dimension 1",
)
KV_SPLIT_CRASH = ("kv_heads_miscounted", "ValueError")


def build(MultiHeadAttention, *args, **kwargs):
    """The student's module (constructed under the guard) and a guarded way to call it."""
    with naming_crashes(*INIT_CRASHES):
        module = MultiHeadAttention(*args, **kwargs)
    if not isinstance(module, nn.Module):
        raise Mistake(
            f"MultiHeadAttention(...) gave a {type(module).__name__}, not an nn.Module.",
            "subclass nn.Module and call super().__init__() first.",
            "not_a_module",
        )
    forward = guarded(module, "MultiHeadAttention", MHA_FORBIDDEN)

    def call(*args, **kwargs):
        with naming_crashes(*FORWARD_CRASHES):
            return forward(*args, **kwargs)

    return module, call


def forward_counting_heads(forward, *args, grouped=False, **kwargs):
    """forward(*args, **kwargs), without a mask (a mask that does not broadcast crashes the same
    way); a crash that pairs heads of different counts names the K/V heads. `grouped`: GQA or
    MQA, where a ValueError means K/V split into num_heads heads."""
    rules = (KV_REPEAT_CRASH, KV_SPLIT_CRASH) if grouped else (KV_REPEAT_CRASH,)
    with naming_crashes(*rules):
        return forward(*args, **kwargs)


def projections(module, d_model, kv_dim, bias=True):
    """The four nn.Linear projections, with their shapes checked."""
    found = []
    for name, out_features in [
        ("q_proj", d_model),
        ("k_proj", kv_dim),
        ("v_proj", kv_dim),
        ("out_proj", d_model),
    ]:
        layer = getattr(module, name, None)
        description, hint = HINTS["missing_projection"]
        if not isinstance(layer, nn.Linear):
            raise Mistake(
                f"module.{name} is {type(layer).__name__}, expected nn.Linear.",
                hint,
                "missing_projection",
            )
        if (layer.in_features, layer.out_features) != (d_model, out_features):
            raise Mistake(
                f"module.{name} maps {layer.in_features} -> {layer.out_features} "
                f"features, expected {d_model} -> {out_features}.",
                hint,
                "missing_projection",
            )
        if (layer.bias is not None) != bias:
            raise Mistake(
                f"module.{name} {'has no' if bias else 'has a'} bias, with bias={bias}.",
                "pass bias=bias to every nn.Linear.",
                "missing_projection",
            )
        found.append(layer)
    return found


def load(module, weights: dict):
    """Copy float64 `weights` (name -> (weight, bias)) into the student's projections, with one
    call of the module's own load_state_dict: the module may live in the student's kernel
    (grader/autograde/remote.py), where only calls reach it."""
    state = {}
    for name, (weight, bias) in weights.items():
        state[f"{name}.weight"] = weight
        if bias is not None:
            state[f"{name}.bias"] = bias
    module.load_state_dict(state, strict=False)


def random_weights(rng, d_model, kv_dim, bias=True, dtype=torch.float64):
    scale = d_model**-0.5
    return {
        name: (
            randn((out, d_model), rng, dtype, scale=scale),
            randn((out,), rng, dtype, scale=0.1) if bias else None,
        )
        for name, out in [
            ("q_proj", d_model),
            ("k_proj", kv_dim),
            ("v_proj", kv_dim),
            ("out_proj", d_model),
        ]
    }


def torch_mha(weights, d_model, heads, n_rep=1):
    """nn.MultiheadAttention in float64 holding `weights`; K/V heads repeated n_rep times."""
    bias = weights["q_proj"][1] is not None
    reference = nn.MultiheadAttention(
        d_model, heads, bias=bias, batch_first=True, dtype=torch.float64
    ).eval()
    head_dim = d_model // heads

    def repeated(weight):  # (Hkv*dh, ...) -> (Hkv*n_rep*dh, ...), each head block n_rep times
        return (
            weight.view(-1, head_dim, *weight.shape[1:]).repeat_interleave(n_rep, 0).flatten(0, 1)
        )

    with torch.no_grad():
        reference.in_proj_weight.copy_(
            torch.cat(
                [
                    weights["q_proj"][0],
                    repeated(weights["k_proj"][0]),
                    repeated(weights["v_proj"][0]),
                ]
            )
        )
        reference.out_proj.weight.copy_(weights["out_proj"][0])
        if bias:
            reference.in_proj_bias.copy_(
                torch.cat(
                    [
                        weights["q_proj"][1],
                        repeated(weights["k_proj"][1]),
                        repeated(weights["v_proj"][1]),
                    ]
                )
            )
            reference.out_proj.bias.copy_(weights["out_proj"][1])
    return reference


def torch_reference(weights, d_model, heads, x, context=None, mask=None, n_rep=1):
    """(out, per-head weights, head-averaged weights) from nn.MultiheadAttention, float64."""
    reference = torch_mha(weights, d_model, heads, n_rep)
    x = x.double()
    context = x if context is None else context.double()
    attn_mask = None if mask is None else ~mask  # torch: True = blocked
    with torch.no_grad():
        out, per_head = reference(
            x, context, context, attn_mask=attn_mask, need_weights=True, average_attn_weights=False
        )
        _, averaged = reference(x, context, context, attn_mask=attn_mask, need_weights=True)
    return out, per_head, averaged


def dense64(
    weights,
    heads,
    kv_heads,
    x,
    context=None,
    mask=None,
    split="contiguous",
    scale=None,
    kv_of_head=None,
    out_proj=True,
    fill=-torch.inf,
):
    """A float64 MHA written out, with the knobs the named mistakes turn: (out, weights)."""
    x = x.double()
    context = x if context is None else context.double()
    d_model = x.shape[-1]
    head_dim = d_model // heads

    def project(name, t):
        weight, bias = weights[name]
        return F.linear(t, weight, bias)

    def to_heads(t, n, query=False):
        batch, length, _ = t.shape
        if split in ("no_transpose", "split_only") or (split == "query_only" and query):
            return t.reshape(batch, n, length, head_dim)
        return t.view(batch, length, n, head_dim).transpose(1, 2)

    q = to_heads(project("q_proj", x), heads, query=True)
    k, v = (
        to_heads(project("k_proj", context), kv_heads),
        to_heads(project("v_proj", context), kv_heads),
    )
    index = torch.tensor(
        [h // (heads // kv_heads) if kv_of_head is None else kv_of_head(h) for h in range(heads)]
    )
    k, v = k[:, index], v[:, index]
    scores = q @ k.transpose(-2, -1) * (head_dim**-0.5 if scale is None else scale)
    if mask is not None:
        scores = scores.masked_fill(~mask, fill)
    # a row with every key blocked (an inverted mask's) gets zero weights, as the course's
    # attention gives it; with fill = the dtype's minimum, uniform weights
    attn = torch.softmax(scores, dim=-1).nan_to_num(0.0)
    out = attn @ v  # (B, H, Lq, dh)
    batch, _, length, _ = out.shape
    if split == "no_transpose":
        merged = out.reshape(batch, length, d_model)
    else:
        merged = out.transpose(1, 2).reshape(batch, length, d_model)
    return (project("out_proj", merged) if out_proj else merged), attn


MASK_MIN = torch.finfo(torch.float64).min  # a fill that gives uniform weights to a blocked row


def mha_suspects(weights, heads, kv_heads, x, context=None, mask=None):
    d_model = x.shape[-1]
    suspects = [
        (
            "split_without_transpose",
            dense64(weights, heads, kv_heads, x, context, mask, split="no_transpose"),
        ),
        (
            "split_without_transpose",
            dense64(weights, heads, kv_heads, x, context, mask, split="split_only"),
        ),
        (  # q split by hand without the transpose, k and v by split_heads
            "split_without_transpose",
            dense64(weights, heads, kv_heads, x, context, mask, split="query_only"),
        ),
        (
            "scaled_by_d_model",
            dense64(weights, heads, kv_heads, x, context, mask, scale=d_model**-0.5),
        ),
        (
            "scaled_twice",
            dense64(weights, heads, kv_heads, x, context, mask, scale=heads / d_model),
        ),
        ("out_proj_unused", dense64(weights, heads, kv_heads, x, context, mask, out_proj=False)),
    ]
    if context is not None:
        suspects.append(("ignores_context", dense64(weights, heads, kv_heads, x, None, None)))
    if mask is not None:
        suspects += [
            ("ignores_mask", dense64(weights, heads, kv_heads, x, context, None)),
            ("inverted_mask", dense64(weights, heads, kv_heads, x, context, ~mask)),
            (
                "inverted_mask",
                dense64(weights, heads, kv_heads, x, context, ~mask, fill=MASK_MIN),
            ),
        ]
    if kv_heads not in (1, heads):
        suspects.append(
            (
                "gqa_tiled",
                dense64(
                    weights, heads, kv_heads, x, context, mask, kv_of_head=lambda h: h % kv_heads
                ),
            )
        )
    return suspects


def unpack_mha(result, batch, heads, lq, lk, d_model, dtype, need_weights=True):
    if not isinstance(result, (tuple, list)) or len(result) != 2:
        raise Mistake(
            f"forward should return a pair (out, weights or None), got {type(result).__name__}.",
            "end forward with `return out, weights` (weights None unless need_weights).",
            "not_a_pair",
        )
    out, weights = result
    if isinstance(out, torch.Tensor) and lq != lk and tuple(out.shape) == (batch, lk, d_model):
        raise named("queries_from_context")
    expect_tensor(out, "out", (batch, lq, d_model), dtype)
    if not need_weights:
        if weights is not None:
            raise named("weights_when_not_needed")
        return out, None
    if (
        isinstance(weights, torch.Tensor)
        and lq != lk
        and tuple(weights.shape) == (batch, heads, lq, lq)
    ):
        raise named("ignores_context")
    if isinstance(weights, torch.Tensor) and tuple(weights.shape) != (batch, heads, lq, lk):
        description, hint = HINTS["weights_not_per_head"]
        raise Mistake(
            f"weights have shape {tuple(weights.shape)}, expected "
            f"{(batch, heads, lq, lk)}: it looks like {description}.",
            hint,
            "weights_not_per_head",
        )
    expect_tensor(weights, "weights", (batch, heads, lq, lk), dtype)
    return out, weights


def fully_masked_rows() -> Mistake:
    """What NaN in a masked attention means: a row with every key blocked, which the checks'
    masks never have, so the mask was turned around."""
    return named("inverted_mask")


def compare_mha(result, reference, suspects, dtype, masked=False):
    """out, then the head-averaged weights, then the per-head weights against the references."""
    out, weights = result
    out_ref, per_head_ref, averaged_ref = reference
    nonfinite = fully_masked_rows() if masked else None
    expect_close(
        out,
        out_ref,
        dtype,
        what="out",
        suspects=[(key, wrong[0]) for key, wrong in suspects],
        nonfinite=nonfinite,
    )
    if weights is not None:
        weight_suspects = [(key, wrong[1].mean(1)) for key, wrong in suspects]
        expect_close(
            weights.mean(1),
            averaged_ref,
            dtype,
            what="weights averaged over heads",
            suspects=weight_suspects,
            nonfinite=nonfinite,
        )
        expect_close(
            weights,
            per_head_ref,
            dtype,
            what="weights",
            suspects=[(key, wrong[1]) for key, wrong in suspects],
            nonfinite=nonfinite,
        )


def forward_masked(forward, x, context, mask, lq, lk, grouped=False):
    """forward(x, context, mask, need_weights=True); when it crashes, one more call without the
    mask tells whether the mask is the trouble (reshaped so that it no longer broadcasts), the
    keys (computed from x, so an (Lq, Lk) mask cannot fit scores of (Lq, Lq)), the queries
    (computed from context: scores of (Lk, Lk)) or the K/V heads (the call crashes again)."""
    try:
        return forward(x, context=context, mask=mask, need_weights=True)
    except Mistake as crash:
        if crash.key != "raised":
            raise
        try:
            _, weights = forward_counting_heads(
                forward, x, context=context, need_weights=True, grouped=grouped
            )
        except Mistake as unmasked:
            raise (unmasked if unmasked.key == "kv_heads_miscounted" else crash) from None
        if isinstance(weights, torch.Tensor) and weights.shape[-1] != lk:
            raise named("ignores_context") from None
        if isinstance(weights, torch.Tensor) and weights.shape[-2] != lq:
            raise named("queries_from_context") from None
        raise named_crash(crash, "mask_not_broadcastable") from None


def mha_setup(MultiHeadAttention, rng, heads=None, kv_heads=None, bias=True, dtype=torch.float32):
    heads = draw(rng, 2, 4) if heads is None else heads
    d_model = heads * draw(rng, 2, 5)
    kv_heads = heads if kv_heads is None else kv_heads
    if kv_heads == heads:
        module, forward = build(MultiHeadAttention, d_model, heads, bias=bias)
    else:
        module, forward = build(MultiHeadAttention, d_model, heads, kv_heads, bias=bias)
    projections(module, d_model, kv_heads * (d_model // heads), bias)
    module = module.to(dtype).eval()
    weights = random_weights(rng, d_model, kv_heads * (d_model // heads), bias)
    load(module, weights)
    return module, forward, weights, d_model, heads, kv_heads


def mha_self_matches_torch(MultiHeadAttention, rng):
    """self-attention: out and head-averaged weights equal nn.MultiheadAttention's (same weights)"""
    module, forward, weights, d_model, heads, _ = mha_setup(MultiHeadAttention, rng)
    batch, length = draw(rng, 1, 3), draw(rng, 3, 8)
    x = randn((batch, length, d_model), rng)
    result = unpack_mha(
        forward_counting_heads(forward, x, need_weights=True),
        batch,
        heads,
        length,
        length,
        d_model,
        x.dtype,
    )
    compare_mha(
        result,
        torch_reference(weights, d_model, heads, x),
        mha_suspects(weights, heads, heads, x),
        x.dtype,
    )


def mha_fresh_on_every_call(MultiHeadAttention, rng):
    """one module called twice: the second answer depends on the second input alone"""
    module, forward, weights, d_model, heads, _ = mha_setup(MultiHeadAttention, rng)
    batch, length = draw(rng, 1, 3), draw(rng, 3, 8)
    first, x = (randn((batch, length, d_model), rng) for _ in range(2))
    forward_counting_heads(forward, first, need_weights=True)
    result = unpack_mha(
        forward_counting_heads(forward, x, need_weights=True),
        batch,
        heads,
        length,
        length,
        d_model,
        x.dtype,
    )
    stale = dense64(weights, heads, heads, x, context=first)  # keys and values of `first`
    compare_mha(
        result,
        torch_reference(weights, d_model, heads, x),
        [("state_kept_across_calls", stale), *mha_suspects(weights, heads, heads, x)],
        x.dtype,
    )


def mha_square_heads(MultiHeadAttention, rng):
    """L = H = head_dim, no bias, float64: a split without a transpose cannot hide"""
    size = draw(rng, 3, 4)
    d_model = size * size
    module, forward = build(MultiHeadAttention, d_model, size, bias=False)
    projections(module, d_model, d_model, bias=False)
    module = module.double().eval()
    weights = random_weights(rng, d_model, d_model, bias=False)
    load(module, weights)
    x = randn((2, size, d_model), rng, dtype=torch.float64, scale=2.0)
    result = unpack_mha(
        forward_counting_heads(forward, x, need_weights=True),
        2,
        size,
        size,
        size,
        d_model,
        torch.float64,
    )
    compare_mha(
        result,
        torch_reference(weights, d_model, size, x),
        mha_suspects(weights, size, size, x),
        torch.float64,
    )


def mha_cross_attention_with_mask(MultiHeadAttention, rng):
    """cross-attention (context with Lk ≠ Lq) and a boolean mask (True = may attend)"""
    module, forward, weights, d_model, heads, _ = mha_setup(MultiHeadAttention, rng)
    batch, lq = draw(rng, 1, 3), draw(rng, 2, 6)
    lq += lq == heads  # a mask unsqueezed for the heads, (Lq, 1, Lk), must not broadcast
    lk = lq + draw(rng, 1, 4)
    x, context = randn((batch, lq, d_model), rng), randn((batch, lk, d_model), rng)
    mask = torch.rand((lq, lk), generator=rng) < 0.6
    mask[torch.arange(lq), torch.randint(0, lk, (lq,), generator=rng)] = True  # no empty row
    result = unpack_mha(
        forward_masked(forward, x, context, mask, lq, lk),
        batch,
        heads,
        lq,
        lk,
        d_model,
        x.dtype,
    )
    compare_mha(
        result,
        torch_reference(weights, d_model, heads, x, context, mask),
        mha_suspects(weights, heads, heads, x, context, mask),
        x.dtype,
        masked=True,
    )


def mha_need_weights_false(MultiHeadAttention, rng):
    """need_weights=False (the default) returns (out, None), out unchanged"""
    module, forward, weights, d_model, heads, _ = mha_setup(MultiHeadAttention, rng)
    batch, length = draw(rng, 1, 3), draw(rng, 3, 8)
    x = randn((batch, length, d_model), rng)
    out, _ = unpack_mha(
        forward_counting_heads(forward, x),
        batch,
        heads,
        length,
        length,
        d_model,
        x.dtype,
        need_weights=False,
    )
    reference = torch_reference(weights, d_model, heads, x)
    expect_close(
        out,
        reference[0],
        x.dtype,
        what="out",
        suspects=[(key, wrong[0]) for key, wrong in mha_suspects(weights, heads, heads, x)],
    )


def mha_gqa_equals_repeated_mha(MultiHeadAttention, rng):
    """GQA (num_kv_heads < num_heads) equals MHA with each K/V head repeated for its group"""
    kv_heads = draw(rng, 2, 3)
    heads = kv_heads * draw(rng, 2, 3)
    module, forward, weights, d_model, heads, kv_heads = mha_setup(
        MultiHeadAttention, rng, heads=heads, kv_heads=kv_heads
    )
    batch, length = draw(rng, 1, 3), draw(rng, 3, 8)
    length += length == heads  # a mask unsqueezed for the heads, (L, 1, L), must not broadcast
    x = randn((batch, length, d_model), rng)
    mask = torch.ones(length, length, dtype=torch.bool).tril()
    result = unpack_mha(
        forward_masked(forward, x, None, mask, length, length, grouped=True),
        batch,
        heads,
        length,
        length,
        d_model,
        x.dtype,
    )
    compare_mha(
        result,
        torch_reference(weights, d_model, heads, x, mask=mask, n_rep=heads // kv_heads),
        mha_suspects(weights, heads, kv_heads, x, mask=mask),
        x.dtype,
        masked=True,
    )


def mha_multi_query(MultiHeadAttention, rng):
    """MQA (num_kv_heads = 1): k_proj and v_proj are d_model -> head_dim, one K/V head for all"""
    heads = draw(rng, 2, 5)
    module, forward, weights, d_model, heads, _ = mha_setup(
        MultiHeadAttention, rng, heads=heads, kv_heads=1
    )
    batch, lq = draw(rng, 1, 2), draw(rng, 2, 5)
    lk = lq + draw(rng, 1, 3)
    x, context = randn((batch, lq, d_model), rng), randn((batch, lk, d_model), rng)
    result = unpack_mha(
        forward_counting_heads(forward, x, context, need_weights=True, grouped=True),
        batch,
        heads,
        lq,
        lk,
        d_model,
        x.dtype,
    )
    compare_mha(
        result,
        torch_reference(weights, d_model, heads, x, context, n_rep=heads),
        mha_suspects(weights, heads, 1, x, context),
        x.dtype,
    )


def mha_refuses_bad_head_counts(MultiHeadAttention, rng):
    """d_model % num_heads != 0 and num_heads % num_kv_heads != 0 raise ValueError"""
    heads = draw(rng, 3, 5)
    d_model = heads * draw(rng, 2, 4) + 1
    expect_clear_error(
        lambda: MultiHeadAttention(d_model, heads),
        f"MultiHeadAttention(d_model={d_model}, num_heads={heads})",
        'raise ValueError(f"d_model={d_model} is not divisible by num_heads={num_heads}")',
    )
    heads, kv_heads = draw(rng, 2, 3) * 2 + 1, 2  # an odd number of heads in 2 KV groups
    expect_clear_error(
        lambda: MultiHeadAttention(heads * 4, heads, kv_heads),
        f"MultiHeadAttention(d_model={heads * 4}, num_heads={heads}, num_kv_heads={kv_heads})",
        'raise ValueError(f"num_heads={num_heads} is not divisible by '
        'num_kv_heads={num_kv_heads}")',
    )


EXERCISES = {
    "MultiHeadAttention": Exercise(
        checks=[
            mha_self_matches_torch,
            mha_fresh_on_every_call,
            mha_square_heads,
            mha_cross_attention_with_mask,
            mha_need_weights_false,
            mha_gqa_equals_repeated_mha,
            mha_multi_query,
            mha_refuses_bad_head_counts,
        ],
        forbidden=MHA_FORBIDDEN,
    ),
}
