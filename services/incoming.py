"""Receive folders: where a process writes what it is receiving before it is archived.

Each receiving process has its own folder under `VNA_DATA_DIR/incoming/` (the archive's
disk, so that a received file is linked into the object store, not copied), named after
its host and pid: `<host>-<pid>` for an SCP process, `stow-<host>-<pid>` for a `vna api`
process (STOW-RS). Nothing in such a folder was ever acknowledged; what a dead process
left there is removed by the next process of its kind to start on that host.
"""

from __future__ import annotations

import os
import shutil
import socket
from pathlib import Path


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def folder_name(prefix: str = "", pid: int | None = None) -> str:
    """`<prefix><host>-<pid>`: this process's folder name (or another pid's on this host)."""
    return f"{prefix}{socket.gethostname()}-{os.getpid() if pid is None else pid}"


def own_folder(incoming: Path, prefix: str = "") -> Path:
    """This process's receive folder, made if needed (resolved: it is linked from)."""
    folder = incoming / folder_name(prefix)
    folder.mkdir(parents=True, exist_ok=True)
    return folder.resolve()


def remove_dead(incoming: Path, prefix: str = "") -> int:
    """Remove the folders `<prefix><host>-<pid>` of this host whose process is gone (never
    this process's own); returns how many. Other prefixes are another kind's to clean."""
    if not incoming.is_dir():
        return 0
    host = socket.gethostname()
    removed = 0
    for sub in incoming.iterdir():
        name, _, pid = sub.name.rpartition("-")
        if not sub.is_dir() or name != prefix + host or not pid.isdigit() or \
                int(pid) == os.getpid() or alive(int(pid)):
            continue
        shutil.rmtree(sub, ignore_errors=True)
        removed += 1
    return removed
