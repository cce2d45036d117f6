"""The sandbox must contain what model-written code does: network, writes, forks, memory, time, env."""

from __future__ import annotations

import os
import shutil
import socket
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
    reason="OS-level isolation (unshare namespaces) is not available on this machine",
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


CTYPES_WRITE = """
import ctypes
libc = ctypes.CDLL(None, use_errno=True)
fd = libc.open({path!r}.encode(), 0o101, 0o644)  # O_WRONLY | O_CREAT
print(fd, ctypes.get_errno())
"""


@OS_LEVEL
def test_writes_outside_fail_even_bypassing_the_guard(tmp_path: Path) -> None:
    target = tmp_path / "escaped.txt"
    tmp_path.chmod(0o777)  # writable by anyone: only the read-only mount can stop the write
    res = run_python(CTYPES_WRITE.format(path=str(target)))
    assert res.ok, res.stderr
    fd, errno = res.stdout.split()
    assert fd == "-1" and int(errno) in (13, 30)  # EACCES or EROFS
    assert not target.exists()


FORK_BOMB = """
import ctypes, os, time
print(os.getcwd(), flush=True)
libc = ctypes.CDLL(None, use_errno=True)  # raw fork(): the Python guard does not see it
failed = 0
for _ in range(10):  # bounded: at most 2**10 processes even if every limit failed
    if libc.fork() < 0:
        failed += 1
os.write(1, b"alive\\n")
time.sleep(60)
"""


def _processes_mentioning(text: str) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if text.encode() in Path(f"/proc/{entry}/cmdline").read_bytes():
                    found.append(int(entry))
            except OSError:
                pass
    return found


@OS_LEVEL
def test_fork_bomb_is_bounded_and_killed() -> None:
    start = time.monotonic()
    res = run_python(FORK_BOMB, timeout_s=3, max_procs=16)
    assert res.timed_out and time.monotonic() - start < 15
    box, *alive = res.stdout.splitlines()
    assert 1 <= len(alive) <= 16, f"{len(alive)} processes ran; the limit was 16"
    deadline = time.monotonic() + 10
    while _processes_mentioning(box) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _processes_mentioning(box) == [], "sandboxed processes survived the run"


def test_without_os_isolation_the_guard_and_limits_still_apply(tmp_path: Path) -> None:
    limits = {"memory_mb": 256, "cpu_s": 5, "max_file_mb": 1, "max_procs": 8}
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
