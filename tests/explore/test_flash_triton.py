"""course.explore.flash_triton: the tile schedule of FlashAttention, and its explorer."""

import io

import matplotlib

matplotlib.use("Agg")

import matplotlib.image as mpimg  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

import course  # noqa: F401,E402  (Triton in interpreter mode without a GPU)
from course.explore.flash_triton import (
    EXTRA,
    FULL,
    LOADS_CMAP,
    MASKED,
    SKIPPED,
    TileExplorer,
    tile_schedule,
    visited_fraction,
)  # noqa: E402


def pixels(png: bytes) -> np.ndarray:
    return mpimg.imread(io.BytesIO(png), format="png")


def brute_force(lq, lk, bm, bn, causal):
    """Visit a tile when some real query may attend some key of it; mask it when any of its
    (query < lq) x (key) entries is hidden; skip tiles past the program's causal stop."""
    n_m, n_n = -(-lq // bm), -(-lk // bn)
    grid = np.zeros((n_m, n_n), dtype=np.int8)
    for m in range(n_m):
        last = min((m + 1) * bm, lq) - 1  # the tile's last real query
        for n in range(n_n):
            if causal and n * bn > lk - lq + (m + 1) * bm - 1:
                continue
            hidden = False
            for i in range(m * bm, min((m + 1) * bm, lq)):
                for j in range(n * bn, (n + 1) * bn):
                    if j >= lk or (causal and j > lk - lq + i):
                        hidden = True
            grid[m, n] = MASKED if hidden else FULL
        del last
    return grid


@pytest.mark.parametrize(
    "lq, lk, bm, bn, causal",
    [
        (64, 64, 16, 16, False),
        (64, 64, 16, 16, True),
        (40, 64, 16, 16, True),
        (37, 53, 16, 32, True),
        (5, 80, 16, 16, True),
        (48, 48, 32, 16, True),
        (30, 30, 16, 64, False),
    ],
)
def test_schedule_matches_a_brute_force_count(lq, lk, bm, bn, causal):
    assert np.array_equal(
        tile_schedule(lq, lk, bm, bn, causal), brute_force(lq, lk, bm, bn, causal)
    )


def test_causal_skips_about_half_the_tiles():
    full, causal = tile_schedule(256, 256, 16, 16), tile_schedule(256, 256, 16, 16, causal=True)
    assert visited_fraction(full) == 1.0 and (full == FULL).all()
    assert abs(visited_fraction(causal) - 0.5) < 0.05
    assert (np.diag(causal) == MASKED).all() and (np.triu(causal, 1) == SKIPPED).all()


def test_bad_sizes_raise():
    with pytest.raises(ValueError, match="block_m"):
        tile_schedule(8, 8, 0, 16)


@pytest.fixture(scope="module")
def explorer():
    return TileExplorer(lq=40, lk=56)


def test_renders_a_png_that_follows_the_controls(explorer):
    png = explorer.render()
    assert png.startswith(b"\x89PNG") and explorer.error is None and explorer.image.value == png
    before = explorer.image.value
    explorer.causal.value = False
    assert explorer.image.value != before
    explorer.block_n.value = 32
    assert explorer.schedule().shape == (3, 2)
    explorer.program.value = 15  # past the last tile: drawn at the last one, no error
    assert explorer.error is None and pixels(explorer.image.value).ndim == 3


def test_it_checks_the_kernel_it_is_given():
    from course.reference.flash_triton import flash_attention_triton

    explorer = TileExplorer(lq=20, lk=30, flash_attention=flash_attention_triton)
    assert "max |lse - reference|" in explorer.check
    error = float(explorer.check.rsplit("=", 1)[1])
    assert error < 1e-2  # float32 here; TF32 tl.dot on a GPU

    def broken(q, k, v, causal=False):
        raise NotImplementedError()

    explorer = TileExplorer(lq=20, lk=30, flash_attention=broken)
    assert "raised NotImplementedError" in explorer.check


def test_widget_displays():
    explorer = TileExplorer(lq=8, lk=8)
    assert "application/vnd.jupyter.widget-view+json" in explorer._repr_mimebundle_()
    assert isinstance(explorer.schedule(), np.ndarray) and torch.is_tensor(
        torch.as_tensor(explorer.schedule())
    )


def shows_colour(png: bytes, rgb) -> bool:
    return bool((np.abs(pixels(png)[..., :3] - np.asarray(rgb)) < 0.02).all(-1).any())


def test_it_draws_the_tiles_the_kernel_really_loaded():
    from course.reference.flash_triton import flash_attention_triton

    explorer = TileExplorer(lq=48, lk=48, causal=True, flash_attention=flash_attention_triton)
    scheduled = explorer.schedule() != SKIPPED
    assert np.array_equal(explorer.loaded, scheduled)  # the reference skips what it should
    assert not shows_colour(explorer.image.value, LOADS_CMAP(EXTRA)[:3])

    def skips_no_tile(q, k, v, causal=False):  # every program loops over every key tile
        return flash_attention_triton(q, k, v, causal=False)

    explorer = TileExplorer(lq=48, lk=48, causal=True, flash_attention=skips_no_tile)
    assert explorer.loaded.all()  # the upper triangle too, which the schedule skips
    assert np.array_equal(np.triu(explorer.loaded, 1), np.triu(~scheduled, 1))
    assert shows_colour(explorer.image.value, LOADS_CMAP(EXTRA)[:3])
    assert explorer.stats()["loaded by your kernel"] == "100%"
