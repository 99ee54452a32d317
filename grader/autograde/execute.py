"""nbgrader's Execute step, with limits, a sandbox and a tamper watch: what `python -m grader
autograde --workers N` runs in place of stock `Execute` (configured through
`Autograde.autograde_preprocessors`, so every other step of the autograde is nbgrader's own).

Limits, per submission:
- a per-cell timeout and a wall-clock limit for the whole notebook; a cell that hits either stops
  the run: the cells before it keep their points, the graded cells after it score 0 with a reason;
- resource limits on the kernel process, set with plain `setrlimit` (works unprivileged; see
  sandbox.limits_command): memory (RLIMIT_DATA: a huge allocation fails in that cell, a
  MemoryError/RuntimeError, instead of taking the machine down), CPU time (the kernel is killed:
  the run stops with the reason), file size (a write past it fails in that cell) and, in a
  sandbox, processes and threads (a fork bomb's fork fails);
- output: past `output_limit` bytes of cell outputs the rest is dropped and the run stops there,
  so a cell that prints without end cannot fill the grader's memory;
- kernel death (os._exit, a segfault, the OOM killer, the CPU-time limit) stops the run the same
  way, with a reason.

Sandbox (`sandbox=True`, see sandbox.py): the kernel runs in a bubblewrap sandbox of its own: no
network, its own PID namespace (nothing it starts outlives it), a read-only view of the system
and the Python environment, and its working folder and a private /tmp as its only writable places.
It then talks over unix sockets (jupyter_client's IPC transport) instead of TCP on localhost.

Tamper watch: before the first cell the kernel snapshots the grader's modules, torch,
torch.nn.functional, torch.Tensor and builtins. Before every graded cell it compares them with the
snapshot, puts back whatever the student's cells replaced (so the test cell runs the real checks),
rebinds `check` to the grader's own, and reports each change. After every graded cell it collects
the structured verdicts of the checks that ran (for feedback and the class report). The code the
kernel runs for this is kernel_side.py's.

Everything found is written as JSON to `record_path` for the caller.
"""

import ast
import asyncio
import contextlib
import inspect
import json
import os
import signal
import time
from queue import Empty

from jupyter_client.asynchronous import AsyncKernelClient
from jupyter_client.channels import AsyncZMQSocketChannel
from jupyter_client.manager import AsyncKernelManager
from nbclient.exceptions import CellTimeoutError, DeadKernelError
from nbformat.notebooknode import NotebookNode
from nbgrader.preprocessors import Execute
from traitlets import Bool, Integer, Type, Unicode

from grader.autograde import kernel_side, remote, sandbox, source_scan, verdicts, warm

LOCAL_WAIT = 0.01  # seconds to wait for a message a kernel on this machine has already sent
WAIT_SLICE = 0.5  # seconds a wait on a kernel's channel goes without looking at it afresh


def kernel_definition(function) -> str:
    """The source of kernel_side's `function`, renamed __grader_NAME: it is defined in the
    notebook's own namespace, where a plain name could replace one of the student's."""
    source = inspect.getsource(function)
    return source.replace(f"def {function.__name__}(", f"def __grader_{function.__name__}(", 1)


class PatientChannel(AsyncZMQSocketChannel):
    """A kernel's channel whose long waits look at the socket afresh every WAIT_SLICE seconds.
    pyzmq wakes a waiting event loop through an edge-triggered descriptor; a wakeup lost on the
    way would leave a cell waiting for a reply that has already come until its whole timeout (a
    graded notebook stalled 300 s that way here), where a fresh look finds it at once."""

    async def get_msg(self, timeout=None):
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            left = WAIT_SLICE if deadline is None else deadline - time.monotonic()
            try:  # at least a millisecond: a zero timeout takes pyzmq's other path
                return await super().get_msg(timeout=min(WAIT_SLICE, max(left, 0.001)))
            except Empty:
                if deadline is not None and time.monotonic() >= deadline:
                    raise


class QuickKernelClient(AsyncKernelClient):
    """jupyter_client's client, made ready sooner for a kernel on this machine. Its
    wait_for_ready takes IOPub as connected once a message comes there within 0.2 s of
    kernel_info's reply (a new subscriber misses the first ones: ZeroMQ's slow joiner), then
    drains IOPub until 0.2 s pass without one: 0.2 to 0.4 s of every submission's start, for
    messages that come within milliseconds here. The same steps, with 10 ms waits."""

    async def _async_wait_for_ready(self, timeout=None):
        deadline = time.monotonic() + (timeout or 10**9)
        while True:
            self.kernel_info()
            try:
                reply = await self.shell_channel.get_msg(timeout=1)
            except Empty:
                reply = None
            if reply is not None and reply["msg_type"] == "kernel_info_reply":
                if await self._iopub_message(LOCAL_WAIT):
                    self._handle_kernel_info_reply(reply)
                    break
            if not await self._async_is_alive():
                raise RuntimeError("Kernel died before replying to kernel_info")
            if time.monotonic() > deadline:
                raise RuntimeError(f"Kernel didn't respond in {timeout} seconds")
        while await self._iopub_message(LOCAL_WAIT):
            pass  # the start's own status messages, not the first cell's

    wait_for_ready = _async_wait_for_ready  # what nbclient calls (bound by name in the parent)
    shell_channel_class = Type(PatientChannel)
    iopub_channel_class = Type(PatientChannel)

    async def _iopub_message(self, timeout: float) -> bool:
        try:
            await self.iopub_channel.get_msg(timeout=timeout)
        except Empty:
            return False
        return True


def limited_kernel_manager(
    memory_bytes: int, *, cpu_seconds=0, file_bytes=0, tasks=0, warm_kernels=False
):
    """An AsyncKernelManager class whose kernels start under these limits (0: none; see
    sandbox.rlimits), in the sandbox given to `confine`, if any: `tasks` applies only there,
    where the count of processes is the sandbox's own. With `warm_kernels`, a sandboxed kernel is
    forked from this worker's warm process (warm.py) instead of started cold."""
    limits = dict(memory=memory_bytes, cpu=cpu_seconds, file_size=file_bytes)

    class LimitedKernelManager(AsyncKernelManager):
        box = None  # the sandbox its kernel starts in (None: none)

        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.client_class = f"{__name__}.QuickKernelClient"

        def confine(self, box: sandbox.Sandbox):
            """Start the kernel in `box`, talking over unix sockets in its folder: TCP on
            localhost cannot reach into the sandbox's network namespace."""
            self.box = box
            self.transport = "ipc"
            self.connection_file = box.connection_file
            self.ip = os.path.splitext(box.connection_file)[0] + "-ipc"  # jupyter_client's naming

        def format_kernel_cmd(self, extra_arguments=None):
            command = super().format_kernel_cmd(extra_arguments)
            if self.box is not None:
                return self.box.command(sandbox.limits_command(command, **limits, tasks=tasks))
            return sandbox.limits_command(command, **limits) if any(limits.values()) else command

        async def _async_launch_kernel(self, kernel_cmd, **kw):
            if self.box is None or not warm_kernels or warm.unavailable():  # cold, with bwrap
                return await super()._async_launch_kernel(kernel_cmd, **kw)
            boxed = sandbox.rlimits(**limits, tasks=tasks)
            try:
                kernel = warm.fork_kernel(self.box, self.connection_file, boxed)
            except (OSError, RuntimeError) as error:  # the warm process died (out of memory)
                self.log.warning("starting this kernel cold: %s", error)
                return await super()._async_launch_kernel(kernel_cmd, **kw)
            self.provisioner.process, self.provisioner.pid = kernel, kernel.pid
            self.provisioner.pgid = None  # signals go to the kernel's process A, which passes
            self._reconcile_connection_info(self.provisioner.connection_info)

        async def _async_post_start_kernel(self, **kw):
            """Once the kernel has bound its unix sockets: a client that connects before finds
            no socket file and tries again only 100 ms later (ZeroMQ's reconnect interval)."""
            if self.box is not None:
                channels = ("shell", "iopub", "stdin", "control", "hb")
                files = [f"{self.ip}-{getattr(self, f'{c}_port')}" for c in channels]
                deadline = time.monotonic() + 30
                while not all(map(os.path.exists, files)) and time.monotonic() < deadline:
                    if self.provisioner.process.poll() is not None:
                        break  # died at start-up: nbclient says so
                    await asyncio.sleep(0.005)
            await super()._async_post_start_kernel(**kw)

    return LimitedKernelManager


def _killed_by(status, sandboxed: bool):
    """The signal that ended a kernel process with exit status `status` (Popen's), or None.
    bwrap exits with 128 + N when the kernel inside was killed by signal N."""
    if status is not None and status < 0:
        return -status
    if sandboxed and status is not None and status > 128:
        return status - 128
    return None


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


class LimitedExecute(Execute):
    """nbgrader's Execute with a wall-clock limit, resource limits, a sandbox and the tamper
    watch."""

    wall_limit = Integer(600, help="seconds for the whole notebook (0: none)").tag(config=True)
    memory_limit = Integer(
        4 << 30, help="bytes of data (heap, private writable mappings) for the kernel (0: none)"
    ).tag(config=True)
    cpu_limit = Integer(0, help="seconds of CPU time for the kernel process (0: none)").tag(
        config=True
    )
    file_size_limit = Integer(0, help="bytes a file the kernel writes may reach (0: none)").tag(
        config=True
    )
    tasks_limit = Integer(
        0, help="processes and threads in the kernel's sandbox (0: none; only with sandbox)"
    ).tag(config=True)
    output_limit = Integer(0, help="bytes of cell outputs for the whole notebook (0: none)").tag(
        config=True
    )
    sandbox = Bool(False, help="run the kernel in a bubblewrap sandbox (see sandbox.py)").tag(
        config=True
    )
    warm_kernels = Bool(
        True,
        help="fork each sandboxed kernel from a warm process that has imported torch, the course "
        "and the grader (warm.py); False: start each cold, with bwrap",
    ).tag(config=True)
    record_path = Unicode("", help="where to write what was found, as JSON").tag(config=True)
    remote_checks = Bool(
        True, help="grade check cells in this process, calling into the kernel (verdicts.py)"
    ).tag(config=True)
    student = Unicode("", help="whose notebook this is: part of the hidden checks' seed").tag(
        config=True
    )
    secret = Unicode(
        "", help="the course's secret, the rest of that seed (empty: a fresh one per run)"
    ).tag(config=True)
    partial_credit = Bool(
        True,
        help="a check cell earns the share of its points its passed checks weigh (False: all "
        "or nothing)",
    ).tag(config=True)

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.shutdown_kernel = "immediate"  # graded: nothing to save, no need to wait for it
        self.kernel_manager_class = limited_kernel_manager(
            self.memory_limit,
            cpu_seconds=self.cpu_limit,
            file_bytes=self.file_size_limit,
            tasks=self.tasks_limit,
            warm_kernels=self.warm_kernels,
        )

    # -- limits

    def _cell_timeout(self, cell):
        """Seconds left for `cell`: the per-cell timeout, within the notebook's wall clock (and,
        for a check cell graded from here, counted from the cell's start, not per request)."""
        timeout = self.timeout or 10**9
        deadline = min(self._deadline, self._cell_deadline)
        if deadline < 10**9:
            timeout = min(timeout, max(1, int(deadline - time.monotonic()) + 1))
        return timeout

    def output(self, outs, msg, display_id, cell_index):
        """nbclient's, while the notebook's outputs stay under `output_limit` bytes; past it
        they are dropped (the grader's memory holds them all), and the run stops after the
        cell (see _run)."""
        if self.output_limit:
            self._output_bytes += len(json.dumps(msg["content"]))
            if self._output_bytes > self.output_limit:
                return None
        return super().output(outs, msg, display_id, cell_index)

    def _kernel_call(self, function, arguments: str = ""):
        """Define kernel_side's `function` in the kernel and call it there with `arguments` (an
        expression the kernel evaluates), unseen; return what it returned (decoded JSON), or None
        if it failed."""
        name = f"__grader_{function.__name__}"
        msg_id = self.kc.execute(
            kernel_definition(function),
            silent=True,
            store_history=False,
            user_expressions={"out": f"{name}({arguments})"},
        )
        reply = self.wait_for_reply(msg_id)
        if reply is None:
            return None
        out = reply["content"].get("user_expressions", {}).get("out", {})
        if out.get("status") != "ok":
            return None
        return json.loads(ast.literal_eval(out["data"]["text/plain"]))

    def preprocess(self, nb, resources=None, km=None):
        from nbclient.client import NotebookClient

        NotebookClient.__init__(self, nb, km)
        self.timeout_func = self._cell_timeout
        self.shutdown_kernel = "immediate"
        self.reset_execution_trackers()
        self._check_assign_resources(resources)
        self._deadline = time.monotonic() + (self.wall_limit or 10**9)
        self._cell_deadline = 10**9
        self._secret = self.secret.encode() or os.urandom(32)
        record = {
            "stopped": None,
            "notes": [],
            "tamper": [],
            "reports": {},
            "cells_run": 0,
            "seconds": {
                "kernel_start": 0.0,
                "cells": 0.0,
                "imports": 0.0,
                "checks": 0.0,
                "other_cells": 0.0,
                "watch": 0.0,
            },
        }
        self._output_bytes = 0
        started = time.monotonic()
        try:
            with self._sandbox() as box:
                self._start_kernel(record, box)
                with self.setup_kernel():
                    info = self.wait_for_reply(self.kc.kernel_info())
                    self.nb.metadata["language_info"] = info["content"]["language_info"]
                    record["seconds"]["kernel_start"] = time.monotonic() - started
                    self._run(record, resources)
        except DeadKernelError:
            if not record["stopped"]:
                record["stopped"] = self._died("while starting")
        except Exception as error:  # a kernel that never came up, a broken channel: the reason
            if not record["stopped"]:
                record["stopped"] = f"the kernel failed: {type(error).__name__}: {error}"
        if record["stopped"]:
            for cell in self.nb.cells:
                if (
                    cell.cell_type == "code"
                    and cell.metadata.get("nbgrader", {}).get("grade")
                    and not cell.get("_ran")
                ):
                    cell.outputs = [
                        NotebookNode(
                            output_type="error",
                            ename="NotGraded",
                            evalue=record["stopped"],
                            traceback=[f"NotGraded: {record['stopped']}"],
                        )
                    ]
        for cell in self.nb.cells:
            cell.pop("_ran", None)
        seconds = record["seconds"]
        seconds["total"] = time.monotonic() - started
        # what no cell accounts for: starting and stopping the kernel, the grader's own requests
        # (bounded too: each by the per-cell timeout, the whole submission by the wall clock)
        seconds["outside_cells"] = seconds["total"] - seconds["cells"]
        if self.record_path:
            with open(self.record_path, "w") as f:
                json.dump(record, f)
        self.set_widgets_metadata()
        return self.nb, self.resources

    def _sandbox(self):
        """A context giving the kernel's sandbox (None without one), whose writable working
        folder is the notebook's."""
        if not self.sandbox:
            return contextlib.nullcontext()
        return sandbox.Sandbox(self.resources.get("metadata", {}).get("path") or os.getcwd())

    def _start_kernel(self, record, box):
        """Start the kernel (in `box`, the sandbox, if any) and its client, once more if the
        kernel dies before kernel_info.

        Kernels started side by side can race for one free TCP port (jupyter_client picks a
        port and closes it; the kernel binds it later), and the loser dies at start-up. No cell
        has run then, so the second start cannot hide anything a submission did. (A sandboxed
        kernel uses unix sockets in a folder of its own: no race.)
        """
        for attempt in (1, 2):
            self.km = self.create_kernel_manager()
            if box is not None:
                self.km.confine(box)
            self.start_new_kernel()
            try:
                self.start_new_kernel_client()
                return
            except RuntimeError as error:  # nbclient has already shut the dead kernel down
                if attempt == 2 or "before replying to kernel_info" not in str(error):
                    raise
                record["kernel_restarts"] = 1

    def _died(self, where: str) -> str:
        process = getattr(getattr(self.km, "provisioner", None), "process", None)
        status = process.poll() if process is not None else None
        number = _killed_by(status, self.sandbox)
        if number is None:
            how = f"exit status {status}" if status is not None else "no exit status"
            cause = " (sys.exit/os._exit or a crash)" if status is not None else ""
            return f"the kernel died {where}: {how}{cause}"
        causes = {
            signal.SIGKILL: " (the out-of-memory killer, or the wall-clock limit)",
            signal.SIGSEGV: " (a segmentation fault)",
            signal.SIGXCPU: f" (the CPU-time limit of {self.cpu_limit} s)",
        }
        return f"the kernel died {where}: killed by {_signal_name(number)}{causes.get(number, '')}"

    def _run(self, record, resources):
        began = time.monotonic()
        prelude = self._kernel_call(kernel_side.snapshot)
        record["seconds"]["imports"] += time.monotonic() - began  # torch and the grader
        if prelude is None:
            raise RuntimeError("the grader could not be imported in the kernel")
        if self.remote_checks:
            sources = [c.source for c in self.nb.cells if c.cell_type == "code"]
            for number, what in source_scan.tampering(sources):
                where = f"code cell {number}"
                record["tamper"].append(
                    {"cell": where, "before": where, "kind": "tampering", "what": what}
                )
        window = []  # the cells run since the last graded one: where a change came from
        for index, cell in enumerate(self.nb.cells):
            if cell.cell_type != "code":
                continue
            meta = cell.metadata.get("nbgrader", {})
            name = meta.get("grade_id") or f"cell {index + 1}"
            graded = bool(meta.get("grade"))
            if time.monotonic() >= self._deadline:
                record["stopped"] = (
                    f"the wall-clock limit of {self.wall_limit} s was reached before cell {name}"
                )
                return
            if graded:
                watch = time.monotonic()
                found = self._kernel_call(kernel_side.reset, "get_ipython().user_ns")
                record["seconds"]["watch"] += time.monotonic() - watch
                for what in found or []:
                    record["tamper"].append(
                        {
                            "cell": ", ".join(window) or name,
                            "before": name,
                            "kind": "monkeypatch",
                            "what": what,
                        }
                    )
                window = []
            began = time.monotonic()
            calls = verdicts.check_calls(cell.source) if graded and self.remote_checks else None
            try:
                if calls:
                    self._grade_here(cell, calls, record, name)
                else:
                    self.preprocess_cell(cell, resources, index)
            except remote.KernelGone as error:
                record["stopped"] = f"the kernel did not answer the checks of cell {name}: {error}"
                return
            except DeadKernelError:
                record["stopped"] = self._died(f"in cell {name}")
                return
            except CellTimeoutError:  # the interrupt did not stop it: no reply, no output
                record["stopped"] = (
                    f"cell {name} ran longer than the per-cell timeout of "
                    f"{self.timeout} s and ignored the interrupt"
                )
                return
            finally:
                spent = time.monotonic() - began
                record["seconds"]["cells"] += spent
                kind = "checks" if graded else "imports" if name == "setup" else "other_cells"
                record["seconds"][kind] += spent
            cell["_ran"] = True
            record["cells_run"] += 1
            if self.output_limit and self._output_bytes > self.output_limit:
                record["stopped"] = (
                    f"the outputs passed the limit of {self.output_limit} bytes in cell {name} "
                    "(the rest of its output was dropped)"
                )
                return
            if not graded:
                window.append(name)
            timed_out = any(
                o.get("output_type") == "error" and o.get("ename") == "CellTimeoutError"
                for o in cell.outputs
            )
            if timed_out:
                if self.wall_limit and time.monotonic() >= self._deadline - 1:
                    record["stopped"] = (
                        f"the wall-clock limit of {self.wall_limit} s was reached in cell {name}"
                    )
                else:
                    record["stopped"] = (
                        f"cell {name} ran longer than the per-cell timeout of {self.timeout} s"
                    )
                cell["_ran"] = True
                return
            if graded and not calls:
                watch = time.monotonic()
                reports = self._kernel_call(kernel_side.collected_reports)
                record["seconds"]["watch"] += time.monotonic() - watch
                if reports:
                    record["reports"][name] = reports

    # -- check cells graded from here (verdicts.py, remote.py)

    def _grade_here(self, cell, calls: list, record: dict, name: str) -> None:
        """Grade check cell `cell` in this process: its verdicts, outputs and reports."""
        self._cell_deadline = time.monotonic() + (self.timeout or 10**9)
        try:
            outputs, reports = self._verdicts(cell, calls, record, name)
        finally:
            self._cell_deadline = 10**9
        cell.outputs = outputs
        if reports:
            record["reports"][name] = [verdicts.report_record(*r) for r in reports]

    def _verdicts(self, cell, calls: list, record: dict, name: str) -> tuple:
        """(outputs, reports) of check cell `cell`: its checks run here, on what the kernel
        answers over a channel of its own (remote.Channel) for the length of the cell."""
        path = os.path.splitext(self.km.connection_file)[0] + "-checks"  # beside its sockets
        channel = remote.Channel(path, self._cell_deadline)
        serving = self.kc.execute(
            "", silent=True, store_history=False, user_expressions=channel.expression()
        )
        try:
            channel.connect(lambda: self._raise_if_dead(wait=0))
            sources = [c.source for c in self.nb.cells if c.cell_type == "code"]
            points = float(cell.metadata.get("nbgrader", {}).get("points", 0))
            outputs, reports = verdicts.grade_cell(
                channel.ask, calls, self.student, self._secret, sources, points, self.partial_credit
            )
            remote.RemoteKernel(channel.ask).request("forget")  # the handles the checks held
        except DeadKernelError:
            raise
        except remote.KernelGone:
            self._raise_if_dead()  # a death is named as such: a segfault, the CPU-time limit
            raise
        except Exception as error:  # the grader's own fault: this cell fails, with the reason
            reason = f"the grader could not check this cell: {type(error).__name__}: {error}"
            record["notes"].append(f"{name}: {reason}")
            outputs, reports = [self._error_output("GraderError", reason)], []
        finally:
            channel.close()
        if self.wait_for_reply(serving, cell) is None:  # the kernel's side returns once closed
            raise remote.KernelGone("the checks' request did not end within the cell's time")
        return outputs, reports

    def _raise_if_dead(self, wait: float = 1.0) -> None:
        """DeadKernelError if the kernel exits within `wait` seconds (a kernel that closed its
        channel as it died is reaped a moment later)."""
        process = self.km.provisioner.process
        deadline = time.monotonic() + wait
        while process.poll() is None:
            if time.monotonic() >= deadline:
                return
            time.sleep(0.01)
        raise DeadKernelError("the kernel died")

    @staticmethod
    def _error_output(ename: str, evalue: str) -> NotebookNode:
        return NotebookNode(
            output_type="error", ename=ename, evalue=evalue, traceback=[f"{ename}: {evalue}"]
        )
