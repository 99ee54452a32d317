"""course.reference.flash_triton, the library version: float64 oracles and torch's SDPA, small sizes on the
CPU interpreter; larger float16/bfloat16 sizes only with a GPU (marked gpu, skipped without CUDA)."""

import math

import pytest
import torch
import torch.nn.functional as F

import course  # noqa: F401  (Triton in interpreter mode without a GPU)
from course.reference.flash_triton import (
    FlashAttentionTriton,
    flash_attention,
    flash_attention_triton,
    interpreted,
    triton_add,
    triton_softmax,
)

gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
# The small float32 tests run the kernels in the interpreter on CPU tensors; a GPU machine
# compiles them instead (and float32 tl.dot runs in TF32 there): the gpu tests cover it.
interpreter_only = pytest.mark.skipif(
    torch.cuda.is_available() and not interpreted(),
    reason="runs through Triton's interpreter (no GPU)",
)


def reference(q, k, v, causal=False):
    """(out, lse) in float64; bottom-right causal; rows with no key give 0 and -inf."""
    q, k, v = q.double(), k.double(), v.double()
    s = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
    Lq, Lk = s.shape[-2:]
    if causal:
        s = s.masked_fill(
            torch.arange(Lk)[None, :].to(s.device)
            > (Lk - Lq + torch.arange(Lq)[:, None]).to(s.device),
            float("-inf"),
        )
    lse = torch.logsumexp(s, -1)
    p = torch.exp(s - lse[..., None]).nan_to_num(0.0)
    return p @ v, lse


def rel(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


@interpreter_only
def test_add_and_softmax_match_torch():
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(3, 1111, generator=g), torch.randn(3, 1111, generator=g)
    torch.testing.assert_close(triton_add(x, y), x + y)
    torch.testing.assert_close(triton_add(x.T, y.T), x.T + y.T)
    z = torch.randn(2, 5, 37, generator=g) * 50
    torch.testing.assert_close(triton_softmax(z), torch.softmax(z, -1))
    torch.testing.assert_close(
        triton_softmax(z.transpose(0, 2)), torch.softmax(z.transpose(0, 2), -1)
    )


@interpreter_only
@pytest.mark.parametrize(
    "shape_q, shape_k, causal",
    [
        ((1, 2, 37, 16), (1, 2, 53, 16), False),
        ((1, 2, 37, 32), (1, 2, 53, 32), True),
        ((2, 48, 16), (2, 48, 16), True),  # 3-D, whole tiles
        ((5, 64), (80, 64), True),  # 2-D, decoding a few queries against many keys
        ((1, 1, 40, 16), (1, 1, 20, 16), True),  # Lq > Lk: the first 20 queries see no key
    ],
    ids=["ragged", "causal-d32", "3d", "2d-d64", "lq-gt-lk"],
)
def test_forward_matches_float64(shape_q, shape_k, causal):
    g = torch.Generator().manual_seed(1)
    q, k, v = (
        torch.randn(shape_q, generator=g),
        torch.randn(shape_k, generator=g),
        torch.randn(shape_k, generator=g),
    )
    out, lse = flash_attention_triton(q, k, v, causal)
    ref_out, ref_lse = reference(q, k, v, causal)
    assert out.shape == q.shape and lse.shape == q.shape[:-1] and lse.dtype == torch.float32
    assert rel(out, ref_out) < 1e-5
    finite = torch.isfinite(ref_lse)
    torch.testing.assert_close(lse[finite].double(), ref_lse[finite], rtol=1e-5, atol=1e-5)
    assert torch.isneginf(lse[~finite]).all() and (out[..., : (~finite).sum(), :] == 0).all()


@interpreter_only
def test_forward_matches_sdpa_and_is_stable_for_large_scores():
    g = torch.Generator().manual_seed(2)
    q, k, v = (torch.randn(1, 2, 33, 16, generator=g) * s for s in (30.0, 30.0, 1.0))
    for causal in (False, True):
        ref = F.scaled_dot_product_attention(q.double(), k.double(), v.double(), is_causal=causal)
        out, lse = flash_attention_triton(q, k, v, causal)
        assert torch.isfinite(out).all() and torch.isfinite(lse).all() and rel(out, ref) < 1e-5


@interpreter_only
@pytest.mark.parametrize("causal", [False, True])
def test_gradients_match_autograd_in_float64(causal):
    g = torch.Generator().manual_seed(3)
    q = torch.randn(2, 21, 16, generator=g)
    k, v = torch.randn(2, 35, 16, generator=g), torch.randn(2, 35, 16, generator=g)
    dout = torch.randn(2, 21, 16, generator=g)
    leaves = [t.clone().requires_grad_() for t in (q, k, v)]
    out = FlashAttentionTriton.apply(*leaves, causal)
    saved = out.grad_fn.saved_tensors
    grads = torch.autograd.grad(out, leaves, dout)
    assert len(saved) == 5 and sorted(t.ndim for t in saved) == [2, 3, 3, 3, 3]
    leaves64 = [t.double().requires_grad_() for t in (q, k, v)]
    ref = torch.autograd.grad(reference(*leaves64, causal)[0], leaves64, dout.double())
    for got, want in zip(grads, ref):
        assert rel(got, want) < 1e-5


@interpreter_only
def test_flash_attention_is_differentiable():
    q, k, v = (torch.randn(1, 17, 16, requires_grad=True) for _ in range(3))
    flash_attention(q, k, v, causal=True).sum().backward()
    assert q.grad is not None and torch.isfinite(k.grad).all()


@interpreter_only
@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: flash_attention_triton(*(torch.ones(1, 4, 24),) * 3), "head_dim 24"),
        (
            lambda: flash_attention_triton(
                torch.ones(1, 4, 16), torch.ones(1, 5, 16), torch.ones(1, 4, 16)
            ),
            "same shape",
        ),
        (
            lambda: flash_attention_triton(
                torch.ones(2, 4, 16), torch.ones(3, 4, 16), torch.ones(3, 4, 16)
            ),
            "leading dims",
        ),
        (
            lambda: flash_attention_triton(*(torch.ones(1, 4, 16, dtype=torch.float64),) * 3),
            "not supported",
        ),
        (
            lambda: flash_attention_triton(
                torch.ones(1, 4, 16),
                torch.ones(1, 4, 16, dtype=torch.float64),
                torch.ones(1, 4, 16),
            ),
            "one dtype",
        ),
        (lambda: triton_add(torch.ones(3), torch.ones(4)), "same shape"),
        (lambda: triton_softmax(torch.tensor(1.0)), "at least one axis"),
    ],
    ids=["head-dim", "kv-shapes", "leading", "float64-cpu", "mixed-dtypes", "add", "softmax"],
)
def test_bad_input_gives_clear_errors(call, match):
    with pytest.raises(ValueError, match=match):
        call()


# ----------------------------------------------------------------------------- GPU only


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("D", [64, 128])
def test_gpu_forward_half_precision_matches_sdpa(dtype, causal, D):
    g = torch.Generator(device="cuda").manual_seed(0)
    q, k, v = (
        torch.randn(2, 4, 1000, D, device="cuda", dtype=dtype, generator=g) for _ in range(3)
    )
    out, lse = flash_attention_triton(q, k, v, causal)
    ref = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), is_causal=causal)
    assert out.dtype == dtype and rel(out, ref) < (1e-2 if dtype == torch.float16 else 2e-2)
    ref_out, ref_lse = reference(q[:1, :1], k[:1, :1], v[:1, :1], causal)
    torch.testing.assert_close(lse[:1, :1].double(), ref_lse, rtol=1e-2, atol=1e-2)


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
@pytest.mark.parametrize("causal", [False, True])
def test_gpu_gradients(dtype, causal):
    g = torch.Generator(device="cuda").manual_seed(1)
    q = torch.randn(2, 4, 300, 64, device="cuda", dtype=dtype, generator=g)
    k, v = (torch.randn(2, 4, 517, 64, device="cuda", dtype=dtype, generator=g) for _ in range(2))
    dout = torch.randn_like(q)
    leaves = [t.clone().requires_grad_() for t in (q, k, v)]
    grads = torch.autograd.grad(FlashAttentionTriton.apply(*leaves, causal), leaves, dout)
    leaves64 = [t.double().requires_grad_() for t in (q, k, v)]
    ref = torch.autograd.grad(reference(*leaves64, causal)[0], leaves64, dout.double())
    tol = {torch.float16: 2e-2, torch.bfloat16: 5e-2, torch.float32: 1e-3}[dtype]
    for got, want in zip(grads, ref):
        assert rel(got, want) < tol


@pytest.mark.gpu
@gpu
def test_gpu_long_sequence_causal():
    q, k, v = (torch.randn(1, 2, 8192, 128, device="cuda", dtype=torch.float16) for _ in range(3))
    out, _ = flash_attention_triton(q, k, v, True)
    ref = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    assert rel(out, ref) < 1e-2
