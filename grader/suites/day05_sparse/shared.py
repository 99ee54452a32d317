"""What several of day05's check modules share: the mistakes they all name, the library
functions a mask builder may not call, brute-force oracles, the exact mask comparison, and the
measurement that a builder runs no Python loop over positions.
"""

import re

import torch
import torch.nn.functional as F

import course.reference.masks
import course.reference.sparse
from grader.harness.checking import (
    Mistake,
    expect_tensor,
    hint,
    named,
)
from grader.suites._common import expect_flat_python_work

HINTS = {
    "missing_scale": (
        "q kᵀ without the 1/sqrt(d) scale",
        "divide the scores by math.sqrt(d), d = q.shape[-1], before the mask and the softmax: "
        "softmax(q kᵀ / sqrt(d)) @ v, in every block or chunk.",
    ),
    "not_bool": (
        "a mask that is not a bool tensor",
        "build the mask from comparisons (they give bool) and keep it bool: True = may attend.",
    ),
    "window_off_by_one": (
        "a window one key too wide or too narrow",
        "causal: keys i-window+1 .. i, exactly `window` keys; symmetric: "
        "|i - j| <= window // 2, i.e. window // 2 keys on each side plus i itself.",
    ),
    "window_each_side": (
        "`window` keys on each side instead of window // 2",
        "symmetric windows split the window: |i - j| <= window // 2.",
    ),
    "asymmetric_window": (
        "a symmetric window that reaches further on one side than the other",
        "symmetric means mask[i, j] == mask[j, i]: keys i - window//2 .. "
        "i + window//2, both ends included.",
    ),
    "ignores_causal": (
        "causal=True ignored: the window also looks ahead",
        "with causal=True query i sees keys i-window+1 .. i only: no key j > i.",
    ),
    "causal_when_symmetric": (
        "a causal window when causal=False",
        "causal=False means a symmetric window: window // 2 keys on each side.",
    ),
    "causal_excludes_self": (
        "a causal window that leaves out the query itself: keys i-window .. i-1, the right "
        "number of keys shifted one back",
        "the query sees itself: keys i-window+1 .. i, both ends included (tril(0), not tril(-1)).",
    ),
    "causal_half_window": (
        "a causal window of window // 2 keys back (the symmetric half-width)",
        "a causal window puts all its `window` keys in the past: keys i-window+1 .. i.",
    ),
    "causal_looks_ahead": (
        "a causal window that looks forward (keys i .. i+window-1)",
        "a causal query sees the past: keys i-window+1 .. i.",
    ),
    "no_error_for_bad_params": (
        "a bad parameter accepted silently",
        "check the parameters first and raise ValueError with a message "
        'that names the bad one, e.g. `raise ValueError(f"window must be '
        '>= 1, got {window}")`.',
    ),
    "python_loop": (
        "a Python loop over positions",
        "build the whole (L, L) mask at once: torch.arange, broadcasting "
        "(rows[:, None] vs columns[None, :]), tril/triu, indexing with index tensors.",
    ),
}


# torch's broadcast error, as it reads in the message of a crash: (size a, size b, dim)
SIZES_DIFFER = re.compile(
    r"size of tensor a \((\d+)\) must match the size of tensor b \((\d+)\) "
    r"at non-singleton dimension (\d+)"
)

COURSE_SPARSE = (
    "course.reference.sparse is the course's library version, for later days: write yours."
)
FORBIDDEN_BUILDERS = {
    fn: COURSE_SPARSE
    for fn in (
        course.reference.sparse.sliding_window_mask,
        course.reference.sparse.strided_mask,
        course.reference.sparse.global_local_mask,
        course.reference.sparse.random_mask,
        course.reference.sparse.block_sparse_mask,
        course.reference.sparse.mask_density,
        course.reference.sparse.layers_to_full_reach,
        course.reference.sparse.reach_after,
        course.reference.sparse.sliding_window_attention,
        course.reference.sparse.chunked_attention,
    )
}

# ----------------------------------------------------------------------------- brute-force oracles


def brute_mask(L: int, allowed) -> torch.Tensor:
    """(L, L) bool from a Python predicate allowed(i, j), one pair at a time."""
    return torch.tensor(
        [[bool(allowed(i, j)) for j in range(L)] for i in range(L)], dtype=torch.bool
    )


def window_rule(window: int, causal: bool, extra: int = 0):
    """The contract's window, or with `extra` keys more (negative: fewer) on each side."""
    if causal:
        return lambda i, j: i - (window - 1 + extra) <= j <= i
    half = window // 2 + extra
    return lambda i, j: abs(i - j) <= half


def dense64(q, k, v, mask) -> torch.Tensor:
    """Float64 dense attention under `mask` (every row has a key), any leading dims."""
    batched = [t.double().reshape(-1, *t.shape[-2:]) for t in (q, k, v)]
    out = F.scaled_dot_product_attention(*batched, attn_mask=mask)
    return out.reshape(*q.shape[:-1], v.shape[-1])


# ----------------------------------------------------------------------------- exact mask checks


def expect_mask(out, ref: torch.Tensor, what: str, suspects=()) -> None:
    """`out` must equal the bool mask `ref` exactly; name the mistake when it matches a suspect."""
    if (
        isinstance(out, torch.Tensor)
        and out.dtype != torch.bool
        and tuple(out.shape) == tuple(ref.shape)
    ):
        raise named("not_bool")
    expect_tensor(out, what, ref.shape, torch.bool)
    if torch.equal(out, ref):
        return
    for key, wrong in suspects:
        if callable(key):  # a test on `out`, for mistakes that have many forms
            key, wrong = key(out)
            if key:
                description, fix = hint(key)
                raise Mistake(f"{what} is wrong: it has {description}.", fix, key)
            continue
        if torch.equal(out, wrong):
            raise matched(what, key, wrong, suspects)
    bad = torch.nonzero(out != ref)
    i, j = bad[0].tolist()
    raise Mistake(
        f"{what} differs in {len(bad)} entries; the first is query {i}, key {j}: "
        f"got {bool(out[i, j])}, expected {bool(ref[i, j])}.",
        hint="print a small case (e.g. L = 8) next to the rule in the docstring.",
        key="wrong_mask",
    )


def matched(what: str, key: str, wrong: torch.Tensor, suspects) -> Mistake:
    """The Mistake for a mask equal to `wrong`, suspect `key`'s. On a small or extreme case two
    mistakes can give the same mask (stride = L, window = 1): then both are named, the first as
    the key."""
    also = [k for k, mask in suspects if not callable(k) and k != key and torch.equal(mask, wrong)]
    (description, fix), seen = hint(key), ""
    if also:
        other, other_fix = hint(also[0])
        seen = f", or {other} (the two give the same mask here)"
        fix = f"{fix} Or, if that is not it: {other_fix}"
    return Mistake(f"{what} is wrong: it matches {description}{seen}.", fix, key)


def not_symmetric(out):
    return ("asymmetric_window" if not torch.equal(out, out.transpose(-2, -1)) else None), None


def window_suspects(L: int, window: int, causal: bool) -> list:
    suspects = [
        ("window_off_by_one", brute_mask(L, window_rule(window, causal, extra)))
        for extra in (-1, 1)
    ]
    if causal:
        suspects += [
            ("ignores_causal", brute_mask(L, window_rule(window, False))),
            ("causal_looks_ahead", brute_mask(L, lambda i, j: i <= j <= i + window - 1)),
            ("causal_excludes_self", brute_mask(L, lambda i, j: i - window <= j < i)),
            ("causal_half_window", brute_mask(L, lambda i, j: i - window // 2 <= j <= i)),
        ]
    else:
        half = window // 2
        suspects += [
            ("causal_when_symmetric", brute_mask(L, window_rule(window, True))),
            ("window_each_side", brute_mask(L, lambda i, j: abs(i - j) <= window)),
            ("asymmetric_window", brute_mask(L, lambda i, j: i - half <= j < i + half)),
            ("asymmetric_window", brute_mask(L, lambda i, j: i - half < j <= i + half)),
            (not_symmetric, None),
        ]
    return suspects


# ----------------------------------------------------------------------------- no loops over positions


def expect_no_python_loop(call_at, name: str, small: int = 64, large: int = 1024) -> None:
    """The Python work of `call_at(L)` must not grow with L."""
    expect_flat_python_work(
        name,
        "python_loop",
        (f"L = {small}", lambda: call_at(small)),
        (f"L = {large}", lambda: call_at(large)),
    )
