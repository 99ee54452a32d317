"""What the autograder runs inside a submission's kernel (see execute.py): the tamper watch's
snapshot, the reset before each graded cell, and the collection of the checks' verdicts.

The kernel never imports this module: execute.py sends each function's source (inspect.getsource)
with every call, so a submission that rewrites a module cannot switch the watch off. Hence each
function is self-contained: it imports what it uses and reads no module-level name. Each returns
JSON, which the kernel hands back as a user expression.

The state the watch compares against lives in sys.modules["_grader_state"], where grader.check()
also leaves its verdicts (grader._record).
"""


def snapshot() -> str:
    """Record the grader's modules, torch, torch.nn.functional, torch.Tensor and builtins, and
    the grader's exercises and check(), before the first cell runs."""
    import builtins
    import sys
    import types

    import torch
    import torch.nn.functional  # noqa: F401  watched: imported here so it is in sys.modules

    import grader
    import grader.harness.checking
    import grader.harness.guard
    import grader.suites  # noqa: F401  watched: the suites hold the exercises and their checks

    state = types.ModuleType("_grader_state")
    state.reports = []
    names = ["builtins", "torch", "torch.nn.functional", "torch.testing"] + sorted(
        n for n in sys.modules if n == "grader" or n.startswith("grader.")
    )
    state.modules = {n: sys.modules[n] for n in names if n in sys.modules}
    watched = dict(state.modules)
    watched["torch.Tensor"] = torch.Tensor
    for name, module in list(state.modules.items()):
        if name.startswith("grader"):
            for key, value in list(vars(module).items()):
                if isinstance(value, type) and getattr(value, "__module__", "") == name:
                    watched[f"{name}.{key}"] = value
    state.watched = watched
    # IPython swaps these builtins in and out around every execution
    managed = {
        "input",
        "get_ipython",
        "display",
        "exit",
        "quit",
        "help",
        "breakpoint",
        "copyright",
        "credits",
        "license",
        "getpass",
        "raw_input",
    }

    def functions(obj):
        """{name: (function, its code)} of what `obj` holds that a check could call."""
        out = {}
        for key, value in list(vars(obj).items()):
            if (key.startswith("__") and key != "__init__") or not callable(value):
                continue
            if obj is builtins and key in managed:
                continue
            out[key] = (value, getattr(value, "__code__", None))
        return out

    state.snapshot = {name: functions(obj) for name, obj in watched.items()}
    state.exercises = {}
    for name, module in state.modules.items():
        if name.startswith("grader.suites."):
            for exercise_name, exercise in getattr(module, "EXERCISES", {}).items():
                state.exercises[(name, exercise_name)] = (
                    exercise,
                    list(exercise.checks),
                    dict(exercise.forbidden),
                )
    state.check = grader.check
    sys.modules["_grader_state"] = state
    return "[]"


def reset(namespace: dict) -> str:
    """Put back whatever differs from the snapshot and rebind `check` in the notebook's
    `namespace` to the grader's own, so the next graded cell runs the real checks; clear the
    verdicts collected so far. Returns the changes found, as a JSON list of sentences."""
    import json
    import os
    import sys

    import torch

    state = sys.modules["_grader_state"]
    torch_dir = os.path.dirname(torch.__file__)
    found = []
    for name, module in state.modules.items():
        if sys.modules.get(name) is not module:
            found.append(f"replaced the module {name} in sys.modules")
            sys.modules[name] = module
    for name, obj in state.watched.items():
        for key, (value, code) in state.snapshot[name].items():
            now = vars(obj).get(key, None)
            wrapper = getattr(getattr(now, "__code__", None), "co_filename", "")
            if getattr(now, "__wrapped__", None) is value and wrapper.startswith(torch_dir):
                continue  # torch wrapping its own function: torch._dynamo wraps manual_seed
            if now is not value:
                found.append(f"replaced {name}.{key}")
                setattr(obj, key, value)
            elif code is not None and getattr(value, "__code__", None) is not code:
                found.append(f"rewrote the code of {name}.{key}")
                value.__code__ = code
    for (name, exercise_name), (exercise, checks, forbidden) in state.exercises.items():
        if list(exercise.checks) != checks or dict(exercise.forbidden) != forbidden:
            found.append(f"changed the checks of {exercise_name} in {name}")
            exercise.checks[:] = checks
            exercise.forbidden.clear()
            exercise.forbidden.update(forbidden)
    if "check" in namespace and namespace["check"] is not state.check:
        found.append("redefined check()")
    namespace["check"] = state.check
    state.reports.clear()
    return json.dumps(found)


def collected_reports() -> str:
    """The verdicts of the checks that ran since the last reset, as JSON."""
    import json
    import sys

    state = sys.modules.get("_grader_state")
    return json.dumps(state.reports if state is not None else [])
