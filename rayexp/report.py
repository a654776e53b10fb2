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

from rayexp.grid import TrialKey, format_fraction
from rayexp.results import CellSummary, current_results, summarize

MISSING = "missing"

SUMMARY_COLUMNS = ("backbone", "dataset", "domain", "fraction", "best_of_3", "mean", "std", "n_seeds")


def pct(value: float | None) -> str:
    """An accuracy in percent with two decimals, or ``missing``."""
    return MISSING if value is None else f"{100 * value:.2f}"


def markdown_table(summaries: Sequence[CellSummary]) -> str:
    """The summary as a Markdown table, accuracies in percent."""
    lines = [
        "| dataset | fraction | backbone | best of seeds (%) | mean ± std (%) | seeds | weights |",
        "|---|---|---|---|---|---|---|",
    ]
    for s in summaries:
        spread = "missing" if s.mean is None else f"{100 * s.mean:.2f}" + ("" if s.std is None else f" ± {100 * s.std:.2f}")
        lines.append(f"| {s.dataset} | {format_fraction(s.fraction)} | {s.backbone} | {pct(s.best_of_3)} | {spread} | {s.n_seeds} | {s.weights or '-'} |")
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




# ---------------------------------------------------------------- analysis (pure; no MLflow, no plotting)


def _by_cell(summaries: Sequence[CellSummary]) -> dict[tuple[str, str, float], CellSummary]:
    return {(s.backbone, s.dataset, s.fraction): s for s in summaries}


def ranks(summaries: Sequence[CellSummary], fraction: float) -> dict[str, dict[str, int]]:
    """Per dataset, each backbone's rank (1 = best) by best of three at ``fraction``; missing cells unranked."""
    out: dict[str, dict[str, int]] = {}
    for dataset in sorted({s.dataset for s in summaries}):
        cells = sorted((s for s in summaries if s.dataset == dataset and s.fraction == fraction and s.best_of_3 is not None), key=lambda s: -s.best_of_3)
        out[dataset] = {s.backbone: i + 1 for i, s in enumerate(cells)}
    return out


def mean_ranks_by_domain(summaries: Sequence[CellSummary], fraction: float) -> dict[str, list[tuple[str, float, int]]]:
    """Per domain, backbones by mean rank over the domain's datasets (Table 1): [(backbone, mean rank, datasets)]."""
    domain_of = {s.dataset: s.domain for s in summaries}
    per_dataset = ranks(summaries, fraction)
    out: dict[str, list[tuple[str, float, int]]] = {}
    for domain in sorted(set(domain_of.values())):
        collected: dict[str, list[int]] = {}
        for dataset, ranking in per_dataset.items():
            if domain_of[dataset] == domain:
                for backbone, rank in ranking.items():
                    collected.setdefault(backbone, []).append(rank)
        out[domain] = sorted(((b, statistics.fmean(r), len(r)) for b, r in collected.items()), key=lambda t: (t[1], t[0]))
    return out


def imagenet_rank_correlation(summaries: Sequence[CellSummary], fraction: float) -> dict:
    """Spearman correlation between backbones' ImageNet top-1 rank and their mean fine-tuning rank."""
    from rayexp.backbones import REGISTRY

    per_dataset = ranks(summaries, fraction)
    collected: dict[str, list[int]] = {}
    for ranking in per_dataset.values():
        for backbone, rank in ranking.items():
            collected.setdefault(backbone, []).append(rank)
    backbones = sorted(b for b in collected if b in REGISTRY)
    by_imagenet = sorted(backbones, key=lambda b: -REGISTRY[b].imagenet_top1)
    points = [(by_imagenet.index(b) + 1, statistics.fmean(collected[b]), b) for b in backbones]
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
        rows.append({
            "backbone": backbone,
            "params_m": spec.params_m if spec else None,
            "weights_mb": round(spec.params_m * 4, 1) if spec else None,
            "device_hours": round(seconds / 3600, 4),
            "images_per_s": round(statistics.fmean(rates), 1) if rates else None,
            "accelerator": ", ".join(accelerators),
            "trials": len(runs),
        })
    return rows


def _noise(s: CellSummary) -> float:
    return s.std or 0.0


def recommendations(summaries: Sequence[CellSummary]) -> list[str]:
    """A plain-language recommendation per domain and per dataset, with its evidence."""
    lines = []
    fractions = sorted({s.fraction for s in summaries}, reverse=True)
    if not fractions:
        return ["No finished trials yet: nothing to recommend."]
    top = fractions[0]
    for domain, ranking in mean_ranks_by_domain(summaries, top).items():
        if ranking:
            best = ranking[0]
            runner = f"; next {ranking[1][0]} ({ranking[1][1]:.1f})" if len(ranking) > 1 else ""
            lines.append(f"**{domain}**: use **{best[0]}** — mean rank {best[1]:.1f} over {best[2]} dataset(s) at {format_fraction(top)}{runner}.")
    for dataset in sorted({s.dataset for s in summaries}):
        for fraction in fractions:
            cells = sorted((s for s in summaries if s.dataset == dataset and s.fraction == fraction and s.best_of_3 is not None), key=lambda s: -s.best_of_3)
            if not cells:
                continue
            first = cells[0]
            text = f"{dataset} at {format_fraction(fraction)}: **{first.backbone}** ({pct(first.best_of_3)}% best of {first.n_seeds}"
            text += f", mean {pct(first.mean)}" + (f" ± {100 * first.std:.2f}" if first.std is not None else "") + ")"
            if len(cells) > 1:
                second = cells[1]
                margin = first.best_of_3 - second.best_of_3
                noisy = margin <= max(_noise(first), _noise(second)) or first.n_seeds < 2
                verdict = "within seed noise: treat them as tied" if noisy else "a margin larger than the seeds' spread"
                text += f", ahead of {second.backbone} by {100 * margin:.2f} points — {verdict}"
            lines.append(text + ".")
    return lines


# ---------------------------------------------------------------- rendering


def _cell_text(s: CellSummary | None) -> str:
    if s is None or s.best_of_3 is None:
        return MISSING
    spread = f" ({100 * s.mean:.2f} ± {100 * s.std:.2f})" if s.std is not None else ""
    return f"{100 * s.best_of_3:.2f}{spread}"


def domain_tables(summaries: Sequence[CellSummary]) -> list[dict]:
    """Per (domain, fraction): rows backbones, columns datasets, top three per dataset marked (Tables 4–6)."""
    cells = _by_cell(summaries)
    tables = []
    for domain in sorted({s.domain for s in summaries}):
        datasets = sorted({s.dataset for s in summaries if s.domain == domain})
        for fraction in sorted({s.fraction for s in summaries if s.domain == domain}, reverse=True):
            backbones = sorted({s.backbone for s in summaries if s.domain == domain and s.fraction == fraction})
            ranking = ranks(summaries, fraction)
            rows = []
            for backbone in backbones:
                row = []
                for dataset in datasets:
                    s = cells.get((backbone, dataset, fraction))
                    row.append((_cell_text(s), ranking.get(dataset, {}).get(backbone)))
                rows.append((backbone, row))
            tables.append({"domain": domain, "fraction": fraction, "datasets": datasets, "rows": rows})
    return tables


def fraction_tables(summaries: Sequence[CellSummary]) -> list[dict]:
    """Per dataset: rows backbones, columns fractions, best of three (Tables 7–8)."""
    cells = _by_cell(summaries)
    fractions = sorted({s.fraction for s in summaries}, reverse=True)
    out = []
    for dataset in sorted({s.dataset for s in summaries}):
        backbones = sorted({s.backbone for s in summaries if s.dataset == dataset})
        rows = [(b, [pct(getattr(cells.get((b, dataset, f)), "best_of_3", None)) for f in fractions]) for b in backbones]
        out.append({"dataset": dataset, "fractions": fractions, "rows": rows})
    return out


def _md_domain_table(table: dict) -> str:
    head = "| backbone | " + " | ".join(table["datasets"]) + " |\n|---|" + "---|" * len(table["datasets"]) + "\n"
    body = ""
    for backbone, row in table["rows"]:
        texts = [f"**{t}**" if r is not None and r <= 3 else t for t, r in row]
        body += f"| {backbone} | " + " | ".join(texts) + " |\n"
    return head + body


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
    at_top = sorted((s for s in cells if s.fraction == fractions[-1]), key=lambda s: -s.best_of_3)[:top]
    fig, ax = plt.subplots(figsize=(5, 3.5), dpi=100)
    for leader in at_top:
        points = sorted((s.fraction, 100 * s.best_of_3) for s in cells if s.backbone == leader.backbone)
        ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=leader.backbone)
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


def render_markdown(title: str, summaries: Sequence[CellSummary], costs: list[dict], correlation: dict, recs: list[str], figures: list[Path], left_out: Sequence[str] = ()) -> str:
    parts = [f"# {title}\n", "Top-1 test accuracy (%), best of the seeds with mean ± std in brackets; the top three per dataset in bold.\n"]
    if left_out:
        parts.append("**Runs not in these tables, or not verified** (a report holds one protocol and one version of each dataset):\n\n" + "\n".join(f"- {n}" for n in left_out) + "\n")
    parts.append("## Recommendation\n\n" + "\n".join(f"- {line}" for line in recs) + "\n")
    for table in domain_tables(summaries):
        parts.append(f"## {table['domain']} — fraction {format_fraction(table['fraction'])}\n\n" + _md_domain_table(table))
    fractions_md = []
    for table in fraction_tables(summaries):
        head = "| backbone | " + " | ".join(format_fraction(f) for f in table["fractions"]) + " |\n|---|" + "---|" * len(table["fractions"]) + "\n"
        fractions_md.append(f"### {table['dataset']}\n\n" + head + "".join(f"| {b} | " + " | ".join(v) + " |\n" for b, v in table["rows"]))
    parts.append("## Accuracy by training fraction\n\n" + "\n".join(fractions_md))
    top = max((s.fraction for s in summaries), default=1.0)
    parts.append(f"## Top backbones per domain (mean rank at fraction {format_fraction(top)})\n\n| domain | 1st | 2nd | 3rd |\n|---|---|---|---|\n" + "".join(
        f"| {d} | " + " | ".join(f"{b} ({r:.1f})" for b, r, _ in (ranking[:3] + [("-", 0.0, 0)] * 3)[:3]) + " |\n"
        for d, ranking in mean_ranks_by_domain(summaries, top).items()
    ).replace("- (0.0)", "-"))
    rho = _rho_text(correlation)
    parts.append(f"## Does ImageNet accuracy predict fine-tuning accuracy?\n\n{rho}.\n")
    parts.append("## Cost\n\n| backbone | params (M) | weights (MB, fp32) | device hours | train images/s | accelerator | trials |\n|---|---|---|---|---|---|---|\n" + "".join(
        f"| {c['backbone']} | {c['params_m']} | {c['weights_mb']} | {c['device_hours']} | {c['images_per_s'] if c['images_per_s'] is not None else MISSING} | {c['accelerator']} | {c['trials']} |\n" for c in costs
    ))
    parts.append("## Figures\n\n" + "".join(f"![{p.stem}]({p.name})\n" for p in figures))
    missing = sum(1 for s in summaries if s.n_seeds == 0)
    if missing:
        parts.append(f"\n{missing} cell(s) have no finished seed yet and are shown as missing.\n")
    return "\n".join(parts)


def render_html(title: str, markdown_text: str, summaries: Sequence[CellSummary], costs: list[dict], recs: list[str], correlation: dict, figures: list[Path], left_out: Sequence[str] = ()) -> str:
    """One self-contained page (styles inline, figures embedded) with the same content as the Markdown."""
    import base64
    import html

    def esc(text: object) -> str:
        return html.escape(str(text))

    def bold(text: str) -> str:
        return re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", esc(text))

    out = [f"<!doctype html><html><head><meta charset='utf-8'><title>{esc(title)}</title><style>"
           "body{font-family:sans-serif;margin:2em;max-width:1200px}table{border-collapse:collapse;margin:1em 0}"
           "td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}th:first-child,td:first-child{text-align:left}"
           "td.top1{background:#c6efce;font-weight:bold}td.top2{background:#e2f5e6;font-weight:bold}td.top3{background:#f1faf3;font-weight:bold}"
           "td.missing{color:#999;font-style:italic}</style></head><body>", f"<h1>{esc(title)}</h1>",
           "<p>Top-1 test accuracy (%), best of the seeds with mean ± std in brackets; the top three per dataset highlighted.</p>",
           "<h2>Recommendation</h2><ul>" + "".join(f"<li>{bold(line)}</li>" for line in recs) + "</ul>"]
    if left_out:
        out.insert(3, "<p class='left-out'><b>Runs not in these tables, or not verified</b> (a report holds one protocol and one version of each dataset):</p><ul>"
                   + "".join(f"<li>{esc(n)}</li>" for n in left_out) + "</ul>")
    for table in domain_tables(summaries):
        out.append(f"<h2>{esc(table['domain'])} — fraction {format_fraction(table['fraction'])}</h2><table><tr><th>backbone</th>" + "".join(f"<th>{esc(d)}</th>" for d in table["datasets"]) + "</tr>")
        for backbone, row in table["rows"]:
            tds = "".join(f"<td class='{'missing' if t == MISSING else (f'top{r}' if r and r <= 3 else '')}'>{esc(t)}</td>" for t, r in row)
            out.append(f"<tr><td>{esc(backbone)}</td>{tds}</tr>")
        out.append("</table>")
    out.append("<h2>Accuracy by training fraction</h2>")
    for table in fraction_tables(summaries):
        out.append(f"<h3>{esc(table['dataset'])}</h3><table><tr><th>backbone</th>" + "".join(f"<th>{format_fraction(f)}</th>" for f in table["fractions"]) + "</tr>")
        out += [f"<tr><td>{esc(b)}</td>" + "".join(f"<td class='{'missing' if v == MISSING else ''}'>{esc(v)}</td>" for v in values) + "</tr>" for b, values in table["rows"]]
        out.append("</table>")
    rho = _rho_text(correlation)
    out.append(f"<h2>Does ImageNet accuracy predict fine-tuning accuracy?</h2><p>{esc(rho)}.</p>")
    out.append("<h2>Cost</h2><table><tr><th>backbone</th><th>params (M)</th><th>weights (MB, fp32)</th><th>device hours</th><th>train images/s</th><th>accelerator</th><th>trials</th></tr>")
    out += [f"<tr><td>{esc(c['backbone'])}</td><td>{c['params_m']}</td><td>{c['weights_mb']}</td><td>{c['device_hours']}</td><td>{c['images_per_s'] if c['images_per_s'] is not None else MISSING}</td><td>{esc(c['accelerator'])}</td><td>{c['trials']}</td></tr>" for c in costs]
    out.append("</table><h2>Figures</h2>")
    for path in figures:
        data = base64.b64encode(path.read_bytes()).decode()
        out.append(f"<figure><img alt='{esc(path.stem)}' src='data:image/png;base64,{data}'><figcaption>{esc(path.stem)}</figcaption></figure>")
    out.append("</body></html>")
    return "\n".join(out)


def build_report(uri: str, experiment: str, out_dir: str | Path, expected: Sequence[TrialKey] = (), log_to_mlflow: bool = True) -> dict[str, Path]:
    """Rebuild the whole report of ``experiment`` from MLflow into ``out_dir`` (and its summary run)."""
    from rayexp import tracking

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    results, left_out = current_results(tracking.fetch_trial_results(uri, experiment))
    cells = tracking.fetch_cells(uri, experiment)
    planned = [TrialKey(b, d, f, 0) for b, d, f, _ in cells] + list(expected)
    summaries = summarize(results, expected=planned)
    domains = {d: dom for _, d, _, dom in cells if dom}
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
    recs = recommendations(summaries)
    markdown_text = render_markdown(title, summaries, costs, correlation, recs, figures, left_out)
    (out / "report.md").write_text(markdown_text)
    (out / "report.html").write_text(render_html(title, markdown_text, summaries, costs, recs, correlation, figures, left_out))
    paths.update({"report_md": out / "report.md", "html": out / "report.html", "cost": out / "cost.csv"})
    paths.update({p.stem: p for p in figures})
    if log_to_mlflow:
        run = tracking.summary_run(uri, experiment)
        run.log_artifacts(out, "report")
        run.finish({
            "cells": len(summaries), "cells_missing": sum(1 for s in summaries if s.n_seeds == 0),
            "trials_finished": sum(1 for r in results if r.get("status") == "FINISHED"),
        })
    return paths
