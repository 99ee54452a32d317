"""The shortcut guard on its own: torch built-ins by name, Python functions by code object."""

import sys

import torch

import course.reference.masks
import course.reference.sdpa
from course.reference.masks import causal_mask
from grader.harness.checking import run
from grader.harness.guard import SOFTMAX


def one_call(impl, rng):
    """calls the student's function once"""
    impl(3)


def test_a_forbidden_python_function_is_caught_however_it_was_imported():
    forbidden = {causal_mask: "build the mask yourself, from torch.arange."}
    for impl in (lambda n: causal_mask(n), lambda n: course.reference.masks.causal_mask(n)):
        report = run("causal_mask", impl, [one_call], forbidden, verbose=False)
        assert report.keys == {"shortcut"}
        assert "course.reference.masks.causal_mask" in report.results[0].message
        assert report.results[0].hint == "build the mask yourself, from torch.arange."


def test_allowed_calls_pass_and_the_outer_profiler_is_restored():
    def outer(frame, event, arg):
        pass

    sys.setprofile(outer)
    try:
        report = run(
            "causal_mask",
            lambda n: torch.ones(n, n).tril().bool(),
            [one_call],
            {causal_mask: "no"},
            verbose=False,
        )
        assert sys.getprofile() is outer
    finally:
        sys.setprofile(None)
    assert report.passed


def test_torch_names_still_work_beside_functions():
    report = run(
        "softmax",
        lambda n: torch.softmax(torch.zeros(n), 0),
        [one_call],
        {**SOFTMAX, causal_mask: "no"},
        verbose=False,
    )
    assert report.keys == {"shortcut"}


def softmax_call(impl, rng):
    """calls the student's softmax once"""
    impl(torch.randn(2, 3, generator=rng))


def test_the_course_reference_of_an_exercise_is_a_shortcut_even_when_the_suite_omits_it():
    report = run(
        "stable_softmax",
        lambda x: course.reference.sdpa.stable_softmax(x),
        [softmax_call],
        {},
        verbose=False,
    )
    assert report.keys == {"shortcut"}
    assert "course.reference.sdpa.stable_softmax" in report.results[0].message
    assert "course's reference version" in report.results[0].hint
    # another exercise may use it
    assert run(
        "attention",
        lambda x: course.reference.sdpa.stable_softmax(x),
        [softmax_call],
        {},
        verbose=False,
    ).passed


def test_a_decorated_student_function_is_not_taken_for_a_decorated_course_reference():
    """course.reference.kv_cache.generate is wrapped by torch.no_grad, whose wrapper code every no_grad
    function shares: the guard must compare the functions underneath."""
    import course.reference.kv_cache  # noqa: F401  (so that its generate is a known course reference)
    from grader.harness.checking import guarded

    @torch.no_grad()
    def generate(x):
        return x + 1

    assert guarded(generate, "generate", {})(torch.ones(1)).item() == 2


def test_what_a_checked_function_prints_to_stderr_shows_on_stdout(capsys):
    """nbgrader zeroes a test cell with stderr output: a student's debugging line must not."""
    import sys

    from grader.harness.checking import guarded

    def attention_scores(x):
        print("debugging", file=sys.stderr)
        return x

    assert guarded(attention_scores, "attention_scores", {})(3) == 3
    printed = capsys.readouterr()
    assert "debugging" in printed.out and printed.err == ""


def test_a_torch_warning_names_the_students_line_not_the_guard():
    """torch warns from C++ at the innermost Python frame, the guard's dispatch; the student needs
    the line of their own call."""
    import inspect
    import warnings

    from grader.harness.checking import guarded

    def attention_scores(x):
        return torch.tensor(x)  # warns: copy-constructing from a tensor

    student_line = inspect.getsourcelines(attention_scores)[1] + 1
    with warnings.catch_warnings(record=True) as shown:
        warnings.simplefilter("always")
        outer = warnings.showwarning
        guarded(attention_scores, "attention_scores", {})(torch.ones(2))
        assert warnings.showwarning is outer
    [warning] = shown
    assert "copy construct" in str(warning.message)
    assert (warning.filename, warning.lineno) == (__file__, student_line)
