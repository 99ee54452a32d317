"""Where the course's code runs: CUDA when there is a GPU, the CPU otherwise.

Triton kernels (days 7 and 9) need a GPU to compile. Without one, Triton can run
them through its interpreter, one NumPy operation at a time, when the environment
variable TRITON_INTERPRET=1 is set before the kernels are defined. `import course`
sets it for you, which is why notebooks import course before triton.
"""

import os
import random
import sys
import warnings
from importlib.util import find_spec

import numpy as np
import torch

# The spellings Triton's own getenv_bool accepts as "on" (compared case-insensitively).
_TRUTHY = {"1", "true", "on", "y", "yes"}


def has_gpu() -> bool:
    """True when PyTorch can see a CUDA GPU."""
    return torch.cuda.is_available()


def get_device() -> torch.device:
    """The device notebooks put tensors on: cuda when there is a GPU, else cpu."""
    return torch.device("cuda" if has_gpu() else "cpu")


def configure_triton() -> None:
    """Put Triton in interpreter mode on a machine without a GPU.

    Sets TRITON_INTERPRET=1 when there is no GPU and the variable is unset. A value
    the user set, even "0", is left alone. Triton reads the variable when a kernel is
    defined, so this must run before any `@triton.jit`; `import course` calls it.
    """
    if has_gpu() or "TRITON_INTERPRET" in os.environ:
        return
    os.environ["TRITON_INTERPRET"] = "1"
    if "triton" in sys.modules:
        warnings.warn(
            "triton was imported before course, so kernels defined before this point "
            "were set up to be compiled for a GPU, and this machine has none. "
            "Import course before triton (or set TRITON_INTERPRET=1 in the "
            "environment before starting Python) so Triton runs in interpreter mode.",
            stacklevel=2,
        )


def being_graded() -> bool:
    """Whether nbgrader is executing this notebook (it sets NBGRADER_EXECUTION): then cells that
    award no points (timings, training for a picture) run at their smallest sizes."""
    return bool(os.environ.get("NBGRADER_EXECUTION"))


def seed_everything(seed: int = 0) -> torch.Generator:
    """Seed Python's `random`, NumPy and PyTorch, and return a fresh seeded generator.

    Returns a CPU `torch.Generator` seeded with `seed`: pass it to `torch.randn(...,
    generator=g)` where a notebook wants a random stream of its own that later cells
    cannot disturb.
    """
    # bool is a subclass of int, but seed_everything(True) is a mistake, not a seed.
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise TypeError(f"seed must be an int, got {type(seed).__name__} ({seed!r})")
    seed = int(seed)
    # NumPy's legacy seeding takes 32-bit unsigned seeds only.
    if not 0 <= seed < 2**32:
        raise ValueError(f"seed must be in [0, 2**32), got {seed}")
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # seeds every CUDA device too, when there are any
    return torch.Generator().manual_seed(seed)


def _triton_mode() -> str:
    """How the Triton kernels of days 7 and 9 will run here, without importing triton to find out.
    The line names the days: on day 1 a student has not met Triton yet."""
    if find_spec("triton") is None:
        return "Triton not installed (days 7 and 9 need it)"
    if os.environ.get("TRITON_INTERPRET", "").lower() in _TRUTHY:
        return "Triton kernels (days 7 and 9) run in Triton's CPU interpreter"
    if has_gpu():
        return "Triton kernels (days 7 and 9) compiled for the GPU"
    return "Triton not usable (no GPU and TRITON_INTERPRET is off)"


def describe_device() -> str:
    """One line for a notebook's first cell, e.g. 'CPU (2 threads), Triton kernels (days 7 and 9)
    run in Triton's CPU interpreter'."""
    if has_gpu():
        where = f"CUDA: {torch.cuda.get_device_name()}"
    else:
        where = f"CPU ({torch.get_num_threads()} threads)"
    return f"{where}, {_triton_mode()}"
