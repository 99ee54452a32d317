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
# # Day 8 · Linear attention: kernels, RNNs and Performers
#
# [Open in Colab](https://colab.research.google.com/github/attention-from-scratch/attention-from-scratch/blob/main/exercises/day08-linear-attention/day08-linear-attention.ipynb)
#
# **What you will build.**
#
# 1. `elu_feature_map` and `linear_attention(q, k, v, feature_map, eps)`: attention with a feature map $\phi$ in place of $e^{q \cdot k}$, computed in $O(L)$ as $\phi(Q)\,(\phi(K)^\top V)$ with its normaliser, and shown equal to the quadratic form;
# 2. the causal forms: `causal_linear_attention_recurrent` (an RNN with a $D \times D_v$ state) and `causal_linear_attention_chunked` (quadratic inside a chunk, the state carried between chunks), identical to each other;
# 3. the Performer: `orthogonal_random_features`, `favor_feature_map` (positive random features for the softmax kernel) and `performer_attention`, whose error against softmax attention falls as the number of features grows.
# 4. *Advanced:* landmark (Nyström) attention: `landmarks` (segment means), `iterative_pinv` (the Moore–Penrose pseudo-inverse by matrix products) and `nystrom_attention`, $O(L m)$ memory with $m$ landmarks, exact at $m = L$; its error against full attention as $m$ grows.
#
# Then you explore the implied attention matrices, measure chunked against recurrent against quadratic, and Nyström's memory against dense attention's.
#
# **Prerequisites.** Day 1 (attention), day 2 (causal masks). Matrix products and their associativity; `torch.linalg.qr`.
# **Time.** About 3 hours, plus 1 hour for the advanced part.
#
# **How this notebook works.** Replace each `raise NotImplementedError()` with your code and run the check cell below it: ✓ or ✗ per check, and for a ✗ the name of the mistake and a hint. Grading reruns the same checks, and hidden ones draw new random sizes.
#
# **Not allowed inside your functions:** the course's own `course.reference.linear_attention` (the library version for later days), `F.scaled_dot_product_attention` and softmax (softmax is allowed in the advanced Nyström part; `torch.linalg.pinv` and `course.reference.nystrom` are not).

# %% nbgrader={"grade": false, "grade_id": "setup", "locked": true, "schema_version": 3, "solution": false, "task": false}
import math
import time

import matplotlib.pyplot as plt
import torch
import torch.nn.functional as F

import course
from course.bench import median_time
from course.explore.linear_attention import LinearExplorer
from grader import check

device = course.get_device()
torch.set_num_threads(1)  # many small ops: one thread is faster and steadier on a shared CPU
course.seed_everything(0)
print(course.describe_device())


# %% [markdown]
# ## 1. Attention as a kernel
#
# Softmax attention weighs key $j$ for query $i$ by $\operatorname{sim}(q_i, k_j) = e^{q_i \cdot k_j / \sqrt d}$, normalised over the keys:
#
# $$\operatorname{out}_i = \frac{\sum_j \operatorname{sim}(q_i, k_j)\, v_j}{\sum_j \operatorname{sim}(q_i, k_j)}.$$
#
# Any positive similarity works. Choose one that factorises, $\operatorname{sim}(q, k) = \phi(q) \cdot \phi(k)$ with a **feature map** $\phi$, and the sums regroup:
#
# $$\operatorname{out}_i = \frac{\phi(q_i)^\top \sum_j \phi(k_j)\, v_j^\top}{\phi(q_i)^\top \sum_j \phi(k_j)} = \frac{\phi(q_i)^\top S}{\phi(q_i)^\top z + \varepsilon}, \qquad S = \phi(K)^\top V,\quad z = \sum_j \phi(k_j).$$
#
# $S$ is $D' \times D_v$ and $z$ has $D'$ entries, whatever $L$ is: computing them costs $O(L D' D_v)$, and so does reading them for every query. The quadratic form $(\phi(Q)\phi(K)^\top) V$ computes the same numbers in $O(L^2)$: it is only the order of the matrix products, $(AB)C = A(BC)$. The $\varepsilon$ keeps a query with $\phi(q_i) \cdot z = 0$ from dividing by zero.
#
# $\phi$ must be **positive**: the weights $\phi(q_i)\cdot\phi(k_j)$ must be $\ge 0$, or the normaliser can vanish or change sign. Katharopoulos et al. (2020) use $\phi(x) = \operatorname{elu}(x) + 1$: $x + 1$ for $x > 0$, $e^x$ for $x \le 0$, always positive.
#
# Tiny example, by hand: $\phi(q) = (1, 2)$, $\phi(k_1) = (1, 0)$, $\phi(k_2) = (0, 1)$, $v_1 = 10$, $v_2 = 40$. Weights $1$ and $2$, so $\operatorname{out} = (10 + 80)/3 = 30$. The linear way: $S = (10, 40)^\top$, $z = (1, 1)$, $\phi(q)^\top S = 90$, $\phi(q)^\top z = 3$.
#
# ### Exercise 1: `elu_feature_map`
#
# The checks recognise a feature map that can go negative (`elu(x)` without the `+ 1`, or `x` itself), a positive map that is not $\operatorname{elu}(x) + 1$ (`relu(x) + 1`, `exp(x)`, `softplus(x)`), the `+ 1` left out above zero (`torch.where(x >= 0, x, torch.exp(x))`) or added below it too (`torch.exp(x) + 1` for $x \le 0$), `F.elu` with another `alpha` than its default 1, and an input changed in place (`F.elu(x, inplace=True)`).

# %% nbgrader={"grade": false, "grade_id": "elu_feature_map", "locked": false, "schema_version": 3, "solution": true, "task": false}
def elu_feature_map(x: torch.Tensor) -> torch.Tensor:
    """phi(x) = elu(x) + 1, elementwise: x + 1 for x > 0, exp(x) for x <= 0. Always > 0.

    Any shape, same dtype. F.elu is allowed.
    """
    ### BEGIN SOLUTION
    return torch.where(x > 0, x + 1, torch.exp(torch.clamp(x, max=0)))
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "check_elu_feature_map", "locked": true, "points": 2, "schema_version": 3, "solution": false, "task": false}
check("day08-linear-attention", "elu_feature_map", elu_feature_map, points=2)

# %% nbgrader={"grade": true, "grade_id": "hidden_elu_feature_map", "locked": true, "points": 1, "schema_version": 3, "solution": false, "task": false}
# When your notebook is graded, hidden tests run here: the same checks on fresh random shapes.
### BEGIN HIDDEN TESTS
check("day08-linear-attention", "elu_feature_map", elu_feature_map, hidden=True, points=1)
### END HIDDEN TESTS

# %% [markdown]
# ### Exercise 2: `linear_attention`
#
# Compute $S = \phi(K)^\top V$ and $z$ first, then read them with $\phi(Q)$: nothing of size $L \times L$. Accept any leading dims `(..., L, D)`, $L_q \ne L_k$ and $D_v \ne D$; raise `ValueError` with a clear message for mismatched lengths (`k` and `v`), mismatched head dims (`q` and `k`), different leading dims, or a tensor that is not `(..., L, D)`.
#
# The checks recognise: the normaliser missing, the normaliser without `eps` (a query with $\phi(q) = 0$ gives NaN; the checks use `feature_map=torch.relu`), the `feature_map` argument ignored, a causal sum, an $(L, L)$ tensor (at $L = 4096$), `eps` added after the division, another normaliser (a mean over the keys, a sum over the features), a normaliser of shape $(\dots, L_q)$ where $(\dots, L_q, 1)$ is needed (`phi_q @ z` without `keepdim`), the feature map applied to $v$, `eps` added to the features instead of the normaliser, $q$ scaled by $1/\sqrt d$ (softmax's habit: linear attention has no scale), $\phi(k)$ and $v$ summed separately (an einsum with two position letters, `'...ld,...me->...de'`), `.T` on batched inputs, an input check that rejects $D_v \ne D$, and bad input accepted. `check_qkv` comes back in the causal forms and the Performer; its `causal` argument is for section 2 (causal attention needs $L_q = L_k$): here it stays `False`.

# %% nbgrader={"grade": false, "grade_id": "linear_attention", "locked": false, "schema_version": 3, "solution": true, "task": false}
def check_qkv(q, k, v, causal=False):
    """Raise ValueError unless q (..., Lq, D), k (..., Lk, D), v (..., Lk, Dv) fit together."""
    ### BEGIN SOLUTION
    for name, t in (("q", q), ("k", k), ("v", v)):
        if t.dim() < 2:
            raise ValueError(f"{name} must have shape (..., L, D), got {tuple(t.shape)}")
    if q.shape[-1] != k.shape[-1]:
        raise ValueError(f"q and k need the same head dim, got {tuple(q.shape)} and {tuple(k.shape)}")
    if k.shape[-2] != v.shape[-2]:
        raise ValueError(f"k and v must have the same length, got {tuple(k.shape)} and {tuple(v.shape)}")
    if not q.shape[:-2] == k.shape[:-2] == v.shape[:-2]:
        raise ValueError(f"q, k, v need the same leading dims, got {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}")
    if causal and q.shape[-2] != k.shape[-2]:
        raise ValueError(f"causal attention needs Lq == Lk, got {q.shape[-2]} and {k.shape[-2]}")
    ### END SOLUTION


def linear_attention(q, k, v, feature_map=elu_feature_map, eps: float = 1e-6) -> torch.Tensor:
    """Non-causal linear attention in O(L): out_i = phi(q_i)^T S / (phi(q_i)^T z + eps).

    Args:
        q: (..., Lq, D); k: (..., Lk, D); v: (..., Lk, Dv), the same leading dims, float32/64.
        feature_map: phi, applied to q and k (e.g. elu_feature_map, torch.relu, torch.exp).
        eps: added to the normaliser phi(q_i)^T z, so phi(q_i) = 0 gives 0, not NaN.

    Returns:
        (..., Lq, Dv), the input's dtype. S = phi(K)^T V is (..., D', Dv), z = sum_j phi(k_j);
        never build an (Lq, Lk) matrix.

    Raises ValueError for mismatched shapes. No softmax, no F.scaled_dot_product_attention.
    """
    ### BEGIN SOLUTION
    check_qkv(q, k, v)
    phi_q, phi_k = feature_map(q), feature_map(k)              # (..., Lq, D'), (..., Lk, D')
    S = torch.einsum("...jd,...je->...de", phi_k, v)           # (..., D', Dv)
    z = phi_k.sum(dim=-2)                                      # (..., D')
    numerator = torch.einsum("...id,...de->...ie", phi_q, S)   # (..., Lq, Dv)
    denominator = torch.einsum("...id,...d->...i", phi_q, z)   # (..., Lq)
    return numerator / (denominator[..., None] + eps)
    ### END SOLUTION


# %% [markdown]
# Shown equal to the quadratic form, $(\phi(Q)\phi(K)^\top)V$ row-normalised:

# %%
q, k, v = (torch.randn(2, 4, 50, 16, dtype=torch.float64) for _ in range(3))
weights = elu_feature_map(q) @ elu_feature_map(k).transpose(-2, -1)   # (2, 4, 50, 50)
quadratic = (weights @ v) / (weights.sum(-1, keepdim=True) + 1e-6)
print("max |linear - quadratic| =", (linear_attention(q, k, v) - quadratic).abs().max().item())

# %% nbgrader={"grade": true, "grade_id": "check_linear_attention", "locked": true, "points": 2, "schema_version": 3, "solution": false, "task": false}
check("day08-linear-attention", "linear_attention", linear_attention, points=2)

# %% nbgrader={"grade": true, "grade_id": "hidden_linear_attention", "locked": true, "points": 1, "schema_version": 3, "solution": false, "task": false}
# When your notebook is graded, hidden tests run here: the same checks on fresh random shapes.
### BEGIN HIDDEN TESTS
check("day08-linear-attention", "linear_attention", linear_attention, hidden=True, points=1)
### END HIDDEN TESTS

# %% [markdown]
# ## 2. Causal linear attention is an RNN
#
# With a causal mask, query $i$ sums over $j \le i$ only: $S_i = \sum_{j \le i} \phi(k_j) v_j^\top$ and $z_i = \sum_{j \le i}\phi(k_j)$. These are running sums:
#
# $$S_i = S_{i-1} + \phi(k_i)\, v_i^\top, \qquad z_i = z_{i-1} + \phi(k_i), \qquad \operatorname{out}_i = \frac{\phi(q_i)^\top S_i}{\phi(q_i)^\top z_i + \varepsilon}.$$
#
# A recurrent network with a state of fixed size $D' \times D_v$ (plus $z$): generation costs the same for every new token, with no KV cache growing with $L$ (Katharopoulos et al.: "Transformers are RNNs"). Update first, then read: query $i$ sees its own key.
#
# ### Exercise 3: `causal_linear_attention_recurrent`
#
# One state update per position, as the recurrence reads: a Python loop over the positions is the plain way. The checks compare results, not the loop: prefix sums with `torch.cumsum` (no loop, $O(L D' D_v)$ memory) pass too. The checks recognise: future keys (the non-causal sums), keys $j < i$ only (read before the update), the normaliser missing or without `eps`, `feature_map` ignored, $z$ not starting at zero, a state started from token 0 that the loop then adds again, $S$ and $z$ updated at different times, prefix sums over the features instead of the positions, a state kept as $(D_v, D')$, the output written into `v` (`out = v` is a second name for `v`, not a copy), positions indexed from the front (`x[t]`), a state kept between calls (a module-level cache never reset: a second call on the same inputs differs), and bad input (also $L_q \ne L_k$).

# %% nbgrader={"grade": false, "grade_id": "causal_linear_attention_recurrent", "locked": false, "schema_version": 3, "solution": true, "task": false}
def causal_linear_attention_recurrent(q, k, v, feature_map=elu_feature_map, eps: float = 1e-6) -> torch.Tensor:
    """Causal linear attention as an RNN: for t = 0 .. L-1, S += phi(k_t) v_t^T, z += phi(k_t),
    out_t = phi(q_t)^T S / (phi(q_t)^T z + eps).

    Args:
        q, k: (..., L, D); v: (..., L, Dv) (Lq == Lk), float32/64.

    Returns:
        (..., L, Dv), the input's dtype. Raises ValueError for mismatched shapes.
    """
    ### BEGIN SOLUTION
    check_qkv(q, k, v, causal=True)
    phi_q, phi_k = feature_map(q), feature_map(k)
    S = torch.zeros(*q.shape[:-2], phi_k.shape[-1], v.shape[-1], dtype=q.dtype, device=q.device)
    z = torch.zeros(*q.shape[:-2], phi_k.shape[-1], dtype=q.dtype, device=q.device)
    outs = []
    for t in range(q.shape[-2]):
        S = S + phi_k[..., t, :].unsqueeze(-1) * v[..., t, :].unsqueeze(-2)   # (..., D', Dv)
        z = z + phi_k[..., t, :]                                              # (..., D')
        qt = phi_q[..., t, :]
        num = (qt.unsqueeze(-2) @ S).squeeze(-2)                              # (..., Dv)
        den = (qt * z).sum(-1, keepdim=True)                                  # (..., 1)
        outs.append(num / (den + eps))
    return torch.stack(outs, dim=-2)
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "check_causal_linear_attention_recurrent", "locked": true, "points": 2, "schema_version": 3, "solution": false, "task": false}
check("day08-linear-attention", "causal_linear_attention_recurrent", causal_linear_attention_recurrent, points=2)

# %% nbgrader={"grade": true, "grade_id": "hidden_causal_linear_attention_recurrent", "locked": true, "points": 1, "schema_version": 3, "solution": false, "task": false}
# When your notebook is graded, hidden tests run here: the same checks on fresh random shapes.
### BEGIN HIDDEN TESTS
check("day08-linear-attention", "causal_linear_attention_recurrent", causal_linear_attention_recurrent, hidden=True, points=1)
### END HIDDEN TESTS

# %% [markdown]
# ### Exercise 4: `causal_linear_attention_chunked`
#
# The loop is $L$ small steps: slow in Python, and hard on a GPU. Chunks of $c$ positions do the work in $L / c$ larger steps. Inside chunk $C$, each query needs
#
# - the keys of **earlier chunks**: all summed in the carried state, $\phi(Q_C)\, S$ and $\phi(Q_C)\, z$;
# - the keys of **its own chunk** up to itself: the small quadratic form $\big(\phi(Q_C)\phi(K_C)^\top\big) \odot M$, with $M$ the $c \times c$ lower triangle (diagonal included).
#
# After the chunk, add its keys to the state: $S \mathrel{+}= \phi(K_C)^\top V_C$, $z \mathrel{+}= \sum \phi(K_C)$. The last chunk may be shorter. Time $O(L c D + L D D_v)$: linear in $L$, with big matrix products.
#
# The checks recognise: future keys inside a chunk (the intra-chunk scores not masked, or masked with `triu`), scores masked with `-inf` (softmax's habit: with no `exp` after it, $-\infty \cdot v$ is NaN), the state not carried across chunks ($S$ and $z$, or $z$ alone), the state built from the queries, the state updated before the chunk reads it, a state kept between calls, the normaliser without the chunk's own part, the last short chunk dropped or a mask that assumes full-size chunks, chunks one token short (`end = start + chunk_size - 1`), the normaliser missing or without `eps`, an $(L, L)$ tensor at $L = 4096$, and bad input, also `chunk_size < 1`: raise your own `ValueError` naming `chunk_size` or its value (an error that `range(0, L, 0)` raises by chance is not a check).

# %% nbgrader={"grade": false, "grade_id": "causal_linear_attention_chunked", "locked": false, "schema_version": 3, "solution": true, "task": false}
def causal_linear_attention_chunked(q, k, v, chunk_size: int = 64, feature_map=elu_feature_map,
                                    eps: float = 1e-6) -> torch.Tensor:
    """Causal linear attention chunk by chunk: the same result as the recurrent form.

    Args:
        q, k: (..., L, D); v: (..., L, Dv) (Lq == Lk), float32/64. Any L >= 1: the last chunk may
            be shorter than chunk_size.
        chunk_size: >= 1.

    Returns:
        (..., L, Dv), the input's dtype. Never an (L, L) tensor. Raises ValueError for
        mismatched shapes or chunk_size < 1.
    """
    ### BEGIN SOLUTION
    check_qkv(q, k, v, causal=True)
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    phi_q, phi_k = feature_map(q), feature_map(k)
    S = torch.zeros(*q.shape[:-2], phi_k.shape[-1], v.shape[-1], dtype=q.dtype, device=q.device)
    z = torch.zeros(*q.shape[:-2], phi_k.shape[-1], 1, dtype=q.dtype, device=q.device)
    outs = []
    for start in range(0, q.shape[-2], chunk_size):
        end = min(start + chunk_size, q.shape[-2])
        qc, kc, vc = phi_q[..., start:end, :], phi_k[..., start:end, :], v[..., start:end, :]
        local = torch.tril(qc @ kc.transpose(-2, -1))            # (..., c, c), keys j <= i
        num = qc @ S + local @ vc                                # (..., c, Dv)
        den = qc @ z + local.sum(-1, keepdim=True)               # (..., c, 1)
        outs.append(num / (den + eps))
        S = S + kc.transpose(-2, -1) @ vc                        # carry the state
        z = z + kc.sum(-2).unsqueeze(-1)
    return torch.cat(outs, dim=-2)
    ### END SOLUTION


# %%
q, k, v = (torch.randn(1, 2, 100, 8, dtype=torch.float64) for _ in range(3))
weights = (elu_feature_map(q) @ elu_feature_map(k).transpose(-2, -1)).tril()  # masked quadratic form
masked = (weights @ v) / (weights.sum(-1, keepdim=True) + 1e-6)
recurrent = causal_linear_attention_recurrent(q, k, v)
print("recurrent vs masked quadratic:", (recurrent - masked).abs().max().item())
print("chunked(16) vs recurrent (L = 100, not a multiple):", (causal_linear_attention_chunked(q, k, v, 16) - recurrent).abs().max().item())

# %% nbgrader={"grade": true, "grade_id": "check_causal_linear_attention_chunked", "locked": true, "points": 2, "schema_version": 3, "solution": false, "task": false}
check("day08-linear-attention", "causal_linear_attention_chunked", causal_linear_attention_chunked, points=2)

# %% nbgrader={"grade": true, "grade_id": "hidden_causal_linear_attention_chunked", "locked": true, "points": 1, "schema_version": 3, "solution": false, "task": false}
# When your notebook is graded, hidden tests run here: the same checks on fresh random shapes.
### BEGIN HIDDEN TESTS
check("day08-linear-attention", "causal_linear_attention_chunked", causal_linear_attention_chunked, hidden=True, points=1)
### END HIDDEN TESTS

# %% [markdown]
# ## 3. Performer: random features for the softmax kernel
#
# Can a feature map reproduce softmax itself? The softmax kernel $e^{x \cdot y}$ has no finite feature map, but it has a random one (Choromanski et al., 2021, FAVOR+). For $w \sim \mathcal N(0, I_d)$,
#
# $$\mathbb E_w\!\left[e^{w \cdot x - \|x\|^2/2}\, e^{w \cdot y - \|y\|^2/2}\right] = e^{x \cdot y},$$
#
# so with $m$ draws $w_1..w_m$ stacked in a projection $W$ ($m \times d$), $\phi(x) = \frac{1}{\sqrt m} \exp\!\big(Wx - \|x\|^2/2\big)$ gives $\phi(x) \cdot \phi(y) \approx e^{x\cdot y}$. These features are **positive** (the older $\cos$/$\sin$ features are not, and their normaliser can go negative). Scaling $q$ and $k$ by $d^{-1/4}$ gives $e^{q\cdot k/\sqrt d}$.
#
# **Orthogonal features** lower the variance: draw the $w_i$ in blocks of $d$ exactly orthogonal directions (the $Q$ of a QR decomposition of a Gaussian $d \times d$ matrix; each block is a fresh draw, a new Gaussian matrix and its own QR, so the blocks are independent of each other), then give each row an independent length distributed like the length of a Gaussian vector, $\chi(d)$: the norm of a fresh `torch.randn(d)`. Each $w_i$ alone is still $\mathcal N(0, I)$.
#
# **Stabiliser.** $\exp$ overflows or underflows for large inputs. Subtracting a constant $s$ from the exponent multiplies every feature by $e^{-s}$, which cancels in the normalisation, if it is one constant per query (any per-query factor cancels between numerator and denominator), but for keys it must be **one constant for all keys** of a slice: a per-key constant changes that key's weight.
#
# ### Exercise 5: `orthogonal_random_features`
#
# The checks recognise: rows not orthogonal within a block (iid Gaussian rows where orthogonal ones were asked, $R$ of the QR taken for $Q$, or the norms multiplied into the columns), one block reused for every block, rows left at norm 1, all rows with the same norm (norms are checked against $\chi(d)$'s mean and variance over many draws), one norm shared by every row of a call, squared norms ($|g|^2$, a $\chi^2$ draw, where $|g|$ is meant), features returned in another dtype than float32, $\lfloor m/d \rfloor$ blocks where the last partial block is needed, and features not reproducible from the generator (or not random).

# %% nbgrader={"grade": false, "grade_id": "orthogonal_random_features", "locked": false, "schema_version": 3, "solution": true, "task": false}
def orthogonal_random_features(num_features: int, dim: int, generator: torch.Generator = None) -> torch.Tensor:
    """(num_features, dim) float32 random features: blocks of `dim` orthogonal rows (the last
    block cut to fit), each row's norm drawn independently from chi(dim).

    Every random number comes from `generator` (torch.randn(..., generator=generator)), so the
    same generator state gives the same features.
    """
    ### BEGIN SOLUTION
    blocks = []
    for _ in range(-(-num_features // dim)):
        g = torch.randn(dim, dim, generator=generator, dtype=torch.float64)
        Q, R = torch.linalg.qr(g)
        blocks.append((Q * torch.diagonal(R).sign()).T)                  # dim orthonormal rows
    rows = torch.cat(blocks, dim=0)[:num_features]                       # (m, dim)
    lengths = torch.randn(num_features, dim, generator=generator, dtype=torch.float64).norm(dim=1)
    return (rows * lengths.unsqueeze(1)).float()
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "check_orthogonal_random_features", "locked": true, "points": 2, "schema_version": 3, "solution": false, "task": false}
check("day08-linear-attention", "orthogonal_random_features", orthogonal_random_features, points=2)

# %% nbgrader={"grade": true, "grade_id": "hidden_orthogonal_random_features", "locked": true, "points": 1, "schema_version": 3, "solution": false, "task": false}
# When your notebook is graded, hidden tests run here: the same checks on fresh random shapes.
### BEGIN HIDDEN TESTS
check("day08-linear-attention", "orthogonal_random_features", orthogonal_random_features, hidden=True, points=1)
### END HIDDEN TESTS

# %% [markdown]
# ### Exercise 6: `favor_feature_map`
#
# The checks recognise: features that can go negative, the $-\|x\|^2/2$ term missing, without its $/2$, or with $\|x\|$ where $\|x\|^2$ belongs, $\|x\|^2$ summed over the positions, a stabiliser per key row when `is_query=False`, a stabiliser over the positions (queries or keys), the two branches of `is_query` swapped, one stabiliser for the whole tensor, a stabiliser taken as the max of $w \cdot x$ alone (without the $-\|x\|^2/2$ term), a factor other than $1/\sqrt m$, `x @ projection` untransposed, and no stabiliser (with $\|x\| = 25$ every unstabilised feature underflows to 0).

# %% nbgrader={"grade": false, "grade_id": "favor_feature_map", "locked": false, "schema_version": 3, "solution": true, "task": false}
def favor_feature_map(x: torch.Tensor, projection: torch.Tensor, is_query: bool = False) -> torch.Tensor:
    """Positive random features of the softmax kernel, with the max-stabiliser:

        phi(x)_i = exp(w_i . x - |x|^2 / 2 - s) / sqrt(m),  w_i the rows of projection (m, D),

    s = the max of the exponent over the features of each row when is_query=True, and over all
    rows and features of each (...) slice when is_query=False (keys: one constant for every key).

    Args:
        x: (..., L, D); projection: (m, D), the same dtype.

    Returns:
        (..., L, m), positive. Raises ValueError when x and projection have different D.
    """
    ### BEGIN SOLUTION
    if x.shape[-1] != projection.shape[-1]:
        raise ValueError(f"x has D = {x.shape[-1]} but projection is {tuple(projection.shape)}")
    exponent = x @ projection.transpose(0, 1) - 0.5 * (x ** 2).sum(-1, keepdim=True)  # (..., L, m)
    dims = (-1,) if is_query else (-2, -1)
    s = exponent.amax(dim=dims, keepdim=True)
    return torch.exp(exponent - s) / math.sqrt(projection.shape[0])
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "check_favor_feature_map", "locked": true, "points": 2, "schema_version": 3, "solution": false, "task": false}
check("day08-linear-attention", "favor_feature_map", favor_feature_map, points=2)

# %% nbgrader={"grade": true, "grade_id": "hidden_favor_feature_map", "locked": true, "points": 1, "schema_version": 3, "solution": false, "task": false}
# When your notebook is graded, hidden tests run here: the same checks on fresh random shapes.
### BEGIN HIDDEN TESTS
check("day08-linear-attention", "favor_feature_map", favor_feature_map, hidden=True, points=1)
### END HIDDEN TESTS

# %% [markdown]
# ### Exercise 7: `performer_attention`
#
# Put it together: draw `num_features` orthogonal random features from `generator` once, and use that same $W$ for $q$ and $k$ ($\mathbb E[\phi_W(q)\cdot\phi_W(k)] = e^{q\cdot k}$ holds only with one $W$ on both sides); scale $q$ and $k$ each by $d^{-1/4}$, so that their product carries $1/\sqrt d$ (the symmetric split has the least noise; $q / \sqrt d$ with $k$ unscaled is unbiased too, and passes); map them (queries with `is_query=True`), and use your `linear_attention` with the identity feature map. The output is random, so the checks average 12 draws of 8192 features and compare that average with softmax attention, allowing for the noise of your own draws. They recognise: an average that stays off however many features (a biased estimate), the $1/\sqrt d$ scale missing, squared ($q$ and $k$ each scaled by $d^{-1/2}$) or inverted ($d^{+1/4}$), $v$ scaled too, `orthogonal_random_features` called with its arguments swapped (seen on a first call with 1024 features, where its $(m, m)$ block is still cheap), `generator` ignored (two generator states must give two outputs), different features for $q$ and $k$, `linear_attention`'s default `elu + 1` applied on top, keys stabilised per row, `num_features` ignored, $W$ left in float32 for float64 inputs, $q$ or $k$ scaled in place (`q.mul_(scale)`), output not reproducible from the generator, and bad input.

# %% nbgrader={"grade": false, "grade_id": "performer_attention", "locked": false, "schema_version": 3, "solution": true, "task": false}
def performer_attention(q, k, v, num_features: int = 256, generator: torch.Generator = None) -> torch.Tensor:
    """FAVOR+ approximation of softmax attention softmax(q k^T / sqrt(d)) v, in O(L m d).

    Args:
        q: (..., Lq, D); k: (..., Lk, D); v: (..., Lk, Dv), float32/64.
        num_features: m, the number of random features.
        generator: the source of the random features (same state, same output).

    Returns:
        (..., Lq, Dv), the input's dtype. Raises ValueError for mismatched shapes.
        No softmax, no F.scaled_dot_product_attention.
    """
    ### BEGIN SOLUTION
    check_qkv(q, k, v)
    d = q.shape[-1]
    W = orthogonal_random_features(num_features, d, generator).to(q.dtype)
    scale = d ** -0.25
    phi_q = favor_feature_map(q * scale, W, is_query=True)
    phi_k = favor_feature_map(k * scale, W)
    return linear_attention(phi_q, phi_k, v, feature_map=lambda t: t)
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "check_performer_attention", "locked": true, "points": 2, "schema_version": 3, "solution": false, "task": false}
check("day08-linear-attention", "performer_attention", performer_attention, points=2)

# %% nbgrader={"grade": true, "grade_id": "hidden_performer_attention", "locked": true, "points": 1, "schema_version": 3, "solution": false, "task": false}
# When your notebook is graded, hidden tests run here: the same checks on fresh random shapes.
### BEGIN HIDDEN TESTS
check("day08-linear-attention", "performer_attention", performer_attention, hidden=True, points=1)
### END HIDDEN TESTS

# %% [markdown]
# ### Approximation error as the features grow
#
# The relative error of the output against exact softmax attention, averaged over 20 draws, for orthogonal and iid Gaussian features. It falls roughly like $1/\sqrt m$ (the estimator's variance is $\propto 1/m$). At $d = 16$ the two curves lie within each other's noise: orthogonal features come out below iid ones at some $m$ and above at others. Orthogonality removes the chance of two nearly parallel features, a variance reduction that grows with $d$ (Yu et al., 2016); at this $d$ it is about the size of a 20-draw average's own spread (a few hundredths), so which curve is lower changes from one $m$ to the next.

# %%
g = torch.Generator().manual_seed(0)
q, k, v = (torch.randn(1, 2, 128, 16, dtype=torch.float64, generator=g) * s for s in (0.6, 0.6, 1.0))
exact = F.scaled_dot_product_attention(q, k, v)
scale = q.shape[-1] ** -0.25


def performer_with(W):
    phi_q, phi_k = favor_feature_map(q * scale, W, is_query=True), favor_feature_map(k * scale, W)
    return linear_attention(phi_q, phi_k, v, feature_map=lambda t: t)


def rel(out):
    return ((out - exact).norm() / exact.norm()).item()


sizes = [8, 16, 32, 64, 128, 256, 512]
errors = {"orthogonal": [], "iid": []}
for m in sizes:
    errors["orthogonal"].append(sum(rel(performer_with(orthogonal_random_features(m, 16, g).double())) for _ in range(20)) / 20)
    errors["iid"].append(sum(rel(performer_with(torch.randn(m, 16, generator=g, dtype=torch.float64))) for _ in range(20)) / 20)
for m, o, i in zip(sizes, errors["orthogonal"], errors["iid"]):
    print(f"m = {m:>5}: orthogonal {o:.3f}   iid {i:.3f}")
assert errors["orthogonal"][-1] < errors["orthogonal"][0]
plt.figure(figsize=(5, 3.4))
for name, ys in errors.items():
    plt.loglog(sizes, ys, "o-", label=name)
plt.loglog(sizes, [errors["iid"][0] * (sizes[0] / m) ** 0.5 for m in sizes], "k:", label="∝ 1/√m")
plt.xlabel("number of random features m"); plt.ylabel("relative error vs softmax")
plt.legend(); plt.tight_layout(); plt.show()

# %% [markdown]
# ### Worked example: the causal Performer
#
# A decoder needs causal attention: query $i$ sees the keys $j \le i$ only. With the Performer's features $\phi$, causal softmax attention becomes causal linear attention,
#
# $$\text{out}_i = \frac{\phi(q_i)^\top S_i}{\phi(q_i)^\top z_i + \varepsilon}, \qquad S_i = \sum_{j \le i} \phi(k_j)\, v_j^\top = S_{i-1} + \phi(k_i)\, v_i^\top, \qquad z_i = \sum_{j \le i} \phi(k_j) = z_{i-1} + \phi(k_i):$$
#
# $S_i$ and $z_i$ are prefix sums, the state of your recurrent form (Exercise 3) with $m$ random features in place of $D$. The chunked form (Exercise 4) computes them in $L / c$ big steps: the queries of chunk $C$ read the state of all earlier chunks, $\phi(Q_C)\, S$ and $\phi(Q_C)\, z$, and add the masked $\big(\phi(Q_C)\phi(K_C)^\top\big) \odot M$ of their own chunk. So there is nothing new to write: the course's `performer_attention(q, k, v, num_features, generator, causal=True, chunk_size=64)` maps $q$ and $k$ as before and hands the features to `causal_linear_attention_chunked` with the identity feature map. $O(L m D_v)$ time, an $m \times D_v$ state.
#
# **The keys' stabiliser stays causal.** It is the max over *all* keys of a slice, later ones included, but it is one constant $s$: every $\phi(k_j)$ carries the same factor $e^{-s}$, so the numerator and the denominator of query $i$, both sums over $j \le i$, carry it too and it cancels. A constant per key would reweight the keys, and a running max over $j \le i$ would change the factor inside the prefix sums.
#
# Below, the quadratic causal form $\big(\phi(Q)\phi(K)^\top\big) \odot M$, normalised by its row sums, is built from the library's own features (the same $W$: the same generator seed) and compared with the causal Performer at chunk sizes 1, 16 and 30 (neither divides $L = 100$) and 128 (longer than $L$): they agree to float64 rounding. Against causal softmax attention, the error is the Performer's usual noise for $m$ features, as in the plot above.

# %%
from course.reference import linear_attention as library  # the course's versions, not yours

g = torch.Generator().manual_seed(0)
q, k, v = (torch.randn(2, 100, 16, dtype=torch.float64, generator=g) * s for s in (0.6, 0.6, 1.0))
m, d = 256, q.shape[-1]
W = library.orthogonal_random_features(m, d, torch.Generator().manual_seed(1), dtype=torch.float64)
phi_q = library.favor_feature_map(q * d ** -0.25, W, is_query=True)    # (2, 100, m)
phi_k = library.favor_feature_map(k * d ** -0.25, W)                   # (2, 100, m)
weights = (phi_q @ phi_k.transpose(-2, -1)).tril()                     # (2, 100, 100): keys j <= i
quadratic = (weights @ v) / (weights.sum(-1, keepdim=True) + 1e-6)
for chunk in (1, 16, 30, 128):  # generator seed 1 again: the same W inside
    causal = library.performer_attention(q, k, v, m, torch.Generator().manual_seed(1), causal=True, chunk_size=chunk)
    print(f"chunk {chunk:>3}: max |causal Performer - quadratic causal form| = {(causal - quadratic).abs().max().item():.1e}")
exact = F.scaled_dot_product_attention(q, k, v, is_causal=True)
print(f"relative error against causal softmax attention, m = {m}: {((causal - exact).norm() / exact.norm()).item():.3f}")

# %% [markdown]
# ## 4. Explore: implied attention matrices
#
# Linear attention never builds its attention matrix, but it has one: $A_{ij} = \phi(q_i)\cdot\phi(k_j) / \sum_{j'} \phi(q_i)\cdot\phi(k_{j'})$. The explorer draws it next to softmax attention on the same $q, k$, with the error, for your feature maps: `elu + 1`, or FAVOR+ with $m$ of your orthogonal random features (drag $m$ and watch the matrix sharpen towards softmax). Or switch to *recurrent state*: the $D \times D_v$ state of your recurrent form after $t$ steps, filling up.

# %%
LinearExplorer(elu_feature_map=elu_feature_map, favor_feature_map=favor_feature_map,
               orthogonal_random_features=orthogonal_random_features)

# %% [markdown]
# ## 5. Measure: chunked vs recurrent vs quadratic
#
# The recurrent loop does $L$ tiny steps; the chunked form $L / 64$ big ones; the masked quadratic form $L^2$ work. Sized for a 2-core CPU; the full run, $L$ = 1k…16k, is `python -m course.bench.linear_attention` (targets: chunked at least 10× faster than recurrent at $L = 4096$, and $t(16k)/t(2k) \le 10$).

# %%
torch.set_num_threads(1)  # many small ops: one thread is faster and steadier on a shared CPU
heads, head_dim = 1, 32
lengths = [256, 512, 1024, 2048] if device.type == "cpu" else [1024, 2048, 4096, 8192]
lengths = lengths[:2] if course.being_graded() else lengths  # graded: no points here


def quadratic_causal(q, k, v):
    w = (elu_feature_map(q) @ elu_feature_map(k).transpose(-2, -1)).tril()
    return (w @ v) / (w.sum(-1, keepdim=True) + 1e-6)


rows = []
for L in lengths:
    q, k, v = (torch.randn(1, heads, L, head_dim, device=device) for _ in range(3))
    rows.append((L, median_time(causal_linear_attention_chunked, q, k, v, repeats=5),
                 median_time(causal_linear_attention_recurrent, q, k, v, repeats=1, warmup=0),
                 median_time(quadratic_causal, q, k, v, repeats=5)))
print(f"{'L':>6} {'chunked ms':>11} {'recurrent ms':>13} {'quadratic ms':>13} {'recurrent/chunked':>18}")
for L, tc, tr, tq in rows:
    print(f"{L:>6} {1e3 * tc:>11.2f} {1e3 * tr:>13.1f} {1e3 * tq:>13.2f} {tr / tc:>18.1f}")
plt.figure(figsize=(5.5, 3.6))
for i, name in [(1, "chunked (64)"), (2, "recurrent"), (3, "masked quadratic")]:
    plt.loglog(lengths, [r[i] * 1e3 for r in rows], "o-", label=name)
plt.loglog(lengths, [rows[0][1] * 1e3 * L / lengths[0] for L in lengths], "k--", label="∝ L")
plt.loglog(lengths, [rows[0][3] * 1e3 * (L / lengths[0]) ** 2 for L in lengths], "k:", label="∝ L²")
plt.xticks(lengths, [str(L) for L in lengths]); plt.minorticks_off()
plt.xlabel("sequence length L"); plt.ylabel("time (ms)"); plt.title(f"causal linear attention ({device.type})")
plt.legend(fontsize=8); plt.tight_layout(); plt.show()


# %% [markdown]
# The recurrent loop and the chunked form both grow linearly, but the loop pays Python and small-kernel overhead on every token: the chunked form is many times faster (10x or more from $L \approx 2048$ on a quiet 2-core CPU; the library's fully batched version in the benchmark script, 30-70x). The quadratic form grows as $L^2$ and overtakes both at long $L$; at short $L$ its one big matrix product can win.

# %% [markdown]
# ## 6. Advanced: landmark (Nyström) attention
#
# Linear attention replaces the softmax kernel. Nyström attention (Xiong et al., 2021, *Nyströmformer*) keeps it, and approximates the $L \times L$ softmax matrix through a few **landmarks** instead: $m \ll L$ points that summarise the sequence, here the means of $m$ contiguous segments of the queries ($\tilde Q$, $m \times d$) and of the keys ($\tilde K$). With $\sigma(X) = \operatorname{softmax}(X / \sqrt d)$ along the last axis,
#
# $$\operatorname{softmax}\!\Big(\frac{QK^\top}{\sqrt d}\Big) V \;\approx\; \underbrace{\sigma(Q\tilde K^\top)}_{F:\ L_q \times m}\; \underbrace{\sigma(\tilde Q\tilde K^\top)^{+}}_{A^+:\ m \times m}\; \underbrace{\sigma(\tilde Q K^\top)}_{B:\ m \times L_k}\; V .$$
#
# This is the Nyström method for a matrix $S$ known through some of its rows and columns, $S \approx S_{:,J}\, S_{J,J}^{+}\, S_{J,:}$, with the landmarks in place of the sampled rows $J$. Multiplied **right to left**, $B V$ is $m \times D_v$, $A^+ (BV)$ is $m \times D_v$, $F(A^+BV)$ is $L_q \times D_v$: $O(L m)$ time and memory, nothing $L_q \times L_k$. With $m = L$ every landmark is one token, $F = A = B = $ the softmax matrix $S$, and $S S^+ S V = S V$: exact.
#
# **Segments.** Token $t$ of $L$ belongs to segment $\lfloor t m / L \rfloor$: contiguous segments that cover every token, all of $L/m$ tokens when $m$ divides $L$, otherwise of $\lfloor L/m \rfloor$ or $\lceil L/m \rceil$ tokens (the paper pads $L$ to a multiple of $m$ instead). For $L = 7$, $m = 3$: segments $\{0, 1, 2\}, \{3, 4\}, \{5, 6\}$.
#
# **Pseudo-inverse.** $A$ is small but can be badly conditioned, and an SVD is slow on a GPU; the paper uses an iteration with matrix products only (Razavi et al., 2014), from a start that guarantees convergence:
#
# $$Z_0 = \frac{A^\top}{\|A\|_1\, \|A\|_\infty}, \qquad Z_{j+1} = \tfrac14\, Z_j\big(13 I - A Z_j\,(15 I - A Z_j\,(7 I - A Z_j))\big),$$
#
# with $\|A\|_1$ the largest column sum of $|A|$ and $\|A\|_\infty$ the largest row sum. Since $\sigma_{\max}(A)^2 \le \|A\|_1 \|A\|_\infty$, every eigenvalue of $A Z_0$ lies in $(0, 1]$, where the iteration converges to $A^+$; without the scaling it blows up as soon as $\sigma_{\max}(A) > 1$ by a margin. The paper uses 6 steps: not converged for badly conditioned $A$, which also regularises the approximation.
#
# Here, and only here, `torch.softmax` is allowed: the three kernels are small. Not allowed: `torch.linalg.pinv` and the other inverses or decompositions, `F.scaled_dot_product_attention`, and the course's `course.reference.nystrom`.
#
# ### Exercise 8: `landmarks`
#
# Segment means, vectorised (no Python loop over tokens): `torch.arange(L) * m // L` is every token's segment; a one-hot $(m, L)$ matrix, `index_add_`, or prefix sums all work. Raise `ValueError` unless $1 \le m \le L$, or for an `x` that is not `(..., L, D)`.
#
# The checks recognise: strided samples `x[..., ::L // m, :]` (or the first token of each segment) instead of means, other segments (equal segments of $\lfloor L/m\rfloor$ tokens with the rest dropped or added to the last one, or segments of $\lceil L/m \rceil$ tokens; every hidden draw has an $L$ and $m$ where these differ), segment sums instead of means, every segment divided by $\lfloor L/m \rfloor$ instead of its own count, an index such as `t * L // m` that leaves segments empty, a Python loop over the tokens, a one-hot matrix left in float32, and bad input accepted.

# %% nbgrader={"grade": false, "grade_id": "landmarks", "locked": false, "schema_version": 3, "solution": true, "task": false}
def landmarks(x: torch.Tensor, num_landmarks: int) -> torch.Tensor:
    """The means of m = num_landmarks contiguous segments of the L tokens: (..., L, D) -> (..., m, D).

    Token t belongs to segment floor(t * m / L): segments cover every token, and have L // m or
    L // m + 1 tokens when m does not divide L. m = 1 gives the mean of all tokens, m = L gives x.
    Any leading dims, the input's dtype and device. Raises ValueError unless 1 <= m <= L, or for
    an x that is not (..., L, D). No Python loop over tokens.
    """
    ### BEGIN SOLUTION
    if not isinstance(x, torch.Tensor) or x.dim() < 2:
        raise ValueError(f"x must have shape (..., L, D), got {getattr(x, 'shape', type(x))}")
    L, m = x.shape[-2], num_landmarks
    if not 1 <= m <= L:
        raise ValueError(f"num_landmarks must be in 1..L = {L}, got {m}")
    segment = torch.arange(L, device=x.device) * m // L                                  # (L,)
    onehot = (segment == torch.arange(m, device=x.device)[:, None]).to(x.dtype)           # (m, L)
    return (onehot @ x) / onehot.sum(dim=-1, keepdim=True)                                # (..., m, D)
    ### END SOLUTION


# %%
x = torch.arange(7.0).reshape(7, 1)   # tokens 0..6, one feature each
print(landmarks(x, 3).flatten())      # segments {0,1,2}, {3,4}, {5,6}: means 1, 3.5, 5.5

# %% nbgrader={"grade": true, "grade_id": "check_landmarks", "locked": true, "points": 2, "schema_version": 3, "solution": false, "task": false}
check("day08-linear-attention", "landmarks", landmarks, points=2)

# %% nbgrader={"grade": true, "grade_id": "hidden_landmarks", "locked": true, "points": 1, "schema_version": 3, "solution": false, "task": false}
# When your notebook is graded, hidden tests run here: the same checks on fresh random shapes.
### BEGIN HIDDEN TESTS
check("day08-linear-attention", "landmarks", landmarks, hidden=True, points=1)
### END HIDDEN TESTS

# %% [markdown]
# ### Exercise 9: `iterative_pinv`
#
# The iteration above, for a batch of square matrices `(..., n, n)`: each matrix gets its own $\|A\|_1 \|A\|_\infty$ (the paper's code takes one maximum over the whole batch: not here). `iterations` counts the update steps, so `iterations=0` returns $Z_0$. Raise `ValueError` for a non-square or 1-D `a`, or `iterations < 0`.
#
# The checks compare your $Z_0, Z_1, \dots$ with the float64 iteration on well-conditioned matrices, then compare 12 steps with `torch.linalg.pinv`. They recognise: $Z_0 = A^\top$ without the scaling (at 0 steps it is plainly $A^\top$; later it diverges whenever $\sigma_{\max}(A)$ is above about 2), one scaling for the whole batch, another update (plain Newton–Schulz $Z(2I - AZ)$), `iterations` ignored or one step off, the update's factors in the wrong order, its $1/4$ missing, $AZ$ not recomputed each step, $Z_0$ scaled by another norm or not transposed, `a.T` on a batch of matrices (where `a.transpose(-2, -1)` is meant), `a` changed in place (`z = a.mT; z /= c` divides `a` itself: `.mT` is a view), and bad input accepted. A divergence is reported from where it starts: an unscaled $Z_0$, or a right $Z_0$ with a wrong update.

# %% nbgrader={"grade": false, "grade_id": "iterative_pinv", "locked": false, "schema_version": 3, "solution": true, "task": false}
def iterative_pinv(a: torch.Tensor, iterations: int = 6) -> torch.Tensor:
    """Moore-Penrose pseudo-inverse of each (n, n) matrix of a by the Nyströmformer's iteration.

    Z_0 = A^T / (||A||_1 ||A||_inf), norms per matrix (||A||_1: the largest column sum of |A|,
    ||A||_inf: the largest row sum), then `iterations` steps of
    Z <- 0.25 * Z (13 I - A Z (15 I - A Z (7 I - A Z))).

    a: (..., n, n), float32/64. Returns (..., n, n), the input's dtype. Raises ValueError for a
    non-square or 1-D a, or iterations < 0. Matrix products only: no torch.linalg.pinv, inv,
    solve, lstsq or svd.
    """
    ### BEGIN SOLUTION
    if not isinstance(a, torch.Tensor) or a.dim() < 2 or a.shape[-1] != a.shape[-2]:
        raise ValueError(f"a must be (..., n, n) square matrices, got {getattr(a, 'shape', type(a))}")
    if iterations < 0:
        raise ValueError(f"iterations must be >= 0, got {iterations}")
    norm_1 = a.abs().sum(dim=-2).amax(dim=-1)                    # (...,) largest column sum
    norm_inf = a.abs().sum(dim=-1).amax(dim=-1)                  # (...,) largest row sum
    z = a.transpose(-2, -1) / (norm_1 * norm_inf)[..., None, None]
    eye = torch.eye(a.shape[-1], dtype=a.dtype, device=a.device)
    for _ in range(iterations):
        az = a @ z
        z = 0.25 * z @ (13 * eye - az @ (15 * eye - az @ (7 * eye - az)))
    return z
    ### END SOLUTION


# %%
g = torch.Generator().manual_seed(0)
a = torch.softmax(torch.randn(16, 16, dtype=torch.float64, generator=g) * 2, dim=-1)   # a kernel like A
exact = torch.linalg.pinv(a)
print(f"condition number {torch.linalg.cond(a).item():.0f}")
for n in (0, 2, 4, 6, 8, 10, 14):
    print(f"{n:>2} steps: relative error {((iterative_pinv(a, n) - exact).norm() / exact.norm()).item():.1e}")


def nystrom_step(a, z):
    eye = torch.eye(a.shape[-1], dtype=a.dtype)
    az = a @ z
    return 0.25 * z @ (13 * eye - az @ (15 * eye - az @ (7 * eye - az)))


big = 3 * torch.eye(4, dtype=torch.float64)   # sigma_max = 3: the pseudo-inverse is I / 3
z = big.T.clone()                              # Z_0 = A^T, without 1 / (||A||_1 ||A||_inf)
for n in range(1, 4):
    z = nystrom_step(big, z)
    print(f"unscaled start on 3 I, step {n}: Z[0, 0] = {z[0, 0].item():.2e} (the answer is 0.33)")

# %% nbgrader={"grade": true, "grade_id": "check_iterative_pinv", "locked": true, "points": 2, "schema_version": 3, "solution": false, "task": false}
check("day08-linear-attention", "iterative_pinv", iterative_pinv, points=2)

# %% nbgrader={"grade": true, "grade_id": "hidden_iterative_pinv", "locked": true, "points": 1, "schema_version": 3, "solution": false, "task": false}
# When your notebook is graded, hidden tests run here: the same checks on fresh random shapes.
### BEGIN HIDDEN TESTS
check("day08-linear-attention", "iterative_pinv", iterative_pinv, hidden=True, points=1)
### END HIDDEN TESTS

# %% [markdown]
# ### Exercise 10: `nystrom_attention`
#
# Put it together with your `landmarks` and `iterative_pinv`: $\tilde Q$, $\tilde K$ from $m$ = `num_landmarks` segments, the three kernels $F$, $A$, $B$ (scores scaled by $1/\sqrt d$, softmax along the last axis), `pinv_iterations` steps for $A^+$, multiplied right to left. Accept any leading dims and $L_q \ne L_k$ ($m \le \min(L_q, L_k)$); raise `ValueError` for mismatched shapes (your `check_qkv`) or $m$ outside $1..\min(L_q, L_k)$.
#
# The checks compare with a float64 oracle, check that $m = L$ gives softmax attention (30 pinv steps), and track every allocation at $L = 4096$, $m = 32$. They recognise: strided landmarks, a kernel with its factors swapped ($\sigma(\tilde K \tilde Q^\top)$ for $A$, or the softmax of $B$ taken over the landmarks), the $1/\sqrt d$ scale missing, inverted, applied after the softmax, or $1/\sqrt m$ in its place, key landmarks taken from $q$, $B$ built from the key landmarks, $A^+$ transposed, the pseudo-inverse left out (or $A$ itself used in its place), `pinv_iterations` ignored, a pinv with $Z_0$ unscaled or scaled for the whole batch or another update step, an $(L_q, L_k)$ tensor (e.g. $F A^+ B$ built before multiplying by $V$), and bad input accepted.

# %% nbgrader={"grade": false, "grade_id": "nystrom_attention", "locked": false, "schema_version": 3, "solution": true, "task": false}
def nystrom_attention(q, k, v, num_landmarks: int, pinv_iterations: int = 6) -> torch.Tensor:
    """Nyström approximation of softmax(q k^T / sqrt(d)) v with m = num_landmarks landmarks:

        softmax(Q K~^T / sqrt d) @ pinv(softmax(Q~ K~^T / sqrt d)) @ softmax(Q~ K^T / sqrt d) @ V
              (Lq, m)                     (m, m)                       (m, Lk)          (Lk, Dv)

    with Q~ = landmarks(q, m), K~ = landmarks(k, m), and pinv = iterative_pinv(., pinv_iterations),
    multiplied right to left: O(L m) memory, never an (Lq, Lk) tensor.

    Args:
        q: (..., Lq, D); k: (..., Lk, D); v: (..., Lk, Dv), the same leading dims, float32/64.
        num_landmarks: m, 1 <= m <= min(Lq, Lk).
        pinv_iterations: the steps of iterative_pinv.

    Returns:
        (..., Lq, Dv), the input's dtype. Raises ValueError for mismatched shapes or a bad m.
        torch.softmax is allowed; torch.linalg.pinv and F.scaled_dot_product_attention are not.
    """
    ### BEGIN SOLUTION
    check_qkv(q, k, v)
    if not 1 <= num_landmarks <= min(q.shape[-2], k.shape[-2]):
        raise ValueError(f"num_landmarks must be in 1..min(Lq, Lk) = {min(q.shape[-2], k.shape[-2])}, "
                         f"got {num_landmarks}")
    scale = q.shape[-1] ** -0.5
    q_land, k_land = landmarks(q, num_landmarks), landmarks(k, num_landmarks)           # (..., m, D)
    kernel_f = torch.softmax(q @ k_land.transpose(-2, -1) * scale, dim=-1)              # (..., Lq, m)
    kernel_a = torch.softmax(q_land @ k_land.transpose(-2, -1) * scale, dim=-1)         # (..., m, m)
    kernel_b = torch.softmax(q_land @ k.transpose(-2, -1) * scale, dim=-1)              # (..., m, Lk)
    return kernel_f @ (iterative_pinv(kernel_a, pinv_iterations) @ (kernel_b @ v))      # (..., Lq, Dv)
    ### END SOLUTION


# %%
q, k, v = (torch.randn(2, 3, 12, 8, dtype=torch.float64) for _ in range(3))
full = torch.softmax(q @ k.transpose(-2, -1) / 8 ** 0.5, dim=-1) @ v
for n in (6, 30):
    error = (nystrom_attention(q, k, v, 12, pinv_iterations=n) - full).norm() / full.norm()
    print(f"m = L = 12, {n:>2} pinv steps: relative error against softmax attention {error.item():.1e}")

# %% nbgrader={"grade": true, "grade_id": "check_nystrom_attention", "locked": true, "points": 2, "schema_version": 3, "solution": false, "task": false}
check("day08-linear-attention", "nystrom_attention", nystrom_attention, points=2)

# %% nbgrader={"grade": true, "grade_id": "hidden_nystrom_attention", "locked": true, "points": 1, "schema_version": 3, "solution": false, "task": false}
# When your notebook is graded, hidden tests run here: the same checks on fresh random shapes.
### BEGIN HIDDEN TESTS
check("day08-linear-attention", "nystrom_attention", nystrom_attention, hidden=True, points=1)
### END HIDDEN TESTS

# %% [markdown]
# ### Error against full attention as $m$ grows
#
# Nyström is exact only at $m = L$; below, it is as good as the landmarks summarise their segments. Real sequences are locally smooth (neighbouring tokens look alike), so here $Q$ and $K$ are smoothed random sequences ($L = 256$, $d = 16$, a Gaussian filter 16 tokens wide); the iid curve shows what happens without that structure. Relative error of the output against float64 softmax attention:

# %%
g = torch.Generator().manual_seed(0)
L, d = 256, 16


def smooth_sequence(width=16):
    """(1, 2, L, d) random sequences low-pass filtered along L: neighbours look alike."""
    x = torch.randn(2 * d, 1, L + 8 * width, dtype=torch.float64, generator=g)
    t = torch.arange(-4 * width, 4 * width + 1, dtype=torch.float64)
    kernel = torch.exp(-t ** 2 / (2 * width ** 2))
    y = F.conv1d(x, (kernel / kernel.norm())[None, None])[..., :L]           # (2d, 1, L)
    return y.reshape(1, 2, d, L).transpose(-2, -1)


def rel(out, ref):
    return ((out - ref).norm() / ref.norm()).item()


v = torch.randn(1, 2, L, d, dtype=torch.float64, generator=g)
cases = {"smooth": (0.5 * smooth_sequence(), 0.5 * smooth_sequence()),
         "iid": (torch.randn(1, 2, L, d, dtype=torch.float64, generator=g),
                 torch.randn(1, 2, L, d, dtype=torch.float64, generator=g))}
sizes = [4, 8, 16, 32, 64, 128, 256]
curves = {}
for name, (q, k) in cases.items():
    full = torch.softmax(q @ k.transpose(-2, -1) / d ** 0.5, dim=-1) @ v
    steps = (6, 12) if name == "smooth" else (6,)
    for n in steps:
        curves[f"{name}, {n} pinv steps"] = [rel(nystrom_attention(q, k, v, m, pinv_iterations=n), full)
                                            for m in sizes]
print(f"{'m':>5}" + "".join(f"{name:>24}" for name in curves))
for i, m in enumerate(sizes):
    print(f"{m:>5}" + "".join(f"{ys[i]:>24.3f}" for ys in curves.values()))
assert curves["smooth, 12 pinv steps"][-1] < 1e-2 < curves["smooth, 12 pinv steps"][0]
plt.figure(figsize=(5.5, 3.6))
for name, ys in curves.items():
    plt.loglog(sizes, ys, "o-", label=name)
plt.xticks(sizes, [str(m) for m in sizes]); plt.minorticks_off()
plt.xlabel("landmarks m"); plt.ylabel("relative error vs softmax"); plt.title(f"Nyström, L = {L}")
plt.legend(fontsize=8); plt.tight_layout(); plt.show()

# %% [markdown]
# On smooth sequences the error falls fast with $m$ until the pseudo-inverse limits it: from $m \approx 16$ on (a segment of 16 tokens is about the smoothing width) it stays near 0.02 with 6 pinv steps and 0.001 with 12, because $A$ is badly conditioned and neither is converged; more pinv steps help once the landmarks are good. On iid tokens a segment mean is close to the mean of everything, the softmax matrix is far from low rank, and the error stays large until $m$ nears $L$: Nyström pays off when attention has low-rank structure, as trained models' attention often has. With very few landmarks ($m = 4$) 6 steps even beat 12: a truncated pinv leaves the tiny singular values of $A$ unamplified, a regularisation.
#
# ### Measure: peak memory, Nyström against dense
#
# `peak_memory` (from `course.bench`) tracks every tensor alive during the call. Dense attention holds the $(L, L)$ scores and weights: $O(L^2)$. Nyström holds $F$ ($L \times m$), $B$ ($m \times L$) and $m \times m$ or $m \times D_v$ products: $O(L m)$. Float32, one head, $d = 32$, $m = 32$:

# %%
from course.bench import peak_memory


def dense_attention(q, k, v):
    return torch.softmax(q @ k.transpose(-2, -1) / q.shape[-1] ** 0.5, dim=-1) @ v


m, head_dim = 32, 32
lengths = [256, 512, 1024, 2048] if device.type == "cpu" else [1024, 2048, 4096, 8192]
rows = []
for L in lengths:
    q, k, v = (torch.randn(1, 1, L, head_dim, device=device) for _ in range(3))
    rows.append((L, peak_memory(nystrom_attention, q, k, v, m), peak_memory(dense_attention, q, k, v)))
print(f"{'L':>6} {'nystrom KiB':>12} {'dense KiB':>10} {'dense/nystrom':>14}")
for L, pn, pd in rows:
    print(f"{L:>6} {pn / 1024:>12.0f} {pd / 1024:>10.0f} {pd / pn:>14.1f}")
assert rows[-1][1] / rows[0][1] < 1.5 * lengths[-1] / lengths[0] < rows[-1][2] / rows[0][2]
plt.figure(figsize=(5.5, 3.6))
plt.loglog(lengths, [r[1] / 2**20 for r in rows], "o-", label=f"Nyström (m = {m})")
plt.loglog(lengths, [r[2] / 2**20 for r in rows], "o-", label="dense softmax")
plt.loglog(lengths, [rows[0][1] / 2**20 * L / lengths[0] for L in lengths], "k--", label="∝ L")
plt.loglog(lengths, [rows[0][2] / 2**20 * (L / lengths[0]) ** 2 for L in lengths], "k:", label="∝ L²")
plt.xticks(lengths, [str(L) for L in lengths]); plt.minorticks_off()
plt.xlabel("sequence length L"); plt.ylabel("peak memory (MiB)"); plt.title(f"peak memory ({device.type})")
plt.legend(fontsize=8); plt.tight_layout(); plt.show()

# %% [markdown]
# Nyström's peak grows linearly in $L$ (doubling $L$ doubles it), dense attention's quadratically: at $L = 2048$ the dense scores alone are $2048^2 \times 4$ bytes = 16 MiB, and two such tensors are alive at once (scores and weights).

# %% [markdown]
# ## 7. Recap
#
# - A feature map $\phi$ with $\operatorname{sim}(q, k) = \phi(q)\cdot\phi(k)$ turns attention into $\phi(Q)(\phi(K)^\top V)$ with the normaliser $\phi(Q) z + \varepsilon$: $O(L)$ instead of $O(L^2)$, the same numbers as the quadratic form.
# - $\phi$ must be positive, and the normaliser needs its $\varepsilon$.
# - Causal linear attention is an RNN with a $D' \times D_v$ state; the chunked form computes it with big matrix products: masked quadratic inside a chunk, state carried between chunks.
# - FAVOR+: positive random features $\exp(Wx - \|x\|^2/2)/\sqrt m$ estimate the softmax kernel without bias; orthogonal blocks with $\chi(d)$ norms lower the variance; a max-stabiliser per query, one per key slice.
# - The causal Performer is causal linear attention on these features: prefix sums $S_i$, $z_i$, computed chunk by chunk; the keys' one stabiliser per slice cancels in each prefix.
# - Nyström: $m$ segment-mean landmarks give $F A^+ B V$ with $F$ $(L_q, m)$, $A$ $(m, m)$, $B$ $(m, L_k)$, multiplied right to left: $O(Lm)$ memory; exact at $m = L$; the pseudo-inverse by matrix products from $Z_0 = A^\top / (\|A\|_1 \|A\|_\infty)$.
#
# ## Further reading
#
# - Katharopoulos et al. (2020), *Transformers are RNNs: Fast Autoregressive Transformers with Linear Attention*.
# - Choromanski et al. (2021), *Rethinking Attention with Performers* (FAVOR+, orthogonal random features).
# - Yu et al. (2016), *Orthogonal Random Features*: the chi-distributed norms.
# - Xiong et al. (2021), *Nyströmformer: A Nyström-Based Algorithm for Approximating Self-Attention*; Razavi et al. (2014), the pseudo-inverse iteration.
# - Qin et al. (2022), *The Devil in Linear Transformer*, and Yang et al. (2024), *Gated Linear Attention* (chunked training, the `flash-linear-attention` kernels: read them next).
#
# **Next: day 9, selective scans.** A state updated per step, with a decay chosen by the input: Mamba.
