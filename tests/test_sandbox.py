"""The code sandbox against hostile programs: each is contained, ends within its limits,
scores 0 through the code reward, and leaves the test process unharmed."""

from __future__ import annotations

import os
import resource
import secrets
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from r1lab import rewards
from r1lab.rewards.sandbox import _processes_of, run_python

ROOT = os.geteuid() == 0
REPO = Path(__file__).resolve().parents[1]
needs_root = pytest.mark.skipif(not ROOT, reason="uid drop (and so file and process containment) needs root")


def fenced(code: str) -> str:
    return f"<think>\nwriting code\n</think>\n```python\n{code}\n```"


def test_normal_program_runs():
    result = run_python("import sys, math\nprint(math.factorial(5), sys.stdin.read().upper())", stdin="hi")
    assert result.returncode == 0 and result.stdout == "120 HI\n" and not result.timed_out
    assert not result.output_truncated and result.wall_s < 5


def test_code_reward_scores_the_fraction_of_tests_passed():
    code = rewards.get("code")
    program = fenced("def add(a, b):\n    print('noise')\n    return a + b if a >= 0 else 0")
    tests = ["assert add(1, 2) == 3", "assert add(2, 2) == 4", "assert add(-2, 1) == -1"]
    chat = [{"role": "assistant", "content": program}]
    assert code([program, chat, "no code here", fenced("def add(")], tests=[tests] * 4) == [2 / 3, 2 / 3, 0.0, 0.0]


def test_infinite_loop_times_out():
    started = time.monotonic()
    result = run_python("while True:\n    pass", timeout_s=1)
    assert result.timed_out and result.returncode < 0
    assert time.monotonic() - started < 4


@needs_root
def test_fork_bomb_is_capped_and_cleaned_up():
    # Real forks, bounded even without limits: each process forks at most 8 times (<= 256 in all).
    bomb = ("import os, time\nfor _ in range(8):\n    try:\n        os.fork()\n    except OSError:\n        pass\n"
            "time.sleep(60)")
    started = time.monotonic()
    result = run_python(bomb, timeout_s=2, max_processes=16)
    assert result.timed_out and time.monotonic() - started < 8
    assert _processes_of(result.uid) == []  # nothing of it survives, group or not


def test_huge_allocation_fails_inside_the_child():
    result = run_python("blob = bytearray(10 * 1024**3)\nprint('allocated')", memory_mb=256)
    assert result.returncode != 0 and "MemoryError" in result.stderr and "allocated" not in result.stdout


def test_no_network():
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    server.setblocking(False)
    port = server.getsockname()[1]
    try:
        probe = (f"import socket\ns = socket.create_connection(('127.0.0.1', {port}), timeout=2)\nprint('CONNECTED')")
        result = run_python(probe, timeout_s=5)
        assert "CONNECTED" not in result.stdout and result.returncode != 0
        with pytest.raises(BlockingIOError):
            server.accept()  # nobody knocked
    finally:
        server.close()


@needs_root
def test_cannot_write_outside_its_folder():
    escape = Path(f"/tmp/r1lab_sandbox_escape_{secrets.token_hex(6)}")
    in_repo = REPO / f"r1lab_sandbox_escape_{secrets.token_hex(6)}"
    program = (f"for path in ({str(escape)!r}, {str(in_repo)!r}):\n"
               "    try:\n        open(path, 'w').write('escaped')\n    except OSError as error:\n"
               "        print('denied', path)\nopen('inside.txt', 'w').write('fine')\nprint(open('inside.txt').read())")
    result = run_python(program)
    assert "fine" in result.stdout and f"denied {in_repo}" in result.stdout
    assert not escape.exists() and not in_repo.exists()


def test_parent_environment_is_not_visible(monkeypatch):
    secret = secrets.token_hex(12)
    monkeypatch.setenv("R1LAB_TEST_SECRET", secret)
    program = ("import os\nprint(sorted(os.environ))\nprint(dict(os.environ))\n"
               "try:\n    print(open(f'/proc/{os.getppid()}/environ').read())\nexcept OSError:\n    print('no access')")
    result = run_python(program)
    assert result.returncode == 0 and secret not in result.stdout and "R1LAB_TEST_SECRET" not in result.stdout
    if ROOT:
        assert "no access" in result.stdout


def test_printing_a_gigabyte_is_cut_short():
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    started = time.monotonic()
    result = run_python("import sys\nchunk = 'x' * 2**20\nfor _ in range(1024):\n    sys.stdout.write(chunk)",
                        timeout_s=20, max_output_bytes=100_000)
    assert result.output_truncated and len(result.stdout) == 100_000
    assert time.monotonic() - started < 5
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before < 100 * 1024  # KiB: under 100 MB


def test_hostile_completions_all_score_zero_through_the_code_reward():
    escape = f"/tmp/r1lab_sandbox_escape_{secrets.token_hex(6)}"
    hostile = {
        "loop": "def ok():\n    while True:\n        pass",
        "fork": "import os\nfor _ in range(6):\n    os.fork()\ndef ok():\n    while True:\n        pass",
        "memory": "def ok():\n    return len(bytearray(10 * 1024**3)) > 0",
        "network": "import socket\ndef ok():\n    return bool(socket.create_connection(('1.1.1.1', 53), timeout=1))",
        "escape": f"def ok():\n    open({escape!r}, 'w').write('x')\n    return True",
        "env": "import os\ndef ok():\n    return 'R1LAB_TEST_SECRET2' in os.environ",
        "exit": "import os\nos._exit(0)\ndef ok():\n    return True",
        "flood": "import os\ndef ok():\n    while True:\n        os.write(1, b'x' * 65536)",
    }
    os.environ["R1LAB_TEST_SECRET2"] = "1"
    try:
        scores = rewards.get("code", timeout_s=2)([fenced(c) for c in hostile.values()], tests=[["assert ok()"]] * 8)
    finally:
        del os.environ["R1LAB_TEST_SECRET2"]
    assert dict(zip(hostile, scores)) == dict.fromkeys(hostile, 0.0)
    assert not Path(escape).exists() or not ROOT


def test_a_batch_runs_in_parallel():
    code = rewards.get("code", max_workers=8)
    sleeper = fenced("import time\ntime.sleep(1)\ndef ok():\n    return True")
    started = time.monotonic()
    assert code([sleeper] * 8, tests=[["assert ok()"]] * 8) == [1.0] * 8
    assert time.monotonic() - started < 4  # one after another would take over 8 s


# ---------------------------------------------------------------- issue 22: what used to escape

def _threads_named(name: str) -> list[str]:
    found = []
    for comm in Path("/proc").glob("[0-9]*/task/[0-9]*/comm"):
        try:
            if comm.read_text().strip() == name:
                found.append(str(comm))
        except OSError:
            pass
    return found


def test_22_05_a_child_whose_main_thread_exited_is_killed():
    # a forked child ends its main thread (a zombie leader) while another of its threads keeps running,
    # holding the output pipes; it must die with the run, and the run must not wait for its timeout
    name = "r1x" + secrets.token_hex(5)
    program = ("import ctypes, os, threading, time\n"
               "if os.fork() == 0:\n"
               "    os.setsid()\n"  # out of the process group too
               "    def linger():\n"
               f"        open(f'/proc/self/task/{{threading.get_native_id()}}/comm', 'w').write({name!r})\n"
               "        time.sleep(30)\n"
               "    threading.Thread(target=linger).start()\n"
               "    time.sleep(0.3)\n"
               "    ctypes.CDLL(None).pthread_exit(None)\n"
               "time.sleep(0.8)\nprint('parent done')")
    result = run_python(program, timeout_s=8)
    assert result.stdout == "parent done\n" and not result.timed_out and result.wall_s < 5
    time.sleep(0.2)
    assert _threads_named(name) == []


def _sysv_ids() -> set[str]:
    ids = set()
    for kind in ("shm", "msg", "sem"):
        lines = Path(f"/proc/sysvipc/{kind}").read_text().splitlines()[1:]
        ids |= {f"{kind}:{line.split()[1]}" for line in lines}
    return ids


def test_22_06_sysv_ipc_objects_do_not_outlive_a_run():
    program = ("import ctypes\nlibc = ctypes.CDLL(None, use_errno=True)\n"
               "shm = libc.shmget(0, 64 << 20, 0o1000 | 0o666)\n"  # IPC_PRIVATE, IPC_CREAT
               "addr = libc.shmat(shm, None, 0)\n"
               "msg = libc.msgget(0, 0o1000 | 0o666)\nsem = libc.semget(0, 1, 0o1000 | 0o666)\n"
               "print(shm, msg, sem)")
    before = _sysv_ids()
    try:
        result = run_python(program, memory_mb=256)
        assert result.returncode == 0 and all(int(x) >= 0 for x in result.stdout.split()), result
        assert _sysv_ids() - before == set()
    finally:
        for leftover in _sysv_ids() - before:  # keep the machine clean where the run did not
            kind, ident = leftover.split(":")
            subprocess.run(["ipcrm", {"shm": "-m", "msg": "-q", "sem": "-s"}[kind], ident], check=False)


def test_22_07_other_processes_are_invisible():
    token = "r1lab-secret-" + secrets.token_hex(6)
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)", f"--api-key={token}"])
    try:
        program = ("import os\nseen = []\nfor pid in os.listdir('/proc'):\n    if pid.isdigit():\n"
                   "        try:\n            seen.append(open(f'/proc/{pid}/cmdline', 'rb').read())\n"
                   "        except OSError:\n            pass\n"
                   "print(len(seen), any(b'r1lab-secret-' in c for c in seen))")
        result = run_python(program)
        count, leaked = result.stdout.split()
        assert leaked == "False" and int(count) <= 3, result.stdout  # its own processes only
    finally:
        other.kill()
        other.wait()
