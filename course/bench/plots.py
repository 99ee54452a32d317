"""Plots of benchmark records: saved to PNG files (no display needed), log-log against L.

Measurements are tidy records, so seaborn draws one line per mechanism straight from them.
"""

import contextlib
import dataclasses


@contextlib.contextmanager
def saved_figure(path, figsize=(6, 3.8)):
    """`with saved_figure("plot.png") as figure:` draws on a matplotlib Figure (no display
    needed: the Agg canvas) and saves it to `path` when the block ends."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=figsize, dpi=100)
    FigureCanvasAgg(figure)
    yield figure
    figure.set_layout_engine("constrained")
    figure.savefig(path)


def plot_by_mechanism(
    ax, rows, quantity: str, scale: float = 1.0, log: bool = True, marker: str | None = "o"
) -> dict:
    """One line per mechanism of `quantity` (a Measurement field) times `scale` against L, from
    the rows that measured it, on log-log axes unless `log` is False. Returns {mechanism: its y
    values in order of L}, where guides start."""
    import pandas
    import seaborn

    data = pandas.DataFrame([dataclasses.asdict(row) for row in rows])
    data = data[data[quantity].notna()].assign(y=lambda d: d[quantity] * scale)
    seaborn.lineplot(data=data, x="L", y="y", hue="mechanism", marker="o", markeredgewidth=0, ax=ax)
    if log:
        ax.set(xscale="log", yscale="log")
    ax.set(ylabel=None)
    return {name: list(group.sort_values("L")["y"]) for name, group in data.groupby("mechanism")}


def scaling_guides(ax, lengths, quadratic_from=None, linear_from=None, **style) -> None:
    """Dotted O(L^2) and dashed O(L) guides on log-log axes against `lengths`, starting at the
    values given for the first length (None: that guide is left out)."""
    if quadratic_from is not None:
        ax.loglog(
            lengths,
            [quadratic_from * (L / lengths[0]) ** 2 for L in lengths],
            "k:",
            label="O(L²)",
            **style,
        )
    if linear_from is not None:
        ax.loglog(
            lengths, [linear_from * L / lengths[0] for L in lengths], "k--", label="O(L)", **style
        )


def label_lengths_axis(ax, lengths, **labels) -> None:
    """Finish a log-log plot against sequence length: the measured lengths as the x ticks, then
    `labels` (title, ylabel, ...) and the legend."""
    ax.set(xlabel="sequence length L", **labels)
    ax.set_xticks(lengths, [str(L) for L in lengths])
    ax.minorticks_off()
    ax.legend(fontsize=8)
