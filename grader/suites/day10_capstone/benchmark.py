"""Checks for benchmark_attention, driven with fake mechanisms whose time, memory, output and
failures are known exactly.

The fakes are classes of this module, not closures: when the autograder runs the student's
harness in their kernel (grader/autograde/remote.py), each fake is sent there by reference and
runs there, so that its time and memory are the student's harness's to measure, and what it
records (Moody's calls) comes back."""

import time

import torch
import torch.nn.functional as F

from course.bench import peak_memory
from grader.harness.checking import Mistake, hint
from grader.suites._common import draw

FIELDS = ("name", "seq_len", "status", "time_s", "peak_bytes", "rel_error", "message")


def exact(q, k, v):
    return F.scaled_dot_product_attention(q, k, v)


class Scaled:
    """Exact attention times `scale`: a relative error of scale - 1."""

    def __init__(self, scale):
        self.scale = scale

    def __call__(self, q, k, v):
        return self.scale * exact(q, k, v)


class Moody:
    """Slow on its first call (a warm-up) and on its third (an outlier); counts its calls."""

    def __init__(self, slow_first, outlier):
        self.slow_first, self.outlier, self.calls = slow_first, outlier, []

    def __call__(self, q, k, v):
        self.calls.append(1)
        n = len(self.calls)
        time.sleep(self.slow_first if n == 1 else self.outlier if n == 3 else 0.002)
        return exact(q, k, v)


class Hungry:
    """A scratch buffer of L x `floats` float64, then the output."""

    def __init__(self, floats):
        self.floats = floats

    def __call__(self, q, k, v):
        scratch = torch.empty(q.shape[-2], self.floats, dtype=torch.float64)
        scratch.fill_(1.0)
        return exact(q, k, v)


class FailsPast:
    """Exact attention up to length `short`; past it, out of memory, too slow or an error."""

    def __init__(self, short, failure):
        self.short, self.failure = short, failure

    def __call__(self, q, k, v):
        if q.shape[-2] > self.short:
            if self.failure == "out_of_memory":
                raise torch.OutOfMemoryError("out of memory (simulated): tried to allocate 64 GiB")
            if self.failure == "error":
                raise IndexError("simulated bug")
            time.sleep(0.3)
        return exact(q, k, v)


def run_benchmark(benchmark_attention, fns, seq_lens, **kw):
    """The student's rows; a failure that escapes is the mistake failure_raised."""
    try:
        rows = benchmark_attention(fns, seq_lens, **kw)
    except Mistake as mistake:
        if mistake.key != "raised":
            raise
        description, fix = hint("failure_raised")
        raise Mistake(
            f"benchmark_attention raised {type(mistake.__cause__).__name__} "
            f"({mistake.__cause__}): it looks like {description}.",
            fix,
            "failure_raised",
        ) from None
    if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
        description, fix = hint("missing_fields")
        raise Mistake(
            f"benchmark_attention returned {type(rows).__name__}, not a list of dicts.",
            fix,
            "missing_fields",
        )
    for row in rows:
        missing = [f for f in FIELDS if f not in row]
        if missing:
            description, fix = hint("missing_fields")
            raise Mistake(
                f"a row has no {missing}: it looks like {description}.", fix, "missing_fields"
            )
    cells = sorted((r["name"], r["seq_len"]) for r in rows)
    wanted = sorted((name, L) for name in fns for L in seq_lens)
    if cells != wanted:
        description, fix = hint("wrong_rows")
        raise Mistake(f"the rows cover {cells}, expected {wanted}.", fix, "wrong_rows")
    return {(r["name"], r["seq_len"]): r for r in rows}


def bench_table(benchmark_attention, rng):
    """one row per mechanism and length, with time, peak memory and relative error"""
    lengths = [8 * draw(rng, 1, 3), 8 * draw(rng, 4, 6)]
    scale = 1 + draw(rng, 1, 9) / 10
    fns = {"exact": exact, "scaled": Scaled(scale)}
    rows = run_benchmark(benchmark_attention, fns, lengths, heads=2, head_dim=8, repeats=2)
    for (name, L), row in rows.items():
        if row["status"] != "ok":
            description, fix = hint("wrong_status")
            raise Mistake(
                f"{name} at L = {L} has status {row['status']!r}, expected 'ok'.",
                fix,
                "wrong_status",
            )
        for field in ("time_s", "peak_bytes", "rel_error"):
            if (
                not isinstance(row[field], (int, float))
                or isinstance(row[field], bool)
                or row[field] < 0
            ):
                description, fix = hint("missing_fields")
                raise Mistake(
                    f"{name} at L = {L}: {field} = {row[field]!r}, expected a number.",
                    fix,
                    "missing_fields",
                )
        want = 0.0 if name == "exact" else scale - 1
        if abs(row["rel_error"] - want) > 1e-4 + 1e-3 * want:
            description, fix = hint("quality_wrong")
            raise Mistake(
                f"{name} at L = {L}: rel_error = {row['rel_error']:.3g}, expected "
                f"{want:.3g} (its output is {scale} x the exact one).",
                fix,
                "quality_wrong",
            )


def bench_warmup_and_median(benchmark_attention, rng):
    """a warm-up call first, then the median of `repeats` timed calls, then a memory measurement"""
    slow_first, outlier = 0.5, 0.4
    moody = Moody(slow_first, outlier)
    L = 8 * draw(rng, 1, 4)
    rows = run_benchmark(
        benchmark_attention,
        {"moody": moody},
        [L],
        heads=1,
        head_dim=8,
        repeats=3,
        time_budget_s=5.0,
    )
    row = rows[("moody", L)]
    if len(moody.calls) < 3 + 2:
        description, fix = hint("too_few_calls")
        raise Mistake(
            f"with repeats=3 the function was called {len(moody.calls)} times: it looks like "
            f"{description}.",
            fix,
            "too_few_calls",
        )
    t = row["time_s"]
    if not isinstance(t, (int, float)):
        description, fix = hint("missing_fields")
        raise Mistake(f"time_s = {t!r}, expected seconds.", fix, "missing_fields")
    if t >= 0.3:
        description, fix = hint("no_warmup")
        raise Mistake(
            f"time_s = {t:.3f} s for a function that takes {slow_first} s only on its "
            f"first call: it looks like {description}.",
            fix,
            "no_warmup",
        )
    if t >= 0.08:
        description, fix = hint("mean_not_median")
        raise Mistake(
            f"time_s = {t:.3f} s, but two of three timed calls took 0.002 s: it looks "
            f"like {description}.",
            fix,
            "mean_not_median",
        )


def bench_peak_memory(benchmark_attention, rng):
    """peak memory is what one call allocates and holds at once (course.bench.peak_memory)"""
    floats = 1000 * draw(rng, 1, 5)
    hungry = Hungry(floats)
    L = 8 * draw(rng, 1, 4)
    rows = run_benchmark(
        benchmark_attention, {"hungry": hungry}, [L], batch=1, heads=2, head_dim=8, repeats=1
    )
    row = rows[("hungry", L)]
    q = torch.zeros(1, 2, L, 8)
    expected = peak_memory(hungry, q, q, q)
    got = row["peak_bytes"]
    if not isinstance(got, (int, float)) or abs(got - expected) > 0.02 * expected:
        description, fix = hint("peak_wrong")
        raise Mistake(
            f"peak_bytes = {got!r}, but the function allocates {expected} bytes at once "
            f"(a {L} x {floats} float64 scratch and its output): it looks like {description}.",
            fix,
            "peak_wrong",
        )


def bench_failures_recorded(benchmark_attention, rng):
    """out of memory, too slow and errors are recorded as rows, never raised; longer lengths skipped"""
    short, long_, longest = 8, 16 * draw(rng, 1, 2), 64

    fns = {
        "exact": exact,
        "greedy": FailsPast(short, "out_of_memory"),
        "sluggish": FailsPast(short, "too_slow"),
        "broken": FailsPast(short, "error"),
    }
    rows = run_benchmark(
        benchmark_attention,
        fns,
        [short, long_, longest],
        heads=1,
        head_dim=8,
        repeats=1,
        time_budget_s=0.15,
    )
    expected = {"greedy": "out_of_memory", "sluggish": "too_slow", "broken": "error"}
    for name in fns:
        got = (
            rows[(name, short)]["status"],
            rows[(name, long_)]["status"],
            rows[(name, longest)]["status"],
        )
        if name == "exact":
            want_ok = got == ("ok", "ok", "ok")
            if not want_ok:
                description, fix = hint("wrong_status")
                raise Mistake(
                    f"exact attention got statuses {got}, expected all 'ok'.", fix, "wrong_status"
                )
            continue
        failure = expected[name]
        if got[0] != "ok" or got[1] != failure or got[2] not in ("skipped", failure):
            description, fix = hint("wrong_status")
            raise Mistake(
                f"{name} at L = {short}, {long_}, {longest} got statuses {got}, expected "
                f"('ok', {failure!r}, 'skipped'): it looks like {description}.",
                fix,
                "wrong_status",
            )
