"""course.explore.linear_attention: the implied attention matrix next to softmax, and the recurrent state."""

import matplotlib

matplotlib.use("Agg")

import pytest  # noqa: E402
import torch  # noqa: E402

from course.explore.linear_attention import VIEWS, LinearExplorer, implied_attention  # noqa: E402
from course.reference import linear_attention as la  # noqa: E402


@pytest.fixture(scope="module")
def explorer():
    return LinearExplorer(length=16)


@pytest.mark.parametrize("view", VIEWS)
@pytest.mark.parametrize("causal", [False, True])
def test_every_view_renders_a_png(explorer, view, causal):
    explorer.view.value, explorer.causal.value = view, causal
    png = explorer.render()
    assert png.startswith(b"\x89PNG") and explorer.error is None
    assert explorer.image.value == png


def test_implied_attention_rows_sum_to_one_and_respect_causality(explorer):
    explorer.view.value, explorer.causal.value = "elu + 1", True
    implied, exact = explorer.matrices()
    torch.testing.assert_close(implied.sum(-1), torch.ones(16, dtype=torch.float64))
    assert (implied.triu(1) == 0).all() and (exact.triu(1) == 0).all()


def test_more_favor_features_bring_the_matrix_closer_to_softmax(explorer):
    explorer.view.value, explorer.causal.value = "FAVOR+ (orthogonal)", False
    errors = {}
    for m in (2, 256):
        explorer.num_features.value = m
        errors[m] = 0.0
        for seed in range(2):
            explorer.seed.value = seed
            implied, exact = explorer.matrices()
            errors[m] += (implied - exact).abs().sum().item()
    assert errors[256] < errors[2]


def test_the_state_fills_up_step_by_step(explorer):
    explorer.view.value = "recurrent state"
    explorer.seed.value = 0
    explorer.step.value = 1
    one = explorer.state()
    explorer.step.value = 16
    q, k, v, _ = explorer.inputs()
    torch.testing.assert_close(explorer.state(), la.elu_feature_map(k).T @ v)
    assert not torch.allclose(one, explorer.state())


def test_a_raising_student_function_is_drawn_not_raised():
    def broken(x):
        raise RuntimeError("not yet")

    ex = LinearExplorer(length=8, elu_feature_map=broken)
    assert ex.render().startswith(b"\x89PNG") and "not yet" in ex.error


def test_unknown_functions_are_rejected():
    with pytest.raises(ValueError, match="unknown"):
        LinearExplorer(softmax=lambda x: x)


def test_implied_attention_helper():
    phi = torch.ones(3, 2)
    torch.testing.assert_close(implied_attention(phi, phi), torch.full((3, 3), 1 / 3))
