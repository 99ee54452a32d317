"""The Attention Explorer: every heatmap explorer of the course on one page.

`ENTRIES` is the registry: one `Entry(title, factory, ...)` per section, in page order. A factory
returns a `course.explore.base.Explorer` (controls as public ipywidgets, `image`: an
ipywidgets.Image of PNG bytes, `widget`: the whole layout, `stats()`: the numbers behind the
picture). Adding a day's explorer is one line:

    Entry("Flash tiles visited", lambda: TileExplorer(), probe="block_q"),

`build_section(entry)` wraps an explorer with its title, a panel of its `stats()` beside the
picture (refreshed whenever the picture changes) and a "save PNG" link; `show_gallery()` displays every
section, which is all the gallery notebook (explorer/attention-explorer.ipynb) does. `make explorer`
serves that notebook with Voilà on 127.0.0.1: a page of widgets, no code.

`probe` names the control the browser test turns (tests/test_browser.py); the section marks it
with the CSS class "gallery-probe", the picture with "gallery-image".

The first section runs the course's tiny trained transformer (day 3's "reverse" task). Training
takes a few seconds on one CPU thread; the weights are then cached (`trained_model()`), so the
page opens in seconds the next time.
"""

import base64
import dataclasses
import html
import os
import re
import time
from collections.abc import Callable
from pathlib import Path

import ipywidgets as widgets
import platformdirs
import torch

from course.explore.base import Explorer
from course.explore.heatmap import ModelExplorer
from course.models import tiny_transformer as tiny

# The user's cache folder (~/.cache/attention-from-scratch/explorer on Linux), never the package's
# own: an installed package may be read-only, and is shared by every user of the environment.
CACHE_DIR = Path(
    os.environ.get("ATTENTION_EXPLORER_CACHE")
    or Path(platformdirs.user_cache_dir("attention-from-scratch")) / "explorer"
)
TASK, LENGTH, STEPS, SEED = "reverse", 8, 300, 0
DEFAULT_DIGITS = "3 1 4 1 5 9 2 6"


# ----------------------------------------------------------------------------- the panels


def stats_html(stats) -> str:
    """A small two-column table of {name: value}, or a table with a header row from a list of
    dicts (one row each)."""
    cell = 'style="padding:1px 8px;text-align:right"'
    if isinstance(stats, dict):
        rows = "".join(
            f"<tr><td>{html.escape(str(k))}</td><td {cell}>{html.escape(str(v))}</td></tr>"
            for k, v in stats.items()
        )
        return f'<table class="gallery-stats">{rows}</table>'
    header = "".join(f"<th {cell}>{html.escape(str(k))}</th>" for k in stats[0])
    rows = "".join(
        "<tr>" + "".join(f"<td {cell}>{html.escape(str(v))}</td>" for v in row.values()) + "</tr>"
        for row in stats
    )
    return f'<table class="gallery-stats"><tr>{header}</tr>{rows}</table>'


def png_download_link(
    image: widgets.Image, filename: str = "attention.png", text: str = "save PNG"
) -> widgets.HTML:
    """A link that saves what `image` shows as a PNG file, kept up to date as the image changes."""
    link = widgets.HTML()

    def refresh(change=None) -> None:
        data = base64.b64encode(bytes(image.value)).decode("ascii")
        link.value = (
            f'<a class="png-download" download="{html.escape(filename)}" '
            f'href="data:image/png;base64,{data}">{html.escape(text)}</a>'
        )

    refresh()
    image.observe(refresh, names="value")
    return link


# ----------------------------------------------------------------------------- the trained model


def trained_model(cache_dir: Path = None) -> tiny.TinyTransformer:
    """The tiny transformer trained on "reverse" (day 3's defaults), from the cache if it is
    there, else trained now (a few seconds on one thread) and cached."""
    cache_dir = Path(cache_dir or CACHE_DIR)
    path = cache_dir / f"tiny-{TASK}-{LENGTH}-{STEPS}-{SEED}-torch{torch.__version__}.pt"
    model = tiny.TinyTransformer(max_len=max(64, 2 * LENGTH + 1))
    try:
        model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        return model.eval()
    except (OSError, RuntimeError, EOFError, ValueError):
        pass  # no cache yet, or a stale one: train
    model = tiny.train(TASK, length=LENGTH, steps=STEPS, seed=SEED).model.cpu().eval()
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        # A name of its own: two processes (test workers, a notebook beside Voilà) may train at once.
        partial = path.with_suffix(f".{os.getpid()}.tmp")
        torch.save(model.state_dict(), partial)
        partial.replace(path)
    except OSError:
        pass  # a cache folder that cannot be written: train again next time
    return model


def parse_digits(text: str) -> list:
    """The digits typed, in order (anything else is ignored), at most LENGTH of them."""
    return [int(c) for c in re.findall(r"\d", text)][:LENGTH]


def model_input(text: str) -> tuple:
    """(LENGTH digits for the model, a note): the model only ever saw strings of LENGTH digits,
    so fewer are padded with 0s and more are cut."""
    typed = [int(c) for c in re.findall(r"\d", text)]
    digits = (typed + [0] * LENGTH)[:LENGTH]
    if len(typed) < LENGTH:
        return digits, f"padded with 0s to {LENGTH} digits, the length the model was trained on"
    if len(typed) > LENGTH:
        return digits, f"cut to the first {LENGTH} digits, the length the model was trained on"
    return digits, ""


@torch.no_grad()
def reverse_with_model(model, digits: list) -> torch.Tensor:
    """digits, SEP, then the model's greedy answer: the whole sequence (1D LongTensor)."""
    ids = torch.tensor([digits + [tiny.SEP]])
    for _ in range(len(digits)):
        next_id = model(ids)[:, -1].argmax(-1, keepdim=True)
        ids = torch.cat([ids, next_id], dim=1)
    return ids[0]


class SentenceExplorer(Explorer):
    """Type digits; see the tokens, the model's reversal and every head's attention.

    Controls (public): `text` (Text: 8 digits, as in training; Enter or leaving the box applies it), the
    head buttons `head_buttons` (click one to enlarge that head; "all heads" goes back to the
    grid), and the ModelExplorer's controls (`heads`: layer, view, head, scale, query row).
    The picture is the ModelExplorer's: `image` is `heads.image`, redrawn by `heads`.
    """

    def __init__(self, model=None, text: str = DEFAULT_DIGITS):
        self.model = model if model is not None else trained_model()
        self.text = widgets.Text(
            value=text,
            description="digits",
            continuous_update=False,
            placeholder="8 digits, e.g. 3 1 4 1 5 9 2 6",
            layout=widgets.Layout(width="360px"),
        )
        self.tokens = widgets.HTML()
        weights, labels = self._weights()
        # The last query outlined: the one predicting the next token.
        self.heads = ModelExplorer(weights, labels, labels, query=len(labels) - 1)
        self.image = self.heads.image
        num_layers, num_heads = self.model.num_layers, self.model.num_heads
        self.head_buttons = [
            widgets.Button(description="all heads", layout=widgets.Layout(width="90px"))
        ]
        for layer in range(num_layers):
            for head in range(num_heads):
                button = widgets.Button(
                    description=f"L{layer} H{head}", layout=widgets.Layout(width="64px")
                )
                button.on_click(lambda _, l=layer, h=head: self.enlarge(l, h))
                self.head_buttons.append(button)
        self.head_buttons[0].on_click(lambda _: setattr(self.heads.view, "value", "grid"))
        self.text.observe(lambda change: self.update(), names="value")
        self.widget = widgets.VBox(
            [
                widgets.HBox([self.text, self.tokens]),
                widgets.HBox([widgets.Label("enlarge a head:"), *self.head_buttons]),
                self.heads.widget,
            ]
        )

    def _weights(self):
        digits, note = model_input(self.text.value)
        self.sequence = reverse_with_model(self.model, digits)
        labels = tiny.token_labels(self.sequence)
        answer = "".join(labels[len(digits) + 1 :])
        right = answer == "".join(map(str, digits[::-1]))
        chips = " ".join(
            f'<code style="background:#eef;padding:1px 3px">{html.escape(t)}</code>' for t in labels
        )
        self.tokens.value = (
            f"<div>tokens: {chips} &nbsp; model's reversal: <b>{answer}</b> "
            f"({'right' if right else 'wrong'})"
            + (f"<br><i>{html.escape(note)}</i>" if note else "")
            + "</div>"
        )
        return tiny.attention_maps(self.model, self.sequence), labels

    def update(self) -> None:
        weights, labels = self._weights()
        self.heads.set_weights(weights, labels, labels)

    def enlarge(self, layer: int, head: int) -> None:
        with self.heads.hold():
            self.heads.layer.value, self.heads.head.value = layer, head
            self.heads.view.value = "single"

    def stats(self) -> list:
        """Per head of the current layer: entropy, mean distance, sparsity."""
        return self.heads.stats()

    def render(self) -> bytes:
        return self.heads.render()


# ----------------------------------------------------------------------------- the sections


def _shared_model():
    global _MODEL
    if _MODEL is None:
        _MODEL = trained_model()
    return _MODEL


_MODEL = None


def sentence_section():
    return SentenceExplorer(_shared_model())


def mask_section():
    from course.explore.masks import MaskExplorer
    from course.reference.masks import attention

    return MaskExplorer(attention)


def pattern_section():
    from course.explore.sparse import PatternExplorer

    return PatternExplorer()


def cache_section():
    from course.explore.kv_cache import CacheExplorer
    from course.reference.kv_cache import CachedDecoder

    prompt = torch.tensor(parse_digits(DEFAULT_DIGITS) + [tiny.SEP])
    return CacheExplorer(CachedDecoder(_shared_model()), prompt, max_new_tokens=LENGTH)


def online_softmax_section():
    from course.explore.online_softmax import OnlineSoftmaxExplorer

    return OnlineSoftmaxExplorer()


def tile_section():
    from course.explore.flash_triton import TileExplorer

    return TileExplorer()


def linear_section():
    from course.explore.linear_attention import LinearExplorer

    return LinearExplorer()


def scan_section():
    from course.explore.mamba_scan import ScanExplorer

    return ScanExplorer()


@dataclasses.dataclass(frozen=True)
class Entry:
    """One section: its title, a factory of its explorer, and optionally a one-line summary,
    the name of the control the browser test turns, and whether to show the explorer's
    `stats()` beside the picture."""

    title: str
    factory: Callable[[], Explorer]
    about: str = ""
    probe: str = None
    stats: bool = True

    @property
    def slug(self) -> str:
        return re.sub(r"[^a-z0-9]+", "-", self.title.lower()).strip("-")


ENTRIES = [
    Entry(
        "Tiny transformer heads",
        sentence_section,
        probe="text",
        about="Type 8 digits: the model trained on day 3's reverse task writes them "
        "backwards. Each head's title gives its entropy and mean attention distance; "
        "click a head to enlarge it, pick a query row to outline it.",
    ),
    Entry(
        "Masks: causal, padding, cross",
        mask_section,
        probe="kind",
        about="Day 2: a mask and the weights it gives, side by side.",
    ),
    Entry(
        "Sparse patterns: density and reach",
        pattern_section,
        probe="pattern",
        about="Day 5: a sparse mask and how far information spreads through stacked layers.",
    ),
    Entry(
        "KV cache filling during decoding",
        cache_section,
        probe="step",
        about="Day 4: the trained model reverses 3 1 4 1 5 9 2 6 one token at a time; the "
        "cache fills row by row.",
    ),
    Entry(
        "Online softmax, block by block",
        online_softmax_section,
        probe="step",
        about="Day 6: the running max and sum after each block of keys.",
    ),
    Entry(
        "Flash tiles visited",
        tile_section,
        probe="block_m",
        about="Day 7: which tiles of the score matrix each FlashAttention program visits.",
    ),
    Entry(
        "Linear attention",
        linear_section,
        probe="view",
        about="Day 8: the attention matrix a feature map implies, next to softmax's.",
    ),
    Entry(
        "Selective scan state over time",
        scan_section,
        probe="seed",
        about="Day 9: the input, the step sizes, the hidden state over time and the matrix the "
        "scan implies.",
    ),
]


# ----------------------------------------------------------------------------- building the page


@dataclasses.dataclass
class Section:
    entry: Entry
    explorer: Explorer
    stats: widgets.HTML
    download: widgets.HTML
    widget: widgets.Widget
    seconds: float

    def _repr_mimebundle_(self, **kwargs):
        return self.widget._repr_mimebundle_(**kwargs)


def build_section(entry: Entry) -> Section:
    """The explorer of `entry` with its title, statistics beside the picture and a PNG link."""
    start = time.perf_counter()
    explorer = entry.factory()
    image = explorer.image
    image.add_class("gallery-image")
    if entry.probe:
        getattr(explorer, entry.probe).add_class("gallery-probe")
    stats = widgets.HTML(layout=widgets.Layout(min_width="220px", margin="0 0 0 12px"))
    stats.add_class("gallery-stats-panel")

    def refresh(change=None) -> None:
        if not entry.stats:
            stats.value = ""
            return
        try:
            stats.value = "<b>statistics</b>" + stats_html(explorer.stats())
        except Exception as exc:  # noqa: BLE001 (the picture says what went wrong)
            stats.value = f"<i>no statistics: {html.escape(type(exc).__name__)}</i>"

    refresh()
    image.observe(refresh, names="value")
    download = png_download_link(image, f"{entry.slug}.png")
    header = widgets.HTML(
        f"<h2>{html.escape(entry.title)}</h2>"
        + (f"<p>{html.escape(entry.about)}</p>" if entry.about else "")
    )
    body = widgets.HBox([explorer.widget, widgets.VBox([stats, download])])
    widget = widgets.VBox([header, body])
    widget.add_class("gallery-section")
    widget.add_class(f"gallery-section-{entry.slug}")
    return Section(entry, explorer, stats, download, widget, time.perf_counter() - start)


def show_gallery(entries=None) -> list:
    """Display every section, one after the other, as each is built; return the Sections.

    A section whose explorer fails to build shows the error instead of stopping the page."""
    from IPython.display import display

    torch.set_num_threads(1)  # tiny matrices; a shared CPU's other cores are busy
    sections = []
    for entry in ENTRIES if entries is None else entries:
        try:
            section = build_section(entry)
        except Exception as exc:  # noqa: BLE001
            display(
                widgets.HTML(
                    f"<h2>{html.escape(entry.title)}</h2><p style='color:#b00020'>"
                    f"could not build this section: {html.escape(type(exc).__name__)}: "
                    f"{html.escape(str(exc))}</p>"
                )
            )
            continue
        display(section.widget)
        sections.append(section)
    return sections


if __name__ == "__main__":  # python -m course.explore.gallery: train and cache the model now
    start = time.perf_counter()
    trained_model()
    print(f"tiny transformer ready in {time.perf_counter() - start:.1f} s (cache: {CACHE_DIR})")
