"""course.explore.base: every explorer shares one display path, one redraw path and public
statistics, and the gallery uses nothing but those."""

import ast
import inspect

import ipywidgets as widgets
import pytest

from course.explore import base, gallery
from course.explore.capstone import MemoryExplorer
from course.explore.flash_triton import TileExplorer
from course.explore.heatmap import AttentionExplorer, ModelExplorer
from course.explore.kv_cache import CacheExplorer
from course.explore.linear_attention import LinearExplorer
from course.explore.mamba_scan import ScanExplorer
from course.explore.masks import MaskExplorer
from course.explore.online_softmax import OnlineSoftmaxExplorer
from course.explore.sparse import PatternExplorer

EXPLORERS = [
    AttentionExplorer,
    ModelExplorer,
    MaskExplorer,
    CacheExplorer,
    PatternExplorer,
    OnlineSoftmaxExplorer,
    TileExplorer,
    LinearExplorer,
    ScanExplorer,
    MemoryExplorer,
    gallery.SentenceExplorer,
]


@pytest.mark.parametrize("explorer", EXPLORERS, ids=lambda cls: cls.__name__)
def test_every_explorer_derives_from_the_base_and_keeps_its_one_display_path(explorer):
    assert issubclass(explorer, base.Explorer)
    assert explorer.render is not base.Explorer.render
    assert explorer.stats is not base.Explorer.stats
    assert not hasattr(explorer, "_ipython_display_")
    assert explorer._repr_mimebundle_ is base.Explorer._repr_mimebundle_


class Counter(base.Explorer):
    """The smallest explorer: two sliders, `a` never above `b`; counts its drawings."""

    def __init__(self):
        self.drawn = 0
        self.a = widgets.IntSlider(value=1, max=10)
        self.b = widgets.IntSlider(value=5, max=10)
        self._show([self.a], [self.b])

    def fit_controls(self):
        self.a.max = self.b.value

    def render(self):
        self.drawn += 1
        return f"PNG {self.a.value} {self.b.value}".encode()

    def stats(self):
        return {"a": str(self.a.value)}


def test_a_control_redraws_once_and_fitting_controls_does_not_redraw_again():
    counter = Counter()
    assert counter.drawn == 1 and counter.image.value == b"PNG 1 5" and counter.a.max == 5
    counter.a.value = 4
    assert counter.drawn == 2 and counter.image.value == b"PNG 4 5"
    counter.b.value = 2  # clamps a to 2 in fit_controls: still one drawing
    assert counter.drawn == 3 and counter.image.value == b"PNG 2 2"
    assert [type(row) for row in counter.widget.children] == [widgets.HBox] * 2 + [widgets.Image]
    bundle = counter._repr_mimebundle_()
    assert bundle["application/vnd.jupyter.widget-view+json"]["model_id"] == counter.widget.model_id


def test_hold_moves_several_controls_with_one_redraw():
    counter = Counter()
    with counter.hold():
        counter.b.value, counter.a.value = 9, 4
    assert counter.drawn == 2 and counter.image.value == b"PNG 4 9"


def test_the_gallery_touches_no_private_attribute_of_another_object():
    tree = ast.parse(inspect.getsource(gallery))
    private = [
        f"{ast.unparse(node)} (line {node.lineno})"
        for node in ast.walk(tree)
        if isinstance(node, ast.Attribute)
        and node.attr.startswith("_")
        and not node.attr.endswith("_")  # IPython protocols, e.g. _repr_mimebundle_
        and not (isinstance(node.value, ast.Name) and node.value.id == "self")
    ]
    assert not private, private
