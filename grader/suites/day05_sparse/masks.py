"""Checks for the mask builders: sliding_window_mask, strided_mask, global_local_mask, random_mask
and block_sparse_mask, each compared exactly with a brute-force mask built one (i, j) at a time.
"""

import math

import torch

from grader.harness.checking import (
    Mistake,
    expect_tensor,
    expect_value_error,
    hint,
    named,
    naming_crashes,
)
from grader.suites import Exercise
from grader.suites._common import draw
from grader.suites.day05_sparse.shared import (
    FORBIDDEN_BUILDERS,
    brute_mask,
    expect_mask,
    expect_no_python_loop,
    window_rule,
    window_suspects,
)

HINTS = {
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
    "band_and_summary": (
        "the band AND the summary columns (&) instead of the band OR them (|)",
        "a key is allowed when it is in the band or in a summary column: OR the two parts, "
        "(j % stride == 0) | (|i - j| <= local_window // 2).",
    ),
    "local_off_by_one": (
        "a local band one key too wide or too narrow on each side",
        "the local band is |i - j| <= local_window // 2, even windows too: local_window = 4 "
        "gives 2 keys on each side (not (local_window - 1) // 2 = 1).",
    ),
    "one_sided_local": (
        "a one-sided (causal) local band: only the keys before the query",
        "strided_mask has no causal option: the band is symmetric, |i - j| <= local_window // 2.",
    ),
    "empty_global_idx": (
        "an empty global_idx not handled (torch.tensor([]) is float; max() of [] fails)",
        "torch.as_tensor(global_idx, dtype=torch.long) takes a list, [] and a LongTensor alike; "
        "test the range only when there are entries: if g.numel() and (g.min() < 0 or "
        "g.max() >= L).",
    ),
    "one_sided_window": (
        "a one-sided (causal) window: only the keys before the query",
        "global_local_mask has no causal option: the window is symmetric, |i - j| <= window // 2.",
    ),
    "global_rows_only": (
        "global tokens that attend everywhere but are not attended by others",
        "set both the rows mask[g, :] (g attends all) and the columns mask[:, g] (all attend g).",
    ),
    "global_cols_only": (
        "global tokens that are attended by everyone but do not attend everywhere",
        "set both the rows mask[g, :] (g attends all) and the columns mask[:, g] (all attend g).",
    ),
    "keys_per_column": (
        "num_random queries drawn per key (the draw along the wrong axis)",
        "each query (row) draws its num_random keys: rank along the last dim, "
        "argsort(dim=-1), and scatter into the row's columns.",
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
        "e.g. by ranking torch.rand scores (in Floyd's algorithm x is uniform in 0..t, "
        "t included: (torch.rand(...) * (t + 1)).long()).",
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
    "cropped_from_the_end": (
        "the expanded layout cropped from the wrong end ([-L:, -L:])",
        "blocks start at position 0: keep the first L rows and columns, [:L, :L].",
    ),
    "rejects_valid_layout": (
        "a valid layout rejected: nb computed with floor division",
        "nb = ceil(L / block_size), e.g. math.ceil(L / block_size) or "
        "(L + block_size - 1) // block_size: the last block may be partial.",
    ),
    "columns_not_blocked": (
        "key columns indexed without // block_size (j % nb, say): only the rows are blocked",
        "both axes go through // block_size: mask[i, j] = layout[i // block_size, "
        "j // block_size].",
    ),
    "not_cropped": (
        "a mask of nb * block_size rows and columns, not cropped to L",
        "crop the expanded layout: [:L, :L].",
    ),
}


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


def swm_rejects_bad_parameters(sliding_window_mask, rng):
    """window < 1 and L < 1 raise ValueError"""
    L, window = draw(rng, 4, 10), draw(rng, 1, 5)
    # L = 0 would give an empty mask, a negative L torch's RuntimeError: neither says what is wrong
    for length, width in [(L, 0), (L, -draw(rng, 1, 5)), (0, window), (-draw(rng, 1, 5), window)]:
        expect_value_error(
            lambda: sliding_window_mask(length, width),
            f"sliding_window_mask({length}, {width})",
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
        *[
            (
                "local_off_by_one",
                brute_mask(L, lambda i, j, e=e: j % stride == 0 or abs(i - j) <= half + e),
            )
            for e in (-1, 1)
        ],
        ("missing_local", brute_mask(L, lambda i, j: j % stride == 0 or i == j)),
        ("missing_summary", brute_mask(L, lambda i, j: abs(i - j) <= half)),
        ("band_and_summary", brute_mask(L, lambda i, j: j % stride == 0 and abs(i - j) <= half)),
        (
            "window_each_side",
            brute_mask(L, lambda i, j: j % stride == 0 or abs(i - j) <= local_window),
        ),
        *[
            ("one_sided_local", brute_mask(L, lambda i, j, w=w: j % stride == 0 or 0 <= i - j <= w))
            for w in (half, local_window - 1)
        ],
    ]


def strided_matches(strided_mask, rng):
    """summary columns j % stride == 0 plus the band |i - j| <= local_window // 2 (odd and even)"""
    L = draw(rng, 14, 30)
    # An even window of 4 or more tells (local_window - 1) // 2 from local_window // 2, and
    # a band of 1 from none.
    even, odd = 2 * draw(rng, 2, 3), 2 * draw(rng, 1, 2) + 1
    for stride, local_window in [
        (draw(rng, 3, 7), even),
        (draw(rng, 3, 7), odd),
        (draw(rng, 3, 7), 1),
    ]:
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
            "one_sided_window",
            brute_mask(
                L, lambda i, j: window_rule(window, True)(i, j) or i in chosen or j in chosen
            ),
        ),
        (
            "window_each_side",
            brute_mask(L, lambda i, j: abs(i - j) <= window or i in chosen or j in chosen),
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
            mask_for_empty_too(global_local_mask, L, window, global_idx),
            brute_mask(L, global_rule(window, shown)),
            f"global_local_mask({L}, {window}, {shown})",
            global_suspects(L, window, shown),
        )


def mask_for_empty_too(global_local_mask, L: int, window: int, global_idx):
    """global_local_mask(L, window, global_idx); a crash on an empty list is named."""
    try:
        return global_local_mask(L, window, global_idx)
    except Mistake as mistake:
        if len(global_idx) or mistake.key != "raised":
            raise
        description, fix = hint("empty_global_idx")
        raise Mistake(
            f"global_local_mask({L}, {window}, []) raised: {mistake.message.split(': ', 1)[-1]}"
            f"\n      it looks like {description}.",
            fix,
            "empty_global_idx",
        ) from None


def global_rejects_out_of_range(global_local_mask, rng):
    """a global index outside [0, L) (negative too) and window < 1 raise ValueError"""
    L = draw(rng, 5, 12)
    for bad in (L + draw(rng, 0, 3), -draw(rng, 1, L)):  # a negative index wraps in torch
        expect_value_error(
            lambda: global_local_mask(L, 3, [0, bad]),
            f"global_local_mask({L}, 3, [0, {bad}])",
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
        if (per_row != num_random).any() and (out.sum(0) == num_random).all():
            raise Mistake(
                f"random_mask({L}, {num_random}, g): every key column has {num_random} queries, "
                f"but the rows do not: it looks like {hint('keys_per_column')[0]}.",
                hint("keys_per_column")[1],
                "keys_per_column",
            )
        if (per_row != num_random).any():
            i = int(torch.nonzero(per_row != num_random)[0])
            description, fix = hint("not_exactly_num_random")
            raise Mistake(
                f"random_mask({L}, {num_random}, g): query {i} has {int(per_row[i])} keys, "
                f"expected {num_random}: it looks like {description}.",
                fix,
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
        description, fix = hint("not_reproducible")
        raise Mistake(
            f"two calls with generators seeded alike ({seed}) gave different masks: "
            f"it looks like {description}.",
            fix,
            "not_reproducible",
        )
    generator = seeded(seed)
    one, two = random_mask(L, num_random, generator), random_mask(L, num_random, generator)
    if torch.equal(one, two):
        description, fix = hint("not_random")
        raise Mistake(
            f"two calls in a row with one generator gave the same mask: it looks like "
            f"{description}.",
            fix,
            "not_random",
        )


def random_rows_independent(random_mask, rng):
    """each query draws its own keys (rows differ)"""
    L, num_random = draw(rng, 48, 64), draw(rng, 3, 5)
    out = random_mask(L, num_random, seeded(draw(rng, 0, 10**6)))
    expect_tensor(out, f"random_mask({L}, {num_random}, g)", (L, L), torch.bool)
    distinct = len({tuple(row) for row in out.tolist()})
    if distinct < L // 2:
        description, fix = hint("same_keys_every_row")
        raise Mistake(
            f"only {distinct} of the {L} rows differ: it looks like {description}.",
            fix,
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
            description, fix = hint("not_uniform")
            raise Mistake(
                f"over {draws} masks of L = {L}, num_random = {num_random}, {name} {worst} "
                f"was chosen {int(counts[worst])} times; expected {mean:.0f} (a correct draw "
                f"stays within {mean - 6 * sd:.0f} .. {mean + 6 * sd:.0f}): it looks like "
                f"{description}.",
                fix,
                "not_uniform",
            )
    expect_every_key_drawn(random_mask, seed)


def expect_every_key_drawn(random_mask, seed: int, L: int = 8, draws: int = 20) -> None:
    """With one key per query, each key turns up in L * draws rows; a correct draw misses one
    with probability L * (1 - 1/L) ** (L * draws), about 4e-9. Floyd's x drawn from 0..t-1
    instead of 0..t never picks the last key."""
    seen = torch.zeros(L, dtype=torch.bool)
    for n in range(draws):
        out = random_mask(L, 1, seeded(seed + n))
        expect_tensor(out, f"random_mask({L}, 1, g)", (L, L), torch.bool)
        seen |= out.any(0)
    if not seen.all():
        never = torch.nonzero(~seen).flatten().tolist()
        description, fix = hint("not_uniform")
        raise Mistake(
            f"over {draws} masks of random_mask({L}, 1, g), {L * draws} queries in all, key(s) "
            f"{never} never came up: it looks like {description}.",
            fix,
            "not_uniform",
        )


def random_extremes(random_mask, rng):
    """num_random = 0 (no keys), L (all keys); num_random > L or < 0 raises ValueError"""
    L = draw(rng, 3, 10)
    g = seeded(draw(rng, 0, 10**6))
    for num_random, all_keys in [(0, False), (L, True)]:
        # every wrong mask here has a row with other than num_random keys
        expect_mask(
            random_mask(L, num_random, g),
            torch.full((L, L), all_keys),
            f"random_mask({L}, {num_random}, g)",
            [(lambda out: ("not_exactly_num_random", None), None)],
        )
    for bad in (L + 1, -draw(rng, 1, L)):  # a negative num_random would keep L - |r| keys
        expect_value_error(
            lambda: random_mask(L, bad, g), f"random_mask({L}, {bad}, g)", "no_error_for_bad_params"
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
    nb = layout.shape[0]
    expanded = layout.repeat_interleave(block_size, 0).repeat_interleave(block_size, 1)
    return [
        ("layout_transposed", brute_mask(L, lambda i, j: layout[j // block_size, i // block_size])),
        ("tiled_not_expanded", layout.repeat(block_size, block_size)[:L, :L]),
        ("cropped_from_the_end", expanded[-L:, -L:]),
        ("columns_not_blocked", brute_mask(L, lambda i, j: layout[i // block_size, j % nb])),
        (
            "columns_not_blocked",
            brute_mask(L, lambda i, j: layout[i // block_size, min(j, nb - 1)]),
        ),
    ]


def expect_block(block_sparse_mask, L, block_size, layout):
    what = f"block_sparse_mask({L}, {block_size}, layout)"
    nb = layout.shape[0]
    # A key position used as a layout column runs past the layout's nb columns.
    too_far = ("columns_not_blocked", "IndexError", f"for dimension 1 with size {nb}")
    try:
        with naming_crashes(too_far):
            out = block_sparse_mask(L, block_size, layout)
    except Mistake as mistake:
        if not isinstance(mistake.__cause__, ValueError):
            raise
        description, fix = hint("rejects_valid_layout")
        raise Mistake(
            f"{what} rejected a valid ({nb}, {nb}) layout ({mistake.__cause__}): it looks like "
            f"{description}.",
            fix,
            "rejects_valid_layout",
        ) from None
    if (
        isinstance(out, torch.Tensor)
        and tuple(out.shape) == (nb * block_size,) * 2
        and nb * block_size != L
    ):
        description, fix = hint("not_cropped")
        raise Mistake(
            f"{what} has shape {tuple(out.shape)}: it looks like {description}.",
            fix,
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
    """a layout that is not (ceil(L / block_size),) * 2, and block_size < 1, raise ValueError"""
    block_size = draw(rng, 2, 4)
    L = block_size * draw(rng, 2, 4) + 1  # ceil != floor
    floor = L // block_size
    expect_value_error(
        lambda: block_sparse_mask(L, block_size, torch.ones(floor, floor, dtype=torch.bool)),
        f"block_sparse_mask({L}, {block_size}, a ({floor}, {floor}) layout)",
        "no_error_for_bad_params",
    )
    for bad in (0, -draw(rng, 1, 4)):  # with an (L, L) layout, as if block_size were 1
        expect_value_error(
            lambda: block_sparse_mask(L, bad, torch.ones(L, L, dtype=torch.bool)),
            f"block_sparse_mask({L}, {bad}, an ({L}, {L}) layout)",
            "no_error_for_bad_params",
        )


def block_vectorised(block_sparse_mask, rng):
    """no Python loop over positions: the Python work does not grow with L"""
    generator = seeded(draw(rng, 0, 10**6))
    expect_no_python_loop(
        lambda L: block_sparse_mask(L, 16, torch.rand(L // 16, L // 16, generator=generator) < 0.3),
        "block_sparse_mask",
    )


EXERCISES = {
    "sliding_window_mask": Exercise(
        checks=[
            swm_symmetric,
            swm_causal,
            swm_extremes,
            swm_rejects_bad_parameters,
            swm_vectorised,
        ],
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
}
