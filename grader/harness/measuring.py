"""Measurements of how the student's code runs, wherever it runs.

Some checks watch the student's call rather than its result: how many lines of their Python ran,
the largest tensor it allocated, the matrix products it did, the Triton kernels it launched. A
probe is a context manager that watches the code run inside it. When the autograder calls the
student's function in the student's kernel (grader/autograde/remote.py), the probe must watch
there, so a check measures with

    with measuring(PROBE, probe.absorb), probe:
        impl(x)

PROBE names the probe's factory as 'module:name' (called without arguments, in the kernel too);
what the factory yields must keep what it saw in public attributes of plain data (numbers,
strings, tensors, lists of them), which the kernel sends back after each call and `absorb`
adds to the probe here. Without a kernel, no call is remote and `absorb` is never called.

A tensor that came back from the kernel also says where its data lay there (`address`) and what
the student's autograd.Function saved for backward (`saved_tensors`).
"""

import contextlib
import contextvars

import torch

# probe factory ('module:name') -> what to do with each report of it from the kernel
_collecting = contextvars.ContextVar("collecting", default={})


@contextlib.contextmanager
def measuring(probe: str, absorb):
    """Inside the block, every call sent to the student's kernel is also watched there by
    `probe`, and `absorb` is called with what it saw (a dict of its public attributes)."""
    token = _collecting.set({**_collecting.get(), probe: absorb})
    try:
        yield
    finally:
        _collecting.reset(token)


def collecting() -> dict:
    """{probe: absorb} of the enclosing `measuring` blocks."""
    return _collecting.get()


def plain_state(value) -> dict:
    """The public attributes of `value` that are plain data: what a probe reports."""
    return {
        name: attribute
        for name, attribute in getattr(value, "__dict__", {}).items()
        if not name.startswith("_") and is_plain(attribute)
    }


def is_plain(value) -> bool:
    if isinstance(value, (list, tuple)):
        return all(is_plain(v) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and is_plain(v) for k, v in value.items())
    return value is None or isinstance(value, (bool, int, float, str, torch.Tensor))


def address(tensor: torch.Tensor) -> int:
    """Where `tensor`'s data starts: in the student's kernel for a tensor that came from there,
    so that a check can tell a view of the student's buffer from a copy."""
    return getattr(tensor, "kernel_address", None) or tensor.data_ptr()


def saved_tensors(out: torch.Tensor):
    """What the student's autograd.Function saved for backward (ctx.save_for_backward) when it
    made `out` (past copies between devices), or None when `out` has no graph."""
    if hasattr(out, "kernel_saved"):  # made in the student's kernel: its graph stayed there
        return tuple(out.kernel_saved)
    return graph_saved(out)


def graph_saved(out: torch.Tensor):
    node = out.grad_fn
    while node is not None and type(node).__name__.startswith("ToCopyBackward"):
        node = node.next_functions[0][0]
    return None if node is None else tuple(getattr(node, "saved_tensors", ()))
