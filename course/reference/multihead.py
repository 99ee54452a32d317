"""Library versions of day 3: heads, grouped-query attention and positions.

Later days (the KV cache of day 4, the capstone of day 10) stand on these, never on a student's
answers. They follow the course's conventions: tensors are (batch, heads, seq, head_dim), masks
are boolean with True = may attend, and positions count from 0, with queries bottom-right
aligned when Lq < Lk (the newest tokens, as in a KV cache).
"""

import math

import torch
import torch.nn as nn

from course.reference import check_same_dtype
from course.reference.masks import attention


def split_heads(x: torch.Tensor, num_heads: int) -> torch.Tensor:
    """(B, L, d_model) -> (B, H, L, d_model / H); head h owns features [h*dh, (h+1)*dh)."""
    *leading, length, d_model = x.shape
    if d_model % num_heads:
        raise ValueError(f"d_model={d_model} is not divisible by num_heads={num_heads}")
    return x.view(*leading, length, num_heads, d_model // num_heads).transpose(-3, -2)


def merge_heads(x: torch.Tensor) -> torch.Tensor:
    """(B, H, L, dh) -> (B, L, H * dh), the inverse of split_heads."""
    *leading, heads, length, head_dim = x.shape
    return x.transpose(-3, -2).reshape(*leading, length, heads * head_dim)


def repeat_kv(x: torch.Tensor, n_rep: int) -> torch.Tensor:
    """(B, Hkv, L, D) -> (B, Hkv * n_rep, L, D): each KV head n_rep times in a row."""
    if n_rep < 1:
        raise ValueError(f"n_rep must be >= 1, got {n_rep}")
    return x if n_rep == 1 else x.repeat_interleave(n_rep, dim=-3)


class MultiHeadAttention(nn.Module):
    """Multi-head attention with grouped-query (GQA) and multi-query (MQA) variants.

    `num_kv_heads` K/V heads are shared by groups of num_heads / num_kv_heads query heads (query
    head h reads KV head h // group). forward(x, context=None, mask=None, need_weights=False)
    returns (out, weights or None): weights (B, H, Lq, Lk) per head. x, context and the weights
    share one dtype (float16 and bfloat16 too), or run under torch.autocast.
    """

    def __init__(self, d_model: int, num_heads: int, num_kv_heads: int = None, bias: bool = True):
        super().__init__()
        num_kv_heads = num_heads if num_kv_heads is None else num_kv_heads
        if d_model % num_heads:
            raise ValueError(f"d_model={d_model} is not divisible by num_heads={num_heads}")
        if num_kv_heads < 1 or num_heads % num_kv_heads:
            raise ValueError(
                f"num_heads={num_heads} is not a multiple of num_kv_heads={num_kv_heads}"
            )
        self.d_model, self.num_heads, self.num_kv_heads = d_model, num_heads, num_kv_heads
        self.head_dim = d_model // num_heads
        self.q_proj = nn.Linear(d_model, d_model, bias=bias)
        self.k_proj = nn.Linear(d_model, num_kv_heads * self.head_dim, bias=bias)
        self.v_proj = nn.Linear(d_model, num_kv_heads * self.head_dim, bias=bias)
        self.out_proj = nn.Linear(d_model, d_model, bias=bias)

    def forward(self, x, context=None, mask=None, need_weights=False, positions=None):
        """x (B, Lq, d_model), context (B, Lk, d_model) or None (self-attention).

        `positions` (library extra): a LongTensor of query/key positions for RoPE, applied
        to q and k when given (self-attention only).
        """
        if x.shape[-1] != self.d_model:
            raise ValueError(f"expected x (B, L, {self.d_model}), got {tuple(x.shape)}")
        context = x if context is None else context
        fix = "call .to(dtype) on the layer or on the inputs"
        check_same_dtype(
            "MultiHeadAttention", fix, x=x, context=context, weights=self.q_proj.weight
        )
        q = split_heads(self.q_proj(x), self.num_heads)  # (B, H, Lq, dh)
        k = split_heads(self.k_proj(context), self.num_kv_heads)  # (B, Hkv, Lk, dh)
        v = split_heads(self.v_proj(context), self.num_kv_heads)  # (B, Hkv, Lk, dh)
        if positions is not None:
            q, k = apply_rope(q, positions), apply_rope(k, positions)
        group = self.num_heads // self.num_kv_heads
        k, v = repeat_kv(k, group), repeat_kv(v, group)  # (B, H, Lk, dh)
        out, weights = attention(q, k, v, mask)  # (B, H, Lq, dh)
        out = self.out_proj(merge_heads(out))  # (B, Lq, d_model)
        return out, (weights if need_weights else None)


def sinusoidal_positions(length: int, dim: int) -> torch.Tensor:
    """(length, dim): PE[p, 2i] = sin(p / 10000^(2i/dim)), PE[p, 2i+1] = cos(same)."""
    if length < 0 or dim < 1:
        raise ValueError(f"need length >= 0 and dim >= 1, got length={length}, dim={dim}")
    position = torch.arange(length, dtype=torch.float64).unsqueeze(-1)  # (L, 1)
    frequency = 10000.0 ** (-torch.arange(0, dim, 2, dtype=torch.float64) / dim)  # (ceil(dim/2),)
    angle = position * frequency  # (L, ceil(dim/2))
    table = torch.zeros(length, dim, dtype=torch.float64)
    table[:, 0::2] = angle.sin()
    table[:, 1::2] = angle.cos()[:, : dim // 2]
    return table.float()


def apply_rope(x: torch.Tensor, positions: torch.Tensor, base: float = 10000.0) -> torch.Tensor:
    """Rotary embedding, rotate-half convention (GPT-NeoX / Llama).

    x (..., L, D) with D even; positions a LongTensor broadcastable to (..., L). Pairs feature i
    with i + D/2 and rotates them by the angle p * base^(-2i/D).
    """
    dim = x.shape[-1]
    if dim % 2:
        raise ValueError(f"RoPE needs an even head dimension, got {dim}")
    positions = torch.as_tensor(positions, device=x.device)
    if positions.dtype.is_floating_point:
        raise TypeError(f"positions must be integers (a LongTensor), got {positions.dtype}")
    inv_freq = base ** (-torch.arange(0, dim, 2, dtype=torch.float64, device=x.device) / dim)
    angle = positions.double().unsqueeze(-1) * inv_freq  # (..., L, D/2)
    cos, sin = angle.cos().to(x.dtype), angle.sin().to(x.dtype)
    x1, x2 = x[..., : dim // 2], x[..., dim // 2 :]
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)


def alibi_slopes(num_heads: int) -> torch.Tensor:
    """The ALiBi paper's per-head slopes (its `get_slopes`), float64 (num_heads,)."""
    if num_heads < 1:
        raise ValueError(f"num_heads must be >= 1, got {num_heads}")

    def power_of_two(n):
        return [2.0 ** (-8.0 * h / n) for h in range(1, n + 1)]

    closest = 2 ** int(math.floor(math.log2(num_heads)))
    slopes = power_of_two(closest)
    if closest < num_heads:
        slopes += power_of_two(2 * closest)[0::2][: num_heads - closest]
    return torch.tensor(slopes, dtype=torch.float64)


def alibi_bias(num_heads: int, lq: int, lk: int = None) -> torch.Tensor:
    """(H, lq, lk) float32: -m_h * (pos_q - pos_k), queries bottom-right aligned (pos lk - lq + i).

    The diagonal is 0, earlier keys get a linear penalty, later keys a positive value (masking
    those is the causal mask's job). Add it to the scores before the softmax.
    """
    lk = lq if lk is None else lk
    if lq < 1 or lk < 1:
        raise ValueError(f"need lq >= 1 and lk >= 1, got lq={lq}, lk={lk}")
    pos_q = torch.arange(lq, dtype=torch.float64).unsqueeze(-1) + (lk - lq)  # (lq, 1)
    pos_k = torch.arange(lk, dtype=torch.float64)  # (lk,)
    distance = pos_q - pos_k  # (lq, lk)
    return (-alibi_slopes(num_heads).view(-1, 1, 1) * distance).float()
