"""An interactive explorer of sparse attention patterns: the mask, its density, and how far
information spreads through 1, 2, ... stacked layers of it.

It draws whatever mask builders it is given, so a notebook can feed it the student's own:

    PatternExplorer(sliding_window_mask=sliding_window_mask, strided_mask=strided_mask, ...)

Builders not given fall back to the course's library versions (course.reference.sparse). Like
AttentionExplorer, it draws with matplotlib's object-oriented API into PNG bytes shown in an
ipywidgets.Image, so it works the same in JupyterLab, Voilà and headless tests.
"""

import math

import ipywidgets as widgets
import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import ListedColormap
from matplotlib.figure import Figure

from course.explore.base import Explorer, figure_png, message_png, slider
from course.reference import sparse

PATTERNS = (
    "sliding window",
    "causal window",
    "strided",
    "global + local",
    "random",
    "block sparse",
    "BigBird (global + local + random)",
)
BUILDERS = (
    "sliding_window_mask",
    "strided_mask",
    "global_local_mask",
    "random_mask",
    "block_sparse_mask",
    "mask_density",
    "layers_to_full_reach",
)
# Blocked pairs light, allowed pairs dark, as in the papers' figures.
CMAP = ListedColormap(["#f3f3f3", "#2b5c8a"])
DPI = 80
PANEL_INCHES = 2.6


def parse_tokens(text: str) -> list:
    """'0, 17 31' -> [0, 17, 31]; a ValueError naming the bad entry otherwise."""
    tokens = []
    for part in text.replace(",", " ").split():
        try:
            tokens.append(int(part))
        except ValueError:
            raise ValueError(
                f"global tokens must be whole numbers separated by commas, got {part!r}"
            ) from None
    return tokens


class PatternExplorer(Explorer):
    """Pick a sparse pattern and its parameters; see the mask and its reach after 1..n layers.

    Controls (ipywidgets, public so notebooks and tests can set them): `pattern` (Dropdown of
    PATTERNS), `length`, `window`, `stride`, `num_random`, `seed`, `block_size`, `layers`
    (IntSliders) and `global_tokens` (Text: positions separated by commas).

    Reach after n layers is the boolean n-th power of (mask | I): entry [i, j] is lit when key
    j's information has reached query i. The title says after how many layers every query has
    heard from every key (`layers_to_full_reach`), or that it never happens.

    A builder that raises (a bad parameter, or an exercise not done yet) is reported in the
    picture instead of raising. The picture is `image` (PNG bytes from `render()`); the whole
    layout is `widget`, and a cell ending in the explorer displays it. `stats()` gives the
    mask's density and reach.
    """

    def __init__(self, *, length: int = 64, layers: int = 3, **builders):
        unknown = set(builders) - set(BUILDERS)
        if unknown:
            raise TypeError(
                f"unknown builders {sorted(unknown)}; expected some of {list(BUILDERS)}"
            )
        self.builders = {name: builders.get(name) or getattr(sparse, name) for name in BUILDERS}
        self.pattern = widgets.Dropdown(
            options=PATTERNS,
            value=PATTERNS[0],
            description="pattern",
            layout=widgets.Layout(width="330px"),
        )
        self.length = slider("length L", length, 8, 256, 8)
        self.window = slider("window", 8, 1, 128)
        self.stride = slider("stride", 8, 1, 128)
        self.num_random = slider("random keys", 2, 0, 32)
        self.seed = slider("seed", 0, 0, 99)
        self.block_size = slider("block size", 8, 1, 64)
        self.layers = slider("layers", layers, 1, 6)
        self.global_tokens = widgets.Text(
            value="0", description="global tokens", layout=widgets.Layout(width="260px")
        )
        self.error = None  # the message shown instead of a pattern, if building it failed
        self._show(
            [self.pattern, self.length, self.window],
            [self.stride, self.global_tokens, self.num_random],
            [self.seed, self.block_size, self.layers],
        )

    # ------------------------------------------------------------------------- the pattern

    def _generator(self) -> torch.Generator:
        return torch.Generator().manual_seed(self.seed.value)

    def block_layout(self) -> torch.Tensor:
        """The block layout of "block sparse": neighbouring blocks, block 0 global, and
        `num_random` random blocks per block row (BigBird's block pattern)."""
        nb = math.ceil(self.length.value / self.block_size.value)
        blocks = torch.arange(nb)
        layout = (blocks.unsqueeze(-1) - blocks).abs() <= 1
        layout[0, :] = layout[:, 0] = True
        return layout | self.builders["random_mask"](
            nb, min(self.num_random.value, nb), self._generator()
        )

    def mask(self) -> torch.Tensor:
        """The (L, L) bool mask the controls describe, built by the given builders."""
        L, window, pattern = self.length.value, self.window.value, self.pattern.value
        build = self.builders
        if pattern == "sliding window":
            return build["sliding_window_mask"](L, window)
        if pattern == "causal window":
            return build["sliding_window_mask"](L, window, causal=True)
        if pattern == "strided":
            return build["strided_mask"](L, self.stride.value, window)
        if pattern == "global + local":
            return build["global_local_mask"](L, window, parse_tokens(self.global_tokens.value))
        if pattern == "random":
            return build["random_mask"](L, self.num_random.value, self._generator())
        if pattern == "block sparse":
            return build["block_sparse_mask"](L, self.block_size.value, self.block_layout())
        return build["global_local_mask"](
            L, window, parse_tokens(self.global_tokens.value)
        ) | build["random_mask"](L, self.num_random.value, self._generator())

    def stats(self) -> dict:
        if self.error:
            return {"error": self.error}
        mask = self.mask().bool()
        density = mask.float().mean().item()
        full = self.builders["layers_to_full_reach"](mask)
        return {
            "density": f"{density:.1%}",
            "sparsity": f"{1 - density:.1%}",
            "layers to full reach": "never" if full is None else str(full),
        }

    # ------------------------------------------------------------------------- drawing

    def render(self) -> bytes:
        """Draw the current pattern and its reach, and return the picture as PNG bytes."""
        try:
            mask = self.mask().detach().cpu().bool()
            density = float(self.builders["mask_density"](mask))
            full = self.builders["layers_to_full_reach"](mask)
            reach = sparse.reach_after(mask, self.layers.value)
            self.error = None
        except Exception as exc:  # noqa: BLE001 (shown to the user, who can change the controls)
            self.error = f"{type(exc).__name__}: {exc}"
            return self._render_error()
        panels = 1 + len(reach)
        figure = Figure(figsize=(PANEL_INCHES * panels, PANEL_INCHES + 0.6), dpi=DPI)
        FigureCanvasAgg(figure)
        axes = figure.subplots(1, panels, squeeze=False)[0]
        L = mask.shape[0]
        self._draw(axes[0], mask, f"mask: density {density:.1%}")
        for n, (ax, reached) in enumerate(zip(axes[1:], reach), start=1):
            share = reached.float().mean().item()
            self._draw(ax, reached, f"after {n} layer{'s' if n > 1 else ''}: {share:.0%}")
        verdict = (
            "never reaches every pair"
            if full is None
            else f"every pair reached after {full} layers"
        )
        figure.suptitle(f"{self.pattern.value}, L = {L}: {verdict}", fontsize=11)
        figure.set_layout_engine("constrained")
        return figure_png(figure)

    @staticmethod
    def _draw(ax, matrix: torch.Tensor, title: str) -> None:
        ax.imshow(
            matrix.numpy().astype(np.uint8), cmap=CMAP, vmin=0, vmax=1, interpolation="nearest"
        )
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("key j", fontsize=8)
        ax.set_ylabel("query i", fontsize=8)
        ax.tick_params(labelsize=7)

    def _render_error(self) -> bytes:
        return message_png(
            f"could not build the {self.pattern.value} pattern:\n{self.error}",
            (PANEL_INCHES * 2, 1.2),
            DPI,
            fontsize=9,
            color="tab:red",
            wrap=True,
        )
