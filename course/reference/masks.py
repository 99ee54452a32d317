"""Library version of day 2 (and the attention every later day calls), built on torch's built-ins.

Later days stand on these, never on a student's answers: a day works even if its student skipped
the one before. The conventions are the course's: masks are boolean with True = may attend, and
a query that may attend to nothing gets zero weights and a zero output, never NaN.
"""

import torch

from course.reference import check_same_dtype


def causal_mask(lq: int, lk: int = None, device=None) -> torch.Tensor:
    """(lq, lk) bool, bottom-right aligned: query i sits at absolute position lk - lq + i and
    sees keys 0 .. lk - lq + i (the KV-cache convention: the queries are the newest tokens)."""
    lk = lq if lk is None else lk
    if lq < 1 or lk < 1:
        raise ValueError(f"need lq >= 1 and lk >= 1, got lq={lq}, lk={lk}")
    query_position = torch.arange(lq, device=device).unsqueeze(-1) + (lk - lq)  # (lq, 1)
    return torch.arange(lk, device=device) <= query_position  # (lq, lk)


def padding_mask(lengths: torch.Tensor, max_len: int) -> torch.Tensor:
    """(B, max_len) bool: True for the first lengths[b] positions of sequence b (real tokens)."""
    lengths = torch.as_tensor(lengths)
    if lengths.dim() != 1 or lengths.dtype.is_floating_point:
        raise ValueError(
            f"lengths must be a 1-D integer tensor (B,), got {lengths.dtype} "
            f"of shape {tuple(lengths.shape)}"
        )
    if (lengths < 0).any() or (lengths > max_len).any():
        raise ValueError(f"every length must be in [0, max_len={max_len}], got {lengths.tolist()}")
    return torch.arange(max_len, device=lengths.device) < lengths.unsqueeze(-1)  # (B, max_len)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor = None):
    """softmax(q kᵀ / sqrt(d)) v with an optional boolean mask; returns (out, weights).

    q (..., Lq, d), k (..., Lk, d), v (..., Lk, dv); mask broadcasts to (..., Lq, Lk). float16
    and bfloat16 stay in their dtype, as in F.scaled_dot_product_attention: the matmuls and the
    softmax accumulate in float32 inside torch.
    """
    if q.shape[-1] != k.shape[-1] or k.shape[-2] != v.shape[-2]:
        raise ValueError(
            f"expected q (..., Lq, d), k (..., Lk, d), v (..., Lk, dv); got q "
            f"{tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}"
        )
    check_same_dtype("attention", q=q, k=k, v=v)
    scores = q @ k.transpose(-2, -1) * q.shape[-1] ** -0.5  # (..., Lq, Lk)
    if mask is not None:
        if mask.dtype != torch.bool:
            raise TypeError(f"mask must be boolean (True = may attend), got {mask.dtype}")
        # The dtype's minimum, not -inf: a fully masked row stays finite (uniform), and is then
        # zeroed, so neither the output nor the gradient ever sees NaN.
        scores = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
    weights = torch.softmax(scores, dim=-1)
    if mask is not None:
        weights = weights * mask.any(dim=-1, keepdim=True)  # rows with nothing to attend: zeros
    return weights @ v, weights  # (..., Lq, dv), (..., Lq, Lk)
