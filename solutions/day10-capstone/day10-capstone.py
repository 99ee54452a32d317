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
# # Day 10 · Capstone: choose and measure
#
# [Open in Colab](https://colab.research.google.com/github/attention-from-scratch/attention-from-scratch/blob/main/exercises/day10-capstone/day10-capstone.ipynb)
#
# **What you will build.** The tools to pick an attention mechanism for a job, backed by numbers:
#
# 1. `estimate_attention_memory(kind, batch, heads, seq_len, head_dim, dtype, **kw)`: the peak memory of each mechanism of the course, derived from first principles and checked against measurements within 15%;
# 2. `benchmark_attention(fns, seq_lens, ...)`: time, peak memory and quality of many mechanisms at many lengths, with failures (out of memory, too slow) recorded in the table instead of crashing it;
# 3. `choose_attention(seq_len, needs_global_context, memory_budget_bytes, has_gpu)`: a decision guide whose thresholds come from the measurements.
#
# Then a small **hybrid model** (sliding-window layers plus one global layer, each chosen by name) trained on day 3's toy task, against the dense model, on accuracy and cost.
#
# **Advanced.** 4. `make_attention(kind, d_model, num_heads, **kwargs)`: every mechanism of the course behind one `nn.Module` interface, `forward(x, mask=None)`, with errors that name what is valid.
#
# **Prerequisites.** Days 1–9 (you use the course's library versions of them: `course.reference.masks`, `course.reference.sparse`, `course.reference.online_softmax`, `course.reference.linear_attention`, `course.reference.mamba_scan`), `course.bench`.
# **Time.** About 3 hours.
#
# **How this notebook works.** Replace each `raise NotImplementedError()` with your code and run the check cell under it: ✓ or ✗ per check, and a named mistake with a hint for each ✗. Hidden checks draw new sizes when your notebook is graded.
#
# **Not allowed inside your functions:** the course's own `course.reference.capstone` and `course.reference.mechanisms` versions of them; inside `estimate_attention_memory` also `course.bench.peak_memory` (you estimate; the check measures).

# %% nbgrader={"grade": false, "grade_id": "setup", "locked": true, "schema_version": 3, "solution": false, "task": false}
import math
import statistics
import time

import matplotlib.pyplot as plt
import torch
import torch.nn.functional as F

import course
from course.bench import median_time, peak_memory
from course.explore.capstone import MemoryExplorer
from course.reference.capstone import attention_function, plot_benchmark
from grader import check

device = course.get_device()
course.seed_everything(0)
torch.set_num_threads(1)  # many small ops: one thread is fastest and steadiest on a shared CPU
print(course.describe_device())

# %% [markdown]
# ## 1. What does "memory of attention" mean?
#
# We measure with `course.bench.peak_memory(fn, q, k, v)`: the **largest number of bytes of tensor storage that the call allocates and holds at the same time**, its result included. The inputs $q, k, v$ are not counted (they existed before the call), nor is memory a kernel uses privately and frees before returning (on a GPU, `torch.cuda.max_memory_allocated` sees that too). Our estimates count exactly the same thing, so they can be compared.
#
# Notation: $N = \text{batch}\times\text{heads}$ independent attention problems, $L$ the sequence length, $d$ the head dimension (values have $d$ too), $s$ the bytes per element of the dtype (2 for float16/bfloat16, 4 for float32, 8 for float64).
#
# A tiny example to check by hand: dense attention on $N = 1$, $L = 4$, $d = 2$ in float32. Look at `course.reference.masks.attention`:
#
# ```python
# scores = q @ k.transpose(-2, -1) * d ** -0.5   # (L, L): the matmul's result and the scaled copy
# weights = torch.softmax(scores, dim=-1)        # (L, L), while scores is still alive
# return weights @ v, weights                    # (L, d)
# ```
#
# At the line `scores = ...` two $(L, L)$ tensors are alive for a moment (the product, then the scaled copy). Later, `scores`, `weights` and the output are alive together: $2L^2 + Ld$ elements, $s(2L^2 + Ld) = 4 \cdot (32 + 8) = 160$ bytes.

# %%
q, k, v = (torch.randn(1, 1, 4, 2) for _ in range(3))
print(peak_memory(attention_function("dense"), q, k, v), "bytes")   # 4 * (2 * 16 + 4 * 2) = 160

# %% [markdown]
# To derive a formula, read the implementation and list what each line allocates and what is still alive. `trace` prints every allocation and the running total; the peak is the largest total.

# %%
from course.bench import LiveStorage

class _Trace(LiveStorage):
    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        before = self.live
        out = super().__torch_dispatch__(func, types, args, kwargs)
        if self.live != before:
            print(f"{str(func):32s} {self.live - before:+9d}  alive {self.live:9d}")
        return out

def trace(fn, *args):
    tracer = _Trace()
    with torch.no_grad(), tracer:
        fn(*args)
    print("peak", tracer.peak)

trace(attention_function("dense"), q, k, v)

# %% [markdown]
# ## 2. The formulas
#
# Each one is read off the course's library implementation named in brackets (run `trace` on it to see the steps). $s$ bytes per element, $N = BH$.
#
# **Dense** (`course.reference.masks.attention`): scores and weights $(L, L)$ each, plus the output:
# $$M_\text{dense} = s\,(2NL^2 + NLd).$$
#
# **Dense with a mask** (a causal $(L, L)$ bool mask built in the call, 1 byte per entry): `masked_fill` makes a masked copy of the scores, and zeroing fully masked rows (`weights * mask.any(-1)`) makes a copy of the weights while scores and weights are alive: three $(L,L)$ float buffers at once, plus the mask and its $(L, 1)$ row test:
# $$M_\text{masked} = 3sNL^2 + L^2 + L.$$
# **Strided** (dense attention under `course.reference.sparse.strided_mask`): the same formula, the mask is just another $(L, L)$ bool. Sparse *masks* save nothing: the saving needs an implementation that never builds $(L, L)$.
#
# **Sliding window and chunked** (`course.reference.sparse`'s blocked attention). Queries are cut into $n_b = \lceil L/b \rceil$ blocks of $b$ (for a window $w$, two cases: causal, left $= w-1$ and right $= 0$; not causal, left $=$ right $= \lfloor w/2 \rfloor$; $b = \max(16, \min(L, \text{left}+\text{right}+1))$; for chunks: $b$ = chunk size, left = right = overlap). Block $c$ meets $\text{span} = b + \text{left} + \text{right}$ keys. It allocates padded copies of $q$ ($n_b b$ rows), of $k$ **and** $v$ ($L + \text{left} + \text{right} + \text{tail}$ rows each, tail $= n_b b - L$), the output ($n_b b$ rows), the band pattern ($b \times \text{span}$ offsets in int64 plus bool tests: $\approx 11$ bytes per entry, and likewise for $n_b \times \text{span}$ key positions, $9\,n_b b$ for query positions), then works on $g = \min(n_b, \max(1, \lfloor 2^{18} / (N b\,\text{span}) \rfloor))$ blocks at a time. A group holds $S = N g b\,\text{span}$ scores and their softmax, plus a copy of the key (value) tiles $T = N g\,\text{span}\,d$ when $N > 1$ (matmul cannot fold $(N, g)$ into one batch dimension of the strided view), plus the group's output $O = Ngbd$ ($T = 0$ when $N = 1$, and so is $T'$); the next group computes its scores while the previous scores are alive:
# $$M_\text{blocked} = s\big(N n_b b d + 2N(L + \text{left} + \text{right} + \text{tail})d + N n_b b d\big) + 11\,b\,\text{span} + 11\,n_b\,\text{span} + 9\,n_b b + s \max\big(2S + \max(T + O,\, \lfloor 2S/s \rfloor),\ S + 2S' + T'\big)$$
# where $\lfloor 2S/s \rfloor$ is two bool masks of the allowed keys (1 byte per score) counted in $s$-byte elements, rounded down as `2 * S // s`; and $S', T'$ are those of the next group: with one group there is no next one (drop the second term); with two, the next is the last, smaller group of $n_b - g$ blocks; with three or more, a full group ($S' = S$, $T' = T$). The point: $S \le \max(2^{18}, Nb\,\text{span})$, so memory grows like $L\cdot d + L \cdot w$, **not** $L^2$.
#
# **Flash / tiled** (`course.reference.online_softmax.tiled_attention`, blocks $b_q, b_k$): the output and the logsumexp ($NLd + NL$), one query tile with its running max, denominator and numerator ($N b_q (2d + 8)$ counting a few $(N, b_q)$ vectors), and four $(b_q, b_k)$ tiles at once (the new scores, $s - m$, $p$, and the previous $p$; three when one query block covers $L$):
# $$M_\text{flash} = s\big(NLd + NL + Nb_q(2d + 8) + 4Nb_qb_k\big).$$
#
# **Linear** (`course.reference.linear_attention.linear_attention`, $\phi = $ elu + 1): $\phi(q), \phi(k)$, the numerator and the $(\phi(q) \odot z)$ product are alive together, plus the $d \times d$ state, $z$, and two $(N, L, 1)$ denominators:
# $$M_\text{linear} = s\,(4NLd + 2NL + Nd^2 + Nd).$$
#
# **Performer** ($m$ random features): the features of $q$ and $k$ and two more $(L, m)$ buffers in the feature map, a scaled copy of the input, the projection, built in float64:
# $$M_\text{performer} = s\,(4NLm + NLd + md) + 8md.$$
#
# **Scan** (`course.reference.mamba_scan.selective_scan` with $N' = BHd$ channels and state size $n$): $\bar A$ and $\bar B u$ are $(N', L, n)$; the parallel scan clones both and adds one temporary: five at once, plus three $(N', L)$ inputs:
# $$M_\text{scan} = s\,(5N'Ln + 3N'L).$$
#
# **Where the formulas hold.** They count full tiles: $L$ a multiple of the block sizes and chunks no longer than $L$ (the sizes the checks use). A partial last block or a chunk longer than $L$ allocates less than the formula says (flash at $L = 100$ with $b_q = 64$ measures about 20% below it), so compare with `peak_memory` at such sizes.

# %% [markdown]
# ### Exercise 1: `estimate_attention_memory`
#
# Turn the formulas into code. Check your arguments first: an unknown kind, a missing keyword (`window` for `"sliding"`; `chunk_size` and `overlap` for `"chunked"`; `stride` and `local_window` for `"strided"`) or a size below 1 raises `ValueError`. Sizes are `batch`, `heads`, `seq_len`, `head_dim` and the keywords that count something (`window`, `chunk_size`, `stride`, `local_window`, the block sizes, `num_features`, `state`); `overlap` may be 0 (chunks that meet only their own keys).
#
# Fill in the defaults into a new dict for each call (`{**defaults, **kw}`): a table of defaults updated in place (`opts = defaults; opts.update(kw)`) keeps one call's arguments for the next.
#
# Return an `int`: bytes are whole, so divide with `//` (or round up with `-(-a // b)`).
#
# The checks measure the course's implementation at random sizes and allow 15%. They recognise: forgetting the heads factor; 4 bytes per element for every dtype; bits instead of bytes per element; a float instead of an int; two $(L, L)$ buffers for masked attention instead of three; an $(L, L)$ matrix for the banded sliding window; a non-causal window read as left $= w-1$, right $= \lfloor w/2 \rfloor$; the padded K and V counted once; chunks without their overlap, or with it on one side only; flash with one score tile instead of four; a Performer estimate with only its feature buffers; a scan over $BH$ channels instead of $BHd$; query blocks of fewer than 16 rows for a narrow window; a causal window of $w + 1$ keys (left $= w$); a keyword argument ignored; the defaults changed by a call; a bad argument accepted silently.

# %% nbgrader={"grade": false, "grade_id": "estimate_attention_memory", "locked": false, "schema_version": 3, "solution": true, "task": false}
GROUP_SCORES = 1 << 18  # course.reference.sparse works on groups of query blocks of about this many scores
KINDS = {"dense": ((), {}), "dense_masked": ((), {}), "strided": (("stride", "local_window"), {}),
         "sliding": (("window",), {"causal": False}), "chunked": (("chunk_size", "overlap"), {}),
         "flash": ((), {"block_q": 64, "block_k": 64}), "linear": ((), {}),
         "performer": ((), {"num_features": 256}), "scan": ((), {"state": 16})}


def estimate_attention_memory(kind, batch, heads, seq_len, head_dim, dtype=torch.float32, **kw):
    """Peak bytes that one call of the course's `kind` of attention allocates and holds at once,
    its output included, q, k, v excluded (what course.bench.peak_memory measures), for q, k, v
    of shape (batch, heads, seq_len, head_dim) in `dtype`.

    kind and its keywords: "dense"; "dense_masked" (causal bool mask built in the call);
    "strided" (stride, local_window); "sliding" (window, causal=False); "chunked" (chunk_size,
    overlap); "flash" (block_q=64, block_k=64); "linear"; "performer" (num_features=256);
    "scan" (state=16, over batch * heads * head_dim channels).
    Returns an int. Raises ValueError for an unknown kind, a missing keyword, a size < 1.
    Not allowed: course.reference.capstone, course.bench.peak_memory.
    """
    ### BEGIN SOLUTION
    if kind not in KINDS:
        raise ValueError(f"unknown kind {kind!r}; expected one of {sorted(KINDS)}")
    required, defaults = KINDS[kind]
    missing = [name for name in required if name not in kw]
    if missing:
        raise ValueError(f"kind {kind!r} needs the keyword(s) {missing}")
    options = {**defaults, **kw}
    for name, value in [("batch", batch), ("heads", heads), ("seq_len", seq_len),
                        ("head_dim", head_dim)] + list(options.items()):
        low = 0 if name in ("overlap", "causal") else 1
        if not isinstance(value, int) or value < low:
            raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
    s = torch.empty((), dtype=dtype).element_size()  # bytes per element
    N, L, d = batch * heads, seq_len, head_dim
    if kind == "dense":
        return s * (2 * N * L * L + N * L * d)
    if kind in ("dense_masked", "strided"):
        return 3 * s * N * L * L + L * L + L
    if kind == "sliding":
        w = options["window"]
        left, right = (w - 1, 0) if options["causal"] else (w // 2, w // 2)
        left, right = min(left, L - 1), min(right, L - 1)
        return blocked_bytes(N, L, d, s, max(16, min(L, left + right + 1)), left, right)
    if kind == "chunked":
        overlap = min(options["overlap"], L)
        return blocked_bytes(N, L, d, s, min(options["chunk_size"], L), overlap, overlap)
    if kind == "flash":
        bq, bk = min(options["block_q"], L), min(options["block_k"], L)
        tiles = 4 if L > bq else 3
        return s * (N * L * d + N * L + N * bq * (2 * d + 8) + tiles * N * bq * bk)
    if kind == "linear":
        return s * (4 * N * L * d + 2 * N * L + N * d * d + N * d)
    if kind == "performer":
        m = options["num_features"]
        return s * (4 * N * L * m + N * L * d + m * d) + 8 * m * d
    n = options["state"]  # scan
    return s * (5 * N * d * L * n + 3 * N * d * L)


def blocked_bytes(N, L, d, s, block, left, right):
    """course.reference.sparse's blocked attention: padded q, k, v, the output, the band, one group."""
    nb = math.ceil(L / block)
    span = block + left + right
    tail = nb * block - L
    base = s * (N * nb * block * d + 2 * N * (L + left + right + tail) * d + N * nb * block * d)
    base += 11 * block * span + 11 * nb * span + 9 * nb * block
    group = min(nb, max(1, GROUP_SCORES // (block * span * N)))

    def work(g):  # scores, copied key tiles (only when N > 1), the group's output
        return N * g * block * span, (N * g * span * d if N > 1 else 0), N * g * block * d

    scores, tiles, out = work(group)
    peak = 2 * scores + max(tiles + out, 2 * scores // s)
    groups = math.ceil(nb / group)
    if groups > 1:
        nxt = work(nb - group) if groups == 2 else work(group)
        peak = max(peak, scores + 2 * nxt[0] + nxt[1])
    return base + s * peak
    ### END SOLUTION


# %%
# The tiny example by hand: 4 * (2 * 16 + 4 * 2) = 160 bytes.
estimate_attention_memory("dense", 1, 1, 4, 2, torch.float32)

# %% nbgrader={"grade": true, "grade_id": "check_estimate_attention_memory", "locked": true, "points": 2, "schema_version": 3, "solution": false, "task": false}
check("day10-capstone", "estimate_attention_memory", estimate_attention_memory, points=2)

# %% nbgrader={"grade": true, "grade_id": "hidden_estimate_attention_memory", "locked": true, "points": 1, "schema_version": 3, "solution": false, "task": false}
# When your notebook is graded, hidden tests run here: the same checks on fresh random shapes.
### BEGIN HIDDEN TESTS
check("day10-capstone", "estimate_attention_memory", estimate_attention_memory, hidden=True, points=1)
### END HIDDEN TESTS

# %% [markdown]
# ### Estimated against measured
#
# Every kind at two small sizes (float32, batch 1, 2 heads, $d = 32$): the measured peak of the course's implementation next to your estimate.

# %%
KIND_KW = {"dense": {}, "dense_masked": {}, "strided": {"stride": 16, "local_window": 16},
           "sliding": {"window": 64}, "chunked": {"chunk_size": 64, "overlap": 16}, "flash": {},
           "linear": {}, "performer": {"num_features": 64}, "scan": {"state": 8}}
print(f"{'kind':>13} {'L':>5} {'measured':>10} {'estimated':>10} {'ratio':>6}")
for kind, kw in KIND_KW.items():
    for L in (256, 512):
        q, k, v = (torch.randn(1, 2, L, 32) for _ in range(3))
        with torch.no_grad():
            got = peak_memory(attention_function(kind, **kw), q, k, v)
        guess = estimate_attention_memory(kind, 1, 2, L, 32, torch.float32, **kw)
        print(f"{kind:>13} {L:>5} {got:>10} {guess:>10} {guess / got:>6.2f}")

# %% [markdown]
# ## 3. Benchmarking many mechanisms
#
# A benchmark is a table: one row per mechanism and length. Three rules make it trustworthy:
#
# - **Warm up first.** The first call pays for allocating memory, filling caches and (on a GPU) compiling kernels; time the calls after it.
# - **Report the median** of several timed calls: one call that the operating system interrupted must not move the result (the mean would).
# - **A failure is a result.** Dense attention running out of memory at $L = 64\text{k}$ is exactly what the table should show; a Python loop taking minutes should be stopped. Record the failure in the row and carry on, and skip that mechanism's longer lengths (they would fail too).
#
# Quality sits beside the cost: the relative error $\lVert \text{out} - \text{ref} \rVert / \lVert \text{ref} \rVert$ against exact attention in float64 says what an approximation gives up.
#
# ### Exercise 2: `benchmark_attention`
#
# The checks drive your function with fake mechanisms whose behaviour is known: they recognise rows without the table's fields or with rows missing, the skipped lengths left out, a failure raised instead of recorded, the wrong status for a failure, a failed mechanism run again at longer lengths instead of skipped, an `(out, weights)` tuple not unpacked, a timed warm-up (alone, among the timed calls, or reused as the first of them), the mean instead of the median, a time in milliseconds, too few calls, a peak memory that is not `peak_memory`'s, and a relative error divided by $\lVert\text{out}\rVert$, not divided at all, or against a reference without the $1/\sqrt{d}$ scale, and the largest absolute difference $\max|\text{out} - \text{ref}|$ or the mean of each query's relative error instead of the relative norm; one tensor used as $q$, $k$ and $v$, or inputs not drawn from the `seed`; a 0 where nothing was measured (a failed row's time, memory or error); one mechanism's failure skipping the others; a slow warm-up not recorded as `"too_slow"`; failures remembered from an earlier call (create the record of failures inside the function).

# %% nbgrader={"grade": false, "grade_id": "benchmark_attention", "locked": false, "schema_version": 3, "solution": true, "task": false}
FIELDS = ("name", "seq_len", "status", "time_s", "peak_bytes", "rel_error", "message")


def benchmark_attention(fns, seq_lens, *, batch=1, heads=2, head_dim=32, dtype=torch.float32,
                        device="cpu", repeats=3, time_budget_s=2.0, seed=0):
    """Time, peak memory and quality of each fn(q, k, v) -> out at each length.

    fns: dict name -> fn(q, k, v) returning out (batch, heads, L, head_dim) (or a tuple whose
    first item is out). For each L in seq_lens (ascending), random q, k, v (three tensors, drawn from torch.Generator().manual_seed(seed), so the same call
    gives the same table) and, for each
    mechanism: one untimed warm-up call (its output gives the quality), `repeats` timed calls
    (median), one call under course.bench.peak_memory.
    Returns a list of dicts with keys FIELDS: name, seq_len, status ("ok", "out_of_memory",
    "too_slow" when the warm-up took longer than time_budget_s, "error", or "skipped" for the
    longer lengths of a mechanism that failed), time_s (seconds), peak_bytes, rel_error
    (||out - ref|| / ||ref|| against exact attention in float64), message; None where not measured:
    a row that is not "ok" has time_s, peak_bytes and rel_error None (a "too_slow" row may keep
    the warm-up's seconds as time_s). Failures are recorded, never raised.
    """
    ### BEGIN SOLUTION
    rows, failed = [], {}
    generator = torch.Generator().manual_seed(seed)
    for L in sorted(seq_lens):
        q, k, v = (torch.randn(batch, heads, L, head_dim, generator=generator).to(dtype=dtype, device=device)
                   for _ in range(3))
        q64, k64, v64 = (t.double().cpu() for t in (q, k, v))
        ref = torch.softmax(q64 @ k64.transpose(-2, -1) / math.sqrt(head_dim), dim=-1) @ v64
        for name, fn in fns.items():
            row = dict.fromkeys(FIELDS)
            row.update(name=name, seq_len=L)
            rows.append(row)
            if name in failed:
                row.update(status="skipped", message=failed[name])
                continue
            try:
                with torch.no_grad():
                    start = time.perf_counter()
                    out = fn(q, k, v)                                        # warm-up
                    if time.perf_counter() - start > time_budget_s:
                        row.update(status="too_slow", message=f"over {time_budget_s} s")
                    else:
                        out = out[0] if isinstance(out, tuple) else out
                        row["time_s"] = median_time(fn, q, k, v, repeats=repeats, warmup=0)
                        row["peak_bytes"] = peak_memory(fn, q, k, v)
                        row["rel_error"] = ((out.double().cpu() - ref).norm() / ref.norm()).item()
                        row["status"] = "ok"
            except Exception as exc:
                oom = isinstance(exc, torch.OutOfMemoryError) or "out of memory" in str(exc)
                row.update(status="out_of_memory" if oom else "error", message=f"{type(exc).__name__}: {exc}")
            if row["status"] != "ok":
                failed[name] = f"{row['status']} at L = {L}"
    return rows
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "check_benchmark_attention", "locked": true, "points": 2, "schema_version": 3, "solution": false, "task": false}
check("day10-capstone", "benchmark_attention", benchmark_attention, points=2)

# %% nbgrader={"grade": true, "grade_id": "hidden_benchmark_attention", "locked": true, "points": 1, "schema_version": 3, "solution": false, "task": false}
# When your notebook is graded, hidden tests run here: the same checks on fresh random shapes.
### BEGIN HIDDEN TESTS
check("day10-capstone", "benchmark_attention", benchmark_attention, hidden=True, points=1)
### END HIDDEN TESTS

# %% [markdown]
# ### Measure: every mechanism side by side
#
# Every mechanism is picked by name through `make_attention(kind, d_model, num_heads, **kwargs)`, the one interface for every attention layer of the course (you write your own in the advanced section; here it is the library's, `course.reference.mechanisms`). A layer projects $x$ to $q, k, v$, runs its mechanism on the heads, and projects back; the benchmark times the middle step, the layer's `attend(q, k, v)`, because that is what differs between kinds (the four $d \times d$ projections cost the same for all), and because exact attention needs the same $q, k, v$ to measure the error against.
#
# Small sizes here (a 2-core CPU runs this notebook in under a minute); `python -m course.bench` runs the full sizes, on the GPU when there is one, and writes a report with every benchmark of the course. The dotted and dashed lines are $O(L^2)$ and $O(L)$ guides.

# %%
from course.reference import mechanisms  # the library's make_attention: mechanisms.make_attention

big = device.type == "cuda"
lengths = [512, 1024, 2048, 4096] if big else [128, 256, 512]
heads, head_dim = 2, 32


def mechanism(kind, **kwargs):
    """fn(q, k, v) on heads: the mechanism step of make_attention's layer of this kind."""
    return mechanisms.make_attention(kind, heads * head_dim, heads, **kwargs).to(device).attend


compared = {"dense": mechanism("dense"), "flash (tiled)": mechanism("flash"),
              "sliding 64": mechanism("sliding_window", window=64), "linear": mechanism("linear"),
              "performer 64": mechanism("performer", num_features=64)}
rows = benchmark_attention(compared, lengths, heads=heads, head_dim=head_dim, device=device, repeats=3)
for r in rows:
    cost = "" if r["status"] != "ok" else f"{1e3 * r['time_s']:8.2f} ms {r['peak_bytes'] / 2**20:8.2f} MiB"
    error = "" if r["rel_error"] is None else f"rel. error {r['rel_error']:.1e}"
    print(f"{r['name']:>14} {r['seq_len']:>5} {r['status']:>8} {cost} {error}")
plot_benchmark(rows, title=f"({device.type})")

# %% [markdown]
# What the measurements say (CPU, float32, 2 heads, $d = 32$; `python -m course.bench` for larger sizes):
#
# - **Dense** is the fastest *exact* mechanism on a CPU at every length we measured: it is a few big matrix products. Its memory is $O(L^2)$: at $L = 4096$, 2 heads already need 257 MiB, 8 heads 1 GiB.
# - **Tiled (flash)** gives the same answer (error $\sim 10^{-7}$) in $O(L)$ memory, but in PyTorch its Python loop over tiles makes it slower than dense on a CPU: about 7× at these small sizes, about 2× at $L = 2048$ (the products grow with $L$, the loop's overhead does not). On a GPU a fused kernel (day 7, or `F.scaled_dot_product_attention`) is faster than dense at every length.
# - Both exact ones cost $O(L^2)$ *time*: about 0.3 s per layer of 2 heads at $L = 4096$ on this CPU, so past $\approx 8\text{k}$ tokens exact attention costs seconds per layer here.
# - **Sliding window** and **linear** grow linearly in time and memory, but they compute something else: with random inputs every query spreads its attention over all keys, the worst case for them (their error is of order 1). A task whose information is local (or compressible) loses little.
#
# ### Exercise 3: `choose_attention`
#
# The rule, from those measurements: first decide which candidates make sense, then take the first whose estimated memory fits the budget.
#
# | | GPU | CPU |
# |---|---|---|
# | needs global context (or $L \le$ window) | flash, linear | dense, flash (both only for $L \le 8192$: 8192 itself included), linear |
# | local context is enough ($L >$ window) | sliding, linear | sliding, linear |
#
# Both bounds are inclusive: $L$ equal to the window counts as global context, and $L = 8192$ on a CPU still tries dense and flash. Past 8192 tokens on a CPU only the exact kinds drop out: linear remains.
#
# What each choice gives up: **dense** needs $O(L^2)$ memory; **flash** on a CPU is slower than dense; **sliding** sees only its window in one layer (stack layers, or add a global layer, to reach further); **linear** attention approximates the softmax with a kernel feature map and blurs sharp attention patterns. When nothing fits, raise `ValueError`.
#
# The kind names are `estimate_attention_memory`'s: `"sliding"` (which `make_attention`, below, calls `"sliding_window"`), `"dense"`, `"flash"`, `"linear"`. Estimate each candidate with the sizes you were given (`batch`, `heads`, `head_dim`, `dtype`, and `window=window` for `"sliding"`).
#
# The checks recognise a choice that does not follow the rule, and name the common ones: the CPU candidates on a GPU, flash before dense on a CPU, the budget ignored, exact attention past 8192 tokens on a CPU, no linear fallback past 8192 tokens, `<` where a bound is `<=` (at exactly 8192 tokens, or at a sequence exactly as long as the window), the sliding window for a sequence no longer than the window, the sliding window for global context, dense or flash for local context, `make_attention`'s name `"sliding_window"`, the sizes passed not used, `"sliding"` estimated without its window, a budget that must be beaten rather than met (`<` where "fits" means `<=`); and a missing `ValueError` (nothing fits; `seq_len < 1`; a budget $\le 0$).

# %% nbgrader={"grade": false, "grade_id": "choose_attention", "locked": false, "schema_version": 3, "solution": true, "task": false}
EXACT_MAX_LEN_CPU = 8192  # measured: past this, exact attention takes seconds per layer on a CPU


def choose_attention(seq_len, needs_global_context, memory_budget_bytes, has_gpu, *, batch=1,
                     heads=8, head_dim=64, dtype=torch.float32, window=256):
    """The kind name (for estimate_attention_memory) of the mechanism to use: the first candidate,
    in the order of the table above, whose estimated peak memory fits memory_budget_bytes.
    "sliding" is estimated with `window` (and chosen only when seq_len > window).
    Raises ValueError when nothing fits, for seq_len < 1 and for a budget <= 0.
    """
    ### BEGIN SOLUTION
    if not isinstance(seq_len, int) or seq_len < 1:
        raise ValueError(f"seq_len must be an int >= 1, got {seq_len!r}")
    if not memory_budget_bytes > 0:
        raise ValueError(f"memory_budget_bytes must be > 0, got {memory_budget_bytes!r}")
    if needs_global_context or seq_len <= window:
        if has_gpu:
            candidates = ["flash", "linear"]
        elif seq_len <= EXACT_MAX_LEN_CPU:
            candidates = ["dense", "flash", "linear"]
        else:
            candidates = ["linear"]
    else:
        candidates = ["sliding", "linear"]
    for kind in candidates:
        kw = {"window": window} if kind == "sliding" else {}
        if estimate_attention_memory(kind, batch, heads, seq_len, head_dim, dtype, **kw) <= memory_budget_bytes:
            return kind
    raise ValueError(f"nothing fits {memory_budget_bytes} bytes at L = {seq_len} (tried {candidates})")
    ### END SOLUTION


# %%
for L, global_, budget, gpu in [(512, True, 2**33, False), (6000, True, 2**28, False),
                                (32768, True, 2**33, False), (32768, False, 2**33, False),
                                (32768, True, 2**33, True)]:
    print(f"L = {L:>5}, global context {global_!s:>5}, budget {budget / 2**30:5.2f} GiB, GPU {gpu!s:>5}:",
          choose_attention(L, global_, budget, gpu))

# %% nbgrader={"grade": true, "grade_id": "check_choose_attention", "locked": true, "points": 2, "schema_version": 3, "solution": false, "task": false}
check("day10-capstone", "choose_attention", choose_attention, points=2)

# %% nbgrader={"grade": true, "grade_id": "hidden_choose_attention", "locked": true, "points": 1, "schema_version": 3, "solution": false, "task": false}
# When your notebook is graded, hidden tests run here: the same checks on fresh random shapes.
### BEGIN HIDDEN TESTS
check("day10-capstone", "choose_attention", choose_attention, hidden=True, points=1)
### END HIDDEN TESTS

# %% [markdown]
# ## 4. Explore: memory against a budget
#
# Your `estimate_attention_memory` for every kind at the sizes you set (log scale), the budget as a dashed line, and your `choose_attention`'s pick in green (red: over budget). Slide $L$ up with 8 heads and watch dense cross the budget first, then the masked variants; sliding and flash stay far below.

# %%
explorer = MemoryExplorer(estimate_attention_memory, choose_attention)
explorer.widget

# %% [markdown]
# ## 5. A hybrid model: local layers plus one global layer
#
# Long-context models (Gemma 2/3, Longformer, Mistral's sliding window variants) mix cheap **local** layers, $O(L\,w)$, with a few **global** ones, $O(L^2)$. Information travels $w - 1$ positions per local layer; one global layer lets any token reach any earlier one.
#
# Day 3's *reverse* task needs exactly that: the answer token at position $L + 1 + t$ must copy the digit at position $L - 1 - t$, up to $2L$ positions back. `course.models.hybrid.HybridTransformer` is day 3's tiny transformer whose layers are chosen by name through `make_attention`: `"local"` is `make_attention("sliding_window", d, H, window=w, causal=True)`, `"global"` is `make_attention("dense", d, H, causal=True)`, and any other causal kind can be named (`"flash"`, `"linear"`, `"mamba"`, or a `(kind, kwargs)` pair). Below, a causal window of 3 keys in the first layer and full causal attention in the second, against the dense model, the same hybrid with a flash global layer, and a model with two local layers. Same training for all four: 80 steps of 32 strings of 5 digits, one thread, about a second each.

# %%
from course.models.hybrid import attended_pairs, attention_memory, train_hybrid

length, window, steps = 5, 3, 80
models = {"dense (global, global)": ("global", "global"), "hybrid (local, global)": ("local", "global"),
          "hybrid (local, flash)": ("local", "flash"), "local only (local, local)": ("local", "local")}
seq = 2 * length  # the model reads 2 * length tokens
print(f"{'model':>26} {'token acc':>9} {'seq acc':>7} {'train s':>7} {'pairs':>5} {'attn MiB at L=8k':>16}")
for label, kinds in models.items():
    r = train_hybrid("reverse", kinds, window=window, length=length, steps=steps, d_model=32, batch_size=32)
    pairs = attended_pairs(kinds, seq, window)
    memory = attention_memory(kinds, 1, 8, 8192, 64, window=256) / 2**20
    print(f"{label:>26} {r.token_accuracy:9.3f} {r.sequence_accuracy:7.3f} {r.seconds:7.1f} {pairs:5d} {memory:16.0f}")

# %% [markdown]
# With one local layer and one global layer the hybrid solves *reverse* nearly as well as the dense model (token accuracy 0.980 against 0.993 on this machine), while two local layers cannot (0.271): their reach, $2(w-1) = 4$ positions, is shorter than the task's distances. Swapping the global layer's kind from `"dense"` to `"flash"` changes nothing the model computes (flash is exact attention, so it learns the same weights to float precision), only what it costs.
#
# The cost columns: the query–key pairs each model's patterns allow on these 10-token inputs, and the peak attention memory of its largest layer at $L = 8192$ with 8 heads, $d = 64$ and a 256-token window (dense causal layers cost $3sNL^2$; local ones, run by the blocked sliding window, $O(L\,w)$; flash $O(L)$). A hybrid's memory is set by its global layers: with a flash global layer every layer is $O(L)$ in memory, and only the global ones are $O(L^2)$ in time. At these tiny sizes training time is about the same for all four; the savings appear at long $L$.

# %% [markdown]
# ## Advanced: one interface for every mechanism
#
# Every mechanism of the course so far had its own calling convention: `attention(q, k, v, mask)`
# returns weights too, `sliding_window_attention` wants a `window`, `chunked_attention` a
# `chunk_size` and an `overlap`, the linear forms a feature map, and Mamba is a whole block with
# no queries or keys at all. A model that wants to *choose* its attention, like the hybrid above,
# or a benchmark that wants to compare them, needs them all behind one door; both used the
# library's `course.reference.mechanisms.make_attention`. Now write your own. Production libraries
# do the same (an `attn_implementation="sdpa" | "flash_attention_2" | "eager"` switch, a registry
# of attention classes).
#
# `make_attention(kind, d_model, num_heads, **kwargs)` returns an `nn.Module` whose
# `forward(x, mask=None)` maps $x \in \mathbb{R}^{B \times L \times d}$ to the same shape. The
# multi-head kinds share one frame and differ only in the middle step:
#
# $$
# Q, K, V = x W_Q + b_Q,\; x W_K + b_K,\; x W_V + b_V \;\xrightarrow{\text{split}}\; (B, H, L, d/H)
# \;\xrightarrow{\text{mechanism}}\; O \;\xrightarrow{\text{merge}}\; O W_O + b_O .
# $$
#
# | kind | keyword arguments (no default = required) | mechanism (from `course`) | memory |
# |---|---|---|---|
# | `dense` | `causal=False` | `attention` with `causal_mask` | $O(L^2)$ |
# | `strided` | `stride`, `local_window` | `attention` with `strided_mask` | $O(L^2)$ |
# | `sliding_window` | `window`, `causal=False` | `sliding_window_attention` | $O(L w)$ |
# | `chunked` | `chunk_size`, `overlap=0` | `chunked_attention` | $O(L (c + 2o))$ |
# | `flash` | `causal=False`, `block_q=64`, `block_k=64` | `flash_attention_torch` | $O(L)$ |
# | `linear` | `causal=False`, `chunk_size=64` | `linear_attention` / `causal_linear_attention_chunked` | $O(L)$ |
# | `performer` | `num_features=256`, `seed=0` | `performer_attention` | $O(L m)$ |
# | `mamba` | `d_state=16`, `d_conv=4`, `expand=2` | `MambaBlock` (no heads) | $O(L)$ |
#
# Two rules make the interface honest:
#
# - **A mask only where it can be applied.** `dense` and `strided` compute the whole $(L, L)$
#   score matrix anyway, so they take a boolean `mask` (True = may attend, broadcastable to
#   $(B, H, L, L)$) and combine it with their own pattern. Every other kind exists *so that* the
#   $(L, L)$ matrix is never built; its pattern comes from its arguments. Handed a mask, it raises
#   `ValueError` rather than silently attending to padding.
# - **Errors that say what is valid.** An unknown kind lists every kind; an argument the kind does
#   not take names the arguments it does take; a missing required argument is named.
#
# The multi-head layers name their projections `q_proj`, `k_proj`, `v_proj` and `out_proj`
# (each `nn.Linear(d_model, d_model)`), as day 3's `MultiHeadAttention` does: the checks recompute
# every kind in float64 from your own weights. Performer's random features are drawn from a
# generator seeded with `seed` at every call, so the layer is a function of its input:
# `torch.Generator(device=q.device).manual_seed(seed)` is a stream of random numbers of its own
# (on the device of `q`, where the features are drawn), passed as `generator=`. Unlike
# `torch.manual_seed`, it leaves the program's global random state (dropout, data shuffling)
# alone.
#
# `num_heads` must divide `d_model` for every kind with heads; `mamba` has no heads, so it
# ignores `num_heads`. Fill in the defaults into a new dict for each layer
# (`{**LAYER_KINDS[kind], **kwargs}`): updating `LAYER_KINDS[kind]` in place would hand one
# call's arguments to every later call.
#
# The course functions the middle step calls, all on heads $(B, H, L, d/H)$ (the cell below
# imports them); a mask's True means "may attend":
#
# ```python
# attention(q, k, v, mask=None) -> (out, weights)              # course.reference.masks
# causal_mask(lq, lk=None, device=None) -> (lq, lk) bool       # course.reference.masks
# strided_mask(L, stride, local_window, device=None)           # course.reference.sparse
# sliding_window_attention(q, k, v, window, causal=False)      # course.reference.sparse
# chunked_attention(q, k, v, chunk_size, overlap)              # course.reference.sparse
# flash_attention_torch(q, k, v, causal=False, block_q=64, block_k=64)
#                                                              # course.reference.online_softmax
# linear_attention(q, k, v)                                    # course.reference.linear_attention
# causal_linear_attention_chunked(q, k, v, chunk_size=64)      # course.reference.linear_attention
# performer_attention(q, k, v, num_features=256, generator=None)
#                                          # course.reference.linear_attention; generator: a
#                                          # torch.Generator, so the features can be drawn again
# MambaBlock(d_model, d_state=16, d_conv=4, expand=2)          # course.reference.mamba_scan
#                                                              # an nn.Module: (B, L, d) -> (B, L, d)
# ```

# %% nbgrader={"grade": false, "grade_id": "AttentionLayer", "locked": false, "schema_version": 3, "solution": true, "task": false}
from torch import nn

from course.reference.masks import attention, causal_mask
from course.reference.online_softmax import flash_attention_torch
from course.reference.linear_attention import causal_linear_attention_chunked, linear_attention, performer_attention
from course.reference.mamba_scan import MambaBlock
from course.reference.sparse import chunked_attention, sliding_window_attention, strided_mask

# Each kind: its keyword arguments and their defaults (None = required).
LAYER_KINDS = {
    "dense": {"causal": False},
    "strided": {"stride": None, "local_window": None},
    "sliding_window": {"window": None, "causal": False},
    "chunked": {"chunk_size": None, "overlap": 0},
    "flash": {"causal": False, "block_q": 64, "block_k": 64},
    "linear": {"causal": False, "chunk_size": 64},
    "performer": {"num_features": 256, "seed": 0},
    "mamba": {"d_state": 16, "d_conv": 4, "expand": 2},
}
TAKES_MASK = {"dense", "strided"}


class AttentionLayer(nn.Module):
    """Projections, heads, one mechanism, merge, out projection: (B, L, d) -> (B, L, d)."""

    def __init__(self, kind: str, d_model: int, num_heads: int, options: dict):
        super().__init__()
        self.kind, self.options, self.num_heads = kind, options, num_heads
        self.q_proj, self.k_proj = nn.Linear(d_model, d_model), nn.Linear(d_model, d_model)
        self.v_proj, self.out_proj = nn.Linear(d_model, d_model), nn.Linear(d_model, d_model)

    def split(self, t):                                       # (B, L, d) -> (B, H, L, d/H)
        B, L, d = t.shape
        return t.view(B, L, self.num_heads, d // self.num_heads).transpose(1, 2)

    def forward(self, x, mask=None):
        """x (B, L, d_model), mask bool broadcastable to (B, H, L, L) or None -> (B, L, d_model).
        Refuse a mask (ValueError) unless self.kind is in TAKES_MASK."""
        ### BEGIN SOLUTION
        if mask is not None and self.kind not in TAKES_MASK:
            raise ValueError(f"kind {self.kind!r} takes no mask (only {sorted(TAKES_MASK)} do): "
                             "its pattern is set by its arguments")
        q, k, v = self.split(self.q_proj(x)), self.split(self.k_proj(x)), self.split(self.v_proj(x))
        out = self.attend(q, k, v, mask)                      # (B, H, L, d/H)
        B, H, L, dh = out.shape
        return self.out_proj(out.transpose(1, 2).reshape(B, L, H * dh))
        ### END SOLUTION

    def attend(self, q, k, v, mask=None):
        """The mechanism of self.kind on heads q, k, v (B, H, L, d/H), with self.options."""
        ### BEGIN SOLUTION
        o, L = self.options, q.shape[-2]
        if self.kind in TAKES_MASK:
            if self.kind == "strided":
                pattern = strided_mask(L, o["stride"], o["local_window"], device=q.device)
            elif o["causal"]:
                pattern = causal_mask(L, device=q.device)
            else:
                pattern = torch.ones(L, L, dtype=torch.bool, device=q.device)
            return attention(q, k, v, pattern if mask is None else pattern & mask)[0]
        if self.kind == "sliding_window":
            return sliding_window_attention(q, k, v, o["window"], causal=o["causal"])
        if self.kind == "chunked":
            return chunked_attention(q, k, v, o["chunk_size"], o["overlap"])
        if self.kind == "flash":
            return flash_attention_torch(q, k, v, o["causal"], o["block_q"], o["block_k"])
        if self.kind == "linear" and o["causal"]:
            return causal_linear_attention_chunked(q, k, v, chunk_size=o["chunk_size"])
        if self.kind == "linear":
            return linear_attention(q, k, v)
        generator = torch.Generator(device=q.device).manual_seed(o["seed"])  # same features every call
        return performer_attention(q, k, v, num_features=o["num_features"], generator=generator)
        ### END SOLUTION


# %% [markdown]
# **The scan.** Mamba has no queries or keys: its layer wraps day 9's `MambaBlock` behind the same `forward(x, mask=None)`.

# %% nbgrader={"grade": false, "grade_id": "ScanLayer", "locked": false, "schema_version": 3, "solution": true, "task": false}
class ScanLayer(nn.Module):
    """Mamba behind the same forward(x, mask=None): causal by construction, so no mask."""

    def __init__(self, d_model: int, options: dict):
        super().__init__()
        self.block = MambaBlock(d_model, **options)

    def forward(self, x, mask=None):
        ### BEGIN SOLUTION
        if mask is not None:
            raise ValueError("kind 'mamba' takes no mask: a scan is causal and has no keys")
        return self.block(x)
        ### END SOLUTION


# %% [markdown]
# **The door.** `make_attention` checks the kind and its arguments against `LAYER_KINDS`, fills in the defaults, and builds the layer.

# %% nbgrader={"grade": false, "grade_id": "make_attention", "locked": false, "schema_version": 3, "solution": true, "task": false}
def make_attention(kind: str, d_model: int, num_heads: int, **kwargs) -> nn.Module:
    """The attention layer `kind` (see LAYER_KINDS): an nn.Module with forward(x, mask=None),
    x (B, L, d_model) -> (B, L, d_model). 'mamba' is a ScanLayer, every other kind an
    AttentionLayer with the defaults of LAYER_KINDS filled in.

    Raises ValueError for an unknown kind (naming every kind), an argument the kind does not
    take (naming those it takes), a missing required argument, or num_heads not dividing d_model.
    Forbidden: course.reference.mechanisms (the library version).
    """
    ### BEGIN SOLUTION
    if kind not in LAYER_KINDS:
        raise ValueError(f"unknown kind {kind!r}; expected one of {', '.join(LAYER_KINDS)}")
    unknown = set(kwargs) - set(LAYER_KINDS[kind])
    if unknown:
        raise ValueError(f"kind {kind!r} takes {sorted(LAYER_KINDS[kind])}, not {sorted(unknown)}")
    options = {**LAYER_KINDS[kind], **kwargs}
    missing = [name for name, value in options.items() if value is None]
    if missing:
        raise ValueError(f"kind {kind!r} needs {missing}")
    if kind == "mamba":
        return ScanLayer(d_model, options)
    if d_model % num_heads:
        raise ValueError(f"num_heads={num_heads} must divide d_model={d_model}")
    return AttentionLayer(kind, d_model, num_heads, options)
    ### END SOLUTION


# %% [markdown]
# The checks recognise: heads ignored (one head of size $d$), scores scaled by $1/\sqrt{d}$ instead
# of $1/\sqrt{d/H}$ or scaled twice, `causal=True` ignored, a sliding window one key off, chunked
# attention without its overlap or with `chunk_size` and `overlap` swapped, heads split or merged
# without the transpose (or merged features first, `permute(0, 2, 3, 1)`), the output projection forgotten, the pattern
# inverted (`~pattern`: True read as "masked out"), a mask ignored by `dense` or `strided`, a mask
# combined with the pattern by OR or used instead of it, a mask silently dropped by a kind that
# cannot apply it, a Performer layer that draws new features at every call, reseeds the global
# generator or ignores `num_features`, a Mamba layer that looks ahead or adds a residual ($x + \text{block}(x)$), defaults not filled in or changed by a call, `num_heads` not dividing `d_model` accepted, and an unknown kind or argument accepted or
# refused without naming what is valid. They also refuse `course.reference.mechanisms`, the library
# version.

# %% nbgrader={"grade": true, "grade_id": "check_make_attention", "locked": true, "points": 2, "schema_version": 3, "solution": false, "task": false}
check("day10-capstone", "make_attention", make_attention, points=2)

# %% nbgrader={"grade": true, "grade_id": "hidden_make_attention", "locked": true, "points": 1, "schema_version": 3, "solution": false, "task": false}
# When your notebook is graded, hidden tests run here: the same checks on fresh random shapes.
### BEGIN HIDDEN TESTS
check("day10-capstone", "make_attention", make_attention, hidden=True, points=1)
### END HIDDEN TESTS

# %% [markdown]
# ### Every mechanism through one door
#
# With one interface, a comparison is a loop over names. Each layer below is built by your
# `make_attention`, run on the same input, and measured with the course's `peak_memory` (what the
# call allocates beyond its inputs) and `median_time`. The exact kinds agree with `dense` under
# their own pattern; here we only look at cost.

# %%
d_model, num_heads, L = 64, 4, 512 if not course.has_gpu() else 4096
layer_kwargs = {
    "dense": {"causal": True},
    "sliding_window": {"window": 64, "causal": True},
    "chunked": {"chunk_size": 64, "overlap": 32},
    "flash": {"causal": True},
    "linear": {"causal": True},
    "performer": {"num_features": 64},
    "mamba": {"d_state": 8},
}
x_layers = torch.randn(1, L, d_model, device=device)
print(f"{'kind':>15} {'params':>8} {'time (ms)':>10} {'peak (MiB)':>11}")
with torch.no_grad():
    for kind, kwargs in layer_kwargs.items():
        layer = make_attention(kind, d_model, num_heads, **kwargs).to(device)
        seconds = median_time(layer, x_layers, repeats=3)
        peak = peak_memory(layer, x_layers)
        params = sum(p.numel() for p in layer.parameters())
        print(f"{kind:>15} {params:>8} {1e3 * seconds:>10.2f} {peak / 2**20:>11.2f}")

# %% [markdown]
# ## Recap
#
# - **Memory is a formula you can read off the code.** Every allocation a mechanism holds at its
#   peak, times the bytes per element of the dtype, times batch and heads: your
#   `estimate_attention_memory` agrees with the measured peak within a few percent for every kind.
# - **A benchmark is a table that records its failures.** Warm up, take the median, measure the
#   peak, compare with exact attention, and write down "out of memory" or "too slow" as a result.
# - **Choosing is a rule backed by numbers:** exact attention while it fits and is fast enough;
#   flash when memory is the limit and every token needs every other; sliding windows when local
#   context is enough; linear attention or a scan when nothing quadratic fits.
# - **Hybrids buy reach cheaply:** local layers plus one global layer solve *reverse* nearly as well
#   as the dense model, with fewer query–key pairs, and a flash global layer makes every layer
#   $O(L)$ in memory.
# - **One interface** (`make_attention`) turns all of this into a choice by name: the benchmark
#   and the hybrid above pick their mechanisms that way.
#
# ## Further reading
#
# - Dao et al., *FlashAttention* (2022), and Dao, *FlashAttention-2* (2023): the IO-aware tiling and its memory accounting.
# - Beltagy, Peters, Cohan, *Longformer* (2020); Child et al., *Sparse Transformers* (2019): local and strided patterns.
# - Gemma Team, *Gemma 2* and *Gemma 3* (2024–2025): interleaved local and global layers.
# - Katharopoulos et al., *Transformers are RNNs* (2020); Choromanski et al., *Performers* (2021); Gu and Dao, *Mamba* (2023).
# - `torch.nn.attention.sdpa_kernel` and `torch.cuda.memory` in the PyTorch docs: choosing kernels and measuring memory on a GPU.
# - Hugging Face transformers' `attn_implementation` switch and its `ALL_ATTENTION_FUNCTIONS`
#   registry: the production version of `make_attention`.
