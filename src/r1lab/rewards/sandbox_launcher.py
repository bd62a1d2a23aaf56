"""The program the sandbox's child runs (`python -I -S -c LAUNCHER CONFIG`): it isolates itself (new network,
mount, PID and IPC namespaces where the system allows them; see sandbox.py), sets the limits, drops to the
run's uid, reads main.py, removes it and runs it. It is plain text here, since it runs in a fresh interpreter.
"""

LAUNCHER = r"""
import json, os, resource, sys

MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 1, 2, 4, 8, 32, 4096, 16384, 1 << 18
CLONE_NEWNET, CLONE_NEWNS, CLONE_NEWPID, CLONE_NEWIPC, CLONE_NEWUSER = 0x40000000, 0x20000, 0x20000000, 0x8000000, 0x10000000


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


def _new_namespaces(as_root):
    # New network, mount, PID and IPC namespaces (not root: inside a new user namespace, where this user is
    # root). Everything the program starts dies with the PID namespace; its SysV IPC objects die with the
    # IPC namespace; its /proc shows only its own processes.
    flags = CLONE_NEWNET | CLONE_NEWNS | CLONE_NEWPID | CLONE_NEWIPC
    try:
        if as_root:
            _libc_call("unshare", flags)
        else:
            uid, gid = os.getuid(), os.getgid()
            _libc_call("unshare", flags | CLONE_NEWUSER)
            for name, text in (("setgroups", "deny"), ("uid_map", f"0 {uid} 1"), ("gid_map", f"0 {gid} 1")):
                with open(f"/proc/self/{name}", "w") as f:
                    f.write(text)
    except Exception:
        return False
    try:
        _libc_call("mount", None, b"/", None, MS_REC | MS_PRIVATE, None)  # nothing mounted here leaks out
        return True
    except Exception:
        return None  # namespaces, but /proc cannot be replaced safely


def _become_init(private_mounts):
    # Fork PID 1 of the new namespace, which mounts a /proc of its own and forks the program (PID 2), reaps
    # orphans, and leaves when the program does: the kernel then kills whatever is left in the namespace.
    # This process (outside) waits and leaves the way the program did. Returns only in the program.
    import signal
    read_end, write_end = os.pipe()
    init = os.fork()
    if init:
        os.close(write_end)
        report = b""
        while chunk := os.read(read_end, 64):
            report += chunk
        _, status = os.waitpid(init, 0)
        status = int(report) if report.strip().isdigit() else status
        if os.WIFSIGNALED(status):
            resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
            if os.WTERMSIG(status) not in (signal.SIGKILL, signal.SIGSTOP):
                signal.signal(os.WTERMSIG(status), signal.SIG_DFL)
            os.kill(os.getpid(), os.WTERMSIG(status))
            os._exit(128 + os.WTERMSIG(status))
        os._exit(os.WEXITSTATUS(status) if os.WIFEXITED(status) else 1)
    os.close(read_end)
    try:
        _libc_call("prctl", 1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG: die with the launcher
        if private_mounts:
            _libc_call("mount", b"proc", b"/proc", b"proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, None)
    except Exception:
        pass
    program = os.fork()
    if program == 0:
        os.close(write_end)
        return
    while True:
        try:
            pid, status = os.wait()
        except ChildProcessError:
            os._exit(1)
        if pid == program:
            os.write(write_end, str(status).encode())
            os._exit(0)


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
    isolated = _new_namespaces(config["uid"] is not None)
    audit = None if isolated is not False else _isolate_network()
    if config["uid"] is not None or isolated is not False:
        _freeze_shared_folders(config["shared_folders"], config["workdir"])
    if isolated is not False:
        _become_init(isolated)
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
