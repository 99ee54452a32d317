"""course.explore.online_softmax: the step-through explorer renders, follows its controls and
uses the online_softmax_stats it is given."""

import io
import math

import matplotlib

matplotlib.use("Agg")

import matplotlib.image as mpimg  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from course.explore.online_softmax import OnlineSoftmaxExplorer  # noqa: E402
from course.reference import online_softmax as flash  # noqa: E402


def pixels(png: bytes) -> np.ndarray:
    return mpimg.imread(io.BytesIO(png), format="png")


@pytest.fixture(scope="module")
def explorer():
    return OnlineSoftmaxExplorer(length=24, block_size=6)


def test_it_renders_a_png_and_the_image_follows_the_controls(explorer):
    png = explorer.render()
    assert png.startswith(b"\x89PNG") and explorer.error is None
    before = explorer.image.value
    explorer.step.value = 3
    assert explorer.image.value != before
    assert (
        not np.array_equal(pixels(before), pixels(explorer.image.value))
        or pixels(before).shape != pixels(explorer.image.value).shape
    )
    for control, value in ((explorer.causal, False), (explorer.query_block, 2), (explorer.seed, 5)):
        before = explorer.image.value
        control.value = value
        assert explorer.image.value != before


def test_the_state_is_the_running_max_sum_and_rescale(explorer):
    explorer.length.value, explorer.block_size.value, explorer.seed.value = 24, 6, 1
    x = explorer.scores()
    for t in range(1, 5):
        explorer.step.value = t
        state = explorer.state()
        seen = x[: t * 6]
        assert math.isclose(state["m"], seen.max().item())
        assert math.isclose(state["l"], torch.exp(seen - seen.max()).sum().item())
        if t > 1:
            assert math.isclose(
                state["rescale"], math.exp(x[: (t - 1) * 6].max().item() - seen.max().item())
            )
    explorer.step.value = 0
    assert explorer.state()["m"] == float("-inf") and explorer.state()["l"] == 0


def test_the_tile_schedule_skips_above_the_diagonal(explorer):
    explorer.length.value, explorer.block_size.value = 24, 6
    explorer.causal.value, explorer.query_block.value, explorer.step.value = True, 1, 2
    grid = explorer.tiles()
    assert grid.shape == (4, 4)
    assert ((grid == 3) == np.triu(np.ones((4, 4), dtype=bool), 1)).all()  # skipped tiles
    assert grid[1, 0] == 1 and grid[1, 1] == 2  # visited, computing now
    explorer.causal.value = False
    assert not (explorer.tiles() == 3).any()


def test_the_step_slider_follows_the_number_of_blocks(explorer):
    explorer.length.value, explorer.block_size.value = 30, 7
    assert explorer.step.max == 5 and explorer.query_block.max == 4


def test_it_uses_the_function_it_is_given_and_reports_errors():
    calls = []

    def mine(x, block_size, dim=-1):
        calls.append(block_size)
        return flash.online_softmax_stats(x, block_size, dim)

    OnlineSoftmaxExplorer(mine, length=16, block_size=4).render()
    assert calls and set(calls) == {4}

    def stub(x, block_size, dim=-1):
        raise NotImplementedError()

    broken = OnlineSoftmaxExplorer(stub, length=16, block_size=4)
    assert broken.error is not None and broken.render().startswith(b"\x89PNG")
