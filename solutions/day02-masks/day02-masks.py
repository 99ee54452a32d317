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
# # Day 2 · Masks: causal, padding, cross-attention
#
# [Open in Colab](https://colab.research.google.com/github/attention-from-scratch/attention-from-scratch/blob/main/exercises/day02-masks/day02-masks.ipynb)
#
# **What you will build.** The masks that decide which keys each query may see, and attention that obeys them:
#
# 1. `causal_mask(lq, lk=None, device=None)`: no query sees the future, with queries aligned to the *end* of the keys (the KV-cache convention);
# 2. `padding_mask(lengths, max_len)`: which positions of a padded batch are real tokens;
# 3. `to_additive_mask(mask, dtype)`: the same mask as numbers to add to the scores, safe in float16;
# 4. `masked_attention(q, k, v, mask=None, key_padding_mask=None)`: attention under any mask that broadcasts, where a query with nothing to see gets zeros, never NaN.
#
# Then you explore the four kinds of mask side by side with the weights they produce, and measure what masking costs.
#
# **Prerequisites.** Day 1's ideas (scores, a stable softmax). Not its code: `course.reference.sdpa.stable_softmax` stands in for yours.
# **Time.** About 2–3 hours.
#
# **How this notebook works.** Each exercise has a cell ending in `raise NotImplementedError()`: replace that line with your code, then run the check cell under it. It prints ✓ or ✗ per check, and for a ✗ it names the mistake and gives a hint. When your notebook is graded, the same checks run again, and hidden ones draw new random shapes.
#
# **Conventions.** Masks are `torch.bool` with **True = may attend**. Tensors are `(batch, heads, seq, head_dim)`, but your functions must work with other leading dimensions, with $L_q \ne L_k$, and in float16, float32 and float64.
#
# **Not allowed inside your functions:** `torch.softmax`, `F.softmax`, `Tensor.softmax`, `F.scaled_dot_product_attention`, and the course's own `course.reference.masks.attention`, `causal_mask` and `padding_mask`. Outside your functions they are fine: below we use them to check answers.

# %% nbgrader={"grade": false, "grade_id": "setup", "locked": true, "schema_version": 3, "solution": false, "task": false}
import math

import matplotlib.pyplot as plt
import torch
import torch.nn.functional as F

import course  # before anything that imports triton (torch.nn.attention.bias does)
from course import plot_attention
from course.reference.sdpa import stable_softmax
from course.bench import median_time
from course.explore.masks import MaskExplorer
from grader import check
from torch.nn.attention.bias import causal_lower_right

device = course.get_device()
course.seed_everything(0)
print(course.describe_device())

# %% [markdown]
# ## 1. A mask says which keys a query may see
#
# Attention lets every query look at every key. Often that is wrong. A language model must not read the word it is about to predict. A padded batch must not attend to the padding. A mask $M \in \{0, 1\}^{L_q \times L_k}$ fixes this: query $i$ may attend to key $j$ only where $M_{ij}$ is True. The blocked keys get exactly zero weight, and the others share the weight as before:
#
# $$
# w_{ij} = \frac{M_{ij}\, e^{s_{ij}}}{\sum_{j'} M_{ij'}\, e^{s_{ij'}}}
# = \operatorname{softmax}_j\!\big(s_{ij} + A_{ij}\big),
# \qquad A_{ij} = \begin{cases} 0 & M_{ij} \\ -\infty & \text{otherwise.} \end{cases}
# $$
#
# The second form is how it is computed: write $-\infty$ into the blocked scores, then softmax, since $e^{-\infty} = 0$.
#
# A tiny example to check by hand. Scores $[1, 2, 3]$, mask $[\text{T}, \text{T}, \text{F}]$: the third key drops out and the weights are $e^1 : e^2 : 0$, that is $[0.269, 0.731, 0]$.

# %%
scores = torch.tensor([[1.0, 2.0, 3.0]])
mask = torch.tensor([[True, True, False]])
print(stable_softmax(scores.masked_fill(~mask, -math.inf), dim=-1))  # [0.269, 0.731, 0]

# %% [markdown]
# `stable_softmax(x, dim=-1)` normalises along `dim`: for scores `(..., Lq, Lk)`, `dim=-1` is the keys, so each query's weights sum to 1. `masked_fill(~mask, value)` writes `value` where the mask is **False**. Forgetting the `~` inverts the mask: the query then sees exactly the keys it should not.
#
# One row needs care: a query whose mask row is all False has nothing to attend to. Its scores are all $-\infty$, and a naive softmax computes $0/0$ = NaN. One NaN is enough: through `weights @ v` and the next layers it spreads until the loss is NaN. The course's rule is that such a query gets **zero weights and a zero output**. `course.reference.sdpa.stable_softmax` already returns zeros for an all $-\infty$ row.

# %%
blocked = torch.tensor([-math.inf, -math.inf, -math.inf])
naive = torch.exp(blocked - blocked.max())
print("naive ", naive / naive.sum())        # NaN: -inf - (-inf), then 0 / 0
print("stable", stable_softmax(blocked))    # zeros


# %% [markdown]
# ## 2. Causal masks
#
# A decoder predicts token $t+1$ from tokens $0..t$. During training it sees the whole sequence at once, so each query must be stopped from looking ahead: query $i$ sees key $j$ only if $j \le i$. That is the lower triangle of an $L \times L$ matrix, diagonal included (a token may look at itself).
#
# **When $L_q \ne L_k$.** When generating text with a KV cache (day 4), the keys of earlier tokens are kept, and only the newest tokens are queries: $L_q$ new queries against $L_k$ keys, of which the last $L_q$ are the new tokens. So query $i$ sits at absolute position $L_k - L_q + i$, and
#
# $$M_{ij} = \big[\, j \le L_k - L_q + i \,\big].$$
#
# This is the **bottom-right** aligned causal mask: the diagonal ends in the bottom-right corner. With $L_q = 2$, $L_k = 5$ (three cached tokens, two new ones):
#
# ```
# bottom-right (course, FlashAttention ≥ 2.1)   top-left (is_causal=True in PyTorch)
# query at 3:  T T T T F                         T F F F F
# query at 4:  T T T T T                         T T F F F
# ```
#
# The top-left version, $j \le i$, is what `F.scaled_dot_product_attention(..., is_causal=True)` does: it treats the two new tokens as if they were the first two, so they cannot see the cache. Below, you will check this on PyTorch itself.
#
# When $L_q > L_k$, the first $L_q - L_k$ queries sit *before* every key (at negative positions) and see nothing: their rows are all False. Your `masked_attention` must survive such rows.

# %% [markdown]
# ### Exercise 1: `causal_mask`
#
# Compare positions, all at once: a column of query positions, `(lq, 1)`, against a row of key positions, `(1, lk)`, broadcasts to the whole `(lq, lk)` mask. `torch.ones(lq, lk, dtype=torch.bool).tril(diagonal=...)` works too (without `dtype=torch.bool` it is a float mask). Create the tensors on `device`: pass `device=device` to `torch.arange` or `torch.ones`. The checks ask for `device="meta"`, PyTorch's device for tensors that have a shape and a dtype but no values, to see that your mask lands where it is asked to.
#
# The checks recognise: an inverted mask; a missing diagonal (`<` for `<=`, or key positions counted from 1); the upper triangle instead of the lower; top-left alignment when $L_q \ne L_k$, or the offset's sign flipped; a mask shifted by one key (query positions counted from 1); key 0 given to queries that come before every key; the last `lq` rows of a square `(lk, lk)` mask, too few when $L_q > L_k$; the shape `(lk, lq)`, or extra size-1 dims; `lk=None` left unhandled; a float mask instead of a boolean one; ignoring `device` (in one `torch.arange` or all), or a crash on `device=None`.

# %% nbgrader={"grade": false, "grade_id": "causal_mask", "locked": false, "schema_version": 3, "solution": true, "task": false}
def causal_mask(lq: int, lk: int = None, device=None) -> torch.Tensor:
    """The causal mask of lq queries against lk keys, bottom-right aligned.

    Args:
        lq: the number of queries (>= 1).
        lk: the number of keys (>= 1); None means lk = lq.
        device: where to create the mask (None: the CPU).

    Returns:
        (lq, lk) torch.bool. Query i sits at absolute position lk - lq + i and may attend to
        keys 0 .. lk - lq + i (True), not to later ones (False). With lq = lk it is the lower
        triangle, diagonal included; with lq > lk the first lq - lk rows are all False.

    Not allowed: course.reference.masks.causal_mask.
    """
    ### BEGIN SOLUTION
    lk = lq if lk is None else lk
    query_position = torch.arange(lq, device=device)[:, None] + (lk - lq)  # (lq, 1), absolute
    key_position = torch.arange(lk, device=device)[None, :]                # (1, lk)
    return key_position <= query_position                                  # (lq, lk)
    ### END SOLUTION


# %%
causal_mask(2, 5)  # [[T, T, T, T, F], [T, T, T, T, T]]

# %% nbgrader={"grade": true, "grade_id": "check_causal_mask", "locked": true, "points": 2, "schema_version": 3, "solution": false, "task": false}
check("day02-masks", "causal_mask", causal_mask, points=2)

# %% nbgrader={"grade": true, "grade_id": "hidden_causal_mask", "locked": true, "points": 1, "schema_version": 3, "solution": false, "task": false}
# When your notebook is graded, hidden tests run here: the same checks on fresh random shapes.
### BEGIN HIDDEN TESTS
check("day02-masks", "causal_mask", causal_mask, hidden=True, points=1)
### END HIDDEN TESTS

# %% [markdown]
# Now PyTorch. With two new queries against five keys, `is_causal=True` matches the *top-left* mask, and your mask matches PyTorch's explicit `causal_lower_right` bias. With $L_q = L_k$ all three agree.

# %%
q, k, v = torch.randn(1, 1, 2, 8), torch.randn(1, 1, 5, 8), torch.randn(1, 1, 5, 8)
top_left = torch.ones(2, 5, dtype=torch.bool).tril()
is_causal = F.scaled_dot_product_attention(q, k, v, is_causal=True)
yours = F.scaled_dot_product_attention(q, k, v, attn_mask=causal_mask(2, 5))
print("is_causal == top-left mask:          ", torch.allclose(is_causal, F.scaled_dot_product_attention(q, k, v, attn_mask=top_left)))
print("is_causal == your mask (expect False):", torch.allclose(is_causal, yours))
print("causal_lower_right == your mask:     ", torch.allclose(F.scaled_dot_product_attention(q, k, v, attn_mask=causal_lower_right(2, 5)), yours))
print("square: is_causal == causal_mask(5): ", torch.allclose(F.scaled_dot_product_attention(k, k, v, is_causal=True), F.scaled_dot_product_attention(k, k, v, attn_mask=causal_mask(5))))

fig, axes = plt.subplots(1, 2, figsize=(8, 2.2))
plot_attention(causal_mask(2, 5).float(), ["at 3", "at 4"], ax=axes[0], title="yours: bottom-right", annotate=False)
plot_attention(top_left.float(), ["0", "1"], ax=axes[1], title="is_causal: top-left", annotate=False)
fig.tight_layout()
plt.show()


# %% [markdown]
# ## 3. Padding masks
#
# A batch holds sequences of different lengths, padded to a common `max_len` with a filler token. Sequence $b$ has `lengths[b]` real tokens, first, then padding:
#
# ```
# lengths = [3, 1], max_len = 4   ->   [[T, T, T, F],
#                                       [T, F, F, F]]
# ```
#
# The padding must be invisible: no query may attend to a padded **key**, or the filler would leak into real tokens' outputs. So in attention the mask `(B, Lk)` becomes `(B, 1, 1, Lk)`: the same for every head and every query. Masking padded *queries* instead, `(B, 1, Lk, 1)`, is a classic mistake. It blocks the padded rows (which nobody reads) and lets every real query attend to the padding. Padded queries still produce some output; the loss ignores those positions.
#
# Beware of the convention: `nn.MultiheadAttention`'s `key_padding_mask` uses True for *padding* (ignore), the opposite of ours.
#
# ### Exercise 2: `padding_mask`
#
# One comparison does it, with no Python loop: a row of positions `torch.arange(max_len)` against a column of lengths `lengths[:, None]`. (A loop over the sequences passes the checks too, but it runs one Python step per sequence, where the comparison does the whole batch at once.) Make the positions on `lengths.device`: the checks pass `lengths` on the `"meta"` device (shapes, no values) and expect the mask there.
#
# The checks recognise: an inverted mask; an off-by-one (`<=`, or `< length - 1`), or one position too many (`torch.range(0, max_len)`); the shape `(max_len, B)`, extra size-1 dims, or a width from `lengths.max()` instead of `max_len`; positions and lengths compared without `[:, None]`; padding at the start instead of the end; a mask that is not boolean; a mask made on the CPU whatever `lengths`' device; `lengths` changed in place (`lengths.unsqueeze_(1)`).

# %% nbgrader={"grade": false, "grade_id": "padding_mask", "locked": false, "schema_version": 3, "solution": true, "task": false}
def padding_mask(lengths: torch.Tensor, max_len: int) -> torch.Tensor:
    """Which positions of a right-padded batch hold real tokens.

    Args:
        lengths: (B,) integer tensor (int64 or int32); lengths[b] in [0, max_len].
        max_len: the padded length.

    Returns:
        (B, max_len) torch.bool on lengths' device: True at positions 0 .. lengths[b] - 1 of
        row b (real tokens), False after them (padding). A length of 0 gives a row of False.

    Not allowed: course.reference.masks.padding_mask.
    """
    ### BEGIN SOLUTION
    positions = torch.arange(max_len, device=lengths.device)  # (max_len,)
    return positions[None, :] < lengths[:, None]              # (1, max_len) < (B, 1) -> (B, max_len)
    ### END SOLUTION


# %%
padding_mask(torch.tensor([3, 1]), 4)  # [[T, T, T, F], [T, F, F, F]]

# %% nbgrader={"grade": true, "grade_id": "check_padding_mask", "locked": true, "points": 2, "schema_version": 3, "solution": false, "task": false}
check("day02-masks", "padding_mask", padding_mask, points=2)

# %% nbgrader={"grade": true, "grade_id": "hidden_padding_mask", "locked": true, "points": 1, "schema_version": 3, "solution": false, "task": false}
# When your notebook is graded, hidden tests run here: the same checks on fresh random shapes.
### BEGIN HIDDEN TESTS
check("day02-masks", "padding_mask", padding_mask, hidden=True, points=1)
### END HIDDEN TESTS

# %% [markdown]
# ## 4. Additive masks, and why not $-10^9$
#
# Many libraries store a mask as numbers to *add* to the scores: 0 where allowed and a large negative where blocked. An additive mask can also carry soft biases (ALiBi, day 3).
#
# Which large negative? $-\infty$ is exact but turns a fully blocked row into NaN in an ordinary softmax. Many codebases use $-10^9$, a bug waiting for half precision: float16's largest magnitude is 65504, so $-10^9$ becomes $-\infty$, or PyTorch refuses to write it at all. The safe choice is the dtype's own minimum, `torch.finfo(dtype).min`.

# %%
for dtype in (torch.float16, torch.bfloat16, torch.float32, torch.float64):
    print(f"{str(dtype):>15}: finfo.min = {torch.finfo(dtype).min:.4g}")
print("-1e9 as float16:", torch.tensor(-1e9).half())
try:
    torch.zeros(2, dtype=torch.float16).masked_fill(torch.tensor([True, False]), -1e9)
except RuntimeError as error:
    print("masked_fill(-1e9) in float16:", error)


# %% [markdown]
# One subtlety: in float16, $-65504$ plus a score below $-16$ rounds to $-\infty$ (the spacing of float16 numbers near 65504 is 32). That is harmless if the softmax handles $-\infty$, as `stable_softmax` does, and if rows with nothing to attend to are zeroed, as your `masked_attention` will do.
#
# ### Exercise 3: `to_additive_mask`
#
# The checks recognise: an inverted mask; $-\infty$ instead of the minimum; a fixed constant such as $-10^9$ (and its float16 overflow); `finfo.max` or `finfo.tiny` instead of `finfo.min`; 0/1 numbers instead of 0/large negative, or 1 instead of 0 where the mask is True; a result in the wrong dtype; a result made on the CPU whatever the mask's device; the mask changed in place (`mask.logical_not_()`).

# %% nbgrader={"grade": false, "grade_id": "to_additive_mask", "locked": false, "schema_version": 3, "solution": true, "task": false}
def to_additive_mask(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """A boolean mask as a bias to add to scores.

    Args:
        mask: torch.bool of any shape, True = may attend.
        dtype: the floating dtype of the scores it will be added to.

    Returns:
        A tensor of mask's shape, in `dtype`, on mask's device: 0.0 where mask is True and
        torch.finfo(dtype).min where it is False. Not -inf (a fully masked row would give
        NaN) and not a constant like -1e9 (it overflows float16).
    """
    ### BEGIN SOLUTION
    zeros = torch.zeros(mask.shape, dtype=dtype, device=mask.device)
    return zeros.masked_fill(~mask, torch.finfo(dtype).min)
    ### END SOLUTION


# %%
to_additive_mask(torch.tensor([True, False]), torch.float16)  # [0, -65504]

# %% nbgrader={"grade": true, "grade_id": "check_to_additive_mask", "locked": true, "points": 2, "schema_version": 3, "solution": false, "task": false}
check("day02-masks", "to_additive_mask", to_additive_mask, points=2)

# %% nbgrader={"grade": true, "grade_id": "hidden_to_additive_mask", "locked": true, "points": 1, "schema_version": 3, "solution": false, "task": false}
# When your notebook is graded, hidden tests run here: the same checks on fresh random shapes.
### BEGIN HIDDEN TESTS
check("day02-masks", "to_additive_mask", to_additive_mask, hidden=True, points=1)
### END HIDDEN TESTS

# %% [markdown]
# ## 5. Masked attention
#
# Put together, with scores $S = QK^\top/\sqrt{d}$:
#
# $$\text{weights} = \operatorname{softmax}(S + A) \odot \big[\text{row } i \text{ of } M \text{ has a True}\big], \qquad \text{out} = \text{weights}\; V .$$
#
# The mask does not have to be `(B, H, Lq, Lk)`. It only has to **broadcast** to the scores: `(Lq, Lk)` for a causal mask shared by every batch and head, `(B, 1, 1, Lk)` for key padding, `(B, H, Lq, Lk)` for anything at all. `masked_fill`, `torch.where` and `+` broadcast; boolean indexing `scores[~mask]` does not.
#
# **Cross-attention.** In an encoder–decoder model, the decoder's $L_q$ queries attend to the encoder's $L_k$ outputs: $L_q \ne L_k$ is the normal case, and the mask is the encoder's padding, `(B, 1, 1, Lk)`. No causal mask: the whole source sentence is known.
#
# `key_padding_mask` is a convenience, as in `nn.MultiheadAttention` but with our convention: a `(B, Lk)` padding mask (True = real key), applied to every head and every query, and combined with `mask` by AND. Its view depends on the inputs' number of dims: `(B, 1, 1, Lk)` for `(B, H, L, D)` inputs, `(B, 1, Lk)` for `(B, L, D)` ones; in general `(B, 1, ..., 1, Lk)`, one 1 for each dim between the batch and the keys, which `key_padding_mask.view(B, *[1] * (q.dim() - 2), Lk)` builds.
#
# ### Exercise 4: `masked_attention`
#
# Build it from your own pieces: the scores, your `to_additive_mask` (or `masked_fill`), `stable_softmax(..., dim=-1)` over the keys, then `weights @ v`. Then make rows with nothing to see exactly zero.
#
# The checks recognise: an inverted mask; blocked scores set to 0 instead of a large negative; the mask ignored; `key_padding_mask` ignored, applied to queries instead of keys, or read as True = padding (`nn.MultiheadAttention`'s convention); NaN, or uniform weights $1/L_k$, for a query that may see no key; the mask applied after the softmax (weights times the mask); a mask that does not broadcast over batch and heads; float16 overflow from a constant like $-10^9$; the missing $1/\sqrt{d}$, or $1/d$, $1/\sqrt{L_k}$, $1/\sqrt{d_v}$ instead, the scores multiplied by $\sqrt{d}$, or the weights divided by $\sqrt{d}$ after the softmax; code for 4-D inputs only; `k.T` on inputs with leading dims, or `q` transposed instead of `k`; a dtype changed inside (`q.float()`) and not cast back; empty rows found with `any(dim=-2)`, with `any(dim=-1)` without `keepdim=True`, or with `all` instead of `any`; an input changed in place (`mask &= ...`); softmax over the queries; `mask` or `key_padding_mask` used without checking for `None`, or tested with `if mask:`; the two combined with OR instead of AND; `key_padding_mask` reshaped for one number of dims only; `(weights, out)` returned in the wrong order; calls to the built-ins or to the course's attention.

# %% nbgrader={"grade": false, "grade_id": "masked_attention", "locked": false, "schema_version": 3, "solution": true, "task": false}
def masked_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                     mask: torch.Tensor = None, key_padding_mask: torch.Tensor = None):
    """softmax(q kᵀ / sqrt(d) under a mask) v.

    Args:
        q: (..., Lq, d) queries; k: (..., Lk, d) keys; v: (..., Lk, dv) values.
            float16, float32 or float64, all the same dtype.
        mask: None, or torch.bool that broadcasts to (..., Lq, Lk), True = may attend.
            E.g. (Lq, Lk), (B, 1, Lq, Lk), (B, 1, 1, Lk), (B, H, Lq, Lk).
        key_padding_mask: None, or (B, Lk) torch.bool, True = a real key (padding_mask's
            output), with B = q.shape[0]: the same for every head and query, ANDed with mask.

    Returns:
        (out, weights): out (..., Lq, dv) and weights (..., Lq, Lk), in q's dtype. Blocked keys
        get exactly 0 weight. A query that may attend to no key gets weights 0 and out 0, never
        NaN.

    Not allowed: torch.softmax, F.softmax, Tensor.softmax, F.scaled_dot_product_attention,
    course.reference.masks.attention, course.reference.masks.causal_mask, course.reference.masks.padding_mask.
    """
    ### BEGIN SOLUTION
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])  # (..., Lq, Lk)
    if key_padding_mask is not None:
        batch, lk = key_padding_mask.shape
        keys = key_padding_mask.view(batch, *[1] * (q.dim() - 2), lk)  # (B, 1, ..., 1, Lk): keys, not queries
        mask = keys if mask is None else mask & keys
    if mask is None:
        weights = stable_softmax(scores, dim=-1)
    else:
        weights = stable_softmax(scores + to_additive_mask(mask, scores.dtype), dim=-1)
        weights = weights * mask.any(dim=-1, keepdim=True)  # nothing to attend to: 0, not 1/Lk
    return weights @ v, weights  # (..., Lq, dv), (..., Lq, Lk)
    ### END SOLUTION


# %%
# Cross-attention: 3 decoder queries, an encoder batch of 2 sequences padded to 5 (lengths 5 and 2).
q, k, v = torch.randn(2, 4, 3, 8), torch.randn(2, 4, 5, 8), torch.randn(2, 4, 5, 6)
out, weights = masked_attention(q, k, v, key_padding_mask=padding_mask(torch.tensor([5, 2]), 5))
print(out.shape, weights.shape)                       # (2, 4, 3, 6), (2, 4, 3, 5)
print(weights[1, 0].round(decimals=2))                # columns 2, 3, 4 are zero
# Against PyTorch's, with the same mask; and a query that sees nothing gives zeros.
print((out - F.scaled_dot_product_attention(q, k, v, attn_mask=padding_mask(torch.tensor([5, 2]), 5)[:, None, None, :])).abs().max())
# lq > lk: 3 queries against the first key only; queries 0 and 1 come before it and get zeros.
print(masked_attention(q, k[..., :1, :], v[..., :1, :], causal_mask(3, 1))[0][0, 0])

# %% nbgrader={"grade": true, "grade_id": "check_masked_attention", "locked": true, "points": 2, "schema_version": 3, "solution": false, "task": false}
check("day02-masks", "masked_attention", masked_attention, points=2)

# %% nbgrader={"grade": true, "grade_id": "hidden_masked_attention", "locked": true, "points": 1, "schema_version": 3, "solution": false, "task": false}
# When your notebook is graded, hidden tests run here: the same checks on fresh random shapes.
### BEGIN HIDDEN TESTS
check("day02-masks", "masked_attention", masked_attention, hidden=True, points=1)
### END HIDDEN TESTS

# %% [markdown]
# ## 6. Explore: masks and the weights they make
#
# The explorer calls **your** `masked_attention`, `causal_mask` and `padding_mask` on random queries and keys. Left: the mask (yellow = may attend). Right: the weights. Things to try:
#
# - **causal**, Lq < Lk: the diagonal ends in the bottom-right corner; the labels are the queries' absolute positions. Set Lq = 1: one decoding step sees everything. Set Lq > Lk: the first queries see nothing, and their rows must be zero.
# - **padding**: the `pad` columns are empty for every query; the `pad` rows are not, and that is fine.
# - **both**: a padded batch in a decoder. Set *real keys* to 0.
# - **cross**: Lq decoder queries against Lk encoder keys. Any Lq works.
#
# A red note under the picture points out queries that see nothing, NaN, and weight that leaked onto blocked keys.

# %%
MaskExplorer(masked_attention, causal_mask=causal_mask, padding_mask=padding_mask, kind="causal", lq=4, lk=8)

# %% [markdown]
# ## 7. Measure: masking costs as much as not masking
#
# A causal mask blocks almost half the scores, yet your attention computes every one of them and then throws half away. Below we time your `masked_attention` with and without a causal mask, and PyTorch's fused attention with `is_causal=True`. We also count the bytes of the mask: a broadcast `(L, L)` mask against one expanded to `(B, H, L, L)`.

# %%
batch, heads, head_dim = 2, 4, 64
lengths = [128, 256, 512, 1024] if device.type == "cpu" else [512, 1024, 2048, 4096]
lengths = lengths[:2] if course.being_graded() else lengths  # graded: no points here
plain, masked, fused = [], [], []
for length in lengths:
    q, k, v = (torch.randn(batch, heads, length, head_dim, device=device) for _ in range(3))
    mask = causal_mask(length, device=device)
    plain.append(median_time(masked_attention, q, k, v, repeats=3))
    masked.append(median_time(masked_attention, q, k, v, mask, repeats=3))
    fused.append(median_time(F.scaled_dot_product_attention, q, k, v, is_causal=True, repeats=3))

print(f"{'L':>6} {'no mask (ms)':>13} {'causal (ms)':>12} {'fused causal (ms)':>18} {'mask (KiB)':>11} {'expanded (KiB)':>15}")
for length, t_plain, t_masked, t_fused in zip(lengths, plain, masked, fused):
    print(f"{length:>6} {1e3 * t_plain:>13.2f} {1e3 * t_masked:>12.2f} {1e3 * t_fused:>18.2f} "
          f"{length**2 / 2**10:>11.0f} {batch * heads * length**2 / 2**10:>15.0f}")

fig, ax = plt.subplots(figsize=(5.5, 3.5))
ax.loglog(lengths, plain, "o-", label="yours, no mask")
ax.loglog(lengths, masked, "o-", label="yours, causal mask")
ax.loglog(lengths, fused, "o-", label="F.sdpa, is_causal=True")
ax.set(xlabel="sequence length L", ylabel="seconds", title=f"time ({device.type})")
ax.set_xticks(lengths, [str(L) for L in lengths])
ax.minorticks_off()
ax.legend()
plt.tight_layout()
plt.show()

# %% [markdown]
# With the mask, your attention is no faster, and a little slower: it still forms all $L^2$ scores, then adds the mask and zeroes rows. A fused kernel that knows the mask is causal can skip whole blocks above the diagonal, which is where its advantage grows with $L$. Day 6 (tiled attention) and day 7 (FlashAttention in Triton) do exactly that. A broadcast mask costs $L^2$ bytes once; expanding it per batch and head multiplies that by $B \cdot H$ for nothing.
#
# ## 8. Recap
#
# - A mask is boolean, True = may attend. Blocked keys get $-\infty$ (or the dtype's minimum) before the softmax, so exactly zero weight.
# - The course's causal mask is bottom-right aligned: query $i$ is at position $L_k - L_q + i$. That is the KV-cache convention, and *not* what `is_causal=True` does when $L_q \ne L_k$.
# - Padding masks hide **keys**: `(B, Lk)` becomes `(B, 1, 1, Lk)`.
# - Never $-10^9$: it overflows float16. Use `torch.finfo(dtype).min`, or $-\infty$ with a softmax that returns zeros for an empty row.
# - A query with nothing to see gets zero weights and zero output, not NaN and not $1/L_k$.
#
# ## Further reading
#
# - Vaswani et al. (2017), *Attention Is All You Need*, §3.2.3: masking the decoder's self-attention.
# - PyTorch: [`F.scaled_dot_product_attention`](https://pytorch.org/docs/stable/generated/torch.nn.functional.scaled_dot_product_attention.html) (`attn_mask`, `is_causal`) and [`torch.nn.attention.bias`](https://pytorch.org/docs/stable/nn.attention.bias.html) (`causal_upper_left`, `causal_lower_right`).
# - FlashAttention's changelog, version 2.1: causal masks became bottom-right aligned when $L_q \ne L_k$.
# - Hugging Face Transformers, `modeling_attn_mask_utils.py`: 4-D masks built with `torch.finfo(dtype).min`.
# - `nn.MultiheadAttention`'s documentation: `key_padding_mask` and `attn_mask`, where True means *ignore*.
#
# **Next: day 3, multi-head attention and positions.** Masks come back with ALiBi, whose bias uses the same bottom-right positions.
