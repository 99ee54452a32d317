"""The course's importable package, used by every notebook.

It holds what the notebooks share: device selection, seeding, attention heatmaps and
their interactive explorers. Later days add library versions of earlier days'
building blocks, so a day never depends on a student's answers from an earlier one.

Import it before triton: on a machine without a GPU, importing course puts Triton in
interpreter mode (TRITON_INTERPRET=1), which Triton reads when kernels are defined.
"""

from course import device

# First, so that any module imported below (later days add Triton kernels) already
# finds Triton in interpreter mode on a machine without a GPU.
device.configure_triton()

from course.device import describe_device, get_device, has_gpu, seed_everything  # noqa: E402
from course.widgets import AttentionExplorer, plot_attention  # noqa: E402

__all__ = [
    "AttentionExplorer",
    "describe_device",
    "get_device",
    "has_gpu",
    "plot_attention",
    "seed_everything",
]
