"""Timing, memory, records and plots for the notebooks' Measure sections and the benchmarks.

    timing.py    median_time: wall time of a call, waiting for the GPU
    memory.py    peak_memory (and LiveStorage, its CPU tracker): the most memory a call holds
    records.py   Measurement, Verdict, Result: what every benchmark script returns
    plots.py     saved_figure, plot_by_mechanism, scaling_guides, label_lengths_axis

One script per topic (kv_cache.py, sparse.py, ...), each `python -m course.bench.TOPIC` with a
`run(...)` function, and `python -m course.bench` to run them all into one report.
"""

from course.bench.memory import LiveStorage, peak_memory
from course.bench.plots import label_lengths_axis, plot_by_mechanism, saved_figure, scaling_guides
from course.bench.records import (
    Measurement,
    Result,
    Verdict,
    by_point,
    print_verdicts,
    report,
)
from course.bench.timing import median_time

__all__ = [
    "LiveStorage",
    "Measurement",
    "Result",
    "Verdict",
    "by_point",
    "label_lengths_axis",
    "median_time",
    "peak_memory",
    "plot_by_mechanism",
    "print_verdicts",
    "report",
    "saved_figure",
    "scaling_guides",
]
