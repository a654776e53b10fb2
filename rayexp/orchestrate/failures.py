"""Which errors are retried, and the words a person reads about a failed trial.

Errors that come out the same every time they are retried (bad data or settings, a bug, a batch that does
not fit: never halved) fail the trial at once; Train's FailureConfig retries only the rest (a lost worker or
node, a storage hiccup). No Ray import: an error is classified by its type's name and its text, as it
arrives after crossing processes.
"""

from __future__ import annotations

import re

from rayexp import tracking
from rayexp.errors import RayexpError, causes
from rayexp.grid import TrialKey
from rayexp.orchestrate.context import TrialContext
from rayexp.storage import storage_fault

DETERMINISTIC_ERRORS = (
    RayexpError,
    ValueError,
    TypeError,
    IndexError,
    KeyError,
    AttributeError,
    AssertionError,
    ZeroDivisionError,
    NotImplementedError,
)
# torch.OutOfMemoryError (without importing torch here), and Ray Data's wrapper of an error a map function raised
DETERMINISTIC_NAMES = ("OutOfMemoryError", "UserCodeException")
# How a rayexp error raised in a Ray task reads once it crossed processes: Ray keeps the remote traceback as
# text, and the original exception (with its type) is not always kept beside it.
RAYEXP_ERROR_LINE = re.compile(r"^rayexp\.[\w.]*(?:Error|Exception): (.+)$", re.MULTILINE)


def _rayexp_text(e: BaseException) -> str | None:
    """The message of a rayexp error named in ``e``'s (remote) traceback text, if any."""
    found = RAYEXP_ERROR_LINE.findall(str(e))
    return found[-1].strip() if found else None


def is_deterministic(exc: BaseException) -> bool:
    """Whether retrying would meet ``exc`` again (see the module's docstring); a full, read-only or over-quota
    storage too (:func:`rayexp.storage.storage_fault`): retrying would retrain and fail the same way."""
    return storage_fault(exc) is not None or any(
        isinstance(e, DETERMINISTIC_ERRORS) or type(e).__name__ in DETERMINISTIC_NAMES or _rayexp_text(e)
        for e in causes(exc)
    )


def error_message(exc: BaseException) -> str:
    """The message a person needs from an error that crossed Ray: a rayexp error's own words, else the
    innermost error with a message (``ValueError: ...``), never only ``ray::ImplicitFunc.train()``; a storage
    fault in words (what, where, the fix)."""
    if (fault := storage_fault(exc)) is not None:
        return str(fault)
    for e in causes(exc):
        if isinstance(e, RayexpError) and not type(e).__module__.startswith("ray."):
            return str(e)
        if text := _rayexp_text(e):
            return text
    for e in reversed(causes(exc)):
        if not type(e).__module__.startswith("ray.") and str(e).strip():
            return f"{type(e).__name__}: {e}"
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[-1] if lines else type(exc).__name__


def record_failure(context: TrialContext, key: TrialKey, exc: BaseException) -> str:
    """Mark the key's MLflow run FAILED with the error's message (creating the run if the trial never
    opened it); returns the message."""
    message = error_message(exc)
    settings = context.plan.settings
    try:
        parent = context.cell_runs.get(tracking.cell_name(*key.cell))
        tags = {**tracking.key_tags(key.backbone, key.dataset, key.fraction, key.seed), **context.plan.extra_tags}
        tracking.fail_trial_run(settings.tracking_uri, settings.experiment, str(key), message, tags, parent)
    except Exception as log_error:  # noqa: BLE001 - the trial's own error matters more than logging it
        print(f"[rayexp] could not record the failure of {key} in MLflow: {log_error}")
    return message
