"""The one exception type users see.

Every problem a user can fix (an unknown name, an unprepared dataset, weights that cannot be had, an
unreachable tracking server) is raised as :class:`RayexpError` with a message that names the thing and
the fix, so the command-line entry points can print it without a traceback and exit non-zero before
any GPU time is spent.
"""


class RayexpError(Exception):
    """A user-facing error whose message says what is wrong and how to fix it."""
