"""The `<python>` tool: run model-written code in the project's sandbox and show what it printed."""

from __future__ import annotations

import re
import textwrap
from dataclasses import dataclass, field
from typing import Any

_FENCE = re.compile(r"^\s*```[a-zA-Z0-9_+-]*[ \t]*\n(.*?)\n?[ \t]*```\s*$", re.DOTALL)


def clean_code(payload: str) -> str:
    """Strip a markdown fence and common indentation that models put inside the tag."""
    match = _FENCE.match(payload)
    if match:
        payload = match.group(1)
    return textwrap.dedent(payload).strip("\n")


def _sandbox() -> Any:
    """Import the sandbox module, with an error that says what is missing."""
    try:
        from recursivemas import sandbox
    except ImportError as exc:  # pragma: no cover - only when the install is broken
        raise ValueError(
            f"the python tool needs recursivemas.sandbox, which failed to import ({exc}); "
            "reinstall recursivemas or remove `python` from the tools spec"
        ) from exc
    return sandbox


@dataclass
class PythonTool:
    """Runs the payload as a Python program in the sandbox (see `recursivemas.sandbox`, docs/sandbox.md).

    Limits default to the release's: 10 s wall time, plus the sandbox's memory, file, disk and
    process limits, no network, and a fresh working directory per call (a minimal root that holds
    nothing of the host's files when OS isolation is available).
    """

    timeout_s: float = 10.0
    memory_mb: int = 1024
    cpu_s: float | None = None
    max_file_mb: int = 16
    max_procs: int = 64
    max_box_mb: int = 64
    name: str = field(default="python", init=False)

    def __post_init__(self) -> None:
        if self.timeout_s <= 0:
            raise ValueError(f"python.timeout_s must be > 0, got {self.timeout_s}")
        if self.memory_mb <= 0:
            raise ValueError(f"python.memory_mb must be > 0, got {self.memory_mb}")
        if self.max_box_mb <= 0:
            raise ValueError(f"python.max_box_mb must be > 0, got {self.max_box_mb}")
        _sandbox()  # fail at load time, not at the first call

    def __call__(self, payload: str) -> str:
        """Run `payload` and return its output, or an error text the model can read."""
        code = clean_code(payload)
        if not code.strip():
            return "Error: empty python call; put code between <python> and </python>."
        res = _sandbox().run_python(
            code,
            timeout_s=self.timeout_s,
            memory_mb=self.memory_mb,
            cpu_s=self.cpu_s,
            max_file_mb=self.max_file_mb,
            max_procs=self.max_procs,
            max_box_mb=self.max_box_mb,
        )
        return format_sandbox_result(res, self)


def _explain(res: Any, tool: PythonTool) -> str | None:
    """One line saying why the program did not finish cleanly, naming the limit it hit."""
    if res.timed_out:
        return f"Error: the code ran past the {tool.timeout_s:g} s time limit and was stopped."
    reason = res.error or (None if res.returncode == 0 else f"exit code {res.returncode}")
    if reason is None:
        return None
    known = {
        "memory limit": f"Error: the code ran out of memory (limit {tool.memory_mb} MB).",
        "cpu time limit": "Error: the code used up its CPU time limit and was stopped.",
        "file size limit": f"Error: the code wrote more than the {tool.max_file_mb} MB file/output limit.",
        "disk quota": f"Error: the code filled its {tool.max_box_mb} MB of disk space (working dir and /tmp).",
        "sandbox setup failed": "Error: the sandbox could not start; the code did not run.",
    }
    return known.get(reason, f"Error: the program failed ({reason}).")


def format_sandbox_result(res: Any, tool: PythonTool) -> str:
    """Turn a SandboxResult into text: stdout, then stderr, then what went wrong, if anything."""
    parts: list[str] = []
    stdout = (res.stdout or "").rstrip()
    stderr = (res.stderr or "").rstrip()
    if stdout:
        parts.append(stdout)
    if stderr:
        parts.append(f"[stderr]\n{stderr}")
    error = _explain(res, tool)
    if error:
        parts.append(error)
    return "\n".join(parts) if parts else "(no output; use print() to show values)"
