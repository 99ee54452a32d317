"""Day 10, the capstone, as a library: how much memory each attention mechanism needs, how to
measure them side by side, and which one to choose.

What an estimate counts (the same thing course.bench.peak_memory measures): the peak number of
bytes of tensor storage that one call allocates and holds at the same time, *including its
result* and *excluding its inputs* q, k, v (they existed before the call). Parameters (the
Performer's projection) and masks built inside the call count; a kernel's private scratch
memory does not (the CPU tracker cannot see it).

Notation: N = batch * heads independent attention problems, L the sequence length, d the head
dimension (values have d too), s the bytes per element of `dtype`. Every formula below is
derived, line by line, from the course's library implementation named in KINDS (the day10
notebook does the derivations); the tests check them against measured peaks within 15%.

    dense         s (2 N L^2 + N L d)         scores and weights (L, L) each, plus the output
    dense_masked  3 s N L^2 + L^2 + L         a third (L, L) buffer (masked_fill, the zeroed
                                              rows) and the (L, L) bool mask built in the call
    strided       3 s N L^2 + L^2 + L         the same, under course.reference.sparse.strided_mask
    sliding       s N (4 L + ...) d + tiles   padded copies of q, k, v, the output, the band
    chunked                                   pattern, then one group of query blocks at a time
                                              (_blocked_bytes: O(L d + L w), never L^2)
    flash         s (N L d + N L + N b_q (2 d + 8) + 4 N b_q b_k)
    linear        s (4 N L d + 2 N L + N d^2 + N d)
    performer     s (4 N L m + N L d + m d) + 8 m d   (the projection is built in float64)
    scan          s (5 N' L n + 3 N' L)       N' = batch * heads * head_dim channels, state n

In float16 and bfloat16, linear, performer and scan compute in float32 (their inputs are cast up,
only the output is rounded back): their estimate is the float32 one plus what the casts add, the
half inputs' float32 copies for linear and performer (4 * 3 N L d) and the half output
(s N L d); for scan, u and delta made in the half dtype before their float32 copies (2 s N' L).
The other kinds stay in the input's dtype; flash keeps one query tile's statistics and
numerator in float32, which its formula (in s) leaves out: it measures up to 10% above it.

`benchmark_attention` measures many mechanisms at many lengths (failures recorded as rows),
`plot_benchmark` draws them on log-log axes and `choose_attention` is the decision guide
(course.explore.capstone's `MemoryExplorer` shows estimates against a budget with sliders).
"""

import math
import time

import torch
import torch.nn.functional as F

from course.bench import median_time, peak_memory, scaling_guides
from course.reference.mechanisms import make_attention

# kind -> (required keyword arguments, optional ones with defaults)
KINDS = {
    "dense": ((), {}),
    "dense_masked": ((), {}),
    "sliding": (("window",), {"causal": False}),
    "strided": (("stride", "local_window"), {}),
    "chunked": (("chunk_size", "overlap"), {}),
    "flash": ((), {"block_q": 64, "block_k": 64}),
    "linear": ((), {}),
    "performer": ((), {"num_features": 256}),
    "scan": ((), {"state": 16}),
}

# Kinds whose library implementation computes float16 and bfloat16 in float32.
COMPUTED_IN_FLOAT32 = ("linear", "performer", "scan")

# The sparse library's tile size, in score entries per group of blocks (course.reference.sparse).
GROUP_SCORES = 1 << 18


# ----------------------------------------------------------------------------- arguments


def _count(value, name: str, low: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} must be an int, got {type(value).__name__} ({value!r})")
    if value < low:
        raise ValueError(f"{name} must be >= {low}, got {name}={value}")
    return value


def _options(kind: str, kw: dict) -> dict:
    """The kind's keyword arguments, defaults filled in, checked."""
    if kind not in KINDS:
        raise ValueError(f"unknown kind {kind!r}; expected one of {sorted(KINDS)}")
    required, optional = KINDS[kind]
    unknown = set(kw) - set(required) - set(optional)
    if unknown:
        raise ValueError(
            f"kind {kind!r} takes no {sorted(unknown)}; it takes "
            f"{sorted((*required, *optional)) or 'no keyword arguments'}"
        )
    missing = [name for name in required if name not in kw]
    if missing:
        raise ValueError(f"kind {kind!r} needs {missing} (e.g. {missing[0]}=64)")
    options = {**optional, **kw}
    for name, value in options.items():
        if name == "causal":
            if not isinstance(value, bool):
                raise ValueError(f"causal must be True or False, got {value!r}")
        else:
            _count(value, name, low=0 if name == "overlap" else 1)
    return options


def element_size(dtype) -> int:
    """Bytes per element: 2 for float16/bfloat16, 4 for float32, 8 for float64."""
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise ValueError(f"dtype must be a floating-point torch.dtype, got {dtype!r}")
    return torch.empty((), dtype=dtype).element_size()


# ----------------------------------------------------------------------------- estimates


def _blocked_bytes(N, L, d, s, block, left, right):
    """course.reference.sparse._blocked_attention: padded copies of q, k, v and the output, the (block,
    span) band pattern in int64, then the work of one group of query blocks at a time."""
    nb = math.ceil(L / block)
    span = block + left + right  # keys each query block meets
    tail = nb * block - L  # padding that completes the last block
    base = s * (
        N * nb * block * d  # pad(q)  (..., nb * block, d)
        + 2 * N * (L + left + right + tail) * d  # pad(k), pad(v)
        + N * nb * block * d
    )  # the output (..., nb, block, dv)
    # the band's offsets (int64) and three bool tests; key and query positions likewise
    base += 11 * block * span + 11 * nb * span + 9 * nb * block
    group = min(nb, max(1, GROUP_SCORES // (block * span * N)))  # query blocks per group

    def work(g):  # scores (..., g, block, span); key or value tiles; the group's output
        # matmul copies the strided key (value) tiles when it cannot fold (N, g) into one dim
        return N * g * block * span, (N * g * span * d if N > 1 else 0), N * g * block * d

    scores, tiles, out = work(group)
    # a group holds its scores and their softmax at once (or the scores, their masked copy and
    # the bool masks of allowed keys)
    peak = 2 * scores + max(tiles + out, 2 * scores // s)
    groups = math.ceil(nb / group)
    if groups > 1:  # the next group's scores (and their scaled copy)
        last = work(nb - (groups - 1) * group) if groups == 2 else work(group)
        peak = max(peak, scores + 2 * last[0] + last[1])  # while the previous ones are alive
    return base + s * peak


def estimate_attention_memory(
    kind: str, batch: int, heads: int, seq_len: int, head_dim: int, dtype=torch.float32, **kw
) -> int:
    """Peak bytes one call of the course's `kind` of attention allocates, its output included and
    q, k, v excluded (what course.bench.peak_memory measures), for q, k, v of shape
    (batch, heads, seq_len, head_dim) in `dtype`.

    kind and its keyword arguments: "dense", "dense_masked" (a causal (L, L) bool mask built in
    the call), "sliding" (window, causal=False), "strided" (stride, local_window), "chunked"
    (chunk_size, overlap), "flash" (block_q=64, block_k=64), "linear", "performer"
    (num_features=256), "scan" (state=16: a selective scan over batch * heads * head_dim
    channels). Raises ValueError for an unknown kind, a missing or unknown keyword, or a bad value.
    """
    options = _options(kind, kw)
    B, H, L, d = (
        _count(batch, "batch"),
        _count(heads, "heads"),
        _count(seq_len, "seq_len"),
        _count(head_dim, "head_dim"),
    )
    s = element_size(dtype)
    N = B * H
    if kind == "dense":
        return s * (2 * N * L * L + N * L * d)
    if kind in ("dense_masked", "strided"):
        return 3 * s * N * L * L + L * L + L
    if kind == "sliding":
        window = options["window"]
        left, right = (window - 1, 0) if options["causal"] else (window // 2, window // 2)
        left, right = min(left, L - 1), min(right, L - 1)
        block = max(16, min(L, left + right + 1))
        return _blocked_bytes(N, L, d, s, block, left, right)
    if kind == "chunked":
        block, overlap = min(options["chunk_size"], L), min(options["overlap"], L)
        return _blocked_bytes(N, L, d, s, block, overlap, overlap)
    if kind == "flash":
        bq, bk = min(options["block_q"], L), min(options["block_k"], L)
        tiles = 4 if L > bq else 3  # a query block's new scores, s - m, p, and the previous p
        return s * (N * L * d + N * L + N * bq * (2 * d + 8) + tiles * N * bq * bk)
    if kind in COMPUTED_IN_FLOAT32 and s < 4:
        in_float32 = estimate_attention_memory(kind, B, H, L, d, torch.float32, **options)
        if kind == "scan":
            return in_float32 + 2 * s * N * d * L
        return in_float32 + 4 * 3 * N * L * d + s * N * L * d
    if kind == "linear":
        return s * (4 * N * L * d + 2 * N * L + N * d * d + N * d)
    if kind == "performer":
        m = options["num_features"]
        return s * (4 * N * L * m + N * L * d + m * d) + 8 * m * d
    if kind == "scan":
        n = options["state"]
        return s * (5 * N * d * L * n + 3 * N * d * L)
    raise AssertionError(kind)


# ----------------------------------------------------------------------------- the implementations

# Each kind of estimate but "scan": the course.reference.mechanisms.make_attention kind whose mechanism it
# describes, and the arguments that make it so. Their other keyword arguments have the same names.
LAYER_KIND = {
    "dense": ("dense", {}),
    "dense_masked": ("dense", {"causal": True}),
    "strided": ("strided", {}),
    "sliding": ("sliding_window", {}),
    "chunked": ("chunked", {}),
    "flash": ("flash", {}),
    "linear": ("linear", {}),
    "performer": ("performer", {}),
}


def attention_function(kind: str, **kw):
    """fn(q, k, v) -> out, for q, k, v of shape (batch, heads, L, d): the implementation the
    estimate of `kind` describes. That is the mechanism step (`attend`) of make_attention's layer
    of the LAYER_KIND, which works on any number and size of heads; "scan" is a selective scan
    run on attention-shaped inputs (make_attention's "mamba" is a whole block instead)."""
    options = _options(kind, kw)
    if kind == "scan":
        return _scan_attention(options["state"])
    layer_kind, fixed = LAYER_KIND[kind]
    layer = make_attention(
        layer_kind, d_model=1, num_heads=1, **fixed, **options
    )  # attend never projects
    return layer.attend


def _scan_attention(state: int):
    """A selective scan (course.reference.mamba_scan) run on attention-shaped inputs: every (batch, head, feature)
    is a channel, q drives the step size, k the input matrix B, v the input u, and C is fixed.
    Not attention, but the state-space layer that replaces it, at the same sizes."""
    from course.reference.mamba_scan import selective_scan

    def scan(q, k, v):
        B, H, L, d = v.shape
        u = v.permute(0, 1, 3, 2).reshape(B, H * d, L)  # (B, H d, L) channels
        delta = F.softplus(q.permute(0, 1, 3, 2).reshape(B, H * d, L))
        A = -torch.arange(1, state + 1, dtype=v.dtype, device=v.device).expand(H * d, state)
        Bmat = k[:, 0, :, :state].transpose(1, 2) if d >= state else k.new_ones(B, state, L)
        C = torch.ones(B, state, L, dtype=v.dtype, device=v.device)
        y = selective_scan(u, delta, A, Bmat, C)  # (B, H d, L)
        return y.reshape(B, H, d, L).transpose(2, 3)

    return scan


def make_qkv(batch, heads, seq_len, head_dim, dtype=torch.float32, device="cpu", seed=0):
    g = torch.Generator().manual_seed(seed)
    return tuple(
        torch.randn(batch, heads, seq_len, head_dim, generator=g).to(dtype=dtype, device=device)
        for _ in range(3)
    )


def measure_attention_memory(
    kind, batch, heads, seq_len, head_dim, dtype=torch.float32, device="cpu", **kw
) -> int:
    """The measured peak (course.bench.peak_memory) of one call of `kind`."""
    fn = attention_function(kind, **kw)
    q, k, v = make_qkv(batch, heads, seq_len, head_dim, dtype, device)
    with torch.no_grad():
        return peak_memory(fn, q, k, v)


# ----------------------------------------------------------------------------- benchmarking

STATUSES = ("ok", "out_of_memory", "too_slow", "error", "skipped")
FIELDS = ("name", "seq_len", "status", "time_s", "peak_bytes", "rel_error", "message")


def exact_attention64(q, k, v) -> torch.Tensor:
    """softmax(q kᵀ / sqrt(d)) v computed in float64 on the CPU: the quality reference."""
    q, k, v = (t.detach().double().cpu() for t in (q, k, v))
    weights = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1]), dim=-1)
    return weights @ v


def _is_out_of_memory(exc: BaseException) -> bool:
    return isinstance(exc, (MemoryError, getattr(torch, "OutOfMemoryError", MemoryError))) or (
        isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()
    )


def _first(out):
    return out[0] if isinstance(out, (tuple, list)) else out


def benchmark_attention(
    fns: dict,
    seq_lens,
    *,
    batch: int = 1,
    heads: int = 2,
    head_dim: int = 32,
    dtype=torch.float32,
    device="cpu",
    repeats: int = 3,
    time_budget_s: float = 2.0,
    seed: int = 0,
    reference: bool = True,
) -> list:
    """Time, peak memory and quality of every fn(q, k, v) -> out (or (out, ...)) at every length.

    For each length (ascending) and each mechanism: one untimed warm-up call (its output gives
    the quality), `repeats` timed calls (their median is time_s), one call under
    course.bench.peak_memory. Returns a list of dicts with FIELDS: name, seq_len, status
    (one of STATUSES), time_s, peak_bytes, rel_error (||out - ref|| / ||ref|| against exact
    float64 attention), message. A failure is recorded, not raised: "out_of_memory", "too_slow"
    (the warm-up took longer than time_budget_s), "error"; the longer lengths of a mechanism
    that failed are recorded as "skipped".
    """
    if not isinstance(fns, dict) or not fns or not all(callable(f) for f in fns.values()):
        raise ValueError("fns must be a non-empty dict of name -> fn(q, k, v)")
    lengths = sorted({_count(L, "seq_len") for L in seq_lens})
    if not lengths:
        raise ValueError("seq_lens must hold at least one length")
    _count(repeats, "repeats")
    if not time_budget_s > 0:
        raise ValueError(f"time_budget_s must be > 0, got {time_budget_s}")
    device = torch.device(device)
    failed = {}
    rows = []
    for L in lengths:
        q, k, v = make_qkv(batch, heads, L, head_dim, dtype, device, seed)
        ref = None
        for name, fn in fns.items():
            row = dict.fromkeys(FIELDS)
            row.update(name=name, seq_len=L)
            rows.append(row)
            if name in failed:
                row.update(status="skipped", message=f"{failed[name]} at a shorter length")
                continue
            try:
                with torch.no_grad():
                    start = time.perf_counter()
                    out = _first(fn(q, k, v))  # warm-up
                    _sync(device)
                    if time.perf_counter() - start > time_budget_s:
                        row.update(
                            status="too_slow",
                            message=f"one call took more than {time_budget_s:g} s",
                        )
                    else:
                        row["time_s"] = median_time(fn, q, k, v, repeats=repeats, warmup=0)
                        row["peak_bytes"] = peak_memory(fn, q, k, v)
                        if reference:
                            ref = exact_attention64(q, k, v) if ref is None else ref
                            err = (out.detach().double().cpu() - ref).norm() / ref.norm()
                            row["rel_error"] = float(err)
                        row["status"] = "ok"
            except Exception as exc:  # recorded, not raised: the table shows what broke
                row.update(
                    status="out_of_memory" if _is_out_of_memory(exc) else "error",
                    message=f"{type(exc).__name__}: {exc}"[:200],
                )
            if row["status"] != "ok":
                failed[name] = f"{row['status']} at L = {L}"
            out = None
            if device.type == "cuda":
                torch.cuda.empty_cache()
    return rows


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def format_table(rows) -> str:
    """The rows of benchmark_attention as a Markdown table."""
    lines = [
        "| mechanism | L | status | time (ms) | peak memory (MiB) | rel. error |",
        "|---|---:|---|---:|---:|---:|",
    ]
    for r in rows:
        t = "" if r.get("time_s") is None else f"{1e3 * r['time_s']:.2f}"
        m = "" if r.get("peak_bytes") is None else f"{r['peak_bytes'] / 2**20:.2f}"
        e = "" if r.get("rel_error") is None else f"{r['rel_error']:.1e}"
        lines.append(f"| {r['name']} | {r['seq_len']} | {r['status']} | {t} | {m} | {e} |")
    return "\n".join(lines)


def plot_benchmark(rows, title: str = ""):
    """A matplotlib Figure: time and peak memory against L on log-log axes, one line per
    mechanism, with O(L) and O(L^2) guides; failures are left out of the lines."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(11, 4), dpi=90)
    axes = figure.subplots(1, 2)
    names = list(dict.fromkeys(r["name"] for r in rows))
    for ax, field, scale, label in (
        (axes[0], "time_s", 1e3, "time (ms)"),
        (axes[1], "peak_bytes", 2**-20, "peak memory (MiB)"),
    ):
        anchor = []
        for name in names:
            ok = [r for r in rows if r["name"] == name and r["status"] == "ok" and r[field]]
            if ok:
                xs, ys = [r["seq_len"] for r in ok], [r[field] * scale for r in ok]
                ax.loglog(xs, ys, "o-", label=name)
                anchor.append((xs[0], ys[0]))
        lengths = sorted({r["seq_len"] for r in rows})
        if anchor and len(lengths) > 1:
            x0 = lengths[0]
            y0 = math.exp(sum(math.log(y * x0 / x) for x, y in anchor) / len(anchor))
            scaling_guides(ax, lengths, quadratic_from=y0, linear_from=y0, lw=1)
        ax.set(xlabel="sequence length L", ylabel=label, title=f"{label} {title}".strip())
        ax.set_xticks(lengths, [str(L) for L in lengths])
        ax.minorticks_off()
        ax.legend(fontsize=7, ncols=2)
    figure.set_layout_engine("constrained")
    return figure


# ----------------------------------------------------------------------------- choosing

# From the day10 measurements (course.bench on a 2-core CPU, float32, 2 heads, d = 32): on
# the CPU dense attention is the fastest exact mechanism at every length measured (the tiled one
# in PyTorch is 1.3-3x slower: Python loops over tiles), so there memory decides between them.
# Both are O(L^2) in time: at L = 4096 one layer of 2 heads already takes ~0.3 s, so past 8k
# tokens exact attention costs seconds per layer on a CPU and an O(L) mechanism wins. On a GPU a
# fused flash kernel is faster than dense attention at every length and needs O(L) memory.
EXACT_MAX_LEN_CPU = 8192


def choose_attention(
    seq_len: int,
    needs_global_context: bool,
    memory_budget_bytes: int,
    has_gpu: bool,
    *,
    batch: int = 1,
    heads: int = 8,
    head_dim: int = 64,
    dtype=torch.float32,
    window: int = 256,
) -> str:
    """A kind name for estimate_attention_memory: the first of these candidates whose estimated
    peak fits memory_budget_bytes.

    needs_global_context, or seq_len <= window (a window that covers everything is exact):
        GPU: "flash", "linear"
        CPU: "dense", "flash" (both only when seq_len <= EXACT_MAX_LEN_CPU), "linear"
    local context is enough (and seq_len > window): "sliding" (with `window`), "linear".
    Raises ValueError for bad arguments, or when no candidate fits the budget.
    """
    seq_len = _count(seq_len, "seq_len")
    if not isinstance(needs_global_context, bool) or not isinstance(has_gpu, bool):
        raise ValueError("needs_global_context and has_gpu must be True or False")
    if (
        isinstance(memory_budget_bytes, bool)
        or not isinstance(memory_budget_bytes, (int, float))
        or not memory_budget_bytes > 0
    ):
        raise ValueError(
            f"memory_budget_bytes must be a positive number, got {memory_budget_bytes!r}"
        )
    window = _count(window, "window")
    if needs_global_context or seq_len <= window:
        if has_gpu:
            candidates = ["flash", "linear"]
        else:
            exact = ["dense", "flash"] if seq_len <= EXACT_MAX_LEN_CPU else []
            candidates = exact + ["linear"]
    else:
        candidates = ["sliding", "linear"]
    sizes = {}
    for kind in candidates:
        kw = {"window": window} if kind == "sliding" else {}
        sizes[kind] = estimate_attention_memory(kind, batch, heads, seq_len, head_dim, dtype, **kw)
        if sizes[kind] <= memory_budget_bytes:
            return kind
    smallest = min(sizes, key=sizes.get)
    raise ValueError(
        f"no attention fits {memory_budget_bytes} bytes at L = {seq_len}: the "
        f"smallest candidate, {smallest}, needs about {sizes[smallest]} bytes"
    )
