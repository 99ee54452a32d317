"""Tests for course.explore.masks: the mask and its weights, side by side."""

import io

import matplotlib

matplotlib.use("Agg")  # before pyplot: these tests must never need a display

import ipywidgets as widgets  # noqa: E402
import matplotlib.image as mpimg  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from course.explore.masks import KINDS, MaskExplorer  # noqa: E402
from course.reference.masks import attention, causal_mask, padding_mask  # noqa: E402


def pixels(png: bytes) -> np.ndarray:
    return mpimg.imread(io.BytesIO(png), format="png")


def assert_picture_changed(before: bytes, after: bytes) -> None:
    before_pixels, after_pixels = pixels(before), pixels(after)
    assert before_pixels.shape != after_pixels.shape or not np.array_equal(
        before_pixels, after_pixels
    )


@pytest.fixture
def explorer():
    return MaskExplorer(attention, kind="both", lq=3, lk=6, length=4, max_len=8)


def test_explorer_shows_png_controls_and_displays_as_its_widget(explorer):
    png = bytes(explorer.image.value)
    assert png.startswith(b"\x89PNG") and png == explorer.render()
    assert isinstance(explorer.widget, widgets.VBox) and explorer.image in explorer.widget.children
    assert explorer._repr_mimebundle_() == explorer.widget._repr_mimebundle_()
    assert list(explorer.kind.options) == list(KINDS)


@pytest.mark.parametrize(
    "kind, lengths", [("causal", (3, 6)), ("padding", (6, 6)), ("both", (6, 6)), ("cross", (3, 6))]
)
def test_each_kind_builds_the_mask_it_names(explorer, kind, lengths):
    explorer.kind.value = kind
    assert explorer.lengths() == lengths
    mask = explorer.mask().expand(1, 1, *lengths)[0, 0]
    real = padding_mask(torch.tensor([4]), 6)[0]  # keys 0..3 are real
    expected = {
        "causal": causal_mask(3, 6),
        "padding": real.expand(6, 6),
        "both": causal_mask(6) & real,
        "cross": real.expand(3, 6),
    }[kind]
    assert torch.equal(mask, expected)
    weights = explorer.weights()
    assert weights.shape == lengths and (weights[~mask] == 0).all()


@pytest.mark.parametrize("control, value", [("kind", "cross"), ("lk", 7), ("length", 2), ("lq", 5)])
def test_moving_each_control_redraws_the_picture(explorer, control, value):
    if control == "lq":
        explorer.kind.value = "cross"  # lq is disabled in self-attention kinds
    before = explorer.image.value
    getattr(explorer, control).value = value
    assert_picture_changed(before, explorer.image.value)


def test_sliders_a_kind_does_not_use_are_disabled(explorer):
    explorer.kind.value = "causal"
    assert explorer.length.disabled and not explorer.lq.disabled
    explorer.kind.value = "padding"
    assert explorer.lq.disabled and not explorer.length.disabled


def test_real_keys_never_exceed_the_keys(explorer):
    explorer.lk.value = 2
    assert explorer.length.max == 2 and explorer.length.value == 2
    assert explorer.mask().shape[-1] == 2


def test_rows_with_nothing_to_see_are_pointed_out():
    explorer = MaskExplorer(attention, kind="causal", lq=6, lk=3)
    assert torch.equal(explorer.weights()[:3], torch.zeros(3, 3))
    assert "3 queries see no key" in MaskExplorer._notes(causal_mask(6, 3), explorer.weights())


def test_it_draws_the_functions_it_was_given():
    calls = []

    def top_left(lq, lk):
        calls.append((lq, lk))
        return torch.ones(lq, lk, dtype=torch.bool).tril()

    def spy(q, k, v, mask=None):
        calls.append("attention")
        return attention(q, k, v, mask)

    explorer = MaskExplorer(spy, causal_mask=top_left, kind="causal", lq=2, lk=5)
    assert (2, 5) in calls and "attention" in calls
    assert torch.equal(explorer.mask(), torch.ones(2, 5, dtype=torch.bool).tril())


def test_a_buggy_attention_still_draws_and_says_so():
    def nan_rows(q, k, v, mask=None):
        scores = (q @ k.transpose(-2, -1)).masked_fill(~mask, float("-inf"))
        exps = torch.exp(scores - scores.amax(-1, keepdim=True))
        weights = exps / exps.sum(-1, keepdim=True)
        return weights @ v, weights

    explorer = MaskExplorer(nan_rows, kind="causal", lq=5, lk=3)
    assert "NaN" in MaskExplorer._notes(explorer.mask(), explorer.weights())


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        ({"attention": torch.zeros(3)}, TypeError, "pass the function itself"),
        ({"causal_mask": "tril"}, TypeError, "causal_mask must be a function"),
        ({"kind": "sliding"}, ValueError, "kind must be one of 'causal'"),
        ({"lq": 0}, ValueError, r"lq must be in \[1, 16\]"),
        ({"lk": 20}, ValueError, r"lk must be in \[1, 16\]"),
        ({"length": 9}, ValueError, r"length must be in \[0, 8\]"),
        ({"lq": 2.5}, TypeError, "lq must be an int"),
        ({"max_len": 1}, ValueError, "max_len must be in"),
    ],
)
def test_bad_arguments_say_what_was_expected(kwargs, error, message):
    with pytest.raises(error, match=message):
        MaskExplorer(**{"attention": attention, **kwargs})


@pytest.mark.parametrize(
    "fn, error, message",
    [
        (
            lambda q, k, v, mask=None: attention(q, k, v, mask)[1],
            TypeError,
            r"return \(out, weights\)",
        ),
        (lambda q, k, v, mask=None: (q, q), ValueError, r"weights should be \(1, 1, Lq, Lk\)"),
    ],
)
def test_an_attention_with_the_wrong_result_is_explained(fn, error, message):
    with pytest.raises(error, match=message):
        MaskExplorer(fn, kind="cross", lq=3, lk=5)


def test_a_mask_builder_with_the_wrong_result_is_explained():
    with pytest.raises(
        ValueError, match=r"causal_mask should give a torch.bool mask of shape \(2, 5\)"
    ):
        MaskExplorer(
            attention,
            kind="causal",
            lq=2,
            lk=5,
            causal_mask=lambda lq, lk: torch.ones(lq, lk).tril(),
        )
