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
# # Day 3 · Multi-head attention and positions
#
# [Open in Colab](https://colab.research.google.com/github/attention-from-scratch/attention-from-scratch/blob/main/exercises/day03-multihead/day03-multihead.ipynb)
#
# **What you will build.** The attention layer of a real transformer, and three ways to tell it where each token is:
#
# 1. `split_heads`, `merge_heads`, `repeat_kv`: the reshapes that turn one wide attention into many narrow ones, and share keys and values between heads;
# 2. `MultiHeadAttention(d_model, num_heads, num_kv_heads=None)`: projections, heads, attention and the output projection; self- and cross-attention, a boolean mask, and grouped-query attention (GQA/MQA);
# 3. `sinusoidal_positions`, `apply_rope`, `alibi_bias`: the original transformer's position table, rotary embeddings (Llama) and ALiBi's linear biases;
# 4. *Advanced:* `relative_position_bucket`, `shaw_relative_attention`, `relative_bias_attention`: learned relative positions, Shaw-style and T5-style; `memory_attention`: a gated memory of earlier segments (Transformer-XL-style).
#
# Then you train a tiny transformer on a toy task in a few seconds and look inside every head of every layer.
#
# **Prerequisites.** Day 1 (scaled dot-product attention) and day 2 (boolean masks, True = may attend). You do not need your own answers from those days: the course provides `course.reference.masks.attention(q, k, v, mask)` and `causal_mask`, and you use them here.
# **Time.** About 3 hours.
#
# **How this notebook works.** Each exercise has a cell ending in `raise NotImplementedError()`: replace that line with your code. Run the check cell under it: it prints ✓ or ✗ for each check and, for a ✗, names the mistake and gives a hint. When your notebook is graded, hidden checks draw new random shapes.
#
# **Not allowed inside your code:** `nn.MultiheadAttention` and `F.multi_head_attention_forward`, `F.scaled_dot_product_attention` in the advanced exercises, and the course's own day 3 versions in `course.reference.multihead` (the checks detect them while your code runs). Outside your functions they are fine: below we use them to check answers.

# %% nbgrader={"grade": false, "grade_id": "setup", "locked": true, "schema_version": 3, "solution": false, "task": false}
import math
import time

import matplotlib.pyplot as plt
import torch
import torch.nn as nn
import torch.nn.functional as F

import course
from course.reference.masks import attention, causal_mask
from course.bench import median_time
from course.models.tiny_transformer import attention_maps, make_batch, token_labels, train
from course.explore.heatmap import ModelExplorer, plot_attention
from grader import check

device = course.get_device()
course.seed_everything(0)
print(course.describe_device())

# %% [markdown]
# ## 1. Many heads, one matrix multiply
#
# One attention gives each query one distribution over the keys: it can look for one thing at a time. Multi-head attention runs $H$ attentions side by side, each on its own slice of the features, and concatenates their answers:
#
# $$
# \operatorname{head}_h = \operatorname{Attention}(X W^Q_h,\; C W^K_h,\; C W^V_h), \qquad
# \operatorname{MHA}(X, C) = \operatorname{concat}(\operatorname{head}_1, \dots, \operatorname{head}_H)\, W^O ,
# $$
#
# with $X$ the queries' tokens, $C$ the context ($C = X$ for self-attention), $W^Q_h \in \mathbb{R}^{d_{\text{model}} \times d_h}$ and $d_h = d_{\text{model}} / H$. Nobody runs $H$ small matrix multiplies: one `nn.Linear(d_model, d_model)` computes all the heads' queries at once, and head $h$ owns the contiguous features $[h\,d_h, (h+1)\,d_h)$ of its output. *Splitting the heads* is then only a reshape, `(B, L, d_model) -> (B, L, H, d_h)`, and a transpose that brings the heads next to the batch, `(B, H, L, d_h)`, where attention treats them as extra batch dimensions.
#
# Tiny example: two tokens with $d_{\text{model}} = 6$ and $H = 2$ heads, so head 0 gets features 0–2 of each token and head 1 gets features 3–5.

# %%
x = torch.arange(2 * 6.0).view(1, 2, 6)                 # (B=1, L=2, d_model=6): token 0 is 0..5, token 1 is 6..11
right = x.view(1, 2, 2, 3).transpose(1, 2)              # (B, H, L, dh)
wrong = x.reshape(1, 2, 2, 3)                           # same shape, no transpose
print("head 0, right:\n", right[0, 0])                  # features 0-2 of each token
print("head 0, reshape without transpose:\n", wrong[0, 0])  # all of token 0: not a head at all


# %% [markdown]
# The reshape without a transpose has the right *shape* and the wrong *contents*: its "head 0" is token 0's whole feature vector. Nothing crashes, and the model silently mixes tokens. This is the most common bug in hand-written attention layers.
#
# ### Exercise 1: `split_heads`
#
# The checks recognise: a reshape without a transpose, heads that take strided features (`view(B, L, dh, H)`), and a `d_model` that `num_heads` does not divide and that is not refused with a clear `ValueError`.

# %% nbgrader={"grade": false, "grade_id": "split_heads", "locked": false, "schema_version": 3, "solution": true, "task": false}
def split_heads(x: torch.Tensor, num_heads: int) -> torch.Tensor:
    """(B, L, d_model) -> (B, num_heads, L, d_model // num_heads).

    Head h owns the contiguous features [h*dh, (h+1)*dh) of every token (as nn.MultiheadAttention).
    Keeps x's dtype and device; the result may be a view of x.
    Raises ValueError when num_heads does not divide d_model.
    Not allowed: course.reference.multihead.
    """
    ### BEGIN SOLUTION
    batch, length, d_model = x.shape
    if d_model % num_heads != 0:
        raise ValueError(f"d_model={d_model} is not divisible by num_heads={num_heads}")
    return x.view(batch, length, num_heads, d_model // num_heads).transpose(1, 2)  # (B, H, L, dh)
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "check_split_heads", "locked": true, "points": 2, "schema_version": 3, "solution": false, "task": false}
check("day03-multihead", "split_heads", split_heads, points=2)

# %% nbgrader={"grade": true, "grade_id": "hidden_split_heads", "locked": true, "points": 1, "schema_version": 3, "solution": false, "task": false}
# When your notebook is graded, hidden tests run here: the same checks on fresh random shapes.
### BEGIN HIDDEN TESTS
check("day03-multihead", "split_heads", split_heads, hidden=True, points=1)
### END HIDDEN TESTS

# %% [markdown]
# ### Exercise 2: `merge_heads`
#
# The inverse: `(B, H, L, dh) -> (B, L, H*dh)`, so that the features of head $h$ land back in $[h\,d_h, (h+1)\,d_h)$. After a transpose the tensor is not contiguous: `.view` refuses it, `.reshape` copies when it must.
#
# The checks recognise: a reshape without moving the heads axis back first.

# %% nbgrader={"grade": false, "grade_id": "merge_heads", "locked": false, "schema_version": 3, "solution": true, "task": false}
def merge_heads(x: torch.Tensor) -> torch.Tensor:
    """(B, H, L, dh) -> (B, L, H * dh), the inverse of split_heads. Keeps dtype and device.

    Not allowed: course.reference.multihead.
    """
    ### BEGIN SOLUTION
    batch, heads, length, head_dim = x.shape
    return x.transpose(1, 2).reshape(batch, length, heads * head_dim)  # (B, L, H*dh)
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "check_merge_heads", "locked": true, "points": 2, "schema_version": 3, "solution": false, "task": false}
check("day03-multihead", "merge_heads", merge_heads, points=2)

# %% nbgrader={"grade": true, "grade_id": "hidden_merge_heads", "locked": true, "points": 1, "schema_version": 3, "solution": false, "task": false}
# When your notebook is graded, hidden tests run here: the same checks on fresh random shapes.
### BEGIN HIDDEN TESTS
check("day03-multihead", "merge_heads", merge_heads, hidden=True, points=1)
### END HIDDEN TESTS

# %% [markdown]
# ## 2. Sharing keys and values: GQA and MQA
#
# When a model generates text, it keeps every past token's keys and values (the KV cache, day 4). That cache, not the weights, fills the GPU's memory for long sequences. *Multi-query attention* (Shazeer, 2019) keeps a single K/V head shared by all query heads; *grouped-query attention* (Ainslie et al., 2023; Llama 2 70B, Mistral) keeps $H_{kv}$ K/V heads, each shared by a group of $H / H_{kv}$ consecutive query heads:
#
# $$\text{query head } h \text{ reads K/V head } \lfloor h / n_{\text{rep}} \rfloor, \qquad n_{\text{rep}} = H / H_{kv}.$$
#
# The cache shrinks by $n_{\text{rep}}$. To reuse ordinary attention, repeat each K/V head $n_{\text{rep}}$ times in a row: heads `[a, b]` with $n_{\text{rep}} = 2$ become `[a, a, b, b]` (not `[a, b, a, b]`).
#
# ### Exercise 3: `repeat_kv`
#
# The checks recognise: heads tiled (`x.repeat(1, n_rep, 1, 1)` gives `[a, b, a, b]`), the repeat along the wrong axis (the batch, `dim=0`, or the length) or without `dim=`, and each head copied $n_{\text{rep}} + 1$ times ($n_{\text{rep}}$ counted as the extra copies).

# %% nbgrader={"grade": false, "grade_id": "repeat_kv", "locked": false, "schema_version": 3, "solution": true, "task": false}
def repeat_kv(x: torch.Tensor, n_rep: int) -> torch.Tensor:
    """(B, Hkv, L, D) -> (B, Hkv * n_rep, L, D): each KV head repeated n_rep times in a row,
    so query head h uses KV head h // n_rep. n_rep = 1 returns x unchanged.

    Not allowed: course.reference.multihead.
    """
    ### BEGIN SOLUTION
    if n_rep == 1:
        return x
    return x.repeat_interleave(n_rep, dim=1)  # [a, b] -> [a, a, b, b]
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "check_repeat_kv", "locked": true, "points": 2, "schema_version": 3, "solution": false, "task": false}
check("day03-multihead", "repeat_kv", repeat_kv, points=2)

# %% nbgrader={"grade": true, "grade_id": "hidden_repeat_kv", "locked": true, "points": 1, "schema_version": 3, "solution": false, "task": false}
# When your notebook is graded, hidden tests run here: the same checks on fresh random shapes.
### BEGIN HIDDEN TESTS
check("day03-multihead", "repeat_kv", repeat_kv, hidden=True, points=1)
### END HIDDEN TESTS

# %% [markdown]
# ## 3. The layer
#
# Four projections and the pieces above:
#
# ```
# q = split_heads(q_proj(x), H)                      (B, H,   Lq, dh)
# k = split_heads(k_proj(context), Hkv)              (B, Hkv, Lk, dh)   context = x for self-attention
# v = split_heads(v_proj(context), Hkv)              (B, Hkv, Lk, dh)
# k, v = repeat_kv(k, H // Hkv), repeat_kv(v, ...)   (B, H,   Lk, dh)
# out, weights = attention(q, k, v, mask)            (B, H,   Lq, dh), (B, H, Lq, Lk)
# return out_proj(merge_heads(out)), weights         (B, Lq, d_model)
# ```
#
# For the attention itself, use the course's `attention(q, k, v, mask)` from day 1 and 2 (already imported): it scales by $1/\sqrt{d}$ with $d$ = `q.shape[-1]`, which is the **head** dimension $d_h$ here, not $d_{\text{model}}$. The mask is boolean with True = may attend, and broadcasts to `(B, H, Lq, Lk)`.
#
# ### Exercise 4: `MultiHeadAttention`
#
# The checks copy the weights of a `torch.nn.MultiheadAttention` into yours and compare outputs and head-averaged weights; for GQA they compare with `nn.MultiheadAttention` holding each K/V head repeated for its group. They recognise: heads split without a transpose (all of them, or only the queries), scores scaled by $d_{\text{model}}$ instead of $d_h$ or scaled twice (`q` divided by $\sqrt{d_h}$ before `attention`, which divides again), queries computed from `context`, keys and values split into `num_heads` heads or repeated by the wrong count, keys and values kept on `self` from an earlier call (one check calls a module twice), a missing or mis-shaped projection, `context` or `mask` ignored, an inverted mask, weights averaged over heads instead of per head, weights returned when `need_weights=False`, query heads paired with K/V head `h % Hkv`, and bad head counts not refused with a `ValueError`.

# %% nbgrader={"grade": false, "grade_id": "MultiHeadAttention", "locked": false, "schema_version": 3, "solution": true, "task": false}
class MultiHeadAttention(nn.Module):
    """Multi-head attention with grouped-query (GQA) and multi-query (MQA) variants.

    MultiHeadAttention(d_model, num_heads, num_kv_heads=None, bias=True):
        q_proj, out_proj: nn.Linear(d_model, d_model); k_proj, v_proj: nn.Linear(d_model,
        num_kv_heads * head_dim), with head_dim = d_model // num_heads. num_kv_heads=None means
        num_heads (ordinary MHA); 1 is MQA. Raises ValueError when num_heads does not divide
        d_model or num_kv_heads does not divide num_heads.

    forward(x, context=None, mask=None, need_weights=False) -> (out, weights or None):
        x (B, Lq, d_model); context (B, Lk, d_model), or None for self-attention;
        mask: bool, True = may attend, broadcastable to (B, H, Lq, Lk).
        out (B, Lq, d_model); weights (B, num_heads, Lq, Lk) when need_weights, else None.

    Use your split_heads, merge_heads, repeat_kv and the course's attention(q, k, v, mask).
    Not allowed: nn.MultiheadAttention, F.multi_head_attention_forward, course.reference.multihead.
    """

    def __init__(self, d_model: int, num_heads: int, num_kv_heads: int = None, bias: bool = True):
        super().__init__()
        ### BEGIN SOLUTION
        num_kv_heads = num_heads if num_kv_heads is None else num_kv_heads
        if d_model % num_heads != 0:
            raise ValueError(f"d_model={d_model} is not divisible by num_heads={num_heads}")
        if num_heads % num_kv_heads != 0:
            raise ValueError(f"num_heads={num_heads} is not a multiple of num_kv_heads={num_kv_heads}")
        self.num_heads, self.num_kv_heads = num_heads, num_kv_heads
        head_dim = d_model // num_heads
        self.q_proj = nn.Linear(d_model, d_model, bias=bias)
        self.k_proj = nn.Linear(d_model, num_kv_heads * head_dim, bias=bias)
        self.v_proj = nn.Linear(d_model, num_kv_heads * head_dim, bias=bias)
        self.out_proj = nn.Linear(d_model, d_model, bias=bias)
        ### END SOLUTION

    def forward(self, x, context=None, mask=None, need_weights=False):
        ### BEGIN SOLUTION
        context = x if context is None else context
        q = split_heads(self.q_proj(x), self.num_heads)              # (B, H, Lq, dh)
        k = split_heads(self.k_proj(context), self.num_kv_heads)     # (B, Hkv, Lk, dh)
        v = split_heads(self.v_proj(context), self.num_kv_heads)     # (B, Hkv, Lk, dh)
        n_rep = self.num_heads // self.num_kv_heads
        k, v = repeat_kv(k, n_rep), repeat_kv(v, n_rep)              # (B, H, Lk, dh)
        out, weights = attention(q, k, v, mask)                      # scaled by 1/sqrt(dh)
        out = self.out_proj(merge_heads(out))                        # (B, Lq, d_model)
        return out, (weights if need_weights else None)
        ### END SOLUTION


# %%
# Yours against PyTorch's, with the same weights: copy nn.MultiheadAttention's packed in_proj into q/k/v.
torch_mha = nn.MultiheadAttention(16, 4, batch_first=True).eval()
mine = MultiHeadAttention(16, 4).eval()
with torch.no_grad():
    for proj, weight, bias in zip([mine.q_proj, mine.k_proj, mine.v_proj],
                                  torch_mha.in_proj_weight.chunk(3), torch_mha.in_proj_bias.chunk(3)):
        proj.weight.copy_(weight)
        proj.bias.copy_(bias)
    mine.out_proj.load_state_dict(torch_mha.out_proj.state_dict())
x = torch.randn(2, 5, 16)
out, weights = mine(x, need_weights=True)
ref_out, ref_weights = torch_mha(x, x, x)  # torch averages the weights over heads by default
print("out:", out.shape, "max |diff|", (out - ref_out).abs().max().item())
print("weights:", weights.shape, "max |diff| of the head average", (weights.mean(1) - ref_weights).abs().max().item())
print("GQA k_proj:", MultiHeadAttention(16, 4, num_kv_heads=2).k_proj, " MQA:", MultiHeadAttention(16, 4, num_kv_heads=1).k_proj)

# %% nbgrader={"grade": true, "grade_id": "check_MultiHeadAttention", "locked": true, "points": 2, "schema_version": 3, "solution": false, "task": false}
check("day03-multihead", "MultiHeadAttention", MultiHeadAttention, points=2)

# %% nbgrader={"grade": true, "grade_id": "hidden_MultiHeadAttention", "locked": true, "points": 1, "schema_version": 3, "solution": false, "task": false}
# When your notebook is graded, hidden tests run here: the same checks on fresh random shapes.
### BEGIN HIDDEN TESTS
check("day03-multihead", "MultiHeadAttention", MultiHeadAttention, hidden=True, points=1)
### END HIDDEN TESTS

# %% [markdown]
# ## 4. Where is each token? Positions
#
# Attention is *permutation-equivariant*: shuffle the tokens and the outputs shuffle the same way, because $q_i \cdot k_j$ never sees $i$ or $j$. "dog bites man" and "man bites dog" look the same. Three fixes, in historical order.
#
# ### Sinusoidal positions (Vaswani et al., 2017)
#
# Add to token $p$'s embedding a fixed vector of sines and cosines at geometrically spaced frequencies:
#
# $$\mathrm{PE}[p, 2i] = \sin\!\left(\frac{p}{10000^{2i/d}}\right), \qquad \mathrm{PE}[p, 2i+1] = \cos\!\left(\frac{p}{10000^{2i/d}}\right), \qquad p = 0, 1, \dots$$
#
# Column pair $i$ is a clock with period $2\pi \cdot 10000^{2i/d}$: the first pair ticks every token, the last one barely moves over thousands. Tiny example with $d = 4$: $\mathrm{PE}[0] = [0, 1, 0, 1]$ and $\mathrm{PE}[1] = [\sin 1, \cos 1, \sin 0.01, \cos 0.01] \approx [0.841, 0.540, 0.010, 1.000]$.
#
# ### Exercise 5: `sinusoidal_positions`
#
# The checks recognise: positions counted from 1, sines and cosines concatenated in halves instead of interleaved, sin and cos swapped, a frequency exponent of $i/d$ instead of $2i/d$, and angles multiplied by $10000^{2i/d}$ instead of divided by it.

# %% nbgrader={"grade": false, "grade_id": "sinusoidal_positions", "locked": false, "schema_version": 3, "solution": true, "task": false}
def sinusoidal_positions(length: int, dim: int) -> torch.Tensor:
    """The transformer's position table, (length, dim) float32, positions 0 .. length-1:
    PE[p, 2i] = sin(p / 10000^(2i/dim)), PE[p, 2i+1] = cos(p / 10000^(2i/dim)). dim is even.

    Not allowed: course.reference.multihead.
    """
    ### BEGIN SOLUTION
    position = torch.arange(length, dtype=torch.float32).unsqueeze(-1)                # (L, 1)
    frequency = 10000.0 ** (-torch.arange(0, dim, 2, dtype=torch.float32) / dim)     # (dim/2,)
    angle = position * frequency                                                     # (L, dim/2)
    table = torch.empty(length, dim)
    table[:, 0::2] = torch.sin(angle)
    table[:, 1::2] = torch.cos(angle)
    return table
    ### END SOLUTION


# %%
print(sinusoidal_positions(2, 4))  # [0, 1, 0, 1] and [0.841, 0.540, 0.010, 1.000]
fig, ax = plt.subplots(figsize=(8, 2.6))
image = ax.imshow(sinusoidal_positions(64, 64).T, aspect="auto", cmap="RdBu", vmin=-1, vmax=1)
ax.set(xlabel="position p", ylabel="column", title="sinusoidal positions: fast clocks at the top, slow ones below")
fig.colorbar(image, ax=ax)
plt.show()

# %% nbgrader={"grade": true, "grade_id": "check_sinusoidal_positions", "locked": true, "points": 2, "schema_version": 3, "solution": false, "task": false}
check("day03-multihead", "sinusoidal_positions", sinusoidal_positions, points=2)

# %% nbgrader={"grade": true, "grade_id": "hidden_sinusoidal_positions", "locked": true, "points": 1, "schema_version": 3, "solution": false, "task": false}
# When your notebook is graded, hidden tests run here: the same checks on fresh random shapes.
### BEGIN HIDDEN TESTS
check("day03-multihead", "sinusoidal_positions", sinusoidal_positions, hidden=True, points=1)
### END HIDDEN TESTS

# %% [markdown]
# ### Rotary position embeddings (Su et al., 2021)
#
# Instead of *adding* a position to the token, RoPE *rotates* each query and key by an angle proportional to its position, just before the dot product. Split the head's $D$ features into pairs and rotate pair $i$ by $p\,\theta_i$, with $\theta_i = \text{base}^{-2i/D}$. Since a rotation by $a$ followed by the transpose of a rotation by $b$ is a rotation by $a - b$,
#
# $$\langle R_m q,\; R_n k\rangle = q^\top R_m^\top R_n k = q^\top R_{n-m}\, k ,$$
#
# the score depends on the positions **only through $m - n$**: attention becomes relative, and there is nothing to learn.
#
# Which features form a pair is a convention. The RoFormer paper pairs $(2i, 2i+1)$; GPT-NeoX and Llama pair $(i, i + D/2)$ ("rotate-half"), which needs no interleaving: with $x_1, x_2$ the two halves of the features,
#
# $$\operatorname{rope}(x, p) = [\,x_1 \cos(p\theta) - x_2 \sin(p\theta),\;\; x_2 \cos(p\theta) + x_1 \sin(p\theta)\,].$$
#
# The two conventions give different numbers (weights trained with one do not work with the other). We use rotate-half.
#
# ### Exercise 6: `apply_rope`
#
# The checks recognise: pairs $(2i, 2i+1)$ instead of $(i, i + D/2)$, rotation in the wrong direction, $\theta_i = \text{base}^{-i/D}$, positions offset by one, `positions` or `base` ignored, angles computed in float32 for a float64 input, a rotation that changes norms or loses the relative property, and an odd $D$ not refused with a `ValueError`.

# %% nbgrader={"grade": false, "grade_id": "apply_rope", "locked": false, "schema_version": 3, "solution": true, "task": false}
def apply_rope(x: torch.Tensor, positions: torch.Tensor, base: float = 10000.0) -> torch.Tensor:
    """Rotary position embedding, rotate-half convention (GPT-NeoX / Llama).

    Args:
        x: (..., L, D) queries or keys, D even; float32 or float64.
        positions: LongTensor of positions, broadcastable to (..., L), e.g. torch.arange(L)
            or (B, 1, L) with a different start per sequence.
        base: theta_i = base^(-2i/D) for i = 0 .. D/2 - 1.

    Returns:
        x's shape and dtype: with x1, x2 = x[..., :D/2], x[..., D/2:] and angle = p * theta_i,
        cat([x1*cos - x2*sin, x2*cos + x1*sin], dim=-1).
    Raises ValueError for an odd D. Not allowed: course.reference.multihead.
    """
    ### BEGIN SOLUTION
    dim = x.shape[-1]
    if dim % 2 != 0:
        raise ValueError(f"RoPE needs an even head dimension, got D={dim}")
    theta = base ** (-torch.arange(0, dim, 2, dtype=x.dtype, device=x.device) / dim)  # (D/2,)
    angle = positions.to(device=x.device, dtype=x.dtype).unsqueeze(-1) * theta        # (..., L, D/2)
    cos, sin = torch.cos(angle), torch.sin(angle)
    x1, x2 = x[..., : dim // 2], x[..., dim // 2:]
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)
    ### END SOLUTION


# %%
# The relative property: the score of a query at m and a key at n depends only on m - n.
q, k = torch.randn(1, 64, dtype=torch.float64), torch.randn(1, 64, dtype=torch.float64)
def score(m, n):
    return (apply_rope(q, torch.tensor([m])) * apply_rope(k, torch.tensor([n]))).sum().item()
for m, n in [(3, 1), (10, 8), (1002, 1000)]:
    print(f"m={m:5d} n={n:5d}  m-n={m - n}  score {score(m, n):+.10f}")
print("norm before", q.norm().item(), "after", apply_rope(q, torch.tensor([77])).norm().item())

# How the score of a fixed pair (q = k) decays with distance: nearby tokens match best.
distances = torch.arange(0, 200)
same = torch.randn(1, 64).repeat(200, 1)                     # 200 copies of one vector
rotated = apply_rope(same, distances)                        # the key at distance d
scores = (rotated * same[:1]).sum(-1) / same[0].norm() ** 2  # cos of the angle to position 0
fig, ax = plt.subplots(figsize=(7, 2.5))
ax.plot(distances, scores)
ax.set(xlabel="m - n", ylabel="normalised score", title="RoPE: <rope(x, m), rope(x, 0)> for one x")
plt.show()

# %% nbgrader={"grade": true, "grade_id": "check_apply_rope", "locked": true, "points": 2, "schema_version": 3, "solution": false, "task": false}
check("day03-multihead", "apply_rope", apply_rope, points=2)

# %% nbgrader={"grade": true, "grade_id": "hidden_apply_rope", "locked": true, "points": 1, "schema_version": 3, "solution": false, "task": false}
# When your notebook is graded, hidden tests run here: the same checks on fresh random shapes.
### BEGIN HIDDEN TESTS
check("day03-multihead", "apply_rope", apply_rope, hidden=True, points=1)
### END HIDDEN TESTS

# %% [markdown]
# ### ALiBi (Press et al., 2022)
#
# ALiBi adds no embedding at all. Head $h$ adds a penalty proportional to the distance to each score: $\text{scores} + b_h$ with
#
# $$b_h[i, j] = -m_h\,(\text{pos}_q(i) - j), \qquad m_h = 2^{-8h/H},\; h = 1, \dots, H .$$
#
# The slopes form a geometric sequence: for $H = 8$ they are $\tfrac12, \tfrac14, \dots, \tfrac1{256}$, so some heads look very locally and some almost uniformly. When $H$ is not a power of two, the paper's code (`get_slopes`) takes the $n$ slopes of the closest power of two below, $n$, then every other slope of $2n$ until there are $H$: for $H = 6$, the four slopes of $n = 4$ and then the first two of every other slope of $2n = 8$ (its slopes 0 and 2 counting from 0, `[0::2]`), that is $[2^{-2}, 2^{-4}, 2^{-6}, 2^{-8}, 2^{-1}, 2^{-3}]$.
#
# Queries are bottom-right aligned as in day 2: query $i$ is at position $L_k - L_q + i$, so the diagonal is 0. Future keys get positive values; the causal mask removes them.
#
# ### Exercise 7: `alibi_bias`
#
# The checks recognise: slopes counted from $h = 0$, the wrong sign, queries at $0..L_q-1$ (top-left), future keys clipped to 0 or $|\,i - j\,|$ used, $2^{-8h/H}$ used when $H$ is not a power of two, $H$ rounded up to the next power of two, and the slopes sorted or the extra ones put first.

# %% nbgrader={"grade": false, "grade_id": "alibi_bias", "locked": false, "schema_version": 3, "solution": true, "task": false}
def alibi_bias(num_heads: int, lq: int, lk: int) -> torch.Tensor:
    """ALiBi's biases, (num_heads, lq, lk) float32: bias[h, i, j] = -m_h * (pos_q(i) - j),
    with pos_q(i) = lk - lq + i (bottom-right) and the paper's slopes m_h: 2^(-8h/H), h = 1..H,
    when H is a power of two; otherwise those of the closest power of two n below H, then every
    other slope of 2n. Future keys (j > pos_q) get positive values: masking is not done here.

    Not allowed: course.reference.multihead.
    """
    ### BEGIN SOLUTION
    def geometric(n):  # 2^(-8h/n), h = 1..n
        return 2.0 ** (-8.0 * torch.arange(1, n + 1, dtype=torch.float64) / n)

    closest = 2 ** int(math.log2(num_heads))
    slopes = geometric(closest)
    if closest < num_heads:
        slopes = torch.cat([slopes, geometric(2 * closest)[0::2][: num_heads - closest]])
    pos_q = torch.arange(lq, dtype=torch.float64).unsqueeze(-1) + (lk - lq)  # (lq, 1)
    distance = pos_q - torch.arange(lk, dtype=torch.float64)                # (lq, lk)
    return (-slopes.view(-1, 1, 1) * distance).float()                     # (H, lq, lk)
    ### END SOLUTION


# %%
bias = alibi_bias(8, 6, 6)
print("slopes (the bias one key back):", (-bias[:, 1, 0]).tolist())
fig, axes = plt.subplots(1, 3, figsize=(11, 3))
for ax, head in zip(axes, [0, 3, 7]):
    plot_attention(bias[head], ax=ax, scale="auto", title=f"head {head}: m = {2 ** (-(head + 1)):.4g}", annotate=True)
fig.tight_layout()
plt.show()

# %% nbgrader={"grade": true, "grade_id": "check_alibi_bias", "locked": true, "points": 2, "schema_version": 3, "solution": false, "task": false}
check("day03-multihead", "alibi_bias", alibi_bias, points=2)

# %% nbgrader={"grade": true, "grade_id": "hidden_alibi_bias", "locked": true, "points": 1, "schema_version": 3, "solution": false, "task": false}
# When your notebook is graded, hidden tests run here: the same checks on fresh random shapes.
### BEGIN HIDDEN TESTS
check("day03-multihead", "alibi_bias", alibi_bias, hidden=True, points=1)
### END HIDDEN TESTS

# %% [markdown]
# ## 5. Explore: what does a tiny transformer's every head do?
#
# `course.models.tiny_transformer` has a 2-layer, 4-head, $d_{\text{model}} = 64$ causal decoder built on the course's library `MultiHeadAttention` (the same layer as yours), with learned positions, and toy tasks with real structure. We train it to **reverse** 8 digits: it reads `5 2 1 6 3 7 7 9 |` and must write `9 7 7 3 6 1 2 5`. Each answer token has to find one particular input token, by position. On a 2-core CPU, 300 steps take a few seconds and reach 100% accuracy (every token and every string right) on 1000 fresh strings.

# %%
steps = 30 if course.being_graded() else 300  # graded: no points here
result = train("reverse", length=8, steps=steps, seed=0)
print(f"trained {result.steps} steps in {result.seconds:.1f} s: token accuracy {result.token_accuracy:.1%}, "
      f"whole strings right {result.sequence_accuracy:.1%} (1000 fresh strings)")

# %% [markdown]
# Below: every head of the selected layer, for one string. Row $i$ is the token at position $i$ looking back over the keys (the causal mask hides the future). Each title gives the head's mean entropy in nats (0 = looks at one key) and its mean attention distance in positions.
#
# What to look for: in the answer rows (below the `|` row) the heads form an **anti-diagonal**: the token written at answer position $j$ looks at input $8 - j$, the one it must copy next. Before the separator there is nothing to do, and the heads smear or look at the first token. Switch layers, switch *view* to *single* to study one head, and try the log scale. Then retrain with `train("sort")` or `train("copy")` and compare: copy gives a diagonal shifted by 9, sort heads look for the next digit by value, not by position.

# %%
sequence = make_batch("reverse", 1, 8, torch.Generator().manual_seed(7))[0]
tokens = token_labels(sequence[:-1])                  # the model reads all but the last token
weights_per_layer = attention_maps(result.model, sequence[:-1])  # [layer 0 (H, L, L), layer 1 (H, L, L)]
ModelExplorer(weights_per_layer, tokens, tokens, title="reverse: " + " ".join(token_labels(sequence)))

# %% [markdown]
# ## 6. Measure: what GQA saves
#
# With the same $d_{\text{model}}$ and query heads, fewer K/V heads shrink `k_proj` and `v_proj` and, above all, the K/V that a generating model keeps per token: $2 \times H_{kv} \times d_h$ numbers per layer. Below, your layer with $H = 8$ query heads and $H_{kv} = 8, 4, 2, 1$: its parameters, the K/V bytes per token, and the time of a forward pass (larger on a GPU).

# %%
d_model, heads = 512, 8
length = 256 if device.type == "cpu" else 2048
x = torch.randn(4, length, d_model, device=device)
with torch.no_grad():  # one untimed pass first: the very first call pays for allocations
    MultiHeadAttention(d_model, heads).to(device).eval()(x)
rows = []
for kv_heads in [8, 4, 2, 1]:
    layer = MultiHeadAttention(d_model, heads, num_kv_heads=kv_heads).to(device).eval()
    with torch.no_grad():
        seconds = median_time(layer, x, repeats=5)
    params = sum(p.numel() for p in layer.parameters())
    kv_bytes = 2 * kv_heads * (d_model // heads) * x.element_size()
    rows.append((kv_heads, params, kv_bytes, seconds))
    print(f"Hkv={kv_heads}: {params / 1e6:.2f} M parameters, {kv_bytes:5d} bytes of K/V per token per layer, "
          f"forward {1e3 * seconds:.1f} ms")

fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3))
labels = [f"{r[0]}" for r in rows]
left.bar(labels, [r[2] for r in rows])
left.set(xlabel="K/V heads", ylabel="bytes per token per layer", title="KV cache per token (float32)")
right.bar(labels, [1e3 * r[3] for r in rows])
right.set(xlabel="K/V heads", ylabel="ms", title=f"forward, B=4, L={length} ({device.type})")
plt.tight_layout()
plt.show()


# %% [markdown]
# The cache shrinks in proportion to $H_{kv}$; the time shrinks far less (only `k_proj` and `v_proj` get smaller), because the query-side work (all 8 heads of attention) is the same. On a shared CPU the times also jump by tens of percent from run to run: compare them with the 8× drop of the cache, not with each other. That is the trade GQA makes: a much smaller cache for a small loss in quality (Ainslie et al. report close to MHA quality with 8 groups).

# %% [markdown]
# ## 7. Advanced: relative positions (Shaw et al., 2018; T5, 2020)
#
# RoPE and ALiBi make scores depend on $j - i$ with nothing to learn. The two schemes below *learn* what each relative distance means, and are the ancestors of both: Shaw, Uszkoreit and Vaswani's learned relative embeddings (2018), and T5's bucketed relative bias (Raffel et al., 2020), still used by T5, Flan-T5 and many encoders.
#
# **Shaw et al.** learn one vector per clipped distance $d = \operatorname{clip}(j - i, -P, P)$, for the keys and (optionally) the values: two tables $a^K, a^V \in \mathbb{R}^{(2P+1) \times D}$, row $d + P$ for distance $d$, and
#
# $$\text{scores}_{ij} = \frac{q_i \cdot (k_j + a^K_{ij})}{\sqrt{D}}, \qquad \text{out}_i = \sum_j w_{ij}\,(v_j + a^V_{ij}), \qquad a^K_{ij} = a^K[\operatorname{clip}(j - i, -P, P) + P].$$
#
# Beyond $P$ every distance shares the edge vector: the model knows "near, and on which side", not "exactly how far". Shaw et al. found $P = 16$ as good as larger values.
#
# **T5** keeps one learned *scalar* per head and per **bucket** of distances, added to the scores like ALiBi's bias: $\text{scores}_{ij} = q_i \cdot k_j + b_h[\operatorname{bucket}(j - i)]$ (T5 does not divide by $\sqrt{D}$; we keep a `scale` argument). The buckets are fine nearby and coarse far away: with $n = i - j$ (how far back the key is), $N$ buckets per direction and $n_{\text{exact}} = N / 2$,
#
# $$\operatorname{bucket}(n) = \begin{cases} n & n < n_{\text{exact}} \\ \min\!\Big(N - 1,\; n_{\text{exact}} + \Big\lfloor \dfrac{\log(n / n_{\text{exact}})}{\log(\text{max\_distance} / n_{\text{exact}})}\,(N - n_{\text{exact}}) \Big\rfloor\Big) & n \ge n_{\text{exact}} \end{cases}$$
#
# A bidirectional model (the encoder) splits `num_buckets` in two, $N$ = `num_buckets // 2`: the past in buckets $0..N-1$, the future ($n < 0$, use $|n|$) in $N..2N-1$. A causal model (the decoder) gives all $N$ = `num_buckets` to the past and sends the future to bucket 0 (the causal mask hides it anyway).
#
# Tiny example, `num_buckets = 8`, `max_distance = 16`, bidirectional: $N = 4$, $n_{\text{exact}} = 2$. Keys 0 and 1 back get buckets 0 and 1; from 2 back, $2 + \lfloor \log(n/2)/\log 8 \cdot 2 \rfloor$: 2 for $n = 2..5$ ($\log 2.5 / \log 8 \cdot 2 = 0.88$), 3 from $n = 6$ on ($1.06$), and at $n = 16$ the formula reaches 4, which the clamp keeps at 3. Keys 1 ahead get $4 + 1 = 5$, 2 to 5 ahead 6, 6 and beyond 7. (Bucket 4 would be "0 ahead", which is 0 back: never used.) The cell under the exercise prints this table.
#
# ### Exercise 8: `relative_position_bucket`
#
# Signature as in Hugging Face's `T5Attention._relative_position_bucket`: `relative_position` is **memory position − query position** (negative for keys in the past).
#
# The checks compare with a brute-force transcription of the paper's code and recognise: the sign flipped (query − memory), `bidirectional=False` treated as bidirectional, an off-by-one at the exact/log boundary, no clamp at the last bucket, $n_{\text{exact}}$ computed before halving, the log part rounded instead of truncated, `relative_position` changed in place (`abs_()`), and parameters that leave no exact or no log bucket (`max_distance <= max_exact`) not refused with a `ValueError`.

# %% nbgrader={"grade": false, "grade_id": "relative_position_bucket", "locked": false, "schema_version": 3, "solution": true, "task": false}
def relative_position_bucket(relative_position: torch.Tensor, bidirectional: bool = True,
                             num_buckets: int = 32, max_distance: int = 128) -> torch.Tensor:
    """T5's relative position buckets (Raffel et al., 2020; Mesh TensorFlow's convention).

    Args:
        relative_position: LongTensor of any shape, memory_position - query_position
            (negative: the key is in the past).
        bidirectional: True (encoder): half the buckets for the past, half for the future.
            False (causal decoder): every bucket for the past; the future shares bucket 0.
        num_buckets, max_distance: with nb = num_buckets (halved when bidirectional) and
            max_exact = nb // 2, a distance n < max_exact gets its own bucket n; larger distances
            get log-spaced buckets max_exact + floor(log(n / max_exact) / log(max_distance /
            max_exact) * (nb - max_exact)), clamped to nb - 1 (from max_distance on).

    Returns:
        LongTensor of relative_position's shape, values in [0, num_buckets).
    Raises ValueError when max_exact < 1 or max_distance <= max_exact.
    """
    ### BEGIN SOLUTION
    n = -relative_position.long()                       # > 0: the key is n positions back
    buckets = torch.zeros_like(n)
    if bidirectional:
        num_buckets //= 2
        buckets = buckets + (n < 0).long() * num_buckets  # the future: upper half
        n = n.abs()
    else:
        n = n.clamp_min(0)                              # the future: bucket 0
    max_exact = num_buckets // 2
    if max_exact < 1 or max_distance <= max_exact:
        raise ValueError(f"need num_buckets // 2 >= 1 and max_distance > num_buckets // 2 (after "
                         f"halving when bidirectional); got num_buckets={num_buckets}, "
                         f"max_exact={max_exact}, max_distance={max_distance}")
    is_small = n < max_exact
    log_ratio = torch.log(n.clamp_min(max_exact).double() / max_exact) / math.log(max_distance / max_exact)
    large = max_exact + (log_ratio * (num_buckets - max_exact)).long()  # truncate, as T5
    large = large.clamp_max(num_buckets - 1)
    return buckets + torch.where(is_small, n, large)
    ### END SOLUTION


# %%
distances = torch.arange(-10, 11)
print("memory - query:", distances.tolist())
print("bidirectional: ", relative_position_bucket(distances, True, 8, 16).tolist())
print("causal:        ", relative_position_bucket(distances, False, 8, 16).tolist())

far = torch.arange(-200, 1)
fig, ax = plt.subplots(figsize=(7, 2.5))
ax.step(-far, relative_position_bucket(far, bidirectional=False), where="post")
ax.set(xscale="symlog", xlabel="how far back the key is (log scale)", ylabel="bucket",
       title="T5's causal buckets (32 buckets, max_distance 128): exact, then log-spaced")
plt.show()

# %% nbgrader={"grade": true, "grade_id": "check_relative_position_bucket", "locked": true, "points": 2, "schema_version": 3, "solution": false, "task": false}
check("day03-multihead", "relative_position_bucket", relative_position_bucket, points=2)

# %% nbgrader={"grade": true, "grade_id": "hidden_relative_position_bucket", "locked": true, "points": 1, "schema_version": 3, "solution": false, "task": false}
# When your notebook is graded, hidden tests run here: the same checks on fresh random shapes.
### BEGIN HIDDEN TESTS
check("day03-multihead", "relative_position_bucket", relative_position_bucket, hidden=True, points=1)
### END HIDDEN TESTS

# %% [markdown]
# ### Exercise 9: `shaw_relative_attention`
#
# Queries sit bottom-right as everywhere in the course: query $i$ is at position $L_k - L_q + i$. Build the index matrix `clamp(j - pos_q(i), -P, P) + P`, shape `(Lq, Lk)`; `rel_k[index]` is then `(Lq, Lk, D)`, and `einsum("...qd,qkd->...qk", q, a_k)` gives the relative scores for every batch and head at once. Write the softmax and the weighted sum yourself (`torch.softmax` is fine).
#
# The checks recognise: distances not clipped (an index out of range), the table indexed without the `+P` offset, the distance taken as $i - j$, queries top-left, `rel_v` ignored, the relative term not divided by $\sqrt{D}$, the mask applied after the softmax, and tables of the wrong shape not refused with a `ValueError`. Not allowed: `F.scaled_dot_product_attention`.

# %% nbgrader={"grade": false, "grade_id": "shaw_relative_attention", "locked": false, "schema_version": 3, "solution": true, "task": false}
def shaw_relative_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, rel_k: torch.Tensor,
                            max_relative_position: int, rel_v: torch.Tensor = None,
                            mask: torch.Tensor = None):
    """Attention with Shaw et al.'s learned relative position embeddings, clipped at P.

    Args:
        q (..., Lq, D), k (..., Lk, D), v (..., Lk, Dv); float32 or float64.
        rel_k: (2P + 1, D), rel_v: (2P + 1, Dv) or None, with P = max_relative_position:
            row r is the embedding of the relative distance r - P.
        mask: bool broadcastable to (..., Lq, Lk), True = may attend (each query keeps a key).
    Query i sits at position pos_q(i) = Lk - Lq + i (bottom-right); with
    d_ij = clamp(j - pos_q(i), -P, P), a^K_ij = rel_k[d_ij + P] and a^V_ij = rel_v[d_ij + P]:
        scores_ij = q_i . (k_j + a^K_ij) / sqrt(D),  w = softmax over j,
        out_i = sum_j w_ij (v_j + a^V_ij)   (the a^V term only when rel_v is given).

    Returns (out (..., Lq, Dv), weights (..., Lq, Lk)), in q's dtype.
    Raises ValueError when a table is not (2P + 1, D) / (2P + 1, Dv).
    Not allowed: F.scaled_dot_product_attention.
    """
    ### BEGIN SOLUTION
    rows, dim, lq, lk = 2 * max_relative_position + 1, q.shape[-1], q.shape[-2], k.shape[-2]
    if tuple(rel_k.shape) != (rows, dim):
        raise ValueError(f"rel_k must be (2 * max_relative_position + 1, D) = {(rows, dim)}, "
                         f"got {tuple(rel_k.shape)}")
    if rel_v is not None and tuple(rel_v.shape) != (rows, v.shape[-1]):
        raise ValueError(f"rel_v must be (2 * max_relative_position + 1, Dv) = "
                         f"{(rows, v.shape[-1])}, got {tuple(rel_v.shape)}")
    pos_q = torch.arange(lq, device=q.device).unsqueeze(-1) + (lk - lq)          # (Lq, 1)
    distance = torch.arange(lk, device=q.device) - pos_q                          # (Lq, Lk)
    index = distance.clamp(-max_relative_position, max_relative_position) + max_relative_position
    a_k = rel_k[index]                                                            # (Lq, Lk, D)
    scores = q @ k.transpose(-2, -1) + torch.einsum("...qd,qkd->...qk", q, a_k)  # (..., Lq, Lk)
    scores = scores / math.sqrt(dim)
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    weights = torch.softmax(scores, dim=-1)
    out = weights @ v                                                             # (..., Lq, Dv)
    if rel_v is not None:
        out = out + torch.einsum("...qk,qkd->...qd", weights, rel_v[index])
    return out, weights
    ### END SOLUTION


# %%
# No content at all (k = 0), only positions: a^K with a spike at distance -1 makes a "previous token" head.
P, D, L = 3, 4, 7
q = torch.ones(1, L, D)
k, v = torch.zeros(1, L, D), torch.eye(L).unsqueeze(0)      # v_j = one-hot of j: out shows where it looked
rel_k = torch.zeros(2 * P + 1, D)
rel_k[-1 + P] = 3.0                                        # row d + P is distance d = j - i
out, weights = shaw_relative_attention(q, k, v, rel_k, P)
plot_attention(weights[0], title="Shaw: a^K peaked at distance -1 (the previous key)", annotate=True)
plt.show()

# %% nbgrader={"grade": true, "grade_id": "check_shaw_relative_attention", "locked": true, "points": 2, "schema_version": 3, "solution": false, "task": false}
check("day03-multihead", "shaw_relative_attention", shaw_relative_attention, points=2)

# %% nbgrader={"grade": true, "grade_id": "hidden_shaw_relative_attention", "locked": true, "points": 1, "schema_version": 3, "solution": false, "task": false}
# When your notebook is graded, hidden tests run here: the same checks on fresh random shapes.
### BEGIN HIDDEN TESTS
check("day03-multihead", "shaw_relative_attention", shaw_relative_attention, hidden=True, points=1)
### END HIDDEN TESTS

# %% [markdown]
# ### Exercise 10: `relative_bias_attention`
#
# T5's bias lives in an `nn.Embedding(num_buckets, H)`: its weight, `bias_table`, is `(num_buckets, H)`. Look it up with the buckets of `memory − query`, `bias_table[buckets]` is `(Lq, Lk, H)`, and move the heads first to add it to the `(B, H, Lq, Lk)` scores. Use your `relative_position_bucket`.
#
# The checks recognise: buckets of query − memory, queries top-left, the bias multiplied by the score scale, the heads' biases mixed up (the table's axes) or transposed (`.permute(2, 1, 0)`), `bidirectional` or `max_distance` not passed on, the mask ignored or applied after the softmax, blocked scores filled with 0, the `scale` argument ignored, every head given head 0's bias, and a table whose number of heads is not `q`'s not refused with a `ValueError`. Not allowed: `F.scaled_dot_product_attention`.

# %% nbgrader={"grade": false, "grade_id": "relative_bias_attention", "locked": false, "schema_version": 3, "solution": true, "task": false}
def relative_bias_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                            bias_table: torch.Tensor, *, bidirectional: bool = True,
                            max_distance: int = 128, mask: torch.Tensor = None, scale: float = None):
    """Attention with T5's bucketed relative position bias, one learned scalar per bucket and head.

    Args:
        q (B, H, Lq, D), k (B, H, Lk, D), v (B, H, Lk, Dv); float32 or float64.
        bias_table: (num_buckets, H), like the weight of T5's nn.Embedding(num_buckets, H).
        bidirectional, max_distance: passed to relative_position_bucket, with
            num_buckets = bias_table.shape[0].
        mask: bool broadcastable to (B, H, Lq, Lk), True = may attend (each query keeps a key).
        scale: the score scale, 1/sqrt(D) when None (T5 itself uses 1.0).
    Query i sits at pos_q(i) = Lk - Lq + i; bias[h, i, j] = bias_table[bucket(j - pos_q(i)), h];
        weights = softmax(scale * q k^T + bias), out = weights @ v.

    Returns (out (B, H, Lq, Dv), weights (B, H, Lq, Lk)).
    Raises ValueError when bias_table's H is not q's. Not allowed: F.scaled_dot_product_attention.
    """
    ### BEGIN SOLUTION
    heads, lq, lk = q.shape[-3], q.shape[-2], k.shape[-2]
    if bias_table.dim() != 2 or bias_table.shape[1] != heads:
        raise ValueError(f"bias_table must be (num_buckets, H={heads}), got {tuple(bias_table.shape)}")
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    pos_q = torch.arange(lq, device=q.device).unsqueeze(-1) + (lk - lq)             # (Lq, 1)
    relative = torch.arange(lk, device=q.device) - pos_q                            # memory - query
    buckets = relative_position_bucket(relative, bidirectional, bias_table.shape[0], max_distance)
    bias = bias_table[buckets].permute(2, 0, 1)                                      # (H, Lq, Lk)
    scores = q @ k.transpose(-2, -1) * scale + bias
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    weights = torch.softmax(scores, dim=-1)
    return weights @ v, weights
    ### END SOLUTION


# %% [markdown]
# #### Explore: the bias of every head
#
# A bias table that four heads could have learned: head 0 looks at the previous token, head 1 decays with distance (like ALiBi, but only up to `max_distance`), head 2 prefers the *future* (a bidirectional encoder can), and head 3 prefers what is far away. Step through the heads (scale *auto* shows the bias itself); then see where the attention mass goes once random queries and keys add their content. Note how all keys beyond `max_distance` share one colour: the last bucket.

# %%
from course.explore.heatmap import AttentionExplorer

num_buckets, max_distance, L, heads = 16, 12, 16, 4
back = torch.arange(num_buckets // 2).double()             # past buckets 0..7: nearest first
table = torch.zeros(num_buckets, heads, dtype=torch.float64)
table[1, 0] = 4.0                                          # head 0: one back
table[: num_buckets // 2, 1] = -0.8 * back                 # head 1: decays with the bucket
table[num_buckets // 2 + 1:, 1] = -0.8 * back[1:]
table[num_buckets // 2 + 1, 2] = 3.0                       # head 2: one ahead
table[num_buckets // 2 - 1, 3] = table[-1, 3] = 2.0        # head 3: the far buckets
positions = [str(p) for p in range(L)]
relative = torch.arange(L) - torch.arange(L).unsqueeze(-1)                  # memory - query, (L, L)
buckets = relative_position_bucket(relative, True, num_buckets, max_distance)
bias = table[buckets].permute(2, 0, 1)                                     # (H, L, L)
explorer = AttentionExplorer(bias, positions, positions, title="T5 bias per head")
explorer.scale.value = "auto"
explorer

# %%
# With content too (random q, k): where does each head's attention mass go, on average?
q, k, v = (torch.randn(1, heads, L, 8, dtype=torch.float64) for _ in range(3))
_, weights = relative_bias_attention(q, k, v, table, max_distance=max_distance, scale=1.0)
for head in range(heads):
    mass = {name: weights[0, head][where].sum().item() / L
            for name, where in [("one back", relative == -1), ("one ahead", relative == 1),
                                ("within 3", relative.abs() <= 3), (f">= {max_distance} away", relative.abs() >= max_distance)]}
    print(f"head {head}: " + ", ".join(f"{name} {value:.0%}" for name, value in mass.items()))

# %% nbgrader={"grade": true, "grade_id": "check_relative_bias_attention", "locked": true, "points": 2, "schema_version": 3, "solution": false, "task": false}
check("day03-multihead", "relative_bias_attention", relative_bias_attention, points=2)

# %% nbgrader={"grade": true, "grade_id": "hidden_relative_bias_attention", "locked": true, "points": 1, "schema_version": 3, "solution": false, "task": false}
# When your notebook is graded, hidden tests run here: the same checks on fresh random shapes.
### BEGIN HIDDEN TESTS
check("day03-multihead", "relative_bias_attention", relative_bias_attention, hidden=True, points=1)
### END HIDDEN TESTS

# %% [markdown]
# ## 8. Advanced: attending to a memory of earlier segments
#
# A model with a context of $L$ tokens cannot see token $L + 1$ back. Transformer-XL (Dai et al., 2019) reads a long text **segment by segment** and keeps the previous segment's keys and values as a **memory**: each new segment attends to $[\text{memory} ; \text{segment}]$, so information travels back one segment per layer, far beyond $L$. Two details make it work:
#
# - **The memory is detached** (the paper's stop-gradient $\operatorname{SG}$): the gradient stops at the segment boundary, so training costs one segment's graph, never the whole history.
# - **Positions continue.** With absolute positions, the memory and the segment would both be $0..L-1$ and the model could not tell "just before me" from "a segment ago". The memory must sit *before* the segment: memory at $s .. s+M-1$, segment at $s+M .. s+M+L-1$. Transformer-XL invented relative encodings for this; with RoPE it is enough to rotate with these continuing positions, and scores depend only on the distance.
#
# Transformer-XL puts memory and segment in **one softmax**. Then the memory's share of the attention is set by a competition that depends on how many memory tokens there are: 256 memory tokens drown 16 local ones. Memorizing Transformers (Wu et al., 2022) and Infini-attention (Munkhdalai et al., 2024) instead run **two attentions** (one over the memory, one local and causal) and mix them with a learned gate $g = \sigma(\cdot) \in (0, 1)$:
#
# $$\text{out}_i = g_i\,\operatorname{Attn}(q_i, K_{\text{mem}}, V_{\text{mem}}) + (1 - g_i)\,\operatorname{Attn}_{\text{causal}}(q_i, K_{\text{seg}}, V_{\text{seg}}), \qquad g_i = \sigma(w^\top x_i)\ \text{per token and head}.$$
#
# ### Exercise 11: `memory_attention`
#
# Use your `apply_rope` and the course's `attention(q, k, v, mask)` and `causal_mask(lq, lk=None, device=None)`: an `(lq, lk)` boolean mask, True = may attend, with the queries aligned to the last `lq` keys (bottom-right), so `causal_mask(L)` is the `(L, L)` lower triangle. The gate logits come in as an argument (a layer computes them from $x$, see below).
#
# The checks compare with a float64 oracle that writes out every absolute position, run `backward` to see whether any gradient reaches the memory, and recognise: the memory not detached, or detached in place (`mem_k.detach_()`, which changes the caller's tensor), the segment's positions restarting at 0 (for `q`, `k` or both) or one off, the memory placed after the segment, the gate inverted ($g$ on the local part), the logits used without a sigmoid or put through a softmax, values rotated with RoPE too, a local attention that is not causal or whose causal mask is inverted (`triu(..., 1)`, True = blocked), one softmax over the concatenation, a causal mask on the memory keys, memory keys not rotated or `base` not passed on (to any of `q`, `k`, `mem_k`), a gate without its last axis, an empty memory ($M = 0$, the first segment) not handled or answered with the local attention alone (the gate skipped), and bad shapes (memory keys and values of different lengths, a memory head size that is not $D$, gate logits that are not `(B, H, L)`) not refused with a `ValueError`. Not allowed: `F.scaled_dot_product_attention` and `course.reference.multihead`.

# %% nbgrader={"grade": false, "grade_id": "memory_attention", "locked": false, "schema_version": 3, "solution": true, "task": false}
def memory_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mem_k: torch.Tensor,
                     mem_v: torch.Tensor, gate_logits: torch.Tensor, *, start: int = 0,
                     base: float = 10000.0):
    """Gated cross-memory attention (Transformer-XL-style recurrence with a learned fusion gate).

    Args:
        q, k, v: (B, H, L, D) the current segment's queries, keys, values (before RoPE).
        mem_k, mem_v: (B, H, M, D) keys and values of earlier segments (before RoPE); M may differ
            from L, and is 0 for a stream's first segment (then from_memory is all zeros, as
            attention gives it). They are fixed context: no gradient flows into them (detached).
        gate_logits: (B, H, L), one logit per token and head (e.g. a linear layer of x).
        start: absolute position of the first memory token. Positions continue: the memory sits
            at start .. start + M - 1, the segment at start + M .. start + M + L - 1 (RoPE scores
            see only differences, so start moves nothing; it keeps a stream's positions true).
        base: RoPE's base.
    Rotate q and k (segment positions) and mem_k (memory positions) with your apply_rope, then
        from_memory = attention(q, mem_k, mem_v)                 every memory token visible
        local       = attention(q, k, v, causal mask)            the segment, causally
        gate = sigmoid(gate_logits);  out = gate * from_memory + (1 - gate) * local  (per token, head)

    Returns (out (B, H, L, D), gate (B, H, L)), in q's dtype.
    Raises ValueError when mem_k and mem_v differ in length, the memory's D is not q's, or
    gate_logits is not q.shape[:-1]. Not allowed: F.scaled_dot_product_attention.
    """
    ### BEGIN SOLUTION
    length, memory, dim = q.shape[-2], mem_k.shape[-2], q.shape[-1]
    if mem_k.shape[:-1] != mem_v.shape[:-1] or mem_k.shape[-1] != dim:
        raise ValueError(f"expected mem_k and mem_v (B, H, M, D={dim}) of one length M, got mem_k "
                         f"{tuple(mem_k.shape)} and mem_v {tuple(mem_v.shape)}")
    if tuple(gate_logits.shape) != tuple(q.shape[:-1]):
        raise ValueError(f"gate_logits must be (B, H, L) = {tuple(q.shape[:-1])}, got "
                         f"{tuple(gate_logits.shape)}")
    mem_k, mem_v = mem_k.detach(), mem_v.detach()                    # stop-gradient into the past
    memory_at = start + torch.arange(memory, device=q.device)        # earlier positions
    segment_at = start + memory + torch.arange(length, device=q.device)
    q, k = apply_rope(q, segment_at, base), apply_rope(k, segment_at, base)
    mem_k = apply_rope(mem_k, memory_at, base)
    from_memory, _ = attention(q, mem_k, mem_v)                      # (B, H, L, D)
    local, _ = attention(q, k, v, causal_mask(length, device=q.device))
    gate = torch.sigmoid(gate_logits)                                # (B, H, L), in (0, 1)
    g = gate.unsqueeze(-1)
    return g * from_memory + (1 - g) * local, gate
    ### END SOLUTION


# %%
# A layer around it: projections, a gate per token and head from x, and the memory carried across segments.
class GatedMemoryLayer(nn.Module):
    def __init__(self, d_model, num_heads):
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.gate_proj = nn.Linear(d_model, num_heads)      # g = sigmoid(W x + b), per token and head
        self.out_proj = nn.Linear(d_model, d_model)

    def forward(self, x, memory=None, start=0):
        q, k, v = (split_heads(t, self.num_heads) for t in self.qkv(x).chunk(3, dim=-1))
        mem_k, mem_v = memory if memory is not None else (k[..., :0, :], v[..., :0, :])
        gate_logits = self.gate_proj(x).transpose(1, 2)     # (B, H, L)
        out, gate = memory_attention(q, k, v, mem_k, mem_v, gate_logits, start=start)
        return self.out_proj(merge_heads(out)), (k, v), gate  # this segment's k, v: the next memory

layer = GatedMemoryLayer(32, 4)
stream = torch.randn(1, 4 * 8, 32)                          # 4 segments of 8 tokens
memory, start, loss = None, 0, 0.0
for segment in stream.split(8, dim=1):
    out, new_memory, gate = layer(segment, memory, start)
    loss = loss + out.square().mean()
    start += 0 if memory is None else memory[0].shape[-2]   # the memory's first position moves on
    memory = new_memory
loss.backward()
print("gate range:", f"{gate.min().item():.3f} .. {gate.max().item():.3f}",
      "| gate_proj got a gradient:", layer.gate_proj.weight.grad.abs().sum().item() > 0)
q, mem_k = torch.randn(1, 4, 8, 8, requires_grad=True), torch.randn(1, 4, 8, 8, requires_grad=True)
out, _ = memory_attention(q, torch.randn(1, 4, 8, 8), torch.randn(1, 4, 8, 8),
                          mem_k, torch.randn(1, 4, 8, 8), torch.zeros(1, 4, 8))
out.square().sum().backward()
print("q got a gradient:", q.grad is not None, "| gradient reaching the memory:", mem_k.grad)  # None: detached

# %% nbgrader={"grade": true, "grade_id": "check_memory_attention", "locked": true, "points": 2, "schema_version": 3, "solution": false, "task": false}
check("day03-multihead", "memory_attention", memory_attention, points=2)

# %% nbgrader={"grade": true, "grade_id": "hidden_memory_attention", "locked": true, "points": 1, "schema_version": 3, "solution": false, "task": false}
# When your notebook is graded, hidden tests run here: the same checks on fresh random shapes.
### BEGIN HIDDEN TESTS
check("day03-multihead", "memory_attention", memory_attention, hidden=True, points=1)
### END HIDDEN TESTS

# %% [markdown]
# #### Measure: what the gate buys over concatenation
#
# One segment of $L = 16$ tokens and a memory of $M$ tokens, random queries and keys (what a layer sees early in training, and whenever content does not decide). With **concatenation**, how much attention goes to the memory is decided by the count: it grows towards $M / (M + \text{visible local keys})$. With the **gate**, the memory gets exactly $g$, whatever $M$: here $g = \sigma(0) = 0.5$, and a trained gate moves it per token and head. Below, the memory's share of the attention for both, as the memory grows.

# %%
L, D, H = 16, 32, 4
sizes = [4, 16, 64, 256] if device.type == "cpu" else [4, 16, 64, 256, 1024, 4096]
torch.manual_seed(0)
shares = []
for M in sizes:
    q, k, v = (torch.randn(1, H, L, D) for _ in range(3))
    mem_k, mem_v = torch.randn(1, H, M, D), torch.randn(1, H, M, D)
    # Concatenation (Transformer-XL): one softmax over [memory ; segment], the segment causal.
    positions = torch.arange(M + L)
    keys = apply_rope(torch.cat([mem_k, k], -2), positions)
    mask = torch.cat([torch.ones(L, M, dtype=torch.bool), causal_mask(L)], dim=-1)
    _, weights = attention(apply_rope(q, positions[M:]), keys, torch.cat([mem_v, v], -2), mask)
    concatenated = weights[..., :M].sum(-1).mean().item()
    # Gated: two softmaxes; the memory's share is the gate itself.
    _, gate = memory_attention(q, k, v, mem_k, mem_v, torch.zeros(1, H, L))
    shares.append((M, concatenated, gate.mean().item()))
    print(f"M={M:5d}: memory's share of the attention, concatenated {concatenated:6.1%}, gated {gate.mean().item():6.1%}")

fig, ax = plt.subplots(figsize=(6, 2.8))
ax.plot([s[0] for s in shares], [s[1] for s in shares], "o-", label="concatenated: set by the counts")
ax.plot([s[0] for s in shares], [s[2] for s in shares], "s-", label="gated: g (learned), here 0.5")
ax.set(xscale="log", xlabel="memory tokens M", ylabel="share of attention on memory", ylim=(0, 1),
       title=f"one segment of L = {L} tokens")
ax.legend()
plt.show()

# %% [markdown]
# With concatenation, a long memory takes almost all the attention from the local tokens unless the layer learns sharper scores to fight the count; with the gate the mix is one learned number per token and head, independent of $M$, and the local attention keeps its own softmax. The price: two softmaxes instead of one, and a memory token can no longer outcompete a local one directly (they are never in the same softmax).

# %% [markdown]
# ## 9. Recap
#
# - Multi-head attention is one wide projection, reshaped: `view(B, L, H, dh).transpose(1, 2)`. A reshape without the transpose has the right shape and scrambles the tokens.
# - Each head is an attention of its own over $d_h$ features: scale by $1/\sqrt{d_h}$.
# - GQA/MQA share each K/V head among $H/H_{kv}$ consecutive query heads (`repeat_interleave`); the KV cache shrinks by that factor.
# - Positions: sinusoidal tables are added to the input; RoPE rotates q and k so scores depend only on $m - n$; ALiBi adds a per-head linear distance penalty with geometric slopes.
# - Learned relative positions: Shaw et al. add a clipped learned vector per distance to the keys (and values); T5 adds a learned scalar per head and per log-spaced bucket of distances.
# - A memory of earlier segments (Transformer-XL) extends the context: detach it, continue the positions, and mix a memory attention with the local one through a learned gate, so the memory's share does not grow with its size.
# - A tiny trained transformer's heads are readable: on *reverse* they draw the anti-diagonal that copies the right input.
#
# ## Further reading
#
# - Vaswani et al. (2017), *Attention Is All You Need*, §3.2.2 (multi-head) and §3.5 (sinusoidal positions).
# - Shazeer (2019), *Fast Transformer Decoding: One Write-Head is All You Need* (MQA); Ainslie et al. (2023), *GQA*.
# - Su et al. (2021), *RoFormer: Enhanced Transformer with Rotary Position Embedding*; EleutherAI's blog post *Rotary Embeddings: A Relative Revolution*.
# - Press, Smith, Lewis (2022), *Train Short, Test Long: Attention with Linear Biases* (ALiBi), and its `get_slopes`.
# - Shaw, Uszkoreit, Vaswani (2018), *Self-Attention with Relative Position Representations*; Raffel et al. (2020), *Exploring the Limits of Transfer Learning with a Unified Text-to-Text Transformer* (T5), §2.1, and `T5Attention._relative_position_bucket` in Hugging Face `transformers` (`modeling_t5.py`).
# - Dai et al. (2019), *Transformer-XL: Attentive Language Models Beyond a Fixed-Length Context*; Wu et al. (2022), *Memorizing Transformers* (the gated memory); Munkhdalai et al. (2024), *Leave No Context Behind: Infini-attention*.
# - Read next: `LlamaAttention` and `apply_rotary_pos_emb` / `repeat_kv` in Hugging Face `transformers` (`modeling_llama.py`), and nanoGPT's `CausalSelfAttention`.
# - Olsson et al. (2022), *In-context Learning and Induction Heads*: what heads in real models learn.
#
# **Next: day 4, the KV cache.** Generate with the tiny transformer, one token at a time, without recomputing the past.
