"""The one place that runs model-written code: an isolated, limited, throw-away Python process.

Every caller (code grading, the ``<python>`` tool) goes through :func:`run_python`. Layers, outermost
first (``docs/sandbox.md`` says what each one guarantees, where it stops, and how it is tested):

1. OS isolation, when this machine allows it (``isolation()`` says which level is in use): the
   supervisor calls ``unshare`` (via ctypes) for new mount, PID, network, IPC and UTS namespaces (plus a user
   namespace when not root). Its first child, PID 1 of the new PID namespace, builds a minimal root
   on a tmpfs: read-only binds of only the interpreter's directories and the system library dirs,
   ``/dev/{null,zero,random,urandom}``, ``/etc/ld.so.cache``, and a size-capped tmpfs ``/tmp`` that
   holds the working directory. It calls ``pivot_root`` into it and detaches the host's root, so no host
   file, directory or unix socket can be named. It then drops every capability (bounding, effective,
   permitted, inheritable, ambient), sets ``no_new_privs``, as root becomes a fresh unused uid, and
   installs a seccomp filter against new namespaces, mounts, file handles, tracing, BPF, keyrings
   and io_uring. The network namespace has only a down loopback. When PID 1 exits (after the program's first
   process ends, or when the supervisor kills it at the timeout) the kernel kills everything left
   in the namespace before the supervisor returns.
2. ``resource`` limits set before the program runs: address space, CPU seconds, file size (which
   also caps what it can print), process count, no core files.
3. A new session; on timeout the supervisor kills PID 1 (namespaces) or the whole process group is
   killed (process mode, where a ``setsid`` grandchild escapes it).
4. An empty environment (``PATH``, ``LANG``, ``HOME``, ``TMPDIR`` only), ``python -I``, stdin from
   ``/dev/null`` unless given, a fresh working directory, deleted afterwards.
5. A Python audit hook that refuses subprocesses, forks, non-Unix sockets and writes outside the
   working directory. It gives readable errors for ordinary code; it is not a security boundary on its
   own (``ctypes`` gets around it), which is why layer 1 exists.

This file is also the child's bootstrap: ``python -I sandbox.py CONFIG`` sets up isolation and limits
and runs the program. Module-level imports are stdlib only, so the child never imports the package.
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
    max_box_mb: int = 64,
    harness: bool = False,
) -> SandboxResult:
    """Run ``code`` as a Python program in the sandbox and return what it printed.

    ``timeout_s`` is wall time (everything the run started is killed after it); ``cpu_s`` defaults to
    ``timeout_s`` + 1. ``memory_mb`` caps the address space, ``max_file_mb`` every file it writes
    (stdout and stderr included), ``max_box_mb`` all it writes together (working dir and ``/tmp``),
    ``max_procs`` the processes and threads it may have at once. ``harness=True`` is for code grading
    only: the program is trusted grader code, started without the Python guard, and gets a
    ``__sandbox_guard__()`` function to install the guard in the processes it forks for model code.
    """
    for name, value in (("timeout_s", timeout_s), ("memory_mb", memory_mb), ("max_file_mb", max_file_mb),
                        ("max_procs", max_procs), ("max_output_chars", max_output_chars),
                        ("max_box_mb", max_box_mb)):
        if value <= 0:
            raise ValueError(f"run_python: {name} must be > 0, got {value!r}")
    if cpu_s is not None and cpu_s <= 0:
        raise ValueError(f"run_python: cpu_s must be > 0 or None, got {cpu_s!r}")
    limits = {
        "memory_mb": int(memory_mb),
        "cpu_s": int(cpu_s if cpu_s is not None else timeout_s + 1) or 1,
        "max_file_mb": int(max_file_mb),
        "max_procs": int(max_procs),
        "box_mb": int(max_box_mb),
        "harness": bool(harness),
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
    reason = f"namespaces need Linux, this is {sys.platform}"
    if sys.platform.startswith("linux"):
        limits = {"memory_mb": 1024, "cpu_s": 10, "max_file_mb": 1, "max_procs": 16, "box_mb": 1, "harness": False}
        res = _run("print('ok')", None, 20.0, limits, 10_000, isolate=True)
        if res.ok and res.stdout.strip() == "ok":
            return "namespaces"
        reason = (res.stderr.strip().splitlines() or [res.error or "no output"])[-1]
    if mode == "namespaces":
        raise RuntimeError(f"{_ENV_MODE}=namespaces but OS isolation is unavailable here: {reason}")
    warnings.warn(
        f"sandbox: OS-level isolation UNAVAILABLE ({reason}); model-written code runs with resource "
        "limits and a Python audit hook only, which ctypes bypasses: it can read, write and connect to "
        "anything this user can. Set RECURSIVEMAS_SANDBOX=namespaces to make this an error. "
        "See docs/sandbox.md.",
        RuntimeWarning,
        stacklevel=3,
    )
    return "process"


def _interpreter_dirs() -> list[str]:
    """Host directories the program's root needs: the interpreter's import path and the system libs.

    Only ``sys.path`` entries inside the interpreter's own prefixes (stdlib, lib-dynload,
    site-packages) are kept, so an editable install's source tree or a stray path stays outside.
    """
    import sysconfig

    prefixes = {os.path.realpath(p) for p in (sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix)}
    found: list[str] = []
    for entry in sys.path:
        real = os.path.realpath(entry) if entry else ""
        if real and os.path.exists(real) and any(real == p or real.startswith(p + os.sep) for p in prefixes):
            found.append(real)
    arch = sysconfig.get_config_var("MULTIARCH") or ""
    # the shared libraries extension modules link to (libffi, libssl, libz, ...) and the loader
    libs = ["/lib64", "/usr/lib64", *((f"/lib/{arch}", f"/usr/lib/{arch}") if arch else ("/lib", "/usr/lib"))]
    found += [os.path.realpath(lib) for lib in libs if os.path.isdir(lib)]
    unique: list[str] = []
    for d in sorted(set(found), key=len):  # drop a dir already inside a kept one
        if not any(d == u or d.startswith(u + os.sep) for u in unique):
            unique.append(d)
    return unique


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
    outer = os.path.realpath(tempfile.mkdtemp(prefix="recursivemas-sandbox-"))
    try:
        box = os.path.join(outer, "box")
        os.mkdir(box, 0o700)
        root = os.geteuid() == 0
        uid = _UID_RANGE[0] + secrets.randbelow(_UID_RANGE[1] - _UID_RANGE[0])
        nproc = limits["max_procs"]
        if not isolate and not root:
            nproc += _user_process_count()
        script = os.path.join(outer, "main.py")
        with open(script, "w", encoding="utf-8") as f:
            f.write(code)
        # inside the minimal root the working dir lives on the run's own tmpfs /tmp
        inner_box = f"/tmp/{os.path.basename(outer)}/box" if isolate else box
        cfg = {"box": inner_box, "script": script, "isolate": isolate, "as_root": root, "uid": uid, **limits,
               "nproc": nproc, "timeout_s": float(timeout_s)}
        if isolate:
            newroot = os.path.join(outer, "root")
            os.mkdir(newroot, 0o700)
            cfg.update(newroot=newroot, ro_dirs=_interpreter_dirs())
        argv = [sys.executable, "-I", "-B", os.path.abspath(__file__)]
        out_path, err_path = os.path.join(outer, "stdout"), os.path.join(outer, "stderr")
        stdin_path = os.devnull
        if stdin is not None:
            stdin_path = os.path.join(outer, "stdin")
            with open(stdin_path, "w", encoding="utf-8") as f:
                f.write(stdin)
        rc, timed_out = _launch(argv, cfg, box if not isolate else outer, stdin_path, out_path, err_path, timeout_s)
        stdout, stderr = _read(out_path, max_chars), _read(err_path, max_chars)
        return SandboxResult(stdout, stderr, rc, timed_out, _reason(rc, timed_out, stderr))
    finally:
        shutil.rmtree(outer, ignore_errors=True)


_GRACE_S = 10.0  # namespaces mode: the supervisor enforces the timeout; this is only its backstop


def _launch(argv: list[str], cfg: dict, cwd: str, stdin_path: str, out_path: str, err_path: str,
            timeout_s: float) -> tuple[int | None, bool]:
    """Start the supervisor in a new session, wait, kill the group; (program exit status, timed out)."""
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": cfg["box"], "TMPDIR": cfg["box"]}
    status_r, status_w = os.pipe()  # the supervisor writes the program's exit status here
    try:
        argv = [*argv, json.dumps({**cfg, "status_fd": status_w})]
        wait_s = timeout_s + _GRACE_S if cfg["isolate"] else timeout_s
        with open(out_path, "wb") as out, open(err_path, "wb") as err, open(stdin_path, "rb") as inp:
            if stdin_path != os.devnull:
                os.unlink(stdin_path)  # the program reads it through fd 0 only, never again by path
            proc = subprocess.Popen(argv, stdin=inp, stdout=out, stderr=err, cwd=cwd, env=env,
                                    start_new_session=True, close_fds=True, pass_fds=(status_w,))
            os.close(status_w)
            status_w = -1
            timed_out = False
            try:
                proc.wait(timeout=wait_s)
            except subprocess.TimeoutExpired:
                timed_out = True
            _kill_group(proc.pid)
            proc.wait()
        os.set_blocking(status_r, False)
        try:
            status = os.read(status_r, 64).decode(errors="replace").strip()
        except BlockingIOError:
            status = ""
        if timed_out or status == "timeout":
            return None, True
        # no status: the supervisor itself failed (setup error, namespaces refused); use its exit code
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
    if "No space left on device" in stderr:
        return "disk quota"
    return f"exit code {rc}"


# --------------------------------------------------------------------------------------------------
# Child side: everything below runs in the supervisor and the sandboxed process, around the program.
# --------------------------------------------------------------------------------------------------

_CLONE_NEWNS, _CLONE_NEWUTS, _CLONE_NEWIPC = 0x00020000, 0x04000000, 0x08000000
_CLONE_NEWUSER, _CLONE_NEWPID, _CLONE_NEWNET = 0x10000000, 0x20000000, 0x40000000
_MS_RDONLY, _MS_NOSUID, _MS_NODEV, _MS_NOEXEC = 1, 2, 4, 8
_MS_REMOUNT, _MS_BIND, _MS_REC, _MS_PRIVATE = 32, 4096, 16384, 1 << 18
_MNT_DETACH = 2
_MS_OPTS = {"nosuid": _MS_NOSUID, "nodev": _MS_NODEV, "noexec": _MS_NOEXEC, "noatime": 1024,
            "nodiratime": 2048, "relatime": 1 << 21, "strictatime": 1 << 24}
_PR_SET_PDEATHSIG, _PR_SET_DUMPABLE, _PR_CAPBSET_DROP, _PR_SET_NO_NEW_PRIVS = 1, 4, 24, 38
_PR_CAP_AMBIENT, _PR_CAP_AMBIENT_CLEAR_ALL = 47, 4
_CAP_VERSION_3 = 0x20080522
_SYS_PIVOT_ROOT = {"x86_64": 155, "aarch64": 41, "riscv64": 41, "ppc64le": 203, "s390x": 217}
_DEVICES = ("null", "zero", "random", "urandom")


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


def _enter_namespaces(cfg: dict) -> None:
    """Supervisor: new mount/PID/net/IPC/UTS namespaces (and a user namespace when not root)."""
    _, libc = _libc()
    flags = _CLONE_NEWNS | _CLONE_NEWPID | _CLONE_NEWNET | _CLONE_NEWIPC | _CLONE_NEWUTS
    uid, gid = os.getuid(), os.getgid()
    if not cfg["as_root"]:
        flags |= _CLONE_NEWUSER
    _check(libc.unshare(flags), "unshare")
    if not cfg["as_root"]:  # map only ourselves: the namespace has no other uid to become
        for name, text in (("setgroups", "deny"), ("uid_map", f"{uid} {uid} 1"), ("gid_map", f"{gid} {gid} 1")):
            with open(f"/proc/self/{name}", "w", encoding="ascii") as f:
                f.write(text)


def _mount(libc, src: str | None, dst: str, fstype: str | None, flags: int, data: str | None = None) -> None:  # noqa: ANN001
    enc = lambda v: None if v is None else v.encode()  # noqa: E731
    _check(libc.mount(enc(src), enc(dst), enc(fstype), flags, enc(data)), f"mount {src or fstype} on {dst}")


def _bind_read_only(libc, src: str, dst: str) -> None:  # noqa: ANN001
    """Bind ``src`` (and the mounts below it) on ``dst``, every one of them read-only."""
    _mount(libc, src, dst, None, _MS_BIND | _MS_REC)
    for point, flags in _mounts():
        if point == dst or point.startswith(dst.rstrip("/") + "/"):
            # keep the flags a user namespace may not clear (nosuid, nodev, atime) or EPERM follows
            ret = libc.mount(None, point.encode(), None, _MS_REMOUNT | _MS_BIND | _MS_RDONLY | _MS_NOSUID | flags, None)
            if ret != 0:
                _check(ret, f"remount {point} read-only")


def _build_root(cfg: dict) -> None:
    """PID 1, before the program: a root with only the interpreter, a few devices and the box."""
    _, libc = _libc()
    new, uid = cfg["newroot"], cfg["uid"] if cfg["as_root"] else os.getuid()
    gid = uid if cfg["as_root"] else os.getgid()
    os.umask(0o022)  # the skeleton dirs must be traversable by the run's uid whatever the caller's umask
    _mount(libc, None, "/", None, _MS_REC | _MS_PRIVATE)  # nothing we mount propagates to the host
    _mount(libc, "tmpfs", new, "tmpfs", _MS_NOSUID | _MS_NODEV, "size=1m,nr_inodes=4096,mode=0755")
    # the only writable place: one tmpfs for /tmp and the working dir, capped as a whole. Mounted before the
    # interpreter's dirs, so an interpreter that lives under /tmp (a venv in a temp checkout) is bound on top of it.
    os.makedirs(new + "/tmp", 0o755)
    _mount(libc, "tmpfs", new + "/tmp", "tmpfs", _MS_NOSUID | _MS_NODEV | _MS_NOEXEC,  # no dropped binaries
           f"size={cfg['box_mb']}m,nr_inodes=16384,mode=1777")
    for d in cfg["ro_dirs"]:
        os.makedirs(new + d, 0o755, exist_ok=True)
        _bind_read_only(libc, d, new + d)
    os.makedirs(new + "/etc", 0o755)
    if os.path.isfile("/etc/ld.so.cache"):  # lets dlopen find libffi & co in multiarch dirs
        open(new + "/etc/ld.so.cache", "w").close()
        _bind_read_only(libc, "/etc/ld.so.cache", new + "/etc/ld.so.cache")
    os.makedirs(new + "/dev", 0o755)
    for dev in _DEVICES:
        if os.path.exists(f"/dev/{dev}"):
            open(f"{new}/dev/{dev}", "w").close()
            _mount(libc, f"/dev/{dev}", f"{new}/dev/{dev}", None, _MS_BIND)
    box = new + cfg["box"]
    os.makedirs(box, 0o700)
    os.chmod(os.path.dirname(box), 0o755)
    os.chown(box, uid, gid)
    _mount(libc, None, new, None, _MS_REMOUNT | _MS_RDONLY | _MS_NOSUID | _MS_NODEV, "size=1m,mode=0755")
    os.chdir(new)
    nr = _SYS_PIVOT_ROOT.get(os.uname().machine)
    if nr is not None and libc.syscall(nr, b".", b".") == 0:
        _check(libc.umount2(b".", _MNT_DETACH), "detach the host root")  # the old root sat on top of ours
    else:
        _check(libc.chroot(b"."), "chroot")  # no pivot_root here (e.g. an initramfs root)
    os.chdir(cfg["box"])


def _drop_privileges(cfg: dict) -> None:
    """PID 1, before the program: no capability left anywhere, a fresh uid as root, no_new_privs."""
    ctypes, libc = _libc()
    for cap in range(64):  # empty the bounding set so no exec can regain a capability
        if libc.prctl(_PR_CAPBSET_DROP, cap, 0, 0, 0) != 0:
            break
    libc.prctl(_PR_CAP_AMBIENT, _PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0)
    if cfg["as_root"]:  # its own uid: owns nothing on the host; RLIMIT_NPROC counts this run only
        os.setgroups([])
        os.setresgid(cfg["uid"], cfg["uid"], cfg["uid"])
        os.setresuid(cfg["uid"], cfg["uid"], cfg["uid"])
    header = (ctypes.c_uint32 * 2)(_CAP_VERSION_3, 0)
    data = (ctypes.c_uint32 * 6)()  # effective, permitted, inheritable x 2 words, all zero
    _check(libc.capset(header, data), "capset")
    _check(libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "no_new_privs")
    _check(libc.capget(header, data), "capget")
    if any(data) or os.getuid() == 0 or os.geteuid() == 0:
        raise OSError("capabilities or root survived the drop")


# Syscalls the program never needs and that widen the kernel surface or reopen the host: new
# namespaces (a nested user namespace hands out capabilities again), mounts, handles, tracing,
# BPF, keyrings, io_uring, modules, taking another process's fds (pidfd_getfd). clone() is allowed unless it asks for a user namespace; clone3's
# flags sit in memory a filter cannot read, so it gets ENOSYS and libc falls back to clone().
_DENIED = {
    "x86_64": (0xC000003E, 56, 435, (272, 308, 165, 166, 155, 161, 101, 321, 298, 323, 250, 248, 249, 304, 303,
                                     246, 175, 313, 176, 428, 429, 430, 431, 432, 442, 425, 310, 311, 438, 440)),
    "aarch64": (0xC00000B7, 220, 435, (97, 268, 40, 39, 41, 51, 117, 280, 241, 282, 219, 217, 218, 265, 264,
                                       104, 105, 273, 106, 428, 429, 430, 431, 432, 442, 425, 270, 271, 438, 440)),
}


def _install_seccomp() -> bool:
    """A small seccomp filter denying ``_DENIED`` with EPERM; False on an architecture it lacks."""
    import ctypes

    spec = _DENIED.get(os.uname().machine)
    if spec is None:
        return False
    arch, clone, clone3, denied = spec
    ld_w, jeq, jge, jset, ret = 0x20, 0x15, 0x35, 0x45, 0x06  # BPF_LD|W|ABS, JMP|JEQ|K, JGE, JSET, RET|K
    allow, eperm, enosys = 0x7FFF0000, 0x00050000 | 1, 0x00050000 | 38
    prog = [(ld_w, 0, 0, 4), (jeq, 1, 0, arch), (ret, 0, 0, eperm), (ld_w, 0, 0, 0),
            (jge, 0, 1, 0x40000000), (ret, 0, 0, eperm)]  # other ABIs (x32) are denied outright
    tail = [(jeq, 0, 2, clone), (ld_w, 0, 0, 16), (jset, 3, 2, 0x10000000),  # clone(CLONE_NEWUSER, ...)
            (jeq, 0, 1, clone3), (ret, 0, 0, enosys), (ret, 0, 0, allow), (ret, 0, 0, eperm)]
    deny_at = len(denied) + len(tail) - 1  # the final deny, counted from the first syscall test
    prog += [(jeq, deny_at - i - 1, 0, nr) for i, nr in enumerate(denied)]
    prog += tail
    fields = [("code", ctypes.c_uint16), ("jt", ctypes.c_uint8), ("jf", ctypes.c_uint8), ("k", ctypes.c_uint32)]
    insn = type("sock_filter", (ctypes.Structure,), {"_fields_": fields})
    fprog = type("sock_fprog", (ctypes.Structure,), {"_fields_": [("len", ctypes.c_uint16),
                                                                 ("filter", ctypes.POINTER(insn))]})
    arr = (insn * len(prog))(*[insn(*p) for p in prog])
    libc = ctypes.CDLL(None, use_errno=True)
    _check(libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "no_new_privs")
    _check(libc.prctl(22, 2, ctypes.byref(fprog(len(prog), arr)), 0, 0), "seccomp filter")  # SET_SECCOMP, FILTER
    return True


def _set_limits(cfg: dict) -> None:
    def cap(kind: int, value: int, hard_extra: int = 0) -> None:
        _, hard = resource.getrlimit(kind)
        new_hard = value + hard_extra if hard == resource.RLIM_INFINITY else min(value + hard_extra, hard)
        resource.setrlimit(kind, (min(value, new_hard), new_hard))

    cap(resource.RLIMIT_AS, cfg["memory_mb"] << 20)
    cap(resource.RLIMIT_CPU, cfg["cpu_s"], hard_extra=1)  # SIGXCPU at the soft limit, SIGKILL a second later
    cap(resource.RLIMIT_FSIZE, cfg["max_file_mb"] << 20)
    cap(resource.RLIMIT_NPROC, cfg["nproc"] + 1)  # + PID 1
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


def _run_program(source: str, cfg: dict) -> None:
    import linecache
    import traceback
    import types

    linecache.cache["main.py"] = (len(source), None, source.splitlines(True), "main.py")  # tracebacks show lines
    main = types.ModuleType("__main__")
    main.__file__ = "main.py"
    if cfg["harness"]:  # trusted grader code: it installs the guard itself where model code runs
        main.__dict__["__sandbox_guard__"] = lambda: _install_guard(cfg["box"])
    else:
        _install_guard(cfg["box"])
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


def _setup_failed(msg: str) -> None:
    sys.stderr.write(f"sandbox setup failed: {msg}\n")
    sys.stderr.flush()
    os._exit(_SETUP_FAILED)


def _start_program(cfg: dict, source: str, status_fd: int) -> None:
    """Fork the program, reap every process until it exits, report its exit status; never returns."""
    try:
        pid = os.fork()
    except OSError as exc:
        _setup_failed(f"cannot start the program: {exc}")
    if pid == 0:
        os.close(status_fd)  # the program cannot forge its own status
        _run_program(source, cfg)
        raise SystemExit(0)  # a normal interpreter exit: buffers flushed, atexit handlers run
    while True:  # as PID 1, orphans are reparented here: reap them too
        got, status = os.wait()
        if got == pid:
            break
    os.write(status_fd, str(os.waitstatus_to_exitcode(status)).encode())
    os._exit(0)


def _supervise(pid: int, timeout_s: float, status_fd: int) -> None:
    """Host side of namespaces mode: wait for PID 1, kill it at the timeout; never returns.

    Killing PID 1 makes the kernel kill every process in its namespace, and ``waitpid`` on it only
    returns once they are all gone, so nothing of the run outlives this function.
    """
    timed_out = []

    def on_alarm(*_: object) -> None:
        timed_out.append(True)
        os.kill(pid, signal.SIGKILL)

    signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, timeout_s)
    _, status = os.waitpid(pid, 0)
    signal.setitimer(signal.ITIMER_REAL, 0)
    if timed_out:
        os.write(status_fd, b"timeout")
    code = os.waitstatus_to_exitcode(status)
    os._exit(code if code >= 0 else 128 - code)


def _child_main() -> None:
    """Supervisor: set up isolation and limits, start the program, report its exit status on a pipe.

    In namespace mode the supervisor forks PID 1 of the new namespace, which builds the minimal root,
    drops privileges and forks the program; the status pipe lets the parent tell a signal death from
    an exit code.
    """
    cfg = json.loads(sys.argv[1])
    status_fd = cfg["status_fd"]
    try:
        with open(cfg["script"], encoding="utf-8") as f:
            source = f.read()  # read now: the script's host path is not visible inside the root
        if cfg["isolate"]:
            _enter_namespaces(cfg)
    except Exception as exc:  # noqa: BLE001 - any failure here means: do not run the program
        _setup_failed(str(exc))
    if not cfg["isolate"]:
        try:
            _set_limits(cfg)
        except Exception as exc:  # noqa: BLE001
            _setup_failed(str(exc))
        _start_program(cfg, source, status_fd)
    try:
        pid = os.fork()
    except OSError as exc:
        _setup_failed(f"cannot start the namespace: {exc}")
    if pid != 0:
        _supervise(pid, cfg["timeout_s"], status_fd)
    try:  # PID 1 of the new namespace from here on
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        _build_root(cfg)
        _drop_privileges(cfg)
        _set_limits(cfg)
        _install_seccomp()
        os.environ.update(HOME=cfg["box"], TMPDIR=cfg["box"])
    except Exception as exc:  # noqa: BLE001
        _setup_failed(str(exc))
    _start_program(cfg, source, status_fd)


if __name__ == "__main__":
    _child_main()
