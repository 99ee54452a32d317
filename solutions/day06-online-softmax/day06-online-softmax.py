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
# # Day 6 · Online softmax: exact attention, one tile at a time
#
# [Open in Colab](https://colab.research.google.com/github/attention-from-scratch/attention-from-scratch/blob/main/exercises/day06-online-softmax/day06-online-softmax.ipynb)
#
# **What you will build.**
#
# 1. `online_softmax_stats(x, block_size, dim=-1)`: the max and the softmax denominator of a row in **one streaming pass** over blocks, rescaling the running sum whenever the max changes;
# 2. `tiled_attention(q, k, v, block_q=64, block_k=64, causal=False) -> (out, lse)`: exact attention that never holds the $L_q \times L_k$ score matrix, only one tile of it, and skips the causal tiles it does not need;
# 3. `FlashAttentionTorch`, a `torch.autograd.Function` whose backward recomputes each tile from one saved number per query, the logsumexp (FlashAttention-2's backward, in PyTorch).
#
# Then you step through the online softmax in an explorer, and measure the memory of tiled against naive attention as $L$ grows.
#
# **Prerequisites.** Day 1 (stable softmax, attention), day 2 (bottom-right causal masks; fully masked rows give zeros, never NaN). The chain rule through softmax; `torch.autograd.Function` is introduced here.
# **Time.** About 3 hours.
#
# **How this notebook works.** Replace each `raise NotImplementedError()` with your code and run the check cell below it: ✓ or ✗ per check, and for a ✗ the name of the mistake and a hint. Grading reruns the same checks, and hidden ones draw new random sizes.
#
# **Not allowed inside your functions:** `torch.softmax`, `torch.log_softmax`, `torch.logsumexp`, `F.scaled_dot_product_attention`, `course.reference.masks.attention`, `course.reference.sdpa.stable_softmax`, and the course's own `course.reference.online_softmax` (the library version for later days). `torch.exp`, `torch.log`, `amax`, `torch.maximum` and `@` are what you need.

# %% nbgrader={"grade": false, "grade_id": "setup", "locked": true, "schema_version": 3, "solution": false, "task": false}
import math

import matplotlib.pyplot as plt
import torch

import course
from course.reference.masks import attention as dense_attention
from course.bench import peak_memory
from course.explore.online_softmax import OnlineSoftmaxExplorer
from grader import check

device = course.get_device()
course.seed_everything(0)
print(course.describe_device())

# %% [markdown]
# ## 1. Softmax without seeing the whole row
#
# Day 1's stable softmax makes two passes over a row $x_1, \ldots, x_N$: first the max $m = \max_j x_j$, then the denominator $\ell = \sum_j e^{x_j - m}$. FlashAttention needs **one** pass: the scores of a row arrive one block of keys at a time, and a block is gone (its memory reused) once the next one comes.
#
# Keep two numbers per row. After the blocks $B_1, \ldots, B_t$:
#
# $$m_t = \max_{j \in B_1 \cup \cdots \cup B_t} x_j, \qquad \ell_t = \sum_{j \in B_1 \cup \cdots \cup B_t} e^{x_j - m_t}.$$
#
# When block $B_{t+1}$ arrives, the new max is $m_{t+1} = \max\big(m_t, \max_{j \in B_{t+1}} x_j\big)$. The old sum was taken against the old max; since $e^{x_j - m_{t+1}} = e^{x_j - m_t}\, e^{m_t - m_{t+1}}$,
#
# $$\boxed{\ell_{t+1} = \ell_t\, e^{\,m_t - m_{t+1}} + \sum_{j \in B_{t+1}} e^{x_j - m_{t+1}}}$$
#
# The **rescale factor** $e^{m_t - m_{t+1}}$ is 1 when the max did not move and below 1 when it rose; every exponent is $\le 0$, so nothing overflows. After the last block, $\ell = \sum_j e^{x_j - m}$ exactly, and $\operatorname{softmax}(x)_j = e^{x_j - m} / \ell$, $\log \sum_j e^{x_j} = m + \log \ell$.
#
# Start from $m_0 = -\infty$, $\ell_0 = 0$. One care: while every score seen is $-\infty$ (a masked block), $m_{t+1} = -\infty$ too and $e^{m_t - m_{t+1}} = e^{-\infty + \infty}$ is NaN. Shift by 0 instead of the new max $m_{t+1}$ in that case (in both exponents, the rescale factor and the block's terms): the sum stays 0, and an all $-\infty$ row ends with $m = -\infty$, $\ell = 0$.
#
# **By hand.** $x = (1, 3, 2, 5)$ in blocks of 2. Block 1: $m_1 = 3$, $\ell_1 = e^{-2} + e^{0} = 1.1353$. Block 2: $m_2 = 5$, factor $e^{3 - 5} = 0.1353$, $\ell_2 = 1.1353 \cdot 0.1353 + e^{-3} + e^{0} = 1.2034$. Check: $\sum_j e^{x_j - 5} = e^{-4} + e^{-2} + e^{-3} + 1 = 1.2034$.

# %%
x = torch.tensor([1.0, 3.0, 2.0, 5.0])
print("two passes:", x.max().item(), torch.exp(x - x.max()).sum().item())


# %% [markdown]
# ### Exercise 1: `online_softmax_stats`
#
# Leave the caller's `x` as it is, here and in `tiled_attention`: no in-place op on an input or on a slice of it (`masked_fill_`, `x[...] = ...`, `block -= ...`: a slice is a view of `x`); keep $-\infty$ as it is (no stand-in like `-1e9`) and let the shift-by-0 guard handle it: shift both exps by the **new** max, and by 0 while it is still $-\infty$, `shift = torch.where(m_new == -inf, 0, m_new)`, then $e^{m - \text{shift}}$ and $e^{\text{block} - \text{shift}}$.
#
# The checks recognise: the running sum not rescaled when the max changes, the rescale factor upside down ($e^{m_{t+1} - m_t}$), NaN for rows (or first blocks) that are all $-\infty$, a finite stand-in (e.g. `-1e9`) where the max is $-\infty$, the last, shorter block dropped, blocks that overlap (one entry too long), a log-sum instead of the sum, the log of each block's sum added to the running sum, the last axis reduced whatever `dim` says, a wrong shape (the reduced `dim` is removed, as in `x.amax(dim)`), `(sum_exp, max)` returned instead of `(max, sum_exp)`, `x` changed in place, a pass over the whole row before the blocks (e.g. the global max first: two passes, so no reduction may read more than one block), and no `ValueError` for `block_size < 1`.

# %% nbgrader={"grade": false, "grade_id": "online_softmax_stats", "locked": false, "schema_version": 3, "solution": true, "task": false}
def online_softmax_stats(x: torch.Tensor, block_size: int, dim: int = -1) -> tuple:
    """The max and the softmax denominator of x along `dim`, in one streaming pass over blocks.

    Args:
        x: floating-point tensor of any shape (float32 or float64); entries may be -inf.
        block_size: the number of entries along `dim` read at a time, >= 1 (the last block
            may be shorter).
        dim: the axis to reduce.

    Returns:
        (m, l): m = max of x along dim, l = sum exp(x - m) along dim; both have x's shape
        without `dim` and x's dtype. An all -inf slice gives m = -inf, l = 0 (never NaN).

    One pass: keep a running max and a running sum, rescale the sum by exp(m_old - m_new)
    when a block raises the max. Every max, exp and sum reads one block only.
    Raises ValueError if block_size < 1. Not allowed: torch.softmax, torch.logsumexp, course.reference.online_softmax.
    """
    ### BEGIN SOLUTION
    if block_size < 1:
        raise ValueError(f"block_size must be >= 1, got {block_size}")
    x = x.movedim(dim, -1)                                          # (..., N): the streamed axis last
    running_max = torch.full(x.shape[:-1], float("-inf"), dtype=x.dtype, device=x.device)
    running_sum = torch.zeros(x.shape[:-1], dtype=x.dtype, device=x.device)
    for start in range(0, x.shape[-1], block_size):
        block = x[..., start:start + block_size]                    # (..., b)
        new_max = torch.maximum(running_max, block.amax(dim=-1))     # (...,)
        shift = torch.where(new_max == float("-inf"), 0.0, new_max)  # nothing but -inf yet: shift by 0
        running_sum = running_sum * torch.exp(running_max - shift) + torch.exp(block - shift[..., None]).sum(dim=-1)
        running_max = new_max
    return running_max, running_sum
    ### END SOLUTION


# %%
m, l = online_softmax_stats(torch.tensor([1.0, 3.0, 2.0, 5.0]), block_size=2)
print(m.item(), l.item())  # 5.0 1.2034...

# %% nbgrader={"grade": true, "grade_id": "check_online_softmax_stats", "locked": true, "points": 2, "schema_version": 3, "solution": false, "task": false}
check("day06-online-softmax", "online_softmax_stats", online_softmax_stats, points=2)

# %% nbgrader={"grade": true, "grade_id": "hidden_online_softmax_stats", "locked": true, "points": 1, "schema_version": 3, "solution": false, "task": false}
# When your notebook is graded, hidden tests run here: the same checks on fresh random shapes.
### BEGIN HIDDEN TESTS
check("day06-online-softmax", "online_softmax_stats", online_softmax_stats, hidden=True, points=1)
### END HIDDEN TESTS

# %% [markdown]
# ## 2. Explore: step through the blocks
#
# The explorer runs **your** `online_softmax_stats` on the first $t$ blocks of a random row (noise on a rising trend, so the max keeps moving). Move `step`: the orange block is arriving, the red line is the running max, and the title gives $\ell_t$, $\ell_{t-1}$ and the rescale factor $e^{m_{t-1} - m_t}$. When the max jumps, the old sum shrinks by that factor before the new block's terms are added.
#
# On the right: the tiles of attention for the same $L$ and block size. The `query tile` walks along its key tiles, one per step; with `causal`, the tiles above the diagonal are grey: skipped, never computed (section 3).

# %%
explorer = OnlineSoftmaxExplorer(online_softmax_stats, length=40, block_size=8)
explorer.step.value = 3
explorer


# %% [markdown]
# Things to try: `block size` 1 (the max changes at almost every step early on) and `block size` ≥ `length` (one step: the two-pass softmax). Which steps have a rescale factor of exactly 1? Turn `causal` off: how many tiles are computed now?
#
# ## 3. Tiled attention
#
# Attention is a softmax per query row followed by a weighted sum: $\operatorname{out}_i = \sum_j \frac{e^{s_{ij}}}{\sum_{j'} e^{s_{ij'}}}\, v_j$ with $s_{ij} = q_i \cdot k_j / \sqrt d$. The numerator is a sum over keys too, so it streams like $\ell$: keep, for each query of a tile of `block_q` queries, the running max $m$, the running denominator $\ell$ and the running numerator $\mathrm{acc} = \sum_j e^{s_{ij} - m} v_j$ (a row of $d_v$ numbers). For each key tile $K_t, V_t$ (`block_k` keys):
#
# $$S = Q_{\text{tile}} K_t^\top / \sqrt d, \quad m' = \max(m, \operatorname{rowmax} S), \quad P = e^{S - m'},$$
# $$\ell \leftarrow \ell\, e^{m - m'} + \operatorname{rowsum} P, \qquad \mathrm{acc} \leftarrow \mathrm{acc}\, e^{m - m'} + P V_t, \qquad m \leftarrow m'.$$
#
# In code, $K_t^\top$ is `k_tile.transpose(-2, -1)`, or its short form `k_tile.mT`: both swap the last two axes only, whatever leading (batch, head) axes come first. `k_tile.T` reverses *every* axis: right on a 2-D tile only.
#
# **Both** sums were taken against the old max, so both are rescaled. At the end, $\operatorname{out} = \mathrm{acc} / \ell$ and the **logsumexp** $\operatorname{lse}_i = m + \log \ell = \log \sum_j e^{s_{ij}}$ (natural log), one number per query. The largest thing alive is one `(block_q, block_k)` tile: memory is $O(L \cdot d)$ for the output plus the tile, not $O(L_q L_k)$.
#
# **Causal, bottom-right aligned** (day 2): query $i$ sits at absolute position $L_k - L_q + i$ and sees keys $j \le L_k - L_q + i$. For the query tile $[a, b)$ every key $j \ge L_k - L_q + b$ is masked for *all* its queries: stop the key loop there. Those tiles above the diagonal are **skipped**, not computed and masked; about half the work for $L_q = L_k$. Only tiles that straddle the diagonal need a $-\infty$ mask. Tiles at the ends may be shorter (ragged): $L$ need not be a multiple of the block sizes.
#
# **Queries that see no key** (causal with $L_q > L_k$: the first $L_q - L_k$ queries sit before the first key) get $\operatorname{out} = 0$ and $\operatorname{lse} = -\infty$, never NaN: $\ell = 0$ there, so divide by 1 instead, and $m + \log \ell = -\infty + (-\infty) = -\infty$.

# %% [markdown]
# ### Exercise 2: `tiled_attention`
#
# Start $m$, $\ell$ and $\mathrm{acc}$ afresh for each query tile, inside the query-tile loop: they belong to that tile's queries, and the last tile may be shorter.
#
# The checks recognise: the accumulator and $\ell$ not rescaled when the max changes, $m$, $\ell$ and $\mathrm{acc}$ made once before the query-tile loop instead of for each query tile, `q` (or another input) changed in place (e.g. `q.mul_(scale)`), $\ell$ rescaled but not the accumulator (and the other way round), a missing $1/\sqrt d$ (or $1/d$ instead), `.T` on a batched tile, the last, shorter key tile dropped, `out` made in `q`'s shape (its last dim is $d_v$), the lse in base 2 or without the max, a causal mask aligned top-left, strict ($j < i$), on the wrong side, or ignored, a causal key loop that stops one key early (the diagonal key missed) or at $q_{\text{end}}$ instead of $L_k - L_q + q_{\text{end}}$, tiles straddling the diagonal left unmasked, a mask that counts queries from their tile's start, NaN (e.g. $0/0$ from `acc / l`), a finite lse, or a crash (a variable that only the key loop sets) for queries that see no key, `(lse, out)` returned instead of `(out, lse)`, any tensor with $L_q \times L_k$ entries (mask included), causal tiles above the diagonal computed instead of skipped (the checks count the matmul work), wrong shapes, and no `ValueError` for block sizes $< 1$, mismatched head dims, or `k` and `v` of different lengths.

# %% nbgrader={"grade": false, "grade_id": "tiled_attention", "locked": false, "schema_version": 3, "solution": true, "task": false}
def tiled_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, block_q: int = 64,
                    block_k: int = 64, causal: bool = False) -> tuple:
    """Exact attention softmax(q kᵀ / sqrt(d)) v, one (block_q, block_k) tile of scores at a time.

    Args:
        q: (..., Lq, d); k: (..., Lk, d); v: (..., Lk, dv); the same leading dims (any number,
            none included), the same floating dtype.
        block_q, block_k: tile sizes, >= 1; the last tiles may be shorter.
        causal: bottom-right aligned: query i (at absolute position Lk - Lq + i) sees keys
            j <= Lk - Lq + i. Key tiles entirely above the diagonal are skipped, never computed.

    Returns:
        (out, lse): out (..., Lq, dv), lse (..., Lq) = log sum_j exp(s_ij), natural log, both in
        q's dtype. A query that sees no key gets out = 0 and lse = -inf (never NaN).

    Never allocates a tensor with Lq * Lk entries. Raises ValueError for block sizes < 1, q and k
    with different head dims, or k and v with different lengths. Not allowed: torch.softmax,
    torch.logsumexp, F.scaled_dot_product_attention, course.reference.online_softmax.
    """
    ### BEGIN SOLUTION
    if block_q < 1 or block_k < 1:
        raise ValueError(f"block sizes must be >= 1, got block_q={block_q}, block_k={block_k}")
    if q.shape[-1] != k.shape[-1] or k.shape[-2] != v.shape[-2]:
        raise ValueError(f"expected q (..., Lq, d), k (..., Lk, d), v (..., Lk, dv); got "
                         f"{tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}")
    Lq, Lk = q.shape[-2], k.shape[-2]
    scale = 1 / math.sqrt(q.shape[-1])
    outs, lses = [], []
    for i0 in range(0, Lq, block_q):
        qi = q[..., i0:i0 + block_q, :]                                       # (..., bq, d)
        bq = qi.shape[-2]
        m = torch.full(qi.shape[:-1], float("-inf"), dtype=q.dtype, device=q.device)  # (..., bq)
        l = torch.zeros_like(m)                                               # (..., bq)
        acc = torch.zeros(*qi.shape[:-1], v.shape[-1], dtype=q.dtype, device=q.device)  # (..., bq, dv)
        key_end = min(Lk, Lk - Lq + i0 + bq) if causal else Lk                # later keys: masked for all
        for j0 in range(0, key_end, block_k):
            kj, vj = k[..., j0:j0 + block_k, :], v[..., j0:j0 + block_k, :]   # (..., bk, d), (..., bk, dv)
            s = qi @ kj.transpose(-2, -1) * scale                             # (..., bq, bk)
            if causal:
                query_pos = Lk - Lq + i0 + torch.arange(bq, device=q.device)[:, None]
                key_pos = j0 + torch.arange(kj.shape[-2], device=q.device)[None, :]
                s = s.masked_fill(key_pos > query_pos, float("-inf"))
            m_new = torch.maximum(m, s.amax(dim=-1))
            shift = torch.where(m_new == float("-inf"), 0.0, m_new)          # rows with no key yet
            alpha = torch.exp(m - shift)                                      # rescale factor
            p = torch.exp(s - shift[..., None])                               # (..., bq, bk)
            l = l * alpha + p.sum(dim=-1)
            acc = acc * alpha[..., None] + p @ vj
            m = m_new
        outs.append(acc / torch.where(l == 0, 1.0, l)[..., None])            # no key: 0 / 1 = 0
        lses.append(m + torch.log(l))                                         # no key: -inf
    return torch.cat(outs, dim=-2), torch.cat(lses, dim=-1)
    ### END SOLUTION


# %%
q, k, v = (torch.randn(2, 5, 8, dtype=torch.float64) for _ in range(3))
out, lse = tiled_attention(q, k, v, block_q=2, block_k=3, causal=True)
ref, _ = dense_attention(q, k, v, torch.ones(5, 5, dtype=torch.bool).tril())
print("max |out - dense|:", (out - ref).abs().max().item(), " lse shape:", tuple(lse.shape))

# %% nbgrader={"grade": true, "grade_id": "check_tiled_attention", "locked": true, "points": 2, "schema_version": 3, "solution": false, "task": false}
check("day06-online-softmax", "tiled_attention", tiled_attention, points=2)

# %% nbgrader={"grade": true, "grade_id": "hidden_tiled_attention", "locked": true, "points": 1, "schema_version": 3, "solution": false, "task": false}
# When your notebook is graded, hidden tests run here: the same checks on fresh random shapes.
### BEGIN HIDDEN TESTS
check("day06-online-softmax", "tiled_attention", tiled_attention, hidden=True, points=1)
### END HIDDEN TESTS

# %% [markdown]
# ## 4. The backward pass from one number per query
#
# Autograd through `tiled_attention` would keep every tile's probabilities: the $L_q \times L_k$ matrix again, in pieces. FlashAttention saves only $Q, K, V$, the output $O$ and $\operatorname{lse}$, and **recomputes** each tile of probabilities in the backward pass: $P_{ij} = e^{s_{ij} - \operatorname{lse}_i}$, exact, without any max or sum.
#
# With $dO$ the gradient of the output, per tile (the sums over tiles accumulate):
#
# $$dV = P^\top dO, \qquad dP = dO\, V^\top, \qquad dS = P \circ (dP - D), \qquad dQ = dS\, K / \sqrt d, \qquad dK = dS^\top Q / \sqrt d.$$
#
# $dS$ is the softmax's Jacobian: $\partial \ell / \partial s_{ij} = P_{ij}\big(dP_{ij} - \sum_{j'} P_{ij'}\, dP_{ij'}\big)$. The inner sum would need a whole row of $P$; FlashAttention-2 notices that it is
#
# $$D_i = \sum_{j} P_{ij}\, dP_{ij} = \sum_j P_{ij}\, dO_i \cdot v_j = dO_i \cdot O_i,$$
#
# one dot product per query, computed once from $dO$ and the saved $O$ before the tile loop. For causal attention the backward must recompute exactly the forward's tiles: the same mask on the diagonal tiles, the same skipped tiles. A query that sees no key has $\operatorname{lse} = -\infty$; use $+\infty$ there, so that its $P = e^{s - \infty} = 0$ and its gradients are zero.
#
# A `torch.autograd.Function` has two static methods. `forward(ctx, ...)` computes the output and stores what backward needs with `ctx.save_for_backward(...)` (tensors) or as attributes of `ctx` (anything else); `backward(ctx, d_out)` returns one gradient per input of forward, `None` for the inputs that are not tensors (here `is_causal`). It is called as `FlashAttentionTorch.apply(q, k, v, is_causal)`.

# %% [markdown]
# ### Exercise 3: `FlashAttentionTorch`
#
# Use your `tiled_attention` in forward, with its default tiles (64 queries by 64 keys); write backward's tile loop with tiles of the same kind (64, as forward's, is simplest; smaller ones are fine), so that it skips the causal tiles above the diagonal as forward does: the checks count backward's matmul work, and with tiles of 64 at $L = 256$ skipping leaves about 62% of the non-causal work (one tile as long as $L$ would skip nothing). Do not write into the saved tensors: `ctx.saved_tensors` are forward's own, and autograd refuses a second backward through them once one changed; make new ones (`torch.where`).
#
# The checks compare with float64 autograd through dense attention (and `torch.autograd.gradcheck`), and recognise: a forward that ignores `is_causal`, a backward without the $D$ term (or with $D$ summed over one key tile only, or over every query into one number), $P$ recomputed without $1/\sqrt d$, $dK$ or $dV$ overwritten (`=`) by each query tile instead of accumulated (`+=`), $dV = P\,dO$ or $dK = dS\,Q$ without the transpose, $dQ$ and $dK$ without $1/\sqrt d$, gradients wrong only with `causal` (e.g. $P$ recomputed without the mask, or with a top-left mask), a saved tensor changed in place (e.g. `lse[lse == -inf] = inf`), causal tiles above the diagonal computed in backward, NaN in the gradients of queries that see no key, an $(L_q, L_k)$ tensor or two statistics (max and sum) saved instead of one logsumexp (or no logsumexp saved), an lse in base 2 or without the max, and a Function that autograd cannot run.

# %% nbgrader={"grade": false, "grade_id": "FlashAttentionTorch", "locked": false, "schema_version": 3, "solution": true, "task": false}
class FlashAttentionTorch(torch.autograd.Function):
    """Tiled attention with FlashAttention-2's backward: FlashAttentionTorch.apply(q, k, v, is_causal).

    forward(ctx, q, k, v, is_causal=False) -> out (..., Lq, dv), computed by tiled_attention;
    saves q, k, v, out and the logsumexp lse (..., Lq): nothing with Lq * Lk entries.
    backward(ctx, d_out) -> (dq, dk, dv, None): tile by tile, P = exp(s - lse) recomputed,
    D = rowsum(d_out * out); causal tiles above the diagonal skipped as in forward; queries that
    see no key get zero gradients. Inputs (..., L, d) with any leading dims (the same for q, k, v).
    Not allowed: torch.softmax, torch.logsumexp, F.scaled_dot_product_attention, course.reference.online_softmax.
    """

    @staticmethod
    def forward(ctx, q, k, v, is_causal=False):
        ### BEGIN SOLUTION
        out, lse = tiled_attention(q, k, v, causal=is_causal)
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.is_causal = is_causal
        return out
        ### END SOLUTION

    @staticmethod
    def backward(ctx, d_out):
        ### BEGIN SOLUTION
        q, k, v, out, lse = ctx.saved_tensors
        Lq, Lk, block = q.shape[-2], k.shape[-2], 64
        scale = 1 / math.sqrt(q.shape[-1])
        D = (d_out * out).sum(dim=-1)                                         # (..., Lq)
        lse = torch.where(lse == float("-inf"), float("inf"), lse)           # no key: P = 0
        dq, dk, dv = torch.zeros_like(q), torch.zeros_like(k), torch.zeros_like(v)
        for j0 in range(0, Lk, block):                                        # key tiles outside
            kj, vj = k[..., j0:j0 + block, :], v[..., j0:j0 + block, :]       # (..., bk, d), (..., bk, dv)
            first_query = max(0, j0 - (Lk - Lq)) if ctx.is_causal else 0     # earlier queries see none
            for i0 in range(first_query // block * block, Lq, block):
                rows = slice(i0, i0 + block)
                qi, d_oi = q[..., rows, :], d_out[..., rows, :]               # (..., bq, d), (..., bq, dv)
                s = qi @ kj.transpose(-2, -1) * scale                         # (..., bq, bk)
                if ctx.is_causal:
                    query_pos = Lk - Lq + i0 + torch.arange(qi.shape[-2], device=q.device)[:, None]
                    key_pos = j0 + torch.arange(kj.shape[-2], device=q.device)[None, :]
                    s = s.masked_fill(key_pos > query_pos, float("-inf"))
                p = torch.exp(s - lse[..., rows, None])                       # (..., bq, bk)
                dv[..., j0:j0 + block, :] += p.transpose(-2, -1) @ d_oi
                dp = d_oi @ vj.transpose(-2, -1)                              # (..., bq, bk)
                ds = p * (dp - D[..., rows, None])
                dq[..., rows, :] += ds @ kj * scale
                dk[..., j0:j0 + block, :] += ds.transpose(-2, -1) @ qi * scale
        return dq, dk, dv, None
        ### END SOLUTION


def flash_attention_torch(q, k, v, causal=False):
    """Attention out (..., Lq, dv) through FlashAttentionTorch: tiled forward and backward."""
    return FlashAttentionTorch.apply(q, k, v, causal)


# %%
q, k, v = (torch.randn(2, 7, 4, dtype=torch.float64, requires_grad=True) for _ in range(3))
flash_attention_torch(q, k, v, causal=True).sum().backward()
mine = [t.grad.clone() for t in (q, k, v)]
for t in (q, k, v):
    t.grad = None
dense_attention(q, k, v, torch.ones(7, 7, dtype=torch.bool).tril())[0].sum().backward()
print("max |grad - autograd|:", max((a - t.grad).abs().max().item() for a, t in zip(mine, (q, k, v))))

# %% nbgrader={"grade": true, "grade_id": "check_FlashAttentionTorch", "locked": true, "points": 2, "schema_version": 3, "solution": false, "task": false}
check("day06-online-softmax", "FlashAttentionTorch", FlashAttentionTorch, points=2)

# %% nbgrader={"grade": true, "grade_id": "hidden_FlashAttentionTorch", "locked": true, "points": 1, "schema_version": 3, "solution": false, "task": false}
# When your notebook is graded, hidden tests run here: the same checks on fresh random shapes.
### BEGIN HIDDEN TESTS
check("day06-online-softmax", "FlashAttentionTorch", FlashAttentionTorch, hidden=True, points=1)
### END HIDDEN TESTS

# %% [markdown]
# ## 5. Measure: memory as $L$ grows
#
# Naive attention holds the $L \times L$ scores and weights: its peak memory grows as $L^2$. Tiled attention holds its output ($L \cdot d_v$ numbers, plus $L$ for the lse) and one tile; with fixed tiles its **working memory** (the peak minus the output it returns) does not grow with $L$ at all. `peak_memory` records the most bytes alive at once during a call (on the CPU it tracks every tensor the call allocates; on a GPU it reads `torch.cuda.max_memory_allocated`).
#
# Sized for a 2-core CPU; a GPU gets longer sequences. `python -m course.bench.online_softmax` runs $L = 4096$ and checks the target: tiled at most a quarter of naive.

# %%
head_dim = 64
lengths, block = ([256, 512, 1024, 2048], 256) if device.type == "cpu" else ([1024, 2048, 4096, 8192, 16384], 128)
lengths = lengths[:2] if course.being_graded() else lengths  # graded: no points here


def naive(q, k, v):
    return dense_attention(q, k, v)[0]


def tiled(q, k, v):
    return tiled_attention(q, k, v, block_q=block, block_k=block)


rows = []
for L in lengths:
    q, k, v = (torch.randn(1, 1, L, head_dim, device=device) for _ in range(3))
    output_bytes = L * (head_dim + 1) * 4                       # out and lse, float32
    rows.append((L, peak_memory(naive, q, k, v), peak_memory(tiled, q, k, v), output_bytes))

print(f"{'L':>6} {'naive MiB':>10} {'tiled MiB':>10} {'tiled working KiB':>18} {'tiled / naive':>14}")
for L, m_naive, m_tiled, m_out in rows:
    print(f"{L:>6} {m_naive / 2**20:>10.2f} {m_tiled / 2**20:>10.2f} {(m_tiled - m_out) / 2**10:>18.0f} {m_tiled / m_naive:>14.3f}")

Ls = [r[0] for r in rows]
fig, ax = plt.subplots(figsize=(6, 3.8))
ax.loglog(Ls, [r[1] / 2**20 for r in rows], "o-", label="naive (L x L scores)")
ax.loglog(Ls, [r[2] / 2**20 for r in rows], "o-", label="tiled (yours), peak")
ax.loglog(Ls, [(r[2] - r[3]) / 2**20 for r in rows], "o--", label="tiled, working memory (peak - output)")
ax.loglog(Ls, [rows[0][1] / 2**20 * (L / Ls[0]) ** 2 for L in Ls], "k:", label="∝ L²")
ax.set(xlabel="sequence length L", ylabel="peak memory (MiB)", title=f"tiles {block} x {block}, d = {head_dim} ({device.type})")
ax.set_xticks(Ls, [str(L) for L in Ls])
ax.minorticks_off()
ax.legend(fontsize=8)
plt.tight_layout()
plt.show()

# %% [markdown]
# Naive memory follows the $L^2$ line: each doubling of $L$ quadruples it. At the smallest $L$ the tile (256 on a CPU, 128 on a GPU) may cover the whole row, even the whole matrix: then tiled attention holds the same scores as naive, plus its running statistics and output, and tiled / naive is above 1. Tiling saves memory once $L$ is several tiles long. The tiled peak grows only with the output it returns, and the working memory above that is flat: a few tiles of scores (`block` × `block`) whatever $L$ is. The price is time on a CPU: many small matrix products in a Python loop are slower than one large one. On a GPU, FlashAttention fuses the whole loop into one kernel that keeps the tile in fast on-chip memory, and wins on time too: that is day 7.
#
# ## 6. Recap
#
# - The softmax denominator streams: keep a running max $m$ and sum $\ell$, and rescale $\ell$ by $e^{m_{\text{old}} - m_{\text{new}}}$ when the max rises.
# - Attention's numerator streams the same way; both running sums are rescaled. $\operatorname{out} = \mathrm{acc}/\ell$, $\operatorname{lse} = m + \log \ell$.
# - Tiles bound the memory by the tile size, not $L^2$; causal (bottom-right) tiles above the diagonal are skipped, about half the work.
# - The backward recomputes $P = e^{S - \operatorname{lse}}$ tile by tile from one saved number per query, and FlashAttention-2's $D = \operatorname{rowsum}(dO \circ O)$ replaces the row sums of $P \circ dP$.
# - Queries that see no key: zeros, $\operatorname{lse} = -\infty$, zero gradients; never NaN.
#
# ## Further reading
#
# - Milakov and Gimelshein (2018), *Online normalizer calculation for softmax*: the one-pass max and sum.
# - Rabe and Staats (2021), *Self-attention does not need $O(n^2)$ memory*: the same idea, chunked in JAX.
# - Dao et al. (2022), *FlashAttention*: tiling, recomputation in backward, IO-awareness.
# - Dao (2023), *FlashAttention-2*: the $D$ term, loop order, causal tile skipping; from 2.1 on, causal masks are aligned bottom-right, as in this course.
# - Read next: the reference PyTorch implementations in the FlashAttention repository's tests (`attention_ref`), and the Triton tutorial *Fused Attention*.
#
# **Next: day 7, FlashAttention in Triton.** The same tile loop as one GPU kernel, with the tile in on-chip memory.
