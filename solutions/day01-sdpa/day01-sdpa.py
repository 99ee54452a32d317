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
# # Day 1 · Scaled dot-product attention
#
# [Open in Colab](https://colab.research.google.com/github/attention-from-scratch/attention-from-scratch/blob/main/exercises/day01-sdpa/day01-sdpa.ipynb)
#
# **What you will build.** The three functions every attention layer is made of:
#
# 1. `stable_softmax(x, dim=-1)`: a softmax that never overflows, and gives zeros (not NaN) to a row with nothing to attend to;
# 2. `attention_scores(q, k)`: how well every query matches every key, $QK^\top/\sqrt{d}$;
# 3. `scaled_dot_product_attention(q, k, v)`: the weighted average of the values, returned as `(out, weights)`.
#
# Then you look inside: attention as a soft dictionary lookup, heatmaps of your own weights, why we divide by $\sqrt{d}$, and what the $L_q \times L_k$ weight matrix costs.
#
# **Prerequisites.** Python, PyTorch tensors (indexing, broadcasting, `@`), a little linear algebra.
# **Time.** About 2–3 hours.
#
# **How this notebook works.** Each exercise has a cell ending in `raise NotImplementedError()`: replace that line with your code. Run the check cell under it: it prints ✓ or ✗ for each check, and for a ✗ it names the mistake and gives a hint. When your notebook is graded, the same checks run again, and hidden ones draw new random shapes.
#
# **Conventions.** Tensors are `(batch, heads, seq, head_dim)`, but your functions must work with any leading dimensions, with $L_q \ne L_k$, and in float32 and float64.
#
# **Not allowed inside your functions:** `torch.softmax`, `F.softmax`, `Tensor.softmax` (and `log_softmax`), and `F.scaled_dot_product_attention`. The checks detect them while your function runs. Outside your functions they are fine: below we use them to check answers. Everything else in torch is allowed, `torch.logsumexp` included.

# %% nbgrader={"grade": false, "grade_id": "setup", "locked": true, "schema_version": 3, "solution": false, "task": false}
import math

import matplotlib.pyplot as plt
import torch
import torch.nn.functional as F
from ipywidgets import FloatSlider, interact

import course
from course import AttentionExplorer, plot_attention
from course.bench import median_time
from grader import check

device = course.get_device()
course.seed_everything(0)
print(course.describe_device())

# %% [markdown]
# ## 1. Attention is a soft dictionary lookup
#
# A Python dict maps a key to exactly one value. Attention is a differentiable version of that: the query is compared with *every* key, the similarities become weights that sum to one, and the answer is the weighted average of the values:
#
# $$
# \operatorname{Attention}(Q, K, V) = \operatorname{softmax}\!\left(\frac{QK^\top}{\sqrt{d}}\right) V,
# \qquad Q \in \mathbb{R}^{L_q \times d},\; K \in \mathbb{R}^{L_k \times d},\; V \in \mathbb{R}^{L_k \times d_v}.
# $$
#
# Row $i$ of the $L_q \times L_k$ weight matrix says how much query $i$ takes from each value. The output has one row per query, and each row has $d_v$ numbers.
#
# A tiny example to check by hand: three keys, and one query that matches the second and third keys equally.

# %%
keys = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])  # (Lk=3, d=2)
values = torch.tensor([[10.0], [20.0], [30.0]])            # (Lk=3, dv=1)
query = torch.tensor([[0.0, 4.0]])                         # (Lq=1, d=2)

scores = query @ keys.T / math.sqrt(2)  # (1, 3): [0, 2.83, 2.83]
weights = torch.softmax(scores, dim=-1)  # the built-in, used here as an oracle
print("scores ", scores)
print("weights", weights)                # e^0 : e^2.83 : e^2.83 = 1 : 16.9 : 16.9
print("output ", weights @ values)        # 0.03*10 + 0.485*20 + 0.485*30 = 24.6

# %% [markdown]
# Key 1 gets little weight ($e^0 / 34.8 \approx 0.03$). Keys 2 and 3 match the query equally and share the rest. The answer, 24.6, is a *blend* of their values. A hard lookup would have to pick one of them.
#
# ## 2. A softmax that never overflows
#
# $$\operatorname{softmax}(x)_i = \frac{e^{x_i}}{\sum_j e^{x_j}}$$
#
# In float32, $e^{x}$ is `inf` for $x > 88.7$, and `inf / inf` is NaN. Scores that large are common in real models. The fix: subtracting the same constant $c$ from every entry leaves softmax unchanged,
#
# $$\frac{e^{x_i - c}}{\sum_j e^{x_j - c}} = \frac{e^{-c}\, e^{x_i}}{e^{-c} \sum_j e^{x_j}} = \operatorname{softmax}(x)_i ,$$
#
# so take $c = \max_j x_j$. The largest exponential is then $e^0 = 1$, nothing overflows, and the sum is at least 1.
#
# Masks (day 2) write $-\infty$ into the scores of keys a query must not see. Since $e^{-\infty} = 0$, those keys get no weight. The edge case is a row that is *all* $-\infty$, for example a padding query with nothing to see. Its max is $-\infty$, and $-\infty - (-\infty)$ is NaN. We define the softmax of such a row to be all zeros.

# %%
x = torch.tensor([1000.0, 1001.0, 1002.0])
print("naive  ", torch.exp(x) / torch.exp(x).sum())  # inf / inf
shifted = torch.exp(x - x.max())
print("shifted", shifted / shifted.sum())

# %% [markdown]
# Three tools for the exercise below. A reduction along a dim, with `keepdim=True`, keeps that axis with size 1, so the result broadcasts back against the tensor it came from. `torch.where(condition, a, b)` picks `a` where the condition is True and `b` elsewhere, entry by entry: it replaces chosen entries, and it makes a division safe where the denominator is 0.

# %%
t = torch.tensor([[1.0, 5.0, 3.0], [-math.inf, -math.inf, -math.inf]])  # (2, 3): the second row is all -inf
print(t.amax(dim=-1).shape)                # torch.Size([2]): the reduced axis is gone
print(t.amax(dim=-1, keepdim=True).shape)  # torch.Size([2, 1]): kept with size 1, so t - t.amax(-1, keepdim=True) broadcasts
print(t.max(dim=-1))                       # with a dim, max returns a pair (values, indices); amax returns the values alone
row_max = t.amax(dim=-1, keepdim=True)                       # (2, 1): the second row's max is -inf
print(torch.where(torch.isinf(row_max), 0.0, row_max))       # that max replaced by 0; t's own -inf entries stay
denominator = torch.tensor([2.0, 0.0])
print(torch.where(denominator > 0, 1.0 / denominator, 0.0))  # 1/2, and 0 (not inf) where the denominator is 0


# %% [markdown]
# ### Exercise 1: `stable_softmax`
#
# Along `dim`, subtract the max (with `keepdim=True`, so it broadcasts), exponentiate, then divide by the sum. Then handle the edge case: a slice that is all $-\infty$ must come out as zeros, with no NaN. `torch.where` is the tool for that.
#
# One check runs your function on PyTorch's `'meta'` device: its tensors have a shape and a dtype but no values, and stand in for a GPU here. Any tensor your function makes must be made on `x`'s device (`torch.zeros_like(m)`, or a plain number such as `0.0` inside `torch.where`).
#
# The checks recognise these mistakes, and each gives a hint: normalising over the wrong axis or ignoring `dim` (in the max, the sum or both); a max or sum without `keepdim=True`; `x.max(dim)` used without `.values`; no max subtraction, or a shift by the min or the mean (overflow at $x \approx 1000$); a shift by more than the max, such as the largest $|x|$ (every weight 0 on rows far below 0); a sum of the unshifted exps; a shift by 0 instead of a negative max (a max clamped at 0: rows far below 0 underflow); a max over the whole tensor instead of along `dim`; dividing by the max instead of the sum; `exps / (sum + eps)` instead of a guarded division; a `torch.where` with its condition inverted; NaN from $-\infty$ entries or from a row that is all $-\infty$ (at $x - \max$, or at a $0/0$ division); $-\infty$ entries replaced by 0 or by the row's max; equal weights on a row that is all $-\infty$; an input changed in place; a float64 input returned as float32; a tensor made without `device=` (it lands on the CPU whatever device `x` is on); a call to a built-in softmax.

# %% nbgrader={"grade": false, "grade_id": "stable_softmax", "locked": false, "schema_version": 3, "solution": true, "task": false}
def stable_softmax(x: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Softmax of `x` along `dim`, computed without overflow.

    Args:
        x: a float tensor of any shape (float32 or float64). Entries may be -inf.
        dim: the axis to normalise over (in attention, the keys: the last axis).

    Returns:
        A tensor with x's shape and dtype. It is non-negative and sums to 1 along `dim`.
        Entries that were -inf get exactly 0, and a slice that is all -inf gives all zeros
        (not NaN).

    Not allowed: torch.softmax, F.softmax, Tensor.softmax, log_softmax (torch.logsumexp is).
    """
    ### BEGIN SOLUTION
    x_max = x.amax(dim=dim, keepdim=True)                                       # size 1 along dim
    x_max = torch.where(torch.isfinite(x_max), x_max, torch.zeros_like(x_max))  # all -inf: shift by 0
    exps = torch.exp(x - x_max)                                                 # the largest is e^0 = 1
    total = exps.sum(dim=dim, keepdim=True)
    return exps / torch.where(total > 0, total, torch.ones_like(total))  # empty slice: 0 / 1 = 0
    ### END SOLUTION


# %%
# A tiny example to check by hand: [0, ln 3] -> [1/4, 3/4]; an all -inf row -> zeros.
stable_softmax(torch.tensor([[0.0, math.log(3.0)], [-math.inf, -math.inf]]))

# %% nbgrader={"grade": true, "grade_id": "check_stable_softmax", "locked": true, "points": 2, "schema_version": 3, "solution": false, "task": false}
check("day01-sdpa", "stable_softmax", stable_softmax, points=2)

# %% nbgrader={"grade": true, "grade_id": "hidden_stable_softmax", "locked": true, "points": 1, "schema_version": 3, "solution": false, "task": false}
# When your notebook is graded, hidden tests run here: the same checks on fresh random shapes.
### BEGIN HIDDEN TESTS
check("day01-sdpa", "stable_softmax", stable_softmax, hidden=True, points=1)
### END HIDDEN TESTS

# %% [markdown]
# ## 3. Scores: every query against every key
#
# $$S_{ij} = \frac{q_i \cdot k_j}{\sqrt{d}}, \qquad S = \frac{QK^\top}{\sqrt{d}} \in \mathbb{R}^{L_q \times L_k}.$$
#
# `k.transpose(-2, -1)` swaps only the last two axes, and `@` broadcasts over any leading ones, so one line serves `(L, d)`, `(B, L, d)` and `(B, H, L, d)` alike. (`k.T` reverses *all* the axes; it is only right for 2-D tensors.)
#
# With leading dimensions, only the last two axes may swap:

# %%
k4 = torch.randn(2, 3, 5, 4)                      # (B, H, Lk, d)
print(k4.transpose(-2, -1).shape, k4.mT.shape)    # both (2, 3, 4, 5): the last two axes swapped
print(k4.permute(3, 2, 1, 0).shape)               # (4, 5, 3, 2): what k4.T does, every axis reversed

# %% [markdown]
# Tiny example: $q = \begin{bmatrix}1 & 0\\ 0 & 1\end{bmatrix}$ and $k = \begin{bmatrix}1 & 1\\ 2 & 0\\ 0 & 3\end{bmatrix}$ give $S = \frac{1}{\sqrt{2}}\begin{bmatrix}1 & 2 & 0\\ 1 & 0 & 3\end{bmatrix}$.
#
# ### Exercise 2: `attention_scores`
#
# The checks recognise: a missing scale, dividing by $d$, multiplying by $\sqrt{d}$, `d ** 1/2` (which is $d/2$), an integer or float32 $\sqrt{d}$, scaling by a sequence length or a leading dimension instead of the head dimension, queries and keys swapped, cosine similarity instead of the scale, `q @ k` without transposing the keys, `(q * k).sum(-1)` (query $i$ with key $i$ only), a broadcast product whose axes do not line up, one size standing for another (right only when $L_q = L_k = d$), a transpose that breaks with leading dimensions, code written for one number of dimensions (`torch.bmm`, `B, H, L, d = q.shape`), and an input scaled in place.

# %% nbgrader={"grade": false, "grade_id": "attention_scores", "locked": false, "schema_version": 3, "solution": true, "task": false}
def attention_scores(q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """Scaled dot-product scores q kᵀ / sqrt(d).

    Args:
        q: (..., Lq, d) queries.
        k: (..., Lk, d) keys, with the same leading dimensions and dtype as q.

    Returns:
        (..., Lq, Lk) scores: entry [..., i, j] is q_i · k_j / sqrt(d), where d = q.shape[-1].

    Not allowed: F.scaled_dot_product_attention.
    """
    ### BEGIN SOLUTION
    d = q.shape[-1]
    return q @ k.transpose(-2, -1) / math.sqrt(d)  # (..., Lq, d) @ (..., d, Lk) -> (..., Lq, Lk)
    ### END SOLUTION


# %%
attention_scores(torch.tensor([[1.0, 0.0], [0.0, 1.0]]), torch.tensor([[1.0, 1.0], [2.0, 0.0], [0.0, 3.0]])) * math.sqrt(2)

# %% nbgrader={"grade": true, "grade_id": "check_attention_scores", "locked": true, "points": 2, "schema_version": 3, "solution": false, "task": false}
check("day01-sdpa", "attention_scores", attention_scores, points=2)

# %% nbgrader={"grade": true, "grade_id": "hidden_attention_scores", "locked": true, "points": 1, "schema_version": 3, "solution": false, "task": false}
# When your notebook is graded, hidden tests run here: the same checks on fresh random shapes.
### BEGIN HIDDEN TESTS
check("day01-sdpa", "attention_scores", attention_scores, hidden=True, points=1)
### END HIDDEN TESTS

# %% [markdown]
# ## 4. Putting it together
#
# $$\text{weights} = \operatorname{softmax}_{\text{keys}}\!\left(\frac{QK^\top}{\sqrt{d}}\right) \in \mathbb{R}^{L_q \times L_k}, \qquad \text{out} = \text{weights}\; V \in \mathbb{R}^{L_q \times d_v}.$$
#
# Each query's weights sum to 1 over the keys, so the softmax runs over the last axis. The values may have a different width $d_v$ from the queries and keys.
#
# Attention is trained by backpropagation, so keep every step differentiable: gradients must flow from `out` back to `q`, `k` and `v`. No `.detach()` or `torch.no_grad()` inside the function, and no in-place step (`exp_()`, `/=`) on a tensor autograd saved; to plot the weights, detach them outside.
#
# ### Exercise 3: `scaled_dot_product_attention`
#
# The checks recognise: softmax over the query axis or a leading axis, a sum over the queries, the softmax applied twice, weights divided again by their sum over the queries, `scores @ v` instead of `weights @ v`, `weights @ k` instead of `weights @ v`, the scores returned as the weights, weights without the exp, `out` divided by $L_k$, each scaling mistake from exercise 2, scaling by $\sqrt{d_v}$ or after the softmax, queries and keys swapped, `weights @ v.transpose(-2, -1)`, `weights.transpose(-2, -1) @ v`, a transpose that breaks with leading dimensions, wrong output shapes when $L_q \ne L_k$ or $d_v \ne d$, a `.squeeze()` that drops a dim of size 1, `(weights, out)` in the wrong order, a gradient that does not reach `q`, `k` or `v` (a `.detach()`, or an in-place step autograd refuses), overflow at large scores, and calls to the built-ins.

# %% nbgrader={"grade": false, "grade_id": "scaled_dot_product_attention", "locked": false, "schema_version": 3, "solution": true, "task": false}
def scaled_dot_product_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor):
    """Attention(Q, K, V) = softmax(Q Kᵀ / sqrt(d)) V.

    Args:
        q: (..., Lq, d) queries.
        k: (..., Lk, d) keys.
        v: (..., Lk, dv) values; dv may differ from d.

    Returns:
        (out, weights): out is (..., Lq, dv), and weights is (..., Lq, Lk) with rows that
        sum to 1.

    Build it from your attention_scores and stable_softmax.
    Not allowed: F.scaled_dot_product_attention, torch.softmax, F.softmax, Tensor.softmax.
    """
    ### BEGIN SOLUTION
    weights = stable_softmax(attention_scores(q, k), dim=-1)  # (..., Lq, Lk)
    out = weights @ v                                         # (..., Lq, Lk) @ (..., Lk, dv) -> (..., Lq, dv)
    return out, weights
    ### END SOLUTION


# %%
# Your attention against PyTorch's, on the course device.
q, k, v = torch.randn(2, 4, 6, 8, device=device), torch.randn(2, 4, 9, 8, device=device), torch.randn(2, 4, 9, 5, device=device)
out, weights = scaled_dot_product_attention(q, k, v)
print(out.shape, weights.shape)  # (2, 4, 6, 5) and (2, 4, 6, 9)
print("max |difference| from F.scaled_dot_product_attention:", (out - F.scaled_dot_product_attention(q, k, v)).abs().max().item())

# %% nbgrader={"grade": true, "grade_id": "check_scaled_dot_product_attention", "locked": true, "points": 2, "schema_version": 3, "solution": false, "task": false}
check("day01-sdpa", "scaled_dot_product_attention", scaled_dot_product_attention, points=2)

# %% nbgrader={"grade": true, "grade_id": "hidden_scaled_dot_product_attention", "locked": true, "points": 1, "schema_version": 3, "solution": false, "task": false}
# When your notebook is graded, hidden tests run here: the same checks on fresh random shapes.
### BEGIN HIDDEN TESTS
check("day01-sdpa", "scaled_dot_product_attention", scaled_dot_product_attention, hidden=True, points=1)
### END HIDDEN TESTS

# %% [markdown]
# ## 5. Explore: look at your attention
#
# ### A soft dictionary
#
# Five animals are the keys. Each has four hand-made features: *furry, big, pet, swims*. Their values are typical weights in kilograms. Each query asks for a mix of features. Multiplying a query by a *sharpness* $s$ scales all its scores by $s$: a small $s$ averages over every animal, and a large $s$ becomes a hard lookup of the best match. Move the slider.

# %%
features = ["furry", "big", "pet", "swims"]
animals = ["cat", "dog", "horse", "shark", "goldfish"]
animal_keys = torch.tensor([[1, 0, 1, 0], [1, 0.5, 1, 0], [1, 1, 0, 0], [0, 1, 0, 1], [0, 0, 1, 1]])  # (5, 4)
kilograms = torch.tensor([[4.0], [30.0], [500.0], [1000.0], [0.1]])                               # (5, 1)
questions = ["furry pet", "big swimmer", "pet that swims", "big and furry"]
question_queries = torch.tensor([[1, 0, 1, 0], [0, 1, 0, 1], [0, 0, 1, 1], [1, 1, 0, 0]], dtype=torch.float32)  # (4, 4)


def show_lookup(sharpness=2.0):
    out, weights = scaled_dot_product_attention(sharpness * question_queries, animal_keys, kilograms)
    fig, ax = plt.subplots(figsize=(6, 3.2))
    plot_attention(weights, questions, animals, ax=ax, title=f"sharpness {sharpness:.1f}")
    fig.tight_layout()
    plt.show()
    for question, kg in zip(questions, out[:, 0].tolist()):
        print(f"{question:>15}: {kg:7.1f} kg")


interact(show_lookup, sharpness=FloatSlider(value=2.0, min=0.25, max=12.0, step=0.25));

# %% [markdown]
# ### Four hand-built heads
#
# A multi-head layer runs several attentions side by side, and each head is free to look for something different. Below, four heads are built by hand from one-hot vectors, so you can predict their pictures before you look:
#
# - **self**: $q_i = k_i = $ position $i$, so each token looks at itself;
# - **previous**: $q_i =$ position $i-1$, so each token looks one step back (the first one has nowhere to look, so it spreads its weight evenly);
# - **same word**: $q = k = $ the word's identity, so *the* looks at every *the*;
# - **average**: $q = 0$, so all scores are equal and the weights are uniform.
#
# Use the explorer: the *head* slider switches heads, *query* picks a row to examine (its weights appear as bars, with the row's entropy), and *scale* switches to a log colour scale, which shows the small weights.

# %%
sentence = "the cat sat on the mat and the dog sat too".split()
length, width, sharp = len(sentence), 16, 16.0
vocabulary = sorted(set(sentence))
position = torch.eye(length)                                                # (L, L) one-hot positions
word = torch.eye(len(vocabulary))[[vocabulary.index(w) for w in sentence]]  # (L, V) one-hot words


def embed(x):
    return F.pad(x, (0, width - x.shape[-1]))  # (L, width)


previous = position.roll(-1, dims=1)  # row i is one-hot at i - 1
previous[0] = 0                        # the first token has no previous one: it averages
head_queries = torch.stack([embed(position), embed(previous), embed(word), torch.zeros(length, width)])  # (H, L, width)
head_keys = torch.stack([embed(position), embed(position), embed(word), embed(word)])                   # (H, L, width)
head_values = torch.randn(4, length, 8)                                                                 # (H, L, dv)

_, head_weights = scaled_dot_product_attention(sharp * head_queries, head_keys, head_values)  # (H, L, L)
AttentionExplorer(head_weights, sentence, sentence, title="heads: self, previous, same word, average")

# %% [markdown]
# ## 6. Why divide by $\sqrt{d}$?
#
# Let $q, k \in \mathbb{R}^d$ have independent entries with mean 0 and variance 1. Then
#
# $$\operatorname{Var}(q \cdot k) = \sum_{i=1}^{d} \operatorname{Var}(q_i k_i) = d ,$$
#
# so raw scores typically have size $\sqrt{d}$. With $d = 128$ that is about 11, and a softmax over scores that far apart is nearly one-hot: one key takes all the weight, and the gradient through the others vanishes. Dividing by $\sqrt{d}$ brings the variance back to 1 whatever $d$ is (Vaswani et al., 2017, footnote 4). Below, we check this by measurement.

# %%
dims = [4, 16, 64, 256, 1024]
num_queries, num_keys = 512, 64
raw_var, scaled_var, raw_peak, scaled_peak = [], [], [], []
for d in dims:
    q, k = torch.randn(num_queries, d), torch.randn(num_keys, d)
    raw = q @ k.T                                                    # (queries, keys)
    scaled = attention_scores(q, k)                                  # raw / sqrt(d)
    raw_var.append(raw.var().item())
    scaled_var.append(scaled.var().item())
    raw_peak.append(stable_softmax(raw).amax(-1).mean().item())       # mean largest weight per query
    scaled_peak.append(stable_softmax(scaled).amax(-1).mean().item())

fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.5))
left.loglog(dims, raw_var, "o-", label="q·k")
left.loglog(dims, scaled_var, "o-", label="q·k / √d")
left.loglog(dims, dims, "k:", label="d")
left.set(xlabel="d", ylabel="variance of the scores", title="variance grows like d")
left.legend()
right.semilogx(dims, raw_peak, "o-", label="softmax(q·k)")
right.semilogx(dims, scaled_peak, "o-", label="softmax(q·k / √d)")
right.axhline(1 / num_keys, color="k", linestyle=":", label="uniform")
right.set(xlabel="d", ylabel="mean largest weight", title=f"saturation over {num_keys} keys")
right.legend()
plt.tight_layout()
plt.show()

# %% [markdown]
# Unscaled, the variance follows the $d$ line, and the largest weight climbs towards 1: the softmax saturates. Scaled, the variance stays near 1 and the weights stay spread out at every $d$.
#
# ## 7. Measure: the $L_q \times L_k$ matrix
#
# Your attention *materialises* the weights: one number per (query, key) pair, for each batch and head. Memory grows as $L^2$, and time grows as $L^2 d$. Below we time your function against PyTorch's fused `F.scaled_dot_product_attention` on the course device, and count the bytes of the weight matrix. On a GPU the lengths are larger.

# %%
batch, heads, head_dim = 1, 8, 64
lengths = [128, 256, 512, 1024, 2048] if device.type == "cpu" else [512, 1024, 2048, 4096, 8192]
lengths = lengths[:2] if course.being_graded() else lengths  # graded: no points here
yours, fused, weight_bytes = [], [], []
for length in lengths:
    q, k, v = (torch.randn(batch, heads, length, head_dim, device=device) for _ in range(3))
    yours.append(median_time(scaled_dot_product_attention, q, k, v, repeats=3))
    fused.append(median_time(F.scaled_dot_product_attention, q, k, v, repeats=3))
    _, weights = scaled_dot_product_attention(q, k, v)
    weight_bytes.append(weights.nelement() * weights.element_size())  # (B, H, L, L) floats
    del weights

print(f"{'L':>6} {'yours (ms)':>11} {'fused (ms)':>11} {'weights (MiB)':>14}")
for length, t_yours, t_fused, size in zip(lengths, yours, fused, weight_bytes):
    print(f"{length:>6} {1e3 * t_yours:>11.2f} {1e3 * t_fused:>11.2f} {size / 2**20:>14.1f}")

fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.5))
left.loglog(lengths, yours, "o-", label="yours")
left.loglog(lengths, fused, "o-", label="F.scaled_dot_product_attention")
left.set(xlabel="sequence length L", ylabel="seconds", title=f"time ({device.type})")
left.legend()
right.loglog(lengths, [b / 2**20 for b in weight_bytes], "o-", label="weights")
right.loglog(lengths, [weight_bytes[0] / 2**20 * (L / lengths[0]) ** 2 for L in lengths], "k:", label="∝ L²")
right.set(xlabel="sequence length L", ylabel="MiB", title="size of the weight matrix")
right.legend()
for ax in (left, right):
    ax.set_xticks(lengths, [str(L) for L in lengths])
    ax.minorticks_off()
plt.tight_layout()
plt.show()

# %% [markdown]
# The weight matrix grows four times for each doubling of $L$. At $L = 2048$, with 8 heads, it is already 128 MiB per sequence, in float32. The fused kernel can avoid storing it, because it only needs `out`. Days 5, 6 and 7 show how: sparse patterns skip most pairs, and the online softmax computes `out` tile by tile without ever holding the full matrix.
#
# ## 8. Recap
#
# - Attention is a soft dictionary lookup: $\operatorname{softmax}(QK^\top/\sqrt{d})\,V$, one row of weights per query, each row summing to 1 over the keys.
# - A stable softmax subtracts the max (the result is unchanged, and nothing overflows). A row of all $-\infty$ gives zeros; this is what masks rely on tomorrow.
# - Scores have variance $d$. Dividing by $\sqrt{d}$ keeps the softmax from saturating.
# - The $L_q \times L_k$ weights cost $O(L^2)$ memory. That cost is the reason for most of this course.
#
# ## Further reading
#
# - Bahdanau, Cho, Bengio (2014), *Neural Machine Translation by Jointly Learning to Align and Translate*: attention before transformers.
# - Vaswani et al. (2017), *Attention Is All You Need*, §3.2.1: scaled dot-product attention, and footnote 4 on $\sqrt{d}$.
# - The PyTorch docs of [`F.scaled_dot_product_attention`](https://pytorch.org/docs/stable/generated/torch.nn.functional.scaled_dot_product_attention.html): their reference code is what you just wrote, plus masks, dropout and the choice of fused kernels.
# - nanoGPT's `model.py` (`CausalSelfAttention`): the same computation inside a real model.
# - Milakov & Gimelshein (2018), *Online normalizer calculation for softmax*: the max trick, done in one pass; it comes back on day 6.
#
# **Next: day 2, masks.** Causal, padding and cross-attention masks, and why your all $-\infty$ row matters.
