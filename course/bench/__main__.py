"""Every benchmark of the course in one report: `python -m course.bench`.

    python -m course.bench                    # full sizes, writes bench-report/
    python -m course.bench --quick            # tiny sizes: a smoke test in well under a minute
    python -m course.bench --out my-report --device cuda

Two parts, one Markdown file (report.md) and its PNG plots in the --out folder:

1. Every attention mechanism of the course side by side (course.reference.capstone.benchmark_attention):
   time, peak memory (measured, next to course.reference.capstone.estimate_attention_memory's estimate)
   and relative error against exact float64 attention, at the same lengths, plus log-log plots.
   Each mechanism is the `attend` step of course.reference.mechanisms.make_attention's layer of its kind
   (course.reference.capstone.attention_function maps an estimate's kind to it), and the scan a selective
   scan at the same sizes.
2. Every topic script course/bench/<topic>.py (see TOPICS): its `run(...)` is called with this
   report's device and a plot file where it takes them, and with tiny sizes in --quick mode; its
   printed table and PASS/FAIL lines go into the report. A script that fails is reported as
   failed; the others still run.

Every measured point of both parts is also written, one row per mechanism and size, to
report.csv and report.json (course.bench.Measurement's fields; the JSON adds the verdicts).

The GPU is used when there is one (--device auto). Exit status 0 when everything ran and every
target passed (targets are not judged in --quick mode), 1 otherwise.
"""

import argparse
import contextlib
import datetime
import io
import sys
import time
from pathlib import Path

import torch

import course  # noqa: F401  (Triton's interpreter mode without a GPU, before any kernel module)
from course.bench import (
    Measurement,
    flash_triton,
    kv_cache,
    linear_attention,
    mamba_scan,
    online_softmax,
    sparse,
)
from course.bench.records import write_csv, write_json
from course.reference.capstone import (
    attention_function,
    benchmark_attention,
    estimate_attention_memory,
    format_table,
    plot_benchmark,
)

# The mechanisms of part 1: (label, kind, keyword arguments).
MECHANISMS = [
    ("dense", "dense", {}),
    ("dense + causal mask", "dense_masked", {}),
    ("strided (16, 32)", "strided", {"stride": 16, "local_window": 32}),
    ("sliding window 128", "sliding", {"window": 128}),
    ("chunked 128 + 32", "chunked", {"chunk_size": 128, "overlap": 32}),
    ("flash (tiled)", "flash", {}),
    ("linear", "linear", {}),
    ("performer 64", "performer", {"num_features": 64}),
    ("scan (state 16)", "scan", {"state": 16}),
]


# Kinds that are not approximations of full (non-causal) softmax attention: their relative
# error against it would mean nothing (causal attention, a state-space scan).
NOT_APPROXIMATIONS = {"dense_masked", "scan"}


# Part 2: each topic script's run function, and the tiny sizes it gets in --quick mode (its own
# defaults otherwise).
TOPICS = {
    "flash_triton": (flash_triton.run, {"lengths": [128, 256], "heads": 1}),
    "kv_cache": (kv_cache.run, {"new_tokens": 8, "prompt_len": 4, "d_model": 32, "num_layers": 1}),
    "linear_attention": (
        linear_attention.run,
        {
            "lengths": [128, 256],
            "heads": 1,
            "head_dim": 16,
            "chunk_size": 32,
            "repeats": 1,
            "recurrent_steps": 64,
            "quadratic_max": 256,
        },
    ),
    "mamba_scan": (
        mamba_scan.run,
        {"length": 256, "rows": [2], "chunk_size": 32, "repeats": 1, "triton_size": (2, 16)},
    ),
    "online_softmax": (
        online_softmax.run,
        {"lengths": [128, 256], "heads": 1, "head_dim": 16, "repeats": 1},
    ),
    "sparse": (
        sparse.run,
        {"lengths": [128, 256], "window": 32, "heads": 1, "head_dim": 16, "repeats": 1},
    ),
}
# The scripts that run on the report's device (the others choose theirs), and those that plot.
ON_DEVICE = {"mamba_scan", "online_softmax", "sparse"}
PLOTTED = {"kv_cache", "linear_attention", "online_softmax", "sparse"}


def topic_options(name: str, out: Path, quick: bool, device: torch.device) -> dict:
    """The keyword arguments this report gives the topic script's run(...)."""
    options = dict(TOPICS[name][1]) if quick else {}
    if name in ON_DEVICE:
        options["device"] = device.type
    if name in PLOTTED:
        options["plot"] = str(out / f"{name}.png")
    return options


def run_topic(name: str, options: dict) -> dict:
    """Run one topic script with its printed text captured; a crash is reported, never raised
    (the other scripts still run)."""
    start = time.perf_counter()
    text = io.StringIO()
    with contextlib.redirect_stdout(text), contextlib.redirect_stderr(text):
        try:
            result = TOPICS[name][0](**options)
        except Exception as exc:
            print(f"{type(exc).__name__}: {exc}")
            result = None
    return {"result": result, "output": text.getvalue(), "seconds": time.perf_counter() - start}


def mechanisms_part(out: Path, quick: bool, device: torch.device) -> tuple:
    """(markdown, its Measurements) for part 1."""
    if quick:
        lengths, heads, head_dim, repeats, budget = [128, 256], 1, 16, 1, 5.0
    elif device.type == "cuda":
        lengths, heads, head_dim, repeats, budget = [1024, 2048, 4096, 8192, 16384], 8, 64, 5, 10.0
    else:
        lengths, heads, head_dim, repeats, budget = [256, 512, 1024, 2048, 4096], 2, 32, 3, 30.0
    fns, kinds = {}, {}
    for label, kind, kw in MECHANISMS:
        try:
            fns[label] = attention_function(kind, **kw)
            kinds[label] = (kind, kw)
        except ImportError as exc:  # e.g. a library module that is not there yet
            print(f"skipping {label}: {exc}", file=sys.stderr)
    rows = benchmark_attention(
        fns,
        lengths,
        heads=heads,
        head_dim=head_dim,
        repeats=repeats,
        time_budget_s=budget,
        device=device,
    )
    for row in rows:  # these compute another function than full attention: no error to compare
        if kinds.get(row["name"], ("",))[0] in NOT_APPROXIMATIONS:
            row["rel_error"] = None
    lines = [
        format_table(rows),
        "",
        "Peak memory measured (course.bench.peak_memory) against the estimate of "
        "course.reference.capstone.estimate_attention_memory (what one call allocates, its output "
        "included, q, k and v excluded):",
        "",
        "| mechanism | L | measured (MiB) | estimated (MiB) | estimate / measured |",
        "|---|---:|---:|---:|---:|",
    ]
    for row in rows:
        if row["status"] != "ok":
            continue
        kind, kw = kinds[row["name"]]
        estimate = estimate_attention_memory(
            kind, 1, heads, row["seq_len"], head_dim, torch.float32, **kw
        )
        lines.append(
            f"| {row['name']} | {row['seq_len']} | {row['peak_bytes'] / 2**20:.2f} | "
            f"{estimate / 2**20:.2f} | {estimate / max(row['peak_bytes'], 1):.2f} |"
        )
    figure = plot_benchmark(rows, title=f"(batch 1, {heads} heads, d = {head_dim}, {device.type})")
    figure.savefig(out / "mechanisms.png")
    header = (
        f"Batch 1, {heads} heads, head_dim {head_dim}, float32, {device.type}; median of "
        f"{repeats} timed calls after a warm-up; relative error against exact float64 "
        f"attention on random inputs (random queries and keys give nearly uniform "
        f"attention, the hardest case for local and low-rank approximations; blank for "
        f"causal attention and the scan, which compute something else)."
    )
    text = "\n".join([header, "", *lines, "", "![every mechanism](mechanisms.png)"])
    measurements = [
        Measurement(
            topic="mechanisms",
            mechanism=row["name"],
            L=row["seq_len"],
            seconds=row["time_s"],
            peak_bytes=row["peak_bytes"],
            error=row["rel_error"],
            heads=heads,
            head_dim=head_dim,
            device=device.type,
            note="" if row["status"] == "ok" else f"{row['status']}: {row['message']}",
        )
        for row in rows
    ]
    return text, measurements


def write_report(out: Path, quick: bool, device: torch.device, only=None) -> tuple:
    """Run everything; write report.md, report.csv and report.json into `out`; return (the
    Markdown file's path, every part ran and passed)."""
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    parts = [
        f"# Attention from Scratch: benchmark report{' (quick)' if quick else ''}",
        "",
        f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC, torch "
        f"{torch.__version__}, {course.describe_device()}, {torch.get_num_threads()} threads.",
        "",
    ]
    ok, measurements, verdicts = True, [], []
    if only is None or "mechanisms" in only:
        text, rows = mechanisms_part(out, quick, device)
        ok &= all(row.note == "" for row in rows)  # a failed point's note says why
        measurements += rows
        parts += ["## Every mechanism side by side", "", text, ""]
    topics = [name for name in TOPICS if only is None or name in only]
    summary = ["| script | result | seconds |", "|---|---|---:|"]
    details = []
    for name in topics:
        print(f"running course.bench.{name} ...", file=sys.stderr, flush=True)
        options = topic_options(name, out, quick, device)
        topic = run_topic(name, options)
        result = topic["result"]
        if result is None:
            verdict, ok = "crashed", False
        elif quick:
            verdict = "ran (targets not judged in --quick mode)"
        else:
            verdict = "PASS" if result.status == 0 else "FAIL"
            ok &= result.status == 0
        if result is not None:
            measurements += result.rows
            verdicts += [(name, v) for v in result.verdicts]
        summary.append(f"| {name} | {verdict} | {topic['seconds']:.1f} |")
        details += [
            f"### course.bench.{name}",
            "",
            f"`course.bench.{name}.run({', '.join(f'{k}={v!r}' for k, v in options.items())})`",
            "",
            "```",
            topic["output"].rstrip(),
            "```",
            "",
        ]
        if "plot" in options and Path(options["plot"]).exists():
            details += [f"![{name}]({name}.png)", ""]
    if topics:
        parts += ["## The topic scripts", "", *summary, "", *details]
    write_csv(measurements, out / "report.csv")
    write_json(measurements, verdicts, out / "report.json")
    parts += [
        f"Every measured point: report.csv and report.json ({len(measurements)} rows).",
        "",
        f"Report written in {time.perf_counter() - started:.0f} s.",
    ]
    path = out / "report.md"
    path.write_text("\n".join(parts) + "\n")
    return path, ok


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m course.bench",
        description="Run every benchmark of the course (all attention mechanisms side by side, "
        "then each course/bench/<topic>.py script) and write one Markdown "
        "report with PNG plots into --out.",
    )
    parser.add_argument(
        "--out", default="bench-report", help="output folder (default: bench-report)"
    )
    parser.add_argument(
        "--quick", action="store_true", help="tiny sizes: a smoke test (targets are not judged)"
    )
    parser.add_argument(
        "--device", default="auto", help="auto (GPU when there is one), cpu or cuda"
    )
    parser.add_argument(
        "--only",
        nargs="+",
        metavar="PART",
        choices=["mechanisms", *TOPICS],
        help=f"run only these parts: mechanisms and/or topic scripts ({', '.join(TOPICS)})",
    )
    args = parser.parse_args(argv)
    device = torch.device(
        ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    )
    path, ok = write_report(Path(args.out), args.quick, device, args.only)
    print(path.read_text())
    print(f"report: {path}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
