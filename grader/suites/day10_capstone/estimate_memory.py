"""Checks for estimate_attention_memory: each kind's estimate within 15% of the measured peak of
the course's implementation of that kind."""

import math
import numbers

import torch

import course.reference.capstone
from course.bench import peak_memory
from grader.harness.checking import Mistake, expect_value_error, hint
from grader.suites._common import draw

TOLERANCE = 0.15  # estimate vs measured peak, relative


KIND_ARGS = {
    "dense": {},
    "dense_masked": {},
    "strided": {"stride": 8, "local_window": 8},
}


def measured(kind, batch, heads, L, d, dtype=torch.float32, **kw) -> int:
    """Peak bytes of one call of the course's implementation of `kind` (the estimate's target)."""
    fn = course.reference.capstone.attention_function(kind, **kw)
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(batch, heads, L, d, generator=g).to(dtype) for _ in range(3))
    with torch.no_grad():
        return peak_memory(fn, q, k, v)


def expect_number(value, what: str) -> float:
    """A positive whole number of bytes, as an int (the docstring's promise): a float, even a
    whole one, comes from a division somewhere in the formula."""
    if (
        isinstance(value, bool)
        or not isinstance(value, (numbers.Integral, float))
        or not value > 0
        or not math.isfinite(value)
    ):
        description, fix = hint("not_a_number")
        raise Mistake(
            f"{what} returned {value!r}: it looks like {description}.", fix, "not_a_number"
        )
    if not isinstance(value, numbers.Integral):
        description, fix = hint("not_an_int")
        raise Mistake(f"{what} returned {value!r}: it looks like {description}.", fix, "not_an_int")
    return float(value)


def describe(kind, batch, heads, L, d, dtype, kw) -> str:
    extra = "".join(f", {k}={v!r}" for k, v in kw.items())
    return f"estimate_attention_memory({kind!r}, {batch}, {heads}, {L}, {d}, {dtype}{extra})"


def expect_estimate(estimate, kind, batch, heads, L, d, dtype=torch.float32, suspects=(), **kw):
    """The student's estimate within 15% of the measured peak; `suspects` are callables
    (value, measured) -> key or None that name a mistake (bits for bytes is tried on every kind)."""
    what = describe(kind, batch, heads, L, d, dtype, kw)
    value = expect_number(estimate(kind, batch, heads, L, d, dtype, **kw), what)
    peak = measured(kind, batch, heads, L, d, dtype, **kw)
    error = abs(value - peak) / peak
    if error <= TOLERANCE:
        return value
    seen = f"{what} = {value:.0f} bytes, measured {peak} ({100 * error:.1f}% off, allowed 15%)"
    ignored = option_ignored_suspect(estimate, kind, batch, heads, L, d, dtype, **kw)
    for suspect in (*suspects, ignored, bits_not_bytes):
        key = suspect(value, peak)
        if key:
            description, fix = hint(key)
            raise Mistake(f"{seen}: it looks like {description}.", fix, key)
    description, fix = hint("estimate_off")
    raise Mistake(f"{seen}.", fix, "estimate_off")


def same(a: float, b: float, tol: float = 0.01) -> bool:
    return abs(a - b) <= tol * max(abs(a), abs(b), 1.0)


def bits_not_bytes(value, peak):
    """torch.finfo(dtype).bits where bytes were meant: exactly 8 times the right estimate."""
    return "bits_not_bytes" if abs(value / 8 - peak) <= TOLERANCE * peak else None


def missing_part(part: float, key: str, tol: float = 0.05):
    """A suspect: the estimate equals the measured peak without `part` bytes (a buffer the
    mistake forgets), to within `tol`."""

    def suspect(value, peak):
        return key if same(value, peak - part, tol) else None

    return suspect


def option_ignored_suspect(estimate, kind, batch, heads, L, d, dtype, **kw):
    """The estimate unchanged when one keyword is left out (its default then), where the
    library's estimate moves by more than the tolerance: that keyword is not read."""
    library = course.reference.capstone.estimate_attention_memory

    def suspect(value, peak):
        for name in kw:
            rest = {key: kw[key] for key in kw if key != name}
            try:
                without = float(estimate(kind, batch, heads, L, d, dtype, **rest))
                right = library(kind, batch, heads, L, d, dtype, **kw)
                moved = library(kind, batch, heads, L, d, dtype, **rest)
            except (Mistake, ValueError):
                continue  # a required keyword: no default to fall back on
            if same(value, without) and not same(right, moved, TOLERANCE):
                return "option_ignored"
        return None

    return suspect


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


def est_dense_family(estimate_attention_memory, rng):
    """dense, dense_masked and strided: within 15% of the measured peak, several heads"""
    for kind in ("dense", "dense_masked", "strided"):
        B, H, L, d = draw(rng, 1, 2), draw(rng, 2, 4), 32 * draw(rng, 3, 8), 2 ** draw(rng, 4, 6)
        kw = KIND_ARGS[kind]
        suspects = [heads_suspect(estimate_attention_memory, kind, B, H, L, d, torch.float32, **kw)]
        if kind != "dense":  # one of the three (L, L) float buffers forgotten
            suspects.append(missing_part(4 * B * H * L * L, "masked_two_buffers", 0.03))
        expect_estimate(estimate_attention_memory, kind, B, H, L, d, torch.float32, suspects, **kw)


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
                *([flash_one_tile_suspect(B * H, L, d, dtype.itemsize)] if kind == "flash" else []),
            ],
        )


def sliding_copy_bytes(N, L, d, s, window, causal):
    """One padded copy of k (or v) in the blocked implementation: (L + left + right + tail) rows."""
    left, right = (window - 1, 0) if causal else (window // 2, window // 2)
    left, right = min(left, L - 1), min(right, L - 1)
    block = max(16, min(L, left + right + 1))
    tail = math.ceil(L / block) * block - L
    return N * (L + left + right + tail) * d * s


def quadratic_suspect(estimate, heads, L, d, **kw):
    """A banded attention estimated like dense grows like L^2: doubling L more than triples it."""

    def suspect(value, peak):
        longer = float(estimate("sliding", 1, heads, 2 * L, d, torch.float32, **kw))
        return "banded_quadratic" if longer > 3 * value else None

    return suspect


def kv_once_suspect(heads, L, d, window, causal):
    """The estimate equals the measured peak less one padded copy of K (or V)."""
    return missing_part(sliding_copy_bytes(heads, L, d, 4, window, causal), "kv_once")


def window_misread_suspect(heads, L, d, window, causal):
    """A non-causal window read as left = w - 1, right = w // 2 (the causal left side kept): the
    library's blocked formula with those sides."""
    if causal:
        return lambda value, peak: None
    misread = blocked_with_sides(heads, L, d, window - 1, window // 2)
    return lambda value, peak: "window_sides_misread" if same(value, misread, 0.02) else None


def blocked_with_sides(heads, L, d, left, right, smallest_block=16):
    """The library's blocked formula (float32, batch 1) for a window of these sides, with
    blocks of at least `smallest_block` queries."""
    left, right = min(left, L - 1), min(right, L - 1)
    block = max(smallest_block, min(L, left + right + 1))
    return course.reference.capstone._blocked_bytes(heads, L, d, 4, block, left, right)


def window_sides(window, causal):
    return (window - 1, 0) if causal else (window // 2, window // 2)


def no_block_floor_suspect(heads, L, d, window, causal):
    """Blocks of left + right + 1 queries, without the floor of 16."""
    unfloored = blocked_with_sides(heads, L, d, *window_sides(window, causal), smallest_block=1)
    return lambda value, peak: "block_below_16" if same(value, unfloored, 0.02) else None


def expect_causal_window_not_one_wide(value, heads, L, d, window):
    """Within the tolerance but exactly a causal window of w + 1 keys (left = w) and not the
    right one: at w = 16 the two differ by about 14%, so the tolerance alone lets it through."""
    one_wide = blocked_with_sides(heads, L, d, window, 0)
    right = blocked_with_sides(heads, L, d, window - 1, 0)
    if same(value, one_wide, 0.005) and not same(value, right, 0.005):
        description, fix = hint("causal_window_one_wide")
        raise Mistake(
            f"estimate_attention_memory('sliding', 1, {heads}, {L}, {d}, window={window}, "
            f"causal=True) = {value:.0f} bytes, exactly the estimate for left = {window} "
            f"({one_wide}), not for left = {window - 1} ({right}): it looks like {description}.",
            fix,
            "causal_window_one_wide",
        )


def expect_defaults_kept(estimate, heads, L, d, window):
    """After calls with causal=True, a call without `causal` still means causal=False."""
    default = estimate("sliding", 1, heads, L, d, torch.float32, window=window)
    explicit = estimate("sliding", 1, heads, L, d, torch.float32, window=window, causal=False)
    if default != explicit:
        description, fix = hint("defaults_changed")
        raise Mistake(
            f"after calls with causal=True, estimate_attention_memory('sliding', ..., "
            f"window={window}) = {default} but with causal=False given = {explicit}: it looks "
            f"like {description}.",
            fix,
            "defaults_changed",
        )


def est_sliding(estimate_attention_memory, rng):
    """sliding window, causal and not: within 15%, growing like L * window (not L^2), K and V both copied"""
    est = estimate_attention_memory
    causal = bool(draw(rng, 0, 1))
    # one narrow head, a wide window: all blocks in one group, where the softmax's copy of the
    # scores (2 S / s) outweighs the key tiles and the output; and where the window's two sides
    # weigh most, so it runs in both modes
    narrow_head = (1, 256 * draw(rng, 1, 2), 16 * draw(rng, 2, 4), 8)
    cases = [
        (draw(rng, 1, 3), 256 * draw(rng, 2, 4), 2 * draw(rng, 4, 16), 32, causal),
        # wide heads, a narrow window: the padded copies of q, k, v and the output dominate
        (1, 512 * draw(rng, 3, 4), draw(rng, 4, 8), 128, not causal),
        (*narrow_head, False),
        (*narrow_head, True),
        # a window of a few keys: blocks of 16 queries, not left + right + 1
        (1, 256 * draw(rng, 1, 2), draw(rng, 1, 5), 8, causal),
        # a causal window of 16: blocks of 16 or 17 queries for w - 1 or w keys on the left
        (1, 256 * draw(rng, 1, 2), 16, 8, True),
    ]
    for H, L, window, d, causal in cases:
        kw = {"window": window, "causal": causal}
        suspects = [
            quadratic_suspect(est, H, L, d, **kw),
            heads_suspect(est, "sliding", 1, H, L, d, torch.float32, **kw),
            kv_once_suspect(H, L, d, window, causal),
            window_misread_suspect(H, L, d, window, causal),
            no_block_floor_suspect(H, L, d, window, causal),
        ]
        value = expect_estimate(est, "sliding", 1, H, L, d, torch.float32, suspects, **kw)
        if causal:
            expect_causal_window_not_one_wide(value, H, L, d, window)
    expect_defaults_kept(est, H, L, d, window)


def chunked_one_side(heads, L, d, chunk, overlap):
    """The library's chunked formula (float32, batch 1) with the overlap on the left only."""
    return course.reference.capstone._blocked_bytes(heads, L, d, 4, chunk, overlap, 0)


def expect_overlap_both_sides(value, heads, L, d, chunk, overlap):
    """Within the tolerance but exactly the estimate with the overlap on one side, and 2% or more
    from the right one: the two differ by 15% or less at many of the sizes drawn (a narrower
    span lets more blocks into a group), so the tolerance alone lets it through."""
    one_side = chunked_one_side(heads, L, d, chunk, overlap)
    right = course.reference.capstone._blocked_bytes(heads, L, d, 4, chunk, overlap, overlap)
    if same(value, one_side, 0.005) and not same(value, right, 0.02):
        description, fix = hint("overlap_one_side")
        raise Mistake(
            f"estimate_attention_memory('chunked', 1, {heads}, {L}, {d}, chunk_size={chunk}, "
            f"overlap={overlap}) = {value:.0f} bytes, exactly the estimate for left = {overlap}, "
            f"right = 0 ({one_side}), not for left = right = {overlap} ({right}): it looks like "
            f"{description}.",
            fix,
            "overlap_one_side",
        )


def est_chunked(estimate_attention_memory, rng):
    """chunked with overlap: within 15%; the overlap widens every tile, on both sides"""
    est = estimate_attention_memory
    many_heads = (draw(rng, 4, 8), 256 * draw(rng, 2, 4), 16 * draw(rng, 1, 2))
    # few scores (N L span < 2^18): every block in one group, whose scores grow with the overlap
    few_scores = (draw(rng, 2, 4), 256 * draw(rng, 1, 2), 16)
    for H, L, chunk in (many_heads, few_scores):
        overlap, d = chunk + draw(rng, 0, chunk), 8
        kw = {"chunk_size": chunk, "overlap": overlap}

        def no_overlap(value, peak):
            without = est("chunked", 1, H, L, d, torch.float32, chunk_size=chunk, overlap=0)
            return "forgot_overlap" if same(value, float(without)) else None

        one_side = chunked_one_side(H, L, d, chunk, overlap)
        suspects = [
            no_overlap,
            heads_suspect(est, "chunked", 1, H, L, d, torch.float32, **kw),
            lambda value, peak: "overlap_one_side" if same(value, one_side, 0.02) else None,
        ]
        value = expect_estimate(est, "chunked", 1, H, L, d, torch.float32, suspects, **kw)
        expect_overlap_both_sides(value, H, L, d, chunk, overlap)


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
        # wide heads, few features: the scaled copy of the input weighs as much as the features
        ("performer", 128 * draw(rng, 1, 4), 64, {"num_features": 32}),
        ("scan", 64 * draw(rng, 1, 4), 16, {"state": 2 ** draw(rng, 2, 4)}),
    ]
    for kind, L, d, kw in cases:
        suspects = [heads_suspect(est, kind, B, H, L, d, torch.float32, **kw)]
        if kind == "performer":
            m, N = kw["num_features"], B * H
            suspects.append(
                missing_part(4 * (N * L * d + m * d) + 8 * m * d, "performer_features_only", 0.15)
            )
        if kind == "scan":
            suspects.append(scan_channels_suspect(est, B, H, L, d, **kw))
        if kind == "flash":
            suspects.append(flash_one_tile_suspect(B * H, L, d, 4, **kw))
        expect_estimate(est, kind, B, H, L, d, torch.float32, suspects, **kw)


def flash_one_tile_suspect(N, L, d, s, block_q=64, block_k=64):
    """The library's flash formula with one (block_q, block_k) score tile instead of four (the
    checks' L is always longer than block_q)."""
    one_tile = s * (N * L * d + N * L + N * block_q * (2 * d + 8) + N * block_q * block_k)
    return lambda value, peak: "flash_one_tile" if same(value, one_tile, 0.02) else None


def scan_channels_suspect(estimate, batch, heads, L, d, **kw):
    """The scan runs over batch * heads * head_dim channels: an estimate that does not double
    with head_dim counted batch * heads channels."""

    def suspect(value, peak):
        wider = float(estimate("scan", batch, heads, L, 2 * d, torch.float32, **kw))
        return "scan_channels" if same(value, wider) else None

    return suspect


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
        (
            lambda: estimate_attention_memory("strided", 1, 1, L, 16, torch.float32, stride=4),
            "strided without local_window",
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
