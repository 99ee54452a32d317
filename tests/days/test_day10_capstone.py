"""The day10 check suite, tested: the solution passes on every seed, each planted bug is caught
with its named hint, and bad input gives clear errors."""

import functools
import itertools
import math
import time

import pytest
import torch

from grader.harness.checking import run
from grader.suites.day10_capstone import HINTS, benchmark
from helpers import (
    assert_mistake_named,
    assert_promise_kept,
    day_report,
    edited_solution,
    promised,
)

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
    "quality_not_relative": [(" / ref.norm()).item()", ").item()")],
    "quality_wrong": [
        (
            "((out.double().cpu() - ref).norm() / ref.norm())",
            "(out.double().cpu() - ref).abs().mean()",
        )
    ],
    "missing_fields": [("row = dict.fromkeys(FIELDS)", "row = dict.fromkeys(FIELDS[:-1])")],
    "too_few_calls": [("repeats=repeats, warmup=0", "repeats=1, warmup=0")],
    "quality_row_mean": [
        (
            "((out.double().cpu() - ref).norm() / ref.norm())",
            "((out.double().cpu() - ref).norm(dim=-1) / ref.norm(dim=-1)).mean()",
        )
    ],
    "same_inputs": [("for _ in range(3))", "for _ in range(3)); k = v = q")],
    "inputs_not_seeded": [("generator=generator)", "generator=None)")],
    "unmeasured_not_none": [("row = dict.fromkeys(FIELDS)", "row = dict.fromkeys(FIELDS, 0)")],
    "skips_every_mechanism": [
        ("if name in failed:", "if failed:"),
        ("message=failed[name])", "message='another failed')"),
    ],
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


def test_benchmark_state_kept_across_calls_is_named(solution):
    # The failures kept in a dict that outlives the call (here the function's own attribute):
    # each report needs a fresh copy, as the bug remembers every call before it.
    def kept_state():
        edit = (
            "rows, failed = [], {}",
            "rows, failed = [], benchmark_attention.__dict__.setdefault('f', {})",
        )
        return variant(solution, "benchmark_attention", "benchmark_attention", edit)

    assert "state_kept_across_calls" in report("benchmark_attention", kept_state()).keys
    hidden = report("benchmark_attention", kept_state(), hidden=True, seed=11)
    assert "state_kept_across_calls" in hidden.keys


def stall_exact(monkeypatch, stalls, seconds: float = 0.2) -> None:
    """The checks' exact attention (benchmark.exact, which their fakes call) sleeps `seconds` on
    the calls for which stalls(call number, length) is true: a machine so loaded that a quick
    call outlasts the 0.15 s budget of bench_failures_recorded or the 0.08 s of a quick median."""
    calls = itertools.count(1)

    def exact(q, k, v):
        if stalls(next(calls), q.shape[-2]):
            time.sleep(seconds)
        return torch.nn.functional.scaled_dot_product_attention(q, k, v)

    monkeypatch.setattr(benchmark, "exact", exact)


def first_call_past(short: int):
    """stalls() for the first call at each length past `short`: exact's warm-up there."""
    seen = set()

    def stalls(call, length):
        first = length > short and length not in seen
        seen.add(length)
        return first

    return stalls


@pytest.mark.parametrize("seed", [0, 11, 12])
def test_a_right_benchmark_on_a_stalled_machine_passes(solution, monkeypatch, seed):
    # Found by a sweep on a loaded machine: exact attention's warm-up at L = 16 took over the
    # 0.15 s budget, the right benchmark said 'too_slow', and the check called it a mistake.
    stall_exact(monkeypatch, first_call_past(8))
    checks = [benchmark.bench_failures_recorded]
    right = run(
        "benchmark_attention", solution["benchmark_attention"], checks, {}, seed=seed, verbose=False
    )
    assert right.passed, [r.message for r in right.results]
    bug = variant(
        solution,
        "benchmark_attention",
        "benchmark_attention",
        *BENCH_EDITS["skips_every_mechanism"],
    )
    stall_exact(monkeypatch, first_call_past(8))
    assert (
        "skips_every_mechanism"
        in run("benchmark_attention", bug, checks, {}, hints=HINTS, seed=seed, verbose=False).keys
    )


def test_a_stall_outside_the_fakes_costs_one_more_attempt(solution):
    # A stall between the benchmark's clock and the call, where no fake's timer sees it (a
    # sweep at load 10-18 found 20 seeds of 10,000): the check runs again, and a right
    # benchmark passes on the next attempt.
    stalls = iter([True])  # the first call past L = 8 only
    right = solution["benchmark_attention"]

    def stalled_once(fns, seq_lens, **options):
        def late(name, fn):
            def call(q, k, v):
                if name == "exact" and q.shape[-2] > 8 and next(stalls, False):
                    time.sleep(0.2)
                return fn(q, k, v)

            return call

        return right({name: late(name, fn) for name, fn in fns.items()}, seq_lens, **options)

    checks = [benchmark.bench_failures_recorded]
    report = run("benchmark_attention", stalled_once, checks, {}, hints=HINTS, verbose=False)
    assert report.passed and next(stalls, "spent") == "spent"


def test_a_median_slowed_by_the_machine_passes(solution, monkeypatch):
    # The first timed call after the warm-up takes 0.1 s: the median of the timed calls (0.1,
    # 0.4 for the outlier, 0.002) is then 0.1 s, right, although over the 0.08 s a quick median
    # takes; their mean, 0.17 s, is still told apart.
    stall_exact(monkeypatch, lambda call, length: call == 2, seconds=0.1)
    checks = [benchmark.bench_warmup_and_median]
    right = run(
        "benchmark_attention",
        solution["benchmark_attention"],
        checks,
        {},
        hints=HINTS,
        verbose=False,
    )
    assert right.passed, [r.message for r in right.results]
    bug = variant(
        solution, "benchmark_attention", "benchmark_attention", *BENCH_EDITS["mean_not_median"]
    )
    stall_exact(monkeypatch, lambda call, length: call == 2, seconds=0.1)
    assert not run("benchmark_attention", bug, checks, {}, hints=HINTS, verbose=False).passed


# ----------------------------------------------------------------------------- choose bugs

CHOOSE_EDITS = {
    "ignores_gpu": ([("if has_gpu:", "if False:")], "gpu_ignored"),
    "no_length_limit": (
        [("elif seq_len <= EXACT_MAX_LEN_CPU:", "elif True:")],
        "exact_past_cpu_limit",
    ),
    "ignores_budget": ([("<= memory_budget_bytes:", "> 0:")], "budget_ignored"),
    "no_error": (
        [
            (
                'raise ValueError(f"nothing fits',
                'return "linear"\n    raise ValueError(f"nothing fits',
            )
        ],
        "nothing_fits_accepted",
    ),
    "dense_for_local_context": (
        [('candidates = ["sliding", "linear"]', 'candidates = ["dense", "sliding", "linear"]')],
        "local_not_sliding",
    ),
    "global_and_short": (
        [
            (
                "if needs_global_context or seq_len <= window:",
                "if needs_global_context and seq_len <= window:",
            )
        ],
        "global_got_sliding",
    ),
    "wrong_rule": (
        [('candidates = ["sliding", "linear"]', 'candidates = ["linear"]')],
        "wrong_choice",
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
    "scaled_twice": (
        "out = self.attend(q, k, v, mask)",
        "out = self.attend(q / q.shape[-1] ** 0.5, k, v, mask)",
    ),
    "split_without_transpose": (
        "t.view(B, L, self.num_heads, d // self.num_heads).transpose(1, 2)",
        "t.reshape(B, self.num_heads, L, d // self.num_heads)",
    ),
    "merge_wrong_order": (
        "out.transpose(1, 2).reshape(B, L, H * dh)",
        "out.permute(0, 2, 3, 1).reshape(B, L, H * dh)",
    ),
    "chunked_args_swapped": ('o["chunk_size"], o["overlap"])', 'o["overlap"], o["chunk_size"])'),
    "performer_global_seed": (
        'torch.Generator(device=q.device).manual_seed(o["seed"])',
        'torch.manual_seed(o["seed"])',
    ),
    "defaults_shared": (
        "options = {**LAYER_KINDS[kind], **kwargs}",
        "options = LAYER_KINDS[kind]; options.update(kwargs)",
    ),
    "defaults_not_filled": ("options = {**LAYER_KINDS[kind], **kwargs}", "options = dict(kwargs)"),
    # a non-causal dense layer with no pattern to combine the mask with: the crash is the message
    "mask_without_pattern_crashes": (
        "pattern = torch.ones(L, L, dtype=torch.bool, device=q.device)",
        "pattern = None",
    ),
}
MAKE_KEYS = {
    "unknown_argument_accepted": "unclear_kind_error",
    "mask_without_pattern_crashes": "raised",
}


@pytest.mark.parametrize("bug", MAKE_EDITS)
def test_make_attention_bug_is_named(solution, bug, capsys):
    make_attention = variant(solution, "make_attention", "make_attention", MAKE_EDITS[bug])
    assert_named("make_attention", make_attention, MAKE_KEYS.get(bug, bug), capsys)


def test_make_attention_shortcut_and_stub(solution, capsys):
    import course.reference.mechanisms

    assert_named("make_attention", stub, "not_implemented", capsys)
    assert_named("make_attention", course.reference.mechanisms.make_attention, "shortcut", capsys)


# ----------------------------------------------------------------------------- a beginner's mistakes

# A beginner's pass through the notebook (issue #18): each mistake as an edit of the solution's
# exercise, and the key that must name it, on the visible seed and on fresh hidden ones.
BEGINNER_MISTAKES = {
    "estimate_no_heads": (
        "estimate_attention_memory",
        [("N, L, d = batch * heads, seq_len, head_dim", "N, L, d = batch, seq_len, head_dim")],
        "forgot_heads",
    ),
    "estimate_bits": (
        "estimate_attention_memory",
        [("s = torch.empty((), dtype=dtype).element_size()", "s = torch.finfo(dtype).bits")],
        "bits_not_bytes",
    ),
    "estimate_float": (
        "estimate_attention_memory",
        [("s = torch.empty((), dtype=dtype).element_size()", "s = torch.finfo(dtype).bits / 8")],
        "not_an_int",
    ),
    "estimate_float_in_one_branch": (
        "estimate_attention_memory",
        [("2 * scores // s)", "2 * scores / s)")],
        "not_an_int",
    ),
    "estimate_sliding_dense": (
        "estimate_attention_memory",
        [('    if kind == "dense":', '    if kind in ("dense", "sliding"):')],
        "banded_quadratic",
    ),
    "estimate_no_overlap": (
        "estimate_attention_memory",
        [('overlap = min(options["overlap"], L)', "overlap = 0")],
        "forgot_overlap",
    ),
    "estimate_masked_two_buffers": (
        "estimate_attention_memory",
        [("return 3 * s * N * L * L + L * L + L", "return 2 * s * N * L * L + L * L + L")],
        "masked_two_buffers",
    ),
    "estimate_scan_channels": (
        "estimate_attention_memory",
        [("5 * N * d * L * n + 3 * N * d * L", "5 * N * L * n + 3 * N * L")],
        "scan_channels",
    ),
    "estimate_performer_features_only": (
        "estimate_attention_memory",
        [("s * (4 * N * L * m + N * L * d + m * d) + 8 * m * d", "s * 4 * N * L * m")],
        "performer_features_only",
    ),
    "estimate_window_sides_misread": (
        "estimate_attention_memory",
        [
            (
                'left, right = (w - 1, 0) if options["causal"] else (w // 2, w // 2)',
                'left, right = w - 1, (0 if options["causal"] else w // 2)',
            )
        ],
        "window_sides_misread",
    ),
    "estimate_no_validation": (
        "estimate_attention_memory",
        [
            ("    if kind not in KINDS:\n        raise", "    if False:\n        raise"),
            ("required, defaults = KINDS[kind]", "required, defaults = KINDS.get(kind, ((), {}))"),
            ("    if missing:\n        raise", "    if False:\n        raise"),
            ("or value < low:", "and False:"),
        ],
        "no_error_for_bad_params",
    ),
    "estimate_zero_size": (
        "estimate_attention_memory",
        [("or value < low:", "and False:")],
        "no_error_for_bad_params",
    ),
    "estimate_missing_keyword_keyerror": (
        "estimate_attention_memory",
        [("    if missing:\n        raise", "    if False:\n        raise")],
        "no_error_for_bad_params",
    ),
    "bench_warmup_among_timed": (
        "benchmark_attention",
        [
            (
                'row["time_s"] = median_time(fn, q, k, v, repeats=repeats, warmup=0)',
                'row["time_s"] = statistics.median([time.perf_counter() - start] + '
                "[median_time(fn, q, k, v, repeats=1, warmup=0) for _ in range(repeats)])",
            )
        ],
        "warmup_timed",
    ),
    "bench_warmup_reused_as_timed": (
        "benchmark_attention",
        [
            (
                'row["time_s"] = median_time(fn, q, k, v, repeats=repeats, warmup=0)',
                'row["time_s"] = statistics.median([time.perf_counter() - start] + '
                "[median_time(fn, q, k, v, repeats=1, warmup=0) for _ in range(repeats - 1)])",
            )
        ],
        "warmup_timed",
    ),
    "bench_max_abs_error": (
        "benchmark_attention",
        [
            (
                "((out.double().cpu() - ref).norm() / ref.norm())",
                "(out.double().cpu() - ref).abs().max()",
            )
        ],
        "quality_max_abs",
    ),
    "bench_milliseconds": (
        "benchmark_attention",
        [('row["time_s"] = median_time(', 'row["time_s"] = 1e3 * median_time(')],
        "time_not_seconds",
    ),
    "bench_peak_of_output": (
        "benchmark_attention",
        [("peak_memory(fn, q, k, v)", "out.numel() * out.element_size()")],
        "peak_wrong",
    ),
    "bench_divided_by_output": (
        "benchmark_attention",
        [(" / ref.norm()).item()", " / out.double().norm()).item()")],
        "quality_by_output_norm",
    ),
    "bench_reference_unscaled": (
        "benchmark_attention",
        [(" / math.sqrt(head_dim), dim=-1)", ", dim=-1)")],
        "reference_unscaled",
    ),
    "bench_skipped_rows_left_out": (
        "benchmark_attention",
        [('row.update(status="skipped", message=failed[name])', "rows.remove(row)")],
        "skipped_rows_missing",
    ),
    "bench_failed_run_again": (
        "benchmark_attention",
        [("failed[name] = f\"{row['status']} at L = {L}\"", "pass")],
        "not_skipped",
    ),
    "bench_no_time_budget": (
        "benchmark_attention",
        [("if time.perf_counter() - start > time_budget_s:", "if False:")],
        "too_slow_missed",
    ),
    "bench_status_oom": (
        "benchmark_attention",
        [('"out_of_memory" if oom else "error"', '"oom" if oom else "error"')],
        "wrong_status",
    ),
    "bench_tuple_not_unpacked": (
        "benchmark_attention",
        [("out = out[0] if isinstance(out, tuple) else out", "pass")],
        "tuple_not_unpacked",
    ),
    "choose_dense_first_on_gpu": (
        "choose_attention",
        [('candidates = ["flash", "linear"]', 'candidates = ["dense", "flash", "linear"]')],
        "gpu_ignored",
    ),
    "choose_short_sequence_local": (
        "choose_attention",
        [("if needs_global_context or seq_len <= window:", "if needs_global_context:")],
        "short_sequence_local",
    ),
    "choose_window_not_inclusive": (
        "choose_attention",
        [
            (
                "if needs_global_context or seq_len <= window:",
                "if needs_global_context or seq_len < window:",
            )
        ],
        "window_not_inclusive",
    ),
    "choose_cpu_limit_not_inclusive": (
        "choose_attention",
        [("elif seq_len <= EXACT_MAX_LEN_CPU:", "elif seq_len < EXACT_MAX_LEN_CPU:")],
        "cpu_limit_not_inclusive",
    ),
    "choose_no_linear_fallback": (
        "choose_attention",
        [('candidates = ["linear"]', "candidates = []")],
        "no_linear_fallback",
    ),
    "choose_flash_first_on_cpu": (
        "choose_attention",
        [('["dense", "flash", "linear"]', '["flash", "dense", "linear"]')],
        "cpu_order",
    ),
    "choose_default_sizes": (
        "choose_attention",
        [
            (
                "estimate_attention_memory(kind, batch, heads, seq_len, head_dim, dtype, **kw)",
                "estimate_attention_memory(kind, 1, 8, seq_len, 64, torch.float32, **kw)",
            )
        ],
        "arguments_ignored",
    ),
    "choose_default_window": (
        "choose_attention",
        [
            ("or seq_len <= window:", "or seq_len <= 256:"),
            ('kw = {"window": window}', 'kw = {"window": 256}'),
        ],
        "arguments_ignored",
    ),
    "choose_window_not_passed": (
        "choose_attention",
        [('kw = {"window": window} if kind == "sliding" else {}', "kw = {}")],
        "window_not_passed",
    ),
    "choose_make_attention_name": (
        "choose_attention",
        [
            ('candidates = ["sliding", "linear"]', 'candidates = ["sliding_window", "linear"]'),
            ('if kind == "sliding" else {}', 'if kind == "sliding_window" else {}'),
            (
                "estimate_attention_memory(kind, batch",
                'estimate_attention_memory(kind.replace("sliding_window", "sliding"), batch',
            ),
        ],
        "kind_name",
    ),
    "choose_make_attention_name_estimated": (
        "choose_attention",
        [('candidates = ["sliding", "linear"]', 'candidates = ["sliding_window", "linear"]')],
        "kind_name",
    ),
    "choose_strict_fit": (
        "choose_attention",
        [("<= memory_budget_bytes:", "< memory_budget_bytes:")],
        "fit_not_inclusive",
    ),
    "make_dense_causal_ignored": (
        "make_attention",
        [('elif o["causal"]:', "elif False:")],
        "causal_ignored",
    ),
    "make_window_one_short": (
        "make_attention",
        [('o["window"], causal=o["causal"])', 'o["window"] - 1, causal=o["causal"])')],
        "wrong_window",
    ),
    "make_window_one_long": (
        "make_attention",
        [('o["window"], causal=o["causal"])', 'o["window"] + 1, causal=o["causal"])')],
        "wrong_window",
    ),
    "make_linear_causal_ignored": (
        "make_attention",
        [('if self.kind == "linear" and o["causal"]:', "if False:")],
        "causal_ignored",
    ),
    "make_heads_not_dividing_accepted": (
        "make_attention",
        [("if d_model % num_heads:", "if False:")],
        "heads_not_dividing",
    ),
    "make_pattern_inverted": (
        "make_attention",
        [
            (
                "pattern if mask is None else pattern & mask",
                "~(pattern if mask is None else pattern & mask)",
            )
        ],
        "mask_inverted",
    ),
    "make_out_proj_missing": (
        "make_attention",
        [("return self.out_proj(out.transpose(1, 2)", "return (out.transpose(1, 2)")],
        "out_proj_missing",
    ),
    "make_mamba_both_ways": (
        "make_attention",
        [("return self.block(x)", "return self.block(x) + self.block(x.flip(1)).flip(1)")],
        "not_causal_scan",
    ),
    "make_unknown_kind_accepted": (
        "make_attention",
        [
            ("    if kind not in LAYER_KINDS:\n        raise", "    if False:\n        raise"),
            ("set(LAYER_KINDS[kind])\n", "set(LAYER_KINDS.get(kind, {}))\n"),
            (
                "options = {**LAYER_KINDS[kind], **kwargs}",
                "options = {**LAYER_KINDS.get(kind, {}), **kwargs}",
            ),
        ],
        "unclear_kind_error",
    ),
    "make_bad_argument_unexplained": (
        "make_attention",
        [
            (
                'raise ValueError(f"kind {kind!r} takes {sorted(LAYER_KINDS[kind])}, not {sorted(unknown)}")',
                'raise ValueError("bad argument")',
            )
        ],
        "unclear_kind_error",
    ),
    "estimate_no_block_floor": (
        "estimate_attention_memory",
        [("max(16, min(L, left + right + 1))", "min(L, left + right + 1)")],
        "block_below_16",
    ),
    "estimate_causal_window_one_wide": (
        "estimate_attention_memory",
        [("(w - 1, 0) if options", "(w, 0) if options")],
        "causal_window_one_wide",
    ),
    "estimate_defaults_updated_in_place": (
        "estimate_attention_memory",
        [("options = {**defaults, **kw}", "options = defaults; options.update(kw)")],
        "defaults_changed",
    ),
    "estimate_num_features_ignored": (
        "estimate_attention_memory",
        [('m = options["num_features"]', "m = 256")],
        "option_ignored",
    ),
    "estimate_local_window_not_required": (
        "estimate_attention_memory",
        [('"strided": (("stride", "local_window"), {})', '"strided": (("stride",), {})')],
        "no_error_for_bad_params",
    ),
    "make_missing_argument_unchecked": (
        "make_attention",
        [("    if missing:\n        raise", "    if False:\n        raise")],
        "unclear_kind_error",
    ),
    "make_mask_or_pattern": (
        "make_attention",
        [
            (
                "pattern if mask is None else pattern & mask",
                "pattern if mask is None else pattern | mask",
            )
        ],
        "mask_or_pattern",
    ),
    "make_mask_replaces_pattern": (
        "make_attention",
        [("pattern if mask is None else pattern & mask", "pattern if mask is None else mask")],
        "mask_replaces_pattern",
    ),
    "make_performer_fresh_features": (
        "make_attention",
        [
            (
                'generator = torch.Generator(device=q.device).manual_seed(o["seed"])',
                "generator = None",
            )
        ],
        "performer_not_deterministic",
    ),
    "make_merge_without_transpose": (
        "make_attention",
        [("out.transpose(1, 2).reshape(B, L, H * dh)", "out.reshape(B, L, H * dh)")],
        "merge_without_transpose",
    ),
    # a second pass (the capstone's student report): mistakes that passed or got the fallback hint
    "estimate_flash_one_tile": (
        "estimate_attention_memory",
        [("tiles = 4 if L > bq else 3", "tiles = 1")],
        "flash_one_tile",
    ),
    "estimate_overlap_one_side": (
        "estimate_attention_memory",
        [
            (
                'min(options["chunk_size"], L), overlap, overlap)',
                'min(options["chunk_size"], L), overlap, 0)',
            )
        ],
        "overlap_one_side",
    ),
    "choose_global_context_ignored": (
        "choose_attention",
        [("if needs_global_context or seq_len <= window:", "if seq_len <= window:")],
        "global_got_sliding",
    ),
    "choose_budget_ignored": (
        "choose_attention",
        [("<= memory_budget_bytes:", "> 0:")],
        "budget_ignored",
    ),
    "make_performer_num_features_ignored": (
        "make_attention",
        [('num_features=o["num_features"], generator=generator)', "generator=generator)")],
        "performer_features_ignored",
    ),
    "make_mamba_residual": (
        "make_attention",
        [("return self.block(x)", "return x + self.block(x)")],
        "scan_residual",
    ),
    "make_merge_features_first": (
        "make_attention",
        [
            (
                "out.transpose(1, 2).reshape(B, L, H * dh)",
                "out.permute(0, 2, 3, 1).reshape(B, L, H * dh)",
            )
        ],
        "merge_wrong_order",
    ),
    "make_strided_pattern_inverted": (
        "make_attention",
        [("pattern = strided_mask(", "pattern = ~strided_mask(")],
        "mask_inverted",
    ),
    "make_dense_scaled_by_d_model": (
        "make_attention",
        [
            (
                "return attention(q, k, v, pattern if mask is None else pattern & mask)[0]",
                "return attention(q / self.num_heads ** 0.5, k, v, "
                "pattern if mask is None else pattern & mask)[0]",
            )
        ],
        "scaled_by_d_model",
    ),
    # the notebook's "recognise" lists, each listed mistake planted (issue #18)
    "bench_longest_length_left_out": (
        "benchmark_attention",
        [("for L in sorted(seq_lens):", "for L in sorted(seq_lens)[:-1]:")],
        "wrong_rows",
    ),
    "choose_empty_sequence_accepted": (
        "choose_attention",
        [
            (
                "if not isinstance(seq_len, int) or seq_len < 1:\n        raise",
                "seq_len = max(seq_len, 1)\n    if False:\n        raise",
            )
        ],
        "choose_bad_arguments",
    ),
    "choose_nonpositive_budget_as_no_limit": (
        "choose_attention",
        [
            (
                "if not memory_budget_bytes > 0:\n        raise",
                "if memory_budget_bytes <= 0:\n        memory_budget_bytes = float('inf')\n"
                "    if False:\n        raise",
            )
        ],
        "choose_bad_arguments",
    ),
}


@pytest.mark.parametrize("mistake", BEGINNER_MISTAKES)
def test_beginner_mistake_is_named_on_every_seed(mistake, solution, capsys):
    cell, edits, key = BEGINNER_MISTAKES[mistake]
    bug = variant(solution, cell, cell, *edits)
    assert_named(cell, bug, key, capsys)
    for seed in (11, 12, 13):  # hidden checks draw fresh inputs
        result = report(cell, bug, hidden=True, seed=seed)
        assert key in result.keys, (seed, [(r.key, r.message) for r in result.results])


# Every check that fails on these mistakes names them (or, for the budget ignored, the missing
# "nothing fits" error that comes with it): a later check must not point at correct code, as
# "the sizes passed ignored" did for flash before dense and for the budget ignored.
EVERY_LINE_NAMED = {
    "choose_flash_first_on_cpu": {"cpu_order"},
    "choose_budget_ignored": {"budget_ignored", "nothing_fits_accepted"},
    "choose_global_context_ignored": {"global_got_sliding"},
    "make_merge_features_first": {"merge_wrong_order"},
    "make_dense_scaled_by_d_model": {"scaled_by_d_model"},
    "make_strided_pattern_inverted": {"mask_inverted"},
    "estimate_flash_one_tile": {"flash_one_tile"},
}


@pytest.mark.parametrize("mistake", EVERY_LINE_NAMED)
def test_every_failing_check_names_the_mistake(mistake, solution):
    cell, edits, _ = BEGINNER_MISTAKES[mistake]
    bug = variant(solution, cell, cell, *edits)
    for seed in (0, 11, 12, 13):
        result = report(cell, bug, hidden=seed != 0, seed=seed)
        failed = [(r.key, r.message) for r in result.results if not r.passed]
        assert failed and {key for key, _ in failed} <= EVERY_LINE_NAMED[mistake], (seed, failed)


# Correct but unusual solutions from the same pass: each must pass the visible and hidden checks.
CORRECT_ALTERNATIVES = {
    "estimate_itemsize_and_ceil_division": (
        "estimate_attention_memory",
        [
            ("s = torch.empty((), dtype=dtype).element_size()", "s = dtype.itemsize"),
            ("nb = math.ceil(L / block)", "nb = -(-L // block)"),
        ],
    ),
    "estimate_float_arithmetic_rounded_up": (
        "estimate_attention_memory",
        [("return base + s * peak", "return math.ceil(float(base) + float(s) * peak)")],
    ),
    "estimate_finfo_bytes_and_float_group": (
        "estimate_attention_memory",
        [
            ("s = torch.empty((), dtype=dtype).element_size()", "s = torch.finfo(dtype).bits // 8"),
            (
                "GROUP_SCORES // (block * span * N)",
                "int(GROUP_SCORES / (block * span * N))",
            ),
        ],
    ),
    "bench_sdpa_reference_and_vector_norm": (
        "benchmark_attention",
        [
            (
                "ref = torch.softmax(q64 @ k64.transpose(-2, -1) / math.sqrt(head_dim), dim=-1) @ v64",
                "ref = torch.nn.functional.scaled_dot_product_attention(q64, k64, v64)",
            ),
            (
                "((out.double().cpu() - ref).norm() / ref.norm()).item()",
                "float(torch.linalg.vector_norm(out.to(torch.float64).cpu() - ref) "
                "/ torch.linalg.vector_norm(ref))",
            ),
        ],
    ),
    "bench_peak_before_timing": (
        "benchmark_attention",
        [
            (
                'row["time_s"] = median_time(fn, q, k, v, repeats=repeats, warmup=0)\n'
                '                        row["peak_bytes"] = peak_memory(fn, q, k, v)',
                'row["peak_bytes"] = peak_memory(fn, q, k, v)\n'
                '                        row["time_s"] = median_time(fn, q, k, v, repeats=repeats, warmup=0)',
            )
        ],
    ),
    "bench_own_timing_loop": (
        "benchmark_attention",
        [
            (
                'row["time_s"] = median_time(fn, q, k, v, repeats=repeats, warmup=0)',
                "times = []\n"
                "                        for _ in range(repeats):\n"
                "                            begin = time.perf_counter_ns()\n"
                "                            fn(q, k, v)\n"
                "                            times.append((time.perf_counter_ns() - begin) / 1e9)\n"
                '                        row["time_s"] = statistics.median(times)',
            ),
            (
                "oom = isinstance(exc, torch.OutOfMemoryError)",
                'oom = "OutOfMemory" in type(exc).__name__',
            ),
        ],
    ),
    "make_sdpa_bool_mask_permute": (
        "make_attention",
        [
            (
                "return attention(q, k, v, pattern if mask is None else pattern & mask)[0]",
                "return torch.nn.functional.scaled_dot_product_attention(\n"
                "                q, k, v, attn_mask=pattern if mask is None else pattern & mask)",
            ),
            ("out.transpose(1, 2).reshape(B, L, H * dh)", "out.permute(0, 2, 1, 3).flatten(2)"),
        ],
    ),
    "make_own_softmax_with_nan_to_num": (
        "make_attention",
        [
            (
                "return attention(q, k, v, pattern if mask is None else pattern & mask)[0]",
                "allowed = pattern if mask is None else pattern & mask\n"
                "            scores = (q @ k.transpose(-2, -1)) * q.shape[-1] ** -0.5\n"
                "            scores = scores.masked_fill(~allowed, float('-inf'))\n"
                "            return torch.softmax(scores, dim=-1).nan_to_num(0.0) @ v",
            )
        ],
    ),
    "make_logical_and_tril_flatten": (
        "make_attention",
        [
            (
                "pattern if mask is None else pattern & mask",
                "pattern if mask is None else torch.logical_and(pattern, mask)",
            ),
            (
                "pattern = causal_mask(L, device=q.device)",
                "pattern = torch.ones(L, L, device=q.device).tril().bool()",
            ),
            ("out.transpose(1, 2).reshape(B, L, H * dh)", "out.transpose(1, 2).flatten(2)"),
        ],
    ),
    # from the second pass (the capstone's student report)
    "estimate_groups_walked_in_a_loop": (
        "estimate_attention_memory",
        [
            (
                "    groups = math.ceil(nb / group)\n"
                "    if groups > 1:\n"
                "        nxt = work(nb - group) if groups == 2 else work(group)\n"
                "        peak = max(peak, scores + 2 * nxt[0] + nxt[1])\n",
                "    sizes = [min(group, nb - start) for start in range(0, nb, group)]\n"
                "    for now, nxt in zip(sizes, sizes[1:]):\n"
                "        peak = max(peak, work(now)[0] + 2 * work(nxt)[0] + work(nxt)[1])\n",
            )
        ],
    ),
    "bench_global_seed_per_length": (
        "benchmark_attention",
        [
            (
                "        q, k, v = (torch.randn(batch, heads, L, head_dim, generator=generator)",
                "        torch.manual_seed(seed)\n"
                "        q, k, v = (torch.randn(batch, heads, L, head_dim)",
            )
        ],
    ),
    "bench_generator_per_length": (
        "benchmark_attention",
        [
            (
                "    generator = torch.Generator().manual_seed(seed)\n"
                "    for L in sorted(seq_lens):\n",
                "    for L in sorted(seq_lens):\n"
                "        generator = torch.Generator().manual_seed(seed)\n",
            )
        ],
    ),
    "choose_budget_compared_in_mib": (
        "choose_attention",
        [("<= memory_budget_bytes:", "/ 2**20 <= memory_budget_bytes / 2**20:")],
    ),
    "make_fused_qkv_positional_num_features": (
        "make_attention",
        [
            (
                "q, k, v = self.split(self.q_proj(x)), self.split(self.k_proj(x)), "
                "self.split(self.v_proj(x))",
                "weight = torch.cat([self.q_proj.weight, self.k_proj.weight, self.v_proj.weight])\n"
                "        bias = torch.cat([self.q_proj.bias, self.k_proj.bias, self.v_proj.bias])\n"
                "        q, k, v = (self.split(t) for t in "
                "torch.nn.functional.linear(x, weight, bias).chunk(3, dim=-1))",
            ),
            (
                'num_features=o["num_features"], generator=generator)',
                'o["num_features"], generator=generator)',
            ),
        ],
    ),
}


@pytest.mark.parametrize("alternative", CORRECT_ALTERNATIVES)
def test_beginners_correct_alternatives_pass(alternative, solution):
    cell, edits = CORRECT_ALTERNATIVES[alternative]
    impl = variant(solution, cell, cell, *edits)
    for seed in (0, 1, 2):
        result = report(cell, impl, hidden=seed != 0, seed=seed)
        assert result.passed, (seed, [(r.key, r.message) for r in result.results if not r.passed])


def test_benchmark_one_mechanism_at_a_time_passes(solution):
    """Rows grouped by mechanism (its lengths in the inner loop), each mechanism's inputs drawn
    again from the seed: a beginner's correct variant."""

    def benchmark_attention(fns, seq_lens, **options):
        return [
            row
            for name, fn in fns.items()
            for row in solution["benchmark_attention"]({name: fn}, seq_lens, **options)
        ]

    for seed in (0, 1, 2):
        result = report("benchmark_attention", benchmark_attention, hidden=seed != 0, seed=seed)
        assert result.passed, (seed, [(r.key, r.message) for r in result.results if not r.passed])


def choose_by_table(solution, overestimate=1.0):
    """choose_attention as a table keyed by (GPU, global) and the first candidate that fits,
    with estimates `overestimate` times the solution's (an own estimate, off within 15%)."""

    def estimate(*args, **kwargs):
        return math.ceil(solution["estimate_attention_memory"](*args, **kwargs) * overestimate)

    def choose_attention(
        seq_len,
        needs_global_context,
        memory_budget_bytes,
        has_gpu,
        *,
        batch=1,
        heads=8,
        head_dim=64,
        dtype=torch.float32,
        window=256,
    ):
        if seq_len < 1 or memory_budget_bytes <= 0:
            raise ValueError("seq_len and memory_budget_bytes must be positive")
        global_ = needs_global_context or seq_len <= window
        exact = ["dense", "flash"] if seq_len <= 8192 else []
        table = {
            (True, True): ["flash", "linear"],
            (True, False): ["sliding", "linear"],
            (False, True): [*exact, "linear"],
            (False, False): ["sliding", "linear"],
        }
        sizes = (batch, heads, seq_len, head_dim, dtype)
        fits = (
            kind
            for kind in table[(has_gpu, global_)]
            if estimate(kind, *sizes, **({"window": window} if kind == "sliding" else {}))
            <= memory_budget_bytes
        )
        choice = next(fits, None)
        if choice is None:
            raise ValueError(f"nothing fits {memory_budget_bytes} bytes")
        return choice

    return choose_attention


def choose_estimating_everything_first(solution):
    """choose_attention that estimates all four kinds up front, then walks the rule (a beginner's
    correct variant: more estimates than needed, the same choice)."""
    estimate = solution["estimate_attention_memory"]

    def choose_attention(
        seq_len,
        needs_global_context,
        memory_budget_bytes,
        has_gpu,
        *,
        batch=1,
        heads=8,
        head_dim=64,
        dtype=torch.float32,
        window=256,
    ):
        if seq_len < 1 or memory_budget_bytes <= 0:
            raise ValueError("bad seq_len or budget")
        sizes = (batch, heads, seq_len, head_dim, dtype)
        needed = {kind: estimate(kind, *sizes) for kind in ("dense", "flash", "linear")}
        needed["sliding"] = estimate("sliding", *sizes, window=window)
        if seq_len > window and not needs_global_context:
            order = ["sliding"]
        elif not has_gpu and seq_len <= 8192:
            order = ["dense", "flash"]
        else:
            order = ["flash"] if has_gpu else []
        fitting = [kind for kind in [*order, "linear"] if needed[kind] <= memory_budget_bytes]
        if not fitting:
            raise ValueError(f"nothing fits {memory_budget_bytes} bytes")
        return fitting[0]

    return choose_attention


def test_choose_estimating_everything_first_passes(solution):
    impl = choose_estimating_everything_first(solution)
    for seed in (0, 1, 2):
        assert report("choose_attention", impl, hidden=seed != 0, seed=seed).passed, seed


@pytest.mark.parametrize("overestimate", [1.0, 1.05])
def test_choose_by_table_passes(solution, overestimate):
    """Also on estimates 5% above the library's: a budget of exactly the library's dense
    estimate does not fit them, and that is no `<` for `<=`."""
    impl = choose_by_table(solution, overestimate)
    for seed in (0, 1, 2):
        assert report("choose_attention", impl, hidden=seed != 0, seed=seed).passed, seed


def test_the_stub_attend_takes_no_mask(solution):
    """The benchmark cell calls a layer's attend(q, k, v): the stub's mask has a default."""
    import inspect

    layer = solution["make_attention"]("dense", 8, 2)
    assert inspect.signature(layer.attend).parameters["mask"].default is None


# ----------------------------------------------------------------------------- the notebook's promises

# What the notebook says the checks recognise, before each exercise (issue #18): each phrase of
# its list -> the mistake key (or keys) it stands for. Every key must be one a planted bug above
# is named under (keys_planted), and every phrase must be in the notebook's text.
PROMISES = {
    "estimate_attention_memory": {
        "forgetting the heads factor": "forgot_heads",
        "4 bytes per element for every dtype": "wrong_element_size",
        "bits instead of bytes per element": "bits_not_bytes",
        "a float instead of an int": "not_an_int",
        "two $(L, L)$ buffers for masked attention instead of three": "masked_two_buffers",
        "an $(L, L)$ matrix for the banded sliding window": "banded_quadratic",
        r"a non-causal window read as left $= w-1$, right $= \lfloor w/2 \rfloor$": (
            "window_sides_misread"
        ),
        "the padded K and V counted once": "kv_once",
        "chunks without their overlap": "forgot_overlap",
        "or with it on one side only": "overlap_one_side",
        "flash with one score tile instead of four": "flash_one_tile",
        "a Performer estimate with only its feature buffers": "performer_features_only",
        "a scan over $BH$ channels instead of $BHd$": "scan_channels",
        "query blocks of fewer than 16 rows for a narrow window": "block_below_16",
        "a causal window of $w + 1$ keys (left $= w$)": "causal_window_one_wide",
        "a keyword argument ignored": "option_ignored",
        "the defaults changed by a call": "defaults_changed",
        "a bad argument accepted silently": "no_error_for_bad_params",
    },
    "benchmark_attention": {
        "rows without the table's fields": "missing_fields",
        "or with rows missing": "wrong_rows",
        "the skipped lengths left out": "skipped_rows_missing",
        "a failure raised instead of recorded": "failure_raised",
        "the wrong status for a failure": "wrong_status",
        "a failed mechanism run again at longer lengths instead of skipped": "not_skipped",
        "an `(out, weights)` tuple not unpacked": "tuple_not_unpacked",
        "a timed warm-up (alone": "no_warmup",
        "among the timed calls, or reused as the first of them)": "warmup_timed",
        "the mean instead of the median": "mean_not_median",
        "a time in milliseconds": "time_not_seconds",
        "too few calls": "too_few_calls",
        "a peak memory that is not `peak_memory`'s": "peak_wrong",
        r"a relative error divided by $\lVert\text{out}\rVert$": "quality_by_output_norm",
        "not divided at all": "quality_not_relative",
        r"or against a reference without the $1/\sqrt{d}$ scale": "reference_unscaled",
        r"the largest absolute difference $\max|\text{out} - \text{ref}|$": "quality_max_abs",
        "the mean of each query's relative error instead of the relative norm": (
            "quality_row_mean"
        ),
        "one tensor used as $q$, $k$ and $v$": "same_inputs",
        "inputs not drawn from the `seed`": "inputs_not_seeded",
        "a 0 where nothing was measured": "unmeasured_not_none",
        "one mechanism's failure skipping the others": "skips_every_mechanism",
        'a slow warm-up not recorded as `"too_slow"`': "too_slow_missed",
        "failures remembered from an earlier call": "state_kept_across_calls",
    },
    "choose_attention": {
        "a choice that does not follow the rule": "wrong_choice",
        "the CPU candidates on a GPU": "gpu_ignored",
        "flash before dense on a CPU": "cpu_order",
        "the budget ignored": "budget_ignored",
        "exact attention past 8192 tokens on a CPU": "exact_past_cpu_limit",
        "no linear fallback past 8192 tokens": "no_linear_fallback",
        "`<` where a bound is `<=` (at exactly 8192 tokens": "cpu_limit_not_inclusive",
        "or at a sequence exactly as long as the window)": "window_not_inclusive",
        "the sliding window for a sequence no longer than the window": "short_sequence_local",
        "the sliding window for global context": "global_got_sliding",
        "dense or flash for local context": "local_not_sliding",
        '`make_attention`\'s name `"sliding_window"`': "kind_name",
        "the sizes passed not used": "arguments_ignored",
        '`"sliding"` estimated without its window': "window_not_passed",
        "a budget that must be beaten rather than met": "fit_not_inclusive",
        "a missing `ValueError` (nothing fits": "nothing_fits_accepted",
        "`seq_len < 1`": "choose_bad_arguments",
        r"a budget $\le 0$": "choose_bad_arguments",
    },
    "make_attention": {
        "heads ignored (one head of size $d$)": "heads_ignored",
        r"scores scaled by $1/\sqrt{d}$ instead": "scaled_by_d_model",
        "or scaled twice": "scaled_twice",
        "`causal=True` ignored": "causal_ignored",
        "a sliding window one key off": "wrong_window",
        "attention without its overlap": "overlap_ignored",
        "with `chunk_size` and `overlap` swapped": "chunked_args_swapped",
        "heads split or merged": ("split_without_transpose", "merge_without_transpose"),
        "(or merged features first, `permute(0, 2, 3, 1)`)": "merge_wrong_order",
        "the output projection forgotten": "out_proj_missing",
        '(`~pattern`: True read as "masked out")': "mask_inverted",
        "a mask ignored by `dense` or `strided`": "mask_ignored",
        "combined with the pattern by OR": "mask_or_pattern",
        "or used instead of it": "mask_replaces_pattern",
        "a mask silently dropped by a kind that": "mask_silently_dropped",
        "a Performer layer that draws new features at every call": "performer_not_deterministic",
        "reseeds the global": "performer_global_seed",
        "or ignores `num_features`": "performer_features_ignored",
        "a Mamba layer that looks ahead": "not_causal_scan",
        r"or adds a residual ($x + \text{block}(x)$)": "scan_residual",
        "defaults not filled in": "defaults_not_filled",
        "or changed by a call": "defaults_shared",
        "`num_heads` not dividing `d_model` accepted": "heads_not_dividing",
        "an unknown kind or argument accepted or": "unclear_kind_error",
        "They also refuse `course.reference.mechanisms`": "shortcut",
    },
}

# The planted-bug tests, by exercise: (test, exercise) for the tests parametrized over a key, or
# over a bug whose key MAKE_KEYS maps; then the single planted bugs, (exercise, key).
SINGLE_PLANTED_BUGS = [
    ("benchmark_attention", "state_kept_across_calls"),  # test_benchmark_state_kept_across_calls
    ("choose_attention", "not_implemented"),  # test_choose_shortcut_and_stub
    ("choose_attention", "shortcut"),
    ("make_attention", "not_implemented"),  # test_make_attention_shortcut_and_stub
    ("make_attention", "shortcut"),
]


def parametrized(test) -> list:
    """The values a test is parametrized over (its single argument)."""
    (marker,) = [m for m in test.pytestmark if m.name == "parametrize"]
    return list(marker.args[1])


def keys_planted(name) -> set:
    """The keys the planted bugs of exercise `name` are named under."""
    keys = {
        "estimate_attention_memory": set(parametrized(test_estimate_bug_is_named)),
        "benchmark_attention": set(parametrized(test_benchmark_bug_is_named)),
        "choose_attention": {
            CHOOSE_EDITS[bug][1] for bug in parametrized(test_choose_bug_is_named)
        },
        "make_attention": {
            MAKE_KEYS.get(bug, bug) for bug in parametrized(test_make_attention_bug_is_named)
        },
    }[name]
    keys |= {key for cell, _, key in BEGINNER_MISTAKES.values() if cell == name}
    return keys | {key for exercise, key in SINGLE_PLANTED_BUGS if exercise == name}


@pytest.mark.parametrize("name, phrase", promised(PROMISES))
def test_the_notebook_lists_only_mistakes_the_checks_name(name, phrase):
    assert_promise_kept(DAY, PROMISES, name, phrase, keys_planted(name))
