"""course.reference.linear_attention, the library version of day08: against float64 dense oracles and
torch's softmax attention, with statistical checks for the random features."""

import math

import pytest
import torch
import torch.nn.functional as F

from course.reference import linear_attention as la


def dense(q, k, v, causal=False, eps=1e-6, phi=lambda t: F.elu(t) + 1):
    w = phi(q.double()) @ phi(k.double()).transpose(-2, -1)
    if causal:
        w = w.tril()
    return (w @ v.double()) / (w.sum(-1, keepdim=True) + eps)


def rand(*shape, dtype=torch.float64):
    return torch.randn(*shape, dtype=dtype)


def test_elu_feature_map_is_elu_plus_one_and_positive():
    x = torch.linspace(-40, 5, 101, dtype=torch.float64)
    out = la.elu_feature_map(x)
    torch.testing.assert_close(out, F.elu(x) + 1)
    assert (out >= 0).all() and (out[x > -30] > 0).all()  # elu(-40) + 1 rounds to 0 in float64


@pytest.mark.parametrize("shape", [(7, 4), (2, 9, 4), (2, 3, 11, 4)])
def test_linear_attention_equals_the_quadratic_form(shape):
    q, k = rand(*shape), rand(*shape[:-2], shape[-2] + 3, shape[-1])
    v = rand(*shape[:-2], shape[-2] + 3, 6)
    torch.testing.assert_close(la.linear_attention(q, k, v), dense(q, k, v))
    torch.testing.assert_close(la.quadratic_linear_attention(q, k, v), dense(q, k, v))


def test_linear_attention_eps_guards_zero_features():
    q, k, v = -rand(5, 4).abs(), rand(5, 4), rand(5, 3)
    out = la.linear_attention(q, k, v, feature_map=torch.relu)
    assert torch.isfinite(out).all() and (out == 0).all()


@pytest.mark.parametrize("L, chunk", [(1, 64), (37, 8), (64, 16), (50, 100), (33, 1)])
def test_causal_forms_agree_with_the_masked_quadratic_form(L, chunk):
    q, k, v = rand(2, 3, L, 8), rand(2, 3, L, 8), rand(2, 3, L, 5)
    ref = dense(q, k, v, causal=True)
    rec = la.causal_linear_attention_recurrent(q, k, v)
    torch.testing.assert_close(rec, ref)
    torch.testing.assert_close(la.causal_linear_attention_chunked(q, k, v, chunk), rec)
    torch.testing.assert_close(
        la.causal_linear_attention_chunked(q, k, v, chunk, tokens_per_step=10), rec
    )
    torch.testing.assert_close(la.quadratic_linear_attention(q, k, v, causal=True), ref)


@pytest.mark.parametrize(
    "fn",
    [
        la.linear_attention,
        la.causal_linear_attention_recurrent,
        la.causal_linear_attention_chunked,
        la.performer_attention,
    ],
)
@pytest.mark.parametrize(
    "shapes, match",
    [
        (((2, 5, 4), (2, 5, 4), (2, 6, 4)), "same length"),
        (((2, 5, 4), (2, 5, 3), (2, 5, 4)), "head dim"),
        (((5,), (5,), (5,)), r"\(\.\.\., L, D\)"),
        (((2, 5, 4), (1, 5, 4), (1, 5, 4)), "leading dims"),
    ],
)
def test_bad_input_gives_clear_errors(fn, shapes, match):
    with pytest.raises(ValueError, match=match):
        fn(*(torch.randn(s) for s in shapes))


def test_causal_forms_need_lq_equal_lk_and_a_positive_chunk():
    q, k = torch.randn(3, 4), torch.randn(5, 4)
    with pytest.raises(ValueError, match="as many queries"):
        la.causal_linear_attention_chunked(q, k, k)
    with pytest.raises(ValueError, match="chunk_size"):
        la.causal_linear_attention_chunked(k, k, k, chunk_size=0)


def test_orthogonal_random_features_blocks_are_orthogonal_and_reproducible():
    d, m = 6, 15
    w = la.orthogonal_random_features(m, d, torch.Generator().manual_seed(3), dtype=torch.float64)
    assert w.shape == (m, d)
    for start in range(0, m, d):
        block = w[start : start + d]
        gram = block @ block.T
        torch.testing.assert_close(gram - torch.diag(gram.diagonal()), torch.zeros_like(gram))
    again = la.orthogonal_random_features(
        m, d, torch.Generator().manual_seed(3), dtype=torch.float64
    )
    assert torch.equal(w, again)


def test_orthogonal_random_features_norms_follow_chi():
    d, g = 8, torch.Generator().manual_seed(0)
    norms = torch.cat(
        [
            la.orthogonal_random_features(32, d, g, dtype=torch.float64).norm(dim=-1)
            for _ in range(40)
        ]
    )
    mean = la.chi_mean(d)
    var = d - mean**2
    assert abs(norms.mean().item() - mean) < 5 * math.sqrt(var / norms.numel())
    assert abs(norms.var().item() - var) < 0.25 * var


def test_favor_features_estimate_the_softmax_kernel_and_stay_positive():
    # every draw from one seeded generator: the estimate is random, and its error must not
    # depend on which tests ran before this one
    g = torch.Generator().manual_seed(0)
    x = 0.4 * torch.randn(5, 8, generator=g, dtype=torch.float64)
    y = 0.4 * torch.randn(7, 8, generator=g, dtype=torch.float64)
    w = la.orthogonal_random_features(4000, 8, g, dtype=torch.float64)
    fx, fy = la.favor_feature_map(x, w, is_query=True), la.favor_feature_map(y, w)
    assert (fx > 0).all() and (fy > 0).all()
    implied = fx @ fy.T
    implied = implied / implied.sum(-1, keepdim=True)
    exact = torch.softmax(x @ y.T, dim=-1)
    assert (implied - exact).abs().max() < 0.06


def test_favor_is_stable_for_large_inputs():
    x = 30 * F.normalize(rand(4, 8), dim=-1)
    out = la.favor_feature_map(x, rand(16, 8), is_query=True)
    assert torch.isfinite(out).all() and (out.amax(-1) > 0).all()


def test_performer_error_falls_as_features_grow():
    g = torch.Generator().manual_seed(0)
    q, k, v = 0.5 * rand(2, 64, 16), 0.5 * rand(2, 64, 16), rand(2, 64, 16)
    exact = F.scaled_dot_product_attention(q, k, v)

    def error(m):
        return (
            sum(
                ((la.performer_attention(q, k, v, m, g) - exact).norm() / exact.norm()).item()
                for _ in range(4)
            )
            / 4
        )

    small, large = error(8), error(1024)
    assert large < 0.4 * small and large < 0.15


def test_benchmark_script_runs_on_tiny_sizes(capsys, tmp_path):
    from course.bench import linear_attention as bench

    code = bench.main(
        [
            "--lengths",
            "64",
            "128",
            "--repeats",
            "1",
            "--recurrent-steps",
            "32",
            "--head-dim",
            "8",
            "--plot",
            str(tmp_path / "plot.png"),
        ]
    )
    out = capsys.readouterr().out
    assert code == 0 and "recurrent/chunked" in out and "extrapolated" in out
    assert (tmp_path / "plot.png").stat().st_size > 0
