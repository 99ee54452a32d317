"""The day01 check suite, tested: the solution passes on every seed, each planted bug is caught
with its named hint, and correct implementations written differently pass too."""

import functools
import math

import pytest
import torch
import torch.nn.functional as F

from grader import CheckFailed, check
from helpers import assert_mistake_named, day_report

DAY = "day01-sdpa"

# For tests/test_nbgrader_e2e.py: softmax over the queries costs scaled_dot_product_attention's
# visible and hidden points (2 + 1), and the feedback names the mistake.
PLANTED_SUBMISSION = {
    "cell": "scaled_dot_product_attention",
    "old": "attention_scores(q, k), dim=-1)",
    "new": "attention_scores(q, k), dim=-2)",
    "points_lost": 3,
    "hint": "each query's weights must sum to 1 over the keys",
}


report = functools.partial(day_report, DAY)
assert_named = functools.partial(assert_mistake_named, DAY)


# ----------------------------------------------------------------------------- the solution


def test_check_prints_a_verdict_per_check_and_returns_quietly(solution, capsys):
    check(DAY, "stable_softmax", solution["stable_softmax"])
    printed = capsys.readouterr().out
    assert printed.count("✓") == 7 and "✗" not in printed
    assert "7 of 7 checks passed" in printed


def test_hidden_checks_draw_a_fresh_seed_each_run(solution):
    seeds = {
        report("attention_scores", solution["attention_scores"], hidden=True).seed for _ in range(5)
    }
    assert len(seeds) > 1


# ----------------------------------------------------------------------------- planted bugs


def softmax_no_max(x, dim=-1):
    exps = torch.exp(x)
    return exps / exps.sum(dim, keepdim=True)


def softmax_max_no_empty_rows(x, dim=-1):
    exps = torch.exp(x - x.amax(dim, keepdim=True))
    return exps / exps.sum(dim, keepdim=True)


def softmax_global_max(x, dim=-1):
    exps = torch.exp(x - x.max())
    return exps / exps.sum(dim, keepdim=True)


def softmax_min_shift(x, dim=-1):
    exps = torch.exp(x - x.amin(dim, keepdim=True))
    return exps / exps.sum(dim, keepdim=True)


def softmax_in_float32(x, dim=-1):
    exps = torch.exp(x.float() - x.float().amax(dim, keepdim=True))
    return exps / exps.sum(dim, keepdim=True)


def stub(*args, **kwargs):
    raise NotImplementedError()


@pytest.mark.parametrize(
    "bug, key",
    [
        (lambda x, dim=-1: softmax_max_no_empty_rows(x, dim=0), "wrong_axis"),
        (lambda x, dim=-1: softmax_max_no_empty_rows(x, dim=-1), "ignores_dim"),
        (softmax_no_max, "no_max_subtraction"),
        (softmax_global_max, "global_max"),
        (softmax_max_no_empty_rows, "nan_on_all_masked_row"),
        (softmax_min_shift, "nan_on_neg_inf"),
        (softmax_in_float32, "wrong_dtype"),
        (stub, "not_implemented"),
    ],
    ids=[
        "wrong_axis",
        "ignores_dim",
        "no_max",
        "global_max",
        "nan_all_masked",
        "min_shift",
        "float32",
        "stub",
    ],
)
def test_stable_softmax_bug_is_named(bug, key, capsys):
    assert_named("stable_softmax", bug, key, capsys)


@pytest.mark.parametrize(
    "bug, key",
    [
        (lambda q, k: q @ k.transpose(-2, -1), "missing_scale"),
        (lambda q, k: q @ k.transpose(-2, -1) / q.shape[-1], "divided_by_d"),
        (lambda q, k: q @ k.transpose(-2, -1) * math.sqrt(q.shape[-1]), "times_sqrt_d"),
        (lambda q, k: q @ k.transpose(-2, -1) / math.sqrt(q.shape[-2]), "scaled_by_length"),
        (lambda q, k: k @ q.transpose(-2, -1) / math.sqrt(q.shape[-1]), "swapped_q_k"),
        (lambda q, k: q @ k.T / math.sqrt(q.shape[-1]), "raised"),
        (stub, "not_implemented"),
    ],
    ids=["missing_scale", "divided_by_d", "times_sqrt_d", "length", "swapped", "k.T", "stub"],
)
@pytest.mark.filterwarnings("ignore:The use of `x.T`:UserWarning")
def test_attention_scores_bug_is_named(bug, key, capsys):
    assert_named("attention_scores", bug, key, capsys)


def make_sdpa(
    softmax,
    scale=lambda d: 1 / math.sqrt(d),
    combine=lambda w, v: w @ v,
    scores=lambda q, k: q @ k.transpose(-2, -1),
):
    """An attention built from replaceable parts, so each bug changes exactly one of them."""

    def attention(q, k, v):
        weights = softmax(scores(q, k) * scale(q.shape[-1]))
        return combine(weights, v), weights

    return attention


good_softmax = softmax_max_no_empty_rows  # no row is all -inf in these checks


@pytest.mark.parametrize(
    "bug, key",
    [
        (make_sdpa(lambda s: good_softmax(s, dim=-2)), "softmax_over_queries"),
        (make_sdpa(good_softmax, scale=lambda d: 1.0), "missing_scale"),
        (make_sdpa(good_softmax, scale=lambda d: 1 / d), "divided_by_d"),
        (make_sdpa(good_softmax, scale=lambda d: math.sqrt(d)), "times_sqrt_d"),
        (make_sdpa(good_softmax, scores=lambda q, k: k @ q.transpose(-2, -1)), "swapped_q_k"),
        (make_sdpa(good_softmax, combine=lambda w, v: w @ v.transpose(-2, -1)), "transposed_v"),
        (
            make_sdpa(good_softmax, combine=lambda w, v: w.transpose(-2, -1) @ v),
            "transposed_weights",
        ),
        (make_sdpa(softmax_no_max), "no_max_subtraction"),
        (lambda q, k, v: make_sdpa(good_softmax)(q, k, v)[::-1], "wrong_shape"),
        (lambda q, k, v: make_sdpa(good_softmax)(q, k, v)[0], "not_a_pair"),
        (
            lambda q, k, v: (
                make_sdpa(good_softmax)(q, k, v)[0][..., : q.shape[-1]],
                make_sdpa(good_softmax)(q, k, v)[1],
            ),
            "wrong_shape",
        ),
        (stub, "not_implemented"),
    ],
    ids=[
        "over_queries",
        "missing_scale",
        "divided_by_d",
        "times_sqrt_d",
        "swapped_q_k",
        "transposed_v",
        "transposed_weights",
        "overflow",
        "swapped_outputs",
        "out_only",
        "out_sliced_to_dk",
        "stub",
    ],
)
def test_sdpa_bug_is_named(bug, key, capsys):
    assert_named("scaled_dot_product_attention", bug, key, capsys)


# ----------------------------------------------------------------------------- the shortcut guard

softmax_alias = F.softmax  # bound before grading starts: the guard must still see it


@pytest.mark.parametrize(
    "shortcut",
    [
        lambda x, dim=-1: torch.softmax(x, dim),
        lambda x, dim=-1: F.softmax(x, dim=dim),
        lambda x, dim=-1: x.softmax(dim),
        lambda x, dim=-1: torch.nn.Softmax(dim=dim)(x),
        lambda x, dim=-1: torch.special.softmax(x, dim),
        lambda x, dim=-1: torch.log_softmax(x, dim).exp(),
        lambda x, dim=-1: softmax_alias(x, dim),
    ],
    ids=[
        "torch.softmax",
        "F.softmax",
        "Tensor.softmax",
        "nn.Softmax",
        "special",
        "log_softmax",
        "alias",
    ],
)
def test_softmax_shortcuts_are_refused(shortcut, capsys):
    assert_named("stable_softmax", shortcut, "shortcut", capsys)
    result = report("stable_softmax", shortcut)
    assert result.keys == {"shortcut"} and len(result.results) == 1  # one message, not seven
    assert "write softmax yourself" in result.results[0].hint


def test_a_caught_shortcut_is_still_reported():
    def hides_it(x, dim=-1):
        try:
            return torch.softmax(x, dim)
        except:  # noqa: E722 (the point: even a bare except cannot hide the shortcut)
            return softmax_max_no_empty_rows(x, dim)

    assert report("stable_softmax", hides_it).keys == {"shortcut"}


def test_sdpa_shortcut_is_refused(solution):
    def fused(q, k, v):
        return F.scaled_dot_product_attention(q, k, v), solution["stable_softmax"](
            solution["attention_scores"](q, k)
        )

    assert report("scaled_dot_product_attention", fused).keys == {"shortcut"}


def test_oracles_still_work_after_a_shortcut_was_refused(solution):
    report("stable_softmax", lambda x, dim=-1: torch.softmax(x, dim))
    assert torch.allclose(torch.softmax(torch.zeros(2), 0), torch.tensor([0.5, 0.5]))
    assert report("stable_softmax", solution["stable_softmax"]).passed


# ----------------------------------------------------------------------------- other correct answers


def softmax_nan_to_num(x, dim=-1):
    exps = (x - x.max(dim=dim, keepdim=True).values).exp()
    return (exps / exps.sum(dim=dim, keepdim=True)).nan_to_num(0.0)


def softmax_via_float64(x, dim=-1):
    x64 = x.double()
    top = x64.amax(dim, keepdim=True).clamp_min(torch.finfo(torch.float64).min)
    exps = torch.exp(x64 - top)
    total = exps.sum(dim, keepdim=True)
    return (exps / total.where(total > 0, 1.0)).to(x.dtype)


@pytest.mark.parametrize("softmax", [softmax_nan_to_num, softmax_via_float64])
def test_other_correct_softmaxes_pass(softmax):
    for seed in range(5):
        assert report("stable_softmax", softmax, hidden=True, seed=seed).passed


@pytest.mark.parametrize(
    "scores",
    [
        lambda q, k: torch.einsum("...qd,...kd->...qk", q, k) / math.sqrt(q.shape[-1]),
        lambda q, k: (q * q.shape[-1] ** -0.5) @ k.mT,
        lambda q, k: torch.matmul(q, k.transpose(-1, -2)).div(math.sqrt(k.size(-1))),
    ],
    ids=["einsum", "pre-scaled", "matmul"],
)
def test_other_correct_scores_pass(scores):
    for seed in range(5):
        assert report("attention_scores", scores, hidden=True, seed=seed).passed


@pytest.mark.parametrize(
    "attention",
    [
        make_sdpa(
            softmax_nan_to_num, combine=lambda w, v: torch.einsum("...qk,...kd->...qd", w, v)
        ),
        lambda q, k, v: tuple(
            t.to(q.dtype)
            for t in make_sdpa(softmax_via_float64)(q.double(), k.double(), v.double())
        ),
    ],
    ids=["einsum", "float64 inside"],
)
def test_other_correct_attentions_pass(attention):
    for seed in range(5):
        assert report("scaled_dot_product_attention", attention, hidden=True, seed=seed).passed


# ----------------------------------------------------------------------------- using it wrongly


def test_unknown_names_say_what_exists():
    with pytest.raises(ValueError, match=r"expected one of \[.*'day01-sdpa'"):
        check("day1", "stable_softmax", softmax_no_max)
    with pytest.raises(ValueError, match="expected one of .*'stable_softmax'"):
        check(DAY, "softmax", softmax_no_max)


def test_passing_a_result_instead_of_a_function_is_explained():
    with pytest.raises(TypeError, match="pass the function itself"):
        check(DAY, "stable_softmax", torch.zeros(3))


def test_check_failed_renders_as_one_line_in_ipython():
    with pytest.raises(CheckFailed) as failure:
        check(DAY, "stable_softmax", softmax_no_max)
    assert failure.value._render_traceback_() == [f"CheckFailed: {failure.value}"]
