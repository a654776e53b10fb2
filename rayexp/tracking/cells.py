"""Cell runs: the parent run of each (backbone, dataset, fraction) cell, which nests its seeds' trial runs,
knows the seeds planned for it and holds its summary over them."""

from __future__ import annotations

from typing import TYPE_CHECKING, Iterable

from rayexp.tracking.client import ensure_experiment, experiment_id, mlflow_client, search_runs
from rayexp.tracking.runs import TrialRun
from rayexp.tracking.schema import (
    BACKBONE_TAG,
    CELL_KIND,
    CELL_TAG,
    DATASET_TAG,
    DOMAIN_TAG,
    FINISHED,
    FRACTION_TAG,
    KIND_TAG,
    NOTE_TAG,
    SEEDS_TAG,
    cell_name,
    cell_note,
    cell_run_name,
)

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient

Cell = tuple[str, str, float]  # (backbone, dataset, fraction)


def _seeds(text: str | None) -> list[int]:
    """The seeds of a :data:`SEEDS_TAG` value."""
    return [int(s) for s in (text or "").split(",") if s.strip().lstrip("-").isdigit()]


def _create_cell_run(client: MlflowClient, experiment_id: str, cell: Cell, domain: str, seeds: list[int]) -> str:
    backbone, dataset, fraction = cell
    name = cell_name(backbone, dataset, fraction)
    tags = {
        KIND_TAG: CELL_KIND,
        CELL_TAG: name,
        BACKBONE_TAG: backbone,
        DATASET_TAG: dataset,
        FRACTION_TAG: repr(fraction),
        DOMAIN_TAG: domain,
    }
    if seeds:
        tags[SEEDS_TAG] = ",".join(map(str, seeds))
    run_id = client.create_run(experiment_id, run_name=cell_run_name(*cell), tags=tags).info.run_id
    client.set_terminated(run_id, status=FINISHED)
    return run_id


def ensure_cell_runs(
    uri: str,
    experiment: str,
    cells: Iterable[Cell],
    domains: dict[str, str],
    seeds: dict[Cell, Iterable[int]] | None = None,
) -> dict[str, str]:
    """The parent run of each (backbone, dataset, fraction) cell, created if missing: ``{cell name: run id}``.

    Made by the driver before any trial starts, so that seeds running at once never race to create
    their parent; each trial nests its own run under it. ``seeds`` are the seeds planned per cell, kept in
    the parent's :data:`SEEDS_TAG` tag (the union over sweeps), so that a report knows a cell is incomplete.
    """
    client = mlflow_client(uri)
    found_id = ensure_experiment(uri, experiment)
    existing = {r.data.tags[CELL_TAG]: r for r in search_runs(client, found_id, CELL_KIND)}
    out = {}
    for cell in cells:
        name = cell_name(*cell)
        planned = sorted(set((seeds or {}).get(cell, ())))
        run = existing.get(name)
        if run is None:
            out[name] = _create_cell_run(client, found_id, cell, domains.get(cell[1], ""), planned)
            continue
        out[name] = run.info.run_id
        recorded = _seeds(run.data.tags.get(SEEDS_TAG))
        union = sorted(set(planned) | set(recorded))
        if union and union != recorded:
            client.set_tag(out[name], SEEDS_TAG, ",".join(map(str, union)))
    return out


def log_cell_summary(
    uri: str, experiment: str, backbone: str, dataset: str, fraction: float, metrics: dict[str, float]
) -> bool:
    """Log a cell's summary (``best_of_3``, ``mean``, ``std``, ``n_seeds``) on its parent run; False when the
    cell has no parent run."""
    client = mlflow_client(uri)
    found_id = experiment_id(client, experiment)
    name = cell_name(backbone, dataset, fraction)
    parents = search_runs(client, found_id, CELL_KIND, **{CELL_TAG: name}) if found_id is not None else []
    if not parents:
        return False
    run = TrialRun(uri, parents[0].info.run_id)
    run.log_metrics(metrics)
    run.set_tags({NOTE_TAG: cell_note(metrics)})
    return True


def fetch_cells(uri: str, experiment: str) -> list[tuple[str, str, float, str, tuple[int, ...]]]:
    """Every cell the sweep set out to run, from its parent runs: (backbone, dataset, fraction, domain,
    planned seeds).

    A report compares these with the finished trials, so a partial sweep shows its missing cells and seeds.
    """
    client = mlflow_client(uri)
    found_id = experiment_id(client, experiment)
    if found_id is None:
        return []
    return sorted(
        (
            r.data.tags[BACKBONE_TAG],
            r.data.tags[DATASET_TAG],
            float(r.data.tags[FRACTION_TAG]),
            r.data.tags.get(DOMAIN_TAG, ""),
            tuple(_seeds(r.data.tags.get(SEEDS_TAG))),
        )
        for r in search_runs(client, found_id, CELL_KIND)
    )
