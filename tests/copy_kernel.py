"""Triton kernels that several tests launch, kept in a file of their own (Triton reads a kernel's
source from its file): the grader's watch tests import them, and so does the plain-launch script
a day test runs in a subprocess (with tests/ put on its path)."""

import course  # noqa: F401  (without a GPU, Triton in interpreter mode before triton is imported)

# isort: split
import triton
import triton.language as tl


@triton.jit
def copy_kernel(x_ptr, y_ptr, n, BLOCK: tl.constexpr, MASKED: tl.constexpr):
    # y[:n] = x[:n] in one block of BLOCK lanes; unmasked, the lanes past n stray out of bounds
    offsets = tl.arange(0, BLOCK)
    inside = offsets < n
    if MASKED:
        tl.store(y_ptr + offsets, tl.load(x_ptr + offsets, mask=inside), mask=inside)
    else:
        tl.store(y_ptr + offsets, tl.load(x_ptr + offsets))
