"""Best of three and mean ± std per (backbone, dataset, fraction), printed and written as CSV and Markdown.

Built from trial results as :func:`rayexp.tracking.fetch_trial_results` reads them from MLflow, so a
report can be rebuilt at any time, for a complete or a partial sweep. A cell without a finished seed is
shown as missing, never as 0.
"""

from __future__ import annotations

import csv
import statistics
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterable, Sequence

from rayexp.grid import TrialKey, format_fraction

SUMMARY_COLUMNS = ("backbone", "dataset", "domain", "fraction", "best_of_3", "mean", "std", "n_seeds")


@dataclass(frozen=True)
class CellSummary:
    backbone: str
    dataset: str
    domain: str
    fraction: float
    best_of_3: float | None
    mean: float | None
    std: float | None  # sample standard deviation over seeds; None with fewer than two
    n_seeds: int
    weights: str = ""


def summarize(results: Iterable[dict], expected: Sequence[TrialKey] = ()) -> list[CellSummary]:
    """One summary per cell from finished trial results; cells of ``expected`` with none are missing."""
    finished: dict[tuple[str, str, float], list[dict]] = {}
    domains: dict[str, str] = {}
    for row in results:
        cell = (row["backbone"], row["dataset"], float(row["fraction"]))
        domains[row["dataset"]] = row.get("domain") or ""
        if row.get("status") == "FINISHED" and row.get("best_test_acc") is not None:
            finished.setdefault(cell, []).append(row)
        else:
            finished.setdefault(cell, [])
    for key in expected:
        finished.setdefault(key.cell, [])
    summaries = []
    for (backbone, dataset, fraction), rows in sorted(finished.items(), key=lambda kv: (kv[0][1], -kv[0][2], kv[0][0])):
        accs = [r["best_test_acc"] for r in rows]
        weights = sorted({r.get("weights") or "" for r in rows} - {""})
        summaries.append(
            CellSummary(
                backbone=backbone,
                dataset=dataset,
                domain=domains.get(dataset, ""),
                fraction=fraction,
                best_of_3=max(accs) if accs else None,
                mean=statistics.fmean(accs) if accs else None,
                std=statistics.stdev(accs) if len(accs) >= 2 else None,
                n_seeds=len(accs),
                weights=",".join(weights),
            )
        )
    return summaries


def _pct(value: float | None) -> str:
    return "missing" if value is None else f"{100 * value:.2f}"


def markdown_table(summaries: Sequence[CellSummary]) -> str:
    """The summary as a Markdown table, accuracies in percent."""
    lines = [
        "| dataset | fraction | backbone | best of seeds (%) | mean ± std (%) | seeds | weights |",
        "|---|---|---|---|---|---|---|",
    ]
    for s in summaries:
        spread = "missing" if s.mean is None else f"{100 * s.mean:.2f}" + ("" if s.std is None else f" ± {100 * s.std:.2f}")
        lines.append(f"| {s.dataset} | {format_fraction(s.fraction)} | {s.backbone} | {_pct(s.best_of_3)} | {spread} | {s.n_seeds} | {s.weights or '-'} |")
    return "\n".join(lines) + "\n"


def write_summary_csv(summaries: Sequence[CellSummary], path: Path) -> None:
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(SUMMARY_COLUMNS)
        for s in summaries:
            row = asdict(s)
            writer.writerow(["" if row[c] is None else row[c] for c in SUMMARY_COLUMNS])


def write_report(summaries: Sequence[CellSummary], out_dir: str | Path, title: str = "rayexp sweep") -> dict[str, Path]:
    """Write ``summary.csv`` and ``summary.md`` to ``out_dir``; returns their paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"csv": out / "summary.csv", "markdown": out / "summary.md"}
    write_summary_csv(summaries, paths["csv"])
    missing = sum(1 for s in summaries if s.n_seeds == 0)
    note = f"\n{missing} cell(s) have no finished seed yet and are shown as missing.\n" if missing else ""
    paths["markdown"].write_text(f"# {title}\n\nTop-1 test accuracy per (backbone, dataset, fraction).\n\n{markdown_table(summaries)}{note}")
    return paths


