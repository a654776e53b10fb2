"""Scratch folders beside a data dir's datasets: named after the run that owns them, moved into place
atomically, removed when the run that owned them was killed; and the error for a data dir that cannot
be written.
"""

from __future__ import annotations

import errno
import hashlib
import os
import re
import shutil
import socket
import sys
import uuid
from pathlib import Path
from typing import Sequence

from rayexp.errors import RayexpError
from rayexp.liveness import pid_alive

LEFTOVER_PREFIXES = {"partial": ".{name}.partial-", "old": ".{name}.old-", "work": ".work-{name}-"}
_LEFTOVER_OWNER = re.compile(r"(?P<host>[0-9a-f]{6})-(?P<pid>[0-9]+)-[0-9a-f]{8}")


def _host_tag() -> str:
    """A short tag of this machine: a pid means nothing on another host sharing the data dir."""
    return hashlib.sha1(socket.gethostname().encode()).hexdigest()[:6]


def leftover_name(kind: str, name: str, pid: int | None = None) -> str:
    """The name of a scratch folder of dataset ``name`` owned by ``pid`` (default: this process) on this host.

    ``kind`` is ``partial`` (being written), ``old`` (being replaced) or ``work`` (preparation's scratch).
    The owner is in the name so that a later run can tell a folder left by a killed run from one a run
    still alive is writing.
    """
    owner = os.getpid() if pid is None else pid
    return LEFTOVER_PREFIXES[kind].format(name=name) + f"{_host_tag()}-{owner}-{uuid.uuid4().hex[:8]}"


def remove_stale_leftovers(parent: Path, name: str, kinds: Sequence[str], quiet: bool = False) -> list[Path]:
    """Remove ``kinds`` of scratch folders of ``name`` in ``parent`` whose owner died without cleaning up
    (SIGKILL, the OOM killer, a power cut); those of live runs and of other hosts are kept. Returns them."""
    if not parent.is_dir():
        return []
    host, removed = _host_tag(), []
    prefixes = [LEFTOVER_PREFIXES[kind].format(name=name) for kind in kinds]
    for path in sorted(parent.iterdir()):
        prefix = next((p for p in prefixes if path.name.startswith(p)), None)
        owner = _LEFTOVER_OWNER.fullmatch(path.name[len(prefix) :]) if prefix else None
        if owner and owner["host"] == host and not pid_alive(int(owner["pid"])):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    if removed and not quiet:
        print(
            f"[rayexp] {name}: removed {len(removed)} folder(s) left by killed runs: "
            + ", ".join(p.name for p in removed),
            file=sys.stderr,
        )
    return removed


def move_into_place(tmp: Path, target: Path, name: str) -> None:
    """Rename the written ``tmp`` to ``target``, replacing what is there; on failure ``target`` is as it was."""
    if not (target.exists() or target.is_symlink()):
        tmp.rename(target)
        return
    old = target.parent / leftover_name("old", name)
    target.rename(old)
    try:
        tmp.rename(target)
    except BaseException:
        old.rename(target)
        raise
    if old.is_dir() and not old.is_symlink():
        shutil.rmtree(old, ignore_errors=True)  # if this fails a later run removes it (its pid will be dead)
    else:
        old.unlink()


def storage_error(name: str, folder: Path, exc: OSError) -> RayexpError:
    """The user-facing error for an OSError while writing ``name`` under ``folder``: where, why, and the fix.

    Writes go to a scratch folder that is removed on failure, so a prepared copy already there is untouched.
    """
    reason = os.strerror(exc.errno) if exc.errno else str(exc)
    if exc.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)):
        fix = "free space on that disk, or pass --data-dir on a disk with room for the dataset"
    elif exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        fix = "make it writable (its permissions, `chattr -i`, a read-only mount), or pass a writable --data-dir"
    else:
        fix = "check that folder and its disk, or pass another --data-dir"
    return RayexpError(
        f"dataset {name!r}: cannot write to {folder} ({reason}); {fix}. Any prepared copy there is unchanged"
    )
