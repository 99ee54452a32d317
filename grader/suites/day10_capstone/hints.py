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
    "not_an_int": (
        "a number of bytes that is not an int (a float, from a division or math.ceil of a float)",
        "bytes are whole: divide with // (or round up with -(-a // b)), or return int(...) "
        "of the total; the docstring promises an int.",
    ),
    "bits_not_bytes": (
        "bits per element where bytes were meant (8 times too much)",
        "torch.finfo(dtype).bits counts bits; the bytes per element are "
        "torch.empty((), dtype=dtype).element_size() (or dtype.itemsize).",
    ),
    "masked_two_buffers": (
        "two (L, L) float buffers for masked attention where three are alive at once",
        "masked_fill makes a masked copy of the scores, and zeroing the fully masked rows "
        "copies the weights while scores and weights are alive: 3 s N L² + L² + L.",
    ),
    "performer_features_only": (
        "a Performer estimate with only the four (L, m) feature buffers",
        "the feature map also holds a scaled copy of the input (N L d elements) and the (m, d) "
        "projection, built in float64: s (4NLm + NLd + md) + 8md.",
    ),
    "scan_channels": (
        "a scan over batch * heads channels instead of batch * heads * head_dim",
        "every feature of every head is its own channel of the scan: N' = batch * heads * "
        "head_dim in s (5 N' L n + 3 N' L).",
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
    "window_sides_misread": (
        "a non-causal window read as left = w - 1, right = w // 2",
        "the two cases are separate: causal, left = w - 1 and right = 0; not causal, "
        "left = right = w // 2 (a band of w // 2 keys on each side).",
    ),
    "block_below_16": (
        "query blocks of left + right + 1 rows for a narrow window, without the floor of 16",
        "the blocked implementation never uses blocks of fewer than 16 queries: "
        "b = max(16, min(L, left + right + 1)).",
    ),
    "causal_window_one_wide": (
        "a causal window read as left = w (w + 1 keys) instead of left = w - 1",
        "a causal window of w keys is the query itself and the w - 1 before it: left = w - 1, "
        "right = 0.",
    ),
    "option_ignored": (
        "a keyword argument of the kind ignored (its default used whatever was passed)",
        "read each kind's keyword from **kw under the name the notebook gives it (block_q, "
        "block_k, num_features, state, window, causal, chunk_size, overlap).",
    ),
    "defaults_changed": (
        "a call that changed the defaults for the next ones (a table of defaults updated in "
        "place: opts = defaults; opts.update(kw))",
        "build a new dict for each call, {**defaults, **kw}, so the table of defaults stays "
        "as it is.",
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
    "flash_one_tile": (
        "a flash estimate with one (block_q, block_k) score tile where four are alive at once",
        "a query block holds four (block_q, block_k) tiles together (the new scores, s - m, p, "
        "and the previous p; three when one query block covers L): 4 N b_q b_k elements.",
    ),
    "overlap_one_side": (
        "chunks whose overlap is counted on one side only (left = overlap, right = 0)",
        "each chunk meets overlap keys before it *and* overlap keys after it: left = right = "
        "overlap, span = chunk_size + 2 * overlap, and k and v padded on both sides.",
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
    "skipped_rows_missing": (
        "the longer lengths of a failed mechanism left out of the table",
        "a skipped length is a row too: append {'status': 'skipped', ...} for each longer "
        "length of a mechanism that failed, so the table shows where it stopped.",
    ),
    "not_skipped": (
        "a mechanism that failed run again at the longer lengths",
        "remember which mechanisms failed (a set or dict) and record 'skipped' for their "
        "longer lengths without calling them: a mechanism out of memory at L fails at 2L too.",
    ),
    "tuple_not_unpacked": (
        "a mechanism's (out, weights) tuple used as its output",
        "a mechanism may return a tuple whose first item is the output (as "
        "course.reference.masks.attention does): out = out[0] if isinstance(out, tuple) else out.",
    ),
    "warmup_timed": (
        "the warm-up call's time counted among the timed calls",
        "time only the `repeats` calls after the warm-up: the warm-up's time decides "
        "'too_slow' and nothing else.",
    ),
    "time_not_seconds": (
        "a time in milliseconds where seconds were asked",
        "time_s is in seconds: time.perf_counter() differences already are; scale to ms only "
        "when printing.",
    ),
    "time_wrong": (
        "a time that is not the median of the timed calls after the warm-up",
        "one untimed warm-up call, then `repeats` timed calls; report statistics.median of "
        "their durations in seconds (or course.bench.median_time(fn, q, k, v, repeats=repeats, "
        "warmup=0)).",
    ),
    "no_warmup": (
        "the first (warm-up) call timed",
        "call the function once untimed before timing: the first call pays for "
        "allocation, caches and compilation.",
    ),
    "time_summed": (
        "the sum of the timed calls where their median was asked",
        "report statistics.median of the `repeats` timed durations (or "
        "course.bench.median_time): one call's time, not the total.",
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
    "quality_by_output_norm": (
        "a relative error divided by ||out|| instead of ||ref||",
        "the error is relative to the reference: (out.double() - ref).norm() / ref.norm().",
    ),
    "quality_not_relative": (
        "an absolute error ||out - ref|| where the relative one was asked",
        "divide by the reference's norm: (out.double() - ref).norm() / ref.norm().",
    ),
    "reference_unscaled": (
        "a float64 reference computed without the 1/sqrt(d) scale",
        "the reference is softmax(q kᵀ / sqrt(head_dim)) v in float64: exact attention must "
        "show a relative error of 0.",
    ),
    "quality_max_abs": (
        "the largest absolute difference max|out - ref| where the relative norm was asked",
        "the error is one number for the whole output, relative to the reference's size: "
        "(out.double() - ref).norm() / ref.norm(), not (out.double() - ref).abs().max().",
    ),
    "quality_row_mean": (
        "the mean of each query's relative error instead of one relative error for the output",
        "take the norms over the whole output: (out.double() - ref).norm() / ref.norm(); a "
        "mean of per-row ratios weighs a small row's error as much as a large one's.",
    ),
    "same_inputs": (
        "one random tensor used as q, k and v",
        "draw q, k and v separately: with q = k every query's largest score is its own key, "
        "which flatters the approximations.",
    ),
    "inputs_not_seeded": (
        "q, k and v drawn without the `seed` (two calls with the same seed saw different inputs)",
        "draw them from torch.Generator().manual_seed(seed) (torch.randn(..., generator=g)), so "
        "the same call gives the same table.",
    ),
    "state_kept_across_calls": (
        "failures remembered from an earlier call (a dict or set created outside the function)",
        "create the record of failed mechanisms inside benchmark_attention: each call starts "
        "with every mechanism untried.",
    ),
    "unmeasured_not_none": (
        "a number where nothing was measured (a failed or skipped row)",
        "leave time_s, peak_bytes and rel_error None in a row that is not 'ok': a 0 reads as "
        "free, instant or perfect (a 'too_slow' row may keep the warm-up's seconds).",
    ),
    "skips_every_mechanism": (
        "one mechanism's failure skipping every other mechanism",
        "remember failures per mechanism (failed[name]) and skip only that mechanism's longer "
        "lengths.",
    ),
    "too_slow_missed": (
        "a warm-up slower than time_budget_s not recorded as 'too_slow'",
        "time the warm-up with time.perf_counter() (seconds) and compare it with "
        "time_budget_s, in seconds too.",
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
    "gpu_ignored": (
        "the CPU candidates used on a GPU",
        "with has_gpu=True the global candidates are flash, then linear: dense is never a GPU "
        "candidate (flash is exact, faster and O(L) there).",
    ),
    "cpu_order": (
        "flash tried before dense on a CPU",
        "on a CPU dense comes first (the fastest exact mechanism there); flash only when "
        "dense does not fit the budget.",
    ),
    "budget_ignored": (
        "a candidate chosen whether or not its estimate fits the budget",
        "compare each candidate's estimate_attention_memory(...) with memory_budget_bytes "
        "and skip those above it.",
    ),
    "fit_not_inclusive": (
        "a budget exactly equal to an estimate refused: `<` where fitting means `<=`",
        "a candidate fits when estimate_attention_memory(...) <= memory_budget_bytes: a "
        "budget of exactly the estimate is enough.",
    ),
    "exact_past_cpu_limit": (
        "exact attention (dense or flash) chosen on a CPU past 8192 tokens",
        "on a CPU, dense and flash are candidates only while seq_len <= EXACT_MAX_LEN_CPU "
        "(8192): past it, exact attention takes seconds per layer, so only linear remains.",
    ),
    "window_not_inclusive": (
        "`seq_len < window` where the rule says `seq_len <= window`",
        "a sequence exactly as long as the window is short: the window already covers every key, "
        "so use the global candidates (needs_global_context or seq_len <= window).",
    ),
    "cpu_limit_not_inclusive": (
        "`seq_len < 8192` where the rule says `seq_len <= 8192`",
        "the CPU limit is inclusive: dense and flash remain candidates at exactly "
        "EXACT_MAX_LEN_CPU = 8192 tokens (seq_len <= EXACT_MAX_LEN_CPU).",
    ),
    "no_linear_fallback": (
        "no candidate left past 8192 tokens on a CPU (linear dropped with dense and flash)",
        "past EXACT_MAX_LEN_CPU only the exact kinds drop out: the candidates are ['linear'], "
        "and linear is chosen when it fits the budget.",
    ),
    "fitting_choice_refused": (
        "a ValueError although a candidate fits the budget",
        "raise only after every candidate of the table's row was estimated and none fit; "
        "check that the row's candidates are all there and compared with <=.",
    ),
    "short_sequence_local": (
        "the sliding window chosen for a sequence no longer than the window",
        "when seq_len <= window the window already covers every key: use the global "
        "candidates (needs_global_context or seq_len <= window).",
    ),
    "kind_name": (
        "a kind name that estimate_attention_memory does not take",
        "return the names of estimate_attention_memory: 'sliding' (make_attention calls it "
        "'sliding_window'), 'dense', 'flash', 'linear'.",
    ),
    "arguments_ignored": (
        "the estimates made with the default sizes instead of the ones passed",
        "pass batch, heads, head_dim and dtype on to estimate_attention_memory, and compare "
        "seq_len with the `window` given.",
    ),
    "local_not_sliding": (
        "a sequence longer than the window, local context enough, not given the local candidates",
        "when not needs_global_context and seq_len > window the candidates are ['sliding', "
        "'linear'], in that order: dense and flash are for global context.",
    ),
    "global_got_sliding": (
        "the sliding window chosen although global context was asked for",
        "the global row applies when `needs_global_context or seq_len <= window` (or, not "
        "and): a sliding window never sees the whole sequence.",
    ),
    "window_not_passed": (
        "'sliding' estimated without its window",
        "estimate the sliding window with estimate_attention_memory('sliding', ..., "
        "window=window): it has no default.",
    ),
    "nothing_fits_accepted": (
        "a choice returned although no candidate fits the budget",
        "after trying every candidate, raise ValueError naming the budget and the candidates "
        "tried: never return one whose estimate is over the budget.",
    ),
    "choose_bad_arguments": (
        "a bad argument accepted silently",
        "raise ValueError for seq_len < 1 and for memory_budget_bytes <= 0, before estimating.",
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
