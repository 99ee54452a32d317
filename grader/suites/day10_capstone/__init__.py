"""Checks for day10-capstone: estimate_attention_memory, benchmark_attention, choose_attention,
and the advanced make_attention.

Oracles: for the estimates, the *measured* peak (course.bench.peak_memory) of one call of the
course's library implementation of each kind (course.reference.capstone.attention_function builds it: the
thing being estimated, not an answer), within 15%; named mistakes are recognised by how the
student's own estimates move when one argument changes (heads, dtype, L, overlap) or by matching
the measurement minus one copy of K or V. benchmark_attention is driven with fake mechanisms
whose time, memory, output and failures are known exactly. choose_attention against the rule in
its docstring, on cases whose budgets are far from every estimate (and one exactly on dense's,
which fits). make_attention: every kind
recomputed in float64 from the student's own projection weights (dense softmax attention under the
kind's pattern, written out here; linear attention's quadratic form), plus causality by
perturbing later tokens.

One module per exercise, in the notebook's order: estimate_memory (estimate_attention_memory),
benchmark (benchmark_attention), choose (choose_attention), make_attention (the advanced
section, with its own HINTS and FORBIDDEN); `hints` holds the first three's HINTS and FORBIDDEN.
"""

from grader.suites import Exercise
from grader.suites.day10_capstone import hints
from grader.suites.day10_capstone.benchmark import (
    bench_failures_recorded,
    bench_peak_memory,
    bench_table,
    bench_warmup_and_median,
)
from grader.suites.day10_capstone.choose import (
    choose_cpu,
    choose_gpu_and_short,
    choose_nothing_fits,
    choose_uses_its_arguments,
)
from grader.suites.day10_capstone.estimate_memory import (
    est_bad_arguments,
    est_chunked,
    est_dense_family,
    est_dtypes,
    est_linear_family,
    est_sliding,
)
from grader.suites.day10_capstone.hints import FORBIDDEN_BENCH, FORBIDDEN_CHOOSE, FORBIDDEN_ESTIMATE
from grader.suites.day10_capstone.make_attention import MAKE_EXERCISE, MAKE_HINTS

HINTS = {**hints.HINTS, **MAKE_HINTS}  # the advanced section's mistakes, kept beside its checks


EXERCISES = {
    "estimate_attention_memory": Exercise(
        checks=[
            est_dense_family,
            est_dtypes,
            est_sliding,
            est_chunked,
            est_linear_family,
            est_bad_arguments,
        ],
        forbidden=FORBIDDEN_ESTIMATE,
    ),
    "benchmark_attention": Exercise(
        checks=[bench_table, bench_warmup_and_median, bench_peak_memory, bench_failures_recorded],
        forbidden=FORBIDDEN_BENCH,
    ),
    "choose_attention": Exercise(
        checks=[choose_cpu, choose_gpu_and_short, choose_uses_its_arguments, choose_nothing_fits],
        forbidden=FORBIDDEN_CHOOSE,
    ),
    "make_attention": MAKE_EXERCISE,
}

__all__ = ["EXERCISES", "HINTS"]
