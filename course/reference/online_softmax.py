"""Library versions of day 6: online softmax and FlashAttention's tiling, in plain PyTorch.

Attention row by row is softmax(s) v with s = q kᵀ / sqrt(d). Streaming the keys in blocks, a
row keeps three things: the running max m, the running denominator l = sum exp(s - m) and the
running numerator acc = sum exp(s - m) v. When a new block raises the max from m to m', both l
and acc were computed against the old max and are multiplied by exp(m - m') before the block's
own terms are added. After the last block, out = acc / l and logsumexp = m + log l.

Nothing here ever holds an (Lq, Lk) tensor: the largest is one (block_q, block_k) tile of
scores per leading index. Causal attention is bottom-right aligned (day 2's convention, the
KV-cache one, as FlashAttention 2.1+): query i sits at absolute position Lk - Lq + i and sees
keys 0 .. Lk - Lq + i. Tiles entirely above that diagonal are skipped, never computed. A query
that may attend to nothing (causal with Lq > Lk) gets a zero output and lse = -inf, never NaN.

The backward pass is FlashAttention-2's: it saves q, k, v, out and the logsumexp (one number
per query), and recomputes each probability tile as exp(s - lse). With dO the gradient of out
and D = rowsum(dO * out):  dv = pᵀ dO,  dp = dO vᵀ,  ds = p * (dp - D),  dq = ds k / sqrt(d),
dk = dsᵀ q / sqrt(d), accumulated tile by tile.

float16 and bfloat16 inputs keep the statistics m, l, the numerator acc and the logsumexp in
float32, as FlashAttention's kernels (and day 7's) do: a sum kept in float16's 11 significant bits
stops growing once it is 2048 times the terms added to it. The score and probability tiles stay in
the input's dtype (torch's matmuls accumulate in float32 inside), so the forward holds the same
tiles as in float32, at 2 bytes per element. The backward computes each tile in float32. Outputs
and gradients come back in the input's dtype, the logsumexp in float32.
"""

import torch

from course.reference import accumulation_dtype
from course.reference.sparse import _positive_int  # an int >= 1, or an error naming the parameter

# ----------------------------------------------------------------------------- checking arguments


def _check_qkv(q, k, v) -> tuple:
    """The broadcast leading shape of q (..., Lq, d), k (..., Lk, d), v (..., Lk, dv)."""
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a tensor, got {type(t).__name__}")
        if t.dim() < 2:
            raise ValueError(
                f"{name} must have at least 2 dims (..., L, d), got shape {tuple(t.shape)}"
            )
        if not t.dtype.is_floating_point:
            raise ValueError(f"{name} must be floating point, got {t.dtype}")
    if not (q.dtype == k.dtype == v.dtype):
        raise ValueError(f"q, k and v must share a dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    if not (q.device == k.device == v.device):
        raise ValueError(
            f"q, k and v must be on one device, got {q.device}, {k.device}, {v.device}"
        )
    if q.shape[-1] != k.shape[-1] or k.shape[-2] != v.shape[-2]:
        raise ValueError(
            f"expected q (..., Lq, d), k (..., Lk, d), v (..., Lk, dv); got q "
            f"{tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}"
        )
    try:
        return torch.broadcast_shapes(q.shape[:-2], k.shape[:-2], v.shape[:-2])
    except RuntimeError:
        raise ValueError(
            f"the leading dims of q {tuple(q.shape)}, k {tuple(k.shape)} and "
            f"v {tuple(v.shape)} do not broadcast"
        ) from None


# ----------------------------------------------------------------------------- online softmax


def _rescale(m_old: torch.Tensor, m_new: torch.Tensor) -> torch.Tensor:
    """exp(m_old - m_new), the factor that moves sums taken against m_old onto m_new; 1 while
    both are still -inf (nothing seen yet), where the plain formula would give NaN."""
    return torch.exp(m_old - _finite(m_new))


def _finite(m: torch.Tensor) -> torch.Tensor:
    """m with -inf replaced by 0: a safe shift for rows that have seen only -inf so far."""
    return torch.where(m == float("-inf"), torch.zeros_like(m), m)


def online_softmax_stats(x: torch.Tensor, block_size: int, dim: int = -1) -> tuple:
    """(max, sum_exp) of x along `dim`, in one streaming pass over blocks of `block_size`.

    sum_exp = sum exp(x - max). Both have x's shape without `dim`, and x's dtype (a float16 or
    bfloat16 x is streamed in float32). A slice that is all -inf (or empty) gives max = -inf and
    sum_exp = 0.
    """
    if not isinstance(x, torch.Tensor) or not x.dtype.is_floating_point:
        raise ValueError(
            f"x must be a floating-point tensor, got "
            f"{x.dtype if isinstance(x, torch.Tensor) else type(x).__name__}"
        )
    if x.dim() == 0:
        raise ValueError("x must have at least one dim to reduce over, got a 0-dim tensor")
    if not -x.dim() <= dim < x.dim():
        raise ValueError(f"dim={dim} is out of range for a tensor of {x.dim()} dims")
    block_size = _positive_int(block_size, "block_size")
    x = x.movedim(dim, -1)  # (..., N)
    stats = accumulation_dtype(x.dtype)
    m = x.new_full(x.shape[:-1], float("-inf"), dtype=stats)  # (...,) running max
    s = x.new_zeros(x.shape[:-1], dtype=stats)  # (...,) running sum of exp(x - m)
    for start in range(0, x.shape[-1], block_size):
        block = x[..., start : start + block_size].to(stats)  # (..., b)
        m_new = torch.maximum(m, block.amax(dim=-1))  # (...,)
        s = s * _rescale(m, m_new) + torch.exp(block - _finite(m_new).unsqueeze(-1)).sum(dim=-1)
        m = m_new
    return m.to(x.dtype), s.to(x.dtype)


# ----------------------------------------------------------------------------- forward


def _causal_keys_end(q_end: int, Lq: int, Lk: int) -> int:
    """One past the last key any query in [.., q_end) may see (bottom-right aligned)."""
    return max(0, min(Lk, Lk - Lq + q_end))


def _tile_scores(q_tile, k_tile, q_start, k_start, Lq, Lk, causal):
    """(..., bq, bk) scores of a (pre-scaled) query tile against a key tile, with the keys above
    the causal diagonal set to -inf (only on tiles that straddle it)."""
    s = q_tile @ k_tile.transpose(-2, -1)  # (..., bq, bk)
    bq, bk = s.shape[-2:]
    if causal and k_start + bk - 1 > Lk - Lq + q_start:  # some key lies past some query
        query_pos = torch.arange(q_start, q_start + bq, device=s.device).unsqueeze(-1) + (Lk - Lq)
        key_pos = torch.arange(k_start, k_start + bk, device=s.device)
        s = s.masked_fill(key_pos > query_pos, float("-inf"))  # (bq, bk) mask broadcasts
    return s


def _forward(q, k, v, block_q, block_k, causal):
    """(out (..., Lq, dv), lse (..., Lq)) tile by tile; q, k, v already checked."""
    batch = torch.broadcast_shapes(q.shape[:-2], k.shape[:-2], v.shape[:-2])
    Lq, d, Lk, dv = q.shape[-2], q.shape[-1], k.shape[-2], v.shape[-1]
    scale = d**-0.5
    stats = accumulation_dtype(q.dtype)  # of m, l, acc and lse
    out = q.new_zeros(*batch, Lq, dv)
    lse = q.new_full((*batch, Lq), float("-inf"), dtype=stats)
    for q_start in range(0, Lq, block_q):
        q_end = min(q_start + block_q, Lq)
        q_tile = q[..., q_start:q_end, :] * scale  # (..., bq, d)
        m = q.new_full((*batch, q_end - q_start), float("-inf"), dtype=stats)  # (..., bq) max
        l = q.new_zeros(*batch, q_end - q_start, dtype=stats)  # (..., bq) running denominator
        acc = q.new_zeros(*batch, q_end - q_start, dv, dtype=stats)  # (..., bq, dv) numerator
        k_stop = _causal_keys_end(q_end, Lq, Lk) if causal else Lk  # skip tiles above the diagonal
        for k_start in range(0, k_stop, block_k):
            k_end = min(k_start + block_k, Lk)
            s = _tile_scores(q_tile, k[..., k_start:k_end, :], q_start, k_start, Lq, Lk, causal)
            m_new = torch.maximum(m, s.amax(dim=-1))  # (..., bq)
            alpha = _rescale(m, m_new)  # (..., bq)
            # in the scores' dtype: m_new is one of them (or 0), so it converts exactly
            p = torch.exp(s - _finite(m_new).to(s.dtype).unsqueeze(-1))  # (..., bq, bk)
            l = l * alpha + p.sum(dim=-1)
            # acc * alpha + p @ v in one step, without a (bq, dv) temporary for acc * alpha
            acc = torch.addcmul(p @ v[..., k_start:k_end, :], acc, alpha.unsqueeze(-1))
            m = m_new
        seen = l > 0  # rows with at least one key
        out[..., q_start:q_end, :] = acc / torch.where(seen, l, torch.ones_like(l)).unsqueeze(-1)
        lse[..., q_start:q_end] = torch.where(
            seen, m + torch.log(l), torch.full_like(l, float("-inf"))
        )
    return out, lse


def tiled_attention(q, k, v, block_q: int = 64, block_k: int = 64, causal: bool = False) -> tuple:
    """softmax(q kᵀ / sqrt(d)) v tile by tile; returns (out (..., Lq, dv), lse (..., Lq)).

    q (..., Lq, d), k (..., Lk, d), v (..., Lk, dv), leading dims broadcasting. lse is the
    natural-log logsumexp of each query's scaled scores, in float32 for float16 and bfloat16
    inputs (out keeps their dtype). causal: bottom-right aligned; a query with no key to see
    gives zeros and lse = -inf.
    """
    _check_qkv(q, k, v)
    return _forward(
        q, k, v, _positive_int(block_q, "block_q"), _positive_int(block_k, "block_k"), bool(causal)
    )


# ----------------------------------------------------------------------------- backward


def _backward(q, k, v, out, lse, d_out, block_q, block_k, causal):
    """(dq, dk, dv) from the saved lse, recomputing each probability tile."""
    batch = lse.shape[:-1]
    Lq, d, Lk = q.shape[-2], q.shape[-1], k.shape[-2]
    scale = d**-0.5
    stats = lse.dtype  # every tile is computed in it: float32 for float16 and bfloat16 inputs
    D = (d_out.to(stats) * out.to(stats)).sum(dim=-1)  # (..., Lq) = rowsum(dO * O)
    # A fully masked row has lse = -inf; shifting by +inf makes its probabilities exp(-inf) = 0.
    lse = torch.where(lse == float("-inf"), torch.full_like(lse, float("inf")), lse)
    dq = q.new_zeros(*batch, Lq, d, dtype=stats)
    dk = q.new_zeros(*batch, Lk, d, dtype=stats)
    dv = q.new_zeros(*batch, Lk, v.shape[-1], dtype=stats)
    for q_start in range(0, Lq, block_q):
        q_end = min(q_start + block_q, Lq)
        rows = slice(q_start, q_end)
        q_tile = q[..., rows, :].to(stats) * scale  # (..., bq, d)
        do_tile = d_out[..., rows, :].to(stats)  # (..., bq, dv)
        k_stop = _causal_keys_end(q_end, Lq, Lk) if causal else Lk
        for k_start in range(0, k_stop, block_k):
            cols = slice(k_start, min(k_start + block_k, Lk))
            k_tile = k[..., cols, :].to(stats)  # (..., bk, d)
            v_tile = v[..., cols, :].to(stats)  # (..., bk, dv)
            s = _tile_scores(q_tile, k_tile, q_start, k_start, Lq, Lk, causal)
            p = torch.exp(s - lse[..., rows].unsqueeze(-1))  # (..., bq, bk)
            dv[..., cols, :] += p.transpose(-2, -1) @ do_tile
            dp = do_tile @ v_tile.transpose(-2, -1)  # (..., bq, bk)
            ds = p * (dp - D[..., rows].unsqueeze(-1))  # (..., bq, bk)
            dq[..., rows, :] += ds @ k_tile * scale
            dk[..., cols, :] += ds.transpose(-2, -1) @ q_tile  # q_tile already holds the scale
    # Inputs that were broadcast receive the sum of their copies' gradients, in their own dtype.
    return tuple(g.sum_to_size(t.shape).to(t.dtype) for g, t in ((dq, q), (dk, k), (dv, v)))


class FlashAttentionTorch(torch.autograd.Function):
    """Tiled attention with FlashAttention-2's memory-light backward.

    FlashAttentionTorch.apply(q, k, v, is_causal[, block_q, block_k]) -> out (..., Lq, dv).
    Saves q, k, v, out and one logsumexp tensor (..., Lq); never an (Lq, Lk) tensor.
    """

    @staticmethod
    def forward(ctx, q, k, v, is_causal=False, block_q=64, block_k=64):
        _check_qkv(q, k, v)
        block_q, block_k = _positive_int(block_q, "block_q"), _positive_int(block_k, "block_k")
        out, lse = _forward(q, k, v, block_q, block_k, bool(is_causal))
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.is_causal, ctx.block_q, ctx.block_k = bool(is_causal), block_q, block_k
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, d_out):
        q, k, v, out, lse = ctx.saved_tensors
        dq, dk, dv = _backward(
            q, k, v, out, lse, d_out.contiguous(), ctx.block_q, ctx.block_k, ctx.is_causal
        )
        return dq, dk, dv, None, None, None


def flash_attention_torch(q, k, v, causal: bool = False, block_q: int = 64, block_k: int = 64):
    """Attention out (..., Lq, dv) through FlashAttentionTorch: tiled forward and backward."""
    return FlashAttentionTorch.apply(q, k, v, causal, block_q, block_k)
