"""The kernel's half of remote checking (see remote.py): call the student's objects on inputs the
grader sends, and send back what they returned as plain data.

This module runs inside the student's kernel, so nothing it does is trusted: whatever it sends
back is the student's answer, read by remote.py's strict decoder (tensors rebuilt from raw bytes,
no code, no classes), and compared with the grader's oracles in the grader's own process. A
submission that rewrites this module only changes its own answers.

The requests of one check cell come over a unix socket the grader listens on, in one execute
request: `serve_checks(path)` connects, answers each request with `serve`, and returns when the
grader sends an empty one. (One execute request per call would cost 3 ms of Jupyter's messaging
each, and a correct day06 notebook makes 1,786 calls.) Each frame on the socket is its length
(8 bytes, big-endian), then that many bytes.

One request, `serve(payload)`: the payload is a pickled (operation, arguments) pair, written by
the grader; the reply is JSON. Operations:
- ("lookup", (handle,)): the notebook's object of that name;
- ("call", (handle, args, kwargs, probes)): call the object `handle` names (a name in the
  notebook's namespace, or a number from an earlier reply) on args/kwargs, watched by `probes`
  (the shortcut guard, and the probes of grader/harness/measuring.py);
- ("getattr", (handle, name)): one attribute of that object;
- ("backward", (call_id, grads, probes)): gradients of an earlier call's inputs, for these
  output grads, watched as a call is;
- ("forget", ()): drop every object kept for earlier replies.
"""

import base64
import contextlib
import dataclasses
import importlib
import io
import json
import socket
import sys
import traceback

import torch

from grader.harness.measuring import graph_saved, plain_state

# Objects the grader holds a handle to (by number), and the autograd state of earlier calls.
_objects = {}
_calls = {}


@dataclasses.dataclass
class Handle:
    """In a request: the notebook's object `name`, or the object kept under number `name`."""

    name: object


@dataclasses.dataclass
class Leaf:
    """In a request: a tensor (detached, on the CPU) and whether it requires grad."""

    data: torch.Tensor
    requires_grad: bool


FRAME_LENGTH = 8  # bytes of the length before each frame


def serve_checks(path: str) -> str:
    """Answer the grader's requests on the unix socket at `path` until it sends an empty one."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as grader:
        grader.connect(path)
        while payload := receive_frame(grader):
            send_frame(grader, serve(payload.decode()).encode())
    return "done"


def send_frame(connection: socket.socket, data: bytes) -> None:
    connection.sendall(len(data).to_bytes(FRAME_LENGTH, "big") + data)


def receive_frame(connection: socket.socket, limit: int = None) -> bytes:
    """The next frame's bytes; ConnectionError if the other side is gone, ValueError if the frame
    is longer than `limit`."""
    length = int.from_bytes(_receive_exactly(connection, FRAME_LENGTH), "big")
    if limit is not None and length > limit:
        raise ValueError(f"a frame of {length} bytes, past the limit of {limit}")
    return _receive_exactly(connection, length)


def _receive_exactly(connection: socket.socket, count: int) -> bytes:
    chunks = []
    while count:
        chunk = connection.recv(min(count, 1 << 20))
        if not chunk:
            raise ConnectionError("the other side closed the connection")
        chunks.append(chunk)
        count -= len(chunk)
    return b"".join(chunks)


def serve(payload: str) -> str:
    operation, arguments = torch.load(
        io.BytesIO(base64.b64decode(payload)), weights_only=False
    )  # written by the grader: trusted
    try:
        reply = OPERATIONS[operation](*arguments)
    except _StudentError as error:
        reply = error.reply
    except Exception as error:  # what the student's objects do when packed, read, resolved
        reply = _raised(error)
    return json.dumps(reply)


class _StudentError(Exception):
    def __init__(self, reply):
        self.reply = reply


ITERATE = "__grader_iterate__"  # a handle name: the function that lists an iterable's items


def _resolve(handle: Handle):
    if handle.name == ITERATE:
        return list
    if isinstance(handle.name, tuple) and handle.name[0] == "grad_fn":  # see remote._pack
        return _calls[handle.name[1]][1][0].grad_fn
    if isinstance(handle.name, int):
        return _objects[handle.name]
    from IPython import get_ipython

    namespace = get_ipython().user_ns  # the notebook's names
    if handle.name not in namespace:
        raise _StudentError({"raised": "NameError", "message": f"{handle.name} is not defined"})
    return namespace[handle.name]


def _unpack(value, leaves: list):
    """The request's arguments, with Leaf and Handle markers made real."""
    if isinstance(value, Leaf):
        # as unpickled, not copied: a view keeps the storage around it (a check may fill what
        # lies past a tensor with NaN, to catch a kernel that reads out of bounds)
        tensor = value.data.requires_grad_(value.requires_grad)
        if value.requires_grad:
            leaves.append(tensor)
        return tensor
    if isinstance(value, Handle):
        return _resolve(value)
    if isinstance(value, (list, tuple)):
        return type(value)(_unpack(v, leaves) for v in value)
    if isinstance(value, dict):
        return {k: _unpack(v, leaves) for k, v in value.items()}
    return value


def _pack(value, outputs: list):
    """A reply's plain data: tensors as raw bytes, numbers, strings, containers; anything else as
    a handle the grader can call or read from. Tensors that carry a graph are kept in
    `outputs`, for a later backward."""
    if isinstance(value, torch.Tensor):
        packed = {
            "dtype": str(value.dtype).removeprefix("torch."),
            "shape": list(value.shape),
            "data": _raw_bytes(value),
            "device": value.device.type,
            "graph": value.requires_grad,
            "parameter": isinstance(value, torch.nn.Parameter),
            "address": value.data_ptr() if value.device.type != "meta" else 0,
        }
        if value.requires_grad:
            outputs.append(value)
            saved = graph_saved(value)
            if saved:  # what the student's autograd.Function saved: measuring.saved_tensors
                packed["saved"] = [_pack(t.detach(), []) for t in saved]
        return {"tensor": packed}
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, torch.dtype):
        return {"dtype": str(value).removeprefix("torch.")}
    if isinstance(value, (tuple, list, torch.Size)):
        kind = "list" if isinstance(value, list) else "tuple"
        return {kind: [_pack(v, outputs) for v in value]}
    if isinstance(value, dict) and all(isinstance(k, str) for k in value):
        return {"dict": {k: _pack(v, outputs) for k, v in value.items()}}
    number = len(_objects) + 1
    _objects[number] = value
    return {"object": number, "type": _describe(value), "callable": callable(value)}


def _raw_bytes(tensor: torch.Tensor) -> str:
    """A tensor's values as base64 bytes; a meta tensor (shape and dtype only) has none."""
    if tensor.device.type == "meta":
        return ""
    flat = tensor.detach().cpu().contiguous().reshape(-1)
    return base64.b64encode(flat.view(torch.uint8).numpy()).decode()


def _describe(value) -> dict:
    """What the grader may ask of an object without calling it: its class's name and the names
    of the classes it is (or, for a class, derives from)."""
    cls = value if isinstance(value, type) else type(value)
    return {
        "name": cls.__qualname__,
        "is_class": isinstance(value, type),
        "bases": [f"{c.__module__}.{c.__qualname__}" for c in cls.__mro__],
    }


def _raised(error: BaseException) -> dict:
    """A reply for an exception the student's code raised: its type, message and the student's
    own line it came from."""
    from grader.harness.checking import NOT_STUDENT_CODE

    frames = [
        f
        for f in traceback.extract_tb(error.__traceback__)
        if not f.filename.startswith(NOT_STUDENT_CODE)
    ]
    line = frames[-1].line if frames else ""
    return {
        "raised": type(error).__name__,
        "value_error": isinstance(error, ValueError),
        "not_implemented": isinstance(error, NotImplementedError),
        "message": str(error),
        "line": line or "",
    }


def call(handle: Handle, args, kwargs, probes: dict):
    """Call the object `handle` names, watched by `probes` (see _watched)."""
    leaves = []
    fn = _resolve(handle)
    args, kwargs = _unpack(args, leaves), _unpack(kwargs, leaves)
    before = _tensor_copies(args, kwargs)
    result, reply = _watched(lambda: fn(*args, **kwargs), probes)
    if "shortcut" in reply:
        return reply
    outputs = []
    reply["value"] = _pack(result, outputs)
    reply["arguments"] = _argument_states(args, kwargs)
    reply["written"] = _written(args, kwargs, before)
    # a leaf the call detached in place (mem_k.detach_()): the grader's own one is detached too
    reply["detached"] = [i for i, leaf in enumerate(leaves) if not leaf.requires_grad]
    if outputs:
        _calls[len(_calls) + 1] = (leaves, outputs)
        reply["call"] = len(_calls)
    return reply


def _watched(run, probes: dict) -> tuple:
    """(what `run()` returned, a reply with what each probe saw) with the shortcut guard of
    probes['guard'] (assignment, exercise) and each factory of probes['measure'] around it; a
    forbidden call makes the reply {'shortcut': (name, advice)}; an exception of the student's
    becomes a 'raised' reply."""
    with contextlib.ExitStack() as stack:
        guard = stack.enter_context(_guard(*probes["guard"])) if "guard" in probes else None
        watching = {
            path: stack.enter_context(_factory(path)()) for path in probes.get("measure", [])
        }
        try:
            with contextlib.redirect_stderr(sys.stdout):
                result = run()
        except BaseException as error:  # the student's, reported; ShortcutUsed included
            if guard is not None and guard.tripped:
                return None, {"shortcut": list(guard.tripped)}
            if isinstance(error, KeyboardInterrupt):  # the grader's interrupt: out of time
                raise
            raise _StudentError(_raised(error)) from None
    if guard is not None and guard.tripped:
        return None, {"shortcut": list(guard.tripped)}
    return result, {
        "measured": {path: _pack(plain_state(seen), []) for path, seen in watching.items()}
    }


def _factory(path: str):
    """The probe factory 'module:name' (see grader/harness/measuring.py)."""
    module, _, name = path.partition(":")
    return getattr(importlib.import_module(module), name)


def _argument_states(args, kwargs) -> dict:
    """The plain attributes (numbers, strings, tensors and containers of them; not _private)
    of each argument that is an object of the grader's, after the call: what the student's
    code recorded into it (a check's instrumented model counts its calls), for remote.py to
    write back into the grader's own object, as if it had been passed by reference."""
    states = {}
    for where, value in _arguments_in([*enumerate(args), *kwargs.items()]):
        if isinstance(value, (torch.Tensor, bool, int, float, str, type(None))):
            continue
        if isinstance(value, torch.Generator):  # the draws the student's code took from it
            states[where] = {"generator_state": _pack(value.get_state(), [])}
            continue
        plain = {name: _pack(attribute, []) for name, attribute in plain_state(value).items()}
        if plain:
            states[where] = plain
    return states


def _tensor_copies(args, kwargs) -> dict:
    """A copy of each tensor argument that holds data, by path: to see after the call which
    ones the student's code wrote into."""
    return {
        where: value.detach().clone()
        for where, value in _arguments_in([*enumerate(args), *kwargs.items()])
        if isinstance(value, torch.Tensor) and value.device.type != "meta"
    }


def _written(args, kwargs, before: dict) -> dict:
    """The tensor arguments the call wrote into in place, by path, as they are now: remote.py
    writes them into the grader's own tensors, so a check sees an input changed in place as it
    would in the notebook."""
    now = dict(_arguments_in([*enumerate(args), *kwargs.items()]))
    return {
        where: _pack(now[where].detach(), [])
        for where, copy in before.items()
        if not _same(now[where], copy)
    }


def _same(now: torch.Tensor, before: torch.Tensor) -> bool:
    """Equal shape, dtype and values, a NaN where there was one included."""
    if now.shape != before.shape or now.dtype != before.dtype:
        return False
    if now.is_floating_point() or now.is_complex():
        return bool(((now == before) | (now.isnan() & before.isnan())).all())
    return torch.equal(now, before)


def _arguments_in(items, prefix=""):
    """(path, value) of the arguments among `items` ((key, value) pairs) and inside their lists,
    tuples and dicts: the path is the keys joined by '/', e.g. '0/moody' for args[0]['moody']."""
    for key, value in items:
        path = f"{prefix}{key}"
        if isinstance(value, (list, tuple)):
            yield from _arguments_in(enumerate(value), f"{path}/")
        elif isinstance(value, dict):
            yield from _arguments_in(value.items(), f"{path}/")
        else:
            yield path, value


def lookup(handle: Handle):
    """The notebook's object `handle` names, as a reply value (a handle, if it is not data)."""
    return {"value": _pack(_resolve(handle), [])}


def _guard(assignment: str, exercise: str):
    """The shortcut guard of `exercise`, as harness.guarded sets it (its forbidden calls are read
    here, from the suite: functions cannot all be sent by reference)."""
    from grader.harness.checking import course_references
    from grader.harness.guard import ShortcutGuard
    from grader.suites import exercise as suite_exercise

    forbidden = suite_exercise(assignment, exercise).forbidden
    return ShortcutGuard(exercise, {**course_references(exercise), **forbidden})


def get_attribute(handle: Handle, name: str):
    try:
        value = getattr(_resolve(handle), name)
    except Exception as error:
        raise _StudentError(_raised(error)) from None
    return {"value": _pack(value, [])}


def backward(call_id: int, grads: list, probes: dict):
    """d(inputs)/d(outputs) of call `call_id`, for the grader's output grads (None: unused),
    watched by `probes` as the call was."""
    leaves, outputs = _calls[call_id]
    grads = _unpack(grads, [])
    pairs = [(o, g) for o, g in zip(outputs, grads) if g is not None]
    attached = [leaf for leaf in leaves if leaf.requires_grad]  # not those detached in place
    found, reply = _watched(  # the graph is kept: gradcheck asks for several backwards
        lambda: torch.autograd.grad(
            [o for o, _ in pairs],
            attached,
            [g for _, g in pairs],
            allow_unused=True,
            retain_graph=True,
        ),
        probes,
    )
    if "shortcut" not in reply:
        found = iter(found)
        reply["value"] = _pack([next(found) if leaf.requires_grad else None for leaf in leaves], [])
    return reply


def forget():
    _objects.clear()
    _calls.clear()
    return {"value": None}


OPERATIONS = {
    "lookup": lookup,
    "call": call,
    "getattr": get_attribute,
    "backward": backward,
    "forget": forget,
}
