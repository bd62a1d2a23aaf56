"""Call a function in a child process bounded in time and memory: a call that hangs or swells costs a killed
child and an undecided answer, never the caller.

    worker = BoundedWorker("r1lab.rewards.accuracy:math_verify_equal", timeout_s=10, memory_mb=2048)
    worker.call("\\\\boxed{2}", "2")   # (True, None); (None, "timeout" | "memory" | "died" | "error: ...") otherwise
    worker.close()

The child (`python -c CHILD`, with `pythonpath` in front of PYTHONPATH) imports the function, makes one warm-up
call (so that lazy imports, e.g. sympy's, happen outside any request's time), caps its address space (RLIMIT_AS =
memory_mb), then answers one JSON request per line.  A request that runs past timeout_s has the child killed
(SIGKILL) and a fresh one started for the next request; so has a child that ran out of memory.  With
watch_memory, a MemoryError raised anywhere during a call, even one the function caught and turned into an
answer (math-verify catches every exception), makes the answer undecided ("memory"); it costs a trace function
on every Python call (about 2x slower).  Arguments and results must be JSON.  Calls are serialized by a lock,
so one worker can serve many threads.
"""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
import threading
import time
from typing import Any

CHILD = r"""
import importlib, json, os, resource, sys
module, name = sys.argv[1].split(":")
fn = getattr(importlib.import_module(module), name)
memory_mb, watch_memory, warmup = int(sys.argv[2]), sys.argv[3] == "1", json.loads(sys.argv[4])
if warmup is not None:
    fn(*warmup)
answers = os.fdopen(os.dup(1), "w")
os.dup2(2, 1)  # whatever the function prints goes to stderr, not into the answers
hard = resource.getrlimit(resource.RLIMIT_AS)[1]  # inherited: a limit can only go down
limit = memory_mb << 20 if hard == resource.RLIM_INFINITY else min(hard, memory_mb << 20)
resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
out_of_memory = False


def watch(frame, event, arg):
    global out_of_memory
    if event == "exception" and issubclass(arg[0], MemoryError):
        out_of_memory = True
    return watch


def calls(frame, event, arg):
    frame.f_trace_lines = False
    return watch


answers.write("ready\n")
answers.flush()
for line in sys.stdin:
    out_of_memory, result, why = False, None, None
    if watch_memory:
        sys.settrace(calls)
    try:
        result = fn(*json.loads(line))
    except MemoryError:
        out_of_memory = True
    except Exception as e:
        why = f"error: {type(e).__name__}: {e}"[:300]
    finally:
        sys.settrace(None)
    if out_of_memory:
        result, why = None, "memory"
    answers.write(json.dumps([result, why]) + "\n")
    answers.flush()
    if out_of_memory:
        break  # a fresh child for the next request: this one's heap may be fragmented or half-full
"""


class BoundedWorker:
    def __init__(self, target: str, timeout_s: float, memory_mb: int, warmup: tuple | None = None,
                 watch_memory: bool = False, pythonpath: tuple[str, ...] = (), start_timeout_s: float = 120.0):
        self.target, self.timeout_s, self.memory_mb = target, timeout_s, memory_mb
        self.warmup, self.watch_memory, self.start_timeout_s = warmup, watch_memory, start_timeout_s
        self.env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in [*pythonpath, os.environ.get("PYTHONPATH")] if p))
        self._proc: subprocess.Popen | None = None
        self._lock = threading.Lock()
        self.starts = 0  # children started: 1 + one per timeout, memory exhaustion or death
        self._buffer = b""

    def call(self, *args: Any) -> tuple[Any, str | None]:
        """(the function's result, None), or (None, why it is undecided)."""
        with self._lock:
            if self._proc is None:
                self._start()
            try:
                self._proc.stdin.write((json.dumps(args) + "\n").encode())
                self._proc.stdin.flush()
            except OSError:
                self._stop()
                return None, "died"
            line = self._read_line(self.timeout_s)
            if line in ("timeout", "died"):
                self._stop()
                return None, line
            result, why = json.loads(line)
            if why == "memory":
                self._stop()
            return result, why

    def close(self) -> None:
        with self._lock:
            self._stop()

    def __enter__(self) -> "BoundedWorker":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def _start(self) -> None:
        self.starts += 1
        self._proc = subprocess.Popen(
            [sys.executable, "-c", CHILD, self.target, str(self.memory_mb), "1" if self.watch_memory else "0",
             json.dumps(self.warmup)], env=self.env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        self._buffer = b""
        if self._read_line(self.start_timeout_s) != "ready":
            self._stop()
            raise RuntimeError(f"the bounded worker for {self.target} did not start")

    def _stop(self) -> None:
        if self._proc is not None:
            self._proc.kill()
            self._proc.wait()
            for pipe in (self._proc.stdin, self._proc.stdout):
                pipe.close()
            self._proc = None

    def _read_line(self, timeout_s: float) -> str:
        """The child's next line, or "timeout" when it does not come within timeout_s, or "died"."""
        deadline = time.monotonic() + timeout_s
        fd = self._proc.stdout.fileno()
        while b"\n" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                return "timeout"
            chunk = os.read(fd, 1 << 16)
            if not chunk:
                return "died"
            self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        return line.decode()
