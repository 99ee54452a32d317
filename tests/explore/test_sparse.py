"""course.explore.sparse: the sparse-pattern explorer draws the builders it is given."""

import io

import matplotlib

matplotlib.use("Agg")

import matplotlib.image as mpimg  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from course.explore.sparse import PATTERNS, PatternExplorer, parse_tokens  # noqa: E402
from course.reference import sparse  # noqa: E402


def pixels(png: bytes) -> np.ndarray:
    return mpimg.imread(io.BytesIO(png), format="png")


@pytest.fixture(scope="module")
def explorer():
    return PatternExplorer(length=32, layers=2)


@pytest.mark.parametrize("pattern", PATTERNS)
def test_every_pattern_renders_a_png(explorer, pattern):
    explorer.pattern.value = pattern
    png = explorer.render()
    assert png.startswith(b"\x89PNG") and explorer.error is None
    assert explorer.image.value == png  # the control updated the picture


def test_the_mask_follows_the_controls(explorer):
    explorer.pattern.value = "causal window"
    explorer.length.value, explorer.window.value = 16, 4
    assert torch.equal(explorer.mask(), sparse.sliding_window_mask(16, 4, causal=True))
    explorer.pattern.value = "global + local"
    explorer.global_tokens.value = "0, 7"
    assert torch.equal(explorer.mask(), sparse.global_local_mask(16, 4, [0, 7]))
    explorer.pattern.value, explorer.seed.value, explorer.num_random.value = "random", 3, 2
    assert torch.equal(explorer.mask(), sparse.random_mask(16, 2, torch.Generator().manual_seed(3)))


def test_changing_a_control_changes_the_picture(explorer):
    explorer.pattern.value, explorer.length.value, explorer.window.value = "sliding window", 32, 3
    before = explorer.image.value
    explorer.window.value = 9
    after = explorer.image.value
    assert before != after and not np.array_equal(pixels(before), pixels(after))
    explorer.layers.value = 4
    assert pixels(explorer.image.value).shape[1] > pixels(after).shape[1]  # more reach panels


def test_it_uses_the_builders_it_is_given():
    calls = []

    def my_window(L, window, causal=False):
        calls.append((L, window, causal))
        return torch.ones(L, L, dtype=torch.bool)

    explorer = PatternExplorer(length=16, sliding_window_mask=my_window, mask_density=lambda m: 0.5)
    assert calls == [(16, 8, False)]
    assert explorer.mask().all()


def test_a_failing_builder_is_shown_not_raised():
    def unfinished(L, window, causal=False):
        raise NotImplementedError()

    explorer = PatternExplorer(length=16, sliding_window_mask=unfinished)
    assert explorer.error.startswith("NotImplementedError")
    assert bytes(explorer.image.value).startswith(b"\x89PNG")
    explorer.pattern.value, explorer.stride.value = "strided", 100  # stride > L
    assert "stride must be <= L" in explorer.error
    explorer.pattern.value, explorer.global_tokens.value = "global + local", "0, x"
    assert "whole numbers" in explorer.error


def test_parse_tokens_and_unknown_builders():
    assert parse_tokens(" 0, 5 9,") == [0, 5, 9] and parse_tokens("") == []
    with pytest.raises(TypeError, match="unknown builders"):
        PatternExplorer(sliding_window=sparse.sliding_window_mask)


def test_displays_as_a_widget(explorer):
    bundle = explorer._repr_mimebundle_()
    assert "application/vnd.jupyter.widget-view+json" in bundle
