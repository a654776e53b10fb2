"""A cell's parent run in MLflow, kept up to date while the sweep runs."""

from __future__ import annotations

import ray.tune

from rayexp import tracking
from rayexp.grid import TrialKey
from rayexp.results import current_results, summarize


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
