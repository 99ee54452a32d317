"""Feedback, the class report and the CSV by exercise, from what `autograde --workers` recorded
(feedback/.grader/ASSIGNMENT/STUDENT.json) and the gradebook's scores.

A student's page is feedback/STUDENT/ASSIGNMENT-checks.html, beside the folder stock
`nbgrader generate_feedback` writes, feedback/STUDENT/ASSIGNMENT/, never in it: nbgrader owns that
folder whole. It skips a student whose folder exists ("Skipping existing assignment"), so a page
in it would stop stock feedback from ever being written, and it deletes the folder before writing
again (with --force, or once the student is graded again), which would delete the page.

Nothing here reads or shows the source of a test cell: a student's page lists each graded cell's
points and each check's verdict, message and hint, which is all the checks print. The pages are
Jinja2 templates (templates/*.html.j2), autoescaped: a name or a message is shown, never run.
"""

import base64
import collections
import csv
import html
import io
import json
import re
from pathlib import Path

import jinja2
import nbformat
from markupsafe import Markup
from nbgrader.api import MissingEntry

from grader.autograde import gradebook
from grader.autograde.pipeline import GradingError

CHECK_CALL = re.compile(r"""check\(\s*["']([\w-]+)["']\s*,\s*["'](\w+)["']""")


def load_records(root: Path, assignment: str) -> dict:
    return {
        p.stem: json.loads(p.read_text())
        for p in sorted(gradebook.records_dir(root, assignment).glob("*.json"))
    }


def cell_exercises(root: Path, assignment: str) -> dict:
    """{grade cell id: exercise name}, from the check(...) call in each test cell of the source
    (a cell without one is its own exercise)."""
    out = {}
    for path in sorted((root / "solutions" / assignment).glob("*.ipynb")):
        for cell in nbformat.read(path, as_version=4).cells:
            meta = cell.metadata.get("nbgrader", {})
            if meta.get("grade"):
                found = CHECK_CALL.search(cell.source)
                out[meta["grade_id"]] = found.group(2) if found else meta["grade_id"]
    return out


def grades(root: Path, assignment: str) -> dict:
    """{student: {grade cell id: (score, max_score)}} from the class gradebook."""
    out = {}
    with gradebook.open_gradebook(gradebook.db_url(root), gradebook.course_id(root)) as book:
        try:
            submissions = book.assignment_submissions(assignment)
        except MissingEntry:
            return {}
        for submission in submissions:
            out[submission.student_id] = {
                g.name: (g.score, g.max_score) for nb in submission.notebooks for g in nb.grades
            }
    return out


# ----------------------------------------------------------------------------- CSV


def write_csv(root: Path, assignment: str, to: Path) -> Path:
    """One row per student, one column per exercise (points), then total, max and status."""
    exercises = cell_exercises(root, assignment)
    names = list(dict.fromkeys(exercises.values()))
    records = load_records(root, assignment)
    table = grades(root, assignment)
    with open(to, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["student_id", *names, "total", "max_score", "status", "reason"])
        for student in sorted(table):
            per = collections.defaultdict(float)
            for cell, (score, _) in table[student].items():
                per[exercises.get(cell, cell)] += score or 0
            total = sum(score or 0 for score, _ in table[student].values())
            maximum = sum(m or 0 for _, m in table[student].values())
            record = records.get(student, {})
            writer.writerow(
                [
                    student,
                    *(f"{per[n]:g}" for n in names),
                    f"{total:g}",
                    f"{maximum:g}",
                    record.get("status", ""),
                    record.get("reason", ""),
                ]
            )
    return Path(to)


# ----------------------------------------------------------------------------- pages


def escape(value) -> Markup:
    """Autoescaping as the pages always escaped: the standard library's html.escape (a quote as
    &#x27;, where markupsafe would write &#39;)."""
    return value if isinstance(value, Markup) else Markup(html.escape(str(value)))


PAGES = jinja2.Environment(
    loader=jinja2.PackageLoader("grader.autograde"),  # grader/autograde/templates/
    autoescape=jinja2.select_autoescape(["html.j2"]),
    finalize=escape,
    undefined=jinja2.StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)


def checks_page(root: Path, student: str, assignment: str) -> Path:
    """Where a student's page goes: feedback/STUDENT/ASSIGNMENT-checks.html."""
    return root / "feedback" / student / f"{assignment}-checks.html"


def student_html(student: str, assignment: str, record: dict, scores: dict) -> str:
    """One student's checks page: points and the checks' verdicts per graded cell, the notes and
    what was reported to the instructor."""
    return PAGES.get_template("checks.html.j2").render(
        student=student,
        assignment=assignment,
        record=record,
        scores=scores,
        total=sum(s or 0 for s, _ in scores.values()),
        maximum=sum(m or 0 for _, m in scores.values()),
    )


# ----------------------------------------------------------------------------- class report


def failing_checks(records: dict) -> list:
    """[(exercise, check, failed, ran, {hint: count})], most failed first."""
    ran = collections.Counter()
    failed = collections.Counter()
    hints = collections.defaultdict(collections.Counter)
    for record in records.values():
        seen = set()
        for runs in record.get("reports", {}).values():
            for report in runs:
                for result in report["results"]:
                    key = (report["exercise"], result["check"])
                    if key in seen:
                        continue  # visible and hidden runs of one check count once per student
                    seen.add(key)
                    ran[key] += 1
                    if not result["passed"]:
                        failed[key] += 1
                        if result["hint"]:
                            hints[key][result["hint"]] += 1
    return sorted(
        ((ex, ch, failed[(ex, ch)], ran[(ex, ch)], dict(hints[(ex, ch)])) for ex, ch in ran),
        key=lambda row: (-row[2] / max(row[3], 1), row[0], row[1]),
    )


def plot_png(rows: list, scores: list) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(
        1, 2, figsize=(12, max(3, 0.35 * len(rows) + 1.5)), gridspec_kw={"width_ratios": [2, 1]}
    )
    labels = [f"{ex}: {ch[:40]}" for ex, ch, *_ in rows][::-1]
    rates = [100 * failed / max(ran, 1) for _, _, failed, ran, _ in rows][::-1]
    left.barh(range(len(rates)), rates, color="#c44")
    left.set_yticks(range(len(rates)), labels, fontsize=8)
    left.set_xlabel("% of students failing")
    left.set_xlim(0, 100)
    left.set_title("checks that fail most")
    right.hist(scores, bins=10, color="#46a")
    right.set_xlabel("score")
    right.set_ylabel("students")
    right.set_title("scores")
    fig.tight_layout()
    out = io.BytesIO()
    fig.savefig(out, format="png", dpi=90)
    plt.close(fig)
    return out.getvalue()


def class_html(assignment: str, records: dict, table: dict, png: bytes) -> str:
    """The class report: the checks that fail most with the hints students got, the plot, the
    submissions not graded to the end, and every tampering or shortcut found."""
    totals = {s: sum(v or 0 for v, _ in g.values()) for s, g in table.items()}
    failing = [
        (exercise, check, failed, ran, sorted(hints.items(), key=lambda kv: -kv[1]))
        for exercise, check, failed, ran, hints in failing_checks(records)
        if failed
    ]
    return PAGES.get_template("class_report.html.j2").render(
        assignment=assignment,
        students=len(table),
        mean=sum(totals.values()) / max(len(totals), 1),
        maximum=max((sum(m or 0 for _, m in g.values()) for g in table.values()), default=0),
        png_base64=base64.b64encode(png).decode(),
        failing=failing,
        records=sorted(records.items()),
        totals=totals,
    )


def write_all(root: Path, assignment: str, csv_path: Path = None) -> dict:
    """Write every student's checks page, the class report (HTML and PNG) and the CSV."""
    records = load_records(root, assignment)
    if not records:
        raise GradingError(
            f"nothing recorded for {assignment}: run `python -m grader autograde {assignment} "
            "--workers N` first."
        )
    gradebook.check_gradebook(gradebook.db_url(root))
    table = grades(root, assignment)
    for student, record in records.items():
        page = checks_page(root, student, assignment)
        page.parent.mkdir(parents=True, exist_ok=True)
        page.write_text(student_html(student, assignment, record, table.get(student, {})))
    rows = failing_checks(records)
    png = plot_png(rows, [sum(v or 0 for v, _ in g.values()) for g in table.values()])
    (root / "feedback" / f"{assignment}-class-report.png").write_bytes(png)
    report = root / "feedback" / f"{assignment}-class-report.html"
    report.write_text(class_html(assignment, records, table, png))
    csv_path = write_csv(
        root, assignment, csv_path or root / "feedback" / f"{assignment}-grades.csv"
    )
    return {
        "feedback": checks_page(root, "STUDENT", assignment),
        "class report": report,
        "grades by exercise": csv_path,
    }
