"""The shortcut guard: while a student's function is graded, calling the built-in that the
exercise asks them to write fails with a clear message instead of quietly passing.

It is a torch function mode, so it sees every torch call however it is spelled: `torch.softmax`,
`F.softmax`, `x.softmax`, `nn.Softmax()(x)`, or a name imported before grading began.
"""

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
    def __init__(self, exercise: str, forbidden: dict):
        super().__init__()
        self.exercise = exercise
        self.forbidden = forbidden
        self.tripped = None  # (name, advice) of the first forbidden call

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
