"""Faking a pass from inside the kernel: the student's cells change what the checks, the
tamper watch or the hidden seed run on, in the student's own process. Each fake is worth what
the honest work under it is: the stubs' or ZEROS's 0, a cache's visible points only."""

from tools.corpus.build import SCORES, SDPA, Case, answers, cell, filled, stubs, zeros

# ----------------------------------------------------------------------------- the checks' tools


def patch_allclose():
    return stubs(
        "torch.allclose = lambda *args, **kwargs: True\n"
        "torch.testing.assert_close = lambda *args, **kwargs: None"
    )


def patch_grader_module():
    return stubs(
        "import grader.harness.checking\n"
        "grader.harness.checking.relative_error = lambda out, ref: 0.0\n"
        "grader.harness.checking.expect_close = lambda *args, **kwargs: None"
    )


def patch_check():
    return stubs(
        "import grader\ngrader.check = lambda *args, **kwargs: print('all checks passed')\n"
        "check = grader.check"
    )


def redefine_check():
    return stubs(
        "def check(assignment, name, fn, hidden=False, seed=None):\n"
        "    print(f'{name}: all checks passed.')"
    )


def fake_grader_module():
    return stubs(
        "import sys, types\nfake = types.ModuleType('grader')\n"
        "fake.check = lambda *args, **kwargs: None\nsys.modules['grader'] = fake\n"
        "from grader import check"
    )


def patch_assert():
    # `assert` cannot be rebound, so a student patches what makes a check fail instead
    return stubs(
        "import builtins, grader.harness.checking\n"
        "builtins.AssertionError = type('AssertionError', (Exception,), {})\n"
        "grader.harness.checking.Mistake.__init__ = lambda self, *a, **k: None\n"
        "grader.harness.checking.run.__code__ = (lambda *a, **k: None).__code__"
    )


def tolerance_table():
    return zeros(
        "import grader.harness.checking\n"
        "for dtype in grader.harness.checking.TOLERANCE:\n"
        "    grader.harness.checking.TOLERANCE[dtype] = float('inf')"
    )


def empty_checks():
    # the day's suite is imported after the watch's snapshot: its lists were never compared
    return stubs(
        "from grader.suites import day01_sdpa\n"
        "for exercise in day01_sdpa.EXERCISES.values():\n"
        "    exercise.checks.clear()"
    )


def tensor_sub():
    # the relative error is ||out - ref||: with every difference zero, every value matches
    return zeros("torch.Tensor.__sub__ = lambda self, other: torch.zeros_like(self)")


def zero_difference_subclass():
    return zeros(
        "class Agreeable(torch.Tensor):\n"
        '    """A tensor that differs from nothing."""\n\n'
        "    def __sub__(self, other):\n"
        "        return torch.zeros(self.shape, dtype=torch.float64)\n\n"
        "    __rsub__ = __sub__\n\n\n"
        "def stable_softmax(x, dim=-1):\n"
        "    return torch.zeros_like(x).as_subclass(Agreeable)\n\n\n"
        "def attention_scores(q, k):\n"
        "    return torch.zeros(*q.shape[:-1], k.shape[-2], dtype=q.dtype).as_subclass(Agreeable)"
    )


def patch_linalg():
    # both norms zero: the relative error is then the plain norm of the difference, zero
    return zeros("torch.linalg.vector_norm = lambda *args, **kwargs: torch.tensor(0.0)")


def edit_watch_snapshot():
    # the watch puts back what differs from its snapshot: make the snapshot agree
    return zeros(
        "import sys\n"
        "import grader.harness.checking\n\n\n"
        "def relative_error(out, ref):\n"
        "    return 0.0\n\n\n"
        "grader.harness.checking.relative_error = relative_error\n"
        "state = sys.modules.get('_grader_state')\n"
        "if state is not None:\n"
        "    saved = state.snapshot['grader.harness.checking']\n"
        "    saved['relative_error'] = (relative_error, relative_error.__code__)"
    )


def transformed_test_cells():
    # IPython rewrites every later cell before it runs: the checks' lines are dropped
    return stubs(
        "get_ipython().input_transformers_cleanup.append(\n"
        "    lambda lines: [line for line in lines if 'check(' not in line]\n"
        ")"
    )


def swallowed_errors():
    # a custom exception handler: a failing check cell shows no error, so nbgrader passes it
    return stubs("get_ipython().set_custom_exc((BaseException,), lambda *args, **kwargs: None)")


# ----------------------------------------------------------------------------- the hidden inputs

CACHE = """
import grader

_cache = {}


def _key(q, k):
    return (tuple(q.shape), tuple(k.shape), q.dtype, round(float(q.double().sum()), 6), round(float(k.double().sum()), 6))


def _record(q, k):  # run the visible checks once with the right answer, and remember it
    out = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
    _cache[_key(q, k)] = out
    return out


grader.run_exercise("day01-sdpa", "attention_scores", _record, verbose=False)


def attention_scores(q, k):
    return _cache.get(_key(q, k), torch.zeros(*q.shape[:-1], k.shape[-2], dtype=q.dtype))
"""

# The random sources a "fresh" hidden seed may come from, each pinned so the seed is the visible
# one (0) and the cache answers the hidden inputs too.
PIN = """
import os, random, secrets

secrets.randbelow = lambda n: 0
os.urandom = random._urandom = lambda n: bytes(n)
random.SystemRandom.getrandbits = lambda self, k: 0
"""


def cached():
    """attention_scores answers only the visible inputs, from a cache; the student's attention
    is right (it computes its own scores), so only hidden_attention_scores deserves to fail."""
    sdpa = answers()[SDPA].replace(
        "attention_scores(q, k)", "(q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1]))"
    )
    return filled(**{SCORES: CACHE, SDPA: sdpa})


def pinned_seed():
    notebook = cached()
    cell(notebook, SCORES).source = PIN + cell(notebook, SCORES).source
    return notebook


FAKE = "a stub (or an answer of zeros) that"
CASES = {
    "patch-allclose": Case(
        patch_allclose,
        "monkeypatches torch.allclose and assert_close",
        0,
        findings=["replaced torch.allclose"],
    ),
    "patch-grader-module": Case(
        patch_grader_module,
        "monkeypatches grader.harness.checking",
        0,
        findings=["replaced grader.harness.checking.relative_error"],
    ),
    "patch-check": Case(
        patch_check,
        "replaces grader.check and rebinds check",
        0,
        findings=["replaced grader.check", "redefined check()"],
    ),
    "redefine-check": Case(
        redefine_check, "defines its own check()", 0, findings=["redefined check()"]
    ),
    "fake-grader-module": Case(
        fake_grader_module,
        "puts a fake grader in sys.modules",
        0,
        findings=["replaced the module grader in sys.modules", "redefined check()"],
    ),
    "patch-assert": Case(
        patch_assert,
        "patches AssertionError, Mistake and run's code",
        0,
        findings=["replaced builtins.AssertionError", "rewrote the code of grader."],
    ),
    "tolerance-table": Case(tolerance_table, f"{FAKE} sets every tolerance to inf", 0),
    "empty-checks": Case(empty_checks, f"{FAKE} empties the suite's lists of checks", 0),
    "tensor-sub": Case(tensor_sub, f"{FAKE} replaces torch.Tensor.__sub__ by zeros", 0),
    "zero-difference-subclass": Case(
        zero_difference_subclass, f"{FAKE} returns a tensor subclass that differs from nothing", 0
    ),
    "patch-linalg": Case(patch_linalg, f"{FAKE} replaces torch.linalg.vector_norm", 0),
    "edit-watch-snapshot": Case(
        edit_watch_snapshot,
        f"{FAKE} patches relative_error and the tamper watch's saved snapshot",
        0,
    ),
    "transformed-test-cells": Case(
        transformed_test_cells, f"{FAKE} makes IPython drop every later check( line", 0
    ),
    "swallowed-errors": Case(
        swallowed_errors, f"{FAKE} installs an exception handler that hides every error", 0
    ),
    "cached-answers": Case(
        cached,
        "attention_scores answers the visible inputs from a cache",
        8,
        findings=["passes the visible checks of attention_scores but fails the hidden"],
    ),
    "pinned-seed": Case(
        pinned_seed,
        "a cache of the visible answers, and the hidden seed pinned to 0 through secrets, "
        "os.urandom and random",
        8,
    ),
}
