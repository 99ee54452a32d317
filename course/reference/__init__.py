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

import torch


def accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype to keep sums and softmax statistics in: float32 for float16 and bfloat16 inputs
    (their 11 or 8 significant bits lose whole terms of a long sum; torch.softmax and
    FlashAttention accumulate in float32 too), the input's own dtype for float32 and float64."""
    return torch.promote_types(dtype, torch.float32)


def check_same_dtype(what: str, fix: str = "cast them with .to(dtype)", **tensors) -> None:
    """A ValueError that names every dtype when floating-point `tensors` disagree, instead of
    torch's bare "expected scalar type" from inside a matmul. F.scaled_dot_product_attention and
    nn.MultiheadAttention refuse mixed dtypes too; under torch.autocast the casts are torch's to
    make, so nothing is checked there."""
    first = next(iter(tensors.values()))
    if torch.is_autocast_enabled(first.device.type):
        return
    if len({t.dtype for t in tensors.values()}) > 1:
        got = ", ".join(f"{name} {t.dtype}" for name, t in tensors.items())
        raise ValueError(
            f"{what}: {', '.join(tensors)} must share one dtype (float16, bfloat16, float32 and "
            f"float64 are all supported), got {got}: {fix}, or run under torch.autocast"
        )
