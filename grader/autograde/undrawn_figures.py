"""matplotlib's backend in a grading kernel (MPLBACKEND, see sandbox.kernel_environment): pyplot's
figures are made, as the notebook's code asks, but never drawn.

No point is awarded for a picture, and drawing one is most of what a graded notebook's teaching
cells cost: rasterizing a two-panel plot to PNG takes 0.3 s of the 0.5 s the plot costs. The
feedback a student gets shows "<Figure size ... >" where the picture was. Without this backend,
ipykernel would pick matplotlib_inline's, which draws every open figure after each cell.
"""

from IPython import get_ipython
from matplotlib._pylab_helpers import Gcf
from matplotlib.backend_bases import FigureManagerBase
from matplotlib.backends.backend_agg import FigureCanvasAgg

FigureCanvas = FigureCanvasAgg  # tight_layout and text sizes work as they do when drawn
FigureManager = FigureManagerBase


def show(*args, **kwargs) -> None:
    """plt.show(): the figures are done with; forgotten, not drawn."""
    Gcf.destroy_all()


# A figure never shown is forgotten after its cell, as the inline backend would after drawing it
# (else a notebook's 21st figure warns on stderr, and they all stay in memory).
if get_ipython() is not None:
    get_ipython().events.register("post_execute", Gcf.destroy_all)
