"""python -m course.bench --quick: one report with every mechanism and every topic script."""

import subprocess
import sys

from course.bench.__main__ import QUICK, topic_argv, topic_modules
from helpers import ROOT


def test_topic_scripts_are_discovered_and_given_only_the_options_they_have(tmp_path):
    names = topic_modules()
    assert {"sparse", "kv_cache"} <= set(names) and "__main__" not in names
    argv = topic_argv(
        {"--lengths", "--plot"}, True, tmp_path / "x.png", __import__("torch").device("cpu")
    )
    assert argv == ["--lengths", *QUICK["--lengths"], "--plot", str(tmp_path / "x.png")]


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
    for name in topic_modules():
        assert f"### course.bench.{name}" in report
    assert "crashed" not in report
    for mechanism in ("dense", "flash (tiled)", "sliding window", "linear", "performer", "scan"):
        assert f"| {mechanism}" in report


def test_help():
    done = subprocess.run(
        [sys.executable, "-m", "course.bench", "--help"],
        cwd=ROOT,
        text=True,
        capture_output=True,
        timeout=60,
    )
    assert done.returncode == 0 and "--quick" in done.stdout and "--out" in done.stdout
