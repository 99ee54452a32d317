"""Checks for benchmark_attention, driven with fake mechanisms whose time, memory, output and
failures are known exactly.

The fakes are classes of this module, not closures: when the autograder runs the student's
harness in their kernel (grader/autograde/remote.py), each fake is sent there by reference and
runs there, so that its time and memory are the student's harness's to measure, and what it
records (Moody's calls) comes back."""

import functools
import math
import statistics
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
    """Exact attention with the outputs of its first `rows` queries (all when None) times
    `scale`. Records the inputs of its calls (`inputs`), so the relative error, right and wrong,
    can be recomputed from them; with `with_weights`, returns (out, weights) as
    course.reference.masks.attention does."""

    def __init__(self, scale, with_weights=False, rows=None):
        self.scale, self.with_weights, self.rows, self.inputs = scale, with_weights, rows, []

    def scaled(self, out):
        """`out` (..., L, d) with its first `rows` queries times `scale`."""
        factor = torch.ones(out.shape[-2], 1, dtype=out.dtype, device=out.device)  # (L, 1)
        factor[: self.rows] = self.scale
        return out * factor

    def __call__(self, q, k, v):
        self.inputs.append([q, k, v])
        if not self.with_weights:
            return self.scaled(exact(q, k, v))
        weights = torch.softmax(q @ k.transpose(-2, -1) / q.shape[-1] ** 0.5, dim=-1)
        return self.scaled(weights @ v), weights

    def described(self):
        if self.scale == 1:
            return "its output is the exact one"
        which = "output" if self.rows is None else f"first {self.rows} queries' output"
        return f"its {which} is {self.scale} x the exact one"


class Moody:
    """Slow on its first call (a warm-up) and on its third (an outlier); records how long each
    call took (`seconds`)."""

    def __init__(self, slow_first, outlier):
        self.slow_first, self.outlier, self.seconds = slow_first, outlier, []

    def __call__(self, q, k, v):
        start = time.perf_counter()
        n = len(self.seconds) + 1
        time.sleep(self.slow_first if n == 1 else self.outlier if n == 3 else 0.002)
        out = exact(q, k, v)
        self.seconds.append(time.perf_counter() - start)
        return out


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


class Recorded:
    """`fn`, with the seconds its first call at each length took (`first_calls`, [L, seconds]
    pairs): the warm-up a benchmark holds against its time budget. On a loaded machine (a class
    graded on every core) even exact attention at L = 8 can outlast a 0.15 s budget, and
    'too_slow' is then the right status."""

    def __init__(self, fn):
        self.fn, self.first_calls = fn, []

    def __call__(self, q, k, v):
        start = time.perf_counter()
        try:
            return self.fn(q, k, v)
        finally:
            length = q.shape[-2]
            if all(seen != length for seen, _ in self.first_calls):
                self.first_calls.append([length, time.perf_counter() - start])

    def stalled(self, length: int, budget: float) -> bool:
        """Whether the first call at `length` took a large share of `budget`: a stall."""
        return any(
            seen == length and seconds > STALL * budget for seen, seconds in self.first_calls
        )


# A first call over this share of the budget may be timed over it by the benchmark: the fake
# meant to take a millisecond was stalled, and a stall can go on past the fake's own timer (a
# 10,000-seed sweep at load 10-18 found one at 0.8 of the budget).
STALL = 0.5


def failing_mechanisms(short: int) -> dict:
    """exact attention, and three that fail past length `short`, each Recorded."""
    return {
        "exact": Recorded(exact),
        "greedy": Recorded(FailsPast(short, "out_of_memory")),
        "sluggish": Recorded(FailsPast(short, "too_slow")),
        "broken": Recorded(FailsPast(short, "error")),
    }


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
        missing = sorted(set(wanted) - set(cells))
        if set(cells) < set(wanted) and all(failed_before(rows, *cell) for cell in missing):
            description, fix = hint("skipped_rows_missing")
            raise Mistake(
                f"the table has no rows for {missing}, the longer lengths of mechanisms that "
                f"failed: it looks like {description}.",
                fix,
                "skipped_rows_missing",
            )
        description, fix = hint("wrong_rows")
        raise Mistake(f"the rows cover {cells}, expected {wanted}.", fix, "wrong_rows")
    return {(r["name"], r["seq_len"]): r for r in rows}


def failed_before(rows: list, name: str, L: int) -> bool:
    """Whether mechanism `name` has a failed row at a length shorter than L."""
    return any(
        r["name"] == name and r["seq_len"] < L and r["status"] not in ("ok", "skipped")
        for r in rows
    )


def reference(q, k, v, scale: float = None) -> torch.Tensor:
    """Exact attention in float64; `scale` replaces 1/sqrt(d)."""
    q, k, v = (t.detach().double().cpu() for t in (q, k, v))
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    return torch.softmax(q @ k.transpose(-2, -1) * scale, dim=-1) @ v


def fake_output(fake: Scaled, L: int):
    """(out, ref, inputs): `fake`'s output at length L in float64, exact attention on the same
    inputs (those the student's harness passed it there), and those inputs."""
    q, k, v = next(inputs for inputs in reversed(fake.inputs) if inputs[0].shape[-2] == L)
    ref = reference(q, k, v)
    return fake.scaled(ref), ref, (q, k, v)


def quality_slips(fake: Scaled, L: int) -> list:
    """(key, rel_error) that each wrong way of computing the relative error would report for
    `fake` at length L."""
    out, ref, (q, k, v) = fake_output(fake, L)
    unscaled = reference(q, k, v, scale=1.0)
    per_query = (out - ref).norm(dim=-1) / ref.norm(dim=-1)  # (B, H, L)
    return [
        ("quality_row_mean", per_query.mean().item()),
        ("quality_by_output_norm", ((out - ref).norm() / out.norm()).item()),
        ("quality_not_relative", (out - ref).norm().item()),
        ("reference_unscaled", ((out - unscaled).norm() / unscaled.norm()).item()),
        ("quality_max_abs", (out - ref).abs().max().item()),
    ]


def close(got: float, want: float) -> bool:
    return abs(got - want) <= 1e-4 + 1e-3 * abs(want)


def bench_table(benchmark_attention, rng):
    """one row per mechanism and length, with time, peak memory and relative error"""
    lengths = [8 * draw(rng, 1, 3), 8 * draw(rng, 4, 6)]
    scale = 1 + draw(rng, 1, 9) / 10
    fns = {
        "exact": Scaled(1.0),
        "scaled": Scaled(scale),
        "with weights": Scaled(1.0, True),
        "first query off": Scaled(scale, rows=1),  # not uniform: a mean of ratios shows
    }
    rows = run_benchmark(benchmark_attention, fns, lengths, heads=2, head_dim=8, repeats=2)
    expect_fresh_seeded_inputs(benchmark_attention, fns["exact"], lengths[0])
    for (name, L), row in rows.items():
        if row["status"] != "ok":
            key = "tuple_not_unpacked" if name == "with weights" else "wrong_status"
            description, fix = hint(key)
            raise Mistake(
                f"{name} at L = {L} has status {row['status']!r} ({row['message']}), expected "
                f"'ok': it looks like {description}.",
                fix,
                key,
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
    for (name, L), row in sorted(rows.items(), key=lambda item: item[0][0] == "exact"):
        fake = fns[name]
        out, ref, _ = fake_output(fake, L)
        want = ((out - ref).norm() / ref.norm()).item()
        if close(row["rel_error"], want):
            continue
        seen = (
            f"{name} at L = {L}: rel_error = {row['rel_error']:.3g}, expected {want:.3g} "
            f"({fake.described()})"
        )
        key = next(
            (key for key, slip in quality_slips(fake, L) if close(row["rel_error"], slip)),
            "quality_wrong",
        )
        description, fix = hint(key)
        raise Mistake(f"{seen}: it looks like {description}.", fix, key)


def expect_fresh_seeded_inputs(benchmark_attention, fake: Scaled, L: int):
    """q, k and v are three different tensors, and a second call with the same seed draws the
    same ones (the first call of `fake`, its warm-up at length L, saw them)."""
    q, k, v = fake.inputs[0]
    if torch.equal(q, k) or torch.equal(k, v):
        description, fix = hint("same_inputs")
        raise Mistake(
            f"at L = {L} the mechanisms got q, k, v with q == k or k == v: it looks like "
            f"{description}.",
            fix,
            "same_inputs",
        )
    again = Scaled(1.0)
    run_benchmark(benchmark_attention, {"exact": again}, [L], heads=2, head_dim=8, repeats=1)
    if not all(torch.equal(a, b) for a, b in zip(again.inputs[0], fake.inputs[0])):
        description, fix = hint("inputs_not_seeded")
        raise Mistake(
            f"two calls with seed=0 passed different q, k, v at L = {L}: it looks like "
            f"{description}.",
            fix,
            "inputs_not_seeded",
        )


# Mistakes a stall of the machine can fake: a quick call timed long. A stall can land outside
# the fakes' own timers too (between the student's clock and the call), so a check that names
# one runs again; a wrong benchmark fails every time, a right one (found failing 20 seeds of
# 10,000 at load 10-18) fails three times in a row only if stalled each time.
TIMING_KEYS = {
    "mean_not_median",
    "warmup_timed",
    "no_warmup",
    "time_wrong",
    "time_not_seconds",
    "skips_every_mechanism",
    "wrong_status",
    "not_skipped",
    "too_slow_missed",
    "state_kept_across_calls",
}
ATTEMPTS = 3


def run_again_after_a_stall(check):
    """`check`, run up to ATTEMPTS times while it fails with one of the TIMING_KEYS; when every
    attempt fails, the first attempt's mistake is the one named (later attempts of a benchmark
    that keeps state across calls see that state)."""

    @functools.wraps(check)
    def attempts(benchmark_attention, rng):
        first = None
        for _ in range(ATTEMPTS):
            try:
                return check(benchmark_attention, rng)
            except Mistake as mistake:
                first = first or mistake
                if mistake.key not in TIMING_KEYS:
                    break
        raise first

    return attempts


@run_again_after_a_stall
def bench_warmup_and_median(benchmark_attention, rng):
    """a warm-up call first, then the median of `repeats` timed calls, then a memory measurement"""
    slow_first, outlier, repeats = 0.5, 0.4, 3
    moody = Moody(slow_first, outlier)
    L = 8 * draw(rng, 1, 4)
    rows = run_benchmark(
        benchmark_attention,
        {"moody": moody},
        [L],
        heads=1,
        head_dim=8,
        repeats=repeats,
        time_budget_s=5.0,
    )
    row = rows[("moody", L)]
    seconds = moody.seconds
    t = row["time_s"]
    if not isinstance(t, (int, float)) or isinstance(t, bool):
        description, fix = hint("missing_fields")
        raise Mistake(f"time_s = {t!r}, expected seconds.", fix, "missing_fields")
    if len(seconds) < repeats + 2:
        # The warm-up reused as the first timed call (and one timed call fewer) shows as the
        # median of the first `repeats` calls, the slow warm-up among them.
        key = "warmup_timed" if warmup_among_first(t, seconds, repeats) else "too_few_calls"
        description, fix = hint(key)
        raise Mistake(
            f"with repeats=3 the function was called {len(seconds)} times "
            f"({', '.join(f'{s:.3f}' for s in seconds)} s, the first the warm-up) and "
            f"time_s = {t:.3f} s: it looks like {description}.",
            fix,
            key,
        )
    if 0 < t < 0.08 or is_median_of_timed(t, seconds, repeats):
        return
    key = timing_slip(t, seconds, repeats)
    description, fix = hint(key)
    raise Mistake(
        f"time_s = {t:.3f} s; the calls took {', '.join(f'{s:.3f}' for s in seconds)} s "
        f"(the first is the warm-up, the third an outlier): it looks like {description}.",
        fix,
        key,
    )


def is_median_of_timed(t: float, seconds: list, repeats: int) -> bool:
    """Whether `t` is the median of the `repeats` calls after the warm-up, as long as they took
    (on a loaded machine a quick call can take 0.1 s, so `t` is compared with the calls' own
    durations, not with how long they should take)."""
    median = statistics.median(seconds[1 : 1 + repeats])
    return t > 0 and (abs(t - median) < 0.005 or abs(math.log(t / median)) < math.log(1.2))


def warmup_among_first(t: float, seconds: list, repeats: int) -> bool:
    """Whether `t` is the median or mean of the first `repeats` calls, the warm-up included."""
    first = seconds[:repeats]
    return len(first) == repeats and any(
        t > 0 and abs(math.log(t / value)) < math.log(1.2)
        for value in (statistics.median(first), statistics.mean(first))
    )


def timing_slip(t: float, seconds: list, repeats: int) -> str:
    """The mistake whose time, computed from the calls' own durations, is nearest to `t`."""
    warmup, timed = seconds[0], seconds[1 : 1 + repeats]
    slips = [
        ("mean_not_median", statistics.mean(timed)),
        ("warmup_timed", statistics.median([warmup, *timed])),
        ("warmup_timed", statistics.mean([warmup, *timed])),
        ("no_warmup", statistics.median(seconds[:repeats])),
        ("no_warmup", statistics.mean(seconds[:repeats])),
    ]
    if t <= 0:
        return "time_wrong"
    if 1 <= t < 80:  # in seconds this would have passed
        return "time_not_seconds"
    distance, key = min((abs(math.log(t / value)), key) for key, value in slips)
    return key if distance < math.log(1.2) else "time_wrong"


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


@run_again_after_a_stall
def bench_failures_recorded(benchmark_attention, rng):
    """out of memory, too slow and errors are recorded as rows, never raised; longer lengths skipped"""
    lengths = (8, 16 * draw(rng, 1, 2), 64)
    budget = 0.15
    settings = {"heads": 1, "head_dim": 8, "repeats": 1, "time_budget_s": budget}
    fns = failing_mechanisms(lengths[0])
    rows = run_benchmark(benchmark_attention, fns, list(lengths), **settings)
    failing = {"greedy": "out_of_memory", "sluggish": "too_slow", "broken": "error"}
    expect_statuses(rows, failing, lengths, fns, budget)
    expect_unmeasured_none(rows)
    # the same names again, new fakes: each call's first calls are its own
    fns_again = failing_mechanisms(lengths[0])
    again = run_benchmark(benchmark_attention, fns_again, list(lengths), **settings)
    designed = ("ok", "error", "skipped")
    both = [(rows, fns), (again, fns_again)]
    if statuses(again, "broken", lengths) != statuses(rows, "broken", lengths) and not all(
        slowed_by_the_machine(
            statuses(run, "broken", lengths), designed, lengths, fakes["broken"], budget
        )
        for run, fakes in both
    ):
        description, fix = hint("state_kept_across_calls")
        raise Mistake(
            f"called a second time with the same mechanisms, benchmark_attention gave 'broken' "
            f"the statuses {statuses(again, 'broken', lengths)} (the first call: "
            f"{statuses(rows, 'broken', lengths)}): it looks like {description}.",
            fix,
            "state_kept_across_calls",
        )


def statuses(rows: dict, name: str, lengths) -> tuple:
    return tuple(rows[(name, L)]["status"] for L in lengths)


def expect_unmeasured_none(rows: dict):
    """time_s, peak_bytes and rel_error None in every row that is not 'ok' (a 'too_slow' row may
    keep its warm-up's seconds)."""
    for (name, L), row in rows.items():
        if row["status"] == "ok":
            continue
        fields = ["peak_bytes", "rel_error"] + ([] if row["status"] == "too_slow" else ["time_s"])
        measured = {field: row[field] for field in fields if row[field] is not None}
        if measured:
            description, fix = hint("unmeasured_not_none")
            raise Mistake(
                f"{name} at L = {L} has status {row['status']!r} and {measured}: it looks like "
                f"{description}.",
                fix,
                "unmeasured_not_none",
            )


def slowed_by_the_machine(got, designed, lengths, recorded: Recorded, budget: float) -> bool:
    """Whether the statuses `got` are the `designed` ones but for a call meant to be quick whose
    first call took a large share of the budget (the machine was slow): 'too_slow' there and
    'skipped' after it, as a right benchmark gives."""
    failed = False
    for status, meant, length in zip(got, designed, lengths):
        if failed:
            if status != "skipped":
                return False
        elif status == "too_slow" and meant == "ok" and recorded.stalled(length, budget):
            failed = True
        elif status != meant:
            return False
        else:
            failed = status != "ok"
    return True


def expect_statuses(rows: dict, failing: dict, lengths, fns: dict, budget: float):
    """exact 'ok' everywhere; each failing mechanism 'ok', then its failure, then 'skipped';
    where the machine made a quick call outlast the budget, 'too_slow' there and 'skipped' after."""
    short, long_, longest = lengths
    for name in ("exact", *failing):
        cells = [rows[(name, L)] for L in lengths]
        got = tuple(row["status"] for row in cells)
        designed = ("ok", "ok", "ok") if name == "exact" else ("ok", failing[name], "skipped")
        if got != designed and slowed_by_the_machine(got, designed, lengths, fns[name], budget):
            continue
        if name == "exact":
            if got != ("ok", "ok", "ok"):
                messages = "; ".join(str(row["message"]) for row in cells if row["status"] != "ok")
                # skipped although it never failed: another mechanism's failure skipped it
                key = "skips_every_mechanism" if "skipped" in got else "wrong_status"
                description, fix = hint(key)
                raise Mistake(
                    f"exact attention got statuses {got} ({messages}), expected all 'ok': it "
                    f"looks like {description}.",
                    fix,
                    key,
                )
            continue
        failure = failing[name]
        key = "wrong_status"
        if got == ("ok", failure, failure):
            key = "not_skipped"
        elif got == ("ok", failure, "skipped"):
            continue
        elif failure == "too_slow" and got == ("ok", "ok", "ok"):
            key = "too_slow_missed"
        elif got[:2] == ("ok", "skipped"):  # skipped before it failed: another's failure did it
            key = "skips_every_mechanism"
        description, fix = hint(key)
        raise Mistake(
            f"{name} at L = {short}, {long_}, {longest} got statuses {got}, expected "
            f"('ok', {failure!r}, 'skipped'): it looks like {description}.",
            fix,
            key,
        )
