"""What the sweep tells while it runs: a cell's parent run in MLflow kept up to date, and a console a person
reads (one line per epoch and per finished trial, with the time left)."""

from __future__ import annotations

import time

import ray.tune

from rayexp import tracking
from rayexp.grid import TrialKey
from rayexp.results import current_results, summarize
from rayexp.training import PHASES


def update_cell_summary(uri: str, experiment: str, backbone: str, dataset: str, fraction: float) -> dict | None:
    """Summarise a cell's finished seeds of the current fingerprints on its parent run; returns the metrics."""
    # Only this cell's runs: called after every trial, it must not read the whole sweep each time.
    runs = tracking.fetch_trial_results(uri, experiment, backbone=backbone, dataset=dataset, fraction=repr(fraction))
    rows, _ = current_results(runs)
    (summary,) = summarize(rows) or [None]
    if summary is None or summary.n_seeds == 0:
        return None
    metrics = {
        tracking.BEST_OF_3_METRIC: summary.best_of_3,
        tracking.MEAN_METRIC: summary.mean,
        tracking.N_SEEDS_METRIC: summary.n_seeds,
    }
    if summary.std is not None:
        metrics[tracking.STD_METRIC] = summary.std
    return metrics if tracking.log_cell_summary(uri, experiment, backbone, dataset, fraction, metrics) else None


class CellSummaryCallback(ray.tune.Callback):
    """Updates a cell's parent run (best of three, mean, std) as soon as one of its seeds finishes."""

    def __init__(self, uri: str, experiment: str) -> None:
        self.uri, self.experiment = uri, experiment

    def on_trial_complete(self, iteration: int, trials: list, trial, **info) -> None:
        key = TrialKey.parse(trial.config["key"])
        try:
            update_cell_summary(self.uri, self.experiment, *key.cell)
        except Exception as exc:  # a summary is rebuilt at the end anyway; never stop the sweep for it
            print(f"[rayexp] could not update the summary of {key.cell}: {exc}")


def _minutes(seconds: float) -> str:
    return f"{seconds / 60:.0f} min" if seconds >= 90 else f"{seconds:.0f} s"


class ProgressPrinter(ray.tune.Callback):
    """One line per epoch of each trial (key, phase, epoch, loss, monitored accuracy, seconds) and one per
    finished trial, with the sweep's progress and an estimate of the time left: the console without
    ``--verbose``, where Tune's own tables are off."""

    def __init__(self, total: int, uri: str, experiment: str) -> None:
        self.total, self.done, self.start = total, 0, time.monotonic()
        self.uri, self.experiment = uri, experiment

    def on_trial_result(self, iteration: int, trials: list, trial, result: dict, **info) -> None:
        if "train_loss" not in result:  # the trial's closing report
            return
        which = "val" if "val_acc" in result else "test"
        print(
            f"[rayexp] {trial.config['key']}  {PHASES[int(result['phase'])]} epoch {result['epoch']}  "
            f"loss {result['train_loss']:.3f}  {which} acc {100 * result[f'{which}_acc']:.1f}%  "
            f"{result.get('epoch_seconds', 0):.0f} s",
            flush=True,
        )

    def _finished(self, trial, how: str) -> None:
        self.done += 1
        elapsed = time.monotonic() - self.start
        left = self.total - self.done
        eta = f", about {_minutes(elapsed / self.done * left)} left" if left else ""
        print(f"[rayexp] {trial.config['key']} {how}: {self.done}/{self.total} trials{eta}", flush=True)

    def on_trial_complete(self, iteration: int, trials: list, trial, **info) -> None:
        # A deterministic error ends the trial function without raising (so that it is never retried): its
        # MLflow run says FAILED.
        try:
            record = tracking.trial_record(self.uri, self.experiment, trial.config["key"])
        except Exception:  # noqa: BLE001 - the console line is not worth stopping the sweep; the summary says it
            record = None
        failed = record is not None and record["status"] == tracking.FAILED
        self._finished(trial, "errored (its message is printed at the end)" if failed else "finished")

    def on_trial_error(self, iteration: int, trials: list, trial, **info) -> None:
        self._finished(trial, "errored (its message is printed at the end)")
