"""The selective-scan explorer: it renders PNGs from the scan it is given, its controls are public,
its "attention matrix" reproduces the scan, and a broken scan is shown instead of raised."""

import numpy as np
import pytest
import torch

import course  # noqa: F401
from course.explore.mamba_scan import ScanExplorer, toy_sequence
from course.reference import mamba_scan as scan

PNG = b"\x89PNG"


@pytest.fixture(scope="module")
def explorer():
    return ScanExplorer(length=24, state=4)


def test_renders_a_png(explorer):
    assert bytes(explorer.image.value).startswith(PNG) and explorer.error is None


def test_controls_change_the_picture(explorer):
    before = explorer.render()
    explorer.selectivity.value = 0.0
    assert explorer.image.value != before
    explorer.selectivity.value = 2.0


def test_scan_matrix_reproduces_the_scan(explorer):
    p = explorer.inputs()
    M = explorer.scan_matrix(p)
    assert M.shape == (4, 24, 24) and torch.equal(M, M.tril())
    y = scan.selective_scan(p["u"][None], p["delta"][None], p["A"], p["B"][None], p["C"][None])[0]
    torch.testing.assert_close(torch.einsum("dts,ds->dt", M, p["u"]), y)
    torch.testing.assert_close(
        M, scan.scan_attention_matrix(p["delta"][None], p["A"], p["B"][None], p["C"][None])[0]
    )


def test_hidden_state_is_the_recurrence(explorer):
    p = explorer.inputs()
    x = explorer.hidden_state(p)  # (dim, N, L)
    A_bar = torch.exp(p["delta"][:, None, :] * p["A"][:, :, None])
    b = p["delta"][:, None, :] * p["B"][None] * p["u"][:, None, :]
    torch.testing.assert_close(x, scan.linear_recurrence_sequential(A_bar, b))


def test_selectivity_zero_is_time_invariant(explorer):
    explorer.selectivity.value = 0.0
    delta = explorer.inputs()["delta"]
    assert torch.allclose(delta, delta[0, 0].expand_as(delta))
    explorer.selectivity.value = 2.0


def test_softmax_attention_rows_sum_to_one(explorer):
    weights = explorer.softmax_attention(explorer.inputs())
    torch.testing.assert_close(weights.sum(-1), torch.ones(24, dtype=torch.float64))
    assert torch.equal(weights == 0, ~torch.ones(24, 24, dtype=torch.bool).tril())


def test_uses_the_scan_it_is_given():
    calls = []

    def spy(*args, **kwargs):
        calls.append(args[0].shape)
        return scan.selective_scan(*args, **kwargs)

    ScanExplorer(spy, length=16, state=3)
    assert calls


def test_an_unfinished_scan_is_shown_not_raised():
    def stub(*args, **kwargs):
        raise NotImplementedError()

    explorer = ScanExplorer(stub, length=8)
    assert explorer.error.startswith("NotImplementedError") and bytes(
        explorer.image.value
    ).startswith(PNG)


def test_toy_sequence_is_seeded():
    np.testing.assert_array_equal(toy_sequence(16, 3).numpy(), toy_sequence(16, 3).numpy())
