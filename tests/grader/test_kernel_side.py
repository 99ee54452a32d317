"""grader/autograde/kernel_side.py, run in this process as the kernel runs it: the snapshot, a
reset that finds and puts back what a submission replaced, and the verdicts collected."""

import json
import sys

import pytest

import grader
import grader.harness.checking
from grader.autograde import kernel_side
from grader.autograde.execute import kernel_definition


@pytest.fixture
def watched():
    """The snapshot taken, then removed again so grader.check stops recording verdicts."""
    assert json.loads(kernel_side.snapshot()) == []
    yield sys.modules["_grader_state"]
    del sys.modules["_grader_state"]


def test_reset_puts_back_what_was_replaced_and_reports_it(watched):
    relative_error = grader.harness.checking.relative_error
    namespace = {"check": lambda *args: None}
    grader.harness.checking.relative_error = lambda out, ref: 0.0
    try:
        found = json.loads(kernel_side.reset(namespace))
    finally:
        grader.harness.checking.relative_error = relative_error
    assert "replaced grader.harness.checking.relative_error" in found
    assert "redefined check()" in found
    assert grader.harness.checking.relative_error is relative_error
    assert namespace["check"] is grader.check
    assert json.loads(kernel_side.reset(namespace)) == []  # nothing changed since


def test_verdicts_of_the_checks_that_ran_are_collected(watched, solution_namespace):
    softmax = solution_namespace("day01-sdpa")["stable_softmax"]
    grader.run_exercise("day01-sdpa", "stable_softmax", softmax, verbose=False)
    (report,) = json.loads(kernel_side.collected_reports())
    assert report["assignment"] == "day01-sdpa" and report["exercise"] == "stable_softmax"
    assert all(result["passed"] for result in report["results"])
    kernel_side.reset({})
    assert json.loads(kernel_side.collected_reports()) == []


def test_each_function_is_sent_under_a_name_no_notebook_uses():
    namespace = {}
    exec(kernel_definition(kernel_side.collected_reports), namespace)
    assert json.loads(namespace["__grader_collected_reports"]()) == []
    assert "collected_reports" not in namespace


def test_torch_wrapping_its_own_function_is_not_a_change_but_a_students_wrapper_is(watched):
    import functools

    import torch

    seed = torch.manual_seed
    try:
        # what torch._dynamo does to torch.manual_seed when a notebook first imports it
        torch.manual_seed = torch._disable_dynamo(seed)
        assert json.loads(kernel_side.reset({})) == []

        @functools.wraps(seed)
        def pinned(value):
            return seed(0)

        torch.manual_seed = pinned
        assert json.loads(kernel_side.reset({})) == ["replaced torch.manual_seed"]
    finally:
        torch.manual_seed = seed
