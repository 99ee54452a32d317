"""Linear recurrences and selective scans (Mamba), the course's library version.

    h_t = a_t * h_{t-1} + b_t   along the last axis, h_{-1} = 0

computed four ways (a Python loop, a Hillis-Steele associative scan in O(log L) vectorised
steps, a chunked scan, and a Triton kernel built on tl.associative_scan), then the pieces of a
Mamba layer: zero-order-hold discretisation, the selective scan in the layout of mamba_ssm's
selective_scan_ref, and MambaBlock. Written independently of the day09 solution notebook.

Precision: float16/bfloat16 inputs are computed in float32 (float64 stays float64) and the
result comes back in the input's dtype, as selective_scan_ref does: a recurrence rounds at every
step, so 16-bit accumulation loses digits over a long sequence.

Import `course` before this module on a machine without a GPU: Triton then runs through its
interpreter (slow, float32 only: keep sizes small there).
"""

import math

import torch
import torch.nn as nn
import torch.nn.functional as F
import triton
import triton.language as tl

import course  # noqa: F401  (sets TRITON_INTERPRET=1 without a GPU, before triton is imported)


def _compute_dtype(*tensors) -> torch.dtype:
    """float32, or wider where an input is (float64): the dtype to accumulate in. None is skipped."""
    dtype = torch.float32
    for t in tensors:
        if t is not None:
            dtype = torch.promote_types(dtype, t.dtype)
    return dtype


def _check_pair(a: torch.Tensor, b: torch.Tensor) -> None:
    if not (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor)):
        raise ValueError("a and b must be tensors")
    if a.shape != b.shape:
        raise ValueError(
            f"a and b must have the same shape, got {tuple(a.shape)} and {tuple(b.shape)}"
        )
    if a.ndim == 0:
        raise ValueError("a and b need a time axis (the last one); got 0-d tensors")


# ----------------------------------------------------------------------------- linear recurrences


def _upcast_pair(a: torch.Tensor, b: torch.Tensor):
    """Checks a and b; returns them in the dtype to accumulate in, and the dtype h goes back in
    (a * b's: float16/bfloat16 stay so)."""
    _check_pair(a, b)
    dtype = _compute_dtype(a, b)
    return a.to(dtype), b.to(dtype), torch.promote_types(a.dtype, b.dtype)


def linear_recurrence_sequential(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """The loop over time: L small steps. a, b: (..., L) -> h: (..., L)."""
    a, b, out_dtype = _upcast_pair(a, b)
    h = torch.empty_like(b)
    state = torch.zeros_like(b[..., 0])
    for t in range(b.shape[-1]):
        state = a[..., t] * state + b[..., t]
        h[..., t] = state
    return h.to(out_dtype)


def _scan_pairs(a: torch.Tensor, b: torch.Tensor):
    """Inclusive Hillis-Steele scan of the pairs (a_t, b_t) under
    (a1, b1) then (a2, b2) = (a1 * a2, a2 * b1 + b2); ceil(log2 L) steps.
    Returns (prod of a up to t, h_t)."""
    L, step = a.shape[-1], 1
    differentiable = torch.is_grad_enabled() and (a.requires_grad or b.requires_grad)
    if not differentiable:
        a, b = a.clone(), b.clone()  # then update in place: fewer copies, faster on a CPU
    while step < L:
        # element t absorbs the block that ends at t - step (which comes earlier in time)
        if differentiable:
            b = torch.cat(
                [b[..., :step], torch.addcmul(b[..., step:], a[..., step:], b[..., :-step])], -1
            )
            a = torch.cat([a[..., :step], a[..., step:] * a[..., :-step]], -1)
        else:  # each right-hand side is computed in full before it is written, b before a
            b[..., step:] = torch.addcmul(b[..., step:], a[..., step:], b[..., :-step])
            a[..., step:] = a[..., step:] * a[..., :-step]
        step *= 2
    return a, b


def linear_recurrence_parallel(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Associative scan in ceil(log2 L) vectorised steps. a, b: (..., L) -> h: (..., L)."""
    a, b, out_dtype = _upcast_pair(a, b)
    return _scan_pairs(a, b)[1].to(out_dtype)


def linear_recurrence_chunked(
    a: torch.Tensor, b: torch.Tensor, chunk_size: int = 64
) -> torch.Tensor:
    """Scan inside chunks in parallel, then carry each chunk's last state into the next one."""
    a, b, out_dtype = _upcast_pair(a, b)
    if not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive int, got {chunk_size!r}")
    L = b.shape[-1]
    n_chunks = math.ceil(L / chunk_size)
    pad = n_chunks * chunk_size - L
    a = F.pad(a, (0, pad), value=1.0).reshape(*a.shape[:-1], n_chunks, chunk_size)
    b = F.pad(b, (0, pad), value=0.0).reshape(*b.shape[:-1], n_chunks, chunk_size)
    decay, local = _scan_pairs(a, b)  # (..., n_chunks, chunk_size): within-chunk scan from 0
    # the state entering chunk c is itself a linear recurrence over chunks (n_chunks steps)
    carry = torch.zeros_like(local[..., 0, 0])
    entering = []
    for c in range(n_chunks):
        entering.append(carry)
        carry = decay[..., c, -1] * carry + local[..., c, -1]
    entering = torch.stack(entering, dim=-1).unsqueeze(-1)  # (..., n_chunks, 1)
    h = local + decay * entering
    return h.reshape(*h.shape[:-2], n_chunks * chunk_size)[..., :L].to(out_dtype)


@triton.jit
def _combine(a_left, b_left, a_right, b_right):
    # left is earlier in time: apply it first, then right
    return a_left * a_right, a_right * b_left + b_right


@triton.jit
def _scan_kernel(a_ptr, b_ptr, h_ptr, L, BLOCK: tl.constexpr):
    row = tl.program_id(0)
    offsets = tl.arange(0, BLOCK)
    inside = offsets < L
    a = tl.load(a_ptr + row * L + offsets, mask=inside, other=1.0)
    b = tl.load(b_ptr + row * L + offsets, mask=inside, other=0.0)
    _, h = tl.associative_scan((a, b), 0, _combine)
    tl.store(h_ptr + row * L + offsets, h, mask=inside)


def linear_recurrence_triton(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """One Triton program per row; the whole row is one block scanned by tl.associative_scan."""
    _check_pair(a, b)
    if a.dtype != torch.float32 or b.dtype != torch.float32:
        raise ValueError(f"linear_recurrence_triton takes float32, got {a.dtype} and {b.dtype}")
    L = b.shape[-1]
    a2, b2 = a.reshape(-1, L).contiguous(), b.reshape(-1, L).contiguous()
    h = torch.empty_like(b2)
    if h.numel():
        _scan_kernel[(a2.shape[0],)](a2, b2, h, L, BLOCK=triton.next_power_of_2(L))
    return h.reshape(b.shape)


# ----------------------------------------------------------------------------- selective scan


def discretize_zoh(delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor):
    """Exact zero-order hold for a diagonal A.
    delta: (batch, dim, L), A: (dim, state), B: (batch, state, L)
    -> A_bar, B_bar: (batch, dim, L, state) in delta's dtype; where A == 0, B_bar = delta * B
    (the limit)."""
    if delta.ndim != 3 or A.ndim != 2 or B.ndim != 3:
        raise ValueError(
            f"expected delta (batch, dim, L), A (dim, state), B (batch, state, L); "
            f"got {tuple(delta.shape)}, {tuple(A.shape)}, {tuple(B.shape)}"
        )
    batch, dim, L = delta.shape
    if A.shape[0] != dim or B.shape[0] != batch or B.shape[2] != L or B.shape[1] != A.shape[1]:
        raise ValueError(
            f"shapes do not agree: delta {tuple(delta.shape)} (batch, dim, L), "
            f"A {tuple(A.shape)} (dim, state), B {tuple(B.shape)} (batch, state, L)"
        )
    out_dtype, dtype = delta.dtype, _compute_dtype(delta, A, B)
    delta, A, B = delta.to(dtype), A.to(dtype), B.to(dtype)
    dA = delta.unsqueeze(-1) * A[:, None, :]  # (batch, dim, L, state)
    A_bar = torch.exp(dA)
    safe_A = torch.where(A == 0, torch.ones_like(A), A)[:, None, :]
    ratio = torch.where(A[:, None, :] == 0, delta.unsqueeze(-1), torch.expm1(dA) / safe_A)
    B_bar = ratio * B.transpose(1, 2).unsqueeze(1)  # (batch, 1, L, state)
    return A_bar.to(out_dtype), B_bar.to(out_dtype)


def _check_real(**tensors) -> None:
    for name, t in tensors.items():
        if t is not None and t.is_complex():
            raise ValueError(
                f"{name} is {t.dtype}: the course supports real A only (not the complex variant "
                "of selective_scan_ref), so every input must be real"
            )


def _check_scan_inputs(u, delta, A, D, z, delta_bias) -> None:
    """Everything but B and C, whose layouts _state_matrix checks."""
    if u.ndim != 3 or u.shape != delta.shape:
        raise ValueError(
            f"u and delta must both be (batch, dim, L), got {tuple(u.shape)} and {tuple(delta.shape)}"
        )
    dim = u.shape[1]
    if A.ndim != 2 or A.shape[0] != dim:
        raise ValueError(f"A must be (dim, state) = ({dim}, state), got {tuple(A.shape)}")
    for name, t in (("D", D), ("delta_bias", delta_bias)):
        if t is not None and tuple(t.shape) != (dim,):
            raise ValueError(f"{name} must be (dim,) = ({dim},), got {tuple(t.shape)}")
    if z is not None and z.shape != u.shape:
        raise ValueError(f"z must be (batch, dim, L) like u, got {tuple(z.shape)}")


def _state_matrix(name: str, M: torch.Tensor, batch: int, dim: int, state: int, L: int):
    """B or C in one of selective_scan_ref's real layouts, reshaped to broadcast against the
    state x: (batch, dim, state, L)."""
    if tuple(M.shape) == (dim, state):  # time-invariant: the same matrix at every step
        return M[None, :, :, None]  # (1, dim, state, 1)
    if tuple(M.shape) == (batch, state, L):  # time-varying, shared by every channel
        return M[:, None]  # (batch, 1, state, L)
    groups = M.shape[1] if M.ndim == 4 else 0
    if tuple(M.shape) == (batch, groups, state, L) and groups and dim % groups == 0:
        # grouped: channel d reads group d // (dim / groups), as in einops' "B (G H) N L"
        return M.repeat_interleave(dim // groups, dim=1)  # (batch, dim, state, L)
    raise ValueError(
        f"{name} must be (dim, state) = {(dim, state)} (time-invariant), (batch, state, L) = "
        f"{(batch, state, L)} (time-varying) or (batch, groups, state, L) = "
        f"({batch}, groups, {state}, {L}) with groups dividing dim = {dim} (grouped); "
        f"got {tuple(M.shape)}"
    )


def selective_scan(
    u,
    delta,
    A,
    B,
    C,
    D=None,
    z=None,
    delta_bias=None,
    delta_softplus=False,
    return_last_state=False,
):
    """The selective scan of mamba_ssm's selective_scan_ref, with its layouts and precision.
    u, delta, z: (batch, dim, L); A: (dim, state), real; D, delta_bias: (dim,);
    B and C each (dim, state), (batch, state, L) or (batch, groups, state, L), groups | dim
    -> y: (batch, dim, L) in u's dtype, computed in float32 (float64 if an input is), and with
    return_last_state, (y, last_state) where last_state: (batch, dim, state) stays in that
    compute dtype, as selective_scan_ref's float32 state does."""
    _check_real(u=u, delta=delta, A=A, B=B, C=C, D=D, z=z, delta_bias=delta_bias)
    _check_scan_inputs(u, delta, A, D, z, delta_bias)
    (batch, dim, L), state = u.shape, A.shape[1]
    B = _state_matrix("B", B, batch, dim, state, L)
    C = _state_matrix("C", C, batch, dim, state, L)
    y_dtype, dtype = u.dtype, _compute_dtype(u, delta, A, B, C, D, z, delta_bias)
    u, delta, A, B, C = (t.to(dtype) for t in (u, delta, A, B, C))
    if delta_bias is not None:
        delta = delta + delta_bias.to(dtype)[:, None]
    if delta_softplus:
        delta = F.softplus(delta)
    deltaA = torch.exp(delta[:, :, None, :] * A[:, :, None])  # (b, d, n, L)
    deltaB_u = (delta * u)[:, :, None, :] * B  # (b, d, n, L)
    x = linear_recurrence_parallel(deltaA, deltaB_u)  # (b, d, n, L): the state after each step
    y = (x * C).sum(dim=2)  # (b, d, L): y_t = sum_n C_t[n] x_t[n]
    if D is not None:
        y = y + D.to(dtype)[:, None] * u
    if z is not None:
        y = y * F.silu(z.to(dtype))
    y = y.to(y_dtype)
    if not return_last_state:
        return y
    last_state = x[..., -1] if L else x.new_zeros(batch, dim, state)  # (b, d, n); L = 0: x_{-1}
    return y, last_state


class MambaBlock(nn.Module):
    """A Mamba (S6) block with the parameter names of mamba_ssm's Mamba. x: (batch, L, d_model)."""

    def __init__(self, d_model: int, d_state: int = 16, d_conv: int = 4, expand: int = 2):
        super().__init__()
        self.d_model, self.d_state, self.d_conv = d_model, d_state, d_conv
        self.d_inner = expand * d_model
        self.dt_rank = math.ceil(d_model / 16)
        self.in_proj = nn.Linear(d_model, 2 * self.d_inner, bias=False)
        self.conv1d = nn.Conv1d(
            self.d_inner, self.d_inner, d_conv, groups=self.d_inner, padding=d_conv - 1
        )
        self.x_proj = nn.Linear(self.d_inner, self.dt_rank + 2 * d_state, bias=False)
        self.dt_proj = nn.Linear(self.dt_rank, self.d_inner, bias=True)
        A = torch.arange(1, d_state + 1, dtype=torch.float32).repeat(self.d_inner, 1)
        self.A_log = nn.Parameter(torch.log(A))  # A = -exp(A_log) < 0: a decaying state
        self.D = nn.Parameter(torch.ones(self.d_inner))
        self.out_proj = nn.Linear(self.d_inner, d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 3 or x.shape[-1] != self.d_model:
            raise ValueError(
                f"expected x of shape (batch, L, {self.d_model}), got {tuple(x.shape)}"
            )
        weight_dtype = self.in_proj.weight.dtype
        if x.dtype != weight_dtype and not torch.is_autocast_enabled(x.device.type):
            raise ValueError(
                f"x is {x.dtype} but the block's weights are {weight_dtype}: convert one to the "
                "other (block.to(x.dtype)) or run under torch.autocast"
            )
        L = x.shape[1]
        xz = self.in_proj(x).transpose(1, 2)  # (b, 2*d_inner, L)
        u, z = xz.chunk(2, dim=1)
        u = F.silu(self.conv1d(u)[..., :L])  # causal: keep the first L
        dt, B, C = self.x_proj(u.transpose(1, 2)).split(
            [self.dt_rank, self.d_state, self.d_state], dim=-1
        )  # (b, L, ...)
        delta = (dt @ self.dt_proj.weight.T).transpose(1, 2)  # (b, d_inner, L)
        A = -torch.exp(self.A_log)
        y = selective_scan(
            u,
            delta,
            A,
            B.transpose(1, 2),
            C.transpose(1, 2),
            self.D,
            z,
            delta_bias=self.dt_proj.bias,
            delta_softplus=True,
        )
        return self.out_proj(y.transpose(1, 2))


# ----------------------------------------------------------------------------- what a scan attends


def scan_attention_matrix(delta, A, B, C):
    """The (batch, dim, L, L) matrix M of a selective scan without D and z: y_t = sum_s M[t, s] u_s,
    M[t, s] = sum_n C_t[n] exp(A[n] * sum_{s < r <= t} delta_r) delta_s B_s[n] for s <= t, else 0.
    delta: (batch, dim, L), A: (dim, state), B, C: (batch, state, L); M in delta's dtype."""
    out_dtype, dtype = delta.dtype, _compute_dtype(delta, A, B, C)
    delta, A, B, C = (t.to(dtype) for t in (delta, A, B, C))
    cum = torch.cumsum(delta, dim=-1)  # (b, d, L)
    gap = cum.unsqueeze(-1) - cum.unsqueeze(-2)  # (b, d, t, s)
    causal = torch.ones(
        delta.shape[-1], delta.shape[-1], dtype=torch.bool, device=delta.device
    ).tril()
    gap = gap.masked_fill(~causal, 0.0)
    decay = torch.exp(gap.unsqueeze(-1) * A[:, None, None, :])  # (b, d, t, s, n)
    CB = C.transpose(1, 2).unsqueeze(2) * B.transpose(1, 2).unsqueeze(1)  # (b, t, s, n)
    M = (decay * CB.unsqueeze(1)).sum(-1) * delta.unsqueeze(-2)  # (b, d, t, s)
    return M.masked_fill(~causal, 0.0).to(out_dtype)
