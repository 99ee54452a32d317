"""course.reference.kv_cache: the library caches, the cached decoder and the benchmark's smoke test."""

import pytest
import torch

from course.models.tiny_transformer import TinyTransformer
from course.reference.kv_cache import (
    CachedDecoder,
    KVCache,
    PagedKVCache,
    RollingKVCache,
    cached_attention,
    generate,
    kv_cache_bytes,
)


@pytest.mark.parametrize("positional, kv_heads", [("learned", None), ("rope", 2), ("rope", 1)])
def test_cached_decoder_matches_the_model_and_generate_agrees(positional, kv_heads):
    torch.manual_seed(0)
    tiny = TinyTransformer(
        d_model=32,
        num_heads=4,
        num_layers=2,
        max_len=40,
        num_kv_heads=kv_heads,
        positional=positional,
    ).eval()
    model = CachedDecoder(tiny)
    ids = torch.randint(0, 11, (2, 6))
    with torch.no_grad():
        assert torch.allclose(model(ids), tiny(ids), atol=1e-6)
        full = generate(model, ids, 12, use_cache=False)
        assert torch.equal(generate(model, ids, 12, use_cache=True), full)
        caches = model.init_caches(2, 18)
        step = torch.cat(
            [model(full[:, :6], caches)]
            + [model(full[:, t : t + 1], caches) for t in range(6, 17)],
            1,
        )
        assert torch.allclose(step, model(full[:, :-1]), atol=1e-5)


def test_kv_cache_errors_and_bytes():
    cache = KVCache(2, 3, 4, 5, dtype=torch.float16)
    assert cache.nbytes() == kv_cache_bytes(1, 3, 4, 5, 2, torch.float16)
    with pytest.raises(ValueError, match="overflow"):
        cache.update(
            torch.zeros(2, 3, 6, 4, dtype=torch.float16),
            torch.zeros(2, 3, 6, 4, dtype=torch.float16),
        )
    with pytest.raises(ValueError):
        cache.update(
            torch.zeros(1, 3, 1, 4, dtype=torch.float16),
            torch.zeros(1, 3, 1, 4, dtype=torch.float16),
        )
    with pytest.raises(ValueError):
        cache.update(torch.zeros(2, 3, 1, 4), torch.zeros(2, 3, 1, 4))


def test_rolling_cache_equals_window_attention():
    torch.manual_seed(1)
    window, total = 4, 15
    q, k, v = (torch.randn(1, 2, total, 8, dtype=torch.float64) for _ in range(3))
    cache = RollingKVCache(1, 2, 8, window, dtype=torch.float64)
    outs, start = [], 0
    for n in [5, 1, 1, 1, 3, 1, 1, 1, 1]:
        kk, vv, pos = cache.update(k[:, :, start : start + n], v[:, :, start : start + n])
        outs.append(cached_attention(q[:, :, start : start + n], kk, vv, pos, window)[0])
        start += n
    full = cached_attention(q, k, v, window=window)[0]
    assert torch.allclose(torch.cat(outs, 2), full)


def test_paged_cache_gathers_like_a_contiguous_cache_and_frees():
    paged = PagedKVCache(num_blocks=8, block_size=3, num_heads=2, head_dim=4)
    seqs = {s: torch.randn(2, n, 4) for s, n in [("a", 7), ("b", 4), ("c", 1)]}
    for s, k in seqs.items():
        for t in range(k.shape[1]):
            got, _ = paged.update(s, k[:, t : t + 1], k[:, t : t + 1])
        assert torch.equal(got, k)
    assert len(paged.block_tables["a"]) == 3 and len(paged.free) == 8 - 3 - 2 - 1
    paged.free_sequence("a")
    assert len(paged.free) == 5
    with pytest.raises(ValueError, match="full"):
        paged.update("d", torch.zeros(2, 30, 4), torch.zeros(2, 30, 4))


def test_benchmark_smoke(capsys):
    from course.bench.kv_cache import main

    assert main(["--new-tokens", "8", "--prompt", "4", "--d-model", "32", "--layers", "1"]) == 0
    out = capsys.readouterr().out
    assert "PASS: identical tokens" in out
