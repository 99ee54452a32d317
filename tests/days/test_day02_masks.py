"""The day02 check suite, tested: the solution passes on every seed, each planted bug is caught
with its named hint, and correct implementations written differently pass too."""

import functools
import math

import nbformat
import pytest
import torch
import torch.nn.functional as F

import course.reference.masks
from course.reference.sdpa import stable_softmax
from grader import check
from helpers import (
    ROOT,
    assert_mistake_named,
    assert_promise_kept,
    day_report,
    planted_keys,
    promised,
)

DAY = "day02-masks"

# For tests/test_nbgrader_e2e.py: a top-left causal mask (what is_causal=True does) costs
# causal_mask's visible and hidden points (2 + 1), and the feedback names the mistake.
PLANTED_SUBMISSION = {
    "cell": "causal_mask",
    "old": "torch.arange(lq, device=device)[:, None] + (lk - lq)",
    "new": "torch.arange(lq, device=device)[:, None]",
    "points_lost": 3,
    "hint": "the course's causal mask is bottom-right aligned",
}


report = functools.partial(day_report, DAY)
assert_named = functools.partial(assert_mistake_named, DAY)


def assert_named_on_hidden_seeds(name, bug, key, seeds=range(1, 11)):
    """Hidden tests too: the same mistake is named whatever shapes are drawn."""
    for seed in seeds:
        result = report(name, bug, hidden=True, seed=seed)
        assert key in result.keys, (seed, [(r.key, r.message) for r in result.results])


def stub(*args, **kwargs):
    raise NotImplementedError()


# ----------------------------------------------------------------------------- the solution


def test_check_prints_a_verdict_per_check(solution, capsys):
    check(DAY, "masked_attention", solution["masked_attention"])
    printed = capsys.readouterr().out
    assert printed.count("✓") == 8 and "✗" not in printed


def test_planted_submission_is_the_named_top_left_mistake(solution):
    namespace = {"torch": torch}
    source = solution_source("causal_mask").replace(
        PLANTED_SUBMISSION["old"], PLANTED_SUBMISSION["new"]
    )
    exec(source, namespace)
    result = report("causal_mask", namespace["causal_mask"])
    assert "top_left_causal" in result.keys
    assert any(PLANTED_SUBMISSION["hint"] in r.hint for r in result.results)


def solution_source(grade_id):
    notebook = nbformat.read(ROOT / "solutions" / DAY / f"{DAY}.ipynb", as_version=4)
    (cell,) = [
        c for c in notebook.cells if c.metadata.get("nbgrader", {}).get("grade_id") == grade_id
    ]
    assert PLANTED_SUBMISSION["old"] in cell.source or grade_id != PLANTED_SUBMISSION["cell"]
    return cell.source


# ----------------------------------------------------------------------------- causal_mask


def tril_mask(diagonal):
    """A causal mask built with tril and the given diagonal (lq, lk -> diagonal)."""

    def mask(lq, lk=None, device=None):
        lk = lq if lk is None else lk
        return torch.ones(lq, lk, dtype=torch.bool, device=device).tril(diagonal=diagonal(lq, lk))

    return mask


bottom_right = tril_mask(lambda lq, lk: lk - lq)


def causal_loop_with_key_zero(lq, lk=None, device=None):
    """Rows before every key (lq > lk) still get key 0: a slice end clamped at 0, plus one."""
    lk = lq if lk is None else lk
    mask = torch.zeros(lq, lk, dtype=torch.bool, device=device)
    for i in range(lq):
        mask[i, : max(lk - lq + i, 0) + 1] = True
    return mask


def causal_from_positions(query_start=0, rows_are_keys=False, offset=lambda lq, lk: lk - lq):
    """Positions compared with torch.arange, as the notebook suggests, with one step changed."""

    def mask(lq, lk=None, device=None):
        lk = lq if lk is None else lk
        queries = torch.arange(query_start, query_start + lq, device=device) + offset(lq, lk)
        keys = torch.arange(lk, device=device)
        if rows_are_keys:  # (lk, lq)
            return keys[:, None] <= queries[None, :]
        return keys[None, :] <= queries[:, None]  # (lq, lk)

    return mask


def causal_keys_from_1(lq, lk=None, device=None):
    """Key positions 1 .. lk with `<=`: the same mask as one without its diagonal."""
    lk = lq if lk is None else lk
    queries = torch.arange(lq, device=device)[:, None] + (lk - lq)
    return torch.arange(1, lk + 1, device=device)[None, :] <= queries


def causal_square_then_sliced(lq, lk=None, device=None):
    """The last lq rows of an (lk, lk) tril: right for lq <= lk, lk rows only for lq > lk."""
    lk = lq if lk is None else lk
    return torch.ones(lk, lk, dtype=torch.bool, device=device).tril()[-lq:]


def causal_device_for_queries_only(lq, lk=None, device=None):
    """device= passed to one torch.arange: on 'meta', the comparison meets a CPU tensor."""
    lk = lq if lk is None else lk
    queries = torch.arange(lq, device=device)[:, None] + (lk - lq)
    return torch.arange(lk)[None, :] <= queries


def check_keys(name, impl, seed=0, hidden=False) -> dict:
    """check description -> the key of its mistake ('' when it passed)."""
    result = report(name, impl, hidden=hidden, seed=seed)
    return {r.check: r.key for r in result.results}


@pytest.mark.parametrize(
    "bug, key",
    [
        (lambda lq, lk=None, device=None: ~bottom_right(lq, lk, device), "inverted_mask"),
        (tril_mask(lambda lq, lk: 0), "top_left_causal"),
        (tril_mask(lambda lq, lk: lk - lq - 1), "excludes_diagonal"),
        (
            lambda lq, lk=None, device=None: torch.ones(
                lq, lq if lk is None else lk, dtype=torch.bool, device=device
            ).triu(),
            "upper_triangular",
        ),
        (lambda lq, lk=None, device=None: bottom_right(lq, lk, device).float(), "not_boolean"),
        (lambda lq, lk=None, device=None: bottom_right(lq, lk), "ignores_device"),
        (lambda lq, lk=None, device=None: bottom_right(lq, lk).T, "swapped_lengths"),
        (lambda lq, lk, device=None: bottom_right(lq, lk, device), "lk_none_unhandled"),
        (tril_mask(lambda lq, lk: lq - lk), "offset_sign"),
        (causal_loop_with_key_zero, "first_key_always_visible"),
        (lambda lq, lk=None, device=None: bottom_right(lq, lk, device)[None, None], "extra_dims"),
        (lambda lq, lk=None, device=None: bottom_right(lq, lk, device).long(), "not_boolean"),
        (tril_mask(lambda lq, lk: lk - lq + 1), "shifted_by_one"),
        (causal_from_positions(query_start=1), "shifted_by_one"),
        (causal_from_positions(rows_are_keys=True), "swapped_lengths"),
        (causal_from_positions(offset=lambda lq, lk: lq - lk), "offset_sign"),
        (
            lambda lq, lk=None, device=None: bottom_right(lq, lk).to(torch.device(device)),
            "device_none_unhandled",
        ),
        (causal_keys_from_1, "excludes_diagonal"),
        (causal_square_then_sliced, "square_then_sliced"),
        (causal_device_for_queries_only, "ignores_device"),
        (stub, "not_implemented"),
    ],
    ids=[
        "inverted",
        "top_left",
        "no_diagonal",
        "upper",
        "float",
        "ignores_device",
        "transposed",
        "lk_required",
        "offset_sign",
        "key_zero_always",
        "extra_dims",
        "long",
        "shifted_by_one",
        "positions_from_1",
        "rows_are_keys",
        "arange_offset_sign",
        "device_none",
        "keys_from_1",
        "square_then_sliced",
        "device_for_one_arange",
        "stub",
    ],
)
def test_causal_mask_bug_is_named(bug, key, capsys):
    assert_named("causal_mask", bug, key, capsys)
    assert_named_on_hidden_seeds("causal_mask", bug, key, seeds=range(1, 4))


def test_top_left_alignment_is_named_on_every_hidden_seed():
    assert_named_on_hidden_seeds("causal_mask", tril_mask(lambda lq, lk: 0), "top_left_causal")


@pytest.mark.parametrize("seed", range(4))
def test_flipped_offset_is_not_called_inverted_for_one_query(seed):
    """causal_mask(1, lk) is a row of False both when the offset's sign is flipped and when the
    mask is inverted; a square mask that is right tells them apart."""
    keys = check_keys("causal_mask", causal_from_positions(offset=lambda lq, lk: lq - lk), seed)
    (one_query,) = [key for check, key in keys.items() if check.startswith("lq = 1")]
    assert one_query == "offset_sign"
    inverted = check_keys("causal_mask", lambda lq, lk=None, device=None: ~bottom_right(lq, lk))
    assert set(inverted.values()) - {""} <= {"inverted_mask", "ignores_device"}


@pytest.mark.parametrize("seed", range(4))
def test_rows_as_keys_are_named_on_every_check(seed):
    """(lk, lq) is named by its shape when lq != lk; square, it is the upper triangle."""
    keys = check_keys("causal_mask", causal_from_positions(rows_are_keys=True), seed, seed > 0)
    assert set(keys.values()) <= {"swapped_lengths", "upper_triangular"}, keys
    assert "swapped_lengths" in keys.values()


def test_swapped_lengths_are_named():
    def swapped(lq, lk=None, device=None):
        lk = lq if lk is None else lk
        return torch.ones(lk, lq, dtype=torch.bool, device=device).tril(diagonal=lq - lk)

    assert "swapped_lengths" in report("causal_mask", swapped).keys


def test_library_causal_mask_is_refused():
    result = report(
        "causal_mask",
        lambda lq, lk=None, device=None: course.reference.masks.causal_mask(lq, lk, device),
    )
    assert result.keys == {"shortcut"}


def causal_from_python_lists(lq, lk=None, device=None):
    """Nested Python loops, then torch.tensor(..., device=device)."""
    lk = lq if lk is None else lk
    rows = [[j <= lk - lq + i for j in range(lk)] for i in range(lq)]
    return torch.tensor(rows, dtype=torch.bool, device=device).reshape(lq, lk)


def causal_from_position_differences(lq, lk=None, device=None):
    """Query minus key position, at least lq - lk; `lk or lq` for a left-out lk."""
    lk = lk or lq
    queries = torch.arange(lq, device=device).unsqueeze(1)
    return queries - torch.arange(lk, device=device).unsqueeze(0) >= lq - lk


@pytest.mark.parametrize(
    "mask",
    [
        bottom_right,
        lambda lq, lk=None, device=None: (
            torch.arange(lq if lk is None else lk, device=device)
            <= torch.arange(lq, device=device)[:, None] + ((lq if lk is None else lk) - lq)
        ),
        lambda lq, lk=None, device=None: (
            torch.ones(lq, lq if lk is None else lk, device=device)
            .tril((lq if lk is None else lk) - lq)
            .bool()
        ),
        lambda lq, lk=None, device=None: (
            ~torch.ones(lq, lq if lk is None else lk, dtype=torch.bool, device=device).triu(
                (lq if lk is None else lk) - lq + 1
            )
        ),
        causal_from_python_lists,
        causal_from_position_differences,
    ],
    ids=["tril_bool", "arange", "tril_float_then_bool", "not_triu", "python_lists", "differences"],
)
def test_other_correct_causal_masks_pass(mask):
    for seed in range(5):
        assert report("causal_mask", mask, hidden=True, seed=seed).passed


# ----------------------------------------------------------------------------- padding_mask


def padding(compare, positions=lambda n: torch.arange(n)):
    return lambda lengths, max_len: compare(positions(max_len)[None, :], lengths[:, None])


def padding_loop_on_the_cpu(lengths, max_len):
    """A loop that reads lengths' values, so it cannot run on 'meta', with no device=."""
    mask = torch.zeros(len(lengths), max_len, dtype=torch.bool)
    for b in range(len(lengths)):
        mask[b, : lengths[b]] = True
    return mask


def lengths_unsqueezed_in_place(lengths, max_len):
    """Right mask; the caller's lengths becomes (B, 1)."""
    return torch.arange(max_len, device=lengths.device) < lengths.unsqueeze_(1)


@pytest.mark.parametrize(
    "bug, key",
    [
        (padding(lambda p, n: p >= n), "inverted_mask"),
        (padding(lambda p, n: p <= n), "off_by_one"),
        (padding(lambda p, n: p < n - 1), "off_by_one"),
        (
            lambda lengths, max_len: torch.arange(max_len)[:, None] < lengths[None, :],
            "padding_transposed",
        ),
        (padding(lambda p, n: p >= p.shape[-1] - n), "left_padded"),
        (lambda lengths, max_len: (torch.arange(max_len) < lengths[:, None]).long(), "not_boolean"),
        (lambda lengths, max_len: torch.arange(max_len) < lengths, "padding_no_unsqueeze"),
        (
            lambda lengths, max_len: torch.arange(int(lengths.max()))[None, :] < lengths[:, None],
            "width_from_lengths",
        ),
        (
            lambda lengths, max_len: on_device(lengths, max_len)[:, None, None, :],
            "extra_dims",
        ),
        (padding(lambda p, n: p < n), "ignores_device"),
        (lambda lengths, max_len: on_device(lengths.cpu(), max_len), "ignores_device"),
        (padding_loop_on_the_cpu, "ignores_device"),
        (lengths_unsqueezed_in_place, "modified_input"),
        (
            padding(lambda p, n: p < n, positions=lambda n: torch.arange(n + 1)),
            "range_includes_end",
        ),
        (stub, "not_implemented"),
    ],
    ids=[
        "inverted",
        "le",
        "minus_one",
        "transposed",
        "left",
        "long",
        "no_broadcast",
        "width_from_lengths",
        "keys_4d",
        "ignores_device",
        "lengths_to_cpu",
        "loop_on_the_cpu",
        "unsqueezed_in_place",
        "range_includes_end",
        "stub",
    ],
)
def test_padding_mask_bug_is_named(bug, key, capsys):
    assert_named("padding_mask", bug, key, capsys)
    assert_named_on_hidden_seeds("padding_mask", bug, key, seeds=range(1, 4))


@pytest.mark.parametrize(
    "name, crash",
    [
        ("padding_mask", lambda lengths, max_len: lengths.shape[1]),  # IndexError
        ("to_additive_mask", lambda mask, dtype: torch.iinfo(dtype)),  # TypeError
        ("to_additive_mask", lambda mask, dtype: (mask - 1).to(dtype)),  # bool subtraction
    ],
    ids=["padding_index_error", "additive_iinfo", "additive_bool_minus"],
)
def test_a_function_that_always_raises_passes_no_check(name, crash):
    """The 'meta' device check too: a crash there is not excused as code that reads values."""
    result = report(name, crash)
    assert {r.key for r in result.results} == {"raised"}, [
        (r.key, r.message) for r in result.results
    ]


def on_device(lengths, max_len):
    """The right padding mask, on lengths' device."""
    return torch.arange(max_len, device=lengths.device)[None, :] < lengths[:, None]


def positions_against_lengths(lengths, max_len):
    return torch.arange(max_len, device=lengths.device) < lengths  # (max_len,) vs (B,)


@pytest.mark.parametrize("seed", range(4))
def test_one_sequence_without_a_column_is_not_called_extra_dims(seed):
    """B = 1: positions < lengths runs and gives (max_len,), a dim short, not extra dims."""
    keys = check_keys("padding_mask", positions_against_lengths, seed, seed > 0)
    assert keys["B = 1, and max_len longer than every length"] == "padding_no_unsqueeze"


def test_library_padding_mask_is_refused():
    assert report("padding_mask", course.reference.masks.padding_mask).keys == {"shortcut"}


def padding_loop_indexing_with_tensors(lengths, max_len):
    """A loop that slices with lengths[b], a tensor, and makes the mask on lengths' device."""
    mask = torch.zeros(len(lengths), max_len, dtype=torch.bool, device=lengths.device)
    for b in range(len(lengths)):
        mask[b, : lengths[b]] = True
    return mask


def padding_from_python_lists(lengths, max_len):
    """A list comprehension over lengths.tolist(), then torch.tensor on lengths' device."""
    rows = [[position < length for position in range(max_len)] for length in lengths.tolist()]
    return torch.tensor(rows, dtype=torch.bool, device=lengths.device).reshape(len(rows), max_len)


def padding_loop(lengths, max_len):
    mask = torch.zeros(len(lengths), max_len, dtype=torch.bool, device=lengths.device)
    for b, length in enumerate(lengths.tolist()):
        mask[b, :length] = True
    return mask


@pytest.mark.parametrize(
    "mask",
    [
        padding_loop,
        lambda lengths, max_len: (
            torch.arange(max_len, device=lengths.device).expand(len(lengths), max_len)
            < lengths.unsqueeze(1)
        ),
        lambda lengths, max_len: (
            torch.ones(len(lengths), max_len, device=lengths.device).cumsum(-1) <= lengths[:, None]
        ),
        lambda lengths, max_len: (
            F.one_hot(lengths.long(), max_len + 1).cumsum(-1)[:, :max_len] == 0
        ),
        lambda lengths, max_len: torch.ones(
            max_len + 1, max_len, dtype=torch.bool, device=lengths.device
        ).tril(diagonal=-1)[lengths.long()],
        lambda lengths, max_len: (
            ~F.one_hot(lengths.long(), max_len + 1).cumsum(-1)[:, :max_len].bool()
        ),
        lambda lengths, max_len: torch.lt(
            torch.arange(max_len, device=lengths.device).unsqueeze(0), lengths.unsqueeze(1)
        ),
        lambda lengths, max_len: (
            torch.arange(1, max_len + 1, device=lengths.device) <= lengths.unsqueeze(1)
        ),
        lambda lengths, max_len: torch.arange(max_len).to(lengths.device) < lengths[:, None],
        padding_loop_indexing_with_tensors,
        lambda lengths, max_len: (
            lengths.unsqueeze(1)
            > torch.arange(max_len, device=lengths.device).expand(lengths.shape[0], max_len)
        ),
        padding_from_python_lists,
    ],
    ids=[
        "loop",
        "expand",
        "cumsum",
        "one_hot",
        "lookup_table",
        "one_hot_inverted",
        "torch_lt",
        "positions_from_1",
        "arange_then_to",
        "loop_tensor_index",
        "lengths_greater",
        "python_lists",
    ],
)
def test_other_correct_padding_masks_pass(mask):
    for seed in range(5):
        assert report("padding_mask", mask, hidden=True, seed=seed).passed


# ----------------------------------------------------------------------------- to_additive_mask


def additive(value):
    return lambda mask, dtype: torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(
        ~mask, value(dtype)
    )


def additive_in_float32(mask, dtype):
    """dtype= forgotten: float32 zeros, into which float64's minimum cannot be written."""
    return torch.zeros(mask.shape, device=mask.device).masked_fill(~mask, torch.finfo(dtype).min)


def additive_inverting_in_place(mask, dtype):
    """Right values; the caller's mask is inverted."""
    blocked = mask.logical_not_()
    zeros = torch.zeros(mask.shape, dtype=dtype, device=mask.device)
    return zeros.masked_fill(blocked, torch.finfo(dtype).min)


@pytest.mark.parametrize("seed", range(4))
def test_forgotten_dtype_is_not_called_float16_overflow(seed):
    keys = check_keys("to_additive_mask", additive_in_float32, seed, seed > 0)
    assert set(keys.values()) - {""} == {"wrong_dtype"}, keys


@pytest.mark.parametrize(
    "bug, key",
    [
        (
            lambda mask, dtype: torch.zeros(mask.shape, dtype=dtype).masked_fill(
                mask, torch.finfo(dtype).min
            ),
            "inverted_mask",
        ),
        (additive(lambda dtype: -math.inf), "additive_neg_inf"),
        (additive(lambda dtype: -1e4), "not_dtype_min"),
        (lambda mask, dtype: mask.to(dtype), "not_additive"),
        (
            lambda mask, dtype: torch.zeros(mask.shape).masked_fill(
                ~mask, torch.finfo(torch.float32).min
            ),
            "wrong_dtype",
        ),
        (additive(lambda dtype: torch.finfo(dtype).max), "additive_positive"),
        (additive(lambda dtype: -torch.finfo(dtype).tiny), "finfo_tiny"),
        (additive(lambda dtype: torch.finfo(dtype).tiny), "finfo_tiny"),
        (additive_in_float32, "wrong_dtype"),
        (additive_inverting_in_place, "modified_input"),
        (
            lambda mask, dtype: mask.to(dtype).masked_fill(~mask, torch.finfo(dtype).min),
            "ones_where_allowed",
        ),
        (additive(lambda dtype: torch.finfo(dtype).min / 2), "not_dtype_min"),
        (
            lambda mask, dtype: torch.zeros(mask.shape, dtype=dtype).masked_fill(
                ~mask, torch.finfo(dtype).min
            ),
            "ignores_device",
        ),
        (
            lambda mask, dtype: additive(lambda dtype: torch.finfo(dtype).min)(mask.cpu(), dtype),
            "ignores_device",
        ),
        (stub, "not_implemented"),
    ],
    ids=[
        "inverted",
        "neg_inf",
        "minus_1e4",
        "zero_one",
        "float32_always",
        "finfo_max",
        "finfo_tiny",
        "plus_finfo_tiny",
        "no_dtype",
        "logical_not_in_place",
        "ones_where_allowed",
        "half_the_minimum",
        "ignores_device",
        "mask_to_cpu",
        "stub",
    ],
)
def test_to_additive_mask_bug_is_named(bug, key, capsys):
    assert_named("to_additive_mask", bug, key, capsys)
    assert_named_on_hidden_seeds("to_additive_mask", bug, key, seeds=range(1, 4))


def minus_1e9_where(mask, dtype):
    return torch.where(mask, 0.0, -1e9).to(dtype)  # float16: silently -inf


@pytest.mark.parametrize(
    "bug",
    [
        minus_1e9_where,
        additive(lambda dtype: -1e9),  # float16: masked_fill refuses, "without overflow"
        additive(lambda dtype: torch.finfo(torch.float32).min),
    ],
    ids=["where_then_cast", "masked_fill", "float32_min"],
)
def test_float16_overflow_is_named(bug, capsys):
    assert_named("to_additive_mask", bug, "float16_overflow", capsys)


def additive_full_like_then_index(mask, dtype):
    out = torch.full_like(mask, torch.finfo(dtype).min, dtype=dtype)
    out[mask] = 0
    return out


def additive_by_index_assignment(mask, dtype):
    out = mask.to(dtype)
    out[out == 0] = torch.finfo(dtype).min
    out[out == 1] = 0
    return out


@pytest.mark.parametrize(
    "impl",
    [
        lambda mask, dtype: torch.where(
            mask, torch.tensor(0.0, dtype=dtype), torch.tensor(torch.finfo(dtype).min, dtype=dtype)
        ),
        lambda mask, dtype: (~mask).to(dtype) * torch.finfo(dtype).min,
        lambda mask, dtype: torch.full(
            mask.shape, torch.finfo(dtype).min, dtype=dtype, device=mask.device
        ).masked_fill(mask, 0.0),
        lambda mask, dtype: (1.0 - mask.to(dtype)) * torch.finfo(dtype).min,
        additive_by_index_assignment,
        lambda mask, dtype: torch.full_like(mask, torch.finfo(dtype).min, dtype=dtype).masked_fill(
            mask, 0
        ),
        lambda mask, dtype: torch.zeros_like(mask, dtype=dtype).masked_fill_(
            mask.logical_not(), torch.finfo(dtype).min
        ),
        lambda mask, dtype: torch.where(  # -finfo.max is finfo.min
            mask,
            torch.zeros((), dtype=dtype, device=mask.device),
            torch.full((), -torch.finfo(dtype).max, dtype=dtype, device=mask.device),
        ),
        additive_full_like_then_index,
        lambda mask, dtype: (mask.to(dtype) - 1) * torch.finfo(dtype).max,
    ],
    ids=[
        "where",
        "multiply",
        "full_then_fill",
        "one_minus",
        "index_assignment",
        "full_like",
        "zeros_like_in_place_fill",
        "where_minus_max",
        "full_like_then_index",
        "minus_one_times_max",
    ],
)
def test_other_correct_additive_masks_pass(impl):
    for seed in range(5):
        assert report("to_additive_mask", impl, hidden=True, seed=seed).passed


# ----------------------------------------------------------------------------- masked_attention


def key_view(key_padding_mask, q):
    """(B, Lk) -> (B, 1, ..., 1, Lk), to broadcast over heads and queries."""
    batch, lk = key_padding_mask.shape
    return key_padding_mask.view(batch, *[1] * (q.dim() - 2), lk)


def query_view(key_padding_mask, q):
    """The mistake: (B, Lk) -> (B, 1, ..., Lk, 1), masking queries."""
    batch, lk = key_padding_mask.shape
    return key_padding_mask.view(batch, *[1] * (q.dim() - 3), lk, 1)


def naive_softmax(x, dim=-1):
    exps = torch.exp(x - x.amax(dim, keepdim=True))
    return exps / exps.sum(dim, keepdim=True)


def make_masked(
    fill=lambda s, m: s.masked_fill(~m, torch.finfo(s.dtype).min),
    softmax=stable_softmax,
    zero_rows=True,
    kpm_view=key_view,
    combine=lambda m, keys: keys if m is None else m & keys,
    scale=lambda q, k, v: 1 / math.sqrt(q.shape[-1]),
    softmax_dim=-1,
    empty_rows_dim=-1,
):
    """An attention built from replaceable parts, so each bug changes exactly one of them."""

    def attention(q, k, v, mask=None, key_padding_mask=None):
        scores = q @ k.transpose(-2, -1) * scale(q, k, v)
        if key_padding_mask is not None:
            mask = combine(mask, kpm_view(key_padding_mask, q))
        if mask is not None:
            scores = fill(scores, mask)
        weights = softmax(scores, dim=softmax_dim)
        if mask is not None and zero_rows:
            weights = weights * mask.any(dim=empty_rows_dim, keepdim=True)
        return weights @ v, weights

    return attention


def fill_by_indexing(scores, mask):
    scores = scores.clone()
    scores[~mask] = -math.inf
    return scores


def any_without_keepdim(q, k, v, mask=None, key_padding_mask=None):
    out, weights = make_masked(zero_rows=False)(q, k, v, mask, key_padding_mask)
    if mask is not None:
        weights = weights * mask.any(dim=-1)  # (..., Lq) broadcast against the keys axis
    return weights @ v, weights


def mask_as_batch_first(q, k, v, mask=None, key_padding_mask=None):
    """Assumes a (B, Lq, Lk) mask and adds the heads axis itself."""
    if mask is not None:
        mask = mask.unsqueeze(1)
    return make_masked()(q, k, v, mask, key_padding_mask)


def query_scaled_in_place(q, k, v, mask=None, key_padding_mask=None):
    q /= math.sqrt(q.shape[-1])
    return make_masked(scale=lambda q, k, v: 1.0)(q, k, v, mask, key_padding_mask)


def empty_rows_found_before_padding(q, k, v, mask=None, key_padding_mask=None):
    """Finds the rows with nothing to see before key_padding_mask is ANDed in, so a sequence
    with no real token gets uniform weights."""
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
    allowed = torch.ones_like(scores, dtype=torch.bool) if mask is None else mask.expand_as(scores)
    alive = allowed.any(dim=-1, keepdim=True)
    if key_padding_mask is not None:
        allowed = allowed & key_view(key_padding_mask, q)
    weights = stable_softmax(scores.masked_fill(~allowed, torch.finfo(scores.dtype).min))
    weights = torch.where(alive, weights, 0.0)
    return weights @ v, weights


def keys_transposed_from_the_front(q, k, v, mask=None, key_padding_mask=None):
    """Crashes on its first line whenever k has leading dims (the checks' inputs all do)."""
    scores = q @ k.T / math.sqrt(q.shape[-1])  # right only for 2-D k
    weights = stable_softmax(scores)
    return weights @ v, weights


def scores_upcast_never_cast_back(q, k, v, mask=None, key_padding_mask=None):
    """q and k in float32 for the scores; the weights stay float32 and meet v in its dtype."""
    return make_masked()(q.float(), k.float(), v, mask, key_padding_mask)


def mask_after_softmax(q, k, v, mask=None, key_padding_mask=None):
    """Softmax over every key, then the weights times the mask: rows no longer sum to 1."""
    weights = make_masked(fill=lambda s, m: s, zero_rows=False)(q, k, v, mask, key_padding_mask)[1]
    if key_padding_mask is not None:
        weights = weights * key_view(key_padding_mask, q)
    if mask is not None:
        weights = weights * mask
    return weights @ v, weights


def scaled_after_softmax(q, k, v, mask=None, key_padding_mask=None):
    """The weights, not the scores, divided by sqrt(d)."""
    _, weights = make_masked(scale=lambda q, k, v: 1.0)(q, k, v, mask, key_padding_mask)
    weights = weights / math.sqrt(q.shape[-1])
    return weights @ v, weights


def mask_tested_for_truth(q, k, v, mask=None, key_padding_mask=None):
    if key_padding_mask:  # a tensor's truth value: ambiguous
        mask = (
            key_view(key_padding_mask, q) if mask is None else mask & key_view(key_padding_mask, q)
        )
    return make_masked()(q, k, v, mask)


def einsum_for_4d(q, k, v, mask=None, key_padding_mask=None):
    """Right on (B, H, L, D) inputs only: the einsum names four dims."""
    scores = torch.einsum("bhqd,bhkd->bhqk", q, k) / math.sqrt(q.shape[-1])
    if key_padding_mask is not None:
        keys = key_view(key_padding_mask, q)
        mask = keys if mask is None else mask & keys
    if mask is not None:
        scores = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
    weights = stable_softmax(scores)
    if mask is not None:
        weights = weights * mask.any(dim=-1, keepdim=True)
    return weights @ v, weights


def empty_rows_with_all(q, k, v, mask=None, key_padding_mask=None):
    """all() where any() belongs: every row with a blocked key is zeroed, not only empty ones."""
    out, weights = make_masked(zero_rows=False)(q, k, v, mask, key_padding_mask)
    if key_padding_mask is not None:
        keys = key_view(key_padding_mask, q)
        mask = keys if mask is None else mask & keys
    if mask is not None:
        weights = weights * mask.all(dim=-1, keepdim=True)
    return weights @ v, weights


def q_transposed(q, k, v, mask=None, key_padding_mask=None):
    """The transpose on q, not k: (..., d, Lq) @ (..., Lk, d) raises when Lq != d."""
    scores = q.transpose(-2, -1) @ k / math.sqrt(q.shape[-1])
    weights = stable_softmax(scores)
    return weights @ v, weights


def weights_not_cast_back(q, k, v, mask=None, key_padding_mask=None):
    """Computed in float32; out cast back to q's dtype, the weights not."""
    out, weights = make_masked()(q.float(), k.float(), v.float(), mask, key_padding_mask)
    return out.to(q.dtype), weights


def and_in_place(mask, keys):
    mask &= keys  # writes into the caller's mask (or cannot grow it: a RuntimeError)
    return mask


def unsqueezed_in_place(key_padding_mask, q):
    for _ in range(q.dim() - 2):
        key_padding_mask.unsqueeze_(1)  # the caller's key_padding_mask changes shape
    return key_padding_mask


@pytest.mark.parametrize(
    "bug, key",
    [
        (
            make_masked(fill=lambda s, m: s.masked_fill(m, torch.finfo(s.dtype).min)),
            "inverted_mask",
        ),
        (make_masked(fill=lambda s, m: s), "mask_ignored"),
        (make_masked(combine=lambda m, keys: keys if m is None else m), "key_padding_ignored"),
        (make_masked(kpm_view=query_view), "masked_queries"),
        (
            make_masked(
                fill=lambda s, m: s.masked_fill(~m, -math.inf),
                softmax=naive_softmax,
                zero_rows=False,
            ),
            "nan_on_fully_masked_row",
        ),
        (make_masked(zero_rows=False), "fully_masked_row_uniform"),
        (make_masked(fill=fill_by_indexing), "mask_not_broadcast"),
        (mask_as_batch_first, "mask_not_broadcast"),
        (make_masked(fill=lambda s, m: s.masked_fill(~m, -1e9)), "float16_overflow"),
        (
            make_masked(fill=lambda s, m: s.masked_fill(~m, torch.finfo(torch.float32).min)),
            "float16_overflow",
        ),
        (make_masked(scale=lambda q, k, v: 1.0), "missing_scale"),
        (make_masked(softmax_dim=-2, zero_rows=False), "softmax_over_queries"),
        (
            lambda q, k, v, mask=None, key_padding_mask=None: make_masked()(q, k, v, mask)[::-1],
            "outputs_swapped",
        ),
        (lambda q, k, v, mask=None: make_masked()(q, k, v, mask), "raised"),  # no key_padding_mask
        (make_masked(combine=lambda m, keys: m & keys), "none_not_handled"),
        (
            make_masked(combine=lambda m, keys: keys if m is None else m | keys),
            "masks_combined_with_or",
        ),
        (make_masked(kpm_view=lambda kpm, q: kpm.unsqueeze(1)), "key_padding_fixed_rank"),
        (make_masked(kpm_view=lambda kpm, q: kpm[:, None, None, :]), "key_padding_fixed_rank"),
        (empty_rows_found_before_padding, "fully_masked_row_uniform"),
        (query_scaled_in_place, "modified_input"),
        (
            make_masked(fill=lambda s, m: s.masked_fill(m, -math.inf), zero_rows=False),
            "inverted_mask",
        ),
        (keys_transposed_from_the_front, "batched_transpose"),
        (scores_upcast_never_cast_back, "dtype_not_restored"),
        (
            make_masked(combine=lambda m, keys: keys if m is None else and_in_place(m, keys)),
            "modified_input",
        ),
        (make_masked(kpm_view=unsqueezed_in_place), "modified_input"),
        (
            make_masked(
                fill=lambda s, m: s.masked_fill(~m, torch.finfo(s.dtype).min), empty_rows_dim=-2
            ),
            "empty_rows_over_queries",
        ),
        (make_masked(scale=lambda q, k, v: 1 / math.sqrt(k.shape[-2])), "scaled_by_length"),
        (make_masked(scale=lambda q, k, v: 1 / math.sqrt(v.shape[-1])), "scaled_by_value_dim"),
        (make_masked(scale=lambda q, k, v: 1 / q.shape[-1]), "divided_by_d"),
        (make_masked(combine=lambda m, keys: keys if m is None else m), "key_padding_ignored"),
        (mask_after_softmax, "mask_after_softmax"),
        (scaled_after_softmax, "scaled_after_softmax"),
        (mask_tested_for_truth, "mask_truth_value"),
        (any_without_keepdim, "any_without_keepdim"),
        (einsum_for_4d, "fixed_rank"),
        (make_masked(fill=lambda s, m: s.masked_fill(~m, 0.0)), "blocked_scores_zero"),
        (make_masked(scale=lambda q, k, v: math.sqrt(q.shape[-1])), "multiplied_by_sqrt_d"),
        (empty_rows_with_all, "empty_rows_with_all"),
        (q_transposed, "transposed_q"),
        (make_masked(kpm_view=lambda kpm, q: ~key_view(kpm, q)), "key_padding_inverted"),
        (weights_not_cast_back, "dtype_not_restored"),
        (stub, "not_implemented"),
    ],
    ids=[
        "inverted",
        "ignored",
        "kpm_ignored",
        "masked_queries",
        "nan_rows",
        "uniform_rows",
        "bool_indexing",
        "mask_unsqueezed",
        "minus_1e9",
        "float32_min",
        "missing_scale",
        "over_queries",
        "swapped_outputs",
        "no_kpm_argument",
        "none_and",
        "or_combined",
        "kpm_unsqueeze_1",
        "kpm_4d_only",
        "empty_rows_before_padding",
        "q_scaled_in_place",
        "inverted_on_no_mask",
        "k_T",
        "upcast_not_cast_back",
        "and_in_place",
        "kpm_unsqueeze_in_place",
        "any_over_queries",
        "sqrt_lk",
        "sqrt_dv",
        "divided_by_d",
        "kpm_forgotten",
        "mask_after_softmax",
        "scaled_after_softmax",
        "if_mask",
        "any_without_keepdim",
        "einsum_4d_only",
        "blocked_scores_zero",
        "multiplied_by_sqrt_d",
        "all_for_any",
        "q_transposed",
        "kpm_true_is_padding",
        "weights_not_cast_back",
        "stub",
    ],
)
def test_masked_attention_bug_is_named(bug, key, capsys):
    assert_named("masked_attention", bug, key, capsys)
    assert_named_on_hidden_seeds("masked_attention", bug, key, seeds=range(1, 4))


@pytest.mark.parametrize(
    "bug, key",
    [
        (
            make_masked(fill=lambda s, m: s.masked_fill(m, torch.finfo(s.dtype).min)),
            "inverted_mask",
        ),
        (make_masked(kpm_view=query_view), "masked_queries"),
        (
            make_masked(
                fill=lambda s, m: s.masked_fill(~m, -math.inf),
                softmax=naive_softmax,
                zero_rows=False,
            ),
            "nan_on_fully_masked_row",
        ),
        (make_masked(fill=fill_by_indexing), "mask_not_broadcast"),
        (make_masked(fill=lambda s, m: s.masked_fill(~m, -1e9)), "float16_overflow"),
    ],
    ids=["inverted", "masked_queries", "nan_rows", "bool_indexing", "minus_1e9"],
)
def test_masked_attention_bugs_are_named_on_hidden_seeds(bug, key):
    assert_named_on_hidden_seeds("masked_attention", bug, key)


@pytest.mark.parametrize("seed", range(4))
def test_nan_from_a_naive_softmax_is_not_called_overflow_in_float16(seed):
    """NaN only in the rows with nothing to attend to is the 0/0 of those rows, in float16 too."""
    naive = make_masked(
        fill=lambda s, m: s.masked_fill(~m, -math.inf), softmax=naive_softmax, zero_rows=False
    )
    keys = check_keys("masked_attention", naive, seed, seed > 0)
    assert set(keys.values()) - {""} == {"nan_on_fully_masked_row"}, keys


@pytest.mark.parametrize(
    "bug",
    [
        lambda q, k, v, mask=None, key_padding_mask=None: (
            lambda out, weights: (weights @ v.mT, weights)
        )(*make_masked()(q, k, v, mask, key_padding_mask)),
        lambda q, k, v, mask=None, key_padding_mask=None: (
            make_masked()(q, k, v, mask, key_padding_mask)[0][..., :-1],
            make_masked()(q, k, v, mask, key_padding_mask)[1],
        ),
    ],
    ids=["v_transposed", "out_cut_short"],
)
def test_a_crash_or_a_wrong_shape_with_a_mask_is_not_called_a_broadcast_mistake(bug):
    """Named only on evidence: these fail with any mask shape, so they stand as they are."""
    keys = {r.key for r in report("masked_attention", bug).results} - {""}
    assert keys and keys <= {"raised", "wrong_shape"}, keys


@pytest.mark.parametrize(
    "shortcut, name",
    [
        (
            lambda q, k, v, mask=None, key_padding_mask=None: make_masked(
                softmax=lambda s, dim: s.softmax(dim)
            )(q, k, v, mask, key_padding_mask),
            "softmax",
        ),
        (
            lambda q, k, v, mask=None, key_padding_mask=None: (
                F.scaled_dot_product_attention(q, k, v, attn_mask=mask),
                make_masked()(q, k, v, mask, key_padding_mask)[1],
            ),
            "scaled_dot_product_attention",
        ),
        (
            lambda q, k, v, mask=None, key_padding_mask=None: course.reference.masks.attention(
                q, k, v, mask if key_padding_mask is None else key_view(key_padding_mask, q)
            ),
            "course.reference.masks.attention",
        ),
    ],
    ids=["softmax", "sdpa", "library"],
)
def test_masked_attention_shortcuts_are_refused(shortcut, name):
    result = report("masked_attention", shortcut)
    assert result.keys == {"shortcut"} and len(result.results) == 1
    assert name in result.results[0].message


def test_hints_fit_this_notebook():
    """No masked_fill advice for a mask that is built, not applied; stable_softmax, which the
    notebook gives, offered for the built-in softmax; no day 1 exercise named for the scale."""
    inverted = report("causal_mask", lambda lq, lk=None, device=None: ~bottom_right(lq, lk, device))
    assert all("masked_fill" not in r.hint for r in inverted.results if r.key == "inverted_mask")
    shortcut = report("masked_attention", make_masked(softmax=lambda s, dim: s.softmax(dim)))
    assert "stable_softmax" in shortcut.results[0].hint
    unscaled = report("masked_attention", make_masked(scale=lambda q, k, v: 1.0))
    hints = [r.hint for r in unscaled.results if r.key == "missing_scale"]
    assert hints and not any("attention_scores" in h or "exercise 2" in h for h in hints)


def multiplicative_mask_attention(q, k, v, mask=None, key_padding_mask=None):
    """Blocked keys multiplied by 0 after the exp; an empty row's sum clamped away from 0."""
    scores = torch.einsum("...qd,...kd->...qk", q, k) / math.sqrt(q.shape[-1])
    allowed = torch.ones_like(scores, dtype=torch.bool) if mask is None else mask.expand_as(scores)
    if key_padding_mask is not None:
        allowed = allowed & key_view(key_padding_mask, q)
    top = scores.masked_fill(~allowed, -math.inf).amax(-1, keepdim=True)
    exps = (scores - top.nan_to_num(0.0, neginf=0.0)).exp() * allowed
    weights = exps / exps.sum(-1, keepdim=True).clamp_min(torch.finfo(scores.dtype).tiny)
    return weights @ v, weights


def attention_with_an_all_true_start(q, k, v, mask=None, key_padding_mask=None):
    """einsum, d ** -0.5, an (Lq, Lk) all-True mask ANDed with what is given, torch.where."""
    scores = torch.einsum("...qd,...kd->...qk", q, k) * q.shape[-1] ** -0.5
    keep = torch.ones(scores.shape[-2:], dtype=torch.bool, device=q.device)
    if mask is not None:
        keep = keep & mask
    if key_padding_mask is not None:
        keep = keep & key_view(key_padding_mask, q)
    filled = scores.masked_fill(~keep, torch.finfo(scores.dtype).min)
    weights = torch.where(keep.any(dim=-1, keepdim=True), stable_softmax(filled), 0.0)
    return torch.matmul(weights, v), weights


def attention_unsqueezing_a_copy(q, k, v, mask=None, key_padding_mask=None):
    """q scaled before the product, k.mT, key_padding_mask unsqueezed (out of place) in a loop."""
    scores = torch.matmul(q / math.sqrt(q.shape[-1]), k.mT)
    if key_padding_mask is not None:
        keys = key_padding_mask
        while keys.dim() < q.dim():
            keys = keys.unsqueeze(1)
        mask = keys if mask is None else torch.logical_and(mask, keys)
    if mask is None:
        weights = stable_softmax(scores)
    else:
        weights = stable_softmax(scores.masked_fill(~mask, torch.finfo(scores.dtype).min))
        weights = weights.masked_fill(~mask.any(-1, keepdim=True), 0.0)
    return weights @ v, weights


def attention_upcast_and_cast_back(q, k, v, mask=None, key_padding_mask=None):
    """float32 (float64 stays) inside, -inf fills, a clamped max and sum; cast back at the end."""
    q32, k32, v32 = (t.to(torch.promote_types(t.dtype, torch.float32)) for t in (q, k, v))
    scores = q32 @ k32.transpose(-1, -2) / math.sqrt(q.shape[-1])
    if mask is not None:
        scores = scores.masked_fill(~mask, -math.inf)
    if key_padding_mask is not None:
        scores = scores.masked_fill(~key_view(key_padding_mask, q), -math.inf)
    top = scores.amax(dim=-1, keepdim=True).clamp_min(torch.finfo(scores.dtype).min)
    exps = torch.exp(scores - top)
    weights = exps / exps.sum(dim=-1, keepdim=True).clamp_min(torch.finfo(scores.dtype).tiny)
    return (weights @ v32).to(q.dtype), weights.to(q.dtype)


def attention_by_logsumexp(q, k, v, mask=None, key_padding_mask=None):
    """exp(scores - logsumexp(scores)) over dtype-minimum fills, empty rows zeroed after."""
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
    if key_padding_mask is not None:
        keys = key_view(key_padding_mask, q)
        mask = keys if mask is None else mask & keys
    if mask is not None:
        scores = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
    weights = torch.exp(scores - torch.logsumexp(scores, dim=-1, keepdim=True))
    if mask is not None:
        weights = weights * mask.any(dim=-1, keepdim=True)
    return weights @ v, weights


def allowed_keys(q, k, mask, key_padding_mask):
    """mask AND key_padding_mask viewed as (B, 1, ..., 1, Lk), at the scores' full shape."""
    allowed = torch.ones((*q.shape[:-1], k.shape[-2]), dtype=torch.bool, device=q.device)
    if mask is not None:
        allowed = allowed & mask
    if key_padding_mask is not None:
        allowed = allowed & key_view(key_padding_mask, q)
    return allowed


def attention_by_where_softmax(q, k, v, mask=None, key_padding_mask=None):
    """A hand-written softmax: torch.where for blocked keys and for rows whose sum is 0."""
    scores = torch.matmul(q, k.transpose(-2, -1)) / math.sqrt(q.size(-1))
    allowed = allowed_keys(q, k, mask, key_padding_mask)
    low = torch.tensor(torch.finfo(scores.dtype).min, dtype=scores.dtype)
    shifted = torch.where(allowed, scores, low)
    shifted = shifted - shifted.amax(dim=-1, keepdim=True)
    exps = torch.where(allowed, shifted.exp(), torch.zeros_like(shifted))
    total = exps.sum(dim=-1, keepdim=True)
    weights = torch.where(total > 0, exps / total.clamp_min(torch.finfo(scores.dtype).tiny), 0.0)
    return weights @ v, weights


def attention_one_query_at_a_time(q, k, v, mask=None, key_padding_mask=None):
    """A loop over the queries, one row of weights at a time, stacked at the end."""
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
    allowed = allowed_keys(q, k, mask, key_padding_mask)
    extra = additive(lambda dtype: torch.finfo(dtype).min)(allowed, scores.dtype)
    rows = []
    for i in range(q.shape[-2]):
        row = stable_softmax(scores[..., i, :] + extra[..., i, :], dim=-1)
        rows.append(row * allowed[..., i, :].any(dim=-1, keepdim=True))
    weights = torch.stack(rows, dim=-2)
    return weights @ v, weights


def attention_by_logsumexp_nan_to_num(q, k, v, mask=None, key_padding_mask=None):
    """q scaled first, -inf fills, exp(scores - logsumexp); the 0/0 of empty rows set to 0."""
    scores = (q / math.sqrt(q.shape[-1])) @ k.mT
    if key_padding_mask is not None:
        keys = key_view(key_padding_mask, q)
        mask = keys if mask is None else mask & keys
    if mask is not None:
        scores = scores.masked_fill(~mask, -math.inf)
    weights = torch.exp(scores - torch.logsumexp(scores, dim=-1, keepdim=True)).nan_to_num(0.0)
    return weights @ v, weights


def attention_masked_before_scaling(q, k, v, mask=None, key_padding_mask=None):
    """(q kᵀ + the additive mask) / sqrt(d): the dtype's minimum, divided, stays hugely negative."""
    scores = q @ k.transpose(-2, -1)
    if key_padding_mask is not None:
        keys = key_view(key_padding_mask, q)
        mask = keys if mask is None else mask & keys
    if mask is not None:
        scores = scores + additive(lambda dtype: torch.finfo(dtype).min)(mask, scores.dtype)
    weights = stable_softmax(scores / math.sqrt(q.shape[-1]), dim=-1)
    if mask is not None:
        weights = weights * mask.any(dim=-1, keepdim=True)
    return weights @ v, weights


def key_padding_by_batch_loop(q, k, v, mask=None, key_padding_mask=None):
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
    allowed = torch.ones_like(scores, dtype=torch.bool)
    if mask is not None:
        allowed = allowed & mask
    if key_padding_mask is not None:
        for b in range(key_padding_mask.shape[0]):
            allowed[b, ..., ~key_padding_mask[b]] = False
    weights = stable_softmax(scores.masked_fill(~allowed, -math.inf))
    return weights @ v, weights


@pytest.mark.parametrize(
    "attention",
    [
        make_masked(
            fill=lambda s, m: s.masked_fill(~m, -math.inf), zero_rows=False
        ),  # -inf + NaN-safe softmax
        make_masked(fill=lambda s, m: torch.where(m, s, torch.finfo(s.dtype).min)),
        make_masked(
            fill=lambda s, m: s + torch.zeros_like(s).masked_fill(~m, torch.finfo(s.dtype).min)
        ),
        make_masked(
            fill=lambda s, m: s.masked_fill(~m, -math.inf),
            softmax=lambda s, dim: naive_softmax(s, dim).nan_to_num(0.0),
            zero_rows=False,
        ),
        lambda q, k, v, mask=None, key_padding_mask=None: tuple(
            t.to(q.dtype)
            for t in make_masked()(q.double(), k.double(), v.double(), mask, key_padding_mask)
        ),
        multiplicative_mask_attention,
        lambda q, k, v, mask=None, key_padding_mask=None: tuple(
            t.to(q.dtype)
            for t in make_masked()(
                *(t.to(torch.promote_types(q.dtype, torch.float32)) for t in (q, k, v)),
                mask,
                key_padding_mask,
            )
        ),
        key_padding_by_batch_loop,
        attention_with_an_all_true_start,
        attention_unsqueezing_a_copy,
        attention_upcast_and_cast_back,
        attention_by_logsumexp,
        attention_by_where_softmax,
        attention_one_query_at_a_time,
        attention_by_logsumexp_nan_to_num,
        attention_masked_before_scaling,
    ],
    ids=[
        "neg_inf_nan_safe_softmax",
        "where_dtype_min",
        "additive",
        "nan_to_num",
        "float64_inside",
        "multiplicative",
        "float16_in_float32",
        "batch_loop",
        "all_true_start",
        "unsqueeze_loop",
        "upcast_cast_back",
        "logsumexp",
        "where_softmax",
        "one_query_at_a_time",
        "logsumexp_nan_to_num",
        "masked_before_scaling",
    ],
)
def test_other_correct_attentions_pass(attention):
    for seed in range(5):
        result = report("masked_attention", attention, hidden=True, seed=seed)
        assert result.passed, [(r.check, r.message) for r in result.results if not r.passed]


# ----------------------------------------------------------------------------- using it wrongly


def test_unknown_exercise_names_say_what_exists():
    with pytest.raises(ValueError, match="expected one of .*'masked_attention'"):
        check(DAY, "attention", make_masked())


def test_passing_a_mask_instead_of_a_function_is_explained():
    with pytest.raises(TypeError, match="pass the function itself"):
        check(DAY, "causal_mask", torch.ones(3, 3, dtype=torch.bool))


# ----------------------------------------------------------------------------- the notebook's promises

# Each exercise's "The checks recognise: ..." list in the notebook, phrase by phrase, and the key a
# planted bug above is named under: every promise is kept by a test.
PROMISES = {
    "causal_mask": {
        "an inverted mask": "inverted_mask",
        "a missing diagonal": "excludes_diagonal",
        "the upper triangle instead of the lower": "upper_triangular",
        "top-left alignment": "top_left_causal",
        "the offset's sign flipped": "offset_sign",
        "a mask shifted by one key": "shifted_by_one",
        "key 0 given to queries that come before every key": "first_key_always_visible",
        "the last `lq` rows of a square `(lk, lk)` mask": "square_then_sliced",
        "the shape `(lk, lq)`": "swapped_lengths",
        "extra size-1 dims": "extra_dims",
        "`lk=None` left unhandled": "lk_none_unhandled",
        "a float mask instead of a boolean one": "not_boolean",
        "ignoring `device`": "ignores_device",
        "a crash on `device=None`": "device_none_unhandled",
    },
    "padding_mask": {
        "an inverted mask": "inverted_mask",
        "an off-by-one": "off_by_one",
        "one position too many": "range_includes_end",
        "the shape `(max_len, B)`": "padding_transposed",
        "extra size-1 dims": "extra_dims",
        "a width from `lengths.max()`": "width_from_lengths",
        "compared without `[:, None]`": "padding_no_unsqueeze",
        "padding at the start instead of the end": "left_padded",
        "a mask that is not boolean": "not_boolean",
        "a mask made on the CPU": "ignores_device",
        "`lengths` changed in place": "modified_input",
    },
    "to_additive_mask": {
        "an inverted mask": "inverted_mask",
        "$-\\infty$ instead of the minimum": "additive_neg_inf",
        "a fixed constant such as $-10^9$": "not_dtype_min",
        "(and its float16 overflow)": "float16_overflow",
        "`finfo.max`": "additive_positive",
        "`finfo.tiny`": "finfo_tiny",
        "0/1 numbers": "not_additive",
        "1 instead of 0 where the mask is True": "ones_where_allowed",
        "a result in the wrong dtype": "wrong_dtype",
        "a result made on the CPU": "ignores_device",
        "the mask changed in place": "modified_input",
    },
    "masked_attention": {
        "an inverted mask": "inverted_mask",
        "blocked scores set to 0 instead of a large negative": "blocked_scores_zero",
        "the mask ignored": "mask_ignored",
        "`key_padding_mask` ignored": "key_padding_ignored",
        "applied to queries instead of keys": "masked_queries",
        "read as True = padding": "key_padding_inverted",
        "NaN, or uniform weights": ("nan_on_fully_masked_row", "fully_masked_row_uniform"),
        "the mask applied after the softmax": "mask_after_softmax",
        "a mask that does not broadcast": "mask_not_broadcast",
        "float16 overflow": "float16_overflow",
        "the missing $1/\\sqrt{d}$": "missing_scale",
        "$1/d$, $1/\\sqrt{L_k}$, $1/\\sqrt{d_v}$": (
            "divided_by_d",
            "scaled_by_length",
            "scaled_by_value_dim",
        ),
        "the scores multiplied by $\\sqrt{d}$": "multiplied_by_sqrt_d",
        "the weights divided by $\\sqrt{d}$ after the softmax": "scaled_after_softmax",
        "code for 4-D inputs only": "fixed_rank",
        "`k.T` on inputs with leading dims": "batched_transpose",
        "`q` transposed instead of `k`": "transposed_q",
        "a dtype changed inside (`q.float()`) and not cast back": "dtype_not_restored",
        "empty rows found with `any(dim=-2)`": "empty_rows_over_queries",
        "`any(dim=-1)` without `keepdim=True`": "any_without_keepdim",
        "with `all` instead of `any`": "empty_rows_with_all",
        "an input changed in place": "modified_input",
        "softmax over the queries": "softmax_over_queries",
        "used without checking for `None`": "none_not_handled",
        "tested with `if mask:`": "mask_truth_value",
        "combined with OR instead of AND": "masks_combined_with_or",
        "reshaped for one number of dims only": "key_padding_fixed_rank",
        "returned in the wrong order": "outputs_swapped",
        "calls to the built-ins": "shortcut",
    },
}


PLANTED = {
    "causal_mask": lambda: (
        planted_keys(test_causal_mask_bug_is_named) | {"swapped_lengths"}
    ),  # test_swapped_lengths_are_named
    "padding_mask": lambda: planted_keys(test_padding_mask_bug_is_named),
    "to_additive_mask": lambda: (
        planted_keys(test_to_additive_mask_bug_is_named) | {"float16_overflow"}
    ),  # test_float16_overflow_is_named
    "masked_attention": lambda: (
        planted_keys(test_masked_attention_bug_is_named) | {"shortcut"}
    ),  # test_masked_attention_shortcuts_are_refused
}


@pytest.mark.parametrize("name, phrase", promised(PROMISES))
def test_the_notebook_lists_only_mistakes_the_checks_name(name, phrase):
    assert_promise_kept(DAY, PROMISES, name, phrase, PLANTED[name]())
