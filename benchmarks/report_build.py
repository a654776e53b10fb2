"""How long ``sweeps/report.py`` takes on the paper's full grid: 11 backbones x 20 datasets x 3 fractions x 3 seeds.

Writes 1,980 finished trial runs (and their 660 cell parents) into a fresh local MLflow store through
MLflow's client, in the schema trials log (tags, params, final metrics; :mod:`rayexp.tracking`), each with
its ``test_predictions.csv`` artifact on a test split of the catalog's size (capped at ``--max-test``).
Five backbones tie at 100% on NEU at fraction 1.0, as saturated small test sets do. Then builds the
report twice in this process: once reading no predictions (the verdicts' summary rule: the baseline)
and once as ``build_report`` does (paired bootstrap from the predictions of each cell's two leaders).

Prints the seconds of each and, last, ``ratio with_predictions_vs_summary <value>``.

    python benchmarks/report_build.py [--max-test 2000]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from rayexp import report, tracking
from rayexp.backbones import REGISTRY
from rayexp.data.catalog import CATALOG
from rayexp.grid import PAPER_FRACTIONS, PAPER_SEEDS, TrialKey


def write_store(uri: str, experiment: str, max_test: int) -> int:
    from mlflow.entities import Metric, Param, RunTag
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    experiment_id = tracking.ensure_experiment(uri, experiment)
    datasets = sorted(n for n in CATALOG if n != "digits")
    backbones = sorted(REGISTRY)
    cells = [(b, d, f) for b in backbones for d in datasets for f in PAPER_FRACTIONS]
    parents = tracking.ensure_cell_runs(
        uri, experiment, cells, {d: CATALOG[d].domain for d in datasets}, seeds={c: PAPER_SEEDS for c in cells}
    )
    rng = np.random.default_rng(0)
    skill = {b: rng.uniform(0.0, 0.08) for b in backbones}
    written = 0
    with tempfile.TemporaryDirectory() as folder:
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
                        acc = float(right.mean())
                        tags = {
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
                            tracking.PARENT_TAG: parents[tracking.cell_name(b, d, f)],
                        }
                        run_id = client.create_run(experiment_id, run_name=str(key), tags=tags).info.run_id
                        now = int(time.time() * 1000)
                        client.log_batch(
                            run_id,
                            metrics=[
                                Metric(k, v, now, 0)
                                for k, v in {
                                    "best_test_acc": acc,
                                    "train_seconds": 600.0,
                                    "test_images_per_s": 900.0,
                                    "train_images_per_s": 300.0,
                                }.items()
                            ],
                            params=[
                                Param(k, str(v))
                                for k, v in {
                                    "weights": "IMAGENET1K_V1",
                                    "test_rows": n,
                                    "num_classes": info.n_classes,
                                    "test_majority_rate": 1 / info.n_classes,
                                }.items()
                            ],
                            tags=[RunTag("accelerator", "NVIDIA H200")],
                        )
                        predictions = np.where(right, labels, (labels + 1) % info.n_classes)
                        path = Path(folder) / tracking.PREDICTIONS_ARTIFACT
                        path.write_text(
                            "id,label,prediction\n"
                            + "".join(f"{d}-{i},{y},{q}\n" for i, (y, q) in enumerate(zip(labels, predictions)))
                        )
                        client.log_artifact(run_id, str(path))
                        client.set_terminated(run_id, status="FINISHED")
                        written += 1
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
