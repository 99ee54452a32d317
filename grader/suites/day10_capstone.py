"""Checks for day10-capstone: estimate_attention_memory, benchmark_attention, choose_attention,
and the advanced make_attention.

Oracles: for the estimates, the *measured* peak (course.bench.peak_memory) of one call of the
course's library implementation of each kind (course.reference.capstone.attention_function builds it: the
thing being estimated, not an answer), within 15%; named mistakes are recognised by how the
student's own estimates move when one argument changes (heads, dtype, L, overlap) or by matching
the measurement minus one copy of K or V. benchmark_attention is driven with fake mechanisms
whose time, memory, output and failures are known exactly. choose_attention against the rule in
its docstring, on cases whose budgets are far from every estimate. make_attention: every kind
recomputed in float64 from the student's own projection weights (dense softmax attention under the
kind's pattern, written out here; linear attention's quadratic form), plus causality by
perturbing later tokens.
"""

import math
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

import course.reference.capstone
import course.reference.mechanisms as mechanisms
from course.bench import peak_memory
from grader.harness.checking import (
    Mistake,
    expect_close,
    expect_tensor,
    expect_value_error,
    guarded,
    hint,
    named,
    relative_error,
)
from grader.suites import Exercise
from grader.suites._common import draw, randn

TOLERANCE = 0.15  # estimate vs measured peak, relative

HINTS = {
    "not_a_number": (
        "an estimate that is not a positive number of bytes",
        "return the number of bytes as an int (e.g. int(...) of your formula).",
    ),
    "forgot_heads": (
        "an estimate that ignores the number of heads",
        "every head has its own scores and outputs: N = batch * heads independent "
        "attention problems multiply the per-problem terms.",
    ),
    "wrong_element_size": (
        "4 bytes per element whatever the dtype",
        "bytes per element depend on the dtype: "
        "torch.empty((), dtype=dtype).element_size() gives 2 for float16, 4 "
        "for float32, 8 for float64.",
    ),
    "banded_quadratic": (
        "an (L, L) score matrix for a banded (sliding-window) attention",
        "the blocked sliding window never builds (L, L): each block of queries "
        "meets only span = block + left + right keys, so the memory grows like "
        "L * window, not L^2.",
    ),
    "kv_once": (
        "the padded copies of K and V counted once instead of twice",
        "the blocked implementation pads k *and* v: two copies of (L + left + right + "
        "tail) rows each.",
    ),
    "forgot_overlap": (
        "chunks that meet only their own keys (the overlap forgotten)",
        "chunk c meets span = chunk_size + 2 * overlap keys: the overlap widens "
        "every score tile and the padded k and v.",
    ),
    "estimate_off": (
        "an estimate more than 15% away from the measured peak",
        "compare with course.bench.peak_memory on the same sizes, and list what the "
        "implementation allocates line by line (the trace above).",
    ),
    "no_error_for_bad_params": (
        "a bad argument accepted silently",
        "raise ValueError with a clear message for an unknown kind, a "
        "missing keyword (e.g. window for 'sliding') and sizes < 1.",
    ),
    "failure_raised": (
        "a failure raised instead of recorded",
        "wrap each measurement in try/except: record status 'out_of_memory' "
        "(torch.OutOfMemoryError, or 'out of memory' in the message) or 'error', "
        "and carry on with the next mechanism.",
    ),
    "wrong_status": (
        "a failure recorded with the wrong status",
        "out of memory -> 'out_of_memory'; a warm-up call slower than "
        "time_budget_s -> 'too_slow'; the longer lengths of a mechanism that failed "
        "-> 'skipped'; everything else that raises -> 'error'.",
    ),
    "missing_fields": (
        "rows without the table's fields",
        "every row is a dict with name, seq_len, status, time_s, peak_bytes, "
        "rel_error and message (None where there is nothing to report).",
    ),
    "wrong_rows": (
        "a table without one row per mechanism and length",
        "append one row for every (length, mechanism) pair, failures included.",
    ),
    "no_warmup": (
        "the first (warm-up) call timed",
        "call the function once untimed before timing: the first call pays for "
        "allocation, caches and compilation.",
    ),
    "mean_not_median": (
        "the mean of the timed calls instead of their median",
        "report statistics.median of the repeats (or course.bench.median_time): "
        "one slow outlier must not move the result.",
    ),
    "too_few_calls": (
        "fewer calls than a warm-up, `repeats` timed ones and a memory measurement",
        "one warm-up call, `repeats` timed calls, one call under course.bench.peak_memory.",
    ),
    "peak_wrong": (
        "a peak memory that is not what the call allocates",
        "measure with course.bench.peak_memory(fn, q, k, v) (the bytes allocated and "
        "alive at once during the call, its output included).",
    ),
    "quality_wrong": (
        "a relative error that is not ||out - ref|| / ||ref|| against float64 attention",
        "compute ref = softmax(q kᵀ / sqrt(d)) v in float64 on the same q, k, v, "
        "then (out.double() - ref).norm() / ref.norm().",
    ),
    "wrong_choice": (
        "a choice that does not follow the rule",
        "go through the candidates in the docstring's order and return the first "
        "whose estimate fits the budget.",
    ),
}

KIND_ARGS = {
    "dense": {},
    "dense_masked": {},
    "strided": {"stride": 8, "local_window": 8},
}


# ----------------------------------------------------------------------------- measuring


def measured(kind, batch, heads, L, d, dtype=torch.float32, **kw) -> int:
    """Peak bytes of one call of the course's implementation of `kind` (the estimate's target)."""
    fn = course.reference.capstone.attention_function(kind, **kw)
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(batch, heads, L, d, generator=g).to(dtype) for _ in range(3))
    with torch.no_grad():
        return peak_memory(fn, q, k, v)


def expect_number(value, what: str) -> float:
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not value > 0
        or not math.isfinite(value)
    ):
        description, fix = hint("not_a_number")
        raise Mistake(
            f"{what} returned {value!r}: it looks like {description}.", fix, "not_a_number"
        )
    return float(value)


def describe(kind, batch, heads, L, d, dtype, kw) -> str:
    extra = "".join(f", {k}={v!r}" for k, v in kw.items())
    return f"estimate_attention_memory({kind!r}, {batch}, {heads}, {L}, {d}, {dtype}{extra})"


def expect_estimate(estimate, kind, batch, heads, L, d, dtype=torch.float32, suspects=(), **kw):
    """The student's estimate within 15% of the measured peak; `suspects` are callables
    (value, measured) -> key or None that name a mistake."""
    what = describe(kind, batch, heads, L, d, dtype, kw)
    value = expect_number(estimate(kind, batch, heads, L, d, dtype, **kw), what)
    peak = measured(kind, batch, heads, L, d, dtype, **kw)
    error = abs(value - peak) / peak
    if error <= TOLERANCE:
        return value
    seen = f"{what} = {value:.0f} bytes, measured {peak} ({100 * error:.0f}% off, allowed 15%)"
    for suspect in suspects:
        key = suspect(value, peak)
        if key:
            description, fix = hint(key)
            raise Mistake(f"{seen}: it looks like {description}.", fix, key)
    description, fix = hint("estimate_off")
    raise Mistake(f"{seen}.", fix, "estimate_off")


def same(a: float, b: float, tol: float = 0.01) -> bool:
    return abs(a - b) <= tol * max(abs(a), abs(b), 1.0)


def heads_suspect(estimate, kind, batch, heads, L, d, dtype, **kw):
    def suspect(value, peak):
        if heads > 1 and same(value, float(estimate(kind, batch, 1, L, d, dtype, **kw))):
            return "forgot_heads"

    return suspect


def dtype_suspect(estimate, kind, batch, heads, L, d, dtype, **kw):
    def suspect(value, peak):
        if dtype != torch.float32 and same(
            value, float(estimate(kind, batch, heads, L, d, torch.float32, **kw))
        ):
            return "wrong_element_size"

    return suspect


# ----------------------------------------------------------------------------- estimate_attention_memory


def est_dense_family(estimate_attention_memory, rng):
    """dense, dense_masked and strided: within 15% of the measured peak, several heads"""
    for kind in ("dense", "dense_masked", "strided"):
        B, H, L, d = draw(rng, 1, 2), draw(rng, 2, 4), 32 * draw(rng, 3, 8), 2 ** draw(rng, 4, 6)
        kw = KIND_ARGS[kind]
        expect_estimate(
            estimate_attention_memory,
            kind,
            B,
            H,
            L,
            d,
            torch.float32,
            [heads_suspect(estimate_attention_memory, kind, B, H, L, d, torch.float32, **kw)],
            **kw,
        )


def est_dtypes(estimate_attention_memory, rng):
    """bytes per element follow the dtype: float64 and float16 (dense, flash, linear)"""
    for kind, dtype in (
        ("dense", torch.float64),
        ("flash", torch.float16),
        ("linear", torch.float64),
    ):
        B, H, L, d = 1, draw(rng, 1, 3), 64 * draw(rng, 2, 6), 2 ** draw(rng, 4, 5)
        expect_estimate(
            estimate_attention_memory,
            kind,
            B,
            H,
            L,
            d,
            dtype,
            [
                dtype_suspect(estimate_attention_memory, kind, B, H, L, d, dtype),
                heads_suspect(estimate_attention_memory, kind, B, H, L, d, dtype),
            ],
        )


def sliding_copy_bytes(N, L, d, s, window, causal):
    """One padded copy of k (or v) in the blocked implementation: (L + left + right + tail) rows."""
    left, right = (window - 1, 0) if causal else (window // 2, window // 2)
    left, right = min(left, L - 1), min(right, L - 1)
    block = max(16, min(L, left + right + 1))
    tail = math.ceil(L / block) * block - L
    return N * (L + left + right + tail) * d * s


def est_sliding(estimate_attention_memory, rng):
    """sliding window: within 15%, growing like L * window (not L^2), K and V both copied"""
    est = estimate_attention_memory
    causal = bool(draw(rng, 0, 1))
    H, L, window, d = draw(rng, 1, 3), 256 * draw(rng, 2, 4), 2 * draw(rng, 4, 16), 32
    kw = {"window": window, "causal": causal}

    def quadratic(value, peak):
        longer = float(est("sliding", 1, H, 2 * L, d, torch.float32, **kw))
        if longer > 3 * value:
            return "banded_quadratic"

    copy = sliding_copy_bytes(H, L, d, 4, window, causal)

    def kv_once(value, peak):
        return "kv_once" if same(value, peak - copy, 0.05) else None

    expect_estimate(
        est,
        "sliding",
        1,
        H,
        L,
        d,
        torch.float32,
        [quadratic, heads_suspect(est, "sliding", 1, H, L, d, torch.float32, **kw), kv_once],
        **kw,
    )
    # wide heads, a narrow window: the padded copies of q, k, v and the output dominate
    L, window, d = 512 * draw(rng, 3, 4), draw(rng, 4, 8), 128
    kw = {"window": window, "causal": causal}
    copy = sliding_copy_bytes(1, L, d, 4, window, causal)
    expect_estimate(est, "sliding", 1, 1, L, d, torch.float32, [kv_once, quadratic], **kw)


def est_chunked(estimate_attention_memory, rng):
    """chunked with overlap: within 15%; the overlap widens every tile"""
    est = estimate_attention_memory
    chunk = 16 * draw(rng, 1, 2)
    overlap = chunk + draw(rng, 0, chunk)
    H, L, d = draw(rng, 4, 8), 256 * draw(rng, 2, 4), 8

    def no_overlap(value, peak):
        if same(
            value, float(est("chunked", 1, H, L, d, torch.float32, chunk_size=chunk, overlap=0))
        ):
            return "forgot_overlap"

    expect_estimate(
        est,
        "chunked",
        1,
        H,
        L,
        d,
        torch.float32,
        [
            no_overlap,
            heads_suspect(
                est, "chunked", 1, H, L, d, torch.float32, chunk_size=chunk, overlap=overlap
            ),
        ],
        chunk_size=chunk,
        overlap=overlap,
    )


def est_linear_family(estimate_attention_memory, rng):
    """flash (tiled), linear, Performer and scan: within 15% of the measured peak"""
    est = estimate_attention_memory
    B, H = draw(rng, 1, 2), draw(rng, 2, 4)
    cases = [
        (
            "flash",
            128 * draw(rng, 2, 6),
            2 ** draw(rng, 4, 5),
            {"block_q": 2 ** draw(rng, 5, 6), "block_k": 2 ** draw(rng, 5, 6)},
        ),
        ("linear", 128 * draw(rng, 1, 6), 2 ** draw(rng, 3, 6), {}),
        (
            "performer",
            128 * draw(rng, 1, 4),
            2 ** draw(rng, 4, 5),
            {"num_features": 2 ** draw(rng, 5, 7)},
        ),
        ("scan", 64 * draw(rng, 1, 4), 16, {"state": 2 ** draw(rng, 2, 4)}),
    ]
    for kind, L, d, kw in cases:
        expect_estimate(
            est,
            kind,
            B,
            H,
            L,
            d,
            torch.float32,
            [heads_suspect(est, kind, B, H, L, d, torch.float32, **kw)],
            **kw,
        )


def est_bad_arguments(estimate_attention_memory, rng):
    """ValueError for an unknown kind, a missing keyword, and sizes or windows < 1"""
    L = draw(rng, 8, 64)
    calls = [
        (
            lambda: estimate_attention_memory("dense_flash", 1, 1, L, 16, torch.float32),
            "unknown kind",
        ),
        (
            lambda: estimate_attention_memory("sliding", 1, 1, L, 16, torch.float32),
            "sliding without window",
        ),
        (
            lambda: estimate_attention_memory("chunked", 1, 1, L, 16, torch.float32, chunk_size=8),
            "chunked without overlap",
        ),
        (lambda: estimate_attention_memory("dense", 0, 1, L, 16, torch.float32), "batch = 0"),
        (lambda: estimate_attention_memory("dense", 1, 1, -L, 16, torch.float32), "seq_len < 0"),
        (
            lambda: estimate_attention_memory("sliding", 1, 1, L, 16, torch.float32, window=0),
            "window = 0",
        ),
    ]
    for call, what in calls:
        expect_value_error(
            call, f"estimate_attention_memory with {what}", "no_error_for_bad_params"
        )


# ----------------------------------------------------------------------------- benchmark_attention

FIELDS = ("name", "seq_len", "status", "time_s", "peak_bytes", "rel_error", "message")


def exact(q, k, v):
    return F.scaled_dot_product_attention(q, k, v)


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
    fns = {"exact": exact, "scaled": lambda q, k, v: scale * exact(q, k, v)}
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
    calls = []
    slow_first, outlier = 0.5, 0.4

    def moody(q, k, v):  # slow on its first call (a warm-up), and on its third (an outlier)
        calls.append(1)
        time.sleep(slow_first if len(calls) == 1 else outlier if len(calls) == 3 else 0.002)
        return exact(q, k, v)

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
    if len(calls) < 3 + 2:
        description, fix = hint("too_few_calls")
        raise Mistake(
            f"with repeats=3 the function was called {len(calls)} times: it looks like "
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

    def hungry(q, k, v):  # a scratch buffer of L * floats float64, then the output
        scratch = torch.empty(q.shape[-2], floats, dtype=torch.float64)
        scratch.fill_(1.0)
        return exact(q, k, v)

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

    def greedy(q, k, v):
        if q.shape[-2] > short:
            raise torch.OutOfMemoryError("out of memory (simulated): tried to allocate 64 GiB")
        return exact(q, k, v)

    def sluggish(q, k, v):
        if q.shape[-2] > short:
            time.sleep(0.3)
        return exact(q, k, v)

    def broken(q, k, v):
        if q.shape[-2] > short:
            raise IndexError("simulated bug")
        return exact(q, k, v)

    fns = {"exact": exact, "greedy": greedy, "sluggish": sluggish, "broken": broken}
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


# ----------------------------------------------------------------------------- choose_attention


def expect_choice(choose_attention, args: dict, want: str) -> None:
    got = choose_attention(**args)
    if got != want:
        description, fix = hint("wrong_choice")
        shown = ", ".join(f"{k}={v!r}" for k, v in args.items())
        raise Mistake(
            f"choose_attention({shown}) = {got!r}, expected {want!r}.", fix, "wrong_choice"
        )


def choose_cpu(choose_attention, rng):
    """CPU: dense when it fits, flash when only O(L) fits, linear past 8k tokens, sliding for local"""
    GiB = 2**30
    L = 128 * draw(rng, 2, 8)
    expect_choice(
        choose_attention,
        dict(seq_len=L, needs_global_context=True, memory_budget_bytes=64 * GiB, has_gpu=False),
        "dense",
    )
    L = 1024 * draw(rng, 4, 8)  # dense needs > 1 GiB (8 heads), tiled ~ 10 MB
    expect_choice(
        choose_attention,
        dict(seq_len=L, needs_global_context=True, memory_budget_bytes=GiB // 4, has_gpu=False),
        "flash",
    )
    L = 1024 * draw(rng, 9, 32)
    expect_choice(
        choose_attention,
        dict(seq_len=L, needs_global_context=True, memory_budget_bytes=64 * GiB, has_gpu=False),
        "linear",
    )
    L = 1024 * draw(rng, 2, 32)
    expect_choice(
        choose_attention,
        dict(seq_len=L, needs_global_context=False, memory_budget_bytes=64 * GiB, has_gpu=False),
        "sliding",
    )


def choose_gpu_and_short(choose_attention, rng):
    """GPU: flash; a sequence no longer than the window is global anyway"""
    GiB = 2**30
    L = 128 * draw(rng, 1, 64)
    expect_choice(
        choose_attention,
        dict(seq_len=L, needs_global_context=True, memory_budget_bytes=64 * GiB, has_gpu=True),
        "flash",
    )
    L = draw(rng, 16, 256)
    expect_choice(
        choose_attention,
        dict(seq_len=L, needs_global_context=False, memory_budget_bytes=64 * GiB, has_gpu=False),
        "dense",
    )
    expect_choice(
        choose_attention,
        dict(seq_len=L, needs_global_context=False, memory_budget_bytes=64 * GiB, has_gpu=True),
        "flash",
    )


def choose_nothing_fits(choose_attention, rng):
    """ValueError when nothing fits the budget, and for bad arguments"""
    L = 1024 * draw(rng, 1, 16)
    for args, what in [
        (
            dict(seq_len=L, needs_global_context=True, memory_budget_bytes=1000, has_gpu=False),
            "a 1000-byte budget",
        ),
        (
            dict(seq_len=0, needs_global_context=True, memory_budget_bytes=2**30, has_gpu=False),
            "seq_len = 0",
        ),
        (
            dict(seq_len=L, needs_global_context=True, memory_budget_bytes=-1, has_gpu=True),
            "a negative budget",
        ),
    ]:
        expect_value_error(
            lambda: choose_attention(**args),
            f"choose_attention with {what}",
            "no_error_for_bad_params",
        )


CAPSTONE = "course.reference.capstone is the course's library version, for later days: write yours."
FORBIDDEN_ESTIMATE = {
    course.reference.capstone.estimate_attention_memory: CAPSTONE,
    course.reference.capstone.measure_attention_memory: CAPSTONE,
    peak_memory: "estimate from the formula; measuring is the check's job.",
}
FORBIDDEN_BENCH = {course.reference.capstone.benchmark_attention: CAPSTONE}
FORBIDDEN_CHOOSE = {
    course.reference.capstone.choose_attention: CAPSTONE,
    course.reference.capstone.estimate_attention_memory: CAPSTONE,
}

# ============================================================================= advanced: make_attention
# One interface for every mechanism. The layer's projections are part of the contract
# (q_proj, k_proj, v_proj, out_proj: nn.Linear(d_model, d_model), as day03's MultiHeadAttention),
# so the oracle recomputes each kind in float64 from the student's own weights.

MAKE_HINTS = {
    "not_a_module": (
        "make_attention returning something that is not an nn.Module",
        "return an instance of an nn.Module subclass whose forward(x, mask=None) runs the kind.",
    ),
    "missing_projection": (
        "a multi-head kind without q_proj, k_proj, v_proj and out_proj as nn.Linear(d_model, d_model)",
        "give every kind but 'mamba' the four projections of day03's MultiHeadAttention, "
        "named q_proj, k_proj, v_proj and out_proj.",
    ),
    "heads_ignored": (
        "one head of size d_model instead of num_heads heads of size d_model // num_heads",
        "split q, k and v into heads (B, H, L, dh) before the mechanism and merge after it, as "
        "day03's split_heads and merge_heads do.",
    ),
    "scaled_by_d_model": (
        "scores scaled by 1/sqrt(d_model) instead of 1/sqrt(head_dim)",
        "each head is its own attention over head_dim = d_model // num_heads features.",
    ),
    "causal_ignored": (
        "causal=True ignored: the kind still looks at later tokens",
        "pass causal through to the mechanism (causal_mask for 'dense', causal= for "
        "sliding_window_attention, flash_attention_torch and the linear forms).",
    ),
    "overlap_ignored": (
        "chunked attention without its overlap",
        "pass overlap to chunked_attention(q, k, v, chunk_size, overlap).",
    ),
    "wrong_window": (
        "the sliding window one key off, or built from the wrong arguments",
        "use sliding_window_attention(q, k, v, window, causal) with the layer's own window.",
    ),
    "mask_ignored": (
        "the mask given to forward ignored by a kind that takes one",
        "for 'dense' and 'strided', combine the mask with the kind's own pattern (logical and) "
        "before course.reference.masks.attention.",
    ),
    "mask_silently_dropped": (
        "a kind that never builds the (L, L) scores accepting a mask and ignoring it",
        "raise ValueError when a mask is given to a kind that cannot apply it: ignoring it would "
        "silently attend to padding.",
    ),
    "not_causal_scan": (
        "a 'mamba' layer whose early outputs depend on later tokens",
        "the scan runs forward in time; wrap course.reference.mamba_scan.MambaBlock and keep its causal conv.",
    ),
    "unclear_kind_error": (
        "an unknown kind or argument accepted, or refused without naming what is valid",
        "raise ValueError listing the valid kinds (and for a bad argument, the arguments the kind "
        "takes), so the caller can fix the call from the message alone.",
    ),
}

MAKE_FORBIDDEN = {
    mechanisms.make_attention: "build each kind yourself around the course's attention functions.",
    mechanisms.MultiHeadMechanism.__init__: "write your own nn.Module around the mechanisms.",
    mechanisms.MultiHeadMechanism.forward: "write your own nn.Module around the mechanisms.",
    mechanisms.MambaMechanism.__init__: "wrap course.reference.mamba_scan.MambaBlock in your own module.",
}

EXACT_KINDS = ("dense", "strided", "sliding_window", "chunked", "flash")


def draw_options(kind: str, rng, L: int) -> dict:
    """Random keyword arguments for `kind` at length L."""
    causal = bool(draw(rng, 0, 1))
    if kind == "dense":
        return {"causal": causal}
    if kind == "strided":
        return {"stride": draw(rng, 2, 5), "local_window": draw(rng, 1, 5)}
    if kind == "sliding_window":
        return {"window": draw(rng, 2, 7), "causal": causal}
    if kind == "chunked":
        return {"chunk_size": draw(rng, 3, 8), "overlap": draw(rng, 1, 3)}
    if kind == "flash":
        return {"causal": causal, "block_q": draw(rng, 4, 16), "block_k": draw(rng, 4, 16)}
    raise ValueError(kind)


def allowed_pairs(kind: str, options: dict, L: int) -> torch.Tensor:
    """(L, L) bool: which keys each query may attend under `kind`, by plain comparisons."""
    i, j = torch.arange(L)[:, None], torch.arange(L)[None, :]
    everything = torch.ones(L, L, dtype=torch.bool)
    if kind in ("dense", "flash"):
        return j <= i if options["causal"] else everything
    if kind == "strided":
        return (j % options["stride"] == 0) | ((i - j).abs() <= options["local_window"] // 2)
    if kind == "sliding_window":
        w = options["window"]
        return (j <= i) & (j > i - w) if options["causal"] else (i - j).abs() <= w // 2
    c, o = options["chunk_size"], options["overlap"]
    return (j >= (i // c) * c - o) & (j < (i // c) * c + c + o)


def build_layer(make_attention, kind: str, d_model: int, heads: int, **options):
    """The student's layer (built under the guard) and a guarded way to call it."""
    layer = make_attention(kind, d_model, heads, **options)  # already guarded by the harness
    if not isinstance(layer, nn.Module):
        raise named("not_a_module")
    return layer, guarded(layer, "make_attention", MAKE_FORBIDDEN)


def projection_weights(layer, d_model: int) -> dict:
    """float64 copies of the four projections, with their shapes checked."""
    found = {}
    for name in ("q_proj", "k_proj", "v_proj", "out_proj"):
        linear = getattr(layer, name, None)
        if not isinstance(linear, nn.Linear) or (linear.in_features, linear.out_features) != (
            d_model,
            d_model,
        ):
            raise named("missing_projection")
        bias = linear.bias if linear.bias is not None else torch.zeros(d_model)
        found[name] = (linear.weight.detach().double(), bias.detach().double())
    return found


def dense_oracle(
    weights: dict, x: torch.Tensor, allowed: torch.Tensor, heads: int, scale_dim: int = None
) -> torch.Tensor:
    """float64 multi-head softmax attention under `allowed` ((L, L) or broadcastable to
    (B, H, L, L)); fully masked rows give zeros. `scale_dim` replaces head_dim in the scale."""
    x = x.double()
    B, L, d_model = x.shape
    dh = d_model // heads

    def project(name):
        w, b = weights[name]
        return x @ w.T + b

    q, k, v = (
        project(n).view(B, L, heads, dh).transpose(1, 2) for n in ("q_proj", "k_proj", "v_proj")
    )
    scores = q @ k.transpose(-1, -2) / math.sqrt(scale_dim or dh)
    scores = scores.masked_fill(~allowed, float("-inf"))
    out = torch.softmax(scores, dim=-1).nan_to_num(0.0) @ v  # (B, H, L, dh)
    w, b = weights["out_proj"]
    return out.transpose(1, 2).reshape(B, L, d_model) @ w.T + b


def make_exact_kinds(make_attention, rng):
    """dense, strided, sliding_window, chunked and flash equal float64 multi-head attention under each kind's pattern"""
    for kind in EXACT_KINDS:
        heads = draw(rng, 2, 3)
        d_model, L, B = heads * draw(rng, 2, 4), draw(rng, 12, 24), draw(rng, 1, 2)
        options = draw_options(kind, rng, L)
        layer, forward = build_layer(make_attention, kind, d_model, heads, **options)
        weights = projection_weights(layer, d_model)
        x = randn((B, L, d_model), rng)
        allowed = allowed_pairs(kind, options, L)
        suspects = [
            ("heads_ignored", dense_oracle(weights, x, allowed, 1)),
            ("scaled_by_d_model", dense_oracle(weights, x, allowed, heads, scale_dim=d_model)),
        ]
        if options.get("causal"):
            suspects.append(
                (
                    "causal_ignored",
                    dense_oracle(
                        weights, x, allowed_pairs(kind, {**options, "causal": False}, L), heads
                    ),
                )
            )
        if kind == "chunked":
            suspects.append(
                (
                    "overlap_ignored",
                    dense_oracle(
                        weights, x, allowed_pairs(kind, {**options, "overlap": 0}, L), heads
                    ),
                )
            )
        if kind == "sliding_window":
            for wrong in (options["window"] - 1, options["window"] + 1):
                suspects.append(
                    (
                        "wrong_window",
                        dense_oracle(
                            weights, x, allowed_pairs(kind, {**options, "window": wrong}, L), heads
                        ),
                    )
                )
        with torch.no_grad():
            out = forward(x)
        expect_close(
            out,
            dense_oracle(weights, x, allowed, heads),
            torch.float32,
            what=f"make_attention({kind!r}, {d_model}, {heads}, **{options})(x)",
            suspects=suspects,
        )


def make_linear_kinds(make_attention, rng):
    """linear equals float64 elu+1 linear attention of the layer's projections (causal too); performer is deterministic and close to softmax attention"""
    heads = draw(rng, 2, 3)
    d_model, L = heads * draw(rng, 2, 4), draw(rng, 10, 20)
    x = randn((2, L, d_model), rng, scale=0.5)
    for causal in (False, True):
        layer, forward = build_layer(
            make_attention, "linear", d_model, heads, causal=causal, chunk_size=draw(rng, 3, 6)
        )
        weights = projection_weights(layer, d_model)
        with torch.no_grad():
            out = forward(x)
        expect_close(
            out,
            linear_oracle(weights, x, heads, causal),
            torch.float32,
            what=f"make_attention('linear', causal={causal})(x)",
            suspects=[("causal_ignored", linear_oracle(weights, x, heads, not causal))]
            if causal
            else [("heads_ignored", linear_oracle(weights, x, 1, causal))],
        )
    layer, forward = build_layer(make_attention, "performer", d_model, heads, num_features=2048)
    weights = projection_weights(layer, d_model)
    with torch.no_grad():
        first, second = forward(x), forward(x)
    expect_tensor(first, "make_attention('performer')(x)", x.shape, x.dtype)
    if not torch.equal(first, second):
        raise Mistake(
            "make_attention('performer') gave two different outputs for the same x.",
            "draw the random features once per layer (or from a generator seeded by the "
            "layer's `seed`), so the layer is a function of its input.",
        )
    error = relative_error(
        first, dense_oracle(weights, x, torch.ones(L, L, dtype=torch.bool), heads)
    )
    if error > 0.25:
        raise Mistake(
            f"make_attention('performer', num_features=2048) is {error:.0%} away from "
            "softmax attention with the same projections (expected well under 25%).",
            "use course.reference.linear_attention.performer_attention on the split heads.",
        )


def linear_oracle(weights: dict, x: torch.Tensor, heads: int, causal: bool) -> torch.Tensor:
    """float64 elu+1 linear attention, quadratic form, with the course's eps = 1e-6."""
    x = x.double()
    B, L, d_model = x.shape
    dh = d_model // heads

    def project(name):
        w, b = weights[name]
        return (x @ w.T + b).view(B, L, heads, dh).transpose(1, 2)

    q, k, v = (
        torch.nn.functional.elu(project(n)) + 1 if n != "v_proj" else project(n)
        for n in ("q_proj", "k_proj", "v_proj")
    )
    scores = q @ k.transpose(-1, -2)  # (B, H, L, L)
    if causal:
        scores = scores.tril()
    out = (scores @ v) / (scores.sum(-1, keepdim=True) + 1e-6)
    w, b = weights["out_proj"]
    return out.transpose(1, 2).reshape(B, L, d_model) @ w.T + b


def make_causal_kinds_do_not_look_ahead(make_attention, rng):
    """every causal layer (dense, sliding_window, flash, linear with causal=True, and mamba) gives the same early outputs when later tokens change"""
    heads = draw(rng, 2, 3)
    d_model, L = heads * 4, draw(rng, 12, 20)
    cut = draw(rng, 4, L - 4)
    x = randn((2, L, d_model), rng)
    changed = x.clone()
    changed[:, cut:] += randn((2, L - cut, d_model), rng)
    for kind, options in [
        ("dense", {"causal": True}),
        ("sliding_window", {"window": 5, "causal": True}),
        ("flash", {"causal": True}),
        ("linear", {"causal": True}),
        ("mamba", {"d_state": 4}),
    ]:
        layer, forward = build_layer(make_attention, kind, d_model, heads, **options)
        with torch.no_grad():
            before, after = forward(x), forward(changed)
        expect_tensor(before, f"make_attention({kind!r})(x)", x.shape, x.dtype)
        if relative_error(after[:, :cut], before[:, :cut]) > 1e-5:
            raise named("not_causal_scan" if kind == "mamba" else "causal_ignored")


def make_masks(make_attention, rng):
    """forward(x, mask): dense and strided apply the mask (and their own pattern); every other kind refuses a mask with ValueError"""
    heads = draw(rng, 2, 3)
    d_model, L = heads * draw(rng, 2, 4), draw(rng, 8, 16)
    x = randn((2, L, d_model), rng)
    keys = (
        torch.arange(L)[None, None, None, :] < torch.tensor([L - 3, L])[:, None, None, None]
    )  # (2, 1, 1, L)
    for kind, options in [
        ("dense", {"causal": True}),
        ("strided", {"stride": 3, "local_window": 3}),
    ]:
        layer, forward = build_layer(make_attention, kind, d_model, heads, **options)
        weights = projection_weights(layer, d_model)
        pattern = allowed_pairs(kind, {**options}, L)
        with torch.no_grad():
            out = forward(x, mask=keys)
        expect_close(
            out,
            dense_oracle(weights, x, pattern & keys, heads),
            torch.float32,
            what=f"make_attention({kind!r})(x, mask=padding)",
            suspects=[("mask_ignored", dense_oracle(weights, x, pattern, heads))],
        )
    for kind, options in [
        ("sliding_window", {"window": 3}),
        ("chunked", {"chunk_size": 4}),
        ("flash", {}),
        ("linear", {}),
        ("performer", {}),
        ("mamba", {}),
    ]:
        layer, forward = build_layer(make_attention, kind, d_model, heads, **options)
        expect_value_error(
            lambda: forward(x, mask=keys),
            f"make_attention({kind!r})(x, mask=...)",
            "mask_silently_dropped",
        )


def make_clear_errors(make_attention, rng):
    """an unknown kind, an argument the kind does not take and a missing required argument raise ValueError; the unknown kind's message names every kind"""
    bogus = ["sparse", "full", "softmax", "local"][draw(rng, 0, 3)]
    try:
        make_attention(bogus, 16, 2)
    except Mistake as mistake:
        if mistake.key != "raised" or not isinstance(mistake.__cause__, ValueError):
            raise
        missing = [
            kind for kind in mechanisms.ATTENTION_KINDS if kind not in str(mistake.__cause__)
        ]
        if missing:
            raise Mistake(
                f"make_attention({bogus!r}, ...) raised ValueError({str(mistake.__cause__)!r}), "
                f"which does not name the kinds {missing}.",
                hint("unclear_kind_error")[1],
                "unclear_kind_error",
            ) from None
    else:
        raise named("unclear_kind_error")
    expect_value_error(
        lambda: make_attention("dense", 16, 2, window=4),
        "make_attention('dense', window=4)",
        "unclear_kind_error",
    )
    expect_value_error(
        lambda: make_attention("sliding_window", 16, 2),
        "make_attention('sliding_window') without window",
        "unclear_kind_error",
    )
    expect_value_error(
        lambda: make_attention("chunked", 16, 2, chunk_size=4, stride=2),
        "make_attention('chunked', stride=2)",
        "unclear_kind_error",
    )


MAKE_EXERCISE = Exercise(
    checks=[
        make_exact_kinds,
        make_linear_kinds,
        make_causal_kinds_do_not_look_ahead,
        make_masks,
        make_clear_errors,
    ],
    forbidden=MAKE_FORBIDDEN,
)


HINTS.update(MAKE_HINTS)  # the advanced section's mistakes, kept beside its checks


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
        checks=[choose_cpu, choose_gpu_and_short, choose_nothing_fits], forbidden=FORBIDDEN_CHOOSE
    ),
    "make_attention": MAKE_EXERCISE,
}
