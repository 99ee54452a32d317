"""course.reference.sparse: the library's mask builders, density, reach and windowed attention, checked
against brute-force loops and dense attention."""

import math

import pytest
import torch
import torch.nn.functional as F

from course.reference import sparse


def brute(L, allowed):
    return torch.tensor([[bool(allowed(i, j)) for j in range(L)] for i in range(L)])


@pytest.mark.parametrize("L", [1, 2, 7, 16])
@pytest.mark.parametrize("window", [1, 2, 3, 4, 9, 40])
def test_sliding_window_mask_follows_the_contract(L, window):
    assert torch.equal(
        sparse.sliding_window_mask(L, window), brute(L, lambda i, j: abs(i - j) <= window // 2)
    )
    causal = sparse.sliding_window_mask(L, window, causal=True)
    assert torch.equal(causal, brute(L, lambda i, j: i - window < j <= i))
    if L >= window:
        assert (
            causal.sum(-1)[window - 1 :] == window
        ).all()  # exactly `window` keys once there is room


def test_strided_global_block_masks_follow_the_contract():
    L = 13
    assert torch.equal(
        sparse.strided_mask(L, 4, 3), brute(L, lambda i, j: j % 4 == 0 or abs(i - j) <= 1)
    )
    assert torch.equal(
        sparse.global_local_mask(L, 3, [2, 11]),
        brute(L, lambda i, j: abs(i - j) <= 1 or i in (2, 11) or j in (2, 11)),
    )
    assert torch.equal(
        sparse.global_local_mask(L, 3, torch.tensor([], dtype=torch.long)),
        sparse.sliding_window_mask(L, 3),
    )
    layout = torch.rand(4, 4, generator=torch.Generator().manual_seed(0)) < 0.5
    assert torch.equal(
        sparse.block_sparse_mask(L, 4, layout), brute(L, lambda i, j: layout[i // 4, j // 4])
    )


def test_random_mask_is_exact_reproducible_and_uniform():
    g = lambda seed: torch.Generator().manual_seed(seed)  # noqa: E731
    mask = sparse.random_mask(40, 5, g(1))
    assert mask.dtype == torch.bool and (mask.sum(-1) == 5).all()
    assert torch.equal(mask, sparse.random_mask(40, 5, g(1)))
    assert not torch.equal(mask, sparse.random_mask(40, 5, g(2)))
    counts = sum(sparse.random_mask(32, 4, g(seed)).double() for seed in range(50)).sum(
        0
    )  # per key
    assert (counts - 50 * 4).abs().max() < 6 * math.sqrt(50 * 32 * 4 / 32)
    assert sparse.random_mask(6, 6, g(0)).all() and not sparse.random_mask(6, 0, g(0)).any()


@pytest.mark.parametrize(
    "call, error, match",
    [
        (lambda: sparse.sliding_window_mask(8, 0), ValueError, "window must be >= 1"),
        (lambda: sparse.sliding_window_mask(8, 2.5), TypeError, "window must be an int"),
        (lambda: sparse.strided_mask(8, 9, 2), ValueError, "stride must be <= L"),
        (
            lambda: sparse.global_local_mask(8, 3, [8]),
            ValueError,
            r"global_idx must be in \[0, L=8\)",
        ),
        (lambda: sparse.global_local_mask(8, 3, [0.5]), TypeError, "global_idx"),
        (lambda: sparse.random_mask(8, 9), ValueError, "num_random must be <= L"),
        (
            lambda: sparse.block_sparse_mask(9, 4, torch.ones(2, 2, dtype=torch.bool)),
            ValueError,
            r"\(3, 3\)",
        ),
        (lambda: sparse.mask_density(torch.ones(2, 2)), TypeError, "boolean"),
        (
            lambda: sparse.layers_to_full_reach(torch.ones(2, 3, dtype=torch.bool)),
            ValueError,
            "square",
        ),
        (
            lambda: sparse.chunked_attention(*[torch.zeros(4, 2)] * 3, 0, 1),
            ValueError,
            "chunk_size",
        ),
    ],
)
def test_bad_parameters_give_clear_errors(call, error, match):
    with pytest.raises(error, match=match):
        call()


def test_density_and_reach():
    assert sparse.mask_density(sparse.sliding_window_mask(10, 3)) == pytest.approx(28 / 100)
    assert sparse.layers_to_full_reach(sparse.sliding_window_mask(4, 2)) == 3
    assert sparse.layers_to_full_reach(sparse.sliding_window_mask(50, 9)) == math.ceil(49 / 4)
    assert sparse.layers_to_full_reach(sparse.sliding_window_mask(8, 4, causal=True)) is None
    assert sparse.layers_to_full_reach(sparse.global_local_mask(40, 1, [7])) == 2
    assert sparse.layers_to_full_reach(torch.eye(5, dtype=torch.bool)) is None
    assert sparse.layers_to_full_reach(torch.ones(1, 1, dtype=torch.bool)) == 1
    ring = torch.eye(6, dtype=torch.bool).roll(1, dims=1)  # i sees i+1 only, not itself
    assert sparse.layers_to_full_reach(ring) == 5
    reach = sparse.reach_after(sparse.sliding_window_mask(9, 3), 3)
    assert [r.sum(-1)[4].item() for r in reach] == [3, 5, 7]


def dense(q, k, v, mask):
    return F.scaled_dot_product_attention(q.double(), k.double(), v.double(), attn_mask=mask)


@pytest.mark.parametrize("L", [1, 5, 33, 100])
@pytest.mark.parametrize("window", [1, 2, 7, 64, 300])
@pytest.mark.parametrize("causal", [False, True])
def test_sliding_window_attention_equals_dense_masked(L, window, causal):
    g = torch.Generator().manual_seed(L * window)
    q, k = (torch.randn(2, 3, L, 8, generator=g, dtype=torch.float64) for _ in range(2))
    v = torch.randn(2, 3, L, 5, generator=g, dtype=torch.float64)
    out = sparse.sliding_window_attention(q, k, v, window, causal)
    torch.testing.assert_close(out, dense(q, k, v, sparse.sliding_window_mask(L, window, causal)))


@pytest.mark.parametrize(
    "L, chunk_size, overlap", [(1, 3, 1), (10, 3, 0), (10, 3, 2), (17, 4, 6), (12, 40, 2)]
)
def test_chunked_attention_sees_its_chunk_plus_overlap(L, chunk_size, overlap):
    g = torch.Generator().manual_seed(L)
    q, k, v = (torch.randn(3, L, 8, generator=g, dtype=torch.float64) for _ in range(3))
    allowed = brute(
        L,
        lambda i, j: (
            (i // chunk_size) * chunk_size - overlap
            <= j
            < (i // chunk_size + 1) * chunk_size + overlap
        ),
    )
    torch.testing.assert_close(
        sparse.chunked_attention(q, k, v, chunk_size, overlap), dense(q, k, v, allowed)
    )


def test_windowed_attention_passes_the_day05_checks(monkeypatch):
    from grader.harness.checking import run

    monkeypatch.setattr(
        "grader.harness.checking.course_references", lambda exercise: {}
    )  # no guard
    from grader.suites.day05_sparse import EXERCISES

    for name in (
        "sliding_window_attention",
        "chunked_attention",
        "random_mask",
        "layers_to_full_reach",
    ):
        report = run(name, getattr(sparse, name), EXERCISES[name].checks, {}, verbose=False)
        assert report.passed, [(r.check, r.message) for r in report.results if not r.passed]


def test_sliding_window_attention_never_holds_an_l_by_l_tensor():
    from course.bench import peak_memory

    L = 4096
    q, k, v = (torch.randn(1, 1, L, 16) for _ in range(3))
    assert (
        peak_memory(sparse.sliding_window_attention, q, k, v, 64) < L * L
    )  # bytes: < a bool (L, L)


def test_format_mask_draws_rows_of_queries():
    assert sparse.format_mask(sparse.sliding_window_mask(3, 1, causal=True)) == "█··\n·█·\n··█"
