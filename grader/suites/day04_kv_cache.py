"""Checks for day04-kv-cache: KVCache, cached_attention, generate, kv_cache_bytes, RollingKVCache.

Oracles: K/V tensors kept by the check itself and concatenated with torch.cat; attention is
F.scaled_dot_product_attention in float64 under a mask built here from positions; greedy
decoding is a brute-force loop that runs the model on the whole sequence every step; bytes come
from torch's own element sizes. The classes are checked through their methods, each called
through `grader.harness.checking.guarded`, so a crash or a shortcut in a method reads like any other.
"""

import torch
import torch.nn.functional as F

import course.reference.kv_cache as library
import course.reference.masks
from grader.harness.checking import (
    Mistake,
    expect_close,
    expect_tensor,
    expect_value_error,
    guarded,
    named,
)
from grader.harness.measuring import address
from grader.suites import Exercise
from grader.suites._common import draw, randn

HINTS = {
    "not_advanced": (
        "a cache whose seq_len does not grow with each update",
        "after writing L_new positions, set self.seq_len += L_new (a plain int).",
    ),
    "writes_at_zero": (
        "every update written at position 0, over the previous entries",
        "write the new positions at [seq_len, seq_len + L_new): "
        "self.k[:, :, start:stop] = k_new, then advance seq_len.",
    ),
    "whole_buffer": (
        "the whole preallocated buffer returned, not the filled prefix",
        "return views of the filled part only: self.k[:, :, :self.seq_len].",
    ),
    "reset_keeps_length": (
        "reset() that leaves seq_len where it was",
        "reset() sets seq_len back to 0 (the buffers may keep their old "
        "values: they will be overwritten).",
    ),
    "no_error_for_bad_update": (
        "a bad update accepted silently (overflow, or a batch, head, "
        "head_dim, dtype or device that is not the cache's)",
        "check k_new and v_new before writing and raise ValueError "
        'naming what is wrong, e.g. `raise ValueError(f"overflow: '
        '{start} + {n} > max_seq_len={self.max_seq_len}")`.',
    ),
    "not_preallocated": (
        "buffers that are not (batch, heads, max_seq_len, head_dim) of the "
        "cache's dtype, allocated once",
        "allocate self.k and self.v once in __init__ with torch.zeros(B, H, "
        "max_seq_len, D, dtype=dtype, device=device) and write into them.",
    ),
    "top_left_causal": (
        "a top-left causal mask (query i sees keys 0..i) when Lq < Lk",
        "new queries are the newest tokens: query i sits at position "
        "Lk - Lq + i and sees keys j <= Lk - Lq + i (day 2's bottom-right "
        "causal mask).",
    ),
    "no_causal_mask": (
        "no causal mask: prefill queries see later tokens",
        "mask keys after each query's position: j <= Lk - Lq + i.",
    ),
    "missing_scale": (
        "scores not divided by sqrt(d)",
        "scale the scores q @ k^T by 1 / sqrt(head_dim) before the softmax.",
    ),
    "generate_wrong_tokens": (
        "tokens other than greedy decoding's",
        "each step append argmax of the logits at the *last* position; "
        "return the prompt followed by the new tokens, (B, L + n).",
    ),
    "generate_without_prompt": (
        "only the new tokens returned, without the prompt",
        "return torch.cat([prompt_ids, new_tokens], dim=1): (B, L + max_new_tokens).",
    ),
    "cache_unused": (
        "use_cache=True that still runs the model on the whole sequence every step",
        "prefill once with model(prompt_ids, caches), then feed only the newest "
        "token, model(next_id, caches): the caches remember the rest.",
    ),
    "cache_not_initialised": (
        "use_cache=True without caches from model.init_caches",
        "caches = model.init_caches(batch_size, prompt_len + "
        "max_new_tokens), then pass them to every model call.",
    ),
    "wrong_element_size": (
        "a fixed number of bytes per element whatever the dtype",
        "bytes per element depend on the dtype: "
        "torch.empty((), dtype=dtype).element_size() (2 for float16).",
    ),
    "forgot_k_and_v": (
        "the bytes of K or V only, not both",
        "a cache stores K and V: multiply by 2.",
    ),
    "positions_not_absolute": (
        "positions that restart (relative to the buffer) instead of absolute positions",
        "the key in slot s holds absolute position p with p % window == "
        "s; return those p, so RoPE and the window mask stay right "
        "after the buffer wraps.",
    ),
    "rolling_wrong_keys": (
        "keys that do not match their positions, or a window with keys missing or extra",
        "return exactly the keys at positions max(0, start - window + 1) .. "
        "start + L_new - 1, each next to its absolute position.",
    ),
    "rolling_not_bounded": (
        "a rolling cache that keeps more than `window` positions",
        "store K and V in a ring of `window` slots: position p goes to slot p % window.",
    ),
}

HINTS.update(
    {
        "block_table_off_by_one": (
            "a block table one block short or long",
            "L positions need ceil(L / block_size) blocks, -(-L // block_size) "
            "in integers; take from the free list only what the table lacks.",
        ),
        "wrong_block_for_position": (
            "positions stored in the wrong block or at the wrong offset",
            "position p lives in block table[p // block_size], at offset "
            "p % block_size; gather the table's blocks in order.",
        ),
        "gather_not_cropped": (
            "gathered K/V that keep the unused tail of the last block",
            "crop what you gather to the sequence's length.",
        ),
        "blocks_shared": (
            "a block held by two sequences, or by a sequence and the free list",
            "pop blocks off the free list, so each block has exactly one owner.",
        ),
        "blocks_not_freed": (
            "free_sequence that does not return the sequence's blocks",
            "extend self.free with the sequence's block table, then forget its table and length.",
        ),
    }
)

LIBRARY = "course.reference.kv_cache is the course's library version, for later days: write yours."
FORBIDDEN = {
    fn: LIBRARY
    for fn in (
        library.kv_cache_bytes,
        library.KVCache.update,
        library.RollingKVCache.update,
        library.PagedKVCache.update,
        library.PagedKVCache.gather,
        library.PagedKVCache.free_sequence,
        library.cached_attention,
        library.generate.__wrapped__,
    )
}
# generate runs the course's CachedDecoder, which uses the library cache: only generate is refused.
GENERATE_FORBIDDEN = {library.generate.__wrapped__: LIBRARY}  # not the no_grad wrapper
ATTENTION_FORBIDDEN = {
    **FORBIDDEN,
    "scaled_dot_product_attention": "build attention from its parts: scores, mask, softmax, @ v.",
    course.reference.masks.attention: "build attention from its parts: scores, mask, softmax, @ v.",
    course.reference.masks.causal_mask: "build the bottom-right causal mask yourself.",
}


# ----------------------------------------------------------------------------- KVCache


def _methods(cache, exercise, forbidden=FORBIDDEN):
    reset = getattr(cache, "reset", None)
    return (
        guarded(cache.update, exercise, forbidden),
        guarded(reset, exercise, forbidden) if reset is not None else None,
    )


def _seq_len(cache):
    value = getattr(cache, "seq_len", None)
    if callable(value):
        value = value()
    if not isinstance(value, int) and not (isinstance(value, torch.Tensor) and value.numel() == 1):
        raise Mistake(
            f"cache.seq_len is {value!r}, expected an int.",
            "keep self.seq_len, a plain int: the number of positions written.",
            "not_advanced",
        )
    return int(value)


def _kv_shape(rng):
    return draw(rng, 1, 3), draw(rng, 1, 4), draw(rng, 2, 8)


def cache_prefill_then_decode(KVCache, rng):
    """a prefill then single-token decodes return the filled prefix, equal to torch.cat of all"""
    B, H, D = _kv_shape(rng)
    prompt, steps = draw(rng, 2, 6), draw(rng, 3, 6)
    max_len = prompt + steps + draw(rng, 2, 5)
    cache = KVCache(B, H, D, max_len, dtype=torch.float32, device="cpu")
    update, _ = _methods(cache, "KVCache")
    ks, vs = [], []
    for n in [prompt] + [1] * steps:
        k, v = randn((B, H, n, D), rng), randn((B, H, n, D), rng)
        ks.append(k), vs.append(v)
        k_all, v_all = update(k, v)
        total = sum(t.shape[-2] for t in ks)
        ref_k, ref_v = torch.cat(ks, -2), torch.cat(vs, -2)
        if isinstance(k_all, torch.Tensor) and k_all.shape[-2] == max_len and total < max_len:
            raise named("whole_buffer")
        if isinstance(k_all, torch.Tensor) and k_all.shape == ref_k.shape and len(ks) > 1:
            if torch.equal(k_all[..., :n, :], k) and not torch.equal(k_all, ref_k):
                raise named("writes_at_zero")
        expect_close(k_all, ref_k.double(), torch.float32, what=f"k_all after {len(ks)} updates")
        expect_close(v_all, ref_v.double(), torch.float32, what=f"v_all after {len(ks)} updates")
        if _seq_len(cache) != total:
            raise Mistake(
                f"cache.seq_len is {_seq_len(cache)} after {total} positions were written.",
                HINTS["not_advanced"][1],
                "not_advanced",
            )


def cache_seq_len_and_reset(KVCache, rng):
    """seq_len counts positions (get_seq_length too), reset() empties the cache for reuse"""
    B, H, D = _kv_shape(rng)
    cache = KVCache(B, H, D, 16, dtype=torch.float32, device="cpu")
    update, reset = _methods(cache, "KVCache")
    if _seq_len(cache) != 0:
        raise Mistake(
            f"a new cache has seq_len {_seq_len(cache)}, expected 0.",
            HINTS["not_advanced"][1],
            "not_advanced",
        )
    n = draw(rng, 2, 5)
    update(randn((B, H, n, D), rng), randn((B, H, n, D), rng))
    if _seq_len(cache) != n:
        raise named("not_advanced")
    get = getattr(cache, "get_seq_length", None)
    if get is None or guarded(get, "KVCache", FORBIDDEN)() != n:
        raise Mistake(
            "cache.get_seq_length() should return seq_len (Hugging Face's name).",
            "def get_seq_length(self): return self.seq_len",
            "not_advanced",
        )
    reset()
    if _seq_len(cache) != 0:
        raise named("reset_keeps_length")
    k, v = randn((B, H, 3, D), rng), randn((B, H, 3, D), rng)
    k_all, _ = update(k, v)
    expect_close(k_all, k.double(), torch.float32, what="k_all after reset() and one update")


def cache_is_preallocated(KVCache, rng):
    """the buffers are preallocated (B, H, max_seq_len, D) in the cache's dtype; views come back"""
    B, H, D = _kv_shape(rng)
    max_len = draw(rng, 4, 12)
    cache = KVCache(B, H, D, max_len, dtype=torch.float64, device="cpu")
    update, _ = _methods(cache, "KVCache")
    buffers = [
        getattr(cache, name, None)
        for name in ("k", "v", "k_cache", "v_cache", "key_cache", "value_cache")
    ]
    buffers = [b for b in buffers if isinstance(b, torch.Tensor)]
    if len(buffers) < 2 or any(
        tuple(b.shape) != (B, H, max_len, D) or b.dtype != torch.float64 for b in buffers[:2]
    ):
        raise named("not_preallocated")
    k_all, v_all = update(
        randn((B, H, 2, D), rng, torch.float64), randn((B, H, 2, D), rng, torch.float64)
    )
    expect_tensor(k_all, "k_all", (B, H, 2, D), torch.float64)
    if address(k_all) != address(buffers[0]):
        raise Mistake(
            "k_all is a copy, not a view of the preallocated buffer.",
            "return self.k[:, :, :self.seq_len] (slicing gives a view, no copy).",
            "not_preallocated",
        )


def cache_clear_errors(KVCache, rng):
    """overflow, a batch/head/head_dim mismatch and a dtype mismatch raise ValueError"""
    B, H, D = _kv_shape(rng)
    cache = KVCache(B, H, D, 4, dtype=torch.float32, device="cpu")
    update, _ = _methods(cache, "KVCache")
    update(randn((B, H, 3, D), rng), randn((B, H, 3, D), rng))
    key = "no_error_for_bad_update"
    expect_value_error(
        lambda: update(randn((B, H, 2, D), rng), randn((B, H, 2, D), rng)),
        "update past max_seq_len (overflow)",
        key,
    )
    fresh = KVCache(B, H, D, 8, dtype=torch.float32, device="cpu")
    update, _ = _methods(fresh, "KVCache")
    expect_value_error(
        lambda: update(randn((B + 1, H, 1, D), rng), randn((B + 1, H, 1, D), rng)),
        "update with the wrong batch size",
        key,
    )
    expect_value_error(
        lambda: update(randn((B, H + 1, 1, D), rng), randn((B, H + 1, 1, D), rng)),
        "update with the wrong number of heads",
        key,
    )
    expect_value_error(
        lambda: update(
            randn((B, H, 1, D), rng, torch.float64), randn((B, H, 1, D), rng, torch.float64)
        ),
        "update with float64 into a float32 cache",
        key,
    )


# ----------------------------------------------------------------------------- cached_attention


def attention64(q, k, v, positions_q, positions_k):
    allowed = positions_q.unsqueeze(-1) >= positions_k
    return F.scaled_dot_product_attention(q.double(), k.double(), v.double(), attn_mask=allowed)


def attention_checks(lq, lk, cached_attention, rng, dtype=torch.float32):
    B, H, D = draw(rng, 1, 3), draw(rng, 1, 4), draw(rng, 2, 16)
    q, k, v = (randn((B, H, n, D), rng, dtype) for n in (lq, lk, lk))
    pos_k = torch.arange(lk)
    ref = attention64(q, k, v, pos_k[lk - lq :], pos_k)
    suspects = [
        ("top_left_causal", attention64(q, k, v, torch.arange(lq), pos_k)),
        ("no_causal_mask", attention64(q, k, v, torch.full((lq,), lk), pos_k)),
    ]
    scaled = F.scaled_dot_product_attention(
        q.double(),
        k.double(),
        v.double(),
        attn_mask=pos_k[lk - lq :].unsqueeze(-1) >= pos_k,
        scale=1.0,
    )
    suspects.append(("missing_scale", scaled))
    out = cached_attention(q, k, v)
    expect_close(out, ref, dtype, what=f"cached_attention with Lq={lq}, Lk={lk}", suspects=suspects)


def attention_prefill_after_cache(cached_attention, rng):
    """a chunk of Lq new queries against Lk > Lq cached keys is bottom-right causal"""
    lq = draw(rng, 2, 6)
    attention_checks(lq, lq + draw(rng, 2, 6), cached_attention, rng)


def attention_prefill_square(cached_attention, rng):
    """a whole prompt (Lq == Lk) is ordinary causal attention"""
    L = draw(rng, 2, 9)
    attention_checks(L, L, cached_attention, rng, torch.float64)


def attention_decode_one(cached_attention, rng):
    """a single decode query sees every cached key"""
    attention_checks(1, draw(rng, 1, 12), cached_attention, rng)


# ----------------------------------------------------------------------------- generate


class Recorder(torch.nn.Module):
    """The course's CachedDecoder, counting how many tokens each call feeds it."""

    def __init__(self, decoder):
        super().__init__()
        self.decoder = decoder
        self.calls = []  # (tokens fed, caches given?)
        self.inits = 0

    def init_caches(self, batch_size, max_seq_len, *args, **kwargs):
        self.inits += 1
        return self.decoder.init_caches(batch_size, max_seq_len, *args, **kwargs)

    def forward(self, ids, caches=None):
        self.calls.append((ids.shape[1], caches is not None))
        return self.decoder(ids, caches)


def tiny_decoder(rng, **kwargs):
    from course.models.tiny_transformer import TinyTransformer

    seed = draw(rng, 0, 10**6)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = TinyTransformer(d_model=32, num_heads=4, num_layers=2, max_len=48, **kwargs)
    return library.CachedDecoder(model.eval())


@torch.no_grad()
def greedy64(decoder, prompt, n):
    """Brute force: run the whole sequence every step, append the argmax."""
    ids = prompt
    for _ in range(n):
        ids = torch.cat([ids, decoder(ids)[:, -1].argmax(-1, keepdim=True)], dim=1)
    return ids


def _generate_check(generate, rng, use_cache, **model_kwargs):
    decoder = tiny_decoder(rng, **model_kwargs)
    B, L, n = draw(rng, 1, 3), draw(rng, 2, 8), draw(rng, 3, 12)
    prompt = torch.randint(0, decoder.vocab_size, (B, L), generator=rng)
    model = Recorder(decoder)
    out = generate(model, prompt.clone(), n, use_cache=use_cache)
    ref = greedy64(decoder, prompt, n)
    if isinstance(out, torch.Tensor) and out.shape == (B, n) and torch.equal(out, ref[:, L:]):
        raise named("generate_without_prompt")
    expect_tensor(out, f"generate(..., {n}, use_cache={use_cache})", (B, L + n), torch.long)
    if not torch.equal(out, ref):
        raise Mistake(
            f"generate(..., use_cache={use_cache}) gave other tokens than greedy decoding.",
            HINTS["generate_wrong_tokens"][1],
            "generate_wrong_tokens",
        )
    return model, L, n


def generate_without_cache(generate, rng):
    """use_cache=False: greedy tokens, the prompt followed by max_new_tokens new ones"""
    _generate_check(generate, rng, False)


def generate_with_cache(generate, rng):
    """use_cache=True: the same tokens, a prefill then one token per model call"""
    model, L, n = _generate_check(generate, rng, True, num_kv_heads=2)
    if model.inits == 0:
        raise named("cache_not_initialised")
    fed = [tokens for tokens, _ in model.calls]
    if (
        not all(cached for _, cached in model.calls)
        or fed[0] != L
        or any(t != 1 for t in fed[1:])
        or sum(fed) > L + n
    ):
        raise Mistake(
            f"with use_cache=True the model was fed {fed} tokens per call.",
            HINTS["cache_unused"][1],
            "cache_unused",
        )


def generate_rope_model(generate, rng):
    """with a RoPE model, cached decoding still gives the brute-force tokens"""
    _generate_check(generate, rng, True, positional="rope")


# ----------------------------------------------------------------------------- kv_cache_bytes


def bytes_reference(layers, kv_heads, head_dim, seq_len, batch, dtype):
    return (
        2
        * layers
        * kv_heads
        * head_dim
        * seq_len
        * batch
        * torch.tensor([], dtype=dtype).element_size()
    )


def bytes_every_dtype(kv_cache_bytes, rng):
    """2 * layers * kv_heads * head_dim * seq_len * batch * bytes, for float32/16, bf16, int8"""
    for dtype in (torch.float32, torch.float16, torch.bfloat16, torch.int8, torch.float64):
        args = (
            draw(rng, 1, 40),
            draw(rng, 1, 8),
            draw(rng, 16, 128),
            draw(rng, 1, 4096),
            draw(rng, 1, 8),
        )
        got = kv_cache_bytes(*args, dtype)
        ref = bytes_reference(*args, dtype)
        if got == ref:
            continue
        if got == ref // 2:
            raise named("forgot_k_and_v")
        if any(
            got == ref // torch.tensor([], dtype=dtype).element_size() * size
            for size in (1, 2, 4, 8)
        ):
            raise named("wrong_element_size")
        raise Mistake(
            f"kv_cache_bytes{args + (dtype,)} = {got}, expected {ref}.",
            "multiply all six factors: 2 (K and V), layers, kv_heads, head_dim, "
            "seq_len, batch, and the dtype's element size.",
            "wrong_values",
        )


def bytes_match_real_buffers(kv_cache_bytes, rng):
    """the formula equals the bytes of real preallocated K and V buffers"""
    layers, heads, D, L, B = (
        draw(rng, 1, 3),
        draw(rng, 1, 4),
        draw(rng, 2, 16),
        draw(rng, 1, 32),
        draw(rng, 1, 3),
    )
    dtype = (torch.float16, torch.bfloat16, torch.float32)[draw(rng, 0, 2)]
    real = sum(
        t.numel() * t.element_size()
        for _ in range(layers)
        for t in (torch.zeros(B, heads, L, D, dtype=dtype),) * 2
    )
    got = kv_cache_bytes(layers, heads, D, L, B, dtype)
    if got != real:
        key = "wrong_element_size" if got * 2 == real or got == real * 2 else "wrong_values"
        raise Mistake(
            f"kv_cache_bytes gives {got}, the real buffers hold {real} bytes ({dtype}).",
            HINTS.get(key, ("", "count every factor"))[1],
            key,
        )
    if not isinstance(got, int):
        raise Mistake(
            f"kv_cache_bytes returned {type(got).__name__}, expected int.",
            "return a plain Python int (e.g. int(...)).",
            "wrong_values",
        )


# ----------------------------------------------------------------------------- RollingKVCache


def rolling_run(RollingKVCache, rng, window, chunks, B=1, H=2, D=4):
    cache = RollingKVCache(B, H, D, window, dtype=torch.float32, device="cpu")
    update, _ = _methods(cache, "RollingKVCache")
    total = sum(chunks)
    k_seq, v_seq = randn((B, H, total, D), rng), randn((B, H, total, D), rng)
    start = 0
    for n in chunks:
        result = update(k_seq[..., start : start + n, :], v_seq[..., start : start + n, :])
        if not (isinstance(result, tuple) and len(result) == 3):
            raise Mistake(
                "update should return (k, v, positions).",
                "return the keys, the values and their absolute positions (a LongTensor).",
                "rolling_wrong_keys",
            )
        k, v, positions = result
        yield start, n, k, v, positions, k_seq, v_seq, cache
        start += n


def _expected_positions(start, n, window):
    return list(range(max(0, start - window + 1), start + n))


def rolling_positions_are_absolute(RollingKVCache, rng):
    """after the ring wraps, each returned key sits next to its absolute position"""
    window = draw(rng, 2, 5)
    chunks = [draw(rng, 1, window)] + [1] * draw(rng, 2 * window, 3 * window)
    for start, n, k, v, positions, k_seq, v_seq, _ in rolling_run(
        RollingKVCache, rng, window, chunks
    ):
        if not isinstance(positions, torch.Tensor) or positions.dtype != torch.long:
            raise Mistake(
                f"positions should be a LongTensor, got {positions!r}.",
                HINTS["positions_not_absolute"][1],
                "positions_not_absolute",
            )
        want = _expected_positions(start, n, window)
        got = positions.flatten().tolist()
        if sorted(got) != want:
            if start + n > window and max(got, default=0) < window:
                raise named("positions_not_absolute")
            raise Mistake(
                f"after {start + n} positions (window {window}) the cache returned "
                f"positions {sorted(got)}, expected {want}.",
                HINTS["rolling_wrong_keys"][1],
                "rolling_wrong_keys",
            )
        expect_close(
            k,
            k_seq[..., positions.flatten(), :].double(),
            torch.float32,
            what=f"k next to positions {got}",
            suspects=[] if start + n <= window else [],
        )
        expect_close(
            v,
            v_seq[..., positions.flatten(), :].double(),
            torch.float32,
            what=f"v next to positions {got}",
        )


def rolling_equals_window_attention(RollingKVCache, rng):
    """attention over the rolling cache equals full attention under a sliding-window mask"""
    window = draw(rng, 2, 6)
    B, H, D = 1, 2, 8
    total_chunks = (
        [draw(rng, 1, 2 * window)] + [1] * draw(rng, window, 2 * window) + [draw(rng, 2, 4)]
    )
    total = sum(total_chunks)
    q_seq = randn((B, H, total, D), rng)
    outs = []
    for start, n, k, v, positions, k_seq, v_seq, _ in rolling_run(
        RollingKVCache, rng, window, total_chunks, B, H, D
    ):
        pos_q = torch.arange(start, start + n)
        distance = pos_q.unsqueeze(-1) - positions.flatten()
        mask = (distance >= 0) & (distance < window)
        outs.append(
            F.scaled_dot_product_attention(
                q_seq[..., start : start + n, :].double(), k.double(), v.double(), attn_mask=mask
            )
        )
    i, j = torch.arange(total).unsqueeze(-1), torch.arange(total)
    full = F.scaled_dot_product_attention(
        q_seq.double(), k_seq.double(), v_seq.double(), attn_mask=(i - j >= 0) & (i - j < window)
    )
    expect_close(
        torch.cat(outs, -2).float(),
        full,
        torch.float32,
        what="attention over the rolling cache, chunk by chunk",
    )


def rolling_is_bounded(RollingKVCache, rng):
    """the ring holds `window` slots, whatever the number of positions seen; seq_len counts all"""
    window = draw(rng, 2, 6)
    chunks = [1] * (4 * window)
    for *_, cache in rolling_run(RollingKVCache, rng, window, chunks):
        pass
    buffers = [t for t in vars(cache).values() if isinstance(t, torch.Tensor) and t.dim() == 4]
    if not buffers or any(t.shape[-2] > window for t in buffers):
        raise named("rolling_not_bounded")
    if _seq_len(cache) != 4 * window:
        raise Mistake(
            f"seq_len is {_seq_len(cache)} after {4 * window} positions.",
            "seq_len counts every position seen (absolute), not the slots in use.",
            "not_advanced",
        )


# ----------------------------------------------------------------------------- PagedKVCache


def paged_fill(PagedKVCache, rng):
    """A pool shared by three sequences, filled round-robin (a prefill each, then single tokens)
    with exactly enough blocks. Returns (cache, {seq_id: (k, v) written}, block_size, num_blocks)."""
    H, D, block_size = draw(rng, 1, 3), draw(rng, 2, 6), draw(rng, 2, 5)
    lengths = {name: draw(rng, 1, 3 * block_size) for name in ("a", "b", "c")}
    num_blocks = sum(-(-n // block_size) for n in lengths.values())
    cache = PagedKVCache(num_blocks, block_size, H, D)
    update = guarded(cache.update, "PagedKVCache", FORBIDDEN)
    written = {name: (torch.zeros(H, 0, D), torch.zeros(H, 0, D)) for name in lengths}
    prompt = {name: draw(rng, 1, n) for name, n in lengths.items()}
    while any(written[name][0].shape[1] < n for name, n in lengths.items()):
        for name, n in lengths.items():
            done = written[name][0].shape[1]
            step = prompt[name] if done == 0 else min(1, n - done)
            if step == 0:
                continue
            k, v = randn((H, step, D), rng), randn((H, step, D), rng)
            written[name] = (
                torch.cat([written[name][0], k], 1),
                torch.cat([written[name][1], v], 1),
            )
            try:
                result = update(name, k, v)
            except Mistake as mistake:
                # Too few blocks: an index past the table. Too many: a pool sized exactly runs dry.
                if isinstance(mistake.__cause__, (IndexError, ValueError)):
                    raise Mistake(
                        f"update({name!r}, ...) raised {type(mistake.__cause__).__name__}"
                        f" though the pool has exactly the blocks needed: "
                        f"{mistake.__cause__}",
                        HINTS["block_table_off_by_one"][1],
                        "block_table_off_by_one",
                    )
                raise
            expect_gathered(result, written[name], block_size, f"update({name!r}, ...)")
    return cache, written, block_size, num_blocks


def expect_gathered(result, reference, block_size, what):
    """(k, v) equal to the reference, with the mistakes a block layout makes named."""
    if not isinstance(result, (tuple, list)) or len(result) != 2:
        raise Mistake(
            f"{what} should return (k, v), got {type(result).__name__}.",
            "return the sequence's gathered K and V.",
            "wrong_shape",
        )
    for got, ref, name in zip(result, reference, "kv"):
        if (
            isinstance(got, torch.Tensor)
            and got.dim() == 3
            and got.shape[1] > ref.shape[1]
            and got.shape[1] % block_size == 0
        ):
            raise named("gather_not_cropped")
        expect_tensor(got, f"{name} from {what}", ref.shape, torch.float32)
        if not torch.equal(got, ref):
            raise named("wrong_block_for_position")


def paged_gather_equals_contiguous(PagedKVCache, rng):
    """three sequences share one pool; each update and gather equals that sequence's torch.cat"""
    cache, written, block_size, _ = paged_fill(PagedKVCache, rng)
    gather = guarded(cache.gather, "PagedKVCache", FORBIDDEN)
    for name, reference in written.items():
        expect_gathered(gather(name), reference, block_size, f"gather({name!r})")


def expect_owned_once(cache, num_blocks):
    """Every block is in exactly one place: one sequence's table, or the free list."""
    owners = [block for table in cache.block_tables.values() for block in table] + list(cache.free)
    if sorted(owners) != list(range(num_blocks)):
        raise named("blocks_shared") if len(owners) >= num_blocks else named("blocks_not_freed")


def paged_block_tables(PagedKVCache, rng):
    """each table holds ceil(length / block_size) blocks, and every block has one owner"""
    cache, written, block_size, num_blocks = paged_fill(PagedKVCache, rng)
    for name, (k, _) in written.items():
        table = cache.block_tables[name]
        if len(table) != -(-k.shape[1] // block_size):
            raise Mistake(
                f"sequence {name!r} of {k.shape[1]} positions has {len(table)} blocks "
                f"of {block_size}.",
                HINTS["block_table_off_by_one"][1],
                "block_table_off_by_one",
            )
    expect_owned_once(cache, num_blocks)


def paged_free_and_reuse(PagedKVCache, rng):
    """free_sequence returns the blocks; a new sequence reuses them; the others are untouched"""
    cache, written, block_size, num_blocks = paged_fill(PagedKVCache, rng)
    freed = list(cache.block_tables["b"])
    guarded(cache.free_sequence, "PagedKVCache", FORBIDDEN)("b")
    if "b" in cache.block_tables or sorted(cache.free) != sorted(freed):
        raise named("blocks_not_freed")
    expect_owned_once(cache, num_blocks)
    H, length, D = written["b"][0].shape
    k, v = randn((H, length, D), rng), randn((H, length, D), rng)
    expect_gathered(
        guarded(cache.update, "PagedKVCache", FORBIDDEN)("d", k, v),
        (k, v),
        block_size,
        "update('d', ...) after freeing 'b'",
    )
    gather = guarded(cache.gather, "PagedKVCache", FORBIDDEN)
    for name in ("a", "c"):
        expect_gathered(gather(name), written[name], block_size, f"gather({name!r})")


def paged_full_pool_errors(PagedKVCache, rng):
    """a pool with no free block left raises ValueError, not an overwrite"""
    cache, written, block_size, _ = paged_fill(PagedKVCache, rng)
    H, _, D = written["a"][0].shape
    k = randn((H, block_size, D), rng)
    expect_value_error(
        lambda: guarded(cache.update, "PagedKVCache", FORBIDDEN)("a", k, k),
        "update on a full pool",
        "no_error_for_bad_update",
    )


EXERCISES = {
    "KVCache": Exercise(
        checks=[
            cache_prefill_then_decode,
            cache_seq_len_and_reset,
            cache_is_preallocated,
            cache_clear_errors,
        ],
        forbidden=FORBIDDEN,
    ),
    "cached_attention": Exercise(
        checks=[attention_prefill_after_cache, attention_prefill_square, attention_decode_one],
        forbidden=ATTENTION_FORBIDDEN,
    ),
    "generate": Exercise(
        checks=[generate_without_cache, generate_with_cache, generate_rope_model],
        forbidden=GENERATE_FORBIDDEN,
    ),
    "kv_cache_bytes": Exercise(
        checks=[bytes_every_dtype, bytes_match_real_buffers], forbidden=FORBIDDEN
    ),
    "RollingKVCache": Exercise(
        checks=[
            rolling_positions_are_absolute,
            rolling_equals_window_attention,
            rolling_is_bounded,
        ],
        forbidden=FORBIDDEN,
    ),
    "PagedKVCache": Exercise(
        checks=[
            paged_gather_equals_contiguous,
            paged_block_tables,
            paged_free_and_reuse,
            paged_full_pool_errors,
        ],
        forbidden=FORBIDDEN,
    ),
}
