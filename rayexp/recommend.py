"""The recommendation for one user's dataset: backbones ranked, with cost, a verdict and the paper's prior.

Built from MLflow alone, like :mod:`rayexp.report`, so it can be rebuilt after an interrupted or a
budget-limited sweep. Ranking, ties, chance level and the verdict are :mod:`rayexp.results`' rules, the
very ones the sweep report applies, at the largest fraction trained: ranked by the mean over seeds (the best
of the seeds, the paper's score, beside it), tied means share their rank, and "use X" is said only when X is
above chance and its lead over every other backbone is clear on paired comparisons over the same test images
and seeds, after the report's multiplicity adjustment. Backbones a scheduler or a budget stopped early are
listed with the accuracy they had reached, and keys that never ran are named: a partial answer never
looks complete.
"""

from __future__ import annotations

import csv
import json
import statistics
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

from rayexp import tracking
from rayexp.backbones import known_spec
from rayexp.grid import TrialKey, format_fraction
from rayexp.priors import LIGHTWEIGHT, prior_for
from rayexp.rendering import Table, figure_accuracy_vs_fraction, pct, row, spread, write_page
from rayexp.report import judgements, prediction_loader, verdict_clause
from rayexp.results import (
    CellSummary,
    Judgement,
    PredictionLoader,
    Statistic,
    average_ranks,
    chance_text,
    current_results,
    rules_text,
    scored,
    summarize,
)

RANKING_COLUMNS = (
    "rank",
    "backbone",
    "mean",
    "std",
    "best_of_seeds",
    "n_seeds",
    "n_planned",
    "complete",
    "above_chance",
    "params_m",
    "imagenet_top1",
    "train_device_hours",
    "train_images_per_s",
    "inference_images_per_s",
    "stopped_early",
    "weights",
)


@dataclass
class Ranked:
    """One backbone's standing on the user's dataset at one fraction."""

    backbone: str
    mean: float | None
    std: float | None
    best: float | None
    n_seeds: int
    params_m: float | None
    device_hours: float
    train_images_per_s: float | None
    inference_images_per_s: float | None
    imagenet_top1: float | None = None  # where the backbone's source publishes one (not timm's)
    stopped: list[dict] = field(default_factory=list)  # seed, epochs_run, best_test_acc, stopped_by
    weights: str = ""
    rank: float | None = None  # average rank by the mean over seeds; ties share it
    cell: CellSummary | None = None


def _mean(values: Sequence[float | None]) -> float | None:
    values = [v for v in values if v is not None]
    return statistics.fmean(values) if values else None


def rank_backbones(
    results: Sequence[dict],
    dataset: str,
    fraction: float,
    backbones: Sequence[str] = (),
    seeds: Sequence[int] = (),
) -> list[Ranked]:
    """Every backbone with a run (or listed in ``backbones``) on ``dataset`` at ``fraction``, best first;
    ``seeds`` are the seeds planned for each, so that a cell missing one is marked incomplete.

    Order: :func:`rayexp.results.scored` by the mean over seeds (ties by the best of the seeds, then name), each
    with its average rank; backbones with no finished seed come last, unranked.
    """
    rows = [r for r in results if r["dataset"] == dataset and float(r["fraction"]) == fraction]
    cells = summarize(
        rows, expected=[TrialKey(b, dataset, fraction, seed) for b in backbones for seed in (seeds or (0,))]
    )
    ranked_cells = scored(cells, dataset, fraction, Statistic.MEAN)
    ranks = average_ranks({c.backbone: c.mean for c in ranked_cells})
    ranked = []
    for cell in ranked_cells + sorted((c for c in cells if c.best_of_3 is None), key=lambda c: c.backbone):
        runs = [r for r in rows if r["backbone"] == cell.backbone and r.get("status") == tracking.FINISHED]
        spec = known_spec(cell.backbone)
        ranked.append(
            Ranked(
                backbone=cell.backbone,
                mean=cell.mean,
                std=cell.std,
                best=cell.best_of_3,
                n_seeds=cell.n_seeds,
                params_m=spec.params_m if spec else None,
                imagenet_top1=spec.imagenet_top1 if spec else None,
                device_hours=sum(r.get("train_seconds") or 0.0 for r in runs) / 3600,
                train_images_per_s=_mean([r.get("train_images_per_s") for r in runs]),
                inference_images_per_s=_mean([r.get("inference_images_per_s") for r in runs]),
                stopped=[
                    {
                        "seed": r["seed"],
                        "epochs_run": r.get("epochs_run"),
                        "best_test_acc": r.get("best_test_acc"),
                        "stopped_by": r["stopped_by"],
                    }
                    for r in sorted(runs, key=lambda r: r["seed"])
                    if r.get("stopped_by")
                ],
                weights=cell.weights,
                rank=ranks.get(cell.backbone),
                cell=cell,
            )
        )
    return ranked


def _cheapest(names: Sequence[str], ranked: Sequence[Ranked]) -> str:
    found = [r for r in ranked if r.backbone in names and r.params_m]
    if not found:
        return "."
    cheapest = min(found, key=lambda r: r.params_m)
    return f" ({cheapest.backbone} has the fewest parameters: {cheapest.params_m} M)."


_RANDOM_INIT = (
    " These backbones trained from random initialisation (no pretrained weights), so this is not a fine-tuning result."
)


def verdict(ranked: Sequence[Ranked], dataset: str, judgement: Judgement | None) -> str:
    """The answer in plain words, from :func:`rayexp.results.judge`: use the leader when its lead over every other
    backbone is clear, the backbones that cannot be told apart to be settled on cost (and what would settle it),
    or no answer when nothing learned."""
    done = [r for r in ranked if r.mean is not None]
    if judgement is None or not done:
        return f"No backbone has a finished seed on {dataset} yet: nothing to recommend."
    first = done[0]
    kind = judgement.kind
    if kind == "chance":
        leader = judgement.leaders[0]
        text = (
            f"No backbone learned on {dataset}: the best mean test accuracy, "
            f"{pct(max(s.mean or 0.0 for s in judgement.leaders))}%, is not clearly above chance "
            f"({chance_text(leader)}). "
            "Nothing is recommended: check the labels and the data check, train longer, or add data."
        )
        return text + (_RANDOM_INIT if "random" in (first.weights or "") else "")
    standing = (
        f"{spread(first.mean, first.std)}% mean test accuracy over {first.n_seeds} seed(s), best {pct(first.best)}%."
    )
    if kind == "tie":
        names = [s.backbone for s in judgement.leaders]
        text = (
            f"Tie on {dataset}: {', '.join(names)} score {pct(judgement.leaders[0].mean)}% mean over seeds each; "
            "choose on cost" + _cheapest(names, ranked)
        )
    elif kind == "alone":
        text = f"Use **{first.backbone}** for {dataset}: {standing} It is the only backbone with a finished seed."
    elif kind == "clear":
        text = f"Use **{first.backbone}** for {dataset}: {standing} It has {verdict_clause(judgement)}."
    else:
        names = list(judgement.contenders)
        text = f"**{first.backbone}** leads on {dataset}: {standing} It has the best mean, {verdict_clause(judgement)}"
        cheapest = _cheapest(names, ranked).strip(" ().")
        text += "." + (f" {cheapest}." if cheapest and kind != "unknown" else "")
        settle = judgement.settle_text()
        if settle and kind != "unknown":
            text += f" To settle it: {settle}."
    incomplete = [r for r in done[:2] if r.cell is not None and not r.cell.complete]
    if incomplete:
        text += (
            " Incomplete: "
            + "; ".join(f"{r.backbone} {r.cell.incompleteness}" for r in incomplete)
            + ", so its final accuracy may be higher."
        )
    if "random" in (first.weights or ""):
        text += _RANDOM_INIT
    return text


def prior_text(domain: str, ranked: Sequence[Ranked]) -> list[str]:
    """The paper's prior for ``domain`` and how the measured ranking compares with it."""
    prior, specific = prior_for(domain)
    which = f"the {domain} domain" if specific else f"a domain it did not study ({domain}), its general advice"
    lines = [
        f"The paper's prior for {which} "
        f"(from its text; its tables were lost): favoured {', '.join(prior.favoured)}"
        + (f"; cautioned against {', '.join(prior.cautioned)}" if prior.cautioned else "")
        + ".",
        f"“{prior.evidence}”",
        LIGHTWEIGHT,
    ]
    done = [r.backbone for r in ranked if r.mean is not None]
    if done:
        top = done[: min(3, len(done))]
        agree = [b for b in top if b in prior.favoured]
        warned = [b for b in top if b in prior.cautioned]
        measured = f"Measured top {len(top)}: {', '.join(top)}"
        if agree:
            measured += f"; the paper also favours {', '.join(agree)}"
        if warned:
            measured += f"; the paper cautioned against {', '.join(warned)}, yet it did well on this data"
        if not agree and not warned:
            measured += "; none of them is among the paper's favourites for this domain"
        lines.append(measured + ".")
    return lines


def write_ranking_csv(ranked: Sequence[Ranked], path: Path) -> None:
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(RANKING_COLUMNS)
        for i, r in enumerate(ranked, 1):
            cell = r.cell
            writer.writerow(
                [
                    "" if r.rank is None else f"{r.rank:g}",
                    r.backbone,
                    r.mean,
                    r.std,
                    r.best,
                    r.n_seeds,
                    cell.n_planned if cell else "",
                    cell.complete if cell else "",
                    "" if cell is None or cell.above_chance is None else cell.above_chance,
                    r.params_m,
                    r.imagenet_top1,
                    round(r.device_hours, 5),
                    r.train_images_per_s,
                    r.inference_images_per_s,
                    len(r.stopped),
                    r.weights,
                ]
            )


def _stopped_text(stop: dict) -> str:
    return (
        f"seed {stop['seed']} stopped by {stop['stopped_by']} after {stop['epochs_run']:.0f} epochs "
        f"at {pct(stop['best_test_acc'])}%"
    )


def _stopped_line(r: Ranked) -> str:
    return f"{r.backbone}: " + "; ".join(_stopped_text(s) for s in r.stopped if s["epochs_run"] is not None)


def ranking_table(ranked: Sequence[Ranked], fraction: float) -> Table:
    """The ranking as the pages show it: rank, accuracy, seeds, cost and early stops per backbone."""
    head = [
        "rank (by mean)",
        "backbone",
        "test acc % (mean ± std)",
        "best of seeds %",
        "seeds",
        "params (M)",
        "ImageNet top-1 %",
        "train device-hours",
        "train img/s",
        "inference img/s",
        "weights",
        "stopped early",
    ]
    rows = []
    for r in ranked:
        seeds = str(r.n_seeds) if r.cell is None or r.cell.n_planned <= r.n_seeds else f"{r.n_seeds}/{r.cell.n_planned}"
        chance = " (not above chance)" if r.cell is not None and r.cell.above_chance is False else ""
        rows.append(
            row(
                f"{r.rank:g}" if r.rank is not None else "-",
                r.backbone,
                spread(r.mean, r.std),
                pct(r.best) + chance,
                seeds,
                "" if r.params_m is None else f"{r.params_m:g}",
                "" if r.imagenet_top1 is None else f"{r.imagenet_top1:.1f}",
                f"{r.device_hours:.4f}",
                "" if r.train_images_per_s is None else f"{r.train_images_per_s:.0f}",
                "" if r.inference_images_per_s is None else f"{r.inference_images_per_s:.0f}",
                r.weights or "-",
                ", ".join(_stopped_text(s) for s in r.stopped if s["epochs_run"] is not None),
            )
        )
    return Table(
        head,
        rows,
        title=f"Ranking at fraction {format_fraction(fraction)}",
        leader=bool(ranked) and ranked[0].rank is not None,
    )


@dataclass
class Recommendation:
    dataset: str
    domain: str
    fraction: float
    ranked: list[Ranked]
    verdict: str
    prior: list[str]
    not_run: list[str]
    curves: dict[float, list[Ranked]]  # with several fractions: the ranking at each, for the learning curves
    check: dict | None = None
    left_out: list[str] = field(default_factory=list)  # runs of other fingerprints (rayexp.results.current_results)
    judgement: Judgement | None = None

    @property
    def rules(self) -> str:
        """How ranks, ties, the verdict and chance were computed (:func:`rayexp.results.rules_text`)."""
        selection = next((r.cell.selection for r in self.ranked if r.cell is not None and r.n_seeds), "test")
        return rules_text(selection, self.judgement.family if self.judgement is not None else 0)


def recommend(
    results: Sequence[dict],
    dataset: str,
    domain: str,
    expected: Sequence[TrialKey] = (),
    check: dict | None = None,
    load: PredictionLoader | None = None,
) -> Recommendation:
    """The recommendation's content from trial results (``tracking.fetch_trial_results``); ``load`` gives a
    trial's test predictions for the paired verdict (without it, the summary rule, said as such)."""
    fractions = sorted(
        {float(r["fraction"]) for r in results if r["dataset"] == dataset} | {k.fraction for k in expected}
    )
    top = fractions[-1] if fractions else 1.0
    backbones = sorted({k.backbone for k in expected})
    seeds = sorted({k.seed for k in expected})
    ranked = rank_backbones(results, dataset, top, backbones, seeds)
    ran = {r["key"] for r in results}
    not_run = [str(k) for k in expected if str(k) not in ran]
    curves = {f: rank_backbones(results, dataset, f, backbones, seeds) for f in fractions} if len(fractions) > 1 else {}
    mine = [r for r in results if r["dataset"] == dataset]
    judged = judgements(summarize(mine, expected=[k for k in expected if k.dataset == dataset]), mine, load)
    judgement = next((j for j in judged if j.fraction == top), None)
    return Recommendation(
        dataset,
        domain,
        top,
        ranked,
        verdict(ranked, dataset, judgement),
        prior_text(domain, ranked),
        not_run,
        curves,
        check,
        judgement=judgement,
    )


@dataclass
class RecommendationPage:
    """A recommendation's content once, for ``recommendation.md`` and ``recommendation.html`` to render."""

    title: str
    verdict: str  # Markdown bold
    left_out: list[str]
    ranking: Table
    prior: list[str]
    rules: str
    stopped: list[str]  # backbones stopped early, and the keys never started
    figure: Path | None
    check: list[str] | None  # the data check's lines
    use: list[str] | None = None  # the registered winner: what it is, then the commands that load and serve it


def recommendation_page(rec: Recommendation, figure: Path | None, use: list[str] | None = None) -> RecommendationPage:
    stopped = [_stopped_line(r) for r in rec.ranked if r.stopped]
    if rec.not_run:
        stopped.append(f"never started (the budget was spent first): {', '.join(rec.not_run)}")
    return RecommendationPage(
        title=f"Which backbone for {rec.dataset}?",
        verdict=rec.verdict,
        left_out=rec.left_out,
        ranking=ranking_table(rec.ranked, rec.fraction),
        prior=rec.prior,
        rules=rec.rules,
        stopped=stopped,
        figure=figure,
        check=None if rec.check is None else list(rec.check.get("lines", [])),
        use=use,
    )


def write_learning_curves(rec: Recommendation, results: Sequence[dict], out: Path) -> dict[str, Path]:
    """With several fractions: ``learning_curves.csv`` and, when drawn, ``accuracy_vs_fraction.png`` in ``out``."""
    paths = {"learning_curves": out / "learning_curves.csv"}
    with open(paths["learning_curves"], "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["backbone", "fraction", "mean", "std", "best_of_seeds", "n_seeds"])
        for fraction, ranked in rec.curves.items():
            for r in ranked:
                writer.writerow([r.backbone, fraction, r.mean, r.std, r.best, r.n_seeds])
    summaries = summarize([r for r in results if r["dataset"] == rec.dataset])
    if figure_accuracy_vs_fraction(summaries, rec.dataset, out / "accuracy_vs_fraction.png", top=len(rec.ranked)):
        paths["figure"] = out / "accuracy_vs_fraction.png"
    return paths


def recommendation_json(rec: Recommendation) -> str:
    judgement = rec.judgement
    return json.dumps(
        {
            "dataset": rec.dataset,
            "domain": rec.domain,
            "fraction": rec.fraction,
            "verdict": rec.verdict,
            "ranking": [asdict(r) for r in rec.ranked],
            "not_run": rec.not_run,
            "prior": rec.prior,
            "left_out": rec.left_out,
            "judgement": None
            if judgement is None
            else {
                "kind": judgement.kind,
                "leaders": [s.backbone for s in judgement.leaders],
                "cannot_be_told_apart": list(judgement.contenders),
                "p": judgement.p,
                "q": judgement.q,
                "cells_judged": judgement.family,
                "verdict": None if judgement.verdict is None else asdict(judgement.verdict),
                "comparisons": [asdict(v) for v in judgement.comparisons],
            },
            "rules": rec.rules,
        },
        indent=1,
        default=str,
    )


def _log_recommendation(uri: str, experiment: str, rec: Recommendation, paths: dict[str, Path]) -> None:
    run = tracking.summary_run(uri, experiment)
    for path in paths.values():
        run.log_bytes(path.read_bytes(), f"{tracking.RECOMMENDATION_ARTIFACTS}/{path.name}")
    best = next((r for r in rec.ranked if r.mean is not None), None)
    run.finish(
        {
            "backbones_ranked": sum(r.mean is not None for r in rec.ranked),
            **({"best_mean_test_acc": best.mean} if best else {}),
        }
    )


def build_recommendation(
    uri: str,
    experiment: str,
    dataset: str,
    domain: str,
    out_dir: str | Path,
    expected: Sequence[TrialKey] = (),
    check: dict | None = None,
    log_to_mlflow: bool = True,
    use: list[str] | None = None,
) -> dict[str, Path]:
    """Write ``recommendation.html``, ``recommendation.md``, ``ranking.csv`` (and with several fractions
    ``learning_curves.csv`` and ``accuracy_vs_fraction.png``) to ``out_dir``; log them to the sweep's
    summary run under ``recommendation/``. ``use``: the registered winner's lines
    (:func:`rayexp.publish.usage_lines`), shown under "Use the winner"."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    results, left_out = current_results(tracking.fetch_trial_results(uri, experiment))
    rec = recommend(results, dataset, domain, expected, check, load=prediction_loader(uri))
    rec.left_out = left_out
    write_ranking_csv(rec.ranked, out / "ranking.csv")
    paths = {"ranking": out / "ranking.csv", "markdown": out / "recommendation.md", "html": out / "recommendation.html"}
    if rec.curves:
        paths.update(write_learning_curves(rec, results, out))
    if check is not None:
        (out / "data_check.json").write_text(json.dumps(check, indent=1))
        paths["data_check"] = out / "data_check.json"
    write_page(recommendation_page(rec, paths.get("figure"), use), out, "recommendation")
    paths["json"] = out / "recommendation.json"
    paths["json"].write_text(recommendation_json(rec))
    if log_to_mlflow:
        _log_recommendation(uri, experiment, rec, paths)
    return paths
