"""Day 10's explorer: the estimated peak memory of every attention mechanism at the sizes the
sliders set, against a memory budget, with the mechanism a chooser picks.

    MemoryExplorer(estimate_attention_memory, choose_attention)

Both functions are the student's (course.reference.capstone has the library versions). Like the
other explorers it draws PNG bytes into an ipywidgets.Image, so it works headless too.
"""

import math

import ipywidgets as widgets
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from course.explore.base import Explorer, figure_png

# The mechanisms compared, with their size arguments: None is filled from the window slider.
COMPARED_KINDS = [
    ("dense", {}),
    ("dense_masked", {}),
    ("sliding", {"window": None}),
    ("chunked", {"chunk_size": None, "overlap": None}),
    ("flash", {}),
    ("linear", {}),
    ("performer", {}),
    ("scan", {}),
]


class MemoryExplorer(Explorer):
    """Estimated peak memory of every kind at the sizes the sliders set, against a budget, with
    the mechanism a chooser picks. estimate(kind, batch, heads, L, d, dtype, **kw) and
    choose(seq_len, needs_global_context, memory_budget_bytes, has_gpu, ...) are the student's.

    Controls (public ipywidgets): log2_len, heads, head_dim, window, log2_budget, needs_global,
    has_gpu. The picture is `image` (PNG bytes from `render()`); show `widget` in a notebook.
    `stats()` gives each kind's estimate in MiB and the choice.
    """

    def __init__(
        self,
        estimate,
        choose=None,
        *,
        seq_len=4096,
        heads=8,
        head_dim=64,
        window=256,
        budget_bytes=2**30,
    ):
        self.estimate, self.choose = estimate, choose
        self.log2_len = widgets.IntSlider(
            value=int(math.log2(seq_len)), min=6, max=17, description="log2 L"
        )
        self.heads = widgets.IntSlider(value=heads, min=1, max=32, description="heads")
        self.head_dim = widgets.Dropdown(
            options=[16, 32, 64, 128], value=head_dim, description="head_dim"
        )
        self.window = widgets.IntSlider(
            value=window, min=16, max=2048, step=16, description="window"
        )
        self.log2_budget = widgets.IntSlider(
            value=int(math.log2(budget_bytes)), min=16, max=40, description="log2 budget"
        )
        self.needs_global = widgets.Checkbox(value=True, description="needs global context")
        self.has_gpu = widgets.Checkbox(value=False, description="has GPU")
        self._show(
            [self.log2_len, self.heads, self.head_dim, self.window],
            [self.log2_budget, self.needs_global, self.has_gpu],
        )

    def sizes(self) -> dict:
        """kind -> estimated bytes (or the error message) at the current settings."""
        L, window = 2**self.log2_len.value, self.window.value
        out = {}
        for kind, kw in COMPARED_KINDS:
            kw = {
                k: (
                    window
                    if k in ("window", "chunk_size")
                    else window // 4
                    if k == "overlap"
                    else v
                )
                for k, v in kw.items()
            }
            try:
                out[kind] = self.estimate(
                    kind, 1, self.heads.value, L, self.head_dim.value, torch.float32, **kw
                )
            except Exception as exc:  # shown in the picture, not raised
                out[kind] = f"{type(exc).__name__}: {exc}"
        return out

    def choice(self) -> str:
        if self.choose is None:
            return ""
        try:
            return self.choose(
                2**self.log2_len.value,
                self.needs_global.value,
                2**self.log2_budget.value,
                self.has_gpu.value,
                heads=self.heads.value,
                head_dim=self.head_dim.value,
                window=self.window.value,
            )
        except Exception as exc:
            return f"{type(exc).__name__}: {exc}"

    def stats(self) -> dict:
        sizes = {
            kind: f"{size / 2**20:,.1f} MiB" if isinstance(size, (int, float)) else size
            for kind, size in self.sizes().items()
        }
        return {**sizes, "choice": self.choice() or "-"}

    def render(self) -> bytes:
        sizes, budget, chosen = self.sizes(), 2**self.log2_budget.value, self.choice()
        figure = Figure(figsize=(8, 3.6), dpi=80)
        FigureCanvasAgg(figure)
        ax = figure.subplots()
        names = list(sizes)
        values = [v if isinstance(v, (int, float)) else 0 for v in sizes.values()]
        colors = [
            "tab:green" if name == chosen else "tab:blue" if v and v <= budget else "tab:red"
            for name, v in zip(names, values)
        ]
        ax.barh(names, [max(v, 1) / 2**20 for v in values], color=colors)
        ax.axvline(budget / 2**20, color="k", ls="--", label="budget")
        ax.set_xscale("log")
        ax.invert_yaxis()
        ax.set(
            xlabel="estimated peak memory (MiB)",
            title=f"L = {2**self.log2_len.value}, {self.heads.value} heads, d = "
            f"{self.head_dim.value}, float32 — choice: {chosen or '-'}",
        )
        for i, (name, v) in enumerate(sizes.items()):
            if not isinstance(v, (int, float)):
                ax.text(1e-3, i, str(v)[:60], va="center", fontsize=7, color="tab:red")
        ax.legend(fontsize=8)
        figure.set_layout_engine("constrained")
        return figure_png(figure)
