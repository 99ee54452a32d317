"""grader/harness/triton_watch.py in the interpreter: a load or store outside the tensor it
belongs to is masked off and reported, wherever the launch's other tensors happen to lie."""

import numpy as np
import pytest
import torch

import course.reference.flash_triton  # first: Triton in interpreter mode without a GPU

if not course.reference.flash_triton.interpreted():
    pytest.skip("the watch checks bounds in Triton's interpreter only", allow_module_level=True)

from copy_kernel import copy_kernel  # noqa: E402

from grader.harness.triton_watch import _inside, out_of_bounds_message, watch_kernels  # noqa: E402


def neighbours():
    """y and then x, side by side in one buffer: y's stray lanes land in x."""
    buffer = torch.full((16,), -1.0)
    y, x = buffer[:5], buffer[5:10]
    x.copy_(torch.arange(5.0))
    return x, y, buffer


def test_a_store_past_the_end_into_the_next_tensor_is_out_of_bounds():
    x, y, buffer = neighbours()
    with watch_kernels() as watch:
        copy_kernel[(1,)](x, y, 5, BLOCK=8, MASKED=False)
    assert watch.out_of_bounds == ("load", 3, "x_ptr")  # x's lanes 5-7 lie past both tensors
    assert torch.equal(x, torch.arange(5.0))  # y's lanes 5-7 (x's memory) were masked off
    assert torch.equal(y, torch.arange(5.0))
    assert torch.equal(buffer[10:], torch.full((6,), -1.0))


def test_a_masked_copy_between_neighbours_is_in_bounds():
    x, y, _ = neighbours()
    with watch_kernels() as watch:
        copy_kernel[(1,)](x, y, 5, BLOCK=8, MASKED=True)
    assert watch.out_of_bounds is None and watch.launches == 1
    assert torch.equal(y, x)


def test_the_message_names_the_argument_that_strayed():
    x, y, _ = neighbours()
    with watch_kernels() as watch:
        copy_kernel[(1,)](x[3:], y, 0, BLOCK=8, MASKED=False)  # x[3:] holds 2 of the 8 lanes
    message = out_of_bounds_message("copy", watch)
    assert message.startswith("copy: a load from x_ptr touched 6 element(s) outside it")


def test_an_access_that_misses_every_tensor_names_the_nearest():
    extents = [(0, 40, "q_ptr"), (100, 140, "k_ptr")]  # bytes, 4-byte floats
    lanes = np.arange(140, 172, 4)  # just past the end of k
    ok, tensor = _inside(lanes, np.ones(8, bool), 4, extents)
    assert not ok.any() and tensor == "k_ptr"
