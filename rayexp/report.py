"""The answer to "which backbone?": best of three and mean ± std per cell, the paper's tables and
figures, costs and a recommendation, as CSV, Markdown, PNG and one self-contained HTML page.

Built only from what :mod:`rayexp.tracking` reads back from MLflow, so a report can be rebuilt at any
time, for a complete or a partial sweep. A cell without a finished seed is shown as missing, never as 0.
The rules (ranks, ties, verdicts, chance) are :mod:`rayexp.results`'; the page is a :class:`ReportPage`
rendered by the templates ``report.md`` and ``report.html`` (:mod:`rayexp.rendering`).
"""

from __future__ import annotations

import csv
import json
import statistics
from collections import Counter
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from rayexp import figures, tracking
from rayexp.backbones import known_spec
from rayexp.backbones.specs import RANDOM_SUFFIX
from rayexp.grid import TrialKey, format_fraction
from rayexp.inference import Correlation, spearman
from rayexp.rendering import (
    ENV,
    MISSING,
    Cell,
    Table,
    figure_accuracy_vs_fraction,
    figure_heatmap,
    pct,
    row,
    spread,
    table_markdown,
    write_page,
)
from rayexp.results import (
    CellSummary,
    DomainRanking,
    Judgement,
    PredictionLoader,
    Predictions,
    Statistic,
    adjust,
    average_ranks,
    chance_text,
    current_results,
    dataset_ranks,
    domain_rankings,
    judge,
    places,
    rank_table,
    rules_text,
    scored,
    summarize,
)

INCOMPLETE_MARK = "†"  # fewer seeds finished than planned, or a seed stopped early
CHANCE_MARK = "°"  # mean accuracy not clearly above chance

SUMMARY_COLUMNS = (
    "backbone",
    "dataset",
    "domain",
    "fraction",
    "best_of_3",
    "mean",
    "std",
    "n_seeds",
    "n_planned",
    "n_stopped",
    "n_capped",
    "complete",
    "chance",
    "above_chance",
)
RANKS_COLUMNS = (
    "domain",
    "dataset",
    "fraction",
    "backbone",
    "rank",
    "best_of_3",
    "mean",
    "std",
    "n_seeds",
    "n_planned",
    "n_stopped",
    "complete",
    "above_chance",
)


def marks(s: CellSummary | None) -> str:
    """A cell's marks: :data:`INCOMPLETE_MARK` and :data:`CHANCE_MARK` where they apply."""
    if s is None or s.best_of_3 is None:
        return ""
    return ("" if s.complete else INCOMPLETE_MARK) + (CHANCE_MARK if s.above_chance is False else "")


def legend() -> str:
    return (
        f"{INCOMPLETE_MARK} incomplete cell (fewer seeds finished than planned, or a seed stopped early by a "
        f"scheduler or budget); {CHANCE_MARK} not clearly above chance."
    )


TOP_MARKED = 3  # places marked in the per-domain tables ...
FEW_BACKBONES = 4  # ... when a dataset has at least this many scored backbones; with fewer, only place 1


def top_mark(place: int | None, scored_backbones: int) -> int | None:
    """The place a cell is marked with in a per-domain table: a top-three place, or with fewer than
    :data:`FEW_BACKBONES` scored backbones on the dataset only the first place (else every cell would be)."""
    if place is None or place > (TOP_MARKED if scored_backbones >= FEW_BACKBONES else 1):
        return None
    return place


def marking_text(html: bool) -> str:
    """What the highlighted cells of the per-domain tables are."""
    how = "shaded" if html else "in bold"
    return (
        f"Top-1 test accuracy (%), best of the seeds with mean ± std in brackets; per dataset, every cell in a "
        f"top-three place {how} (ties included); on a dataset with fewer than {FEW_BACKBONES} backbones only "
        "the leader (place 1) is marked."
    )


def _csv_value(value: object) -> object:
    return "" if value is None else value


def summary_table(summaries: Sequence[CellSummary]) -> Table:
    """One row per cell, accuracies in percent, with its marks, seeds, weights and chance level."""
    head = [
        "dataset",
        "fraction",
        "backbone",
        "best of seeds (%)",
        "mean ± std (%)",
        "seeds",
        "weights",
        "chance (%)",
    ]
    rows = []
    for s in summaries:
        seeds = f"{s.n_seeds}/{s.n_planned}" if s.n_planned > s.n_seeds else str(s.n_seeds)
        seeds += f", {s.n_stopped} stopped early" if s.n_stopped else ""
        chance = "" if s.chance is None else f"{100 * s.chance:.2f}"
        rows.append(
            row(
                s.dataset,
                format_fraction(s.fraction),
                s.backbone,
                pct(s.best_of_3) + marks(s),
                spread(s.mean, s.std),
                seeds,
                s.weights or "-",
                chance,
            )
        )
    return Table(head, rows)


def markdown_table(summaries: Sequence[CellSummary]) -> str:
    """The summary as a Markdown table, accuracies in percent."""
    return table_markdown(summary_table(summaries))


@dataclass
class SummaryPage:
    """``summary.md``: the summary table alone."""

    title: str
    legend: str
    table: Table
    missing: int  # cells with no finished seed


def write_summary_csv(summaries: Sequence[CellSummary], path: Path) -> None:
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(SUMMARY_COLUMNS)
        for s in summaries:
            values = {**asdict(s), "complete": s.complete}
            writer.writerow([_csv_value(values[c]) for c in SUMMARY_COLUMNS])


def write_ranks_csv(summaries: Sequence[CellSummary], path: Path) -> None:
    """Every scored cell's average rank within its dataset and fraction (ties share their rank)."""
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(RANKS_COLUMNS)
        for fraction in sorted({s.fraction for s in summaries}, reverse=True):
            by_dataset = dataset_ranks(summaries, fraction)
            for dataset in sorted(by_dataset):
                for s in scored(summaries, dataset, fraction):
                    values = {**asdict(s), "rank": f"{by_dataset[dataset][s.backbone]:g}", "complete": s.complete}
                    writer.writerow([_csv_value(values[c]) for c in RANKS_COLUMNS])


def write_report(summaries: Sequence[CellSummary], out_dir: str | Path, title: str = "rayexp sweep") -> dict[str, Path]:
    """Write ``summary.csv``, ``ranks.csv`` and ``summary.md`` to ``out_dir``; returns their paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"csv": out / "summary.csv", "ranks": out / "ranks.csv", "markdown": out / "summary.md"}
    write_summary_csv(summaries, paths["csv"])
    write_ranks_csv(summaries, paths["ranks"])
    page = SummaryPage(title, legend(), summary_table(summaries), sum(1 for s in summaries if s.n_seeds == 0))
    paths["markdown"].write_text(ENV.get_template("summary.md").render(page=page))
    return paths


# ---------------------------------------------------------------- analysis (pure; no MLflow, no plotting)


def _by_cell(summaries: Sequence[CellSummary]) -> dict[tuple[str, str, float], CellSummary]:
    return {(s.backbone, s.dataset, s.fraction): s for s in summaries}


def imagenet_rank_correlation(summaries: Sequence[CellSummary], fraction: float) -> dict:
    """Spearman correlation between backbones' ImageNet top-1 rank and their mean fine-tuning rank, over the
    datasets Table 1 ranks (those where some backbone learned; a backbone with no score on one ranked last there),
    with a permutation p-value (:func:`rayexp.inference.spearman`). Average ranks for ties on both sides."""
    table = rank_table(summaries, sorted({s.dataset for s in summaries}), fraction, Statistic.BEST_OF_SEEDS)
    mean_rank = {b: rank for b, rank, _ in table.mean_ranks()}
    top1 = {b: spec.imagenet_top1 for b in mean_rank if (spec := known_spec(b)) and spec.imagenet_top1 is not None}
    backbones = sorted(top1)  # those whose source publishes an ImageNet top-1 (not timm's)
    imagenet = average_ranks({b: top1[b] for b in backbones})
    points = [(imagenet[b], mean_rank[b], b) for b in backbones]
    out = {"rho": None, "p": None, "points": points, "datasets": len(table.ranks), "at_chance": table.at_chance}
    if len(points) < 3:
        return out
    found: Correlation = spearman([p[0] for p in points], [p[1] for p in points])
    return {**out, "rho": found.rho, "p": found.p}


def cost_rows(results: Sequence[dict]) -> list[dict]:
    """Per backbone: parameters, ImageNet top-1 (where its source publishes one), fp32 weight size, device hours
    spent training, training images/second."""
    rows = []
    for backbone in sorted({r["backbone"] for r in results}):
        runs = [r for r in results if r["backbone"] == backbone and r.get("status") == tracking.FINISHED]
        seconds = sum(r.get("train_seconds") or 0.0 for r in runs)
        rates = [r["train_images_per_s"] for r in runs if r.get("train_images_per_s")]
        accelerators = sorted({r.get("accelerator") or "?" for r in runs})
        spec = known_spec(backbone)
        rows.append(
            {
                "backbone": backbone,
                "params_m": spec.params_m if spec else None,
                "imagenet_top1": spec.imagenet_top1 if spec else None,
                "weights_mb": round(spec.params_m * 4, 1) if spec else None,
                "device_hours": round(seconds / 3600, 4),
                "images_per_s": round(statistics.fmean(rates), 1) if rates else None,
                "accelerator": ", ".join(accelerators),
                "trials": len(runs),
            }
        )
    return rows


def _names(cells: Sequence[CellSummary]) -> str:
    return ", ".join(s.backbone for s in cells)


def _incomplete_note(*cells: CellSummary | None) -> str:
    parts = [
        f"{s.backbone} {s.incompleteness}"
        for s in cells
        if s is not None and s.best_of_3 is not None and not s.complete
    ]
    return f" Incomplete: {'; '.join(parts)}." if parts else ""


def _standing(s: CellSummary) -> str:
    std = f" ± {100 * s.std:.2f}" if s.std is not None else ""
    return f"mean {pct(s.mean)}{std} over {s.n_seeds} seed(s), best {pct(s.best_of_3)}"


def judgement_line(j: Judgement) -> str:
    """One dataset at one fraction in plain words: the leader by the mean over seeds and the verdict, a tie, or
    no answer at all."""
    where = f"{j.dataset} at {format_fraction(j.fraction)}"
    first = j.leaders[0]
    if j.kind == "chance":
        return (
            f"no backbone learned on {where}: the best mean accuracy, {pct(max(s.mean or 0.0 for s in j.leaders))}%, "
            f"is not clearly above chance ({chance_text(first)}); nothing is recommended here."
        )
    if j.kind == "tie":
        return (
            f"{where}: tie: {_names(j.leaders)} ({pct(first.mean)}% mean over seeds each): "
            f"equal means, choose on cost.{_incomplete_note(*j.leaders)}"
        )
    text = f"{where}: **{first.backbone}** ({_standing(first)})"
    if j.runner_up is None:
        return text + f", the only backbone with a finished seed.{_incomplete_note(first)}"
    return text + ", " + verdict_clause(j) + "." + _incomplete_note(first, j.runner_up)


def verdict_clause(j: Judgement) -> str:
    """The verdict on a judged leader, for the report and the recommendation alike: a clear lead and its
    evidence, or which backbones cannot be told apart from it and how small a lead the data can resolve."""
    second, v = j.runner_up, j.verdict
    against = f"against {second.backbone} ({pct(second.mean)}% mean): {v.text()}"
    if j.kind == "clear":
        return f"a clear lead over every other backbone ({j.claim_text()}); {against}"
    if j.kind == "unknown":
        unknown = [c.second for c in j.comparisons if c.outcome == "unknown"]
        return (
            f"but the seed noise is unknown against {', '.join(unknown)} (fewer than two seeds in common): run more "
            "seeds before trusting the order"
        )
    if j.held_within_cell:
        return (
            f"ahead of every other backbone within this cell ({j.claim_text()}): not a clear lead once the "
            f"{j.family} cells judged are counted; {against}"
        )
    others = [b for b in j.contenders if b != j.leaders[0].backbone]
    floor = j.noise_floor()
    return f"but it cannot be told apart from {', '.join(others)}: treat them as tied and choose on cost; {against}" + (
        f"; {floor}" if floor else ""
    )


def _domain_line(ranking: DomainRanking, at_top: dict[str, Judgement], top: float) -> str | None:
    """A domain's answer at the largest fraction: mean rank by the mean over seeds, and "use X" only when X also
    leads clearly (after the report's multiplicity adjustment) on at least one of its datasets."""
    if not ranking.rows:
        if not ranking.at_chance:
            return None
        return (
            f"**{ranking.domain}**: no recommendation — no backbone learned on {', '.join(ranking.at_chance)} "
            f"at {format_fraction(top)}."
        )
    best = ranking.rows[0]
    where = f"over {ranking.datasets} dataset(s) at {format_fraction(top)}, by the mean over seeds"
    if len(ranking.leaders) > 1:
        text = f"**{ranking.domain}**: tie: {', '.join(ranking.leaders)} — mean rank {best[1]:.1f} {where}"
    else:
        runner = f"; next {ranking.rows[1][0]} ({ranking.rows[1][1]:.1f})" if len(ranking.rows) > 1 else ""
        mine = [j for j in at_top.values() if j.leaders[0].domain == ranking.domain]
        clear = sum(1 for j in mine if j.kind == "clear" and j.leaders[0].backbone == best[0])
        datasets = sum(1 for j in mine if j.kind != "chance")
        if clear or len(ranking.rows) == 1:
            text = (
                f"**{ranking.domain}**: use **{best[0]}** — mean rank {best[1]:.1f} {where}{runner}; "
                f"a clear lead on {clear} of {datasets} dataset(s)"
            )
        else:  # first on ranks, but clearly ahead nowhere: no "use"
            text = (
                f"**{ranking.domain}**: no clear leader — {best[0]} ranks first "
                f"(mean rank {best[1]:.1f} {where}{runner}), "
                f"but its lead is clear on none of {datasets} dataset(s): treat the top as tied"
            )
    if ranking.at_chance:
        text += f"; left out, no backbone above chance: {', '.join(ranking.at_chance)}"
    if ranking.missing:
        text += f"; {len(ranking.missing)} cell(s) with no score ranked last: {_listed(ranking.missing)}"
    if ranking.incomplete:
        text += f"; {len(ranking.incomplete)} incomplete cell(s): {_listed(ranking.incomplete)}"
    return text + "."


def _listed(items: Sequence[str], shown: int = 5) -> str:
    return ", ".join(items[:shown]) + (" …" if len(items) > shown else "")


def recommendations(summaries: Sequence[CellSummary], judgements: Sequence[Judgement]) -> list[str]:
    """A plain-language recommendation per domain (mean rank by the mean over seeds at the largest fraction)
    and per dataset and fraction (:func:`rayexp.results.judge`), with its evidence."""
    if not judgements:
        return ["No finished trials yet: nothing to recommend."]
    top = max(s.fraction for s in summaries)
    at_top = {j.dataset: j for j in judgements if j.fraction == top}
    lines = [_domain_line(ranking, at_top, top) for ranking in domain_rankings(summaries, top, Statistic.MEAN)]
    return [line for line in lines if line is not None] + [judgement_line(j) for j in judgements]


# ---------------------------------------------------------------- tables


def _cell_text(s: CellSummary | None) -> str:
    if s is None or s.best_of_3 is None:
        return MISSING
    mean_std = f" ({100 * s.mean:.2f} ± {100 * s.std:.2f})" if s.std is not None else ""
    return f"{100 * s.best_of_3:.2f}{marks(s)}{mean_std}"


def _chance_row(summaries: Sequence[CellSummary], datasets: Sequence[str]) -> list[str]:
    chance = {s.dataset: s.chance for s in summaries if s.chance is not None}
    return [f"{100 * chance[d]:.2f}" if d in chance else "?" for d in datasets]


def domain_tables(summaries: Sequence[CellSummary]) -> list[dict]:
    """Per (domain, fraction): rows backbones, columns datasets, every cell in a top-three place marked
    (ties included; Tables 4–6; only place 1 on a dataset with fewer than four backbones: :func:`top_mark`),
    and the chance level of each dataset."""
    cells = _by_cell(summaries)
    tables = []
    for domain in sorted({s.domain for s in summaries}):
        datasets = sorted({s.dataset for s in summaries if s.domain == domain})
        for fraction in sorted({s.fraction for s in summaries if s.domain == domain}, reverse=True):
            backbones = sorted({s.backbone for s in summaries if s.domain == domain and s.fraction == fraction})
            place = {d: places({s.backbone: s.best_of_3 for s in scored(summaries, d, fraction)}) for d in datasets}
            rows = [
                (
                    b,
                    [
                        (_cell_text(cells.get((b, d, fraction))), top_mark(place[d].get(b), len(place[d])))
                        for d in datasets
                    ],
                )
                for b in backbones
            ]
            tables.append(
                {
                    "domain": domain,
                    "fraction": fraction,
                    "datasets": datasets,
                    "rows": rows,
                    "chance": _chance_row(summaries, datasets),
                }
            )
    return tables


def fraction_tables(summaries: Sequence[CellSummary]) -> list[dict]:
    """Per dataset: rows backbones, columns fractions, best of the seeds with marks (Tables 7–8), and chance."""
    cells = _by_cell(summaries)
    fractions = sorted({s.fraction for s in summaries}, reverse=True)
    out = []
    for dataset in sorted({s.dataset for s in summaries}):
        backbones = sorted({s.backbone for s in summaries if s.dataset == dataset})
        rows = [
            (
                b,
                [
                    pct(getattr(cells.get((b, dataset, f)), "best_of_3", None)) + marks(cells.get((b, dataset, f)))
                    for f in fractions
                ],
            )
            for b in backbones
        ]
        out.append(
            {"dataset": dataset, "fractions": fractions, "rows": rows, "chance": _chance_row(summaries, [dataset])[0]}
        )
    return out


def _table1_row(ranking: DomainRanking) -> tuple[list[str], str]:
    """Table 1's cells for one domain: the top three with mean ranks, and its notes (tie, cells with no score
    ranked last, incomplete, at chance)."""
    named = ([f"{b} ({r:.1f})" for b, r, _ in ranking.rows[:3]] + ["-"] * 3)[:3]
    notes = [
        ("tie: " + ", ".join(ranking.leaders)) if len(ranking.leaders) > 1 else "",
        f"{len(ranking.missing)} cell(s) with no score ranked last" if ranking.missing else "",
        f"{len(ranking.incomplete)} incomplete cell(s)" if ranking.incomplete else "",
        ("at chance: " + ", ".join(ranking.at_chance)) if ranking.at_chance else "",
    ]
    return named, "; ".join(n for n in notes if n)


def _domain_table(table: dict) -> Table:
    """A :func:`domain_tables` table as the page shows it."""
    return Table(
        head=["backbone", *table["datasets"]],
        rows=[
            [Cell(backbone), *(Cell(text, place, text == MISSING) for text, place in cells)]
            for backbone, cells in table["rows"]
        ],
        title=f"{table['domain']} — fraction {format_fraction(table['fraction'])}",
        chance=table["chance"],
    )


def _fraction_table(table: dict) -> Table:
    """A :func:`fraction_tables` table as the page shows it."""
    return Table(
        head=["backbone", *(format_fraction(f) for f in table["fractions"])],
        rows=[[Cell(backbone), *(Cell(v, missing=v == MISSING) for v in values)] for backbone, values in table["rows"]],
        title=table["dataset"],
        chance=[table["chance"]] * len(table["fractions"]),
    )


def _top_table(summaries: Sequence[CellSummary], top: float) -> Table:
    """Table 1: per domain, the top three backbones by mean rank (best of seeds, the paper's) at fraction
    ``top``, over how many datasets."""
    rows = []
    for ranking in domain_rankings(summaries, top):
        named, note = _table1_row(ranking)
        rows.append(row(ranking.domain, ranking.datasets, *named, note))
    return Table(
        head=["domain", "datasets", "1st", "2nd", "3rd", "notes"],
        rows=rows,
        title=f"Top backbones per domain (mean rank, best of seeds, at fraction {format_fraction(top)})",
    )


def _cost_table(costs: Sequence[dict]) -> Table:
    head = [
        "backbone",
        "params (M)",
        "ImageNet top-1 %",
        "weights (MB, fp32)",
        "device hours",
        "train images/s",
        "accelerator",
        "trials",
    ]
    rows = [
        row(
            c["backbone"],
            MISSING if c["params_m"] is None else c["params_m"],
            MISSING if c["imagenet_top1"] is None else c["imagenet_top1"],
            c["weights_mb"],
            c["device_hours"],
            MISSING if c["images_per_s"] is None else c["images_per_s"],
            c["accelerator"],
            c["trials"],
        )
        for c in costs
    ]
    return Table(head, rows)


def _rho_text(correlation: dict) -> str:
    if correlation["rho"] is None:
        return "not enough backbones"
    left_out = (
        f"; left out, no backbone above chance: {', '.join(correlation['at_chance'])}"
        if correlation.get("at_chance")
        else ""
    )
    return (
        f"Spearman rho = {correlation['rho']:.2f} (permutation p = {correlation['p']:.2g}) "
        f"over {len(correlation['points'])} backbones and {correlation.get('datasets', '?')} dataset(s){left_out}"
    )


def _family(found: Sequence[Judgement]) -> int:
    return max((j.family for j in found if j.p is not None), default=0)


def _selection(summaries: Sequence[CellSummary]) -> str:
    return next((s.selection for s in summaries if s.n_seeds), "test")


def selection_line(summaries: Sequence[CellSummary]) -> str:
    """The model-selection rule in force, in words (Markdown bold)."""
    return "Model selection: " + (
        "**val** — each trial's best epoch is chosen on a held-out validation split of its training rows; "
        "its test accuracy is reported."
        if _selection(summaries) == "val"
        else "**test** — each trial's best epoch is chosen on the test split, as the paper did; optimistic, "
        "and the same for every backbone."
    )


def header_lines(summaries: Sequence[CellSummary], results: Sequence[dict]) -> list[str]:
    """What a reader must know before the numbers: the selection rule in force, how ranks, ties, verdicts
    and chance are computed, and how many cells are incomplete, capped or at chance."""
    return [selection_line(summaries), rules_text(_selection(summaries)), *count_lines(summaries, results), legend()]


def verdicts_line(found: Sequence[Judgement], selection: str) -> str:
    """How the verdicts below were reached, for the header: what they rank by and the multiplicity control."""
    family = _family(found)
    text = (
        "**Verdicts** rank by the mean over seeds (the tables keep the paper's best of seeds); a lead is clear only "
        "after Holm over the leader's comparisons within a cell and Benjamini-Hochberg over the "
        f"{family} cell(s) judged here (false discovery rate 5%)."
    )
    if selection != "val":
        text += (
            " Under selection=test their intervals ignore that each trial's epoch was chosen on the same test "
            "images, so they are somewhat optimistic."
        )
    return text


def count_lines(summaries: Sequence[CellSummary], results: Sequence[dict]) -> list[str]:
    """How many cells are incomplete, how many trials were capped, how many cells are at chance."""
    lines = []
    scored_cells = [s for s in summaries if s.best_of_3 is not None]
    incomplete = sum(1 for s in scored_cells if not s.complete)
    if incomplete:
        lines.append(
            f"{incomplete} of {len(scored_cells)} cell(s) are incomplete ({INCOMPLETE_MARK}): fewer seeds finished "
            "than planned, or a seed was stopped early; their best of seeds is lower in expectation than a complete "
            "cell's."
        )
    capped = sum(1 for r in results if r.get("status") == tracking.FINISHED and r.get("capped"))
    if capped:
        lines.append(
            f"{capped} trial(s) hit the --max-epochs cap in a DualOpt phase (tagged `capped`): that phase ended at "
            "the cap, not by patience, so the accuracy may be lower than the protocol would reach."
        )
    at_chance = sum(1 for s in scored_cells if s.above_chance is False)
    if at_chance:
        lines.append(
            f"{at_chance} cell(s) are not clearly above chance ({CHANCE_MARK}); no backbone is recommended from them."
        )
    return lines


# ---------------------------------------------------------------- where the numbers come from

SETTING_NAMES = (  # the protocol_settings keys the header shows, in its words
    ("max_epochs_per_phase", "max epochs per phase"),
    ("patience", "patience"),
    ("precision", "precision"),
    ("selection", "selection"),
    ("val_share", "validation share"),
    ("dualopt", "DualOpt (AdamW, then SGD)"),
    ("normalize", "normalize"),
    ("augment", "augment"),
)
RANDOM_WEIGHTS = "random"


@dataclass
class Provenance:
    """What the runs in the tables were made from, for the page's header."""

    runs: int = 0  # finished runs in the tables
    random: int = 0  # of them, trained from random init for want of weights
    baselines: int = 0  # of them, "<name>+random" backbones: random init by design, beside the pretrained ones
    commits: list[str] = field(default_factory=list)  # their code_version tags
    settings: list[str] = field(default_factory=list)  # "patience: 5", ... from their protocol_settings tag
    settings_note: str = ""
    weights: str = ""  # "IMAGENET1K_V1 (1980 runs)"
    started: str = ""  # when the runs started: "2026-11-01 to 2026-11-03 (UTC)"

    @property
    def warning(self) -> str | None:
        if not self.random:
            return None
        return (
            f"{self.random} of {self.runs} runs trained from random init: these are not fine-tuning results "
            "(no ImageNet weights were loaded)."
        )

    @property
    def baseline_note(self) -> str | None:
        if not self.baselines:
            return None
        return (
            f"{self.baselines} of {self.runs} runs are random-init baselines by design (backbones named "
            f"…{RANDOM_SUFFIX}: the same architecture without pretraining, to measure what the weights are worth)."
        )


def _day(milliseconds: int) -> str:
    return datetime.fromtimestamp(milliseconds / 1000, timezone.utc).strftime("%Y-%m-%d")


def provenance(results: Sequence[dict], tags: Mapping[str, Mapping[str, str]]) -> Provenance:
    """The header's facts from the finished ``results`` in the tables and each run's ``tags`` (by run id;
    :func:`run_tags`): commits (``code_version``), protocol settings (``protocol_settings``, JSON), weights
    (the ``weights`` param, or the ``weights_origin`` tag) and how many runs started from random init."""
    finished = [r for r in results if r.get("status") == tracking.FINISHED]
    commits: set[str] = set()
    settings: Counter[str] = Counter()
    weights: Counter[str] = Counter()
    random = baselines = 0
    for r in finished:
        t = tags.get(r.get("run_id") or "", {})
        if t.get(tracking.CODE_VERSION_TAG):
            commits.add(t[tracking.CODE_VERSION_TAG])
        if t.get(tracking.SETTINGS_TAG):
            settings[t[tracking.SETTINGS_TAG]] += 1
        origin = t.get(tracking.WEIGHTS_TAG) or ""
        name = r.get("weights") or origin or "not recorded"
        weights[name] += 1
        if str(r.get("backbone") or "").endswith(RANDOM_SUFFIX):
            baselines += 1
        else:
            random += RANDOM_WEIGHTS in (origin, r.get("weights"))
    shown: list[str] = []
    note = "" if finished else "no finished run yet"
    if settings:
        text = settings.most_common(1)[0][0]
        try:
            found = json.loads(text)
        except ValueError:
            found = {}
        shown = [f"{label}: {_setting(found[key])}" for key, label in SETTING_NAMES if found.get(key) is not None]
        if len(settings) > 1:
            note = f"the runs record {len(settings)} different protocol settings; shown: those of the most runs"
    elif finished:
        note = "not recorded (the runs carry no protocol_settings tag)"
    starts = [r["start_time"] for r in finished if r.get("start_time")]
    return Provenance(
        runs=len(finished),
        random=random,
        baselines=baselines,
        commits=sorted(commits),
        settings=shown,
        settings_note=note,
        weights=", ".join(f"{name} ({n} runs)" for name, n in sorted(weights.items())),
        started=f"{_day(min(starts))} to {_day(max(starts))} (UTC)" if starts else "",
    )


def _setting(value: object) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    return str(value)


def run_tags(uri: str, experiment: str) -> dict[str, dict[str, str]]:
    """Each trial run's tags by run id (``tracking.trial_records``): its commit, protocol settings and weights."""
    return {record["run_id"]: record["tags"] for record in tracking.trial_records(uri, experiment).values()}


# ---------------------------------------------------------------- the verdicts as one table

VERDICT_WORDS = {
    "clear": "clear lead",
    "tied": "within noise: tied",
    "tie": "tie (equal means)",
    "chance": "nothing learned",
    "unknown": "seed noise unknown",
    "alone": "only one scored",
}


def _named(s: CellSummary | None) -> str:
    return "-" if s is None else f"{s.backbone} ({pct(s.mean)}{marks(s)})"


def verdict_table(found: Sequence[Judgement]) -> Table:
    """Every dataset and fraction in one row: leader(s) and runner-up by the mean over seeds, the verdict's kind,
    the difference and its 95% interval, the claim's p- and q-values, the backbones that cannot be told apart from
    the leader, and the rule and inputs; largest fraction first, then by domain and dataset."""
    rows = []
    for j in sorted(found, key=lambda j: (-j.fraction, j.leaders[0].domain, j.dataset)):
        v = j.verdict
        leader = ", ".join(_named(s) for s in j.leaders) if j.kind == "tie" else _named(j.leaders[0])
        numbers = v is not None and v.difference is not None and v.low is not None and v.high is not None
        others = [b for b in j.contenders if b != j.leaders[0].backbone] if j.kind not in ("tie", "chance") else []
        rows.append(
            [
                Cell(j.dataset),
                Cell(j.leaders[0].domain or "-"),
                Cell(format_fraction(j.fraction)),
                Cell(leader),
                Cell(_named(j.runner_up)),
                Cell(VERDICT_WORDS.get(j.kind, j.kind), css=f"verdict-{j.kind}"),
                Cell(f"{100 * v.difference:+.2f}" if numbers else "-"),
                Cell(f"[{100 * v.low:+.2f}, {100 * v.high:+.2f}]" if numbers else "-"),
                Cell("-" if j.p is None else f"{j.p:.2g} / {j.q:.2g}"),
                Cell(", ".join(others) or "-"),
                Cell(f"{v.rule}, {v.inputs}" if v is not None else "-"),
            ]
        )
    return Table(
        head=[
            "dataset",
            "domain",
            "fraction",
            "leader (mean %)",
            "runner-up",
            "verdict",
            "difference (points)",
            "95% interval",
            "p / q",
            "cannot be told apart",
            "evidence",
        ],
        rows=rows,
        title="Per dataset and fraction: leader, runner-up and verdict",
    )


# ---------------------------------------------------------------- the page


@dataclass
class ReportPage:
    """The report's content once, for ``report.md`` and ``report.html`` to render, in the page's order:
    header (with the random-init warning), Table 1 and the domain answers, the heatmaps, the accuracy-vs-fraction
    figures, the verdict table, then the detail."""

    title: str
    experiment: str
    date: str  # when the report was built
    provenance: Provenance
    selection: str  # the model-selection rule in force, in words (Markdown bold)
    notes: list[str]  # incomplete, capped, at-chance counts (Markdown bold/code)
    left_out: list[str]  # runs not in the tables (rayexp.results.current_results)
    top_table: Table  # Table 1
    domain_lines: list[str]  # one answer per domain (Markdown bold)
    heatmaps: list[Path]  # one per fraction, largest first
    fraction_figures: list[Path]  # accuracy vs fraction, one per dataset
    verdicts: Table  # one row per dataset and fraction
    verdict_lines: list[str]  # the same verdicts in words (Markdown bold)
    rules: list[str]  # how ranks, ties, verdicts and chance are computed; the marks' legend
    domain_tables: list[Table]
    fraction_tables: list[Table]
    correlation: str
    cost: Table
    figures: list[Path]  # the rest (the ImageNet-rank scatter)
    missing: int  # cells with no finished seed

    @property
    def marking_html(self) -> str:
        return marking_text(html=True)

    @property
    def marking_markdown(self) -> str:
        return marking_text(html=False)


def report_page(
    title: str,
    summaries: Sequence[CellSummary],
    results: Sequence[dict],
    costs: Sequence[dict],
    correlation: dict,
    found: Sequence[Judgement],
    figure_paths: Mapping[str, list[Path]],
    left_out: Sequence[str] = (),
    experiment: str = "",
    facts: Provenance | None = None,
    date: str | None = None,
) -> ReportPage:
    recs = recommendations(summaries, found)
    return ReportPage(
        title=title,
        experiment=experiment,
        date=date or datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        provenance=facts if facts is not None else provenance(results, {}),
        selection=selection_line(summaries).removeprefix("Model selection: "),
        notes=[verdicts_line(found, _selection(summaries)), *count_lines(summaries, results)],
        left_out=list(left_out),
        top_table=_top_table(summaries, max((s.fraction for s in summaries), default=1.0)),
        domain_lines=recs[: len(recs) - len(found)] if found else recs,
        heatmaps=list(figure_paths.get("heatmap", [])),
        fraction_figures=list(figure_paths.get("fraction", [])),
        verdicts=verdict_table(found),
        verdict_lines=[judgement_line(j) for j in found],
        rules=[rules_text(_selection(summaries), _family(found)), legend()],
        domain_tables=[_domain_table(t) for t in domain_tables(summaries)],
        fraction_tables=[_fraction_table(t) for t in fraction_tables(summaries)],
        correlation=_rho_text(correlation),
        cost=_cost_table(costs),
        figures=list(figure_paths.get("other", [])),
        missing=sum(1 for s in summaries if s.n_seeds == 0),
    )


def write_figures(summaries: Sequence[CellSummary], correlation: dict, out: Path) -> dict[str, list[Path]]:
    """The PNGs in ``out``: a heatmap per fraction (``heatmap``, largest fraction first), accuracy against
    fraction per dataset with two fractions or more (``fraction``) and, with a correlation, the ImageNet-rank
    scatter (``other``); returns the paths written by kind."""
    written: dict[str, list[Path]] = {"heatmap": [], "fraction": [], "other": []}
    for fraction in sorted({s.fraction for s in summaries}, reverse=True):
        path = out / f"fig_heatmap_{format_fraction(fraction)}.png"
        if figure_heatmap(summaries, fraction, path):
            written["heatmap"].append(path)
    for dataset in sorted({s.dataset for s in summaries}):
        path = out / f"fig_fraction_{dataset}.png"
        if figure_accuracy_vs_fraction(summaries, dataset, path):
            written["fraction"].append(path)
    if correlation["rho"] is not None:
        written["other"].append(out / "fig_imagenet_rank.png")
        figures.imagenet_rank(correlation["points"], correlation["rho"], correlation["p"], written["other"][-1])
    return written


def write_cost_csv(costs: Sequence[dict], path: Path) -> None:
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(costs[0]) if costs else ["backbone"])
        writer.writeheader()
        writer.writerows(costs)


# ---------------------------------------------------------------- from MLflow


def prediction_loader(uri: str) -> PredictionLoader:
    """Each trial row's test predictions from MLflow, read once per run."""
    cache: dict[str, Predictions | None] = {}

    def load(row: dict) -> Predictions | None:
        run_id = row.get("run_id")
        if not run_id:
            return None
        if run_id not in cache:
            found = tracking.fetch_predictions(uri, run_id)
            cache[run_id] = (
                None if found is None else Predictions(tuple(found[0]), np.asarray(found[1]), np.asarray(found[2]))
            )
        return cache[run_id]

    return load


def judgements(
    summaries: Sequence[CellSummary], results: Sequence[dict], load: PredictionLoader | None
) -> list[Judgement]:
    """Every dataset at every fraction judged by :func:`rayexp.results.judge`, largest fraction first, with
    Benjamini-Hochberg over all of them (:func:`rayexp.results.adjust`)."""
    out = []
    for dataset in sorted({s.dataset for s in summaries}):
        for fraction in sorted({s.fraction for s in summaries if s.dataset == dataset}, reverse=True):
            found = judge(summaries, results, dataset, fraction, load)
            if found is not None:
                out.append(found)
    return adjust(out)


def planned_keys(cells: Sequence[tuple], expected: Sequence[TrialKey] = ()) -> list[TrialKey]:
    """The keys a sweep set out to run, from its cells' parent runs (and ``expected``)."""
    keys = [TrialKey(b, d, f, seed) for b, d, f, _, seeds in cells for seed in seeds]
    keys += [TrialKey(b, d, f, 0) for b, d, f, _, seeds in cells if not seeds]
    return keys + list(expected)


def _sweep_summaries(
    uri: str, experiment: str, results: Sequence[dict], expected: Sequence[TrialKey] = ()
) -> list[CellSummary]:
    """Every planned cell of ``experiment`` summarized from ``results``, with its domain from the cell runs."""
    cells = tracking.fetch_cells(uri, experiment)
    summaries = summarize(results, expected=planned_keys(cells, expected))
    domains = {d: dom for _, d, _, dom, _ in cells if dom}
    return [CellSummary(**{**asdict(s), "domain": s.domain or domains.get(s.dataset, "")}) for s in summaries]


def _log_report(
    uri: str, experiment: str, out: Path, summaries: Sequence[CellSummary], results: Sequence[dict]
) -> None:
    run = tracking.summary_run(uri, experiment)
    run.log_artifacts(out, tracking.REPORT_ARTIFACTS)
    run.finish(
        {
            "cells": len(summaries),
            "cells_missing": sum(1 for s in summaries if s.n_seeds == 0),
            "cells_incomplete": sum(1 for s in summaries if s.best_of_3 is not None and not s.complete),
            "trials_finished": sum(1 for r in results if r.get("status") == tracking.FINISHED),
        }
    )


def render_report(
    out: Path,
    experiment: str,
    summaries: Sequence[CellSummary],
    results: Sequence[dict],
    left_out: Sequence[str] = (),
    tags: Mapping[str, Mapping[str, str]] | None = None,
    load: PredictionLoader | None = None,
) -> dict[str, Path]:
    """Every file of the report of ``experiment`` into ``out`` from what was read back: the cells'
    ``summaries``, the trial ``results`` in the tables, the notes on runs ``left_out``, each run's ``tags``
    (by run id) and the predictions ``load`` er (None: every verdict takes the summary rule). No MLflow here."""
    out.mkdir(parents=True, exist_ok=True)
    title = f"rayexp: {experiment}"
    paths = write_report(summaries, out, title=title)
    correlation = imagenet_rank_correlation(summaries, max((s.fraction for s in summaries), default=1.0))
    figure_paths = write_figures(summaries, correlation, out)
    costs = cost_rows(results)
    write_cost_csv(costs, out / "cost.csv")
    found = judgements(summaries, results, load)
    facts = provenance(results, tags or {})
    page = report_page(
        title, summaries, results, costs, correlation, found, figure_paths, left_out, experiment=experiment, facts=facts
    )
    markdown, html = write_page(page, out, "report")
    paths.update({"report_md": markdown, "html": html, "cost": out / "cost.csv"})
    paths.update({p.stem: p for kind in figure_paths.values() for p in kind})
    return paths


def build_report(
    uri: str,
    experiment: str,
    out_dir: str | Path,
    expected: Sequence[TrialKey] = (),
    log_to_mlflow: bool = True,
    paired: bool = True,
) -> dict[str, Path]:
    """Rebuild the whole report of ``experiment`` from MLflow into ``out_dir`` (and its summary run).

    ``paired=False`` reads no prediction artifacts: every verdict then takes the summary rule, and says so.
    """
    out = Path(out_dir)
    results, left_out = current_results(tracking.fetch_trial_results(uri, experiment))
    summaries = _sweep_summaries(uri, experiment, results, expected)
    paths = render_report(
        out,
        experiment,
        summaries,
        results,
        left_out,
        run_tags(uri, experiment),
        prediction_loader(uri) if paired else None,
    )
    if log_to_mlflow:
        _log_report(uri, experiment, out, summaries, results)
    return paths
