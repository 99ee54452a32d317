"""The adversarial corpus (tools/corpus/), graded for real with `python -m grader autograde
--workers 2`: every submission gets its expected score, status, reason and findings, the class
gradebook has a row for every student, and nothing a submission did reached the course folder."""

import csv
import json
import shutil

import pytest
from nbgrader.api import Gradebook

from helpers import ROOT, grader
from tools import corpus

pytestmark = pytest.mark.slow

DAY = corpus.ASSIGNMENT


def limits():
    return [
        "--timeout",
        str(corpus.LIMITS["timeout"]),
        "--wall-limit",
        str(corpus.LIMITS["wall_limit"]),
        "--memory-limit",
        corpus.LIMITS["memory_limit"],
    ]


@pytest.fixture(scope="module")
def graded(tmp_path_factory):
    course = tmp_path_factory.mktemp("corpus") / "course"
    course.mkdir()
    shutil.copy(ROOT / "nbgrader_config.py", course)
    shutil.copytree(ROOT / "solutions" / DAY, course / "solutions" / DAY)
    shutil.copytree(ROOT / "exercises" / DAY, course / "exercises" / DAY)
    manifest = corpus.write(course / "submitted")
    (course / "submitted" / "manifest.json").unlink()
    done = grader("--course-dir", str(course), "autograde", DAY, "--workers", "2", *limits())
    records = {
        p.stem: json.loads(p.read_text())
        for p in (course / "feedback" / ".grader" / DAY).glob("*.json")
    }
    return course, manifest, done, records


def test_the_corpus_is_big_enough_and_covers_the_issue():
    assert len(corpus.MANIFEST) >= 25
    statuses = {case[3] for case in corpus.MANIFEST.values()}
    assert statuses == {"graded", "stopped", "failed"}


@pytest.mark.parametrize("student", sorted(corpus.MANIFEST))
def test_expected_outcome(graded, student):
    course, manifest, done, records = graded
    expected = manifest[student]
    record = records[student]
    assert (record["score"], record["max_score"]) == (expected["score"], expected["max_score"]), (
        record
    )
    assert record["status"] == expected["status"], record
    assert expected["reason"] in record["reason"], record
    found = " | ".join(t["what"] for t in record["tamper"])
    for text in expected["tamper"]:
        assert text in found, found
    if not expected["tamper"]:
        assert not record["tamper"], found
    for finding in record["tamper"]:
        assert finding["cell"], finding


def test_every_student_has_a_gradebook_row_and_the_exit_status_counts_failures(graded):
    course, manifest, done, records = graded
    with Gradebook(f"sqlite:///{course}/gradebook.db") as gradebook:
        rows = {s.student_id: s.score for s in gradebook.assignment_submissions(DAY)}
    assert set(rows) == set(manifest)
    assert rows == {student: expected["score"] for student, expected in manifest.items()}
    not_graded = sum(expected["status"] != "graded" for expected in manifest.values())
    assert done.returncode == not_graded, done.stdout + done.stderr
    summary = done.stdout.strip().splitlines()[-1]
    assert f"graded {len(manifest)} submissions" in summary
    assert f"{not_graded} failed or stopped" in summary
    assert f"{len(manifest)}/{len(manifest)} graded" in done.stderr  # the progress bar


def test_submissions_could_not_touch_the_course(graded):
    course, *_ = graded
    assert (course / "nbgrader_config.py").is_file()
    assert (course / "solutions" / DAY / f"{DAY}.ipynb").is_file()
    assert (course / "submitted" / "full-marks" / DAY / f"{DAY}.ipynb").is_file()


def test_autograded_notebooks_are_where_nbgrader_puts_them(graded):
    course, manifest, done, records = graded
    for student, expected in manifest.items():
        if expected["status"] != "failed":
            assert (course / "autograded" / student / DAY / f"{DAY}.ipynb").is_file(), student


def test_report_feedback_class_report_and_csv(graded):
    course, manifest, done, records = graded
    made = grader(
        "--course-dir", str(course), "report", DAY, "--csv", str(course / "by-exercise.csv")
    )
    assert made.returncode == 0, made.stderr
    page = (course / "feedback" / "planted-axis" / f"{DAY}-checks.html").read_text()
    assert "each query&#x27;s weights must sum to 1 over the keys" in page
    assert "hidden checks, seed" in page and "6 / 9" in page
    for student in manifest:
        html = (course / "feedback" / student / f"{DAY}-checks.html").read_text()
        assert "hidden=True" not in html and "HIDDEN TESTS" not in html, student
    report = (course / "feedback" / f"{DAY}-class-report.html").read_text()
    assert "data:image/png;base64," in report and "Checks that fail most" in report
    assert "fake-grader-module" in report and "redefined check()" in report
    assert (course / "feedback" / f"{DAY}-class-report.png").stat().st_size > 1000
    with open(course / "by-exercise.csv", newline="") as f:
        rows = {row["student_id"]: row for row in csv.DictReader(f)}
    assert set(rows) == set(manifest)
    assert rows["planted-axis"]["scaled_dot_product_attention"] == "0"
    assert rows["planted-axis"]["stable_softmax"] == "3"
    assert rows["missing-scale"]["total"] == "3"


def test_a_rerun_grades_only_what_is_missing(graded):
    course, manifest, done, records = graded
    (course / "feedback" / ".grader" / DAY / "untouched.json").unlink()  # as if interrupted
    again = grader("--course-dir", str(course), "autograde", DAY, "--workers", "2", *limits())
    assert again.returncode == 0, again.stdout + again.stderr
    assert "graded 1 submissions" in again.stdout
    assert f"{len(manifest) - 1} already graded" in again.stdout
    assert (course / "feedback" / ".grader" / DAY / "untouched.json").is_file()
