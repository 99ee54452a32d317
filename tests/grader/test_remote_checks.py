"""Check cells graded in the grading process (grader/autograde/verdicts.py, remote.py): the
student's functions run in a real kernel, the verdicts here, out of the kernel's reach."""

import os
import socket
import tempfile
import textwrap
import threading
import time
import types

import pytest
import torch
from jupyter_client.manager import start_new_kernel
from nbclient.exceptions import DeadKernelError

from grader.autograde import kernel_rpc, remote, source_scan, verdicts
from grader.autograde.remote import RemoteKernel, Unreadable
from grader.suites import assignments, exercise
from helpers import solution_cells, solution_notebook

DAY = "day01-sdpa"
SECRET = b"a course secret"


@pytest.fixture(scope="module")
def kernel():
    """A real ipykernel with day01's solution defined in it, and the `ask` that reaches it."""
    manager, client = start_new_kernel(kernel_name="python3")

    def run(code: str):
        reply = client.execute_interactive(textwrap.dedent(code), timeout=120)
        assert reply["content"]["status"] == "ok", reply["content"]

    def ask(payload: str) -> str:
        return ask_once(client, payload)

    run("import torch")
    for source in solution_cells(DAY).values():
        run(source)
    yield run, ask
    client.stop_channels()
    manager.shutdown_kernel(now=True)


def ask_once(client, payload: str) -> str:
    """One request to the kernel of `client`, over a remote.Channel of its own, as execute.py
    asks a check cell's (here one channel per request: the tests run code between requests)."""
    with tempfile.TemporaryDirectory() as folder:
        channel = remote.Channel(os.path.join(folder, "checks"), time.monotonic() + 300)
        serving = client.execute("", silent=True, user_expressions=channel.expression())
        try:
            channel.connect(lambda: None)
            return channel.ask(payload)
        finally:
            channel.close()
            while client.get_shell_msg(timeout=300)["parent_header"].get("msg_id") != serving:
                pass


def grade(ask, name: str, *, hidden=True, student="ada", sources=()) -> verdicts.Report:
    call = verdicts.CheckCall(DAY, name, name, hidden)
    return verdicts.check_one(ask, call, student, SECRET, list(sources))


def test_a_right_answer_passes_and_a_wrong_one_fails_on_the_graders_side(kernel):
    run, ask = kernel
    assert grade(ask, "stable_softmax").passed
    run(
        """
        def wrong_softmax(x, dim=-1):
            e = torch.exp(x - x.amax(dim=dim, keepdim=True))
            return e / e.sum()  # over everything
        """
    )
    call = verdicts.CheckCall(DAY, "stable_softmax", "wrong_softmax", True)
    report = verdicts.check_one(ask, call, "ada", SECRET, [])
    assert not report.passed


@pytest.mark.parametrize(
    "attack",
    [
        # the tolerance table, the checks, the comparison and torch's own arithmetic, in the kernel
        "import grader.harness.checking as c; c.TOLERANCE[torch.float64] = 1e9",
        "import grader.suites.day01_sdpa as s; [e.checks.clear() for e in s.EXERCISES.values()]",
        "import grader.harness.checking as c; c.relative_error = lambda out, ref: 0.0",
        "torch.Tensor.__sub__ = lambda a, b: torch.zeros_like(a)",
        "torch.linalg.vector_norm = lambda *a, **k: torch.tensor(0.0)",
    ],
)
def test_what_a_submission_changes_in_its_kernel_cannot_pass_a_stub(kernel, attack):
    run, ask = kernel
    run(
        """
        def stub_softmax(x, dim=-1):
            return torch.zeros_like(x)
        """
    )
    run(attack)
    call = verdicts.CheckCall(DAY, "stable_softmax", "stub_softmax", True)
    report = verdicts.check_one(ask, call, "ada", SECRET, [])
    assert not report.passed


def test_a_tensor_subclass_that_hides_its_values_comes_back_as_its_values(kernel):
    run, ask = kernel
    run(
        """
        class AlwaysClose(torch.Tensor):
            def __sub__(self, other):
                return torch.zeros_like(other)
            def double(self):
                return self

        def subclass_softmax(x, dim=-1):
            return torch.zeros_like(x).as_subclass(AlwaysClose)
        """
    )
    call = verdicts.CheckCall(DAY, "stable_softmax", "subclass_softmax", True)
    report = verdicts.check_one(ask, call, "ada", SECRET, [])
    assert not report.passed
    value = RemoteKernel(ask).lookup("subclass_softmax")(torch.ones(2, 3))
    assert type(value) is torch.Tensor and torch.equal(value, torch.zeros(2, 3))


def test_the_hidden_seed_is_the_graders_same_on_a_regrade_and_per_student():
    call = verdicts.CheckCall(DAY, "stable_softmax", "stable_softmax", True)
    seed = verdicts.hidden_seed(SECRET, "ada", call)
    assert seed == verdicts.hidden_seed(SECRET, "ada", call)
    assert seed != verdicts.hidden_seed(SECRET, "bob", call)
    assert seed != verdicts.hidden_seed(b"another course", "ada", call)
    assert 0 <= seed < 2**31


def test_a_regrade_draws_the_same_inputs(kernel):
    _, ask = kernel
    first, again = (
        grade(ask, "scaled_dot_product_attention"),
        grade(ask, "scaled_dot_product_attention"),
    )
    assert first.seed == again.seed and first.results == again.results


def test_exceptions_not_implemented_and_value_errors_keep_their_meaning(kernel):
    run, ask = kernel
    run(
        """
        def stub_scores(q, k):
            raise NotImplementedError()

        def crashing_scores(q, k):
            return q @ k  # no transpose: a shape error for Lq != Lk or D != Lk
        """
    )
    stub = verdicts.check_one(
        ask, verdicts.CheckCall(DAY, "attention_scores", "stub_scores", False), "ada", SECRET, []
    )
    assert stub.keys == {"not_implemented"}
    crash = verdicts.check_one(
        ask,
        verdicts.CheckCall(DAY, "attention_scores", "crashing_scores", False),
        "ada",
        SECRET,
        [],
    )
    assert "raised" in crash.keys
    assert any("at: return q @ k" in r.message for r in crash.results if not r.passed)


def test_a_shortcut_is_refused_in_the_kernel_and_found_in_the_source(kernel):
    run, ask = kernel
    source = """
        def torch_softmax(x, dim=-1):
            return torch.softmax(x, dim=dim)
        """
    run(source)
    call = verdicts.CheckCall(DAY, "stable_softmax", "torch_softmax", False)
    in_kernel = verdicts.check_one(ask, call, "ada", SECRET, [])
    assert in_kernel.keys == {"shortcut"}
    # the in-kernel guard switched off: the source still says it
    run(
        "import grader.harness.guard as g; g.ShortcutGuard.__torch_function__ = "
        "lambda self, func, types, args=(), kwargs=None: func(*args, **(kwargs or {}))"
    )
    from_source = verdicts.check_one(ask, call, "ada", SECRET, [textwrap.dedent(source)])
    assert from_source.keys == {"shortcut"}
    assert "torch.softmax" in from_source.results[0].message


def test_gradients_flow_through_the_kernel(kernel):
    run, ask = kernel
    run(
        """
        def squares(x):
            return (x * x).sum(dim=-1)
        """
    )
    x = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    out = RemoteKernel(ask).lookup("squares")(x)
    out.sum().backward()
    assert torch.allclose(x.grad, 2 * x.detach())


def test_an_input_detached_in_place_in_the_kernel_is_detached_here_too(kernel):
    run, ask = kernel
    run(
        """
        def scaled_detaching(x, y):
            y.detach_()  # the caller's y loses its graph
            return 2 * x + 3 * y
        """
    )
    x, y = (torch.randn(3, dtype=torch.float64, requires_grad=True) for _ in range(2))
    out = RemoteKernel(ask).lookup("scaled_detaching")(x, y)
    assert x.requires_grad and not y.requires_grad
    out.sum().backward()  # the kernel's backward skips the detached y
    assert torch.equal(x.grad, torch.full((3,), 2.0, dtype=torch.float64)) and y.grad is None


def test_measurements_are_taken_around_the_students_call_in_the_kernel(kernel):
    run, ask = kernel
    from grader.harness.checking import student_lines

    run(
        """
        def looped(x):
            total = 0
            for i in range(x.shape[0]):
                total = total + x[i]
            return total
        """
    )
    looped = RemoteKernel(ask).lookup("looped")
    short, long = (
        student_lines(lambda: looped(torch.ones(4))),
        student_lines(lambda: looped(torch.ones(40))),
    )
    assert long > short > 0


@pytest.mark.parametrize(
    "reply",
    [
        {"tensor": {"dtype": "object", "shape": [1], "data": ""}},
        {"tensor": {"dtype": "float32", "shape": [2], "data": "AAAA"}},  # 3 bytes for 8
        {"tensor": {"dtype": "float32", "shape": [-1], "data": ""}},
        {"pickle": "gASV"},
        {"list": [1], "tuple": [2]},
        [1, 2],
    ],
)
def test_a_reply_that_is_not_plain_data_is_refused(reply):
    with pytest.raises(Unreadable):
        remote.decode(reply, None, [])


def kernel_side(path: str, answer):
    """A thread standing in for the kernel's side of a remote.Channel: it connects to `path` and
    runs `answer(connection)` (kernel_rpc.serve_checks, or a misbehaving kernel's)."""

    def connect_and_answer():
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as connection:
            connection.connect(path)
            answer(connection)

    thread = threading.Thread(target=connect_and_answer, daemon=True)
    thread.start()
    return thread


def flood(connection):
    kernel_rpc.receive_frame(connection)
    connection.sendall((remote.MAX_REPLY_BYTES + 1).to_bytes(kernel_rpc.FRAME_LENGTH, "big"))
    connection.recv(1)  # until the grader hangs up


def hang(connection):
    kernel_rpc.receive_frame(connection)
    time.sleep(3)


def test_a_channel_carries_requests_until_it_is_closed(tmp_path):
    path = str(tmp_path / "checks")
    channel = remote.Channel(path, time.monotonic() + 30)

    def echo(connection):
        while payload := kernel_rpc.receive_frame(connection):
            kernel_rpc.send_frame(connection, payload[::-1])

    thread = kernel_side(path, echo)
    channel.connect(lambda: None)
    assert [channel.ask(text) for text in ("abc", "x" * 100_000)] == ["cba", "x" * 100_000]
    channel.close()  # the empty request ends the kernel's side
    thread.join(5)
    assert not thread.is_alive() and not os.path.exists(path)


@pytest.mark.parametrize(
    "answer, reason",
    [(flood, "past the limit"), (hang, "no answer within the cell's time")],
)
def test_a_kernel_that_floods_or_hangs_is_gone_within_the_cells_time(tmp_path, answer, reason):
    path = str(tmp_path / "checks")
    channel = remote.Channel(path, time.monotonic() + 1)
    kernel_side(path, answer)
    channel.connect(lambda: None)
    began = time.monotonic()
    with pytest.raises(remote.KernelGone, match=reason):
        channel.ask("a request")
    assert time.monotonic() - began < 2
    channel.close()


def test_a_kernel_whose_side_never_connects_costs_the_connect_wait_or_names_its_death(
    tmp_path, monkeypatch
):
    monkeypatch.setattr(remote, "CONNECT_WAIT", 0.3)
    channel = remote.Channel(str(tmp_path / "checks"), time.monotonic() + 300)
    began = time.monotonic()
    with pytest.raises(remote.KernelGone, match="did not start answering the checks within 0.3 s"):
        channel.connect(lambda: None)
    assert time.monotonic() - began < 1
    channel.close()

    def dead():
        raise DeadKernelError("the kernel died")

    channel = remote.Channel(str(tmp_path / "checks"), time.monotonic() + 300)
    with pytest.raises(DeadKernelError):
        channel.connect(dead)
    channel.close()


def test_check_calls_reads_only_cells_made_of_check_calls():
    calls = verdicts.check_calls(
        '# hidden tests\ncheck("day01-sdpa", "stable_softmax", my_softmax, hidden=True)\n'
    )
    assert calls == [verdicts.CheckCall(DAY, "stable_softmax", "my_softmax", True)]
    assert verdicts.check_calls('check("day01-sdpa", "stable_softmax", f)\nprint(1)') is None
    assert verdicts.check_calls("assert f(1) == 2") is None
    assert verdicts.check_calls("check(a, 'x', f)") is None


@pytest.mark.parametrize(
    "body",
    [
        "return torch.softmax(x, dim)",
        "return F.softmax(x, dim=dim)",
        "return x.softmax(dim)",
        "return torch.nn.Softmax(dim=dim)(x)",
        "return sm(x, dim)",  # from torch.nn.functional import softmax as sm
        "return helper(x, dim)",  # a notebook function that calls it
        "return stable(x, dim)",  # the course's own version, imported under another name
    ],
)
def test_the_source_scan_finds_every_spelling(body):
    sources = [
        "import torch\nimport torch.nn.functional as F\n"
        "from torch.nn.functional import softmax as sm\n"
        "from course.reference.sdpa import stable_softmax as stable",
        "def helper(x, dim):\n    return torch.softmax(x, dim)",
        f"def stable_softmax(x, dim=-1):\n    {body}",
    ]
    forbidden = exercise(DAY, "stable_softmax").forbidden
    assert source_scan.shortcuts(sources, "stable_softmax", forbidden)


def test_the_source_scan_leaves_the_students_own_names_alone():
    sources = [
        "import torch",
        "def other(x):\n    return torch.softmax(x, -1)  # not called below",
        "def stable_softmax(x, dim=-1):\n"
        "    softmax = torch.exp(x - x.amax(dim=dim, keepdim=True))  # 'softmax' is mine\n"
        "    # torch.softmax would be a shortcut\n"
        "    return softmax / softmax.sum(dim=dim, keepdim=True)",
    ]
    forbidden = exercise(DAY, "stable_softmax").forbidden
    assert source_scan.shortcuts(sources, "stable_softmax", forbidden) == []


@pytest.mark.parametrize(
    "line",
    [
        "import grader.autograde.kernel_rpc as rpc",
        "from grader.harness import guard",
        "import sys; sys.setprofile(None)",
        "from sys import settrace",
        "with torch._C.DisableTorchFunction(): pass",
        "import grader; grader.suites.day01_sdpa.EXERCISES.clear()",
        "state = __import__('sys').modules['_grader_state']",
        "__import__('importlib').import_module('grader.autograde.' + 'kernel_rpc')",
    ],
)
def test_a_notebook_that_reaches_into_the_grader_is_found_and_not_checked(kernel, line):
    _, ask = kernel
    sources = ["import torch\nfrom grader import check", line, "def f(x):\n    return x"]
    found = source_scan.tampering(sources)
    assert found and found[0][0] == 2
    call = verdicts.CheckCall(DAY, "stable_softmax", "stable_softmax", True)
    outputs, reports = verdicts.grade_cell(ask, [call], "ada", SECRET, sources, 1.0, False)
    assert reports[0][1].keys == {"tampering"}
    assert outputs[-1]["ename"] == "CheckFailed"


@pytest.mark.parametrize("assignment", assignments())
def test_the_course_notebooks_do_not_reach_into_the_grader(assignment):
    cells = solution_notebook(assignment).cells
    assert source_scan.tampering([c.source for c in cells if c.cell_type == "code"]) == []


def test_objects_in_the_kernel_read_like_local_ones(kernel):
    run, ask = kernel
    run(
        """
        class Buffer(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.k = torch.zeros(2, 8)
                self.weight = torch.nn.Parameter(torch.ones(3))

            def first(self, n):
                return self.k[:, :n]  # a view of the buffer

        def feed(recorder, steps):
            recorder.calls.extend(range(steps))
            return steps
        """
    )
    from grader.harness.measuring import address

    buffer = RemoteKernel(ask).lookup("Buffer")()
    assert isinstance(buffer, torch.nn.Module)
    assert getattr(buffer, "missing", "default") == "default"  # AttributeError, as locally
    assert isinstance(buffer.weight, torch.nn.Parameter)
    assert address(buffer.first(3)) == address(buffer.k)  # a view of the kernel's buffer
    recorder = types.SimpleNamespace(calls=[])  # a check's instrumented argument
    assert RemoteKernel(ask).lookup("feed")(recorder, 3) == 3
    assert recorder.calls == [0, 1, 2]  # recorded in the kernel, written back here


def test_a_generator_passed_in_advances_as_if_passed_by_reference(kernel):
    run, ask = kernel
    run(
        """
        def draw_two(generator):
            return torch.rand(2, generator=generator)
        """
    )
    generator, twin = torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)
    first = RemoteKernel(ask).lookup("draw_two")(generator)
    assert torch.equal(first, torch.rand(2, generator=twin))
    assert torch.equal(torch.rand(3, generator=generator), torch.rand(3, generator=twin))


def test_an_input_written_in_place_in_the_kernel_is_seen_by_the_check(kernel):
    run, ask = kernel
    run(
        """
        def softmax_in_place(x, dim=-1):
            x -= x.amax(dim=dim, keepdim=True)  # the caller's x is changed
            return x.exp() / x.exp().sum(dim=dim, keepdim=True)
        """
    )
    call = verdicts.CheckCall(DAY, "stable_softmax", "softmax_in_place", True)
    report = verdicts.check_one(ask, call, "ada", SECRET, [])
    assert not report.passed
    assert "modified_input" in {result.key for result in report.results if not result.passed}


def test_an_input_reshaped_in_place_in_the_kernel_is_seen_by_the_check(kernel):
    run, ask = kernel
    run(
        """
        def padding_mask_unsqueezing(lengths, max_len):
            lengths.unsqueeze_(1)  # the caller's lengths becomes (B, 1)
            return torch.arange(max_len, device=lengths.device) < lengths
        """
    )
    call = verdicts.CheckCall("day02-masks", "padding_mask", "padding_mask_unsqueezing", True)
    report = verdicts.check_one(ask, call, "ada", SECRET, [])
    assert not report.passed
    assert "modified_input" in {result.key for result in report.results if not result.passed}


def test_vars_of_a_remote_object_are_the_students_objects_attributes(kernel):
    run, ask = kernel
    run(
        """
        class Ring:
            def __init__(self, window):
                self.k = torch.zeros(1, 1, window, 2)
                self.seen = 0
        """
    )
    ring = RemoteKernel(ask).lookup("Ring")(3)
    state = vars(ring)
    assert state["seen"] == 0 and state["k"].shape == (1, 1, 3, 2)


def setup_and_solution_cells(assignment: str) -> list:
    """The sources a graded kernel needs for the checks: the locked setup cell, then every
    solution cell (no explorations, benchmarks or training)."""
    cells = solution_notebook(assignment).cells
    return [
        c.source
        for c in cells
        if c.cell_type == "code"
        and (
            c.metadata.get("nbgrader", {}).get("grade_id") == "setup"
            or c.metadata.get("nbgrader", {}).get("solution")
        )
    ]


@pytest.mark.slow
@pytest.mark.parametrize("assignment", assignments())
def test_every_solution_passes_every_check_run_from_outside_its_kernel(assignment):
    """Each day's reference solution, run in a real kernel, passes every exercise's visible and
    hidden checks graded from this process: the proxies, probes and write-backs of remote.py
    carry every kind of check the suites have."""
    from grader.suites import exercises

    manager, client = start_new_kernel(kernel_name="python3")
    try:
        for source in setup_and_solution_cells(assignment):
            reply = client.execute_interactive(source, timeout=300)
            assert reply["content"]["status"] == "ok", reply["content"].get("evalue")

        def ask(payload: str) -> str:
            return ask_once(client, payload)

        sources = setup_and_solution_cells(assignment)
        for name in exercises(assignment):
            for hidden in (False, True):
                call = verdicts.CheckCall(assignment, name, name, hidden)
                report = verdicts.check_one(ask, call, "ada", SECRET, sources)
                assert report.passed, (name, hidden, [r for r in report.results if not r.passed])
    finally:
        client.stop_channels()
        manager.shutdown_kernel(now=True)


def test_a_torch_function_named_at_run_time_is_a_shortcut():
    sources = [
        "import torch",
        "def stable_softmax(x, dim=-1):\n"
        "    shortcut = getattr(torch, 'soft' + 'max')\n"
        "    return shortcut(x, dim)",
    ]
    found = source_scan.shortcuts(
        sources, "stable_softmax", exercise(DAY, "stable_softmax").forbidden
    )
    assert found and "getattr(torch, 'soft' + 'max')" in found[0][0]
    literal = [
        "import torch",
        "def stable_softmax(x, dim=-1):\n    return getattr(torch, 'exp')(x)",
    ]
    assert source_scan.shortcuts(literal, "stable_softmax", {}) == []
