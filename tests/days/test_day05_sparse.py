"""The day05 check suite, tested: the solution passes on every seed, each planted bug is caught
with its named hint, correct implementations written differently pass too, and the builders
are fast and give clear errors."""

import functools
import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import course.reference.sparse as library
import grader.suites.day05_sparse as day05
import grader.suites.day05_sparse.learned as learned_checks
import grader.suites.day05_sparse.reach as reach_checks
from grader.harness.checking import run as run_checks
from helpers import (
    assert_mistake_named,
    assert_named_on_seeds,
    assert_promise_kept,
    day_report,
    planted_keys,
    promised,
)

DAY = "day05-sparse"
EXERCISES = [
    "sliding_window_mask",
    "strided_mask",
    "global_local_mask",
    "random_mask",
    "block_sparse_mask",
    "mask_density",
    "layers_to_full_reach",
    "sliding_window_attention",
    "chunked_attention",
]
BUILDERS = [
    "sliding_window_mask",
    "strided_mask",
    "global_local_mask",
    "random_mask",
    "block_sparse_mask",
]

# For tests/test_nbgrader_e2e.py: global tokens that are attended but never attend back cost
# global_local_mask's visible and hidden points (2 + 1), and the feedback names the mistake.
PLANTED_SUBMISSION = {
    "cell": "global_local_mask",
    "old": "mask[index, :] = True  # global tokens attend everywhere",
    "new": "pass",
    "points_lost": 3,
    "hint": "set both the rows mask[g, :] (g attends all) and the columns mask[:, g] (all attend g).",
}


report = functools.partial(day_report, DAY)
assert_named = functools.partial(assert_mistake_named, DAY)


def stub(*args, **kwargs):
    raise NotImplementedError()


# ----------------------------------------------------------------------------- the solution


def long_builder_args(name, L=16384):
    generator = torch.Generator().manual_seed(0)
    return {
        "sliding_window_mask": (L, 256),
        "strided_mask": (L, 128, 256),
        "global_local_mask": (L, 256, [0, 1, L - 1]),
        "random_mask": (L, 3, generator),
        "block_sparse_mask": (L, 64, torch.rand(L // 64, L // 64, generator=generator) < 0.2),
    }[name]


@pytest.mark.parametrize("source", ["solution", "library"])
@pytest.mark.parametrize("name", BUILDERS)
def test_builders_make_a_16k_mask(solution, source, name):
    """A (16384, 16384) bool mask, built whole (how fast is the benchmark's to say: a timed
    test fails on a busy machine)."""
    fn = solution[name] if source == "solution" else getattr(library, name)
    mask = fn(*long_builder_args(name))
    assert mask.shape == (16384, 16384) and mask.dtype == torch.bool


@pytest.mark.parametrize("source", ["solution", "library"])
@pytest.mark.parametrize(
    "call, match",
    [
        (lambda m: m["sliding_window_mask"](8, 0), "window"),
        (lambda m: m["sliding_window_mask"](8, -3, True), "window"),
        (lambda m: m["sliding_window_mask"](0, 3), "L"),
        (lambda m: m["strided_mask"](8, 9, 3), "stride"),
        (lambda m: m["strided_mask"](8, 0, 3), "stride"),
        (lambda m: m["strided_mask"](8, 2, 0), "local_window"),
        (lambda m: m["global_local_mask"](8, 3, [0, 8]), "global_idx"),
        (lambda m: m["global_local_mask"](8, 3, [-1]), "global_idx"),
        (lambda m: m["random_mask"](8, 9, torch.Generator()), "num_random"),
        (lambda m: m["block_sparse_mask"](10, 4, torch.ones(2, 2, dtype=torch.bool)), r"\(3, 3\)"),
        (lambda m: m["block_sparse_mask"](10, 0, torch.ones(2, 2, dtype=torch.bool)), "block_size"),
    ],
    ids=[
        "window0",
        "window-3",
        "L0",
        "stride>L",
        "stride0",
        "local0",
        "global=L",
        "global<0",
        "random>L",
        "layout-shape",
        "block0",
    ],
)
def test_bad_parameters_give_clear_errors(solution, source, call, match):
    functions = solution if source == "solution" else vars(library)
    with pytest.raises(ValueError, match=match):
        call(functions)


# ----------------------------------------------------------------------------- planted bugs: masks


def ones(L):
    return torch.ones(L, L, dtype=torch.bool)


def band(L, below, above):
    return ones(L).tril(above).triu(-below)


def make_window(below, above, check_window=True, check_length=True):
    """A sliding_window_mask whose band is (below(window, causal), above(window, causal))."""

    def sliding_window_mask(L, window, causal=False):
        if check_window and window < 1:
            raise ValueError("window must be >= 1")
        if check_length and L < 1:
            raise ValueError("L must be >= 1")
        return band(L, below(window, causal), above(window, causal))

    return sliding_window_mask


def right_below(w, causal):
    return w - 1 if causal else w // 2


def right_above(w, causal):
    return 0 if causal else w // 2


def row_loop_window(L, window, causal=False):
    if window < 1 or L < 1:
        raise ValueError("window and L must be >= 1")
    mask = torch.zeros(L, L, dtype=torch.bool)
    for i in range(L):
        lo, hi = (i - window + 1, i) if causal else (i - window // 2, i + window // 2)
        mask[i, max(0, lo) : hi + 1] = True
    return mask


@pytest.mark.parametrize(
    "bug, key",
    [
        (make_window(lambda w, c: w if c else w // 2, right_above), "window_off_by_one"),
        (
            make_window(
                lambda w, c: w - 1 if c else w // 2 - 1, lambda w, c: 0 if c else w // 2 - 1
            ),
            "window_off_by_one",
        ),
        (make_window(right_below, lambda w, c: 0 if c else w // 2 - 1), "asymmetric_window"),
        (make_window(lambda w, c: w - 1 if c else w // 2 - 1, right_above), "asymmetric_window"),
        (
            make_window(lambda w, c: w - 1 if c else w, lambda w, c: 0 if c else w),
            "window_each_side",
        ),
        (make_window(lambda w, c: w // 2, lambda w, c: w // 2), "ignores_causal"),
        (  # keys i-window .. i-1: tril(-1)
            make_window(lambda w, c: w if c else w // 2, lambda w, c: -1 if c else w // 2),
            "causal_excludes_self",
        ),
        (
            make_window(lambda w, c: 0 if c else w // 2, lambda w, c: w - 1 if c else w // 2),
            "causal_looks_ahead",
        ),
        (make_window(lambda w, c: w - 1, lambda w, c: 0), "causal_when_symmetric"),
        (make_window(lambda w, c: w // 2, right_above), "causal_half_window"),
        (make_window(right_below, right_above, check_window=False), "no_error_for_bad_params"),
        (make_window(right_below, right_above, check_length=False), "no_error_for_bad_params"),
        (
            lambda L, w, causal=False: make_window(right_below, right_above)(L, w, causal).float(),
            "not_bool",
        ),
        (row_loop_window, "python_loop"),
        (stub, "not_implemented"),
    ],
    ids=[
        "causal_w+1",
        "symmetric_narrow",
        "asym_right",
        "asym_left",
        "each_side",
        "ignores_causal",
        "excludes_self",
        "looks_ahead",
        "causal_when_symmetric",
        "causal_half_window",
        "no_error",
        "no_length_check",
        "float",
        "row_loop",
        "stub",
    ],
)
def test_sliding_window_mask_bug_is_named(bug, key, capsys):
    assert_named_on_seeds(DAY, "sliding_window_mask", bug, key, capsys, seeds=(1, 2))


def make_strided(summary, local=lambda L, w: band(L, w // 2, w // 2), validate=True):
    def strided_mask(L, stride, local_window):
        if validate and not (1 <= stride <= L and local_window >= 1):
            raise ValueError("bad stride or local_window")
        return local(L, local_window) | summary(L, stride)

    return strided_mask


def row_loop_strided(L, stride, local_window):
    if not (1 <= stride <= L and local_window >= 1):
        raise ValueError("bad stride or local_window")
    mask = torch.zeros(L, L, dtype=torch.bool)
    for i in range(L):
        mask[i, max(0, i - local_window // 2) : i + local_window // 2 + 1] = True
    mask[:, ::stride] = True
    return mask


def columns(L, stride):
    return (torch.arange(L) % stride == 0).expand(L, L)


def band_and_summary(L, stride, local_window):
    """The band AND the summary columns: only the summary keys inside the band."""
    if not (1 <= stride <= L and local_window >= 1):
        raise ValueError("bad stride or local_window")
    return band(L, local_window // 2, local_window // 2) & columns(L, stride)


relative_stride = make_strided(
    lambda L, s: (torch.arange(L).unsqueeze(-1) - torch.arange(L)) % s == 0
)


@pytest.mark.parametrize(
    "bug, key",
    [
        (
            make_strided(lambda L, s: ((torch.arange(L) + 1) % s == 0).expand(L, L)),
            "stride_from_one",
        ),
        (
            make_strided(
                lambda L, s: ((torch.arange(L) % s == 0) & (torch.arange(L) > 0)).expand(L, L)
            ),
            "stride_from_one",
        ),
        (
            make_strided(lambda L, s: (torch.arange(L) % s == 0).unsqueeze(-1).expand(L, L)),
            "strided_rows",
        ),
        (relative_stride, "relative_stride"),
        (
            make_strided(columns, local=lambda L, w: torch.zeros(L, L, dtype=torch.bool)),
            "missing_local",
        ),
        (make_strided(lambda L, s: torch.zeros(L, L, dtype=torch.bool)), "missing_summary"),
        (band_and_summary, "band_and_summary"),
        (
            make_strided(columns, local=lambda L, w: band(L, w // 2 + 1, w // 2 + 1)),
            "local_off_by_one",
        ),
        (
            make_strided(columns, local=lambda L, w: band(L, (w - 1) // 2, (w - 1) // 2)),
            "local_off_by_one",
        ),
        (make_strided(columns, local=lambda L, w: band(L, w // 2, 0)), "one_sided_local"),
        (make_strided(columns, validate=False), "no_error_for_bad_params"),
        (row_loop_strided, "python_loop"),
        (stub, "not_implemented"),
    ],
    ids=[
        "from_one",
        "without_0",
        "rows",
        "relative",
        "no_local",
        "no_summary",
        "band_and_summary",
        "off_by_one",
        "even_window_off_by_one",
        "one_sided",
        "no_error",
        "row_loop",
        "stub",
    ],
)
def test_strided_mask_bug_is_named(bug, key, capsys):
    assert_named_on_seeds(DAY, "strided_mask", bug, key, capsys, seeds=(1, 2))


def make_global(
    rows=True, cols=True, validate=True, negative_ok=False, half=lambda w: w // 2, causal=False
):
    def global_local_mask(L, window, global_idx):
        index = torch.as_tensor(global_idx, dtype=torch.long)
        if validate and ((index < -L * negative_ok) | (index >= L)).any():
            raise ValueError("global_idx out of range")
        if window < 1:
            raise ValueError("window must be >= 1")
        mask = band(L, window - 1, 0) if causal else band(L, half(window), half(window))
        if rows:
            mask[index, :] = True
        if cols:
            mask[:, index] = True
        return mask

    return global_local_mask


def row_loop_global(L, window, global_idx):
    index = torch.as_tensor(global_idx, dtype=torch.long)
    if window < 1 or ((index < 0) | (index >= L)).any():
        raise ValueError("bad window or global_idx")
    mask = torch.zeros(L, L, dtype=torch.bool)
    for i in range(L):
        mask[i, max(0, i - window // 2) : i + window // 2 + 1] = True
    mask[index, :] = True
    mask[:, index] = True
    return mask


def float_index_global(L, window, global_idx):
    """torch.tensor([]) is float32: indexing with it fails."""
    index = torch.tensor(global_idx)
    if window < 1 or (index.numel() and (index.min() < 0 or index.max() >= L)):
        raise ValueError("bad window or global_idx")
    mask = band(L, window // 2, window // 2)
    mask[index, :] = True
    mask[:, index] = True
    return mask


@pytest.mark.parametrize(
    "bug, key",
    [
        (make_global(cols=False), "global_rows_only"),
        (make_global(rows=False), "global_cols_only"),
        (make_global(validate=False), "no_error_for_bad_params"),
        (make_global(negative_ok=True), "no_error_for_bad_params"),
        (make_global(half=lambda w: w), "window_each_side"),
        (make_global(causal=True), "one_sided_window"),
        (make_global(half=lambda w: w // 2 + 1), "window_off_by_one"),
        (float_index_global, "empty_global_idx"),
        (row_loop_global, "python_loop"),
        (stub, "not_implemented"),
    ],
    ids=[
        "rows_only",
        "cols_only",
        "no_range_check",
        "negative_wraps",
        "window_each_side",
        "one_sided_window",
        "window_off_by_one",
        "empty_float",
        "row_loop",
        "stub",
    ],
)
def test_global_local_mask_bug_is_named(bug, key, capsys):
    assert_named("global_local_mask", bug, key, capsys)


def ranked_random(L, num_random, generator):
    """A correct random_mask: keep the num_random best of random scores per row."""
    if not 0 <= num_random <= L:
        raise ValueError("num_random must be in 0 .. L")
    keys = torch.rand(L, L, generator=generator).argsort(dim=-1)[:, :num_random]
    return torch.zeros(L, L, dtype=torch.bool).scatter_(1, keys, True)


def with_replacement(L, num_random, generator):
    keys = torch.randint(0, L, (L, num_random), generator=generator)
    return torch.zeros(L, L, dtype=torch.bool).scatter_(1, keys, True)


def global_state(L, num_random, generator):
    return ranked_random(L, num_random, None)


def reseeded(L, num_random, generator):
    return ranked_random(L, num_random, generator.manual_seed(0))


def same_keys_every_row(L, num_random, generator):
    keys = torch.randperm(L, generator=generator)[:num_random]
    return torch.zeros(L, L, dtype=torch.bool).index_fill_(1, keys, True)


def first_half_only(L, num_random, generator):
    keys = torch.rand(L, max(L // 2, num_random), generator=generator).argsort(dim=-1)[
        :, :num_random
    ]
    return torch.zeros(L, L, dtype=torch.bool).scatter_(1, keys, True)


def shared_offsets(L, num_random, generator):
    """Rows differ and columns are uniform, but every row uses the same offsets j - i."""
    offsets = torch.randperm(L, generator=generator)[:num_random]
    keys = (torch.arange(L).unsqueeze(-1) + offsets) % L
    return torch.zeros(L, L, dtype=torch.bool).scatter_(1, keys, True)


def no_num_random_check(L, num_random, generator):
    return ranked_random(L, min(num_random, L), generator)


def no_negative_check(L, num_random, generator):
    """num_random < 0 accepted: [:, :-r] keeps L - r keys."""
    if num_random > L:
        raise ValueError("num_random must be <= L")
    keys = torch.rand(L, L, generator=generator).argsort(dim=-1)[:, :num_random]
    return torch.zeros(L, L, dtype=torch.bool).scatter_(1, keys, True)


def floyd(L, num_random, generator, inclusive=True):
    """Floyd's algorithm for every row at once: for t = L - r .. L - 1 draw x in 0..t (or, the
    off-by-one, in 0..t-1) and take x, or t if x is already taken."""
    if not 0 <= num_random <= L:
        raise ValueError("num_random must be in 0 .. L")
    mask = torch.zeros(L, L, dtype=torch.bool)
    rows = torch.arange(L)
    for t in range(L - num_random, L):
        x = (torch.rand(L, generator=generator) * (t + inclusive)).long()
        taken = mask[rows, x]
        mask[rows, torch.where(taken, t, x)] = True
    return mask


def row_loop_random(L, num_random, generator):
    """A fresh permutation per query: right, but a Python loop over the rows."""
    if not 0 <= num_random <= L:
        raise ValueError("num_random must be in 0 .. L")
    mask = torch.zeros(L, L, dtype=torch.bool)
    for i in range(L):
        mask[i, torch.randperm(L, generator=generator)[:num_random]] = True
    return mask


def keys_per_column(L, num_random, generator):
    """The ranking along the wrong axis: num_random queries per key."""
    if not 0 <= num_random <= L:
        raise ValueError("num_random must be in 0 .. L")
    queries = torch.rand(L, L, generator=generator).argsort(dim=0)[:num_random]
    return torch.zeros(L, L, dtype=torch.bool).scatter_(0, queries, True)


@pytest.mark.parametrize(
    "bug, key",
    [
        (with_replacement, "not_exactly_num_random"),
        (global_state, "not_reproducible"),
        (reseeded, "not_random"),
        (same_keys_every_row, "same_keys_every_row"),
        (first_half_only, "not_uniform"),
        (shared_offsets, "not_uniform"),
        (no_num_random_check, "no_error_for_bad_params"),
        (no_negative_check, "no_error_for_bad_params"),
        (functools.partial(floyd, inclusive=False), "not_uniform"),
        (keys_per_column, "keys_per_column"),
        (row_loop_random, "python_loop"),
        (stub, "not_implemented"),
    ],
    ids=[
        "replacement",
        "global_state",
        "reseeded",
        "same_rows",
        "first_half",
        "offsets",
        "no_error",
        "negative",
        "floyd_off_by_one",
        "per_column",
        "row_loop",
        "stub",
    ],
)
def test_random_mask_bug_is_named(bug, key, capsys):
    assert_named("random_mask", bug, key, capsys)


def make_block(expand, crop=lambda m, L: m[:L, :L], validate=True, nb_of=math.ceil):
    def block_sparse_mask(L, block_size, layout):
        if validate and block_size < 1:
            raise ValueError("block_size must be >= 1")
        nb = nb_of(L / block_size)
        if validate and tuple(layout.shape) != (nb, nb):
            raise ValueError("layout must be (nb, nb)")
        return crop(expand(layout, block_size), L)

    return block_sparse_mask


def interleave(layout, b):
    return layout.repeat_interleave(b, 0).repeat_interleave(b, 1)


def unblocked_columns(column):
    """Rows blocked with // block_size, key columns taken as column(j, nb) instead."""

    def block_sparse_mask(L, block_size, layout):
        nb = math.ceil(L / block_size)
        if block_size < 1 or tuple(layout.shape) != (nb, nb):
            raise ValueError("bad block_size or layout")
        positions = torch.arange(L)
        return layout[(positions // block_size).unsqueeze(-1), column(positions, nb)]

    return block_sparse_mask


def row_loop_block(L, block_size, layout):
    nb = math.ceil(L / block_size) if block_size >= 1 else 0
    if block_size < 1 or tuple(layout.shape) != (nb, nb):
        raise ValueError("bad block_size or layout")
    mask = torch.zeros(L, L, dtype=torch.bool)
    for i in range(L):
        mask[i] = layout[i // block_size].repeat_interleave(block_size)[:L]
    return mask


def no_block_size_check(L, block_size, layout):
    """The layout's shape is checked, block_size < 1 is not: a ZeroDivisionError, say."""
    nb = math.ceil(L / block_size)
    if tuple(layout.shape) != (nb, nb):
        raise ValueError("layout must be (nb, nb)")
    return interleave(layout, block_size)[:L, :L]


@pytest.mark.parametrize(
    "bug, key",
    [
        (make_block(lambda lay, b: interleave(lay.T, b)), "layout_transposed"),
        (make_block(lambda lay, b: lay.repeat(b, b)), "tiled_not_expanded"),
        (make_block(interleave, crop=lambda m, L: m), "not_cropped"),
        (make_block(interleave, crop=lambda m, L: m[-L:, -L:]), "cropped_from_the_end"),
        (make_block(interleave, nb_of=math.floor), "rejects_valid_layout"),
        (make_block(interleave, validate=False), "no_error_for_bad_params"),
        (no_block_size_check, "no_error_for_bad_params"),
        (unblocked_columns(lambda j, nb: j % nb), "columns_not_blocked"),
        (unblocked_columns(lambda j, nb: j.clamp(max=nb - 1)), "columns_not_blocked"),
        (unblocked_columns(lambda j, nb: j), "columns_not_blocked"),  # an IndexError
        (row_loop_block, "python_loop"),
        (stub, "not_implemented"),
    ],
    ids=[
        "transposed",
        "tiled",
        "not_cropped",
        "cropped_from_end",
        "floor_nb",
        "no_error",
        "no_block_size_check",
        "columns_mod_nb",
        "columns_clamped",
        "columns_unblocked",
        "row_loop",
        "stub",
    ],
)
def test_block_sparse_mask_bug_is_named(bug, key, capsys):
    assert_named_on_seeds(DAY, "block_sparse_mask", bug, key, capsys, seeds=(1, 2))


@pytest.mark.parametrize(
    "bug, key",
    [
        (lambda mask: mask.sum().item(), "count_not_fraction"),
        (lambda mask: mask[0].float().mean().item(), "first_row_only"),
        (lambda mask: mask.float().mean(-1)[0].item(), "first_row_only"),
        (lambda mask: mask.float().mean(-1)[0].item(), "mean_over_one_dim"),
        (lambda mask: mask.sum(), "count_not_fraction"),
        (lambda mask: str(mask.float().mean().item()), "not_a_number"),
        (lambda mask: mask.float().mean(), "tensor_not_float"),
        (lambda mask: mask.sum().item() / mask.shape[0] ** 2, "square_count"),
        (lambda mask: mask.sum(-1).float().mean().item(), "per_row_count"),
        (lambda mask: (~mask).float().mean().item(), "fraction_of_false"),
        (lambda mask: mask.sum().item() // mask.numel(), "integer_division"),
        (lambda mask: mask.half().mean().item(), "low_precision"),
        (lambda mask: mask.mean().item(), "mean_of_bool"),
        (stub, "not_implemented"),
    ],
    ids=[
        "count",
        "first_row",
        "row_means_first",
        "row_means_of_a_batch",
        "tensor_count",
        "string",
        "tensor",
        "square",
        "per_row",
        "false_fraction",
        "integer_division",
        "float16",
        "bool_mean",
        "stub",
    ],
)
def test_mask_density_bug_is_named(bug, key, capsys):
    assert_named_on_seeds(DAY, "mask_density", bug, key, capsys, seeds=(1, 2))


def make_reach(self_loops=True, offset=0, never=None, full=torch.all):
    """A layers_to_full_reach with one planted bug; `full(reach)` is its stopping test."""

    def layers_to_full_reach(mask):
        L = mask.shape[-1]
        step = (mask | torch.eye(L, dtype=torch.bool)) if self_loops else mask
        reach = step
        for layers in range(1, L + 2):  # a cap, so the buggy versions cannot loop forever
            if full(reach):
                return layers + offset
            grown = (step.float() @ reach.float()) > 0
            if torch.equal(grown, reach):
                return never
            reach = grown
        return never

    return layers_to_full_reach


def reach_until_all(mask, self_loops=True, product=lambda a, b: (a.float() @ b.float()) > 0):
    """A reach loop with no 'nothing new' test: it ends only when the reach is all True."""
    L = mask.shape[-1]
    step = (mask | torch.eye(L, dtype=torch.bool)) if self_loops else mask
    reach, layers = step, 1
    while not reach.all():
        reach, layers = product(step, reach), layers + 1
    return layers


def squaring_count(mask, first=1, at_least=0):
    """R <- R @ R doubles the layers each step, but the count, from `first`, goes up by one."""
    L = mask.shape[-1]
    reach, steps = mask | torch.eye(L, dtype=torch.bool), first
    while not reach.all():
        grown = (reach.float() @ reach.float()) > 0
        if torch.equal(grown, reach):
            return None
        reach, steps = grown, steps + 1
    return max(steps, at_least)


def path_counts(mask):
    """The reach kept as float path counts, never thresholded: right on short masks; on long
    ones the counts overflow to inf, and 0 * inf = NaN then drops keys from the reach."""
    L = mask.shape[-1]
    step = (mask | torch.eye(L, dtype=torch.bool)).float()
    reach, layers = step, 1
    while not (reach > 0).all():
        grown = step @ reach
        if torch.equal(grown > 0, reach > 0):
            return None
        reach, layers = grown, layers + 1
    return layers


def layers_as_tensor(mask):
    """The right count, as a 0-d tensor."""
    layers = make_reach()(mask)
    return None if layers is None else torch.tensor(layers)


def reach_of_mask_alone(mask):
    """Each position keeps its own state in the first layer only: the reach can cycle."""
    L = mask.shape[-1]
    reach, layers = mask | torch.eye(L, dtype=torch.bool), 1
    while not reach.all():
        grown = (mask.float() @ reach.float()) > 0
        if torch.equal(grown, reach):
            return None
        reach, layers = grown, layers + 1
    return layers


@pytest.mark.parametrize(
    "bug, key",
    [
        (make_reach(self_loops=False), "forgot_self"),
        (make_reach(offset=-1), "off_by_one_layers"),
        (make_reach(offset=1), "off_by_one_layers"),
        (make_reach(never=0), "should_be_none"),
        (squaring_count, "counts_squarings"),
        (functools.partial(squaring_count, first=0), "counts_squarings"),
        (functools.partial(squaring_count, first=0, at_least=1), "counts_squarings"),
        (reach_until_all, "never_stops"),
        (functools.partial(reach_until_all, product=lambda a, b: (a @ b) > 0), "bool_matmul"),
        (make_reach(full=lambda reach: reach[0].all()), "one_query_only"),
        (path_counts, "counts_overflow"),
        (layers_as_tensor, "tensor_not_int"),
        (stub, "not_implemented"),
    ],
    ids=[
        "no_self",
        "minus_one",
        "plus_one",
        "zero_for_never",
        "squarings",
        "squarings_from_0",
        "squarings_from_0_at_least_1",
        "no_exit",
        "bool_matmul",
        "row_0_only",
        "path_counts",
        "tensor",
        "stub",
    ],
)
def test_layers_to_full_reach_bug_is_named(bug, key, capsys, monkeypatch):
    # An endless loop, found sooner; the long window (L ~ 160) takes well under a second.
    monkeypatch.setattr(reach_checks.TimeLimit, "seconds", 3)
    assert_named_on_seeds(DAY, "layers_to_full_reach", bug, key, capsys, seeds=(1, 2))


def test_a_reach_that_cycles_is_stopped_and_named(monkeypatch):
    """On a ring (query i sees key i + 1), a step without I shifts the reach around forever."""
    monkeypatch.setattr(reach_checks.TimeLimit, "seconds", 1)
    ring = torch.eye(9, dtype=torch.bool).roll(-1, dims=0)  # ring[i, (i + 1) % 9]

    def ring_only(layers_to_full_reach, rng):
        """a ring"""
        reach_checks.expect_layers(layers_to_full_reach, ring, "a ring")

    found = run_checks(
        "layers_to_full_reach", reach_of_mask_alone, [ring_only], {}, hints=day05.HINTS
    )
    assert found.keys == {"cycles_without_self"}, found.results


# ----------------------------------------------------------------------------- planted bugs: attention


def make_tiled(
    keys,
    allowed=None,
    scale=lambda d: d**-0.5,
    edges=None,
    block_local=False,
    out_at_keys=False,
    softmax_dim=-1,
    out_like_q=False,
    fill=float("-inf"),
):
    """Attention tile by tile: query block [s, e) meets keys keys(s, e, L, **params); allowed(i, j,
    **params) masks inside the tile; edges(L, **params) = (first, last) rows to zero out. The
    bookkeeping bugs: positions counted from each tile's start (block_local), the output tile
    stored at the keys' offset (out_at_keys), the output allocated like q (out_like_q); the
    softmax along softmax_dim, and the masked scores set to fill."""

    def attention(q, k, v, *params, **kwargs):
        L, d = q.shape[-2], q.shape[-1]
        out = torch.zeros_like(q) if out_like_q else q.new_zeros(*q.shape[:-1], v.shape[-1])
        for start in range(0, L, 64):
            stop = min(start + 64, L)
            k_start, k_stop = keys(start, stop, L, *params, **kwargs)
            scores = q[..., start:stop, :] @ k[..., k_start:k_stop, :].transpose(-2, -1) * scale(d)
            if allowed is not None:
                i = torch.arange(start, stop).unsqueeze(-1) - start * block_local
                j = torch.arange(k_start, k_stop) - k_start * block_local
                scores = scores.masked_fill(~allowed(i, j, *params, **kwargs), fill)
            row = k_start if out_at_keys else start
            out[..., row : row + stop - start, :] = (
                torch.softmax(scores, softmax_dim).nan_to_num(0.0) @ v[..., k_start:k_stop, :]
            )
        if edges is not None:
            first, last = edges(L, *params, **kwargs)
            out[..., :first, :] = 0
            out[..., L - last :, :] = 0
        return out

    return attention


def window_keys(before, after):
    def keys(start, stop, L, window, causal=False):
        return max(0, start - before(window, causal)), min(L, stop + after(window, causal))

    return keys


def window_band(before, after):
    def allowed(i, j, window, causal=False):
        return (j >= i - before(window, causal)) & (j <= i + after(window, causal))

    return allowed


def make_swa(before=right_below, after=right_above, **kwargs):
    wide = lambda w, c: w + 2  # noqa: E731 (fetch enough keys for any band below)
    return make_tiled(window_keys(wide, wide), window_band(before, after), **kwargs)


right_window = window_band(right_below, right_above)


def keys_unclipped(at_start=True, at_stop=True):
    """The right key range, left unclipped at one end: the slice clips (or wraps) it silently,
    the positions from torch.arange do not."""

    def keys(start, stop, L, window, causal=False):
        k_start = start - right_below(window, causal)
        k_stop = stop + right_above(window, causal)
        return max(0, k_start) if at_start else k_start, min(L, k_stop) if at_stop else k_stop

    return keys


def skips_cut_windows(q, k, v, window, causal=False):
    """The blocks of 64 queries whose window is cut by an end of the sequence are skipped."""
    L = q.shape[-2]
    before, after = (window - 1, 0) if causal else (window // 2, window // 2)
    full = make_swa()(q, k, v, window, causal)
    out = torch.zeros(*q.shape[:-1], v.shape[-1], dtype=q.dtype)
    for start in range(0, L, 64):
        if start - before >= 0 and start + 64 + after <= L:
            out[..., start : start + 64, :] = full[..., start : start + 64, :]
    return out


def first_block_unwritten(q, k, v, window, causal=False):
    """The loop over blocks starts at the second: the first 64 queries keep what new_empty's
    memory held (here a stand-in for it, a constant that is neither zero nor the answer)."""
    out = make_swa()(q, k, v, window, causal)
    out[..., :64, :] = 3.2e-38
    return out


def unfold_without_padding(q, k, v, window, causal=False):
    """The banded version that only handles full windows: L - window + 1 (or L - 2h) rows."""
    span = window if causal else 2 * (window // 2) + 1
    keys = k.unfold(-2, span, 1).transpose(-2, -1)  # (..., L - span + 1, span, d)
    values = v.unfold(-2, span, 1).transpose(-2, -1)
    queries = (
        q[..., span - 1 :, :] if causal else q[..., window // 2 : q.shape[-2] - window // 2, :]
    )
    scores = (queries.unsqueeze(-2) @ keys.transpose(-2, -1)).squeeze(-2) / math.sqrt(q.shape[-1])
    return (torch.softmax(scores, -1).unsqueeze(-2) @ values).squeeze(-2)


def dense_with_mask(q, k, v, window, causal=False):
    L = q.shape[-2]
    mask = band(L, *((window - 1, 0) if causal else (window // 2, window // 2)))
    scores = (q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])).masked_fill(~mask, float("-inf"))
    return torch.softmax(scores, -1) @ v


def sdpa_with_mask(q, k, v, window, causal=False):
    L = q.shape[-2]
    mask = band(L, *((window - 1, 0) if causal else (window // 2, window // 2)))
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)


def swa_scale_after_softmax(q, k, v, window, causal=False):
    """The 1/sqrt(d) applied to the weights after the softmax: the output divided by it."""
    return make_swa(scale=lambda d: 1.0)(q, k, v, window, causal) / math.sqrt(q.shape[-1])


@pytest.mark.parametrize(
    "bug, key",
    [
        (
            make_swa(edges=lambda L, w, causal=False: (w - 1, 0) if causal else (w // 2, w // 2)),
            "drops_edges",
        ),
        (unfold_without_padding, "drops_edges"),
        (skips_cut_windows, "drops_edges"),
        (first_block_unwritten, "drops_edges"),
        (make_swa(before=lambda w, c: w if c else w // 2), "window_off_by_one"),
        (make_swa(after=lambda w, c: 0 if c else w // 2 - 1), "asymmetric_window"),
        (make_swa(before=lambda w, c: w // 2, after=lambda w, c: w // 2), "ignores_causal"),
        (
            make_swa(before=lambda w, c: w - 1 if c else w, after=lambda w, c: 0 if c else w),
            "window_each_side",
        ),
        (
            make_swa(
                before=lambda w, c: 0 if c else w // 2, after=lambda w, c: w - 1 if c else w // 2
            ),
            "causal_looks_ahead",
        ),
        (make_swa(before=lambda w, c: w // 2), "causal_half_window"),
        (make_swa(before=lambda w, c: w - 1, after=lambda w, c: 0), "causal_when_symmetric"),
        (make_swa(scale=lambda d: 1.0), "missing_scale"),
        (swa_scale_after_softmax, "scale_after_softmax"),
        (make_swa(softmax_dim=-2), "softmax_over_queries"),
        (make_tiled(window_keys(right_below, right_above)), "tile_unmasked"),
        (
            make_tiled(window_keys(right_below, right_above), right_window, fill=0.0),
            "tile_filled_with_zero",
        ),
        (
            make_tiled(
                lambda start, stop, L, w, causal=False: (
                    max(0, start - right_below(w, causal)),
                    stop,
                ),
                right_window,
            ),
            "keys_stop_at_tile_end",
        ),
        (make_swa(out_like_q=True), "output_like_q"),
        (make_swa(block_local=True), "later_blocks_wrong"),
        (make_swa(out_at_keys=True), "later_blocks_wrong"),
        (make_tiled(keys_unclipped(at_start=False), right_window), "range_not_clipped"),
        (make_tiled(keys_unclipped(at_stop=False), right_window), "range_not_clipped"),
        (dense_with_mask, "builds_full_matrix"),
        (sdpa_with_mask, "shortcut"),
        (
            lambda q, k, v, window, causal=False: library.sliding_window_attention(
                q, k, v, window, causal
            ),
            "shortcut",
        ),
        (stub, "not_implemented"),
    ],
    ids=[
        "zeroed_edges",
        "unfold_no_padding",
        "skips_cut_blocks",
        "first_block_unwritten",
        "off_by_one",
        "asymmetric",
        "ignores_causal",
        "each_side",
        "looks_ahead",
        "causal_half_window",
        "causal_when_symmetric",
        "missing_scale",
        "scale_after_softmax",
        "softmax_over_queries",
        "tile_unmasked",
        "tile_filled_with_zero",
        "keys_stop_at_tile_end",
        "output_like_q",
        "block_local_positions",
        "out_at_key_offset",
        "stop_not_clipped",
        "start_not_clipped",
        "dense",
        "sdpa",
        "library",
        "stub",
    ],
)
def test_sliding_window_attention_bug_is_named(bug, key, capsys):
    assert_named_on_seeds(DAY, "sliding_window_attention", bug, key, capsys, seeds=(1, 2))


def test_a_key_start_left_unclipped_is_named_by_every_check():
    """A key range that starts below 0 crashes in several ways (torch's broadcast error, bmm's
    on flattened heads, matmul's on (L, D) tiles): every check names the same mistake."""
    bug = make_tiled(keys_unclipped(at_start=False), right_window)
    for hidden, seed in [(False, 0), (True, 1), (True, 2)]:
        result = report("sliding_window_attention", bug, hidden=hidden, seed=seed)
        assert result.keys == {"range_not_clipped"}, [(r.key, r.message) for r in result.results]


def test_every_block_skipped_on_a_short_sequence_is_named_not_all_zeros():
    """With L < 64 every block's window is cut, so skipping cut blocks returns all zeros: the
    checks on short sequences run it again on a longer one and name the mistake, not 'nothing
    was written'."""
    for hidden, seed in [(False, 0), (True, 1), (True, 2)]:
        result = report("sliding_window_attention", skips_cut_windows, hidden=hidden, seed=seed)
        short = result.results[:3]  # symmetric, causal, leading dims: L <= 48
        assert all(r.key == "drops_edges" and r.hint for r in short), [
            (r.key, r.message) for r in short
        ]


# A k.T in code run through exec: torch's error comes without the line that raised it.
DOT_T_SOURCE = """
def sliding_window_attention(q, k, v, window, causal=False):
    L = q.shape[-2]
    before, after = (window - 1, 0) if causal else (window // 2, window // 2)
    out = q.new_empty(*q.shape[:-1], v.shape[-1])
    for start in range(0, L, 64):
        stop = min(start + 64, L)
        k_start, k_stop = max(0, start - before), min(L, stop + after)
        scores = q[..., start:stop, :] @ k[..., k_start:k_stop, :].T / math.sqrt(q.shape[-1])
        i = torch.arange(start, stop).unsqueeze(-1)
        j = torch.arange(k_start, k_stop)
        scores = scores.masked_fill((j < i - before) | (j > i + after), float("-inf"))
        out[..., start:stop, :] = torch.softmax(scores, -1) @ v[..., k_start:k_stop, :]
    return out
"""


def test_dot_T_is_named_without_the_line_that_raised(capsys):
    namespace = {"math": math, "torch": torch}
    exec(compile(DOT_T_SOURCE, "<attempt>", "exec"), namespace)
    assert_named_on_seeds(
        DAY,
        "sliding_window_attention",
        namespace["sliding_window_attention"],
        "batched_transpose",
        capsys,
        seeds=(1,),
    )


def chunk_keys(extra_left=0, extra_right=0, use_overlap=True):
    def keys(start, stop, L, chunk_size, overlap):
        o = overlap if use_overlap else 0
        return max(0, start - o - extra_left), min(L, stop + o + extra_right)

    return keys


def make_chunked(
    keys=chunk_keys(),
    scale=lambda d: d**-0.5,
    weights_scale=lambda d: 1.0,
    softmax_dim=-1,
):
    """Chunked attention tile by tile with the chunk as the tile (see make_tiled); the defaults
    give a correct one."""

    def chunked_attention(q, k, v, chunk_size, overlap):
        L, d = q.shape[-2], q.shape[-1]
        out = torch.zeros(*q.shape[:-1], v.shape[-1], dtype=q.dtype)
        for start in range(0, L, chunk_size):
            stop = min(start + chunk_size, L)
            k_start, k_stop = keys(start, stop, L, chunk_size, overlap)
            scores = q[..., start:stop, :] @ k[..., k_start:k_stop, :].mT * scale(d)
            weights = torch.softmax(scores, softmax_dim) * weights_scale(d)
            out[..., start:stop, :] = weights @ v[..., k_start:k_stop, :]
        return out

    return chunked_attention


chunk_start_unclipped = make_chunked(lambda s, e, L, c, o: (s - o, min(L, e + o)))


def chunks_with_dot_T(q, k, v, chunk_size, overlap):
    """k.T on a batched tile reverses every dim: torch's shape error names the line."""
    L, tiles = q.shape[-2], []
    for start in range(0, L, chunk_size):
        keys = slice(max(0, start - overlap), min(L, start + chunk_size + overlap))
        scores = q[..., start : start + chunk_size, :] @ k[..., keys, :].T / q.shape[-1] ** 0.5
        tiles.append(torch.softmax(scores, -1) @ v[..., keys, :])
    return torch.cat(tiles, -2)


def only_full_chunks(q, k, v, chunk_size, overlap):
    L = q.shape[-2]
    full = L - L % chunk_size
    return (
        make_chunked()(q[..., :full, :], k[..., :full, :], v[..., :full, :], chunk_size, overlap)
        if full
        else q.new_zeros(*q.shape[:-2], 0, v.shape[-1])
    )


def last_chunk_zero(q, k, v, chunk_size, overlap):
    out = make_chunked()(q, k, v, chunk_size, overlap)
    L = q.shape[-2]
    if L % chunk_size:
        out[..., L - L % chunk_size :, :] = 0
    return out


def dense_chunks(q, k, v, chunk_size, overlap):
    L = q.shape[-2]
    chunk = torch.arange(L) // chunk_size
    j = torch.arange(L)
    mask = (j >= chunk.unsqueeze(-1) * chunk_size - overlap) & (
        j < (chunk.unsqueeze(-1) + 1) * chunk_size + overlap
    )
    scores = (q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])).masked_fill(~mask, float("-inf"))
    return torch.softmax(scores, -1) @ v


@pytest.mark.parametrize(
    "bug, key",
    [
        (make_chunked(lambda s, e, L, c, o: (max(0, s - o), e)), "overlap_one_side"),
        (make_chunked(chunk_keys(extra_right=1)), "overlap_off_by_one"),
        (make_chunked(chunk_keys(use_overlap=False)), "ignores_overlap"),
        (only_full_chunks, "drops_last_chunk"),
        (last_chunk_zero, "drops_last_chunk"),
        (make_chunked(scale=lambda d: 1.0), "missing_scale"),
        (make_chunked(scale=lambda d: 1.0, weights_scale=lambda d: d**-0.5), "scale_after_softmax"),
        (make_chunked(softmax_dim=-2), "softmax_over_queries"),
        (chunk_start_unclipped, "key_start_not_clipped"),
        (chunks_with_dot_T, "batched_transpose"),
        (dense_chunks, "builds_full_matrix"),
        (lambda q, k, v, c, o: banded_attention(q, k, v, 2 * o + 1), "sliding_not_chunked"),
        (stub, "not_implemented"),
    ],
    ids=[
        "one_side",
        "off_by_one",
        "no_overlap",
        "only_full",
        "last_zero",
        "missing_scale",
        "scale_after_softmax",
        "softmax_over_queries",
        "negative_key_start",
        "dot_T",
        "dense",
        "window_per_query",
        "stub",
    ],
)
def test_chunked_attention_bug_is_named(bug, key, capsys):
    assert_named("chunked_attention", bug, key, capsys)


def test_builders_may_not_call_the_library():
    result = report(
        "sliding_window_mask", lambda L, w, causal=False: library.sliding_window_mask(L, w, causal)
    )
    assert result.keys == {"shortcut"} and "course.reference.sparse" in result.results[0].hint


# ----------------------------------------------------------------------------- other correct answers


def comparison_window(L, window, causal=False):
    if window < 1 or L < 1:
        raise ValueError("window and L must be >= 1")
    i, j = torch.arange(L).unsqueeze(-1), torch.arange(L)
    if causal:
        return (j <= i) & (j > i - window)
    return (i - j).abs() <= window // 2


def comparison_strided(L, stride, local_window):
    if stride < 1 or stride > L or local_window < 1:
        raise ValueError("bad stride")
    i, j = torch.arange(L).unsqueeze(-1), torch.arange(L)
    return ((i - j).abs() <= local_window // 2) | (j % stride == 0)


def index_global(L, window, global_idx):
    index = torch.tensor(list(map(int, global_idx)), dtype=torch.long)
    if ((index < 0) | (index >= L)).any() or window < 1:
        raise ValueError("global_idx out of range")
    is_global = torch.zeros(L, dtype=torch.bool)
    is_global[index] = True
    return comparison_window(L, window) | is_global.unsqueeze(-1) | is_global


def gathered_block(L, block_size, layout):
    if block_size < 1:
        raise ValueError("block_size must be >= 1")
    nb = math.ceil(L / block_size)
    if layout.shape != (nb, nb):
        raise ValueError("layout must be (nb, nb)")
    block = torch.arange(L) // block_size
    return layout[block][:, block]


def squaring_reach(mask):
    """Doubling the layer count by squaring, then a binary search: the same answers."""
    L = mask.shape[-1]
    step = (mask | torch.eye(L, dtype=torch.bool)).double()
    powers, reach, n = [step > 0], step > 0, 1
    while not reach.all():
        squared = (reach.double() @ reach.double()) > 0
        if torch.equal(squared, reach):
            return None
        reach, n = squared, 2 * n
        powers.append(reach)
    low, high = n // 2, n  # full at `high` layers, not at `low`
    while high - low > 1:
        mid = (low + high) // 2
        r = step > 0
        for _ in range(mid - 1):
            r = (step @ r.double()) > 0
        low, high = (low, mid) if r.all() else (mid, high)
    return high if n > 1 else 1


@pytest.mark.parametrize(
    "name, impl",
    [
        ("sliding_window_mask", comparison_window),
        ("strided_mask", comparison_strided),
        ("global_local_mask", index_global),
        ("random_mask", ranked_random),
        ("block_sparse_mask", gathered_block),
        ("mask_density", lambda mask: mask.float().mean().item()),
        ("mask_density", lambda mask: torch.count_nonzero(mask).item() / mask.numel()),
        ("mask_density", lambda mask: float(mask.sum(dtype=torch.float64) / mask.numel())),
        ("mask_density", lambda mask: int(mask.sum()) / math.prod(mask.shape)),
        ("random_mask", floyd),
        ("layers_to_full_reach", squaring_reach),
    ],
    ids=[
        "comparisons",
        "strided",
        "global_index",
        "argsort",
        "gathered",
        "mean",
        "count_nonzero",
        "float64_sum",
        "prod_of_shape",
        "floyd",
        "squaring",
    ],
)
def test_other_correct_masks_pass(name, impl):
    for seed in range(5):
        result = report(name, impl, hidden=True, seed=seed)
        assert result.passed, [(r.check, r.message) for r in result.results if not r.passed]


def banded_attention(q, k, v, window, causal=False):
    """A banded implementation written like the library: pad, unfold, mask the padding."""
    L, d = q.shape[-2], q.shape[-1]
    before, after = (window - 1, 0) if causal else (window // 2, window // 2)
    before, after = min(before, L), min(after, L)
    span = before + after + 1
    padded_k = (
        F.pad(k, (0, 0, before, after)).unfold(-2, span, 1).transpose(-2, -1)
    )  # (..., L, span, d)
    padded_v = F.pad(v, (0, 0, before, after)).unfold(-2, span, 1).transpose(-2, -1)
    scores = (q.unsqueeze(-2) @ padded_k.transpose(-2, -1)).squeeze(-2) / math.sqrt(
        d
    )  # (..., L, span)
    position = torch.arange(L).unsqueeze(-1) - before + torch.arange(span)  # key of each slot
    scores = scores.masked_fill((position < 0) | (position >= L), float("-inf"))
    return (torch.softmax(scores, -1).unsqueeze(-2) @ padded_v).squeeze(-2)


def one_query_at_a_time(q, k, v, window, causal=False):
    L = q.shape[-2]
    before, after = (window - 1, 0) if causal else (window // 2, window // 2)
    rows = []
    for i in range(L):
        lo, hi = max(0, i - before), min(L, i + after + 1)
        weights = torch.softmax(
            q[..., i : i + 1, :] @ k[..., lo:hi, :].transpose(-2, -1) / math.sqrt(q.shape[-1]), -1
        )
        rows.append(weights @ v[..., lo:hi, :])
    return torch.cat(rows, dim=-2)


@pytest.mark.parametrize(
    "impl",
    [
        make_swa(),
        banded_attention,
        one_query_at_a_time,
        lambda q, k, v, w, causal=False: make_swa()(
            q.double(), k.double(), v.double(), w, causal
        ).to(q.dtype),
    ],
    ids=["tiles", "banded", "per_query", "float64_inside"],
)
def test_other_correct_sliding_window_attentions_pass(impl):
    for seed in range(1 if impl is one_query_at_a_time else 3):  # one query at a time is slow
        result = report("sliding_window_attention", impl, hidden=True, seed=seed)
        assert result.passed, [(r.check, r.message) for r in result.results if not r.passed]


def test_library_attention_passes_the_checks_without_the_guard(monkeypatch):
    from grader.harness.checking import run

    monkeypatch.setattr("grader.harness.checking.course_references", lambda exercise: {})
    from grader.suites.day05_sparse import EXERCISES as SUITE

    for name in EXERCISES:
        for seed in range(3):
            result = run(
                name, getattr(library, name), SUITE[name].checks, {}, seed=seed, verbose=False
            )
            assert result.passed, (
                name,
                [(r.check, r.message) for r in result.results if not r.passed],
            )


def unfolded_chunks(q, k, v, chunk_size, overlap):
    """Every chunk at once: pad, unfold the keys chunk by chunk, mask the padding."""
    L, d = q.shape[-2], q.shape[-1]
    nb = math.ceil(L / chunk_size)
    span, tail = chunk_size + 2 * overlap, nb * chunk_size - L
    queries = F.pad(q, (0, 0, 0, tail)).unflatten(-2, (nb, chunk_size))  # (..., nb, c, d)
    keys = F.pad(k, (0, 0, overlap, overlap + tail)).unfold(-2, span, chunk_size).transpose(-2, -1)
    values = (
        F.pad(v, (0, 0, overlap, overlap + tail)).unfold(-2, span, chunk_size).transpose(-2, -1)
    )
    position = (
        torch.arange(nb).unsqueeze(-1) * chunk_size - overlap + torch.arange(span)
    )  # (nb, span)
    scores = (queries @ keys.transpose(-2, -1) / math.sqrt(d)).masked_fill(
        ((position < 0) | (position >= L)).unsqueeze(-2), float("-inf")
    )
    return (torch.softmax(scores, -1) @ values).flatten(-3, -2)[..., :L, :]


@pytest.mark.parametrize("impl", [make_chunked(), unfolded_chunks], ids=["tiles", "unfolded"])
def test_other_correct_chunked_attentions_pass(impl):
    for seed in range(3):
        result = report("chunked_attention", impl, hidden=True, seed=seed)
        assert result.passed, [(r.check, r.message) for r in result.results if not r.passed]


# ============================================================================= advanced: learned sparsity


def make_topk(
    axis=-1,
    count=0,
    apply_mask=True,
    renormalise=True,
    largest=True,
    by_scores=False,
    straight_through=False,
    scale=True,
    validate=True,
):
    """A topk_gated_attention with one planted bug (the defaults give a correct one)."""

    def topk_gated_attention(q, k, v, gate_scores, k_keep):
        Lq, Lk, d = q.shape[-2], k.shape[-2], q.shape[-1]
        if validate and (not 1 <= k_keep <= Lk or tuple(gate_scores.shape[-2:]) != (Lq, Lk)):
            raise ValueError("bad k_keep or gate_scores")
        scores = q @ k.transpose(-2, -1) / (math.sqrt(d) if scale else 1.0)
        rank = scores.detach() if by_scores else gate_scores.detach()
        n = min(k_keep + count, rank.shape[axis])
        idx = rank.topk(n, dim=axis, largest=largest).indices
        keep = torch.zeros(rank.shape, dtype=torch.bool).scatter(axis, idx, True)
        if not apply_mask:
            return torch.softmax(scores, -1) @ v
        if not renormalise:
            return (torch.softmax(scores, -1) * keep) @ v
        weights = torch.softmax(scores.masked_fill(~keep, float("-inf")), -1)
        if straight_through:
            soft = torch.softmax(gate_scores, -1)
            weights = weights * (keep + soft - soft.detach())
        return weights @ v

    return topk_gated_attention


def topk_query_loop(q, k, v, gate_scores, k_keep):
    Lk = k.shape[-2]
    if not 1 <= k_keep <= Lk or gate_scores.shape[-1] != Lk:
        raise ValueError("bad k_keep")
    rows = []
    for i in range(q.shape[-2]):
        idx = gate_scores[..., i, :].topk(k_keep, dim=-1).indices  # (..., k)
        keys = k.gather(-2, idx.unsqueeze(-1).expand(*idx.shape, k.shape[-1]))
        values = v.gather(-2, idx.unsqueeze(-1).expand(*idx.shape, v.shape[-1]))
        w = torch.softmax(
            (q[..., i : i + 1, :] @ keys.transpose(-2, -1)) / math.sqrt(q.shape[-1]), -1
        )
        rows.append(w @ values)
    return torch.cat(rows, -2)


def topk_batch_loop(q, k, v, gate_scores, k_keep, every_rank=False):
    """A loop over the first dim, for inputs that have a leading dim (or for all: every_rank)."""
    if q.dim() < 3 and not every_rank:
        return make_topk()(q, k, v, gate_scores, k_keep)
    gate = gate_scores.expand(*q.shape[:-2], *gate_scores.shape[-2:])
    return torch.stack([make_topk()(q[b], k[b], v[b], gate[b], k_keep) for b in range(q.shape[0])])


def tie_break_in_place(q, k, v, gate_scores, k_keep):
    """The Ties paragraph's position-dependent offset, added to the caller's tensor."""
    gate_scores += 1e-6 * torch.arange(gate_scores.shape[-1])
    return make_topk()(q, k, v, gate_scores, k_keep)


@pytest.mark.parametrize(
    "bug, key",
    [
        (make_topk(axis=-2), "topk_wrong_axis"),
        (make_topk(count=-1), "keeps_wrong_count"),
        (make_topk(count=1), "keeps_wrong_count"),
        (make_topk(apply_mask=False), "mask_not_applied"),
        (make_topk(renormalise=False), "not_renormalised"),
        (make_topk(largest=False), "keeps_lowest"),
        (make_topk(by_scores=True), "ignores_gate"),
        (make_topk(straight_through=True), "gradient_through_selection"),
        (make_topk(scale=False), "missing_scale"),
        (make_topk(validate=False), "no_error_for_bad_params"),
        (topk_query_loop, "python_loop"),
        (topk_batch_loop, "loop_over_rows"),
        (functools.partial(topk_batch_loop, every_rank=True), "fixed_rank"),
        (lambda q, k, v, g, n: make_topk()(q, k.detach(), v, g, n), "wrong_gradient"),
        (tie_break_in_place, "modified_input"),
        (stub, "not_implemented"),
    ],
    ids=[
        "wrong_axis",
        "k-1",
        "k+1",
        "no_mask",
        "not_renormalised",
        "lowest",
        "by_scores",
        "straight_through",
        "no_scale",
        "no_error",
        "query_loop",
        "batch_loop",
        "batch_loop_on_(L, D)",
        "detached_k",
        "tie_break_in_place",
        "stub",
    ],
)
def test_topk_gated_attention_bug_is_named(bug, key, capsys):
    assert_named("topk_gated_attention", bug, key, capsys)


def scales_q_in_place(q, k, v, gate_scores, k_keep):
    """q.div_ to save memory: the caller's q changes, and autograd refuses it on a leaf."""
    q.div_(math.sqrt(q.shape[-1]))
    return make_topk(scale=False)(q, k, v, gate_scores, k_keep)


@pytest.mark.parametrize(
    "bug, key",
    [
        (make_topk(axis=-2), "topk_wrong_axis"),
        (make_topk(count=1), "keeps_wrong_count"),
        (make_topk(renormalise=False), "not_renormalised"),
        (make_topk(largest=False), "keeps_lowest"),
        (make_topk(by_scores=True), "ignores_gate"),
        (make_topk(scale=False), "missing_scale"),
        (tie_break_in_place, "modified_input"),
        (scales_q_in_place, "modified_input"),
        (lambda q, k, v, g, n: make_topk()(q, k.detach(), v, g, n), "wrong_gradient"),
    ],
    ids=[
        "wrong_axis",
        "k+1",
        "not_renormalised",
        "lowest",
        "by_scores",
        "no_scale",
        "gate_in_place",
        "q_in_place",
        "detached_k",
    ],
)
def test_topk_gradient_check_names_the_forward_mistake_first(bug, key):
    """A wrong output has wrong gradients too: the gradient check names what is wrong with the
    output, not 'wrong gradients'; and autograd's error for an in-place write into an input that
    requires grad is the input changed in place."""
    for seed in (0, 1, 2):
        found = run_checks(
            "topk_gated_attention",
            bug,
            [learned_checks.topk_gradients],
            {},
            hints=day05.HINTS,
            seed=seed,
            verbose=False,
        )
        assert found.keys == {key}, (seed, [(r.key, r.message) for r in found.results])


def gathered_topk(q, k, v, gate_scores, k_keep):
    """Gather the kept keys and values: (..., Lq, k_keep, d), O(Lq * k_keep) memory."""
    Lq, Lk, d = q.shape[-2], k.shape[-2], q.shape[-1]
    if not 1 <= k_keep <= Lk or tuple(gate_scores.shape[-2:]) != (Lq, Lk):
        raise ValueError("bad k_keep or gate_scores")
    lead = torch.broadcast_shapes(q.shape[:-2], gate_scores.shape[:-2])
    idx = gate_scores.detach().topk(k_keep, -1).indices.expand(*lead, Lq, k_keep)  # (..., Lq, kk)
    keys = k.expand(*lead, Lk, d).unsqueeze(-3).expand(*lead, Lq, Lk, d)
    values = v.expand(*lead, Lk, v.shape[-1]).unsqueeze(-3).expand(*lead, Lq, Lk, v.shape[-1])
    keys = keys.gather(-2, idx.unsqueeze(-1).expand(*idx.shape, d))  # (..., Lq, kk, d)
    values = values.gather(-2, idx.unsqueeze(-1).expand(*idx.shape, v.shape[-1]))
    scores = (keys @ q.unsqueeze(-1)).squeeze(-1) / math.sqrt(d)  # (..., Lq, kk)
    return (torch.softmax(scores, -1).unsqueeze(-2) @ values).squeeze(-2)


def threshold_topk(q, k, v, gate_scores, k_keep):
    """Keep the gate scores >= the k-th largest (the same keys when there are no ties)."""
    if not 1 <= k_keep <= k.shape[-2] or tuple(gate_scores.shape[-2:]) != (
        q.shape[-2],
        k.shape[-2],
    ):
        raise ValueError("bad k_keep or gate_scores")
    g = gate_scores.detach()
    kth = g.topk(k_keep, -1).values[..., -1:]
    scores = (q.double() @ k.double().transpose(-2, -1)) / math.sqrt(q.shape[-1])
    out = torch.softmax(scores.masked_fill(g < kth, float("-inf")), -1) @ v.double()
    return out.to(q.dtype)


def zero_times_gate_topk(q, k, v, gate_scores, k_keep):
    """Adds 0 * gate_scores to the scores, the gate not detached: harmless, the output is the
    same and the gate gets a zero gradient (a beginner's way to keep the gate in the graph)."""
    Lq, Lk = q.shape[-2], k.shape[-2]
    if not 1 <= k_keep <= Lk or tuple(gate_scores.shape[-2:]) != (Lq, Lk):
        raise ValueError("bad k_keep or gate_scores")
    kept = gate_scores.topk(k_keep, -1).indices
    keep = torch.zeros(gate_scores.shape, dtype=torch.bool).scatter(-1, kept, True)
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1]) + 0 * gate_scores  # (..., Lq, Lk)
    return torch.softmax(scores.masked_fill(~keep, float("-inf")), -1) @ v


@pytest.mark.parametrize(
    "impl",
    [gathered_topk, threshold_topk, zero_times_gate_topk],
    ids=["gathered", "threshold", "zero_times_gate"],
)
def test_other_correct_topk_gated_attentions_pass(impl):
    for seed in range(3):
        result = report("topk_gated_attention", impl, hidden=True, seed=seed)
        assert result.passed, [(r.check, r.message) for r in result.results if not r.passed]


def make_adaptive(
    rule=None,
    widths_of=lambda w: w.unsqueeze(-1),
    scale=True,
    validate=True,
    ignore_causal=False,
    check_lq_lk=True,
):
    """An adaptive_window_attention with one planted bug (the defaults give a correct one).
    `rule(i, j, w, causal)` is the mask; w is what `widths_of(widths)` gives."""

    def default(i, j, w, causal):
        return ((j <= i) & (j > i - w)) if causal else ((i - j).abs() <= w // 2)

    rule = rule or default

    def adaptive_window_attention(q, k, v, widths, causal=True):
        L = q.shape[-2]
        if validate and (
            (check_lq_lk and k.shape[-2] != L)
            or widths.dtype.is_floating_point
            or widths.shape[-1] != L
            or (widths < 1).any()
        ):
            raise ValueError("bad widths")
        i, j = torch.arange(L).unsqueeze(-1), torch.arange(L)
        mask = rule(i, j, widths_of(widths), causal and not ignore_causal)
        scores = q @ k.transpose(-2, -1) / (math.sqrt(q.shape[-1]) if scale else 1.0)
        return torch.softmax(scores.masked_fill(~mask, float("-inf")), -1) @ v

    return adaptive_window_attention


adaptive_each_side = make_adaptive(
    rule=lambda i, j, w, c: ((j <= i) & (j > i - w)) if c else ((i - j).abs() <= w)
)


def adaptive_position_loop(q, k, v, widths, causal=True):
    L = q.shape[-2]
    if (
        k.shape[-2] != L
        or widths.dtype.is_floating_point
        or widths.shape[-1] != L
        or (widths < 1).any()
    ):
        raise ValueError("bad widths")
    rows = []
    j = torch.arange(L)
    for i in range(L):
        w = widths[..., i : i + 1]
        keep = ((j <= i) & (j > i - w)) if causal else ((i - j).abs() <= w // 2)  # (..., L)
        s = (q[..., i : i + 1, :] @ k.transpose(-2, -1)).squeeze(-2) / math.sqrt(q.shape[-1])
        rows.append(torch.softmax(s.masked_fill(~keep, float("-inf")), -1).unsqueeze(-2) @ v)
    return torch.cat(rows, -2)


def adaptive_row_loop(q, k, v, widths, causal=True):
    if q.dim() < 3:
        return make_adaptive()(q, k, v, widths, causal)
    widths = widths.expand(*q.shape[:-1])
    return torch.stack(
        [make_adaptive()(q[b], k[b], v[b], widths[b], causal) for b in range(q.shape[0])]
    )


@pytest.mark.parametrize(
    "bug, key",
    [
        (
            make_adaptive(
                lambda i, j, w, c: ((j <= i) & (j >= i - w)) if c else ((i - j).abs() <= w // 2 + 1)
            ),
            "window_off_by_one",
        ),
        (
            make_adaptive(
                lambda i, j, w, c: ((j < i) & (j >= i - w)) if c else ((i - j).abs() <= w // 2)
            ),
            "window_off_by_one",
        ),
        (
            make_adaptive(
                lambda i, j, w, c: ((j >= i) & (j < i + w)) if c else ((i - j).abs() <= w // 2)
            ),
            "causal_looks_ahead",
        ),
        (make_adaptive(ignore_causal=True), "ignores_causal"),
        (
            make_adaptive(rule=lambda i, j, w, c: (j <= i) & (j > i - w)),
            "causal_when_symmetric",
        ),
        (make_adaptive(widths_of=lambda w: w.unsqueeze(-2)), "width_per_key"),
        (make_adaptive(widths_of=lambda w: w.amax()), "single_width"),
        (make_adaptive(widths_of=lambda w: w[..., :1].unsqueeze(-1)), "single_width"),
        (make_adaptive(scale=False), "missing_scale"),
        (make_adaptive(validate=False), "no_error_for_bad_params"),
        (make_adaptive(check_lq_lk=False), "no_error_for_bad_params"),
        (adaptive_each_side, "window_each_side"),
        (
            make_adaptive(
                rule=lambda i, j, w, c: (
                    ((j <= i) & ((j > i - w + 1) | (j == i))) if c else ((i - j).abs() <= w // 2)
                )
            ),
            "window_off_by_one",
        ),
        (adaptive_position_loop, "python_loop"),
        (adaptive_row_loop, "loop_over_rows"),
        (stub, "not_implemented"),
    ],
    ids=[
        "one_too_wide",
        "past_only",
        "future",
        "ignores_causal",
        "causal_when_symmetric",
        "per_key",
        "max_width",
        "first_width",
        "no_scale",
        "no_error",
        "no_lq_lk_check",
        "each_side",
        "narrow_keeping_self",
        "position_loop",
        "row_loop",
        "stub",
    ],
)
def test_adaptive_window_attention_bug_is_named(bug, key, capsys):
    assert_named("adaptive_window_attention", bug, key, capsys)


def test_each_row_loop_hint_shows_its_own_exercise():
    """The hint for a loop over batch rows gives the idiom of the exercise it is about."""
    (topk,), (adaptive,) = (
        {r.hint for r in report(name, bug).results if r.key == "loop_over_rows"}
        for name, bug in [
            ("topk_gated_attention", topk_batch_loop),
            ("adaptive_window_attention", adaptive_row_loop),
        ]
    )
    assert "topk" in topk and "widths" not in topk
    assert "widths" in adaptive and "topk" not in adaptive


def distance_adaptive(q, k, v, widths, causal=True):
    """Distances and float64 inside: the same answers."""
    L = q.shape[-2]
    if (
        k.shape[-2] != L
        or widths.dtype.is_floating_point
        or widths.shape[-1] != L
        or (widths < 1).any()
    ):
        raise ValueError("bad widths")
    distance = torch.arange(L).unsqueeze(-1) - torch.arange(L)  # i - j
    w = widths.unsqueeze(-1)
    keep = ((distance >= 0) & (distance < w)) if causal else (2 * distance.abs() <= w - w % 2)
    scores = (q.double() @ k.double().transpose(-2, -1)) / math.sqrt(q.shape[-1])
    return (torch.softmax(scores.masked_fill(~keep, float("-inf")), -1) @ v.double()).to(q.dtype)


@pytest.mark.parametrize(
    "impl", [make_adaptive(), distance_adaptive], ids=["comparisons", "distances"]
)
def test_other_correct_adaptive_windows_pass(impl):
    for seed in range(3):
        result = report("adaptive_window_attention", impl, hidden=True, seed=seed)
        assert result.passed, [(r.check, r.message) for r in result.results if not r.passed]


@pytest.mark.parametrize(
    "call, match",
    [
        (
            lambda s: s["topk_gated_attention"](*[torch.randn(4, 3)] * 3, torch.randn(4, 4), 0),
            "k_keep",
        ),
        (
            lambda s: s["topk_gated_attention"](*[torch.randn(4, 3)] * 3, torch.randn(4, 4), 5),
            "k_keep",
        ),
        (
            lambda s: s["topk_gated_attention"](*[torch.randn(4, 3)] * 3, torch.randn(3, 4), 2),
            "gate_scores",
        ),
        (
            lambda s: s["adaptive_window_attention"](
                *[torch.randn(4, 3)] * 3, torch.tensor([1, 0, 2, 3])
            ),
            "width",
        ),
        (
            lambda s: s["adaptive_window_attention"](*[torch.randn(4, 3)] * 3, torch.ones(4)),
            "integer",
        ),
        (
            lambda s: s["adaptive_window_attention"](
                *[torch.randn(4, 3)] * 3, torch.ones(3, dtype=torch.long)
            ),
            "widths",
        ),
        (
            lambda s: s["adaptive_window_attention"](
                torch.randn(3, 3),
                torch.randn(4, 3),
                torch.randn(4, 3),
                torch.ones(3, dtype=torch.long),
            ),
            "Lq == Lk",
        ),
    ],
    ids=["k0", "k>Lk", "gate_shape", "width0", "float_widths", "widths_length", "Lq!=Lk"],
)
def test_learned_sparsity_bad_parameters_give_clear_errors(solution, call, match):
    with pytest.raises(ValueError, match=match):
        call(solution)


def test_topk_gated_attention_gradients_reach_kept_keys_only(solution):
    q, k, v = (torch.randn(1, 5, 4, requires_grad=True) for _ in range(3))
    gate = torch.zeros(1, 5, 5)
    gate[..., 1] = gate[..., 3] = 1.0  # every query keeps keys 1 and 3
    gate.requires_grad_(True)
    solution["topk_gated_attention"](q, k, v, gate, 2).sum().backward()
    assert gate.grad is None or not gate.grad.any()
    dropped = [0, 2, 4]
    assert not k.grad[:, dropped].any() and not v.grad[:, dropped].any()
    assert v.grad[:, [1, 3]].abs().sum() > 0


# ============================================================================= advanced: feature-wise attention


def make_columns(
    flatten=False,
    share_first=False,
    scale=lambda d, dh: math.sqrt(dh),
    validate=True,
    per_column_params=True,
    interleave_heads=False,
    interleave_merge=False,
    linear_weights=True,
    merge_heads=True,
    along_time=True,
    wrap=nn.Parameter,
    split_by_reshape=None,
    super_init=True,
    transpose=lambda w: w.transpose(-2, -1),
    project=lambda x, w: x @ w,
):
    """A ColumnwiseAttention with one planted bug (the defaults give a correct one)."""

    class ColumnwiseAttention(nn.Module):
        def __init__(self, num_columns, d, num_heads, shared=True):
            if super_init:
                super().__init__()
            if d % num_heads:
                raise ValueError("d must be divisible by num_heads")
            self.C, self.d, self.H, self.shared = num_columns, d, num_heads, shared
            shape = (d, d) if shared or not per_column_params else (num_columns, d, d)
            for name in ("q_weight", "k_weight", "v_weight", "out_weight"):
                setattr(self, name, wrap(torch.randn(shape) / d**0.5))

        def weight(self, w):
            if self.shared or not per_column_params:
                return w.T if linear_weights else w
            w = w[:1] if share_first else w
            return transpose(w) if linear_weights else w

        def split(self, t, dh):  # (B, C, T, d) -> (B, C, H, T, dh)
            if split_by_reshape is not None:
                return split_by_reshape(t, self.H, dh)
            if interleave_heads:
                return t.unflatten(-1, (dh, self.H)).movedim(-1, -3)
            return t.unflatten(-1, (self.H, dh)).transpose(-3, -2)

        def forward(self, x):
            if validate and (x.dim() != 4 or x.shape[1] != self.C or x.shape[-1] != self.d):
                raise ValueError("expected (batch, columns, seq, d)")
            B, C, T, d = x.shape
            dh = d // self.H
            q, k, v = (
                project(x, self.weight(w)) for w in (self.q_weight, self.k_weight, self.v_weight)
            )
            if flatten:
                q, k, v = (t.reshape(B, 1, C * T, d) for t in (q, k, v))
            if not along_time:
                q, k, v = (t.transpose(1, 2) for t in (q, k, v))
            q, k, v = (self.split(t, dh) for t in (q, k, v))
            s = q @ k.transpose(-2, -1) / scale(d, dh)
            out = torch.softmax(s, -1) @ v  # (B, C, H, T, dh)
            if interleave_merge:
                out = out.movedim(-3, -1)  # (B, C, T, dh, H)
            elif merge_heads:
                out = out.transpose(-3, -2)
            out = out.reshape(B, *q.shape[1:2], -1, d)
            out = out if along_time else out.transpose(1, 2)
            return project(out.reshape(B, C, T, d), self.weight(self.out_weight))

    return ColumnwiseAttention


@pytest.mark.parametrize(
    "bug, key",
    [
        (make_columns(flatten=True), "attends_across_columns"),
        (make_columns(share_first=True), "weights_shared_by_mistake"),
        (make_columns(per_column_params=False), "missing_parameter"),
        (make_columns(scale=lambda d, dh: 1.0), "missing_head_scale"),
        (make_columns(scale=lambda d, dh: math.sqrt(d)), "scale_by_model_width"),
        (make_columns(interleave_heads=True), "heads_interleaved"),
        (make_columns(interleave_heads=True, interleave_merge=True), "heads_interleaved"),
        (make_columns(linear_weights=False), "weight_not_transposed"),
        (make_columns(merge_heads=False), "heads_merged_without_transpose"),
        (
            make_columns(split_by_reshape=lambda t, H, dh: t.reshape(*t.shape[:2], H, -1, dh)),
            "heads_split_by_reshape",
        ),
        (  # reshaped as (dh, T, H), then the axes moved to (H, T, dh)
            make_columns(
                split_by_reshape=lambda t, H, dh: t.reshape(*t.shape[:2], dh, -1, H).permute(
                    0, 1, 4, 3, 2
                )
            ),
            "heads_split_by_reshape",
        ),
        (make_columns(along_time=False), "attends_along_columns"),
        (make_columns(wrap=lambda t: t), "parameter_not_registered"),
        (make_columns(validate=False), "no_error_for_bad_params"),
        (make_columns(super_init=False), "no_super_init"),
        (make_columns(transpose=lambda w: w.permute(2, 1, 0)), "weight_transposed_whole"),  # w.T
        (  # (x.transpose(0, 1) @ w.T).transpose(0, 1): columns first, then the batch
            make_columns(
                transpose=lambda w: w.permute(2, 1, 0),
                project=lambda x, w: (x.transpose(0, 1) @ w).transpose(0, 1),
            ),
            "weight_transposed_whole",
        ),
        (stub, "not_implemented"),
    ],
    ids=[
        "flatten",
        "share_first",
        "shared_params",
        "no_scale",
        "scale_by_d",
        "interleaved",
        "interleaved_both_ways",
        "x_at_w",
        "merge_no_transpose",
        "split_by_reshape",
        "split_by_reshape_dh_first",
        "across_columns",
        "plain_tensors",
        "no_error",
        "no_super_init",
        "per_column_dot_T",
        "per_column_dot_T_columns_first",
        "stub",
    ],
)
def test_columnwise_attention_bug_is_named(bug, key, capsys):
    assert_named_on_seeds(DAY, "ColumnwiseAttention", bug, key, capsys, seeds=(1, 2))


@pytest.mark.parametrize(
    "name, bug, key",
    [
        ("strided_mask", relative_stride, "relative_stride"),
        ("layers_to_full_reach", layers_as_tensor, "tensor_not_int"),
        ("sliding_window_attention", first_block_unwritten, "drops_edges"),
        ("chunked_attention", chunk_start_unclipped, "key_start_not_clipped"),
        ("adaptive_window_attention", adaptive_each_side, "window_each_side"),
    ],
    ids=["relative_stride", "reach_tensor", "first_block", "chunk_start", "adaptive_each_side"],
)
def test_no_check_names_another_mistake(name, bug, key):
    """On its extreme cases (stride = L, window 1, overlap > chunk_size, L below a block) a
    mistake must not be named as another one: each failing check names it, alone or with the
    mistake that gives the same answer there, or names none."""
    description = day05.HINTS[key][0]
    for seed in (0, 1, 2):
        result = report(name, bug, hidden=seed > 0, seed=seed)
        other = [
            (r.key, r.message)
            for r in result.results
            if not r.passed
            and r.key in day05.HINTS
            and r.key != key
            and description not in r.message
        ]
        assert not other and key in result.keys, (seed, other)


def test_two_mistakes_with_one_mask_are_named_together():
    """Every width 1 and causal=False: `w` keys on each side and a window one key too wide both
    give |i - j| <= 1. The check names the two together, rather than neither."""
    result = report("adaptive_window_attention", adaptive_each_side)
    (extremes,) = [r for r in result.results if r.check.startswith("all widths 1")]
    assert not extremes.passed and extremes.key == "window_off_by_one", extremes.message
    for key in ("window_each_side", "window_off_by_one"):
        assert day05.HINTS[key][0] in extremes.message, extremes.message


def test_columnwise_weights_shared_by_mistake_is_named_by_count_and_independence():
    """Per-column parameters registered, but forward always uses column 0's."""
    result = report("ColumnwiseAttention", make_columns(share_first=True))
    failed = {r.check.split(":")[0]: r.key for r in result.results if not r.passed}
    assert set(failed.values()) == {"weights_shared_by_mistake"}, failed
    assert any("parameter count" in check for check in failed)


def einsum_columns(num_columns, d, num_heads, shared=True):
    """Another correct one: einsum projections and F.scaled_dot_product_attention."""

    class ColumnwiseAttention(nn.Module):
        def __init__(self):
            super().__init__()
            if d % num_heads:
                raise ValueError("d must be divisible by num_heads")
            shape = (d, d) if shared else (num_columns, d, d)
            for name in ("q_weight", "k_weight", "v_weight", "out_weight"):
                setattr(self, name, nn.Parameter(torch.randn(shape)))

        def proj(self, x, w):
            return (
                torch.einsum("bctd,ed->bcte", x, w)
                if shared
                else torch.einsum("bctd,ced->bcte", x, w)
            )

        def forward(self, x):
            if x.dim() != 4 or x.shape[1] != num_columns or x.shape[-1] != d:
                raise ValueError("expected (batch, columns, seq, d)")
            B, C, T, _ = x.shape
            q, k, v = (
                self.proj(x, w).reshape(B * C, T, num_heads, d // num_heads).transpose(1, 2)
                for w in (self.q_weight, self.k_weight, self.v_weight)
            )
            out = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(B, C, T, d)
            return self.proj(out, self.out_weight)

    return ColumnwiseAttention()


def test_other_correct_columnwise_attention_passes():
    for seed in range(3):
        result = report("ColumnwiseAttention", einsum_columns, hidden=True, seed=seed)
        assert result.passed, [(r.check, r.message) for r in result.results if not r.passed]


def test_columnwise_bad_shapes_give_clear_errors(solution):
    module = solution["ColumnwiseAttention"](3, 8, 2)
    for shape in [(2, 30, 8), (2, 3, 10, 8, 1), (2, 4, 10, 8), (2, 3, 10, 6)]:
        with pytest.raises(ValueError, match="expected x of shape"):
            module(torch.randn(shape))
    with pytest.raises(ValueError, match="divisible"):
        solution["ColumnwiseAttention"](3, 9, 2)


def test_columnwise_memory_is_c_times_smaller_than_flattened(solution):
    from course.bench import peak_memory

    B, C, T, d, H = 1, 4, 128, 8, 2
    x = torch.randn(B, C, T, d)
    columnwise, flat = (
        solution["ColumnwiseAttention"](C, d, H),
        solution["ColumnwiseAttention"](1, d, H),
    )
    with torch.no_grad():
        per_column = peak_memory(lambda: columnwise(x))
        flattened = peak_memory(lambda: flat(x.reshape(B, 1, C * T, d)))
    for measured, formula in (
        (per_column, 2 * 4 * B * H * C * T**2),
        (flattened, 2 * 4 * B * H * (C * T) ** 2),
    ):
        assert abs(measured / formula - 1) < 0.15, (measured, formula)


@pytest.mark.parametrize(
    "bug, key",
    [
        (make_columns(flatten=True), "attends_across_columns"),
        (make_columns(along_time=False), "attends_along_columns"),
    ],
    ids=["flatten", "across_columns"],
)
def test_columnwise_attention_in_the_wrong_place_is_named_with_per_column_weights(bug, key):
    """The shared=False checks name where attention looks too (each column's own weights, then
    attention across every position or along the columns), not only the shared=True ones."""
    result = report("ColumnwiseAttention", bug)
    per_column = [r for r in result.results if not r.passed and "shared=False" in r.check]
    assert per_column and all(r.key == key for r in per_column), [
        (r.check, r.key, r.message) for r in per_column
    ]


# ----------------------------------------------------------------------------- the notebook's lists

# exercise -> {phrase of the notebook's "The checks recognise: ..." list -> the mistake key, or
# keys, it stands for}. Exercises 6 and 7 share one list, just before mask_density.
WINDOW_MISTAKES = (
    "window_off_by_one",
    "window_each_side",
    "asymmetric_window",
    "ignores_causal",
    "causal_looks_ahead",
    "causal_half_window",
    "causal_when_symmetric",
)
PROMISES = {
    "sliding_window_mask": {
        "a window one key too wide or too narrow": "window_off_by_one",
        r"$w$ keys on each side instead of $\lfloor w/2 \rfloor$": "window_each_side",
        "a symmetric window that reaches further on one side": "asymmetric_window",
        "`causal` ignored or looking ahead": ("ignores_causal", "causal_looks_ahead"),
        r"a causal window of only $\lfloor w/2 \rfloor$ keys back": "causal_half_window",
        "a causal window when `causal=False`": "causal_when_symmetric",
        "no `ValueError` for `window < 1` or `L < 1`": "no_error_for_bad_params",
        "a non-bool mask": "not_bool",
        "a Python loop over positions": "python_loop",
    },
    "strided_mask": {
        "summary columns counted from 1": "stride_from_one",
        "summary rows instead of columns": "strided_rows",
        r"$(i - j) \bmod s = 0$ instead of $j \bmod s = 0$": "relative_stride",
        "a missing local band or missing summary columns": ("missing_local", "missing_summary"),
        "the band AND the summary columns (`&`) instead of OR (`|`)": "band_and_summary",
        "a local band off by one on each side": "local_off_by_one",
        "or one-sided (causal)": "one_sided_local",
        "no `ValueError` for `stride > L`, `stride < 1` or `local_window < 1`": (
            "no_error_for_bad_params"
        ),
        "a Python loop over positions": "python_loop",
    },
    "global_local_mask": {
        "global tokens that attend everywhere but are not attended (rows only)": (
            "global_rows_only"
        ),
        "or the reverse (columns only)": "global_cols_only",
        "a window off by one": "window_off_by_one",
        "off by one, causal, or": "one_sided_window",
        "or with $w$ keys on each side": "window_each_side",
        "no `ValueError` for an index outside $[0, L)$ (a negative one too": (
            "no_error_for_bad_params"
        ),
        "an empty `global_idx` that crashes": "empty_global_idx",
        "a Python loop over positions": "python_loop",
    },
    "random_mask": {
        "rows with other than $r$ keys (drawn with replacement)": "not_exactly_num_random",
        "masks that change for the same generator state": "not_reproducible",
        "masks that do not change at all": "not_random",
        "the same keys for every query": "same_keys_every_row",
        "keys drawn per key column instead of per query": "keys_per_column",
        "keys that are not uniform": "not_uniform",
        "no `ValueError` for $r > L$ or $r < 0$": "no_error_for_bad_params",
        "a Python loop over positions": "python_loop",
    },
    "block_sparse_mask": {
        "the layout transposed": "layout_transposed",
        "tiled (`repeat`) instead of expanded (`repeat_interleave`)": "tiled_not_expanded",
        "key columns indexed without `// block_size`": "columns_not_blocked",
        "not cropped to $L$": "not_cropped",
        "or cropped from the wrong end": "cropped_from_the_end",
        "a valid layout rejected": "rejects_valid_layout",
        "no `ValueError` for a layout of the wrong shape or `block_size < 1`": (
            "no_error_for_bad_params"
        ),
        "a Python loop over positions": "python_loop",
    },
    "mask_density": {
        "a count instead of a fraction": "count_not_fraction",
        "(or per row": "per_row_count",
        "or over one side squared)": "square_count",
        "the density of the first row only (`mask[0]`)": "first_row_only",
        "a mean over one dim that leaves several numbers for `.item()`": "mean_over_one_dim",
        "the fraction of False entries": "fraction_of_false",
        "integer division": "integer_division",
        "float16 rounding": "low_precision",
        "`mean()` of a bool tensor": "mean_of_bool",
        "a 0-d tensor instead of a Python float": "tensor_not_float",
    },
    "layers_to_full_reach": {
        "reach through the mask alone without $I$": "forgot_self",
        "a loop that never stops (stopped after 10 s: no exit when full reach never happens": (
            "never_stops"
        ),
        "or a reach without $I$ that cycles": "cycles_without_self",
        "a matrix product of bool tensors": "bool_matmul",
        r"the number of squarings $R \leftarrow R R$ counted instead of the layers": (
            "counts_squarings"
        ),
        "a layer count one off": "off_by_one_layers",
        "a number where the answer is `None`": "should_be_none",
    },
    "sliding_window_attention": {
        "every window mistake of exercise 1": WINDOW_MISTAKES,
        r"a missing $1/\sqrt{d}$": "missing_scale",
        "or one applied to the weights after the softmax": "scale_after_softmax",
        "a softmax over the queries of a tile (`dim=-2`)": "softmax_over_queries",
        "an output allocated like `q`": "output_like_q",
        "`.T` on a batched tile": "batched_transpose",
        "dropped edge queries (also whole blocks skipped": "drops_edges",
        "block bookkeeping that is right for the first block only": "later_blocks_wrong",
        "any tensor with $L^2$ bytes or more": "builds_full_matrix",
    },
    "chunked_attention": {
        "overlap on one side only": "overlap_one_side",
        "a key range one too long or short at an end": "overlap_off_by_one",
        "overlap ignored": "ignores_overlap",
        "a window around each query instead of around its chunk": "sliding_not_chunked",
        "a dropped last chunk": "drops_last_chunk",
        "a first chunk whose key slice starts below 0": "key_start_not_clipped",
        "a softmax over the queries of a tile": "softmax_over_queries",
        r"a missing $1/\sqrt d$": "missing_scale",
        "(or one after the softmax)": "scale_after_softmax",
        "`.T` on a batched tile": "batched_transpose",
        "any $L^2$-byte tensor": "builds_full_matrix",
    },
    "topk_gated_attention": {
        "top-$k$ over the queries (`dim=-2`) instead of the keys": "topk_wrong_axis",
        "$k-1$ or $k+1$ keys kept": "keeps_wrong_count",
        "the lowest-gated keys": "keeps_lowest",
        r"keys chosen by $q \cdot k$ instead of the gate": "ignores_gate",
        "a softmax over all keys (mask not applied)": "mask_not_applied",
        "the full softmax zeroed afterwards (not renormalised)": "not_renormalised",
        r"a missing $1/\sqrt d$": "missing_scale",
        "a gradient reaching `gate_scores`": "gradient_through_selection",
        "wrong gradients for $q, k, v$": "wrong_gradient",
        "a Python loop over queries": "python_loop",
        "or over batch rows": "loop_over_rows",
        "the caller's `gate_scores` (or `q`, `k`, `v`) changed in place": "modified_input",
        "bad `k_keep` or gate shapes accepted without a `ValueError`": ("no_error_for_bad_params"),
    },
    "adaptive_window_attention": {
        "a window one key too wide or too narrow": "window_off_by_one",
        r"$w$ keys on each side instead of $\lfloor w/2 \rfloor$": "window_each_side",
        "a window that looks at the future instead of the past": "causal_looks_ahead",
        "causal ignored": "ignores_causal",
        "(or applied when `causal=False`)": "causal_when_symmetric",
        "each *key's* width used instead of each query's": "width_per_key",
        "one width for all queries": "single_width",
        r"a missing $1/\sqrt d$": "missing_scale",
        "a Python loop over positions": "python_loop",
        "over positions or rows": "loop_over_rows",
        r"bad widths or $L_q \ne L_k$ accepted without a `ValueError`": "no_error_for_bad_params",
    },
    "ColumnwiseAttention": {
        "columns flattened into the sequence (attention across columns)": (
            "attends_across_columns"
        ),
        "per-column weights that are really shared": "weights_shared_by_mistake",
        "a parameter count of $4d^2$": "weights_shared_by_mistake",
        "changing `v_weight[c]` moving other columns than $c$": "weights_shared_by_mistake",
        "leakage (perturbing one input column changes another output column)": (
            "attends_across_columns"
        ),
        "attention across the columns at each time step (the wrong axis)": (
            "attends_along_columns"
        ),
        r"a missing $1/\sqrt{d_h}$": "missing_head_scale",
        r"or $1/\sqrt{d}$ (the model width) in its place": "scale_by_model_width",
        "heads interleaved (features split as $(d_h, H)$)": "heads_interleaved",
        "heads merged without moving $H$ back next to $d_h$": "heads_merged_without_transpose",
        r"$x W$ instead of $x W^\top$": "weight_not_transposed",
        "`.T` on a `(num_columns, d, d)` weight": "weight_transposed_whole",
        "`super().__init__()` never called": "no_super_init",
        "plain tensors instead of `nn.Parameter`s": "parameter_not_registered",
        "missing or mis-shaped parameters": "missing_parameter",
        "wrong ranks or shapes accepted without a `ValueError`": "no_error_for_bad_params",
    },
}
# The cell whose list holds an exercise's phrases, where it is not the exercise's own.
LISTED_BEFORE = {"layers_to_full_reach": "mask_density"}
# The planted-bug tests parametrized over ("bug, key"), with their exercise.
PLANTED_BUG_TESTS = [
    (test_sliding_window_mask_bug_is_named, "sliding_window_mask"),
    (test_strided_mask_bug_is_named, "strided_mask"),
    (test_global_local_mask_bug_is_named, "global_local_mask"),
    (test_random_mask_bug_is_named, "random_mask"),
    (test_block_sparse_mask_bug_is_named, "block_sparse_mask"),
    (test_mask_density_bug_is_named, "mask_density"),
    (test_layers_to_full_reach_bug_is_named, "layers_to_full_reach"),
    (test_sliding_window_attention_bug_is_named, "sliding_window_attention"),
    (test_chunked_attention_bug_is_named, "chunked_attention"),
    (test_topk_gated_attention_bug_is_named, "topk_gated_attention"),
    (test_topk_gradient_check_names_the_forward_mistake_first, "topk_gated_attention"),
    (test_adaptive_window_attention_bug_is_named, "adaptive_window_attention"),
    (test_columnwise_attention_bug_is_named, "ColumnwiseAttention"),
    (
        test_columnwise_attention_in_the_wrong_place_is_named_with_per_column_weights,
        "ColumnwiseAttention",
    ),
]
# The single planted-bug tests: (exercise, key).
SINGLE_PLANTED_BUGS = [
    ("layers_to_full_reach", "cycles_without_self"),  # test_a_reach_that_cycles_is_stopped_...
    ("sliding_window_attention", "batched_transpose"),  # test_dot_T_is_named_without_the_line_...
]


def keys_planted(name) -> set:
    """The keys the planted bugs of exercise `name` are named under."""
    keys = {
        key
        for test, exercise in PLANTED_BUG_TESTS
        if exercise == name
        for key in planted_keys(test)
    }
    return keys | {key for exercise, key in SINGLE_PLANTED_BUGS if exercise == name}


@pytest.mark.parametrize("name, phrase", promised(PROMISES))
def test_the_notebook_lists_only_mistakes_the_checks_name(name, phrase):
    cell = LISTED_BEFORE.get(name, name)
    promises = {cell: PROMISES[name]}
    assert_promise_kept(DAY, promises, cell, phrase, keys_planted(name))
