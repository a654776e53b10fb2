"""A sweep's storage (``--storage``, a local folder or a bucket): files written whole or not at all, and its faults
named.

A full disk, a read-only mount or an exhausted quota fails the same way every time it is retried: such a fault
is a named error (what, where, the fix), never retried as if a node had died, and never leaves a half-written
file behind to hold the disk full or to be resumed from. No Ray and no MLflow here: an error is recognised by its
errno, or by the text it carries once it crossed processes.
"""

from __future__ import annotations

import errno
import re

import pyarrow.fs

from rayexp.errors import RayexpError, causes

FAULTS = {
    errno.ENOSPC: ("full", "No space left on device"),
    errno.EDQUOT: ("over its quota", "Disk quota exceeded"),
    errno.EROFS: ("read-only", "Read-only file system"),
}
FIX = "free space (or fix the mount), or choose another --storage; then run the same command with --resume"


class StorageFault(RayexpError):
    """The storage cannot take a write: full, read-only or over quota. Deterministic: never retried."""


def storage_fault(exc: BaseException) -> StorageFault | None:
    """The named fault behind ``exc`` (its chain, and Ray's ``cause``), or None when it is not one."""
    for e in causes(exc):
        if isinstance(e, StorageFault):
            return e
        if isinstance(e, OSError) and e.errno in FAULTS:
            state, text = FAULTS[e.errno]
            return StorageFault(f"the storage is {state} ({text}) writing {e.filename or 'a file'}: {FIX}")
        for code, (state, text) in FAULTS.items():
            if text in str(e):
                where = re.search(r"writing (\S+)|file '?(\S+?)'?[:,]", str(e))
                place = next((g for g in where.groups() if g), "") if where else ""
                return StorageFault(f"the storage is {state} ({text}){f' at {place}' if place else ''}: {FIX}")
    return None


def write_whole(filesystem: pyarrow.fs.FileSystem, path: str, data: bytes) -> None:
    """Write ``data`` to ``path`` of ``filesystem`` (local, or a bucket's) whole or not at all: under ``.partial``
    until complete, then moved into place (a rename locally); a write that fails removes its partial file, and
    raises the named :class:`StorageFault` where the storage is at fault."""
    partial = f"{path}.partial"
    try:
        with filesystem.open_output_stream(partial) as stream:
            stream.write(data)
        filesystem.move(partial, path)
    except OSError as exc:
        try:
            filesystem.delete_file(partial)
        except OSError:
            pass  # never created, or the storage refuses even that: nothing more to undo here
        fault = storage_fault(exc)
        if fault is not None:
            raise StorageFault(str(fault).replace("writing a file", f"writing {path}")) from exc
        raise
