"""The one exception type users see.

Every problem a user can fix (an unknown name, an unprepared dataset, weights that cannot be had, an
unreachable tracking server) is raised as :class:`RayexpError` with a message that names the thing and
the fix, so the command-line entry points can print it without a traceback and exit non-zero before
any GPU time is spent.
"""


class RayexpError(Exception):
    """A user-facing error whose message says what is wrong and how to fix it."""


def causes(exc: BaseException) -> list[BaseException]:
    """``exc`` and what caused it: Python's chain, and the ``cause`` Ray's task errors carry across processes."""
    out: list[BaseException] = []
    stack: list[BaseException | None] = [exc]
    while stack:
        e = stack.pop(0)
        if e is None or any(e is seen for seen in out):
            continue
        out.append(e)
        stack += [getattr(e, "cause", None), e.__cause__, e.__context__]
    return out
