"""The code sandbox against hostile programs: each is contained, ends within its limits,
scores 0 through the code reward, and leaves the test process unharmed."""

from __future__ import annotations

import os
import resource
import secrets
import socket
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
