"""Step through greedy decoding with a KV cache: the cache filling row by row, each decoded
query's attention over the cache as a heatmap (the newest outlined), and the bytes used so far.

    CacheExplorer(decoder, prompt_ids, max_new_tokens=16, cache_factory=KVCache)

`decoder` is a course.reference.kv_cache.CachedDecoder; `cache_factory` may be the student's own KVCache
class (same constructor and update as course.reference.kv_cache.KVCache). Like AttentionExplorer it draws
PNG bytes into an ipywidgets.Image, so it works headless too.
"""

import ipywidgets as widgets
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from course.explore.base import Explorer, figure_png
from course.explore.heatmap import matrix_stats
from course.reference.kv_cache import KVCache, kv_cache_bytes


class CacheExplorer(Explorer):
    """Controls (public): `step` (IntSlider: 0 = after the prefill), `layer` and `head`.

    Decoding runs once, up front; `frames[s]` holds, after step s, the cache length, layer 0's
    K buffer and every layer's attention weights of the newest query. render() -> PNG bytes;
    stats() -> the cache's fill and bytes, and the newest query's attention statistics.
    """

    def __init__(self, decoder, prompt_ids, max_new_tokens: int = 16, cache_factory=KVCache):
        if prompt_ids.dim() == 1:
            prompt_ids = prompt_ids.unsqueeze(0)
        self.decoder, self.prompt = decoder, prompt_ids[:1]
        self.max_seq_len = self.prompt.shape[1] + max_new_tokens
        self.frames = self._decode(max_new_tokens, cache_factory)
        self.step = widgets.IntSlider(
            0, 0, max_new_tokens - 1, description="step", continuous_update=False
        )
        self.layer = widgets.IntSlider(
            0, 0, decoder.num_layers - 1, description="layer", continuous_update=False
        )
        self.head = widgets.IntSlider(
            0, 0, decoder.num_heads - 1, description="head", continuous_update=False
        )
        self._show([self.step, self.layer, self.head])

    @torch.no_grad()
    def _decode(self, steps, cache_factory):
        caches = self.decoder.init_caches(1, self.max_seq_len, cache_factory)
        ids, frames = self.prompt, []
        logits = self.decoder(ids, caches)
        for _ in range(steps):
            next_id = logits[:, -1].argmax(-1, keepdim=True)
            frames.append(
                {
                    "length": caches[0].seq_len,
                    "tokens": ids[0].tolist(),
                    "k": caches[0].k.clone()
                    if isinstance(getattr(caches[0], "k", None), torch.Tensor)
                    else None,
                    "weights": [w[0, :, -1].clone() for w in self.decoder.last_weights],
                }
            )
            ids = torch.cat([ids, next_id], dim=1)
            logits = self.decoder(next_id, caches)
        return frames

    def bytes_used(self, step: int) -> int:
        d = self.decoder
        return kv_cache_bytes(
            d.num_layers,
            d.num_kv_heads,
            d.head_dim,
            self.frames[step]["length"],
            1,
            next(d.parameters()).dtype,
        )

    def stats(self) -> dict:
        step, layer, head = self.step.value, self.layer.value, self.head.value
        frame = self.frames[step]
        newest = frame["weights"][layer][head][: frame["length"]]
        return {
            "cached positions": f"{frame['length']} of {self.max_seq_len}",
            "bytes cached": f"{self.bytes_used(step):,}",
            **matrix_stats(newest[None].float()),
        }

    def render(self) -> bytes:
        frame = self.frames[self.step.value]
        figure = Figure(figsize=(10, 3.4), dpi=80)
        FigureCanvasAgg(figure)
        left, right = figure.subplots(1, 2, width_ratios=[1, 1.4])
        length = frame["length"]
        if frame["k"] is not None:
            k = frame["k"][0, self.head.value % frame["k"].shape[1]]  # (max_seq_len, D)
            left.imshow(k.abs().numpy(), aspect="auto", cmap="viridis", interpolation="nearest")
            left.axhline(length - 0.5, color="red")
        left.set(
            title=f"layer 0 K cache: {length} of {self.max_seq_len} rows filled",
            xlabel="head_dim",
            ylabel="position",
        )
        # One row per decoded query so far, over the cache as it was then: the newest is the last.
        rows = torch.full(
            (self.step.value + 1, self.max_seq_len), float("nan")
        )  # (steps, max_seq_len)
        for step, past in enumerate(self.frames[: self.step.value + 1]):
            rows[step, : past["length"]] = past["weights"][self.layer.value][self.head.value]
        right.imshow(
            rows.numpy(), aspect="auto", cmap="viridis", vmin=0, vmax=1, interpolation="nearest"
        )
        right.add_patch(
            Rectangle(
                (-0.5, self.step.value - 0.5), length, 1, fill=False, edgecolor="red", linewidth=2
            )
        )
        right.set(
            title=f"attention over the cache, layer {self.layer.value} head "
            f"{self.head.value}\n{self.bytes_used(self.step.value)} bytes cached",
            xlabel="cached position",
            ylabel="decode step (newest outlined)",
        )
        figure.set_layout_engine("constrained")
        return figure_png(figure)
