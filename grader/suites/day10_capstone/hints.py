"""What day10's checks tell the student: HINTS, the mistakes the three core exercises' checks
name, and what each of those exercises must not call (make_attention keeps its own beside its
checks)."""

import course.reference.capstone
from course.bench import peak_memory

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
