"""python -m course.bench --quick: one report with every mechanism and every topic script."""

import csv
import inspect
import json
import pkgutil
import subprocess
import sys

import torch

import course.bench
from course.bench.__main__ import ON_DEVICE, PLOTTED, TOPICS, topic_options
from helpers import ROOT


def test_every_topic_script_is_in_the_report_and_given_only_options_its_run_takes(tmp_path):
    parts = {"__main__", "memory", "plots", "records", "timing"}
    scripts = {m.name for m in pkgutil.iter_modules(course.bench.__path__)} - parts
    assert scripts == set(TOPICS)
    takes = {name: inspect.signature(run).parameters for name, (run, _) in TOPICS.items()}
    assert {name for name in TOPICS if "device" in takes[name]} == ON_DEVICE
    assert {name for name in TOPICS if "plot" in takes[name]} == PLOTTED
    for name, (run, _) in TOPICS.items():
        for quick in (False, True):
            inspect.signature(run).bind(**topic_options(name, tmp_path, quick, torch.device("cpu")))
    assert topic_options("sparse", tmp_path, True, torch.device("cpu")) == {
        **TOPICS["sparse"][1],
        "device": "cpu",
        "plot": str(tmp_path / "sparse.png"),
    }


def test_quick_report_runs_everything_and_writes_one_markdown_report(tmp_path):
    out = tmp_path / "report"
    done = subprocess.run(
        [sys.executable, "-m", "course.bench", "--quick", "--out", str(out)],
        cwd=ROOT,
        text=True,
        capture_output=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = (out / "report.md").read_text()
    assert "## Every mechanism side by side" in report and (out / "mechanisms.png").is_file()
    for name in TOPICS:
        assert f"### course.bench.{name}" in report
    assert "crashed" not in report
    for mechanism in ("dense", "flash (tiled)", "sliding window", "linear", "performer", "scan"):
        assert f"| {mechanism}" in report
    with open(out / "report.csv", newline="") as file:
        rows = list(csv.DictReader(file))
    assert {row["topic"] for row in rows} == {"mechanisms", *TOPICS}
    assert {"sliding window", "dense masked"} <= {row["mechanism"] for row in rows}
    document = json.loads((out / "report.json").read_text())
    assert len(document["rows"]) == len(rows) and document["verdicts"]
    assert set(document["verdicts"][0]) == {"topic", "passed", "target"}


def test_help():
    done = subprocess.run(
        [sys.executable, "-m", "course.bench", "--help"],
        cwd=ROOT,
        text=True,
        capture_output=True,
        timeout=60,
    )
    assert done.returncode == 0 and "--quick" in done.stdout and "--out" in done.stdout
