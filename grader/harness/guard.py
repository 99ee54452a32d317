"""The shortcut guard: while a student's function is graded, calling the built-in that the
exercise asks them to write, or the course's own library version of it, fails the check with a
clear message instead of quietly passing.

Torch built-ins are caught by a torch function mode, so every spelling is seen: `torch.softmax`,
`F.softmax`, `x.softmax`, `nn.Softmax()(x)`, or a name imported before grading began. Python
functions (the course's library versions, e.g. `course.reference.masks.causal_mask`) are caught by a
profile hook that sees each call's code object, however the function was imported.
"""

import sys
import warnings
from pathlib import Path

import torch
from torch.overrides import TorchFunctionMode

TORCH_DIR = str(Path(torch.__file__).parent)

# What to write instead of each family of built-ins. Keys are the names torch reports, with
# leading underscores and the `special_` prefix removed; private variants such as
# `_scaled_dot_product_attention_math` are caught by prefix.
SOFTMAX = {
    "softmax": "write softmax yourself: subtract the max along dim, torch.exp, divide by the sum.",
    "log_softmax": "write softmax yourself: subtract the max along dim, torch.exp, divide by the sum.",
    "softmin": "write softmax yourself: subtract the max along dim, torch.exp, divide by the sum.",
    "safe_softmax": "write softmax yourself: subtract the max along dim, torch.exp, divide by the sum.",
}
SDPA = {
    "scaled_dot_product_attention": "build attention from its parts: scores, your stable_softmax, "
    "then weights @ v.",
}


class ShortcutUsed(BaseException):
    """Raised inside the student's code. A BaseException, so `except Exception` cannot hide it."""


class ShortcutGuard(TorchFunctionMode):
    """`forbidden` maps torch names (str) and Python functions to the advice to give instead."""

    def __init__(self, exercise: str, forbidden: dict):
        super().__init__()
        self.exercise = exercise
        self.forbidden = {
            name: advice for name, advice in forbidden.items() if isinstance(name, str)
        }
        self.functions = {
            fn.__code__: (f"{fn.__module__}.{fn.__qualname__}", advice)
            for fn, advice in forbidden.items()
            if not isinstance(fn, str)
        }
        self.tripped = None  # (name, advice) of the first forbidden call

    def __enter__(self):
        if self.functions:
            self._outer_profile = sys.getprofile()
            sys.setprofile(self._watch_calls)
        self._outer_showwarning = warnings.showwarning
        warnings.showwarning = self._show_at_student_line
        return super().__enter__()

    def __exit__(self, *exc_info):
        if self.functions:
            sys.setprofile(self._outer_profile)
        warnings.showwarning = self._outer_showwarning
        return super().__exit__(*exc_info)

    def _show_at_student_line(self, message, category, filename, lineno, file=None, line=None):
        # torch warns from C++ and names the innermost Python frame, which is this guard's
        # dispatch below; the student needs the line of their own code that made the call.
        caller = _torch_caller() if filename == __file__ else None
        if caller is not None:
            filename, lineno, line = caller.f_code.co_filename, caller.f_lineno, None
        self._outer_showwarning(message, category, filename, lineno, file, line)

    def _watch_calls(self, frame, event, arg):
        # Only recorded, not raised: the student's call runs on and the check reports it after.
        if event == "call" and frame.f_code in self.functions:
            self.tripped = self.tripped or self.functions[frame.f_code]

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", "")
        advice = self._advice_for(name)
        if advice is not None:
            self.tripped = self.tripped or (name, advice)
            raise ShortcutUsed(f"{self.exercise} must not call {name}")
        return func(*args, **(kwargs or {}))

    def _advice_for(self, name: str):
        bare = name.lstrip("_").removeprefix("special_")
        for forbidden, advice in self.forbidden.items():
            if bare == forbidden or bare.startswith(forbidden + "_"):
                return advice
        return None


def _torch_caller():
    """The frame that called torch, outside this guard and torch's own Python wrappers; None when
    the guard's dispatch is not on the stack."""
    frame = sys._getframe(1)
    while frame is not None and frame.f_code is not ShortcutGuard.__torch_function__.__code__:
        frame = frame.f_back
    while frame is not None and (
        frame.f_code.co_filename == __file__ or frame.f_code.co_filename.startswith(TORCH_DIR)
    ):
        frame = frame.f_back
    return frame
