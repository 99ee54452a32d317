"""nbgrader's Execute step, with limits and a tamper watch: what `python -m grader autograde
--workers N` runs in place of stock `Execute` (configured through `Autograde.autograde_preprocessors`,
so every other step of the autograde is nbgrader's own).

Limits, per submission:
- a per-cell timeout and a wall-clock limit for the whole notebook; a cell that hits either stops
  the run: the cells before it keep their points, the graded cells after it score 0 with a reason;
- a memory cap: the kernel process is started under RLIMIT_AS (plain `setrlimit`, works
  unprivileged), so a huge allocation fails in that cell (a MemoryError/RuntimeError) instead of
  taking the machine down;
- kernel death (os._exit, a segfault, the OOM killer) stops the run the same way, with a reason.

Tamper watch: before the first cell the kernel snapshots the grader's modules, torch,
torch.nn.functional, torch.Tensor and builtins. Before every graded cell it compares them with the
snapshot, puts back whatever the student's cells replaced (so the test cell runs the real checks),
rebinds `check` to the grader's own, and reports each change. After every graded cell it collects
the structured verdicts of the checks that ran (for feedback and the class report). The code the
kernel runs for this is kernel_side.py's.

Everything found is written as JSON to `record_path` for the caller.
"""

import ast
import inspect
import json
import sys
import time

from jupyter_client.manager import AsyncKernelManager
from nbclient.exceptions import CellTimeoutError, DeadKernelError
from nbformat.notebooknode import NotebookNode
from nbgrader.preprocessors import Execute
from traitlets import Integer, Unicode

from grader.autograde import kernel_side


def kernel_definition(function) -> str:
    """The source of kernel_side's `function`, renamed __grader_NAME: it is defined in the
    notebook's own namespace, where a plain name could replace one of the student's."""
    source = inspect.getsource(function)
    return source.replace(f"def {function.__name__}(", f"def __grader_{function.__name__}(", 1)


def rlimit_command(command: list, memory_bytes: int) -> list:
    """`command`, started under an address-space limit of `memory_bytes` (Linux, unprivileged)."""
    code = (
        "import resource, os, sys; n = int(sys.argv[1]); "
        "resource.setrlimit(resource.RLIMIT_AS, (n, n)); os.execvp(sys.argv[2], sys.argv[2:])"
    )
    return [sys.executable, "-S", "-c", code, str(int(memory_bytes)), *command]


def limited_kernel_manager(memory_bytes: int):
    """An AsyncKernelManager class whose kernels start under the memory cap (0: none)."""

    class LimitedKernelManager(AsyncKernelManager):
        def format_kernel_cmd(self, extra_arguments=None):
            command = super().format_kernel_cmd(extra_arguments)
            return rlimit_command(command, memory_bytes) if memory_bytes else command

    return LimitedKernelManager


def _signal_name(status) -> str:
    if status is None or status >= 0:
        return f"exit status {status}" if status is not None else "no exit status"
    import signal

    try:
        return f"killed by {signal.Signals(-status).name}"
    except ValueError:
        return f"killed by signal {-status}"


class LimitedExecute(Execute):
    """nbgrader's Execute with a wall-clock limit, a memory cap and the tamper watch."""

    wall_limit = Integer(600, help="seconds for the whole notebook (0: none)").tag(config=True)
    memory_limit = Integer(4 << 30, help="bytes of address space for the kernel (0: none)").tag(
        config=True
    )
    record_path = Unicode("", help="where to write what was found, as JSON").tag(config=True)

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.shutdown_kernel = "immediate"  # graded: nothing to save, no need to wait for it
        self.kernel_manager_class = limited_kernel_manager(self.memory_limit)

    # -- limits

    def _cell_timeout(self, cell):
        timeout = self.timeout or 10**9
        if self.wall_limit:
            timeout = min(timeout, max(1, int(self._deadline - time.monotonic()) + 1))
        return timeout

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
        record = {
            "stopped": None,
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
        started = time.monotonic()
        try:
            self._start_kernel(record)
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
        record["seconds"]["total"] = time.monotonic() - started
        if self.record_path:
            with open(self.record_path, "w") as f:
                json.dump(record, f)
        self.set_widgets_metadata()
        return self.nb, self.resources

    def _start_kernel(self, record):
        """Start the kernel and its client, once more if the kernel dies before kernel_info.

        Kernels started side by side can race for one free TCP port (jupyter_client picks a
        port and closes it; the kernel binds it later), and the loser dies at start-up. No cell
        has run then, so the second start cannot hide anything a submission did.
        """
        for attempt in (1, 2):
            self.km = self.create_kernel_manager()
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
        how = _signal_name(status)
        cause = ""
        if status == -9:
            cause = " (the out-of-memory killer, or the wall-clock limit)"
        elif status == -11:
            cause = " (a segmentation fault)"
        elif status is not None and status >= 0:
            cause = " (sys.exit/os._exit or a crash)"
        return f"the kernel died {where}: {how}{cause}"

    def _run(self, record, resources):
        began = time.monotonic()
        prelude = self._kernel_call(kernel_side.snapshot)
        record["seconds"]["imports"] += time.monotonic() - began  # torch and the grader
        if prelude is None:
            raise RuntimeError("the grader could not be imported in the kernel")
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
            try:
                self.preprocess_cell(cell, resources, index)
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
            if graded:
                watch = time.monotonic()
                reports = self._kernel_call(kernel_side.collected_reports)
                record["seconds"]["watch"] += time.monotonic() - watch
                if reports:
                    record["reports"][name] = reports
