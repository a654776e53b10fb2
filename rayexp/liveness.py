"""Whether a process on this host is still alive: how scratch folders and sweep locks left by a killed
process are told from those of a running one."""

from __future__ import annotations

import os


def pid_alive(pid: object) -> bool:
    """False only when no process has ``pid`` on this host; True when it lives or cannot be told (not a
    positive int: ``os.kill`` with 0 or a negative pid would signal a whole process group)."""
    if isinstance(pid, bool) or not isinstance(pid, int) or pid <= 0:
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # PermissionError: another user's live process
        return True
    return True
