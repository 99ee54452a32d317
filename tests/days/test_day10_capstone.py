"""The day10 check suite, tested: the solution passes on every seed, each planted bug is caught
with its named hint, and bad input gives clear errors."""

import functools

import pytest
import torch

from grader.suites.day10_capstone import HINTS
from helpers import assert_mistake_named, day_report, edited_solution

DAY = "day10-capstone"
EXERCISES = [
    "estimate_attention_memory",
    "benchmark_attention",
    "choose_attention",
    "make_attention",
]

# For tests/test_nbgrader_e2e.py: 4 bytes per element whatever the dtype costs
# estimate_attention_memory's visible and hidden points (2 + 1), and the feedback names it.
PLANTED_SUBMISSION = {
    "cell": "estimate_attention_memory",
    "old": "s = torch.empty((), dtype=dtype).element_size()  # bytes per element",
    "new": "s = 4  # bytes per element",
    "points_lost": 3,
    "hint": HINTS["wrong_element_size"][1],
}

report = functools.partial(day_report, DAY)
assert_named = functools.partial(assert_mistake_named, DAY)


def stub(*args, **kwargs):
    raise NotImplementedError()


def variant(solution, cell: str, name: str, *edits):
    """The solution's function `name` after the (old, new) edits to its cell's source."""
    return edited_solution(DAY, solution, cell, edits, name)


# ----------------------------------------------------------------------------- the solution


@pytest.mark.parametrize("name", EXERCISES)
def test_solution_passes_visible_checks(solution, name):
    assert report(name, solution[name]).passed


def test_solution_estimates_match_the_library(solution):
    from course.reference.capstone import estimate_attention_memory as library

    for kind, kw in [
        ("dense", {}),
        ("strided", {"stride": 4, "local_window": 4}),
        ("sliding", {"window": 64}),
        ("chunked", {"chunk_size": 32, "overlap": 8}),
        ("flash", {}),
        ("linear", {}),
        ("performer", {}),
        ("scan", {}),
    ]:
        for size in [(1, 2, 512, 32), (2, 8, 4096, 64)]:
            assert solution["estimate_attention_memory"](
                kind, *size, torch.float32, **kw
            ) == library(kind, *size, torch.float32, **kw)


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda f: f("nope", 1, 1, 8, 8), "unknown kind"),
        (lambda f: f("sliding", 1, 1, 8, 8), "window"),
        (lambda f: f("dense", 1, 0, 8, 8), "heads"),
    ],
)
def test_estimate_bad_arguments(solution, call, match):
    with pytest.raises(ValueError, match=match):
        call(solution["estimate_attention_memory"])


# ----------------------------------------------------------------------------- estimate bugs


def estimate_bugs(solution):
    sol = solution["estimate_attention_memory"]
    import course.reference.capstone

    def forgot_heads(kind, batch, heads, seq_len, head_dim, dtype=torch.float32, **kw):
        return sol(kind, batch, 1, seq_len, head_dim, dtype, **kw)

    def four_bytes(kind, batch, heads, seq_len, head_dim, dtype=torch.float32, **kw):
        return sol(kind, batch, heads, seq_len, head_dim, torch.float32, **kw)

    def banded_as_dense(kind, batch, heads, seq_len, head_dim, dtype=torch.float32, **kw):
        if kind == "sliding":
            return sol("dense", batch, heads, seq_len, head_dim, dtype)
        return sol(kind, batch, heads, seq_len, head_dim, dtype, **kw)

    def no_overlap(kind, batch, heads, seq_len, head_dim, dtype=torch.float32, **kw):
        if kind == "chunked" and "overlap" in kw:
            kw = {**kw, "overlap": 0}
        return sol(kind, batch, heads, seq_len, head_dim, dtype, **kw)

    def accepts_anything(*args, **kwargs):
        try:
            return sol(*args, **kwargs)
        except ValueError:
            return 1

    def linear_as_dense(kind, batch, heads, seq_len, head_dim, dtype=torch.float32, **kw):
        if kind == "linear":
            return sol("dense", batch, heads, seq_len, head_dim, dtype)
        return sol(kind, batch, heads, seq_len, head_dim, dtype, **kw)

    def library(*args, **kwargs):
        return course.reference.capstone.estimate_attention_memory(*args, **kwargs)

    kv_once = variant(
        solution,
        "estimate_attention_memory",
        "estimate_attention_memory",
        ("2 * N * (L + left + right + tail) * d", "N * (L + left + right + tail) * d"),
    )
    return {
        "forgot_heads": forgot_heads,
        "wrong_element_size": four_bytes,
        "banded_quadratic": banded_as_dense,
        "forgot_overlap": no_overlap,
        "no_error_for_bad_params": accepts_anything,
        "estimate_off": linear_as_dense,
        "shortcut": library,
        "kv_once": kv_once,
        "not_implemented": stub,
    }


ESTIMATE_KEYS = [
    "forgot_heads",
    "wrong_element_size",
    "banded_quadratic",
    "forgot_overlap",
    "no_error_for_bad_params",
    "estimate_off",
    "shortcut",
    "kv_once",
    "not_implemented",
]


@pytest.mark.parametrize("key", ESTIMATE_KEYS)
def test_estimate_bug_is_named(solution, key, capsys):
    assert_named("estimate_attention_memory", estimate_bugs(solution)[key], key, capsys)


# ----------------------------------------------------------------------------- benchmark bugs

BENCH_EDITS = {
    "mean_not_median": [
        (
            "median_time(fn, q, k, v, repeats=repeats, warmup=0)",
            "(lambda ts: sum(ts) / len(ts))([median_time(fn, q, k, v, repeats=1, warmup=0) "
            "for _ in range(repeats)])",
        )
    ],
    "no_warmup": [
        (
            "out = fn(q, k, v)                                        # warm-up",
            "row['time_s'] = median_time(fn, q, k, v, repeats=repeats, warmup=0); out = fn(q, k, v)",
        ),
        ('row["time_s"] = median_time(fn, q, k, v, repeats=repeats, warmup=0)', "pass"),
    ],
    "failure_raised": [("except Exception as exc:", "except ZeroDivisionError as exc:")],
    "wrong_status": [('"out_of_memory" if oom else "error"', '"error"')],
    "peak_wrong": [("peak_memory(fn, q, k, v)", "peak_memory(lambda *a: None, q, k, v)")],
    "quality_wrong": [(" / ref.norm()).item()", ").item()")],
    "missing_fields": [("row = dict.fromkeys(FIELDS)", "row = dict.fromkeys(FIELDS[:-1])")],
    "too_few_calls": [("repeats=repeats, warmup=0", "repeats=1, warmup=0")],
}


@pytest.mark.parametrize("key", [*BENCH_EDITS, "not_implemented", "shortcut"])
def test_benchmark_bug_is_named(solution, key, capsys):
    if key == "not_implemented":
        bug = stub
    elif key == "shortcut":
        import course.reference.capstone

        bug = course.reference.capstone.benchmark_attention
    else:
        bug = variant(solution, "benchmark_attention", "benchmark_attention", *BENCH_EDITS[key])
    assert_named("benchmark_attention", bug, key, capsys)


# ----------------------------------------------------------------------------- choose bugs

CHOOSE_EDITS = {
    "ignores_gpu": ([("if has_gpu:", "if False:")], "wrong_choice"),
    "no_length_limit": ([("elif seq_len <= EXACT_MAX_LEN_CPU:", "elif True:")], "wrong_choice"),
    "ignores_budget": ([("<= memory_budget_bytes:", "> 0:")], "wrong_choice"),
    "no_error": (
        [
            (
                'raise ValueError(f"nothing fits',
                'return "linear"\n    raise ValueError(f"nothing fits',
            )
        ],
        "no_error_for_bad_params",
    ),
}


@pytest.mark.parametrize("bug", CHOOSE_EDITS)
def test_choose_bug_is_named(solution, bug, capsys):
    edits, key = CHOOSE_EDITS[bug]
    assert_named(
        "choose_attention",
        variant(solution, "choose_attention", "choose_attention", *edits),
        key,
        capsys,
    )


def test_choose_shortcut_and_stub(solution, capsys):
    import course.reference.capstone

    assert_named("choose_attention", stub, "not_implemented", capsys)
    assert_named("choose_attention", course.reference.capstone.choose_attention, "shortcut", capsys)


def test_library_choose_agrees_with_the_solution(solution):
    from course.reference.capstone import choose_attention as library

    for args in [
        (512, True, 2**33, False),
        (6000, True, 2**28, False),
        (32768, True, 2**33, False),
        (32768, False, 2**33, False),
        (32768, True, 2**33, True),
        (100, False, 2**33, True),
    ]:
        assert solution["choose_attention"](*args) == library(*args)


# ----------------------------------------------------------------------------- make_attention bugs

MAKE_EDITS = {
    "heads_ignored": ("self.num_heads, d // self.num_heads", "1, d"),
    "scaled_by_d_model": (
        "out = self.attend(q, k, v, mask)",
        "out = self.attend(q / self.num_heads ** 0.5, k, v, mask)",
    ),
    "causal_ignored": ('o["window"], causal=o["causal"])', 'o["window"], causal=False)'),
    "wrong_window": ('o["window"], causal=o["causal"])', 'o["window"] + 1, causal=o["causal"])'),
    "overlap_ignored": ('o["chunk_size"], o["overlap"])', 'o["chunk_size"], 0)'),
    "mask_ignored": ("pattern if mask is None else pattern & mask", "pattern"),
    "mask_silently_dropped": ("if mask is not None and self.kind not in TAKES_MASK:", "if False:"),
    "not_causal_scan": ("return self.block(x)", "return self.block(x.flip(1)).flip(1)"),
    "unclear_kind_error": ("expected one of {', '.join(LAYER_KINDS)}", "check the spelling"),
    "unknown_argument_accepted": (
        "unknown = set(kwargs) - set(LAYER_KINDS[kind])",
        "unknown = set()",
    ),
}
MAKE_KEYS = {"unknown_argument_accepted": "unclear_kind_error"}


@pytest.mark.parametrize("bug", MAKE_EDITS)
def test_make_attention_bug_is_named(solution, bug, capsys):
    make_attention = variant(solution, "make_attention", "make_attention", MAKE_EDITS[bug])
    assert_named("make_attention", make_attention, MAKE_KEYS.get(bug, bug), capsys)


def test_make_attention_shortcut_and_stub(solution, capsys):
    import course.reference.mechanisms

    assert_named("make_attention", stub, "not_implemented", capsys)
    assert_named("make_attention", course.reference.mechanisms.make_attention, "shortcut", capsys)
