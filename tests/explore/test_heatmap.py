"""Tests for course.explore.heatmap: the attention heatmap and its interactive explorer."""

import io
import warnings

import matplotlib

matplotlib.use("Agg")  # before pyplot: these tests must never need a display

import matplotlib.image as mpimg  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from matplotlib.axes import Axes  # noqa: E402
from matplotlib.colors import LogNorm  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.patches import Rectangle  # noqa: E402

from course import AttentionExplorer, has_gpu, plot_attention  # noqa: E402
from course.explore.heatmap import NO_QUERY  # noqa: E402

QUERIES = ["the", "cat", "sat", "down"]
KEYS = ["<s>", "the", "cat", "sat", "down"]


def softmax_weights(*shape: int, seed: int = 0) -> torch.Tensor:
    """Random attention weights of `shape`, each row a distribution over keys."""
    generator = torch.Generator().manual_seed(seed)
    return (2 * torch.randn(*shape, generator=generator)).softmax(dim=-1)


def causal_weights(length: int) -> torch.Tensor:
    """(length, length) weights whose upper triangle is exactly zero, as masking makes it."""
    scores = torch.randn(length, length, generator=torch.Generator().manual_seed(1))
    allowed = torch.ones(length, length, dtype=torch.bool).tril()
    return scores.masked_fill(~allowed, float("-inf")).softmax(dim=-1)


def pixels(png: bytes) -> np.ndarray:
    return mpimg.imread(io.BytesIO(png), format="png")


def assert_picture_changed(before: bytes, after: bytes) -> None:
    assert before != after
    before_pixels, after_pixels = pixels(before), pixels(after)
    assert before_pixels.shape != after_pixels.shape or not np.array_equal(
        before_pixels, after_pixels
    ), "the PNG bytes changed but the picture did not"


def tick_texts(labels) -> list[str]:
    return [label.get_text() for label in labels]


def drawn_values(ax: Axes) -> np.ndarray:
    """The numbers behind the heatmap's colours, as an (Lq, Lk) array."""
    return np.ma.getdata(ax.collections[0].get_array())


# plot_attention


def test_plot_attention_labels_queries_and_keys():
    ax = plot_attention(softmax_weights(4, 5), QUERIES, KEYS)
    assert isinstance(ax, Axes)
    assert tick_texts(ax.get_yticklabels()) == QUERIES
    assert tick_texts(ax.get_xticklabels()) == KEYS
    assert ax.get_ylabel() == "query"
    assert ax.get_xlabel() == "key"


def test_plot_attention_draws_the_weights_it_was_given():
    weights = softmax_weights(4, 5)
    ax = plot_attention(weights, QUERIES, KEYS)
    np.testing.assert_allclose(drawn_values(ax), weights.numpy())


def test_plot_attention_index_picks_the_matrix():
    weights = softmax_weights(2, 3, 4, 5)
    ax = plot_attention(weights, QUERIES, KEYS, index=(1, 2))
    np.testing.assert_allclose(drawn_values(ax), weights[1, 2].numpy())


def test_plot_attention_default_index_is_the_first_matrix():
    weights = softmax_weights(3, 4, 5)
    ax = plot_attention(weights, QUERIES, KEYS)
    np.testing.assert_allclose(drawn_values(ax), weights[0].numpy())


def test_plot_attention_draws_on_the_given_axes():
    figure = Figure()
    ax = figure.add_subplot()
    assert plot_attention(softmax_weights(4, 5), ax=ax, title="head 0") is ax
    assert ax.get_title() == "head 0"


def test_plot_attention_leaves_pyplot_alone():
    figures_before = plt.get_fignums()
    plot_attention(softmax_weights(4, 5))
    assert plt.get_fignums() == figures_before


@pytest.mark.parametrize(
    ("scale", "expected_limits"),
    [("linear", (0.0, 1.0)), ("auto", None)],
)
def test_plot_attention_colour_scale(scale, expected_limits):
    weights = softmax_weights(4, 5)
    mesh = plot_attention(weights, scale=scale).collections[0]
    if expected_limits is None:
        expected_limits = (weights.min().item(), weights.max().item())
    assert mesh.norm.vmin == pytest.approx(expected_limits[0])
    assert mesh.norm.vmax == pytest.approx(expected_limits[1])


def test_plot_attention_log_scale_survives_exact_zeros():
    weights = causal_weights(6)
    assert (weights == 0).any()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ax = plot_attention(weights, scale="log")
        ax.figure.savefig(io.BytesIO(), format="png")
    mesh = ax.collections[0]
    assert isinstance(mesh.norm, LogNorm)
    colours = mesh.to_rgba(mesh.get_array())  # (Lq, Lk, 4)
    # Not the blank "bad" colour that LogNorm gives values <= 0.
    assert (colours[weights.numpy() == 0] == mesh.cmap(0.0)).all()


def test_plot_attention_log_scale_annotates_true_values():
    scores = torch.tensor([[0.5, -2.0], [0.0, 1.0]])
    ax = plot_attention(scores, scale="log", annotate=True)
    assert tick_texts(ax.texts) == ["0.50", "-2.00", "0.00", "1.00"]


def test_plot_attention_annotates_small_matrices_only_by_default():
    assert len(plot_attention(softmax_weights(4, 5)).texts) == 4 * 5
    assert len(plot_attention(softmax_weights(9, 9)).texts) == 0
    assert len(plot_attention(softmax_weights(9, 9), annotate=True).texts) == 9 * 9


@pytest.mark.parametrize(("row", "expected_row"), [(2, 2), (-1, 3)])
def test_plot_attention_outlines_the_highlighted_query(row, expected_row):
    ax = plot_attention(softmax_weights(4, 5), highlight_query=row)
    outlines = [patch for patch in ax.patches if isinstance(patch, Rectangle)]
    assert len(outlines) == 1
    assert outlines[0].get_xy() == (0, expected_row)
    assert outlines[0].get_width() == 5


def test_plot_attention_accepts_numpy_and_tensors_that_require_grad():
    weights = softmax_weights(4, 5).requires_grad_()
    plot_attention(weights * 1.0, QUERIES, KEYS)  # non-leaf, still requires grad
    plot_attention(weights.detach().numpy(), QUERIES, KEYS)
    plot_attention(weights.detach().to(torch.bfloat16), QUERIES, KEYS)


def test_plot_attention_accepts_label_strings_and_token_id_tensors():
    ax = plot_attention(softmax_weights(4, 5), "abcd", torch.tensor([7, 8, 9, 10, 11]))
    assert tick_texts(ax.get_yticklabels()) == ["a", "b", "c", "d"]
    assert tick_texts(ax.get_xticklabels()) == ["7", "8", "9", "10", "11"]


def test_plot_attention_rejects_wrong_number_of_query_labels():
    with pytest.raises(
        ValueError, match=r"query_labels must have one label per query row \(4\), got 3"
    ):
        plot_attention(softmax_weights(4, 5), QUERIES[:3], KEYS)


def test_plot_attention_rejects_wrong_number_of_key_labels():
    with pytest.raises(
        ValueError, match=r"key_labels must have one label per key column \(5\), got 4"
    ):
        plot_attention(softmax_weights(4, 5), QUERIES, KEYS[:4])


def test_plot_attention_rejects_unknown_scale():
    with pytest.raises(ValueError, match="scale must be one of 'linear', 'auto', 'log', got 'lin'"):
        plot_attention(softmax_weights(4, 5), scale="lin")


def test_plot_attention_rejects_one_dimensional_weights():
    with pytest.raises(
        ValueError, match=r"at least 2 dims, shape \(\.\.\., Lq, Lk\), got shape \(5,\)"
    ):
        plot_attention(softmax_weights(5))


def test_plot_attention_rejects_empty_weights():
    with pytest.raises(ValueError, match=r"no empty dims, got shape \(0, 5\)"):
        plot_attention(torch.zeros(0, 5))


def test_plot_attention_rejects_lists():
    with pytest.raises(TypeError, match="torch.Tensor or numpy.ndarray .* got list"):
        plot_attention([[0.5, 0.5], [1.0, 0.0]])


def test_plot_attention_rejects_index_of_wrong_length():
    with pytest.raises(ValueError, match=r"expected 2 entries, got 1"):
        plot_attention(softmax_weights(2, 3, 4, 5), index=(1,))


def test_plot_attention_rejects_index_that_is_not_a_tuple():
    with pytest.raises(
        TypeError, match="index must be a tuple of ints, one per leading dim, got float"
    ):
        plot_attention(softmax_weights(3, 4, 5), index=1.0)


def test_plot_attention_accepts_an_int_index_for_one_leading_dim():
    weights = softmax_weights(3, 4, 5)
    np.testing.assert_allclose(drawn_values(plot_attention(weights, index=2)), weights[2].numpy())


def test_plot_attention_rejects_index_out_of_range():
    with pytest.raises(ValueError, match=r"index\[1\]=3 is out of range for a dim of size 3"):
        plot_attention(softmax_weights(2, 3, 4, 5), index=(1, 3))


def test_plot_attention_rejects_highlight_out_of_range():
    with pytest.raises(ValueError, match=r"highlight_query=4 is out of range for a dim of size 4"):
        plot_attention(softmax_weights(4, 5), highlight_query=4)


def test_plot_attention_rejects_colour_bar_axes_without_axes():
    cbar_ax = Figure().add_subplot()
    with pytest.raises(ValueError, match="cbar_ax needs ax"):
        plot_attention(softmax_weights(4, 5), cbar_ax=cbar_ax)


# AttentionExplorer


@pytest.mark.parametrize(
    ("shape", "batches", "heads"),
    [
        ((4, 5), 1, 1),
        ((3, 4, 5), 1, 3),
        ((2, 3, 4, 5), 2, 3),
        ((2, 2, 3, 4, 5), 4, 3),  # extra leading dims fold into batch
    ],
)
def test_explorer_maps_leading_dims_onto_batch_and_heads(shape, batches, heads):
    explorer = AttentionExplorer(softmax_weights(*shape))
    assert explorer.weights.shape == (batches, heads, 4, 5)
    assert explorer.weights.dtype == np.float32
    assert (explorer.batch.min, explorer.batch.max) == (0, batches - 1)
    assert (explorer.head.min, explorer.head.max) == (0, heads - 1)
    assert explorer.batch.disabled == (batches == 1)
    assert explorer.head.disabled == (heads == 1)


def test_explorer_folds_extra_dims_in_order():
    weights = softmax_weights(2, 2, 3, 4, 5)
    explorer = AttentionExplorer(weights)
    np.testing.assert_array_equal(explorer.weights[3, 1], weights[1, 1, 1].numpy())


def test_explorer_lists_every_query_row():
    explorer = AttentionExplorer(softmax_weights(4, 5), QUERIES, KEYS)
    assert explorer.query.label == "none"
    assert list(explorer.query.options)[1:] == [
        ("0: the", 0),
        ("1: cat", 1),
        ("2: sat", 2),
        ("3: down", 3),
    ]


def test_explorer_shows_png_in_its_layout():
    explorer = AttentionExplorer(softmax_weights(2, 3, 4, 5), QUERIES, KEYS, title="layer 0")
    assert explorer.image.format == "png"
    assert bytes(explorer.image.value).startswith(b"\x89PNG")
    assert explorer.image.value == explorer.render()
    controls, image = explorer.widget.children
    assert image is explorer.image
    assert list(controls.children) == [
        explorer.batch,
        explorer.head,
        explorer.scale,
        explorer.query,
    ]


def test_explorer_displays_as_its_widget():
    explorer = AttentionExplorer(softmax_weights(4, 5))
    bundle = explorer._repr_mimebundle_()
    assert (
        bundle["application/vnd.jupyter.widget-view+json"]["model_id"] == explorer.widget.model_id
    )


@pytest.mark.parametrize(
    ("control", "new_value"),
    [("batch", 1), ("head", 2), ("scale", "auto"), ("scale", "log"), ("query", 3)],
)
def test_moving_a_control_redraws_the_picture(control, new_value):
    explorer = AttentionExplorer(softmax_weights(2, 3, 4, 5), QUERIES, KEYS)
    before = explorer.image.value
    getattr(explorer, control).value = new_value
    assert_picture_changed(before, explorer.image.value)


def test_highlighting_a_query_adds_a_bar_chart_below():
    explorer = AttentionExplorer(softmax_weights(4, 5), QUERIES, KEYS)
    heatmap_only = pixels(explorer.image.value)
    explorer.query.value = 1
    with_row = pixels(explorer.image.value)
    assert with_row.shape[0] > heatmap_only.shape[0]
    explorer.query.value = NO_QUERY
    np.testing.assert_array_equal(pixels(explorer.image.value), heatmap_only)


def test_explorer_log_scale_with_masked_zeros_does_not_warn():
    explorer = AttentionExplorer(causal_weights(6))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        explorer.scale.value = "log"
        explorer.query.value = 0  # a row that is all zeros but one
    assert bytes(explorer.image.value).startswith(b"\x89PNG")


def test_explorer_survives_rows_of_nan():
    # A softmax over a fully masked row gives NaN: a bug students must be able to look at.
    weights = causal_weights(5)
    weights[2] = float("nan")
    explorer = AttentionExplorer(weights)
    explorer.query.value = 2
    explorer.scale.value = "log"
    assert bytes(explorer.image.value).startswith(b"\x89PNG")


def test_explorer_accepts_tensors_that_require_grad():
    weights = softmax_weights(2, 4, 5).requires_grad_()
    explorer = AttentionExplorer(weights * 1.0)
    np.testing.assert_array_equal(explorer.weights[0, 1], weights[1].detach().numpy())


@pytest.mark.gpu
@pytest.mark.skipif(not has_gpu(), reason="needs a CUDA GPU")
def test_explorer_accepts_cuda_tensors():
    explorer = AttentionExplorer(softmax_weights(2, 4, 5).cuda().half())
    assert explorer.weights.dtype == np.float32


def test_explorer_rejects_wrong_number_of_labels():
    with pytest.raises(
        ValueError, match=r"key_labels must have one label per key column \(5\), got 4"
    ):
        AttentionExplorer(softmax_weights(3, 4, 5), QUERIES, KEYS[:4])


def test_explorer_rejects_one_dimensional_weights():
    with pytest.raises(ValueError, match=r"at least 2 dims.*got shape \(5,\)"):
        AttentionExplorer(softmax_weights(5))


# ModelExplorer

from course.explore.heatmap import ModelExplorer, attention_stats  # noqa: E402, I001

TOKENS = ["a", "b", "c", "d"]


def model_weights(layers=2, heads=3, length=4):
    return [softmax_weights(heads, length, length, seed=layer) for layer in range(layers)]


def test_model_explorer_stacks_layers_and_opens_on_the_grid():
    explorer = ModelExplorer(model_weights(), TOKENS, TOKENS, title="toy")
    assert explorer.weights.shape == (2, 1, 3, 4, 4)
    assert (explorer.layer.min, explorer.layer.max) == (0, 1)
    assert explorer.view.value == "grid" and explorer.head.disabled
    assert bytes(explorer.image.value).startswith(b"\x89PNG")
    assert explorer.image.value == explorer.render()


@pytest.mark.parametrize(
    ("control", "new_value"), [("layer", 1), ("view", "single"), ("scale", "log")]
)
def test_model_explorer_controls_change_the_picture(control, new_value):
    explorer = ModelExplorer(model_weights(), TOKENS, TOKENS)
    before = explorer.image.value
    getattr(explorer, control).value = new_value
    assert_picture_changed(before, explorer.image.value)


def test_model_explorer_single_view_steps_through_heads():
    explorer = ModelExplorer(model_weights(), TOKENS, TOKENS, view="single")
    assert not explorer.head.disabled
    before = explorer.image.value
    explorer.head.value = 2
    assert_picture_changed(before, explorer.image.value)
    grid = pixels(explorer.image.value)
    explorer.view.value = "grid"
    assert explorer.head.disabled
    assert pixels(explorer.image.value).shape[1] > grid.shape[1]  # three heads side by side


def test_model_explorer_batches_and_titles_with_stats():
    weights = [softmax_weights(2, 3, 4, 4, seed=s) for s in range(2)]  # (B, H, L, L) per layer
    explorer = ModelExplorer(weights)
    assert explorer.weights.shape == (2, 2, 3, 4, 4)
    before = explorer.image.value
    explorer.batch.value = 1
    assert_picture_changed(before, explorer.image.value)
    assert explorer.head_title(1, 2).startswith("L1 H2: entropy ")


def test_attention_stats_entropy_and_distance():
    one_hot_previous = torch.zeros(1, 4, 4)
    one_hot_previous[0, 0, 0] = 1
    one_hot_previous[0, torch.arange(1, 4), torch.arange(0, 3)] = 1  # each query looks one back
    uniform = torch.full((1, 4, 4), 0.25)
    entropy, distance = attention_stats(torch.cat([one_hot_previous, uniform]))
    np.testing.assert_allclose(entropy, [0.0, np.log(4)], atol=1e-6)
    np.testing.assert_allclose(distance[0], 0.75)  # 0, 1, 1, 1
    # bottom-right: one query at position 3 over 4 keys, all weight on key 0: distance 3
    entropy, distance = attention_stats(torch.tensor([[[1.0, 0, 0, 0]]]))
    np.testing.assert_allclose(distance, [3.0])


def test_model_explorer_rejects_bad_input():
    with pytest.raises(TypeError, match="non-empty list"):
        ModelExplorer(softmax_weights(3, 4, 4))
    with pytest.raises(TypeError, match="non-empty list"):
        ModelExplorer([])
    with pytest.raises(ValueError, match="every layer's weights must have one shape"):
        ModelExplorer([softmax_weights(3, 4, 4), softmax_weights(2, 4, 4)])
    with pytest.raises(ValueError, match=r"\(H, Lq, Lk\) or \(B, H, Lq, Lk\)"):
        ModelExplorer([softmax_weights(4, 4)])
    with pytest.raises(ValueError, match="view must be one of"):
        ModelExplorer(model_weights(), view="table")
    with pytest.raises(ValueError, match="one label per query row"):
        ModelExplorer(model_weights(), TOKENS[:3])
