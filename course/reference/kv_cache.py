"""Library versions of day 4: KV caches and a decoder that can decode with them.

Later days (and day 4's own explorer and benchmark) stand on these, never on a student's answers.
Tensors are (batch, kv_heads, seq, head_dim); positions count from 0; new queries are
bottom-right aligned against the cache (query i of Lq new ones sits at position Lk - Lq + i).

    KVCache          preallocated (B, Hkv, max_seq_len, D) buffers, update() appends
    RollingKVCache   a ring buffer of `window` slots for sliding-window attention
    PagedKVCache     fixed-size blocks in one pool, a free list and a block table per sequence
    kv_cache_bytes   2 * layers * kv_heads * head_dim * seq_len * batch * element_size
    CachedDecoder    a TinyTransformer's own weights, run with or without caches
"""

import torch
import torch.nn as nn

from course.reference import check_same_dtype
from course.reference.multihead import apply_rope, merge_heads, repeat_kv, split_heads


def kv_cache_bytes(
    num_layers: int,
    num_kv_heads: int,
    head_dim: int,
    seq_len: int,
    batch_size: int,
    dtype=torch.float16,
) -> int:
    """Bytes of K and V for every layer: 2 * layers * kv_heads * head_dim * seq_len * batch * size."""
    element = torch.empty((), dtype=dtype).element_size()
    return 2 * num_layers * num_kv_heads * head_dim * seq_len * batch_size * element


def _check_dtype(name: str, dtype: torch.dtype, k_new, v_new) -> None:
    """A cache stores what it is handed, so k_new and v_new must have its dtype (under autocast
    too: a store is not a matmul, and torch would not cast it)."""
    if k_new.dtype != dtype or v_new.dtype != dtype:
        raise ValueError(
            f"{name} holds {dtype}, got k_new {k_new.dtype} / v_new {v_new.dtype}: cast them "
            f"with .to({dtype}), or make the cache with dtype={k_new.dtype}"
        )


class _CacheBuffers:
    """Zeroed K and V buffers (B, Hkv, slots, D), a count of the positions seen, and the check
    of what update() is handed: what KVCache and RollingKVCache share."""

    def __init__(self, batch_size, num_heads, head_dim, slots, slots_name, dtype, device):
        if min(batch_size, num_heads, head_dim, slots) < 1:
            raise ValueError(f"batch_size, num_heads, head_dim and {slots_name} must be >= 1")
        self.batch_size, self.num_heads, self.head_dim, self.dtype = (
            batch_size,
            num_heads,
            head_dim,
            dtype,
        )
        self.device = torch.device("cpu") if device is None else torch.device(device)
        shape = (batch_size, num_heads, slots, head_dim)
        self.k = torch.zeros(shape, dtype=dtype, device=self.device)
        self.v = torch.zeros(shape, dtype=dtype, device=self.device)
        self.seq_len = 0  # positions seen so far (absolute)

    def _check_new(self, k_new, v_new):
        name = type(self).__name__
        if k_new.shape != v_new.shape or k_new.dim() != 4:
            raise ValueError(
                f"k_new and v_new must be (B, H, L, D) of one shape, got "
                f"{tuple(k_new.shape)} and {tuple(v_new.shape)}"
            )
        b, h, _, d = k_new.shape
        if (b, h, d) != (self.batch_size, self.num_heads, self.head_dim):
            raise ValueError(
                f"{name} holds batch {self.batch_size}, {self.num_heads} heads, "
                f"head_dim {self.head_dim}; got k_new {tuple(k_new.shape)}"
            )
        _check_dtype(name, self.dtype, k_new, v_new)
        if k_new.device != self.device or v_new.device != self.device:
            raise ValueError(f"{name} lives on {self.device}, got k_new on {k_new.device}")

    def get_seq_length(self) -> int:
        return self.seq_len

    def reset(self) -> None:
        self.seq_len = 0


class KVCache(_CacheBuffers):
    """Preallocated K and V buffers (B, Hkv, max_seq_len, D); update() appends new positions.

    update(k_new, v_new) with (B, Hkv, L_new, D) writes positions seq_len .. seq_len + L_new - 1
    and returns views (k_all, v_all) of the filled prefix, (B, Hkv, seq_len, D). Method names
    follow Hugging Face's caches (update, get_seq_length).
    """

    def __init__(
        self,
        batch_size: int,
        num_heads: int,
        head_dim: int,
        max_seq_len: int,
        dtype=torch.float32,
        device=None,
    ):
        super().__init__(batch_size, num_heads, head_dim, max_seq_len, "max_seq_len", dtype, device)
        self.max_seq_len = max_seq_len

    def update(self, k_new, v_new):
        self._check_new(k_new, v_new)
        start, stop = self.seq_len, self.seq_len + k_new.shape[-2]
        if stop > self.max_seq_len:
            raise ValueError(
                f"KVCache overflow: {start} + {k_new.shape[-2]} positions exceed "
                f"max_seq_len={self.max_seq_len}"
            )
        self.k[:, :, start:stop] = k_new
        self.v[:, :, start:stop] = v_new
        self.seq_len = stop
        return self.k[:, :, :stop], self.v[:, :, :stop]  # views of the filled prefix

    def nbytes(self) -> int:
        """Bytes of the preallocated buffers (K and V)."""
        return self.k.numel() * self.k.element_size() * 2


class RollingKVCache(_CacheBuffers):
    """A ring buffer of `window` slots: position p lives in slot p % window.

    update(k_new, v_new) -> (k, v, positions): the keys a sliding window of `window` needs for
    the new queries (the window - 1 before them that are kept, then the new ones), in
    chronological order, and their absolute positions (a LongTensor) so RoPE and the window
    mask stay right after the buffer wraps.
    """

    def __init__(
        self,
        batch_size: int,
        num_heads: int,
        head_dim: int,
        window: int,
        dtype=torch.float32,
        device=None,
    ):
        super().__init__(batch_size, num_heads, head_dim, window, "window", dtype, device)
        self.window = window

    def update(self, k_new, v_new):
        self._check_new(k_new, v_new)
        start, n = self.seq_len, k_new.shape[-2]
        kept = torch.arange(max(0, start - self.window + 1), start, device=self.device)
        slots = kept % self.window  # chronological
        k = torch.cat([self.k[:, :, slots], k_new], dim=-2)
        v = torch.cat([self.v[:, :, slots], v_new], dim=-2)
        positions = torch.cat([kept, torch.arange(start, start + n, device=self.device)])
        last = positions[-self.window :]  # what stays
        self.k[:, :, last % self.window] = k[:, :, -len(last) :]
        self.v[:, :, last % self.window] = v[:, :, -len(last) :]
        self.seq_len = start + n
        return k, v, positions


class PagedKVCache:
    """One pool of `num_blocks` blocks of `block_size` positions, shared by many sequences.

    Pool tensors are (num_blocks, Hkv, block_size, D). Each sequence owns a block table (a list
    of block ids, in order); position p of a sequence lives in block table[p // block_size] at
    offset p % block_size. Blocks come from a free list and go back to it when a sequence is
    freed.
    """

    def __init__(
        self,
        num_blocks: int,
        block_size: int,
        num_heads: int,
        head_dim: int,
        dtype=torch.float32,
        device=None,
    ):
        if min(num_blocks, block_size, num_heads, head_dim) < 1:
            raise ValueError("num_blocks, block_size, num_heads and head_dim must be >= 1")
        self.num_blocks, self.block_size = num_blocks, block_size
        self.num_heads, self.head_dim, self.dtype = num_heads, head_dim, dtype
        self.device = torch.device("cpu") if device is None else torch.device(device)
        shape = (num_blocks, num_heads, block_size, head_dim)
        self.k = torch.zeros(shape, dtype=dtype, device=self.device)
        self.v = torch.zeros(shape, dtype=dtype, device=self.device)
        self.free = list(range(num_blocks))
        self.block_tables = {}  # sequence id -> [block ids]
        self.lengths = {}  # sequence id -> positions written

    def update(self, seq_id, k_new, v_new):
        """Append (Hkv, L_new, D) to sequence `seq_id`; return its gathered (Hkv, L, D) K and V."""
        if (
            k_new.dim() != 3
            or k_new.shape != v_new.shape
            or k_new.shape[0] != self.num_heads
            or k_new.shape[-1] != self.head_dim
        ):
            raise ValueError(
                f"expected k_new, v_new ({self.num_heads}, L, {self.head_dim}), "
                f"got {tuple(k_new.shape)}"
            )
        _check_dtype("PagedKVCache", self.dtype, k_new, v_new)
        table = self.block_tables.setdefault(seq_id, [])
        start = self.lengths.get(seq_id, 0)
        stop = start + k_new.shape[1]
        needed = -(-stop // self.block_size) - len(table)
        if needed > len(self.free):
            raise ValueError(
                f"PagedKVCache is full: sequence {seq_id!r} needs {needed} more "
                f"blocks, {len(self.free)} free"
            )
        table.extend(self.free.pop(0) for _ in range(needed))
        positions = torch.arange(start, stop, device=self.device)
        blocks = torch.tensor(table, device=self.device)[positions // self.block_size]
        offsets = positions % self.block_size
        self.k[blocks, :, offsets] = k_new.transpose(0, 1)  # (L_new, Hkv, D)
        self.v[blocks, :, offsets] = v_new.transpose(0, 1)
        self.lengths[seq_id] = stop
        return self.gather(seq_id)

    def gather(self, seq_id):
        """The sequence's K and V, (Hkv, L, D), copied out of its blocks in order."""
        table, length = self.block_tables[seq_id], self.lengths[seq_id]
        k = self.k[table].transpose(0, 1).flatten(1, 2)[:, :length]  # (Hkv, L, D)
        v = self.v[table].transpose(0, 1).flatten(1, 2)[:, :length]
        return k, v

    def free_sequence(self, seq_id) -> None:
        """Return a finished sequence's blocks to the free list."""
        self.free.extend(self.block_tables.pop(seq_id))
        self.lengths.pop(seq_id)


# ----------------------------------------------------------------------------- attention with a cache


def cached_attention(q, k, v, positions_k=None, window: int = None):
    """softmax(q kᵀ/sqrt(d)) v for Lq new queries against Lk cached keys, bottom-right causal.

    q (B, H, Lq, D), k and v (B, H, Lk, D). Query i sits at position Lk - Lq + i (or, with
    `positions_k` (Lk,) absolute key positions, at positions_k[-Lq + i]); it sees keys at
    positions <= its own, and with `window` only the last `window` of them.
    Returns (out (B, H, Lq, D), weights (B, H, Lq, Lk)).
    """
    check_same_dtype("cached_attention", q=q, k=k, v=v)
    lq, lk = q.shape[-2], k.shape[-2]
    if positions_k is None:
        positions_k = torch.arange(lk, device=q.device)
    positions_q = positions_k[lk - lq :]
    distance = positions_q.unsqueeze(-1) - positions_k  # (Lq, Lk)
    allowed = distance >= 0
    if window is not None:
        allowed &= distance < window
    scores = q @ k.transpose(-2, -1) * q.shape[-1] ** -0.5  # (B, H, Lq, Lk)
    scores = scores.masked_fill(~allowed, float("-inf"))
    weights = torch.softmax(scores, dim=-1)
    return weights @ v, weights


class CachedDecoder(nn.Module):
    """A TinyTransformer's own weights, run with or without KV caches (one per layer).

    forward(ids) -> logits (B, L, V), exactly as the TinyTransformer. forward(ids, caches) with
    caches from init_caches(): ids are only the *new* tokens (B, L_new), at positions
    caches[0].seq_len onward; every layer appends its new K and V to its cache and attends over
    the whole cache. init_caches(batch_size, max_seq_len, cache_factory=KVCache) makes one cache
    per layer; cache_factory(batch_size, num_kv_heads, head_dim, max_seq_len, dtype=, device=)
    may be any class with KVCache's interface (the student's own, for example).
    last_weights holds each layer's attention weights (B, H, L_new, L_cache) of the last call.
    """

    def __init__(self, model):
        super().__init__()
        self.model = model
        first = model.blocks[0].attn
        self.num_layers, self.num_heads = len(model.blocks), first.num_heads
        self.num_kv_heads, self.head_dim = first.num_kv_heads, first.head_dim
        self.max_len, self.vocab_size = model.max_len, model.vocab_size
        self.last_weights = []

    def init_caches(self, batch_size: int, max_seq_len: int, cache_factory=KVCache):
        parameter = next(self.model.parameters())
        return [
            cache_factory(
                batch_size,
                self.num_kv_heads,
                self.head_dim,
                max_seq_len,
                dtype=parameter.dtype,
                device=parameter.device,
            )
            for _ in range(self.num_layers)
        ]

    def _attend(self, attn, x, positions, cache):
        q = split_heads(attn.q_proj(x), attn.num_heads)  # (B, H, L, dh)
        k = split_heads(attn.k_proj(x), attn.num_kv_heads)  # (B, Hkv, L, dh)
        v = split_heads(attn.v_proj(x), attn.num_kv_heads)
        if self.model.positional == "rope":
            q, k = apply_rope(q, positions), apply_rope(k, positions)
        if cache is not None:
            k, v = cache.update(k, v)  # (B, Hkv, Lc, dh)
        group = attn.num_heads // attn.num_kv_heads
        out, weights = cached_attention(q, repeat_kv(k, group), repeat_kv(v, group))
        return attn.out_proj(merge_heads(out)), weights

    def forward(self, ids: torch.Tensor, caches=None):
        if ids.dim() != 2 or ids.dtype != torch.long:
            raise ValueError(f"ids must be a (B, L) LongTensor, got {ids.dtype} {tuple(ids.shape)}")
        if caches is not None and len(caches) != self.num_layers:
            raise ValueError(f"need one cache per layer ({self.num_layers}), got {len(caches)}")
        start = caches[0].seq_len if caches is not None else 0
        positions = torch.arange(start, start + ids.shape[1], device=ids.device)
        if positions[-1] >= self.max_len:
            raise ValueError(f"position {positions[-1].item()} exceeds max_len={self.max_len}")
        model = self.model
        x = model.token_embedding(ids)  # (B, L, d_model)
        if model.position_embedding is not None:
            x = x + model.position_embedding(positions)
        self.last_weights = []
        for i, block in enumerate(model.blocks):
            out, weights = self._attend(
                block.attn, block.ln1(x), positions, None if caches is None else caches[i]
            )
            self.last_weights.append(weights)
            x = x + out
            x = x + block.mlp(block.ln2(x))
        return model.lm_head(model.ln_f(x))  # (B, L, vocab)


@torch.no_grad()
def generate(model, prompt_ids, max_new_tokens: int, use_cache: bool = True, cache_factory=KVCache):
    """Greedy decoding: (B, L) prompt -> (B, L + max_new_tokens), the prompt then new tokens."""
    ids = prompt_ids
    if not use_cache:
        for _ in range(max_new_tokens):
            next_id = model(ids)[:, -1].argmax(-1, keepdim=True)  # (B, 1)
            ids = torch.cat([ids, next_id], dim=1)
        return ids
    caches = model.init_caches(ids.shape[0], ids.shape[1] + max_new_tokens, cache_factory)
    logits = model(ids, caches)  # prefill
    for step in range(max_new_tokens):
        next_id = logits[:, -1].argmax(-1, keepdim=True)
        ids = torch.cat([ids, next_id], dim=1)
        if step + 1 < max_new_tokens:
            logits = model(next_id, caches)  # one token
    return ids
