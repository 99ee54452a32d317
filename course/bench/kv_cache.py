"""Cached vs uncached greedy generation on the CPU: time, time per token, identical tokens.

    python -m course.bench.kv_cache                  # 256 new tokens, CPU, 1 thread
    python -m course.bench.kv_cache --plot kv.png    # and save time per token vs position

The model is an untrained, seeded TinyTransformer (d_model 256, 4 layers, 4 heads) run through
course.reference.kv_cache.CachedDecoder. Without the cache every step reruns the whole sequence (time per
token grows linearly with the position); with it every step runs one token (flat). Targets
(from the day04 issue), reported PASS or FAIL: cached at least 5x faster for 256 new tokens,
and the same tokens both ways.
"""

import argparse
import sys
import time

import torch

from course.bench import (
    Measurement,
    Result,
    Verdict,
    plot_by_mechanism,
    report,
    saved_figure,
)
from course.models.tiny_transformer import TinyTransformer
from course.reference.kv_cache import CachedDecoder

SPEEDUP_TARGET = 5.0
CACHED, PLAIN = "KV cache", "no cache"


def build(d_model=256, num_layers=4, max_len=512, seed=0):
    torch.manual_seed(seed)
    model = TinyTransformer(d_model=d_model, num_heads=4, num_layers=num_layers, max_len=max_len)
    return CachedDecoder(model.eval())


@torch.no_grad()
def timed_generate(model, prompt, new_tokens, use_cache):
    """(tokens (B, L + n), seconds per new token as a list)."""
    ids, times = prompt, []
    caches = model.init_caches(prompt.shape[0], prompt.shape[1] + new_tokens) if use_cache else None
    feed = prompt
    for _ in range(new_tokens):
        start = time.perf_counter()
        logits = model(feed, caches) if use_cache else model(ids)
        next_id = logits[:, -1].argmax(-1, keepdim=True)
        times.append(time.perf_counter() - start)
        ids = torch.cat([ids, next_id], dim=1)
        feed = next_id
    return ids, times


def measure(new_tokens=256, prompt_len=16, d_model=256, num_layers=4) -> tuple:
    """(a Measurement per generated token with and without the cache, L its position; whether
    both gave the same tokens)."""
    model = build(d_model, num_layers, max_len=prompt_len + new_tokens)
    prompt = torch.randint(
        0, model.vocab_size, (1, prompt_len), generator=torch.Generator().manual_seed(0)
    )
    timed_generate(model, prompt, 4, True)  # warm-up
    cached, t_cached = timed_generate(model, prompt, new_tokens, True)
    plain, t_plain = timed_generate(model, prompt, new_tokens, False)
    rows = [
        Measurement("kv_cache", mechanism, prompt_len + step, seconds, head_dim=d_model // 4)
        for mechanism, times in [(PLAIN, t_plain), (CACHED, t_cached)]
        for step, seconds in enumerate(times)
    ]
    return rows, torch.equal(cached, plain)


def save_plot(rows, path) -> None:
    with saved_figure(path, figsize=(6, 3.5)) as figure:
        ax = figure.subplots()
        plot_by_mechanism(ax, rows, "seconds", 1e3, log=False, marker=None)
        ax.set(xlabel="position of the new token", ylabel="ms per token", title="time per token")


def table(rows) -> str:
    lines = [f"{'':>10} {'total (s)':>10} {'first (ms)':>11} {'last (ms)':>10}"]
    for mechanism in (PLAIN, CACHED):
        times = [row.seconds for row in rows if row.mechanism == mechanism]
        lines.append(
            f"{mechanism:>10} {sum(times):>10.3f} {1e3 * times[0]:>11.2f} {1e3 * times[-1]:>10.2f}"
        )
    return "\n".join(lines)


def verdicts(rows, identical: bool, new_tokens: int) -> list:
    total = {m: sum(row.seconds for row in rows if row.mechanism == m) for m in (PLAIN, CACHED)}
    speedup = total[PLAIN] / total[CACHED]
    return [
        Verdict(
            speedup >= SPEEDUP_TARGET if new_tokens >= 256 else True,
            f"speed-up {speedup:.1f}x (target >= {SPEEDUP_TARGET:g}x at 256 new tokens)",
        ),
        Verdict(identical, "identical tokens with and without the cache"),
    ]


def run(
    new_tokens: int = 256,
    prompt_len: int = 16,
    d_model: int = 256,
    num_layers: int = 4,
    threads: int = 1,
    plot=None,
) -> Result:
    """Generate both ways, print the table and the verdicts, and save time per token against
    position to the file `plot` if given."""
    torch.set_num_threads(threads)
    rows, identical = measure(new_tokens, prompt_len, d_model, num_layers)
    print(
        f"greedy generation, {new_tokens} new tokens after a {prompt_len}-token prompt: "
        f"d_model {d_model}, {num_layers} layers, cpu, {threads} thread(s)"
    )
    return report(rows, verdicts(rows, identical, new_tokens), table(rows), plot, save_plot)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m course.bench.kv_cache",
        description="Cached vs uncached greedy generation time on the CPU, with PASS/FAIL for "
        "the day04 targets (cached >= 5x faster for 256 new tokens; same tokens).",
    )
    parser.add_argument(
        "--new-tokens", type=int, default=256, help="tokens to generate (default 256)"
    )
    parser.add_argument("--prompt", type=int, default=16, help="prompt length (default 16)")
    parser.add_argument("--d-model", type=int, default=256, help="model width (default 256)")
    parser.add_argument("--layers", type=int, default=4, help="layers (default 4)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--plot", metavar="FILE", help="save time per token vs position to FILE")
    args = parser.parse_args(argv)
    if min(args.new_tokens, args.prompt, args.d_model, args.layers, args.threads) < 1:
        parser.error("every size must be >= 1")
    return run(
        args.new_tokens, args.prompt, args.d_model, args.layers, args.threads, args.plot
    ).status


if __name__ == "__main__":
    sys.exit(main())
