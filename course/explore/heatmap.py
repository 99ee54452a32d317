"""Attention heatmaps: a static plot and an interactive explorer.

`plot_attention` draws one (Lq, Lk) matrix of attention weights, queries down the
side and keys along the bottom, so row i shows where query i looks.
`AttentionExplorer` wraps it in ipywidgets controls to step through batches and
heads, change the colour scale and inspect one query's row in detail; `ModelExplorer`
shows every layer and head of a model. Both are `course.explore.base.Explorer`s.

Both draw on matplotlib's object-oriented API (a `Figure` with an Agg canvas),
never pyplot: they work the same in JupyterLab, Voilà and headless tests, and leave
no open figures behind. In a notebook, show a plot with `ax.figure` as the cell's
last expression (or `display(ax.figure)`); an explorer shows itself.
"""

import math

import ipywidgets as widgets
import numpy as np
import torch
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import LogNorm
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from course.explore.base import Explorer, figure_png

SCALES = ("linear", "auto", "log")
# Weights below this are drawn in the log scale's lowest colour, so the exact zeros
# that masking produces do not break the logarithm.
LOG_FLOOR = 1e-6
# Beyond 8x8 cells the numbers no longer fit inside them.
ANNOTATE_MAX_CELLS = 64
# Up to this many rows or columns every one is labelled; a longer axis gets about
# LONG_AXIS_LABELS of them (a 64-key axis: every 8th). Laying out text is most of the cost of
# drawing a heatmap, and 64 labels side by side cannot be read anyway.
ALL_TICK_LABELS = 32
LONG_AXIS_LABELS = 8
CMAP = "viridis"
HIGHLIGHT_COLOR = "tab:red"
DPI = 90
FIGSIZE = (5.0, 4.0)
FIGSIZE_WITH_ROW = (5.0, 5.5)
# The query dropdown's value for "no row highlighted" (ipywidgets reads None as "nothing selected").
NO_QUERY = -1
# A weight below this counts as "not attended" in the sparsity statistic.
SPARSE_BELOW = 0.01


def _is_int(value) -> bool:
    # bool is a subclass of int, but True as a row number is a mistake.
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _to_numpy(weights) -> np.ndarray:
    """`weights` as a float32 NumPy array on the CPU, whatever device or dtype it came in."""
    if isinstance(weights, torch.Tensor):
        # detach: .numpy() refuses tensors that require grad; float32: NumPy has no bfloat16.
        return weights.detach().to(device="cpu", dtype=torch.float32).numpy()
    if isinstance(weights, np.ndarray):
        return weights.astype(np.float32, copy=False)
    raise TypeError(
        f"weights must be a torch.Tensor or numpy.ndarray of shape (..., Lq, Lk), "
        f"got {type(weights).__name__}"
    )


def _check_weights_shape(weights: np.ndarray) -> None:
    if weights.ndim < 2:
        raise ValueError(
            f"weights must have at least 2 dims, shape (..., Lq, Lk), got shape {weights.shape}"
        )
    if weights.size == 0:
        raise ValueError(f"weights must have no empty dims, got shape {weights.shape}")


def _as_labels(labels, count: int, name: str, what: str) -> list[str] | None:
    """`labels` as strings, checked to name each of `count` rows or columns."""
    if labels is None:
        return None
    # tolist() turns tensors or arrays of token ids into plain numbers, not 'tensor(3)'.
    labels = labels.tolist() if hasattr(labels, "tolist") else list(labels)
    if len(labels) != count:
        raise ValueError(f"{name} must have one label per {what} ({count}), got {len(labels)}")
    return [str(label) for label in labels]


def _check_position(position, size: int, name: str) -> int:
    """A Python-style index into a dim of `size`, checked and made non-negative."""
    if not _is_int(position):
        raise TypeError(f"{name} must be an int, got {type(position).__name__} ({position!r})")
    if not -size <= position < size:
        raise ValueError(f"{name}={position} is out of range for a dim of size {size}")
    return int(position) % size


def _select_matrix(weights: np.ndarray, index) -> np.ndarray:
    """The (Lq, Lk) matrix that `index` picks out of `weights` of shape (..., Lq, Lk)."""
    leading = weights.shape[:-2]
    if index is None:
        index = (0,) * len(leading)
    elif _is_int(index):
        index = (index,)
    elif not isinstance(index, (tuple, list)):
        raise TypeError(
            f"index must be a tuple of ints, one per leading dim, got {type(index).__name__}"
        )
    index = tuple(index)
    if len(index) != len(leading):
        raise ValueError(
            f"index must pick one position in each leading dim of weights {weights.shape}: "
            f"expected {len(leading)} entries, got {len(index)} ({index})"
        )
    index = tuple(
        _check_position(position, size, f"index[{dim}]")
        for dim, (position, size) in enumerate(zip(index, leading))
    )
    return weights[index]  # (Lq, Lk)


def _color_scale(matrix: np.ndarray, scale: str) -> tuple[np.ndarray, dict]:
    """The values to colour and the heatmap arguments that map them onto colours."""
    if scale == "linear":
        # Fixed 0..1: softmax weights of every head share one colour bar.
        return matrix, {"vmin": 0.0, "vmax": 1.0}
    if scale == "auto":
        return matrix, {}
    if scale == "log":
        # The top stays at 1 for softmax weights; max() ignores NaNs from a buggy softmax.
        top = float(matrix.max(initial=1.0, where=np.isfinite(matrix)))
        return np.clip(matrix, LOG_FLOOR, None), {"norm": LogNorm(vmin=LOG_FLOOR, vmax=top)}
    raise ValueError(f"scale must be one of {', '.join(map(repr, SCALES))}, got {scale!r}")


def _new_figure(with_row: bool) -> tuple[Figure, Axes, Axes, Axes | None]:
    """A figure with axes for a heatmap, its colour bar and, if asked, a row's bar chart.

    The figure stays outside pyplot's bookkeeping and is drawn by Agg whatever the
    notebook's backend. Call `_lay_out` on it once everything is drawn.
    """
    figure = Figure(figsize=FIGSIZE_WITH_ROW if with_row else FIGSIZE, dpi=DPI)
    FigureCanvasAgg(figure)
    # The bar chart shares the heatmap's grid column, so each bar lines up under its key.
    grid = figure.add_gridspec(
        2 if with_row else 1,
        2,
        height_ratios=(3, 1) if with_row else None,
        width_ratios=(25, 1),
    )
    heatmap_ax = figure.add_subplot(grid[0, 0])
    cbar_ax = figure.add_subplot(grid[0, 1])
    row_ax = figure.add_subplot(grid[1, 0]) if with_row else None
    return figure, heatmap_ax, cbar_ax, row_ax


def _label_ticks(ax: Axes, labels: list[str] | None, count: int, axis: str) -> None:
    """Label the cells of one axis: all of them on a short axis, every n-th on a long one;
    positions 0, 1, ... when no labels are given."""
    step = 1 if count <= ALL_TICK_LABELS else math.ceil(count / LONG_AXIS_LABELS)
    positions = range(0, count, step)
    names = [labels[p] if labels else str(p) for p in positions]
    set_ticks = ax.set_xticks if axis == "x" else ax.set_yticks
    set_ticks([p + 0.5 for p in positions], names)  # + 0.5: the middle of the cell


def _lay_out(figure: Figure) -> None:
    # Switched on only now: seaborn draws the whole figure to check whether its tick
    # labels overlap, and a layout engine would run (and cost time) on that draw too.
    figure.set_layout_engine("constrained")


def plot_attention(
    weights,
    query_labels=None,
    key_labels=None,
    *,
    index=None,
    ax=None,
    title=None,
    scale="linear",
    highlight_query=None,
    annotate=None,
    cbar_ax=None,
) -> Axes:
    """Draw one matrix of attention weights as a heatmap and return its Axes.

    Args:
        weights: torch.Tensor or numpy array, shape (..., Lq, Lk). Any device, dtype
            or requires_grad.
        query_labels: Lq labels for the rows (e.g. the query tokens), or None for 0..Lq-1.
        key_labels: Lk labels for the columns, or None for 0..Lk-1.
        index: which matrix to draw when weights has leading dims, one int per leading
            dim (an int alone for one leading dim); default: all zeros.
        ax: the Axes to draw on; default: a new 5x4 inch Figure, not registered with
            pyplot (show it with `ax.figure`).
        title: the Axes title.
        scale: "linear" (colours fixed to 0..1, right for softmax weights), "auto" (the
            data's min..max) or "log" (LOG_FLOOR..max(1, data max); masked zeros get
            the lowest colour).
        highlight_query: a row to outline, e.g. the query being discussed.
        annotate: write each weight in its cell; default: when Lq * Lk <= 64.
        cbar_ax: an Axes to draw the colour bar in (with ax); default: room taken
            from ax.
    """
    weights = _to_numpy(weights)
    _check_weights_shape(weights)
    matrix = _select_matrix(weights, index)  # (Lq, Lk)
    num_queries, num_keys = matrix.shape
    query_labels = _as_labels(query_labels, num_queries, "query_labels", "query row")
    key_labels = _as_labels(key_labels, num_keys, "key_labels", "key column")
    colored, color_kwargs = _color_scale(matrix, scale)
    if highlight_query is not None:
        highlight_query = _check_position(highlight_query, num_queries, "highlight_query")
    if annotate is None:
        annotate = matrix.size <= ANNOTATE_MAX_CELLS
    own_figure = ax is None
    if own_figure:
        if cbar_ax is not None:
            raise ValueError("cbar_ax needs ax: pass the Axes to draw the heatmap on as well")
        figure, ax, cbar_ax, _ = _new_figure(with_row=False)

    import seaborn as sns  # here: 0.5 s a notebook that draws no heatmap (a graded one) saves

    sns.heatmap(
        colored,
        ax=ax,
        cmap=CMAP,
        cbar_ax=cbar_ax,
        # Labelled below (_label_ticks): seaborn's "auto" would label every cell of a short
        # axis but thin a long one only by measuring the labels it drew.
        xticklabels=False,
        yticklabels=False,
        # The true values, not the log scale's clipped copy (which turns negatives into 0.00).
        annot=matrix if annotate else None,
        fmt=".2f",
        annot_kws={"fontsize": 8},
        **color_kwargs,
    )
    _label_ticks(ax, key_labels, num_keys, "x")
    _label_ticks(ax, query_labels, num_queries, "y")
    ax.set_xlabel("key")
    ax.set_ylabel("query")
    ax.tick_params(axis="y", labelrotation=0)  # tokens read better upright
    if title is not None:
        ax.set_title(title)
    if highlight_query is not None:
        outline = Rectangle(
            (0, highlight_query),
            num_keys,
            1,
            fill=False,
            edgecolor=HIGHLIGHT_COLOR,
            linewidth=2,
            clip_on=False,
        )
        ax.add_patch(outline)
    if own_figure:
        _lay_out(figure)
    return ax


def _to_batch_heads(weights: np.ndarray) -> np.ndarray:
    """(..., Lq, Lk) -> (B, H, Lq, Lk), leading dims right-aligned onto (batch, heads).

    A missing heads or batch dim becomes 1, and dims before (batch, heads) fold into batch.
    """
    _check_weights_shape(weights)
    *leading, num_queries, num_keys = weights.shape
    num_heads = leading[-1] if leading else 1
    return weights.reshape(-1, num_heads, num_queries, num_keys)  # (B, H, Lq, Lk)


def _entropy_nats(row: np.ndarray) -> float:
    """Entropy of a row of weights read as a distribution over keys; NaN when it is not one."""
    total = row.sum()
    if not np.isfinite(total) or total <= 0 or (row < 0).any():
        return math.nan
    # Renormalising makes rows of float16 weights, which sum to 1 only roughly, exact.
    probabilities = row[row > 0] / total  # 0 * log 0 counts as 0
    return float(-(probabilities * np.log(probabilities)).sum())


def _index_slider(name: str, count: int) -> widgets.IntSlider:
    return widgets.IntSlider(
        value=0,
        min=0,
        max=count - 1,
        description=name,
        disabled=count == 1,
        layout=widgets.Layout(width="230px"),
    )


class AttentionExplorer(Explorer):
    """Step through attention weights by batch and head, and inspect one query's row.

    Leading dims of `weights` are right-aligned onto (batch, heads): (Lq, Lk) is one
    batch and one head, (H, Lq, Lk) is H heads, (B, H, Lq, Lk) is both, and any dims
    before those are flattened into batch.

    Controls (ipywidgets, public so notebooks and tests can set them):
        batch, head: IntSliders, disabled when there is only one.
        scale: Dropdown of "linear", "auto", "log" (see `plot_attention`).
        query: Dropdown of "none" and one entry per query row; picking a row outlines
            it and adds a bar chart of its weights over the keys, its entropy and its
            argmax key.

    The picture is `image` (an ipywidgets.Image of PNG bytes from `render()`); the
    whole layout is `widget`; `stats()` summarises the matrix shown. A cell ending in the
    explorer displays it:

        explorer = AttentionExplorer(weights, tokens, tokens, title="layer 0")
        explorer
    """

    def __init__(self, weights, query_labels=None, key_labels=None, *, title=None):
        # Converted once: every re-render then slices a CPU array, whatever came in.
        self.weights = _to_batch_heads(_to_numpy(weights))  # (B, H, Lq, Lk)
        num_batches, num_heads, num_queries, num_keys = self.weights.shape
        self.query_labels = _as_labels(query_labels, num_queries, "query_labels", "query row")
        self.key_labels = _as_labels(key_labels, num_keys, "key_labels", "key column")
        self.title = title

        self.batch = _index_slider("batch", num_batches)
        self.head = _index_slider("head", num_heads)
        self.scale = widgets.Dropdown(
            options=SCALES,
            value="linear",
            description="scale",
            layout=widgets.Layout(width="160px"),
        )
        self.query = widgets.Dropdown(
            options=[("none", NO_QUERY)]
            + [(self._query_name(row), row) for row in range(num_queries)],
            value=NO_QUERY,
            description="query",
            layout=widgets.Layout(width="200px"),
        )
        self._show([self.batch, self.head, self.scale, self.query])

    def _query_name(self, row: int) -> str:
        return f"{row}: {self.query_labels[row]}" if self.query_labels else str(row)

    def _key_name(self, column: int) -> str:
        return repr(self.key_labels[column]) if self.key_labels else str(column)

    def _title(self) -> str:
        num_batches, num_heads = self.weights.shape[:2]
        parts = [self.title] if self.title else []
        if num_batches > 1:
            parts.append(f"batch {self.batch.value}")
        if num_heads > 1:
            parts.append(f"head {self.head.value}")
        return ", ".join(parts)

    def matrix(self) -> np.ndarray:
        """(Lq, Lk): the weights of the batch and head shown."""
        return self.weights[self.batch.value, self.head.value]

    def stats(self) -> dict:
        return matrix_stats(self.matrix())

    def render(self) -> bytes:
        """Draw the current selection and return it as PNG bytes."""
        matrix = self.matrix()  # (Lq, Lk)
        query = None if self.query.value == NO_QUERY else self.query.value
        figure, heatmap_ax, cbar_ax, row_ax = _new_figure(with_row=query is not None)
        plot_attention(
            matrix,
            self.query_labels,
            self.key_labels,
            ax=heatmap_ax,
            cbar_ax=cbar_ax,
            title=self._title() or None,
            scale=self.scale.value,
            highlight_query=query,
        )
        # After the heatmap: seaborn's trial draw of the figure then has no bars to draw.
        if query is not None:
            self._plot_row(row_ax, matrix[query], query)
        _lay_out(figure)
        return figure_png(figure)

    def _plot_row(self, ax: Axes, row: np.ndarray, query: int) -> None:
        """Bar chart of one query's weights over the keys, with its entropy and argmax."""
        num_keys = len(row)
        centres = np.arange(num_keys) + 0.5  # the heatmap's cell centres
        colors = ["tab:blue"] * num_keys
        summary = [f"query {self._query_name(query)}"]
        entropy = _entropy_nats(row)
        if math.isnan(entropy):
            summary.append("entropy n/a (not a distribution)")
        else:
            summary.append(f"entropy {entropy:.2f} nats (uniform: {math.log(num_keys):.2f})")
        finite = np.isfinite(row)
        if finite.any():
            best = int(np.argmax(np.where(finite, row, -np.inf)))
            colors[best] = HIGHLIGHT_COLOR
            summary.append(f"argmax key {self._key_name(best)} ({row[best]:.2f})")
        ax.bar(centres, np.where(finite, row, 0.0), width=0.8, color=colors)
        ax.set_xlim(0, num_keys)
        ax.set_xticks([])  # the heatmap's key labels sit just above
        ax.set_ylabel("weight")
        ax.set_title(", ".join(summary), fontsize=9)


# ----------------------------------------------------------------------------- whole models

VIEWS = ("grid", "single")
GRID_COLUMNS = 4
GRID_CELL_INCHES = (3.2, 2.9)


def attention_stats(weights) -> tuple[np.ndarray, np.ndarray]:
    """Per-head summaries of (..., H, Lq, Lk) weights: (entropy, distance), each (..., H).

    entropy: the mean over queries of each row's entropy in nats (0 = every query looks at one
    key; log Lk = uniform). distance: the mean over queries of sum_j w_ij |pos_i - j|, in
    positions, with query i at position Lk - Lq + i (bottom-right, as causal_mask).
    """
    weights = _to_numpy(weights).astype(np.float64)
    _check_weights_shape(weights)
    num_queries, num_keys = weights.shape[-2:]
    clipped = np.clip(np.nan_to_num(weights, nan=0.0), 0.0, None)
    totals = clipped.sum(-1, keepdims=True)
    rows = np.divide(clipped, totals, out=np.zeros_like(clipped), where=totals > 0)
    logs = np.log(rows, out=np.zeros_like(rows), where=rows > 0)
    entropy = -(rows * logs).sum(-1).mean(-1)
    query_position = np.arange(num_queries)[:, None] + (num_keys - num_queries)
    gap = np.abs(query_position - np.arange(num_keys)[None, :])  # (Lq, Lk)
    distance = (rows * gap).sum(-1).mean(-1)
    return entropy, distance


def matrix_stats(weights) -> dict:
    """Entropy (nats, mean over queries), mean distance (positions) and sparsity (share of
    weights below SPARSE_BELOW) of a (..., Lq, Lk) attention matrix, averaged over leading dims."""
    weights = np.nan_to_num(_to_numpy(weights).astype(np.float64))
    entropy, distance = attention_stats(weights)
    return {
        "entropy (nats)": f"{float(np.mean(entropy)):.2f}",
        "mean distance": f"{float(np.mean(distance)):.2f}",
        "sparsity": f"{float((weights < SPARSE_BELOW).mean()):.0%}",
    }


class ModelExplorer(Explorer):
    """Every layer and head of a model's attention: a grid of a layer's heads, or one head.

    `weights_per_layer` is a list with one tensor per layer, each (H, Lq, Lk) or (B, H, Lq, Lk)
    (all the same shape), e.g. the weights a `course.models.tiny_transformer.TinyTransformer` returns.
    Each head's title gives its mean entropy (nats) and mean attention distance (positions).

    Controls (ipywidgets, public): layer (IntSlider), view (ToggleButtons "grid" / "single"),
    head (IntSlider, used by the single view), batch (IntSlider), scale (Dropdown, see
    `plot_attention`), query (Dropdown: a query row to outline in every head, or "none"; the
    `query` argument picks the first one).
    The picture is `image`; the layout is `widget`. `set_weights` shows new weights (another
    sentence) with the same controls; `stats()` gives a row of statistics per head of the layer.

        ModelExplorer(weights, tokens, tokens, title="reverse")
    """

    def __init__(
        self,
        weights_per_layer,
        query_labels=None,
        key_labels=None,
        *,
        title=None,
        view="grid",
        query=None,
    ):
        self._load(weights_per_layer, query_labels, key_labels)
        num_layers, num_batches, num_heads, num_queries, num_keys = self.weights.shape
        self.title = title
        if view not in VIEWS:
            raise ValueError(f"view must be one of {', '.join(map(repr, VIEWS))}, got {view!r}")

        self.layer = _index_slider("layer", num_layers)
        self.batch = _index_slider("batch", num_batches)
        self.head = _index_slider("head", num_heads)
        self.view = widgets.ToggleButtons(
            options=VIEWS, value=view, description="view", style={"button_width": "60px"}
        )
        self.scale = widgets.Dropdown(
            options=SCALES,
            value="linear",
            description="scale",
            layout=widgets.Layout(width="160px"),
        )
        if query is not None:
            query = _check_position(query, num_queries, "query")
        self.query = widgets.Dropdown(
            options=self._query_options(),
            value=NO_QUERY if query is None else query,
            description="query",
            layout=widgets.Layout(width="200px"),
        )
        self._show([self.layer, self.view, self.scale], [self.head, self.batch, self.query])

    def _load(self, weights_per_layer, query_labels, key_labels) -> None:
        if isinstance(weights_per_layer, (torch.Tensor, np.ndarray)) or not weights_per_layer:
            raise TypeError(
                "weights_per_layer must be a non-empty list of per-layer weights, "
                "each (H, Lq, Lk) or (B, H, Lq, Lk)"
            )
        layers = [_to_numpy(w) for w in weights_per_layer]
        for number, layer in enumerate(layers):
            if layer.ndim not in (3, 4):
                raise ValueError(
                    f"layer {number}'s weights must be (H, Lq, Lk) or (B, H, Lq, Lk), "
                    f"got shape {layer.shape}"
                )
            if layer.shape != layers[0].shape:
                raise ValueError(
                    f"every layer's weights must have one shape: layer 0 is "
                    f"{layers[0].shape}, layer {number} is {layer.shape}"
                )
        weights = np.stack([_to_batch_heads(layer) for layer in layers])  # (layers, B, H, Lq, Lk)
        num_queries, num_keys = weights.shape[-2:]
        self.query_labels = _as_labels(query_labels, num_queries, "query_labels", "query row")
        self.key_labels = _as_labels(key_labels, num_keys, "key_labels", "key column")
        self.weights = weights
        self.entropy, self.distance = attention_stats(self.weights)  # (layers, B, H) each

    def _query_options(self) -> list:
        rows = range(self.weights.shape[3])
        return [("none", NO_QUERY)] + [
            (f"{row}: {self.query_labels[row]}" if self.query_labels else str(row), row)
            for row in rows
        ]

    def set_weights(self, weights_per_layer, query_labels=None, key_labels=None) -> None:
        """Show new weights (same checks as the constructor); the controls keep their values
        where they still fit, and the picture is redrawn once."""
        self._load(weights_per_layer, query_labels, key_labels)
        num_layers, num_batches, num_heads, num_queries, _ = self.weights.shape
        query = self.query.value
        with self.hold():
            for control, count in (
                (self.layer, num_layers),
                (self.batch, num_batches),
                (self.head, num_heads),
            ):
                control.value = min(control.value, count - 1)
                control.max = count - 1
                control.disabled = count == 1
            self.query.options = self._query_options()
            self.query.value = query if query < num_queries else NO_QUERY

    def head_title(self, layer: int, head: int) -> str:
        batch = self.batch.value
        return (
            f"L{layer} H{head}: entropy {self.entropy[layer, batch, head]:.2f}, "
            f"distance {self.distance[layer, batch, head]:.1f}"
        )

    def stats(self) -> list:
        """Per head of the current layer: entropy, mean distance, sparsity."""
        layer, batch = self.layer.value, self.batch.value
        return [
            {
                "head": f"L{layer} H{head}",
                "entropy": f"{self.entropy[layer, batch, head]:.2f}",
                "distance": f"{self.distance[layer, batch, head]:.2f}",
                "sparsity": f"{(self.weights[layer, batch, head] < SPARSE_BELOW).mean():.0%}",
            }
            for head in range(self.weights.shape[2])
        ]

    def fit_controls(self) -> None:
        # The grid shows every head: the head slider only picks one for the single view.
        self.head.disabled = self.weights.shape[2] == 1 or self.view.value == "grid"

    def render(self) -> bytes:
        """Draw the current layer (grid) or head (single) and return PNG bytes."""
        query = None if self.query.value == NO_QUERY else self.query.value
        layer, batch = self.layer.value, self.batch.value
        heads = range(self.weights.shape[2]) if self.view.value == "grid" else [self.head.value]
        columns = min(len(heads), GRID_COLUMNS)
        rows = math.ceil(len(heads) / columns)
        width, height = GRID_CELL_INCHES if len(heads) > 1 else FIGSIZE
        figure = Figure(figsize=(width * columns, height * rows + 0.4), dpi=DPI)
        FigureCanvasAgg(figure)
        # A narrow colour-bar column beside each heatmap, as in _new_figure.
        grid = figure.add_gridspec(rows, 2 * columns, width_ratios=(25, 1) * columns)
        for position, head in enumerate(heads):
            row, column = divmod(position, columns)
            ax = figure.add_subplot(grid[row, 2 * column])
            cbar_ax = figure.add_subplot(grid[row, 2 * column + 1])
            plot_attention(
                self.weights[layer, batch, head],
                self.query_labels,
                self.key_labels,
                ax=ax,
                cbar_ax=cbar_ax,
                title=self.head_title(layer, head),
                scale=self.scale.value,
                highlight_query=query,
                annotate=False if len(heads) > 1 else None,
            )
            ax.title.set_fontsize(9 if len(heads) > 1 else 11)
            if len(heads) > 1:
                ax.tick_params(labelsize=7)
        if self.title:
            figure.suptitle(self.title)
        _lay_out(figure)
        return figure_png(figure)
