"""Checks for day04-kv-cache: KVCache, cached_attention, generate, kv_cache_bytes, RollingKVCache.

Oracles: K/V tensors kept by the check itself and concatenated with torch.cat; attention is
F.scaled_dot_product_attention in float64 under a mask built here from positions; greedy
decoding is a brute-force loop that runs the model on the whole sequence every step; bytes come
from torch's own element sizes. The classes are checked through their methods, each called
through `grader.harness.checking.guarded`, so a crash or a shortcut in a method reads like any other.
"""

import functools
import itertools
import math
import re

import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

import course.reference.kv_cache as library
import course.reference.masks
from grader.harness.checking import (
    Mistake,
    NotImplementedYet,
    crashed_with,
    expect_close,
    expect_tensor,
    expect_value_error,
    guarded,
    named,
    named_crash,
    naming_crashes,
    relative_error,
    tolerance,
)
from grader.harness.measuring import address, measuring
from grader.suites import Exercise
from grader.suites._common import MODIFIED_INPUT, call_unchanged, distinct_sizes, draw, randn

HINTS = {
    "modified_input": MODIFIED_INPUT,
    "seq_len_not_set": (
        "a cache with no seq_len: __init__ never sets self.seq_len",
        "set self.seq_len = 0 in __init__ (a plain int: the number of positions written so far), "
        "then advance it in update.",
    ),
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
        "check k_new and v_new before writing and raise ValueError naming what is wrong: "
        "an overflow (start + L_new > max_seq_len), a batch, heads or head_dim that is not the "
        "cache's, k_new.dtype != self.dtype, or k_new.device != self.device; e.g. "
        '`raise ValueError(f"dtype {k_new.dtype}, the cache holds {self.dtype}")`.',
    ),
    "writes_at_wrong_offset": (
        "new keys written at another offset than seq_len (e.g. seq_len advanced before the write)",
        "write first, at [seq_len, seq_len + L_new): start = self.seq_len; "
        "self.k[:, :, start:start + L_new] = k_new; then self.seq_len = start + L_new.",
    ),
    "prefix_wrong_length": (
        "a returned prefix one position too long or too short",
        "return exactly the positions written so far: self.k[:, :, :self.seq_len], after "
        "seq_len was advanced by L_new.",
    ),
    "error_for_valid_update": (
        "a ValueError raised for a valid update: k_new and v_new had the cache's batch, heads, "
        "head_dim, dtype and device, and there was room for them",
        "compare k_new with what the cache really holds: store self.device = self.k.device (a "
        "torch.device; the device argument may be None or a string, and torch.device('cpu') != "
        "'cpu'), then raise only when k_new.device != self.device.",
    ),
    "length_from_head_dim": (
        "seq_len advanced by k_new.shape[-1], the head dimension, instead of the new positions",
        "k_new is (B, H, L_new, D): L_new = k_new.shape[-2]; write self.k[:, :, start:start + "
        "L_new] and advance seq_len by L_new.",
    ),
    "v_gets_k": (
        "the keys written into the value buffer (a copy-paste slip: self.v[...] = k_new)",
        "write k_new into self.k and v_new into self.v.",
    ),
    "reset_keeps_keys": (
        "reset() that keeps the old keys: the cache grows with torch.cat, so seq_len = 0 "
        "does not empty it",
        "preallocate the buffers once and return self.k[:, :, :self.seq_len]: then reset() only "
        "sets seq_len = 0, and the next update overwrites the old entries.",
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
    "mask_hides_every_key": (
        "a mask that leaves a query no key at all (an all -inf row: NaN), e.g. the offset "
        "Lk - Lq with the wrong sign, or the diagonal blocked",
        "query i sits at position Lk - Lq + i and sees keys j <= Lk - Lq + i, its own "
        "position included: every query sees at least one key.",
    ),
    "excludes_diagonal": (
        "a causal mask without its diagonal: each new query blocked from its own key",
        "query i sits at position Lk - Lq + i and may see that key too: allowed = j <= Lk - Lq "
        "+ i, with <=, not <.",
    ),
    "float16_overflow": (
        "a mask filled with a large negative like -1e9, which float16 cannot hold",
        "float16 ends at -65504: fill the hidden scores with float('-inf') (or "
        "torch.finfo(scores.dtype).min), which every dtype can hold.",
    ),
    "mask_wrong_shape": (
        "a mask whose shape is not the scores' (Lq, Lk), e.g. built (Lq, Lk) and then transposed "
        "with .T, or square, (Lk, Lk) or (Lq, Lq): it fits the scores only when Lq == Lk",
        "build the mask (Lq, Lk), a row per query and a column per key: i = torch.arange(Lq)"
        "[:, None], j = torch.arange(Lk)[None, :], allowed = j <= i + (Lk - Lq); use it as it "
        "is, no .T.",
    ),
    "mask_inverted": (
        "an inverted mask: each query sees the keys after its own position (with or without "
        "its own), not those up to it",
        "mask (with -inf) the keys j > Lk - Lq + i, and keep the others: "
        "allowed = j <= Lk - Lq + i, scores.masked_fill(~allowed, float('-inf')).",
    ),
    "dtypes_mixed": (
        "two dtypes mixed in one matmul: a tensor cast with .float() or .double() met one that "
        "was not, and @ refuses to mix them",
        "compute in the inputs' dtype, with no .float() or .double() inside; if you do upcast, "
        "cast the result back with .to(q.dtype), so the output has q's dtype.",
    ),
    "softmax_over_queries": (
        "the softmax taken over the queries (dim=-2) instead of the keys",
        "each query's weights sum to 1 over the keys it sees: torch.softmax(scores, dim=-1).",
    ),
    "divided_by_d": (
        "q kᵀ / d instead of / sqrt(d)",
        "divide the scores by the square root of the head dimension, math.sqrt(q.shape[-1]), "
        "not by the head dimension itself.",
    ),
    "scaled_by_length": (
        "q kᵀ divided by the square root of a length (Lq or Lk) instead of the head dimension",
        "d is the head dimension, q.shape[-1]; q.shape[-2] is Lq and k.shape[-2] is Lk.",
    ),
    "weights_times_k": (
        "the attention weights multiplied by the keys, not the values",
        "out = weights @ v: the weights average the values.",
    ),
    "batched_transpose": (
        "k transposed from the front (k.T, k.transpose(0, 1)): right on one head's (L, D) keys, "
        "wrong on (B, H, L, D) ones",
        "swap the last two dims only: q @ k.transpose(-2, -1) (or k.mT), (B, H, Lq, D) @ "
        "(B, H, D, Lk) -> (B, H, Lq, Lk).",
    ),
    "transposed_wrong_dims": (
        "k transposed over other dims than its last two (e.g. k.transpose(-1, -3), which swaps "
        "head_dim with the heads): it runs only when those sizes happen to agree",
        "swap the last two dims only, L and D: q @ k.transpose(-2, -1) (or k.mT) is "
        "(B, H, Lq, D) @ (B, H, D, Lk) -> (B, H, Lq, Lk).",
    ),
    "masked_with_zero": (
        "masked scores set to 0 (masked_fill(~allowed, 0), or scores * mask) instead of -inf: "
        "a hidden key still gets the weight exp(0), more than a visible key with a negative score",
        "fill the hidden scores with float('-inf') (or torch.finfo(dtype).min), so the softmax "
        "gives them weight 0: a score of 0 is an ordinary score, not a mask.",
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
        "each step appends logits[:, -1].argmax(-1, keepdim=True), the logits of the call just "
        "made; with use_cache=True the caches pass through every call, the prefill "
        "model(prompt_ids, caches) and each model(next_id, caches). Return the prompt followed "
        "by the new tokens, (B, L + n).",
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
    "cache_used_when_off": (
        "use_cache=False that still makes or passes caches",
        "with use_cache=False run the whole sequence every step, model(ids), with no caches: it "
        "is the brute-force baseline the cache is compared with (and timed against).",
    ),
    "prefill_without_caches": (
        "a prefill that calls the model without the caches: they never hold the prompt, so the "
        "decode steps see only the tokens generated after it",
        "pass the caches to the prefill too, logits = model(prompt_ids, caches), then "
        "model(next_id, caches) each step.",
    ),
    "decode_without_caches": (
        "decode steps that call the model without the caches",
        "pass the same caches to every call: model(next_id, caches); without them the model "
        "sees only the newest token.",
    ),
    "fed_wrong_token": (
        "a decode step fed another token than the one just generated",
        "feed the newest token, ids[:, -1:] (B, 1), right after appending it.",
    ),
    "argmax_first_position": (
        "the next token taken from the logits at position 0 instead of the last",
        "logits[:, -1] (B, vocab): the prediction after the last token.",
    ),
    "next_token_not_argmax": (
        "a next token not chosen by argmax (sampled, e.g. torch.multinomial)",
        "greedy decoding takes the most likely token: logits[:, -1].argmax(-1, keepdim=True), "
        "no softmax or sampling.",
    ),
    "argmax_over_batch": (
        "the next token taken by argmax over the batch axis (dim 0), not over the vocabulary: "
        "each new token is a batch index",
        "logits[:, -1] is (B, vocab): take the argmax over the vocabulary, "
        "logits[:, -1].argmax(dim=-1, keepdim=True), which is (B, 1).",
    ),
    "argmax_without_keepdim": (
        "a next token of shape (B,) where (B, 1) is needed",
        "logits[:, -1].argmax(-1, keepdim=True) is (B, 1); torch.cat([ids, next_id], dim=1).",
    ),
    "next_token_wrong_shape": (
        "a next token of the wrong shape or concatenated along the wrong axis",
        "argmax over the vocabulary, logits[:, -1].argmax(dim=-1, keepdim=True) (B, 1), then "
        "torch.cat([ids, next_id], dim=1): tokens grow along dim 1.",
    ),
    "wrong_token_count": (
        "a number of new tokens other than max_new_tokens",
        "loop max_new_tokens times: the result is (B, L + max_new_tokens).",
    ),
    "caches_too_small": (
        "caches too short for the prompt and the new tokens",
        "model.init_caches(batch_size, prompt_len + max_new_tokens).",
    ),
    "missing_factor": (
        "one factor of the product missing",
        "multiply all seven: 2 (K and V), layers, kv_heads, head_dim, seq_len, batch and the "
        "dtype's element size.",
    ),
    "bits_not_bytes": (
        "bits instead of bytes (8 times too many)",
        "count bytes, not bits: element_size() (or dtype.itemsize) is already in bytes, so do "
        "not multiply it by 8; torch.finfo(dtype).bits is in bits, so divide it by 8.",
    ),
    "wrong_unit": (
        "the size in GiB, MiB or GB instead of bytes",
        "return the plain number of bytes, an int: no division by 2**30 or 1e9.",
    ),
    "element_size_by_hand": (
        "bytes per element worked out for some dtypes only",
        "torch.empty((), dtype=dtype).element_size() (or dtype.itemsize) works for every dtype, "
        "int8 and bfloat16 included; torch.finfo() refuses integer dtypes.",
    ),
    "wrong_element_size": (
        "a fixed number of bytes per element whatever the dtype",
        "bytes per element depend on the dtype: "
        "torch.empty((), dtype=dtype).element_size() (2 for float16).",
    ),
    "bytes_not_int": (
        "a byte count made a float on the way (2.0 * ..., bits / 8, a tensor's .item())",
        "keep every factor an int (bits // 8, not bits / 8) or return int(...) of the product.",
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
    "positions_not_long": (
        "positions that are not a LongTensor (int32, float, or a list)",
        "positions index keys and feed RoPE: keep them int64. torch.arange(start, stop) is "
        "already a LongTensor: no dtype=torch.int32, .int() or .float().",
    ),
    "rolling_only_last_window": (
        "only the last `window` positions returned: the first queries of a chunk of several "
        "new tokens lose keys they may still see",
        "return every key a new query may see, positions max(0, start - window + 1) .. "
        "start + L_new - 1 (up to window - 1 + L_new of them); only the ring keeps the last "
        "`window`.",
    ),
    "rolling_wrong_keys": (
        "keys that do not match their positions, or a window with keys missing or extra",
        "return exactly the keys at positions max(0, start - window + 1) .. "
        "start + L_new - 1, each next to its absolute position.",
    ),
    "rolling_wrong_order": (
        "the triple returned in another order than (k, v, positions)",
        "return k, v, positions, in that order.",
    ),
    "rolling_overwritten_before_read": (
        "keys read back from the ring after the new ones were written into it (or kept as views "
        "of its slots): each new position replaces an older one in its slot, an old key or, in "
        "a chunk longer than the window, one of the chunk's own",
        "gather (and .clone()) the old keys you return before writing the new ones, and take "
        "the new ones from k_new itself, not from the ring: the ring is overwritten in place.",
    ),
    "rolling_read_from_first_slots": (
        "old keys read from the first slots, 0, 1, ..., instead of their own slots p % window: "
        "right until the ring wraps",
        "read each old position p from its slot: kept = the old positions still in the window, "
        "self.k[:, :, kept % window].",
    ),
    "rolling_not_bounded": (
        "a rolling cache that keeps more than `window` positions",
        "store K and V in a ring of `window` slots: position p goes to slot p % window.",
    ),
    "rolling_duplicate_slots": (
        "all L_new new keys written into the ring at once when L_new > window: several land in "
        "one slot, and which of them stays is undefined (right on a CPU by luck, any on a GPU)",
        "store only the last `window` positions, each in its own slot: stay = "
        "positions[-window:], then self.k[:, :, stay % window] = k[:, :, -len(stay):].",
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
        "gathered_positions_first": (
            "gathered K/V of shape (L, num_heads, head_dim), the positions first: indexing "
            "self.k[blocks, :, offsets] puts the indexed axis in front",
            "return (num_heads, L, head_dim), the layout k_new comes in: .transpose(0, 1) what "
            "the index gathers (or torch.cat the blocks along dim 1).",
        ),
        "block_table_not_stored": (
            "a new sequence's block table never stored in self.block_tables: the blocks are "
            "taken, but gather (or the next update) cannot find the table",
            "store the table in the dict before filling it: table = "
            "self.block_tables.setdefault(seq_id, []); a list from .get(seq_id, []) is a new "
            "list the dict does not hold.",
        ),
        "k_new_axes_swapped": (
            "k_new read as (L_new, num_heads, head_dim): positions taken from its first axis",
            "k_new is (num_heads, L_new, head_dim): position t of it is k_new[:, t], "
            "(num_heads, head_dim), not k_new[t].",
        ),
        "pool_written_from_its_own_view": (
            "a pool copied into from a view of itself (reshape returns a view when it can and "
            "a copy otherwise, so the bug shows on some shapes only)",
            "write into the pool in place, self.k[block, :, offset] = k_new[:, t]; or clone() "
            "the reshaped pool before editing it and copying it back.",
        ),
        "gather_heads_blocks_mixed": (
            "gathered blocks reshaped with heads and blocks mixed: self.k[table] is "
            "(n_blocks, num_heads, block_size, head_dim), and a reshape to (num_heads, -1, "
            "head_dim) without moving the heads first interleaves them (right with one block)",
            "move the heads to the front before the reshape: self.k[table].transpose(0, 1) "
            "(H, n_blocks, block_size, D), then .reshape(H, -1, D) and crop to the length.",
        ),
        "gather_not_cropped": (
            "gathered K/V that keep the unused tail of the last block",
            "crop what you gather to the sequence's length.",
        ),
        "blocks_shared": (
            "a block held by two sequences, or by a sequence and the free list",
            "pop blocks off the free list, so each block has exactly one owner.",
        ),
        "free_keeps_table": (
            "free_sequence that returns the blocks but keeps the sequence's table",
            "after returning the blocks, forget the sequence: del self.block_tables[seq_id] "
            "and its length.",
        ),
        "free_keeps_length": (
            "free_sequence that keeps the sequence's length: the id reused starts past 0",
            "forget the length too (del self.lengths[seq_id]): a new sequence with a freed id "
            "starts at position 0.",
        ),
        "blocks_leaked_on_error": (
            "blocks taken from the free list before the ValueError, and never given back",
            "check that enough blocks are free before taking any: "
            "if need > len(self.free): raise ValueError(...).",
        ),
        "no_error_for_full_pool": (
            "a full pool that does not raise ValueError",
            "before taking blocks, compare the blocks needed with len(self.free) and raise "
            'ValueError(f"need {need} blocks, {len(self.free)} free") when they are too few.',
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


def _methods(cache, exercise, forbidden=FORBIDDEN, valid_input=True):
    """The cache's (update, reset), guarded; update(k_new, v_new) that writes into k_new or v_new
    in place is the mistake modified_input: the caller's keys would change under it. With
    `valid_input` (every update fits the cache), a ValueError from update is the mistake
    error_for_valid_update."""
    reset = getattr(cache, "reset", None)
    guarded_update = guarded(cache.update, exercise, forbidden)

    def update(k_new, v_new):
        with naming_crashes(("seq_len_not_set", "AttributeError", "no attribute 'seq_len'")):
            try:
                return call_unchanged(guarded_update, {"k_new": k_new, "v_new": v_new})
            except Mistake as mistake:
                if valid_input and crashed_with(mistake, "ValueError"):
                    raise error_for_valid_update(mistake, cache, k_new) from mistake
                raise

    return update, guarded(reset, exercise, forbidden) if reset is not None else None


def error_for_valid_update(mistake, cache, k_new) -> Mistake:
    """The student's ValueError for an update that fits `cache`, with what the cache stores as
    its device when that is not a torch.device (None, or a string that never equals one)."""
    seen = (
        f"k_new and v_new were {tuple(k_new.shape)} {k_new.dtype} on {k_new.device}, "
        f"{getattr(cache, 'seq_len', '?')} positions already in the cache"
    )
    stored = getattr(cache, "device", k_new.device)
    if not isinstance(stored, torch.device):
        seen += f", and self.device is {stored!r} ({type(stored).__name__}, not a torch.device)"
    description, fix = HINTS["error_for_valid_update"]
    return Mistake(
        f"{mistake.message}\n      {seen}: it looks like {description}.",
        fix,
        "error_for_valid_update",
    )


# What a mistake in KVCache's arithmetic first shows as, before a probe names it.
UNEXPLAINED_CACHE_KEYS = ("raised", "error_for_valid_update", "not_advanced", "wrong_values")


def naming_length_axis(check):
    """`check`, where a failure of a cache that advances seq_len by head_dim is named: a fresh
    cache given one position (a write that broadcasts, so it cannot crash) counts head_dim."""

    @functools.wraps(check)
    def run(KVCache, rng):
        try:
            return check(KVCache, rng)
        except Mistake as mistake:
            if mistake.key in UNEXPLAINED_CACHE_KEYS:
                raise_if_length_from_head_dim(KVCache, mistake)
            raise

    return run


def raise_if_length_from_head_dim(KVCache, mistake):
    """`mistake`, named length_from_head_dim when a fresh cache counts head_dim for one position."""
    if mistake.key == "error_for_valid_update":
        mistake = mistake.__cause__  # the student's own ValueError: the probe explains it better
    B, H, D = 1, 2, 5
    k_new = torch.zeros(B, H, 1, D)
    try:
        cache = KVCache(B, H, D, 4 * D, dtype=torch.float32, device="cpu")
        guarded(cache.update, "KVCache", FORBIDDEN)(k_new, k_new.clone())
        counted = _seq_len(cache)
    except Mistake:
        return
    if counted == D:
        description, fix = HINTS["length_from_head_dim"]
        raise Mistake(
            f"{mistake.message}\n      A fresh cache given one position, k_new of shape "
            f"{tuple(k_new.shape)}, has seq_len {D}: it looks like {description}.",
            fix,
            "length_from_head_dim",
        ) from None


def _seq_len(cache):
    """cache.seq_len, a plain int as the docstring says (a 0-d tensor would make every slice
    bound a tensor, and a tensor on a GPU a sync)."""
    if not hasattr(cache, "seq_len"):
        raise named("seq_len_not_set")
    value = cache.seq_len
    if callable(value):
        value = value()
    if not isinstance(value, int) or isinstance(value, bool):
        raise Mistake(
            f"cache.seq_len is {value!r} ({type(value).__name__}), expected an int.",
            "keep self.seq_len a plain int, the number of positions written: start it at 0 and "
            "add L_new (an int, k_new.shape[-2]); not torch.tensor(0).",
            "not_advanced",
        )
    return value


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
        raise_if_whole_buffer(k_all, total, max_len)
        if isinstance(k_all, torch.Tensor) and k_all.shape == ref_k.shape and len(ks) > 1:
            if torch.equal(k_all[..., :n, :], k) and not torch.equal(k_all, ref_k):
                raise named("writes_at_zero")
        raise_if_misplaced(cache, k, total - n)
        expect_seq_len(cache, total)
        if isinstance(k_all, torch.Tensor) and k_all.dim() == 4 and k_all.shape[-2] != total:
            kept = min(total, k_all.shape[-2])
            if torch.equal(k_all[..., :kept, :], ref_k[..., :kept, :]):
                raise Mistake(
                    f"k_all after {len(ks)} updates holds {k_all.shape[-2]} positions, the "
                    f"{total} written so far expected: it looks like "
                    f"{HINTS['prefix_wrong_length'][0]}.",
                    HINTS["prefix_wrong_length"][1],
                    "prefix_wrong_length",
                )
        expect_close(k_all, ref_k.double(), torch.float32, what=f"k_all after {len(ks)} updates")
        expect_close(
            v_all,
            ref_v.double(),
            torch.float32,
            what=f"v_all after {len(ks)} updates",
            suspects=[("v_gets_k", ref_k.double())],
        )


def raise_if_whole_buffer(k_all, written, max_len):
    """k_all holds all max_len positions of the buffer, not the `written` ones."""
    if isinstance(k_all, torch.Tensor) and k_all.shape[-2] == max_len and written < max_len:
        raise named("whole_buffer")


def raise_if_crash_misplaces(KVCache, k_new, v_new):
    """A fresh cache with room to spare writes k_new elsewhere than at position 0: why the same
    first update crashed in a cache just big enough (e.g. seq_len advanced before the write)."""
    B, H, n, D = k_new.shape
    roomy = KVCache(B, H, D, 4 * n, dtype=k_new.dtype, device="cpu")
    try:
        guarded(roomy.update, "KVCache", FORBIDDEN)(k_new, v_new)
    except Mistake:
        return
    raise_if_misplaced(roomy, k_new, 0)


def expect_seq_len(cache, total):
    if _seq_len(cache) != total:
        raise Mistake(
            f"cache.seq_len is {_seq_len(cache)} after {total} positions were written.",
            HINTS["not_advanced"][1],
            "not_advanced",
        )


def raise_if_misplaced(cache, k_new, start):
    """The cache's key buffer holds k_new at another offset than `start`, not at `start`."""
    buffer = getattr(cache, "k", None)
    if not isinstance(buffer, torch.Tensor) or buffer.shape[:2] != k_new.shape[:2]:
        return
    n = k_new.shape[-2]
    window = buffer[..., start : start + n, :]
    if window.shape == k_new.shape and torch.equal(window, k_new):
        return
    for offset in range(buffer.shape[-2] - n + 1):
        if torch.equal(buffer[..., offset : offset + n, :], k_new):
            raise Mistake(
                f"the update of positions [{start}, {start + n}) wrote its keys at "
                f"[{offset}, {offset + n}) of self.k: it looks like "
                f"{HINTS['writes_at_wrong_offset'][0]}.",
                HINTS["writes_at_wrong_offset"][1],
                "writes_at_wrong_offset",
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
    raise_if_whole_buffer(k_all, 3, 16)
    grown = [t for t in (k_all, getattr(cache, "k", None)) if isinstance(t, torch.Tensor)]
    if any(t.dim() == 4 and t.shape[-2] == n + 3 for t in grown):
        raise Mistake(
            f"after reset() and 3 new positions the cache holds {n + 3}: it looks like "
            f"{HINTS['reset_keeps_keys'][0]}.",
            HINTS["reset_keeps_keys"][1],
            "reset_keeps_keys",
        )
    raise_if_misplaced(cache, k, 0)
    expect_close(k_all, k.double(), torch.float32, what="k_all after reset() and one update")


def cache_is_preallocated(KVCache, rng):
    """the buffers are preallocated (B, H, max_seq_len, D) in the cache's dtype; views come back"""
    # Every axis its own size: a buffer laid out (B, max_seq_len, H, D) shows in its shape.
    B, H, D, max_len = distinct_sizes(rng, (1, 3), (1, 4), (2, 8), (4, 12))
    cache = KVCache(B, H, D, max_len, dtype=torch.float64, device="cpu")
    update, _ = _methods(cache, "KVCache")
    names = [
        name
        for name in ("k", "v", "k_cache", "v_cache", "key_cache", "value_cache")
        if isinstance(getattr(cache, name, None), torch.Tensor)
    ]
    buffers = [getattr(cache, name) for name in names]
    if len(buffers) < 2 or any(
        tuple(b.shape) != (B, H, max_len, D) or b.dtype != torch.float64 for b in buffers[:2]
    ):
        raise named("not_preallocated")
    k_all, v_all = update(
        randn((B, H, 2, D), rng, torch.float64), randn((B, H, 2, D), rng, torch.float64)
    )
    raise_if_buffer_replaced(cache, names[0], (B, H, max_len, D))
    raise_if_whole_buffer(k_all, 2, max_len)
    expect_seq_len(cache, 2)
    expect_tensor(k_all, "k_all", (B, H, 2, D), torch.float64)
    if address(k_all) != address(buffers[0]):
        raise Mistake(
            "k_all is a copy, not a view of the preallocated buffer.",
            "return self.k[:, :, :self.seq_len] (slicing gives a view, no copy).",
            "not_preallocated",
        )


def raise_if_buffer_replaced(cache, name, shape):
    """After an update, self.<name> is no longer the (B, H, max_seq_len, D) buffer of __init__:
    update assigned it a new tensor (torch.cat of the old one and k_new, or k_new itself), so
    the cache grows instead of writing into what it allocated."""
    now = getattr(cache, name, None)
    if isinstance(now, torch.Tensor) and tuple(now.shape) != shape:
        raise Mistake(
            f"after an update of 2 positions self.{name} has shape {tuple(now.shape)}, not "
            f"{shape}, the (batch, heads, max_seq_len, head_dim) it had after __init__: it looks "
            "like a buffer replaced in update (self.k = torch.cat([self.k, k_new], ...) or "
            "self.k = k_new) instead of written into.",
            "keep the buffers made in __init__ and write into a slice of them, self.k[:, :, "
            "start:stop] = k_new (never self.k = ... in update); then return the view "
            "self.k[:, :, :self.seq_len].",
            "not_preallocated",
        )


def crash_not_stub(update):
    """The guarded `update`, where a NotImplementedError (torch's, on copying out of a 'meta'
    tensor) is a crash like any other: not the stub's 'not implemented yet', and never a pass.
    (The student's method may run in their kernel, so the stub's mark is what comes back.)"""

    def call(*args):
        try:
            return update(*args)
        except NotImplementedYet as stopped:
            crash = NotImplementedError(f"at: {stopped.line}" if stopped.line else "")
            raise Mistake(
                f"your function raised NotImplementedError: {crash}",
                "read the error and the line it points to.",
                "raised",
            ) from crash

    return call


def cache_clear_errors(KVCache, rng):
    """overflow, a batch/head/head_dim mismatch, a dtype and a device mismatch raise ValueError"""
    B, H, D = _kv_shape(rng)
    cache = KVCache(B, H, D, 4, dtype=torch.float32, device="cpu")
    update, _ = _methods(cache, "KVCache")
    bad_update, _ = _methods(cache, "KVCache", valid_input=False)
    k, v = randn((B, H, 3, D), rng), randn((B, H, 3, D), rng)
    try:
        update(k, v)
    except Mistake as crash:
        if crash.key in ("raised", "error_for_valid_update"):
            raise_if_crash_misplaces(KVCache, k, v)
        raise
    expect_seq_len(cache, 3)
    key = "no_error_for_bad_update"
    expect_value_error(
        lambda: bad_update(randn((B, H, 2, D), rng), randn((B, H, 2, D), rng)),
        "update past max_seq_len (overflow)",
        key,
    )
    fresh = KVCache(B, H, D, 8, dtype=torch.float32, device="cpu")
    update, _ = _methods(fresh, "KVCache", valid_input=False)
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
    expect_value_error(
        lambda: update(randn((B, H, 1, D + 1), rng), randn((B, H, 1, D + 1), rng)),
        "update with the wrong head_dim",
        key,
    )
    # A device other than the cache's: 'meta' (shapes only, no data) exists on every machine.
    meta_update = crash_not_stub(guarded(fresh.update, "KVCache", FORBIDDEN))
    expect_value_error(
        lambda: meta_update(*(torch.zeros(B, H, 1, D, device="meta") for _ in "kv")),
        "update with k_new, v_new on the 'meta' device into a cpu cache",
        key,
    )


# ----------------------------------------------------------------------------- cached_attention


def attention64(q, k, v, positions_q, positions_k):
    allowed = positions_q.unsqueeze(-1) >= positions_k
    return F.scaled_dot_product_attention(q.double(), k.double(), v.double(), attn_mask=allowed)


def softmax_attention64(q, k, v, allowed, dim=-1, fill=float("-inf"), nan=0.0):
    """softmax(q kᵀ / sqrt(d) with `fill` where not `allowed` (Lq, Lk), over `dim`) @ v in
    float64. A softmax slice that is all -inf gives `nan` (0: what a mask mistake with a
    nan_to_num returns; NaN: what it returns without); a finite fill gives it uniform weights."""
    scores = q.double() @ k.double().transpose(-2, -1) / math.sqrt(q.shape[-1])
    weights = torch.softmax(scores.masked_fill(~allowed, fill), dim=dim)
    return weights.nan_to_num(nan) @ v.double()


def raise_if_inverted_with_nan(out, q, k, v, right, dtype, what):
    """`out` has NaN exactly in the rows of the queries that an inverted -inf mask leaves no key
    (the last query sees nothing after it), and equals inverted-mask attention elsewhere."""
    inverted = softmax_attention64(q, k, v, ~right, nan=float("nan"))
    if not isinstance(out, torch.Tensor) or out.shape != inverted.shape:
        return
    nan_rows = inverted.isnan()
    if nan_rows.all() or not torch.equal(out.isnan(), nan_rows):
        return  # a query that sees no key is what every mask mistake shares; a finite row differs
    error = relative_error(out.nan_to_num(0.0), inverted.nan_to_num(0.0))
    if error <= tolerance(dtype, k.shape[-2]):
        description, fix = HINTS["mask_inverted"]
        raise Mistake(
            f"{what} is NaN for the queries that see no key, and matches elsewhere {description}.",
            fix,
            "mask_inverted",
        )


def call_attention(cached_attention, q, k, v, ref):
    """cached_attention(q, k, v), which may not change its inputs in place; a crash on
    (B, H, L, D) inputs is named by the transpose that other inputs show."""
    try:
        with naming_crashes(
            ("dtypes_mixed", "RuntimeError", "expected scalar type"),
            ("dtypes_mixed", "RuntimeError", "to have the same dtype"),
        ):
            return call_unchanged(cached_attention, {"q": q, "k": k, "v": v})
    except Mistake as raised:
        if raised.key != "raised":
            raise
        raise_if_mask_wrong_shape(raised, q.shape[-2], k.shape[-2])
        for explain in (transposed_from_the_front, transposed_other_dims):
            raise_explained(raised, explain(cached_attention, q, k, v, ref))
        raise


# torch's broadcasting error, e.g. for a (Lk, Lq) mask on (B, H, Lq, Lk) scores
BROADCAST_SIZES = re.compile(
    r"size of tensor a \((\d+)\) must match the size of tensor b \((\d+)\) at non-singleton "
    r"dimension (\d+)"
)


def raise_if_mask_wrong_shape(raised, lq, lk):
    """A crash that broadcasting the scores (B, H, Lq, Lk) with a mask of another shape gives:
    Lq against Lk at one of the last two dims."""
    sizes = BROADCAST_SIZES.search(raised.message)
    if sizes and lq != lk and {int(sizes[1]), int(sizes[2])} == {lq, lk} and sizes[3] in "23":
        raise named_crash(raised, "mask_wrong_shape") from None


def raise_if_keys_reordered(cached_attention, unexplained):
    """A wrong output (shape or values) that no suspect explains, named when the probe shows
    k's dims reordered (it runs without a crash when the sizes it mixes up agree)."""
    raise_explained(unexplained, transposed_other_dims(cached_attention))


def raise_explained(mistake: Mistake, explained) -> None:
    """`mistake`, named by `explained` (key, what the probe saw), if a probe explained it."""
    if explained:
        key, seen = explained
        description, fix = HINTS[key]
        raise Mistake(
            f"{mistake.message}\n      {seen}: it looks like {description}.", fix, key
        ) from None


def close_on_probe(cached_attention, q, k, v, expected) -> bool:
    """cached_attention(q, k, v) runs and returns `expected` (float64) to a float64 answer's
    precision."""
    try:
        out = cached_attention(q, k, v)
    except Mistake:
        return False
    return (
        isinstance(out, torch.Tensor)
        and out.shape == expected.shape
        and torch.allclose(out.double(), expected, rtol=1e-4, atol=1e-5)
    )


def transposed_from_the_front(cached_attention, q, k, v, ref):
    """Right on one head's (L, D) inputs: a transpose counted from the front (k.T)."""
    if close_on_probe(cached_attention, q[0, 0], k[0, 0], v[0, 0], ref[0, 0]):
        return (
            "batched_transpose",
            "It raised on 4-D inputs, but gives the right answer on (L, D) ones",
        )


# Every order of k's (B, H, L, D) axes but the right one, (B, H, D, L): one swap of other dims
# (k.transpose(-1, -3)) or several (k.transpose(-1, -3).transpose(-2, -3)).
OTHER_KEY_ORDERS = [dims for dims in itertools.permutations(range(4)) if dims != (0, 1, 3, 2)]


def transposed_other_dims(cached_attention, *_):
    """Where B = H = L = D, any reordering of k's dims runs: the one whose attention it returns."""
    n = 3
    probe = torch.Generator().manual_seed(0)
    q, k, v = (randn((n, n, n, n), probe, torch.float64) for _ in "qkv")
    causal = torch.ones(n, n, dtype=torch.bool).tril()  # (Lq, Lk), Lq = Lk
    for dims in OTHER_KEY_ORDERS:
        # softmax_attention64 multiplies by the transpose of its keys: hand it (k.permute(dims))ᵀ
        reordered = softmax_attention64(q, k.permute(dims).transpose(-2, -1), v, causal)
        if close_on_probe(cached_attention, q, k, v, reordered):
            return "transposed_wrong_dims", (
                f"On inputs with B = H = L = D = {n} it runs, and equals attention with the "
                f"scores q @ k.permute{dims}"
            )


def attention_checks(lq, lk, cached_attention, rng, dtype=torch.float32):
    B, H, D = draw(rng, 1, 3), draw(rng, 1, 4), draw(rng, 2, 16)
    q, k, v = (randn((B, H, n, D), rng, dtype) for n in (lq, lk, lk))
    pos_k = torch.arange(lk)
    ref = attention64(q, k, v, pos_k[lk - lq :], pos_k)
    suspects = [
        ("top_left_causal", attention64(q, k, v, torch.arange(lq), pos_k)),
        ("no_causal_mask", attention64(q, k, v, torch.full((lq,), lk), pos_k)),
    ]
    right = pos_k[lk - lq :].unsqueeze(-1) >= pos_k  # (Lq, Lk)
    for key, scale in [
        ("missing_scale", 1.0),
        ("divided_by_d", 1 / D),
        ("scaled_by_length", 1 / math.sqrt(lk)),
        ("scaled_by_length", 1 / math.sqrt(lq)),
    ]:
        scaled = F.scaled_dot_product_attention(
            q.double(), k.double(), v.double(), attn_mask=right, scale=scale
        )
        suspects.append((key, scaled))
    suspects += [
        ("weights_times_k", attention64(q, k, k, pos_k[lk - lq :], pos_k)),
        (
            "excludes_diagonal",
            softmax_attention64(q, k, v, right & (pos_k[lk - lq :, None] > pos_k)),
        ),
        ("mask_inverted", softmax_attention64(q, k, v, ~right)),
        # j >= i: inverted, its own position kept (no query left without a key)
        ("mask_inverted", softmax_attention64(q, k, v, pos_k >= pos_k[lk - lq :, None])),
        # filled with torch.finfo(dtype).min: a query that sees no key averages all of v
        ("mask_inverted", softmax_attention64(q, k, v, ~right, fill=torch.finfo(dtype).min)),
        ("masked_with_zero", softmax_attention64(q, k, v, right, fill=0.0)),
        ("softmax_over_queries", softmax_attention64(q, k, v, right, dim=-2)),
    ]
    out = call_attention(cached_attention, q, k, v, ref)
    what = f"cached_attention with Lq={lq}, Lk={lk}"
    raise_if_inverted_with_nan(out, q, k, v, right, dtype, what)
    try:
        expect_close(
            out,
            ref,
            dtype,
            what=what,
            suspects=[(key, wrong) for key, wrong in suspects if not torch.allclose(wrong, ref)],
            nonfinite=Mistake(
                f"It looks like {HINTS['mask_hides_every_key'][0]}.",
                HINTS["mask_hides_every_key"][1],
                "mask_hides_every_key",
            ),
        )
    except Mistake as mistake:
        if mistake.key in ("wrong_shape", "wrong_values"):
            raise_if_keys_reordered(cached_attention, mistake)
        raise


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


def attention_in_float16(cached_attention, rng):
    """the same chunk attention in float16, the dtype caches are kept in on a GPU"""
    lq = draw(rng, 2, 6)
    with naming_crashes(
        ("float16_overflow", "RuntimeError", "cannot be converted to type", "without overflow")
    ):
        attention_checks(lq, lq + draw(rng, 2, 6), cached_attention, rng, torch.float16)


# ----------------------------------------------------------------------------- generate


class Recorder(torch.nn.Module):
    """The course's CachedDecoder, counting how many tokens each call feeds it."""

    def __init__(self, decoder):
        super().__init__()
        self.decoder = decoder
        self.calls = []  # (tokens fed, caches given?)
        self.fed = []  # the ids of each call, (B, tokens)
        self.last_logits = []  # what each call returned at its last position, (B, vocab)
        self.first_logits = []  # and at its first position, (B, vocab)
        self.inits = 0

    def init_caches(self, batch_size, max_seq_len, *args, **kwargs):
        self.inits += 1
        return self.decoder.init_caches(batch_size, max_seq_len, *args, **kwargs)

    def forward(self, ids, caches=None):
        if ids.dim() == 1:  # a next token fed back as argmax(-1) returns it
            raise ValueError(
                f"the model was fed token ids of shape (B,) = {tuple(ids.shape)}: it takes "
                "(batch, tokens), (B, 1) for one token per sequence"
            )
        if self.fed and ids.shape[0] != self.fed[0].shape[0]:  # e.g. next_id.unsqueeze(0)
            raise ValueError(
                f"the model was fed token ids of shape {tuple(ids.shape)} after a prompt of "
                f"batch {self.fed[0].shape[0]}: it takes (batch, tokens), (B, 1) for one token "
                "per sequence"
            )
        self.calls.append((ids.shape[1], caches is not None))
        self.fed.append(ids.clone())
        logits = self.decoder(ids, caches)
        self.last_logits.append(logits[:, -1].detach().clone())
        self.first_logits.append(logits[:, 0].detach().clone())
        return logits


def tiny_decoder(rng, **kwargs):
    from course.models.tiny_transformer import TinyTransformer

    seed = draw(rng, 0, 10**6)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = TinyTransformer(d_model=32, num_heads=4, num_layers=2, max_len=48, **kwargs)
    return library.CachedDecoder(model.eval())


@torch.no_grad()
def greedy64(decoder, prompt, n, position=-1):
    """Brute force: run the whole sequence every step, append the argmax of the logits at
    `position` (-1: the last, greedy decoding)."""
    ids = prompt
    for _ in range(n):
        ids = torch.cat([ids, decoder(ids)[:, position].argmax(-1, keepdim=True)], dim=1)
    return ids


# (mistake, error type, text): a crash of generate whose error says so is this mistake
GENERATE_CRASHES = [
    ("argmax_without_keepdim", "RuntimeError", "Tensors must have same number of dimensions"),
    ("argmax_without_keepdim", "ValueError", "the model was fed token ids of shape (B,)"),
    ("next_token_wrong_shape", "RuntimeError", "Sizes of tensors must match except in dimension"),
    ("next_token_wrong_shape", "ValueError", "the model was fed token ids of shape", "after a"),
    ("caches_too_small", "ValueError", "KVCache overflow"),
    ("cache_not_initialised", "ValueError", "need one cache per layer"),
]


def call_generate(generate, model, prompt, n, use_cache):
    """generate(...); a crash GENERATE_CRASHES recognises, or caches not made by
    model.init_caches, is named."""
    try:
        with naming_crashes(*GENERATE_CRASHES):
            out = generate(model, prompt, n, use_cache=use_cache)
    except Mistake as mistake:
        if mistake.key == "raised" and use_cache and model.inits == 0:
            raise named_crash(mistake, "cache_not_initialised") from None
        fed = [tokens for tokens, _ in model.calls]
        if mistake.key == "caches_too_small" and any(tokens > 1 for tokens in fed[1:]):
            # Decode calls fed more than the newest token overflow caches of any length.
            description, fix = HINTS["cache_unused"]
            raise Mistake(
                f"the caches overflowed after the model was fed {fed} tokens per call: it looks "
                f"like {description}.",
                fix,
                "cache_unused",
            ) from None
        raise
    return out


def explain_other_tokens(model, decoder, out, prompt, n, use_cache):
    """Name why `out` (the right shape) holds other tokens than greedy decoding's."""
    L = prompt.shape[1]
    if torch.equal(out, greedy64(decoder, prompt, n, position=0)):
        raise named("argmax_first_position")
    raise_if_prefill_without_caches(model, use_cache)
    if use_cache and model.calls and not all(cached for _, cached in model.calls[1:]):
        raise named("decode_without_caches")
    decode_steps = model.fed[1:] if use_cache else []
    for step, ids in enumerate(decode_steps):
        newest = out[:, L + step : L + step + 1]
        if ids.shape == newest.shape and not torch.equal(ids, newest):
            raise Mistake(
                f"decode call {step + 1} was fed {ids.flatten().tolist()}, but the token just "
                f"generated was {newest.flatten().tolist()}: it looks like "
                f"{HINTS['fed_wrong_token'][0]}.",
                HINTS["fed_wrong_token"][1],
                "fed_wrong_token",
            )
    # Call s of a one-call-per-step loop returned the logits that choose token L + s.
    new_tokens = out[:, L:].T  # (n, B)
    if model.last_logits and all(
        set(chosen.tolist()) <= set(logits.argmax(0).tolist())  # batch indices, 0..B-1
        for chosen, logits in zip(new_tokens, model.last_logits)
    ):
        raise named("argmax_over_batch")
    for step, logits in enumerate(model.last_logits[:n]):
        chosen, best = out[:, L + step], logits.argmax(-1)  # (B,)
        fed, _ = model.calls[step]
        if fed > 1 and torch.equal(chosen, model.first_logits[step].argmax(-1)):
            raise named("argmax_first_position")  # e.g. logits[:, 0] of the prefill's logits
        if not torch.equal(chosen, best):
            raise Mistake(
                f"new token {step} is {chosen.tolist()}, but the model call before it returned "
                f"logits whose last position has its argmax at {best.tolist()}: it looks like "
                f"{HINTS['next_token_not_argmax'][0]}.",
                HINTS["next_token_not_argmax"][1],
                "next_token_not_argmax",
            )
    raise Mistake(
        f"generate(..., use_cache={use_cache}) gave other tokens than greedy decoding.",
        HINTS["generate_wrong_tokens"][1],
        "generate_wrong_tokens",
    )


def raise_if_prefill_without_caches(model, use_cache):
    """With the cache, the first call (the prefill) made without caches, the others with them."""
    cached = [given for _, given in model.calls]
    if use_cache and len(cached) > 1 and not cached[0] and all(cached[1:]):
        raise Mistake(
            f"the model calls were given caches {cached}: it looks like "
            f"{HINTS['prefill_without_caches'][0]}.",
            HINTS["prefill_without_caches"][1],
            "prefill_without_caches",
        )


def _generate_check(generate, rng, use_cache, **model_kwargs):
    decoder = tiny_decoder(rng, **model_kwargs)
    # B > 1: a next token (1, B) instead of (B, 1), or (B,), is the right shape only when B = 1
    B, L, n = draw(rng, 2, 3), draw(rng, 2, 8), draw(rng, 3, 12)
    prompt = torch.randint(0, decoder.vocab_size, (B, L), generator=rng)
    model = Recorder(decoder)
    out = call_generate(generate, model, prompt.clone(), n, use_cache)
    ref = greedy64(decoder, prompt, n)
    if isinstance(out, torch.Tensor) and out.shape == (B, n) and torch.equal(out, ref[:, L:]):
        raise named("generate_without_prompt")
    if isinstance(out, torch.Tensor) and out.dim() == 2 and out.shape[0] == B:
        made = out.shape[1] - L
        if made != n and torch.equal(out[:, : L + min(made, n)], ref[:, : L + min(made, n)]):
            raise Mistake(
                f"generate(..., max_new_tokens={n}) made {made} new tokens.",
                HINTS["wrong_token_count"][1],
                "wrong_token_count",
            )
    expect_tensor(out, f"generate(..., {n}, use_cache={use_cache})", (B, L + n), torch.long)
    if not torch.equal(out, ref):
        explain_other_tokens(model, decoder, out, prompt, n, use_cache)
    return model, L, n


def generate_without_cache(generate, rng):
    """use_cache=False: greedy tokens, the prompt followed by max_new_tokens new ones"""
    model, _, _ = _generate_check(generate, rng, False)
    if model.inits or any(cached for _, cached in model.calls):
        raise named("cache_used_when_off")


def generate_with_cache(generate, rng):
    """use_cache=True: the same tokens, a prefill then one token per model call"""
    model, L, n = _generate_check(generate, rng, True, num_kv_heads=2)
    if model.inits == 0:
        raise named("cache_not_initialised")
    raise_if_prefill_without_caches(model, True)
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


FACTORS = ("num_layers", "num_kv_heads", "head_dim", "seq_len", "batch_size")


def call_bytes(kv_cache_bytes, args, dtype):
    """kv_cache_bytes(*args, dtype); a TypeError, KeyError or ValueError (the student's own, for
    a dtype they did not expect) for one dtype is a size table or torch.finfo that does not
    cover it."""
    try:
        return kv_cache_bytes(*args, dtype)
    except Mistake as mistake:
        if any(crashed_with(mistake, error) for error in ("TypeError", "KeyError", "ValueError")):
            description, fix = HINTS["element_size_by_hand"]
            raise Mistake(
                f"{mistake.message}\n      (for {dtype}) It looks like {description}.",
                fix,
                "element_size_by_hand",
            ) from None
        raise


def explain_bytes(got, ref, args, dtype):
    """Name the factor that `got` is off by, when it is one."""
    if got == ref // 2:
        raise named("forgot_k_and_v")
    size = torch.tensor([], dtype=dtype).element_size()
    if any(got == ref // size * fixed for fixed in (1, 2, 4, 8)):
        raise named("wrong_element_size")
    if got == ref * 8:
        raise named("bits_not_bytes")
    if isinstance(got, (int, float)) and any(
        math.isclose(got, ref / unit, rel_tol=1e-6) for unit in (2**30, 2**20, 1e9, 1e6)
    ):
        raise named("wrong_unit")
    for name, factor in zip(FACTORS, args):
        if got * factor == ref:
            raise Mistake(
                f"kv_cache_bytes{args + (dtype,)} = {got}, expected {ref}: {name} = {factor} "
                f"is missing from the product.",
                HINTS["missing_factor"][1],
                "missing_factor",
            )


def bytes_every_dtype(kv_cache_bytes, rng):
    """2 * layers * kv_heads * head_dim * seq_len * batch * bytes, for float32/16, bf16, int8"""
    for dtype in (torch.float32, torch.float16, torch.bfloat16, torch.int8, torch.float64):
        # Every factor its own size, none an element size (1, 2, 4, 8): a missing factor is
        # told apart from the others by the ratio it leaves.
        args = distinct_sizes(
            rng, (3, 40), (3, 8), (16, 128), (9, 4096), (3, 8), avoid=(4, 8, 16, 32, 64, 128)
        )
        got = call_bytes(kv_cache_bytes, args, dtype)
        expect_bytes(got, bytes_reference(*args, dtype), args, dtype)


def expect_bytes(got, ref, args, dtype):
    """`got` is the int `ref`; a known way of missing it is named."""
    if got != ref:
        explain_bytes(got, ref, args, dtype)
        raise Mistake(
            f"kv_cache_bytes{args + (dtype,)} = {got}, expected {ref}.",
            HINTS["missing_factor"][1],
            "wrong_values",
        )
    if isinstance(got, torch.Tensor):
        raise Mistake(
            f"kv_cache_bytes returned a tensor, {got!r}, expected an int: the product was made of "
            "tensors (torch.tensor(...) of a size, or a tensor's .prod()).",
            "multiply plain ints (element_size() is already an int), or return int(...) of a "
            "one-element tensor.",
            "bytes_not_int",
        )
    if not isinstance(got, int):
        description, fix = HINTS["bytes_not_int"]
        raise Mistake(
            f"kv_cache_bytes returned {type(got).__name__} {got}, expected an int: it looks like "
            f"{description}.",
            fix,
            "bytes_not_int",
        )


def bytes_match_real_buffers(kv_cache_bytes, rng):
    """the formula equals the bytes of real preallocated K and V buffers"""
    # Every factor its own size, none 2 (K and V) or an element size: a missing factor leaves a
    # ratio that names it.
    args = distinct_sizes(rng, (1, 5), (1, 6), (3, 16), (3, 32), (1, 7), avoid=(2, 4, 8))
    layers, heads, D, L, B = args
    dtype = (torch.float16, torch.bfloat16, torch.float32)[draw(rng, 0, 2)]
    real = sum(
        t.numel() * t.element_size()
        for _ in range(layers)
        for t in (torch.zeros(B, heads, L, D, dtype=dtype),) * 2
    )
    expect_bytes(kv_cache_bytes(*args, dtype), real, args, dtype)


# ----------------------------------------------------------------------------- RollingKVCache


class DuplicateWrites(TorchDispatchMode):
    """Counts the indexed writes (x[index] = y, index_put_, index_copy_) that send several values
    to one place: which of them stays is undefined (on a GPU, any)."""

    def __init__(self):
        super().__init__()
        self.duplicates = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = func.overloadpacket.__name__
        if name in ("index_put_", "index_put", "_index_put_impl_"):
            accumulate = args[3] if len(args) > 3 else kwargs.get("accumulate", False)
            if not accumulate and repeats_a_place(args[1]):  # accumulate=True adds them all up
                self.duplicates += 1
        elif name in ("index_copy_", "index_copy") and repeats_a_place([args[2]]):
            self.duplicates += 1
        return func(*args, **kwargs)

    def absorb(self, seen: dict):
        """Add what the same probe counted in the student's kernel (grader/harness/measuring)."""
        self.duplicates += seen["duplicates"]


def repeats_a_place(indices) -> bool:
    """Two of the places that index_put's `indices` (None: a whole dim) name are the same."""
    used = [index for index in indices if index is not None]
    if not used or any(index.dtype == torch.bool for index in used):
        return False  # a bool mask names each place once
    places = torch.stack([index.flatten() for index in torch.broadcast_tensors(*used)])
    return places.unique(dim=1).shape[1] < places.shape[1]  # places: (len(used), n)


def rolling_run(RollingKVCache, rng, window, chunks, B=1, H=2, D=4):
    cache = RollingKVCache(B, H, D, window, dtype=torch.float32, device="cpu")
    update, _ = _methods(cache, "RollingKVCache")
    total = sum(chunks)
    k_seq, v_seq = randn((B, H, total, D), rng), randn((B, H, total, D), rng)
    start = 0
    for n in chunks:
        writes = DuplicateWrites()
        with measuring(f"{__name__}:DuplicateWrites", writes.absorb), writes:
            result = update(k_seq[..., start : start + n, :], v_seq[..., start : start + n, :])
        if writes.duplicates:
            description, fix = HINTS["rolling_duplicate_slots"]
            raise Mistake(
                f"update with {n} new positions (window {window}) wrote several values into one "
                f"slot in one indexed assignment: it looks like {description}.",
                fix,
                "rolling_duplicate_slots",
            )
        if not (isinstance(result, tuple) and len(result) == 3):
            raise Mistake(
                "update should return (k, v, positions).",
                "return the keys, the values and their absolute positions (a LongTensor).",
                "rolling_wrong_keys",
            )
        ranks = [t.dim() if isinstance(t, torch.Tensor) else 0 for t in result]
        if ranks != [4, 4, 1] and sorted(ranks) == [1, 4, 4]:
            raise named("rolling_wrong_order")
        expect_bounded(cache, window)
        k, v, positions = result
        if not isinstance(positions, torch.Tensor) or positions.dtype != torch.long:
            got = (
                f"a {positions.dtype} tensor of shape {tuple(positions.shape)}"
                if isinstance(positions, torch.Tensor)
                else repr(positions)
            )
            raise Mistake(
                f"positions (the third of k, v, positions) should be a LongTensor, got {got}.",
                HINTS["positions_not_long"][1],
                "positions_not_long",
            )
        yield start, n, k, v, positions, k_seq, v_seq, cache
        start += n


def expect_bounded(cache, window):
    """No 4-D tensor of the cache holds more than `window` positions."""
    buffers = [t for t in vars(cache).values() if isinstance(t, torch.Tensor) and t.dim() == 4]
    if not buffers or any(t.shape[-2] > window for t in buffers):
        raise named("rolling_not_bounded")


def overwritten_keys(k_seq, positions, start, last, window):
    """The keys at `positions` as a ring read after writing positions start..last would give
    them: an old position's slot (one before `start`) holds the latest position up to `last`
    that maps to it. With start = last + 1, every position is read back from the ring."""
    latest = [p + (last - p) // window * window if p < start else p for p in positions]
    return k_seq[..., latest, :]


def first_slot_keys(k_seq, positions, start, window):
    """The keys at `positions` as a ring read from its first slots, 0, 1, ..., gives them: old
    position number s (one before `start`) comes from slot s, which holds the latest position
    before `start` that maps to it."""
    old = [p for p in positions if p < start]
    latest = [s + (start - 1 - s) // window * window for s in range(len(old))]
    return k_seq[..., latest + [p for p in positions if p >= start], :]


def _expected_positions(start, n, window):
    return list(range(max(0, start - window + 1), start + n))


def expect_window_positions(positions, start, n, window):
    """After an update of positions start..start + n - 1, `positions` are every position some
    new query may see: max(0, start - window + 1) .. start + n - 1."""
    want = _expected_positions(start, n, window)
    got = sorted(positions.flatten().tolist())
    if got == want:
        return
    if start + n > window and max(got, default=0) < window:
        raise named("positions_not_absolute")
    if n > 1 and got == want[-window:]:
        raise Mistake(
            f"after an update of {n} positions, {start}..{start + n - 1} (window {window}), the "
            f"cache returned positions {got}, expected {want}: it looks like "
            f"{HINTS['rolling_only_last_window'][0]}.",
            HINTS["rolling_only_last_window"][1],
            "rolling_only_last_window",
        )
    raise Mistake(
        f"after {start + n} positions (window {window}) the cache returned positions {got}, "
        f"expected {want}.",
        HINTS["rolling_wrong_keys"][1],
        "rolling_wrong_keys",
    )


def rolling_positions_are_absolute(RollingKVCache, rng):
    """after the ring wraps, each returned key sits next to its absolute position"""
    window = draw(rng, 2, 5)
    # The second chunk wraps the ring for the first time (start < window < start + n): its new
    # keys land in the slots of old keys it must still return, so those are read before the write.
    first = draw(rng, 1, window - 1)
    chunks = [first, draw(rng, window - first + 1, window)] + [1] * draw(rng, window, 2 * window)
    for start, n, k, v, positions, k_seq, v_seq, _ in rolling_run(
        RollingKVCache, rng, window, chunks
    ):
        expect_window_positions(positions, start, n, window)
        got = positions.flatten().tolist()
        expect_window_keys(
            k, k_seq, positions, start, start + n - 1, window, f"k next to positions {got}"
        )
        expect_close(
            v,
            v_seq[..., positions.flatten(), :].double(),
            torch.float32,
            what=f"v next to positions {got}",
        )


def expect_window_keys(k, k_seq, positions, start, last, window, what):
    """The returned keys are those of their positions; keys overwritten by the update's new ones
    (positions start..last) before they were read, and old keys read from the first slots, are
    named."""
    order = positions.flatten().tolist()
    right = k_seq[..., order, :].double()
    suspects = [
        ("rolling_overwritten_before_read", overwritten_keys(k_seq, order, start, last, window)),
        # the new keys read back too: a chunk longer than the window overwrites its own
        ("rolling_overwritten_before_read", overwritten_keys(k_seq, order, last + 1, last, window)),
        ("rolling_read_from_first_slots", first_slot_keys(k_seq, order, start, window)),
    ]
    suspects = [(key, keys.double()) for key, keys in suspects]
    suspects = [(key, keys) for key, keys in suspects if not torch.equal(keys, right)]
    expect_close(k, right, torch.float32, what=what, suspects=suspects)


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
        expect_window_positions(positions, start, n, window)
        if (
            isinstance(k, torch.Tensor)
            and isinstance(positions, torch.Tensor)
            and (positions.numel() == k.shape[-2])
        ):
            what = f"k returned after positions {start}..{start + n - 1} (window {window})"
            expect_window_keys(k, k_seq, positions, start, start + n - 1, window, what)
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
    """the ring holds `window` slots after a prompt longer than the window; seq_len counts all"""
    window = draw(rng, 2, 6)
    chunks = [window + draw(rng, 1, window)] + [1] * (3 * window)
    for *_, cache in rolling_run(RollingKVCache, rng, window, chunks):
        pass
    expect_bounded(cache, window)
    if _seq_len(cache) != sum(chunks):
        raise Mistake(
            f"seq_len is {_seq_len(cache)} after {sum(chunks)} positions.",
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
                if crashed_with(mistake, "KeyError") and name not in cache.block_tables:
                    raise named_crash(mistake, "block_table_not_stored") from None
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
            expect_no_block_twice(cache)
            expect_gathered(result, written[name], block_size, f"update({name!r}, ...)")
    return cache, written, block_size, num_blocks


def _update_fresh_pool(PagedKVCache, H: int, L: int, rng) -> tuple:
    """k and v of shape (H, L, 4) and what update("probe", k, v) on a fresh pool with blocks of
    2 gave back, if it was a pair of tensors (else None: it raised, or returned something else)."""
    D, block_size = 4, 2
    k, v = randn((H, L, D), rng), randn((H, L, D), rng)
    cache = PagedKVCache(-(-L // block_size), block_size, H, D)
    try:
        result = guarded(cache.update, "PagedKVCache", FORBIDDEN)("probe", k, v)
    except Mistake:
        return k, v, None
    pair = (
        isinstance(result, (tuple, list))
        and len(result) == 2
        and all(isinstance(got, torch.Tensor) for got in result)
    )
    return k, v, result if pair else None


def reads_axes_swapped(PagedKVCache, rng) -> bool:
    """With num_heads == L_new, a fresh pool gathers back k_new with its first two axes swapped:
    the class reads k_new as (L_new, num_heads, head_dim)."""
    # one shape for both readings, so this layout mistake cannot crash
    k, v, result = _update_fresh_pool(PagedKVCache, 3, 3, rng)
    swapped = (k.transpose(0, 1), v.transpose(0, 1))
    return result is not None and all(
        got.shape == ref.shape and torch.equal(got, ref) for got, ref in zip(result, swapped)
    )


def gathers_positions_first(PagedKVCache, rng) -> bool:
    """With num_heads != L_new, update gives back k_new as (L_new, num_heads, head_dim)."""
    H, L = 2, 3
    _, _, result = _update_fresh_pool(PagedKVCache, H, L, rng)
    return result is not None and all(got.shape == (L, H, 4) for got in result)


def gathered_after(PagedKVCache, rng, chunks, block_size=3):
    """A fresh sequence fed `chunks` (lengths) of new positions: True when no update crashes and
    the last one gives back every position written."""
    H, D = 2, 3
    total = sum(chunks)
    cache = PagedKVCache(-(-total // block_size), block_size, H, D)
    update = guarded(cache.update, "PagedKVCache", FORBIDDEN)
    k_seq, v_seq = randn((H, total, D), rng), randn((H, total, D), rng)
    start = 0
    try:
        for n in chunks:
            k, v = update("probe", k_seq[:, start : start + n], v_seq[:, start : start + n])
            start += n
    except (Mistake, TypeError, ValueError):  # (k, v) not returned
        return False
    right = (k_seq, v_seq)
    return all(
        isinstance(got, torch.Tensor) and torch.equal(got, ref) for got, ref in zip((k, v), right)
    )


def raise_if_chunk_in_one_block(PagedKVCache, rng, mistake):
    """Single tokens land right, a chunk that crosses a block boundary does not: the chunk was
    written into one block, not each position into its own."""
    block_size = 3
    if not gathered_after(PagedKVCache, rng, [1] * (2 * block_size + 1), block_size):
        return
    if gathered_after(PagedKVCache, rng, [2, 3], block_size):
        return
    raise Mistake(
        f"{mistake.message}\n      One token at a time lands right, but updates of 2 then 3 "
        f"positions with block_size {block_size} (the second crosses into a new block) do not: "
        "it looks like a chunk written into one block instead of each position into its own "
        "block.",
        HINTS["wrong_block_for_position"][1],
        "wrong_block_for_position",
    ) from None


def naming_paged_crashes(check):
    """`check`, where a crash that reads from a view of the pool while writing into it, a
    gather that puts the positions first, a chunk crossing a block boundary written into one
    block, or a failure of a class that reads k_new's axes swapped (often an IndexError or a
    shape error), is named."""

    @functools.wraps(check)
    def run(PagedKVCache, rng):
        try:
            with naming_crashes(
                ("pool_written_from_its_own_view", "RuntimeError", "single memory location")
            ):
                return check(PagedKVCache, rng)
        except Mistake as mistake:
            recognised = ("raised", "block_table_off_by_one", "wrong_block_for_position")
            if mistake.key not in recognised:
                raise
            if gathers_positions_first(PagedKVCache, rng):
                raise named_crash(mistake, "gathered_positions_first") from None
            raise_if_chunk_in_one_block(PagedKVCache, rng, mistake)
            if reads_axes_swapped(PagedKVCache, rng):
                description, fix = HINTS["k_new_axes_swapped"]
                raise Mistake(
                    f"{mistake.message}\n      With num_heads == L_new, update gives back k_new "
                    f"with its first two axes swapped: it looks like {description}.",
                    fix,
                    "k_new_axes_swapped",
                ) from None
            raise

    return run


def expect_gathered(result, reference, block_size, what):
    """(k, v) equal to the reference, with the mistakes a block layout makes named."""
    if not isinstance(result, (tuple, list)) or len(result) != 2:
        raise Mistake(
            f"{what} should return (k, v), got {type(result).__name__}.",
            "return the sequence's gathered K and V.",
            "wrong_shape",
        )
    for got, ref, name in zip(result, reference, "kv"):
        H, L, D = ref.shape
        if isinstance(got, torch.Tensor) and H != L and got.shape == (L, H, D):
            raise Mistake(
                f"{name} from {what} has shape {tuple(got.shape)}, expected {(H, L, D)}: it looks "
                f"like {HINTS['gathered_positions_first'][0]}.",
                HINTS["gathered_positions_first"][1],
                "gathered_positions_first",
            )
        if (
            isinstance(got, torch.Tensor)
            and got.dim() == 3
            and got.shape[1] > ref.shape[1]
            and got.shape[1] % block_size == 0
        ):
            raise named("gather_not_cropped")
        expect_tensor(got, f"{name} from {what}", ref.shape, torch.float32)
        if name == "v" and torch.equal(got, reference[0]) and not torch.equal(got, ref):
            raise named("v_gets_k")
        if not torch.equal(got, ref):
            if heads_and_blocks_mixed(got, ref, block_size):
                raise named("gather_heads_blocks_mixed")
            raise named("wrong_block_for_position")


def heads_and_blocks_mixed(got, ref, block_size) -> bool:
    """`got` (H, L, D) is the sequence's blocks, (n_blocks, H, block_size, D), reshaped to
    (H, n_blocks * block_size, D) without moving the heads first, then cropped to L. Entries
    that come from the unused tail of the last block hold whatever the pool had: not compared."""
    H, L, _ = ref.shape
    padded = -(-L // block_size) * block_size  # n_blocks * block_size
    # got[h, t] is entry h * padded + t of the blocks in (n_blocks, H, block_size) order
    flat = torch.arange(H).unsqueeze(-1) * padded + torch.arange(L)  # (H, L)
    block, head, offset = flat // (H * block_size), flat // block_size % H, flat % block_size
    position = block * block_size + offset
    known = position < L
    mixed = ref[head.clamp(max=H - 1), position.clamp(max=L - 1)]  # (H, L, D)
    return bool(torch.equal(got[known], mixed[known]))


def paged_gather_equals_contiguous(PagedKVCache, rng):
    """three sequences share one pool; each update and gather equals that sequence's torch.cat"""
    cache, written, block_size, _ = paged_fill(PagedKVCache, rng)
    gather = guarded(cache.gather, "PagedKVCache", FORBIDDEN)
    for name, reference in written.items():
        expect_gathered(gather(name), reference, block_size, f"gather({name!r})")


def expect_no_block_twice(cache):
    """No block in two tables, or in a table and the free list."""
    owners = [block for table in cache.block_tables.values() for block in table] + list(cache.free)
    if len(owners) != len(set(owners)):
        twice = sorted({block for block in owners if owners.count(block) > 1})
        raise Mistake(
            f"block {twice[0]} is owned twice (block tables {dict(cache.block_tables)}, free "
            f"{list(cache.free)}): it looks like {HINTS['blocks_shared'][0]}.",
            HINTS["blocks_shared"][1],
            "blocks_shared",
        )


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
    if sorted(cache.free) != sorted(freed):
        raise named("blocks_not_freed")
    if "b" in cache.block_tables:
        raise named("free_keeps_table")
    expect_owned_once(cache, num_blocks)
    H, length, D = written["b"][0].shape
    k, v = randn((H, length, D), rng), randn((H, length, D), rng)
    # The freed id used again: a new sequence, from position 0.
    try:
        result = guarded(cache.update, "PagedKVCache", FORBIDDEN)("b", k, v)
    except Mistake as mistake:
        # The blocks came back and the table is gone: only a kept length runs the pool dry.
        if isinstance(mistake.__cause__, (IndexError, ValueError)):
            description, fix = HINTS["free_keeps_length"]
            raise Mistake(
                f"{mistake.message}\n      (update('b', ...) of {length} positions, after "
                f"free_sequence('b') gave its {len(freed)} blocks back) It looks like "
                f"{description}.",
                fix,
                "free_keeps_length",
            ) from None
        raise
    if isinstance(result, (tuple, list)) and isinstance(result[0], torch.Tensor):
        if result[0].dim() == 3 and result[0].shape[1] == 2 * length:
            raise named("free_keeps_length")
    expect_gathered(result, (k, v), block_size, "update('b', ...) after freeing 'b'")
    gather = guarded(cache.gather, "PagedKVCache", FORBIDDEN)
    for name in ("a", "c"):
        expect_gathered(gather(name), written[name], block_size, f"gather({name!r})")


def paged_full_pool_errors(PagedKVCache, rng):
    """a pool with no free block left raises ValueError, not an overwrite"""
    cache, written, block_size, _ = paged_fill(PagedKVCache, rng)
    H, _, D = written["a"][0].shape
    update = guarded(cache.update, "PagedKVCache", FORBIDDEN)
    k = randn((H, block_size, D), rng)
    expect_value_error(lambda: update("a", k, k), "update on a full pool", "no_error_for_full_pool")
    # Some blocks free, one too few: the failed update must leave the free list as it was.
    guarded(cache.free_sequence, "PagedKVCache", FORBIDDEN)("b")
    free_before = sorted(cache.free)
    k = randn((H, (len(free_before) + 1) * block_size, D), rng)
    expect_value_error(
        lambda: update("c", k, k),
        f"update needing {len(free_before) + 1} new blocks with {len(free_before)} free",
        "no_error_for_full_pool",
    )
    if sorted(cache.free) != free_before:
        raise Mistake(
            f"after the failed update the free list is {sorted(cache.free)}, it was "
            f"{free_before}: it looks like {HINTS['blocks_leaked_on_error'][0]}.",
            HINTS["blocks_leaked_on_error"][1],
            "blocks_leaked_on_error",
        )


def _exercise(checks, forbidden):
    return Exercise(checks=checks, forbidden=forbidden)


EXERCISES = {
    "KVCache": _exercise(
        checks=[
            naming_length_axis(check)
            for check in (
                cache_prefill_then_decode,
                cache_seq_len_and_reset,
                cache_is_preallocated,
                cache_clear_errors,
            )
        ],
        forbidden=FORBIDDEN,
    ),
    "cached_attention": _exercise(
        checks=[
            attention_prefill_after_cache,
            attention_prefill_square,
            attention_decode_one,
            attention_in_float16,
        ],
        forbidden=ATTENTION_FORBIDDEN,
    ),
    "generate": _exercise(
        checks=[generate_without_cache, generate_with_cache, generate_rope_model],
        forbidden=GENERATE_FORBIDDEN,
    ),
    "kv_cache_bytes": _exercise(
        checks=[bytes_every_dtype, bytes_match_real_buffers], forbidden=FORBIDDEN
    ),
    "RollingKVCache": _exercise(
        checks=[
            rolling_positions_are_absolute,
            rolling_equals_window_attention,
            rolling_is_bounded,
        ],
        forbidden=FORBIDDEN,
    ),
    "PagedKVCache": _exercise(
        checks=[
            naming_paged_crashes(check)
            for check in (
                paged_gather_equals_contiguous,
                paged_block_tables,
                paged_free_and_reuse,
                paged_full_pool_errors,
            )
        ],
        forbidden=FORBIDDEN,
    ),
}
