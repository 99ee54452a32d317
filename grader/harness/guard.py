"""The shortcut guard: while a student's function is graded, calling the built-in that the
exercise asks them to write, or the course's own library version of it, fails the check with a
clear message instead of quietly passing.

Torch built-ins are caught by a torch function mode, so every spelling is seen: `torch.softmax`,
`F.softmax`, `x.softmax`, `nn.Softmax()(x)`, or a name imported before grading began. Python
functions (the course's library versions, e.g. `course.reference.masks.causal_mask`) are caught by a
profile hook that sees each call's code object, however the function was imported.
"""

import sys

from torch.overrides import TorchFunctionMode

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
        return super().__enter__()

    def __exit__(self, *exc_info):
        if self.functions:
            sys.setprofile(self._outer_profile)
        return super().__exit__(*exc_info)

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
