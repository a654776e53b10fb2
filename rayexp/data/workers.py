"""Per-image work in worker processes, with a progress line: what preparation and the data check share.

:func:`parallel_map` runs a function over jobs in spawned processes that die with the process that
started them; :class:`Progress` reports how far it got.
"""

from __future__ import annotations

import ctypes
import multiprocessing
import os
import signal
import sys
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from typing import Callable, Iterator

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>: the signal a process gets when its parent dies
PARENT_POLL_S = 0.5
SERIAL_BELOW = 64  # fewer jobs than this run in the calling process: starting workers would cost more


class Progress:
    """A progress line on a terminal; a line per 10% otherwise (logs, CI)."""

    def __init__(self, message: str, total: int, quiet: bool = False) -> None:
        self.message, self.total, self.done, self.quiet = message, total, 0, quiet
        self.tty = sys.stderr.isatty()
        self.start = time.perf_counter()

    def step(self) -> None:
        self.done += 1
        if self.quiet:
            return
        rate = self.done / max(time.perf_counter() - self.start, 1e-9)
        text = f"{self.message}: {self.done}/{self.total} images ({rate:.0f}/s)"
        if self.tty:
            print("\r" + text, end="\n" if self.done == self.total else "", file=sys.stderr, flush=True)
        elif self.done == self.total or self.done % max(self.total // 10, 1) == 0:
            print(text, file=sys.stderr, flush=True)


def _die_with_parent(parent: int) -> None:
    """Pool initializer: end this worker process as soon as ``parent`` (the process that started it) dies.

    A parent killed by SIGKILL (or the OOM killer) cannot shut its pool down, and a spawned worker holds
    both ends of the pool's queues, so it would wait for the next job for ever, holding its memory. On
    Linux the kernel kills it (PR_SET_PDEATHSIG); everywhere, a daemon thread notices the parent's pid
    change and exits. Module level so that the spawned worker can import it.
    """
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
        except (OSError, AttributeError):  # no libc or no prctl: the thread below still watches
            pass
    if os.getppid() != parent:  # died before the signal was armed
        os._exit(1)

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(PARENT_POLL_S)
        os._exit(1)

    threading.Thread(target=watch, name="rayexp-watch-parent", daemon=True).start()


def parallel_map(fn: Callable, jobs: list[tuple], workers: int, progress: Progress) -> Iterator:
    """``fn(job)`` for each job, in job order, across ``workers`` processes (in this one for few jobs);
    ``fn`` must be a module-level function so that the worker processes can import it.

    The workers die with this process, however it ends; a caller that stops reading early (an error on
    one image) does not wait for the jobs not yet started.
    """
    if workers <= 1 or len(jobs) < SERIAL_BELOW:
        for job in jobs:
            yield fn(job)
            progress.step()
        return
    # spawn, not fork: the caller may hold threads (Ray, PyArrow) that fork would copy half-way.
    # PR_SET_PDEATHSIG fires when the thread that started a worker exits: pool.map starts them in this thread,
    # which outlives the pool.
    pool = ProcessPoolExecutor(
        max_workers=workers,
        mp_context=multiprocessing.get_context("spawn"),
        initializer=_die_with_parent,
        initargs=(os.getpid(),),
    )
    try:
        for result in pool.map(fn, jobs, chunksize=max(1, min(64, len(jobs) // (workers * 8)))):
            yield result
            progress.step()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
