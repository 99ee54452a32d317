"""Linear attention and Performers: the course's library versions (day08), built on torch.

Attention with a feature map phi in place of exp(q . k):

    out_i = phi(q_i)^T S / (phi(q_i)^T z + eps),   S = sum_j phi(k_j) v_j^T,   z = sum_j phi(k_j)

costs O(L) instead of O(L^2): S (D' x Dv) and z (D') are summed once and shared by every query.
Causal forms sum over j <= i only, either as a recurrence (an RNN with a D' x Dv state) or chunk
by chunk (quadratic inside a chunk, the state carried between chunks).

Performer (FAVOR+): phi(x) = exp(W x - |x|^2 / 2) / sqrt(m) with W's rows orthogonal random
features gives E[phi(q) . phi(k)] = exp(q . k), the softmax kernel. Its causal form is the chunked
causal linear attention above on these features.

Tensors are (..., L, D) with the same leading dims and one floating dtype for q, k and v.
float16 and bfloat16 inputs are computed in float32 and the output rounded back to their dtype.
"""

import math

import torch
import torch.nn.functional as F

# ----------------------------------------------------------------------------- input checks


def _check_qkv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool = False) -> None:
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor) or t.dim() < 2:
            raise ValueError(
                f"{name} must be a tensor of shape (..., L, D), got "
                f"{tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__}"
            )
    if q.shape[-1] != k.shape[-1]:
        raise ValueError(
            f"q and k must have the same head dim, got q {tuple(q.shape)} and k {tuple(k.shape)}"
        )
    if k.shape[-2] != v.shape[-2]:
        raise ValueError(
            f"k and v must have the same length, got k {tuple(k.shape)} and v {tuple(v.shape)}"
        )
    if not (q.shape[:-2] == k.shape[:-2] == v.shape[:-2]):
        raise ValueError(
            f"q, k and v must have the same leading dims (..., L, D), got "
            f"{tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}"
        )
    if not (q.dtype == k.dtype == v.dtype) or not q.dtype.is_floating_point:
        raise ValueError(
            f"q, k and v must share one floating dtype, got {q.dtype}, {k.dtype}, {v.dtype}"
        )
    if causal and q.shape[-2] != k.shape[-2]:
        raise ValueError(
            f"causal linear attention needs as many queries as keys, got "
            f"Lq={q.shape[-2]} and Lk={k.shape[-2]}"
        )


# ----------------------------------------------------------------------------- precision

HALF_DTYPES = (torch.float16, torch.bfloat16)


def _in_float32(*tensors: torch.Tensor) -> tuple:
    """The tensors, float16 and bfloat16 ones as float32 (exactly: float32 holds every value of
    both). Half precision is too coarse to compute in here: the sums over L (the state S, the
    normaliser z and their prefix sums) overflow float16 past 65504 and drift in bfloat16's 8-bit
    mantissa, and elu(x) + 1 for x < 0 loses its small value to cancellation. So each function
    computes in float32 and rounds only its output back to the input's dtype."""
    return tuple(t.float() if t.dtype in HALF_DTYPES else t for t in tensors)


# ----------------------------------------------------------------------------- feature maps


def elu_feature_map(x: torch.Tensor) -> torch.Tensor:
    """phi(x) = elu(x) + 1 > 0 (Katharopoulos et al. 2020), elementwise."""
    (x32,) = _in_float32(x)
    return (F.elu(x32) + 1).to(x.dtype)


# ----------------------------------------------------------------------------- non-causal


def linear_attention(q, k, v, feature_map=elu_feature_map, eps: float = 1e-6) -> torch.Tensor:
    """O(L) attention: phi(q) (phi(k)^T v) / (phi(q) phi(k)^T 1 + eps). (..., Lq, Dv)."""
    _check_qkv(q, k, v)
    dtype = q.dtype
    q, k, v = _in_float32(q, k, v)
    qf, kf = feature_map(q), feature_map(k)  # (..., Lq, D'), (..., Lk, D')
    state = kf.transpose(-2, -1) @ v  # (..., D', Dv)
    z = kf.sum(dim=-2)  # (..., D')
    numerator = qf @ state  # (..., Lq, Dv)
    denominator = (qf * z.unsqueeze(-2)).sum(dim=-1, keepdim=True)  # (..., Lq, 1)
    return (numerator / (denominator + eps)).to(dtype)


def quadratic_linear_attention(
    q, k, v, feature_map=elu_feature_map, eps: float = 1e-6, causal: bool = False
) -> torch.Tensor:
    """The same result the O(L^2) way: (phi(q) phi(k)^T, masked if causal) row-normalised, @ v."""
    _check_qkv(q, k, v, causal)
    dtype = q.dtype
    q, k, v = _in_float32(q, k, v)
    scores = feature_map(q) @ feature_map(k).transpose(-2, -1)  # (..., Lq, Lk)
    if causal:
        L = q.shape[-2]
        scores = scores.masked_fill(~torch.ones(L, L, dtype=torch.bool, device=q.device).tril(), 0)
    return ((scores @ v) / (scores.sum(dim=-1, keepdim=True) + eps)).to(dtype)


# ----------------------------------------------------------------------------- causal


def causal_linear_attention_recurrent(
    q, k, v, feature_map=elu_feature_map, eps: float = 1e-6
) -> torch.Tensor:
    """The RNN view: S_t = S_{t-1} + phi(k_t) v_t^T, z_t = z_{t-1} + phi(k_t), one step per token."""
    _check_qkv(q, k, v, causal=True)
    dtype = q.dtype
    q, k, v = _in_float32(q, k, v)
    qf, kf = feature_map(q), feature_map(k)
    L = q.shape[-2]
    state = q.new_zeros(*q.shape[:-2], kf.shape[-1], v.shape[-1])  # (..., D', Dv)
    z = q.new_zeros(*q.shape[:-2], kf.shape[-1])  # (..., D')
    out = q.new_empty(*q.shape[:-1], v.shape[-1])  # (..., L, Dv)
    for t in range(L):
        state = state + kf[..., t, :, None] * v[..., t, None, :]
        z = z + kf[..., t, :]
        numerator = (qf[..., t, :, None] * state).sum(dim=-2)  # (..., Dv)
        denominator = (qf[..., t, :] * z).sum(dim=-1, keepdim=True)  # (..., 1)
        out[..., t, :] = numerator / (denominator + eps)
    return out.to(dtype)


def causal_linear_attention_chunked(
    q,
    k,
    v,
    chunk_size: int = 64,
    feature_map=elu_feature_map,
    eps: float = 1e-6,
    tokens_per_step: int = 1024,
) -> torch.Tensor:
    """Chunk by chunk: masked quadratic inside each chunk, plus the state of all earlier chunks.

    For speed, the chunks of a group of about `tokens_per_step` tokens are done at once (the state
    entering each chunk of the group is a prefix sum over the group's chunks), and the state is
    carried from group to group: the working set stays the same size whatever L is.
    """
    _check_qkv(q, k, v, causal=True)
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    dtype = q.dtype
    q, k, v = _in_float32(q, k, v)
    qf, kf = feature_map(q), feature_map(k)
    L, c = q.shape[-2], min(chunk_size, q.shape[-2])
    group = c * max(1, tokens_per_step // c)
    state = q.new_zeros(*q.shape[:-2], 1, kf.shape[-1], v.shape[-1])  # (..., 1, D', Dv)
    z = q.new_zeros(*q.shape[:-2], 1, 1, kf.shape[-1])  # (..., 1, 1, D')
    tril = torch.ones(c, c, dtype=torch.bool, device=q.device).tril()
    outs = []
    for start in range(0, L, group):
        qg, kg, vg = (t[..., start : start + group, :] for t in (qf, kf, v))
        length = qg.shape[-2]
        n = -(-length // c)
        pad = n * c - length  # zeros in feature space: padded keys weigh nothing

        def chunks(t):  # (..., length, X) -> (..., n, c, X)
            t = F.pad(t, (0, 0, 0, pad))
            return t.reshape(*t.shape[:-2], n, c, t.shape[-1])

        qc, kc, vc = chunks(qg), chunks(kg), chunks(vg)
        scores = (qc @ kc.transpose(-2, -1)).masked_fill(~tril, 0)  # (..., n, c, c)
        kv = kc.transpose(-2, -1) @ vc  # (..., n, D', Dv)
        ksum = kc.sum(dim=-2, keepdim=True)  # (..., n, 1, D')
        before = state + kv.cumsum(dim=-3) - kv  # state entering each chunk
        z_before = z + ksum.cumsum(dim=-3) - ksum
        numerator = qc @ before + scores @ vc  # (..., n, c, Dv)
        denominator = (qc * z_before).sum(-1, keepdim=True) + scores.sum(-1, keepdim=True)
        out = numerator / (denominator + eps)
        outs.append(out.reshape(*out.shape[:-3], n * c, v.shape[-1])[..., :length, :])
        state = state + kv.sum(dim=-3, keepdim=True)
        z = z + ksum.sum(dim=-3, keepdim=True)
    return torch.cat(outs, dim=-2).to(dtype)


# ----------------------------------------------------------------------------- Performer


def chi_mean(dim: int) -> float:
    """E[|g|] for g ~ N(0, I_dim): sqrt(2) Gamma((dim+1)/2) / Gamma(dim/2)."""
    return math.sqrt(2) * math.exp(math.lgamma((dim + 1) / 2) - math.lgamma(dim / 2))


def orthogonal_random_features(
    num_features: int, dim: int, generator: torch.Generator = None, dtype=torch.float32, device=None
) -> torch.Tensor:
    """(num_features, dim): blocks of dim orthogonal rows (Haar-random directions), each row's
    norm drawn independently from chi(dim), like the norm of a Gaussian row."""
    if num_features < 1 or dim < 1:
        raise ValueError(f"need num_features >= 1 and dim >= 1, got {num_features}, {dim}")
    blocks = []
    for _ in range(math.ceil(num_features / dim)):
        gaussian = torch.randn(dim, dim, generator=generator, dtype=torch.float64)
        qmat, r = torch.linalg.qr(gaussian)  # columns orthonormal
        qmat = qmat * torch.sign(torch.diagonal(r))  # sign fix: Haar-distributed
        blocks.append(qmat.T)  # rows orthonormal
    directions = torch.cat(blocks)[:num_features]  # (m, dim)
    norms = torch.randn(num_features, dim, generator=generator, dtype=torch.float64).norm(dim=-1)
    return (directions * norms[:, None]).to(dtype=dtype, device=device)


def favor_feature_map(
    x: torch.Tensor, projection: torch.Tensor, is_query: bool = False
) -> torch.Tensor:
    """Positive random features: exp(w_i . x - |x|^2/2 - s) / sqrt(m), (..., L, m), with the
    stabiliser s the max of the exponent per row (queries) or per leading slice (keys)."""
    if x.shape[-1] != projection.shape[-1]:
        raise ValueError(
            f"x (..., L, D) and projection (m, D) must share D, got {tuple(x.shape)} "
            f"and {tuple(projection.shape)}"
        )
    if x.dtype != projection.dtype:
        raise ValueError(
            f"x and projection must share a dtype, got {x.dtype} and {projection.dtype}"
        )
    dtype = x.dtype
    x, projection = _in_float32(x, projection)
    m = projection.shape[0]
    exponent = x @ projection.T - (x * x).sum(dim=-1, keepdim=True) / 2  # (..., L, m)
    if is_query:
        stabiliser = exponent.amax(dim=-1, keepdim=True)
    else:
        stabiliser = exponent.amax(dim=(-2, -1), keepdim=True)
    return (torch.exp(exponent - stabiliser) / math.sqrt(m)).to(dtype)


def performer_attention(
    q,
    k,
    v,
    num_features: int = 256,
    generator: torch.Generator = None,
    eps: float = 1e-6,
    causal: bool = False,
    chunk_size: int = 64,
) -> torch.Tensor:
    """FAVOR+ approximation of softmax(q k^T / sqrt(d)) v in O(L m d).

    causal=True approximates the causal softmax (query i sees keys j <= i, Lq == Lk): the prefix
    sums sum_{j <= i} phi(k_j) v_j^T and sum_{j <= i} phi(k_j), by causal_linear_attention_chunked
    with chunks of chunk_size.
    """
    _check_qkv(q, k, v, causal)
    dtype = q.dtype
    q, k, v = _in_float32(q, k, v)
    d = q.shape[-1]
    projection = orthogonal_random_features(
        num_features, d, generator, dtype=q.dtype, device=q.device
    )
    scale = d**-0.25  # q k^T / sqrt(d) = (q d^-1/4) (k d^-1/4)^T
    qf = favor_feature_map(q * scale, projection, is_query=True)  # (..., Lq, m)
    # The keys' stabiliser is one constant s per slice, the max over all L keys, later ones
    # included, and still causal: every phi(k_j) carries the same factor e^-s, so for query i the
    # numerator and the denominator, both sums over j <= i, carry it too and it cancels. A
    # constant per key would reweight the keys; a running max over j <= i would change the
    # factor along the prefix sums. (A later key far larger than the earlier ones can still
    # underflow their features, the same limit as without causal.)
    kf = favor_feature_map(k * scale, projection)  # (..., Lk, m)
    if causal:
        out = causal_linear_attention_chunked(qf, kf, v, chunk_size, lambda t: t, eps)
    else:
        out = linear_attention(qf, kf, v, feature_map=lambda t: t, eps=eps)
    return out.to(dtype)
