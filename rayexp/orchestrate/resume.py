"""Which keys of a sweep to train now, from their MLflow runs: the resume policy.

A run counts only for the same data and protocol (:mod:`rayexp.fingerprint`). Finished keys are never
trained again; errored keys only with ``--retry-errored``; interrupted keys only with ``--resume``; keys
whose runs were made from other data or settings stop the sweep unless ``--retrain-changed``.
"""

from __future__ import annotations

from rayexp import fingerprint, tracking
from rayexp.errors import RayexpError
from rayexp.grid import TrialKey
from rayexp.settings import SweepPlan


def stale_runs(plan: SweepPlan, records: dict[str, dict]) -> dict[str, list[str]]:
    """Keys of this sweep whose existing run was made from other data or settings: ``{key: [changes]}``."""
    return {
        str(key): found
        for key in plan.keys
        if str(key) in records and (found := fingerprint.changes(records[str(key)]["tags"], plan.identity(key)))
    }


def without_stale_runs(plan: SweepPlan, records: dict[str, dict]) -> dict[str, dict]:
    """``records`` less the runs made from other data or settings, which are superseded in MLflow with
    ``--retrain-changed``; without it, such runs stop the sweep here, naming what changed."""
    s = plan.settings
    stale = stale_runs(plan, records)
    if not stale:
        return records
    if not s.retrain_changed:
        reasons = sorted({reason for changes in stale.values() for reason in changes})
        raise RayexpError(
            f"{len(stale)} trial(s) of MLflow experiment {s.experiment!r} were run from other data or settings than "
            f"this sweep's (e.g. {next(iter(stale))}):\n"
            + "\n".join(f"  - {r}" for r in reasons)
            + f"\nNothing was started. Their results would not be comparable with new ones: start a new experiment "
            f"(--experiment {s.experiment}-2), or retrain those keys here with --retrain-changed (their old runs are "
            "kept in MLflow, marked superseded and left out of the results)"
        )
    print(
        f"[rayexp] --retrain-changed: {len(stale)} trial(s) were run from other data or settings; training them again"
    )
    tracking.supersede_runs(
        s.tracking_uri, [records[k]["run_id"] for k in stale], "; ".join(next(iter(stale.values())))
    )
    return {k: v for k, v in records.items() if k not in stale}


def select_trials(plan: SweepPlan) -> tuple[list[TrialKey], int]:
    """The keys to train now, from their MLflow runs.

    A run counts only for the same data and protocol (:mod:`rayexp.fingerprint`): when any key's run was
    made from other data or settings the sweep stops here, naming what changed, unless
    ``retrain_changed`` (those runs are then superseded and their keys trained again). Otherwise finished
    keys are never trained again; errored keys only with ``retry_errored``; interrupted keys (a run that
    never ended: the driver was killed) only with ``resume``, so a new sweep never silently mixes with an
    old one.
    """
    s = plan.settings
    records = without_stale_runs(plan, tracking.trial_records(s.tracking_uri, s.experiment))
    status = {k: v["status"] for k, v in records.items()}
    keys = [str(k) for k in plan.keys]
    finished = [k for k in keys if status.get(k) == tracking.FINISHED]
    errored = [k for k in keys if status.get(k) == tracking.FAILED]
    interrupted = [k for k in keys if k in status and status[k] not in (tracking.FINISHED, tracking.FAILED)]
    if finished:
        print(
            f"[rayexp] {len(finished)} of {len(keys)} trials already finished in MLflow experiment {s.experiment!r} "
            "from the same data and protocol; not training them again"
        )
    if s.retry_errored:
        todo = errored
        print(f"[rayexp] retrying {len(errored)} errored trial(s)")
    else:
        if interrupted and not s.resume:
            raise RayexpError(
                f"{len(interrupted)} trial(s) of experiment {s.experiment!r} were interrupted (their runs never "
                f"ended, e.g. {interrupted[0]}): pass --resume to continue them from their checkpoints, or choose a "
                "new --experiment"
            )
        if errored:
            print(
                f"[rayexp] {len(errored)} trial(s) errored in an earlier run and are left out (e.g. {errored[0]}); "
                "rerun them with --retry-errored"
            )
        todo = [k for k in keys if k not in finished and k not in errored]
        if interrupted:
            print(f"[rayexp] resuming {len(interrupted)} interrupted trial(s) from their checkpoints")
    return [TrialKey.parse(k) for k in todo], len(keys) - len(todo)
