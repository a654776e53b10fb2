"""Are rayexp's verdicts calibrated? Simulated grids whose truth is known, run through rayexp's own rules.

Each simulated trial gets per-image right/wrong answers from a model with the two sources of noise a real sweep
has: the **seed** (a per-trial shift of every image's log-odds of being right) and the **test images** (each
image's difficulty, shared by every backbone, plus a backbone x image term, shared by the seeds, that makes two
backbones of equal accuracy right on different images). The rows and the ``test_predictions`` are what a trial
logs, and they go through :func:`rayexp.results.compare`, :func:`rayexp.results.judge`,
:func:`rayexp.report.judgements` (Holm within a cell, Benjamini-Hochberg across cells) and
:func:`rayexp.report.recommendations` exactly as a report's do.

Measured, per regime (the audit's: seed-dominated with 2 or 3 seeds and 10,000 test images, image noise large
with 1,000 or 359):

* ``fixed pair``: two identical backbones, the pair fixed in advance: how often the 95% interval's lower bound
  is above zero (nominal: one-sided 2.5%);
* ``summary rule``: the same, from per-seed accuracies only (no per-image predictions);
* ``leader of 11``: eleven identical backbones, the leader picked by its mean: how often the cell says "a clear
  lead" (nominal 5%: picking the leader by the data makes a one-sided 2.5% test two-sided);
* ``grid``: a grid of cells with no true differences anywhere: how often at least one cell says "a clear lead"
  (nominal 5% after Benjamini-Hochberg) and how often a domain line says "use X";
* ``power``: one backbone truly ahead by ``--lead`` points: how often its lead is found clear.

Prints one line per number and ``ratio false_clear_vs_nominal <worst>`` last (at most about 1 within Monte-Carlo
error). ``tests/test_calibration.py`` runs the same functions with fewer repetitions and asserts the bounds.

    python benchmarks/calibration.py [--reps 2000]
"""

from __future__ import annotations

import argparse
import math
import time
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from rayexp.report import judgements, recommendations
from rayexp.results import Predictions, compare, judge, summarize

BASE_LOGIT = 1.8  # about 86% accuracy


@dataclass(frozen=True)
class Regime:
    """How a simulated sweep is noisy: seeds, test images, and the noise terms on the log-odds scale."""

    name: str
    seeds: int
    images: int
    seed_sd: float  # per-trial shift: 0.12 is a seed SD of about 1.2 accuracy points at 86%
    interaction_sd: float  # backbone x image term: how differently two equal backbones err


REGIMES = (
    Regime("seed-dominated, 3 seeds, 10,000 images, seed SD ~1.2 points", 3, 10_000, 0.12, 0.3),
    Regime("seed-dominated, 2 seeds, 10,000 images, seed SD ~1.2 points", 2, 10_000, 0.12, 0.3),
    Regime("seed-dominated, 3 seeds, 10,000 images, seed SD ~2.3 points", 3, 10_000, 0.25, 0.3),
    Regime("image noise large, 3 seeds, 1,000 images", 3, 1_000, 0.03, 0.8),
    Regime("image noise large, 2 seeds, 1,000 images", 2, 1_000, 0.03, 0.8),
    Regime("both, 3 seeds, 359 images (the demo's test split)", 3, 359, 0.1, 0.8),
)


def simulate_cell(
    rng: np.random.Generator,
    regime: Regime,
    logits: dict[str, float],
    dataset: str = "sim",
    fraction: float = 1.0,
) -> tuple[list[dict], dict[str, Predictions]]:
    """One dataset at one fraction: every backbone of ``logits`` (its true log-odds advantage) trained with each
    seed, as trial result rows and their test predictions by run id."""
    names = list(logits)
    n, seeds = regime.images, regime.seeds
    labels = np.arange(n) % 10
    difficulty = rng.normal(0.0, 1.0, n)
    interaction = rng.normal(0.0, regime.interaction_sd, (len(names), 1, n))
    shift = rng.normal(0.0, regime.seed_sd, (len(names), seeds, 1))
    logit = BASE_LOGIT + np.array([logits[b] for b in names])[:, None, None] + shift + difficulty + interaction
    right = rng.random(logit.shape) < 1 / (1 + np.exp(-logit))
    ids = tuple(f"img{i:05d}" for i in range(n))
    rows, predictions = [], {}
    for b, name in enumerate(names):
        for s in range(seeds):
            run_id = f"{name}-{dataset}-{fraction}-{s}"
            predicted = np.where(right[b, s], labels, (labels + 1) % 10)
            predictions[run_id] = Predictions(ids, labels, predicted)
            rows.append(
                {
                    "key": f"{name}/{dataset}/{fraction}/{s}",
                    "backbone": name,
                    "dataset": dataset,
                    "domain": "simulated",
                    "fraction": fraction,
                    "seed": s,
                    "status": "FINISHED",
                    "best_test_acc": float(right[b, s].mean()),
                    "run_id": run_id,
                    "test_rows": n,
                    "num_classes": 10,
                    "test_majority_rate": 0.1,
                }
            )
    return rows, predictions


def _loader(predictions: dict[str, Predictions]):
    """What a report's prediction loader does, from memory: a trial row's predictions by its run id."""
    return lambda row: predictions.get(row["run_id"])


def _identical(count: int) -> dict[str, float]:
    return {f"net{i:02d}": 0.0 for i in range(count)}


def false_clear_fixed_pair(regime: Regime, reps: int, seed: int = 0, paired: bool = True) -> float:
    """How often two identical backbones, the pair fixed in advance, get a 95% interval above zero."""
    rng = np.random.default_rng(seed)
    hits = 0
    for _ in range(reps):
        rows, predictions = simulate_cell(rng, regime, _identical(2))
        first, second = summarize(rows)
        verdict = compare(first, second, rows, _loader(predictions) if paired else None)
        hits += verdict.outcome == "clear"
    return hits / reps


def false_clear_leader(regime: Regime, reps: int, backbones: int = 11, seed: int = 1) -> float:
    """How often a cell of identical backbones, the leader picked by its mean, says "a clear lead"."""
    rng = np.random.default_rng(seed)
    hits = 0
    for _ in range(reps):
        rows, predictions = simulate_cell(rng, regime, _identical(backbones))
        found = judge(summarize(rows), rows, "sim", 1.0, _loader(predictions))
        hits += found.kind == "clear"
    return hits / reps


def false_clear_grid(regime: Regime, reps: int, datasets: int, backbones: int, seed: int = 2) -> tuple[float, float]:
    """Over grids of ``datasets`` cells (one domain) with no true difference anywhere: how often at least one
    cell says "a clear lead", and how often the domain line says "use X"."""
    rng = np.random.default_rng(seed)
    any_clear = use = 0
    for _ in range(reps):
        rows, predictions = [], {}
        for d in range(datasets):
            cell_rows, cell_predictions = simulate_cell(rng, regime, _identical(backbones), dataset=f"sim{d}")
            rows += cell_rows
            predictions.update(cell_predictions)
        summaries = summarize(rows)
        found = judgements(summaries, rows, _loader(predictions))
        any_clear += any(j.kind == "clear" for j in found)
        use += any("use **" in line for line in recommendations(summaries, found))
    return any_clear / reps, use / reps


def power(regime: Regime, reps: int, lead_points: float, backbones: int = 2, seed: int = 3) -> tuple[float, float]:
    """How often one backbone truly ahead (by about ``lead_points``) is found clear, and the lead it had."""
    rng = np.random.default_rng(seed)
    logits = {**_identical(backbones - 1), "ahead": _logit_lead(lead_points)}
    hits, leads = 0, []
    for _ in range(reps):
        rows, predictions = simulate_cell(rng, regime, logits)
        summaries = summarize(rows)
        found = judge(summaries, rows, "sim", 1.0, _loader(predictions))
        hits += found.kind == "clear" and found.leaders[0].backbone == "ahead"
        means = {s.backbone: s.mean for s in summaries}
        leads.append(means["ahead"] - max(v for k, v in means.items() if k != "ahead"))
    return hits / reps, 100 * float(np.mean(leads))


def _logit_lead(points: float) -> float:
    """The log-odds advantage that gives about ``points`` more accuracy near 86%, averaged over the images'
    difficulties (measured: about 0.12 accuracy per unit of log-odds); the lead actually simulated is printed."""
    return points / 100 / 0.12


def monte_carlo_bound(nominal: float, reps: int, sigmas: float = 3.0) -> float:
    """The largest rate a calibrated rule shows in ``reps`` repetitions, but once in ~700: nominal + 3 SE."""
    return nominal + sigmas * math.sqrt(nominal * (1 - nominal) / reps)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reps", type=int, default=2000, help="repetitions per number (default 2000)")
    parser.add_argument("--lead", type=float, default=2.0, help="the true lead for the power numbers, in points")
    args = parser.parse_args(argv)
    worst = 0.0
    started = time.perf_counter()
    for regime in REGIMES:
        fixed = false_clear_fixed_pair(regime, args.reps)
        summary = false_clear_fixed_pair(regime, args.reps, paired=False)
        leader = false_clear_leader(regime, max(1, args.reps // 4))
        found, lead = power(regime, max(1, args.reps // 4), args.lead)
        worst = max(worst, fixed / 0.025, summary / 0.025, leader / 0.05)
        print(f"[{regime.name}]", flush=True)
        print(f"  false clear, fixed pair (nominal 2.5%): {100 * fixed:.1f}%")
        print(f"  false clear, summary rule (nominal 2.5%): {100 * summary:.1f}%")
        print(f"  false clear, leader of 11 identical (nominal 5%): {100 * leader:.1f}%")
        print(f"  power, one backbone {lead:.1f} points ahead of one other: {100 * found:.0f}%", flush=True)
    regime = REGIMES[-1]
    grid, use = false_clear_grid(regime, max(1, args.reps // 10), datasets=20, backbones=4)
    worst = max(worst, grid / 0.05, use / 0.05)
    print(f"[{regime.name}, 20 null datasets x 4 backbones]")
    print(f"  at least one false clear lead (nominal 5%): {100 * grid:.1f}%; a domain's 'use X': {100 * use:.1f}%")
    print(f"seconds {time.perf_counter() - started:.0f}")
    print(f"ratio false_clear_vs_nominal {worst:.2f}")


if __name__ == "__main__":
    main()
