"""A whole sweep: lock the experiment, choose the keys, start Ray, run the trials through Tune, sort out
what finished, stopped early, never started or errored."""

from __future__ import annotations

import os

import ray
import ray.tune
from ray.data._internal.stats import get_or_create_stats_actor
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from rayexp import cluster_shape, tracking
from rayexp.backbones.checkpoint import ORIGIN_PREFIX
from rayexp.backbones.weights import OFFLINE_ENV
from rayexp.data.shards import load_manifest
from rayexp.errors import RayexpError
from rayexp.grid import TrialKey
from rayexp.orchestrate.callbacks import CellSummaryCallback, ProgressPrinter, update_cell_summary
from rayexp.orchestrate.context import TrialContext
from rayexp.orchestrate.driver import MAX_FAILURES, trial_driver
from rayexp.orchestrate.failures import error_message
from rayexp.orchestrate.orphans import OrphanReaper, reap
from rayexp.orchestrate.resources import (
    init_ray,
    plan_concurrency,
    trial_function_resources,
    trial_resources,
)
from rayexp.orchestrate.resume import select_trials
from rayexp.orchestrate.schedulers import SweepStopper, make_scheduler, make_stop, stop_reason
from rayexp.preflight import node_problems
from rayexp.settings import TRAIN_RUNTIME, SweepPlan, SweepSettings


def run_sweep(plan: SweepPlan, held: tracking.SweepLock | None = None) -> dict:
    """Run every key of ``plan`` that has no finished MLflow run of the same data and protocol; returns what
    ran, what errored and what stopped. One sweep per experiment at a time
    (:func:`rayexp.tracking.acquire_sweep_lock`); ``held``: a lock the caller already holds (``my_data.py`` takes
    its dataset's before checking and preparing), used when it is this experiment's."""
    s = plan.settings
    tracking.ensure_experiment(s.tracking_uri, s.experiment)
    if held is not None and held.experiment == s.experiment:
        return _run_locked(plan)
    with tracking.acquire_sweep_lock(s.tracking_uri, s.experiment, resume=s.resume):
        return _run_locked(plan)


def _run_locked(plan: SweepPlan) -> dict:
    s = plan.settings
    todo, skipped = select_trials(plan)
    if not todo:
        return {"ran": [], "errored": [], "stopped": [], "not_started": [], "skipped": skipped}
    domains = {d: load_manifest(s.data_dir, d)["domain"] for d in sorted({k.dataset for k in todo})}
    init_ray(s)
    concurrency, use_gpu = plan_concurrency(s)
    check_cluster_shape(s, use_gpu)  # before anything is written: a trial no node can hold would wait for ever
    if s.address:
        preflight_cluster(plan, sorted(domains))
    cells = sorted({k.cell for k in todo})
    cell_runs = tracking.ensure_cell_runs(s.tracking_uri, s.experiment, cells, domains, seeds=plan.planned_seeds())
    keep_ray_data_stats_actor()
    reap()  # an earlier sweep of this process may have left one
    if s.train.precision == "fp16" and not use_gpu:
        raise RayexpError(
            f"--precision fp16 needs a GPU, and the trials of this sweep run on the CPU (the cluster at {s.address} "
            "has no GPU now): use --precision bf16 or fp32, or --device gpu to wait for GPU nodes"
        )
    runtime = s.trial_runtime
    print(
        f"[rayexp] {len(todo)} trials, up to {concurrency} at a time, on {'GPU' if use_gpu else 'CPU'} "
        f"(runtime: {runtime})"
    )
    context = TrialContext(plan, trial_resources(s, use_gpu), cell_runs, local=not s.address, runtime=runtime)
    stopper = make_stop(s, use_gpu)
    try:
        grid = _tuner(plan, context, todo, concurrency, stopper).fit()
    finally:
        reap()
    outcome = _outcome(plan, grid, stopper)
    for cell in cells:  # stopped trials were closed only now
        update_cell_summary(s.tracking_uri, s.experiment, *cell)
    return {"ran": [str(k) for k in todo], **outcome, "skipped": skipped}


def _tuner(
    plan: SweepPlan, context: TrialContext, todo: list[TrialKey], concurrency: int, stopper: SweepStopper | None
) -> ray.tune.Tuner:
    s = plan.settings
    if not s.verbose:
        # Tune's new output engine prints its configuration table and TensorBoard hints even at verbose=0; the
        # classic one is silent there, and ProgressPrinter says what matters.
        os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    return ray.tune.Tuner(
        ray.tune.with_resources(
            ray.tune.with_parameters(trial_driver, context=context),
            trial_function_resources(context.resources, context.runtime),
        ),
        param_space={"key": ray.tune.grid_search([str(k) for k in todo])},
        tune_config=ray.tune.TuneConfig(
            max_concurrent_trials=concurrency,
            reuse_actors=True,
            scheduler=make_scheduler(s),
            trial_name_creator=lambda trial: trial.config["key"],
            trial_dirname_creator=lambda trial: TrialKey.parse(trial.config["key"]).dirname,
        ),
        run_config=ray.tune.RunConfig(
            name=s.experiment,
            storage_path=s.storage,
            stop=stopper,
            callbacks=[CellSummaryCallback(s.tracking_uri, s.experiment), OrphanReaper()]
            + ([] if s.verbose else [ProgressPrinter(len(todo), s.tracking_uri, s.experiment)]),
            verbose=None if s.verbose else 0,  # 0: no status tables; ProgressPrinter says what matters
            # Lost workers and nodes: Train's FailureConfig retries inside the trial; the light runtime's trial
            # function is retried by Tune. A deterministic error never reaches either (see .driver).
            failure_config=ray.tune.FailureConfig(max_failures=0 if context.runtime == TRAIN_RUNTIME else MAX_FAILURES),
        ),
    )


def _outcome(plan: SweepPlan, grid: ray.tune.ResultGrid, stopper: SweepStopper | None) -> dict:
    """What errored (with the message its MLflow run recorded), what stopped early (its run closed as such) and
    what never started."""
    s = plan.settings
    records = tracking.trial_records(s.tracking_uri, s.experiment)
    recorded = {k: v["tags"].get(tracking.ERROR_TAG) for k, v in records.items()}
    errored, stopped, not_started = [], [], []
    for result in grid:
        key, metrics = result.config["key"], result.metrics or {}
        if result.error is not None:
            errored.append((key, recorded.get(key) or error_message(result.error), result.path))
        elif not metrics:
            not_started.append(key)  # the sweep's budget was spent before it began
        elif records.get(key, {}).get("status") == tracking.FAILED:
            # A deterministic error, recorded by the trial (which reopened its run when it started) before it
            # returned without raising, so that no FailureConfig would retry it.
            errored.append((key, recorded.get(key) or "the trial failed (no message recorded)", result.path))
        else:
            reason = stop_reason(s, stopper, metrics)
            if tracking.close_stopped_run(s.tracking_uri, s.experiment, key, s.train.selection, reason=reason):
                stopped.append((key, metrics.get("epoch"), metrics.get("best_acc"), reason))
    return {"errored": errored, "stopped": stopped, "not_started": not_started}


def check_cluster_shape(s: SweepSettings, use_gpu: bool) -> None:
    """Refuse, before Tune starts, trials no node of the cluster can ever hold (:mod:`rayexp.cluster_shape`): its
    autoscaler's node types where it has one (the config its head was started with), else its live nodes."""
    request = cluster_shape.trial_request(s, use_gpu)
    nodes = cluster_shape.live_node_types(ray.nodes())
    where = "live node of the cluster"
    path = cluster_shape.monitor_config_path(ray.get_runtime_context().gcs_address) if s.address else None
    if path is not None:
        config = cluster_shape.load_config(path)
        nodes += [t for t in cluster_shape.node_types(config) if not t.head]
        where = f"node type of the cluster's autoscaler ({path}) nor live node"
    cluster_shape.check_fit(request, nodes, where, s.trial_runtime == TRAIN_RUNTIME)


def preflight_cluster(plan: SweepPlan, datasets: list[str]) -> None:
    """On a cluster, before any trial: every alive node must read the datasets, find the weights and reach
    MLflow."""
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    if len(nodes) <= 1:
        return
    s = plan.settings
    check = ray.remote(num_cpus=0)(node_problems)
    pretrained = sorted(b for b, w in plan.weights.items() if w == "pretrained")
    files = s.checkpoint_files()
    checkpoints = {files[b]: w.removeprefix(ORIGIN_PREFIX) for b, w in plan.weights.items() if b in files}
    offline = os.environ.get(OFFLINE_ENV) == "1"
    args = (s.data_dir, datasets, pretrained, s.weights_dir, s.tracking_uri, offline, checkpoints)
    refs = {
        f"{n['NodeManagerAddress']} ({n['NodeID'][:8]})": check.options(
            scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False)
        ).remote(*args)
        for n in nodes
    }
    problems = [f"  - node {node}: {p}" for node, ref in refs.items() for p in ray.get(ref, timeout=300)]
    if problems:
        raise RayexpError("nodes of the cluster cannot run the sweep, nothing was started:\n" + "\n".join(problems))
    print(f"[rayexp] preflight passed on {len(nodes)} nodes")


def keep_ray_data_stats_actor() -> None:
    """Create Ray Data's stats actor from this (the sweep's) process, so it lives as long as the sweep.

    Otherwise each trial's training worker creates it, owns it, and it dies with the worker: one more Python
    process started per trial. ``get_or_create_stats_actor`` is private to Ray Data, so ``pyproject.toml`` pins
    Ray's minor version and ``tests/test_layout.py`` fails when the hook moves.
    """
    get_or_create_stats_actor()
