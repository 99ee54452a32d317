"""Dense float64 attention and the inputs that tiled_attention's and FlashAttentionTorch's checks
share."""

import torch

from grader.suites._common import draw, randn


def dense64(q, k, v, mask=None, scale=None):
    """(out, lse) in float64 from the full score matrix; `mask` (Lq, Lk) bool, True = may attend;
    a row with nothing to attend gives zeros and lse = -inf."""
    q, k, v = q.double(), k.double(), v.double()
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    s = q @ k.transpose(-2, -1) * scale
    if mask is not None:
        s = s.masked_fill(~mask, float("-inf"))
    lse = torch.logsumexp(s, dim=-1)
    shift = torch.where(torch.isinf(lse), torch.zeros_like(lse), lse)
    return torch.exp(s - shift.unsqueeze(-1)) @ v, lse


def causal_rule(Lq: int, Lk: int, offset: int = None, strict: bool = False, flip: bool = False):
    """(Lq, Lk) bool: key j allowed for query i when j <= offset + i (offset Lk - Lq: the course's
    bottom-right); strict: j < offset + i; flip: j >= offset + i (the wrong side)."""
    offset = Lk - Lq if offset is None else offset
    position = torch.arange(Lq).unsqueeze(-1) + offset
    j = torch.arange(Lk)
    if flip:
        return j >= position
    return j < position if strict else j <= position


def qkv(rng, Lq, Lk, dtype=torch.float32, leading=(2, 3), scale=1.5):
    d = 2 ** draw(rng, 2, 4)
    dv = d + draw(rng, 1, 3)
    return (
        randn((*leading, Lq, d), rng, dtype, scale),
        randn((*leading, Lk, d), rng, dtype, scale),
        randn((*leading, Lk, dv), rng, dtype),
    )


def dense_max64(q, k, mask):
    s = q.double() @ k.double().transpose(-2, -1) * q.shape[-1] ** -0.5
    if mask is not None:
        s = s.masked_fill(~mask, float("-inf"))
    return s.amax(-1)
