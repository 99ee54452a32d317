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
2. Every topic script course/bench/<topic>.py, found with pkgutil (adding a script needs no
   edit here): its `main(argv)` runs with --plot into the folder when it takes --plot, with
   --device when it takes --device, and in --quick mode with tiny values for the options it has
   (see QUICK); its printed table and PASS/FAIL lines go into the report. A script that fails
   is reported as failed; the others still run.

The GPU is used when there is one (--device auto). Exit status 0 when everything ran and every
target passed (targets are not judged in --quick mode), 1 otherwise.
"""

import argparse
import contextlib
import datetime
import importlib
import io
import pkgutil
import re
import sys
import time
from pathlib import Path

import torch

import course  # noqa: F401  (Triton's interpreter mode without a GPU, before any kernel module)
import course.bench
from course.reference.capstone import (
    attention_function,
    benchmark_attention,
    estimate_attention_memory,
    format_table,
    plot_benchmark,
)

# Tiny values for the topic scripts' options in --quick mode (only those a script has are used).
QUICK = {
    "--lengths": ["128", "256"],
    "--length": ["256"],
    "--repeats": ["1"],
    "--window": ["32"],
    "--heads": ["1"],
    "--head-dim": ["16"],
    "--chunk-size": ["32"],
    "--new-tokens": ["8"],
    "--prompt": ["4"],
    "--d-model": ["32"],
    "--layers": ["1"],
    "--recurrent-steps": ["64"],
    "--quadratic-max": ["256"],
    "--rows": ["2"],
    "--triton-size": ["2", "16"],
}

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


def topic_modules() -> list:
    """The names of the topic scripts in course/bench (every module but this one)."""
    return sorted(
        m.name for m in pkgutil.iter_modules(course.bench.__path__) if not m.name.startswith("_")
    )


def _run_main(module, argv) -> tuple:
    """(exit status, printed text) of module.main(argv); a crash is status 2, never raised."""
    text = io.StringIO()
    with contextlib.redirect_stdout(text), contextlib.redirect_stderr(text):
        try:
            status = module.main(argv)
        except SystemExit as exit_:
            status = exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 2)
        except Exception as exc:  # reported, never raised: the other scripts still run
            print(f"{type(exc).__name__}: {exc}")
            status = 2
    return (0 if status is None else status), text.getvalue()


def script_options(module) -> set:
    """The long options a script's argparse parser offers, read from its --help."""
    _, text = _run_main(module, ["--help"])
    return set(re.findall(r"(?<![\w-])(--[a-z][\w-]*)", text)) - {"--help"}


def topic_argv(options: set, quick: bool, plot: Path, device: torch.device) -> list:
    argv = []
    if quick:
        for option, values in QUICK.items():
            if option in options:
                argv += [option, *values]
    if "--plot" in options:
        argv += ["--plot", str(plot)]
    if "--device" in options:
        argv += ["--device", device.type]
    return argv


def run_topic(name: str, out: Path, quick: bool, device: torch.device) -> dict:
    start = time.perf_counter()
    plot = out / f"{name}.png"
    try:
        module = importlib.import_module(f"course.bench.{name}")
        if not hasattr(module, "main"):
            raise AttributeError(f"course.bench.{name} has no main(argv)")
        argv = topic_argv(script_options(module), quick, plot, device)
        status, text = _run_main(module, argv)
    except Exception as exc:
        argv, status, text = [], 2, f"{type(exc).__name__}: {exc}"
    return {
        "name": name,
        "argv": argv,
        "status": status,
        "output": text,
        "plot": plot if plot.exists() else None,
        "seconds": time.perf_counter() - start,
    }


def mechanisms_part(out: Path, quick: bool, device: torch.device) -> tuple:
    """(markdown, all ran) for part 1."""
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
    return text, all(row["status"] == "ok" for row in rows)


def write_report(out: Path, quick: bool, device: torch.device, only=None) -> tuple:
    """Run everything; write out/report.md; return (path, every part ran and passed)."""
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    parts = [
        f"# Attention from Scratch: benchmark report{' (quick)' if quick else ''}",
        "",
        f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC, torch "
        f"{torch.__version__}, {course.describe_device()}, {torch.get_num_threads()} threads.",
        "",
    ]
    ok = True
    if only is None or "mechanisms" in only:
        text, ran = mechanisms_part(out, quick, device)
        ok &= ran
        parts += ["## Every mechanism side by side", "", text, ""]
    topics = [name for name in topic_modules() if only is None or name in only]
    summary = ["| script | result | seconds |", "|---|---|---:|"]
    details = []
    for name in topics:
        print(f"running course.bench.{name} ...", file=sys.stderr, flush=True)
        result = run_topic(name, out, quick, device)
        verdict = {0: "PASS", 1: "FAIL"}.get(result["status"], "crashed")
        if quick and result["status"] in (0, 1):
            verdict = "ran (targets not judged in --quick mode)"
        ok &= result["status"] == 0 or (quick and result["status"] == 1)
        summary.append(f"| {name} | {verdict} | {result['seconds']:.1f} |")
        details += [
            f"### course.bench.{name}",
            "",
            f"`python -m course.bench.{name} {' '.join(result['argv'])}`",
            "",
            "```",
            result["output"].rstrip(),
            "```",
            "",
        ]
        if result["plot"] is not None:
            details += [f"![{name}]({result['plot'].name})", ""]
    if topics:
        parts += ["## The topic scripts", "", *summary, "", *details]
    parts.append(f"Report written in {time.perf_counter() - started:.0f} s.")
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
        help=f"run only these parts: mechanisms and/or topic scripts "
        f"({', '.join(topic_modules())})",
    )
    args = parser.parse_args(argv)
    device = torch.device(
        ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    )
    if args.only:
        unknown = set(args.only) - {"mechanisms", *topic_modules()}
        if unknown:
            parser.error(f"unknown parts {sorted(unknown)}")
    path, ok = write_report(Path(args.out), args.quick, device, args.only)
    print(path.read_text())
    print(f"report: {path}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
