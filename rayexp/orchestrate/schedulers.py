"""When trials stop: FIFO or ASHA per (dataset, fraction), and the budgets (per trial and for the sweep)."""

from __future__ import annotations

import ray.tune
from ray.tune.schedulers import AsyncHyperBandScheduler, FIFOScheduler, TrialScheduler

from rayexp.errors import RayexpError
from rayexp.grid import TrialKey
from rayexp.settings import SweepSettings


class GroupedASHA(FIFOScheduler):
    """Asynchronous successive halving among the trials of one (dataset, fraction): backbones compete only
    with backbones on the same data."""

    def __init__(self, max_t: int, grace_period: int, reduction_factor: int) -> None:
        super().__init__()
        self.max_t, self.grace_period, self.reduction_factor = max_t, grace_period, reduction_factor
        self.groups: dict[tuple[str, float], AsyncHyperBandScheduler] = {}
        self.stopped: set[str] = set()  # the trial ids ASHA stopped

    def _asha(self, trial) -> AsyncHyperBandScheduler:
        key = TrialKey.parse(trial.config["key"])
        group = (key.dataset, key.fraction)
        if group not in self.groups:
            self.groups[group] = AsyncHyperBandScheduler(
                time_attr="epoch",
                metric="best_acc",
                mode="max",
                max_t=self.max_t,
                grace_period=self.grace_period,
                reduction_factor=self.reduction_factor,
            )
        return self.groups[group]

    def on_trial_add(self, controller, trial) -> None:
        self._asha(trial).on_trial_add(controller, trial)

    def on_trial_result(self, controller, trial, result: dict) -> str:
        decision = self._asha(trial).on_trial_result(controller, trial, result)
        if decision == TrialScheduler.STOP:
            self.stopped.add(trial.trial_id)
        return decision

    def on_trial_complete(self, controller, trial, result: dict) -> None:
        self._asha(trial).on_trial_complete(controller, trial, result)

    def on_trial_remove(self, controller, trial) -> None:
        self._asha(trial).on_trial_remove(controller, trial)

    def on_trial_error(self, controller, trial) -> None:
        self._asha(trial).on_trial_error(controller, trial)

    def debug_string(self) -> str:
        return f"ASHA per (dataset, fraction): {len(self.groups)} groups, {len(self.stopped)} trials stopped early"


def make_scheduler(settings: SweepSettings) -> TrialScheduler:
    """FIFO (every trial runs its full protocol: a fair comparison) or ASHA per (dataset, fraction)."""
    if settings.scheduler == "fifo":
        return FIFOScheduler()
    if settings.scheduler != "asha":
        raise RayexpError(f"--scheduler {settings.scheduler!r}: use fifo or asha")
    return GroupedASHA(2 * settings.train.max_epochs, settings.grace_period, settings.reduction_factor)


class SweepStopper(ray.tune.Stopper):
    """Per-trial budgets (seconds, epochs) and the sweep's own: device-hours and epochs summed over all
    trials. When the sweep's budget is spent Tune stops the running trials and starts no more."""

    def __init__(
        self, trial_seconds=None, trial_epochs=None, device_hours=None, epochs=None, devices_per_trial=1.0
    ) -> None:
        self.trial_seconds, self.trial_epochs = trial_seconds, trial_epochs
        self.device_seconds = device_hours * 3600 if device_hours else None
        self.epochs, self.devices_per_trial = epochs, devices_per_trial
        self.used_seconds, self.used_epochs = 0.0, 0
        self.spent_at: float | None = None  # the timestamp of the result that spent the budget

    def __call__(self, trial_id: str, result: dict) -> bool:
        if "train_loss" in result:  # an epoch's report, not the trial's closing one
            self.used_epochs += 1
            self.used_seconds += result.get("time_this_iter_s", 0.0) * self.devices_per_trial
            if self.spent_at is None and self.stop_all():
                self.spent_at = result.get("timestamp")
                print(
                    f"[rayexp] the sweep's budget is spent ({self.used_epochs} epochs, "
                    f"{self.used_seconds / 3600:.3f} device-hours): stopping"
                )
        return bool(
            (self.trial_seconds and result.get("time_total_s", 0.0) >= self.trial_seconds)
            or (self.trial_epochs and result.get("epoch", 0) >= self.trial_epochs)
        )

    def stop_all(self) -> bool:
        return bool(
            (self.device_seconds is not None and self.used_seconds >= self.device_seconds)
            or (self.epochs is not None and self.used_epochs >= self.epochs)
        )


def make_stop(settings: SweepSettings, use_gpu: bool = False) -> SweepStopper | None:
    """Tune's stopping criteria: per-trial budgets (seconds, epochs) and the sweep's budget (device-hours,
    epochs summed over trials); None when there is none."""
    s = settings
    if not any((s.trial_time_budget, s.trial_epoch_budget, s.budget_device_hours, s.budget_epochs)):
        return None
    return SweepStopper(
        trial_seconds=s.trial_time_budget,
        trial_epochs=s.trial_epoch_budget,
        device_hours=s.budget_device_hours,
        epochs=s.budget_epochs,
        devices_per_trial=s.gpus_per_trial if use_gpu else 1.0,
    )


def stop_reason(settings: SweepSettings, stopper: SweepStopper | None, metrics: dict) -> str:
    """Who stopped a trial that did not finish its protocol: the sweep's budget when the trial was still
    reporting when it was spent, else the scheduler (ASHA), else a per-trial budget."""
    spent_at = getattr(stopper, "spent_at", None)
    if spent_at is not None and metrics.get("timestamp", 0) >= spent_at - 1:
        return "budget"
    return settings.scheduler if settings.scheduler != "fifo" else "budget"
