"""The answer to "which backbone?": best of three and mean ± std per cell, the paper's tables and
figures, costs and a recommendation, as CSV, Markdown, PNG and one self-contained HTML page.

Built only from what :mod:`rayexp.tracking` reads back from MLflow, so a report can be rebuilt at any
time, for a complete or a partial sweep. A cell without a finished seed is shown as missing, never as 0.
"""

from __future__ import annotations

import csv
import re
import statistics
from dataclasses import asdict
from pathlib import Path
from typing import Sequence

import numpy as np

from rayexp.grid import TrialKey, format_fraction
from rayexp.results import (
    CellSummary,
    DomainRanking,
    Judgement,
    PredictionLoader,
    Predictions,
    average_ranks,
    chance_text,
    current_results,
    dataset_ranks,
    domain_rankings,
    judge,
    places,
    rules_text,
    scored,
    summarize,
)

MISSING = "missing"
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


def pct(value: float | None) -> str:
    """An accuracy in percent with two decimals, or ``missing``."""
    return MISSING if value is None else f"{100 * value:.2f}"


def marks(s: CellSummary | None) -> str:
    """A cell's marks: :data:`INCOMPLETE_MARK` and :data:`CHANCE_MARK` where they apply."""
    if s is None or s.best_of_3 is None:
        return ""
    return ("" if s.complete else INCOMPLETE_MARK) + (CHANCE_MARK if s.above_chance is False else "")


def legend() -> str:
    return (
        f"{INCOMPLETE_MARK} incomplete cell (fewer seeds finished than planned, or a seed stopped early by a scheduler or budget); "
        f"{CHANCE_MARK} not clearly above chance."
    )


def _csv_value(value: object) -> object:
    return "" if value is None else value


def markdown_table(summaries: Sequence[CellSummary]) -> str:
    """The summary as a Markdown table, accuracies in percent."""
    lines = [
        "| dataset | fraction | backbone | best of seeds (%) | mean ± std (%) | seeds | weights | chance (%) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for s in summaries:
        spread = (
            "missing" if s.mean is None else f"{100 * s.mean:.2f}" + ("" if s.std is None else f" ± {100 * s.std:.2f}")
        )
        seeds = f"{s.n_seeds}/{s.n_planned}" if s.n_planned > s.n_seeds else str(s.n_seeds)
        seeds += f", {s.n_stopped} stopped early" if s.n_stopped else ""
        chance = "" if s.chance is None else f"{100 * s.chance:.2f}"
        lines.append(
            f"| {s.dataset} | {format_fraction(s.fraction)} | {s.backbone} | {pct(s.best_of_3)}{marks(s)} | {spread} | {seeds} | {s.weights or '-'} | {chance} |"
        )
    return "\n".join(lines) + "\n"


def write_summary_csv(summaries: Sequence[CellSummary], path: Path) -> None:
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(SUMMARY_COLUMNS)
        for s in summaries:
            row = {**asdict(s), "complete": s.complete}
            writer.writerow([_csv_value(row[c]) for c in SUMMARY_COLUMNS])


def write_ranks_csv(summaries: Sequence[CellSummary], path: Path) -> None:
    """Every scored cell's average rank within its dataset and fraction (ties share their rank)."""
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(RANKS_COLUMNS)
        for fraction in sorted({s.fraction for s in summaries}, reverse=True):
            by_dataset = dataset_ranks(summaries, fraction)
            for dataset in sorted(by_dataset):
                for s in scored(summaries, dataset, fraction):
                    row = {**asdict(s), "rank": f"{by_dataset[dataset][s.backbone]:g}", "complete": s.complete}
                    writer.writerow([_csv_value(row[c]) for c in RANKS_COLUMNS])


def write_report(summaries: Sequence[CellSummary], out_dir: str | Path, title: str = "rayexp sweep") -> dict[str, Path]:
    """Write ``summary.csv``, ``ranks.csv`` and ``summary.md`` to ``out_dir``; returns their paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"csv": out / "summary.csv", "ranks": out / "ranks.csv", "markdown": out / "summary.md"}
    write_summary_csv(summaries, paths["csv"])
    write_ranks_csv(summaries, paths["ranks"])
    missing = sum(1 for s in summaries if s.n_seeds == 0)
    note = f"\n{missing} cell(s) have no finished seed yet and are shown as missing.\n" if missing else ""
    paths["markdown"].write_text(
        f"# {title}\n\nTop-1 test accuracy per (backbone, dataset, fraction). {legend()}\n\n{markdown_table(summaries)}{note}"
    )
    return paths


# ---------------------------------------------------------------- analysis (pure; no MLflow, no plotting)


def _by_cell(summaries: Sequence[CellSummary]) -> dict[tuple[str, str, float], CellSummary]:
    return {(s.backbone, s.dataset, s.fraction): s for s in summaries}


def imagenet_rank_correlation(summaries: Sequence[CellSummary], fraction: float) -> dict:
    """Spearman correlation between backbones' ImageNet top-1 rank and their mean fine-tuning rank (average
    ranks for ties on both sides)."""
    from rayexp.backbones import REGISTRY

    collected: dict[str, list[float]] = {}
    for ranking in dataset_ranks(summaries, fraction).values():
        for backbone, rank in ranking.items():
            collected.setdefault(backbone, []).append(rank)
    backbones = sorted(b for b in collected if b in REGISTRY)
    imagenet = average_ranks({b: REGISTRY[b].imagenet_top1 for b in backbones})
    points = [(imagenet[b], statistics.fmean(collected[b]), b) for b in backbones]
    if len(points) < 3:
        return {"rho": None, "p": None, "points": points}
    from scipy.stats import spearmanr

    result = spearmanr([p[0] for p in points], [p[1] for p in points])
    return {"rho": float(result.statistic), "p": float(result.pvalue), "points": points}


def cost_rows(results: Sequence[dict]) -> list[dict]:
    """Per backbone: parameters, fp32 weight size, device hours spent training, training images/second."""
    from rayexp.backbones import REGISTRY

    rows = []
    for backbone in sorted({r["backbone"] for r in results}):
        runs = [r for r in results if r["backbone"] == backbone and r.get("status") == "FINISHED"]
        seconds = sum(r.get("train_seconds") or 0.0 for r in runs)
        rates = [r["train_images_per_s"] for r in runs if r.get("train_images_per_s")]
        accelerators = sorted({r.get("accelerator") or "?" for r in runs})
        spec = REGISTRY.get(backbone)
        rows.append(
            {
                "backbone": backbone,
                "params_m": spec.params_m if spec else None,
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


def judgement_line(j: Judgement) -> str:
    """One dataset at one fraction in plain words: the leader and the verdict, a tie, or no answer at all."""
    where = f"{j.dataset} at {format_fraction(j.fraction)}"
    first = j.leaders[0]
    if j.kind == "chance":
        return (
            f"no backbone learned on {where}: the best mean accuracy, {pct(max(s.mean or 0.0 for s in j.leaders))}%, is not clearly above "
            f"chance ({chance_text(first)}); nothing is recommended here."
        )
    if j.kind == "tie":
        return (
            f"{where}: tie: {_names(j.leaders)} ({pct(first.best_of_3)}% best of seeds each): equal on the paper's score, "
            f"choose on cost.{_incomplete_note(*j.leaders)}"
        )
    text = f"{where}: **{first.backbone}** ({pct(first.best_of_3)}% best of {first.n_seeds}, mean {pct(first.mean)}"
    text += (f" ± {100 * first.std:.2f}" if first.std is not None else "") + ")"
    if j.runner_up is None:
        return text + f", the only backbone with a finished seed.{_incomplete_note(first)}"
    second = j.runner_up
    text += (
        f", ahead of {second.backbone} by {100 * (first.best_of_3 - second.best_of_3):.2f} points — {j.verdict.text()}"
    )
    return text + "." + _incomplete_note(first, second)


def recommendations(summaries: Sequence[CellSummary], judgements: Sequence[Judgement]) -> list[str]:
    """A plain-language recommendation per domain (Table 1's mean rank at the largest fraction) and per
    dataset and fraction (:func:`rayexp.results.judge`), with its evidence."""
    fractions = sorted({s.fraction for s in summaries}, reverse=True)
    if not judgements:
        return ["No finished trials yet: nothing to recommend."]
    top = fractions[0]
    lines = []
    at_top = {j.dataset: j for j in judgements if j.fraction == top}
    for ranking in domain_rankings(summaries, top):
        where = f"over {{n}} dataset(s) at {format_fraction(top)}"
        if not ranking.rows:
            if ranking.at_chance:
                lines.append(
                    f"**{ranking.domain}**: no recommendation — no backbone learned on {', '.join(ranking.at_chance)} at {format_fraction(top)}."
                )
            continue
        leaders = ranking.leaders
        best = ranking.rows[0]
        if len(leaders) > 1:
            text = (
                f"**{ranking.domain}**: tie: {', '.join(leaders)} — mean rank {best[1]:.1f} {where.format(n=best[2])}"
            )
        else:
            runner = f"; next {ranking.rows[1][0]} ({ranking.rows[1][1]:.1f})" if len(ranking.rows) > 1 else ""
            clear = sum(
                1
                for j in at_top.values()
                if j.kind == "clear" and j.leaders[0].backbone == best[0] and j.leaders[0].domain == ranking.domain
            )
            datasets = sum(1 for j in at_top.values() if j.leaders[0].domain == ranking.domain and j.kind != "chance")
            if clear or len(ranking.rows) == 1:
                text = (
                    f"**{ranking.domain}**: use **{best[0]}** — mean rank {best[1]:.1f} {where.format(n=best[2])}{runner}; "
                    f"a clear lead on {clear} of {datasets} dataset(s)"
                )
            else:  # first on ranks, but clearly ahead nowhere: no "use"
                text = (
                    f"**{ranking.domain}**: no clear leader — {best[0]} ranks first (mean rank {best[1]:.1f} {where.format(n=best[2])}{runner}), "
                    f"but its lead is clear on none of {datasets} dataset(s): treat the top as tied"
                )
        if ranking.at_chance:
            text += f"; left out, no backbone above chance: {', '.join(ranking.at_chance)}"
        if ranking.incomplete:
            text += f"; {len(ranking.incomplete)} incomplete cell(s): {', '.join(ranking.incomplete[:5])}" + (
                " …" if len(ranking.incomplete) > 5 else ""
            )
        lines.append(text + ".")
    lines += [judgement_line(j) for j in judgements]
    return lines


# ---------------------------------------------------------------- rendering


def _cell_text(s: CellSummary | None) -> str:
    if s is None or s.best_of_3 is None:
        return MISSING
    spread = f" ({100 * s.mean:.2f} ± {100 * s.std:.2f})" if s.std is not None else ""
    return f"{100 * s.best_of_3:.2f}{marks(s)}{spread}"


def _chance_row(summaries: Sequence[CellSummary], datasets: Sequence[str]) -> list[str]:
    chance = {s.dataset: s.chance for s in summaries if s.chance is not None}
    return [f"{100 * chance[d]:.2f}" if d in chance else "?" for d in datasets]


def domain_tables(summaries: Sequence[CellSummary]) -> list[dict]:
    """Per (domain, fraction): rows backbones, columns datasets, every cell in a top-three place marked
    (ties included; Tables 4–6), and the chance level of each dataset."""
    cells = _by_cell(summaries)
    tables = []
    for domain in sorted({s.domain for s in summaries}):
        datasets = sorted({s.dataset for s in summaries if s.domain == domain})
        for fraction in sorted({s.fraction for s in summaries if s.domain == domain}, reverse=True):
            backbones = sorted({s.backbone for s in summaries if s.domain == domain and s.fraction == fraction})
            place = {d: places({s.backbone: s.best_of_3 for s in scored(summaries, d, fraction)}) for d in datasets}
            rows = []
            for backbone in backbones:
                rows.append(
                    (
                        backbone,
                        [(_cell_text(cells.get((backbone, d, fraction))), place[d].get(backbone)) for d in datasets],
                    )
                )
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


def _md_domain_table(table: dict) -> str:
    head = "| backbone | " + " | ".join(table["datasets"]) + " |\n|---|" + "---|" * len(table["datasets"]) + "\n"
    body = ""
    for backbone, row in table["rows"]:
        texts = [f"**{t}**" if r is not None and r <= 3 else t for t, r in row]
        body += f"| {backbone} | " + " | ".join(texts) + " |\n"
    return head + body + "| *chance* | " + " | ".join(table["chance"]) + " |\n"


def _pyplot():
    """matplotlib's pyplot on the file-only Agg backend (trial workers and servers have no display)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _rho_text(correlation: dict) -> str:
    if correlation["rho"] is None:
        return "not enough backbones"
    return f"Spearman rho = {correlation['rho']:.2f} (p = {correlation['p']:.2g}) over {len(correlation['points'])} backbones"


def figure_accuracy_vs_fraction(summaries: Sequence[CellSummary], dataset: str, path: Path, top: int = 3) -> bool:
    plt = _pyplot()

    cells = [s for s in summaries if s.dataset == dataset and s.best_of_3 is not None]
    fractions = sorted({s.fraction for s in cells})
    if len(fractions) < 2:
        return False
    at_top = scored(cells, dataset, fractions[-1])[:top]
    fig, ax = plt.subplots(figsize=(5, 3.5), dpi=100)
    for leader in at_top:
        points = sorted((s.fraction, 100 * s.best_of_3) for s in cells if s.backbone == leader.backbone)
        ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=leader.backbone)
    chance = next((s.chance for s in cells if s.chance is not None), None)
    if chance is not None:
        ax.axhline(100 * chance, color="grey", linestyle="--", linewidth=1, label=f"chance ({100 * chance:.1f}%)")
    ax.set_xscale("log")
    ax.set_xlabel("fraction of the training split")
    ax.set_ylabel("top-1 test accuracy (%), best of seeds")
    ax.set_title(f"{dataset}: accuracy vs training data")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return True


def _figure_imagenet_rank(correlation: dict, path: Path) -> bool:
    plt = _pyplot()

    if correlation["rho"] is None:
        return False
    fig, ax = plt.subplots(figsize=(5, 4), dpi=100)
    for x, y, name in correlation["points"]:
        ax.scatter(x, y)
        ax.annotate(name, (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax.set_xlabel("ImageNet top-1 rank")
    ax.set_ylabel("mean fine-tuning rank")
    ax.set_title(f"Spearman rho = {correlation['rho']:.2f} (p = {correlation['p']:.2g})")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return True


def confusion_png(confusion: Sequence[Sequence[int]], classes: Sequence[str], title: str = "") -> bytes:
    """The confusion matrix (rows true, columns predicted) as a PNG."""
    import io

    plt = _pyplot()

    n = len(confusion)
    size = min(12, 2 + 0.35 * n)
    fig, ax = plt.subplots(figsize=(size, size), dpi=100)
    ax.imshow(confusion, cmap="Blues")
    if n <= 30:
        ax.set_xticks(range(n), [str(c) for c in classes], rotation=90, fontsize=7)
        ax.set_yticks(range(n), [str(c) for c in classes], fontsize=7)
        for i in range(n):
            for j in range(n):
                if confusion[i][j]:
                    ax.text(j, i, str(confusion[i][j]), ha="center", va="center", fontsize=6)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    return buffer.getvalue()


def _table1_row(ranking: DomainRanking) -> tuple[list[str], str]:
    """Table 1's cells for one domain: the top three with mean ranks, and its notes (tie, incomplete, at chance)."""
    named = ([f"{b} ({r:.1f})" for b, r, _ in ranking.rows[:3]] + ["-"] * 3)[:3]
    notes = [
        ("tie: " + ", ".join(ranking.leaders)) if len(ranking.leaders) > 1 else "",
        f"{len(ranking.incomplete)} incomplete cell(s)" if ranking.incomplete else "",
        ("at chance: " + ", ".join(ranking.at_chance)) if ranking.at_chance else "",
    ]
    return named, "; ".join(n for n in notes if n)


def header_lines(summaries: Sequence[CellSummary], results: Sequence[dict]) -> list[str]:
    """What a reader must know before the numbers: the selection rule in force, how ranks, ties, verdicts
    and chance are computed, and how many cells are incomplete, capped or at chance."""
    selection = next((s.selection for s in summaries if s.n_seeds), "test")
    lines = [
        "Model selection: "
        + (
            "**val** — each trial's best epoch is chosen on a held-out validation split of its training rows; "
            "its test accuracy is reported."
            if selection == "val"
            else "**test** — each trial's best epoch is chosen on the test split, as the paper did; optimistic, "
            "and the same for every backbone."
        ),
        rules_text(selection),
    ]
    scored_cells = [s for s in summaries if s.best_of_3 is not None]
    incomplete = sum(1 for s in scored_cells if not s.complete)
    if incomplete:
        lines.append(
            f"{incomplete} of {len(scored_cells)} cell(s) are incomplete ({INCOMPLETE_MARK}): fewer seeds finished than planned, "
            "or a seed was stopped early; their best of seeds is lower in expectation than a complete cell's."
        )
    capped = sum(1 for r in results if r.get("status") == "FINISHED" and r.get("capped"))
    if capped:
        lines.append(
            f"{capped} trial(s) hit the --max-epochs cap in a DualOpt phase (tagged `capped`): that phase ended at the cap, "
            "not by patience, so the accuracy may be lower than the protocol would reach."
        )
    at_chance = sum(1 for s in scored_cells if s.above_chance is False)
    if at_chance:
        lines.append(
            f"{at_chance} cell(s) are not clearly above chance ({CHANCE_MARK}); no backbone is recommended from them."
        )
    return lines + [legend()]


def render_markdown(
    title: str,
    summaries: Sequence[CellSummary],
    costs: list[dict],
    correlation: dict,
    recs: list[str],
    figures: list[Path],
    left_out: Sequence[str] = (),
    header: Sequence[str] = (),
) -> str:
    parts = [
        f"# {title}\n",
        "Top-1 test accuracy (%), best of the seeds with mean ± std in brackets; every cell in a top-three place per dataset in bold.\n",
    ]
    parts += [f"{line}\n" for line in header]
    if left_out:
        parts.append(
            "**Runs not in these tables, or not verified** (a report holds one protocol and one version of each dataset):\n\n"
            + "\n".join(f"- {n}" for n in left_out)
            + "\n"
        )
    parts.append("## Recommendation\n\n" + "\n".join(f"- {line}" for line in recs) + "\n")
    for table in domain_tables(summaries):
        parts.append(
            f"## {table['domain']} — fraction {format_fraction(table['fraction'])}\n\n" + _md_domain_table(table)
        )
    fractions_md = []
    for table in fraction_tables(summaries):
        head = (
            "| backbone | "
            + " | ".join(format_fraction(f) for f in table["fractions"])
            + " |\n|---|"
            + "---|" * len(table["fractions"])
            + "\n"
        )
        chance = "| *chance* | " + " | ".join([table["chance"]] * len(table["fractions"])) + " |\n"
        fractions_md.append(
            f"### {table['dataset']}\n\n"
            + head
            + "".join(f"| {b} | " + " | ".join(v) + " |\n" for b, v in table["rows"])
            + chance
        )
    parts.append("## Accuracy by training fraction\n\n" + "\n".join(fractions_md))
    top = max((s.fraction for s in summaries), default=1.0)
    table1 = ""
    for ranking in domain_rankings(summaries, top):
        named, note = _table1_row(ranking)
        table1 += f"| {ranking.domain} | " + " | ".join(named) + f" | {note} |\n"
    parts.append(
        f"## Top backbones per domain (mean rank at fraction {format_fraction(top)})\n\n| domain | 1st | 2nd | 3rd | notes |\n|---|---|---|---|---|\n"
        + table1
    )
    rho = _rho_text(correlation)
    parts.append(f"## Does ImageNet accuracy predict fine-tuning accuracy?\n\n{rho}.\n")
    parts.append(
        "## Cost\n\n| backbone | params (M) | weights (MB, fp32) | device hours | train images/s | accelerator | trials |\n|---|---|---|---|---|---|---|\n"
        + "".join(
            f"| {c['backbone']} | {c['params_m']} | {c['weights_mb']} | {c['device_hours']} | {c['images_per_s'] if c['images_per_s'] is not None else MISSING} | {c['accelerator']} | {c['trials']} |\n"
            for c in costs
        )
    )
    parts.append("## Figures\n\n" + "".join(f"![{p.stem}]({p.name})\n" for p in figures))
    missing = sum(1 for s in summaries if s.n_seeds == 0)
    if missing:
        parts.append(f"\n{missing} cell(s) have no finished seed yet and are shown as missing.\n")
    return "\n".join(parts)


def render_html(
    title: str,
    summaries: Sequence[CellSummary],
    costs: list[dict],
    recs: list[str],
    correlation: dict,
    figures: list[Path],
    left_out: Sequence[str] = (),
    header: Sequence[str] = (),
) -> str:
    """One self-contained page (styles inline, figures embedded) with the same content as the Markdown."""
    import base64
    import html

    def esc(text: object) -> str:
        return html.escape(str(text))

    def bold(text: str) -> str:
        return re.sub(r"`(.+?)`", r"<code>\1</code>", re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", esc(text)))

    out = [
        f"<!doctype html><html><head><meta charset='utf-8'><title>{esc(title)}</title><style>"
        "body{font-family:sans-serif;margin:2em;max-width:1200px}table{border-collapse:collapse;margin:1em 0}"
        "td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}th:first-child,td:first-child{text-align:left}"
        "td.top1{background:#c6efce;font-weight:bold}td.top2{background:#e2f5e6;font-weight:bold}td.top3{background:#f1faf3;font-weight:bold}"
        "td.missing{color:#999;font-style:italic}tr.chance td{color:#666;font-style:italic}.rules{color:#333;font-size:0.9em}</style></head><body>",
        f"<h1>{esc(title)}</h1>",
        "<p>Top-1 test accuracy (%), best of the seeds with mean ± std in brackets; every cell in a top-three place per dataset highlighted.</p>",
    ]
    out += [f"<p class='rules'>{bold(line)}</p>" for line in header]
    if left_out:
        out.append(
            "<p class='left-out'><b>Runs not in these tables, or not verified</b> (a report holds one protocol and one version of each dataset):</p><ul>"
            + "".join(f"<li>{esc(n)}</li>" for n in left_out)
            + "</ul>"
        )
    out.append("<h2>Recommendation</h2><ul>" + "".join(f"<li>{bold(line)}</li>" for line in recs) + "</ul>")
    for table in domain_tables(summaries):
        out.append(
            f"<h2>{esc(table['domain'])} — fraction {format_fraction(table['fraction'])}</h2><table><tr><th>backbone</th>"
            + "".join(f"<th>{esc(d)}</th>" for d in table["datasets"])
            + "</tr>"
        )
        for backbone, row in table["rows"]:
            tds = "".join(
                f"<td class='{'missing' if t == MISSING else (f'top{r}' if r and r <= 3 else '')}'>{esc(t)}</td>"
                for t, r in row
            )
            out.append(f"<tr><td>{esc(backbone)}</td>{tds}</tr>")
        out.append(
            "<tr class='chance'><td>chance</td>"
            + "".join(f"<td>{esc(c)}</td>" for c in table["chance"])
            + "</tr></table>"
        )
    out.append("<h2>Accuracy by training fraction</h2>")
    for table in fraction_tables(summaries):
        out.append(
            f"<h3>{esc(table['dataset'])}</h3><table><tr><th>backbone</th>"
            + "".join(f"<th>{format_fraction(f)}</th>" for f in table["fractions"])
            + "</tr>"
        )
        out += [
            f"<tr><td>{esc(b)}</td>"
            + "".join(f"<td class='{'missing' if v == MISSING else ''}'>{esc(v)}</td>" for v in values)
            + "</tr>"
            for b, values in table["rows"]
        ]
        out.append(
            "<tr class='chance'><td>chance</td>"
            + f"<td>{esc(table['chance'])}</td>" * len(table["fractions"])
            + "</tr></table>"
        )
    top = max((s.fraction for s in summaries), default=1.0)
    out.append(
        f"<h2>Top backbones per domain (mean rank at fraction {format_fraction(top)})</h2><table><tr><th>domain</th><th>1st</th><th>2nd</th><th>3rd</th><th>notes</th></tr>"
    )
    for ranking in domain_rankings(summaries, top):
        named, note = _table1_row(ranking)
        out.append(
            f"<tr><td>{esc(ranking.domain)}</td>"
            + "".join(f"<td>{esc(n)}</td>" for n in named)
            + f"<td>{esc(note)}</td></tr>"
        )
    out.append("</table>")
    rho = _rho_text(correlation)
    out.append(f"<h2>Does ImageNet accuracy predict fine-tuning accuracy?</h2><p>{esc(rho)}.</p>")
    out.append(
        "<h2>Cost</h2><table><tr><th>backbone</th><th>params (M)</th><th>weights (MB, fp32)</th><th>device hours</th><th>train images/s</th><th>accelerator</th><th>trials</th></tr>"
    )
    out += [
        f"<tr><td>{esc(c['backbone'])}</td><td>{c['params_m']}</td><td>{c['weights_mb']}</td><td>{c['device_hours']}</td><td>{c['images_per_s'] if c['images_per_s'] is not None else MISSING}</td><td>{esc(c['accelerator'])}</td><td>{c['trials']}</td></tr>"
        for c in costs
    ]
    out.append("</table><h2>Figures</h2>")
    for path in figures:
        data = base64.b64encode(path.read_bytes()).decode()
        out.append(
            f"<figure><img alt='{esc(path.stem)}' src='data:image/png;base64,{data}'><figcaption>{esc(path.stem)}</figcaption></figure>"
        )
    out.append("</body></html>")
    return "\n".join(out)


def prediction_loader(uri: str) -> PredictionLoader:
    """Each trial row's test predictions from MLflow, read once per run."""
    from rayexp import tracking

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
    """Every dataset at every fraction judged by :func:`rayexp.results.judge`, largest fraction first."""
    out = []
    for dataset in sorted({s.dataset for s in summaries}):
        for fraction in sorted({s.fraction for s in summaries if s.dataset == dataset}, reverse=True):
            found = judge(summaries, results, dataset, fraction, load)
            if found is not None:
                out.append(found)
    return out


def planned_keys(cells: Sequence[tuple], expected: Sequence[TrialKey] = ()) -> list[TrialKey]:
    """The keys a sweep set out to run, from its cells' parent runs (and ``expected``)."""
    keys = [TrialKey(b, d, f, seed) for b, d, f, _, seeds in cells for seed in seeds]
    keys += [TrialKey(b, d, f, 0) for b, d, f, _, seeds in cells if not seeds]
    return keys + list(expected)


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
    from rayexp import tracking

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    results, left_out = current_results(tracking.fetch_trial_results(uri, experiment))
    cells = tracking.fetch_cells(uri, experiment)
    summaries = summarize(results, expected=planned_keys(cells, expected))
    domains = {d: dom for _, d, _, dom, _ in cells if dom}
    summaries = [CellSummary(**{**asdict(s), "domain": s.domain or domains.get(s.dataset, "")}) for s in summaries]
    title = f"rayexp: {experiment}"
    paths = write_report(summaries, out, title=title)
    top = max((s.fraction for s in summaries), default=1.0)
    correlation = imagenet_rank_correlation(summaries, top)
    figures = []
    for dataset in sorted({s.dataset for s in summaries}):
        path = out / f"fig_fraction_{dataset}.png"
        if figure_accuracy_vs_fraction(summaries, dataset, path):
            figures.append(path)
    if _figure_imagenet_rank(correlation, out / "fig_imagenet_rank.png"):
        figures.append(out / "fig_imagenet_rank.png")
    costs = cost_rows(results)
    with open(out / "cost.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(costs[0]) if costs else ["backbone"])
        writer.writeheader()
        writer.writerows(costs)
    recs = recommendations(summaries, judgements(summaries, results, prediction_loader(uri) if paired else None))
    header = header_lines(summaries, results)
    (out / "report.md").write_text(
        render_markdown(title, summaries, costs, correlation, recs, figures, left_out, header)
    )
    (out / "report.html").write_text(render_html(title, summaries, costs, recs, correlation, figures, left_out, header))
    paths.update({"report_md": out / "report.md", "html": out / "report.html", "cost": out / "cost.csv"})
    paths.update({p.stem: p for p in figures})
    if log_to_mlflow:
        run = tracking.summary_run(uri, experiment)
        run.log_artifacts(out, "report")
        run.finish(
            {
                "cells": len(summaries),
                "cells_missing": sum(1 for s in summaries if s.n_seeds == 0),
                "cells_incomplete": sum(1 for s in summaries if s.best_of_3 is not None and not s.complete),
                "trials_finished": sum(1 for r in results if r.get("status") == "FINISHED"),
            }
        )
    return paths
