"""Every day's check suite against its own solution notebook: the solution passes on the visible
seed, on 25 hidden ones and on a sample of far-apart hidden seeds, and an untouched stub is
reported once, as not implemented. The shared shape helpers expose the common mistakes on every
draw."""

import ast
import importlib
import math
import random
from pathlib import Path

import pytest
import torch

from grader.harness.checking import expect_close, run
from grader.suites import assignments, exercises
from grader.suites._common import attention_shapes, draw, head_dim, randn
from helpers import day_report, solution_functions
from tools.seed_sweep import sweep_seeds

EXERCISES = [(day, name) for day in assignments() for name in exercises(day)]


def stub(*args, **kwargs):
    raise NotImplementedError()


@pytest.mark.parametrize("day, name", EXERCISES, ids=[f"{d}:{n}" for d, n in EXERCISES])
def test_solution_passes_visible_and_many_hidden_seeds(day, name):
    solution = solution_functions(day)[name]
    assert day_report(day, name, solution).passed
    for seed in range(1, 26):
        result = day_report(day, name, solution, hidden=True, seed=seed)
        assert result.passed, [(r.check, r.message) for r in result.results if not r.passed]


SAMPLED_SEEDS = 4  # per exercise: about 280 in all, for tools/seed_sweep.py's 10,000 each


@pytest.mark.slow
@pytest.mark.parametrize("day", assignments())
def test_solution_passes_a_sample_of_far_apart_hidden_seeds(day):
    """Seeds spread over the whole range, different for each exercise (and fixed, so a failure
    reproduces): a tolerance too tight for some draws shows up here before a student sees it."""
    for name in exercises(day):
        seeds = random.Random(f"{day}:{name}").sample(range(26, 2**31 - 100), SAMPLED_SEEDS)
        result = sweep_seeds(day, name, seeds)
        assert result.failures == [], result.failures
        assert result.worst[0] < 1


# Hidden seeds on which `python -m tools.seed_sweep` once found a right answer failing or a check
# crashing: each stays here once fixed, so the fix cannot quietly come undone.
SWEEP_FINDINGS = [
    ("day01-sdpa", "scaled_dot_product_attention", 6001),  # logits ~1000: condition from q, k
    ("day01-sdpa", "scaled_dot_product_attention", 9630),
    ("day03-multihead", "relative_position_bucket", 9625),  # a (1, 2, 2) draw, 6 boundaries set
    # the last, shorter block far below the max: dropping it changes the sums by < 1e-4
    *[
        ("day06-online-softmax", "online_softmax_stats", seed)
        for seed in (200, 6810, 7127, 7212, 8691)
    ],
]


@pytest.mark.parametrize("day, name, seed", SWEEP_FINDINGS)
def test_solution_passes_the_seeds_a_sweep_once_failed(day, name, seed):
    result = sweep_seeds(day, name, [seed])
    assert result.failures == [], result.failures


@pytest.mark.parametrize("day, name", EXERCISES, ids=[f"{d}:{n}" for d, n in EXERCISES])
def test_untouched_stub_is_not_implemented(day, name):
    result = day_report(day, name, stub)
    assert result.keys == {"not_implemented"} and len(result.results) == 1


def looked_up_keys(tree) -> set:
    """Mistake keys a suite looks up in its HINTS: named("key"), hint("key"),
    expect_value_error(..., "key"), and ("key", tensor) suspects."""
    keys = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) in (
            "named",
            "hint",
            "expect_value_error",
        ):
            args = node.args[2:3] if node.func.id == "expect_value_error" else node.args[:1]
            keys |= {a.value for a in args if isinstance(a, ast.Constant)}
        if (
            isinstance(node, ast.Tuple)
            and len(node.elts) == 2
            and isinstance(node.elts[0], ast.Constant)
            and isinstance(node.elts[0].value, str)
            and not isinstance(node.elts[1], ast.Constant)
        ):
            keys.add(node.elts[0].value)
    return keys


def source_files(suite) -> list:
    """A suite's module, or every module of its package."""
    path = Path(suite.__file__)
    return sorted(path.parent.glob("*.py")) if path.name == "__init__.py" else [path]


SUITES = {
    day: importlib.import_module(f"grader.suites.{day.replace('-', '_')}") for day in assignments()
}
MISTAKES = {key for suite in SUITES.values() for key in suite.HINTS}


@pytest.mark.parametrize("day", assignments())
def test_every_mistake_a_suite_looks_up_is_in_its_own_hints(day):
    """Days may word one key differently, so a suite finds words only in its own HINTS."""
    keys = set().union(
        *(looked_up_keys(ast.parse(f.read_text())) for f in source_files(SUITES[day]))
    )
    assert (keys & MISTAKES) - set(SUITES[day].HINTS) == set()


# ----------------------------------------------------------------------------- shapes that expose mistakes


def test_attention_shapes_expose_the_common_mistakes_on_every_draw():
    for seed in range(300):
        shapes = attention_shapes(torch.Generator().manual_seed(seed))
        sizes = [shapes.batch, shapes.heads, shapes.lq, shapes.lk, shapes.d, shapes.dv]
        assert len(set(sizes)) == len(sizes)  # no two alike: B != H, Lq != Lk, Dv != D
        assert shapes.batch >= 2 and shapes.heads >= 2
        assert math.isqrt(shapes.d) ** 2 != shapes.d


def test_head_dims_are_never_perfect_squares():
    rng = torch.Generator().manual_seed(0)
    dims = {head_dim(rng, 2, 70) for _ in range(500)}
    assert dims == {d for d in range(2, 71) if math.isqrt(d) ** 2 != d}  # every other one drawn
    assert {head_dim(rng, 8, 128, powers_of_two=True) for _ in range(100)} == {8, 32, 128}
    with pytest.raises(ValueError, match="perfect square"):
        head_dim(rng, 16, 16)


def scores64(q, k):
    return q.double() @ k.double().transpose(-2, -1) / math.sqrt(q.shape[-1])


def check_scores(attention_scores, rng):
    """float64 scores on the shapes attention_shapes draws"""
    shapes = attention_shapes(rng)
    q = randn((shapes.batch, shapes.heads, shapes.lq, shapes.d), rng, dtype=torch.float64)
    k = randn((shapes.batch, shapes.heads, shapes.lk, shapes.d), rng, dtype=torch.float64)
    expect_close(attention_scores(q, k), scores64(q, k), torch.float64)


def check_scores_old_draw(attention_scores, rng):
    """float64 scores with a power-of-two head dimension, as day01 draws it"""
    d = 2 ** draw(rng, 2, 5)
    q, k = randn((3, d), rng, dtype=torch.float64), randn((4, d), rng, dtype=torch.float64)
    expect_close(attention_scores(q, k), scores64(q, k), torch.float64)


@pytest.mark.filterwarnings("ignore:The use of `x.T`:UserWarning")
@pytest.mark.parametrize(
    "bug",
    [
        lambda q, k: q @ k.transpose(-2, -1) / torch.sqrt(torch.tensor(q.shape[-1])),
        lambda q, k: q @ k.transpose(0, 1).transpose(-2, -1) / math.sqrt(q.shape[-1]),
        lambda q, k: q @ k.T / math.sqrt(q.shape[-1]),
        lambda q, k: k @ q.transpose(-2, -1) / math.sqrt(q.shape[-1]),
    ],
    ids=["float32_sqrt", "transpose(0, 1)", ".T", "swapped_q_k"],
)
def test_a_planted_bug_fails_on_every_draw_of_these_shapes(bug):
    for seed in range(100):
        assert not run("scores", bug, [check_scores], {}, seed=seed, verbose=False).passed


def test_a_float32_sqrt_passes_some_draws_of_a_power_of_two_head_dim():
    """Why head_dim exists: d = 4 or 16 hides the float32 sqrt(d), so a suite drawing 2 ** n
    catches it on some seeds only."""

    def float32_sqrt(q, k):
        return q @ k.transpose(-2, -1) / torch.sqrt(torch.tensor(q.shape[-1]))

    verdicts = {
        run("scores", float32_sqrt, [check_scores_old_draw], {}, seed=seed, verbose=False).passed
        for seed in range(40)
    }
    assert verdicts == {True, False}
