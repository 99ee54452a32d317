"""FlashAttention in Triton, the course's library version (day07), in the style of Triton's
06-fused-attention tutorial: one program per (query tile, batch*head), an online softmax in
float32 accumulators (m_i, l_i, acc), exp2 with log2(e) folded into the scale, causal tiles
skipped, ragged lengths masked; a backward pass of three kernels (D = rowsum(dO * O), then dK/dV
per key tile and dQ per query tile, recomputing P from the saved logsumexp).

Also the warm-ups of the day: triton_add and a row-wise triton_softmax.

Conventions (the course's): inputs (..., L, D) with any leading dims; causal is bottom-right
aligned (query i sits at key position Lk - Lq + i, as day02's causal_mask); the logsumexp is
natural-log, shape (..., Lq), float32. A query that sees no key (Lq > Lk, causal) gets a zero
output and lse = -inf.

Without a GPU, import `course` first: Triton then runs through its interpreter (NumPy, float32
only, slow: keep sizes small). On a GPU the forward kernel is autotuned over a few modest
configurations and takes float16, bfloat16 and float32.
Written independently of the day07 solution notebook.
"""

import math

import torch
import triton
import triton.language as tl

import course  # noqa: F401  (sets TRITON_INTERPRET=1 without a GPU, before triton is imported)

HEAD_DIMS = (16, 32, 64, 128)
LOG2E = 1.4426950408889634  # log2(e): exp(x) = exp2(x * LOG2E)
LN2 = 0.6931471805599453  # ln(2):   log(x) = log2(x) * LN2
CPU_BLOCK = 16  # tile size in the interpreter: small tiles, few NumPy ops


def interpreted() -> bool:
    """True when Triton runs through its interpreter (no compiled GPU kernels)."""
    import os

    return os.environ.get("TRITON_INTERPRET", "").lower() in {"1", "true", "on", "y", "yes"}


def _supported_dtypes(device: torch.device) -> tuple:
    if device.type == "cuda" and not interpreted():
        return (torch.float16, torch.bfloat16, torch.float32)
    return (torch.float32,)  # the interpreter does not do bfloat16 arithmetic


def _check_device_dtype(what: str, tensors: dict) -> None:
    first = next(iter(tensors.values()))
    for name, t in tensors.items():
        if not isinstance(t, torch.Tensor):
            raise ValueError(f"{what}: {name} must be a torch.Tensor, got {type(t).__name__}")
        if t.device != first.device:
            raise ValueError(
                f"{what}: all inputs must be on one device, got "
                + ", ".join(f"{n} on {x.device}" for n, x in tensors.items())
            )
        if t.dtype != first.dtype:
            raise ValueError(
                f"{what}: all inputs must have one dtype, got "
                + ", ".join(f"{n} {x.dtype}" for n, x in tensors.items())
            )
    allowed = _supported_dtypes(first.device)
    if first.dtype not in allowed:
        if allowed == (torch.float32,):
            where = (
                "the CPU interpreter (float32 only: it computes in NumPy, which has no bfloat16)"
            )
            fix = "cast the inputs with .float() and the result back with .to(dtype)"
        else:
            where = "the GPU (the kernels are written for float16, bfloat16 and float32)"
            fix = f"use one of {', '.join(str(d) for d in allowed)}"
        raise ValueError(f"{what}: dtype {first.dtype} is not supported on {where}; {fix}")
    if first.device.type != "cuda" and not interpreted():
        raise ValueError(
            f"{what}: tensors are on {first.device} but Triton is not in interpreter "
            "mode; import course before triton (it sets TRITON_INTERPRET=1 without a GPU)"
        )


# ----------------------------------------------------------------------------- warm-up: add


@triton.jit
def _add_kernel(x_ptr, y_ptr, out_ptr, n, BLOCK: tl.constexpr):
    pid = tl.program_id(0)
    offs = pid * BLOCK + tl.arange(0, BLOCK)  # this program's slice of the flat tensor
    inside = offs < n  # the last block may stick out past n
    x = tl.load(x_ptr + offs, mask=inside)
    y = tl.load(y_ptr + offs, mask=inside)
    tl.store(out_ptr + offs, x + y, mask=inside)


def triton_add(x: torch.Tensor, y: torch.Tensor, block: int = 1024) -> torch.Tensor:
    """x + y elementwise, same shape, one program per BLOCK elements."""
    _check_device_dtype("triton_add", {"x": x, "y": y})
    if x.shape != y.shape:
        raise ValueError(
            f"triton_add: x and y must have the same shape, got {tuple(x.shape)} and {tuple(y.shape)}"
        )
    x_flat, y_flat = x.contiguous().view(-1), y.contiguous().view(-1)
    out = torch.empty_like(x_flat)
    n = out.numel()
    if n:
        _add_kernel[(triton.cdiv(n, block),)](x_flat, y_flat, out, n, BLOCK=block)
    return out.view(x.shape)


# ----------------------------------------------------------------------------- warm-up: softmax


@triton.jit
def _softmax_kernel(x_ptr, out_ptr, n_cols, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK)
    inside = cols < n_cols
    x = tl.load(x_ptr + row * n_cols + cols, mask=inside, other=float("-inf")).to(tl.float32)
    x = x - tl.max(x, axis=0)  # stable: the largest exponent is 0
    num = tl.exp(x)  # padded lanes: exp(-inf) = 0
    out = num / tl.sum(num, axis=0)
    tl.store(out_ptr + row * n_cols + cols, out.to(out_ptr.dtype.element_ty), mask=inside)


def triton_softmax(x: torch.Tensor) -> torch.Tensor:
    """Softmax over the last axis, one program per row, the whole row in one block."""
    _check_device_dtype("triton_softmax", {"x": x})
    if x.ndim == 0:
        raise ValueError("triton_softmax: x needs at least one axis")
    n_cols = x.shape[-1]
    rows = x.contiguous().view(-1, n_cols) if x.numel() else x.reshape(-1, max(n_cols, 1))
    out = torch.empty_like(rows)
    if rows.numel():
        _softmax_kernel[(rows.shape[0],)](rows, out, n_cols, BLOCK=triton.next_power_of_2(n_cols))
    return out.view(x.shape)


# ----------------------------------------------------------------------------- flash forward


@triton.jit
def _fwd_tile(
    acc,
    l_i,
    m_i,
    q,
    k_base,
    v_base,
    start_n,
    offs_m,
    Lq,
    Lk,
    qk_scale,
    HEAD_DIM: tl.constexpr,
    BLOCK_N: tl.constexpr,
    MASKED: tl.constexpr,
    CAUSAL: tl.constexpr,
):
    """One key tile of the online softmax. MASKED tiles (the ragged last one, the causal
    diagonal) mask keys past Lk and, if CAUSAL, keys after each query's position."""
    offs_n = start_n + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, HEAD_DIM)
    kv_offs = offs_n[:, None] * HEAD_DIM + offs_d[None, :]
    if MASKED:
        k = tl.load(k_base + kv_offs, mask=offs_n[:, None] < Lk, other=0.0)
        v = tl.load(v_base + kv_offs, mask=offs_n[:, None] < Lk, other=0.0)
    else:
        k = tl.load(k_base + kv_offs)
        v = tl.load(v_base + kv_offs)
    s = tl.dot(q, tl.trans(k)) * qk_scale  # (BLOCK_M, BLOCK_N), log2 units
    if MASKED:
        keep = offs_n[None, :] < Lk
        if CAUSAL:
            keep = keep & (offs_n[None, :] <= (Lk - Lq) + offs_m[:, None])  # bottom-right
        s = tl.where(keep, s, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(s, 1))
    if MASKED:
        m_new = tl.where(m_new == float("-inf"), 0.0, m_new)  # a row with no key yet: no NaN
    alpha = tl.exp2(m_i - m_new)  # rescale what came before
    p = tl.exp2(s - m_new[:, None])
    l_i = l_i * alpha + tl.sum(p, 1)
    acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)
    return acc, l_i, m_new


@triton.jit
def _fwd_kernel(
    Q,
    K,
    V,
    O,
    LSE,
    Lq,
    Lk,
    qk_scale,
    HEAD_DIM: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    CAUSAL: tl.constexpr,
):
    start_m = tl.program_id(0) * BLOCK_M
    bh = tl.program_id(1).to(tl.int64)
    offs_m = start_m + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, HEAD_DIM)
    q_offs = bh * Lq * HEAD_DIM + offs_m[:, None] * HEAD_DIM + offs_d[None, :]
    q = tl.load(Q + q_offs, mask=offs_m[:, None] < Lq, other=0.0)
    k_base = K + bh * Lk * HEAD_DIM
    v_base = V + bh * Lk * HEAD_DIM

    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)  # running max (log2 units)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)  # running denominator
    acc = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)  # running numerator

    if CAUSAL:
        # keys 0 .. full_hi-1 are seen by every row of this tile; none past hi by any row
        full_hi = (tl.maximum(Lk - Lq + start_m + 1, 0) // BLOCK_N) * BLOCK_N
        hi = tl.minimum(tl.maximum(Lk - Lq + start_m + BLOCK_M, 0), Lk)
    else:
        full_hi = (Lk // BLOCK_N) * BLOCK_N
        hi = Lk
    for start_n in range(0, full_hi, BLOCK_N):  # whole tiles: no mask
        acc, l_i, m_i = _fwd_tile(
            acc,
            l_i,
            m_i,
            q,
            k_base,
            v_base,
            start_n,
            offs_m,
            Lq,
            Lk,
            qk_scale,
            HEAD_DIM,
            BLOCK_N,
            False,
            CAUSAL,
        )
    for start_n in range(full_hi, hi, BLOCK_N):  # diagonal / ragged tiles
        acc, l_i, m_i = _fwd_tile(
            acc,
            l_i,
            m_i,
            q,
            k_base,
            v_base,
            start_n,
            offs_m,
            Lq,
            Lk,
            qk_scale,
            HEAD_DIM,
            BLOCK_N,
            True,
            CAUSAL,
        )

    empty = l_i == 0.0  # rows that saw no key
    out = acc / tl.where(empty, 1.0, l_i)[:, None]
    lse = tl.where(
        empty, float("-inf"), (m_i + tl.log2(tl.where(empty, 1.0, l_i))) * 0.6931471805599453
    )
    tl.store(O + q_offs, out.to(O.dtype.element_ty), mask=offs_m[:, None] < Lq)
    tl.store(LSE + bh * Lq + offs_m, lse, mask=offs_m < Lq)


# modest configurations for a GPU; the interpreter uses the plain kernel with CPU_BLOCK tiles
_FWD_CONFIGS = [
    triton.Config({"BLOCK_M": bm, "BLOCK_N": bn}, num_warps=w, num_stages=s)
    for bm, bn, w, s in [
        (128, 64, 8, 3),
        (128, 32, 4, 3),
        (64, 64, 4, 3),
        (64, 32, 4, 2),
        (128, 64, 4, 2),
        (128, 128, 8, 2),
    ]
]
_fwd_kernel_tuned = triton.autotune(configs=_FWD_CONFIGS, key=["Lq", "Lk", "HEAD_DIM", "CAUSAL"])(
    _fwd_kernel
)


def _check_qkv(what, q, k, v):
    _check_device_dtype(what, {"q": q, "k": k, "v": v})
    if q.ndim < 2 or k.ndim < 2 or v.ndim < 2:
        raise ValueError(
            f"{what}: q, k, v must be (..., L, D), got {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}"
        )
    if k.shape != v.shape:
        raise ValueError(
            f"{what}: k and v must have the same shape (..., Lk, D), got {tuple(k.shape)} and {tuple(v.shape)}"
        )
    if q.shape[:-2] != k.shape[:-2] or q.shape[-1] != k.shape[-1]:
        raise ValueError(
            f"{what}: q (..., Lq, D) and k (..., Lk, D) must share leading dims and D, "
            f"got {tuple(q.shape)} and {tuple(k.shape)}"
        )
    if q.shape[-1] not in HEAD_DIMS:
        raise ValueError(f"{what}: head_dim {q.shape[-1]} is not supported; use one of {HEAD_DIMS}")


def _flat(x: torch.Tensor) -> torch.Tensor:
    """(..., L, D) -> contiguous (batch*heads, L, D)."""
    return x.reshape(-1, x.shape[-2], x.shape[-1]).contiguous()


def _forward(q, k, v, causal):
    """The kernels' view: returns out (..., Lq, D) and lse (..., Lq) float32."""
    lead, Lq, Lk, D = q.shape[:-2], q.shape[-2], k.shape[-2], q.shape[-1]
    q3, k3, v3 = _flat(q), _flat(k), _flat(v)
    BH = q3.shape[0]
    out = torch.empty_like(q3)
    lse = torch.empty(BH, Lq, device=q.device, dtype=torch.float32)
    if BH and Lq:
        if Lk == 0:
            out.zero_()
            lse.fill_(float("-inf"))
        else:
            qk_scale = LOG2E / math.sqrt(D)
            if interpreted() or q.device.type != "cuda":
                grid = (triton.cdiv(Lq, CPU_BLOCK), BH)
                _fwd_kernel[grid](
                    q3,
                    k3,
                    v3,
                    out,
                    lse,
                    Lq,
                    Lk,
                    qk_scale,
                    HEAD_DIM=D,
                    BLOCK_M=CPU_BLOCK,
                    BLOCK_N=CPU_BLOCK,
                    CAUSAL=bool(causal),
                )
            else:
                grid = lambda meta: (triton.cdiv(Lq, meta["BLOCK_M"]), BH)  # noqa: E731
                _fwd_kernel_tuned[grid](
                    q3, k3, v3, out, lse, Lq, Lk, qk_scale, HEAD_DIM=D, CAUSAL=bool(causal)
                )
    return out.view(*lead, Lq, D), lse.view(*lead, Lq)


def flash_attention_triton(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool = False):
    """softmax(q k^T / sqrt(D)) v by tiles, never building the (Lq, Lk) matrix.

    q: (..., Lq, D), k, v: (..., Lk, D), D in HEAD_DIMS; float32 on the CPU interpreter,
    float16/bfloat16/float32 on a GPU. Returns (out (..., Lq, D) in q's dtype,
    lse (..., Lq) float32, natural log). causal: bottom-right aligned.
    """
    _check_qkv("flash_attention_triton", q, k, v)
    return _forward(q, k, v, causal)


# ----------------------------------------------------------------------------- flash backward


@triton.jit
def _bwd_preprocess(O, DO, DELTA, n_rows, HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr):
    """DELTA_i = sum_d dO_id * O_id: the row term of the softmax gradient."""
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, HEAD_DIM)
    offs = rows.to(tl.int64)[:, None] * HEAD_DIM + offs_d[None, :]
    o = tl.load(O + offs, mask=rows[:, None] < n_rows, other=0.0).to(tl.float32)
    do = tl.load(DO + offs, mask=rows[:, None] < n_rows, other=0.0).to(tl.float32)
    tl.store(DELTA + rows, tl.sum(o * do, 1), mask=rows < n_rows)


@triton.jit
def _probs(q, k, lse2, offs_m, offs_n, Lq, Lk, qk_scale, CAUSAL: tl.constexpr):
    """P = exp(S - lse) for a (query tile, key tile), masked keys 0, in log2 units."""
    s = tl.dot(q, tl.trans(k)) * qk_scale
    keep = (offs_n[None, :] < Lk) & (offs_m[:, None] < Lq)
    if CAUSAL:
        keep = keep & (offs_n[None, :] <= (Lk - Lq) + offs_m[:, None])
    return tl.where(keep, tl.exp2(s - lse2[:, None]), 0.0)


@triton.jit
def _query_rows(Q, DO, LSE, DELTA, bh, offs_m, offs_d, Lq, HEAD_DIM: tl.constexpr):
    """A query tile's q and dO, its logsumexp in log2 units (+inf for a row that saw no key, so
    its P is 0) and its DELTA: what both backward kernels read per query row."""
    q_offs = bh * Lq * HEAD_DIM + offs_m[:, None] * HEAD_DIM + offs_d[None, :]
    q = tl.load(Q + q_offs, mask=offs_m[:, None] < Lq, other=0.0)
    do = tl.load(DO + q_offs, mask=offs_m[:, None] < Lq, other=0.0)
    lse = tl.load(LSE + bh * Lq + offs_m, mask=offs_m < Lq, other=0.0)
    lse2 = tl.where(lse == float("-inf"), float("inf"), lse * 1.4426950408889634)
    delta = tl.load(DELTA + bh * Lq + offs_m, mask=offs_m < Lq, other=0.0)
    return q, do, lse2, delta


@triton.jit
def _bwd_dkdv_kernel(
    Q,
    K,
    V,
    DO,
    LSE,
    DELTA,
    DK,
    DV,
    Lq,
    Lk,
    qk_scale,
    sm_scale,
    HEAD_DIM: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    CAUSAL: tl.constexpr,
):
    """One program per (key tile, batch*head): dV = P^T dO, dK = scale * dS^T Q over query tiles."""
    start_n = tl.program_id(0) * BLOCK_N
    bh = tl.program_id(1).to(tl.int64)
    offs_n = start_n + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, HEAD_DIM)
    kv_offs = bh * Lk * HEAD_DIM + offs_n[:, None] * HEAD_DIM + offs_d[None, :]
    k = tl.load(K + kv_offs, mask=offs_n[:, None] < Lk, other=0.0)
    v = tl.load(V + kv_offs, mask=offs_n[:, None] < Lk, other=0.0)
    dk = tl.zeros([BLOCK_N, HEAD_DIM], dtype=tl.float32)
    dv = tl.zeros([BLOCK_N, HEAD_DIM], dtype=tl.float32)
    lo = 0
    if CAUSAL:  # query rows before start_n - (Lk - Lq) see none of these keys
        lo = (tl.maximum(start_n - (Lk - Lq), 0) // BLOCK_M) * BLOCK_M
    for start_m in range(lo, Lq, BLOCK_M):
        offs_m = start_m + tl.arange(0, BLOCK_M)
        q, do, lse2, delta = _query_rows(Q, DO, LSE, DELTA, bh, offs_m, offs_d, Lq, HEAD_DIM)
        p = _probs(q, k, lse2, offs_m, offs_n, Lq, Lk, qk_scale, CAUSAL)  # (BLOCK_M, BLOCK_N)
        dv += tl.dot(tl.trans(p.to(do.dtype)), do)
        dp = tl.dot(do, tl.trans(v)).to(tl.float32)
        ds = p * (dp - delta[:, None])
        dk += tl.dot(tl.trans(ds.to(q.dtype)), q)
    tl.store(DK + kv_offs, (dk * sm_scale).to(DK.dtype.element_ty), mask=offs_n[:, None] < Lk)
    tl.store(DV + kv_offs, dv.to(DV.dtype.element_ty), mask=offs_n[:, None] < Lk)


@triton.jit
def _bwd_dq_kernel(
    Q,
    K,
    V,
    DO,
    LSE,
    DELTA,
    DQ,
    Lq,
    Lk,
    qk_scale,
    sm_scale,
    HEAD_DIM: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    CAUSAL: tl.constexpr,
):
    """One program per (query tile, batch*head): dQ = scale * dS K over key tiles."""
    start_m = tl.program_id(0) * BLOCK_M
    bh = tl.program_id(1).to(tl.int64)
    offs_m = start_m + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, HEAD_DIM)
    q, do, lse2, delta = _query_rows(Q, DO, LSE, DELTA, bh, offs_m, offs_d, Lq, HEAD_DIM)
    dq = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)
    hi = Lk
    if CAUSAL:
        hi = tl.minimum(tl.maximum(Lk - Lq + start_m + BLOCK_M, 0), Lk)
    for start_n in range(0, hi, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        kv_offs = bh * Lk * HEAD_DIM + offs_n[:, None] * HEAD_DIM + offs_d[None, :]
        k = tl.load(K + kv_offs, mask=offs_n[:, None] < Lk, other=0.0)
        v = tl.load(V + kv_offs, mask=offs_n[:, None] < Lk, other=0.0)
        p = _probs(q, k, lse2, offs_m, offs_n, Lq, Lk, qk_scale, CAUSAL)
        dp = tl.dot(do, tl.trans(v)).to(tl.float32)
        ds = p * (dp - delta[:, None])
        dq += tl.dot(ds.to(k.dtype), k)
    q_offs = bh * Lq * HEAD_DIM + offs_m[:, None] * HEAD_DIM + offs_d[None, :]
    tl.store(DQ + q_offs, (dq * sm_scale).to(DQ.dtype.element_ty), mask=offs_m[:, None] < Lq)


def _backward(q, k, v, out, lse, dout, causal):
    Lq, Lk, D = q.shape[-2], k.shape[-2], q.shape[-1]
    q3, k3, v3, o3, do3 = (_flat(t) for t in (q, k, v, out, dout.to(q.dtype)))
    BH = q3.shape[0]
    lse2 = lse.reshape(BH, Lq).contiguous()
    dq, dk, dv = torch.empty_like(q3), torch.empty_like(k3), torch.empty_like(v3)
    if BH * Lq == 0 or Lk == 0:
        return dq.zero_().view(q.shape), dk.zero_().view(k.shape), dv.zero_().view(v.shape)
    on_gpu = q.device.type == "cuda" and not interpreted()
    BM = BN = (64 if D <= 64 else 32) if on_gpu else CPU_BLOCK
    warps = 4 if on_gpu else 1
    delta = torch.empty(BH, Lq, device=q.device, dtype=torch.float32)
    _bwd_preprocess[(triton.cdiv(BH * Lq, BM),)](o3, do3, delta, BH * Lq, HEAD_DIM=D, BLOCK_M=BM)
    sm_scale = 1.0 / math.sqrt(D)
    args = (Lq, Lk, sm_scale * LOG2E, sm_scale)
    meta = dict(HEAD_DIM=D, BLOCK_M=BM, BLOCK_N=BN, CAUSAL=bool(causal), num_warps=warps)
    _bwd_dkdv_kernel[(triton.cdiv(Lk, BN), BH)](q3, k3, v3, do3, lse2, delta, dk, dv, *args, **meta)
    _bwd_dq_kernel[(triton.cdiv(Lq, BM), BH)](q3, k3, v3, do3, lse2, delta, dq, *args, **meta)
    return dq.view(q.shape), dk.view(k.shape), dv.view(v.shape)


class FlashAttentionTriton(torch.autograd.Function):
    """FlashAttentionTriton.apply(q, k, v, is_causal) -> out; Triton forward and backward.

    Saves q, k, v, out and one logsumexp (..., Lq); the backward recomputes P tile by tile.
    """

    @staticmethod
    def forward(ctx, q, k, v, is_causal=False):
        _check_qkv("FlashAttentionTriton", q, k, v)
        out, lse = _forward(q, k, v, is_causal)
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.is_causal = bool(is_causal)
        return out

    @staticmethod
    def backward(ctx, dout):
        q, k, v, out, lse = ctx.saved_tensors
        dq, dk, dv = _backward(q, k, v, out, lse, dout, ctx.is_causal)
        return dq, dk, dv, None


def flash_attention(q, k, v, causal: bool = False) -> torch.Tensor:
    """The differentiable output only: FlashAttentionTriton.apply(q, k, v, causal)."""
    return FlashAttentionTriton.apply(q, k, v, causal)
