"""Forbidden calls: the built-in softmax or attention, or the course's own reference version,
called from the student's function, plainly or with the shortcut guard switched off. A shortcut
earns nothing for its exercise, nor for the attention that calls it; the other exercises keep
their points."""

from tools.corpus.build import SDPA, SOFTMAX, Case, answers, filled


def shortcut_softmax():
    return filled(
        **{SOFTMAX: "def stable_softmax(x, dim=-1):\n    return torch.softmax(x, dim=dim)"}
    )


def shortcut_sdpa():
    return filled(
        **{
            SDPA: answers()[SDPA] + "\n\n\ndef scaled_dot_product_attention(q, k, v):\n"
            "    weights = stable_softmax(attention_scores(q, k), dim=-1)\n"
            "    return F.scaled_dot_product_attention(q, k, v), weights"
        }
    )


def own_softmax_for_attention(softmax: str):
    """`softmax` as the softmax answer; the attention answer calls the student's own softmax
    (the solution's, renamed), so only the softmax exercise is at stake."""
    own = answers()[SOFTMAX].replace("def stable_softmax(", "def _own_softmax(")
    return filled(
        **{
            SOFTMAX: f"{own}\n\n\n{softmax}",
            SDPA: answers()[SDPA].replace("stable_softmax(", "_own_softmax("),
        }
    )


def course_reference():
    return own_softmax_for_attention(
        "import course.reference.sdpa\n\n\ndef stable_softmax(x, dim=-1):\n"
        "    return course.reference.sdpa.stable_softmax(x, dim)"
    )


def guard_setprofile():
    # the guard sees the course's functions through a profile hook: switch it off first
    return own_softmax_for_attention(
        "import sys\n\nimport course.reference.sdpa\n\n\ndef stable_softmax(x, dim=-1):\n"
        "    sys.setprofile(None)\n"
        "    return course.reference.sdpa.stable_softmax(x, dim)"
    )


def softmax_answer(body: str, before: str = ""):
    """The solution with the softmax answer `before` + a stable_softmax whose body is `body`."""
    return filled(**{SOFTMAX: f"{before}def stable_softmax(x, dim=-1):\n{body}"})


def guard_thread():
    # the guard is a torch function mode, which is per thread
    return softmax_answer(
        "    with concurrent.futures.ThreadPoolExecutor(1) as pool:\n"
        "        return pool.submit(torch.softmax, x, dim).result()",
        "import concurrent.futures\n\n\n",
    )


def guard_thread_hidden_name():
    # and a name built at run time: the source scan refuses getattr(torch, <not a literal>)
    return softmax_answer(
        "    shortcut = getattr(torch, 'soft' + 'max')\n"
        "    with concurrent.futures.ThreadPoolExecutor(1) as pool:\n"
        "        return pool.submit(shortcut, x, dim).result()",
        "import concurrent.futures\n\n\n",
    )


def guard_aten():
    return softmax_answer("    return torch.ops.aten._softmax(x, dim % x.dim(), False)")


def guard_disable_torch_function():
    return softmax_answer(
        "    with torch._C.DisableTorchFunction():\n        return torch.softmax(x, dim)"
    )


def guard_replaced_method():
    return softmax_answer(
        "    return torch.softmax(x, dim)",
        "import grader.harness.guard\n\n"
        "grader.harness.guard.ShortcutGuard.__torch_function__ = (\n"
        "    lambda self, func, types, args=(), kwargs=None: func(*args, **(kwargs or {}))\n"
        ")\n\n\n",
    )


SHORTCUT = "stable_softmax calls torch.softmax"
YOURSELF = "which this exercise does not allow"  # a shortcut's finding, however named
CASES = {
    "shortcut-softmax": Case(
        shortcut_softmax, SHORTCUT, 3, findings=["stable_softmax calls", f"softmax, {YOURSELF}"]
    ),
    "shortcut-sdpa": Case(
        shortcut_sdpa,
        "attention calls F.scaled_dot_product_attention",
        6,
        findings=[f"scaled_dot_product_attention, {YOURSELF}"],
    ),
    "course-reference": Case(
        course_reference,
        "stable_softmax calls course.reference.sdpa.stable_softmax",
        6,
        findings=["course.reference.sdpa.stable_softmax"],
    ),
    "guard-setprofile": Case(
        guard_setprofile,
        "stable_softmax calls sys.setprofile(None), then the course's reference version",
        0,  # a notebook that reaches into the grader is not checked at all
    ),
    "guard-thread": Case(guard_thread, f"{SHORTCUT} in a thread", 3),
    "guard-thread-hidden-name": Case(
        guard_thread_hidden_name, f"{SHORTCUT}, named at run time, in a thread", 3
    ),
    "guard-aten": Case(guard_aten, "stable_softmax calls torch.ops.aten._softmax", 3),
    "guard-disable-torch-function": Case(
        guard_disable_torch_function,
        f"{SHORTCUT} under torch._C.DisableTorchFunction()",
        0,  # a notebook that reaches into the grader is not checked at all
    ),
    "guard-replaced-method": Case(
        guard_replaced_method,
        f"{SHORTCUT} after replacing the guard's __torch_function__",
        0,  # a notebook that reaches into the grader is not checked at all
    ),
}
