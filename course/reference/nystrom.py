"""Landmark (Nyström) attention: the course's library version (day08's advanced part), on torch.

Nyströmformer (Xiong et al., 2021) approximates softmax attention with m landmarks, the means of
m contiguous segments of the queries and of the keys:

    softmax(Q K~^T / sqrt(d)) . pinv(softmax(Q~ K~^T / sqrt(d))) . softmax(Q~ K^T / sqrt(d)) . V
          (Lq, m)                        (m, m)                          (m, Lk)       (Lk, Dv)

multiplied right to left, so nothing of size Lq x Lk is ever built: O(L m) memory and time.
The pseudo-inverse is the Nyströmformer's iteration (Razavi et al., 2014)

    Z_0 = A^T / (||A||_1 ||A||_inf),   Z <- Z (13 I - A Z (15 I - A Z (7 I - A Z))) / 4,

with the norms taken per matrix. Segments: token t of L belongs to segment floor(t m / L), so the
segments are contiguous, cover every token, and differ in size by at most one when m does not
divide L (the paper pads L to a multiple of m instead).

Tensors are (..., L, D) with the same leading dims and dtype for q, k and v. float16 and
bfloat16 inputs are computed in float32 and the output rounded back to their dtype: the segment
sums are differences of prefix sums, and the iteration's 13 I - A Z (...) cancels, both far too
coarse in half precision.
"""

import torch

from course.reference.linear_attention import _in_float32

# ----------------------------------------------------------------------------- input checks


def _check_tensor(name: str, x) -> None:
    if not isinstance(x, torch.Tensor) or x.dim() < 2:
        raise ValueError(
            f"{name} must be a tensor of shape (..., L, D), got "
            f"{tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__}"
        )
    if not x.dtype.is_floating_point:
        raise ValueError(f"{name} must be floating point, got {x.dtype}")


def _check_landmarks(num_landmarks, length: int) -> None:
    if (
        isinstance(num_landmarks, bool)
        or not isinstance(num_landmarks, int)
        or not 1 <= num_landmarks <= length
    ):
        raise ValueError(
            f"num_landmarks must be an int from 1 to the sequence length {length}, "
            f"got {num_landmarks!r}"
        )


# ----------------------------------------------------------------------------- landmarks


def segment_bounds(length: int, num_landmarks: int) -> torch.Tensor:
    """(m + 1,) int64: segment i holds tokens bounds[i] <= t < bounds[i + 1] (ceil(i L / m))."""
    i = torch.arange(num_landmarks + 1)
    return (i * length + num_landmarks - 1) // num_landmarks


def landmarks(x: torch.Tensor, num_landmarks: int) -> torch.Tensor:
    """(..., L, D) -> (..., m, D): the mean of each of m contiguous segments of the L tokens."""
    _check_tensor("x", x)
    L = x.shape[-2]
    _check_landmarks(num_landmarks, L)
    dtype = x.dtype
    (x,) = _in_float32(x)
    bounds = segment_bounds(L, num_landmarks).to(x.device)
    # prefix sums with a leading zero row: the sum of tokens [a, b) is csum[b] - csum[a]
    csum = torch.cat([torch.zeros_like(x[..., :1, :]), x.cumsum(-2)], dim=-2)  # (..., L + 1, D)
    sums = csum[..., bounds[1:], :] - csum[..., bounds[:-1], :]  # (..., m, D)
    sizes = (bounds[1:] - bounds[:-1]).to(x.dtype)  # (m,)
    return (sums / sizes[:, None]).to(dtype)


# ----------------------------------------------------------------------------- pseudo-inverse


def iterative_pinv(a: torch.Tensor, iterations: int = 6) -> torch.Tensor:
    """(..., n, n) -> (..., n, n): the Moore-Penrose pseudo-inverse by `iterations` steps of the
    Nyströmformer's iteration from Z_0 = A^T / (||A||_1 ||A||_inf) (norms per matrix)."""
    if not isinstance(a, torch.Tensor) or a.dim() < 2 or a.shape[-1] != a.shape[-2]:
        raise ValueError(
            f"a must be a (..., n, n) tensor of square matrices, got "
            f"{tuple(a.shape) if isinstance(a, torch.Tensor) else type(a).__name__}"
        )
    if not a.dtype.is_floating_point:
        raise ValueError(f"a must be floating point, got {a.dtype}")
    if isinstance(iterations, bool) or not isinstance(iterations, int) or iterations < 0:
        raise ValueError(f"iterations must be an int >= 0, got {iterations!r}")
    dtype = a.dtype
    (a,) = _in_float32(a)
    col = a.abs().sum(dim=-2).amax(dim=-1)  # (...,) ||A||_1, max column sum
    row = a.abs().sum(dim=-1).amax(dim=-1)  # (...,) ||A||_inf, max row sum
    z = a.mT / (col * row)[..., None, None]  # (..., n, n)
    eye = torch.eye(a.shape[-1], dtype=a.dtype, device=a.device)
    for _ in range(iterations):
        az = a @ z
        z = 0.25 * (z @ (13 * eye - az @ (15 * eye - az @ (7 * eye - az))))
    return z.to(dtype)


# ----------------------------------------------------------------------------- attention


def nystrom_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, num_landmarks: int, pinv_iterations: int = 6
) -> torch.Tensor:
    """Nyström approximation of softmax(q k^T / sqrt(d)) v with m = num_landmarks landmarks.

    q (..., Lq, D), k (..., Lk, D), v (..., Lk, Dv) -> (..., Lq, Dv), in O((Lq + Lk) m) memory.
    With m = Lq = Lk (every landmark one token) it is softmax attention, up to the pinv's accuracy.
    """
    for name, t in (("q", q), ("k", k), ("v", v)):
        _check_tensor(name, t)
    if (
        q.shape[-1] != k.shape[-1]
        or k.shape[-2] != v.shape[-2]
        or not (q.shape[:-2] == k.shape[:-2] == v.shape[:-2])
    ):
        raise ValueError(
            f"expected q (..., Lq, D), k (..., Lk, D), v (..., Lk, Dv) with the same "
            f"leading dims, got {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}"
        )
    if not (q.dtype == k.dtype == v.dtype):
        raise ValueError(f"q, k and v must share a dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    _check_landmarks(num_landmarks, min(q.shape[-2], k.shape[-2]))
    dtype = q.dtype
    q, k, v = _in_float32(q, k, v)
    scale = q.shape[-1] ** -0.5
    q_tilde = landmarks(q, num_landmarks)  # (..., m, D)
    k_tilde = landmarks(k, num_landmarks)  # (..., m, D)
    f = torch.softmax(q @ k_tilde.mT * scale, dim=-1)  # (..., Lq, m)
    a = torch.softmax(q_tilde @ k_tilde.mT * scale, dim=-1)  # (..., m, m)
    b = torch.softmax(q_tilde @ k.mT * scale, dim=-1)  # (..., m, Lk)
    bv = b @ v  # (..., m, Dv)
    return (f @ (iterative_pinv(a, pinv_iterations) @ bv)).to(dtype)  # (..., Lq, Dv)
