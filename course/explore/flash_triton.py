"""The tile schedule of FlashAttention: which (query tile, key tile) pairs a program visits.

One Triton program owns one query tile (BLOCK_M queries of one batch*head) and walks the key
tiles from left to right. Without a mask it visits them all; with the course's bottom-right
causal mask (query i at key position Lk - Lq + i) it stops after the tile that holds its last
query's position, so the tiles above the diagonal are never loaded. Tiles cut by the diagonal,
and the last, partial tiles of ragged lengths, need a mask inside the tile; the others run
without one.

    TileExplorer()                                          # the schedule alone
    TileExplorer(flash_attention=flash_attention_triton)    # plus the tiles your kernel loaded

With a kernel, a third panel shows which (query tile, key tile) pairs its programs really loaded
(recorded load by load in Triton's interpreter), against the schedule: a kernel that loops over
every key tile and only masks the future ones shows the tiles above the diagonal in crimson.

Like the other explorers: PNG bytes from `render()` in an ipywidgets.Image, controls as public
attributes (`lq`, `lk`, `block_m`, `block_n`, `causal`, `program`), `widget` for the layout,
`stats()` for the share of tiles visited.
"""

import contextlib
import math

import ipywidgets as widgets
import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import ListedColormap
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

import course
from course.explore.base import Explorer, figure_png, message_png, slider

SKIPPED, FULL, MASKED = 0, 1, 2
CMAP = ListedColormap(["#f3f3f3", "#2b5c8a", "#e08a2c"])  # skipped, whole tile, masked inside
# your kernel's loads against the schedule: neither, as scheduled, loaded but skippable, missing
NEITHER, AS_SCHEDULED, EXTRA, MISSING = 0, 1, 2, 3
LOADS_CMAP = ListedColormap(["#f3f3f3", "#2b5c8a", "#b8336a", "#f7d154"])
DPI = 80
BLOCKS = (16, 32, 64)


def _tile_axes(axes, grid: np.ndarray, ylabel: str) -> None:
    """Label a (query tile, key tile) grid's axes, one tick per tile."""
    axes.set(xlabel="key tile", ylabel=ylabel)
    axes.set_xticks(range(grid.shape[1]))
    axes.set_yticks(range(grid.shape[0]))
    axes.tick_params(labelsize=7)


def tile_schedule(lq: int, lk: int, block_m: int, block_n: int, causal: bool = False) -> np.ndarray:
    """(ceil(lq / block_m), ceil(lk / block_n)) int array: SKIPPED, FULL or MASKED per tile pair.

    Row m is the program of query tile m; it visits key tiles 0 .. hi - 1 with
    hi = min(lk, lk - lq + (m + 1) * block_m) (all of them without causal). A visited tile is
    MASKED when some of its entries are hidden: keys past lk, or (causal) keys after a query's
    position lk - lq + i. Rows of queries past lq (the last, partial query tile) do not count.
    """
    for name, value in (("lq", lq), ("lk", lk), ("block_m", block_m), ("block_n", block_n)):
        if not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    n_m, n_n = math.ceil(lq / block_m), math.ceil(lk / block_n)
    grid = np.full((n_m, n_n), SKIPPED, dtype=np.int8)
    for m in range(n_m):
        rows = np.arange(m * block_m, min((m + 1) * block_m, lq))
        hi = min(lk, lk - lq + (m + 1) * block_m) if causal else lk
        for n in range(n_n):
            start = n * block_n
            if start >= hi:
                continue  # causal: every query of this tile comes before every key of it
            keys = np.arange(start, start + block_n)
            seen = keys[None, :] < lk
            if causal:
                seen = seen & (keys[None, :] <= lk - lq + rows[:, None])
            grid[m, n] = FULL if seen.all() else MASKED
    return grid


def visited_fraction(schedule: np.ndarray) -> float:
    """The share of tile pairs a kernel loads (1.0 without a mask; about half with causal)."""
    return float((schedule != SKIPPED).mean()) if schedule.size else 0.0


def _rows_read(addresses: np.ndarray, t: torch.Tensor) -> np.ndarray:
    """The rows of t (contiguous, (1, 1, L, D)) that these byte addresses fall in."""
    start, row_bytes = t.data_ptr(), t.shape[-1] * t.element_size()
    inside = (addresses >= start) & (addresses < start + t.numel() * t.element_size())
    return np.unique((addresses[inside] - start) // row_bytes)


@contextlib.contextmanager
def recorded_loads(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor):
    """Record which rows of q and of k or v each Triton program loads, in the interpreter.

    Yields {program id: (query rows, key rows)}, filled while the block runs: every active lane of
    every tl.load is an address, and the interpreter runs one program at a time, so the builder's
    grid index says whose load it is.
    """
    from triton.runtime import interpreter

    builder = interpreter.InterpreterBuilder
    load = builder.create_masked_load
    rows = {}

    def recording_load(self, ptrs, mask, *rest):
        addresses = ptrs.data[np.broadcast_to(mask.data, ptrs.data.shape)]
        query_rows, key_rows = rows.setdefault(self.grid_idx, (set(), set()))
        query_rows.update(_rows_read(addresses, q).tolist())
        key_rows.update(_rows_read(addresses, k).tolist() + _rows_read(addresses, v).tolist())
        return load(self, ptrs, mask, *rest)

    builder.create_masked_load = recording_load
    try:
        yield rows
    finally:
        builder.create_masked_load = load


def tiles_loaded(rows: dict, lq: int, lk: int, block_m: int, block_n: int) -> np.ndarray:
    """(ceil(lq / block_m), ceil(lk / block_n)) bool: a tile pair is loaded when some program
    loaded both a query row and a key row of it (the kernel's own tile sizes may differ)."""
    pairs = np.zeros((lq, lk), dtype=bool)  # (query, key): loaded by the same program
    for query_rows, key_rows in rows.values():
        pairs[np.ix_(sorted(query_rows), sorted(key_rows))] = True
    n_m, n_n = math.ceil(lq / block_m), math.ceil(lk / block_n)
    padded = np.zeros((n_m * block_m, n_n * block_n), dtype=bool)
    padded[:lq, :lk] = pairs
    return padded.reshape(n_m, block_m, n_n, block_n).any(axis=(1, 3))


def compare_loads(schedule: np.ndarray, loaded: np.ndarray) -> np.ndarray:
    """Per tile pair: NEITHER, AS_SCHEDULED, EXTRA (loaded, the schedule skips it) or MISSING."""
    visits = schedule != SKIPPED
    return np.select(
        [visits & loaded, loaded & ~visits, visits & ~loaded], [AS_SCHEDULED, EXTRA, MISSING]
    ).astype(np.int8)


class TileExplorer(Explorer):
    """Pick lengths, tile sizes and causal; see which tiles each program visits.

    Left: the token-level mask (lit = may attend) with the tile grid over it. Right: one square
    per (query tile, key tile): blue = loaded whole, orange = loaded and masked inside (the
    diagonal or a ragged edge), light = skipped. The row of `program` (a query tile) is outlined:
    its loop runs left to right over the coloured squares of that row.

    With `flash_attention` (your flash_attention_triton), the title also says how far its
    logsumexp is from a float64 reference on random inputs of these lengths (head_dim 16, at most
    64: it runs through the interpreter on a CPU), and a third panel compares the tiles it loaded
    with the schedule at those lengths: blue = loaded as scheduled, crimson = loaded although the
    schedule skips it, yellow = scheduled but never loaded. `loaded` holds the tiles it loaded
    (None without a kernel, or with compiled GPU kernels, whose loads cannot be recorded).
    """

    def __init__(self, *, lq: int = 48, lk: int = 64, causal: bool = True, flash_attention=None):
        self.flash_attention = flash_attention
        self.lq = slider("Lq", lq, 1, 256)
        self.lk = slider("Lk", lk, 1, 256)
        self.block_m = widgets.Dropdown(
            options=BLOCKS, value=16, description="BLOCK_M", layout=widgets.Layout(width="180px")
        )
        self.block_n = widgets.Dropdown(
            options=BLOCKS, value=16, description="BLOCK_N", layout=widgets.Layout(width="180px")
        )
        self.causal = widgets.Checkbox(value=causal, description="causal (bottom-right)")
        self.program = slider("program (query tile)", 0, 0, 15)
        self.error = None
        self.check = None  # the last check of the student's kernel, a line of text
        self.loaded = None  # (query tile, key tile) bool: what the student's kernel loaded
        self.loaded_lengths = None  # the (lq, lk) it ran at
        self._show([self.lq, self.lk, self.causal], [self.block_m, self.block_n, self.program])

    def schedule(self) -> np.ndarray:
        return tile_schedule(
            self.lq.value, self.lk.value, self.block_m.value, self.block_n.value, self.causal.value
        )

    def stats(self) -> dict:
        if self.error:
            return {"error": self.error}
        grid = self.schedule()
        stats = {
            "tiles": f"{grid.shape[0]} x {grid.shape[1]}",
            "visited": f"{visited_fraction(grid):.0%}",
            "masked inside": f"{(grid == MASKED).mean():.0%}",
            "skipped (sparsity)": f"{(grid == SKIPPED).mean():.0%}",
        }
        if self.loaded is not None:
            stats["loaded by your kernel"] = f"{self.loaded.mean():.0%}"
        return stats

    def _check_kernel(self) -> str:
        """Run the student's kernel at these lengths: record its loads, check its lse."""
        self.loaded = self.loaded_lengths = None
        if self.flash_attention is None:
            return ""
        lq, lk = min(self.lq.value, 64), min(self.lk.value, 64)  # the interpreter is slow
        g = torch.Generator().manual_seed(0)
        q, k, v = (torch.randn(1, 1, n, 16, generator=g) for n in (lq, lk, lk))
        from course.reference.flash_triton import interpreted

        device = course.get_device()  # compiled kernels on a GPU need GPU tensors
        record = interpreted() and device.type == "cpu"  # the interpreter sees every load
        try:
            with recorded_loads(q, k, v) if record else contextlib.nullcontext() as rows:
                out, lse = self.flash_attention(
                    q.to(device), k.to(device), v.to(device), causal=self.causal.value
                )
            lse = lse.detach().cpu()
        except Exception as exc:  # noqa: BLE001 (shown, not raised: the exercise may not be done)
            return f"your kernel raised {type(exc).__name__}: {exc}"
        if record:
            self.loaded = tiles_loaded(rows, lq, lk, self.block_m.value, self.block_n.value)
            self.loaded_lengths = lq, lk
        s = (q.double() @ k.double().transpose(-1, -2)) / 4.0
        if self.causal.value:
            i, j = torch.arange(lq)[:, None], torch.arange(lk)[None, :]
            s = s.masked_fill(j > lk - lq + i, float("-inf"))
        ref = torch.logsumexp(s, -1)
        finite = torch.isfinite(ref)
        error = (lse.double() - ref)[finite].abs().max().item() if finite.any() else 0.0
        return f"your kernel at Lq={lq}, Lk={lk}: max |lse - reference| = {error:.1e}"

    def render(self) -> bytes:
        """Draw the mask, the tile schedule and (with a kernel) its loads; return PNG bytes."""
        try:
            grid = self.schedule()
            self.error = None
        except Exception as exc:  # noqa: BLE001
            self.error = f"{type(exc).__name__}: {exc}"
            return message_png(self.error, (6, 1.2), DPI, color="tab:red", fontsize=9)
        lq, lk, bm, bn = self.lq.value, self.lk.value, self.block_m.value, self.block_n.value
        program = min(self.program.value, grid.shape[0] - 1)
        self.check = self._check_kernel()
        panels = 2 if self.loaded is None else 3
        figure = Figure(figsize=(4.75 * panels, 4.4), dpi=DPI)
        FigureCanvasAgg(figure)
        left, right, *loads = figure.subplots(1, panels)

        i, j = np.arange(lq)[:, None], np.arange(lk)[None, :]
        mask = (j <= lk - lq + i) if self.causal.value else np.ones((lq, lk), bool)
        left.imshow(
            mask,
            cmap=ListedColormap(["#f3f3f3", "#8fb3d9"]),
            vmin=0,
            vmax=1,
            interpolation="nearest",
            aspect="auto",
            extent=(0, lk, lq, 0),
        )
        for x in range(0, lk + 1, bn):
            left.axvline(x, color="0.35", lw=0.6)
        for y in range(0, lq + 1, bm):
            left.axhline(y, color="0.35", lw=0.6)
        left.add_patch(
            Rectangle(
                (0, program * bm),
                lk,
                min(bm, lq - program * bm),
                fill=False,
                edgecolor="tab:red",
                lw=2,
            )
        )
        left.set(
            xlim=(0, lk),
            ylim=(lq, 0),
            xlabel="key j",
            ylabel="query i",
            title="token mask (lit = may attend), tiles",
        )

        right.imshow(grid, cmap=CMAP, vmin=0, vmax=2, interpolation="nearest", aspect="auto")
        right.add_patch(
            Rectangle(
                (-0.5, program - 0.5), grid.shape[1], 1, fill=False, edgecolor="tab:red", lw=2
            )
        )
        visits = int((grid[program] != SKIPPED).sum())
        _tile_axes(right, grid, "query tile (program)")
        right.set_title(f"program {program} visits {visits} of {grid.shape[1]} key tiles")
        handles = [Rectangle((0, 0), 1, 1, color=CMAP(c)) for c in (FULL, MASKED, SKIPPED)]
        right.legend(
            handles,
            ["whole tile", "masked inside", "skipped"],
            fontsize=7,
            loc="upper right",
            framealpha=0.9,
        )
        if loads:
            self._draw_loads(loads[0])

        line = (
            f"Lq = {lq}, Lk = {lk}, {'causal' if self.causal.value else 'no mask'}: "
            f"{(grid != SKIPPED).sum()} of {grid.size} tile pairs visited "
            f"({visited_fraction(grid):.0%}), {(grid == MASKED).sum()} of them masked"
        )
        figure.suptitle(line + (f"\n{self.check}" if self.check else ""), fontsize=10)
        figure.set_layout_engine("constrained")
        return figure_png(figure)

    def _draw_loads(self, axes) -> None:
        """The tiles the student's kernel loaded, against the schedule at the lengths it ran at."""
        lq, lk = self.loaded_lengths
        bm, bn = self.block_m.value, self.block_n.value
        schedule = tile_schedule(lq, lk, bm, bn, self.causal.value)
        compared = compare_loads(schedule, self.loaded)
        axes.imshow(
            compared, cmap=LOADS_CMAP, vmin=0, vmax=3, interpolation="nearest", aspect="auto"
        )
        extra, missing = int((compared == EXTRA).sum()), int((compared == MISSING).sum())
        _tile_axes(axes, compared, "query tile")
        axes.set_title(f"your kernel (Lq={lq}, Lk={lk}): {extra} extra, {missing} missing")
        labels = {
            AS_SCHEDULED: "loaded, as scheduled",
            EXTRA: "loaded, schedule skips",
            MISSING: "scheduled, not loaded",
        }
        shown = [kind for kind in labels if (compared == kind).any()]  # only what is drawn
        axes.legend(
            [Rectangle((0, 0), 1, 1, color=LOADS_CMAP(kind)) for kind in shown],
            [labels[kind] for kind in shown],
            fontsize=7,
            loc="upper right",
            framealpha=0.9,
        )
