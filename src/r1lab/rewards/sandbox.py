"""Run untrusted Python (model-written code) in a throw-away, locked-down child process.

    result = run_python("print(1 + 1)", timeout_s=5, memory_mb=256)
    result.returncode, result.stdout, result.timed_out, result.output_truncated
    probe()   # what isolation this machine gives, e.g. {"network": "namespace", ...}

The child is `python -I -S -c LAUNCHER` (isolated mode, no site: the standard library
only, no user or environment paths) with an environment of PATH, LANG and HOME only,
started in a new session.  The launcher, in the child, before running the code:
1. network: unshare(CLONE_NEWNET) gives it a new, empty network namespace (not even
   loopback is up).  Needs root/CAP_SYS_ADMIN; where it fails, an audit hook blocks
   sockets, ctypes and spawning programs instead (weaker: only Python-level calls).
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

# Runs in the child as `python -I -S -c _LAUNCHER CONFIG`; reads main.py, removes it, runs it.
_LAUNCHER = r"""
import json, os, resource, sys

MS_RDONLY, MS_NOSUID, MS_NODEV, MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 1, 2, 4, 32, 4096, 16384, 1 << 18
CLONE_NEWNET, CLONE_NEWNS = 0x40000000, 0x00020000


def _libc_call(name, *args):
    import ctypes
    libc = ctypes.CDLL(None, use_errno=True)
    if getattr(libc, name)(*args) != 0:
        raise OSError(ctypes.get_errno(), f"{name}{args}")


def _isolate_network():
    try:
        _libc_call("unshare", CLONE_NEWNET)  # an empty namespace: not even loopback is up
        return None
    except Exception:
        blocked = ("socket.", "ctypes.", "_ctypes.", "subprocess.Popen", "os.system", "os.exec", "os.posix_spawn",
                   "os.spawn")

        def audit(event, args):
            if event.startswith(blocked):
                raise PermissionError(f"sandbox: {event} is not allowed (no network namespace)")

        return audit


def _freeze_shared_folders(folders, workdir):
    # A private mount namespace where the world-writable folders are read-only and the
    # working folder (itself inside /tmp) is re-mounted writable on top.
    try:
        _libc_call("unshare", CLONE_NEWNS)
        _libc_call("mount", None, b"/", None, MS_REC | MS_PRIVATE, None)
        for folder in folders:
            _libc_call("mount", folder.encode(), folder.encode(), None, MS_BIND | MS_REC, None)
            read_only = MS_BIND | MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV
            _libc_call("mount", None, folder.encode(), None, read_only, None)
        _libc_call("mount", workdir.encode(), workdir.encode(), None, MS_BIND, None)  # inherits read-only...
        _libc_call("mount", None, workdir.encode(), None, MS_BIND | MS_REMOUNT | MS_NOSUID | MS_NODEV, None)  # ...undo
    except Exception:
        pass  # the parent deletes what the run leaves in those folders instead


def _import_through_handles():
    # The standard library may sit where the new uid cannot look (e.g. under /root):
    # import through directory handles opened now, while we can still open them.
    handles = {}
    for path in sys.path:
        try:
            handles[path] = f"/proc/self/fd/{os.open(path, os.O_RDONLY | os.O_DIRECTORY)}"
        except OSError:
            pass

    def via_handle(path):
        for old, new in handles.items():
            if path == old or path.startswith(old + os.sep):
                return new + path[len(old):]
        return path

    for module in list(sys.modules.values()):  # packages imported already (collections, encodings)
        if isinstance(getattr(module, "__path__", None), list):
            module.__path__[:] = [via_handle(p) for p in module.__path__]
    sys.path[:] = list(handles.values())
    sys.path_importer_cache.clear()


def _launch():
    config = json.loads(sys.argv[1])
    audit = _isolate_network()
    if config["uid"] is not None:
        _freeze_shared_folders(config["shared_folders"], config["workdir"])
    for name, value in config["limits"]:
        resource.setrlimit(getattr(resource, name), (value, value + 1) if name == "RLIMIT_CPU" else (value, value))
    os.chdir(config["workdir"])
    if config["uid"] is not None:
        _import_through_handles()
        os.setgroups([])
        os.setgid(config["uid"])
        os.setuid(config["uid"])
    with open("main.py", "rb") as file:
        source = file.read()
    os.unlink("main.py")
    if audit is not None:
        sys.addaudithook(audit)
    sys.argv = ["main.py"]
    return compile(source, "main.py", "exec")


exec(_launch(), {"__name__": "__main__", "__builtins__": __builtins__})
"""

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
    """Live (non-zombie) processes whose real uid is `uid`."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/status") as status:
                fields = dict(line.split(":", 1) for line in status if ":" in line)
        except OSError:
            continue
        if fields.get("State", "").strip().startswith("Z"):
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
