# ---
# jupyter:
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
#   language_info:
#     name: python
# ---

# %% nbgrader={"grade": false, "grade_id": "install", "locked": true, "schema_version": 3, "solution": false, "task": false}
# Installs the course where it is missing (Colab, a JupyterHub without it): about a minute, once
# per runtime. Where the course is installed, this cell does nothing. pip adds only what is
# missing, and the course asks for no newer Jupyter than hosted runtimes have (ipykernel,
# notebook, IPython stay as they are).
import importlib.metadata
import subprocess
import sys

try:
    importlib.metadata.version("attention-from-scratch")
except importlib.metadata.PackageNotFoundError:
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "attention-from-scratch"], check=True
    )
    importlib.invalidate_caches()  # so that the next cells find what was just installed

# %% [markdown]
# # Day 7 · FlashAttention in Triton
#
# [Open in Colab](https://colab.research.google.com/github/attention-from-scratch/attention-from-scratch/blob/main/exercises/day07-flash-triton/day07-flash-triton.ipynb)
#
# **What you will build.**
#
# 1. Two warm-up kernels that teach Triton from zero: `triton_add(x, y)` (programs, blocks, masks, `tl.load` / `tl.store`) and a row-wise `triton_softmax(x)` (a reduction inside a block);
# 2. `flash_attention_triton(q, k, v, causal=False) -> (out, lse)`: the FlashAttention forward kernel, one program per (query tile, batch·head), an online softmax in float32 registers, causal tiles skipped, ragged lengths masked;
# 3. `FlashAttentionTriton`, an autograd.Function whose backward is three more Triton kernels (advanced).
#
# Then you look at the tile schedule (which tiles each program visits) and measure your kernel against the naive version (CPU) or `F.scaled_dot_product_attention` (GPU).
#
# **Prerequisites.** Day 1 (attention), day 2 (the bottom-right causal mask: query $i$ sits at key position $L_k - L_q + i$), day 6 (the online softmax and the tile-by-tile forward and backward, in PyTorch). NumPy-style broadcasting.
# **Time.** About 3 to 4 hours (the backward is the long part).
#
# **How this notebook works.** Replace each `raise NotImplementedError()` with your code and run the check cell below it: ✓ or ✗ per check, and for a ✗ the name of the mistake and a hint. Grading reruns the same checks, and hidden ones draw new random sizes.
#
# **On a CPU** Triton runs through its *interpreter* (the setup cell imports `course` first, which sets `TRITON_INTERPRET=1`): every kernel runs as NumPy, block by block, in float32 (the interpreter does no bfloat16 arithmetic). It is slow, so sizes stay small, but it runs the very code that a GPU compiles. The checks use it as a debugger too: they count your kernel launches and check that every `tl.load` / `tl.store` stays inside the tensors you passed.
#
# **Not allowed inside your functions:** `F.scaled_dot_product_attention`, torch's softmax (any spelling), the course's `course.reference.flash_triton` (the library version) and `course.reference.online_softmax` (day 6's). Torch may allocate outputs, reshape and check inputs; the arithmetic happens in your kernels.

# %% nbgrader={"grade": false, "grade_id": "setup", "locked": true, "schema_version": 3, "solution": false, "task": false}
import math
import time

import matplotlib.pyplot as plt
import torch
import torch.nn.functional as F

import course  # first: without a GPU it puts Triton in interpreter mode (TRITON_INTERPRET=1)
import triton
import triton.language as tl

from course.bench import median_time
from course.explore.flash_triton import TileExplorer, tile_schedule
from grader import check, watch_every_launch

device = course.get_device()
course.seed_everything(0)
print(course.describe_device())
# In the interpreter, a load or store outside the tensors would write over Python's own memory
# and kill the kernel: watched, every launch of the notebook raises an error that names it instead.
watch_every_launch()


# %% [markdown]
# ## 1. Triton in one page
#
# A Triton **kernel** is a Python function decorated with `@triton.jit`. You launch it on a **grid** of **programs**: `kernel[grid](args...)` with `grid = (n0,)` or `(n0, n1)`. Every program runs the same code; `tl.program_id(axis)` tells it which one it is. Unlike CUDA, a program does not handle one element: it handles a **block** of them at once, a whole vector or tile, and the compiler spreads it over the GPU's threads.
#
# - `tl.arange(0, BLOCK)` is the vector $0, 1, \ldots, \text{BLOCK}-1$; `BLOCK` must be a power of two and a `tl.constexpr` (known when compiling).
# - Tensors arrive as **pointers** to their first element. `x_ptr + offsets` is a block of pointers; `tl.load(ptrs, mask=..., other=...)` reads them, `tl.store(ptrs, values, mask=...)` writes. Pointers count elements, not bytes, and assume you know the memory layout: pass contiguous tensors (`.contiguous()`), or pass strides.
# - A **mask** switches lanes off: the last block usually sticks out past the end ($n$ is rarely a multiple of BLOCK). Lanes with `mask=False` are not read (they get `other`) and not written. Forget it and you read or write someone else's memory: on a GPU maybe garbage, maybe a crash; here the checks catch it.
# - Reductions over a block: `tl.max(x, axis=0)`, `tl.sum(x, axis=0)`; elementwise math: `tl.exp`, `tl.exp2`, `tl.log2`, `tl.where`, `tl.maximum`. Blocks broadcast like NumPy: `a[:, None] + b[None, :]` is a 2-D tile.
# - `tl.dot(a, b)` multiplies two tiles (`(M, K) @ (K, N)`, each side at least 16) on the tensor cores, accumulating in float32.
#
# The grid for $n$ elements in blocks of BLOCK is $\lceil n / \text{BLOCK} \rceil$ programs, `triton.cdiv(n, BLOCK)`. For $n = 10$ and BLOCK $= 4$: 3 programs, with offsets $\{0..3\}$, $\{4..7\}$, $\{8..11\}$, and the last one masks lanes 10 and 11. Here is a kernel that doubles a vector, run on exactly that:

# %%
@triton.jit
def double_kernel(x_ptr, out_ptr, n, BLOCK: tl.constexpr):
    pid = tl.program_id(0)
    offsets = pid * BLOCK + tl.arange(0, BLOCK)   # this program's block of indices
    inside = offsets < n                          # lanes past the end are switched off
    x = tl.load(x_ptr + offsets, mask=inside)
    tl.store(out_ptr + offsets, 2 * x, mask=inside)


x = torch.arange(10, dtype=torch.float32)
out = torch.empty_like(x)
double_kernel[(triton.cdiv(10, 4),)](x, out, 10, BLOCK=4)
print(out)


# %% [markdown]
# The flash kernels need five more idioms, all in the two small kernels below:
#
# - **A running max starts at $-\infty$**: `tl.full([BLOCK], float("-inf"), dtype=tl.float32)`. Starting at 0 is wrong as soon as every value of a row is negative.
# - **A loop with a runtime bound** inside a kernel: `for start in range(0, hi, BLOCK):` where `hi` is an argument or computed from one (not a constexpr). Each turn handles one block.
# - **`tl.minimum(a, b)`** (and `tl.maximum`) elementwise, also on scalars: `hi = tl.minimum(n_cols, max_cols)`. Python's `min` does not work on Triton values.
# - **`.to(dtype)`** converts a block: `x.to(tl.float32)` to compute in float32, `p.to(v.dtype)` before a `tl.dot` with float16 `v`, `out.to(O.dtype.element_ty)` before storing into `O`.
# - **`tl.trans(k)`** transposes a 2-D tile: for q `(M, D)` and k `(N, D)`, `tl.dot(q, tl.trans(k))` is $q k^\top$, `(M, N)`. `tl.dot(q, k)` is a shape error, unless $N = D$: then it silently computes something else (while debugging, pick sizes that differ). The same goes for the axis of a reduction over a tile `s` of shape `(M, N)`: `tl.max(s, axis=1)` is one max per row, `(M,)`; `tl.max(s, axis=0)` one per column, `(N,)`, which also fits wherever `(M,)` does when $M = N$.

# %%
@triton.jit
def row_max_kernel(x_ptr, out_ptr, n_cols, max_cols, BLOCK: tl.constexpr):
    """out[row] = max of the first min(n_cols, max_cols) entries of row `row`."""
    row = tl.program_id(0)
    m = tl.full([BLOCK], float("-inf"), dtype=tl.float32)   # running max of each lane
    hi = tl.minimum(n_cols, max_cols)                        # a runtime bound, not a constexpr
    for start in range(0, hi, BLOCK):
        cols = start + tl.arange(0, BLOCK)
        x = tl.load(x_ptr + row * n_cols + cols, mask=cols < hi, other=float("-inf"))
        m = tl.maximum(m, x.to(tl.float32))
    tl.store(out_ptr + row, tl.max(m, axis=0))


@triton.jit
def scores_kernel(q_ptr, k_ptr, s_ptr, M: tl.constexpr, N: tl.constexpr, D: tl.constexpr):
    """s = q @ k.T for one (M, D) tile of q and one (N, D) tile of k."""
    m, n, d = tl.arange(0, M), tl.arange(0, N), tl.arange(0, D)
    q = tl.load(q_ptr + m[:, None] * D + d[None, :])          # (M, D)
    k = tl.load(k_ptr + n[:, None] * D + d[None, :])          # (N, D)
    tl.store(s_ptr + m[:, None] * N + n[None, :], tl.dot(q, tl.trans(k)))


x = -1 - torch.arange(60.0).reshape(3, 20)                   # every entry < 0
row_max = torch.empty(3)
row_max_kernel[(3,)](x, row_max, 20, 12, BLOCK=8)
print(row_max)                                               # -1, -21, -41
q, k = torch.randn(16, 32), torch.randn(32, 32)
s = torch.empty(16, 32)
scores_kernel[(1,)](q, k, s, M=16, N=32, D=32)
print(torch.allclose(s, q @ k.T, atol=1e-4))


# %% [markdown]
# ## 2. Warm-up: `triton_add`
#
# Write `add_kernel` (one block of `x + y` per program) and the wrapper `triton_add` that checks its inputs, makes them contiguous, allocates the output and launches $\lceil n / \text{BLOCK} \rceil$ programs. Any shape: flatten it, the kernel sees a flat vector of $n$ elements. Only `.contiguous()` promises rows one after the other: `reshape`, `flatten` and `view` of a transpose or a strided slice may return a strided view (or fail), and `torch.empty_like(x)` keeps a transpose's strides, so allocate the output from the contiguous copy. A block of 1024 is a good size (on the interpreter, fewer programs is faster).

# %% nbgrader={"grade": false, "grade_id": "triton_add", "locked": false, "schema_version": 3, "solution": true, "task": false}
@triton.jit
def add_kernel(x_ptr, y_ptr, out_ptr, n, BLOCK: tl.constexpr):
    """Program pid writes out[i] = x[i] + y[i] for i in [pid * BLOCK, (pid + 1) * BLOCK), i < n."""
    ### BEGIN SOLUTION
    pid = tl.program_id(0)
    offsets = pid * BLOCK + tl.arange(0, BLOCK)
    inside = offsets < n
    x = tl.load(x_ptr + offsets, mask=inside)
    y = tl.load(y_ptr + offsets, mask=inside)
    tl.store(out_ptr + offsets, x + y, mask=inside)
    ### END SOLUTION


def triton_add(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """x + y with add_kernel.

    x, y: the same shape (any), dtype and device (float32 on the CPU interpreter). They may be
    non-contiguous (a transpose, a slice): the kernel needs contiguous memory.
    Returns a new tensor of x's shape and dtype.
    Bad input: shapes, dtypes or devices that differ -> ValueError naming them.
    Not allowed: torch's own x + y for the result (the kernel does the adding).
    """
    ### BEGIN SOLUTION
    if x.shape != y.shape:
        raise ValueError(f"x and y must have the same shape, got {tuple(x.shape)} and {tuple(y.shape)}")
    if x.dtype != y.dtype or x.device != y.device:
        raise ValueError(f"x and y must share dtype and device, got {x.dtype} on {x.device} and {y.dtype} on {y.device}")
    x, y = x.contiguous(), y.contiguous()
    out = torch.empty_like(x)
    n = x.numel()
    BLOCK = 1024
    if n:
        add_kernel[(triton.cdiv(n, BLOCK),)](x, y, out, n, BLOCK=BLOCK)
    return out
    ### END SOLUTION


# %%
print(triton_add(torch.arange(5.0), torch.ones(5)))  # 1, 2, 3, 4, 5

# %% [markdown]
# **Mistakes the checks recognise:**
#
# - no Triton kernel launched (the sum computed with torch)
# - a load or store outside the tensors: the last block not masked
# - the last elements never written: `n // BLOCK` programs instead of `triton.cdiv(n, BLOCK)`, offsets without `pid * BLOCK` (or `tl.program_id(1)` on a 1-D grid), or a mask against `BLOCK` instead of `n`
# - wrong values for a non-contiguous `x` or `y` (no `.contiguous()`, `x.view(-1)` of a transpose), or an output made with `torch.empty_like(x)` of a transposed `x`
# - the output that is `x` itself (`out = x.contiguous()`, which is `x` when `x` is contiguous): `x` overwritten
# - shapes or dtypes that differ accepted without a ValueError (shapes `(n, m)` and `(m, n)` too: compare shapes, not `numel()`)

# %% nbgrader={"grade": true, "grade_id": "check_triton_add", "locked": true, "points": 2, "schema_version": 3, "solution": false, "task": false}
check("day07-flash-triton", "triton_add", triton_add, points=2)

# %% nbgrader={"grade": true, "grade_id": "hidden_triton_add", "locked": true, "points": 1, "schema_version": 3, "solution": false, "task": false}
# When your notebook is graded, hidden tests run here: the same checks on fresh random shapes.
### BEGIN HIDDEN TESTS
check("day07-flash-triton", "triton_add", triton_add, hidden=True, points=1)
### END HIDDEN TESTS

# %% [markdown]
# ## 3. Warm-up: a row-wise softmax
#
# One program per row, and the whole row in one block: `BLOCK = triton.next_power_of_2(n_cols)`, so lanes $\ge$ `n_cols` are masked. Inside the block, the stable softmax of day 1:
#
# $$\operatorname{softmax}(x)_j = \frac{e^{x_j - \max x}}{\sum_{j'} e^{x_{j'} - \max x}}.$$
#
# The masked lanes must not change the max or the sum. That decides what they load: `other=float("-inf")`, since $e^{-\infty} = 0$. (With `other=0.0`, each padded lane adds $e^{0 - \max}$ to the sum: a classic.) Row $r$ of a contiguous `(rows, n_cols)` tensor starts at `x_ptr + r * n_cols`.

# %% nbgrader={"grade": false, "grade_id": "triton_softmax", "locked": false, "schema_version": 3, "solution": true, "task": false}
@triton.jit
def softmax_kernel(x_ptr, out_ptr, n_cols, BLOCK: tl.constexpr):
    """Program r writes the softmax of row r of the contiguous (rows, n_cols) input."""
    ### BEGIN SOLUTION
    row = tl.program_id(0)
    cols = tl.arange(0, BLOCK)
    inside = cols < n_cols
    x = tl.load(x_ptr + row * n_cols + cols, mask=inside, other=float("-inf"))
    x = x - tl.max(x, axis=0)
    num = tl.exp(x)
    tl.store(out_ptr + row * n_cols + cols, num / tl.sum(num, axis=0), mask=inside)
    ### END SOLUTION


def triton_softmax(x: torch.Tensor) -> torch.Tensor:
    """Softmax over the last axis with softmax_kernel, one program per row.

    x: (..., n_cols), float32 on the CPU interpreter, any leading dims (flatten them into rows),
    possibly non-contiguous; entries may be -inf (not a whole row) or large (1e4): no inf/NaN.
    Returns the same shape and dtype.
    Bad input: a 0-d tensor -> ValueError. Not allowed: torch.softmax in any spelling.
    """
    ### BEGIN SOLUTION
    if x.ndim == 0:
        raise ValueError("x needs a last axis to take the softmax over, got a 0-d tensor")
    rows = x.contiguous().reshape(-1, x.shape[-1])
    out = torch.empty_like(rows)
    if rows.numel():
        softmax_kernel[(rows.shape[0],)](rows, out, rows.shape[1], BLOCK=triton.next_power_of_2(rows.shape[1]))
    return out.reshape(x.shape)
    ### END SOLUTION


# %%
print(triton_softmax(torch.tensor([[0.0, math.log(3.0)], [1.0, float("-inf")]])))  # [0.25, 0.75], [1, 0]

# %% [markdown]
# **Mistakes the checks recognise:**
#
# - padded lanes counted in the sum (loaded with `other=0.0` instead of `-inf`)
# - inf or NaN for large inputs (no max subtracted)
# - padded lanes that win the max (a row far below 0); `exp(x - max)` not divided by its sum; `tl.exp2` without $\log_2 e$
# - softmax over the wrong axis, or over rows of the wrong length (`n_cols = x.shape[0]`, `reshape(n_cols, -1)`); a non-contiguous input read as if contiguous, or an output made with `torch.empty_like(x)` of a transposed `x`; one program for all rows; rows read at `row * BLOCK` instead of `row * n_cols`; a `BLOCK` that is not a power of two
# - the output that is the input itself (`out = x2`, where `x2` is `x` when `x` is contiguous): `x` overwritten
# - no Triton kernel; a load or store outside the tensors
# - a 0-d tensor accepted without a ValueError

# %% nbgrader={"grade": true, "grade_id": "check_triton_softmax", "locked": true, "points": 2, "schema_version": 3, "solution": false, "task": false}
check("day07-flash-triton", "triton_softmax", triton_softmax, points=2)

# %% nbgrader={"grade": true, "grade_id": "hidden_triton_softmax", "locked": true, "points": 1, "schema_version": 3, "solution": false, "task": false}
# When your notebook is graded, hidden tests run here: the same checks on fresh random shapes.
### BEGIN HIDDEN TESTS
check("day07-flash-triton", "triton_softmax", triton_softmax, hidden=True, points=1)
### END HIDDEN TESTS

# %% [markdown]
# ## 4. The FlashAttention forward kernel
#
# Day 6 computed attention tile by tile in PyTorch. Now each tile loop becomes one Triton program that keeps its running statistics in registers, and the $L_q \times L_k$ matrix never exists anywhere.
#
# **The grid.** Inputs `(..., L, D)` are flattened to `(BH, L, D)` (BH = every leading index, e.g. batch·heads) and made contiguous. Program `(m, bh)` owns queries `m*BLOCK_M .. m*BLOCK_M + BLOCK_M - 1` of head `bh`; `grid = (cdiv(Lq, BLOCK_M), BH)`. Element `(bh, i, d)` of q sits at `Q + bh*Lq*D + i*D + d`.
#
# **The online softmax** (day 6), per query row, over key tiles $j = 0, 1, \ldots$ with scores $S_j = Q K_j^\top / \sqrt D$:
#
# $$m_\text{new} = \max(m_i, \operatorname{rowmax} S_j), \quad \alpha = e^{m_i - m_\text{new}}, \quad P = e^{S_j - m_\text{new}},$$
# $$\ell_i \leftarrow \alpha\, \ell_i + \operatorname{rowsum} P, \qquad \text{acc} \leftarrow \alpha\, \text{acc} + P V_j, \qquad m_i \leftarrow m_\text{new},$$
#
# then $\text{out} = \text{acc} / \ell_i$ and $\text{lse} = m_i + \log \ell_i$. Both $\ell$ **and** acc carry sums of $e^{s - m_i}$, so both need $\alpha$ when the max grows. $m_i$, $\ell_i$ and acc are float32 whatever the input dtype (`tl.zeros(..., dtype=tl.float32)`, $m_i$ starts at $-\infty$).
#
# **exp2.** GPUs compute $2^x$ natively; $e^x = 2^{x \log_2 e}$. The tutorial kernels fold $\log_2 e$ into the scale, `qk_scale = log2(e) / sqrt(D)`, and work in base-2 units throughout: `tl.exp2(s - m)`. Then $m_i$ is in base-2 units too, and the natural-log logsumexp is $(m_i + \log_2 \ell_i) \cdot \ln 2$. Returning $m_i + \log_2 \ell_i$ is the base-2 mistake the checks know.
#
# **Causal, bottom-right.** Query $i$ is at key position $p_i = L_k - L_q + i$ and sees keys $j \le p_i$ (day 2). A program's last query is at $L_k - L_q + \text{start\_m} + \text{BLOCK\_M} - 1$, so it stops its key loop at $\text{hi} = \min(L_k,\, L_k - L_q + \text{start\_m} + \text{BLOCK\_M})$: the tiles after that are all in the future and are never loaded (about half the work). Inside a visited tile, `tl.where(offs_n[None, :] <= pos[:, None], s, -inf)` hides the future keys of the tiles the diagonal crosses.
#
# **Ragged lengths.** When $L_q$ or $L_k$ is not a multiple of the block, the last tiles stick out: mask the loads (`other=0.0`) **and** set the scores of keys $\ge L_k$ to $-\infty$ (a key loaded as zeros has score 0, not $-\infty$: it would still get weight $e^{0 - m}$). Mask the stores of queries $\ge L_q$.
#
# Use `BLOCK_M = BLOCK_N = 16` on the CPU (64 is a good start on a GPU) and keep `HEAD_DIM = D` a constexpr: $D \in \{16, 32, 64, 128\}$ (powers of two, at least 16 for `tl.dot`). For `tl.dot(p, v)` on a GPU, cast `p.to(v.dtype)` (float16/bfloat16 inputs).
#
# For causal attention, the checks use $L_q \le L_k$ (with $L_q > L_k$ the first queries see no key at all).

# %% nbgrader={"grade": false, "grade_id": "flash_fwd_kernel", "locked": false, "schema_version": 3, "solution": true, "task": false}
@triton.jit
def flash_fwd_kernel(Q, K, V, O, LSE, Lq, Lk, qk_scale,
                     HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                     CAUSAL: tl.constexpr):
    """Program (m, bh): out and lse of queries m*BLOCK_M .. (m+1)*BLOCK_M - 1 of head bh.

    Q, O: (BH, Lq, HEAD_DIM), K, V: (BH, Lk, HEAD_DIM), LSE: (BH, Lq) float32, all contiguous.
    qk_scale = log2(e) / sqrt(HEAD_DIM): scores in base-2 units, for tl.exp2.
    """
    ### BEGIN SOLUTION
    start_m = tl.program_id(0) * BLOCK_M
    bh = tl.program_id(1)
    offs_m = start_m + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, HEAD_DIM)
    q_offs = bh * Lq * HEAD_DIM + offs_m[:, None] * HEAD_DIM + offs_d[None, :]
    q = tl.load(Q + q_offs, mask=offs_m[:, None] < Lq, other=0.0)
    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)
    pos = (Lk - Lq) + offs_m                             # bottom-right: absolute positions
    hi = Lk
    if CAUSAL:
        hi = tl.minimum(Lk, Lk - Lq + start_m + BLOCK_M)  # key tiles from hi on: all future
    for start_n in range(0, hi, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        kv_offs = bh * Lk * HEAD_DIM + offs_n[:, None] * HEAD_DIM + offs_d[None, :]
        k = tl.load(K + kv_offs, mask=offs_n[:, None] < Lk, other=0.0)
        v = tl.load(V + kv_offs, mask=offs_n[:, None] < Lk, other=0.0)
        s = tl.dot(q, tl.trans(k)) * qk_scale            # (BLOCK_M, BLOCK_N), base-2 units
        keep = offs_n[None, :] < Lk
        if CAUSAL:
            keep = keep & (offs_n[None, :] <= pos[:, None])
        s = tl.where(keep, s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, axis=1))
        alpha = tl.exp2(m_i - m_new)
        p = tl.exp2(s - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, axis=1)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)
        m_i = m_new
    out = acc / l_i[:, None]
    tl.store(O + q_offs, out.to(O.dtype.element_ty), mask=offs_m[:, None] < Lq)
    lse = (m_i + tl.log2(l_i)) * 0.6931471805599453      # base 2 -> natural log: times ln(2)
    tl.store(LSE + bh * Lq + offs_m, lse, mask=offs_m < Lq)
    ### END SOLUTION


# %% [markdown]
# **The launcher.** `flash_attention_triton` checks its input, flattens `(..., L, D)` to contiguous `(BH, L, D)`, allocates `out` and a float32 `lse` of shape `(BH, Lq)`, and starts one program per query tile and head, `grid = (cdiv(Lq, BLOCK_M), BH)`, with `qk_scale` $= \log_2 e / \sqrt D$. Then it reshapes both results back to the input's leading dims.

# %% nbgrader={"grade": false, "grade_id": "flash_attention_triton", "locked": false, "schema_version": 3, "solution": true, "task": false}
def flash_attention_triton(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool = False):
    """Attention softmax(q k^T / sqrt(D)) v with flash_fwd_kernel; returns (out, lse).

    q: (..., Lq, D), k, v: (..., Lk, D), the same leading dims, D in (16, 32, 64, 128) (any
    other D, 24 or 48 too, -> ValueError: tl.arange needs a power of two).
    dtype: float32 on the CPU interpreter (float64 there -> ValueError); float16, bfloat16 or
    float32 on a GPU; one device.
    causal: bottom-right aligned (query i sees keys j <= Lk - Lq + i); checked with Lq <= Lk.
    Returns out (..., Lq, D) in q's dtype and lse (..., Lq) float32, the natural-log logsumexp
    of each query's scaled scores.
    Bad input (head_dim not supported, shapes that do not fit, dtype, devices) -> ValueError.
    Not allowed: F.scaled_dot_product_attention, torch softmax, course.reference.flash_triton, course.reference.online_softmax.
    """
    ### BEGIN SOLUTION
    if q.ndim < 2 or k.shape != v.shape or q.shape[:-2] != k.shape[:-2] or q.shape[-1] != k.shape[-1]:
        raise ValueError(f"expected q (..., Lq, D) and k, v (..., Lk, D) with the same leading dims and D, "
                         f"got q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}")
    D = q.shape[-1]
    if D not in (16, 32, 64, 128):
        raise ValueError(f"head_dim must be one of (16, 32, 64, 128), got {D}")
    if not (q.device == k.device == v.device) or not (q.dtype == k.dtype == v.dtype):
        raise ValueError(f"q, k, v must share device and dtype, got {q.device}/{q.dtype}, "
                         f"{k.device}/{k.dtype}, {v.device}/{v.dtype}")
    allowed = (torch.float16, torch.bfloat16, torch.float32) if q.device.type == "cuda" else (torch.float32,)
    if q.dtype not in allowed:
        raise ValueError(f"dtype {q.dtype} is not supported on {q.device.type}; use one of {allowed}")
    Lq, Lk = q.shape[-2], k.shape[-2]
    q3, k3, v3 = (t.reshape(-1, t.shape[-2], D).contiguous() for t in (q, k, v))
    out = torch.empty_like(q3)
    lse = torch.empty(q3.shape[:2], dtype=torch.float32, device=q.device)
    BLOCK = 64 if q.device.type == "cuda" else 16
    if out.numel():
        grid = (triton.cdiv(Lq, BLOCK), q3.shape[0])
        flash_fwd_kernel[grid](q3, k3, v3, out, lse, Lq, Lk, 1.4426950408889634 / math.sqrt(D),
                               HEAD_DIM=D, BLOCK_M=BLOCK, BLOCK_N=BLOCK, CAUSAL=bool(causal))
    return out.reshape(q.shape), lse.reshape(q.shape[:-1])
    ### END SOLUTION


# %%
# a tiny example by hand: two keys with scores 0 and log 3 get weights 1/4 and 3/4
q = torch.zeros(1, 16); q[0, 0] = 4 * math.log(3.0)      # q . k_1 / sqrt(16) = log 3
k = torch.zeros(2, 16); k[1, 0] = 1.0
v = torch.zeros(2, 16); v[0, 0], v[1, 0] = 1.0, 5.0
out, lse = flash_attention_triton(q, k, v)
print(out[0, 0].item(), lse.item())   # 1/4 * 1 + 3/4 * 5 = 4.0, log(1 + 3) = 1.386...

# %% [markdown]
# **Mistakes the checks recognise:**
#
# - no rescale at all, or only one of `l_i` and `acc` rescaled, when the running max changes; `acc` rescaled after the new tile is added, `(acc + P V) * alpha`; `l_i` (or `acc`, `m_i`) set to its start value inside the key loop
# - the row max over the wrong axis, `tl.max(s, axis=0)` (it runs when `BLOCK_M = BLOCK_N`)
# - `m_i` started at 0 instead of $-\infty$ (NaN for a row whose scores are all very negative)
# - the output not divided by `l_i`
# - keys past $L_k$ in the last tile counted (loaded as zeros, never set to $-\infty$)
# - a load or store outside the tensors (a ragged tile without a mask)
# - the wrong scale: none, $1/D$, or `tl.exp2` without $\log_2 e$ folded in
# - the logsumexp in base 2 (or half converted), or without the max
# - `alpha = exp2(m_new - m_i)` (inverted: NaN everywhere); `tl.dot(q, k)` without `tl.trans(k)` (a shape error, or wrong scores when `BLOCK_N = D`)
# - non-contiguous q, k, v read as if contiguous (`reshape` can return a strided view: add `.contiguous()`)
# - `causal=True` ignored, a top-left mask, or the diagonal tile masked on the wrong side; query rows left with no key (NaN) by the causal positions
# - with `causal=True`, the key tiles above the diagonal loaded (the loop must stop at `hi`), or a loop that stops too early (`hi = start_m + BLOCK_M`, top-left)
# - K/V of head `bh` at `bh * Lq * D` (or Q at `bh * Lk * D`): a per-head offset with the other length; `BH` from `q.shape[0]` instead of every leading dim (wrong for `(B, H, L, D)`)
# - the output written over `q` (`out = q3`, which is `q` itself when `q` is contiguous)
# - no Triton kernel; unsupported head_dim (24, or 48: a multiple of 16 is not enough), shapes or dtypes (q, k, v not all the same) accepted

# %% nbgrader={"grade": true, "grade_id": "check_flash_attention_triton", "locked": true, "points": 2, "schema_version": 3, "solution": false, "task": false}
check("day07-flash-triton", "flash_attention_triton", flash_attention_triton, points=2)

# %% nbgrader={"grade": true, "grade_id": "hidden_flash_attention_triton", "locked": true, "points": 1, "schema_version": 3, "solution": false, "task": false}
# When your notebook is graded, hidden tests run here: the same checks on fresh random shapes.
### BEGIN HIDDEN TESTS
check("day07-flash-triton", "flash_attention_triton", flash_attention_triton, hidden=True, points=1)
### END HIDDEN TESTS

# %% [markdown]
# ## 5. Explore: the tile schedule
#
# Each row of the right panel is one program (one query tile); its loop visits the coloured key tiles from left to right. Without a mask every program visits every tile. With the bottom-right causal mask the programs stop at the diagonal: about half the tiles are never loaded, which is where the 2× of causal attention comes from. Orange tiles are the ones that need the mask inside: those the diagonal crosses, and the partial tiles of ragged lengths. The title checks **your** kernel's logsumexp against a float64 reference at these lengths, and the third panel shows the tiles your kernel **really loaded** (every `tl.load` is recorded in the interpreter) against the schedule: crimson tiles were loaded although the schedule skips them (a causal loop that runs to `Lk` and only masks), yellow ones were scheduled but never loaded (a loop that stops too early).
#
# Things to try: `Lq` = `Lk` versus `Lq` much shorter than `Lk` (decoding a few new tokens against a long cache: every program sees almost all keys); `BLOCK_M` = 64 with `BLOCK_N` = 16 (more masked tiles per program); lengths that are not multiples of the block.

# %%
TileExplorer(lq=48, lk=64, causal=True, flash_attention=flash_attention_triton)


# %% [markdown]
# ## 6. The backward pass in Triton (advanced)
#
# `FlashAttentionTriton.apply(q, k, v, is_causal)` is the day 6 interface: the forward runs your kernel and saves `q, k, v, out` and **one** `lse` of shape `(..., Lq)`, nothing of size $L_q \times L_k$. The backward recomputes the probabilities tile by tile from the logsumexp, $P = e^{S - \text{lse}}$ (no max, no sum needed: lse holds both), and with $dO$ the gradient of the output:
#
# $$dV = P^\top dO, \qquad dP = dO\, V^\top, \qquad dS = P \odot (dP - D), \qquad dQ = \tfrac{1}{\sqrt d}\, dS\, K, \qquad dK = \tfrac{1}{\sqrt d}\, dS^\top Q,$$
#
# where $D_i = \sum_j P_{ij}\, dP_{ij} = \sum_d dO_{id}\, O_{id}$ is the softmax Jacobian's row term: one number per query, computed once by a small **preprocessing** kernel from $dO$ and $O$ (the second form needs no $P$).
#
# FlashAttention 2 splits the work into three kernels, below, so that no two programs write the same memory.
#
# The backward kernels get two scales: `qk_scale` $= \log_2 e / \sqrt d$ for the scores, as in the forward, and `ds_scale` $= 1/\sqrt d$, the factor of $dQ$ and $dK$ (from $S = Q K^\top / \sqrt d$), applied once to each at the end.
#
# (The other way, one kernel that adds to $dQ$ with `tl.atomic_add`, is also fine: `tl.atomic_add(ptrs, values, mask=...)` adds `values` into memory in one indivisible step, so programs of different key tiles that add to the same rows of $dQ$ never lose each other's sums; accumulate into a zeroed float32 buffer.) Every recomputed $P$ must be masked exactly as in the forward: keys $\ge L_k$, queries $\ge L_q$, and, when causal, keys after each query's position. With `lse` in natural log and scores in base-2 units, $P$ = `tl.exp2(s - lse * log2(e))`.
#
# The checks compare $dq, dk, dv$ with autograd through float64 attention, count the kernels your backward launches, and look at what the forward saved.

# %% [markdown]
# **1. Preprocess**, a block of rows per program:
#
# $$D = \operatorname{rowsum}(dO \odot O).$$

# %% nbgrader={"grade": false, "grade_id": "flash_bwd_preprocess", "locked": false, "schema_version": 3, "solution": true, "task": false}
@triton.jit
def flash_bwd_preprocess(O, DO, DELTA, n_rows, HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr):
    """DELTA[r] = sum_d O[r, d] * DO[r, d] for the rows of the contiguous (n_rows, HEAD_DIM) O, DO."""
    ### BEGIN SOLUTION
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs = rows[:, None] * HEAD_DIM + tl.arange(0, HEAD_DIM)[None, :]
    o = tl.load(O + offs, mask=rows[:, None] < n_rows, other=0.0).to(tl.float32)
    do = tl.load(DO + offs, mask=rows[:, None] < n_rows, other=0.0).to(tl.float32)
    tl.store(DELTA + rows, tl.sum(o * do, axis=1), mask=rows < n_rows)
    ### END SOLUTION


# %% [markdown]
# **2. dK and dV**: one program per (key tile, bh) keeps $dK$, $dV$ for its keys in registers and loops over the query tiles that can see them (causal: from the first query that sees the tile's first key, query index `start_n - (Lk - Lq)`, clamped at 0 with `tl.maximum(start_n - (Lk - Lq), 0)` when Lk > Lq; that start need not be a multiple of BLOCK_M: round it down, `(lo // BLOCK_M) * BLOCK_M`, or load from it with masks). Per query tile:
#
# $$P = e^{S - \text{lse}}, \qquad dV \mathrel{+}= P^\top dO, \qquad dS = P \odot (dO\, V^\top - D), \qquad dK \mathrel{+}= dS^\top Q, \qquad \text{and at the end } dK \leftarrow \tfrac{1}{\sqrt d}\, dK.$$

# %% nbgrader={"grade": false, "grade_id": "flash_bwd_dkdv_kernel", "locked": false, "schema_version": 3, "solution": true, "task": false}
@triton.jit
def flash_bwd_dkdv_kernel(Q, K, V, DO, LSE, DELTA, DK, DV, Lq, Lk, qk_scale, ds_scale,
                          HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                          CAUSAL: tl.constexpr):
    """Program (n, bh): dK and dV of keys n*BLOCK_N .. (n+1)*BLOCK_N - 1 of head bh."""
    ### BEGIN SOLUTION
    start_n = tl.program_id(0) * BLOCK_N
    bh = tl.program_id(1)
    offs_n = start_n + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, HEAD_DIM)
    kv_offs = bh * Lk * HEAD_DIM + offs_n[:, None] * HEAD_DIM + offs_d[None, :]
    k = tl.load(K + kv_offs, mask=offs_n[:, None] < Lk, other=0.0)
    v = tl.load(V + kv_offs, mask=offs_n[:, None] < Lk, other=0.0)
    dk = tl.zeros([BLOCK_N, HEAD_DIM], dtype=tl.float32)
    dv = tl.zeros([BLOCK_N, HEAD_DIM], dtype=tl.float32)
    lo = 0
    if CAUSAL:  # queries before start_n - (Lk - Lq) see none of these keys
        lo = (tl.maximum(start_n - (Lk - Lq), 0) // BLOCK_M) * BLOCK_M
    for start_m in range(lo, Lq, BLOCK_M):
        offs_m = start_m + tl.arange(0, BLOCK_M)
        q_offs = bh * Lq * HEAD_DIM + offs_m[:, None] * HEAD_DIM + offs_d[None, :]
        q = tl.load(Q + q_offs, mask=offs_m[:, None] < Lq, other=0.0)
        do = tl.load(DO + q_offs, mask=offs_m[:, None] < Lq, other=0.0)
        lse = tl.load(LSE + bh * Lq + offs_m, mask=offs_m < Lq, other=0.0) * 1.4426950408889634
        delta = tl.load(DELTA + bh * Lq + offs_m, mask=offs_m < Lq, other=0.0)
        s = tl.dot(q, tl.trans(k)) * qk_scale
        keep = (offs_n[None, :] < Lk) & (offs_m[:, None] < Lq)
        if CAUSAL:
            keep = keep & (offs_n[None, :] <= (Lk - Lq) + offs_m[:, None])
        p = tl.where(keep, tl.exp2(s - lse[:, None]), 0.0)       # (BLOCK_M, BLOCK_N)
        dv += tl.dot(tl.trans(p.to(do.dtype)), do)
        dp = tl.dot(do, tl.trans(v))
        ds = p * (dp - delta[:, None])
        dk += tl.dot(tl.trans(ds.to(q.dtype)), q)
    tl.store(DK + kv_offs, (dk * ds_scale).to(DK.dtype.element_ty), mask=offs_n[:, None] < Lk)
    tl.store(DV + kv_offs, dv.to(DV.dtype.element_ty), mask=offs_n[:, None] < Lk)
    ### END SOLUTION


# %% [markdown]
# **3. dQ**: one program per (query tile, bh) keeps $dQ$ and loops over key tiles (causal: up to `hi`, as in the forward). Per key tile:
#
# $$P = e^{S - \text{lse}}, \qquad dS = P \odot (dO\, V^\top - D), \qquad dQ \mathrel{+}= dS\, K, \qquad \text{and at the end } dQ \leftarrow \tfrac{1}{\sqrt d}\, dQ.$$

# %% nbgrader={"grade": false, "grade_id": "flash_bwd_dq_kernel", "locked": false, "schema_version": 3, "solution": true, "task": false}
@triton.jit
def flash_bwd_dq_kernel(Q, K, V, DO, LSE, DELTA, DQ, Lq, Lk, qk_scale, ds_scale,
                        HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                        CAUSAL: tl.constexpr):
    """Program (m, bh): dQ of queries m*BLOCK_M .. (m+1)*BLOCK_M - 1 of head bh."""
    ### BEGIN SOLUTION
    start_m = tl.program_id(0) * BLOCK_M
    bh = tl.program_id(1)
    offs_m = start_m + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, HEAD_DIM)
    q_offs = bh * Lq * HEAD_DIM + offs_m[:, None] * HEAD_DIM + offs_d[None, :]
    q = tl.load(Q + q_offs, mask=offs_m[:, None] < Lq, other=0.0)
    do = tl.load(DO + q_offs, mask=offs_m[:, None] < Lq, other=0.0)
    lse = tl.load(LSE + bh * Lq + offs_m, mask=offs_m < Lq, other=0.0) * 1.4426950408889634
    Di = tl.load(DELTA + bh * Lq + offs_m, mask=offs_m < Lq, other=0.0)
    dq = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)
    hi = Lk
    if CAUSAL:
        hi = tl.minimum(Lk, Lk - Lq + start_m + BLOCK_M)
    for start_n in range(0, hi, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        kv_offs = bh * Lk * HEAD_DIM + offs_n[:, None] * HEAD_DIM + offs_d[None, :]
        k = tl.load(K + kv_offs, mask=offs_n[:, None] < Lk, other=0.0)
        v = tl.load(V + kv_offs, mask=offs_n[:, None] < Lk, other=0.0)
        s = tl.dot(q, tl.trans(k)) * qk_scale
        keep = (offs_n[None, :] < Lk) & (offs_m[:, None] < Lq)
        if CAUSAL:
            keep = keep & (offs_n[None, :] <= (Lk - Lq) + offs_m[:, None])
        p = tl.where(keep, tl.exp2(s - lse[:, None]), 0.0)
        dp = tl.dot(do, tl.trans(v))
        dq += tl.dot((p * (dp - Di[:, None])).to(k.dtype), k)
    tl.store(DQ + q_offs, (dq * ds_scale).to(DQ.dtype.element_ty), mask=offs_m[:, None] < Lq)
    ### END SOLUTION


# %% [markdown]
# **The autograd.Function.** `forward` runs your `flash_attention_triton` and saves what the backward needs, `lse` included; `backward` flattens the tensors to `(BH, L, D)`, launches the three kernels above, and reshapes the gradients back.

# %% nbgrader={"grade": false, "grade_id": "FlashAttentionTriton", "locked": false, "schema_version": 3, "solution": true, "task": false}
class FlashAttentionTriton(torch.autograd.Function):
    """FlashAttentionTriton.apply(q, k, v, is_causal) -> out, differentiable in q, k, v.

    forward(ctx, q, k, v, is_causal=False): out, lse = your flash_attention_triton; save exactly
    q, k, v, out and lse (..., Lq) with ctx.save_for_backward (no (Lq, Lk) tensor).
    backward(ctx, dout): dq, dk, dv from Triton kernels (the three above, or an atomic dQ),
    recomputing P = exp(S - lse) tile by tile; returns (dq, dk, dv, None).
    Shapes, dtypes and bad input as flash_attention_triton.
    """

    @staticmethod
    def forward(ctx, q, k, v, is_causal=False):
        ### BEGIN SOLUTION
        out, lse = flash_attention_triton(q, k, v, causal=is_causal)
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.is_causal = bool(is_causal)
        return out
        ### END SOLUTION

    @staticmethod
    def backward(ctx, dout):
        ### BEGIN SOLUTION
        q, k, v, out, lse = ctx.saved_tensors
        D, Lq, Lk = q.shape[-1], q.shape[-2], k.shape[-2]
        q3, k3, v3, o3, do3 = (t.reshape(-1, t.shape[-2], D).contiguous() for t in (q, k, v, out, dout))
        lse2 = lse.reshape(-1, Lq).contiguous()
        BH = q3.shape[0]
        dq, dk, dv = torch.empty_like(q3), torch.empty_like(k3), torch.empty_like(v3)
        delta = torch.empty(BH, Lq, dtype=torch.float32, device=q.device)
        BLOCK = 64 if q.device.type == "cuda" else 16
        flash_bwd_preprocess[(triton.cdiv(BH * Lq, BLOCK),)](o3, do3, delta, BH * Lq, HEAD_DIM=D, BLOCK_M=BLOCK)
        qk_scale = 1.4426950408889634 / math.sqrt(D)
        ds_scale = 1.0 / math.sqrt(D)
        meta = dict(HEAD_DIM=D, BLOCK_M=BLOCK, BLOCK_N=BLOCK, CAUSAL=ctx.is_causal)
        flash_bwd_dkdv_kernel[(triton.cdiv(Lk, BLOCK), BH)](q3, k3, v3, do3, lse2, delta, dk, dv,
                                                            Lq, Lk, qk_scale, ds_scale, **meta)
        flash_bwd_dq_kernel[(triton.cdiv(Lq, BLOCK), BH)](q3, k3, v3, do3, lse2, delta, dq,
                                                          Lq, Lk, qk_scale, ds_scale, **meta)
        return dq.reshape(q.shape), dk.reshape(k.shape), dv.reshape(v.shape), None
        ### END SOLUTION


# %%
q, k, v = (torch.randn(1, 2, 20, 16, requires_grad=True) for _ in range(3))
FlashAttentionTriton.apply(q, k, v, True).square().sum().backward()
print(q.grad.shape, k.grad.norm().item() > 0, v.grad.norm().item() > 0)

# %% [markdown]
# **Mistakes the checks recognise:**
#
# - `dS = P * dP` without the $D$ term, or $D$ summed from `dO` alone (or `O * O`) instead of `dO * O`
# - $dK = dS^\top dO$ instead of $dS^\top Q$
# - `backward` returning three gradients (no `None` for `is_causal`), or them in another order than `q, k, v`
# - $dQ$, $dK$ without the $1/\sqrt d$ (or with it twice)
# - gradients right without a mask but wrong with `is_causal=True` (the backward's $P$ not masked like the forward's)
# - a causal dK/dV loop over query tiles that starts late (at `start_n`, without the `Lk - Lq` shift, or a tile past the rounded start)
# - a causal dK/dV start not clamped at 0 (`start_n - (Lk - Lq)` below 0 when `Lk - Lq` is a tile or more); a dK/dV grid of `cdiv(Lq, BLOCK)` programs instead of `cdiv(Lk, BLOCK)`
# - $P$ = `tl.exp2(s - lse)` with `lse` still in natural log (not multiplied by $\log_2 e$); `qk_scale` and `ds_scale` swapped in a launch
# - `DELTA` or `LSE` read at `offs_m`, without the per-head offset `bh * Lq`
# - a non-contiguous `dout` (the gradient of a transposed output) read as if contiguous
# - a backward that launches no Triton kernel; a forward that saves the attention matrix, or keeps `lse` on `ctx` instead of saving it with `ctx.save_for_backward`; gradients returned in the flattened `(BH, L, D)` shape
# - something other than an autograd.Function; head_dim 24 accepted

# %% nbgrader={"grade": true, "grade_id": "check_FlashAttentionTriton", "locked": true, "points": 2, "schema_version": 3, "solution": false, "task": false}
check("day07-flash-triton", "FlashAttentionTriton", FlashAttentionTriton, points=2)

# %% nbgrader={"grade": true, "grade_id": "hidden_FlashAttentionTriton", "locked": true, "points": 1, "schema_version": 3, "solution": false, "task": false}
# When your notebook is graded, hidden tests run here: the same checks on fresh random shapes.
### BEGIN HIDDEN TESTS
check("day07-flash-triton", "FlashAttentionTriton", FlashAttentionTriton, hidden=True, points=1)
### END HIDDEN TESTS

# %% [markdown]
# ## 7. Measure
#
# On a GPU, the question is how close your kernel gets to `F.scaled_dot_product_attention` (its flash backend is FlashAttention 2 in CUDA): forward FLOPs are $4 \cdot B H L_q L_k D$ (two matmuls), halved when causal. On a CPU the interpreter runs the same kernel as NumPy, block by block: a correctness tool, not a speed one, so here we compare it with the naive version (scores, softmax, weights @ v) at a small size and check they agree. `python -m course.bench.flash_triton` prints the full table (on a GPU: batch 4, 16 heads, head_dim 64 and 128, L up to 16k, float16 and bfloat16, with a PASS/FAIL at 0.8× SDPA).

# %%
def naive_attention(q, k, v, causal=False):
    s = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
    if causal:
        Lq, Lk = s.shape[-2:]
        s = s.masked_fill(torch.ones(Lq, Lk, dtype=torch.bool, device=s.device).tril(Lk - Lq).logical_not(), float("-inf"))
    return torch.softmax(s, dim=-1) @ v


if device.type == "cuda":
    from triton.testing import do_bench
    rows = []
    for L in (1024, 2048, 4096):
        q, k, v = (torch.randn(4, 16, L, 64, device=device, dtype=torch.float16) for _ in range(3))
        flops = 4 * 4 * 16 * L * L * 64
        t_flash = do_bench(lambda: flash_attention_triton(q, k, v)) * 1e-3
        t_sdpa = do_bench(lambda: F.scaled_dot_product_attention(q, k, v)) * 1e-3
        rows.append((L, flops / t_flash / 1e12, flops / t_sdpa / 1e12))
        print(f"L = {L:5d}: yours {rows[-1][1]:6.1f} TFLOP/s, SDPA {rows[-1][2]:6.1f} TFLOP/s")
    fig, ax = plt.subplots(figsize=(6, 3))
    ax.plot([r[0] for r in rows], [r[1] for r in rows], "o-", label="flash_attention_triton")
    ax.plot([r[0] for r in rows], [r[2] for r in rows], "s-", label="F.scaled_dot_product_attention")
    ax.set(xscale="log", xlabel="L", ylabel="TFLOP/s", title="forward, float16, 4 x 16 heads x D 64")
    ax.legend()
    plt.show()
else:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    q, k, v = (torch.randn(1, 1, 48, 32) for _ in range(3))
    for causal in (False, True):
        t_naive = median_time(naive_attention, q, k, v, causal, repeats=3)
        t_triton = median_time(flash_attention_triton, q, k, v, causal, repeats=1, warmup=0)
        error = (flash_attention_triton(q, k, v, causal)[0] - naive_attention(q, k, v, causal)).abs().max().item()
        print(f"causal={causal!s:5}: naive {1e3 * t_naive:7.2f} ms, Triton interpreter {1e3 * t_triton:7.1f} ms, "
              f"max difference {error:.1e}")
    torch.set_num_threads(threads)
    print("No GPU here: the interpreter shows the kernel is right, not how fast it is.")

# %% [markdown]
# The interpreter is thousands of times slower than torch here: it executes every block operation of every program one after the other in NumPy. On a GPU the same kernel is compiled; with modest tiles it usually reaches most of FlashAttention 2's throughput at long sequence lengths, and causal runs in about half the time of non-causal thanks to the skipped tiles.
#
# ## 8. Recap
#
# - A Triton program works on blocks: `tl.arange` offsets, pointer arithmetic, `mask=` on every load and store of a block that can stick out, `tl.dot` on tiles of at least 16.
# - FlashAttention's forward is the online softmax with its state in registers: $m_i$, $\ell_i$ and acc in float32, both $\ell_i$ and acc rescaled by $e^{m_i - m_\text{new}}$, one division at the end, and the logsumexp saved for the backward (in natural log, whatever base the kernel computes in).
# - Causal attention skips the tiles past the diagonal (about half the work) and masks inside the diagonal tiles; the course's bottom-right alignment puts query $i$ at $L_k - L_q + i$.
# - Ragged tiles need masked loads **and** $-\infty$ scores for the padded keys.
# - The backward recomputes $P$ from the logsumexp, needs $D = \operatorname{rowsum}(dO \odot O)$, and splits into a key-tile kernel ($dK$, $dV$) and a query-tile kernel ($dQ$) so no program writes another's memory.
#
# ## Further reading
#
# - Dao et al. (2022), *FlashAttention*; Dao (2023), *FlashAttention-2* (the loop order and the work split used here); Shah et al. (2024), *FlashAttention-3* (Hopper: asynchrony and FP8).
# - Triton's tutorial *06-fused-attention* (`python/tutorials/06-fused-attention.py`): the production-style kernel this notebook follows, with pipelining stages, `tl.make_block_ptr` / tensor descriptors, and the atomic-free backward.
# - Tillet, Kung, Cox (2019), *Triton: an intermediate language and compiler for tiled neural network computations*.
# - Milakov and Gimelshein (2018), *Online normalizer calculation for softmax*.
# - Read next: `course/reference/flash_triton.py` (the library version, with an unmasked fast path for whole tiles and autotuned tile sizes), and PyTorch's FlexAttention, which generates kernels like yours from a Python `score_mod`.
