"""Ray at the edges: the only package that imports ``ray.tune`` and ``ray.train``.

Ray Tune enumerates the grid: each trial is a Tune function (:mod:`.driver`) that builds the trial's Ray Data
pipeline and runs the trial's body (:mod:`.worker`: it trains with :mod:`rayexp.training` and logs to MLflow with
:mod:`rayexp.tracking`) in one of two runtimes (:mod:`.session`): the one worker of a Ray Train
``TorchTrainer`` (``--runtime train``), or the Tune function itself (``--runtime tune``).

* :mod:`.sweep`: a whole sweep (lock, keys, Ray, Tune, outcome) and the cluster's preflight
* :mod:`.resume`: which keys to train now (finished, errored, interrupted, changed)
* :mod:`.context`: what every trial receives (the plan, its resources, the cells' parent runs)
* :mod:`.resources`: resources per trial, concurrency, the local Ray instance
* :mod:`.driver` / :mod:`.worker`: one trial's Tune function and its body
* :mod:`.session` / :mod:`.checkpoints`: what the body asks of its runtime, the two adapters, and the checkpoints
  of the trial's run folder that both share
* :mod:`.artifacts`: what a trial logs besides metrics (config, history, confusion matrix, predictions)
* :mod:`.failures`: which errors are retried, and their messages
* :mod:`.schedulers` / :mod:`.callbacks`: FIFO or grouped ASHA, budgets, the cells' summaries
* :mod:`.orphans`: placement groups a stopped trial left behind, removed while the sweep runs
"""

from rayexp.orchestrate.callbacks import update_cell_summary
from rayexp.orchestrate.resources import DRIVER_RESOURCE
from rayexp.orchestrate.resume import select_trials
from rayexp.orchestrate.sweep import run_sweep

__all__ = ["DRIVER_RESOURCE", "run_sweep", "select_trials", "update_cell_summary"]
