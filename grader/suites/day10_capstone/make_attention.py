"""The advanced make_attention: its HINTS and FORBIDDEN, and its checks, which recompute every
kind in float64 from the student's own projection weights."""

import math

import torch
import torch.nn as nn

import course.reference.mechanisms as mechanisms
from course.reference.mamba_scan import MambaBlock
from grader.harness.checking import (
    Mistake,
    expect_close,
    expect_tensor,
    expect_value_error,
    guarded,
    hint,
    named,
    relative_error,
)
from grader.suites import Exercise
from grader.suites._common import draw, randn

# One interface for every mechanism. The layer's projections are part of the contract
# (q_proj, k_proj, v_proj, out_proj: nn.Linear(d_model, d_model), as day03's MultiHeadAttention),
# so the oracle recomputes each kind in float64 from the student's own weights.

MAKE_HINTS = {
    "not_a_module": (
        "make_attention returning something that is not an nn.Module",
        "return an instance of an nn.Module subclass whose forward(x, mask=None) runs the kind.",
    ),
    "missing_projection": (
        "a multi-head kind without q_proj, k_proj, v_proj and out_proj as nn.Linear(d_model, d_model)",
        "give every kind but 'mamba' the four projections of day03's MultiHeadAttention, "
        "named q_proj, k_proj, v_proj and out_proj.",
    ),
    "heads_ignored": (
        "one head of size d_model instead of num_heads heads of size d_model // num_heads",
        "split q, k and v into heads (B, H, L, dh) before the mechanism and merge after it, as "
        "day03's split_heads and merge_heads do.",
    ),
    "scaled_by_d_model": (
        "scores scaled by 1/sqrt(d_model) instead of 1/sqrt(head_dim)",
        "each head is its own attention over head_dim = d_model // num_heads features.",
    ),
    "scaled_twice": (
        "scores scaled twice: q divided by sqrt(head_dim) before a mechanism that scales again",
        "the course's attention functions scale by 1/sqrt(head_dim) themselves: pass q as it "
        "comes out of the split.",
    ),
    "split_without_transpose": (
        "heads split by reshaping (B, L, d_model) straight to (B, H, L, dh)",
        "split the features of each token first, then move the heads forward: "
        "t.view(B, L, H, dh).transpose(1, 2), as day03's split_heads does.",
    ),
    "chunked_args_swapped": (
        "chunked_attention called with chunk_size and overlap swapped",
        "the order is chunked_attention(q, k, v, chunk_size, overlap); passing them by name "
        "(chunk_size=..., overlap=...) makes the order irrelevant.",
    ),
    "performer_global_seed": (
        "a Performer layer that reseeds torch's global random generator at every call",
        "draw the features from a generator of the layer's own, "
        "torch.Generator(device=q.device).manual_seed(seed), passed as generator=: "
        "torch.manual_seed resets every random number of the program (dropout, shuffling).",
    ),
    "defaults_shared": (
        "the defaults table changed by a call (options = LAYER_KINDS[kind]; options.update(...)): "
        "a later call inherits an earlier call's arguments",
        "build a new dict for each layer, options = {**LAYER_KINDS[kind], **kwargs}, so "
        "LAYER_KINDS keeps its defaults.",
    ),
    "defaults_not_filled": (
        "a keyword argument left out of the call never given its default (KeyError in forward)",
        "fill in the defaults in make_attention: options = {**LAYER_KINDS[kind], **kwargs}.",
    ),
    "causal_ignored": (
        "causal=True ignored: the kind still looks at later tokens",
        "pass causal through to the mechanism (causal_mask for 'dense', causal= for "
        "sliding_window_attention, flash_attention_torch and the linear forms).",
    ),
    "overlap_ignored": (
        "chunked attention without its overlap",
        "pass overlap to chunked_attention(q, k, v, chunk_size, overlap).",
    ),
    "wrong_window": (
        "the sliding window one key off, or built from the wrong arguments",
        "use sliding_window_attention(q, k, v, window, causal) with the layer's own window.",
    ),
    "mask_ignored": (
        "the mask given to forward ignored by a kind that takes one",
        "for 'dense' and 'strided', combine the mask with the kind's own pattern (logical and) "
        "before course.reference.masks.attention.",
    ),
    "mask_or_pattern": (
        "the mask and the kind's own pattern combined with OR (either one lets a pair through)",
        "a pair is allowed only where both the pattern and the mask allow it: pattern & mask "
        "(torch.logical_and).",
    ),
    "mask_replaces_pattern": (
        "the mask given to forward used instead of the kind's own pattern",
        "keep the kind's pattern (causal or strided) and combine the mask with it: pattern & mask.",
    ),
    "merge_without_transpose": (
        "heads merged by reshaping (B, H, L, dh) straight to (B, L, d_model)",
        "move the heads next to the features first: out.transpose(1, 2).reshape(B, L, "
        "d_model), as day03's merge_heads does.",
    ),
    "merge_wrong_order": (
        "heads merged with the features before the heads ((B, L, dh, H), e.g. permute(0, 2, 3, 1))",
        "the merged token is head 0's features, then head 1's, ...: out.transpose(1, 2) to "
        "(B, L, H, dh), then reshape(B, L, d_model), as day03's merge_heads does.",
    ),
    "mask_inverted": (
        "the pattern inverted (~pattern): True read as 'masked out'",
        "in the course a mask's True means 'may attend' (causal_mask is True on and below the "
        "diagonal): pass pattern & mask to attention as it is, without ~.",
    ),
    "out_proj_missing": (
        "the merged heads returned without the output projection",
        "finish forward with self.out_proj(merged): the layer is x W_Q, ..., then O W_O + b_O.",
    ),
    "heads_not_dividing": (
        "a layer built although num_heads does not divide d_model",
        "check d_model % num_heads in make_attention and raise ValueError naming both: "
        "the heads split d_model into equal parts of d_model // num_heads.",
    ),
    "mask_silently_dropped": (
        "a kind that never builds the (L, L) scores accepting a mask and ignoring it",
        "raise ValueError when a mask is given to a kind that cannot apply it: ignoring it would "
        "silently attend to padding.",
    ),
    "not_causal_scan": (
        "a 'mamba' layer whose early outputs depend on later tokens",
        "the scan runs forward in time; wrap course.reference.mamba_scan.MambaBlock and keep its causal conv.",
    ),
    "performer_not_deterministic": (
        "a Performer layer that draws new random features at every call",
        "draw the features from a generator seeded with the layer's `seed` at every call "
        "(torch.Generator().manual_seed(seed)), so the layer is a function of its input.",
    ),
    "performer_features_ignored": (
        "a Performer layer that ignores num_features (the same features whatever number is asked)",
        "pass the layer's own number on: performer_attention(q, k, v, "
        "num_features=self.options['num_features'], generator=generator).",
    ),
    "scan_residual": (
        "a 'mamba' layer that adds its input to the block's output (x + block(x))",
        "return self.block(x) as it is: like the attention kinds, the layer is only the mixing "
        "step, and the residual belongs to the model around it.",
    ),
    "performer_wrong": (
        "a Performer layer far from the softmax attention it approximates",
        "use course.reference.linear_attention.performer_attention on the split heads, with "
        "the layer's num_features.",
    ),
    "unclear_kind_error": (
        "an unknown kind, an unknown argument or a missing one accepted, or refused without "
        "naming what is valid",
        "raise ValueError listing the valid kinds (and for a bad argument, the arguments the kind "
        "takes), so the caller can fix the call from the message alone.",
    ),
}

MAKE_FORBIDDEN = {
    mechanisms.make_attention: "build each kind yourself around the course's attention functions.",
    mechanisms.MultiHeadMechanism.__init__: "write your own nn.Module around the mechanisms.",
    mechanisms.MultiHeadMechanism.forward: "write your own nn.Module around the mechanisms.",
    mechanisms.MambaMechanism.__init__: "wrap course.reference.mamba_scan.MambaBlock in your own module.",
}

# (kind, causal or None to draw it): the sliding window both ways, as each mode shows a window
# one key off differently (see draw_options)
EXACT_CASES = [
    ("dense", None),
    ("strided", None),
    ("sliding_window", False),
    ("sliding_window", True),
    ("chunked", None),
    ("flash", None),
]


def draw_options(kind: str, rng, L: int, causal: bool = None) -> dict:
    """Random keyword arguments for `kind` at length L (`causal` drawn unless given)."""
    causal = bool(draw(rng, 0, 1)) if causal is None else causal
    if kind == "dense":
        return {"causal": causal}
    if kind == "strided":
        return {"stride": draw(rng, 2, 5), "local_window": draw(rng, 1, 5)}
    if kind == "sliding_window":
        # not causal, a window w sees w // 2 keys each side: an odd w and w - 1 (an even w and
        # w + 1) are the same pattern, so the one-key-off check draws each parity where it shows
        window = draw(rng, 2, 7)
        return {"window": window + window % 2 if not causal else window, "causal": causal}
    if kind == "chunked":  # an overlap shorter than the chunk, so swapping them shows
        chunk_size = draw(rng, 3, 8)
        return {"chunk_size": chunk_size, "overlap": draw(rng, 1, min(3, chunk_size - 1))}
    if kind == "flash":
        return {"causal": causal, "block_q": draw(rng, 4, 16), "block_k": draw(rng, 4, 16)}
    raise ValueError(kind)


def allowed_pairs(kind: str, options: dict, L: int) -> torch.Tensor:
    """(L, L) bool: which keys each query may attend under `kind`, by plain comparisons."""
    i, j = torch.arange(L)[:, None], torch.arange(L)[None, :]
    everything = torch.ones(L, L, dtype=torch.bool)
    if kind in ("dense", "flash"):
        return j <= i if options["causal"] else everything
    if kind == "strided":
        return (j % options["stride"] == 0) | ((i - j).abs() <= options["local_window"] // 2)
    if kind == "sliding_window":
        w = options["window"]
        return (j <= i) & (j > i - w) if options["causal"] else (i - j).abs() <= w // 2
    c, o = options["chunk_size"], options["overlap"]
    return (j >= (i // c) * c - o) & (j < (i // c) * c + c + o)


def build_layer(make_attention, kind: str, d_model: int, heads: int, **options):
    """The student's layer (built under the guard) and a guarded way to call it, which names
    a KeyError on one of the kind's keyword arguments: its default never filled in."""
    layer = make_attention(kind, d_model, heads, **options)  # already guarded by the harness
    if not isinstance(layer, nn.Module):
        raise named("not_a_module")
    call = guarded(layer, "make_attention", MAKE_FORBIDDEN)

    def forward(*args, **kwargs):
        try:
            return call(*args, **kwargs)
        except Mistake as mistake:
            error = mistake.__cause__
            if (
                mistake.key == "raised"
                and isinstance(error, KeyError)
                and error.args[:1] in [(name,) for name in mechanisms.ATTENTION_KINDS[kind]]
            ):
                description, fix = hint("defaults_not_filled")
                raise Mistake(
                    f"make_attention({kind!r}, {d_model}, {heads}, **{options})(x) raised "
                    f"KeyError({error.args[0]!r}): it looks like {description}.",
                    fix,
                    "defaults_not_filled",
                ) from None
            raise

    return layer, forward


def projection_weights(layer, d_model: int) -> dict:
    """float64 copies of the four projections, with their shapes checked."""
    found = {}
    for name in ("q_proj", "k_proj", "v_proj", "out_proj"):
        linear = getattr(layer, name, None)
        if not isinstance(linear, nn.Linear) or (linear.in_features, linear.out_features) != (
            d_model,
            d_model,
        ):
            raise named("missing_projection")
        bias = linear.bias if linear.bias is not None else torch.zeros(d_model)
        found[name] = (linear.weight.detach().double(), bias.detach().double())
    return found


def dense_oracle(
    weights: dict,
    x: torch.Tensor,
    allowed: torch.Tensor,
    heads: int,
    scale_dim: int = None,
    merge=None,
    split=None,
) -> torch.Tensor:
    """float64 multi-head softmax attention under `allowed` ((L, L) or broadcastable to
    (B, H, L, L)); fully masked rows give zeros. `scale_dim` replaces head_dim in the scale;
    `merge` and `split` replace the merge and the split of the heads (see `merged`, `split`)."""
    x = x.double()
    dh = x.shape[-1] // heads

    def project(name):
        w, b = weights[name]
        return (split or split_heads)(x @ w.T + b, heads)

    q, k, v = (project(n) for n in ("q_proj", "k_proj", "v_proj"))
    scores = q @ k.transpose(-1, -2) / math.sqrt(scale_dim or dh)
    scores = scores.masked_fill(~allowed, float("-inf"))
    out = torch.softmax(scores, dim=-1).nan_to_num(0.0) @ v  # (B, H, L, dh)
    w, b = weights["out_proj"]
    return (merge or merged)(out) @ w.T + b


def without_out_proj(weights: dict) -> dict:
    """The weights with out_proj replaced by the identity: the mistake out_proj_missing."""
    d_model = weights["out_proj"][0].shape[0]
    identity = torch.eye(d_model, dtype=torch.float64)
    return {**weights, "out_proj": (identity, torch.zeros(d_model, dtype=torch.float64))}


def split_heads(t: torch.Tensor, heads: int) -> torch.Tensor:
    """(B, L, d_model) -> (B, H, L, dh): each token's features cut into heads."""
    B, L, d_model = t.shape
    return t.view(B, L, heads, d_model // heads).transpose(1, 2)


def split_without_transpose(t: torch.Tensor, heads: int) -> torch.Tensor:
    """The mistake split_without_transpose: (B, L, d_model) reshaped straight to (B, H, L, dh)."""
    B, L, d_model = t.shape
    return t.reshape(B, heads, L, d_model // heads)


def merged(out: torch.Tensor) -> torch.Tensor:
    """(B, H, L, dh) -> (B, L, H * dh): the heads side by side for each token."""
    B, H, L, dh = out.shape
    return out.transpose(1, 2).reshape(B, L, H * dh)


def merged_without_transpose(out: torch.Tensor) -> torch.Tensor:
    """The mistake merge_without_transpose: (B, H, L, dh) reshaped straight to (B, L, H * dh)."""
    B, H, L, dh = out.shape
    return out.reshape(B, L, H * dh)


def merged_features_first(out: torch.Tensor) -> torch.Tensor:
    """The mistake merge_wrong_order: (B, H, L, dh) -> (B, L, dh, H) -> (B, L, H * dh)."""
    B, H, L, dh = out.shape
    return out.permute(0, 2, 3, 1).reshape(B, L, H * dh)


def make_exact_kinds(make_attention, rng):
    """dense, strided, sliding_window, chunked and flash equal float64 multi-head attention under each kind's pattern"""
    for kind, causal in EXACT_CASES:
        heads = draw(rng, 2, 3)
        # a head size other than the number of heads: 1/sqrt(d_model) = 1/sqrt(H dh) and a
        # doubled 1/sqrt(dh) (that is, 1/dh) would otherwise be the same scale
        head_dim = [n for n in (2, 3, 4, 5) if n != heads][draw(rng, 0, 2)]
        d_model, L, B = heads * head_dim, draw(rng, 12, 24), draw(rng, 1, 2)
        options = draw_options(kind, rng, L, causal)
        layer, forward = build_layer(make_attention, kind, d_model, heads, **options)
        weights = projection_weights(layer, d_model)
        x = randn((B, L, d_model), rng)
        allowed = allowed_pairs(kind, options, L)
        suspects = [
            ("heads_ignored", dense_oracle(weights, x, allowed, 1)),
            ("out_proj_missing", dense_oracle(without_out_proj(weights), x, allowed, heads)),
            ("scaled_by_d_model", dense_oracle(weights, x, allowed, heads, scale_dim=d_model)),
            ("scaled_twice", dense_oracle(weights, x, allowed, heads, scale_dim=head_dim**2)),
            (
                "merge_without_transpose",
                dense_oracle(weights, x, allowed, heads, merge=merged_without_transpose),
            ),
            (
                "split_without_transpose",
                dense_oracle(weights, x, allowed, heads, split=split_without_transpose),
            ),
            (
                "merge_wrong_order",
                dense_oracle(weights, x, allowed, heads, merge=merged_features_first),
            ),
        ]
        if kind in ("dense", "strided"):
            suspects.append(("mask_inverted", dense_oracle(weights, x, ~allowed, heads)))
        if options.get("causal"):
            suspects.append(
                (
                    "causal_ignored",
                    dense_oracle(
                        weights, x, allowed_pairs(kind, {**options, "causal": False}, L), heads
                    ),
                )
            )
        if kind == "chunked":
            swapped = {"chunk_size": options["overlap"], "overlap": options["chunk_size"]}
            suspects += [
                (
                    "overlap_ignored",
                    dense_oracle(
                        weights, x, allowed_pairs(kind, {**options, "overlap": 0}, L), heads
                    ),
                ),
                (
                    "chunked_args_swapped",
                    dense_oracle(weights, x, allowed_pairs(kind, swapped, L), heads),
                ),
            ]
        if kind == "sliding_window":
            for wrong in (options["window"] - 1, options["window"] + 1):
                suspects.append(
                    (
                        "wrong_window",
                        dense_oracle(
                            weights, x, allowed_pairs(kind, {**options, "window": wrong}, L), heads
                        ),
                    )
                )
        with torch.no_grad():
            out = forward(x)
        expect_close(
            out,
            dense_oracle(weights, x, allowed, heads),
            torch.float32,
            what=f"make_attention({kind!r}, {d_model}, {heads}, **{options})(x)",
            suspects=suspects,
        )


def make_linear_kinds(make_attention, rng):
    """linear equals float64 elu+1 linear attention of the layer's projections (causal too); performer is deterministic, reads num_features and is close to softmax attention"""
    heads = draw(rng, 2, 3)
    d_model, L = heads * draw(rng, 2, 4), draw(rng, 10, 20)
    x = randn((2, L, d_model), rng, scale=0.5)
    for causal in (False, True):
        layer, forward = build_layer(
            make_attention, "linear", d_model, heads, causal=causal, chunk_size=draw(rng, 3, 6)
        )
        weights = projection_weights(layer, d_model)
        with torch.no_grad():
            out = forward(x)
        expect_close(
            out,
            linear_oracle(weights, x, heads, causal),
            torch.float32,
            what=f"make_attention('linear', causal={causal})(x)",
            suspects=[
                (
                    "causal_ignored" if causal else "heads_ignored",
                    linear_oracle(weights, x, heads if causal else 1, False),
                ),
                (
                    "merge_without_transpose",
                    linear_oracle(weights, x, heads, causal, merge=merged_without_transpose),
                ),
                (
                    "merge_wrong_order",
                    linear_oracle(weights, x, heads, causal, merge=merged_features_first),
                ),
                ("out_proj_missing", linear_oracle(without_out_proj(weights), x, heads, causal)),
            ],
        )
    layer, forward = build_layer(make_attention, "performer", d_model, heads, num_features=2048)
    weights = projection_weights(layer, d_model)
    global_rng = torch.get_rng_state()
    with torch.no_grad():
        first, second = forward(x), forward(x)
    expect_tensor(first, "make_attention('performer')(x)", x.shape, x.dtype)
    if not torch.equal(first, second):
        description, fix = hint("performer_not_deterministic")
        raise Mistake(
            "make_attention('performer') gave two different outputs for the same x: it looks "
            f"like {description}.",
            fix,
            "performer_not_deterministic",
        )
    if not torch.equal(torch.get_rng_state(), global_rng):
        description, fix = hint("performer_global_seed")
        raise Mistake(
            "calling make_attention('performer')(x) changed torch's global random state: it "
            f"looks like {description}.",
            fix,
            "performer_global_seed",
        )
    expect_num_features_read(make_attention, layer, x, heads, first, draw(rng, 4, 16))
    error = relative_error(
        first, dense_oracle(weights, x, torch.ones(L, L, dtype=torch.bool), heads)
    )
    if error > 0.25:
        description, fix = hint("performer_wrong")
        raise Mistake(
            f"make_attention('performer', num_features=2048) is {error:.0%} away from "
            f"softmax attention with the same projections (expected well under 25%): it looks "
            f"like {description}.",
            fix,
            "performer_wrong",
        )


def expect_num_features_read(make_attention, layer, x, heads: int, out, few: int) -> None:
    """A Performer layer with `few` features and the same projections as `layer` (built with
    2048, giving `out`) gives another output: the same one means num_features is not read."""
    d_model = x.shape[-1]
    smaller, forward = build_layer(make_attention, "performer", d_model, heads, num_features=few)
    projection_weights(smaller, d_model)  # the four projections are there to copy
    for name in ("q_proj", "k_proj", "v_proj", "out_proj"):
        getattr(smaller, name).load_state_dict(getattr(layer, name).state_dict())
    with torch.no_grad():
        same = relative_error(forward(x), out) <= 1e-6
    if same:
        description, fix = hint("performer_features_ignored")
        raise Mistake(
            f"make_attention('performer', num_features={few}) and num_features=2048, with the "
            f"same projections, gave the same output: it looks like {description}.",
            fix,
            "performer_features_ignored",
        )


def linear_oracle(
    weights: dict, x: torch.Tensor, heads: int, causal: bool, merge=None
) -> torch.Tensor:
    """float64 elu+1 linear attention, quadratic form, with the course's eps = 1e-6; `merge`
    replaces the merge of the heads."""
    x = x.double()
    B, L, d_model = x.shape
    dh = d_model // heads

    def project(name):
        w, b = weights[name]
        return (x @ w.T + b).view(B, L, heads, dh).transpose(1, 2)

    q, k, v = (
        torch.nn.functional.elu(project(n)) + 1 if n != "v_proj" else project(n)
        for n in ("q_proj", "k_proj", "v_proj")
    )
    scores = q @ k.transpose(-1, -2)  # (B, H, L, L)
    if causal:
        scores = scores.tril()
    out = (scores @ v) / (scores.sum(-1, keepdim=True) + 1e-6)  # (B, H, L, dh)
    w, b = weights["out_proj"]
    return (merge or merged)(out) @ w.T + b


def make_causal_kinds_do_not_look_ahead(make_attention, rng):
    """every causal layer (dense, sliding_window, flash, linear with causal=True, and mamba) gives the same early outputs when later tokens change; mamba's output is its MambaBlock's"""
    heads = draw(rng, 2, 3)
    d_model, L = heads * 4, draw(rng, 12, 20)
    cut = draw(rng, 4, L - 4)
    x = randn((2, L, d_model), rng)
    changed = x.clone()
    changed[:, cut:] += randn((2, L - cut, d_model), rng)
    for kind, options in [
        ("dense", {"causal": True}),
        ("sliding_window", {"window": 5, "causal": True}),
        ("flash", {"causal": True}),
        ("linear", {"causal": True}),
        ("mamba", {"d_state": 4}),
    ]:
        layer, forward = build_layer(make_attention, kind, d_model, heads, **options)
        with torch.no_grad():
            before, after = forward(x), forward(changed)
        expect_tensor(before, f"make_attention({kind!r})(x)", x.shape, x.dtype)
        if relative_error(after[:, :cut], before[:, :cut]) > 1e-5:
            if kind == "mamba":
                raise named("not_causal_scan")
            raise named(look_ahead_cause(layer, kind, options, heads, x, before))
        if kind == "mamba":
            expect_scan_is_its_block(layer, x, before)


def expect_scan_is_its_block(layer, x, out) -> None:
    """The 'mamba' layer's output `out` is its MambaBlock's on the same x (the layer only
    wraps it). A layer with no MambaBlock inside is left to the other checks."""
    blocks = [module for module in layer.modules() if isinstance(module, MambaBlock)]
    if not blocks:
        return
    with torch.no_grad():
        block_out = MambaBlock.forward(blocks[0], x)
    expect_close(
        out,
        block_out.double(),
        torch.float32,
        what="make_attention('mamba', d_state=4)(x), against its own MambaBlock(x),",
        suspects=[("scan_residual", x.double() + block_out.double())],
    )


def look_ahead_cause(layer, kind: str, options: dict, heads: int, x, out) -> str:
    """Why a causal layer's early outputs see later tokens: its heads split or merged without
    the transpose (either mixes tokens, however causal the mechanism), its pattern inverted
    (~causal keeps the later keys), or else causal=True ignored."""
    weights = projection_weights(layer, x.shape[-1])
    if kind == "linear":
        merged_wrong = linear_oracle(weights, x, heads, True, merge=merged_without_transpose)
    else:
        allowed = allowed_pairs(kind, options, x.shape[1])
        merged_wrong = dense_oracle(weights, x, allowed, heads, merge=merged_without_transpose)
        if (
            kind == "dense"
            and relative_error(out, dense_oracle(weights, x, ~allowed, heads)) <= 1e-4
        ):
            return "mask_inverted"
        split_wrong = dense_oracle(weights, x, allowed, heads, split=split_without_transpose)
        if relative_error(out, split_wrong) <= 1e-4:
            return "split_without_transpose"
    if relative_error(out, merged_wrong) <= 1e-4:
        return "merge_without_transpose"
    return "causal_ignored"


def make_masks(make_attention, rng):
    """forward(x, mask): dense and strided apply the mask (and their own pattern); every other kind refuses a mask with ValueError"""
    heads = draw(rng, 2, 3)
    d_model, L = heads * draw(rng, 2, 4), draw(rng, 8, 16)
    x = randn((2, L, d_model), rng)
    keys = (
        torch.arange(L)[None, None, None, :] < torch.tensor([L - 3, L])[:, None, None, None]
    )  # (2, 1, 1, L)
    for kind, options in [
        ("dense", {"causal": True}),
        ("dense", {"causal": False}),
        ("strided", {"stride": 3, "local_window": 3}),
    ]:
        layer, forward = build_layer(make_attention, kind, d_model, heads, **options)
        weights = projection_weights(layer, d_model)
        pattern = allowed_pairs(kind, options, L)
        with torch.no_grad():
            out = forward(x, mask=keys)
        expect_close(
            out,
            dense_oracle(weights, x, pattern & keys, heads),
            torch.float32,
            what=f"make_attention({kind!r}, **{options})(x, mask=padding)",
            suspects=[
                ("mask_ignored", dense_oracle(weights, x, pattern, heads)),
                ("mask_or_pattern", dense_oracle(weights, x, pattern | keys, heads)),
                ("mask_replaces_pattern", dense_oracle(weights, x, keys, heads)),
                ("mask_inverted", dense_oracle(weights, x, ~(pattern & keys), heads)),
                # the kind's own pattern inverted, then combined with the mask as it should be
                ("mask_inverted", dense_oracle(weights, x, ~pattern & keys, heads)),
                (
                    "out_proj_missing",
                    dense_oracle(without_out_proj(weights), x, pattern & keys, heads),
                ),
                (
                    "merge_without_transpose",
                    dense_oracle(weights, x, pattern & keys, heads, merge=merged_without_transpose),
                ),
                (
                    "merge_wrong_order",
                    dense_oracle(weights, x, pattern & keys, heads, merge=merged_features_first),
                ),
                (
                    "scaled_by_d_model",
                    dense_oracle(weights, x, pattern & keys, heads, scale_dim=d_model),
                ),
            ],
        )
    for kind, options in [
        ("sliding_window", {"window": 3}),
        ("chunked", {"chunk_size": 4}),
        ("flash", {}),
        ("linear", {}),
        ("performer", {}),
        ("mamba", {}),
    ]:
        layer, forward = build_layer(make_attention, kind, d_model, heads, **options)
        expect_value_error(
            lambda: forward(x, mask=keys),
            f"make_attention({kind!r})(x, mask=...)",
            "mask_silently_dropped",
        )


def expect_clear_error(call, what: str, words) -> None:
    """`call()` raises ValueError whose message names each of `words` (what is valid, or what
    is missing); anything else is the mistake unclear_kind_error."""
    fix = hint("unclear_kind_error")[1]
    try:
        call()
    except Mistake as mistake:
        if mistake.key != "raised":
            raise
        error = mistake.__cause__
        if not isinstance(error, ValueError):
            raise Mistake(
                f"{what} raised {type(error).__name__}, not ValueError: {error}",
                fix,
                "unclear_kind_error",
            ) from None
        unnamed = [word for word in words if word not in str(error)]
        if unnamed:
            raise Mistake(
                f"{what} raised ValueError({str(error)!r}), which does not name {unnamed}.",
                fix,
                "unclear_kind_error",
            ) from None
        return
    raise Mistake(f"{what} was accepted without an error.", fix, "unclear_kind_error")


def make_clear_errors(make_attention, rng):
    """an unknown kind, an argument the kind does not take and a missing required argument raise ValueError naming what is valid (or missing); so does num_heads not dividing d_model"""
    bogus = ["sparse", "full", "softmax", "local"][draw(rng, 0, 3)]
    expect_clear_error(
        lambda: make_attention(bogus, 16, 2),
        f"make_attention({bogus!r}, 16, 2)",
        list(mechanisms.ATTENTION_KINDS),
    )
    for kind, extra in [("dense", {"window": 4}), ("chunked", {"chunk_size": 4, "stride": 2})]:
        shown = ", ".join(f"{k}={v}" for k, v in extra.items())
        expect_clear_error(
            lambda: make_attention(kind, 16, 2, **extra),
            f"make_attention({kind!r}, 16, 2, {shown})",
            list(mechanisms.ATTENTION_KINDS[kind]),
        )
    expect_missing_window_refused(make_attention, draw(rng, 2, 5))
    kind, heads = ["dense", "flash", "linear"][draw(rng, 0, 2)], draw(rng, 3, 4)
    d_model = heads * draw(rng, 2, 4) + 1  # not a multiple of heads
    expect_value_error(
        lambda: make_attention(kind, d_model, heads),
        f"make_attention({kind!r}, {d_model}, {heads})",
        "heads_not_dividing",
    )


def expect_missing_window_refused(make_attention, window: int):
    """make_attention('sliding_window') without window raises ValueError naming it, also after
    a call that gave one; a layer built without it that runs took an earlier call's window
    (the defaults table changed by that call)."""
    make_attention("sliding_window", 16, 2, window=window)
    try:
        windowless = make_attention("sliding_window", 16, 2)
    except Mistake:
        windowless = None  # refused: how clearly, expect_clear_error says
    if windowless is not None and runs(windowless):
        description, fix = hint("defaults_shared")
        raise Mistake(
            f"make_attention('sliding_window', 16, 2) without window, after a call with "
            f"window={window}, built a layer that runs: it looks like {description}.",
            fix,
            "defaults_shared",
        )
    expect_clear_error(
        lambda: make_attention("sliding_window", 16, 2),
        "make_attention('sliding_window', 16, 2) without window",
        ["window"],
    )


def runs(layer) -> bool:
    """Whether `layer` maps a small input without an error."""
    try:
        with torch.no_grad():
            layer(torch.zeros(1, 8, 16))
    except Exception:
        return False
    return True


MAKE_EXERCISE = Exercise(
    checks=[
        make_exact_kinds,
        make_linear_kinds,
        make_causal_kinds_do_not_look_ahead,
        make_masks,
        make_clear_errors,
    ],
    forbidden=MAKE_FORBIDDEN,
)
