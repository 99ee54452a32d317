"""An interactive explorer of a selective scan: the input, the step sizes delta (how much each
step writes into the state), the hidden state over time, and the "attention matrix" the scan
implies (how much input s contributes to output t), next to causal softmax attention's.

It runs whatever `selective_scan` it is given (the student's own in the notebook), in mamba_ssm's
layout; without one it uses the course's library version (course.reference.mamba_scan.selective_scan). Every
picture comes from calls of that one function:

- the hidden state: a batch of `state` copies of the sequence, copy n read out with C = e_n, so
  y[n, d, t] = x_t[d, n];
- the scan's matrix: delta, B and C are computed from the real input (that is the "selective"
  part), then held fixed while a batch of L impulses u = e_s goes through the scan: the output of
  impulse s at time t is M[t, s]. A scan is linear in u once delta, B, C are fixed.

Like AttentionExplorer it draws with matplotlib's object-oriented API into PNG bytes shown in an
ipywidgets.Image, so it works the same in JupyterLab, Voila and headless tests.
"""

import math

import ipywidgets as widgets
import torch
import torch.nn.functional as F
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from course.explore.base import Explorer, figure_png, message_png, slider
from course.reference import mamba_scan as scan

DPI = 80
DIM = 4  # channels of the toy input


def toy_sequence(length: int, seed: int) -> torch.Tensor:
    """(DIM, length) float64: quiet noise with a few loud tokens, the ones worth remembering."""
    g = torch.Generator().manual_seed(seed)
    u = 0.2 * torch.randn(DIM, length, generator=g, dtype=torch.float64)
    loud = torch.randperm(length, generator=g)[: max(1, length // 12)]
    u[:, loud] += 2.0 * torch.randn(DIM, len(loud), generator=g, dtype=torch.float64).sign()
    return u


class ScanExplorer(Explorer):
    """Controls (public ipywidgets): `length`, `state`, `channel`, `seed` (IntSliders),
    `decay` (how fast the state forgets: A = -decay * [1..N] / N) and `selectivity` (how much
    delta depends on the input: 0 = the same step everywhere, an LTI system) (FloatSliders).
    `render()` returns the PNG; `image` shows it; `widget` is the whole layout; `stats()` sums
    up the step sizes and the state's memory."""

    def __init__(self, selective_scan=None, *, length: int = 48, state: int = 8):
        self.selective_scan = selective_scan or scan.selective_scan
        self.length = slider("length L", length, 8, 128, 8)
        self.state = slider("state N", state, 1, 16)
        self.channel = slider("channel d", 0, 0, DIM - 1)
        self.seed = slider("seed", 0, 0, 99)
        self.decay = widgets.FloatSlider(
            value=0.3,
            min=0.01,
            max=3.0,
            step=0.01,
            description="decay",
            continuous_update=False,
            layout=widgets.Layout(width="260px"),
        )
        self.selectivity = widgets.FloatSlider(
            value=2.0,
            min=0.0,
            max=5.0,
            step=0.1,
            description="selectivity",
            continuous_update=False,
            layout=widgets.Layout(width="260px"),
        )
        self.error = None
        self._show(
            [self.length, self.state, self.channel], [self.seed, self.decay, self.selectivity]
        )

    # ------------------------------------------------------------------------- the model

    def inputs(self) -> dict:
        """The toy selective SSM on the current sequence: u, delta (dim, L); A (dim, N); B, C (N, L)."""
        L, N = self.length.value, self.state.value
        u = toy_sequence(L, self.seed.value)
        g = torch.Generator().manual_seed(1000 + self.seed.value)
        W_B = torch.randn(N, DIM, generator=g, dtype=torch.float64) / math.sqrt(DIM)
        W_C = torch.randn(N, DIM, generator=g, dtype=torch.float64) / math.sqrt(DIM)
        # loud tokens get big steps: they write into the state and make it forget the past
        delta = F.softplus(self.selectivity.value * (u.abs() - 0.5) - 1.0)
        A = -self.decay.value * torch.arange(1, N + 1, dtype=torch.float64).repeat(DIM, 1) / N
        return {"u": u, "delta": delta, "A": A, "B": W_B @ u, "C": W_C @ u}

    def hidden_state(self, p) -> torch.Tensor:
        """(dim, N, L): x_t, read out one state coordinate per batch row (C = e_n)."""
        N, L = p["B"].shape
        eye = torch.eye(N, dtype=torch.float64).unsqueeze(-1).expand(N, N, L)
        y = self.selective_scan(
            p["u"].expand(N, -1, -1),
            p["delta"].expand(N, -1, -1),
            p["A"],
            p["B"].expand(N, -1, -1),
            eye.contiguous(),
        )
        return y.permute(1, 0, 2)

    def scan_matrix(self, p) -> torch.Tensor:
        """(dim, L, L): M[d, t, s], the output at t of a unit impulse at s, delta/B/C held fixed."""
        N, L = p["B"].shape
        impulses = torch.eye(L, dtype=torch.float64).unsqueeze(1).expand(L, DIM, L)
        y = self.selective_scan(
            impulses.contiguous(),
            p["delta"].expand(L, -1, -1),
            p["A"],
            p["B"].expand(L, -1, -1),
            p["C"].expand(L, -1, -1),
        )
        return y.permute(1, 2, 0)  # (batch = s, d, t) -> (d, t, s)

    @staticmethod
    def softmax_attention(p) -> torch.Tensor:
        """(L, L) causal softmax attention with queries C_t and keys B_s."""
        q, k = p["C"].T, p["B"].T
        scores = q @ k.T / math.sqrt(q.shape[-1])
        causal = torch.ones_like(scores, dtype=torch.bool).tril()
        return torch.softmax(scores.masked_fill(~causal, float("-inf")), dim=-1)

    def stats(self) -> dict:
        if self.error:
            return {"error": self.error}
        delta = self.inputs()["delta"][self.channel.value]
        return {
            "length x state": f"{self.length.value} x {self.state.value}",
            "mean delta": f"{delta.mean().item():.3f}",
            "max delta": f"{delta.max().item():.3f}",
            "state memory (1/decay)": f"{1 / self.decay.value:.1f} steps at delta = 1",
        }

    # ------------------------------------------------------------------------- drawing

    def render(self) -> bytes:
        try:
            p = self.inputs()
            state = self.hidden_state(p).detach()
            matrix = self.scan_matrix(p).detach()
            attention = self.softmax_attention(p)
            self.error = None
        except Exception as exc:  # noqa: BLE001 (shown in the picture: the exercise may be unfinished)
            self.error = f"{type(exc).__name__}: {exc}"
            return self._render_error()
        d = self.channel.value
        figure = Figure(figsize=(15, 6.2), dpi=DPI, layout="constrained")
        FigureCanvasAgg(figure)
        grid = figure.add_gridspec(3, 3, width_ratios=[2.2, 1, 1])
        rows = [
            ("input u (channels x time)", p["u"], "RdBu_r", True),
            ("delta: how much each step writes", p["delta"], "viridis", False),
            (f"hidden state x_t of channel {d} (state x time)", state[d], "RdBu_r", True),
        ]
        for i, (title, values, cmap, centred) in enumerate(rows):
            ax = figure.add_subplot(grid[i, 0])
            limit = float(values.abs().max()) or 1.0
            image = ax.imshow(
                values.numpy(),
                aspect="auto",
                cmap=cmap,
                interpolation="nearest",
                vmin=-limit if centred else 0,
                vmax=limit,
            )
            ax.set_title(title, fontsize=10)
            ax.set_xlabel("time t" if i == 2 else "")
            figure.colorbar(image, ax=ax, fraction=0.03)
        ax = figure.add_subplot(grid[:, 1])
        m = matrix[d]
        limit = float(m.abs().max()) or 1.0
        ax.imshow(m.numpy(), cmap="RdBu_r", vmin=-limit, vmax=limit, interpolation="nearest")
        ax.set(
            title=f"scan: contribution of u_s to y_t (channel {d})",
            xlabel="input s",
            ylabel="output t",
        )
        ax.title.set_fontsize(10)
        ax = figure.add_subplot(grid[:, 2])
        ax.imshow(attention.numpy(), cmap="Blues", vmin=0, interpolation="nearest")
        ax.set(title="causal softmax attention, q = C_t, k = B_s", xlabel="key s", ylabel="query t")
        ax.title.set_fontsize(10)
        return figure_png(figure)

    def _render_error(self) -> bytes:
        return message_png(
            f"could not run the scan:\n{self.error}",
            (8, 1.6),
            DPI,
            fontsize=11,
            color="#b00020",
            wrap=True,
        )
