"""Mixed precision in the course's library (days 01-07 and 10; days 08 and 09 have their own).

Every public function or class that takes floating-point tensors is called with float16 and
bfloat16 inputs. Each either works, returning the input's dtype and agreeing with the same
function run in float32 on the same rounded inputs, or refuses with a ValueError that names the
dtypes. Functions that take no floating-point tensor (the mask builders, mask_density, reach,
kv_cache_bytes, the estimates) are not listed.
"""

import pytest
import torch

import course  # noqa: F401  (Triton's interpreter without a GPU)
from course.models.tiny_transformer import TinyTransformer
from course.reference import (
    capstone,
    flash_triton,
    kv_cache,
    masks,
    mechanisms,
    multihead,
    online_softmax,
    sdpa,
    sparse,
)

HALF = (torch.float16, torch.bfloat16)
# torch.testing.assert_close's default rtol for each dtype
RTOL = {torch.float16: 1e-3, torch.bfloat16: 1.6e-2}


def assert_agrees(out, ref, dtype):
    """out (computed in `dtype`) within torch's default tolerance of ref (computed in float32).

    atol is rtol times the largest |ref| rather than the default 1e-5: an output that sums many
    terms (a weighted mean of values, a gradient) carries an absolute rounding error of the size
    of its terms, not of itself, so an entry near 0 is off by ~rtol * (its terms). torch's own
    F.scaled_dot_product_attention in float16 misses atol=1e-5 by 10x on the same inputs.
    """
    scale = ref.detach().float().abs().max().item()
    torch.testing.assert_close(out.float(), ref.float(), rtol=RTOL[dtype], atol=RTOL[dtype] * scale)


def randn(*shape, seed=0, scale=1.0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)) * scale


def qkv(lq, lk=None, lead=(2, 2), d=16):
    lk = lq if lk is None else lk
    return randn(*lead, lq, d), randn(*lead, lk, d, seed=1), randn(*lead, lk, d, seed=2)


# ----------------------------------------------------------------------------- the cases
# Each case is fn(cast, dtype) -> output(s): `cast` turns a float32 tensor into the inputs of the
# run (rounded to the half dtype, then in `dtype`), and modules are rounded the same way with
# .to(half).to(dtype). The float32 run thus sees exactly the values the half run sees.


def _stable_softmax(cast, dtype):
    x = randn(4, 300, scale=4.0)
    x[0] = float("-inf")  # an all -inf row: zeros
    return sdpa.stable_softmax(cast(x))


def _masked_attention(cast, dtype):
    q, k, v = (cast(t) for t in qkv(12, 20))
    mask = masks.causal_mask(12, 20) & masks.padding_mask(torch.tensor([20, 9]), 20)[:, None, None]
    return masks.attention(q, k, v, mask)  # (out, weights)


def _mha(cast, dtype):
    torch.manual_seed(0)
    layer = multihead.MultiHeadAttention(32, 4, num_kv_heads=2).to(cast.half).to(dtype)
    x = cast(randn(2, 10, 32))
    return layer(x, mask=masks.causal_mask(10), need_weights=True, positions=torch.arange(10))


def _layer(kind, **kw):
    def run(cast, dtype):
        torch.manual_seed(0)
        layer = mechanisms.make_attention(kind, 32, 4, **kw).to(cast.half).to(dtype)
        return layer(cast(randn(2, 24, 32)))

    return run


def _cache(cls, *size):
    def run(cast, dtype):
        cache = cls(*size, dtype=dtype)
        k, v = cast(randn(2, 2, 6, 8)), cast(randn(2, 2, 6, 8, seed=1))
        if cls is kv_cache.PagedKVCache:
            return cache.update(0, k[0], v[0])
        return cache.update(k, v)[:2]

    return run


def _decoder_step(cast, dtype):
    torch.manual_seed(0)
    tiny = TinyTransformer(d_model=32, num_heads=4, max_len=40, num_kv_heads=2, positional="rope")
    decoder = kv_cache.CachedDecoder(tiny.eval().to(cast.half).to(dtype))
    ids = torch.randint(0, 11, (2, 6), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        caches = decoder.init_caches(2, 8)
        decoder(ids, caches)  # prefill
        return decoder(ids[:, :1], caches)  # one cached step: (B, 1, vocab)


def _flash_torch(cast, dtype):
    q, k, v = (cast(t).requires_grad_() for t in qkv(40, 56))
    out = online_softmax.flash_attention_torch(q, k, v, True, 16, 8)
    out.backward(cast(randn(*out.shape, seed=5)))
    return out, q.grad, k.grad, v.grad


def _attention_function(kind, **kw):
    def run(cast, dtype):
        return capstone.attention_function(kind, **kw)(*(cast(t) for t in qkv(48, lead=(1, 2))))

    return run


WORKS = {
    "sdpa.stable_softmax": _stable_softmax,
    "masks.attention": _masked_attention,
    "multihead.split_heads": lambda c, dt: multihead.split_heads(c(randn(2, 5, 16)), 4),
    "multihead.merge_heads": lambda c, dt: multihead.merge_heads(c(randn(2, 4, 5, 4))),
    "multihead.repeat_kv": lambda c, dt: multihead.repeat_kv(c(randn(2, 2, 5, 4)), 2),
    "multihead.apply_rope": lambda c, dt: multihead.apply_rope(
        c(randn(2, 4, 50, 16)), torch.arange(50)
    ),
    "multihead.MultiHeadAttention": _mha,
    "mechanisms dense causal": _layer("dense", causal=True),
    "mechanisms strided": _layer("strided", stride=4, local_window=4),
    "mechanisms sliding_window": _layer("sliding_window", window=8),
    "mechanisms chunked": _layer("chunked", chunk_size=8, overlap=2),
    "mechanisms flash causal": _layer("flash", causal=True, block_q=8, block_k=8),
    "mechanisms linear causal": _layer("linear", causal=True, chunk_size=8),
    "mechanisms linear": _layer("linear"),
    "mechanisms performer": _layer("performer", num_features=32),
    "mechanisms mamba": _layer("mamba"),
    "kv_cache.KVCache": _cache(kv_cache.KVCache, 2, 2, 8, 8),
    "kv_cache.RollingKVCache": _cache(kv_cache.RollingKVCache, 2, 2, 8, 4),
    "kv_cache.PagedKVCache": _cache(kv_cache.PagedKVCache, 4, 4, 2, 8),
    "kv_cache.cached_attention": lambda c, dt: kv_cache.cached_attention(
        *(c(t) for t in qkv(5, 30)), window=20
    ),
    "kv_cache.CachedDecoder": _decoder_step,
    "sparse.sliding_window_attention": lambda c, dt: sparse.sliding_window_attention(
        *(c(t) for t in qkv(50)), 9, causal=True
    ),
    "sparse.chunked_attention": lambda c, dt: sparse.chunked_attention(
        *(c(t) for t in qkv(50)), 8, 3
    ),
    # a long axis in small blocks: sum_exp is carried through 250 rescalings
    "online_softmax.online_softmax_stats": lambda c, dt: online_softmax.online_softmax_stats(
        c(randn(4, 2000, scale=3.0)), 8
    ),
    "online_softmax.tiled_attention": lambda c, dt: online_softmax.tiled_attention(
        *(c(t) for t in qkv(16, 1024)), 16, 8, causal=True
    ),
    "online_softmax.FlashAttentionTorch": _flash_torch,
    **{
        f"capstone.attention_function {kind}": _attention_function(kind, **kw)
        for kind, kw in [
            ("dense", {}),
            ("dense_masked", {}),
            ("strided", {"stride": 8, "local_window": 4}),
            ("sliding", {"window": 8}),
            ("chunked", {"chunk_size": 8, "overlap": 2}),
            ("flash", {"block_q": 16, "block_k": 16}),
            ("linear", {}),
            ("performer", {"num_features": 32}),
            ("scan", {"state": 8}),
        ]
    },
}

# Outputs documented to keep another dtype: the logsumexp is float32 for half inputs (as
# FlashAttention's kernels and day 7's return it; the backward recomputes probabilities from it).
OTHER_DTYPE = {("online_softmax.tiled_attention", 1): torch.float32}


class Cast:
    """float32 -> the run's inputs: rounded to `half`, then converted to `dtype`."""

    def __init__(self, half, dtype):
        self.half, self.dtype = half, dtype

    def __call__(self, t):
        return t.to(self.half).to(self.dtype)


def as_tuple(out):
    return tuple(out) if isinstance(out, (tuple, list)) else (out,)


@pytest.mark.parametrize("half", HALF, ids=["float16", "bfloat16"])
@pytest.mark.parametrize("name", list(WORKS))
def test_half_precision_works_and_agrees_with_float32(name, half):
    outs = as_tuple(WORKS[name](Cast(half, half), half))
    refs = as_tuple(WORKS[name](Cast(half, torch.float32), torch.float32))
    for i, (out, ref) in enumerate(zip(outs, refs)):
        assert out.dtype == OTHER_DTYPE.get((name, i), half), (name, i, out.dtype)
        assert_agrees(out, ref, half)


@pytest.mark.parametrize("half", HALF, ids=["float16", "bfloat16"])
def test_generate_and_the_benchmark_run_in_half_precision(half):
    torch.manual_seed(0)
    tiny = TinyTransformer(d_model=32, num_heads=4, max_len=40, positional="rope").eval().to(half)
    decoder = kv_cache.CachedDecoder(tiny)
    ids = torch.randint(0, 11, (2, 6), generator=torch.Generator().manual_seed(0))
    with_cache = kv_cache.generate(decoder, ids, 6)
    assert torch.equal(with_cache, kv_cache.generate(decoder, ids, 6, use_cache=False))

    fns = {kind: capstone.attention_function(kind) for kind in ("dense", "flash")}
    rows = capstone.benchmark_attention(fns, [64], dtype=half, repeats=1)
    assert [r["status"] for r in rows] == ["ok", "ok"], rows
    # against exact float64 attention on the half inputs: the error of rounding the output
    assert all(r["rel_error"] < 4 * RTOL[half] for r in rows), rows


def test_half_precision_follows_torch_autocast():
    """Under torch.autocast a float32 layer takes what the autocast matmuls hand it."""
    torch.manual_seed(0)
    layer = multihead.MultiHeadAttention(32, 4, num_kv_heads=2)
    x = randn(2, 10, 32)
    with torch.no_grad():
        ref, _ = layer(x, mask=masks.causal_mask(10))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out, _ = layer(x, mask=masks.causal_mask(10))
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), ref, rtol=0.05, atol=0.05 * ref.abs().max().item())


# ----------------------------------------------------------------------------- refusals


def _mixed_qkv(fn):
    """fn(q, k, v) with q in the half dtype and k, v in float32."""
    return lambda half: fn(*(t.to(dt) for t, dt in zip(qkv(16), (half, torch.float32) * 2)))


def _half_input_float32_layer(make):
    return lambda half: make()(randn(2, 10, 32).to(half))


def _half_into_float32_cache(cls, *size):
    def run(half):
        k = randn(2, 2, 3, 8).to(half)
        if cls is kv_cache.PagedKVCache:
            return cls(*size).update(0, k[0], k[0])
        return cls(*size).update(k, k)

    return run


REFUSED = {
    "masks.attention mixed": _mixed_qkv(masks.attention),
    "kv_cache.cached_attention mixed": _mixed_qkv(kv_cache.cached_attention),
    "sparse.sliding_window_attention mixed": _mixed_qkv(
        lambda q, k, v: sparse.sliding_window_attention(q, k, v, 4)
    ),
    "sparse.chunked_attention mixed": _mixed_qkv(
        lambda q, k, v: sparse.chunked_attention(q, k, v, 4, 1)
    ),
    "online_softmax.tiled_attention mixed": _mixed_qkv(online_softmax.tiled_attention),
    "flash_triton.flash_attention_triton mixed": _mixed_qkv(flash_triton.flash_attention_triton),
    "MultiHeadAttention float32 weights": _half_input_float32_layer(
        lambda: multihead.MultiHeadAttention(32, 4)
    ),
    "make_attention dense float32 weights": _half_input_float32_layer(
        lambda: mechanisms.make_attention("dense", 32, 4)
    ),
    "make_attention mamba float32 weights": _half_input_float32_layer(
        lambda: mechanisms.make_attention("mamba", 32, 4)
    ),
    "KVCache float32": _half_into_float32_cache(kv_cache.KVCache, 2, 2, 8, 8),
    "RollingKVCache float32": _half_into_float32_cache(kv_cache.RollingKVCache, 2, 2, 8, 4),
    "PagedKVCache float32": _half_into_float32_cache(kv_cache.PagedKVCache, 4, 4, 2, 8),
}


@pytest.mark.parametrize("half", HALF, ids=["float16", "bfloat16"])
@pytest.mark.parametrize("name", list(REFUSED))
def test_mixed_dtypes_are_refused_with_a_value_error_naming_them(name, half):
    with pytest.raises(ValueError) as refusal:
        REFUSED[name](half)
    assert str(half) in str(refusal.value) and "torch.float32" in str(refusal.value)


TRITON_ON_CPU = {
    "triton_add": lambda x: flash_triton.triton_add(x, x),
    "triton_softmax": flash_triton.triton_softmax,
    "flash_attention_triton": lambda x: flash_triton.flash_attention_triton(x, x, x),
    "flash_attention": lambda x: flash_triton.flash_attention(x, x, x),
}


@pytest.mark.skipif(not flash_triton.interpreted(), reason="the interpreter's restriction")
@pytest.mark.parametrize("half", HALF, ids=["float16", "bfloat16"])
@pytest.mark.parametrize("name", list(TRITON_ON_CPU))
def test_triton_interpreter_refuses_half_precision_and_says_why(name, half):
    with pytest.raises(ValueError, match=r"not supported on the CPU interpreter \(float32 only"):
        TRITON_ON_CPU[name](randn(1, 2, 16, 16).to(half))
