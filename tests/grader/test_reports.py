"""grader/autograde/reports.py's pages: what a student or a submission wrote is shown as text,
never run as HTML."""

from grader.autograde.reports import class_html, student_html

SCRIPT = "<script>alert('x')</script>"
ESCAPED = "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;"


def failed_record() -> dict:
    """A submission whose every shown string carries a script."""
    verdict = {"check": SCRIPT, "passed": False, "message": SCRIPT, "hint": SCRIPT, "key": "k"}
    return {
        "status": "stopped",
        "reason": SCRIPT,
        "notes": [SCRIPT],
        "reports": {
            "test_sdpa": [{"exercise": SCRIPT, "hidden": True, "seed": 7, "results": [verdict]}]
        },
        "tamper": [{"cell": SCRIPT, "kind": "monkeypatch", "what": SCRIPT}],
    }


def test_a_students_page_escapes_names_and_messages():
    page = student_html(SCRIPT, "day01-sdpa", failed_record(), {"test_sdpa": (1.0, 3.0)})
    assert "<script>" not in page
    # the name (title and heading), reason, note, exercise, check, message, hint, finding, cell
    assert page.count(ESCAPED) == 10
    assert "Score: 1 / 3" in page and "hidden checks, seed 7" in page


def test_the_class_report_escapes_names_and_messages():
    page = class_html(
        "day01-sdpa", {SCRIPT: failed_record()}, {SCRIPT: {"test_sdpa": (1.0, 3.0)}}, b"png"
    )
    assert "<script>" not in page
    assert ESCAPED in page and "data:image/png;base64,cG5n" in page
    assert "1 students in the gradebook; mean score 1.00 / 3." in page


def test_a_hint_that_several_checks_share_is_shown_once():
    verdicts = [
        {"check": f"check {i}", "passed": False, "message": f"off in case {i}", "hint": "fix it"}
        for i in range(3)
    ]
    record = {
        "reports": {
            "test_sdpa": [{"exercise": "sdpa", "hidden": False, "seed": 0, "results": verdicts}]
        }
    }
    page = student_html("ada", "day01-sdpa", record, {"test_sdpa": (0.0, 3.0)})
    assert all(f"off in case {i}" in page for i in range(3))
    assert page.count("hint: fix it") == 1 and page.count("hint: as above.") == 2
