"""How long ``sweeps/report.py`` takes on the paper's full grid: 11 backbones x 20 datasets x 3 fractions x 3 seeds.

Writes 1,980 finished trial runs (and their 660 cell parents) into a fresh local MLflow store through
MLflow's client, in the schema trials log (tags, params, final metrics; :mod:`rayexp.tracking`), each with
its ``test_predictions.csv`` artifact on a test split of the catalog's size (capped at ``--max-test``).
Five backbones tie at 100% on NEU at fraction 1.0, as saturated small test sets do. Then builds the
report twice in this process: once reading no predictions (the verdicts' summary rule: the baseline)
and once as ``build_report`` does (paired verdicts from the predictions of every backbone of each cell: the
leader is compared with each other backbone).

Prints the seconds of each and, last, ``ratio with_predictions_vs_summary <value>``. The grid itself
(:func:`synthetic_grid`, :func:`synthetic_results`) is shared with ``tests/test_report_html.py``, which renders
its report in a headless browser without MLflow.

    python benchmarks/report_build.py [--max-test 2000]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from rayexp import report, tracking
from rayexp.backbones import REGISTRY
from rayexp.data.catalog import CATALOG
from rayexp.grid import PAPER_FRACTIONS, PAPER_SEEDS, TrialKey
from rayexp.results import CellSummary, summarize

CODE_VERSION = "0123456789ab"
PROTOCOL_SETTINGS = {
    "max_epochs_per_phase": 30,
    "patience": 5,
    "precision": "bf16-mixed",
    "selection": "test",
    "val_share": None,
    "dualopt": True,
    "normalize": "imagenet",
    "augment": True,
}


@dataclass
class SyntheticTrial:
    """One trial of the synthetic grid, as a trial would log it."""

    key: TrialKey
    domain: str
    tags: dict[str, str]
    metrics: dict[str, float]
    params: dict[str, object]
    labels: np.ndarray
    predictions: np.ndarray


def synthetic_grid(max_test: int = 2000, weights: str = "IMAGENET1K_V1") -> Iterator[SyntheticTrial]:
    """The paper's full grid (11 backbones x 20 datasets x 3 fractions x 3 seeds, without ``digits``), each
    trial with its tags, final metrics, params and test predictions on a test split of the catalog's size
    (capped at ``max_test``). Five backbones tie at 100% on NEU at fraction 1.0. ``weights="random"``: every
    run trained from random init. Seeded: the same grid every time."""
    datasets = sorted(n for n in CATALOG if n != "digits")
    backbones = sorted(REGISTRY)
    rng = np.random.default_rng(0)
    skill = {b: rng.uniform(0.0, 0.08) for b in backbones}
    settings = json.dumps(PROTOCOL_SETTINGS, sort_keys=True)
    for d in datasets:
        info = CATALOG[d]
        n = min(info.test, max_test)
        labels = np.arange(n) % info.n_classes
        for b in backbones:
            for f in PAPER_FRACTIONS:
                for seed in PAPER_SEEDS:
                    key = TrialKey(b, d, f, seed)
                    p_right = (
                        1.0
                        if (d == "neu" and f == 1.0 and b in backbones[:5])
                        else min(1.0, 0.55 + 0.4 * f**0.3 - skill[b] + rng.normal(0, 0.01))
                    )
                    right = rng.random(n) < p_right
                    yield SyntheticTrial(
                        key=key,
                        domain=info.domain,
                        tags={
                            tracking.KIND_TAG: "trial",
                            "key": str(key),
                            "backbone": b,
                            "dataset": d,
                            "domain": info.domain,
                            "fraction": repr(f),
                            "seed": str(seed),
                            "selection": "test",
                            tracking.DATA_TAG: f"sha256:{d}",
                            tracking.PROTOCOL_TAG: "sha256:protocol",
                            tracking.SETTINGS_TAG: settings,
                            tracking.CODE_VERSION_TAG: CODE_VERSION,
                            tracking.WEIGHTS_TAG: "random" if weights == "random" else "pretrained",
                            "accelerator": "NVIDIA H200",
                        },
                        metrics={
                            "best_test_acc": float(right.mean()),
                            "train_seconds": 600.0,
                            "test_images_per_s": 900.0,
                            "train_images_per_s": 300.0,
                        },
                        params={
                            "weights": weights,
                            "test_rows": n,
                            "num_classes": info.n_classes,
                            "test_majority_rate": 1 / info.n_classes,
                        },
                        labels=labels,
                        predictions=np.where(right, labels, (labels + 1) % info.n_classes),
                    )


def synthetic_results(
    max_test: int = 2000, weights: str = "IMAGENET1K_V1"
) -> tuple[list[CellSummary], list[dict], dict[str, dict[str, str]]]:
    """The grid of :func:`synthetic_grid` as ``report.render_report`` takes it, without MLflow: the cells'
    summaries, the trial result rows (as ``tracking.fetch_trial_results`` reads them back) and each run's tags
    by run id. No predictions: verdicts take the summary rule."""
    rows, tags = [], {}
    for i, trial in enumerate(synthetic_grid(max_test, weights)):
        run_id = f"run{i:05d}"
        rows.append(
            {
                "key": str(trial.key),
                "backbone": trial.key.backbone,
                "dataset": trial.key.dataset,
                "domain": trial.domain,
                "fraction": trial.key.fraction,
                "seed": trial.key.seed,
                "status": tracking.FINISHED,
                **trial.metrics,
                "inference_images_per_s": trial.metrics["test_images_per_s"],
                **trial.params,
                "selection": "test",
                "accelerator": trial.tags["accelerator"],
                "run_id": run_id,
                "start_time": 1_700_000_000_000 + i * 1000,
                "data_fingerprint": trial.tags[tracking.DATA_TAG],
                "protocol_fingerprint": trial.tags[tracking.PROTOCOL_TAG],
            }
        )
        tags[run_id] = trial.tags
    return summarize(rows), rows, tags


def write_store(uri: str, experiment: str, max_test: int, weights: str = "IMAGENET1K_V1") -> int:
    """:func:`synthetic_grid` written through MLflow's client into ``uri``, with the cells' parent runs."""
    from mlflow.entities import Metric, Param, RunTag
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    experiment_id = tracking.ensure_experiment(uri, experiment)
    datasets = sorted(n for n in CATALOG if n != "digits")
    cells = [(b, d, f) for b in sorted(REGISTRY) for d in datasets for f in PAPER_FRACTIONS]
    parents = tracking.ensure_cell_runs(
        uri, experiment, cells, {d: CATALOG[d].domain for d in datasets}, seeds={c: PAPER_SEEDS for c in cells}
    )
    written = 0
    with tempfile.TemporaryDirectory() as folder:
        for trial in synthetic_grid(max_test, weights):
            b, d, f = trial.key.backbone, trial.key.dataset, trial.key.fraction
            tags = {k: v for k, v in trial.tags.items() if k != "accelerator"}
            tags[tracking.PARENT_TAG] = parents[tracking.cell_name(b, d, f)]
            run_id = client.create_run(experiment_id, run_name=str(trial.key), tags=tags).info.run_id
            now = int(time.time() * 1000)
            client.log_batch(
                run_id,
                metrics=[Metric(k, v, now, 0) for k, v in trial.metrics.items()],
                params=[Param(k, str(v)) for k, v in trial.params.items()],
                tags=[RunTag("accelerator", trial.tags["accelerator"])],
            )
            path = Path(folder) / tracking.PREDICTIONS_ARTIFACT
            path.write_text(
                "id,label,prediction\n"
                + "".join(f"{d}-{i},{y},{q}\n" for i, (y, q) in enumerate(zip(trial.labels, trial.predictions)))
            )
            client.log_artifact(run_id, str(path))
            client.set_terminated(run_id, status="FINISHED")
            written += 1
            if written % (len(REGISTRY) * len(PAPER_FRACTIONS) * len(PAPER_SEEDS)) == 0:
                print(f"  {d}: {written} runs written", flush=True)
    return written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--max-test", type=int, default=2000, help="test images per dataset, at most (the catalog's count when smaller)"
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        uri = f"sqlite:///{folder}/mlflow.db"
        start = time.perf_counter()
        runs = write_store(uri, "full-grid", args.max_test)
        print(f"wrote {runs} trial runs in {time.perf_counter() - start:.0f} s")

        start = time.perf_counter()
        report.build_report(uri, "full-grid", Path(folder) / "summary-rule", log_to_mlflow=False, paired=False)
        summary_s = time.perf_counter() - start
        start = time.perf_counter()
        paths = report.build_report(uri, "full-grid", Path(folder) / "paired", log_to_mlflow=True)
        paired_s = time.perf_counter() - start
        lines = [
            line
            for line in paths["report_md"].read_text().splitlines()
            if line.startswith("- neu at 1.0") or line.startswith("- **surface defect**")
        ]
        print("\n".join(lines))
        print(f"report, summary rule only: {summary_s:.1f} s")
        print(f"report, paired verdicts from predictions (and logged to MLflow): {paired_s:.1f} s")
        print(f"ratio with_predictions_vs_summary {paired_s / summary_s:.2f}")


if __name__ == "__main__":
    main()
