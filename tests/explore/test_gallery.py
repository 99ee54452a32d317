"""The Attention Explorer's registry and sections, headless (tests/test_browser.py drives the page):
every entry builds, its probe control redraws its picture, its statistics and PNG link follow."""

import base64
import re
import sys

import ipywidgets as widgets
import nbformat
import numpy as np
import pytest
import torch

from course.explore import gallery
from course.explore.heatmap import ModelExplorer, matrix_stats
from course.models import tiny_transformer as tiny
from helpers import ROOT


@pytest.fixture(scope="module")
def sections():
    torch.set_num_threads(1)
    return {entry.slug: gallery.build_section(entry) for entry in gallery.ENTRIES}


def new_value(control):
    if isinstance(control, widgets.Text):
        return "9 8 7 6 5 4 3 2"
    if isinstance(control, widgets.Dropdown):
        return (
            next(value for _, value in control.options if value != control.value)
            if isinstance(control.options[0], tuple)
            else next(value for value in control.options if value != control.value)
        )
    return (
        control.value + control.step
        if control.value < control.max
        else control.value - control.step
    )


def test_registry_covers_the_course_topics():
    titles = " ".join(entry.title.lower() for entry in gallery.ENTRIES)
    for topic in (
        "transformer",
        "mask",
        "sparse",
        "kv cache",
        "online softmax",
        "flash tiles",
        "linear",
        "scan",
    ):
        assert topic in titles
    slugs = [entry.slug for entry in gallery.ENTRIES]
    assert len(set(slugs)) == len(slugs) and all(re.fullmatch(r"[a-z0-9-]+", s) for s in slugs)
    assert all(entry.probe for entry in gallery.ENTRIES)  # the browser test turns it


@pytest.mark.parametrize("entry", gallery.ENTRIES, ids=lambda entry: entry.slug)
def test_each_section_redraws_and_keeps_stats_and_png_link_in_step(sections, entry):
    section = sections[entry.slug]
    explorer = section.explorer
    control = getattr(explorer, entry.probe)
    assert "gallery-probe" in control._dom_classes
    assert "gallery-image" in explorer.image._dom_classes
    assert f"gallery-section-{entry.slug}" in section.widget._dom_classes
    before, stats_before = bytes(explorer.image.value), section.stats.value
    assert before.startswith(b"\x89PNG")
    assert ("<table" in stats_before) == (entry.stats is not None)
    control.value = new_value(control)
    after = bytes(explorer.image.value)
    assert after.startswith(b"\x89PNG") and after != before
    assert ("<table" in section.stats.value) == (entry.stats is not None)
    href = re.search(r'href="data:image/png;base64,([^"]+)"', section.download.value).group(1)
    assert base64.b64decode(href) == after
    assert f'download="{entry.slug}.png"' in section.download.value


def test_sentence_section_reverses_digits_and_enlarges_a_head(sections):
    explorer = sections[gallery.ENTRIES[0].slug].explorer
    explorer.text.value = "1 2 3 4 5 6 7 8"
    assert "".join(tiny.token_labels(explorer.sequence)) == "12345678|87654321"
    assert "(right)" in explorer.tokens.value
    assert explorer.heads.weights.shape[-2:] == (17, 17)
    grid = bytes(explorer.image.value)
    explorer.enlarge(1, 2)
    assert (explorer.heads.layer.value, explorer.heads.head.value, explorer.heads.view.value) == (
        1,
        2,
        "single",
    )
    assert bytes(explorer.image.value) != grid
    rows = explorer.stats()
    assert [row["head"] for row in rows] == [f"L1 H{h}" for h in range(explorer.model.num_heads)]
    explorer.text.value = "no digits at all"  # padded with 0s, never crashes
    assert "".join(tiny.token_labels(explorer.sequence))[:9] == "00000000|"
    assert "padded with 0s" in explorer.tokens.value


def test_the_trained_model_is_cached_and_reused(tmp_path, monkeypatch):
    calls = []
    real_train = tiny.train

    def quick_train(*args, **kwargs):
        calls.append(kwargs)
        return real_train(*args, **{**kwargs, "steps": 2})

    monkeypatch.setattr(tiny, "train", quick_train)
    first = gallery.trained_model(tmp_path)
    second = gallery.trained_model(tmp_path)
    assert len(calls) == 1 and len(list(tmp_path.glob("*.pt"))) == 1
    for a, b in zip(first.state_dict().values(), second.state_dict().values()):
        assert torch.equal(a, b)


def test_parse_digits_and_model_input():
    assert gallery.parse_digits("3, 1 4a1") == [3, 1, 4, 1]
    assert gallery.parse_digits("1234567890") == list(range(1, 9))
    assert gallery.model_input("3 1 4") == ([3, 1, 4, 0, 0, 0, 0, 0], gallery.model_input("")[1])
    assert gallery.model_input("1234567890")[0] == list(range(1, 9))
    assert gallery.model_input("12345678") == (list(range(1, 9)), "")


def test_matrix_stats_of_one_hot_and_uniform_rows():
    one_hot = torch.eye(4)
    assert matrix_stats(one_hot) == {
        "entropy (nats)": "0.00",
        "mean distance": "0.00",
        "sparsity": "75%",
    }
    assert matrix_stats(torch.full((4, 4), 0.25))["entropy (nats)"] == f"{np.log(4):.2f}"


def test_model_explorer_query_highlight_and_new_weights():
    weights = [
        torch.softmax(torch.randn(2, 5, 5, generator=torch.Generator().manual_seed(s)), -1)
        for s in range(2)
    ]
    explorer = ModelExplorer(weights, list("abcde"), list("abcde"))
    plain = bytes(explorer.image.value)
    explorer.query.value = 2
    assert bytes(explorer.image.value) != plain
    explorer.layer.value = 1
    explorer.set_weights([w[:, :3, :3] for w in weights], list("abc"), list("abc"))
    assert explorer.weights.shape == (2, 1, 2, 3, 3) and explorer.layer.value == 1
    assert explorer.query.value == 2 and len(explorer.query.options) == 4
    assert explorer.image.value == explorer.render()
    explorer.set_weights([w[:, :2, :2] for w in weights])
    assert explorer.query.value == -1  # row 2 is gone: no highlight


def test_png_download_link_follows_the_image():
    image = widgets.Image(value=b"\x89PNG one", format="png")
    link = gallery.png_download_link(image, "x.png")
    assert (
        base64.b64encode(b"\x89PNG one").decode() in link.value and 'download="x.png"' in link.value
    )
    image.value = b"\x89PNG two"
    assert base64.b64encode(b"\x89PNG two").decode() in link.value


def test_gallery_notebook_builds_from_the_registry_and_carries_no_outputs():
    notebook = nbformat.read(ROOT / "explorer" / "attention-explorer.ipynb", as_version=4)
    nbformat.validate(notebook)
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert all(cell.outputs == [] and cell.execution_count is None for cell in code)
    source = "\n".join(cell.source for cell in code)
    assert "show_gallery" in source and "ENTRIES" in source


def test_make_explorer_serves_the_notebook_with_voila_on_localhost():
    makefile = (ROOT / "Makefile").read_text()
    recipe = makefile.split("\nexplorer:")[1].split("\n\n")[0]
    assert "voila explorer/attention-explorer.ipynb" in recipe and "--Voila.ip=127.0.0.1" in recipe
    readme = (ROOT / "README.md").read_text()
    assert re.search(r"^make explorer$", readme, flags=re.MULTILINE)
    installer = (ROOT / "tools" / "install-debian-packages.sh").read_text()
    assert "apt-get install" in installer and "chromium" in installer


def test_browser_marker_is_registered():
    if sys.version_info >= (3, 11):
        import tomllib
    else:
        import tomli as tomllib
    options = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["pytest"]["ini_options"]
    assert any(marker.startswith("browser:") for marker in options["markers"])
