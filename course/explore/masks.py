"""The mask explorer: a mask and the attention weights it produces, side by side.

Day 2's Explore section feeds it the student's own `masked_attention` (and, if they like, their
own `causal_mask` and `padding_mask`), so every picture is drawn by their code. Four kinds of
mask, with sliders for the lengths:

- causal: `lq` new queries against `lk` keys, bottom-right aligned (query i sits at absolute
  position lk - lq + i); with lq > lk the first queries see nothing.
- padding: self-attention over one sequence of `lk` positions, of which the first `length` are
  real tokens: the padded *keys* are hidden from every query.
- both: causal and padding together (a padded batch in a decoder).
- cross: `lq` decoder queries attending to `lk` encoder keys, the encoder padded after `length`.

Like `course.explore.heatmap.AttentionExplorer`, it draws with matplotlib's Agg canvas into PNG bytes
shown by an ipywidgets.Image, so it works the same in JupyterLab and in headless tests.
"""

import ipywidgets as widgets
import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from course.explore.base import Explorer, figure_png
from course.explore.heatmap import DPI, _is_int, _lay_out, matrix_stats, plot_attention
from course.reference import masks as library

KINDS = ("causal", "padding", "both", "cross")
WARNING_COLOR = "tab:red"


def _check_length(value, name: str, low: int, high: int) -> int:
    if not _is_int(value):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} ({value!r})")
    if not low <= value <= high:
        raise ValueError(f"{name} must be in [{low}, {high}], got {value}")
    return int(value)


class MaskExplorer(Explorer):
    """Pick a kind of mask and its lengths; see the mask and the weights it gives.

    Args:
        attention: the attention to visualise, called as `attention(q, k, v, mask=mask)` with
            q (1, 1, Lq, d), k and v (1, 1, Lk, d) and a boolean mask that broadcasts to
            (1, 1, Lq, Lk), True = may attend; it returns `(out, weights)`.
        causal_mask: `causal_mask(lq, lk) -> (lq, lk)` bool; default course.reference.masks's.
        padding_mask: `padding_mask(lengths, max_len) -> (B, max_len)` bool; default
            course.reference.masks's.
        kind: the first kind shown, one of KINDS.
        lq, lk, length: the first lengths shown; 1 <= lq, lk <= max_len and 0 <= length <= lk
            (default: lk - lk // 4, the last quarter of the keys padded).
        max_len: the sliders' upper end.
        head_dim: the width of the random queries, keys and values.
        seed: the seed of the random queries, keys and values.

    Controls (ipywidgets, public so notebooks and tests can set them): `kind` (Dropdown),
    `lq`, `lk`, `length` (IntSliders; a slider that the kind does not use is disabled).
    The picture is `image` (PNG bytes from `render()`); the whole layout is `widget`;
    `stats()` gives the mask's density and the weights' entropy, distance and sparsity.
    """

    def __init__(
        self,
        attention,
        *,
        causal_mask=None,
        padding_mask=None,
        kind="both",
        lq=4,
        lk=8,
        length=None,
        max_len=16,
        head_dim=8,
        seed=0,
    ):
        for name, fn in [
            ("attention", attention),
            ("causal_mask", causal_mask),
            ("padding_mask", padding_mask),
        ]:
            if fn is not None and not callable(fn):
                raise TypeError(
                    f"{name} must be a function, got {type(fn).__name__}: pass the "
                    f"function itself, e.g. MaskExplorer(masked_attention)"
                )
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {', '.join(map(repr, KINDS))}, got {kind!r}")
        max_len = _check_length(max_len, "max_len", 2, 64)
        lq = _check_length(lq, "lq", 1, max_len)
        lk = _check_length(lk, "lk", 1, max_len)
        length = _check_length(lk - lk // 4 if length is None else length, "length", 0, lk)
        head_dim = _check_length(head_dim, "head_dim", 1, 1024)
        self.attention = attention
        self.causal_mask = causal_mask or library.causal_mask
        self.padding_mask = padding_mask or library.padding_mask
        generator = torch.Generator().manual_seed(seed)
        # Sliced to the current lengths: the same tokens keep the same vectors as sliders move.
        self._q, self._k, self._v = (
            torch.randn(max_len, head_dim, generator=generator) for _ in range(3)
        )

        width = widgets.Layout(width="250px")
        self.kind = widgets.Dropdown(
            options=KINDS, value=kind, description="mask", layout=widgets.Layout(width="180px")
        )
        self.lq = widgets.IntSlider(
            value=lq,
            min=1,
            max=max_len,
            description="Lq (queries)",
            layout=width,
            style={"description_width": "initial"},
        )
        self.lk = widgets.IntSlider(
            value=lk,
            min=1,
            max=max_len,
            description="Lk (keys)",
            layout=width,
            style={"description_width": "initial"},
        )
        self.length = widgets.IntSlider(
            value=length,
            min=0,
            max=lk,
            description="real keys",
            layout=width,
            style={"description_width": "initial"},
        )
        self._show([self.kind, self.lq, self.lk, self.length])

    # ------------------------------------------------------------------------- what is shown

    def lengths(self) -> tuple:
        """(Lq, Lk) of the current picture: self-attention kinds use one length, Lk."""
        lk = self.lk.value
        return (lk, lk) if self.kind.value in ("padding", "both") else (self.lq.value, lk)

    def mask(self) -> torch.Tensor:
        """The mask passed to the attention, shaped to broadcast to (1, 1, Lq, Lk)."""
        kind, (lq, lk) = self.kind.value, self.lengths()
        if kind == "causal":
            return self._checked(self.causal_mask(lq, lk), "causal_mask", (lq, lk))
        real = self._checked(
            self.padding_mask(torch.tensor([self.length.value]), lk), "padding_mask", (1, lk)
        )
        keys = real[:, None, None, :]  # (1, 1, 1, Lk): hides padded keys from every query
        if kind == "both":
            return self._checked(self.causal_mask(lq, lk), "causal_mask", (lq, lk)) & keys
        return keys

    def weights(self) -> torch.Tensor:
        """(Lq, Lk): the weights that `attention` gives under the current mask."""
        lq, lk = self.lengths()
        q, k, v = self._q[:lq][None, None], self._k[:lk][None, None], self._v[:lk][None, None]
        result = self.attention(q, k, v, mask=self.mask())
        if not isinstance(result, (tuple, list)) or len(result) != 2:
            raise TypeError(f"attention must return (out, weights), got {type(result).__name__}")
        weights = result[1]
        if (
            not isinstance(weights, torch.Tensor)
            or weights.shape[-2:] != (lq, lk)
            or weights.numel() != lq * lk
        ):
            shape = (
                tuple(weights.shape)
                if isinstance(weights, torch.Tensor)
                else type(weights).__name__
            )
            raise ValueError(
                f"attention's weights should be (1, 1, Lq, Lk) = (1, 1, {lq}, {lk}) "
                f"for q (1, 1, {lq}, d) and k (1, 1, {lk}, d), got {shape}"
            )
        return weights.detach().reshape(lq, lk)

    @staticmethod
    def _checked(mask, name: str, shape: tuple) -> torch.Tensor:
        if (
            not isinstance(mask, torch.Tensor)
            or mask.dtype != torch.bool
            or tuple(mask.shape) != shape
        ):
            got = (
                f"{mask.dtype} of shape {tuple(mask.shape)}"
                if isinstance(mask, torch.Tensor)
                else type(mask).__name__
            )
            raise ValueError(f"{name} should give a torch.bool mask of shape {shape}, got {got}")
        return mask

    def stats(self) -> dict:
        mask = self.mask().expand(1, 1, *self.lengths())[0, 0]
        return {"mask density": f"{mask.float().mean().item():.0%}", **matrix_stats(self.weights())}

    # ------------------------------------------------------------------------- drawing

    def _labels(self) -> tuple:
        kind, (lq, lk) = self.kind.value, self.lengths()
        padded = kind != "causal"
        keys = [("pad" if padded and j >= self.length.value else str(j)) for j in range(lk)]
        if kind == "causal":
            queries = [str(lk - lq + i) for i in range(lq)]  # absolute positions
        elif kind == "cross":
            queries = [f"d{i}" for i in range(lq)]  # decoder positions
        else:
            queries = keys
        return queries, keys

    def _title(self) -> str:
        kind, (lq, lk) = self.kind.value, self.lengths()
        return {
            "causal": f"causal, Lq={lq}, Lk={lk}: query at position p sees keys 0..p",
            "padding": f"padding, L={lk}, {self.length.value} real: padded keys hidden",
            "both": f"causal + padding, L={lk}, {self.length.value} real",
            "cross": f"cross-attention, {lq} decoder queries, {lk} encoder keys "
            f"({self.length.value} real)",
        }[kind]

    def render(self) -> bytes:
        """Draw the mask and the weights for the current controls; return PNG bytes."""
        lq, lk = self.lengths()
        mask = self.mask().expand(1, 1, lq, lk)[0, 0]  # (Lq, Lk)
        weights = self.weights()
        queries, keys = self._labels()
        side = 2.2 + 0.28 * max(lq, lk)
        figure = Figure(figsize=(2 * side + 1.2, side), dpi=DPI)
        FigureCanvasAgg(figure)
        grid = figure.add_gridspec(1, 4, width_ratios=(20, 1, 20, 1))
        mask_ax, mask_bar = figure.add_subplot(grid[0, 0]), figure.add_subplot(grid[0, 1])
        weights_ax, weights_bar = figure.add_subplot(grid[0, 2]), figure.add_subplot(grid[0, 3])
        plot_attention(
            mask.float(),
            queries,
            keys,
            ax=mask_ax,
            cbar_ax=mask_bar,
            annotate=False,
            title="mask (yellow = may attend)",
        )
        plot_attention(weights, queries, keys, ax=weights_ax, cbar_ax=weights_bar, title="weights")
        figure.suptitle(self._title(), fontsize=10)
        notes = self._notes(mask, weights)
        if notes:
            figure.supxlabel(notes, fontsize=9, color=WARNING_COLOR)
        _lay_out(figure)
        return figure_png(figure)

    @staticmethod
    def _notes(mask: torch.Tensor, weights: torch.Tensor) -> str:
        """What to notice: rows that see nothing, NaN, weight on blocked keys."""
        weights = weights.double()
        notes = []
        empty = int((~mask.any(dim=-1)).sum())
        if empty:
            notes.append(
                f"{empty} {'query sees' if empty == 1 else 'queries see'} no key: "
                f"{'its' if empty == 1 else 'their'} weights should be all 0"
            )
        if not torch.isfinite(weights).all():
            notes.append(f"{int((~torch.isfinite(weights)).sum())} weights are NaN/inf")
        leaked = float(np.nan_to_num(weights[~mask].abs().sum().item()))
        if leaked > 1e-6:
            notes.append(f"weight on blocked keys: {leaked:.3g}")
        return "; ".join(notes)

    # ------------------------------------------------------------------------- controls

    def fit_controls(self) -> None:
        self.length.max = self.lk.value  # clamps length when Lk shrinks below it
        kind = self.kind.value
        self.lq.disabled = kind in ("padding", "both")  # self-attention: Lq = Lk
        self.length.disabled = kind == "causal"
