"""Run untrusted Python (model-written code) in a throw-away, locked-down child process.

    result = run_python("print(1 + 1)", timeout_s=5, memory_mb=256)
    result.returncode, result.stdout, result.timed_out, result.output_truncated
    probe()   # what isolation this machine gives, e.g. {"network": "namespace", ...}

The child is `python -I -S -c LAUNCHER` (isolated mode, no site: the standard library
only, no user or environment paths) with an environment of PATH, LANG and HOME only,
started in a new session.  The launcher (sandbox_launcher.py), in the child, before running the code:
0. namespaces: unshare(CLONE_NEWNET | NEWNS | NEWPID | NEWIPC) (not root: inside a new user
   namespace, where the user is root).  It then forks PID 1 of the new PID namespace, which
   mounts a /proc of its own (other processes' cmdline and environment are invisible) and
   forks the program; when the program exits, PID 1 exits and the kernel kills everything
   left in the namespace (setsid, double forks, zombies whose threads still run), and the
   IPC namespace, with any SysV shared memory, queues and semaphores, is freed.  The
   launcher outside relays the program's exit status (or signal).
1. network: the new, empty network namespace (not even loopback is up).  Where namespaces
   are not available, an audit hook blocks sockets, ctypes and spawning programs instead
   (weaker: only Python-level calls), and the parent kills the process group and the
   run's uid and removes the SysV IPC objects the run's user created during the run.
   No seccomp filter: inside the namespaces the program can still make any system call
   (e.g. create a nested user namespace), as its uid, confined to those namespaces.
2. (root) a private mount namespace where the world-writable folders (/tmp, /var/tmp,
   /dev/shm, /run/lock) are read-only and its own working folder is writable.
3. limits: RLIMIT_CPU (timeout rounded up), RLIMIT_AS (memory_mb), RLIMIT_NPROC,
   RLIMIT_FSIZE, RLIMIT_NOFILE, no core dumps.
4. a fresh private working folder (also HOME), deleted afterwards.
5. (root) last, drops to a fresh uid/gid of its own, used by no user and no other run:
   RLIMIT_NPROC is then enforced (the kernel skips it for root) and per run, nothing
   outside its folder is writable, other processes' environments are unreadable, and
   everything the run leaves can be found by owner.  The standard library stays
   importable through directory handles opened before the drop (it may live under
   /root).  Not root: no uid change, and RLIMIT_NPROC counts all the user's processes.
It then reads main.py, deletes it, and runs it as __main__ in the same interpreter
(no preexec_fn anywhere, so run_python is safe to call from many threads).

The parent enforces the wall-clock timeout, reads stdout/stderr incrementally and
kills the child once either passes max_output_bytes, and when the run ends kills the
whole process group, then every process of the run's uid (a child that called setsid
escapes the group, not its uid), and deletes the run's files from the shared folders
(in case they were writable).
"""

from __future__ import annotations

import json
import math
import os
import random
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass

from .sandbox_launcher import LAUNCHER as _LAUNCHER

# Folders anyone may write to: read-only inside the sandbox, swept for its leftovers after.
WORLD_WRITABLE = ("/tmp", "/var/tmp", "/dev/shm", "/run/lock")
_used_uids: set[int] = set()
_uid_lock = threading.Lock()


@dataclass
class SandboxResult:
    returncode: int  # negative: killed by that signal (-9 after a timeout or too much output)
    stdout: str
    stderr: str
    timed_out: bool
    output_truncated: bool
    wall_s: float
    uid: int | None  # the throw-away uid the code ran as (None: not root, no uid change)


def _fresh_uid() -> int:
    """A uid no user or other sandbox has: RLIMIT_NPROC and clean-up are then per run."""
    with _uid_lock:
        while True:
            uid = random.SystemRandom().randrange(1_000_000, 2_000_000_000)
            if uid not in _used_uids:
                _used_uids.add(uid)
                return uid


def _processes_of(uid: int) -> list[int]:
    """Live processes whose real uid is `uid`."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/status") as status:
                fields = dict(line.split(":", 1) for line in status if ":" in line)
        except OSError:
            continue
        # a zombie is dead unless other threads of it still run (its main thread called pthread_exit)
        if fields.get("State", "").strip().startswith("Z") and int(fields.get("Threads", "1").strip() or 1) <= 1:
            continue
        if int(fields.get("Uid", "-1").split()[0]) == uid:
            found.append(int(entry))
    return found


def _kill_uid(uid: int) -> None:
    # Repeat: a fork bomb may add processes while we kill (RLIMIT_NPROC bounds how many).
    for _ in range(50):
        pids = _processes_of(uid)
        if not pids:
            return
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        time.sleep(0.005)


_IPC_KINDS = {"shm": ("shmid", "shmctl"), "msg": ("msqid", "msgctl"), "sem": ("semid", "semctl")}


def _ipc_objects() -> set[tuple[str, int, int]]:
    """Every System V IPC object this IPC namespace holds, as (kind, id, creator uid)."""
    found = set()
    for kind, (id_column, _) in _IPC_KINDS.items():
        try:
            with open(f"/proc/sysvipc/{kind}") as table:
                header = table.readline().split()
                for line in table:
                    row = dict(zip(header, line.split()))
                    found.add((kind, int(row[id_column]), int(row["cuid"])))
        except (OSError, KeyError, ValueError):
            continue
    return found


def _sweep_ipc(before: set[tuple[str, int, int]], uid: int) -> None:
    """Remove the SysV shared memory, message queues and semaphores that user `uid` created during a run.
    Inside the run's own IPC namespace they vanish with it; this is for machines without namespaces."""
    new = [(kind, ident) for kind, ident, creator in _ipc_objects() - before if creator == uid]
    if not new:
        return
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    for kind, ident in new:
        call = getattr(libc, _IPC_KINDS[kind][1])
        call(ident, *((0,) if kind == "sem" else ()), 0, None)  # IPC_RMID = 0


def _remove_files_of(uid: int) -> None:
    for folder in WORLD_WRITABLE:
        try:
            entries = list(os.scandir(folder))
        except OSError:
            continue
        for entry in entries:
            try:
                if entry.stat(follow_symlinks=False).st_uid != uid:
                    continue
                if entry.is_dir(follow_symlinks=False):
                    shutil.rmtree(entry.path, ignore_errors=True)
                else:
                    os.unlink(entry.path)
            except OSError:
                pass


def _exited(pid: int) -> bool:
    """Has the child exited?  Does not reap it, so its pid (and group id) cannot be reused yet."""
    try:
        return os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
    except ChildProcessError:
        return True


def _kill_group(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except OSError:
        pass


def _feed(pipe, data: bytes) -> None:
    try:
        pipe.write(data)
    except OSError:
        pass  # the child exited without reading everything
    finally:
        try:
            pipe.close()
        except OSError:
            pass


def run_python(
    code: str,
    *,
    timeout_s: float = 5,
    memory_mb: int = 256,
    stdin: str = "",
    max_output_bytes: int = 64_000,
    max_processes: int = 32,
    max_file_mb: int = 16,
) -> SandboxResult:
    """Run `code` as a Python program in the sandbox described above.  Never leaves processes behind."""
    started = time.monotonic()
    root = os.geteuid() == 0
    uid = _fresh_uid() if root else None
    # Not root: RLIMIT_NPROC counts every process of our user, so leave room for those.
    nproc = max_processes if root else len(_processes_of(os.getuid())) + max_processes
    workdir = tempfile.mkdtemp(prefix="r1lab-sandbox-")
    ipc_before = _ipc_objects()
    try:
        with open(os.path.join(workdir, "main.py"), "w", encoding="utf-8") as program:
            program.write(code)
        if uid is not None:
            os.chown(workdir, uid, uid)
            os.chown(os.path.join(workdir, "main.py"), uid, uid)
        limits = [
            ("RLIMIT_CPU", max(1, math.ceil(timeout_s))),
            ("RLIMIT_AS", memory_mb * 2**20),
            ("RLIMIT_NPROC", nproc),
            ("RLIMIT_FSIZE", max_file_mb * 2**20),
            ("RLIMIT_NOFILE", 64),
            ("RLIMIT_CORE", 0),
        ]
        shared = sorted({os.path.realpath(f) for f in WORLD_WRITABLE if os.path.isdir(f)})
        config = json.dumps({"workdir": workdir, "uid": uid, "limits": limits, "shared_folders": shared})
        env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": workdir}
        process = subprocess.Popen(
            [sys.executable, "-I", "-S", "-c", _LAUNCHER, config],
            stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=workdir,
            env=env,
            start_new_session=True,
            close_fds=True,
        )
        try:
            if stdin:
                threading.Thread(target=_feed, args=(process.stdin, stdin.encode()), daemon=True).start()
            stdout, stderr, timed_out, truncated = _collect(process, started + timeout_s, max_output_bytes, uid)
        finally:
            _kill_group(process.pid)
            if uid is not None:
                _kill_uid(uid)
            process.wait()
        return SandboxResult(
            returncode=process.returncode,
            stdout=stdout.decode("utf-8", errors="replace"),
            stderr=stderr.decode("utf-8", errors="replace"),
            # RLIMIT_CPU is the timeout rounded up: a busy loop can reach it (SIGXCPU) just before the
            # parent, slowed by a loaded machine, sees the wall-clock deadline; either way it ran out of time
            timed_out=timed_out or process.returncode == -signal.SIGXCPU,
            output_truncated=truncated,
            wall_s=time.monotonic() - started,
            uid=uid,
        )
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
        _sweep_ipc(ipc_before, os.getuid() if uid is None else uid)
        if uid is not None:
            _kill_uid(uid)
            _remove_files_of(uid)
            with _uid_lock:
                _used_uids.discard(uid)


def _collect(
    process: subprocess.Popen, deadline: float, cap: int, uid: int | None
) -> tuple[bytes, bytes, bool, bool]:
    """Read both pipes until they close, the deadline passes or the output cap is hit."""
    buffers = {process.stdout.fileno(): bytearray(), process.stderr.fileno(): bytearray()}
    timed_out = truncated = cleaned = False
    with selectors.DefaultSelector() as selector:
        for fd in buffers:
            selector.register(fd, selectors.EVENT_READ)
        while selector.get_map():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                timed_out = True
                break
            for key, _ in selector.select(timeout=min(remaining, 0.05)):
                chunk = os.read(key.fd, 65536)
                if not chunk:
                    selector.unregister(key.fd)
                    continue
                buffer = buffers[key.fd]
                room = cap - len(buffer)
                buffer += chunk[:room]
                truncated = truncated or len(chunk) > room
            if truncated:
                break
            if not cleaned and _exited(process.pid):
                # The program is done; leftover children may hold the pipes open.  Kill them
                # so the pipes reach end-of-file and we keep whatever was already written.
                _kill_group(process.pid)
                if uid is not None:
                    _kill_uid(uid)
                cleaned = True
    # Pipes closed but the program may still run (it closed its stdout): give it its time.
    while not (timed_out or truncated or _exited(process.pid)):
        if time.monotonic() >= deadline:
            timed_out = True
        time.sleep(0.01)
    process.stdout.close()
    process.stderr.close()
    out, err = buffers.values()
    return bytes(out), bytes(err), timed_out, truncated


_PROBE = """
import os
report = {"uid": os.getuid(), "network": "namespace" if os.readlink("/proc/self/ns/net") != PARENT_NET else "shared"}
try:
    import socket
    socket.socket()
except PermissionError:
    report["network"] = "audit-hook"
try:
    open("/tmp/r1lab_probe_%d" % os.getpid(), "w").close()
    report["shared_folders"] = "writable (swept after the run)"
except OSError:
    report["shared_folders"] = "read-only"
print(repr(report))
"""


def probe() -> dict:
    """What isolation this machine actually gives: uid, network ("namespace", "audit-hook"), shared folders."""
    import ast

    result = run_python(_PROBE.replace("PARENT_NET", repr(os.readlink("/proc/self/ns/net"))))
    if result.returncode != 0:
        return {"error": result.stderr[-500:]}
    return ast.literal_eval(result.stdout.strip())
