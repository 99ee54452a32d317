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
# # Day 9 · Selective scans: the recurrence inside Mamba
#
# [Open in Colab](https://colab.research.google.com/github/attention-from-scratch/attention-from-scratch/blob/main/exercises/day09-mamba-scan/day09-mamba-scan.ipynb)
#
# **What you will build.**
#
# 1. The linear recurrence $h_t = a_t h_{t-1} + b_t$ four ways: a loop over time (`linear_recurrence_sequential`), an associative scan in $O(\log L)$ vectorised steps (`linear_recurrence_parallel`), a chunked scan (`linear_recurrence_chunked`), and a Triton kernel built on `tl.associative_scan` (`linear_recurrence_triton`);
# 2. `discretize_zoh(delta, A, B)`: turning a continuous state-space model into a recurrence with the zero-order hold;
# 3. `selective_scan(u, delta, A, B, C, D, z, delta_bias, delta_softplus)`: the scan of the Mamba paper's reference code, in its layout;
# 4. `MambaBlock(d_model, d_state=16, d_conv=4, expand=2)`: in-projection, causal depthwise convolution, input-dependent $\Delta$, $B$, $C$, the scan, the gate and the out-projection.
#
# Then you explore what a selective scan remembers (and the "attention matrix" it implies, next to softmax attention's), and measure the scans against the loop.
#
# **Prerequisites.** Day 1 (attention as a weighted sum over the past), day 2 (causality). Broadcasting, `torch.exp`, slicing along the last axis, `nn.Module`. Exercise 4 is a Triton kernel: it assumes day 7 (`tl.program_id`, `tl.arange`, `tl.load` and `tl.store` with `mask=` and `other=`, `tl.constexpr` block sizes, launching a grid); on a CPU it runs through Triton's interpreter.
# **Time.** About 3 to 4 hours.
#
# **How this notebook works.** Replace each `raise NotImplementedError()` with your code and run the check cell below it: ✓ or ✗ per check, and for a ✗ the name of the mistake and a hint. Grading reruns the same checks, and hidden ones draw new random sizes.
#
# **Not allowed inside your functions:** the course's own `course.reference.mamba_scan` (the library version, for later days). Everything else in torch is fine, including `torch.cumprod` and `F.softplus`.

# %% nbgrader={"grade": false, "grade_id": "setup", "locked": true, "schema_version": 3, "solution": false, "task": false}
import math
import time

import matplotlib.pyplot as plt
import torch
import torch.nn as nn
import torch.nn.functional as F

import course  # first: without a GPU it puts Triton in interpreter mode (TRITON_INTERPRET=1)
import triton
import triton.language as tl

from course.bench import median_time
from course.explore.mamba_scan import ScanExplorer
from grader import check, watch_every_launch

device = course.get_device()
course.seed_everything(0)
print(course.describe_device())
# In the interpreter, a load or store outside the tensors would write over Python's own memory
# and kill the kernel: watched, every launch of the notebook raises an error that names it instead.
watch_every_launch()


# %% [markdown]
# ## 1. A recurrence with a state
#
# Attention looks back at every past token: $O(L)$ work per token and a cache that grows. A recurrence keeps a fixed-size **state** $h$ and updates it once per token:
#
# $$h_t = a_t\, h_{t-1} + b_t, \qquad h_{-1} = 0, \qquad t = 0, \ldots, L-1.$$
#
# $a_t$ says how much of the old state survives step $t$ (a decay, or a gate), $b_t$ what step $t$ writes. Unrolled,
#
# $$h_t = \sum_{s \le t} \Big(\prod_{s < r \le t} a_r\Big)\, b_s,$$
#
# so input $s$ reaches output $t$ through the product of the decays in between. (Do not compute it as `cumprod(a) * cumsum(b / cumprod(a))`: that divides by the running product, which is exactly 0 after any $a_t = 0$ and underflows to 0 on a long row of decays below 1, giving NaN. The checks try both.) Everything today works on the **last axis** (time) and treats every leading index (batch, channel, state) as an independent sequence, each starting from $h_{-1} = 0$.
#
# A worked example you can check by hand, $a = (0.5, 0.5, 2)$, $b = (1, 2, 3)$:
#
# $h_0 = 1$, $\quad h_1 = 0.5 \cdot 1 + 2 = 2.5$, $\quad h_2 = 2 \cdot 2.5 + 3 = 8$.

# %% nbgrader={"grade": false, "grade_id": "linear_recurrence_sequential", "locked": false, "schema_version": 3, "solution": true, "task": false}
def linear_recurrence_sequential(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """h_t = a_t * h_{t-1} + b_t along the last axis, h_{-1} = 0, by a loop over time.

    a, b: tensors of the same shape (..., L), float32 or float64; every leading index is its own
    sequence (its state starts at 0). Returns h: (..., L), same dtype.
    Bad input: a and b of different shapes, or 0-d tensors -> ValueError naming the shapes.
    """
    ### BEGIN SOLUTION
    if a.shape != b.shape or a.ndim == 0:
        raise ValueError(f"a and b must have the same shape (..., L), got {tuple(a.shape)} and {tuple(b.shape)}")
    h = torch.empty_like(b)
    state = torch.zeros_like(b[..., 0])  # one state per leading index
    for t in range(b.shape[-1]):
        state = a[..., t] * state + b[..., t]
        h[..., t] = state
    return h
    ### END SOLUTION


# %%
print(linear_recurrence_sequential(torch.tensor([0.5, 0.5, 2.0]), torch.tensor([1.0, 2.0, 3.0])))  # 1, 2.5, 8

# %% [markdown]
# **Mistakes the checks recognise:**
#
# - h shifted by one (an exclusive scan: 0 first, or h_{t+1} at t)
# - `h_t = a_t * (h_{t-1} + b_t)`: the input decayed with the old state
# - the recurrence run backwards in time; the last step never computed (a loop over `range(L - 1)`)
# - a closed form that divides by the running product of $a$ (NaN after an $a_t = 0$ or on a long row)
# - time indexed as dim 1 (`a[:, t]`), which fails for a 1-D or 3-D input
# - the state carried from one batch row into the next (it must restart at 0 for each row)
# - the scan run along the first axis instead of the last; each step decayed by the previous step's $a_{t-1}$; a state started at 1; $a$ and $b$ swapped
# - an input changed in place (the caller still needs `a` and `b`)
# - mismatched shapes or 0-d tensors accepted without a ValueError

# %% nbgrader={"grade": true, "grade_id": "check_linear_recurrence_sequential", "locked": true, "points": 2, "schema_version": 3, "solution": false, "task": false}
check("day09-mamba-scan", "linear_recurrence_sequential", linear_recurrence_sequential, points=2)

# %% nbgrader={"grade": true, "grade_id": "hidden_linear_recurrence_sequential", "locked": true, "points": 1, "schema_version": 3, "solution": false, "task": false}
# When your notebook is graded, hidden tests run here: the same checks on fresh random shapes.
### BEGIN HIDDEN TESTS
check("day09-mamba-scan", "linear_recurrence_sequential", linear_recurrence_sequential, hidden=True, points=1)
### END HIDDEN TESTS

# %% [markdown]
# ## 2. The scan: a recurrence in $O(\log L)$ steps
#
# The loop takes $L$ dependent steps. To do them in parallel, look at one step as a map $h \mapsto a h + b$, written as the pair $(a, b)$. Doing $(a_1, b_1)$ **first** and then $(a_2, b_2)$ gives
#
# $$h \mapsto a_2 (a_1 h + b_1) + b_2 = (a_1 a_2)\, h + (a_2 b_1 + b_2),$$
#
# so the **combine** operator is
#
# $$(a_1, b_1) \bullet (a_2, b_2) = (a_1 a_2,\; a_2 b_1 + b_2).$$
#
# It is **associative** (composing maps is), so any bracketing gives the same result, and $h_t$ is the $b$ of $e_0 \bullet e_1 \bullet \cdots \bullet e_t$ (applied to $h_{-1} = 0$). It is **not commutative**: $(a_2, b_2) \bullet (a_1, b_1) = (a_1 a_2,\; a_1 b_2 + b_1)$, another map. The earlier block must always be the left operand.
#
# **Hillis–Steele** computes all prefixes in $\lceil \log_2 L \rceil$ steps. After the step with offset $d = 1, 2, 4, \ldots$, element $t$ holds the combine of the $2d$ elements ending at $t$ (or of all of them, if fewer): each step, every $t \ge d$ absorbs element $t - d$ **as its left operand**:
#
# $$(A_t, H_t) \leftarrow (A_{t-d}, H_{t-d}) \bullet (A_t, H_t) = (A_{t-d} A_t,\; A_t H_{t-d} + H_t).$$
#
# Elements $t < d$ are already complete. It does $O(L \log L)$ work instead of $O(L)$, but every step is one vectorised operation: on a CPU with Python's per-step overhead, and on a GPU with thousands of lanes, that wins. (**Blelloch**'s scan does $O(L)$ work in $2 \log_2 L$ steps, but it is *exclusive*: it returns $h_{t-1}$ at position $t$; the inclusive result is $a_t \cdot \text{excl}_t + b_t$, and forgetting that shift is a classic off-by-one.)
#
# With $a = (0.5, 0.5, 2)$, $b = (1, 2, 3)$: step $d = 1$ gives $H = (1,\; 0.5\cdot1 + 2,\; 2\cdot2 + 3) = (1, 2.5, 7)$, $A = (0.5, 0.25, 1)$; step $d = 2$ gives $H_2 = A_2 H_0 + H_2 = 1 \cdot 1 + 7 = 8$. ✓

# %% nbgrader={"grade": false, "grade_id": "linear_recurrence_parallel", "locked": false, "schema_version": 3, "solution": true, "task": false}
def linear_recurrence_parallel(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """h_t = a_t * h_{t-1} + b_t along the last axis by an associative scan in O(log L) steps.

    a, b: same shape (..., L), float32 or float64 (a may be negative). Returns h: (..., L).
    Use ceil(log2 L) vectorised steps (Hillis-Steele or Blelloch): no Python loop over time
    (a check counts the Python lines you run at L = 64 and L = 2048).
    Bad input: shapes that differ, or 0-d tensors -> ValueError.
    """
    ### BEGIN SOLUTION
    if a.shape != b.shape or a.ndim == 0:
        raise ValueError(f"a and b must have the same shape (..., L), got {tuple(a.shape)} and {tuple(b.shape)}")
    A, H = a, b
    step = 1
    while step < b.shape[-1]:
        # element t absorbs element t - step (its left, earlier operand); the first `step`
        # elements absorb the identity (1, 0)
        A_left = F.pad(A[..., :-step], (step, 0), value=1.0)
        H_left = F.pad(H[..., :-step], (step, 0), value=0.0)
        A, H = A_left * A, A * H_left + H
        step *= 2
    return H
    ### END SOLUTION


# %% [markdown]
# **Mistakes the checks recognise:**
#
# - the combine applied in the wrong order (`a_left * H + H_left`): a different map, since the operator is not commutative
# - an exclusive scan (shifted by one), or an exclusive scan turned inclusive as `excl + b` instead of `a * excl + b`
# - a Python loop over time: the Python work must not grow with L
# - $\lfloor \log_2 L \rfloor$ doubling steps (one too few when $L$ is not a power of two), or offsets $1, 2, 3, \ldots$ that do not double; the decays `A` never composed, or updated before `H` reads them
# - the shift made with `torch.roll` (the end of the row wraps around to its start instead of the identity)
# - the state carried across batch rows; an input changed in place; mismatched shapes accepted

# %% nbgrader={"grade": true, "grade_id": "check_linear_recurrence_parallel", "locked": true, "points": 2, "schema_version": 3, "solution": false, "task": false}
check("day09-mamba-scan", "linear_recurrence_parallel", linear_recurrence_parallel, points=2)

# %% nbgrader={"grade": true, "grade_id": "hidden_linear_recurrence_parallel", "locked": true, "points": 1, "schema_version": 3, "solution": false, "task": false}
# When your notebook is graded, hidden tests run here: the same checks on fresh random shapes.
### BEGIN HIDDEN TESTS
check("day09-mamba-scan", "linear_recurrence_parallel", linear_recurrence_parallel, hidden=True, points=1)
### END HIDDEN TESTS

# %% [markdown]
# ## 3. Chunks: a scan of scans
#
# Real kernels (Mamba's, Mamba-2's SSD) cut the sequence into chunks of $C$ steps. Inside each chunk, scan from zero: $\ell_t$ (the local state) and $P_t = \prod_{\text{chunk start} \le r \le t} a_r$ (the decay since the chunk began). The state entering chunk $c$ is $H_{c-1}$, the true state at the end of the previous chunk, and
#
# $$h_t = \ell_t + P_t \, H_{c-1}.$$
#
# $P_t$ includes $a_t$ itself (`torch.cumprod` within the chunk), and $H_{c-1}$ is the true end state, $h$ at the chunk's last step, not the local $\ell^{\text{end}}$ (which started from zero).
#
# The chunk ends obey a recurrence of their own, $H_c = P^{\text{end}}_c H_{c-1} + \ell^{\text{end}}_c$: only $L / C$ steps, which you can loop over or scan again. When $L$ is not a multiple of $C$, pad with the identity $(a, b) = (1, 0)$ and crop.

# %% nbgrader={"grade": false, "grade_id": "linear_recurrence_chunked", "locked": false, "schema_version": 3, "solution": true, "task": false}
def linear_recurrence_chunked(a: torch.Tensor, b: torch.Tensor, chunk_size: int = 64) -> torch.Tensor:
    """h_t = a_t * h_{t-1} + b_t along the last axis, chunk by chunk: a scan inside every chunk,
    then the chunks' end states carried forward (h_t = local_t + P_t * H_entering).

    a, b: same shape (..., L), float32 or float64. chunk_size: int >= 1 (L need not be a
    multiple; a chunk_size > L is one chunk). Returns h: (..., L).
    Bad input: mismatched shapes, chunk_size < 1 -> ValueError.
    """
    ### BEGIN SOLUTION
    if a.shape != b.shape or a.ndim == 0:
        raise ValueError(f"a and b must have the same shape (..., L), got {tuple(a.shape)} and {tuple(b.shape)}")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    L = b.shape[-1]
    n = -(-L // chunk_size)
    pad = n * chunk_size - L
    a_c = F.pad(a, (0, pad), value=1.0).unflatten(-1, (n, chunk_size))  # (..., n, C)
    b_c = F.pad(b, (0, pad), value=0.0).unflatten(-1, (n, chunk_size))
    local = linear_recurrence_parallel(a_c, b_c)       # each chunk from zero
    decay = torch.cumprod(a_c, dim=-1)                 # P_t inside each chunk
    ends = linear_recurrence_parallel(decay[..., -1], local[..., -1])   # H_c, over chunks
    entering = F.pad(ends[..., :-1], (1, 0))           # H_{c-1}, 0 for the first chunk
    h = local + decay * entering.unsqueeze(-1)
    return h.flatten(-2)[..., :L]
    ### END SOLUTION


# %% [markdown]
# **Mistakes the checks recognise:**
#
# - each chunk scanned from zero (no carry), or the carry added without the decay P_t, or with a P_t that leaves out $a_t$
# - the state entering the next chunk taken from the local scan $\ell^{\text{end}}$ instead of the true end state, or with the carry added twice
# - each chunk corrected by its own end state instead of the one entering it (the ends not shifted by a chunk); the ends summed without their decays, or decayed by $P_0$ instead of $P^{\text{end}}$; $P$ from one cumprod over the whole row
# - the chunks cut as `(chunk_size, n)` and transposed, or the padding put at the front
# - the last, shorter chunk dropped when L is not a multiple of chunk_size
# - the general recurrence mistakes above; chunk_size < 1 accepted without a ValueError

# %% nbgrader={"grade": true, "grade_id": "check_linear_recurrence_chunked", "locked": true, "points": 2, "schema_version": 3, "solution": false, "task": false}
check("day09-mamba-scan", "linear_recurrence_chunked", linear_recurrence_chunked, points=2)

# %% nbgrader={"grade": true, "grade_id": "hidden_linear_recurrence_chunked", "locked": true, "points": 1, "schema_version": 3, "solution": false, "task": false}
# When your notebook is graded, hidden tests run here: the same checks on fresh random shapes.
### BEGIN HIDDEN TESTS
check("day09-mamba-scan", "linear_recurrence_chunked", linear_recurrence_chunked, hidden=True, points=1)
### END HIDDEN TESTS

# %% [markdown]
# ## 4. The scan in Triton: `tl.associative_scan`
#
# Triton has the scan built in: `tl.associative_scan(values, axis, combine_fn)` scans a block with any associative `combine_fn` you write as a `@triton.jit` function. For a tuple of tensors `(a, b)`, `combine_fn` receives the left (earlier) operand's fields, then the right's: `combine(a_left, b_left, a_right, b_right)` and returns the combined tuple. The scan returns the scanned tuple in the order you passed it: here the running products of $a$, then $h$ (`_, h = tl.associative_scan((a, b), 0, scan_combine)`). One program per row, the whole row in one block of `BLOCK = triton.next_power_of_2(L)` lanes; lanes past $L$ load the identity $(1, 0)$ (`mask=`, `other=`), and the store is masked too (`mask=offsets < L`): an unmasked store writes past the end of the row.
#
# The rows go to the kernel as one contiguous `(rows, L)` tensor, since the kernel finds entry $t$ of row $r$ at `r * L + t`. `reshape` keeps a view's strides when it can (`a[:, ::2]` stays strided), so call `.contiguous()` after it.
#
# On a CPU, Triton runs through its interpreter (the setup cell imported `course` first, which sets `TRITON_INTERPRET=1`): it is slow and float32 only, so the checks use short float32 rows. The interpreter of Triton 3.x supports `tl.associative_scan` with a tuple and a custom combine function, so the same code runs on a GPU. One difference matters here: the interpreter scans left to right, one element at a time, while a GPU combines whole blocks in a tree, so only an associative `scan_combine` gives the same answer on both. The checks scan in a tree, as a GPU does. A load or store outside the tensors, which would crash the interpreter, raises an error that names it (the setup cell turned this watch on).

# %% nbgrader={"grade": false, "grade_id": "linear_recurrence_triton", "locked": false, "schema_version": 3, "solution": true, "task": false}
@triton.jit
def scan_combine(a_left, b_left, a_right, b_right):
    """(a_left, b_left) is the earlier block: apply it first, then (a_right, b_right)."""
    ### BEGIN SOLUTION
    return a_left * a_right, a_right * b_left + b_right
    ### END SOLUTION


@triton.jit
def scan_rows_kernel(a_ptr, b_ptr, h_ptr, L, BLOCK: tl.constexpr):
    """One program per row of the contiguous (rows, L) inputs: load, tl.associative_scan, store."""
    ### BEGIN SOLUTION
    row = tl.program_id(0)
    offsets = tl.arange(0, BLOCK)
    inside = offsets < L
    a = tl.load(a_ptr + row * L + offsets, mask=inside, other=1.0)
    b = tl.load(b_ptr + row * L + offsets, mask=inside, other=0.0)
    _, h = tl.associative_scan((a, b), 0, scan_combine)
    tl.store(h_ptr + row * L + offsets, h, mask=inside)
    ### END SOLUTION


def linear_recurrence_triton(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """h_t = a_t * h_{t-1} + b_t along the last axis with a Triton kernel and tl.associative_scan.

    a, b: same shape (..., L), float32 (the CPU interpreter is float32 only). Flatten the leading
    dims into rows, launch one program per row, reshape back. Returns h: (..., L), float32.
    Bad input: mismatched shapes -> ValueError.
    """
    ### BEGIN SOLUTION
    if a.shape != b.shape or a.ndim == 0:
        raise ValueError(f"a and b must have the same shape (..., L), got {tuple(a.shape)} and {tuple(b.shape)}")
    L = b.shape[-1]
    a_rows = a.reshape(-1, L).contiguous()
    b_rows = b.reshape(-1, L).contiguous()
    h = torch.empty_like(b_rows)
    scan_rows_kernel[(a_rows.shape[0],)](a_rows, b_rows, h, L, BLOCK=triton.next_power_of_2(L))
    return h.reshape(b.shape)
    ### END SOLUTION


# %% [markdown]
# **Mistakes the checks recognise:**
#
# - `scan_combine` with its operands swapped (the later block applied first), its first field not `a_left * a_right`, or the earlier block's `b` decayed by its own `a`
# - the scan's first field (the products of $a$) stored instead of $h$
# - a load or store outside the tensors (an unmasked store)
# - rows stepped at `row * BLOCK` (the padded block) instead of `row * L`; a grid of fewer or more programs than rows (`a.shape[0]` instead of `rows`)
# - a block size that is not a power of two; `tl.associative_scan` along an axis other than 0
# - strided inputs read as if they were contiguous (no `.contiguous()`)
# - the recurrence mistakes above; mismatched shapes accepted

# %% nbgrader={"grade": true, "grade_id": "check_linear_recurrence_triton", "locked": true, "points": 2, "schema_version": 3, "solution": false, "task": false}
check("day09-mamba-scan", "linear_recurrence_triton", linear_recurrence_triton, points=2)

# %% nbgrader={"grade": true, "grade_id": "hidden_linear_recurrence_triton", "locked": true, "points": 1, "schema_version": 3, "solution": false, "task": false}
# When your notebook is graded, hidden tests run here: the same checks on fresh random shapes.
### BEGIN HIDDEN TESTS
check("day09-mamba-scan", "linear_recurrence_triton", linear_recurrence_triton, hidden=True, points=1)
### END HIDDEN TESTS

# %% [markdown]
# ## 5. From a continuous system to a recurrence: the zero-order hold
#
# A state-space model is continuous: $h'(\tau) = A\, h(\tau) + B\, u(\tau)$, $y = C h$. To run it on tokens, hold the input constant over a step of length $\Delta$ (the **zero-order hold**) and solve exactly. For a diagonal $A$ (one number per state coordinate) the solution over one step is
#
# $$h_t = \underbrace{e^{\Delta A}}_{\bar A}\, h_{t-1} + \underbrace{\frac{e^{\Delta A} - 1}{A}\, B}_{\bar B}\, u_t .$$
#
# For $A < 0$, $\bar A = e^{\Delta A} \in (0, 1)$: a decay. A large $\Delta$ forgets the old state and writes the new input strongly; a small $\Delta$ keeps the state and ignores the input. Euler's method would give $\bar A = 1 + \Delta A$, which is wrong for large steps (and negative, an oscillating state, once $\Delta |A| > 1$). As $A \to 0$, $\bar B \to \Delta B$; and for small $\Delta A$, $\frac{e^{\Delta A} - 1}{A} \approx \Delta$, which is **Mamba's simplification** $\bar B \approx \Delta B$, used by the reference selective scan.
#
# Layout (as in Mamba's code): `delta: (batch, dim, L)`, `A: (dim, state)`, `B: (batch, state, L)`, and $\bar A, \bar B$ of shape `(batch, dim, L, state)`. Example: $\Delta = 1$, $A = -\ln 2$, $B = 1$ gives $\bar A = 0.5$ and $\bar B = (0.5 - 1) / (-\ln 2) = 0.7213$.

# %% nbgrader={"grade": false, "grade_id": "discretize_zoh", "locked": false, "schema_version": 3, "solution": true, "task": false}
def discretize_zoh(delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor):
    """Exact zero-order hold for a diagonal A.

    delta: (batch, dim, L) step sizes > 0; A: (dim, state); B: (batch, state, L); one dtype.
    Returns (A_bar, B_bar), both (batch, dim, L, state):
        A_bar = exp(delta * A),  B_bar = (exp(delta * A) - 1) / A * B
    Edge case: where A == 0, B_bar = delta * B (the limit), never NaN.
    Tiny steps (delta * A ~ 1e-6) must keep the input dtype's precision, in float32 too:
    exp(delta * A) - 1 as written cancels there; torch.expm1(delta * A) does not.
    Bad input (wrong layouts, sizes that do not agree) -> ValueError naming the shapes.
    """
    ### BEGIN SOLUTION
    if delta.ndim != 3 or A.ndim != 2 or B.ndim != 3:
        raise ValueError(f"expected delta (batch, dim, L), A (dim, state), B (batch, state, L), got "
                         f"{tuple(delta.shape)}, {tuple(A.shape)}, {tuple(B.shape)}")
    batch, dim, L = delta.shape
    if tuple(A.shape) != (dim, A.shape[1]) or tuple(B.shape) != (batch, A.shape[1], L):
        raise ValueError(f"shapes do not agree: delta {tuple(delta.shape)} is (batch, dim, L), so A must be "
                         f"({dim}, state) and B ({batch}, state, {L}); got A {tuple(A.shape)}, B {tuple(B.shape)}")
    dA = delta[..., None] * A[:, None, :]                  # (batch, dim, L, state)
    A_bar = torch.exp(dA)
    zero = (A == 0)[:, None, :]
    gain = torch.where(zero, delta[..., None], torch.expm1(dA) / torch.where(zero, 1.0, A[:, None, :]))
    B_bar = gain * B.transpose(1, 2)[:, None, :, :]       # B: (batch, 1, L, state)
    return A_bar, B_bar
    ### END SOLUTION


# %%
A_bar, B_bar = discretize_zoh(torch.ones(1, 1, 1), torch.tensor([[-math.log(2)]]), torch.ones(1, 1, 1))
print(A_bar.item(), B_bar.item())  # 0.5, 0.7213

# Mamba's simplification B_bar ~ delta*B, and Euler's A_bar = 1 + delta*A, against the exact hold (A = -1, B = 1)
for step in (0.01, 0.1, 1.0, 3.0):
    A_bar, B_bar = discretize_zoh(torch.full((1, 1, 1), step), torch.tensor([[-1.0]]), torch.ones(1, 1, 1))
    print(f"delta = {step:4}: B_bar = {B_bar.item():.4f} (delta*B = {step:.4f}),  "
          f"A_bar = {A_bar.item():.4f} (Euler: {1 - step:+.4f})")

# %% [markdown]
# **Mistakes the checks recognise:**
#
# - Euler for A (`1 + delta*A`) instead of `exp(delta*A)`
# - `delta*B` (Mamba's simplification) where the exact hold is asked, `(exp(delta*A) - 1) * B` without `/ A`, or `exp(delta*A) / A * B` without the `- 1`
# - `torch.exp(dA) - 1` instead of `torch.expm1(dA)` (wrong in float32 for tiny steps); `A_bar = exp(A)` without `delta`
# - NaN where A = 0, or `B` or 0 there instead of the limit `delta * B`; an extra factor `delta` on top of the exact hold
# - `B` reshaped to (batch, L, state) instead of transposed
# - the pair returned as `(B_bar, A_bar)`; `A` changed in place (to avoid the division by 0)
# - wrong layouts accepted without a ValueError
# - `B` (batch, state, L) used without moving L next to `delta`'s L (a broadcast of L against state), or `A` broadcast with its dim against L

# %% nbgrader={"grade": true, "grade_id": "check_discretize_zoh", "locked": true, "points": 2, "schema_version": 3, "solution": false, "task": false}
check("day09-mamba-scan", "discretize_zoh", discretize_zoh, points=2)

# %% nbgrader={"grade": true, "grade_id": "hidden_discretize_zoh", "locked": true, "points": 1, "schema_version": 3, "solution": false, "task": false}
# When your notebook is graded, hidden tests run here: the same checks on fresh random shapes.
### BEGIN HIDDEN TESTS
check("day09-mamba-scan", "discretize_zoh", discretize_zoh, hidden=True, points=1)
### END HIDDEN TESTS

# %% [markdown]
# ## 6. The selective scan
#
# Mamba makes the system **selective**: $\Delta$, $B$ and $C$ are computed from the input at each step, so the model decides per token how much to write and what to read. Per channel $d$ and state coordinate $n$ (the layout of `selective_scan_ref` in `mamba_ssm`):
#
# $$\Delta \leftarrow \operatorname{softplus}(\Delta + \text{delta\_bias}) \text{ (bias, then softplus if asked)}, \qquad x_t = e^{\Delta_t A}\, x_{t-1} + \Delta_t B_t\, u_t, \qquad y_t = \sum_n C_t[n]\, x_t[n],$$
#
# $$\text{out} = (y + D \odot u) \odot \operatorname{silu}(z).$$
#
# Shapes: `u, delta, z: (batch, dim, L)`, `A: (dim, state)`, `B, C: (batch, state, L)`, `D, delta_bias: (dim,)`; result `(batch, dim, L)`. $D$ is a skip connection around the scan; $z$ is the gate. Every (batch, dim, state) triple is one of the recurrences of sections 1 to 4 along $L$: you may use your `linear_recurrence_parallel` (move time to the last axis) or a loop.

# %% nbgrader={"grade": false, "grade_id": "selective_scan", "locked": false, "schema_version": 3, "solution": true, "task": false}
def selective_scan(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False):
    """The selective scan of mamba_ssm's selective_scan_ref.

    u, delta: (batch, dim, L); A: (dim, state); B, C: (batch, state, L);
    D, delta_bias: (dim,) or None; z: (batch, dim, L) or None; one float dtype.
        delta <- delta + delta_bias[:, None] (if given), then softplus(delta) if delta_softplus
        x_t = exp(delta_t * A) * x_{t-1} + delta_t * B_t * u_t      (x: (dim, state), x_{-1} = 0)
        y_t = sum_n C_t[n] x_t[n];  out = y + D * u;  out = out * silu(z)
    Every batch row starts from a zero state. Returns (batch, dim, L).
    Bad input (wrong layouts, lengths that differ) -> ValueError naming the shapes.
    """
    ### BEGIN SOLUTION
    if u.ndim != 3 or delta.shape != u.shape:
        raise ValueError(f"u and delta must both be (batch, dim, L), got {tuple(u.shape)} and {tuple(delta.shape)}")
    batch, dim, L = u.shape
    if A.ndim != 2 or A.shape[0] != dim:
        raise ValueError(f"A must be (dim, state) with dim = {dim}, got {tuple(A.shape)}")
    for name, t in (("B", B), ("C", C)):
        if tuple(t.shape) != (batch, A.shape[1], L):
            raise ValueError(f"{name} must be (batch, state, L) = {(batch, A.shape[1], L)}, got {tuple(t.shape)}")
    # float16/bfloat16 inputs with float32 weights (mamba_ssm's mixed precision): compute in
    # float32 at least, since 16-bit sums lose digits over a long scan; return u's dtype
    u_dtype, dtype = u.dtype, torch.promote_types(torch.promote_types(u.dtype, A.dtype), torch.float32)
    u, delta, A, B, C = (t.to(dtype) for t in (u, delta, A, B, C))
    if delta_bias is not None:
        delta = delta + delta_bias[:, None]
    if delta_softplus:
        delta = F.softplus(delta)
    A_bar = torch.exp(delta[..., None] * A[:, None, :])                  # (batch, dim, L, state)
    Bu = (delta * u)[..., None] * B.transpose(1, 2)[:, None]            # (batch, dim, L, state)
    x = linear_recurrence_parallel(A_bar.transpose(-1, -2), Bu.transpose(-1, -2))  # (batch, dim, state, L)
    y = torch.einsum("bdnl,bnl->bdl", x, C)
    if D is not None:
        y = y + D[:, None] * u
    if z is not None:
        y = y * F.silu(z)
    return y.to(u_dtype)
    ### END SOLUTION


# %% [markdown]
# **Mistakes the checks recognise:**
#
# - softplus applied twice, not at all when `delta_softplus=True`, or when it is False; the bias added after the softplus, or ignored
# - the `D * u` skip term missing, or added after the gate
# - the gate as `z` or `sigmoid(z)` instead of `silu(z)`, or ignored
# - Euler for A (`1 + delta*A`), or the exact ZOH $\bar B$ where the reference uses `delta*B`
# - $y_t$ read out before step $t$'s update; `B` and `C` swapped; `u` or `delta` left out of the input term
# - the state carried from one batch row into the next; wrong layouts accepted; an input changed in place (`delta += ...`)
# - `B` or `C` given their new axis in the wrong place (`C[:, :, None, :]`: state against dim)
# - a per-channel vector (`delta_bias`, `D`) added along L instead of along dim (`[:, None]` missing); `if D:` on a tensor

# %% nbgrader={"grade": true, "grade_id": "check_selective_scan", "locked": true, "points": 2, "schema_version": 3, "solution": false, "task": false}
check("day09-mamba-scan", "selective_scan", selective_scan, points=2)

# %% nbgrader={"grade": true, "grade_id": "hidden_selective_scan", "locked": true, "points": 1, "schema_version": 3, "solution": false, "task": false}
# When your notebook is graded, hidden tests run here: the same checks on fresh random shapes.
### BEGIN HIDDEN TESTS
check("day09-mamba-scan", "selective_scan", selective_scan, hidden=True, points=1)
### END HIDDEN TESTS

# %% [markdown]
# ## 7. The Mamba block
#
# A Mamba block wraps the scan (parameter names as in `mamba_ssm.Mamba`; $d_\text{inner} = \text{expand} \cdot d_\text{model}$, $r = \lceil d_\text{model} / 16 \rceil$):
#
# 1. `in_proj` (no bias): $x \in \mathbb{R}^{B \times L \times d_\text{model}} \to (u, z)$, each $d_\text{inner}$ channels, $u$ the first half and the gate $z$ the second;
# 2. `conv1d`: a **causal depthwise** convolution over time (kernel `d_conv`, `groups=d_inner`, `padding=d_conv-1`, keep the *first* $L$ outputs), then SiLU;
# 3. `x_proj` (no bias): $u_t \to (\delta_t \in \mathbb{R}^r, B_t, C_t \in \mathbb{R}^{N})$: the input-dependent parts; `dt_proj`: $\delta_t \to \Delta_t \in \mathbb{R}^{d_\text{inner}}$ by its weight only (`F.linear(dt, self.dt_proj.weight)`, not `self.dt_proj(dt)`): its bias is passed as `delta_bias` with `delta_softplus=True`, so the scan adds it once;
# 4. $A = -\exp(\texttt{A\_log})$ (negative, so the state decays), `A_log` initialised to $\log(1, \ldots, N)$ per channel, `D` to ones; use the parameters as they are, without `mamba_ssm`'s `.float()` casts (`-torch.exp(self.A_log.float())`): the checks run the block in float64, and a cast would compute part of it in float32;
# 5. `selective_scan(u, Δ, A, B, C, D, z, delta_bias, delta_softplus=True)`, then `out_proj` (no bias) back to $d_\text{model}$.

# %% nbgrader={"grade": false, "grade_id": "MambaBlock", "locked": false, "schema_version": 3, "solution": true, "task": false}
class MambaBlock(nn.Module):
    """A Mamba block. forward(x: (batch, L, d_model)) -> (batch, L, d_model), causal.

    Parameters (names and shapes of mamba_ssm's Mamba; d_inner = expand * d_model,
    dt_rank = ceil(d_model / 16)):
      in_proj  nn.Linear(d_model, 2 * d_inner, bias=False)
      conv1d   nn.Conv1d(d_inner, d_inner, d_conv, groups=d_inner, padding=d_conv - 1)  (with bias)
      x_proj   nn.Linear(d_inner, dt_rank + 2 * d_state, bias=False)
      dt_proj  nn.Linear(dt_rank, d_inner)  (its bias is the scan's delta_bias)
      A_log    nn.Parameter (d_inner, d_state), log(1..d_state) in every row;  A = -exp(A_log)
      D        nn.Parameter (d_inner,), ones
      out_proj nn.Linear(d_inner, d_model, bias=False)
    Bad input: x that is not (batch, L, d_model) -> ValueError.
    """

    def __init__(self, d_model: int, d_state: int = 16, d_conv: int = 4, expand: int = 2):
        super().__init__()
        ### BEGIN SOLUTION
        self.d_model, self.d_state = d_model, d_state
        d_inner, self.dt_rank = expand * d_model, math.ceil(d_model / 16)
        self.in_proj = nn.Linear(d_model, 2 * d_inner, bias=False)
        self.conv1d = nn.Conv1d(d_inner, d_inner, d_conv, groups=d_inner, padding=d_conv - 1)
        self.x_proj = nn.Linear(d_inner, self.dt_rank + 2 * d_state, bias=False)
        self.dt_proj = nn.Linear(self.dt_rank, d_inner)
        self.A_log = nn.Parameter(torch.log(torch.arange(1, d_state + 1, dtype=torch.float32)).repeat(d_inner, 1))
        self.D = nn.Parameter(torch.ones(d_inner))
        self.out_proj = nn.Linear(d_inner, d_model, bias=False)
        ### END SOLUTION

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ### BEGIN SOLUTION
        if x.ndim != 3 or x.shape[-1] != self.d_model:
            raise ValueError(f"x must be (batch, L, {self.d_model}), got {tuple(x.shape)}")
        L = x.shape[1]
        u, z = self.in_proj(x).transpose(1, 2).chunk(2, dim=1)       # (batch, d_inner, L) each
        u = F.silu(self.conv1d(u)[..., :L])                          # causal: the first L outputs
        dt, B, C = self.x_proj(u.transpose(1, 2)).split([self.dt_rank, self.d_state, self.d_state], dim=-1)
        delta = F.linear(dt, self.dt_proj.weight).transpose(1, 2)    # bias goes in as delta_bias
        y = selective_scan(u, delta, -torch.exp(self.A_log), B.transpose(1, 2), C.transpose(1, 2),
                           D=self.D, z=z, delta_bias=self.dt_proj.bias, delta_softplus=True)
        return self.out_proj(y.transpose(1, 2))
        ### END SOLUTION


# %% [markdown]
# **Mistakes the checks recognise:**
#
# - parameters with other names or shapes than `mamba_ssm.Mamba`'s
# - a convolution that looks ahead (the last L outputs kept instead of the first L), or no SiLU after it
# - A = exp(A_log) (positive: a state that blows up) instead of -exp(A_log)
# - no softplus on Δ, no gate, no D; an output that depends on later inputs; a wrong feature size accepted
# - `u` and `z` swapped; `x_proj`'s output split in another order than $(\delta, B, C)$; `dt_proj`'s bias added twice (by `self.dt_proj(dt)` and again as `delta_bias`)
# - a fresh block not initialised as `mamba_ssm`'s (`A_log`, `D`)
# - the conv given (batch, L, channels) instead of (batch, channels, L), or `in_proj`'s output split along L; `B` and `C` passed to the scan as (batch, L, state) instead of (batch, state, L), or reshaped to it instead of transposed
# - `x_proj` fed `u` from before the convolution; `z` put through SiLU before the scan (which applies it again)

# %% nbgrader={"grade": true, "grade_id": "check_MambaBlock", "locked": true, "points": 2, "schema_version": 3, "solution": false, "task": false}
check("day09-mamba-scan", "MambaBlock", MambaBlock, points=2)

# %% nbgrader={"grade": true, "grade_id": "hidden_MambaBlock", "locked": true, "points": 1, "schema_version": 3, "solution": false, "task": false}
# When your notebook is graded, hidden tests run here: the same checks on fresh random shapes.
### BEGIN HIDDEN TESTS
check("day09-mamba-scan", "MambaBlock", MambaBlock, hidden=True, points=1)
### END HIDDEN TESTS

# %%
block = MambaBlock(32)
x = torch.randn(2, 64, 32)
print(block(x).shape, sum(p.numel() for p in block.parameters()), "parameters")

# %% [markdown]
# ## 8. Explore: what a selective scan remembers
#
# The explorer runs **your** `selective_scan` on a toy sequence of 4 channels: quiet noise with a few loud tokens. $\Delta$ grows with $|u|$ (`selectivity` sets how much; 0 makes it the same everywhere, a time-invariant system), and $B_t$, $C_t$ are fixed random projections of $u_t$.
#
# - Top left: the input; then $\Delta$, how much each step writes (and forgets); then the hidden state $x_t$ of one channel. Loud tokens are written into the state and stay until the next loud token overwrites them.
# - Middle: the scan's "attention matrix". Once $\Delta, B, C$ are fixed the scan is linear in $u$, $y_t = \sum_{s \le t} M_{ts} u_s$ with $M_{ts} = \sum_n C_t[n]\, e^{A[n] \sum_{s < r \le t} \Delta_r}\, \Delta_s B_s[n]$; the explorer measures it by sending an impulse through your scan at every $s$. It is lower triangular (causal) and decays away from the diagonal; with high selectivity, whole columns (the loud tokens) light up.
# - Right: causal softmax attention with queries $C_t$ and keys $B_s$, for comparison: it can reach any past token with any weight, at $O(L^2)$ cost; the scan's matrix is structured (semiseparable), which is what lets it run in $O(L)$ with a fixed-size state.
#
# Things to try: `selectivity` 0 versus 5; a `decay` of 0.01 (a long memory) versus 3 (only the last few tokens); state N = 1 versus 16.

# %%
ScanExplorer(selective_scan=selective_scan)

# %% [markdown]
# ## 9. Measure: the loop against the scans
#
# At $L = 4096$ the loop runs 4096 small steps of Python and torch overhead; the parallel scan runs 12 big vectorised steps, and the chunked one about as many. On a CPU, torch runs many small ops faster on one thread, so we time with one. The Triton kernel runs through its interpreter here (a correctness tool, not a speed one), timed at a small size; on a GPU it is compared with the card's copy bandwidth (a scan reads $a, b$ and writes $h$: 12 bytes per step in float32).

# %%
threads = torch.get_num_threads()
torch.set_num_threads(1)
rows, L = (16, 4096) if device.type == "cpu" else (4096, 4096)
a = (0.5 + 0.5 * torch.rand(rows, L)).to(device)
b = torch.randn(rows, L).to(device)
reference = linear_recurrence_sequential(a.double(), b.double())
fns = {"sequential loop": linear_recurrence_sequential, "parallel scan": linear_recurrence_parallel,
       "chunked scan (64)": lambda a, b: linear_recurrence_chunked(a, b, 64)}
if device.type == "cuda":
    fns["triton"] = linear_recurrence_triton
times = {}
for name, fn in fns.items():
    error = ((fn(a, b).double() - reference).norm() / reference.norm()).item()
    times[name] = median_time(fn, a, b, repeats=3)
    print(f"{name:>20}: {1e3 * times[name]:8.2f} ms, {times['sequential loop'] / times[name]:6.1f}x the loop, "
          f"relative error {error:.1e}")
small_a, small_b = a[:4, :256].float().contiguous(), b[:4, :256].float().contiguous()
print(f"{'triton (' + ('GPU' if device.type == 'cuda' else 'interpreter') + ', 4 x 256)':>20}: "
      f"{1e3 * median_time(linear_recurrence_triton, small_a, small_b, repeats=3):8.2f} ms")
if device.type == "cuda":
    copy = median_time(lambda x: x.clone(), torch.empty(3 * rows * L, device=device), repeats=10)
    print(f"triton scan moves 12 bytes per step at {12 * rows * L / times['triton'] / 1e9:.0f} GB/s; "
          f"a plain copy of the same bytes runs at {12 * rows * L / copy / 1e9:.0f} GB/s")
torch.set_num_threads(threads)

fig, ax = plt.subplots(figsize=(7, 2.8))
ax.barh(list(times), [1e3 * t for t in times.values()])
ax.set(xscale="log", xlabel="ms (log scale)", title=f"h_t = a_t h_(t-1) + b_t, {rows} rows x L = {L}, {device.type}")
plt.show()

# %% [markdown]
# On this course's 2-core CPU the scans are an order of magnitude faster than the loop for a few rows (the chunked one usually ahead), and equal to it to float tolerance. With many rows the gap narrows on a CPU: the loop's per-step overhead is shared by all rows, while Hillis–Steele does $\log_2 L$ times the work of the loop and becomes memory-bound. That extra work is why GPUs use work-efficient (Blelloch-style or chunked) scans. The full table (and a Triton row labelled as the interpreter) comes from `python -m course.bench.mamba_scan`.
#
# ## 10. Recap
#
# - $h_t = a_t h_{t-1} + b_t$ is a composition of affine maps; the combine $(a_1, b_1) \bullet (a_2, b_2) = (a_1 a_2, a_2 b_1 + b_2)$ is associative but not commutative, so a scan computes it in $O(\log L)$ steps as long as the earlier block stays on the left.
# - Inclusive versus exclusive scans differ by one position: $h_t = a_t\,\text{excl}_t + b_t$.
# - Chunked scans (a scan inside chunks, a short recurrence across them) are how real kernels use fast local memory.
# - The zero-order hold gives $\bar A = e^{\Delta A}$ and $\bar B = (e^{\Delta A} - 1) A^{-1} B \approx \Delta B$; a selective SSM computes $\Delta, B, C$ from the input, so it can choose what to remember.
# - A selective scan is a causal linear map of its input with a structured matrix: attention-like, with a fixed-size state instead of a growing cache.
#
# ## Further reading
#
# - Gu and Dao (2023), *Mamba: Linear-Time Sequence Modeling with Selective State Spaces*; its code: `mamba_ssm/ops/selective_scan_interface.py` (`selective_scan_ref`, which this notebook follows) and the CUDA kernel `csrc/selective_scan/`.
# - Dao and Gu (2024), *Transformers are SSMs* (Mamba-2): the scan as a semiseparable matrix, and the chunked SSD algorithm.
# - Blelloch (1990), *Prefix Sums and Their Applications*; Hillis and Steele (1986), *Data Parallel Algorithms*.
# - Martin and Cundy (2018), *Parallelizing Linear Recurrent Neural Nets Over Sequence Length*.
# - Gu, Goel, Ré (2022), *Efficiently Modeling Long Sequences with Structured State Spaces* (S4), for the continuous view and discretisation.
# - Triton's `tl.associative_scan` documentation, and `mamba_ssm/ops/triton/` for Triton kernels of the same scans.
