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
# # Day 5 · Sparse attention patterns that really save memory
#
# [Open in Colab](https://colab.research.google.com/github/attention-from-scratch/attention-from-scratch/blob/main/exercises/day05-sparse/day05-sparse.ipynb)
#
# **What you will build.**
#
# 1. Five mask builders, each an `(L, L)` bool tensor with True = may attend, built without a Python loop over positions: `sliding_window_mask`, `strided_mask` (Sparse Transformer), `global_local_mask` (Longformer), `random_mask` (BigBird) and `block_sparse_mask`;
# 2. `mask_density(mask)` and `layers_to_full_reach(mask)`: how much of the dense work a pattern does, and how many stacked layers it takes until every token can influence every other;
# 3. `sliding_window_attention(q, k, v, window, causal=False)` and `chunked_attention(q, k, v, chunk_size, overlap)`: attention that never builds the $L \times L$ matrix, in $O(L \cdot w)$ memory.
#
# 4. Advanced: learned sparsity, `topk_gated_attention(q, k, v, gate_scores, k_keep)` and `adaptive_window_attention(q, k, v, widths, causal=True)`; and feature-wise attention over `(batch, columns, seq, d)` inputs, `ColumnwiseAttention(num_columns, d, num_heads, shared=True)`, measured against flattening the columns into the sequence.
#
# Then you explore the patterns, and measure the memory and time of your sliding window against dense masked attention.
#
# **Prerequisites.** Day 1 (attention), day 2 (boolean masks, True = may attend), and for exercise 12 day 3 (multi-head attention: splitting the features into heads and merging them back). Broadcasting, `torch.arange`, `tril`/`triu`, indexing with index tensors.
# **Time.** About 3 hours.
#
# **How this notebook works.** Replace each `raise NotImplementedError()` with your code and run the check cell below it: ✓ or ✗ per check, and for a ✗ the name of the mistake and a hint. Grading reruns the same checks, and hidden ones draw new random sizes.
#
# **Not allowed inside your functions:** the course's own `course.reference.sparse` (the library version for later days), and, in the two attention functions, `F.scaled_dot_product_attention` and `course.reference.masks.attention` (they build the full matrix). `torch.softmax` is fine today.

# %% nbgrader={"grade": false, "grade_id": "setup", "locked": true, "schema_version": 3, "solution": false, "task": false}
import math
import time

import matplotlib.pyplot as plt
import torch
import torch.nn.functional as F

import course
from course.reference.masks import attention as dense_attention
from course.bench import median_time, peak_memory
from course.explore.sparse import PatternExplorer
from course.reference.sparse import format_mask
from grader import check

device = course.get_device()
course.seed_everything(0)
print(course.describe_device())

# %% [markdown]
# ## 1. Which pairs are worth computing?
#
# Dense attention scores every query against every key: $L^2$ pairs. At $L = 16384$ that is 268 million scores per head, a gigabyte in float32. Most of them get almost no weight. A sparse pattern picks, in advance, the pairs that are computed. A mask $M \in \{0, 1\}^{L \times L}$ says which: $M_{ij} = 1$ when query $i$ may attend key $j$,
#
# $$\operatorname{out}_i = \sum_{j:\, M_{ij}} \frac{e^{s_{ij}}}{\sum_{j':\, M_{ij'}} e^{s_{ij'}}}\, v_j, \qquad s_{ij} = \frac{q_i \cdot k_j}{\sqrt d}.$$
#
# A mask only saves memory if the masked pairs are never *computed*: a dense `(L, L)` matrix with $-\infty$ in it costs the same as no mask at all. The exercises of this section build the patterns; section 4 computes only their pairs.
#
# The patterns of the papers:
#
# | pattern | query $i$ sees keys | from |
# |---|---|---|
# | sliding window, causal | $i - w + 1 \le j \le i$ ($w$ keys) | Mistral |
# | sliding window, symmetric | $\lvert i - j\rvert \le \lfloor w/2 \rfloor$ | Longformer |
# | strided | $j \bmod s = 0$, or $\lvert i - j\rvert \le \lfloor w/2 \rfloor$ | Sparse Transformer |
# | global + local | the window, plus every global token; global tokens see everything | Longformer |
# | random | $r$ keys drawn at random per query | BigBird |
# | block sparse | whole $b \times b$ blocks, chosen by a block layout | BigBird, Sparse Transformer kernels |
#
# Positions count from 0. Here are the library's versions at $L = 8$ (█ = may attend; row $i$ is query $i$):

# %%
import course.reference.sparse as library  # only to look at: your functions must not call it

print("sliding window 4, symmetric (|i - j| <= 2)      causal (keys i-3 .. i)")
for left, right in zip(format_mask(library.sliding_window_mask(8, 4)).splitlines(),
                       format_mask(library.sliding_window_mask(8, 4, causal=True)).splitlines()):
    print(f"   {left}                                        {right}")
print("\nstrided, stride 3, local window 1: columns 0, 3, 6 and the diagonal")
print(format_mask(library.strided_mask(8, 3, 1)))


# %% [markdown]
# ### Building masks without loops
#
# A loop over `i` and `j` costs $L^2$ Python steps: 268 million at $L = 16384$, minutes. Build the whole mask at once instead. Two tools do almost everything:
#
# - **diagonals.** `torch.ones(L, L, dtype=torch.bool).tril(a).triu(-b)` keeps the diagonals $-b \ldots a$, that is $i - b \le j \le i + a$. This is the fastest: no integer $(L, L)$ tensor is ever made (the tempting `(i[:, None] - j[None, :]).abs()` makes one, 2 GB of int64 at $L = 16384$). The in-place forms `tril_` and `triu_` save two more $(L, L)$ copies: at $L = 16384$ each copy is 256 MB of memory traffic.
# - **broadcasting and slicing.** `torch.arange(L) % stride == 0` is an `(L,)` row; OR-ing it with an `(L, L)` mask applies it to every query. Writing into the mask you already have, `mask[:, ::stride] = True`, does the same without a new $(L, L)$ tensor.
#
# ### Exercise 1: `sliding_window_mask`
#
# The checks recognise: a window one key too wide or too narrow ($w$ vs $w + 1$ keys), $w$ keys on each side instead of $\lfloor w/2 \rfloor$, a symmetric window that reaches further on one side, `causal` ignored or looking ahead, a causal window of only $\lfloor w/2 \rfloor$ keys back (the symmetric half-width), a causal window when `causal=False`, no `ValueError` for `window < 1` or `L < 1`, a non-bool mask, and a Python loop over positions (the checks count the Python lines your builder runs at $L = 64$ and $L = 1024$).

# %% nbgrader={"grade": false, "grade_id": "sliding_window_mask", "locked": false, "schema_version": 3, "solution": true, "task": false}
def sliding_window_mask(L: int, window: int, causal: bool = False) -> torch.Tensor:
    """The sliding-window mask: (L, L) bool, True = query i may attend key j.

    Args:
        L: sequence length, >= 1.
        window: >= 1. causal=True: query i sees keys i-window+1 .. i (window keys, Mistral's
            convention). causal=False: keys with |i - j| <= window // 2 (Longformer's window // 2
            on each side, so an even window is the same as the odd one below it).
        causal: see above.

    Returns:
        (L, L) torch.bool. Near the ends the window is cut: query 0 has no keys before it.

    Raises ValueError if window < 1 or L < 1. No Python loop over positions.
    """
    ### BEGIN SOLUTION
    if L < 1 or window < 1:
        raise ValueError(f"need L >= 1 and window >= 1, got L={L}, window={window}")
    ones = torch.ones(L, L, dtype=torch.bool)
    if causal:
        return ones.tril_(0).triu_(-(window - 1))  # diagonals -(window-1) .. 0: keys i-window+1 .. i
    half = window // 2
    return ones.tril_(half).triu_(-half)        # diagonals -half .. half: |i - j| <= half
    ### END SOLUTION


# %%
print(format_mask(sliding_window_mask(6, 3, causal=True)))  # 3 keys each: i-2, i-1, i

# %% nbgrader={"grade": true, "grade_id": "check_sliding_window_mask", "locked": true, "points": 2, "schema_version": 3, "solution": false, "task": false}
check("day05-sparse", "sliding_window_mask", sliding_window_mask, points=2)

# %% nbgrader={"grade": true, "grade_id": "hidden_sliding_window_mask", "locked": true, "points": 1, "schema_version": 3, "solution": false, "task": false}
# When your notebook is graded, hidden tests run here: the same checks on fresh random shapes.
### BEGIN HIDDEN TESTS
check("day05-sparse", "sliding_window_mask", sliding_window_mask, hidden=True, points=1)
### END HIDDEN TESTS

# %% [markdown]
# ### Exercise 2: `strided_mask`
#
# The Sparse Transformer's strided pattern: every query sees its neighbourhood, and a few *summary* columns $j = 0, s, 2s, \ldots$ that every query can read. With $s \approx \sqrt L$ each query sees about $2\sqrt L$ keys.
#
# The checks recognise: summary columns counted from 1 ($s-1, 2s-1, \ldots$ or without column 0), summary rows instead of columns, $(i - j) \bmod s = 0$ instead of $j \bmod s = 0$, a missing local band or missing summary columns, the band AND the summary columns (`&`) instead of OR (`|`), a local band off by one on each side (the visible check has an even `local_window`: 4 gives 2 keys on each side, not $(4 - 1) // 2 = 1$) or one-sided (causal), no `ValueError` for `stride > L`, `stride < 1` or `local_window < 1`, and a Python loop over positions.

# %% nbgrader={"grade": false, "grade_id": "strided_mask", "locked": false, "schema_version": 3, "solution": true, "task": false}
def strided_mask(L: int, stride: int, local_window: int) -> torch.Tensor:
    """The strided mask: (L, L) bool, True where j % stride == 0 (the summary columns, the same
    for every query) or |i - j| <= local_window // 2 (the local band).

    Raises ValueError if stride < 1, stride > L or local_window < 1. No Python loop over positions.
    """
    ### BEGIN SOLUTION
    if not 1 <= stride <= L:
        raise ValueError(f"stride must be in 1 .. L={L}, got {stride}")
    if local_window < 1:
        raise ValueError(f"local_window must be >= 1, got {local_window}")
    half = local_window // 2
    mask = torch.ones(L, L, dtype=torch.bool).tril_(half).triu_(-half)  # (L, L): the local band
    mask[:, ::stride] = True                                             # columns 0, stride, 2*stride, ...
    return mask
    ### END SOLUTION


# %%
print(format_mask(strided_mask(10, 4, 3)))

# %% nbgrader={"grade": true, "grade_id": "check_strided_mask", "locked": true, "points": 2, "schema_version": 3, "solution": false, "task": false}
check("day05-sparse", "strided_mask", strided_mask, points=2)

# %% nbgrader={"grade": true, "grade_id": "hidden_strided_mask", "locked": true, "points": 1, "schema_version": 3, "solution": false, "task": false}
# When your notebook is graded, hidden tests run here: the same checks on fresh random shapes.
### BEGIN HIDDEN TESTS
check("day05-sparse", "strided_mask", strided_mask, hidden=True, points=1)
### END HIDDEN TESTS

# %% [markdown]
# ### Exercise 3: `global_local_mask`
#
# Longformer adds a few *global* tokens (a `[CLS]` token, the question in question answering) to the sliding window. A global token attends to every position (its row is all True), and every position attends to it (its column is all True). Two layers then connect any pair: $i \to g \to j$.
#
# The checks recognise: global tokens that attend everywhere but are not attended (rows only), or the reverse (columns only), a window off by one, causal, or with $w$ keys on each side, no `ValueError` for an index outside $[0, L)$ (a negative one too: torch's indexing would wrap $-1$ to $L - 1$) or `window < 1`, an empty `global_idx` that crashes, and a Python loop over positions. `global_idx` may be a list or a LongTensor, and may be empty: `torch.as_tensor(global_idx, dtype=torch.long)` turns all three into a LongTensor (`torch.tensor([])` alone is float, and indexing with it fails).

# %% nbgrader={"grade": false, "grade_id": "global_local_mask", "locked": false, "schema_version": 3, "solution": true, "task": false}
def global_local_mask(L: int, window: int, global_idx) -> torch.Tensor:
    """sliding_window_mask(L, window) (symmetric) plus every row and every column of the
    global tokens: (L, L) bool.

    Args:
        global_idx: the global positions, a list of ints or a 1-D LongTensor (may be empty),
            each in [0, L).

    Raises ValueError for an index outside [0, L) or window < 1. No Python loop over positions.
    """
    ### BEGIN SOLUTION
    index = torch.as_tensor(global_idx, dtype=torch.long).reshape(-1)
    if ((index < 0) | (index >= L)).any():
        raise ValueError(f"global_idx must be in [0, L={L}), got {index.tolist()}")
    mask = sliding_window_mask(L, window)
    mask[index, :] = True  # global tokens attend everywhere
    mask[:, index] = True  # and everyone attends them
    return mask
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "check_global_local_mask", "locked": true, "points": 2, "schema_version": 3, "solution": false, "task": false}
check("day05-sparse", "global_local_mask", global_local_mask, points=2)

# %% nbgrader={"grade": true, "grade_id": "hidden_global_local_mask", "locked": true, "points": 1, "schema_version": 3, "solution": false, "task": false}
# When your notebook is graded, hidden tests run here: the same checks on fresh random shapes.
### BEGIN HIDDEN TESTS
check("day05-sparse", "global_local_mask", global_local_mask, hidden=True, points=1)
### END HIDDEN TESTS

# %% [markdown]
# ### Exercise 4: `random_mask`
#
# BigBird adds $r$ random keys per query. Exactly $r$ *distinct* keys, uniform, drawn from the `generator` you are given, so the same generator state gives the same mask (a model must see the same pattern at every step).
#
# The simple way: give each pair a random score and keep the $r$ best per row, `torch.rand(L, L, generator=g).argsort(-1)[:, :r]`, then scatter True there. It is correct, and costs $O(L^2 \log L)$. **Floyd's algorithm** draws $r$ distinct numbers from $0..L-1$ in $r$ steps: for $t = L - r, \ldots, L - 1$, draw $x$ uniform in $0..t$, $t$ included (`(torch.rand(L, generator=g) * (t + 1)).long()`); keep $x$ if it is new, else keep $t$ (new for sure). Done for all rows at once, it is a loop over $r$, not over positions.
#
# The checks recognise: rows with other than $r$ keys (drawn with replacement), masks that change for the same generator state (the global random state was used), masks that do not change at all, the same keys for every query, keys drawn per key column instead of per query, keys that are not uniform (over 20 masks every key and every offset $j - i$ must turn up about equally often, and with $r = 1$ every key must turn up: Floyd's $x$ drawn from $0..t-1$ never picks key $L - 1$), no `ValueError` for $r > L$ or $r < 0$, and a Python loop over positions.

# %% nbgrader={"grade": false, "grade_id": "random_mask", "locked": false, "schema_version": 3, "solution": true, "task": false}
def random_mask(L: int, num_random: int, generator: torch.Generator) -> torch.Tensor:
    """(L, L) bool with exactly num_random distinct keys per query, uniform without replacement,
    every random number drawn from `generator` (same state, same mask).

    Raises ValueError unless 0 <= num_random <= L. No Python loop over positions.
    """
    ### BEGIN SOLUTION
    if not 0 <= num_random <= L:
        raise ValueError(f"num_random must be in 0 .. L={L}, got {num_random}")
    mask = torch.zeros(L, L, dtype=torch.bool)
    rows = torch.arange(L)
    for top in range(L - num_random, L):  # Floyd's algorithm, every row at once
        pick = torch.randint(0, top + 1, (L,), generator=generator)  # uniform in 0 .. top
        taken = mask[rows, pick]
        mask[rows, torch.where(taken, top, pick)] = True             # `top` is new for sure
    return mask
    ### END SOLUTION


# %%
print(format_mask(random_mask(8, 2, torch.Generator().manual_seed(0))))

# %% nbgrader={"grade": true, "grade_id": "check_random_mask", "locked": true, "points": 2, "schema_version": 3, "solution": false, "task": false}
check("day05-sparse", "random_mask", random_mask, points=2)

# %% nbgrader={"grade": true, "grade_id": "hidden_random_mask", "locked": true, "points": 1, "schema_version": 3, "solution": false, "task": false}
# When your notebook is graded, hidden tests run here: the same checks on fresh random shapes.
### BEGIN HIDDEN TESTS
check("day05-sparse", "random_mask", random_mask, hidden=True, points=1)
### END HIDDEN TESTS

# %% [markdown]
# ### Exercise 5: `block_sparse_mask`
#
# Hardware likes blocks: a GPU kernel computes a whole $64 \times 64$ tile or skips it. A block-sparse pattern is a small bool `layout` of shape $(n_b, n_b)$, $n_b = \lceil L / b \rceil$; entry $(B_i, B_j)$ switches on every pair with $i$ in query block $B_i$ and $j$ in key block $B_j$: $M_{ij} = \text{layout}[\lfloor i/b \rfloor, \lfloor j/b \rfloor]$. The last block may stick out past $L$: crop it.
#
# The checks recognise: the layout transposed, tiled (`repeat`) instead of expanded (`repeat_interleave`), key columns indexed without `// block_size`, not cropped to $L$ or cropped from the wrong end, a valid layout rejected ($n_b = \lceil L / b \rceil$, not $\lfloor L / b \rfloor$), no `ValueError` for a layout of the wrong shape or `block_size < 1`, and a Python loop over positions.

# %% nbgrader={"grade": false, "grade_id": "block_sparse_mask", "locked": false, "schema_version": 3, "solution": true, "task": false}
def block_sparse_mask(L: int, block_size: int, layout: torch.Tensor) -> torch.Tensor:
    """(L, L) bool: mask[i, j] = layout[i // block_size, j // block_size].

    Args:
        layout: (nb, nb) bool with nb = ceil(L / block_size); rows are query blocks, columns
            key blocks.

    Raises ValueError for block_size < 1 or a layout of another shape. No Python loop over positions.
    """
    ### BEGIN SOLUTION
    if block_size < 1:
        raise ValueError(f"block_size must be >= 1, got {block_size}")
    nb = math.ceil(L / block_size)
    if tuple(layout.shape) != (nb, nb):
        raise ValueError(f"layout must be ({nb}, {nb}) for L={L}, block_size={block_size}, "
                         f"got {tuple(layout.shape)}")
    tokens = layout.repeat_interleave(block_size, dim=0).repeat_interleave(block_size, dim=1)
    return tokens[:L, :L]  # (nb * block_size, nb * block_size) cropped to (L, L)
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "check_block_sparse_mask", "locked": true, "points": 2, "schema_version": 3, "solution": false, "task": false}
check("day05-sparse", "block_sparse_mask", block_sparse_mask, points=2)

# %% nbgrader={"grade": true, "grade_id": "hidden_block_sparse_mask", "locked": true, "points": 1, "schema_version": 3, "solution": false, "task": false}
# When your notebook is graded, hidden tests run here: the same checks on fresh random shapes.
### BEGIN HIDDEN TESTS
check("day05-sparse", "block_sparse_mask", block_sparse_mask, hidden=True, points=1)
### END HIDDEN TESTS

# %% [markdown]
# ## 2. Density and reach
#
# **Density** is the fraction of pairs a pattern computes: $\lvert M \rvert / L^2$. A window of $w$ keys has density about $w / L$.
#
# **Reach.** A sparse layer mixes information only along its mask, but layers stack. After one layer, query $i$ holds information from the keys it attends. After two, from the keys *those* positions attended, and so on. Each position also keeps its own state (the residual stream), so one layer is $A = M \lor I$ and $n$ layers are the boolean power
#
# $$R_n = A^n, \qquad (R_{n+1})_{ij} = \bigvee_m A_{im} \land (R_n)_{mj}.$$
#
# In float arithmetic: `(A.float() @ R.float()) > 0` (torch has no matrix product of bool tensors). `layers_to_full_reach(mask)` is the least $n$ with $R_n$ all True. A symmetric window of half-width $h$ needs about $(L - 1)/h$ layers; a global token needs 2. A causal mask never gets there (no future key reaches the past), and neither does a pattern split into separate blocks: once $R_{n+1} = R_n$ nothing grows any more, so return `None`. That test is sure to fire only because $A$ includes $I$: then the reach only grows, and at most $L - 1$ layers are ever needed. Without $I$ it can cycle instead (on a ring, query $i$ seeing key $i - 1$, the reach moves one step round per layer) and a `while` loop never ends.
#
# Tiny example: $L = 4$, symmetric window 2 ($h = 1$). $R_1$ reaches one neighbour, $R_2$ two, $R_3$ three: query 0 hears key 3 after 3 layers, so the answer is 3.
#
# ### Exercise 6: `mask_density` and Exercise 7: `layers_to_full_reach`
#
# The checks recognise: a count instead of a fraction (or per row, or over one side squared), the density of the first row only (`mask[0]`), a mean over one dim that leaves several numbers for `.item()`, the fraction of False entries, integer division, float16 rounding, `mean()` of a bool tensor, a 0-d tensor instead of a Python float; reach through the mask alone without $I$ (it fails on masks without their diagonal), a loop that never stops (stopped after 10 s: no exit when full reach never happens, or a reach without $I$ that cycles), a matrix product of bool tensors, the number of squarings $R \leftarrow R R$ counted instead of the layers (from 0 or from 1), a layer count one off, and a number where the answer is `None`.

# %% nbgrader={"grade": false, "grade_id": "mask_density", "locked": false, "schema_version": 3, "solution": true, "task": false}
def mask_density(mask: torch.Tensor) -> float:
    """The fraction of True entries of a bool mask of any shape, as a Python float in [0, 1]."""
    ### BEGIN SOLUTION
    return mask.sum().item() / mask.numel()
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "check_mask_density", "locked": true, "points": 2, "schema_version": 3, "solution": false, "task": false}
check("day05-sparse", "mask_density", mask_density, points=2)

# %% nbgrader={"grade": true, "grade_id": "hidden_mask_density", "locked": true, "points": 1, "schema_version": 3, "solution": false, "task": false}
# When your notebook is graded, hidden tests run here: the same checks on fresh random shapes.
### BEGIN HIDDEN TESTS
check("day05-sparse", "mask_density", mask_density, hidden=True, points=1)
### END HIDDEN TESTS

# %% nbgrader={"grade": false, "grade_id": "layers_to_full_reach", "locked": false, "schema_version": 3, "solution": true, "task": false}
def layers_to_full_reach(mask: torch.Tensor):
    """The least n >= 1 such that, through n stacked layers of `mask` (each position also keeping
    its own state), information from every key reaches every query; None if that never happens.

    Args:
        mask: (L, L) bool, True = query i attends key j (it may lack its diagonal).

    Returns:
        An int n >= 1, or None.
    """
    ### BEGIN SOLUTION
    L = mask.shape[-1]
    step = (mask | torch.eye(L, dtype=torch.bool)).float()  # one layer, keeping each own state
    reach, layers = step > 0, 1
    while not reach.all():
        grown = (step @ reach.float()) > 0  # i hears j if i attends some m that has heard j
        if torch.equal(grown, reach):
            return None                     # nothing new: it never will be
        reach, layers = grown, layers + 1
    return layers
    ### END SOLUTION


# %%
print(mask_density(sliding_window_mask(1000, 64)), "≈ 65 / 1000")
print(layers_to_full_reach(sliding_window_mask(4, 2)), layers_to_full_reach(sliding_window_mask(8, 4, causal=True)))  # 3, None

# %% nbgrader={"grade": true, "grade_id": "check_layers_to_full_reach", "locked": true, "points": 2, "schema_version": 3, "solution": false, "task": false}
check("day05-sparse", "layers_to_full_reach", layers_to_full_reach, points=2)

# %% nbgrader={"grade": true, "grade_id": "hidden_layers_to_full_reach", "locked": true, "points": 1, "schema_version": 3, "solution": false, "task": false}
# When your notebook is graded, hidden tests run here: the same checks on fresh random shapes.
### BEGIN HIDDEN TESTS
check("day05-sparse", "layers_to_full_reach", layers_to_full_reach, hidden=True, points=1)
### END HIDDEN TESTS

# %% [markdown]
# ## 3. Explore: patterns, density and reach
#
# The explorer draws *your* builders. Pick a pattern and its parameters; the first panel is the mask, the others are $R_1, R_2, \ldots$, lit where key $j$'s information has reached query $i$. Things to try: the causal window never fills the upper triangle; one global token fills everything in 2 layers; a few random keys spread information in $O(\log L)$ layers, but a key that nobody picked is never heard; the strided pattern's summary columns are highways.

# %%
PatternExplorer(sliding_window_mask=sliding_window_mask, strided_mask=strided_mask,
                global_local_mask=global_local_mask, random_mask=random_mask,
                block_sparse_mask=block_sparse_mask, mask_density=mask_density,
                layers_to_full_reach=layers_to_full_reach)

# %% [markdown]
# The same numbers for every pattern at $L = 256$, with $w = 16$, stride 16 and one global token:

# %%
L, w = 256, 16
g = torch.Generator().manual_seed(0)
nb = L // 16
patterns = {
    "sliding window (symmetric)": sliding_window_mask(L, w),
    "sliding window (causal)": sliding_window_mask(L, w, causal=True),
    "strided": strided_mask(L, 16, w),
    "global + local": global_local_mask(L, w, [0]),
    "random (4 keys)": random_mask(L, 4, g),
    "block sparse (diagonal blocks)": block_sparse_mask(L, 16, torch.eye(nb, dtype=torch.bool)),
    "BigBird (global + local + random)": global_local_mask(L, w, [0]) | random_mask(L, 4, g),
}
print(f"{'pattern':>34} {'density':>8} {'layers to full reach':>21}")
for name, mask in patterns.items():
    print(f"{name:>34} {mask_density(mask):>8.1%} {str(layers_to_full_reach(mask)):>21}")


# %% [markdown]
# ## 4. Attention that never builds the $L \times L$ matrix
#
# Cut the queries into blocks of $b$ consecutive positions. A query block $[s, e)$ under a window that reaches `before` keys back and `after` keys ahead only ever needs the keys $[s - \text{before}, e + \text{after})$, clipped to $[0, L)$. So each block computes a $b \times (b + \text{before} + \text{after})$ score tile, masks the pairs outside each query's own window (the band inside the tile), and takes the softmax and the weighted sum there. Over all blocks that is $O(L \cdot (b + w))$ scores, never $L^2$; with $b \approx w$ it is $O(L \cdot w)$.
#
# ```
# keys →      s-before        s            e        e+after
# query block [s, e):   [ band ][ ■ ■ ■ ■ ■ ■ ■ ][ band ]
# ```
#
# The first and last queries have cut windows: query 0 sees no keys before it. A tile that starts at $s - \text{before} < 0$ must be clipped (or the keys padded and the padding masked), never skipped: a banded implementation that only handles "full" windows drops the first and last $\lfloor w/2 \rfloor$ queries.
#
# ### Exercise 8: `sliding_window_attention`
#
# The checks compare with dense float64 attention under the sliding-window mask, and recognise: every window mistake of exercise 1, a missing $1/\sqrt{d}$ (or one applied to the weights after the softmax), a softmax over the queries of a tile (`dim=-2`), an output allocated like `q` (width $d$ where attention returns $d_v$), `.T` on a batched tile, dropped edge queries (also whole blocks skipped because their window is cut), block bookkeeping that is right for the first block only (one check has $L$ of a few hundred: positions counted from a tile's start, or the output stored at the wrong offset), and any tensor with $L^2$ bytes or more (they run your function at $L = 4096$ and record every allocation, so building `sliding_window_mask(L, ...)` there fails too).

# %% nbgrader={"grade": false, "grade_id": "sliding_window_attention", "locked": false, "schema_version": 3, "solution": true, "task": false}
def sliding_window_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, window: int,
                             causal: bool = False) -> torch.Tensor:
    """Attention under sliding_window_mask(L, window, causal), in O(L * window) memory.

    Args:
        q, k: (..., L, d); v: (..., L, dv). Any leading dims; float32 or float64.
        window, causal: as in sliding_window_mask.

    Returns:
        (..., L, dv), in q's dtype: softmax over each query's window of q·k / sqrt(d), times v.

    Never builds an (L, L) tensor (not even the mask): work block by block.
    Not allowed: F.scaled_dot_product_attention, course.reference.masks.attention, course.reference.sparse.
    """
    ### BEGIN SOLUTION
    L, d = q.shape[-2], q.shape[-1]
    before, after = (window - 1, 0) if causal else (window // 2, window // 2)
    block = max(window, 64)                                   # queries per tile
    out = q.new_empty(*q.shape[:-1], v.shape[-1])             # (..., L, dv)
    for start in range(0, L, block):
        stop = min(start + block, L)
        k_start, k_stop = max(0, start - before), min(L, stop + after)  # keys this block may need
        scores = q[..., start:stop, :] @ k[..., k_start:k_stop, :].transpose(-2, -1) / math.sqrt(d)
        i = torch.arange(start, stop, device=q.device).unsqueeze(-1)    # (b, 1) query positions
        j = torch.arange(k_start, k_stop, device=q.device)              # (kb,) key positions
        band = (j >= i - before) & (j <= i + after)                     # (b, kb): each query's window
        weights = torch.softmax(scores.masked_fill(~band, float("-inf")), dim=-1)
        out[..., start:stop, :] = weights @ v[..., k_start:k_stop, :]   # every row sees itself: no NaN
    return out
    ### END SOLUTION


# %%
q, k, v = torch.randn(2, 3, 300, 16), torch.randn(2, 3, 300, 16), torch.randn(2, 3, 300, 8)
for causal in (False, True):
    dense = F.scaled_dot_product_attention(q, k, v, attn_mask=sliding_window_mask(300, 31, causal=causal))
    print(f"causal={causal}: max |yours - dense| =", (sliding_window_attention(q, k, v, 31, causal) - dense).abs().max().item())

# %% nbgrader={"grade": true, "grade_id": "check_sliding_window_attention", "locked": true, "points": 2, "schema_version": 3, "solution": false, "task": false}
check("day05-sparse", "sliding_window_attention", sliding_window_attention, points=2)

# %% nbgrader={"grade": true, "grade_id": "hidden_sliding_window_attention", "locked": true, "points": 1, "schema_version": 3, "solution": false, "task": false}
# When your notebook is graded, hidden tests run here: the same checks on fresh random shapes.
### BEGIN HIDDEN TESTS
check("day05-sparse", "sliding_window_attention", sliding_window_attention, hidden=True, points=1)
### END HIDDEN TESTS

# %% [markdown]
# ### Exercise 9: `chunked_attention`
#
# Long-sequence libraries often chunk instead of sliding: the queries of chunk $c$, positions $[c\,b, (c+1)\,b)$, all attend the same keys
#
# $$[\,c\,b - \text{overlap},\; (c+1)\,b + \text{overlap}\,) \cap [0, L),$$
#
# their own chunk plus `overlap` keys on each side. Every query of a chunk sees the same keys, so a chunk is one dense tile: a query at the start of its chunk sees $b - 1 + \text{overlap}$ keys ahead, one at the end only `overlap`. With overlap $\ge w/2$ the chunks cover every sliding window of width $w$ (and a bit more). When $L$ is not a multiple of $b$ the last chunk is shorter.
#
# The checks recognise: overlap on one side only, a key range one too long or short at an end, overlap ignored, a window around each query instead of around its chunk, a dropped last chunk, a first chunk whose key slice starts below 0 (unclipped: it counts from the end), a softmax over the queries of a tile, a missing $1/\sqrt d$ (or one after the softmax), `.T` on a batched tile, and any $L^2$-byte tensor.

# %% nbgrader={"grade": false, "grade_id": "chunked_attention", "locked": false, "schema_version": 3, "solution": true, "task": false}
def chunked_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, chunk_size: int,
                      overlap: int) -> torch.Tensor:
    """Chunked attention: the queries of chunk c (positions [c*chunk_size, (c+1)*chunk_size))
    attend the keys [c*chunk_size - overlap, (c+1)*chunk_size + overlap), clipped to [0, L).

    Args:
        q, k: (..., L, d); v: (..., L, dv). chunk_size >= 1, overlap >= 0.

    Returns:
        (..., L, dv) in q's dtype. The last chunk may be shorter than chunk_size.

    Never builds an (L, L) tensor. Not allowed: F.scaled_dot_product_attention,
    course.reference.masks.attention, course.reference.sparse.
    """
    ### BEGIN SOLUTION
    L, d = q.shape[-2], q.shape[-1]
    out = q.new_empty(*q.shape[:-1], v.shape[-1])
    for start in range(0, L, chunk_size):
        stop = min(start + chunk_size, L)
        k_start, k_stop = max(0, start - overlap), min(L, stop + overlap)
        scores = q[..., start:stop, :] @ k[..., k_start:k_stop, :].transpose(-2, -1) / math.sqrt(d)
        out[..., start:stop, :] = torch.softmax(scores, dim=-1) @ v[..., k_start:k_stop, :]
    return out
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "check_chunked_attention", "locked": true, "points": 2, "schema_version": 3, "solution": false, "task": false}
check("day05-sparse", "chunked_attention", chunked_attention, points=2)

# %% nbgrader={"grade": true, "grade_id": "hidden_chunked_attention", "locked": true, "points": 1, "schema_version": 3, "solution": false, "task": false}
# When your notebook is graded, hidden tests run here: the same checks on fresh random shapes.
### BEGIN HIDDEN TESTS
check("day05-sparse", "chunked_attention", chunked_attention, hidden=True, points=1)
### END HIDDEN TESTS

# %% [markdown]
# ## 5. Measure: memory and time against dense masked attention
#
# Dense masked attention builds the mask, the $L \times L$ scores and the $L \times L$ weights: memory and time grow as $L^2$. Your sliding window holds one tile at a time: memory grows as $L$ (the output) plus $b (b + w)$, and time as $L \cdot w$. `peak_memory` records the most bytes alive at once during a call (on the CPU it tracks every tensor the call allocates; on a GPU it reads `torch.cuda.max_memory_allocated`).
#
# Sized for a 2-core CPU; a GPU gets longer sequences. The full run, $L$ = 1k…16k, is `python -m course.bench.sparse`.

# %%
window, heads, head_dim = 256, 1, 64
lengths = [512, 1024, 2048, 4096] if device.type == "cpu" else [1024, 2048, 4096, 8192, 16384]
lengths = lengths[:2] if course.being_graded() else lengths  # graded: no points here


def dense_masked(q, k, v):
    mask = sliding_window_mask(q.shape[-2], window).to(q.device)
    return dense_attention(q, k, v, mask)[0]


rows = []
for L in lengths:
    q, k, v = (torch.randn(1, heads, L, head_dim, device=device) for _ in range(3))
    rows.append((L, median_time(dense_masked, q, k, v, repeats=3), median_time(sliding_window_attention, q, k, v, window, repeats=3),
                 peak_memory(dense_masked, q, k, v), peak_memory(sliding_window_attention, q, k, v, window)))

print(f"{'L':>6} {'dense ms':>9} {'sliding ms':>11} {'dense MiB':>10} {'sliding MiB':>12} {'ratio':>6}")
for L, t_dense, t_sliding, m_dense, m_sliding in rows:
    print(f"{L:>6} {1e3 * t_dense:>9.1f} {1e3 * t_sliding:>11.1f} {m_dense / 2**20:>10.1f} {m_sliding / 2**20:>12.1f} {m_sliding / m_dense:>6.3f}")

Ls = [r[0] for r in rows]
fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.6))
for ax, (dense_col, sliding_col), unit, title in [(left, (1, 2), 1e3, "time (ms)"), (right, (3, 4), 2**-20, "peak memory (MiB)")]:
    dense_y, sliding_y = [r[dense_col] * unit for r in rows], [r[sliding_col] * unit for r in rows]
    ax.loglog(Ls, dense_y, "o-", label="dense masked")
    ax.loglog(Ls, sliding_y, "o-", label="sliding window (yours)")
    ax.loglog(Ls, [dense_y[0] * (L / Ls[0]) ** 2 for L in Ls], "k:", label="∝ L²")
    ax.loglog(Ls, [sliding_y[0] * L / Ls[0] for L in Ls], "k--", label="∝ L")
    ax.set(xlabel="sequence length L", title=f"{title}, window {window} ({device.type})")
    ax.set_xticks(Ls, [str(L) for L in Ls])
    ax.minorticks_off()
    ax.legend(fontsize=8)
plt.tight_layout()
plt.show()


# %% [markdown]
# Dense memory follows the $L^2$ line: each doubling of $L$ quadruples it. The sliding window stays near the $L$ line (at short lengths its one tile dominates): at $L = 4096$ it needs a few percent of the dense memory, and the gap doubles with every doubling of $L$. At short lengths dense can be *faster*: one big matrix product beats many small tiles until the $L^2$ work catches up.

# %% [markdown]
# ## 6. Advanced: learned sparsity
#
# Every pattern so far was fixed before the model saw any data. *Learned* sparsity lets the model choose: a small gate network scores every (query, key) pair, or predicts how far back each token needs to look, and attention runs over what it picked. Two building blocks, both vectorised over positions and over batch rows:
#
# - a **top-$k$ gate** (as in Routing Transformer / top-$k$ attention, and the token selection of DeepSeek's NSA): query $i$ keeps the $k$ keys with the highest gate scores $g_{ij}$,
# $$K_i = \operatorname{top\text{-}k}_j\, g_{ij}, \qquad \operatorname{out}_i = \sum_{j \in K_i} \frac{e^{s_{ij}}}{\sum_{j' \in K_i} e^{s_{ij'}}}\, v_j, \qquad s_{ij} = \frac{q_i \cdot k_j}{\sqrt d};$$
# - an **adaptive window** (as in Adaptive Attention Span): token $i$ gets its own width $w_i$ and sees keys $i - w_i + 1 .. i$ (causal) or $|i - j| \le \lfloor w_i / 2 \rfloor$ (symmetric), the conventions of exercise 1 with one window per query.
#
# **Which gradient?** Choosing the top $k$ is a step function of the gate: its derivative is zero almost everywhere. This course's `topk_gated_attention` uses **detached selection**: the gate only decides *which* keys; gradients flow to $q$, $k$, $v$ through the kept pairs only (a key that no query kept gets zero gradient), and none reaches `gate_scores`. Models that train the gate end to end add another path, e.g. a *straight-through* estimator that uses the hard top-$k$ mask forward and the gradient of a soft mask ($\operatorname{softmax}(g)$) backward, or multiply the output by the gate's probability (as mixture-of-experts routers do).
#
# **Ties.** When several keys share the $k$-th highest gate score, which of them is kept is unspecified (`torch.topk`'s order); the checks draw gate scores without ties. A real gate outputs floats, where ties are rare; if they matter, add a tiny position-dependent offset to a copy (`gate_scores + offset`, never `gate_scores += offset`: the checks see the caller's tensor change).
#
# Tiny example: $g_{0,:} = (0.1, 0.9, 0.5, 0.7)$ and $k = 2$ keep keys 1 and 3, so query 0 is a softmax over $s_{01}, s_{03}$ only. Widths $(1, 2, 1, 3)$, causal, give rows $\{0\}, \{0, 1\}, \{2\}, \{1, 2, 3\}$.
#
# ### Exercise 10: `topk_gated_attention`
#
# The checks compare with float64 attention under a top-$k$ mask built by sorting each row in Python, take the gradients of both, and recognise: top-$k$ over the queries (`dim=-2`) instead of the keys, $k-1$ or $k+1$ keys kept, the lowest-gated keys, keys chosen by $q \cdot k$ instead of the gate, a softmax over all keys (mask not applied), the full softmax zeroed afterwards (not renormalised), a missing $1/\sqrt d$, a gradient reaching `gate_scores`, wrong gradients for $q, k, v$, a Python loop over queries or over batch rows, the caller's `gate_scores` (or `q`, `k`, `v`) changed in place, and bad `k_keep` or gate shapes accepted without a `ValueError`.

# %% nbgrader={"grade": false, "grade_id": "topk_gated_attention", "locked": false, "schema_version": 3, "solution": true, "task": false}
def topk_gated_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                         gate_scores: torch.Tensor, k_keep: int) -> torch.Tensor:
    """Per query, attention over the k_keep keys with the highest gate scores.

    Args:
        q: (..., Lq, d); k: (..., Lk, d); v: (..., Lk, dv). Any leading dims; float32 or float64.
        gate_scores: (..., Lq, Lk), leading dims broadcastable to q's (e.g. (B, 1, Lq, Lk) shared
            by every head). Higher = keep. Ties: which of the tied keys is kept is unspecified.
        k_keep: keys kept per query, 1 <= k_keep <= Lk (k_keep = Lk is dense attention).

    Returns:
        (..., Lq, dv) in q's dtype: softmax of q·k / sqrt(d) over each query's kept keys, times v.

    Selection is detached: gate_scores only choose the keys, no gradient reaches them; gradients
    reach q, k, v through the kept pairs only. ValueError for k_keep outside [1, Lk] or a gate
    whose last two dims are not (Lq, Lk). No Python loop over queries or batch rows.
    Not allowed: course.reference.sparse.
    """
    ### BEGIN SOLUTION
    Lq, Lk, d = q.shape[-2], k.shape[-2], q.shape[-1]
    if not 1 <= k_keep <= Lk:
        raise ValueError(f"k_keep must be in [1, Lk = {Lk}], got {k_keep}")
    if tuple(gate_scores.shape[-2:]) != (Lq, Lk):
        raise ValueError(f"gate_scores must end in (Lq, Lk) = ({Lq}, {Lk}), got {tuple(gate_scores.shape)}")
    kept = gate_scores.detach().topk(k_keep, dim=-1).indices                # (..., Lq, k_keep)
    keep = torch.zeros(gate_scores.shape, dtype=torch.bool, device=q.device)
    keep = keep.scatter(-1, kept, True)                                      # (..., Lq, Lk)
    scores = q @ k.transpose(-2, -1) / math.sqrt(d)                          # (..., Lq, Lk)
    weights = torch.softmax(scores.masked_fill(~keep, float("-inf")), dim=-1)  # k_keep >= 1: no NaN
    return weights @ v
    ### END SOLUTION


# %%
q, k, v = torch.randn(1, 4, 8), torch.randn(1, 6, 8), torch.randn(1, 6, 3)
gate = torch.tensor([[0.1, 0.9, 0.5, 0.7, 0.0, 0.2]]).expand(1, 4, 6)   # every query keeps keys 1 and 3
manual = torch.softmax(q @ k[:, [1, 3]].transpose(-2, -1) / math.sqrt(8), -1) @ v[:, [1, 3]]
print("max |yours - by hand| =", (topk_gated_attention(q, k, v, gate, 2) - manual).abs().max().item())

# %% nbgrader={"grade": true, "grade_id": "check_topk_gated_attention", "locked": true, "points": 2, "schema_version": 3, "solution": false, "task": false}
check("day05-sparse", "topk_gated_attention", topk_gated_attention, points=2)

# %% nbgrader={"grade": true, "grade_id": "hidden_topk_gated_attention", "locked": true, "points": 1, "schema_version": 3, "solution": false, "task": false}
# When your notebook is graded, hidden tests run here: the same checks on fresh random shapes.
### BEGIN HIDDEN TESTS
check("day05-sparse", "topk_gated_attention", topk_gated_attention, hidden=True, points=1)
### END HIDDEN TESTS

# %% [markdown]
# ### Exercise 11: `adaptive_window_attention`
#
# `widths` is a LongTensor `(..., L)`: `widths[..., i]` is query $i$'s window (a gate would predict it, e.g. rounded from a sigmoid times a maximum span). The mask is one comparison of the `(L, L)` grid of positions with a `(..., L, 1)` column of widths: no loop over positions, and none over batch rows or heads (the check counts the lines of Python your function runs at two lengths and at two batch sizes). This exercise may build the dense `(..., L, L)` mask; the $O(L \cdot w_{\max})$ version is the tiles of exercise 8 with $w = \max_i w_i$.
#
# The checks compare with float64 attention under a mask built by Python loops, and recognise: a window one key too wide or too narrow, $w$ keys on each side instead of $\lfloor w/2 \rfloor$, a window that looks at the future instead of the past, causal ignored (or applied when `causal=False`), each *key's* width used instead of each query's, one width for all queries, a missing $1/\sqrt d$, a Python loop over positions or rows, and bad widths or $L_q \ne L_k$ accepted without a `ValueError`.

# %% nbgrader={"grade": false, "grade_id": "adaptive_window_attention", "locked": false, "schema_version": 3, "solution": true, "task": false}
def adaptive_window_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, widths: torch.Tensor,
                              causal: bool = True) -> torch.Tensor:
    """Sliding-window attention with a window width per query.

    Args:
        q, k: (..., L, d); v: (..., L, dv). Any leading dims; float32 or float64. Lq == Lk.
        widths: integer tensor (..., L), leading dims broadcastable to q's (e.g. (B, 1, L) shared
            by the heads): query i's window, >= 1 (a width >= L is the whole causal prefix).
        causal: True (default): query i sees keys i - widths[i] + 1 .. i (widths[i] keys, clipped
            at 0); False: keys with |i - j| <= widths[i] // 2.

    Returns:
        (..., L, dv) in q's dtype. Every query sees at least itself, so no row is empty.

    ValueError for widths < 1, non-integer widths, widths.shape[-1] != L, or Lq != Lk.
    No Python loop over positions, batch rows or heads. Not allowed: course.reference.sparse.
    """
    ### BEGIN SOLUTION
    L, d = q.shape[-2], q.shape[-1]
    if k.shape[-2] != L:
        raise ValueError(f"adaptive windows need Lq == Lk, got Lq = {L}, Lk = {k.shape[-2]}")
    if widths.dtype.is_floating_point or widths.dtype == torch.bool or widths.is_complex():
        raise ValueError(f"widths must be an integer tensor, got {widths.dtype}")
    if widths.dim() == 0 or widths.shape[-1] != L:
        raise ValueError(f"widths must have shape (..., L = {L}), got {tuple(widths.shape)}")
    if (widths < 1).any():
        raise ValueError(f"every width must be >= 1, got min {int(widths.min())}")
    i = torch.arange(L, device=q.device).unsqueeze(-1)   # (L, 1) query positions
    j = torch.arange(L, device=q.device)                 # (L,) key positions
    w = widths.to(q.device).unsqueeze(-1)                # (..., L, 1): one width per query
    if causal:
        mask = (j <= i) & (j > i - w)                    # (..., L, L): keys i-w+1 .. i
    else:
        mask = (i - j).abs() <= w // 2
    scores = q @ k.transpose(-2, -1) / math.sqrt(d)      # (..., L, L)
    return torch.softmax(scores.masked_fill(~mask, float("-inf")), dim=-1) @ v
    ### END SOLUTION


# %%
widths = torch.tensor([1, 2, 1, 3])
q = k = torch.eye(4)
v = torch.arange(4.0).unsqueeze(-1)   # the output is a weighted mean of the key positions
print(adaptive_window_attention(q, k, v, widths).squeeze(-1))   # row 0 sees {0}, 1 {0,1}, 2 {2}, 3 {1,2,3}

# %% nbgrader={"grade": true, "grade_id": "check_adaptive_window_attention", "locked": true, "points": 2, "schema_version": 3, "solution": false, "task": false}
check("day05-sparse", "adaptive_window_attention", adaptive_window_attention, points=2)

# %% nbgrader={"grade": true, "grade_id": "hidden_adaptive_window_attention", "locked": true, "points": 1, "schema_version": 3, "solution": false, "task": false}
# When your notebook is graded, hidden tests run here: the same checks on fresh random shapes.
### BEGIN HIDDEN TESTS
check("day05-sparse", "adaptive_window_attention", adaptive_window_attention, hidden=True, points=1)
### END HIDDEN TESTS

# %% [markdown]
# ### Explore: what a gate picks
#
# Below, a hand-made gate prefers keys close to the query plus every 8th key (a learned gate often ends up looking like a window plus a few summary tokens); the widths grow with position. The pictures are *your* functions' attention weights, recovered by passing the identity matrix as `v`.

# %%
L = 32
pos = torch.arange(L)
gate = -(pos[:, None] - pos[None, :]).abs().float() + 6.0 * (pos % 8 == 0)    # near keys and summary keys
q, k = torch.randn(L, 16, generator=torch.Generator().manual_seed(0)), torch.randn(L, 16, generator=torch.Generator().manual_seed(1))
eye = torch.eye(L)
widths = 1 + pos // 4
fig, axes = plt.subplots(1, 2, figsize=(8, 4))
axes[0].imshow(topk_gated_attention(q, k, eye, gate, 6), cmap="viridis")
axes[0].set_title("top-6 gate: weights")
axes[1].imshow(adaptive_window_attention(q, k, eye, widths), cmap="viridis")
axes[1].set_title("adaptive window (1 + i // 4), causal")
for ax in axes:
    ax.set_xlabel("key"); ax.set_ylabel("query")
plt.tight_layout()
plt.show()

# %% [markdown]
# ## 7. Advanced: feature-wise attention over 4-D inputs
#
# A multivariate time series has *columns* (sensors, features, assets), each a sequence over time: a batch is `(batch, columns, seq, d)` once each value is embedded in $d$ features. Two ways to attend:
#
# - **flatten** the columns into the sequence, `(batch, columns * seq, d)`, and run dense attention: every time step of every column attends to every other, $(C\,T)^2$ pairs per head;
# - **feature-wise** (column-wise): attend along time *inside each column*, with the column axis as one more batch axis: $C \cdot T^2$ pairs per head, $C$ times fewer, and no information crosses columns in this layer (a later layer, or an attention *across* columns at each time step, as in axial attention / iTransformer / TabTransformer-style models, mixes them).
#
# The projections can be **shared** by all columns (one $W_q, W_k, W_v, W_o$ of $d \times d$: $4d^2$ parameters) or **per column** ($C$ of each: $4Cd^2$), when columns are different kinds of signal.
#
# **Memory.** With $B$ batch rows, $H$ heads and float32 (4 bytes), attention as written here holds two score-sized matrices at its peak (the scaled scores and their softmax), so
#
# $$M_{\text{flat}} \approx 2 \cdot 4\,B H (C T)^2 \text{ bytes}, \qquad M_{\text{column}} \approx 2 \cdot 4\,B H\,C\,T^2 \text{ bytes}, \qquad \frac{M_{\text{flat}}}{M_{\text{column}}} = C,$$
#
# plus $O(B\,C\,T\,d)$ for the projections, small when $T \gg d$.
#
# ### Exercise 12: `ColumnwiseAttention`
#
# Contract: `ColumnwiseAttention(num_columns, d, num_heads, shared=True)` is an `nn.Module` with four `nn.Parameter`s `q_weight, k_weight, v_weight, out_weight`, of shape `(d, d)` when `shared=True` and `(num_columns, d, d)` when `shared=False`, used as `nn.Linear` uses its weight ($y = x W^\top$, no bias); heads split the features into contiguous slices as on day 3 (head $h$ owns features $[h\,d_h, (h+1)\,d_h)$). `forward(x)` takes `(batch, num_columns, seq, d)` and returns the same shape.
#
# The checks set fresh random weights into your parameters, compare each column with float64 multi-head attention computed one column at a time, and recognise: columns flattened into the sequence (attention across columns), per-column weights that are really shared (one column's used for all; a parameter count of $4d^2$; changing `v_weight[c]` moving other columns than $c$), leakage (perturbing one input column changes another output column), attention across the columns at each time step (the wrong axis), a missing $1/\sqrt{d_h}$ or $1/\sqrt{d}$ (the model width) in its place, heads interleaved (features split as $(d_h, H)$), heads merged without moving $H$ back next to $d_h$, $x W$ instead of $x W^\top$, `.T` on a `(num_columns, d, d)` weight (it reverses all three dims), `super().__init__()` never called, plain tensors instead of `nn.Parameter`s, missing or mis-shaped parameters, and wrong ranks or shapes accepted without a `ValueError`. `F.scaled_dot_product_attention` is allowed here: the point is the layout.

# %% nbgrader={"grade": false, "grade_id": "ColumnwiseAttention", "locked": false, "schema_version": 3, "solution": true, "task": false}
import torch.nn as nn


class ColumnwiseAttention(nn.Module):
    """Multi-head self-attention along time inside each column of a (batch, columns, seq, d) input.

    Args:
        num_columns: C, the number of columns (>= 1).
        d: features per position; divisible by num_heads (ValueError otherwise).
        num_heads: H; head h owns features [h*dh, (h+1)*dh), dh = d // H.
        shared: True: one (d, d) weight per projection for every column; False: (C, d, d), column c
            using weight[c].

    Parameters: q_weight, k_weight, v_weight, out_weight, (d, d) or (C, d, d), nn.Linear's
    convention y = x @ W^T, no bias.

    forward(x): x (B, C, T, d) float32/float64 -> (B, C, T, d): column c at time t attends to
    column c at every time t' (softmax over T); columns never mix. ValueError for a rank other
    than 4, a column count other than C, or a last dim other than d. Not allowed: course.reference.sparse.
    """

    def __init__(self, num_columns: int, d: int, num_heads: int, shared: bool = True):
        ### BEGIN SOLUTION
        super().__init__()
        if num_columns < 1 or num_heads < 1 or d % num_heads != 0:
            raise ValueError(f"need num_columns >= 1 and d divisible by num_heads, got "
                             f"num_columns={num_columns}, d={d}, num_heads={num_heads}")
        self.num_columns, self.d, self.num_heads, self.shared = num_columns, d, num_heads, shared
        shape = (d, d) if shared else (num_columns, d, d)
        for name in ("q_weight", "k_weight", "v_weight", "out_weight"):
            setattr(self, name, nn.Parameter(torch.randn(shape) * d ** -0.5))
        ### END SOLUTION

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ### BEGIN SOLUTION
        if x.dim() != 4 or x.shape[1] != self.num_columns or x.shape[-1] != self.d:
            raise ValueError(f"expected x of shape (batch, {self.num_columns}, seq, {self.d}), "
                             f"got {tuple(x.shape)}")
        H, dh = self.num_heads, self.d // self.num_heads

        def project(t, weight):              # t (B, C, T, d_in); weight (d, d_in) or (C, d, d_in)
            if self.shared:
                return t @ weight.T
            return t @ weight.transpose(-2, -1).unsqueeze(0)   # (1, C, d_in, d) per column

        def heads(t):                        # (B, C, T, d) -> (B, C, H, T, dh)
            return t.unflatten(-1, (H, dh)).transpose(-3, -2)

        q, k, v = (heads(project(x, w)) for w in (self.q_weight, self.k_weight, self.v_weight))
        scores = q @ k.transpose(-2, -1) / math.sqrt(dh)       # (B, C, H, T, T): per column
        out = torch.softmax(scores, dim=-1) @ v                # (B, C, H, T, dh)
        out = out.transpose(-3, -2).flatten(-2)                # (B, C, T, d)
        return project(out, self.out_weight)
        ### END SOLUTION


# %%
x = torch.randn(2, 3, 10, 8)                              # (batch, columns, seq, d)
shared, separate = ColumnwiseAttention(3, 8, 2), ColumnwiseAttention(3, 8, 2, shared=False)
print("parameters: shared", sum(p.numel() for p in shared.parameters()),
      "| per column", sum(p.numel() for p in separate.parameters()))
y = x.clone(); y[:, 1] += 1.0                               # change column 1 only
print("output columns that moved:", ((shared(y) - shared(x)).abs().amax(dim=(0, 2, 3)) > 0).tolist())

# %% nbgrader={"grade": true, "grade_id": "check_ColumnwiseAttention", "locked": true, "points": 2, "schema_version": 3, "solution": false, "task": false}
check("day05-sparse", "ColumnwiseAttention", ColumnwiseAttention, points=2)

# %% nbgrader={"grade": true, "grade_id": "hidden_ColumnwiseAttention", "locked": true, "points": 1, "schema_version": 3, "solution": false, "task": false}
# When your notebook is graded, hidden tests run here: the same checks on fresh random shapes.
### BEGIN HIDDEN TESTS
check("day05-sparse", "ColumnwiseAttention", ColumnwiseAttention, hidden=True, points=1)
### END HIDDEN TESTS

# %% [markdown]
# ### Measure: column-wise against flattened
#
# The flattened version is your own module with one column, run on `x.reshape(B, 1, C * T, d)`: the same code, the same constant factors, only the layout differs. `peak_memory` records every tensor allocated while it runs (on the CPU), against the two formulas above.

# %%
B, H, d = 1, 2, 16
C, T = (4, 256) if device.type == "cpu" else (8, 1024)
x = torch.randn(B, C, T, d, device=device)
columnwise = ColumnwiseAttention(C, d, H).to(device)
flat = ColumnwiseAttention(1, d, H).to(device)
rows = []
with torch.no_grad():
    for name, fn, formula in [
        ("column-wise", lambda: columnwise(x), 2 * 4 * B * H * C * T**2),
        ("flattened", lambda: flat(x.reshape(B, 1, C * T, d)), 2 * 4 * B * H * (C * T)**2),
    ]:
        measured = peak_memory(fn)
        rows.append((name, formula, measured))
        print(f"{name:12s} formula {formula / 2**20:7.2f} MiB   measured {measured / 2**20:7.2f} MiB   "
              f"measured/formula {measured / formula:.2f}")
print(f"flattened / column-wise: {rows[1][2] / rows[0][2]:.1f} (formula: C = {C})")

# %% [markdown]
# The measured peaks sit a few percent above the formulas (the projections, $O(B\,C\,T\,d)$, come on top), and their ratio is about $C$: flattening pays for $C^2$ times the pairs of one column to gain cross-column attention that a separate, cheaper layer (attention across columns at each time step, $T \cdot C^2$ pairs) gives too.

# %% [markdown]
# ## 8. Recap
#
# - A mask saves nothing by itself: the savings come from never computing the masked pairs.
# - Sliding windows (Mistral: $w$ keys back; Longformer: $\lfloor w/2 \rfloor$ each side), strided summary columns, global tokens, random keys and block layouts all build in a few tensor operations, without a loop over positions.
# - Reach is the boolean power of $M \lor I$: windows need about $L/h$ layers, a global token 2, random keys about $\log L$; a causal mask or separate blocks never reach everything.
# - Learned sparsity picks the pattern from the data: a top-$k$ gate keeps each query's $k$ best keys (detached selection: no gradient through the choice), an adaptive window gives each token its own span; both are one comparison or one `topk` + `scatter`, vectorised over positions and rows.
# - Feature-wise attention treats the columns of a `(batch, columns, seq, d)` input as a batch axis: $C$ times less attention memory than flattening them into the sequence, and no leakage between columns; weights shared ($4d^2$) or per column ($4Cd^2$).
# - Attention over a band, computed tile by tile, takes $O(L \cdot w)$ memory and time instead of $O(L^2)$, and it must still give the edge queries their cut windows.
#
# ## Further reading
#
# - Child et al. (2019), *Generating Long Sequences with Sparse Transformers*: strided and fixed patterns, and block-sparse kernels.
# - Beltagy, Peters, Cohan (2020), *Longformer*: sliding, dilated and global attention, and its banded `sliding_chunks` implementation.
# - Zaheer et al. (2020), *Big Bird*: global + window + random, and why random keys shrink the reach.
# - Jiang et al. (2023), *Mistral 7B*: a causal sliding window of 4096 and its rolling KV cache (day 4).
# - Sukhbaatar et al. (2019), *Adaptive Attention Span in Transformers*: a span learned per head (exercise 11 makes it per token).
# - Roy et al. (2021), *Routing Transformer*, and Yuan et al. (2025), *Native Sparse Attention*: keys chosen by content, top-$k$ per query (exercise 10).
# - Ho et al. (2019), *Axial Attention*, and Liu et al. (2024), *iTransformer*: attention along one axis of a multi-dimensional input at a time (exercise 12).
# - Read next: the `sliding_window` argument of FlashAttention 2 (`window_size=(left, right)`), and PyTorch's FlexAttention (`torch.nn.attention.flex_attention`) with a `BlockMask`, which skips whole blocks as in exercise 5.
#
# **Next: day 6, online softmax.** Tiles without any window: exact dense attention that never holds the $L \times L$ matrix either.
