"""Put a fully written folder in place of another one without a moment where neither exists.

`publish_folder(tmp, folder)` swaps the two with renameat2(RENAME_EXCHANGE) (Linux 3.15+: one atomic
step), then deletes the old contents, which now sit under the temporary name. Where that call is not
available it falls back to two renames (folder -> .NAME.old-PID, tmp -> folder); a kill between them
leaves no `folder`, which `recover_folder` (run before every save and load) puts back from the old copy.
It also deletes the temporaries (.NAME.tmp-PID-*, .NAME.old-PID) that a killed writer left, once that
writer's process is gone.
"""
from __future__ import annotations

import ctypes
import os
import shutil
from pathlib import Path

_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two paths; False where the system does not support it."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    done = renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0
    return done


def publish_folder(tmp: Path, folder: Path) -> None:
    """Make the complete folder `tmp` appear as `folder`, replacing what was there."""
    if not folder.exists():
        os.rename(tmp, folder)
        return
    if _exchange(tmp, folder):
        shutil.rmtree(tmp, ignore_errors=True)  # tmp now holds the replaced contents
        return
    old = folder.with_name(f".{folder.name}.old-{os.getpid()}")
    os.rename(folder, old)
    os.rename(tmp, folder)
    shutil.rmtree(old, ignore_errors=True)


def _writer_alive(name: str, marker: str) -> bool:
    """Is the process that made the temporary `name` (".X.tmp-PID-..." or ".X.old-PID") still running?"""
    pid = name.split(marker, 1)[1].split("-", 1)[0]
    if not pid.isdigit() or int(pid) == os.getpid():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # exists, owned by someone else
    return True


def recover_folder(folder: Path) -> None:
    """Undo what a writer killed mid-publish left: restore `folder` from its old copy if it is missing,
    and delete stale temporaries of it."""
    parent = folder.parent
    if not parent.is_dir():
        return
    old_prefix, tmp_prefix = f".{folder.name}.old-", f".{folder.name}.tmp-"
    try:
        stale = [p for p in parent.iterdir() if p.name.startswith((old_prefix, tmp_prefix))]
    except OSError:  # a parent we may not list: nothing to recover that we could see
        return
    if not stale:
        return
    olds = sorted((p for p in stale if p.name.startswith(old_prefix) and not _writer_alive(p.name, old_prefix)),
                  key=lambda p: p.stat().st_mtime)
    if not folder.exists() and olds:
        os.rename(olds.pop(), folder)  # the newest complete copy becomes the folder again
    for path in stale:
        marker = old_prefix if path.name.startswith(old_prefix) else tmp_prefix
        if path.exists() and not _writer_alive(path.name, marker):
            shutil.rmtree(path, ignore_errors=True)
