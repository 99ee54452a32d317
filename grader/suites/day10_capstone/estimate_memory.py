"""Checks for estimate_attention_memory: each kind's estimate within 15% of the measured peak of
the course's implementation of that kind."""

import math

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
