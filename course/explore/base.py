"""What every explorer of the course shares: the `Explorer` base class and its drawing helpers.

An explorer is a few ipywidgets controls above a picture. Moving a control redraws the picture
along one path:

    control changes -> fit_controls() -> render() -> PNG bytes -> image (an ipywidgets.Image)

`render()` draws with matplotlib's object-oriented API (a `Figure` with an Agg canvas), never
pyplot, so the picture is the same in JupyterLab, Voilà and headless tests, and no figure is
left open. `stats()` gives the numbers behind the current picture, for a panel beside it (the
gallery's). A cell ending in an explorer shows it: the explorer displays as its `widget`.
"""

import contextlib
import io
import itertools

import ipywidgets as widgets
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from course.device import being_graded


class Explorer:
    """Controls above a picture, redrawn whenever a control moves.

    A subclass creates its controls as public attributes, then calls `self._show(row, ...)`
    with them in rows; it implements `render() -> bytes` (the PNG of the current controls) and
    `stats()`, and overrides `fit_controls()` when some controls depend on others. After
    `_show`, `image` is the picture and `widget` the whole layout.
    """

    _holding = False  # True while controls move without redrawing (see hold)

    def _show(self, *rows) -> None:
        """Lay out rows of controls above the picture, draw it, and redraw on every change."""
        self.image = widgets.Image(format="png")
        self.widget = widgets.VBox([*(widgets.HBox(list(row)) for row in rows), self.image])
        self.redraw()
        for control in itertools.chain(*rows):
            control.observe(self._control_changed, names="value")

    def render(self) -> bytes:
        """The picture of the current controls, as PNG bytes."""
        raise NotImplementedError

    def stats(self) -> dict | list:
        """The numbers behind the current picture: {name: text}, or a list of such dicts, one
        per row of a table."""
        raise NotImplementedError

    def fit_controls(self) -> None:
        """Bring controls that depend on others in line (a range, a disabled slider) before
        drawing. Moving a control here does not trigger another redraw."""

    def redraw(self) -> None:
        """Fit the controls to each other and show the picture they describe: none while nbgrader
        executes the notebook, where no point comes from a picture and drawing them would be
        most of a graded notebook's ungraded time."""
        with self._held():
            self.fit_controls()
        if not being_graded():
            self.image.value = self.render()

    @contextlib.contextmanager
    def hold(self):
        """Move several controls at once with one redraw at the end, not one per control:

        with explorer.hold():
            explorer.layer.value, explorer.head.value = 1, 2
        """
        with self._held():
            yield
        self.redraw()

    @contextlib.contextmanager
    def _held(self):
        holding, self._holding = self._holding, True
        try:
            yield
        finally:
            self._holding = holding

    def _control_changed(self, change) -> None:
        if not self._holding:
            self.redraw()

    def _repr_mimebundle_(self, **kwargs):
        # A cell ending in the explorer shows its widget, in JupyterLab and Voilà alike.
        return self.widget._repr_mimebundle_(**kwargs)


def figure_png(figure: Figure) -> bytes:
    """The figure as PNG bytes: what every explorer's `render()` returns."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()


def message_png(text: str, figsize: tuple, dpi: int, **style) -> bytes:
    """A picture of one message (e.g. the error a student's function raised), drawn where the
    explorer's picture would be; `style` goes to matplotlib's `Figure.text`."""
    figure = Figure(figsize=figsize, dpi=dpi)
    FigureCanvasAgg(figure)
    figure.text(0.02, 0.5, text, va="center", **style)
    return figure_png(figure)


def slider(
    name: str, value: int, low: int, high: int, step: int = 1, width: str = "260px"
) -> widgets.IntSlider:
    """An IntSlider that redraws when released (not on every pixel of a drag)."""
    return widgets.IntSlider(
        value=value,
        min=low,
        max=high,
        step=step,
        description=name,
        continuous_update=False,
        layout=widgets.Layout(width=width),
    )
