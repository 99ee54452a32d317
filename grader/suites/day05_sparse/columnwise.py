"""Checks for the advanced part, feature-wise attention.

ColumnwiseAttention(num_columns, d, num_heads, shared=True): inputs (batch, columns, seq, d),
multi-head self-attention along time inside each column, never across columns. Projections are
the parameters q_weight, k_weight, v_weight, out_weight, (d, d) when shared, (columns, d, d)
when not, used as nn.Linear does (y = x @ W^T, no bias). Oracle: a Python loop over columns,
each one float64 multi-head attention by F.scaled_dot_product_attention.
"""

import math
import re

import torch
import torch.nn.functional as F

from grader.harness.checking import (
    Mistake,
    expect_close,
    expect_value_error,
    guarded,
    hint,
    named_crash,
)
from grader.suites import Exercise
from grader.suites._common import draw, randn
from grader.suites.day05_sparse.shared import FORBIDDEN_BUILDERS, SIZES_DIFFER

HINTS = {
    "attends_across_columns": (
        "columns flattened into the sequence: every time step attends to every column",
        "attend along time inside each column: keep the column axis as a "
        "batch axis, (B, C, T, d) -> (B, C, H, T, dh), and take the "
        "softmax over T only.",
    ),
    "weights_shared_by_mistake": (
        "per-column weights that are really shared (one column's weights used for all)",
        "with shared=False column c uses q_weight[c], k_weight[c], ...: "
        "e.g. torch.einsum('bctd,ced->bcte', x, weight), or "
        "x @ weight.transpose(-2, -1) with weight (C, d, d) broadcast "
        "against (B, C, T, d).",
    ),
    "missing_parameter": (
        "projection parameters missing or of the wrong shape",
        "register q_weight, k_weight, v_weight, out_weight as nn.Parameter: "
        "(d, d) when shared=True, (num_columns, d, d) when shared=False.",
    ),
    "missing_head_scale": (
        "each head's scores without the 1/sqrt(dh) scale",
        "divide each head's q kᵀ by math.sqrt(dh), with dh = d // num_heads: the head's own "
        "width (q.shape[-1] after the head split), not the model width d.",
    ),
    "scale_by_model_width": (
        "scores divided by sqrt(d), the model width, instead of sqrt(dh) = sqrt(d // num_heads)",
        "a head's scores sum over its dh = d // num_heads features: divide by math.sqrt(dh).",
    ),
    "heads_interleaved": (
        "heads interleaved: the features split as (dh, H) instead of (H, dh)",
        "head h owns the contiguous features h*dh .. (h+1)*dh - 1: "
        "x.unflatten(-1, (num_heads, dh)), then move the head axis before T.",
    ),
    "heads_split_by_reshape": (
        "heads split by a reshape of (…, T, d) straight to (…, H, T, dh) (or to (…, dh, T, H)): "
        "a reshape keeps the memory order, so it mixes time steps with features",
        "reshape only the feature axis, x.unflatten(-1, (num_heads, dh)) to (…, T, H, dh), then "
        "move the head axis before T with .transpose(-3, -2).",
    ),
    "weight_not_transposed": (
        "x @ W instead of x @ Wᵀ (nn.Linear's convention)",
        "the parameters are used as nn.Linear uses its weight: y = x @ W.T "
        "(per column: torch.einsum('bctd,ced->bcte', x, W)).",
    ),
    "heads_merged_without_transpose": (
        "heads merged by a reshape of (…, H, T, dh) straight to (…, T, d)",
        "move the head axis back next to dh first: out.transpose(-3, -2) to (…, T, H, dh), "
        "then flatten the last two dims.",
    ),
    "attends_along_columns": (
        "attention across the columns at each time step instead of along time in each column",
        "the sequence axis is T (dim 2): (B, C, T, d) -> (B, C, H, T, dh), softmax over T.",
    ),
    "parameter_not_registered": (
        "weights stored as plain tensors, not nn.Parameter (they are not trained or saved)",
        "wrap them: self.q_weight = nn.Parameter(torch.randn(...) * d ** -0.5).",
    ),
    "no_super_init": (
        "an nn.Module whose __init__ never calls super().__init__()",
        "call super().__init__() first thing in __init__: nn.Module sets up its registry of "
        "parameters there, before any self.q_weight = nn.Parameter(...).",
    ),
    "weight_transposed_whole": (
        "a (num_columns, d, d) weight transposed with .T, which reverses all three dims to "
        "(d, d, num_columns)",
        "transpose the last two dims only: x @ W.transpose(-2, -1) (or W.mT) broadcasts the "
        "(C, d, d) weights against (B, C, T, d); or torch.einsum('bctd,ced->bcte', x, W).",
    ),
    "not_a_module": (
        "something other than an nn.Module",
        "subclass nn.Module and call super().__init__() first.",
    ),
}


COLUMN_PARAMS = ("q_weight", "k_weight", "v_weight", "out_weight")
FORBIDDEN_COLUMNS = {
    **FORBIDDEN_BUILDERS,
    "multi_head_attention_forward": "write the attention along time yourself.",
}


def build_columns(ColumnwiseAttention, C: int, d: int, H: int, shared: bool = True):
    """The student's module (constructed under the guard) and a guarded way to call it."""
    module = constructed(ColumnwiseAttention, C, d, H, shared)
    if not isinstance(module, torch.nn.Module):
        raise Mistake(
            f"ColumnwiseAttention(...) gave a {type(module).__name__}, not an nn.Module.",
            hint("not_a_module")[1],
            "not_a_module",
        )
    forward = guarded(module, "ColumnwiseAttention", FORBIDDEN_COLUMNS)
    return module, naming_weight_transpose(forward, C, d, shared)


def constructed(ColumnwiseAttention, C: int, d: int, H: int, shared: bool):
    """ColumnwiseAttention(C, d, H, shared=shared); a crash is said to come from the constructor,
    and nn.Module's error for a parameter set before its __init__ ran is named."""
    call = f"ColumnwiseAttention({C}, {d}, {H}, shared={shared})"
    try:
        return ColumnwiseAttention(C, d, H, shared=shared)
    except Mistake as mistake:
        if mistake.key != "raised":
            raise
        error = mistake.message.removeprefix("your function raised ")
        if "before Module.__init__() call" not in error:
            raise Mistake(f"{call} raised {error}", mistake.hint, mistake.key) from None
        description, fix = hint("no_super_init")
        raise Mistake(
            f"{call} raised {error}\n      It looks like {description}.", fix, "no_super_init"
        ) from None


# torch's error for a reshape to the wrong number of entries: the input's size
RESHAPE_SIZE = re.compile(r"shape '\[[\d, ]*\]' is invalid for input of size (\d+)")


def naming_weight_transpose(forward, C: int, d: int, shared: bool):
    """`forward`, with torch's errors for a (C, d, d) weight W reversed to (d, d, C) by W.T
    named, read from the error's text (the same when the module runs in the student's kernel).
    x (B, C, T, d) @ W.T: the batch dims C of x and d of W.T do not match. Written as
    (x.transpose(0, 1) @ W.T).transpose(0, 1), the batch dims (C, B) meet (d,): B and d do
    not match; or, for B = 1, they broadcast to a (d, C, T, C) result that the head split
    cannot reshape."""

    def transposed_whole(message: str, x) -> bool:
        B, T = x.shape[0], x.shape[2]
        sizes, reshaped = SIZES_DIFFER.search(message), RESHAPE_SIZE.search(message)
        if sizes is not None:
            return {int(sizes[1]), int(sizes[2])} in ({C, d}, {B, d})
        return reshaped is not None and int(reshaped[1]) == d * C * T * C

    def call(x):
        try:
            return forward(x)
        except Mistake as mistake:
            if (
                mistake.key == "raised"
                and not shared
                and C != d
                and transposed_whole(mistake.message, x)
            ):
                raise named_crash(mistake, "weight_transposed_whole") from None
            raise

    return call


def set_column_weights(module, C, d, shared, rng, dtype):
    """Fresh random weights copied into the module's four parameters; returns them (float64)."""
    shape = (d, d) if shared else (C, d, d)
    module.to(dtype)
    weights = {}
    for name in COLUMN_PARAMS:
        p = getattr(module, name, None)
        if not isinstance(p, torch.nn.Parameter) or tuple(p.shape) != shape:
            got = tuple(p.shape) if isinstance(p, torch.Tensor) else type(p).__name__
            key = "missing_parameter"
            if isinstance(p, torch.Tensor) and tuple(p.shape) == shape:
                got, key = f"a plain tensor of shape {shape}", "parameter_not_registered"
            description, fix = hint(key)
            raise Mistake(
                f"module.{name} should be an nn.Parameter of shape {shape}, got {got}: "
                f"it looks like {description}.",
                fix,
                key,
            )
        weights[name] = randn(shape, rng, dtype, scale=d**-0.5)
    # one call of the module's own load_state_dict: the module may live in the student's kernel
    # (grader/autograde/remote.py), where only calls reach it
    module.load_state_dict(weights, strict=False)
    return {name: w.double() for name, w in weights.items()}


def column_oracle(x, weights, H, shared, flatten=False, column_of=None, mistake=None):
    """Float64 reference: each column projected with its weights, multi-head attention along
    time, then each column's output projection; or, with `flatten` (one sequence of every
    column's positions) or `mistake` (a key of HINTS, or heads_interleaved_split_only:
    interleaved heads merged back contiguously), the answer that mistake gives. The weights
    stay per column in every mistake: only where attention looks, or how heads are laid out,
    changes."""
    x = x.double()
    B, C, T, d = x.shape
    dh = d // H

    def w(name):  # (C, d, d): the matrix column c multiplies by on the right
        W = weights[name]
        per_column = [W if shared else W[c if column_of is None else column_of] for c in range(C)]
        return torch.stack([W if mistake == "weight_not_transposed" else W.T for W in per_column])

    interleaved = mistake in ("heads_interleaved", "heads_interleaved_split_only")

    def split(t):  # (..., n, d) -> (..., H, n, dh)
        n = t.shape[-2]
        if mistake == "heads_split_by_reshape":
            return t.reshape(*t.shape[:-2], H, n, dh)
        if mistake == "heads_split_by_reshape_dh_first":  # then axes moved to (H, n, dh)
            return t.reshape(*t.shape[:-2], dh, n, H).movedim(-1, -3).transpose(-2, -1)
        if interleaved:
            return t.unflatten(-1, (dh, H)).movedim(-1, -3)
        return t.unflatten(-1, (H, dh)).transpose(-3, -2)

    def merge(out):  # (..., H, n, dh) -> (..., n, d)
        if mistake == "heads_merged_without_transpose":
            return out.reshape(*out.shape[:-3], -1, d)
        if mistake == "heads_interleaved":  # merged back the way they were split
            return out.movedim(-3, -1).flatten(-2)
        return out.transpose(-3, -2).flatten(-2)

    def attend(q, k, v):  # (..., n, d) each: multi-head attention along n
        scale = {"missing_head_scale": math.sqrt(dh), "scale_by_model_width": (dh / d) ** 0.5}
        q = split(q) * scale.get(mistake, 1.0)
        return merge(F.scaled_dot_product_attention(q, split(k), split(v)))

    q, k, v = (
        torch.einsum("bctd,cde->bcte", x, w(n)) for n in ("q_weight", "k_weight", "v_weight")
    )
    if flatten:  # one sequence of C * T positions
        out = attend(*(t.reshape(B, C * T, d) for t in (q, k, v))).reshape(B, C, T, d)
    elif mistake == "attends_along_columns":  # one sequence of C columns per time step
        out = attend(*(t.transpose(1, 2) for t in (q, k, v))).transpose(1, 2)
    else:
        out = attend(q, k, v)  # (B, C, T, d)
    return torch.einsum("bctd,cde->bcte", out, w("out_weight"))


def column_setup(ColumnwiseAttention, rng, shared, dtype=torch.float32):
    H = draw(rng, 2, 3)  # two heads or more: a head split, merge and scale to get wrong
    d = H * 2 ** draw(rng, 1, 3)
    B, C, T = draw(rng, 1, 3), draw(rng, 2, 4), draw(rng, 3, 9)
    module, forward = build_columns(ColumnwiseAttention, C, d, H, shared=shared)
    weights = set_column_weights(module, C, d, shared, rng, dtype)
    x = randn((B, C, T, d), rng, dtype)
    return module, forward, weights, x, H


def expect_columns(forward, x, weights, H, shared, what):
    ref = column_oracle(x, weights, H, shared)
    suspects = [
        ("attends_across_columns", column_oracle(x, weights, H, shared, flatten=True)),
        *[
            (key, column_oracle(x, weights, H, shared, mistake=key))
            for key in (
                "missing_head_scale",
                "scale_by_model_width",
                "heads_interleaved",
                "weight_not_transposed",
                "heads_merged_without_transpose",
            )
        ],
        (
            "heads_interleaved",
            column_oracle(x, weights, H, shared, mistake="heads_interleaved_split_only"),
        ),
        *[
            ("heads_split_by_reshape", column_oracle(x, weights, H, shared, mistake=mistake))
            for mistake in ("heads_split_by_reshape", "heads_split_by_reshape_dh_first")
        ],
    ]
    suspects.append(
        (
            "attends_along_columns",
            column_oracle(x, weights, H, shared, mistake="attends_along_columns"),
        )
    )
    if not shared:
        suspects += [
            ("weights_shared_by_mistake", column_oracle(x, weights, H, False, column_of=c))
            for c in (0, x.shape[1] - 1)
        ]
    expect_close(forward(x), ref, x.dtype, what=what, suspects=suspects)


def columns_shared(ColumnwiseAttention, rng):
    """shared=True: each column equals float64 multi-head attention along time, same weights"""
    module, forward, weights, x, H = column_setup(ColumnwiseAttention, rng, True)
    expect_columns(
        forward, x, weights, H, True, f"ColumnwiseAttention(shared=True) on {tuple(x.shape)}"
    )


def columns_per_column(ColumnwiseAttention, rng):
    """shared=False: column c uses its own weights q_weight[c], ..., out_weight[c]"""
    module, forward, weights, x, H = column_setup(ColumnwiseAttention, rng, False)
    expect_columns(
        forward, x, weights, H, False, f"ColumnwiseAttention(shared=False) on {tuple(x.shape)}"
    )


def columns_float64(ColumnwiseAttention, rng):
    """float64 to 1e-10, both weight modes, a single column and a single time step"""
    for shared in (True, False):
        module, forward, weights, x, H = column_setup(
            ColumnwiseAttention, rng, shared, torch.float64
        )
        expect_columns(
            forward, x, weights, H, shared, f"ColumnwiseAttention(shared={shared}) float64"
        )
    d = 4
    for C, T in ((1, draw(rng, 2, 6)), (draw(rng, 2, 4), 1)):
        module, forward = build_columns(ColumnwiseAttention, C, d, 2, shared=False)
        weights = set_column_weights(module, C, d, False, rng, torch.float64)
        x = randn((2, C, T, d), rng, torch.float64)
        expect_columns(forward, x, weights, 2, False, f"ColumnwiseAttention on {tuple(x.shape)}")


def columns_parameters(ColumnwiseAttention, rng):
    """parameter count 4 d^2 (shared) or 4 C d^2 (per column); column c's weights move column c only"""
    C, H = draw(rng, 3, 5), 2
    d = 2 * draw(rng, 2, 4)
    for shared, expected in ((True, 4 * d * d), (False, 4 * C * d * d)):
        module, _ = build_columns(ColumnwiseAttention, C, d, H, shared=shared)
        count = sum(p.numel() for p in module.parameters())
        if count != expected:
            key = (
                "weights_shared_by_mistake"
                if not shared and count == 4 * d * d
                else "missing_parameter"
            )
            raise Mistake(
                f"ColumnwiseAttention({C}, {d}, {H}, shared={shared}) has {count} "
                f"parameters, expected {expected}.",
                hint(key)[1],
                key,
            )
    module, forward = build_columns(ColumnwiseAttention, C, d, H, shared=False)
    weights = set_column_weights(module, C, d, False, rng, torch.float64)
    x = randn((2, C, 5, d), rng, torch.float64)
    before = forward(x).detach().clone()
    c = draw(rng, 1, C - 2)  # an inner column: neither the first nor the last
    v_weight = weights["v_weight"].clone()
    v_weight[c] += randn((d, d), rng, torch.float64)
    module.load_state_dict({"v_weight": v_weight}, strict=False)  # the module may be remote
    moved = (forward(x).detach() - before).abs().flatten(2).amax(-1).amax(0) > 1e-9  # (C,)
    if moved[c] and moved.sum() > 1:
        description, fix = hint("attends_across_columns")
        raise Mistake(
            f"changing v_weight[{c}] changed columns {torch.nonzero(moved).flatten().tolist()}, "
            f"expected only column {c}: it looks like {description}.",
            fix,
            "attends_across_columns",
        )
    if not moved[c] or moved.sum() != 1:
        description, fix = hint("weights_shared_by_mistake")
        raise Mistake(
            f"changing v_weight[{c}] changed columns {torch.nonzero(moved).flatten().tolist()}, "
            f"expected only column {c}: it looks like {description}.",
            fix,
            "weights_shared_by_mistake",
        )


def columns_no_leakage(ColumnwiseAttention, rng):
    """no cross-column leakage: perturbing one column's input leaves every other column unchanged"""
    for shared in (True, False):
        module, forward, weights, x, H = column_setup(
            ColumnwiseAttention, rng, shared, torch.float64
        )
        c = draw(rng, 0, x.shape[1] - 1)
        y = x.clone()
        y[:, c] += randn(y[:, c].shape, rng, torch.float64)
        diff = (forward(y).detach() - forward(x).detach()).abs().flatten(2).amax(-1).amax(0)
        others = [i for i in range(x.shape[1]) if i != c and diff[i] > 1e-9]
        if others:
            description, fix = hint("attends_across_columns")
            raise Mistake(
                f"changing column {c} of the input changed output columns {others} "
                f"(shared={shared}): it looks like {description}.",
                fix,
                "attends_across_columns",
            )


def columns_rejects_bad_shapes(ColumnwiseAttention, rng):
    """ValueError for 3-D or 5-D inputs, the wrong number of columns or features, d % heads != 0"""
    C, H = draw(rng, 2, 4), 2
    d = 2 * draw(rng, 2, 4)
    module, forward = build_columns(ColumnwiseAttention, C, d, H)
    for shape, what in [
        ((2, C * 5, d), "a 3-D input (batch, seq, d)"),
        ((2, C, 5, d, 1), "a 5-D input"),
        ((2, C + 1, 5, d), f"{C + 1} columns for num_columns = {C}"),
        ((2, C, 5, d + 2), f"d = {d + 2} for d = {d}"),
    ]:
        x = torch.randn(shape)
        expect_value_error(
            lambda: forward(x),
            f"ColumnwiseAttention({C}, {d}, {H}) on {what}",
            "no_error_for_bad_params",
        )
    expect_value_error(
        lambda: ColumnwiseAttention(C, d + 1, H),
        f"ColumnwiseAttention({C}, {d + 1}, {H}) (d not divisible by num_heads)",
        "no_error_for_bad_params",
    )


EXERCISES = {
    "ColumnwiseAttention": Exercise(
        checks=[
            columns_shared,
            columns_per_column,
            columns_float64,
            columns_parameters,
            columns_no_leakage,
            columns_rejects_bad_shapes,
        ],
        forbidden=FORBIDDEN_COLUMNS,
    ),
}
