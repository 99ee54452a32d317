"""course.reference.nystrom, the library version of day08's Nyström part: against brute-force segment
means, torch.linalg.pinv and float64 softmax attention."""

import pytest
import torch

from course.reference import nystrom


def softmax_attention(q, k, v):
    return torch.softmax(q @ k.mT / q.shape[-1] ** 0.5, dim=-1) @ v


def brute_landmarks(x, m):
    L = x.shape[-2]
    return torch.stack(
        [x[..., [t for t in range(L) if t * m // L == i], :].mean(-2) for i in range(m)], -2
    )


@pytest.mark.parametrize("L, m", [(12, 4), (13, 4), (7, 3), (9, 1), (9, 9), (100, 7)])
def test_landmarks_are_segment_means(L, m):
    x = torch.randn(2, 3, L, 5, dtype=torch.float64)
    torch.testing.assert_close(nystrom.landmarks(x, m), brute_landmarks(x, m))


def test_segment_bounds_cover_every_token_in_contiguous_near_equal_segments():
    for L in range(1, 40):
        for m in range(1, L + 1):
            b = nystrom.segment_bounds(L, m)
            sizes = b[1:] - b[:-1]
            assert b[0] == 0 and b[-1] == L and sizes.min() >= L // m and sizes.max() <= -(-L // m)


def test_iterative_pinv_converges_to_pinv_and_its_error_falls():
    u = torch.linalg.qr(torch.randn(3, 8, 8, dtype=torch.float64))[0]
    w = torch.linalg.qr(torch.randn(3, 8, 8, dtype=torch.float64))[0]
    a = 5 * (u * torch.linspace(1, 4, 8, dtype=torch.float64)) @ w.mT  # singular values 5..20
    exact = torch.linalg.pinv(a)
    errors = [
        ((nystrom.iterative_pinv(a, n) - exact).norm() / exact.norm()).item() for n in (1, 3, 6, 12)
    ]
    assert errors == sorted(errors, reverse=True) and errors[-1] < 1e-12


def test_iterative_pinv_scales_each_matrix_by_its_own_norms():
    a = torch.stack([torch.eye(3, dtype=torch.float64), 10 * torch.eye(3, dtype=torch.float64)])
    torch.testing.assert_close(nystrom.iterative_pinv(a, 0), torch.stack([a[0], a[1] / 100]))
    torch.testing.assert_close(
        nystrom.iterative_pinv(a, 1), torch.linalg.pinv(a)
    )  # exact in one step here


def test_nystrom_is_softmax_attention_when_every_landmark_is_a_token():
    q, k, v = (torch.randn(2, 11, 8, dtype=torch.float64) for _ in range(3))
    torch.testing.assert_close(
        nystrom.nystrom_attention(q, k, v, 11, pinv_iterations=30), softmax_attention(q, k, v)
    )


def test_nystrom_equals_the_dense_formula_with_lq_not_lk():
    q, k, v = (
        torch.randn(2, 17, 8, dtype=torch.float64),
        torch.randn(2, 23, 8, dtype=torch.float64),
        torch.randn(2, 23, 5, dtype=torch.float64),
    )
    m, s = 4, 8**-0.5
    qt, kt = brute_landmarks(q, m), brute_landmarks(k, m)
    f, a, b = (torch.softmax(x @ y.mT * s, -1) for x, y in ((q, kt), (qt, kt), (qt, k)))
    out = nystrom.nystrom_attention(q, k, v, m, pinv_iterations=4)
    torch.testing.assert_close(out, f @ nystrom.iterative_pinv(a, 4) @ b @ v)
    assert nystrom.nystrom_attention(q.float(), k.float(), v.float(), m).dtype == torch.float32


def test_nystrom_error_falls_as_landmarks_grow_on_smooth_sequences():
    g = torch.Generator().manual_seed(0)
    L = 128
    t = torch.arange(L, dtype=torch.float64)[:, None] / L
    freqs = torch.randn(1, 8, generator=g, dtype=torch.float64) * 3
    q, k = torch.sin(6 * t * freqs), torch.cos(6 * t * freqs)  # smooth along L
    v = torch.randn(L, 8, generator=g, dtype=torch.float64)
    full = softmax_attention(q, k, v)
    errors = [
        ((nystrom.nystrom_attention(q, k, v, m, 30) - full).norm() / full.norm()).item()
        for m in (2, 8, 32, 128)
    ]
    assert errors == sorted(errors, reverse=True) and errors[0] > 0.1 and errors[-1] < 1e-6


def test_nystrom_memory_is_linear_in_length():
    from course.bench import peak_memory

    peaks = [
        peak_memory(nystrom.nystrom_attention, *(torch.randn(1, L, 16) for _ in range(3)), 16)
        for L in (512, 2048)
    ]
    assert peaks[1] < 6 * peaks[0] and peaks[1] < 2048 * 2048


def half_precision_cases(dtype):
    """name -> (function, inputs in dtype) for each public function that takes tensors, the
    inputs drawn in float32 and rounded to dtype."""
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 3, 70, 16, generator=g).to(dtype) for _ in range(3))
    a = torch.softmax(torch.randn(2, 8, 8, generator=g), dim=-1).to(dtype)  # like Nystrom's A
    return {
        "landmarks": (lambda x: nystrom.landmarks(x, 8), (q + 4,)),  # large prefix sums
        "iterative_pinv": (nystrom.iterative_pinv, (a,)),
        "nystrom_attention": (lambda *t: nystrom.nystrom_attention(*t, 8), (q, k, v)),
    }


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("name", list(half_precision_cases(torch.float16)))
def test_half_precision_is_computed_in_float32(name, dtype):
    # float16/bfloat16 inputs are computed in float32 (exact upcasts of the same rounded inputs):
    # the result is the float32 call's rounded once to dtype, within half a unit in the last
    # place (or half the subnormal spacing near zero). Computed in dtype itself (as the library
    # did before), these cases miss that bound 14 (segment means) to 30000 (attention) times over.
    fn, inputs = half_precision_cases(dtype)[name]
    out, reference = fn(*inputs), fn(*(t.float() for t in inputs))
    info = torch.finfo(dtype)
    assert out.dtype == dtype
    torch.testing.assert_close(
        out.float(), reference, rtol=info.eps / 2, atol=info.smallest_normal * info.eps / 2
    )


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: nystrom.landmarks(torch.randn(5, 2), 0), "num_landmarks"),
        (lambda: nystrom.landmarks(torch.randn(5, 2), 6), "num_landmarks"),
        (lambda: nystrom.landmarks(torch.randn(5), 1), r"\(\.\.\., L, D\)"),
        (lambda: nystrom.iterative_pinv(torch.randn(3, 4)), "square"),
        (lambda: nystrom.iterative_pinv(torch.randn(3, 3), -1), "iterations"),
        (
            lambda: nystrom.nystrom_attention(
                torch.randn(5, 4), torch.randn(6, 4), torch.randn(5, 4), 2
            ),
            "same",
        ),
        (
            lambda: nystrom.nystrom_attention(
                torch.randn(5, 4), torch.randn(3, 4), torch.randn(3, 4), 4
            ),
            "num_landmarks",
        ),
        (
            lambda: nystrom.nystrom_attention(
                torch.randn(5, 4).half(), torch.randn(5, 4), torch.randn(5, 4), 2
            ),
            "share a dtype",
        ),
        (lambda: nystrom.landmarks(torch.ones(5, 2, dtype=torch.int64), 2), "floating point"),
        (lambda: nystrom.iterative_pinv(torch.eye(3, dtype=torch.int64)), "floating point"),
    ],
    ids=[
        "m-0",
        "m-above-L",
        "1-D",
        "non-square",
        "negative-steps",
        "k-v-lengths",
        "m-above-Lk",
        "mixed-dtypes",
        "integer-x",
        "integer-a",
    ],
)
def test_bad_input_gives_clear_errors(call, match):
    with pytest.raises(ValueError, match=match):
        call()
