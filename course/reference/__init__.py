"""Library versions of each day's building blocks, one module per day, named by its slug.

Later days stand on these, never on a student's answers: a day works even if its student skipped
the one before. They are built on torch's built-ins (and, for day 7 and day 9, Triton), and the
grader forbids them inside the exercise they answer.

    sdpa            day01: stable_softmax
    masks           day02: causal_mask, padding_mask, attention(q, k, v, mask)
    multihead       day03: heads, GQA, positions
    kv_cache        day04: KVCache, RollingKVCache, PagedKVCache, CachedDecoder
    sparse          day05: mask builders, sliding-window and chunked attention
    online_softmax  day06: tiled attention, FlashAttentionTorch
    flash_triton    day07: FlashAttention forward and backward in Triton
    linear_attention, nystrom  day08: linear attention, Performer, Nystrom
    mamba_scan      day09: linear recurrences, selective scan, MambaBlock
    capstone, mechanisms       day10: memory estimates, benchmarks, make_attention
"""
