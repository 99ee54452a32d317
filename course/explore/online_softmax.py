"""A step-through explorer of the online softmax and of FlashAttention's tile schedule.

Left: one row of scores x arrives block by block. After step t the blocks 0..t-1 have been
seen; the picture shows them, the running max m_t (a line), the running denominator
l_t = sum exp(x - m_t) over what was seen, and the rescale factor exp(m_{t-1} - m_t) that the
step applied to the old sum (1 when the max did not move, below 1 when it rose).

Right: the tiles of attention for the same length L and block size. Query tile `query_block`
walks along its key tiles; the tiles already visited, the one being computed, and (causal) the
tiles above the diagonal that are skipped, never computed.

It computes the statistics with whatever `online_softmax_stats` it is given, so a notebook can
feed it the student's own (the course's library version otherwise): step t calls it on the
first t blocks. PNG bytes in an ipywidgets.Image, like the other explorers.
"""

import math

import ipywidgets as widgets
import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import ListedColormap
from matplotlib.figure import Figure

from course.explore.base import Explorer, figure_png, message_png, slider
from course.reference import online_softmax as flash

DPI = 80
# tile states: 0 not yet visited, 1 visited, 2 computing now, 3 skipped (above the diagonal)
TILE_COLORS = ListedColormap(["#f3f3f3", "#2b5c8a", "#f28e2b", "#c9c9c9"])


class OnlineSoftmaxExplorer(Explorer):
    """Step through the online softmax of one row and the tile schedule of tiled attention.

    Controls (public ipywidgets): `length` (N = L), `block_size`, `step` (blocks seen so far,
    0..number of blocks), `seed` (the random row), `query_block` (the query tile on the right)
    and `causal` (Checkbox). `render()` returns the PNG; `image` shows it; `widget` is the layout.
    `state()` gives the numbers the picture shows, `stats()` the same as text.
    """

    def __init__(self, online_softmax_stats=None, *, length: int = 40, block_size: int = 8):
        self.online_softmax_stats = online_softmax_stats or flash.online_softmax_stats
        self.length = slider("length L", length, 4, 128)
        self.block_size = slider("block size", block_size, 1, 64)
        self.step = slider("step", 1, 0, 64)
        self.seed = slider("seed", 0, 0, 99)
        self.query_block = slider("query tile", 0, 0, 64)
        self.causal = widgets.Checkbox(value=True, description="causal")
        self.error = None
        self._show(
            [self.length, self.block_size, self.step],
            [self.seed, self.query_block, self.causal],
        )

    # ------------------------------------------------------------------------- the numbers

    def blocks(self) -> int:
        return math.ceil(self.length.value / self.block_size.value)

    def scores(self) -> torch.Tensor:
        """The row x (N,) float64: noise on a rising trend, so the max moves often."""
        g = torch.Generator().manual_seed(self.seed.value)
        N = self.length.value
        return torch.randn(N, generator=g, dtype=torch.float64) * 1.5 + torch.linspace(
            0, 3, N, dtype=torch.float64
        )

    def state(self) -> dict:
        """m, l after step t and after step t - 1, and the rescale factor exp(m_{t-1} - m_t)."""
        x, b, t = self.scores(), self.block_size.value, self.step.value

        def stats(blocks):
            if blocks == 0:
                return float("-inf"), 0.0
            m, s = self.online_softmax_stats(x[: blocks * b].unsqueeze(0), b)
            return float(m.reshape(-1)[0]), float(s.reshape(-1)[0])

        (m_old, l_old), (m, l) = stats(max(t - 1, 0)), stats(t)
        rescale = 1.0 if t <= 1 else math.exp(m_old - m)
        return {"m": m, "l": l, "m_old": m_old, "l_old": l_old, "rescale": rescale}

    def stats(self) -> dict:
        state = self.state()
        return {
            "blocks seen": f"{self.step.value} of {self.blocks()}",
            "running max m": f"{state['m']:.3f}",
            "running sum l": f"{state['l']:.3f}",
            "rescale exp(m_old - m)": f"{state['rescale']:.3f}",
        }

    def tiles(self) -> np.ndarray:
        """(nb, nb) tile states for query tile `query_block` at key step `step` (see TILE_COLORS)."""
        L, b, nb = self.length.value, self.block_size.value, self.blocks()
        grid = np.zeros((nb, nb), dtype=np.int64)
        for qi in range(nb):
            q_end = min((qi + 1) * b, L)
            stop = (
                math.ceil(q_end / b) if self.causal.value else nb
            )  # key tiles this query tile visits
            grid[qi, stop:] = 3
        row = self.query_block.value
        t = self.step.value
        visits = [j for j in range(nb) if grid[row, j] != 3]
        grid[row, visits[: max(t - 1, 0)]] = 1
        if 0 < t <= len(visits):
            grid[row, visits[t - 1]] = 2
        elif t > len(visits):
            grid[row, visits] = 1
        return grid

    # ------------------------------------------------------------------------- drawing

    def fit_controls(self) -> None:
        nb = self.blocks()
        self.step.max = nb
        self.query_block.max = nb - 1

    def render(self) -> bytes:
        """Draw the current step and return the picture as PNG bytes."""
        try:
            state = self.state()
            self.error = None
        except Exception as exc:  # noqa: BLE001 (shown in the picture: e.g. an exercise not done)
            self.error = f"{type(exc).__name__}: {exc}"
            return message_png(
                f"online_softmax_stats failed:\n{self.error}",
                (8, 1.2),
                DPI,
                fontsize=9,
                color="tab:red",
                wrap=True,
            )
        figure = Figure(figsize=(11, 3.6), dpi=DPI)
        FigureCanvasAgg(figure)
        left, right = figure.subplots(1, 2, gridspec_kw={"width_ratios": [2.2, 1]})
        self._draw_row(left, state)
        self._draw_tiles(right)
        figure.set_layout_engine("constrained")
        return figure_png(figure)

    def _draw_row(self, ax, state) -> None:
        x = self.scores().numpy()
        b, t, N = self.block_size.value, self.step.value, self.length.value
        seen = min(t * b, N)
        colors = ["#2b5c8a"] * seen + ["#c9c9c9"] * (N - seen)
        if t >= 1:
            colors[(t - 1) * b : seen] = ["#f28e2b"] * (seen - (t - 1) * b)
        ax.bar(np.arange(N), x - x.min() + 0.2, bottom=x.min() - 0.2, color=colors, width=0.85)
        for edge in range(b, N, b):
            ax.axvline(edge - 0.5, color="#999999", lw=0.6, ls=":")
        if t >= 1:
            ax.axhline(
                state["m"], color="tab:red", lw=1.2, label=f"running max m = {state['m']:.3f}"
            )
            if t >= 2 and state["m_old"] != state["m"]:
                ax.axhline(
                    state["m_old"],
                    color="tab:red",
                    lw=0.8,
                    ls="--",
                    label=f"old max = {state['m_old']:.3f}",
                )
            ax.legend(loc="upper left", fontsize=8)
        factor = state["rescale"]
        ax.set_title(
            f"step {t}/{self.blocks()}: l = {state['l']:.4f} (was {state['l_old']:.4f}), "
            f"rescale exp(m_old - m_new) = {factor:.4f}",
            fontsize=10,
        )
        ax.set_xlabel(f"position j (blocks of {b}; orange = arriving now)", fontsize=8)
        ax.set_ylabel("score x_j", fontsize=8)
        ax.tick_params(labelsize=7)

    def _draw_tiles(self, ax) -> None:
        grid = self.tiles()
        ax.imshow(grid, cmap=TILE_COLORS, vmin=0, vmax=3, interpolation="nearest")
        nb = grid.shape[0]
        ax.set_xticks(np.arange(-0.5, nb, 1), minor=True)
        ax.set_yticks(np.arange(-0.5, nb, 1), minor=True)
        ax.grid(which="minor", color="white", lw=1)
        ax.tick_params(which="minor", length=0)
        ax.tick_params(labelsize=7)
        skipped = int((grid == 3).sum())
        ax.set_title(
            f"tiles ({'causal' if self.causal.value else 'full'}): {skipped} of {nb * nb} skipped",
            fontsize=10,
        )
        ax.set_xlabel("key tile", fontsize=8)
        ax.set_ylabel("query tile", fontsize=8)
