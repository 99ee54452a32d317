"""nbgrader configuration for Attention from Scratch. Run nbgrader (or `python -m grader`) from
this folder: solutions/ is the instructor's source, exercises/ the student release.

Each day is one assignment: solutions/dayNN-slug/dayNN-slug.ipynb.
"""

c = get_config()  # noqa: F821 (nbgrader injects get_config)

c.CourseDirectory.course_id = "attention-from-scratch"
c.CourseDirectory.source_directory = "solutions"
c.CourseDirectory.release_directory = "exercises"
# What nbgrader must not copy beside a notebook: its defaults, and solutions/DAY/DAY.py, the text
# the solution notebook is built from (the solution itself), which must never reach a student.
c.CourseDirectory.ignore = [".ipynb_checkpoints", "*.pyc", "__pycache__", "feedback", "*.py"]

# Seconds per cell: Triton's CPU interpreter (day07, day09) runs kernels in Python, slowly.
c.Execute.timeout = 300

# nbgrader zeroes a test cell that writes anything to stderr. torch warns there (Python
# warnings, and C++ ones such as "[W1122 13:00:00 ...] Warning: ..."); a warning is not a failure.
c.IgnorePattern.enabled = True
c.IgnorePattern.pattern = r"Warning|^\[W\d{4}"

c.ClearSolutions.code_stub = {"python": "# YOUR CODE HERE\nraise NotImplementedError()"}

# Feedback shows what the checks printed (verdicts and hints), never the source of hidden tests:
# stock generate_feedback renders the autograded notebook, hidden test lines included.
from nbconvert.preprocessors import CSSHTMLHeaderPreprocessor  # noqa: E402
from nbgrader.preprocessors import ClearHiddenTests, GetGrades  # noqa: E402

c.GenerateFeedback.preprocessors = [GetGrades, ClearHiddenTests, CSSHTMLHeaderPreprocessor]
