# ---
# jupyter:
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
#   language_info:
#     name: python
# ---

# %% nbgrader={"grade": false, "grade_id": "install", "locked": true, "schema_version": 3, "solution": false, "task": false}
# Installs the course where it is missing (Colab, a JupyterHub without it): about a minute, once
# per runtime. Where the course is installed, this cell does nothing. pip adds only what is
# missing, and the course asks for no newer Jupyter than hosted runtimes have (ipykernel,
# notebook, IPython stay as they are).
import importlib.metadata
import subprocess
import sys

try:
    importlib.metadata.version("attention-from-scratch")
except importlib.metadata.PackageNotFoundError:
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "attention-from-scratch"], check=True
    )
    importlib.invalidate_caches()  # so that the next cells find what was just installed

# %% [markdown]
# # Day 4 · The KV cache: incremental decoding
#
# [Open in Colab](https://colab.research.google.com/github/attention-from-scratch/attention-from-scratch/blob/main/exercises/day04-kv-cache/day04-kv-cache.ipynb)
#
# **What you will build.**
#
# 1. `KVCache`: preallocated `(batch, kv_heads, max_seq_len, head_dim)` buffers that `update(k_new, v_new)` appends to (a whole prompt or one token alike);
# 2. `cached_attention(q, k_all, v_all)`: new queries against the cache, with the bottom-right causal offset of day 2;
# 3. `generate(model, prompt_ids, max_new_tokens, use_cache=True)`: greedy decoding, the same tokens with and without the cache;
# 4. `kv_cache_bytes(...)`: what the cache costs, and what MQA and GQA save;
# 5. `RollingKVCache(..., window)`: a ring buffer for sliding-window models that keeps absolute positions.
# 6. `PagedKVCache` (advanced): fixed-size blocks in one shared pool, a free list and a block table per sequence.
#
# Then you step through decoding with an explorer and measure cached against uncached generation.
#
# **Prerequisites.** Day 1 (attention), day 2 (bottom-right causal masks), day 3 (heads, GQA, RoPE).
# **Time.** About 3 hours.
#
# **How this notebook works.** Replace each `raise NotImplementedError()` with your code and run the check cell below it: ✓ or ✗ per check, and for a ✗ the name of the mistake and a hint. Grading reruns the same checks, and hidden ones draw new random sizes.
#
# **Not allowed inside your functions:** the course's own `course.reference.kv_cache` (the library version for later days), and in `cached_attention` also `F.scaled_dot_product_attention` and `course.reference.masks`. `torch.softmax` is fine today.

# %% nbgrader={"grade": false, "grade_id": "setup", "locked": true, "schema_version": 3, "solution": false, "task": false}
import math
import time

import matplotlib.pyplot as plt
import torch
import torch.nn.functional as F

import course
from course.explore.kv_cache import CacheExplorer
from course.reference.kv_cache import CachedDecoder
from course.models.tiny_transformer import TinyTransformer, make_batch, train
from grader import check

device = course.get_device()
course.seed_everything(0)
print(course.describe_device())


# %% [markdown]
# ## 1. Why cache?
#
# A decoder generates one token at a time. At step $t$ it needs attention of the newest query $q_t$ over all keys and values so far:
#
# $$\operatorname{out}_t = \sum_{j \le t} \operatorname{softmax}_j\!\left(\frac{q_t \cdot k_j}{\sqrt d}\right) v_j .$$
#
# The keys $k_j = x_j W_K$ and values $v_j = x_j W_V$ of earlier tokens never change (the model is causal), so recomputing them every step is waste: step $t$ would cost $O(t)$ projections, and generating $n$ tokens $O(n^2)$. A **KV cache** stores every layer's $k_j, v_j$ once; each step computes only the new token's $q, k, v$, appends $k, v$, and attends over the cache.
#
# Preallocate the whole buffer once (`torch.zeros(B, H_kv, max_seq_len, D)`) and write into it: appending with `torch.cat` every step would copy the whole cache each time, $O(n^2)$ bytes moved. The filled part is a *view*, `k[:, :, :seq_len]`.
#
# ### Exercise 1: `KVCache`
#
# The checks recognise: `seq_len` not advanced, every update written at position 0 (or at another offset than `seq_len`, e.g. `seq_len` advanced before the write), the whole buffer returned instead of the filled prefix (or a prefix one position too long or short), the keys written into the value buffer, `reset()` that keeps the length (or the old keys, when the cache grows with `torch.cat`), buffers that are not preallocated (or copies instead of views), and no `ValueError` on overflow or on a batch, head, head_dim, dtype or device that is not the cache's (or a `ValueError` for a valid update, e.g. a device kept as `None` or `'cpu'`); also `seq_len` never set in `__init__`, kept as a tensor instead of an int or advanced by `head_dim` (`k_new.shape[-1]`), and `k_new` or `v_new` changed in place.

# %% nbgrader={"grade": false, "grade_id": "KVCache", "locked": false, "schema_version": 3, "solution": true, "task": false}
class KVCache:
    """A preallocated K/V cache for one attention layer (Hugging Face names: update, get_seq_length).

    KVCache(batch_size, num_heads, head_dim, max_seq_len, dtype=torch.float32, device=None):
    allocate self.k and self.v, zeros of shape (batch_size, num_heads, max_seq_len, head_dim)
    in `dtype` on `device`, once. num_heads is the number of K/V heads (fewer than the query
    heads with GQA/MQA). self.seq_len (int) counts the positions written, starting at 0.
    device=None means torch's default device: keep the device the buffers are really on,
    self.device = self.k.device (a torch.device; the string "cpu" never equals one).

    update(k_new, v_new): (B, H, L_new, D) each, L_new >= 1 (a whole prompt or one token).
    Writes them at positions seq_len .. seq_len + L_new - 1, advances seq_len, and returns
    (k_all, v_all): *views* self.k[:, :, :seq_len], self.v[:, :, :seq_len].
    Raises ValueError on overflow (seq_len + L_new > max_seq_len) and when B, H, D, the dtype
    or the device is not the cache's. get_seq_length() returns seq_len; reset() sets it to 0.
    """
    def __init__(self, batch_size, num_heads, head_dim, max_seq_len, dtype=torch.float32, device=None):
        ### BEGIN SOLUTION
        self.batch_size, self.num_heads, self.head_dim = batch_size, num_heads, head_dim
        self.max_seq_len, self.dtype = max_seq_len, dtype
        shape = (batch_size, num_heads, max_seq_len, head_dim)
        self.k = torch.zeros(shape, dtype=dtype, device=device)
        self.v = torch.zeros(shape, dtype=dtype, device=device)
        self.device = self.k.device                     # a torch.device, whatever `device` was
        self.seq_len = 0
        ### END SOLUTION

    def update(self, k_new, v_new):
        ### BEGIN SOLUTION
        if k_new.shape != v_new.shape or k_new.dim() != 4:
            raise ValueError(f"k_new and v_new must be (B, H, L, D) alike, got "
                             f"{tuple(k_new.shape)}, {tuple(v_new.shape)}")
        B, H, n, D = k_new.shape
        if (B, H, D) != (self.batch_size, self.num_heads, self.head_dim):
            raise ValueError(f"cache is batch {self.batch_size}, {self.num_heads} heads, "
                             f"head_dim {self.head_dim}; got {tuple(k_new.shape)}")
        if k_new.dtype != self.dtype or v_new.dtype != self.dtype or k_new.device != self.device:
            raise ValueError(f"cache holds {self.dtype} on {self.device}, got {k_new.dtype} on {k_new.device}")
        start, stop = self.seq_len, self.seq_len + n
        if stop > self.max_seq_len:
            raise ValueError(f"overflow: {start} + {n} > max_seq_len={self.max_seq_len}")
        self.k[:, :, start:stop] = k_new
        self.v[:, :, start:stop] = v_new
        self.seq_len = stop
        return self.k[:, :, :stop], self.v[:, :, :stop]
        ### END SOLUTION

    def get_seq_length(self):
        ### BEGIN SOLUTION
        return self.seq_len
        ### END SOLUTION

    def reset(self):
        ### BEGIN SOLUTION
        self.seq_len = 0
        ### END SOLUTION


# %%
cache = KVCache(1, 2, 4, max_seq_len=8)
k_all, v_all = cache.update(torch.randn(1, 2, 3, 4), torch.randn(1, 2, 3, 4))  # prefill 3
k_all, v_all = cache.update(torch.randn(1, 2, 1, 4), torch.randn(1, 2, 1, 4))  # decode 1
print(cache.seq_len, tuple(k_all.shape))  # 4 (1, 2, 4, 4)

# %% nbgrader={"grade": true, "grade_id": "check_KVCache", "locked": true, "points": 2, "schema_version": 3, "solution": false, "task": false}
check("day04-kv-cache", "KVCache", KVCache, points=2)

# %% nbgrader={"grade": true, "grade_id": "hidden_KVCache", "locked": true, "points": 1, "schema_version": 3, "solution": false, "task": false}
# When your notebook is graded, hidden tests run here: the same checks on fresh random shapes.
### BEGIN HIDDEN TESTS
check("day04-kv-cache", "KVCache", KVCache, hidden=True, points=1)
### END HIDDEN TESTS

# %% [markdown]
# ## 2. New queries against the cache
#
# During prefill the prompt's $L$ queries meet $L$ keys: ordinary causal attention. During decode one query meets all $L_k$ cached keys. In between (a chunk of $L_q$ new tokens after $L_k - L_q$ cached ones, as in chunked prefill or speculative decoding) query $i$ is the token at absolute position $L_k - L_q + i$, and it may see keys $j \le L_k - L_q + i$: the **bottom-right** causal mask of day 2. The top-left mask ($j \le i$) would hide most of the cache from the new tokens.
#
# For $L_q = 2, L_k = 4$ (█ = may attend):
#
# ```
# bottom-right (right)     top-left (wrong)
# ███.                     █...
# ████                     ██..
# ```
#
# ### Exercise 2: `cached_attention`
#
# The checks recognise: a top-left causal mask, no causal mask at all, a mask that hides the diagonal, an inverted mask (each query sees the later keys, with or without its own, filled with `-inf` or `torch.finfo(dtype).min`), a mask that leaves a query no key (e.g. the offset $L_k - L_q$ with the wrong sign), a mask of another shape than $(L_q, L_k)$ (e.g. transposed with `.T`), a softmax over the queries instead of the keys, a missing $1/\sqrt d$ (or $1/d$, or $1/\sqrt L$ instead), the weights multiplied by the keys instead of the values, `q`, `k` or `v` changed in place, and a mask filled with `-1e9` (float16 cannot hold it: fill with `-inf` or `torch.finfo(dtype).min`).

# %% nbgrader={"grade": false, "grade_id": "cached_attention", "locked": false, "schema_version": 3, "solution": true, "task": false}
def cached_attention(q, k, v):
    """Attention of Lq new queries over Lk >= Lq cached keys, causal and bottom-right aligned.

    q: (B, H, Lq, D); k, v: (B, H, Lk, D), same dtype. Query i sits at position Lk - Lq + i and
    sees keys j <= Lk - Lq + i. Returns out (B, H, Lq, D) in q's dtype.
    Forbidden: F.scaled_dot_product_attention, course.reference.masks, course.reference.kv_cache.
    """
    ### BEGIN SOLUTION
    lq, lk = q.shape[-2], k.shape[-2]
    query_pos = torch.arange(lk - lq, lk, device=q.device).unsqueeze(-1)   # (Lq, 1)
    allowed = torch.arange(lk, device=q.device) <= query_pos               # (Lq, Lk)
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])              # (B, H, Lq, Lk)
    scores = scores.masked_fill(~allowed, float("-inf"))
    return torch.softmax(scores, dim=-1) @ v
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "check_cached_attention", "locked": true, "points": 2, "schema_version": 3, "solution": false, "task": false}
check("day04-kv-cache", "cached_attention", cached_attention, points=2)

# %% nbgrader={"grade": true, "grade_id": "hidden_cached_attention", "locked": true, "points": 1, "schema_version": 3, "solution": false, "task": false}
# When your notebook is graded, hidden tests run here: the same checks on fresh random shapes.
### BEGIN HIDDEN TESTS
check("day04-kv-cache", "cached_attention", cached_attention, hidden=True, points=1)
### END HIDDEN TESTS

# %% [markdown]
# ## 3. Greedy generation with and without the cache
#
# The course gives you the model: `CachedDecoder(tiny)` runs a `TinyTransformer`'s own weights either way (it stands on the library `course.reference.kv_cache`, so today does not need your answers):
#
# - `model(ids)` with `ids` `(B, L)`: logits `(B, L, vocab)` for the whole sequence, no cache;
# - `caches = model.init_caches(batch_size, max_seq_len)`: one cache per layer;
# - `model(new_ids, caches)`: `new_ids` are only the **new** tokens, placed at positions `caches[0].seq_len` onward; every layer appends its new K and V to its cache and attends over all of it.
#
# Greedy decoding appends $\arg\max$ of the logits at the last position. With the cache: one prefill call with the whole prompt, then one call per new token.
#
# ### Exercise 3: `generate`
#
# With `use_cache=False` no cache is made or passed: every step runs `model(ids)` on the whole sequence, the brute-force baseline the cache is compared with.
#
# The checks recognise: other tokens than greedy decoding's (e.g. the logits at position 0 instead of the last, or a decode step fed another token than the one just generated), only the new tokens returned without the prompt, another number of new tokens than `max_new_tokens`, a next token of shape `(B,)` instead of `(B, 1)` or concatenated along the wrong axis, `use_cache=True` that still feeds the whole sequence every step, caches not made with `model.init_caches` or too short for the prompt and the new tokens, a prefill or decode steps called without the caches, and caches made or passed when `use_cache=False`.

# %% nbgrader={"grade": false, "grade_id": "generate", "locked": false, "schema_version": 3, "solution": true, "task": false}
@torch.no_grad()
def generate(model, prompt_ids, max_new_tokens, use_cache=True):
    """Greedy decoding. prompt_ids (B, L) LongTensor -> (B, L + max_new_tokens) LongTensor:
    the prompt followed by the new tokens.

    model(ids) -> logits (B, L, V); with use_cache=True use caches = model.init_caches(B,
    L + max_new_tokens), call model(prompt_ids, caches) once (prefill), then model(next_id,
    caches) with the newest token only (B, 1). The last new token needs no model call after it
    (one more call is harmless). Forbidden: course.reference.kv_cache.generate.
    """
    ### BEGIN SOLUTION
    ids = prompt_ids
    if not use_cache:
        for _ in range(max_new_tokens):
            next_id = model(ids)[:, -1].argmax(-1, keepdim=True)
            ids = torch.cat([ids, next_id], dim=1)
        return ids
    caches = model.init_caches(ids.shape[0], ids.shape[1] + max_new_tokens)
    logits = model(ids, caches)
    for step in range(max_new_tokens):
        next_id = logits[:, -1].argmax(-1, keepdim=True)
        ids = torch.cat([ids, next_id], dim=1)
        if step + 1 < max_new_tokens:
            logits = model(next_id, caches)
    return ids
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "check_generate", "locked": true, "points": 2, "schema_version": 3, "solution": false, "task": false}
check("day04-kv-cache", "generate", generate, points=2)

# %% nbgrader={"grade": true, "grade_id": "hidden_generate", "locked": true, "points": 1, "schema_version": 3, "solution": false, "task": false}
# When your notebook is graded, hidden tests run here: the same checks on fresh random shapes.
### BEGIN HIDDEN TESTS
check("day04-kv-cache", "generate", generate, hidden=True, points=1)
### END HIDDEN TESTS

# %% [markdown]
# A model that knows a task: train the tiny transformer to reverse 8 digits (a few seconds), then decode the answer after the separator with your `generate`, both ways.

# %%
steps = 30 if course.being_graded() else 300  # graded: no points here
result = train("reverse", steps=steps)
model = CachedDecoder(result.model)
batch = make_batch("reverse", 4, 8, torch.Generator().manual_seed(1))
prompt = batch[:, :9]                                     # digits and the separator
with_cache = generate(model, prompt, 8, use_cache=True)
without = generate(model, prompt, 8, use_cache=False)
print("same tokens:", torch.equal(with_cache, without), " correct answers:",
      torch.equal(with_cache[:, 9:], batch[:, 9:]))
with torch.no_grad():
    caches = model.init_caches(4, 17)
    full = model(with_cache[:, :-1])
    step_logits = [model(prompt, caches)[:, -1]] + [model(with_cache[:, t:t + 1], caches)[:, -1] for t in range(9, 16)]
print("largest logit difference, cached vs full:", (torch.stack(step_logits, 1) - full[:, 8:]).abs().max().item())


# %% [markdown]
# ## 4. What the cache costs
#
# Every layer stores K and V for every position of every sequence:
#
# $$\text{bytes} = 2 \cdot \text{layers} \cdot H_{kv} \cdot d_{head} \cdot L \cdot B \cdot \text{bytes per element}.$$
#
# Multi-query attention ($H_{kv} = 1$) and grouped-query attention ($H_{kv} < H$) shrink it by $H / H_{kv}$.
#
# Bytes per element come from torch, for every dtype: a tensor's `element_size()` is an int (`torch.empty((), dtype=torch.bfloat16).element_size()` is 2, int8 gives 1), and so is `dtype.itemsize` (`torch.float32.itemsize` is 4). `torch.finfo(dtype).bits` gives *bits*, and only for floating dtypes (`torch.iinfo` for integers).
#
# ### Exercise 4: `kv_cache_bytes`
#
# The checks recognise: a fixed number of bytes per element whatever the dtype (or a size worked out for some dtypes only: `torch.finfo` refuses int8), K or V counted alone, another factor missing, bits instead of bytes, and GiB or GB instead of bytes.

# %% nbgrader={"grade": false, "grade_id": "kv_cache_bytes", "locked": false, "schema_version": 3, "solution": true, "task": false}
def kv_cache_bytes(num_layers, num_kv_heads, head_dim, seq_len, batch_size, dtype):
    """Bytes of a full KV cache: 2 * layers * kv_heads * head_dim * seq_len * batch * element size
    of `dtype` (4 for float32, 2 for float16/bfloat16, 1 for int8). Returns an int."""
    ### BEGIN SOLUTION
    element = torch.empty((), dtype=dtype).element_size()
    return 2 * num_layers * num_kv_heads * head_dim * seq_len * batch_size * element
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "check_kv_cache_bytes", "locked": true, "points": 2, "schema_version": 3, "solution": false, "task": false}
check("day04-kv-cache", "kv_cache_bytes", kv_cache_bytes, points=2)

# %% nbgrader={"grade": true, "grade_id": "hidden_kv_cache_bytes", "locked": true, "points": 1, "schema_version": 3, "solution": false, "task": false}
# When your notebook is graded, hidden tests run here: the same checks on fresh random shapes.
### BEGIN HIDDEN TESTS
check("day04-kv-cache", "kv_cache_bytes", kv_cache_bytes, hidden=True, points=1)
### END HIDDEN TESTS

# %%
cache = KVCache(2, 4, 16, 32, dtype=torch.float16)
print("formula", kv_cache_bytes(1, 4, 16, 32, 2, torch.float16), "buffers",
      cache.k.numel() * cache.k.element_size() * 2)
# (layers, query heads, kv heads, head_dim) from the models' published configs
shapes = {"GPT-2 small (MHA)": (12, 12, 12, 64), "Llama-2 7B (MHA)": (32, 32, 32, 128),
          "Llama-2 70B (GQA 8)": (80, 64, 8, 128), "Mistral 7B (GQA 8)": (32, 32, 8, 128),
          "Falcon 7B (MQA)": (32, 71, 1, 64)}
print(f"{'model':>20} {'layers':>6} {'H':>3} {'Hkv':>4} {'d':>4} {'GiB, 4k tokens fp16':>20} {'as MHA':>8}")
for name, (layers, heads, kv, d) in shapes.items():
    got = kv_cache_bytes(layers, kv, d, 4096, 1, torch.float16) / 2**30
    mha = kv_cache_bytes(layers, heads, d, 4096, 1, torch.float16) / 2**30
    print(f"{name:>20} {layers:>6} {heads:>3} {kv:>4} {d:>4} {got:>20.2f} {mha:>8.2f}")


# %% [markdown]
# ## 5. A rolling cache for sliding windows
#
# Mistral attends only the last $w$ tokens. Then the cache needs only $w$ slots: a ring buffer where position $p$ lives in slot $p \bmod w$. The slots no longer say where a key came from, so the cache must hand back each key's **absolute** position: RoPE was applied at that position, and the window mask compares positions ($0 \le p_q - p_k < w$).
#
# ### Exercise 5: `RollingKVCache`
#
# After a wrap the new positions land in the slots of old positions the same update still returns, so read those old keys (as copies: slices of the ring are views) before writing the new ones.
#
# The checks recognise: positions that restart (slot numbers instead of absolute positions), keys that do not match their positions, missing or extra keys, old keys overwritten by the update before they were read, a cache that grows past $w$ slots, several new keys written into one slot at once (a scatter with repeated indices, whose result torch leaves undefined), `seq_len` not counting every position, a triple in another order than `(k, v, positions)`, and `k_new` or `v_new` changed in place.

# %% nbgrader={"grade": false, "grade_id": "RollingKVCache", "locked": false, "schema_version": 3, "solution": true, "task": false}
class RollingKVCache:
    """A ring buffer of `window` slots for sliding-window attention.

    RollingKVCache(batch_size, num_heads, head_dim, window, dtype=torch.float32, device=None):
    self.k, self.v of shape (B, H, window, D); position p lives in slot p % window;
    self.seq_len counts every position seen.

    update(k_new, v_new) with (B, H, L_new, D) -> (k, v, positions): the keys and values the new
    queries need, i.e. those at absolute positions max(0, start - window + 1) .. start + L_new - 1
    (start = seq_len before the update), and `positions`, a LongTensor of those absolute positions
    in the same order as the keys. Then the new keys and values are written into their slots
    (only the last `window` of them when L_new > window: the earlier ones would be overwritten).
    """
    def __init__(self, batch_size, num_heads, head_dim, window, dtype=torch.float32, device=None):
        ### BEGIN SOLUTION
        self.window, self.dtype = window, dtype
        self.k = torch.zeros(batch_size, num_heads, window, head_dim, dtype=dtype, device=device)
        self.v = torch.zeros_like(self.k)
        self.seq_len = 0
        ### END SOLUTION

    def update(self, k_new, v_new):
        ### BEGIN SOLUTION
        start, n = self.seq_len, k_new.shape[-2]
        kept = torch.arange(max(0, start - self.window + 1), start)          # still in the window
        positions = torch.cat([kept, torch.arange(start, start + n)])
        k = torch.cat([self.k[:, :, kept % self.window], k_new], dim=-2)
        v = torch.cat([self.v[:, :, kept % self.window], v_new], dim=-2)
        stay = positions[-self.window:]
        self.k[:, :, stay % self.window] = k[:, :, -len(stay):]
        self.v[:, :, stay % self.window] = v[:, :, -len(stay):]
        self.seq_len = start + n
        return k, v, positions
        ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "check_RollingKVCache", "locked": true, "points": 2, "schema_version": 3, "solution": false, "task": false}
check("day04-kv-cache", "RollingKVCache", RollingKVCache, points=2)

# %% nbgrader={"grade": true, "grade_id": "hidden_RollingKVCache", "locked": true, "points": 1, "schema_version": 3, "solution": false, "task": false}
# When your notebook is graded, hidden tests run here: the same checks on fresh random shapes.
### BEGIN HIDDEN TESTS
check("day04-kv-cache", "RollingKVCache", RollingKVCache, hidden=True, points=1)
### END HIDDEN TESTS

# %% [markdown]
# ## 6. Explore: step through decoding
#
# Each step of the slider is one generated token: the left panel shows layer 0's K buffer (your `KVCache` is the cache here), filled row by row up to the red line; the right panel the newest query's attention over the cache, and the title the bytes cached so far.

# %%
explorer = CacheExplorer(model, prompt[0], max_new_tokens=8, cache_factory=KVCache)
explorer.step.value = 7
explorer

# %% [markdown]
# ## 7. Measure: cached against uncached generation
#
# Without the cache every step reruns the whole sequence, so the time per token grows with the position; with it every step runs one token, flat. The script `python -m course.bench.kv_cache` does the same with 256 new tokens and checks the target (at least 5x faster, identical tokens).

# %%
from course.bench.kv_cache import build, timed_generate
new_tokens = 256 if device.type == "cpu" else 512
new_tokens = 16 if course.being_graded() else new_tokens  # graded: no points here
bench = build(d_model=256, num_layers=4, max_len=16 + new_tokens)
bench_prompt = torch.randint(0, 11, (1, 16), generator=torch.Generator().manual_seed(0))
threads = torch.get_num_threads()
torch.set_num_threads(1)
cached_ids, t_cached = timed_generate(bench, bench_prompt, new_tokens, True)
plain_ids, t_plain = timed_generate(bench, bench_prompt, new_tokens, False)
torch.set_num_threads(threads)
print(f"no cache {sum(t_plain):.2f} s, KV cache {sum(t_cached):.2f} s: "
      f"{sum(t_plain) / sum(t_cached):.1f}x faster, same tokens: {torch.equal(cached_ids, plain_ids)}")
positions = range(16, 16 + new_tokens)
plt.figure(figsize=(6, 3.5))
plt.plot(positions, [1e3 * t for t in t_plain], label="no cache")
plt.plot(positions, [1e3 * t for t in t_cached], label="KV cache")
plt.xlabel("position"); plt.ylabel("ms per token"); plt.legend(); plt.show()


# %% [markdown]
# ## 8. Advanced: a paged KV cache
#
# A server decodes many sequences of different, unknown lengths. Preallocating `max_seq_len` for each wastes most of the memory. vLLM's **PagedAttention** splits the cache into fixed-size blocks in one shared pool. A free list hands out blocks as a sequence grows, and a per-sequence **block table** maps position $p$ to block `table[p // block_size]`, offset `p % block_size`. A sequence of $L$ positions holds $\lceil L / \text{block\_size} \rceil$ blocks, and a finished sequence returns them.
#
# Tiny example: with `block_size = 4`, a sequence of 7 positions whose table is `[5, 2]` keeps positions 0–3 in block 5 and positions 4–6 in block 2, offsets 0–2; one slot of block 2 is unused, and `gather` must crop it.
#
# ### Exercise 6: `PagedKVCache`
#
# The checks recognise: a block table one block short or long (or a new sequence's table never stored in `self.block_tables`), positions in the wrong block or offset (e.g. a chunk that crosses a block boundary written into one block), the keys written into the value blocks, a gather that keeps the unused tail of the last block (or returns `(L, num_heads, head_dim)`), a block owned twice, a `free_sequence` that loses blocks or keeps the sequence's table or length (a freed id reused must start at position 0), a full pool that does not raise `ValueError`, and blocks taken before that `ValueError` and never given back.

# %% nbgrader={"grade": false, "grade_id": "PagedKVCache", "locked": false, "schema_version": 3, "solution": true, "task": false}
class PagedKVCache:
    """One pool of `num_blocks` blocks of `block_size` positions, shared by many sequences.

    PagedKVCache(num_blocks, block_size, num_heads, head_dim, dtype=torch.float32, device=None):
    self.k, self.v: (num_blocks, num_heads, block_size, head_dim) pools;
    self.free: list of free block ids (all of them at the start);
    self.block_tables: dict seq_id -> list of block ids, in position order.

    update(seq_id, k_new, v_new) with (num_heads, L_new, head_dim): append to sequence seq_id
    (new or not), taking blocks from self.free as needed (ValueError when too few are free), and
    return gather(seq_id). gather(seq_id) -> (k, v), each (num_heads, L, head_dim), the
    sequence's positions in order (keep each sequence's length: its last block may be only partly
    filled). free_sequence(seq_id): give its blocks back to self.free and forget the sequence.
    Not allowed: course.reference.kv_cache.
    """
    def __init__(self, num_blocks, block_size, num_heads, head_dim, dtype=torch.float32, device=None):
        ### BEGIN SOLUTION
        self.block_size = block_size
        self.k = torch.zeros(num_blocks, num_heads, block_size, head_dim, dtype=dtype, device=device)
        self.v = torch.zeros_like(self.k)
        self.free = list(range(num_blocks))
        self.block_tables, self.lengths = {}, {}
        ### END SOLUTION

    def update(self, seq_id, k_new, v_new):
        ### BEGIN SOLUTION
        table = self.block_tables.setdefault(seq_id, [])
        start = self.lengths.get(seq_id, 0)
        stop = start + k_new.shape[1]
        missing = -(-stop // self.block_size) - len(table)                  # ceil(stop / bs) - held
        if missing > len(self.free):
            raise ValueError(f"pool full: {seq_id!r} needs {missing} blocks, {len(self.free)} free")
        table.extend(self.free.pop() for _ in range(missing))
        for position in range(start, stop):
            block, offset = table[position // self.block_size], position % self.block_size
            self.k[block, :, offset] = k_new[:, position - start]
            self.v[block, :, offset] = v_new[:, position - start]
        self.lengths[seq_id] = stop
        return self.gather(seq_id)
        ### END SOLUTION

    def gather(self, seq_id):
        ### BEGIN SOLUTION
        table, length = self.block_tables[seq_id], self.lengths[seq_id]
        k = torch.cat([self.k[block] for block in table], dim=1)[:, :length]  # (H, L, D)
        v = torch.cat([self.v[block] for block in table], dim=1)[:, :length]
        return k, v
        ### END SOLUTION

    def free_sequence(self, seq_id):
        ### BEGIN SOLUTION
        self.free.extend(self.block_tables.pop(seq_id))
        del self.lengths[seq_id]
        ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "check_PagedKVCache", "locked": true, "points": 2, "schema_version": 3, "solution": false, "task": false}
check("day04-kv-cache", "PagedKVCache", PagedKVCache, points=2)

# %% nbgrader={"grade": true, "grade_id": "hidden_PagedKVCache", "locked": true, "points": 1, "schema_version": 3, "solution": false, "task": false}
# When your notebook is graded, hidden tests run here: the same checks on fresh random shapes.
### BEGIN HIDDEN TESTS
check("day04-kv-cache", "PagedKVCache", PagedKVCache, hidden=True, points=1)
### END HIDDEN TESTS

# %% [markdown]
# Three sequences share one pool of 16 blocks; gathering each equals its contiguous K, and freeing one gives its blocks back:

# %%
paged = PagedKVCache(num_blocks=16, block_size=4, num_heads=2, head_dim=8)
contiguous = {}
for seq_id, length in [("a", 7), ("b", 13), ("c", 2)]:
    k, v = torch.randn(2, length, 8), torch.randn(2, length, 8)
    paged.update(seq_id, k[:, :3], v[:, :3])
    k_all, v_all = paged.update(seq_id, k[:, 3:], v[:, 3:])
    contiguous[seq_id] = k
    print(seq_id, "block table", paged.block_tables[seq_id], "equal:", torch.equal(k_all, k))
paged.free_sequence("b")
print("free blocks after freeing b:", len(paged.free))

# %% [markdown]
# ## Recap
#
# - The cache trades memory for compute: $O(1)$ new projections per token instead of $O(t)$, at $2 \cdot \text{layers} \cdot H_{kv} \cdot d \cdot L \cdot B$ elements.
# - New queries are the newest positions: bottom-right causal alignment, the same code for prefill and decode.
# - GQA/MQA divide the cache by $H / H_{kv}$; sliding windows bound it by $w$ (with absolute positions kept); paging removes fragmentation.
#
# ## Further reading
#
# - Pope et al., *Efficiently Scaling Transformer Inference* (2022).
# - Shazeer, *Fast Transformer Decoding: One Write-Head is All You Need* (MQA, 2019); Ainslie et al., *GQA* (2023).
# - Jiang et al., *Mistral 7B* (2023): rolling buffer cache.
# - Kwon et al., *Efficient Memory Management for LLM Serving with PagedAttention* (vLLM, 2023).
# - Hugging Face `transformers`' `cache_utils.py` (`DynamicCache`, `StaticCache`, `SlidingWindowCache`).
