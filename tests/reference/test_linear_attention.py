"""course.reference.linear_attention, the library version of day08: against float64 dense oracles and
torch's softmax attention, with statistical checks for the random features."""

import functools
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


def seeded(seed):
    return torch.Generator().manual_seed(seed)


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


ATTENTION_FORMS = [
    la.linear_attention,
    la.quadratic_linear_attention,
    la.causal_linear_attention_recurrent,
    la.causal_linear_attention_chunked,
    la.performer_attention,
    functools.partial(la.performer_attention, causal=True),
]


@pytest.mark.parametrize("fn", ATTENTION_FORMS)
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


@pytest.mark.parametrize("fn", ATTENTION_FORMS)
@pytest.mark.parametrize("dtypes", [("float16", "float32", "float32"), ("int64",) * 3])
def test_mixed_or_integer_dtypes_give_clear_errors(fn, dtypes):
    q, k, v = (torch.ones(2, 5, 4, dtype=getattr(torch, name)) for name in dtypes)
    with pytest.raises(ValueError, match="one floating dtype"):
        fn(q, k, v)


@pytest.mark.parametrize(
    "causal_form",
    [
        la.causal_linear_attention_chunked,
        functools.partial(la.performer_attention, num_features=8, causal=True),
    ],
)
def test_causal_forms_need_lq_equal_lk_and_a_positive_chunk(causal_form):
    q, k = torch.randn(3, 4), torch.randn(5, 4)
    with pytest.raises(ValueError, match="as many queries"):
        causal_form(q, k, k)
    with pytest.raises(ValueError, match="chunk_size"):
        causal_form(k, k, k, chunk_size=0)


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


def test_favor_refuses_a_projection_of_another_dtype():
    with pytest.raises(ValueError, match="share a dtype"):
        la.favor_feature_map(torch.randn(3, 4).half(), torch.randn(8, 4))


def test_favor_is_stable_for_large_inputs():
    x = 30 * F.normalize(rand(4, 8), dim=-1)
    out = la.favor_feature_map(x, rand(16, 8), is_query=True)
    assert torch.isfinite(out).all() and (out.amax(-1) > 0).all()


def test_performer_error_falls_as_features_grow():
    # q, k and v from the seeded generator too: over random inputs the error at m = 1024 has a
    # long tail (0.06 to 0.19), and this test must not depend on the tests run before it
    g = seeded(0)
    q, k, v = (s * torch.randn(2, 64, 16, generator=g, dtype=torch.float64) for s in (0.5, 0.5, 1))
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


# ----------------------------------------------------------------------------- causal Performer


def performer_features(q, k, num_features, seed):
    """The features performer_attention uses with generator seeded(seed): phi(q), phi(k)."""
    d = q.shape[-1]
    w = la.orthogonal_random_features(num_features, d, seeded(seed), dtype=q.dtype)
    return (
        la.favor_feature_map(q * d**-0.25, w, is_query=True),
        la.favor_feature_map(k * d**-0.25, w),
    )


@pytest.mark.parametrize(
    "shape, chunk",
    [
        ((37, 8), 1),
        ((2, 37, 8), 8),  # 8 does not divide 37: a short last chunk
        ((2, 3, 37, 8), 16),
        ((2, 48, 8), 16),
        ((2, 37, 8), 37),
        ((2, 37, 8), 64),  # one chunk, longer than L
        ((1100, 8), 48),  # two groups of chunks (tokens_per_step=1024), the state carried across
    ],
)
def test_causal_performer_is_the_masked_quadratic_form_of_its_features(shape, chunk):
    q, k, v = 0.5 * rand(*shape), 0.5 * rand(*shape), rand(*shape[:-1], 5)
    qf, kf = performer_features(q, k, 32, seed=1)
    out = la.performer_attention(q, k, v, 32, seeded(1), causal=True, chunk_size=chunk)
    torch.testing.assert_close(out, dense(qf, kf, v, causal=True, phi=lambda t: t))


def test_causal_performer_outputs_ignore_later_tokens():
    # eps=0: the keys' stabiliser, a max over every key, changes with the later keys, and only
    # the unscaled eps would let that show in the earlier outputs (see performer_attention)
    q, k, v = 0.5 * rand(2, 40, 8), 0.5 * rand(2, 40, 8), rand(2, 40, 5)
    changed_k, changed_v = k.clone(), v.clone()
    changed_k[..., 21:, :] = 2 * rand(2, 19, 8)  # from mid-chunk on, larger keys
    changed_v[..., 21:, :] = rand(2, 19, 5)

    def causal(k, v):
        return la.performer_attention(q, k, v, 64, seeded(3), eps=0, causal=True, chunk_size=8)

    out, changed = causal(k, v), causal(changed_k, changed_v)
    torch.testing.assert_close(changed[..., :21, :], out[..., :21, :])
    assert not torch.allclose(changed[..., 21:, :], out[..., 21:, :], atol=1e-3)
    # the last query sees every key: the non-causal Performer with the same features
    everything = la.performer_attention(q, k, v, 64, seeded(3), eps=0)
    torch.testing.assert_close(out[..., -1, :], everything[..., -1, :])


def test_causal_performer_approaches_causal_softmax_as_features_grow():
    g = seeded(0)
    q, k, v = (s * torch.randn(2, 64, 16, generator=g, dtype=torch.float64) for s in (0.5, 0.5, 1))
    exact = F.scaled_dot_product_attention(q, k, v, is_causal=True)

    def error(m):  # relative error averaged over 4 draws of the features
        draws = [
            la.performer_attention(q, k, v, m, g, causal=True, chunk_size=16) for _ in range(4)
        ]
        return sum(((out - exact).norm() / exact.norm()).item() for out in draws) / 4

    small, large = error(8), error(1024)
    assert large < 0.3 * small and large < 0.1


# ----------------------------------------------------------------------------- half precision


def half_precision_cases(dtype):
    """name -> (function, inputs in dtype): every public function of the module that takes tensors.
    The inputs are drawn in float32 and rounded to dtype."""
    g = seeded(0)
    q, k, v = (torch.randn(2, 3, 70, 16, generator=g).to(dtype) for _ in range(3))
    w = la.orthogonal_random_features(32, 16, g).to(dtype)

    def performer(causal):
        return lambda *t: la.performer_attention(*t, 32, seeded(1), causal=causal, chunk_size=16)

    return {
        "elu_feature_map": (la.elu_feature_map, (q,)),
        "linear_attention": (la.linear_attention, (q, k, v)),
        "quadratic_linear_attention": (
            functools.partial(la.quadratic_linear_attention, causal=True),
            (q, k, v),
        ),
        "causal_linear_attention_recurrent": (
            la.causal_linear_attention_recurrent,
            (q[..., :20, :], k[..., :20, :], v[..., :20, :]),
        ),
        "causal_linear_attention_chunked": (
            functools.partial(la.causal_linear_attention_chunked, chunk_size=16),
            (q, k, v),
        ),
        "favor_feature_map": (la.favor_feature_map, (q / 2, w)),
        "performer_attention": (performer(causal=False), (q, k, v)),
        "performer_attention(causal=True)": (performer(causal=True), (q, k, v)),
    }


def assert_one_rounding_from(out, reference, dtype):
    """out (in dtype) is reference (float32) rounded once: within half a unit in the last place
    of dtype, eps/2 relative, or half the subnormal spacing (smallest_normal * eps) near zero."""
    assert out.dtype == dtype
    info = torch.finfo(dtype)
    torch.testing.assert_close(
        out.float(), reference, rtol=info.eps / 2, atol=info.smallest_normal * info.eps / 2
    )


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("name", list(half_precision_cases(torch.float16)))
def test_half_precision_is_computed_in_float32(name, dtype):
    # The library computes float16/bfloat16 inputs in float32 (exact upcasts of the same rounded
    # inputs): its result is the float32 call's, rounded once to dtype. Computed in dtype itself
    # (as the library did before), these cases miss that bound 14 (elu) to 9000 (Performer) times
    # over, more as L grows: the sums over L round at every step.
    fn, inputs = half_precision_cases(dtype)[name]
    assert_one_rounding_from(fn(*inputs), fn(*(t.float() for t in inputs)), dtype)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_orthogonal_random_features_in_half_precision(dtype):
    # drawn in float64 either way: the float32 features rounded once more, so up to one unit
    w = la.orthogonal_random_features(40, 16, seeded(0), dtype=dtype)
    reference = la.orthogonal_random_features(40, 16, seeded(0))
    assert w.dtype == dtype
    torch.testing.assert_close(w.float(), reference, rtol=torch.finfo(dtype).eps, atol=0)


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
