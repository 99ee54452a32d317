"""An interactive explorer of linear attention: the attention matrix a feature map implies, next
to softmax attention on the same queries and keys, or the recurrent state filling up.

    LinearExplorer(elu_feature_map=elu_feature_map, favor_feature_map=favor_feature_map,
                   orthogonal_random_features=orthogonal_random_features)

Functions not given fall back to the course's library versions (course.reference.linear_attention). Like
the other explorers it draws PNG bytes into an ipywidgets.Image, so it works headless too.
"""

import ipywidgets as widgets
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from course.explore.base import Explorer, figure_png, message_png, slider
from course.explore.heatmap import matrix_stats
from course.reference import linear_attention as library

VIEWS = ("elu + 1", "FAVOR+ (orthogonal)", "recurrent state")
FUNCTIONS = ("elu_feature_map", "favor_feature_map", "orthogonal_random_features")
DPI = 80


def implied_attention(
    phi_q: torch.Tensor, phi_k: torch.Tensor, causal: bool = False
) -> torch.Tensor:
    """phi(Q) phi(K)^T (tril if causal), row-normalised: (Lq, Lk)."""
    weights = phi_q @ phi_k.transpose(-2, -1)
    if causal:
        weights = weights.tril()
    return weights / weights.sum(-1, keepdim=True)


def softmax_attention(q: torch.Tensor, k: torch.Tensor, causal: bool = False) -> torch.Tensor:
    scores = q @ k.transpose(-2, -1) / q.shape[-1] ** 0.5
    if causal:
        L = q.shape[-2]
        scores = scores.masked_fill(~torch.ones(L, L, dtype=torch.bool).tril(), float("-inf"))
    return torch.softmax(scores, dim=-1)


class LinearExplorer(Explorer):
    """Controls (public): `view` (Dropdown of VIEWS), `length`, `num_features`, `step`, `seed`
    (IntSliders), `causal` (Checkbox). `render() -> bytes` draws the PNG; `error` holds the
    message of a function that raised (drawn instead of the picture), else None; `stats()`
    compares the implied attention with softmax's."""

    def __init__(self, *, length: int = 32, dim: int = 8, num_features: int = 16, **functions):
        unknown = set(functions) - set(FUNCTIONS)
        if unknown:
            raise ValueError(f"unknown functions {sorted(unknown)}; expected some of {FUNCTIONS}")
        self.fn = {name: functions.get(name, getattr(library, name)) for name in FUNCTIONS}
        self.dim = dim
        self.view = widgets.Dropdown(options=VIEWS, value=VIEWS[0], description="view")
        self.length = slider("length", length, 4, 96, width="280px")
        self.num_features = slider("features m", num_features, 1, 512, width="280px")
        self.step = slider("step t", length, 1, 96, width="280px")
        self.seed = slider("seed", 0, 0, 20, width="280px")
        self.causal = widgets.Checkbox(value=False, description="causal")
        self.error = None
        self.last_error = None  # mean |A - softmax| of the last attention view
        self._show([self.view, self.causal, self.seed], [self.length, self.num_features, self.step])

    def inputs(self):
        g = torch.Generator().manual_seed(self.seed.value)
        L = self.length.value
        q, k, v = (
            0.7 * torch.randn(L, self.dim, generator=g, dtype=torch.float64) for _ in range(3)
        )
        return q, k, v, g

    def matrices(self):
        """(implied attention, softmax attention), both (L, L) float64."""
        q, k, v, g = self.inputs()
        causal = self.causal.value
        if self.view.value == "elu + 1":
            phi_q, phi_k = self.fn["elu_feature_map"](q), self.fn["elu_feature_map"](k)
        else:
            W = self.fn["orthogonal_random_features"](self.num_features.value, self.dim, g).double()
            scale = self.dim**-0.25
            phi_q = self.fn["favor_feature_map"](q * scale, W, is_query=True)
            phi_k = self.fn["favor_feature_map"](k * scale, W)
        return implied_attention(phi_q, phi_k, causal), softmax_attention(q, k, causal)

    def state(self) -> torch.Tensor:
        """S after `step` tokens of the recurrent form (elu + 1): (dim, dim)."""
        q, k, v, _ = self.inputs()
        t = min(self.step.value, self.length.value)
        phi_k = self.fn["elu_feature_map"](k[:t])
        return phi_k.transpose(0, 1) @ v[:t]

    def stats(self) -> dict:
        if self.error:
            return {"error": self.error}
        if self.view.value == "recurrent state":
            return {"state size": f"{self.dim} x {self.dim}, whatever the length"}
        implied, exact = self.matrices()
        return {
            "TV distance to softmax": f"{self.last_error:.3f}",
            **{f"{k} (linear)": v for k, v in matrix_stats(implied).items()},
            "entropy (softmax)": matrix_stats(exact)["entropy (nats)"],
        }

    def render(self) -> bytes:
        try:
            png = self._render()
            self.error = None
            return png
        except Exception as exc:  # a student's function raised: show it, do not crash the widget
            self.error = f"{type(exc).__name__}: {exc}"
            return message_png(self.error[:120], (6, 1), DPI, color="#b00020")

    def _render(self) -> bytes:
        if self.view.value == "recurrent state":
            S = self.state()
            figure = Figure(figsize=(3.6, 3.4), dpi=DPI)
            FigureCanvasAgg(figure)
            ax = figure.subplots()
            ax.imshow(
                S.numpy(),
                cmap="RdBu_r",
                vmin=-abs(S).max().item() or -1,
                vmax=abs(S).max().item() or 1,
            )
            ax.set_title(
                f"state S after {min(self.step.value, self.length.value)} of {self.length.value} tokens",
                fontsize=9,
            )
            ax.set(xlabel="value dim", ylabel="feature dim")
            return figure_png(figure)
        implied, exact = self.matrices()
        self.last_error = (implied - exact).abs().sum(-1).mean().item() / 2
        figure = Figure(figsize=(7.2, 3.4), dpi=DPI)
        FigureCanvasAgg(figure)
        left, right = figure.subplots(1, 2)
        vmax = max(implied.max().item(), exact.max().item())
        name = self.view.value + (
            f", m = {self.num_features.value}" if self.view.value != "elu + 1" else ""
        )
        for ax, matrix, title in [(left, implied, name), (right, exact, "softmax")]:
            ax.imshow(matrix.numpy(), cmap="viridis", vmin=0, vmax=vmax)
            ax.set_title(title, fontsize=9)
            ax.set(xlabel="key j", ylabel="query i")
        figure.suptitle(f"mean total-variation distance per row: {self.last_error:.3f}", fontsize=9)
        return figure_png(figure)
