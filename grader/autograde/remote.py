"""Checks whose verdicts the student's kernel cannot reach: the grader's half.

When `python -m grader autograde --workers N` reaches a graded check cell, it does not run the
cell in the student's kernel. It runs the exercise's checks here, in the grading process, with
the student's function replaced by a `RemoteObject`: calling it sends the inputs to the kernel
(kernel_rpc.py calls the student's function there) and brings back the outputs as plain tensors,
rebuilt from raw bytes. The oracles, the comparisons, the tolerances and the hidden seed all stay
in this process. Whatever the student's cells do to torch, the suites or the harness inside the
kernel can change only the outputs their own functions return.

The kernel is asked through one function, `ask(payload) -> reply text`: a `Channel`'s, a unix
socket that the kernel's side (kernel_rpc.serve_checks) answers on for the length of one check
cell. What comes back is read by `decode`, which accepts only
numbers, strings, containers, tensors (dtype, shape and raw bytes) and handles to objects left
in the kernel (a class, a module the student built), which are `RemoteObject`s in turn.

What the checks measure about how the student's code runs (lines of Python executed, the largest
allocation) is measured in the kernel, around the student's call, and sent back as numbers: see
grader/harness/measuring.py.
"""

import base64
import contextlib
import importlib
import io
import json
import math
import os
import select
import socket
import time

import torch

from grader.autograde.kernel_rpc import ITERATE as _ITERATE
from grader.autograde.kernel_rpc import Handle, Leaf, receive_frame, send_frame
from grader.harness.checking import (
    Mistake,
    NotImplementedYet,
    note_inputs,
    raised_hint,
    shortcut_used,
)
from grader.harness.measuring import collecting

# The dtypes a reply may name (no object dtypes, nothing torch would have to import).
DTYPES = {
    str(dtype).removeprefix("torch."): dtype
    for dtype in (
        torch.float64,
        torch.float32,
        torch.float16,
        torch.bfloat16,
        torch.int64,
        torch.int32,
        torch.int16,
        torch.int8,
        torch.uint8,
        torch.bool,
        torch.complex64,
        torch.complex128,
    )
}
MAX_REPLY_BYTES = 256 << 20  # a reply larger than this is not an answer, it is a flood
# What the kernel evaluates to answer a cell's requests: the kernel's own module answers, so a
# submission that breaks it only breaks its own answers.
SERVE_CHECKS = "__import__('grader.autograde.kernel_rpc', fromlist=['_']).serve_checks"
CONNECT_POLL = 0.005  # seconds between looks for the kernel's connection
CONNECT_WAIT = 20  # seconds the kernel's side may take to connect


class Channel:
    """The unix socket at `path` that one check cell's requests go over, until `deadline` (a
    time.monotonic()). Start the kernel's side with an execute request of `expression()`'s
    user_expressions, then `connect`; `ask` a request; `close` when the cell is done."""

    def __init__(self, path: str, deadline: float):
        self.path, self.deadline = path, deadline
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._listener.bind(path)
        self._listener.listen(1)
        self._kernel = None

    def expression(self) -> dict:
        return {"out": f"{SERVE_CHECKS}({self.path!r})"}

    def connect(self, check_alive) -> None:
        """Wait for the kernel's side, which connects within milliseconds of an idle kernel;
        `check_alive()` raises if the kernel has died. A kernel whose side never comes (its
        grader module broken by the notebook) costs CONNECT_WAIT seconds, not the cell's time."""
        deadline = min(self.deadline, time.monotonic() + CONNECT_WAIT)
        while not select.select([self._listener], [], [], CONNECT_POLL)[0]:
            check_alive()
            if time.monotonic() > deadline:
                raise KernelGone(
                    f"the kernel did not start answering the checks within {CONNECT_WAIT} s"
                )
        self._kernel, _ = self._listener.accept()

    def ask(self, payload: str) -> str:
        try:
            self._kernel.settimeout(max(0.0, self.deadline - time.monotonic()))
            send_frame(self._kernel, payload.encode())
            return receive_frame(self._kernel, MAX_REPLY_BYTES).decode()
        except TimeoutError:
            raise KernelGone("no answer within the cell's time") from None
        except (OSError, ValueError) as error:  # gone, or a flood, or not text
            raise KernelGone(f"the kernel's answer could not be read: {error}") from None

    def close(self) -> None:
        """An empty request ends the kernel's side; the socket goes."""
        if self._kernel is not None:
            with contextlib.suppress(OSError):
                self._kernel.settimeout(1)
                send_frame(self._kernel, b"")
            self._kernel.close()
        self._listener.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)


class KernelGone(Exception):
    """The kernel did not answer: it died, hung past the limit, or sent what is not a reply."""


class Unreadable(Mistake):
    """The kernel sent back something that is not plain data."""

    def __init__(self, what: str):
        super().__init__(
            f"the value your function returned could not be read: {what}.",
            "return tensors, numbers, strings, or tuples, lists and dicts of them.",
            "unreadable",
        )


# ----------------------------------------------------------------------------- the kernel


class RemoteKernel:
    """The student's kernel, seen from the grader: calls, attributes and gradients, each one
    request through `ask`. `guard` is (assignment, exercise) for the shortcut guard that every
    call runs under in the kernel."""

    def __init__(self, ask, guard: tuple = None):
        self._ask = ask
        self.guard = guard

    def request(self, operation: str, *arguments) -> dict:
        buffer = io.BytesIO()
        torch.save((operation, arguments), buffer)
        reply = self._ask(base64.b64encode(buffer.getvalue()).decode())
        if not isinstance(reply, str) or len(reply) > MAX_REPLY_BYTES:
            raise KernelGone("the kernel sent no readable reply")
        try:
            reply = json.loads(reply)
        except (ValueError, RecursionError) as error:
            raise KernelGone(f"the kernel's reply is not JSON: {error}") from None
        if not isinstance(reply, dict):
            raise KernelGone("the kernel's reply is not a JSON object")
        return reply

    def lookup(self, name: str):
        """The notebook's `name`: a RemoteObject, or plain data if that is what it holds."""
        return self._value(self.request("lookup", Handle(name)))[0]

    def call(self, handle, args, kwargs):
        note_inputs(*args, *kwargs.values())  # the tolerances follow them (harness.checking)
        inputs = []  # the grader's tensors that require grad, in the order the kernel sees them
        packed = _pack((args, kwargs), inputs)
        reply = self.request("call", handle, *packed, self._probes())
        value, outputs = self._value(reply)
        _write_back(args, kwargs, reply.get("arguments"), self)
        _write_back_tensors(args, kwargs, reply.get("written"), self)
        _detach_back(inputs, reply.get("detached"))
        if "call" in reply and inputs and outputs:
            value = _attach_graph(value, outputs, _Backward(self, reply["call"], inputs))
        return value

    def _probes(self) -> dict:
        """What watches a call in the kernel: the shortcut guard, and the probes of the
        enclosing measuring blocks (grader/harness/measuring.py)."""
        probes = {"measure": list(collecting())}
        if self.guard is not None:
            probes["guard"] = self.guard
        return probes

    def _absorb(self, reply: dict) -> None:
        """Hand each probe's report from the kernel to its measuring block."""
        measured = reply.get("measured")
        for probe, absorb in collecting().items():
            seen = decode(measured.get(probe), self, []) if type(measured) is dict else None
            if type(seen) is not dict:
                raise Unreadable(f"no report of {probe}")
            absorb(seen)

    def get_attribute(self, handle, name: str):
        reply = self.request("getattr", handle, name)
        if reply.get("raised") == "AttributeError":  # so that getattr(obj, name, default) works
            raise AttributeError(str(reply.get("message", name)))
        return self._value(reply)[0]

    def backward(self, call_id: int, grads: list) -> list:
        reply = self.request("backward", call_id, [_pack(g, []) for g in grads], self._probes())
        return self._value(reply)[0]

    def _value(self, reply: dict) -> tuple:
        """(decoded value, its tensors that carry a graph in the kernel) of a reply, or the
        Mistake the reply reports."""
        if "shortcut" in reply:
            name, advice = (str(part) for part in reply["shortcut"][:2])
            raise shortcut_used(self.guard[1] if self.guard else "this function", name, advice)
        if "raised" in reply:
            if reply.get("not_implemented"):
                raise NotImplementedYet(str(reply.get("line", "")), str(reply.get("message", "")))
            message, line = str(reply.get("message", "")), str(reply.get("line", ""))
            cause = (ValueError if reply.get("value_error") else RuntimeError)(message)
            at = f"\n      at: {line}" if line else ""
            raise Mistake(
                f"your function raised {reply['raised']}: {message}{at}",
                hint=raised_hint(str(reply["raised"]), message, line),
                key="raised",
            ) from cause
        if "value" not in reply:
            raise KernelGone("the kernel's reply holds no value")
        if "measured" in reply:
            self._absorb(reply)
        outputs = []
        return decode(reply["value"], self, outputs), outputs


class RemoteObject:
    """An object in the student's kernel: a function, a class, a module they built. Calling it,
    reading an attribute or iterating over it asks the kernel; every call runs under the
    shortcut guard there (`guards_its_calls`: harness.guarded leaves it as it is).

    For isinstance and issubclass it stands for the most derived torch class the kernel says it
    is (or derives from), as unittest.mock's `spec` does: a student's module passes
    `isinstance(m, nn.Module)`, their autograd.Function `issubclass(cls, torch.autograd.Function)`.
    """

    guards_its_calls = True
    __slots__ = ("_kernel", "_handle", "_info")  # its own; `__dict__` is the kernel object's

    def __init__(self, kernel: RemoteKernel, handle, info: dict = None):
        self._kernel = kernel
        self._handle = handle
        self._info = info or {}

    def __call__(self, *args, **kwargs):
        return self._kernel.call(Handle(self._handle), args, kwargs)

    def __getattr__(self, name):
        if name == "__wrapped__":  # the student's own object, as harness.guarded has it
            return self
        if name.startswith("__"):
            raise AttributeError(name)
        return self._kernel.get_attribute(Handle(self._handle), name)

    @property
    def __dict__(self):  # vars(obj): the student's object's attributes
        return self._kernel.get_attribute(Handle(self._handle), "__dict__")

    def __iter__(self):
        return iter(self._kernel.call(Handle(_ITERATE), (Handle(self._handle),), {}))

    @property
    def __class__(self):
        if self._info.get("is_class"):
            return type
        return _torch_class(self._info) or RemoteObject

    @property
    def __bases__(self):
        if not self._info.get("is_class"):
            raise AttributeError("__bases__")
        return tuple(c for c in [_torch_class(self._info)] if c is not None)

    def __repr__(self):
        return f"<{self._info.get('name', self._handle)} in the student's kernel>"


def _torch_class(info: dict):
    """The first of the classes the kernel named that is torch's own (imported here, by name)."""
    for name in info.get("bases", []):
        module, _, qualname = str(name).rpartition(".")
        if module == "torch" or module.startswith("torch."):
            found = getattr(importlib.import_module(module), qualname, None)
            if isinstance(found, type):
                return found
    return None


# ----------------------------------------------------------------------------- to the kernel


def _pack(value, inputs: list):
    """A request's arguments: tensors as detached Leafs (those requiring grad also listed in
    `inputs`), remote objects as Handles; everything else is pickled as it is."""
    if isinstance(value, torch.Tensor):
        if value.requires_grad:
            inputs.append(value)
        return Leaf(value.detach(), value.requires_grad)
    if isinstance(value, RemoteObject):
        return Handle(value._handle)
    if isinstance(getattr(value, "link", None), _Backward):  # a remote output's grad_fn: the
        return Handle(("grad_fn", value.link.call_id))  # kernel's, the student's own ctx
    if isinstance(value, (list, tuple)) and type(value) in (list, tuple):
        return type(value)(_pack(v, inputs) for v in value)
    if isinstance(value, dict) and type(value) is dict:
        return {k: _pack(v, inputs) for k, v in value.items()}
    return value


# ----------------------------------------------------------------------------- from the kernel


def decode(value, kernel: RemoteKernel, outputs: list):
    """Plain data from a reply; tensors that carry a graph in the kernel are listed in
    `outputs`, in the kernel's order. Raises Unreadable for anything else."""
    if value is None or type(value) in (bool, int, float, str):
        return value
    if type(value) is not dict or not value:
        raise Unreadable(f"unexpected {type(value).__name__}")
    if "object" in value:
        info = value.get("type") if isinstance(value.get("type"), dict) else {}
        if type(value["object"]) is not int:
            raise Unreadable("a bad object handle")
        return RemoteObject(kernel, value["object"], info)
    (kind, content), *rest = value.items()
    if rest:
        raise Unreadable("a value with several kinds")
    if kind == "tensor":
        tensor = _tensor(content)
        if content.get("parameter") is True:  # an nn.Module's parameter, as the student made it
            return torch.nn.Parameter(tensor, requires_grad=content.get("graph") is True)
        if content.get("graph") is True:
            outputs.append(tensor)
        return tensor
    if kind == "dtype" and content in DTYPES:
        return DTYPES[content]
    if kind in ("list", "tuple") and type(content) is list:
        items = [decode(v, kernel, outputs) for v in content]
        return items if kind == "list" else tuple(items)
    if kind == "dict" and type(content) is dict:
        return {str(k): decode(v, kernel, outputs) for k, v in content.items()}
    raise Unreadable(f"an unknown value of kind {kind!r}")


def _tensor(content) -> torch.Tensor:
    """A plain tensor, rebuilt from its dtype, shape and raw bytes: never a subclass."""
    if type(content) is not dict or content.get("dtype") not in DTYPES:
        raise Unreadable("a tensor of unknown dtype")
    dtype = DTYPES[content["dtype"]]
    shape = content.get("shape")
    if type(shape) is not list or not all(type(n) is int and n >= 0 for n in shape):
        raise Unreadable("a tensor with a bad shape")
    try:
        raw = base64.b64decode(content.get("data", ""), validate=True)
    except (ValueError, TypeError):
        raise Unreadable("a tensor whose data is not base64") from None
    device = content.get("device", "cpu")
    if device == "meta":  # shape and dtype only, as the student's tensor
        return torch.empty(shape, dtype=dtype, device="meta")
    itemsize = torch.empty((), dtype=dtype).element_size()
    if len(raw) != math.prod(shape) * itemsize:
        raise Unreadable("a tensor whose data does not fit its shape")
    if not raw:
        return torch.empty(shape, dtype=dtype)
    tensor = torch.frombuffer(bytearray(raw), dtype=torch.uint8).view(dtype).reshape(shape)
    if device == "cuda" and torch.cuda.is_available():  # where the student's tensor was
        tensor = tensor.to(device)
    if type(content.get("address")) is int:  # see measuring.address
        tensor.kernel_address = content["address"]
    if type(content.get("saved")) is list:  # see measuring.saved_tensors
        tensor.kernel_saved = [
            _tensor(t.get("tensor")) for t in content["saved"] if type(t) is dict
        ]
    return tensor


def _write_back(args, kwargs, states, kernel) -> None:
    """Set on the grader's own argument objects the plain attributes the kernel's copies ended
    the call with (kernel_rpc._argument_states): a list is refilled in place."""
    if type(states) is not dict:
        return
    for where, state in states.items():
        target = _at_path(args, kwargs, where)
        if target is None or type(state) is not dict:
            continue
        if isinstance(target, torch.Generator) and "generator_state" in state:
            generator_state = decode(state["generator_state"], kernel, [])
            if isinstance(generator_state, torch.Tensor) and generator_state.dtype == torch.uint8:
                target.set_state(generator_state)
            continue
        for name, value in state.items():
            if not isinstance(name, str) or name.startswith("_") or not hasattr(target, name):
                continue
            value = decode(value, kernel, [])
            current = getattr(target, name)
            if isinstance(current, list) and isinstance(value, list):
                current[:] = value
            elif not callable(current):
                setattr(target, name, value)


def _write_back_tensors(args, kwargs, written, kernel) -> None:
    """Write into the grader's own tensor arguments what the student's code wrote into the
    kernel's copies in place (kernel_rpc._written), so a check that looks for an input changed
    in place (suites' call_unchanged) sees it here as it would in the notebook."""
    if type(written) is not dict:
        return
    for where, packed in written.items():
        target, value = _at_path(args, kwargs, where), decode(packed, kernel, [])
        if not (
            isinstance(target, torch.Tensor)
            and isinstance(value, torch.Tensor)
            and value.dtype == target.dtype
        ):
            continue
        with torch.no_grad():
            if value.shape == target.shape:
                target.copy_(value)
            else:  # the shape changed in place (unsqueeze_, resize_): take the new one too
                target.set_(value.clone())


def _detach_back(inputs: list, detached) -> None:
    """Detach the grader's inputs that the student's code detached in place in the kernel
    (mem_k.detach_(): kernel_rpc.call's 'detached', indices into `inputs`), so a check sees the
    caller's tensor lose its graph as it would in the notebook."""
    if type(detached) is not list:
        return
    for i in detached:
        if type(i) is int and 0 <= i < len(inputs) and inputs[i].is_leaf:
            inputs[i].requires_grad_(False)


def _at_path(args, kwargs, path: str):
    """The argument at kernel_rpc._arguments_in's `path` ('0/moody': args[0]['moody'])."""
    first, *rest = str(path).split("/")
    value = args[int(first)] if first.isdigit() and int(first) < len(args) else kwargs.get(first)
    for key in rest:
        if isinstance(value, (list, tuple)) and key.isdigit() and int(key) < len(value):
            value = value[int(key)]
        elif isinstance(value, dict) and key in value:
            value = value[key]
        else:
            return None
    return value


# ----------------------------------------------------------------------------- gradients


class _Backward:
    """What a remote call's graph needs for backward: the kernel, the call, its grad inputs."""

    def __init__(self, kernel: RemoteKernel, call_id: int, inputs: list):
        self.kernel, self.call_id, self.inputs = kernel, call_id, inputs


class _Bridge(torch.autograd.Function):
    """Joins a remote call's outputs to the grader's graph: backward asks the kernel for the
    gradients of the call's inputs, and checks what comes back."""

    @staticmethod
    def forward(ctx, link: _Backward, n_inputs: int, *tensors):
        ctx.link, ctx.n_inputs = link, n_inputs
        return tuple(t.clone() for t in tensors[n_inputs:])

    @staticmethod
    def backward(ctx, *grads):
        link = ctx.link
        found = link.kernel.backward(link.call_id, list(grads))
        if not isinstance(found, list) or len(found) != len(link.inputs):
            raise Unreadable("the gradients sent back do not match the inputs")
        checked = []
        for i, (grad, x) in enumerate(zip(found, link.inputs)):
            if grad is not None and (not isinstance(grad, torch.Tensor) or grad.shape != x.shape):
                shape = tuple(grad.shape) if isinstance(grad, torch.Tensor) else type(grad)
                raise Mistake(
                    f"the gradient of input {i} has shape {shape}, expected {tuple(x.shape)}.",
                    "backward returns one gradient per input of forward, each of its shape.",
                    "wrong_shape",
                )
            checked.append(None if grad is None else grad.to(x.dtype))
        return (None, None, *checked, *[None] * (len(grads)))


def _attach_graph(value, outputs: list, link: _Backward):
    """`value` with its graph-carrying tensors replaced by ones joined to the inputs' graph."""
    joined = _Bridge.apply(link, len(link.inputs), *link.inputs, *outputs)
    for old, new in zip(outputs, joined):  # what measuring reads of the kernel's tensor
        new.__dict__.update(old.__dict__)
    replace = {id(old): new for old, new in zip(outputs, joined)}
    return _replace(value, replace)


def _replace(value, replace: dict):
    if isinstance(value, torch.Tensor):
        return replace.get(id(value), value)
    if isinstance(value, (list, tuple)):
        return type(value)(_replace(v, replace) for v in value)
    if isinstance(value, dict):
        return {k: _replace(v, replace) for k, v in value.items()}
    return value
