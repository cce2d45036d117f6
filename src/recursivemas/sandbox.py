"""The one place that runs model-written code: an isolated, limited, throw-away Python process.

Every caller (code grading, the ``<python>`` tool) goes through :func:`run_python`. Layers, outermost
first (see ``docs/evaluation.md`` for what each one guarantees and where it stops):

1. OS isolation, when this machine allows it (``isolation()`` says which level is in use):
   ``unshare`` into new network, mount, PID, IPC and UTS namespaces. The network namespace has no
   interface but a down loopback, so nothing can be reached. Every mount is remounted read-only
   except the run's own temporary directory. As root, the program then runs as a fresh unused uid
   with only ``CAP_DAC_READ_SEARCH`` (to read the interpreter's files) and ``no_new_privs``;
   unprivileged, a user namespace is used and every capability is dropped. When the program's first process exits, the
   kernel kills everything left in its PID namespace.
2. ``resource`` limits set in the child before the program runs: address space, CPU seconds, file
   size (which also caps what it can print), process count, no core files.
3. A new session; on timeout the whole process group is killed with SIGKILL.
4. An empty environment (``PATH``, ``LANG``, ``HOME`` only), ``python -I``, stdin from ``/dev/null``
   unless given, a fresh temporary directory as cwd, deleted afterwards.
5. A Python audit hook that refuses subprocesses, forks, non-Unix sockets and writes outside the
   working directory. It gives readable errors for ordinary code; it is not a security boundary on its
   own (``ctypes`` gets around it), which is why layer 1 exists.

This file is also the child's bootstrap: ``python -I sandbox.py CONFIG`` sets the limits and runs the
program. Module-level imports are stdlib only, so the child never imports the package.
"""

from __future__ import annotations

import json
import os
import re
import resource
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import warnings
from dataclasses import dataclass

_SETUP_FAILED = 121  # exit code of the bootstrap when isolation could not be set up
_UID_RANGE = (1_500_000_000, 1_600_000_000)  # as root, each run gets its own unused uid from here
_ENV_MODE = "RECURSIVEMAS_SANDBOX"  # auto (default) | namespaces (required) | process (no namespaces)
_MODES = ("auto", "namespaces", "process")


@dataclass
class SandboxResult:
    """What a sandboxed program did. ``error`` is a short reason when it did not exit cleanly."""

    stdout: str
    stderr: str
    returncode: int | None
    timed_out: bool
    error: str | None

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and not self.timed_out


def run_python(
    code: str,
    *,
    stdin: str | None = None,
    timeout_s: float = 10.0,
    memory_mb: int = 1024,
    cpu_s: float | None = None,
    max_file_mb: int = 16,
    max_procs: int = 64,
    max_output_chars: int = 100_000,
) -> SandboxResult:
    """Run ``code`` as a Python program in the sandbox and return what it printed.

    ``timeout_s`` is wall time (the process group is killed after it); ``cpu_s`` defaults to
    ``timeout_s`` + 1. ``memory_mb`` caps the address space, ``max_file_mb`` every file it writes
    (stdout and stderr included), ``max_procs`` the processes and threads it may have at once.
    """
    for name, value in (("timeout_s", timeout_s), ("memory_mb", memory_mb), ("max_file_mb", max_file_mb),
                        ("max_procs", max_procs), ("max_output_chars", max_output_chars)):
        if value <= 0:
            raise ValueError(f"run_python: {name} must be > 0, got {value!r}")
    if cpu_s is not None and cpu_s <= 0:
        raise ValueError(f"run_python: cpu_s must be > 0 or None, got {cpu_s!r}")
    limits = {
        "memory_mb": int(memory_mb),
        "cpu_s": int(cpu_s if cpu_s is not None else timeout_s + 1) or 1,
        "max_file_mb": int(max_file_mb),
        "max_procs": int(max_procs),
    }
    return _run(code, stdin, timeout_s, limits, max_output_chars, isolate=isolation() != "process")


def isolation() -> str:
    """The isolation level in use: ``"namespaces"`` (OS-level, see module doc) or ``"process"``.

    Decided once per process by a probe run. ``RECURSIVEMAS_SANDBOX=namespaces`` makes a missing
    OS isolation an error instead of a warning; ``=process`` skips it.
    """
    global _LEVEL
    with _LEVEL_LOCK:
        if _LEVEL is None:
            _LEVEL = _probe()
        return _LEVEL


_LEVEL: str | None = None
_LEVEL_LOCK = threading.Lock()


def _probe() -> str:
    mode = os.environ.get(_ENV_MODE, "auto").strip().lower() or "auto"
    if mode not in _MODES:
        raise ValueError(f"{_ENV_MODE}={mode!r} is not one of {', '.join(_MODES)}; unset it to auto-detect")
    if mode == "process":
        return "process"
    reason = "the `unshare` program (util-linux) is not installed"
    if shutil.which("unshare") is not None:
        limits = {"memory_mb": 1024, "cpu_s": 10, "max_file_mb": 1, "max_procs": 16}
        res = _run("print('ok')", None, 20.0, limits, 10_000, isolate=True)
        if res.ok and res.stdout.strip() == "ok":
            return "namespaces"
        reason = (res.stderr.strip().splitlines() or [res.error or "no output"])[-1]
    if mode == "namespaces":
        raise RuntimeError(f"{_ENV_MODE}=namespaces but OS isolation is unavailable here: {reason}")
    warnings.warn(
        f"sandbox: OS-level isolation unavailable ({reason}); model-written code runs with resource "
        "limits and a Python audit hook only, which ctypes can bypass. See docs/evaluation.md.",
        RuntimeWarning,
        stacklevel=3,
    )
    return "process"


def _unshare_argv() -> list[str]:
    argv = ["unshare", "--net", "--mount", "--pid", "--ipc", "--uts", "--fork", "--kill-child", "--mount-proc"]
    if os.geteuid() != 0:
        argv[1:1] = ["--user", "--map-root-user"]
    return argv


def _user_process_count() -> int:
    """Processes of the current user (RLIMIT_NPROC counts them all outside a user namespace)."""
    uid, n = os.getuid(), 0
    if not os.path.isdir("/proc"):
        return 0
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                n += os.stat(f"/proc/{entry}").st_uid == uid
            except OSError:
                pass
    return n


def _run(code: str, stdin: str | None, timeout_s: float, limits: dict, max_chars: int, *, isolate: bool) -> SandboxResult:
    outer = os.path.realpath(tempfile.mkdtemp(prefix="recursivemas-sandbox-"))  # mountinfo shows real paths
    try:
        box = os.path.join(outer, "box")
        os.mkdir(box, 0o700)
        root = os.geteuid() == 0
        uid = _UID_RANGE[0] + secrets.randbelow(_UID_RANGE[1] - _UID_RANGE[0])
        if isolate and root:
            os.chown(box, uid, uid)
        nproc = limits["max_procs"]
        if not isolate and not root:
            nproc += _user_process_count()
        script = os.path.join(outer, "main.py")
        with open(script, "w", encoding="utf-8") as f:
            f.write(code)
        cfg = {"box": box, "script": script, "isolate": isolate, "as_root": root, "uid": uid, **limits,
               "nproc": nproc}
        argv = [sys.executable, "-I", "-B", os.path.abspath(__file__)]
        if isolate:
            argv = _unshare_argv() + ["--", *argv]
        out_path, err_path = os.path.join(outer, "stdout"), os.path.join(outer, "stderr")
        stdin_path = os.devnull
        if stdin is not None:
            stdin_path = os.path.join(outer, "stdin")
            with open(stdin_path, "w", encoding="utf-8") as f:
                f.write(stdin)
        rc, timed_out = _launch(argv, cfg, box, stdin_path, out_path, err_path, timeout_s)
        stdout, stderr = _read(out_path, max_chars), _read(err_path, max_chars)
        return SandboxResult(stdout, stderr, rc, timed_out, _reason(rc, timed_out, stderr))
    finally:
        shutil.rmtree(outer, ignore_errors=True)


def _launch(argv: list[str], cfg: dict, box: str, stdin_path: str, out_path: str, err_path: str,
            timeout_s: float) -> tuple[int | None, bool]:
    """Start the supervisor in a new session, wait, kill the group; (program exit status, timed out)."""
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": box, "TMPDIR": box}
    status_r, status_w = os.pipe()  # the supervisor writes the program's exit status here
    try:
        argv = [*argv, json.dumps({**cfg, "status_fd": status_w})]
        with open(out_path, "wb") as out, open(err_path, "wb") as err, open(stdin_path, "rb") as inp:
            proc = subprocess.Popen(argv, stdin=inp, stdout=out, stderr=err, cwd=box, env=env,
                                    start_new_session=True, close_fds=True, pass_fds=(status_w,))
            os.close(status_w)
            status_w = -1
            timed_out = False
            try:
                proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                timed_out = True
            _kill_group(proc.pid)
            proc.wait()
        if timed_out:
            return None, True
        os.set_blocking(status_r, False)
        try:
            status = os.read(status_r, 64).decode(errors="replace").strip()
        except BlockingIOError:
            status = ""
        # no status: the supervisor itself failed (setup error, unshare refused); use its exit code
        return (int(status) if status.lstrip("-").isdigit() else proc.returncode), False
    finally:
        os.close(status_r)
        if status_w >= 0:
            os.close(status_w)


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _read(path: str, max_chars: int) -> str:
    with open(path, "rb") as f:
        data = f.read(max_chars * 4 + 4)
        more = f.read(1) != b""
    text = data.decode("utf-8", errors="replace")
    if more or len(text) > max_chars:
        text = text[:max_chars] + "\n[... output truncated by the sandbox ...]"
    return text


_SIGNAL_REASONS = {signal.SIGXCPU: "cpu time limit", signal.SIGXFSZ: "file size limit"}


def _reason(rc: int | None, timed_out: bool, stderr: str) -> str | None:
    if timed_out:
        return "timeout"
    if rc == 0:
        return None
    if rc is not None and rc < 0:
        return _SIGNAL_REASONS.get(-rc, f"killed by signal {-rc}")
    if rc == _SETUP_FAILED and "sandbox setup failed" in stderr:
        return "sandbox setup failed"
    if "MemoryError" in stderr:
        return "memory limit"
    if "File too large" in stderr:
        return "file size limit"
    return f"exit code {rc}"


# --------------------------------------------------------------------------------------------------
# Child side: everything below runs inside the sandboxed process, before and around the program.
# --------------------------------------------------------------------------------------------------

_MS_RDONLY, _MS_NOSUID, _MS_NODEV, _MS_NOEXEC = 1, 2, 4, 8
_MS_REMOUNT, _MS_BIND, _MS_REC = 32, 4096, 16384
_MS_OPTS = {"nosuid": _MS_NOSUID, "nodev": _MS_NODEV, "noexec": _MS_NOEXEC, "noatime": 1024,
            "nodiratime": 2048, "relatime": 1 << 21, "strictatime": 1 << 24}
_PR_SET_KEEPCAPS, _PR_CAPBSET_DROP, _PR_SET_NO_NEW_PRIVS = 8, 24, 38
_CAP_DAC_READ_SEARCH = 2
_CAP_VERSION_3 = 0x20080522


def _libc():  # noqa: ANN202 - ctypes handle
    import ctypes

    return ctypes, ctypes.CDLL(None, use_errno=True)


def _check(ret: int, what: str) -> None:
    if ret != 0:
        import ctypes

        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def _mounts() -> list[tuple[str, int]]:
    """(mount point, per-mount flags) for every mount in this namespace, parents first."""
    found = []
    with open("/proc/self/mountinfo", encoding="utf-8") as f:
        for line in f:
            fields = line.split()
            point = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), fields[4])  # \040 is a space
            flags = 0
            for opt in fields[5].split(","):
                flags |= _MS_OPTS.get(opt, 0)
            found.append((point, flags))
    return found


def _isolate(cfg: dict) -> None:
    """Runs as (namespace) root: read-only everything but the box, then give up privileges."""
    ctypes, libc = _libc()
    box = cfg["box"]
    _check(libc.mount(box.encode(), box.encode(), None, _MS_BIND | _MS_REC, None), f"bind {box}")
    for point, flags in _mounts():
        if point == box:
            continue
        ret = libc.mount(None, point.encode(), None, _MS_REMOUNT | _MS_BIND | _MS_RDONLY | flags, None)
        if ret != 0 and ctypes.get_errno() != 2:  # ENOENT: a mount hidden under another one
            _check(ret, f"remount {point} read-only")
    os.chdir(box)  # the old cwd still points into the (now read-only) mount below the bind
    for cap in range(64):  # empty the bounding set so no exec can regain a capability
        if libc.prctl(_PR_CAPBSET_DROP, cap, 0, 0, 0) != 0:
            break
    keep = 0
    if cfg["as_root"]:  # real root: become a fresh uid, keeping only the right to read the interpreter
        _check(libc.prctl(_PR_SET_KEEPCAPS, 1, 0, 0, 0), "keepcaps")
        os.setgroups([])
        os.setgid(cfg["uid"])
        os.setuid(cfg["uid"])  # its own uid: RLIMIT_NPROC counts this run's processes only
        keep = 1 << _CAP_DAC_READ_SEARCH
    header = (ctypes.c_uint32 * 2)(_CAP_VERSION_3, 0)
    data = (ctypes.c_uint32 * 6)(keep, keep, 0, 0, 0, 0)  # effective, permitted, inheritable x 2 words
    _check(libc.capset(header, data), "capset")
    _check(libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "no_new_privs")


def _set_limits(cfg: dict) -> None:
    def cap(kind: int, value: int, hard_extra: int = 0) -> None:
        _, hard = resource.getrlimit(kind)
        new_hard = value + hard_extra if hard == resource.RLIM_INFINITY else min(value + hard_extra, hard)
        resource.setrlimit(kind, (min(value, new_hard), new_hard))

    cap(resource.RLIMIT_AS, cfg["memory_mb"] << 20)
    cap(resource.RLIMIT_CPU, cfg["cpu_s"], hard_extra=1)  # SIGXCPU at the soft limit, SIGKILL a second later
    cap(resource.RLIMIT_FSIZE, cfg["max_file_mb"] << 20)
    cap(resource.RLIMIT_NPROC, cfg["nproc"] + 1)  # + the supervisor
    cap(resource.RLIMIT_CORE, 0)


_BLOCKED = {"os.fork", "os.forkpty", "os.posix_spawn", "os.spawn", "os.exec", "os.system", "subprocess.Popen"}
# event -> positions of path arguments that must stay inside the box
_PATH_EVENTS = {"os.remove": (0,), "os.rmdir": (0,), "os.rename": (0, 1), "os.mkdir": (0,), "os.chmod": (0,),
                "os.chown": (0,), "os.link": (0, 1), "os.symlink": (1,), "os.truncate": (0,), "os.utime": (0,),
                "shutil.rmtree": (0,), "os.setxattr": (0,), "os.removexattr": (0,), "os.mkfifo": (0,),
                "os.mknod": (0,)}
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND


def _install_guard(box: str) -> None:
    """Audit hook: readable refusals for forks, network and writes outside ``box`` (not a boundary)."""
    import socket

    box = os.path.realpath(box)
    realpath, join, getcwd, fspath = os.path.realpath, os.path.join, os.getcwd, os.fspath

    def inside(path: object) -> bool:
        if isinstance(path, int) or path is None:
            return True
        p = os.fsdecode(fspath(path))  # type: ignore[arg-type]
        full = realpath(join(getcwd(), p))
        return full == box or full.startswith(box + os.sep) or full in ("/dev/null", "/dev/zero")

    def hook(event: str, args: tuple) -> None:
        if event == "open":
            path, mode, flags = args
            writing = any(c in mode for c in "wax+") if isinstance(mode, str) else bool((flags or 0) & _WRITE_FLAGS)
            if writing and not inside(path):
                raise PermissionError(f"sandbox: writing outside the working directory is not allowed: {path!r}")
        elif event in _PATH_EVENTS:
            for i in _PATH_EVENTS[event]:
                if i < len(args) and not inside(args[i]):
                    raise PermissionError(f"sandbox: {event} outside the working directory is not allowed: {args[i]!r}")
        elif event in _BLOCKED:
            raise PermissionError(f"sandbox: {event} is not allowed (no subprocesses or forks)")
        elif event == "socket.__new__" and args[1] != socket.AF_UNIX:
            raise PermissionError("sandbox: network access is not allowed")

    sys.addaudithook(hook)


def _run_program(script: str) -> None:
    import linecache
    import traceback
    import types

    with open(script, encoding="utf-8") as f:
        source = f.read()
    linecache.cache["main.py"] = (len(source), None, source.splitlines(True), "main.py")  # tracebacks show lines
    main = types.ModuleType("__main__")
    main.__file__ = "main.py"
    sys.modules["__main__"] = main
    sys.argv = ["main.py"]
    try:
        exec(compile(source, "main.py", "exec"), main.__dict__)  # noqa: S102 - this is the sandbox
    except SystemExit:
        raise
    except BaseException as exc:  # print the program's traceback without the bootstrap frame
        traceback.print_exception(type(exc), exc, exc.__traceback__.tb_next if exc.__traceback__ else None)
        sys.stderr.flush()
        os._exit(1)


def _child_main() -> None:
    """Supervisor: set up isolation and limits, fork the program, report its exit status on a pipe.

    In namespace mode this process is PID 1 of its namespace, so its exit takes every leftover
    process with it; the status pipe lets the parent tell a signal death from an exit code.
    """
    cfg = json.loads(sys.argv[1])
    status_fd = cfg["status_fd"]
    try:
        if cfg["isolate"]:
            _isolate(cfg)
        _set_limits(cfg)
    except Exception as exc:  # noqa: BLE001 - any failure here means: do not run the program
        sys.stderr.write(f"sandbox setup failed: {exc}\n")
        sys.stderr.flush()
        os._exit(_SETUP_FAILED)
    try:
        pid = os.fork()
    except OSError as exc:
        sys.stderr.write(f"sandbox setup failed: cannot start the program: {exc}\n")
        os._exit(_SETUP_FAILED)
    if pid == 0:
        os.close(status_fd)  # the program cannot forge its own status
        _install_guard(cfg["box"])
        _run_program(cfg["script"])
        return
    _, status = os.waitpid(pid, 0)
    os.write(status_fd, str(os.waitstatus_to_exitcode(status)).encode())
    os._exit(0)


if __name__ == "__main__":
    _child_main()
