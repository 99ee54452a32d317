"""Checks for day05-sparse: mask builders, density and reach, sliding-window and chunked attention.

Oracles: the masks are built by brute-force Python loops over (i, j) for small L; attention is
F.scaled_dot_product_attention in float64 with the oracle's mask. Two checks measure how the
student's code works rather than what it returns: builders must not loop over positions in
Python (the number of Python lines they run must not grow with L), and the attention functions
must never allocate an (L, L)-sized tensor (a torch dispatch mode records every allocation).
"""

import math

import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

import course.reference.masks
import course.reference.sparse
from grader.harness.checking import (
    TOLERANCE,
    Mistake,
    expect_close,
    expect_tensor,
    expect_value_error,
    guarded,
    named,
    relative_error,
    student_lines,
)
from grader.suites import Exercise, day01_sdpa
from grader.suites._common import draw, randn

HINTS = {
    "missing_scale": day01_sdpa.HINTS["missing_scale"],
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
    "stride_from_one": (
        "summary columns counted from 1 (stride-1, 2*stride-1, ... or without 0)",
        "positions start at 0: the summary columns are j = 0, stride, 2*stride, "
        "..., i.e. j % stride == 0.",
    ),
    "strided_rows": (
        "summary rows (i % stride == 0) instead of summary columns",
        "the summary tokens are keys: every query attends the columns with j % stride == 0.",
    ),
    "relative_stride": (
        "(i - j) % stride == 0 instead of j % stride == 0",
        "in this course's strided mask the summary columns are fixed positions: "
        "j % stride == 0, the same for every query.",
    ),
    "missing_local": (
        "the summary columns without the local window",
        "OR the two parts: (j % stride == 0) | (|i - j| <= local_window // 2).",
    ),
    "missing_summary": (
        "the local window without the summary columns",
        "OR the two parts: (j % stride == 0) | (|i - j| <= local_window // 2).",
    ),
    "global_rows_only": (
        "global tokens that attend everywhere but are not attended by others",
        "set both the rows mask[g, :] (g attends all) and the columns mask[:, g] (all attend g).",
    ),
    "global_cols_only": (
        "global tokens that are attended by everyone but do not attend everywhere",
        "set both the rows mask[g, :] (g attends all) and the columns mask[:, g] (all attend g).",
    ),
    "not_exactly_num_random": (
        "rows with other than num_random distinct keys (drawn with replacement?)",
        "draw without replacement: e.g. rank random scores per row, "
        "torch.rand(L, L, generator=g).argsort(-1)[:, :num_random], or "
        "Floyd's algorithm; then scatter True into those columns.",
    ),
    "not_reproducible": (
        "masks that differ for the same generator state",
        "draw every random number from `generator`: "
        "torch.rand(..., generator=generator), torch.randint(..., "
        "generator=generator); never the global random state.",
    ),
    "not_random": (
        "the same mask whatever the generator's state",
        "draw the keys from the generator (do not reseed it, do not use a fixed "
        "pattern): two calls in a row with one generator give different masks.",
    ),
    "same_keys_every_row": (
        "the same random keys for every query",
        "draw the keys of each query independently: one random draw per row.",
    ),
    "not_uniform": (
        "random keys that are not uniform over all positions",
        "every key 0..L-1 must be equally likely: draw from the whole row, "
        "e.g. by ranking torch.rand scores.",
    ),
    "layout_transposed": (
        "the block layout transposed (layout[bj, bi])",
        "mask[i, j] = layout[i // block_size, j // block_size]: rows are "
        "query blocks, columns key blocks.",
    ),
    "tiled_not_expanded": (
        "the layout tiled (repeat) instead of each block expanded (repeat_interleave)",
        "each layout entry becomes a block_size x block_size block: "
        "repeat_interleave along both dims, then crop to L.",
    ),
    "not_cropped": (
        "a mask of nb * block_size rows and columns, not cropped to L",
        "crop the expanded layout: [:L, :L].",
    ),
    "count_not_fraction": (
        "the number of True entries instead of their fraction",
        "divide by the number of entries, mask.numel().",
    ),
    "forgot_self": (
        "reach through the mask alone, without each position keeping its own state",
        "a layer keeps what a position already knew (the residual stream): one "
        "step is mask | I, with I = torch.eye(L, dtype=torch.bool).",
    ),
    "off_by_one_layers": (
        "a layer count one too high or too low",
        "one layer of mask | I is n = 1; count the layers applied until the "
        "reach matrix is all True.",
    ),
    "should_be_none": (
        "a number where full reach never happens",
        "once the reach matrix stops growing it never changes again: return None "
        "when a step adds nothing and it is not all True.",
    ),
    "builds_full_matrix": (
        "an (L, L)-sized tensor: the dense matrix that this exercise avoids",
        "compute block by block: each block of queries meets only the keys "
        "its window (or chunk) allows, so no tensor has L * L entries; do not "
        "build sliding_window_mask(L, ...) either.",
    ),
    "drops_edges": (
        "the first or last queries of the sequence left out (their windows are cut "
        "by the sequence ends)",
        "pad the keys (or clip the key range) so that the queries near the ends get "
        "their shorter windows too: every one of the L queries has an output row.",
    ),
    "drops_last_chunk": (
        "the last, shorter chunk left out when L is not a multiple of chunk_size",
        "there are ceil(L / chunk_size) chunks; the last one ends at L.",
    ),
    "overlap_one_side": (
        "overlap keys added on one side of the chunk only",
        "chunk c sees keys [c*chunk_size - overlap, (c+1)*chunk_size + overlap): "
        "overlap keys before and after the chunk.",
    ),
    "overlap_off_by_one": (
        "a key range one too long or too short at an end",
        "the key range is half-open: start = c*chunk_size - overlap is in, "
        "(c+1)*chunk_size + overlap is out; clip to [0, L).",
    ),
    "ignores_overlap": (
        "chunks that see only their own keys",
        "add `overlap` keys on each side of the chunk.",
    ),
    "sliding_not_chunked": (
        "a window around each query instead of around its chunk",
        "every query of chunk c sees the same keys: "
        "[c*chunk_size - overlap, (c+1)*chunk_size + overlap).",
    ),
}

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
DENSE = "it builds the full (L, L) matrix; compute block by block instead."
FORBIDDEN_ATTENTION = {
    **FORBIDDEN_BUILDERS,
    "scaled_dot_product_attention": DENSE,
    course.reference.masks.attention: DENSE,
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
                description, hint = HINTS[key]
                raise Mistake(f"{what} is wrong: it has {description}.", hint, key)
            continue
        if torch.equal(out, wrong):
            description, hint = HINTS[key]
            raise Mistake(f"{what} is wrong: it matches {description}.", hint, key)
    bad = torch.nonzero(out != ref)
    i, j = bad[0].tolist()
    raise Mistake(
        f"{what} differs in {len(bad)} entries; the first is query {i}, key {j}: "
        f"got {bool(out[i, j])}, expected {bool(ref[i, j])}.",
        hint="print a small case (e.g. L = 8) next to the rule in the docstring.",
        key="wrong_mask",
    )


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
            ("window_off_by_one", brute_mask(L, lambda i, j: i - window <= j < i)),
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
    lines_small, lines_large = (
        student_lines(lambda: call_at(small)),
        student_lines(lambda: call_at(large)),
    )
    if lines_large > lines_small + 100:
        description, hint = HINTS["python_loop"]
        raise Mistake(
            f"{name} ran {lines_small} lines of Python for L = {small} and "
            f"{lines_large} for L = {large}: it looks like {description}.",
            hint,
            "python_loop",
        )


# ----------------------------------------------------------------------------- sliding_window_mask


def swm_symmetric(sliding_window_mask, rng):
    """symmetric (causal=False): keys with |i - j| <= window // 2, odd and even windows"""
    L = draw(rng, 10, 24)
    for window in (2 * draw(rng, 1, 5), 2 * draw(rng, 1, 5) + 1):  # even, odd
        expect_mask(
            sliding_window_mask(L, window),
            brute_mask(L, window_rule(window, False)),
            f"sliding_window_mask({L}, {window})",
            window_suspects(L, window, False),
        )


def swm_causal(sliding_window_mask, rng):
    """causal: query i sees keys i-window+1 .. i, exactly window keys (Mistral's convention)"""
    L = draw(rng, 10, 24)
    for window in (draw(rng, 2, 5), draw(rng, 6, 9)):
        expect_mask(
            sliding_window_mask(L, window, causal=True),
            brute_mask(L, window_rule(window, True)),
            f"sliding_window_mask({L}, {window}, causal=True)",
            window_suspects(L, window, True),
        )


def swm_extremes(sliding_window_mask, rng):
    """window = 1 (the diagonal), a window longer than L, and L = 1"""
    L = draw(rng, 5, 12)
    for window, causal in [
        (1, False),
        (1, True),
        (2 * L + draw(rng, 0, 3), False),
        (L + draw(rng, 0, 3), True),
    ]:
        expect_mask(
            sliding_window_mask(L, window, causal=causal),
            brute_mask(L, window_rule(window, causal)),
            f"sliding_window_mask({L}, {window}, causal={causal})",
            window_suspects(L, window, causal),
        )
    expect_mask(
        sliding_window_mask(1, 3), torch.ones(1, 1, dtype=torch.bool), "sliding_window_mask(1, 3)"
    )


def swm_rejects_bad_window(sliding_window_mask, rng):
    """window < 1 raises ValueError"""
    L = draw(rng, 4, 10)
    for window in (0, -draw(rng, 1, 5)):
        expect_value_error(
            lambda: sliding_window_mask(L, window),
            f"sliding_window_mask({L}, {window})",
            "no_error_for_bad_params",
        )


def swm_vectorised(sliding_window_mask, rng):
    """no Python loop over positions: the Python work does not grow with L"""
    window = draw(rng, 3, 9)
    expect_no_python_loop(
        lambda L: sliding_window_mask(L, window, causal=True), "sliding_window_mask"
    )


# ----------------------------------------------------------------------------- strided_mask


def strided_rule(stride: int, local_window: int):
    return lambda i, j: j % stride == 0 or abs(i - j) <= local_window // 2


def strided_suspects(L: int, stride: int, local_window: int) -> list:
    half = local_window // 2
    return [
        (
            "stride_from_one",
            brute_mask(L, lambda i, j: (j + 1) % stride == 0 or abs(i - j) <= half),
        ),
        (
            "stride_from_one",
            brute_mask(L, lambda i, j: (j % stride == 0 and j > 0) or abs(i - j) <= half),
        ),
        (
            "stride_from_one",
            brute_mask(L, lambda i, j: j % stride == 1 % stride or abs(i - j) <= half),
        ),
        ("strided_rows", brute_mask(L, lambda i, j: i % stride == 0 or abs(i - j) <= half)),
        (
            "relative_stride",
            brute_mask(L, lambda i, j: (i - j) % stride == 0 or abs(i - j) <= half),
        ),
        ("missing_local", brute_mask(L, lambda i, j: j % stride == 0)),
        ("missing_local", brute_mask(L, lambda i, j: j % stride == 0 or i == j)),
        ("missing_summary", brute_mask(L, lambda i, j: abs(i - j) <= half)),
        (
            "window_off_by_one",
            brute_mask(L, lambda i, j: j % stride == 0 or abs(i - j) <= half + 1),
        ),
        ("window_off_by_one", brute_mask(L, lambda i, j: j % stride == 0 or abs(i - j) < half)),
        (
            "window_each_side",
            brute_mask(L, lambda i, j: j % stride == 0 or abs(i - j) <= local_window),
        ),
    ]


def strided_matches(strided_mask, rng):
    """summary columns j % stride == 0 plus the local band |i - j| <= local_window // 2"""
    L = draw(rng, 14, 30)
    for stride, local_window in [(draw(rng, 3, 7), draw(rng, 2, 5)), (draw(rng, 3, 7), 1)]:
        expect_mask(
            strided_mask(L, stride, local_window),
            brute_mask(L, strided_rule(stride, local_window)),
            f"strided_mask({L}, {stride}, {local_window})",
            strided_suspects(L, stride, local_window),
        )


def strided_extremes(strided_mask, rng):
    """stride = 1 (every column) and stride = L (column 0 only, plus the band)"""
    L = draw(rng, 6, 15)
    for stride in (1, L):
        local_window = draw(rng, 1, 4)
        expect_mask(
            strided_mask(L, stride, local_window),
            brute_mask(L, strided_rule(stride, local_window)),
            f"strided_mask({L}, {stride}, {local_window})",
            strided_suspects(L, stride, local_window),
        )


def strided_rejects_bad_parameters(strided_mask, rng):
    """stride > L, stride < 1 and local_window < 1 raise ValueError"""
    L = draw(rng, 4, 10)
    for stride, local_window in [(L + draw(rng, 1, 5), 3), (0, 3), (2, 0)]:
        expect_value_error(
            lambda: strided_mask(L, stride, local_window),
            f"strided_mask({L}, {stride}, {local_window})",
            "no_error_for_bad_params",
        )


def strided_vectorised(strided_mask, rng):
    """no Python loop over positions: the Python work does not grow with L"""
    stride, local_window = draw(rng, 3, 9), draw(rng, 2, 6)
    expect_no_python_loop(lambda L: strided_mask(L, stride, local_window), "strided_mask")


# ----------------------------------------------------------------------------- global_local_mask


def global_rule(window: int, global_idx):
    chosen = set(int(g) for g in global_idx)
    local = window_rule(window, False)
    return lambda i, j: local(i, j) or i in chosen or j in chosen


def global_suspects(L: int, window: int, global_idx) -> list:
    chosen, local = set(int(g) for g in global_idx), window_rule(window, False)
    return [
        ("global_rows_only", brute_mask(L, lambda i, j: local(i, j) or i in chosen)),
        ("global_cols_only", brute_mask(L, lambda i, j: local(i, j) or j in chosen)),
        *[
            (
                "window_off_by_one",
                brute_mask(
                    L,
                    lambda i, j, e=e: (
                        window_rule(window, False, e)(i, j) or i in chosen or j in chosen
                    ),
                ),
            )
            for e in (-1, 1)
        ],
        (
            "causal_when_symmetric",
            brute_mask(
                L, lambda i, j: window_rule(window, True)(i, j) or i in chosen or j in chosen
            ),
        ),
        ("missing_local", brute_mask(L, lambda i, j: i in chosen or j in chosen)),
    ]


def random_global(rng, L: int, count: int) -> list:
    return sorted(torch.randperm(L, generator=rng)[:count].tolist())


def global_matches(global_local_mask, rng):
    """the symmetric window plus every row and every column of the global tokens"""
    L, window = draw(rng, 14, 28), draw(rng, 2, 7)
    global_idx = random_global(rng, L, draw(rng, 1, 3))
    expect_mask(
        global_local_mask(L, window, global_idx),
        brute_mask(L, global_rule(window, global_idx)),
        f"global_local_mask({L}, {window}, {global_idx})",
        global_suspects(L, window, global_idx),
    )


def global_index_kinds(global_local_mask, rng):
    """global_idx as a LongTensor, with the first and last positions, and empty"""
    L, window = draw(rng, 10, 20), draw(rng, 1, 5)
    for global_idx in (torch.tensor([0, L - 1]), torch.tensor(random_global(rng, L, 2)), []):
        shown = global_idx.tolist() if isinstance(global_idx, torch.Tensor) else global_idx
        expect_mask(
            global_local_mask(L, window, global_idx),
            brute_mask(L, global_rule(window, shown)),
            f"global_local_mask({L}, {window}, {shown})",
            global_suspects(L, window, shown),
        )


def global_rejects_out_of_range(global_local_mask, rng):
    """a global index outside [0, L) and window < 1 raise ValueError"""
    L = draw(rng, 5, 12)
    expect_value_error(
        lambda: global_local_mask(L, 3, [0, L + draw(rng, 0, 3)]),
        f"global_local_mask({L}, 3, [0, {L}+])",
        "no_error_for_bad_params",
    )
    expect_value_error(
        lambda: global_local_mask(L, 0, [0]),
        f"global_local_mask({L}, 0, [0])",
        "no_error_for_bad_params",
    )


def global_vectorised(global_local_mask, rng):
    """no Python loop over positions: the Python work does not grow with L"""
    window = draw(rng, 3, 9)
    expect_no_python_loop(
        lambda L: global_local_mask(L, window, [0, 5, L - 1]), "global_local_mask"
    )


# ----------------------------------------------------------------------------- random_mask


def seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def random_counts(random_mask, rng):
    """exactly num_random distinct keys per query, as a bool (L, L) mask"""
    for L, num_random in [(draw(rng, 12, 40), draw(rng, 2, 5)), (draw(rng, 6, 10), 5)]:
        seed = draw(rng, 0, 10**6)
        out = random_mask(L, num_random, seeded(seed))
        if isinstance(out, torch.Tensor) and out.dtype != torch.bool and tuple(out.shape) == (L, L):
            raise named("not_bool")
        expect_tensor(out, f"random_mask({L}, {num_random}, g)", (L, L), torch.bool)
        per_row = out.sum(-1)
        if (per_row != num_random).any():
            i = int(torch.nonzero(per_row != num_random)[0])
            description, hint = HINTS["not_exactly_num_random"]
            raise Mistake(
                f"random_mask({L}, {num_random}, g): query {i} has {int(per_row[i])} keys, "
                f"expected {num_random}: it looks like {description}.",
                hint,
                "not_exactly_num_random",
            )


def random_reproducible(random_mask, rng):
    """the same generator state gives the same mask; the next call, a new one"""
    L, num_random, seed = draw(rng, 16, 40), draw(rng, 2, 4), draw(rng, 0, 10**6)
    with torch.random.fork_rng(devices=[]):  # the notebook's own random state is left alone
        torch.manual_seed(seed + 1)
        first = random_mask(L, num_random, seeded(seed))
        torch.manual_seed(seed + 2)  # a student who uses the global state gets another mask
        again = random_mask(L, num_random, seeded(seed))
    expect_tensor(first, f"random_mask({L}, {num_random}, g)", (L, L), torch.bool)
    if not torch.equal(first, again):
        description, hint = HINTS["not_reproducible"]
        raise Mistake(
            f"two calls with generators seeded alike ({seed}) gave different masks: "
            f"it looks like {description}.",
            hint,
            "not_reproducible",
        )
    generator = seeded(seed)
    one, two = random_mask(L, num_random, generator), random_mask(L, num_random, generator)
    if torch.equal(one, two):
        description, hint = HINTS["not_random"]
        raise Mistake(
            f"two calls in a row with one generator gave the same mask: it looks like "
            f"{description}.",
            hint,
            "not_random",
        )


def random_rows_independent(random_mask, rng):
    """each query draws its own keys (rows differ)"""
    L, num_random = draw(rng, 48, 64), draw(rng, 3, 5)
    out = random_mask(L, num_random, seeded(draw(rng, 0, 10**6)))
    expect_tensor(out, f"random_mask({L}, {num_random}, g)", (L, L), torch.bool)
    distinct = len({tuple(row) for row in out.tolist()})
    if distinct < L // 2:
        description, hint = HINTS["same_keys_every_row"]
        raise Mistake(
            f"only {distinct} of the {L} rows differ: it looks like {description}.",
            hint,
            "same_keys_every_row",
        )


def random_uniform(random_mask, rng):
    """uniform: over many draws every key and every offset j - i turns up equally often"""
    L, num_random, draws = 32, 4, 20
    seed = draw(rng, 0, 10**6)
    total = torch.zeros(L, L)
    for n in range(draws):
        out = random_mask(L, num_random, seeded(seed + n))
        expect_tensor(out, f"random_mask({L}, {num_random}, g)", (L, L), torch.bool)
        total += out.double()
    # Each column (and each cyclic offset) collects a Binomial(draws * L, num_random / L) count.
    p, n = num_random / L, draws * L
    mean, sd = n * p, math.sqrt(n * p * (1 - p))
    columns = total.sum(0)
    i, j = torch.arange(L).unsqueeze(-1), torch.arange(L).unsqueeze(0)
    offsets = torch.zeros(L).index_add_(0, ((j - i) % L).reshape(-1), total.reshape(-1).float())
    for name, counts in (("key", columns), ("offset j - i (mod L)", offsets)):
        worst = int((counts - mean).abs().argmax())
        if abs(counts[worst] - mean) > 6 * sd:
            description, hint = HINTS["not_uniform"]
            raise Mistake(
                f"over {draws} masks of L = {L}, num_random = {num_random}, {name} {worst} "
                f"was chosen {int(counts[worst])} times; expected about {mean:.0f} ± "
                f"{sd:.0f}: it looks like {description}.",
                hint,
                "not_uniform",
            )


def random_extremes(random_mask, rng):
    """num_random = 0 (no keys), num_random = L (all keys); num_random > L raises ValueError"""
    L = draw(rng, 3, 10)
    g = seeded(draw(rng, 0, 10**6))
    expect_mask(
        random_mask(L, 0, g), torch.zeros(L, L, dtype=torch.bool), f"random_mask({L}, 0, g)"
    )
    expect_mask(
        random_mask(L, L, g), torch.ones(L, L, dtype=torch.bool), f"random_mask({L}, {L}, g)"
    )
    expect_value_error(
        lambda: random_mask(L, L + 1, g), f"random_mask({L}, {L + 1}, g)", "no_error_for_bad_params"
    )


def random_vectorised(random_mask, rng):
    """no Python loop over positions: the Python work does not grow with L"""
    seed = draw(rng, 0, 10**6)
    expect_no_python_loop(lambda L: random_mask(L, 3, seeded(seed)), "random_mask")


# ----------------------------------------------------------------------------- block_sparse_mask


def block_case(rng, L: int, block_size: int) -> torch.Tensor:
    nb = math.ceil(L / block_size)
    layout = torch.rand(nb, nb, generator=rng) < 0.4
    layout[0, nb - 1], layout[nb - 1, 0] = True, False  # never symmetric: a transpose shows
    return layout


def block_suspects(L: int, block_size: int, layout) -> list:
    return [
        ("layout_transposed", brute_mask(L, lambda i, j: layout[j // block_size, i // block_size])),
        ("tiled_not_expanded", layout.repeat(block_size, block_size)[:L, :L]),
    ]


def expect_block(block_sparse_mask, L, block_size, layout):
    out = block_sparse_mask(L, block_size, layout)
    what = f"block_sparse_mask({L}, {block_size}, layout)"
    nb = layout.shape[0]
    if (
        isinstance(out, torch.Tensor)
        and tuple(out.shape) == (nb * block_size,) * 2
        and nb * block_size != L
    ):
        description, hint = HINTS["not_cropped"]
        raise Mistake(
            f"{what} has shape {tuple(out.shape)}: it looks like {description}.",
            hint,
            "not_cropped",
        )
    expect_mask(
        out,
        brute_mask(L, lambda i, j: layout[i // block_size, j // block_size]),
        what,
        block_suspects(L, block_size, layout),
    )


def block_matches(block_sparse_mask, rng):
    """mask[i, j] = layout[i // block_size, j // block_size], L not a multiple of block_size"""
    block_size = draw(rng, 2, 5)
    L = block_size * draw(rng, 3, 6) + draw(rng, 1, block_size - 1)
    expect_block(block_sparse_mask, L, block_size, block_case(rng, L, block_size))


def block_extremes(block_sparse_mask, rng):
    """L a multiple of block_size, block_size = 1 (the layout itself), block_size >= L"""
    block_size = draw(rng, 2, 4)
    L = block_size * draw(rng, 2, 5)
    expect_block(block_sparse_mask, L, block_size, block_case(rng, L, block_size))
    L = draw(rng, 4, 9)
    expect_block(block_sparse_mask, L, 1, block_case(rng, L, 1))
    expect_block(block_sparse_mask, L, L + draw(rng, 0, 3), torch.tensor([[True]]))


def block_rejects_wrong_layout(block_sparse_mask, rng):
    """a layout that is not (ceil(L / block_size),) * 2 raises ValueError"""
    block_size = draw(rng, 2, 4)
    L = block_size * draw(rng, 2, 4) + 1  # ceil != floor
    floor = L // block_size
    expect_value_error(
        lambda: block_sparse_mask(L, block_size, torch.ones(floor, floor, dtype=torch.bool)),
        f"block_sparse_mask({L}, {block_size}, a ({floor}, {floor}) layout)",
        "no_error_for_bad_params",
    )


def block_vectorised(block_sparse_mask, rng):
    """no Python loop over positions: the Python work does not grow with L"""
    generator = seeded(draw(rng, 0, 10**6))
    expect_no_python_loop(
        lambda L: block_sparse_mask(L, 16, torch.rand(L // 16, L // 16, generator=generator) < 0.3),
        "block_sparse_mask",
    )


# ----------------------------------------------------------------------------- mask_density


def expect_number(out, expected: float, what: str, mask) -> None:
    if isinstance(out, torch.Tensor) and out.numel() == 1:
        out = out.item()
    if isinstance(out, bool) or not isinstance(out, (int, float)):
        raise Mistake(
            f"{what} should be a number, got {type(out).__name__}.",
            hint="return a Python float: e.g. mask.float().mean().item().",
            key="not_a_number",
        )
    if abs(out - expected) <= 1e-6:  # float32 arithmetic is fine; one entry more is >= 1/400
        return
    if abs(out - expected * mask.numel()) <= 1e-3:
        raise named("count_not_fraction")
    raise Mistake(
        f"{what} = {out}, expected {expected}.",
        hint="the fraction of True entries over the whole mask: count / mask.numel().",
        key="wrong_density",
    )


def density_matches(mask_density, rng):
    """the fraction of True entries, for random masks (square and not)"""
    for shape in [(draw(rng, 5, 20),) * 2, (draw(rng, 3, 9), draw(rng, 10, 15))]:
        mask = torch.rand(shape, generator=rng) < 0.3
        expected = sum(map(sum, mask.tolist())) / (shape[0] * shape[1])
        expect_number(mask_density(mask), expected, f"mask_density of a {shape} mask", mask)


def density_extremes(mask_density, rng):
    """all False gives 0.0, all True 1.0, a batch (B, L, L) counts every entry"""
    L = draw(rng, 3, 9)
    expect_number(
        mask_density(torch.zeros(L, L, dtype=torch.bool)),
        0.0,
        "mask_density(all False)",
        torch.zeros(L, L),
    )
    expect_number(
        mask_density(torch.ones(L, L, dtype=torch.bool)),
        1.0,
        "mask_density(all True)",
        torch.ones(L, L),
    )
    batch = torch.rand(draw(rng, 2, 4), L, L, generator=rng) < 0.5
    expect_number(
        mask_density(batch),
        batch.sum().item() / batch.numel(),
        f"mask_density of a {tuple(batch.shape)} batch",
        batch,
    )


# ----------------------------------------------------------------------------- layers_to_full_reach


def reach_oracle(mask: torch.Tensor, self_loops: bool = True):
    """Brute force: sets of keys heard by each query, one layer at a time."""
    L = mask.shape[0]
    sees = [{j for j in range(L) if mask[i, j] or (self_loops and i == j)} for i in range(L)]
    heard = [set(s) for s in sees]
    for layers in range(1, L + 2):
        if all(len(h) == L for h in heard):
            return layers
        grown = [set().union(*(heard[k] for k in sees[i])) if sees[i] else set() for i in range(L)]
        if grown == heard:
            return None
        heard = grown
    return None


def expect_layers(layers_to_full_reach, mask, what: str) -> None:
    expected, out = reach_oracle(mask), layers_to_full_reach(mask)
    if isinstance(out, torch.Tensor) and out.numel() == 1:
        out = int(out.item())
    if out == expected and (out is None) == (expected is None):
        return
    if expected is None:
        description, hint = HINTS["should_be_none"]
        raise Mistake(
            f"{what}: got {out!r}, but some key never reaches some query: it looks like "
            f"{description}.",
            hint,
            "should_be_none",
        )
    if not isinstance(out, int) or isinstance(out, bool):
        raise Mistake(
            f"{what}: got {out!r}, expected {expected}.",
            hint="return an int (the number of layers), or None when full reach never happens.",
            key="wrong_layers",
        )
    if out == reach_oracle(mask, self_loops=False) and out != expected:
        raise Mistake(
            f"{what}: got {out}, expected {expected}.", HINTS["forgot_self"][1], "forgot_self"
        )
    if abs(out - expected) == 1:
        raise Mistake(
            f"{what}: got {out}, expected {expected}.",
            HINTS["off_by_one_layers"][1],
            "off_by_one_layers",
        )
    raise Mistake(
        f"{what}: got {out}, expected {expected}.",
        hint="reach after n layers is the boolean n-th power of (mask | I); "
        "count until it is all True.",
        key="wrong_layers",
    )


def reach_windows(layers_to_full_reach, rng):
    """symmetric windows need about L / (window // 2) layers; a causal one never gets there"""
    L = draw(rng, 12, 30)
    for window in (draw(rng, 2, 4), draw(rng, 5, 9)):
        mask = brute_mask(L, window_rule(window, False))
        expect_layers(layers_to_full_reach, mask, f"sliding window {window} on L = {L}")
    expect_layers(
        layers_to_full_reach, brute_mask(L, window_rule(3, True)), f"causal window 3 on L = {L}"
    )


def reach_global_and_strided(layers_to_full_reach, rng):
    """a global token connects everything in 2 layers; strided patterns; all True takes 1"""
    L = draw(rng, 12, 30)
    g = draw(rng, 0, L - 1)
    expect_layers(
        layers_to_full_reach, brute_mask(L, global_rule(1, [g])), f"global token {g}, L = {L}"
    )
    stride = draw(rng, 3, 6)
    expect_layers(
        layers_to_full_reach, brute_mask(L, strided_rule(stride, 3)), f"strided {stride}, L = {L}"
    )
    expect_layers(layers_to_full_reach, torch.ones(L, L, dtype=torch.bool), f"all True, L = {L}")


def reach_random_without_diagonal(layers_to_full_reach, rng):
    """random masks without their diagonal: each position still keeps its own state"""
    L = draw(rng, 10, 20)
    for attempt in range(3):
        mask = torch.rand(L, L, generator=rng) < 0.25
        mask.fill_diagonal_(False)
        expect_layers(layers_to_full_reach, mask, f"a random mask (no diagonal), L = {L}")
    ring = brute_mask(L, lambda i, j: j == (i - 1) % L)  # i hears i-1 only: L - 1 layers
    expect_layers(layers_to_full_reach, ring, f"a ring (query i sees key i-1), L = {L}")


def reach_never(layers_to_full_reach, rng):
    """None when full reach never happens: separate blocks, or the identity"""
    L = draw(rng, 6, 16)
    half = draw(rng, 2, L - 2)
    expect_layers(
        layers_to_full_reach,
        brute_mask(L, lambda i, j: (i < half) == (j < half)),
        f"two separate blocks, L = {L}",
    )
    expect_layers(layers_to_full_reach, torch.eye(L, dtype=torch.bool), f"the identity, L = {L}")
    expect_layers(layers_to_full_reach, torch.ones(1, 1, dtype=torch.bool), "L = 1")


# ----------------------------------------------------------------------------- attention


class LargestAllocation(TorchDispatchMode):
    """Records the bytes of the largest new storage that any op allocates."""

    def __init__(self):
        super().__init__()
        self.largest = 0
        self.shape = None

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = {t.untyped_storage().data_ptr() for t in _leaves((args, kwargs))}
        for tensor in _leaves(out):
            storage = tensor.untyped_storage()
            if storage.data_ptr() not in inputs and storage.nbytes() > self.largest:
                self.largest, self.shape = storage.nbytes(), tuple(tensor.shape)
        return out


def _leaves(tree) -> list:
    """The tensors in nested tuples, lists and dicts (an op's args, kwargs or outputs)."""
    if isinstance(tree, torch.Tensor):
        return [tree]
    if isinstance(tree, (tuple, list)):
        return [t for item in tree for t in _leaves(item)]
    if isinstance(tree, dict):
        return [t for item in tree.values() for t in _leaves(item)]
    return []


def expect_no_full_matrix(call, L: int, name: str) -> None:
    """`call()` must never allocate a tensor of L * L bytes or more (an (L, L) bool mask, or a
    quarter of an (L, L) float32 matrix)."""
    tracker = LargestAllocation()
    with tracker:
        call()
    if tracker.largest >= L * L:
        description, hint = HINTS["builds_full_matrix"]
        raise Mistake(
            f"{name} allocated a tensor of shape {tracker.shape} ({tracker.largest / 2**20:.0f} "
            f"MiB) for L = {L}: it looks like {description}.",
            hint,
            "builds_full_matrix",
        )


def attention_inputs(rng, L: int, dtype=torch.float32, leading=(2, 3)):
    d = 2 ** draw(rng, 2, 4)
    dv = d + draw(rng, 1, 4)
    return (
        randn((*leading, L, d), rng, dtype),
        randn((*leading, L, d), rng, dtype),
        randn((*leading, L, dv), rng, dtype),
    )


def expect_attention(out, q, k, v, mask, what: str, suspect_masks=(), edge: tuple = None) -> None:
    """Compare with dense float64 attention under `mask`; name suspects (by their masks), and
    answers right in the middle but wrong at the ends (`edge` = (first, last) rows, and the key
    to name)."""
    ref = dense64(q, k, v, mask)
    L = q.shape[-2]
    if (
        edge is not None
        and isinstance(out, torch.Tensor)
        and out.dim() == ref.dim()
        and out.shape[-2] < L
        and out.shape[:-2] == ref.shape[:-2]
    ):
        description, hint = HINTS[edge[2]]
        raise Mistake(
            f"{what} has {out.shape[-2]} rows for L = {L}: it looks like {description}.",
            hint,
            edge[2],
        )
    suspects = [
        (key, dense64(q, k, v, wrong))
        for key, wrong in suspect_masks
        if not torch.equal(wrong, mask)
    ]
    suspects.append(("missing_scale", dense64(q * math.sqrt(q.shape[-1]), k, v, mask)))
    try:
        expect_close(out, ref, q.dtype, what=what, suspects=suspects)
    except Mistake as mistake:
        if edge is None or mistake.key != "wrong_values" or out.shape != ref.shape:
            raise
        first, last, key = edge
        rows = slice(first, L - last)
        if (
            L - last > first
            and relative_error(out[..., rows, :], ref[..., rows, :]) <= TOLERANCE[q.dtype]
        ):
            description, hint = HINTS[key]
            raise Mistake(
                f"{what} is right for queries {first} .. {L - last - 1} but wrong outside: "
                f"it looks like {description}.",
                hint,
                key,
            ) from None
        raise


def window_masks(L: int, window: int, causal: bool) -> list:
    return [(key, wrong) for key, wrong in window_suspects(L, window, causal) if not callable(key)]


def swa_edges(window: int, causal: bool) -> tuple:
    return (window - 1, 0, "drops_edges") if causal else (window // 2, window // 2, "drops_edges")


def swa_symmetric(sliding_window_attention, rng):
    """symmetric: equals dense attention under sliding_window_mask(L, window), (B, H, L, D)"""
    L = draw(rng, 20, 48)
    q, k, v = attention_inputs(rng, L)
    for window in (2 * draw(rng, 2, 6), 2 * draw(rng, 1, 6) + 1):
        mask = brute_mask(L, window_rule(window, False))
        expect_attention(
            sliding_window_attention(q, k, v, window),
            q,
            k,
            v,
            mask,
            f"sliding_window_attention(q, k, v, {window})",
            window_masks(L, window, False),
            swa_edges(window, False),
        )


def swa_causal(sliding_window_attention, rng):
    """causal: equals dense attention under sliding_window_mask(L, window, causal=True)"""
    L = draw(rng, 20, 48)
    q, k, v = attention_inputs(rng, L)
    for window in (draw(rng, 2, 6), draw(rng, 7, 13)):
        mask = brute_mask(L, window_rule(window, True))
        expect_attention(
            sliding_window_attention(q, k, v, window, causal=True),
            q,
            k,
            v,
            mask,
            f"sliding_window_attention(q, k, v, {window}, causal=True)",
            window_masks(L, window, True),
            swa_edges(window, True),
        )


def swa_shapes_and_float64(sliding_window_attention, rng):
    """any leading dims ((L, D), (B, L, D)), Dv != D, float64 to 1e-10"""
    L, window = draw(rng, 9, 30), draw(rng, 2, 7)
    for leading, dtype in [((), torch.float32), ((draw(rng, 1, 3),), torch.float64)]:
        q, k, v = attention_inputs(rng, L, dtype, leading)
        for causal in (False, True):
            mask = brute_mask(L, window_rule(window, causal))
            expect_attention(
                sliding_window_attention(q, k, v, window, causal=causal),
                q,
                k,
                v,
                mask,
                f"sliding_window_attention on {tuple(q.shape)} {dtype}, causal={causal}",
                window_masks(L, window, causal),
                swa_edges(window, causal),
            )


def swa_extremes(sliding_window_attention, rng):
    """window = 1 (each query sees itself), a window longer than L, and L shorter than a block"""
    L = draw(rng, 5, 12)
    q, k, v = attention_inputs(rng, L, leading=(2,))
    for window, causal in [(1, False), (1, True), (2 * L + 1, False), (L + draw(rng, 0, 5), True)]:
        mask = brute_mask(L, window_rule(window, causal))
        expect_attention(
            sliding_window_attention(q, k, v, window, causal=causal),
            q,
            k,
            v,
            mask,
            f"sliding_window_attention(q, k, v, {window}, causal={causal}) with L = {L}",
            window_masks(L, window, causal),
        )


def swa_never_full_matrix(sliding_window_attention, rng):
    """never allocates an (L, L)-sized tensor (L = 4096: O(L * window) memory)"""
    L, window = 4096, draw(rng, 16, 64)
    q, k, v = (randn((1, 1, L, 8), rng) for _ in range(3))
    for causal in (False, True):
        expect_no_full_matrix(
            lambda: sliding_window_attention(q, k, v, window, causal=causal),
            L,
            f"sliding_window_attention(q, k, v, {window}, causal={causal})",
        )


def chunk_rule(L: int, chunk_size: int, overlap: int, extra_left=0, extra_right=0):
    def allowed(i, j):
        c = i // chunk_size
        return (
            c * chunk_size - overlap - extra_left
            <= j
            < (c + 1) * chunk_size + overlap + extra_right
        )

    return allowed


def chunk_masks(L: int, chunk_size: int, overlap: int) -> list:
    return [
        (
            "overlap_one_side",
            brute_mask(L, chunk_rule(L, chunk_size, overlap, extra_right=-overlap)),
        ),
        (
            "overlap_one_side",
            brute_mask(L, chunk_rule(L, chunk_size, overlap, extra_left=-overlap)),
        ),
        ("overlap_off_by_one", brute_mask(L, chunk_rule(L, chunk_size, overlap, extra_right=1))),
        ("overlap_off_by_one", brute_mask(L, chunk_rule(L, chunk_size, overlap, extra_left=-1))),
        (
            "overlap_off_by_one",
            brute_mask(L, chunk_rule(L, chunk_size, overlap, extra_left=-1, extra_right=1)),
        ),
        ("ignores_overlap", brute_mask(L, chunk_rule(L, chunk_size, 0))),
        ("sliding_not_chunked", brute_mask(L, lambda i, j: abs(i - j) <= overlap)),
        (
            "sliding_not_chunked",
            brute_mask(L, lambda i, j: i - overlap <= j < i + chunk_size + overlap),
        ),
    ]


def expect_chunked(chunked_attention, q, k, v, chunk_size, overlap, what):
    L = q.shape[-2]
    last = L % chunk_size or chunk_size
    expect_attention(
        chunked_attention(q, k, v, chunk_size, overlap),
        q,
        k,
        v,
        brute_mask(L, chunk_rule(L, chunk_size, overlap)),
        what,
        chunk_masks(L, chunk_size, overlap),
        edge=(0, last, "drops_last_chunk"),
    )


def chunked_matches(chunked_attention, rng):
    """chunk c attends keys [c*chunk_size - overlap, (c+1)*chunk_size + overlap), L % chunk_size != 0"""
    chunk_size = draw(rng, 4, 8)
    L = chunk_size * draw(rng, 3, 6) + draw(rng, 1, chunk_size - 1)
    q, k, v = attention_inputs(rng, L)
    overlap = draw(rng, 1, chunk_size - 1)
    expect_chunked(
        chunked_attention,
        q,
        k,
        v,
        chunk_size,
        overlap,
        f"chunked_attention(q, k, v, {chunk_size}, {overlap}) with L = {L}",
    )


def chunked_extremes(chunked_attention, rng):
    """overlap = 0 (blocks on the diagonal), overlap > chunk_size, chunk_size >= L, L % chunk_size == 0"""
    chunk_size = draw(rng, 3, 6)
    L = chunk_size * draw(rng, 3, 5)
    q, k, v = attention_inputs(rng, L, torch.float64, leading=(draw(rng, 1, 3),))
    for size, overlap in [
        (chunk_size, 0),
        (chunk_size, chunk_size + draw(rng, 1, 3)),
        (L + draw(rng, 0, 3), 2),
    ]:
        expect_chunked(
            chunked_attention,
            q,
            k,
            v,
            size,
            overlap,
            f"chunked_attention(q, k, v, {size}, {overlap}) with L = {L}, float64",
        )


def chunked_never_full_matrix(chunked_attention, rng):
    """never allocates an (L, L)-sized tensor (L = 4096)"""
    L, chunk_size, overlap = 4096, draw(rng, 64, 128), draw(rng, 8, 32)
    q, k, v = (randn((1, 1, L, 8), rng) for _ in range(3))
    expect_no_full_matrix(
        lambda: chunked_attention(q, k, v, chunk_size, overlap),
        L,
        f"chunked_attention(q, k, v, {chunk_size}, {overlap})",
    )


EXERCISES = {
    "sliding_window_mask": Exercise(
        checks=[swm_symmetric, swm_causal, swm_extremes, swm_rejects_bad_window, swm_vectorised],
        forbidden=FORBIDDEN_BUILDERS,
    ),
    "strided_mask": Exercise(
        checks=[
            strided_matches,
            strided_extremes,
            strided_rejects_bad_parameters,
            strided_vectorised,
        ],
        forbidden=FORBIDDEN_BUILDERS,
    ),
    "global_local_mask": Exercise(
        checks=[global_matches, global_index_kinds, global_rejects_out_of_range, global_vectorised],
        forbidden=FORBIDDEN_BUILDERS,
    ),
    "random_mask": Exercise(
        checks=[
            random_counts,
            random_reproducible,
            random_rows_independent,
            random_uniform,
            random_extremes,
            random_vectorised,
        ],
        forbidden=FORBIDDEN_BUILDERS,
    ),
    "block_sparse_mask": Exercise(
        checks=[block_matches, block_extremes, block_rejects_wrong_layout, block_vectorised],
        forbidden=FORBIDDEN_BUILDERS,
    ),
    "mask_density": Exercise(
        checks=[density_matches, density_extremes], forbidden=FORBIDDEN_BUILDERS
    ),
    "layers_to_full_reach": Exercise(
        checks=[
            reach_windows,
            reach_global_and_strided,
            reach_random_without_diagonal,
            reach_never,
        ],
        forbidden=FORBIDDEN_BUILDERS,
    ),
    "sliding_window_attention": Exercise(
        checks=[
            swa_symmetric,
            swa_causal,
            swa_shapes_and_float64,
            swa_extremes,
            swa_never_full_matrix,
        ],
        forbidden=FORBIDDEN_ATTENTION,
    ),
    "chunked_attention": Exercise(
        checks=[chunked_matches, chunked_extremes, chunked_never_full_matrix],
        forbidden=FORBIDDEN_ATTENTION,
    ),
}


# ============================================================================= advanced: learned sparsity
#
# topk_gated_attention: per query, attention over the k_keep keys with the highest gate scores;
# the selection is detached (no gradient reaches gate_scores). adaptive_window_attention: a
# sliding window whose width is given per query. Oracles: masks from Python loops (sorting each
# row's gate scores; comparing positions one pair at a time), attention in float64 under them.

HINTS.update(
    {
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
            "broadcast over every leading dim at once: widths.unsqueeze(-1) has shape "
            "(..., L, 1) and compares with the (L, L) grid of positions in one go.",
        ),
    }
)

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
                description, fix = HINTS[key]
                raise Mistake(f"{what} has NaN rows: it looks like {description}.", fix, key)
    expect_close(out, ref, q.dtype, what=what, suspects=[(key, w) for key, w in wrong])


def expect_no_growth(call_small, call_large, name: str, key: str, sizes: str) -> None:
    small, large = student_lines(call_small), student_lines(call_large)
    if large > small + 100:
        description, fix = HINTS[key]
        raise Mistake(
            f"{name} ran {small} lines of Python for {sizes.split('|')[0]} and {large} "
            f"for {sizes.split('|')[1]}: it looks like {description}.",
            fix,
            key,
        )


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


def expect_topk(topk_gated_attention, q, k, v, gate, k_keep, what: str) -> None:
    mask = brute_topk_mask(gate, k_keep)
    out = topk_gated_attention(q, k, v, gate, k_keep)
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
    expect_topk(
        topk_gated_attention,
        q,
        k,
        v,
        gate,
        k_keep,
        f"topk_gated_attention on (L, D) float64, k_keep = {k_keep}",
    )


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
    k_keep = draw(rng, 2, min(Lq, Lk) - 1)
    grad_out = randn((2, 2, Lq, v.shape[-1]), rng, torch.float64)
    mask = brute_topk_mask(gate, k_keep)
    leaves = [t.clone().requires_grad_(True) for t in (q, k, v)]
    ref_grads = torch.autograd.grad(masked64(*leaves, mask), leaves, grad_out)
    inputs = [t.clone().requires_grad_(True) for t in (q, k, v, gate)]
    out = topk_gated_attention(*inputs, k_keep)
    expect_tensor(out, "topk_gated_attention's output", (2, 2, Lq, v.shape[-1]), torch.float64)
    if not out.requires_grad:
        description, fix = HINTS["wrong_gradient"]
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
            description, fix = HINTS["wrong_gradient"]
            raise Mistake(
                f"the gradient with respect to {name} is off: it looks like {description}.",
                fix,
                "wrong_gradient",
            )


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

    expect_no_growth(
        call((1,), 32), call((1,), 256), "topk_gated_attention", "python_loop", "L = 32|L = 256"
    )
    expect_no_growth(
        call((2,), 16), call((64,), 16), "topk_gated_attention", "loop_over_rows", "2 batch rows|64"
    )


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
    for single in (widths[..., :1], widths.amax(-1, keepdim=True), widths[..., -1:]):
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
        ]
    else:
        suspects.append(("causal_when_symmetric", brute_adaptive_mask(widths, adaptive_rule(True))))
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
    mask = brute_adaptive_mask(widths, adaptive_rule(causal))
    out = adaptive_window_attention(q, k, v, widths, causal=causal)
    expect_masked_attention(out, q, k, v, mask, what, adaptive_suspects(widths, causal))


def adaptive_causal(adaptive_window_attention, rng):
    """causal (the default): query i sees keys i - widths[i] + 1 .. i, per (batch, head) widths"""
    L = draw(rng, 8, 20)
    q, k, v, widths = adaptive_inputs(rng, (2, 3), L)
    mask = brute_adaptive_mask(widths, adaptive_rule(True))
    out = adaptive_window_attention(q, k, v, widths)
    expect_masked_attention(
        out,
        q,
        k,
        v,
        mask,
        f"adaptive_window_attention with L = {L}, causal",
        adaptive_suspects(widths, True),
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
        (widths, q[..., :-1, :], k, v, f"Lq = {L - 1} != Lk = {L}"),
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

    expect_no_growth(
        call((1,), 32),
        call((1,), 256),
        "adaptive_window_attention",
        "python_loop",
        "L = 32|L = 256",
    )
    expect_no_growth(
        call((2,), 16),
        call((64,), 16),
        "adaptive_window_attention",
        "loop_over_rows",
        "2 batch rows|64",
    )


EXERCISES.update(
    {
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
)


# ============================================================================= advanced: feature-wise attention
#
# ColumnwiseAttention(num_columns, d, num_heads, shared=True): inputs (batch, columns, seq, d),
# multi-head self-attention along time inside each column, never across columns. Projections are
# the parameters q_weight, k_weight, v_weight, out_weight, (d, d) when shared, (columns, d, d)
# when not, used as nn.Linear does (y = x @ W^T, no bias). Oracle: a Python loop over columns,
# each one float64 multi-head attention by F.scaled_dot_product_attention.

HINTS.update(
    {
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
        "not_a_module": (
            "something other than an nn.Module",
            "subclass nn.Module and call super().__init__() first.",
        ),
    }
)

COLUMN_PARAMS = ("q_weight", "k_weight", "v_weight", "out_weight")
FORBIDDEN_COLUMNS = {
    **FORBIDDEN_BUILDERS,
    "multi_head_attention_forward": "write the attention along time yourself.",
}


def build_columns(ColumnwiseAttention, *args, **kwargs):
    """The student's module (constructed under the guard) and a guarded way to call it."""
    module = ColumnwiseAttention(*args, **kwargs)
    if not isinstance(module, torch.nn.Module):
        raise Mistake(
            f"ColumnwiseAttention(...) gave a {type(module).__name__}, not an nn.Module.",
            HINTS["not_a_module"][1],
            "not_a_module",
        )
    return module, guarded(module, "ColumnwiseAttention", FORBIDDEN_COLUMNS)


def set_column_weights(module, C, d, shared, rng, dtype):
    """Fresh random weights copied into the module's four parameters; returns them (float64)."""
    shape = (d, d) if shared else (C, d, d)
    module.to(dtype)
    weights = {}
    for name in COLUMN_PARAMS:
        p = getattr(module, name, None)
        if not isinstance(p, torch.nn.Parameter) or tuple(p.shape) != shape:
            got = tuple(p.shape) if isinstance(p, torch.Tensor) else type(p).__name__
            description, fix = HINTS["missing_parameter"]
            raise Mistake(
                f"module.{name} should be an nn.Parameter of shape {shape}, got {got}: "
                f"it looks like {description}.",
                fix,
                "missing_parameter",
            )
        w = randn(shape, rng, dtype, scale=d**-0.5)
        with torch.no_grad():
            getattr(module, name).copy_(w)
        weights[name] = w.double()
    return weights


def column_oracle(x, weights, H, shared, flatten=False, column_of=None, scale=True):
    """Float64 reference: per column c (a Python loop), multi-head attention along time."""
    x = x.double()
    B, C, T, d = x.shape
    dh = d // H

    def w(name, c):
        W = weights[name]
        return W if shared else W[c if column_of is None else column_of]

    def mha(seq, c):  # seq (B, n, d)
        q, k, v = (seq @ w(n, c).T for n in ("q_weight", "k_weight", "v_weight"))
        q, k, v = (t.unflatten(-1, (H, dh)).transpose(1, 2) for t in (q, k, v))  # (B, H, n, dh)
        if not scale:
            q = q * math.sqrt(dh)
        out = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).flatten(-2)
        return out @ w("out_weight", c).T

    if flatten:
        return mha(x.reshape(B, C * T, d), 0).reshape(B, C, T, d)
    return torch.stack([mha(x[:, c], c) for c in range(C)], dim=1)


def column_setup(ColumnwiseAttention, rng, shared, dtype=torch.float32):
    H = draw(rng, 1, 3)
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
        ("missing_scale", column_oracle(x, weights, H, shared, scale=False)),
    ]
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
                HINTS[key][1],
                key,
            )
    module, forward = build_columns(ColumnwiseAttention, C, d, H, shared=False)
    set_column_weights(module, C, d, False, rng, torch.float64)
    x = randn((2, C, 5, d), rng, torch.float64)
    before = forward(x).detach().clone()
    c = draw(rng, 1, C - 2)  # an inner column: neither the first nor the last
    with torch.no_grad():
        module.v_weight[c] += randn((d, d), rng, torch.float64)
    moved = (forward(x).detach() - before).abs().flatten(2).amax(-1).amax(0) > 1e-9  # (C,)
    if moved[c] and moved.sum() > 1:
        description, fix = HINTS["attends_across_columns"]
        raise Mistake(
            f"changing v_weight[{c}] changed columns {torch.nonzero(moved).flatten().tolist()}, "
            f"expected only column {c}: it looks like {description}.",
            fix,
            "attends_across_columns",
        )
    if not moved[c] or moved.sum() != 1:
        description, fix = HINTS["weights_shared_by_mistake"]
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
            description, fix = HINTS["attends_across_columns"]
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


EXERCISES.update(
    {
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
)
