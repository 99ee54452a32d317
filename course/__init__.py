"""The course's importable package, used by every notebook.

It holds what the notebooks share: device selection, seeding, attention heatmaps and
their interactive explorers. Later days add library versions of earlier days'
building blocks, so a day never depends on a student's answers from an earlier one.

Import it before triton: on a machine without a GPU, importing course puts Triton in
interpreter mode (TRITON_INTERPRET=1), which Triton reads when kernels are defined.
"""

import linecache

from course import device

# First, so that any module imported below (later days add Triton kernels) already
# finds Triton in interpreter mode on a machine without a GPU.
device.configure_triton()

from course import _moved  # noqa: E402
from course.device import (  # noqa: E402
    being_graded,
    describe_device,
    get_device,
    has_gpu,
    seed_everything,
)
from course.explore.heatmap import AttentionExplorer, plot_attention  # noqa: E402

_moved.install()  # notebooks saved before course/ was arranged by role import the old names


def _not_implemented_yet(shell, etype, value, tb, tb_offset=None):
    """In a notebook, a stub's NotImplementedError is one line that says what to do, not a
    traceback. It is still an error (an `error` output, so Run All stops and nbgrader counts it).
    torch's own NotImplementedError (an operation a dtype lacks) keeps its whole traceback."""
    innermost = tb
    while innermost.tb_next is not None:
        innermost = innermost.tb_next
    code = innermost.tb_frame.f_code
    if not linecache.getline(code.co_filename, innermost.tb_lineno).lstrip().startswith("raise"):
        shell.showtraceback((etype, value, tb), tb_offset=tb_offset)
        return
    name = code.co_name
    message = (
        f"NotImplementedError: {name} is not implemented yet: replace `raise "
        f"NotImplementedError()` in {name} with your code, run that cell, then run this one again."
    )
    shell._showtraceback(etype, value, [message])


def _install_not_implemented_message() -> None:
    try:
        from IPython import get_ipython
    except ImportError:
        return
    shell = get_ipython()
    if shell is not None:
        shell.set_custom_exc((NotImplementedError,), _not_implemented_yet)


_install_not_implemented_message()

__all__ = [
    "AttentionExplorer",
    "being_graded",
    "describe_device",
    "get_device",
    "has_gpu",
    "plot_attention",
    "seed_everything",
]
