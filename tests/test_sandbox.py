"""The sandbox must contain what model-written code does: network, writes, forks, memory, time, env."""

from __future__ import annotations

import ctypes
import json
import os
import shutil
import socket
import struct
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from recursivemas import sandbox
from recursivemas.sandbox import run_python

OS_LEVEL = pytest.mark.skipif(
    sys.platform != "linux" or sandbox.isolation() != "namespaces",
    reason="OS-level isolation (namespaces, minimal root) is not available on this machine",
)


def test_runs_a_program_and_captures_output() -> None:
    res = run_python("import sys\nprint('out')\nprint('err', file=sys.stderr)\nsys.exit(3)")
    assert (res.stdout, res.stderr, res.returncode, res.timed_out) == ("out\n", "err\n", 3, False)
    assert not res.ok and res.error == "exit code 3"
    assert run_python("print(1 + 1)").ok


def test_stdin_is_given_or_empty() -> None:
    assert run_python("print(input()[::-1])", stdin="abc\n").stdout == "cba\n"
    res = run_python("input()")
    assert not res.ok and "EOFError" in res.stderr


def test_environment_secrets_are_not_inherited(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RECURSIVEMAS_TEST_SECRET", "hunter2")
    res = run_python("import os\nprint(sorted(os.environ))\nprint(os.environ.get('RECURSIVEMAS_TEST_SECRET'))")
    assert res.ok, res.stderr
    names, value = res.stdout.splitlines()
    assert value == "None" and "RECURSIVEMAS_TEST_SECRET" not in names
    assert set(eval(names)) <= {"PATH", "LANG", "HOME", "TMPDIR", "LC_CTYPE"}  # noqa: S307 - our own output


def test_fresh_working_directory_is_writable_and_deleted() -> None:
    res = run_python("import os\nopen('a.txt', 'w').write('hi')\nprint(os.getcwd())\nprint(open('a.txt').read())")
    assert res.ok, res.stderr
    cwd, content = res.stdout.splitlines()
    assert content == "hi" and not os.path.exists(cwd)
    assert run_python("import os\nprint(os.listdir('.'))").stdout.strip() == "[]"


def test_infinite_loop_times_out() -> None:
    start = time.monotonic()
    res = run_python("while True:\n    pass", timeout_s=1.5)
    assert res.timed_out and res.error == "timeout" and res.returncode is None and not res.ok
    assert time.monotonic() - start < 6


def test_cpu_limit() -> None:
    res = run_python("while True:\n    pass", timeout_s=20, cpu_s=1)
    assert not res.timed_out and res.error == "cpu time limit"


def test_memory_hog_is_stopped() -> None:
    res = run_python("x = bytearray(1024 * 1024 * 1024)\nprint('allocated')", memory_mb=256)
    assert not res.ok and "allocated" not in res.stdout and res.error == "memory limit"


def test_file_size_and_output_limits() -> None:
    res = run_python("open('big', 'wb').write(b'x' * (3 << 20))", max_file_mb=1)
    assert not res.ok and res.error == "file size limit"
    res = run_python("print('y' * 5000)", max_output_chars=100)
    assert res.ok and res.stdout.startswith("y" * 100) and "truncated" in res.stdout and len(res.stdout) < 200


def test_bad_limits_are_refused() -> None:
    with pytest.raises(ValueError, match="timeout_s"):
        run_python("pass", timeout_s=0)
    with pytest.raises(ValueError, match="cpu_s"):
        run_python("pass", cpu_s=-1)


def test_python_guard_refuses_forks_subprocesses_and_sockets(tmp_path: Path) -> None:
    for code, what in [("import os\nos.fork()", "os.fork"), ("import os\nos.system('true')", "os.system"),
                       ("import subprocess\nsubprocess.run(['true'])", "subprocess.Popen"),
                       ("import socket\nsocket.create_connection(('1.1.1.1', 80), timeout=2)", "network"),
                       (f"open({str(tmp_path / 'x')!r}, 'w')", "writing outside"),
                       ("import os\nos.remove('/etc/hostname')", "os.remove")]:
        res = run_python(code)
        assert not res.ok and what in res.stderr, (code, res.stderr)
    assert not (tmp_path / "x").exists()


@pytest.fixture
def listening_server():
    """A TCP server on the host's loopback that the sandbox must not reach."""
    srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    srv.bind(("127.0.0.1", 0))
    srv.listen(5)
    srv.settimeout(0.2)
    accepted: list[bool] = []
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = srv.accept()
                accepted.append(True)
                conn.close()
            except OSError:
                pass

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    yield srv.getsockname()[1], accepted
    stop.set()
    t.join()
    srv.close()


CTYPES_CONNECT = """
import ctypes, struct
libc = ctypes.CDLL(None, use_errno=True)
fd = libc.socket(2, 1, 0)
addr = struct.pack('<H', 2) + struct.pack('!H', {port}) + bytes([127, 0, 0, 1]) + bytes(8)
print(fd, libc.connect(fd, addr, 16), ctypes.get_errno())
"""


@OS_LEVEL
def test_network_is_unreachable_even_bypassing_the_guard(listening_server) -> None:
    port, accepted = listening_server
    # sanity: the server is reachable from outside the sandbox, so a failure below means isolation
    socket.create_connection(("127.0.0.1", port), timeout=2).close()
    time.sleep(0.3)
    assert accepted == [True]
    res = run_python(CTYPES_CONNECT.format(port=port))  # raw libc calls: no Python audit event fires
    assert res.ok, res.stderr
    _, ret, _ = res.stdout.split()
    assert ret == "-1"
    time.sleep(0.3)
    assert accepted == [True], "the sandbox reached a server on the host"


# ---------------------------------------------------------------------------------------- escapes
# Every escape below is attempted with raw libc calls through ctypes, which no Python audit event
# sees, so only the OS layers (minimal root, no capabilities, namespaces, limits) can stop it. Each
# test checks that the attempt failed inside AND that the host side is unchanged.

PRELUDE = """
import ctypes, json, os, socket, struct
libc = ctypes.CDLL(None, use_errno=True)
def err(): return ctypes.get_errno()
"""


def _escape(program: str, **kw) -> dict:
    """Run ``PRELUDE + program`` in the sandbox; the program prints one JSON dict as its last line."""
    res = run_python(PRELUDE + textwrap.dedent(program), **kw)
    assert res.ok, res.stderr
    return json.loads(res.stdout.strip().splitlines()[-1])


CTYPES_WRITE = """
import ctypes
libc = ctypes.CDLL(None, use_errno=True)
fd = libc.open({path!r}.encode(), 0o101, 0o644)  # O_WRONLY | O_CREAT
print(fd, ctypes.get_errno())
"""

RAW_READ = """
out = {}
for path in %r:
    fd = libc.open(path.encode(), 0)  # O_RDONLY
    buf = ctypes.create_string_buffer(4096)
    n = libc.read(fd, buf, 4096) if fd >= 0 else -1
    out[path] = [fd, err(), buf.raw[:max(n, 0)].decode(errors="replace")]
print(json.dumps(out))
"""


@OS_LEVEL
def test_escape_reading_root_only_host_files(tmp_path: Path) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("TOP-SECRET-42")
    secret.chmod(0o600)
    tmp_path.chmod(0o755)
    paths = ["/etc/shadow", str(secret), "/proc/1/environ", "/etc/passwd"]
    out = _escape(RAW_READ % (paths,))
    for path in paths:
        fd, errno, _ = out[path]
        assert fd == -1 and errno == 2, (path, out[path])  # ENOENT: not in the sandbox's root at all
    assert secret.read_text() == "TOP-SECRET-42"


@OS_LEVEL
def test_escape_listing_host_directories() -> None:
    allowed = {part for d in sandbox._interpreter_dirs() for part in Path(d).parts}  # the binds' ancestors
    out = _escape("""
    res = {}
    for d in ["/root", "/home", "/", "/etc", "/tmp", "/dev", "/proc", "/sys", "/run", "/var"]:
        try:
            res[d] = sorted(os.listdir(d))
        except OSError as e:
            res[d] = e.errno
    print(json.dumps(res))
    """)
    assert set(out["/"]) <= {"usr", "lib", "lib64", "dev", "etc", "tmp"} | allowed, out["/"]
    assert out["/etc"] == ["ld.so.cache"] and out["/dev"] == ["null", "random", "urandom", "zero"]
    box = [name for name in out["/tmp"] if name not in allowed]  # an interpreter under /tmp shows its path down
    assert len(box) == 1 and box[0].startswith("recursivemas-sandbox-"), out["/tmp"]
    for d in ("/proc", "/sys", "/run", "/var"):
        assert out[d] == 2, (d, out[d])  # ENOENT
    for d in ("/root", "/home"):
        host = sorted(os.listdir(d)) if os.path.isdir(d) else []
        inside = out[d] if isinstance(out[d], list) else []
        assert set(inside) <= allowed, (d, inside)  # only the path down to the interpreter, if any
        assert not host or inside != host or set(host) <= allowed


@OS_LEVEL
def test_escape_open_by_handle_at_host_directory(tmp_path: Path) -> None:
    """A file handle to a host directory must not open: no CAP_DAC_READ_SEARCH, no host mount."""
    (tmp_path / "hostfile").write_text("host")
    libc = ctypes.CDLL(None, use_errno=True)
    handle = ctypes.create_string_buffer(8 + 128)
    struct.pack_into("I", handle, 0, 128)
    mount_id = ctypes.c_int()
    if libc.name_to_handle_at(-100, str(tmp_path).encode(), handle, ctypes.byref(mount_id), 0) != 0:
        pytest.skip("this filesystem does not export file handles")
    out = _escape(f"""
    handle = ctypes.create_string_buffer({handle.raw!r})
    res = {{}}
    for mnt in ["/", "/tmp", "."]:
        mfd = libc.open(mnt.encode(), 0o200000)  # O_RDONLY | O_DIRECTORY
        fd = libc.open_by_handle_at(mfd, handle, 0o200000)
        res[mnt] = [fd, err()]
    own = ctypes.create_string_buffer(8 + 128)
    struct.pack_into("I", own, 0, 128)
    mid = ctypes.c_int()
    named = libc.name_to_handle_at(-100, b"/", own, ctypes.byref(mid), 0)
    res["own"] = [named, libc.open_by_handle_at(libc.open(b"/", 0o200000), own, 0o200000), err()]
    print(json.dumps(res))
    """)
    for mnt in ("/", "/tmp", "."):
        assert out[mnt][0] == -1 and out[mnt][1] == 1, out  # EPERM: needs CAP_DAC_READ_SEARCH
    assert out["own"][1] == -1 and out["own"][2] == 1, out
    assert sorted(os.listdir(tmp_path)) == ["hostfile"]


@OS_LEVEL
def test_escape_creating_files_outside_the_box(tmp_path: Path) -> None:
    tmp_path.chmod(0o777)  # writable by anyone: only the root's layout can stop the write
    host_tmp = Path("/tmp") / f"recursivemas-escape-{os.getpid()}-{time.monotonic_ns()}"
    targets = [str(tmp_path / "escaped.txt"), str(host_tmp), "/etc/escaped", "/escaped",
               os.path.join(sys.prefix, "escaped"), "/dev/shm/escaped", "/dev/escaped"]
    out = _escape("""
    res = {}
    for path in %r:
        fd = libc.open(path.encode(), 0o101, 0o644)  # O_WRONLY | O_CREAT
        res[path] = [fd, err()]
    os.symlink("/etc/passwd", "link")  # inside the box: allowed; writing through it is not
    res["link"] = [libc.open(b"link", 0o101, 0o644), err()]
    print(json.dumps(res))
    """ % (targets,))
    for path in targets[:1] + targets[2:]:
        assert out[path][0] == -1 and out[path][1] in (2, 13, 30), (path, out[path])  # ENOENT/EACCES/EROFS
    assert out["link"][0] == -1 and out["link"][1] in (2, 13, 30)
    assert out[str(host_tmp)][0] >= 0  # the sandbox's own private /tmp ...
    for path in targets:  # ... but nothing appeared on the host
        assert not os.path.exists(path), path
    assert os.listdir(tmp_path) == []


@OS_LEVEL
def test_escape_appending_to_world_writable_host_file(tmp_path: Path) -> None:
    target = tmp_path / "shared.log"
    target.write_text("original\n")
    target.chmod(0o666)
    tmp_path.chmod(0o777)
    out = _escape(f"""
    fd = libc.open({str(target)!r}.encode(), 0o2001)  # O_WRONLY | O_APPEND
    n = libc.write(fd, b"pwned\\n", 6) if fd >= 0 else -1
    print(json.dumps([fd, err(), n]))
    """)
    assert out[0] == -1 and out[2] == -1, out
    assert target.read_text() == "original\n"


@OS_LEVEL
def test_escape_connecting_to_host_unix_sockets(tmp_path: Path) -> None:
    tmp_path.chmod(0o777)
    path = tmp_path / "host.sock"
    abstract = f"\0recursivemas-test-{os.getpid()}"
    servers = []
    for addr in (str(path), abstract):
        srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        srv.bind(addr)
        srv.listen(5)
        srv.setblocking(False)
        servers.append(srv)
    path.chmod(0o777)
    out = _escape("""
    res = {}
    for name in %r:
        fd = libc.socket(1, 1, 0)  # AF_UNIX, SOCK_STREAM
        raw = name.encode()
        addr = struct.pack("H", 1) + raw + bytes(108 - len(raw))
        ok = libc.connect(fd, addr, 2 + len(raw))
        res[repr(name)] = [ok, err(), libc.send(fd, b"hello", 5, 0) if ok == 0 else -1]
    print(json.dumps(res))
    """ % ([str(path), abstract],))
    for name, (ret, errno, sent) in out.items():
        assert ret == -1 and sent == -1 and errno in (2, 111, 13), (name, ret, errno)  # ENOENT/ECONNREFUSED
    for srv in servers:
        with pytest.raises(BlockingIOError):
            srv.accept()  # nobody connected
        srv.close()


@OS_LEVEL
def test_escape_filling_the_disk_stops_at_the_box_quota() -> None:
    before = shutil.disk_usage("/tmp").used
    out = _escape("""
    written, errno, chunk = 0, 0, b"x" * (1 << 20)
    for i in range(600):  # 600 MiB in 8 MiB files: each under the per-file limit
        if i % 8 == 0:
            fd = libc.open(f"f{i}".encode(), 0o101, 0o644)
            if fd < 0:
                errno = err()
                break
        n = libc.write(fd, chunk, len(chunk))
        if n != len(chunk):
            errno = err()
            break
        written += n
    print(json.dumps([written >> 20, errno]))
    """, max_box_mb=32, max_file_mb=16)
    mib, errno = out
    assert mib <= 32 and errno == 28, out  # ENOSPC at the 32 MiB box quota
    assert shutil.disk_usage("/tmp").used - before < 16 << 20  # the host disk did not take it


def _run_processes(marker: str, uid: int | None) -> list[int]:
    """Host processes whose command line mentions ``marker`` or that run as ``uid``."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                cmd = Path(f"/proc/{entry}/cmdline").read_bytes()
                status = Path(f"/proc/{entry}/status").read_text()
            except OSError:
                continue
            uids = next((ln.split()[1:] for ln in status.splitlines() if ln.startswith("Uid:")), [])
            if marker.encode() in cmd or (uid is not None and str(uid) in uids):
                found.append(int(entry))
    return found


def _survivors(stdout: str) -> list[int]:
    box, uid = stdout.splitlines()[0].split()
    marker = Path(box).parent.name  # recursivemas-sandbox-XXXX: in every run process's cmdline
    return _run_processes(marker, int(uid) if os.geteuid() == 0 else None)


DAEMON = """
import ctypes, os, time
print(os.getcwd(), os.getuid(), flush=True)
libc = ctypes.CDLL(None, use_errno=True)
if libc.fork() == 0:        # child: new session, fork again, exit: the classic daemon
    libc.setsid()
    if libc.fork() == 0:
        libc.signal(1, 1)   # SIG_IGN SIGHUP
        while True:
            time.sleep(0.1)
    os._exit(0)
time.sleep(0.3)
"""


@OS_LEVEL
def test_escape_daemonized_grandchild_does_not_survive() -> None:
    start = time.monotonic()
    res = run_python(DAEMON, timeout_s=20)
    assert res.ok and not res.timed_out and time.monotonic() - start < 10, res
    assert _survivors(res.stdout) == [], "a daemonized process outlived its run"


SETSID_BOMB = """
import ctypes, os, time
print(os.getcwd(), os.getuid(), flush=True)
libc = ctypes.CDLL(None, use_errno=True)  # raw fork(): the Python guard does not see it
for _ in range(10):  # bounded: at most 2**10 processes even if every limit failed
    if libc.fork() == 0:
        libc.setsid()       # each in its own session: a process-group kill misses it
os.write(1, b"alive\\n")
time.sleep(60)
"""


@OS_LEVEL
def test_escape_setsid_fork_bomb_is_bounded_and_nothing_survives() -> None:
    start = time.monotonic()
    res = run_python(SETSID_BOMB, timeout_s=3, max_procs=16)
    assert res.timed_out and time.monotonic() - start < 15
    alive = [ln for ln in res.stdout.splitlines() if ln == "alive"]
    assert 1 <= len(alive) <= 16, f"{len(alive)} processes ran; the limit was 16"
    assert _survivors(res.stdout) == [], "sandboxed processes survived the run"


@OS_LEVEL
def test_escape_thread_bomb_and_mmap_hog_are_bounded() -> None:
    out = _escape("""
    import threading, time, mmap
    n = 0
    try:
        for _ in range(500):
            threading.Thread(target=time.sleep, args=(2,), daemon=True).start()
            n += 1
    except RuntimeError:
        pass
    libc.mmap.restype = ctypes.c_void_p
    p = libc.mmap(None, ctypes.c_size_t(8 << 30), 3, 0x22, -1, 0)  # 8 GiB, PROT_RW, MAP_PRIVATE|ANON
    print(json.dumps([n, p == ctypes.c_void_p(-1).value or p is None, err()]))
    """, max_procs=16, memory_mb=512)
    threads, mmap_failed, errno = out
    assert threads <= 16 and mmap_failed and errno == 12, out  # ENOMEM


@OS_LEVEL
def test_escape_privileged_calls_fail() -> None:
    out = _escape("""
    res = {
        "setuid0": [libc.setuid(0), err()],
        "chroot": [libc.chroot(b"/tmp"), err()],
        "remount": [libc.mount(None, b"/", None, 32 | 1 << 5, None), err()],
        "mount_tmpfs": [libc.mount(b"x", b"/tmp", b"tmpfs", 0, None), err()],
        "ptrace_parent": [libc.ptrace(16, os.getppid(), 0, 0), err()],  # PTRACE_ATTACH
        "ptrace_init": [libc.ptrace(16, 1, 0, 0), err()],
        "kill_init": [libc.kill(1, 9), err()],
        "unshare_user": [libc.unshare(0x10000000), err()],
        "clone_newuser": [libc.syscall(56, 0x10000000 | 17, 0, 0, 0, 0) if os.uname().machine == "x86_64" else -1, err()],
        "open_tree": [libc.syscall(428, -100, b"/", 1) if os.uname().machine in ("x86_64", "aarch64") else -1, err()],
        "uid": os.getuid(),
    }
    loader = [p for p in ("/usr/lib64/ld-linux-x86-64.so.2", "/lib64/ld-linux-x86-64.so.2",
                          "/usr/lib/ld-linux-aarch64.so.1") if os.path.exists(p)]
    if loader:  # a binary dropped into the box must not run: the box is noexec
        with open(loader[0], "rb") as src, open("dropped", "wb") as dst:
            dst.write(src.read())
        os.chmod("dropped", 0o755)
        argv = (ctypes.c_char_p * 2)(b"./dropped", None)
        res["exec_dropped"] = [libc.execve(b"./dropped", argv, None), err()]
    caps = (ctypes.c_uint32 * 6)()
    libc.capget((ctypes.c_uint32 * 2)(0x20080522, 0), caps)
    res["caps"] = list(caps)
    res["bounding"] = [libc.prctl(23, c, 0, 0, 0) for c in range(41)]  # PR_CAPBSET_READ
    res["no_new_privs"] = libc.prctl(39, 0, 0, 0, 0)
    print(json.dumps(res))
    """)
    for call in ("setuid0", "chroot", "remount", "mount_tmpfs", "ptrace_parent", "ptrace_init"):
        assert out[call][0] == -1 and out[call][1] in (1, 3), (call, out[call])  # EPERM / ESRCH
    assert out["caps"] == [0] * 6 and set(out["bounding"]) == {0} and out["no_new_privs"] == 1
    assert out["uid"] != 0
    assert out.get("exec_dropped", [-1, 13]) == [-1, 13]  # EACCES
    for call in ("unshare_user", "clone_newuser", "open_tree"):  # refused by the seccomp filter
        assert out[call] == [-1, 1], (call, out[call])
    # kill(1, SIGKILL) "succeeds" but PID 1 ignores it: this very output got reported after it


@OS_LEVEL
def test_escape_udp_and_dns_are_unreachable() -> None:
    srv = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    srv.bind(("127.0.0.1", 0))
    srv.setblocking(False)
    port = srv.getsockname()[1]
    out = _escape(f"""
    fd = libc.socket(2, 2, 0)  # AF_INET, SOCK_DGRAM
    res = {{}}
    for host, port in [((127, 0, 0, 1), {port}), ((8, 8, 8, 8), 53), ((1, 1, 1, 1), 53)]:
        addr = struct.pack('<H', 2) + struct.pack('!H', port) + bytes(host) + bytes(8)
        res[str(host)] = [libc.sendto(fd, b"q", 1, 0, addr, 16), err()]
    try:
        socket.getaddrinfo("example.com", 80)
        res["dns"] = "resolved"
    except Exception as e:  # the guard refuses it, or there is nothing to ask
        res["dns"] = type(e).__name__
    print(json.dumps(res))
    """)
    with pytest.raises(BlockingIOError):
        srv.recv(10)
    srv.close()
    assert out["dns"] != "resolved"
    for host in ("(8, 8, 8, 8)", "(1, 1, 1, 1)"):
        assert out[host][0] == -1 and out[host][1] == 101, out  # ENETUNREACH


def test_without_os_isolation_the_guard_and_limits_still_apply(tmp_path: Path) -> None:
    limits = {"memory_mb": 256, "cpu_s": 5, "max_file_mb": 1, "max_procs": 8, "box_mb": 8, "harness": False}
    res = sandbox._run(f"open({str(tmp_path / 'y')!r}, 'w')", None, 10.0, limits, 10_000, isolate=False)
    assert not res.ok and "writing outside" in res.stderr and not (tmp_path / "y").exists()
    res = sandbox._run("x = bytearray(1 << 30)", None, 10.0, limits, 10_000, isolate=False)
    assert res.error == "memory limit"


def test_isolation_mode_setting_is_validated(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RECURSIVEMAS_SANDBOX", "bogus")
    with pytest.raises(ValueError, match="RECURSIVEMAS_SANDBOX"):
        sandbox._probe()
    monkeypatch.setenv("RECURSIVEMAS_SANDBOX", "process")
    assert sandbox._probe() == "process"


UNPRIVILEGED = """
import importlib.util, sys
spec = importlib.util.spec_from_file_location("sb", {path!r})
sb = importlib.util.module_from_spec(spec); sys.modules["sb"] = sb; spec.loader.exec_module(sb)
print(sb.isolation())
print(sb.run_python({code!r}).stdout.strip())
"""


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("setpriv") or not os.access("/usr/bin/python3", os.X_OK),
                    reason="needs root (to switch user), setpriv and a system /usr/bin/python3")
def test_unprivileged_user_gets_user_namespaces(tmp_path: Path) -> None:
    """The non-root path (user namespace, all capabilities dropped) also blocks raw writes."""
    version = subprocess.run(["/usr/bin/python3", "-c", "import sys; print(sys.version_info >= (3, 10))"],
                             capture_output=True, text=True).stdout.strip()
    if version != "True":
        pytest.skip("/usr/bin/python3 is older than 3.10")
    tmp_path.chmod(0o777)
    code = CTYPES_WRITE.format(path=str(tmp_path / "escaped.txt"))
    script = UNPRIVILEGED.format(path=sandbox.__file__, code=code)
    out = subprocess.run(["setpriv", "--reuid", "65534", "--regid", "65534", "--clear-groups", "/usr/bin/python3",
                          "-c", textwrap.dedent(script)], capture_output=True, text=True, timeout=60, cwd="/")
    if "namespaces" not in out.stdout:
        pytest.skip(f"unprivileged user namespaces are not allowed here: {out.stdout} {out.stderr[-300:]}")
    fd = out.stdout.split()[1]
    assert fd == "-1" and not (tmp_path / "escaped.txt").exists()


def test_per_call_overhead_stays_small() -> None:
    """The deliberation demo makes hundreds of tool calls: a trivial run must stay well under a second."""
    run_python("pass")  # warm the isolation probe
    times = []
    for _ in range(9):
        start = time.perf_counter()
        assert run_python("print(1)").stdout == "1\n"
        times.append(time.perf_counter() - start)
    median = sorted(times)[len(times) // 2]
    print(f"\nsandbox per-call wall time ({sandbox.isolation()}): median {median * 1000:.0f} ms, "
          f"min {min(times) * 1000:.0f} ms over {len(times)} calls")
    assert median < 2.0


@pytest.mark.skipif(sys.platform != "linux", reason="namespaces are Linux only")
def test_broken_os_isolation_warns_loudly_or_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    """When the minimal root cannot be built, auto mode falls back with a warning; =namespaces refuses."""
    monkeypatch.setattr(sandbox, "_interpreter_dirs", lambda: ["/nonexistent-recursivemas-dir"])
    monkeypatch.setenv("RECURSIVEMAS_SANDBOX", "namespaces")
    with pytest.raises(RuntimeError, match="RECURSIVEMAS_SANDBOX=namespaces but OS isolation is unavailable"):
        sandbox._probe()
    monkeypatch.setenv("RECURSIVEMAS_SANDBOX", "auto")
    with pytest.warns(RuntimeWarning, match="UNAVAILABLE"):
        assert sandbox._probe() == "process"


@OS_LEVEL
def test_filling_the_box_is_reported_as_disk_quota() -> None:
    res = run_python("for i in range(100):\n    open(f'f{i}', 'wb').write(b'x' * (1 << 20))", max_box_mb=8)
    assert not res.ok and res.error == "disk quota", res
