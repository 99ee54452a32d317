"""course.reference.capstone: memory estimates within 15% of measured peaks, the benchmark table and its
failures and the decision guide (the explorer: tests/explore/test_capstone.py)."""

import pytest
import torch

from course.reference.capstone import (
    FIELDS,
    KINDS,
    attention_function,
    benchmark_attention,
    choose_attention,
    estimate_attention_memory,
    format_table,
    measure_attention_memory,
    plot_benchmark,
)

CASES = [
    ("dense", {}),
    ("dense_masked", {}),
    ("strided", {"stride": 16, "local_window": 8}),
    ("sliding", {"window": 32}),
    ("sliding", {"window": 33, "causal": True}),
    ("chunked", {"chunk_size": 64, "overlap": 16}),
    ("flash", {}),
    ("flash", {"block_q": 32, "block_k": 128}),
    ("linear", {}),
    ("performer", {"num_features": 64}),
    ("scan", {"state": 8}),
]
SIZES = [
    (1, 2, 256, 32, torch.float32),
    (2, 2, 512, 16, torch.float64),
    (1, 1, 1024, 64, torch.float16),
]


@pytest.mark.parametrize(
    "kind, kw", CASES, ids=[f"{k}-{'-'.join(map(str, kw.values()))}" for k, kw in CASES]
)
@pytest.mark.parametrize("size", SIZES, ids=["f32", "f64-batch2", "f16"])
def test_estimate_within_15_percent_of_the_measured_peak(kind, kw, size):
    batch, heads, L, d, dtype = size
    measured = measure_attention_memory(kind, batch, heads, L, d, dtype, **kw)
    estimate = estimate_attention_memory(kind, batch, heads, L, d, dtype, **kw)
    assert isinstance(estimate, int)
    assert abs(estimate - measured) <= 0.15 * measured, (estimate, measured)


def test_every_kind_has_an_implementation_and_an_estimate():
    q, k, v = (torch.randn(1, 2, 64, 16) for _ in range(3))
    required = {"window": 8, "stride": 8, "local_window": 4, "chunk_size": 16, "overlap": 4}
    for kind, (names, _) in KINDS.items():
        kw = {name: required[name] for name in names}
        out = attention_function(kind, **kw)(q, k, v)
        assert out.shape == v.shape
        assert estimate_attention_memory(kind, 1, 2, 64, 16, torch.float32, **kw) > 0


def test_estimates_scale_as_derived():
    est = estimate_attention_memory
    assert est("dense", 1, 8, 1024, 64) == 8 * est("dense", 1, 1, 1024, 64)
    assert est("dense", 1, 1, 1024, 64, torch.float16) * 2 == est("dense", 1, 1, 1024, 64)
    assert est("dense", 1, 1, 2048, 64) > 3.5 * est("dense", 1, 1, 1024, 64)  # ~L^2
    assert est("sliding", 1, 1, 32768, 64, window=256) < 2.5 * est(
        "sliding", 1, 1, 16384, 64, window=256
    )
    assert est("flash", 1, 1, 32768, 64) < 2.5 * est("flash", 1, 1, 16384, 64)
    assert est("chunked", 1, 4, 4096, 16, chunk_size=64, overlap=64) > est(
        "chunked", 1, 4, 4096, 16, chunk_size=64, overlap=0
    )


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: estimate_attention_memory("sparse", 1, 1, 8, 8), "unknown kind"),
        (lambda: estimate_attention_memory("sliding", 1, 1, 8, 8), "needs"),
        (lambda: estimate_attention_memory("chunked", 1, 1, 8, 8, chunk_size=4), "needs"),
        (lambda: estimate_attention_memory("dense", 1, 1, 8, 8, window=3), "takes no"),
        (lambda: estimate_attention_memory("dense", 0, 1, 8, 8), "batch"),
        (lambda: estimate_attention_memory("dense", 1, 1, 8, 8, torch.int64), "dtype"),
        (lambda: estimate_attention_memory("sliding", 1, 1, 8, 8, window=0), "window"),
        (lambda: estimate_attention_memory("sliding", 1, 1, 8, 8, window=4, causal=1), "causal"),
        (lambda: choose_attention(0, True, 2**30, False), "seq_len"),
        (lambda: choose_attention(1024, True, 0, False), "memory_budget_bytes"),
        (lambda: choose_attention(1024, "yes", 2**30, False), "True or False"),
        (lambda: choose_attention(1 << 20, True, 1000, False), "no attention fits"),
        (lambda: benchmark_attention({}, [8]), "fns"),
        (lambda: benchmark_attention({"a": lambda q, k, v: q}, [0]), "seq_len"),
    ],
)
def test_bad_arguments_give_clear_errors(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_choose_follows_the_rule():
    GiB = 2**30
    assert choose_attention(512, True, 64 * GiB, False) == "dense"
    assert choose_attention(4096, True, GiB // 4, False) == "flash"
    assert choose_attention(16384, True, 64 * GiB, False) == "linear"
    assert choose_attention(16384, False, 64 * GiB, False) == "sliding"
    assert choose_attention(16384, True, 64 * GiB, True) == "flash"
    assert choose_attention(200, False, 64 * GiB, False) == "dense"  # the window covers it all


def test_benchmark_records_failures_and_reports_every_field():
    def exact(q, k, v):
        return torch.nn.functional.scaled_dot_product_attention(q, k, v)

    def greedy(q, k, v):
        if q.shape[-2] > 8:
            raise torch.OutOfMemoryError("out of memory (simulated)")
        return exact(q, k, v)

    def broken(q, k, v):
        raise IndexError("bug")

    rows = benchmark_attention(
        {"exact": exact, "greedy": greedy, "broken": broken},
        [8, 16, 32],
        heads=1,
        head_dim=8,
        repeats=1,
    )
    assert len(rows) == 9 and all(set(r) == set(FIELDS) for r in rows)
    status = {(r["name"], r["seq_len"]): r["status"] for r in rows}
    assert [status[("greedy", L)] for L in (8, 16, 32)] == ["ok", "out_of_memory", "skipped"]
    assert [status[("broken", L)] for L in (8, 16, 32)] == ["error", "skipped", "skipped"]
    ok = [r for r in rows if r["name"] == "exact"]
    assert all(
        r["status"] == "ok" and r["time_s"] > 0 and r["peak_bytes"] > 0 and r["rel_error"] < 1e-5
        for r in ok
    )
    assert "| exact | 8 | ok |" in format_table(rows)
    plot_benchmark(rows)
