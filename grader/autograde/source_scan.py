"""Forbidden calls found by reading the submission, outside the kernel.

The shortcut guard (grader/harness/guard.py) catches a forbidden call while the student's
function runs, in the student's kernel, where a submission can switch it off. This reads the
notebook's source in the grading process instead: the exercise's function, and every function
of the notebook it calls, is searched for a forbidden torch name (`torch.softmax`, `F.softmax`,
`x.softmax`, `nn.Softmax`, or a name imported from torch) and for the course's own version of
the exercise (a name imported from `course`, resolved to the function it is).

It reads what the code says, not what it does: a name built at run time (`getattr(torch, s)`)
is the guard's to catch. It never mistakes a student's own variable for a forbidden call: only
attributes, and names imported from torch or the course, count.

`tampering` reads the whole notebook for code that reaches into the grader itself (its
modules beyond `check`, the tamper watch's state, the hooks the guard stands on): a notebook
has no reason to, and a kernel so changed could answer the grader's requests with anything.
"""

import ast
import importlib
import inspect
import pkgutil
import re

from grader.harness.checking import course_references


def shortcuts(sources: list, exercise: str, forbidden: dict) -> list:
    """(name, advice) for each forbidden call that `exercise`'s function in the notebook whose
    code cells are `sources` (or a notebook function it calls) makes, in the order found."""
    tree = _parse(sources)
    functions = _definitions(tree)
    if exercise not in functions:
        return []
    imports = _imports(tree)
    names = {k: v for k, v in forbidden.items() if isinstance(k, str)}
    course = {**_library_versions(exercise), **{f: a for f, a in forbidden.items() if callable(f)}}
    found = []
    for node in _reachable(exercise, functions):
        for written, dotted in _used_names(node, imports):
            advice = _forbidden_name(dotted, names) or _course_function(dotted, course)
            if advice is not None and (written, advice) not in found:
                found.append((written, advice))
        found += [(written, RUN_TIME_NAME) for written in _names_built_at_run_time(node, imports)]
    return found


# An exercise has no reason to look up torch's functions by a name it computes: only a
# shortcut hidden from this reading does (a thread then hides it from the guard as well).
RUN_TIME_NAME = (
    "call torch's functions by their names, written out: here, write the exercise yourself."
)


def _names_built_at_run_time(node, imports: dict) -> list:
    """`getattr(torch..., NAME)` calls whose NAME is not a literal string, as written."""
    found = []
    for call in ast.walk(node):
        if (
            isinstance(call, ast.Call)
            and isinstance(call.func, ast.Name)
            and call.func.id == "getattr"
            and len(call.args) >= 2
            and not isinstance(call.args[1], ast.Constant)
        ):
            base = call.args[0]
            dotted = (
                _dotted(base, imports)
                if isinstance(base, ast.Attribute)
                else imports.get(getattr(base, "id", ""), "")
            )
            if dotted == "torch" or dotted.startswith("torch."):
                found.append(ast.unparse(call))
    return found


def _parse(sources: list) -> ast.Module:
    """All code cells as one module; a cell that is not Python (a %magic, a syntax error) is
    skipped, as it defines nothing the checks could call."""
    body = []
    for source in sources:
        try:
            body += ast.parse(source).body
        except SyntaxError:
            continue
    return ast.Module(body=body, type_ignores=[])


def _definitions(tree: ast.Module) -> dict:
    """name -> the last top-level def or class of that name (the one the notebook ends with)."""
    found = {}
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            found[node.name] = node
    return found


def _imports(tree: ast.Module) -> dict:
    """local name -> the dotted name it was imported as, for imports anywhere in the notebook."""
    found = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                local = alias.asname or alias.name.split(".")[0]
                found[local] = alias.name if alias.asname else local
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            for alias in node.names:
                found[alias.asname or alias.name] = f"{node.module}.{alias.name}"
    return found


def _reachable(exercise: str, functions: dict) -> list:
    """The exercise's definition and every notebook function or class it names, transitively."""
    todo, seen = [exercise], []
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.append(name)
        for node in ast.walk(functions[name]):
            if isinstance(node, ast.Name) and node.id in functions:
                todo.append(node.id)
    return [functions[name] for name in seen]


def _used_names(node, imports: dict) -> list:
    """(as written, dotted name) of the names a definition uses: attribute chains
    (`F.softmax` is torch.nn.functional.softmax; `x.softmax` is '?.softmax', its base not an
    import) and imported names."""
    found = []
    for child in ast.walk(node):
        if isinstance(child, ast.Attribute):
            found.append((ast.unparse(child), _dotted(child, imports)))
        elif isinstance(child, ast.Name) and child.id in imports:
            found.append((child.id, imports[child.id]))
    return found


def _dotted(node: ast.Attribute, imports: dict) -> str:
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name) and node.id in ("self", "cls"):
        return ".".join(["self", *reversed(parts)])  # the student's own class's attributes
    base = imports.get(node.id, "?") if isinstance(node, ast.Name) else "?"
    return ".".join([base, *reversed(parts)])


def _forbidden_name(dotted: str, names: dict):
    """The advice for a forbidden torch name that `dotted` ends with (the guard's rule: leading
    underscores and `special_` dropped, a class name in snake case), or None. Only attributes
    and torch's own names count: a student's variable called `softmax` is theirs."""
    base, _, last = dotted.rpartition(".")
    if not base or (base.split(".")[0] not in ("?", "torch")):
        return None
    bare = _snake(last).lstrip("_").removeprefix("special_")
    for forbidden, advice in names.items():
        if bare == forbidden or bare.startswith(forbidden + "_"):
            return advice
    return None


def _snake(name: str) -> str:
    """MultiheadAttention -> multihead_attention, Softmax -> softmax."""
    return re.sub(r"(?<=[a-z0-9])([A-Z])", r"_\1", name).lower()


def _course_function(dotted: str, course: dict):
    """The advice if `dotted` names one of the course's functions in `course`, or None."""
    if not dotted.startswith("course."):
        return None
    module, _, name = dotted.rpartition(".")
    try:
        found = getattr(importlib.import_module(module), name, None)
    except ImportError:
        return None
    found = inspect.unwrap(found) if callable(found) else found
    for fn, advice in course.items():
        if found is not None and found is inspect.unwrap(fn):
            return advice
    return None


def _library_versions(exercise: str) -> dict:
    """The course's own functions named like the exercise (the guard's course_references),
    with every module of the library and the models imported so that none is missed."""
    import course.models
    import course.reference

    for package in (course.reference, course.models):
        for module in pkgutil.iter_modules(package.__path__, f"{package.__name__}."):
            importlib.import_module(module.name)
    return course_references(exercise)


# What a notebook may use of the grader: the check, what it reports, and the Triton days' watch.
GRADER_API = {"check", "run_exercise", "watch_every_launch", "CheckFailed", "Report"}
# Names that only code reaching into the grader's machinery uses.
MACHINERY = (
    "_grader_state",
    "kernel_rpc",
    "kernel_side",
    "__grader_",
    "grader.harness",
    "grader.suites",
    "grader.autograde",
)
HOOKS = {
    "sys.setprofile",
    "sys.settrace",
    "threading.setprofile",
    "threading.settrace",
    "torch._C.DisableTorchFunction",
    "torch._C.DisableTorchFunctionSubclass",
    "torch.overrides.TorchFunctionMode",
    "torch._C._set_torch_function_mode",
}


def tampering(sources: list) -> list:
    """What each code cell (by number, from 1) writes that reaches into the grader: a list of
    (cell number, what), empty for a notebook that only calls `check`."""
    found = []
    imports = _imports(_parse(sources))
    for number, source in enumerate(sources, 1):
        try:
            tree = ast.parse(source)
        except SyntaxError:
            continue
        for node in ast.walk(tree):
            what = _reaches_grader(node, imports)
            if what and (number, what) not in found:
                found.append((number, what))
    return found


def _reaches_grader(node, imports: dict):
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        text = node.value
        return next((f"the text {text[:60]!r}" for m in MACHINERY if m in text), None)
    if isinstance(node, (ast.Import, ast.ImportFrom)):
        module = node.module if isinstance(node, ast.ImportFrom) else None
        for alias in node.names:
            dotted = f"{module}.{alias.name}" if module else alias.name
            if dotted in HOOKS or (
                dotted.startswith("grader.") and dotted.removeprefix("grader.") not in GRADER_API
            ):
                return f"import {dotted}"
        return None
    if isinstance(node, ast.Attribute):
        dotted = _dotted(node, imports)
        if dotted in HOOKS:
            return ast.unparse(node)
        if dotted.startswith("grader.") and dotted.split(".")[1] not in GRADER_API:
            return ast.unparse(node)
    if isinstance(node, ast.Name) and (
        imports.get(node.id) in HOOKS or any(m in node.id for m in MACHINERY[:4])
    ):
        return node.id
    return None
