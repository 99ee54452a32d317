"""course.reference.online_softmax: online softmax statistics, tiled attention and the FlashAttention-2 backward,
checked against float64 dense oracles and torch's scaled_dot_product_attention."""

import math

import pytest
import torch
import torch.nn.functional as F

from course.bench import LiveStorage
from course.reference import online_softmax as flash


def randn(*shape, seed=0, dtype=torch.float64):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def dense(q, k, v, causal=False):
    """float64-friendly oracle: (out, lse) from the full score matrix, bottom-right causal,
    fully masked rows -> zeros and -inf."""
    s = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
    Lq, Lk = s.shape[-2:]
    if causal:
        allowed = torch.arange(Lk) <= torch.arange(Lq).unsqueeze(-1) + (Lk - Lq)
        s = s.masked_fill(~allowed, float("-inf"))
    lse = torch.logsumexp(s, dim=-1)
    p = torch.exp(s - torch.where(torch.isinf(lse), torch.zeros_like(lse), lse).unsqueeze(-1))
    return p @ v, lse


@pytest.mark.parametrize(
    "shape, block, dim",
    [((7,), 3, -1), ((4, 10), 4, -1), ((9, 3, 5), 2, 0), ((2, 65, 3), 64, 1), ((3, 5), 100, -1)],
)
def test_online_softmax_stats_match_max_and_logsumexp(shape, block, dim):
    x = randn(*shape, seed=1) * 10
    m, s = flash.online_softmax_stats(x, block, dim=dim)
    assert m.shape == s.shape == x.amax(dim).shape
    torch.testing.assert_close(m, x.amax(dim))
    torch.testing.assert_close(s, torch.exp(x - x.amax(dim, keepdim=True)).sum(dim))


def test_online_softmax_stats_handle_inf_and_huge_values():
    x = torch.tensor([[float("-inf")] * 4, [1000.0, -1000.0, 1001.0, float("-inf")]])
    m, s = flash.online_softmax_stats(x, 1)
    assert m[0] == float("-inf") and s[0] == 0
    assert m[1] == 1001.0 and torch.isclose(s[1], torch.tensor(1 + math.exp(-1)))
    m, s = flash.online_softmax_stats(torch.tensor([float("-inf"), float("-inf"), 3.0]), 2)
    assert m == 3.0 and s == 1.0


@pytest.mark.parametrize(
    "Lq, Lk, bq, bk",
    [(1, 1, 64, 64), (10, 10, 4, 3), (5, 13, 2, 4), (13, 5, 4, 2), (33, 70, 16, 8), (6, 6, 1, 1)],
)
@pytest.mark.parametrize("causal", [False, True])
def test_tiled_attention_matches_the_dense_oracle(Lq, Lk, bq, bk, causal):
    q, k, v = randn(2, 3, Lq, 8, seed=1), randn(2, 3, Lk, 8, seed=2), randn(2, 3, Lk, 5, seed=3)
    out, lse = flash.tiled_attention(q, k, v, block_q=bq, block_k=bk, causal=causal)
    want_out, want_lse = dense(q, k, v, causal)
    assert out.shape == (2, 3, Lq, 5) and lse.shape == (2, 3, Lq)
    torch.testing.assert_close(out, want_out)
    torch.testing.assert_close(lse, want_lse)
    if causal and Lq > Lk:  # queries before the first key: zeros and -inf, never NaN
        assert (out[..., : Lq - Lk, :] == 0).all() and (lse[..., : Lq - Lk] == float("-inf")).all()


@pytest.mark.parametrize("causal", [False, True])
def test_tiled_attention_agrees_with_sdpa_in_float32(causal):
    q, k, v = (randn(2, 4, 50, 16, seed=s, dtype=torch.float32) for s in (1, 2, 3))
    out, _ = flash.tiled_attention(q, k, v, block_q=16, block_k=8, causal=causal)
    torch.testing.assert_close(
        out, F.scaled_dot_product_attention(q, k, v, is_causal=causal), atol=1e-5, rtol=1e-4
    )
    assert flash.flash_attention_torch(q, k, v, causal).dtype == torch.float32


def test_leading_dims_3d_2d_and_broadcast():
    q, k, v = randn(3, 9, 4, seed=1), randn(3, 7, 4, seed=2), randn(3, 7, 2, seed=3)
    torch.testing.assert_close(flash.tiled_attention(q, k, v, 4, 4)[0], dense(q, k, v)[0])
    torch.testing.assert_close(
        flash.tiled_attention(q[0], k[0], v[0], 4, 4)[0], dense(q[0], k[0], v[0])[0]
    )
    out, lse = flash.tiled_attention(randn(2, 1, 5, 4), randn(1, 3, 6, 4), randn(1, 3, 6, 4), 2, 2)
    assert out.shape == (2, 3, 5, 4) and lse.shape == (2, 3, 5)


def test_tiled_attention_never_allocates_the_score_matrix_and_skips_causal_tiles():
    L, bq, bk = 256, 32, 32
    q, k, v = (randn(1, L, 16, seed=s, dtype=torch.float32) for s in (1, 2, 3))
    tracker = LiveStorage()
    with tracker:
        flash.tiled_attention(q, k, v, bq, bk, causal=True)
    assert tracker.largest < L * L * 4 // 8  # the largest storage is a tile or a row, not (L, L)

    def count_matmuls(causal):
        calls = []

        class Count(torch.overrides.TorchFunctionMode):
            def __torch_function__(self, func, types, args=(), kwargs=None):
                if func in (torch.matmul, torch.Tensor.matmul, torch.Tensor.__matmul__):
                    calls.append(func)
                return func(*args, **(kwargs or {}))

        with Count():
            flash.tiled_attention(q, k, v, bq, bk, causal=causal)
        return len(calls)

    n = L // bq
    assert count_matmuls(False) == 2 * n * n
    assert count_matmuls(True) == 2 * n * (n + 1) // 2  # tiles above the diagonal are skipped


@pytest.mark.parametrize("Lq, Lk", [(9, 9), (5, 11), (11, 5)])
@pytest.mark.parametrize("causal", [False, True])
def test_flash_attention_gradients_match_float64_autograd(Lq, Lk, causal):
    q, k, v = randn(2, Lq, 6, seed=1), randn(2, Lk, 6, seed=2), randn(2, Lk, 3, seed=3)
    grad = randn(2, Lq, 3, seed=4)
    leaves = [t.clone().requires_grad_() for t in (q, k, v)]
    flash.flash_attention_torch(*leaves, causal, 4, 3).backward(grad)
    refs = [t.clone().requires_grad_() for t in (q, k, v)]
    dense(*refs, causal)[0].backward(grad)
    for got, want in zip(leaves, refs):
        torch.testing.assert_close(got.grad, want.grad)
    assert all(torch.isfinite(t.grad).all() for t in leaves)


def test_gradcheck_and_saved_tensors():
    q, k, v = (randn(1, 2, 5, 3, seed=s).requires_grad_() for s in (1, 2, 3))
    for causal in (False, True):
        assert torch.autograd.gradcheck(
            lambda a, b, c: flash.FlashAttentionTorch.apply(a, b, c, causal, 2, 2), (q, k, v)
        )
    out = flash.FlashAttentionTorch.apply(q, k, v, True)
    saved = out.grad_fn.saved_tensors
    assert len(saved) == 5 and [tuple(t.shape) for t in saved].count((1, 2, 5)) == 1
    assert max(t.numel() for t in saved) == 1 * 2 * 5 * 3  # no (Lq, Lk) tensor kept


def test_broadcast_inputs_get_summed_gradients():
    q = randn(2, 1, 5, 4, seed=1).requires_grad_()
    k, v = randn(1, 3, 6, 4, seed=2).requires_grad_(), randn(1, 3, 6, 4, seed=3).requires_grad_()
    flash.flash_attention_torch(q, k, v, True, 2, 4).sum().backward()
    grads = [t.grad for t in (q, k, v)]
    for t in (q, k, v):
        t.grad = None
    dense(q, k, v, True)[0].sum().backward()
    for got, t in zip(grads, (q, k, v)):
        torch.testing.assert_close(got, t.grad)


@pytest.mark.parametrize(
    "call, error, match",
    [
        (
            lambda: flash.tiled_attention(torch.zeros(4, 3), torch.zeros(4, 2), torch.zeros(4, 2)),
            ValueError,
            "expected q",
        ),
        (
            lambda: flash.tiled_attention(torch.zeros(4, 2), torch.zeros(5, 2), torch.zeros(4, 2)),
            ValueError,
            "expected q",
        ),
        (
            lambda: flash.tiled_attention(torch.zeros(4), torch.zeros(4), torch.zeros(4)),
            ValueError,
            "at least 2 dims",
        ),
        (
            lambda: flash.tiled_attention(*[torch.zeros(4, 2)] * 3, block_q=0),
            ValueError,
            "block_q must be >= 1",
        ),
        (
            lambda: flash.tiled_attention(*[torch.zeros(4, 2)] * 3, block_k=0),
            ValueError,
            "block_k must be >= 1",
        ),
        (
            lambda: flash.tiled_attention(*[torch.zeros(4, 2)] * 3, block_k=1.5),
            TypeError,
            "block_k must be an int",
        ),
        (
            lambda: flash.tiled_attention(
                torch.zeros(4, 2), torch.zeros(4, 2, dtype=torch.float64), torch.zeros(4, 2)
            ),
            ValueError,
            "share a dtype",
        ),
        (
            lambda: flash.tiled_attention(*[torch.zeros(4, 2, dtype=torch.long)] * 3),
            ValueError,
            "floating",
        ),
        (
            lambda: flash.tiled_attention(
                torch.zeros(2, 4, 2), torch.zeros(3, 4, 2), torch.zeros(3, 4, 2)
            ),
            ValueError,
            "broadcast",
        ),
        (
            lambda: flash.flash_attention_torch(
                torch.zeros(4, 3), torch.zeros(4, 2), torch.zeros(4, 2)
            ),
            ValueError,
            "expected q",
        ),
        (
            lambda: flash.online_softmax_stats(torch.zeros(4), 0),
            ValueError,
            "block_size must be >= 1",
        ),
        (lambda: flash.online_softmax_stats(torch.zeros(4), 2, dim=1), ValueError, "out of range"),
        (lambda: flash.online_softmax_stats(torch.tensor(1.0), 2), ValueError, "0-dim"),
        (
            lambda: flash.online_softmax_stats(torch.zeros(4, dtype=torch.long), 2),
            ValueError,
            "floating",
        ),
    ],
)
def test_bad_input_gives_clear_errors(call, error, match):
    with pytest.raises(error, match=match):
        call()


def test_benchmark_script_runs_on_tiny_sizes(tmp_path, capsys):
    from course.bench.online_softmax import main

    status = main(
        [
            "--lengths",
            "64",
            "128",
            "--head-dim",
            "8",
            "--block",
            "32",
            "--repeats",
            "1",
            "--plot",
            str(tmp_path / "tiled.png"),
        ]
    )
    out = capsys.readouterr().out
    assert "peak naive" in out and "PASS: correctness" in out and status in (0, 1)
    assert (tmp_path / "tiled.png").exists()
