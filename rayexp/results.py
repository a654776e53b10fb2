"""Trial results into answers that may be trusted: which runs count, each cell's summary, ranks, ties,
chance level and the verdict on a lead. Every rule the report and the recommendation apply lives here.

Which runs count: one protocol, and per dataset one version of its data. Every report, cell summary and
recommendation goes through :func:`current_results` before it computes anything, so a table never mixes
runs of different fingerprints (:mod:`rayexp.fingerprint`). The current fingerprints are those of the
newest finished run: the protocol over the whole experiment, the data per dataset. Runs left out are
counted and said, never silently dropped.

The rules, each in one function: a cell's score is the paper's best of its seeds (with
``selection=val``, the test accuracy of the seed with the best validation accuracy); ranks over a
dataset are average ranks, so tied cells share their rank (:func:`average_ranks`); a cell is above
chance when its mean accuracy beats the test split's majority-class rate by a one-sided binomial test
(:func:`is_above_chance`); a lead is clear when a paired bootstrap over the same test images and seeds
puts the accuracy difference above zero (:func:`compare`). No Ray and no MLflow here.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field
from typing import Callable, Iterable, Mapping, Sequence

import numpy as np

from rayexp.fingerprint import short
from rayexp.grid import TrialKey
from rayexp.tracking.schema import FINISHED


def current_results(rows: Iterable[dict]) -> tuple[list[dict], list[str]]:
    """``(rows to use, notes on what was left out)`` from trial result rows (``tracking.fetch_trial_results``).

    Unfinished rows carry no number and are always kept (they show as missing or failed). Finished rows
    without fingerprints (made by an older rayexp) are kept only when no finished row has one, with a note
    that nothing shows they share data and protocol.
    """
    rows = list(rows)
    finished = [r for r in rows if r.get("status") == FINISHED]
    marked = [r for r in finished if r.get("data_fingerprint") and r.get("protocol_fingerprint")]
    if not marked:
        notes = (
            [
                f"{len(finished)} finished run(s) record no data or protocol fingerprint (an older rayexp made them): "
                "nothing shows they were trained on the same data with the same settings"
            ]
            if finished
            else []
        )
        return rows, notes

    protocol, data = _current_fingerprints(marked)
    kept, left = [], {"protocol": 0, "data": 0, "none": 0}
    for row in rows:
        if row.get("status") != FINISHED:
            kept.append(row)
        elif not row.get("protocol_fingerprint") or not row.get("data_fingerprint"):
            left["none"] += 1
        elif row["protocol_fingerprint"] != protocol:
            left["protocol"] += 1
        elif row["data_fingerprint"] != data.get(row["dataset"]):
            left["data"] += 1
        else:
            kept.append(row)
    return kept, _left_out_notes(left, protocol, data, finished)


def _current_fingerprints(marked: list[dict]) -> tuple[str, dict[str, str]]:
    """The protocol of the newest run, and per dataset the data of its newest run with that protocol."""

    def newest(candidates: list[dict]) -> dict:
        return max(candidates, key=lambda r: (r.get("start_time") or 0, r.get("run_id") or ""))

    protocol = newest(marked)["protocol_fingerprint"]
    current = [r for r in marked if r["protocol_fingerprint"] == protocol]
    data = {
        dataset: newest([r for r in current if r["dataset"] == dataset])["data_fingerprint"]
        for dataset in sorted({r["dataset"] for r in current})
    }
    return protocol, data


def _left_out_notes(left: dict[str, int], protocol: str, data: dict[str, str], finished: list[dict]) -> list[str]:
    notes = []
    if left["protocol"]:
        notes.append(
            f"{left['protocol']} finished run(s) left out: trained with another protocol than the newest run's "
            f"({short(protocol)}); compare the protocol_settings tag in MLflow"
        )
    if left["data"]:
        changed = sorted(
            {
                r["dataset"]
                for r in finished
                if r.get("data_fingerprint") and r["dataset"] in data and r["data_fingerprint"] != data[r["dataset"]]
            }
        )
        notes.append(
            f"{left['data']} finished run(s) left out: trained on an earlier version of "
            + ", ".join(f"{d} (current data {short(data[d])})" for d in changed)
        )
    if left["none"]:
        notes.append(f"{left['none']} finished run(s) left out: they record no fingerprint (an older rayexp made them)")
    return notes


@dataclass(frozen=True)
class CellSummary:
    """One (backbone, dataset, fraction) cell: its score, its spread, how complete it is, and its chance level."""

    backbone: str
    dataset: str
    domain: str
    fraction: float
    best_of_3: (
        float | None
    )  # the paper's score: best of the seeds; with selection=val, the test accuracy of the best-val seed
    mean: float | None
    std: float | None  # sample standard deviation over seeds; None with fewer than two
    n_seeds: int  # seeds finished
    weights: str = ""
    n_planned: int = 0  # seeds the sweep set out to run
    n_stopped: int = 0  # finished seeds a scheduler or budget stopped before their protocol ended
    n_capped: int = 0  # finished seeds with a DualOpt phase that ended at --max-epochs
    selection: str = "test"
    chance: float | None = None  # the test split's majority-class rate (1/classes when balanced)
    n_classes: int | None = None
    test_rows: int | None = None
    above_chance: bool | None = None  # None: the test split's size or class counts are unknown

    @property
    def complete(self) -> bool:
        """Every planned seed finished its protocol: no scheduler or budget cut one short."""
        return self.n_seeds > 0 and self.n_stopped == 0 and self.n_seeds >= self.n_planned

    @property
    def incompleteness(self) -> str:
        """What is missing, in words ("2/3 seeds, 1 stopped early"), or "" for a complete cell."""
        parts = []
        if self.n_seeds < self.n_planned:
            parts.append(f"{self.n_seeds}/{self.n_planned} seeds")
        if self.n_stopped:
            parts.append(f"{self.n_stopped} stopped early")
        return ", ".join(parts)


CHANCE_ALPHA = 0.01  # a cell is above chance when P(its mean accuracy | a majority-class guesser) < this


def chance_level(n_classes: int | None, majority_rate: float | None) -> float | None:
    """What a classifier that learned nothing scores on the test split: its majority-class rate, which is
    1/classes on a balanced split and more on an imbalanced one."""
    if majority_rate is not None:
        return majority_rate
    return 1.0 / n_classes if n_classes else None


def is_above_chance(accuracy: float, test_rows: int | None, chance: float | None) -> bool | None:
    """Whether ``accuracy`` on ``test_rows`` images is clearly above ``chance``: a one-sided binomial test
    of its correct count against a guesser that is right with probability ``chance``, at level
    :data:`CHANCE_ALPHA`. None when the test split's size or chance level is unknown."""
    if not test_rows or chance is None:
        return None
    from scipy.stats import binom  # imported here: ~0.5 s, only a report judging cells needs it

    correct = round(accuracy * test_rows)
    return bool(binom.sf(correct - 1, test_rows, chance) < CHANCE_ALPHA)


def _number(value: object) -> float | None:
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def best_seed_row(rows: Sequence[dict]) -> dict | None:
    """The seed a cell's score comes from: the best test accuracy (the paper's best of the seeds); with
    ``selection=val``, the best validation accuracy, so that the test split never picks the seed (lowest seed on
    a tie, either way). The seed ``my_data.py`` registers."""
    if not rows:
        return None
    val = [r for r in rows if r.get("selection") == "val" and r.get("best_val_acc") is not None]
    if val and len(val) == len(rows):
        return max(val, key=lambda r: (r["best_val_acc"], -int(r.get("seed", 0))))
    return max(rows, key=lambda r: (r["best_test_acc"], -int(r.get("seed", 0))))


def cell_score(rows: Sequence[dict]) -> float | None:
    """The paper's best of the seeds; with ``selection=val``, the test accuracy of the seed whose validation
    accuracy is best (:func:`best_seed_row`)."""
    best = best_seed_row(rows)
    return None if best is None else best["best_test_acc"]


def summarize(results: Iterable[dict], expected: Sequence[TrialKey] = ()) -> list[CellSummary]:
    """One summary per cell from trial results; cells of ``expected`` with none are missing.

    A cell's planned seeds are those of ``expected`` and of every run it has (finished or not); a
    finished seed that a scheduler or budget stopped (``stopped_by``) counts as stopped early.
    """
    finished: dict[tuple[str, str, float], list[dict]] = {}
    planned: dict[tuple[str, str, float], set[int]] = {}
    domains: dict[str, str] = {}
    facts: dict[str, dict] = {}
    for row in results:
        cell = (row["backbone"], row["dataset"], float(row["fraction"]))
        domains[row["dataset"]] = row.get("domain") or ""
        planned.setdefault(cell, set()).add(int(row.get("seed", 0)))
        finished.setdefault(cell, [])
        if row.get("status") == FINISHED and row.get("best_test_acc") is not None:
            finished[cell].append(row)
            known = facts.setdefault(row["dataset"], {})
            for name in ("num_classes", "test_rows", "test_majority_rate"):
                if row.get(name) is not None:
                    known.setdefault(name, row[name])
    for key in expected:
        finished.setdefault(key.cell, [])
        planned.setdefault(key.cell, set()).add(key.seed)
    summaries = []
    for (backbone, dataset, fraction), rows in sorted(finished.items(), key=lambda kv: (kv[0][1], -kv[0][2], kv[0][0])):
        accs = [r["best_test_acc"] for r in rows]
        weights = sorted({r.get("weights") or "" for r in rows} - {""})
        known = facts.get(dataset, {})
        n_classes = int(known["num_classes"]) if _number(known.get("num_classes")) else None
        test_rows = int(known["test_rows"]) if _number(known.get("test_rows")) else None
        chance = chance_level(n_classes, _number(known.get("test_majority_rate")))
        mean = statistics.fmean(accs) if accs else None
        summaries.append(
            CellSummary(
                backbone=backbone,
                dataset=dataset,
                domain=domains.get(dataset, ""),
                fraction=fraction,
                best_of_3=cell_score(rows),
                mean=mean,
                std=statistics.stdev(accs) if len(accs) >= 2 else None,
                n_seeds=len(accs),
                weights=",".join(weights),
                n_planned=len(planned.get((backbone, dataset, fraction), ())),
                n_stopped=sum(1 for r in rows if r.get("stopped_by")),
                n_capped=sum(1 for r in rows if r.get("capped")),
                selection=next((r["selection"] for r in rows if r.get("selection")), "test"),
                chance=chance,
                n_classes=n_classes,
                test_rows=test_rows,
                above_chance=None if mean is None else is_above_chance(mean, test_rows, chance),
            )
        )
    return summaries


# ---------------------------------------------------------------- ranks and ties

TIE_DECIMALS = 12  # accuracies are ratios of counts: equal counts give equal floats, rounding only guards


def _tie_key(score: float) -> float:
    return round(score, TIE_DECIMALS)


def average_ranks(scores: Mapping[str, float]) -> dict[str, float]:
    """Rank 1 = highest score; tied scores share the average of the ranks they span (five tied for first
    all rank 3.0), so no name wins a tie by its place in the alphabet."""
    ordered = sorted(scores, key=lambda name: -_tie_key(scores[name]))
    out: dict[str, float] = {}
    i = 0
    while i < len(ordered):
        j = i
        while j + 1 < len(ordered) and _tie_key(scores[ordered[j + 1]]) == _tie_key(scores[ordered[i]]):
            j += 1
        for name in ordered[i : j + 1]:
            out[name] = (i + 1 + j + 1) / 2
        i = j + 1
    return out


def places(scores: Mapping[str, float]) -> dict[str, int]:
    """1 + how many scores are strictly higher: every cell tied for first is first, so a top-three mark
    takes in every tied cell."""
    values = [_tie_key(v) for v in scores.values()]
    return {name: 1 + sum(v > _tie_key(score) for v in values) for name, score in scores.items()}


def scored(summaries: Sequence[CellSummary], dataset: str, fraction: float) -> list[CellSummary]:
    """The cells of ``dataset`` at ``fraction`` that have a score, best first (ties by mean, then name)."""
    cells = [s for s in summaries if s.dataset == dataset and s.fraction == fraction and s.best_of_3 is not None]
    return sorted(cells, key=lambda s: (-_tie_key(s.best_of_3), -(s.mean or 0.0), s.backbone))


def dataset_ranks(summaries: Sequence[CellSummary], fraction: float) -> dict[str, dict[str, float]]:
    """Per dataset, each backbone's average rank by the cell score at ``fraction``; missing cells unranked."""
    return {
        dataset: average_ranks({s.backbone: s.best_of_3 for s in scored(summaries, dataset, fraction)})
        for dataset in sorted({s.dataset for s in summaries})
    }


def learned(cells: Sequence[CellSummary]) -> bool:
    """Whether some cell is above chance, or chance is unknown (then nothing is held back on its account)."""
    return any(s.above_chance is not False for s in cells)


@dataclass
class DomainRanking:
    """Table 1's row for one domain: backbones by mean rank over its datasets, and what that rests on."""

    domain: str
    rows: list[tuple[str, float, int]]  # (backbone, mean rank, datasets ranked)
    at_chance: list[str] = field(default_factory=list)  # datasets left out: no backbone above chance
    incomplete: list[str] = field(default_factory=list)  # "backbone on dataset (2/3 seeds)"

    @property
    def leaders(self) -> list[str]:
        if not self.rows:
            return []
        best = round(self.rows[0][1], 9)
        return [b for b, rank, _ in self.rows if round(rank, 9) == best]


def domain_rankings(summaries: Sequence[CellSummary], fraction: float) -> list[DomainRanking]:
    """Per domain, backbones by mean average-rank over its datasets at ``fraction`` (the paper's Table 1).

    A dataset where no backbone is above chance ranks noise and is left out, and said.
    """
    out = []
    for domain in sorted({s.domain for s in summaries}):
        collected: dict[str, list[float]] = {}
        ranking = DomainRanking(domain, [])
        for dataset in sorted({s.dataset for s in summaries if s.domain == domain}):
            cells = scored(summaries, dataset, fraction)
            if not cells:
                continue
            if not learned(cells):
                ranking.at_chance.append(dataset)
                continue
            ranking.incomplete += [f"{s.backbone} on {dataset} ({s.incompleteness})" for s in cells if not s.complete]
            for backbone, rank in average_ranks({s.backbone: s.best_of_3 for s in cells}).items():
                collected.setdefault(backbone, []).append(rank)
        ranking.rows = sorted(
            ((b, statistics.fmean(r), len(r)) for b, r in collected.items()), key=lambda t: (round(t[1], 9), t[0])
        )
        out.append(ranking)
    return out


# ---------------------------------------------------------------- the verdict on a lead

BOOTSTRAP_RESAMPLES = 4000
BOOTSTRAP_SEED = 0  # fixed: the same results always give the same verdict
CONFIDENCE = 0.95
Z = 1.959963984540054  # the two-sided 95% normal quantile, for the summary rule


@dataclass(frozen=True)
class Predictions:
    """One trial's test predictions at its best epoch (the ``test_predictions.csv`` artifact)."""

    ids: tuple[str, ...]
    labels: np.ndarray
    predictions: np.ndarray

    def correct(self, order: Sequence[str]) -> np.ndarray | None:
        """Right (True) or wrong per image, in ``order``; None when the images are not the same set."""
        if len(order) != len(self.ids) or set(order) != set(self.ids):
            return None
        at = {image: i for i, image in enumerate(self.ids)}
        index = np.fromiter((at[image] for image in order), dtype=np.int64, count=len(order))
        return self.labels[index] == self.predictions[index]


PredictionLoader = Callable[[dict], "Predictions | None"]  # a trial result row -> its predictions, or None


@dataclass(frozen=True)
class Verdict:
    """Whether ``first`` leads ``second`` by more than test-set and seed noise, and on what evidence."""

    first: str
    second: str
    outcome: str  # "clear", "tied" or "unknown" (fewer than two seeds in common)
    difference: float | None  # mean test accuracy of first minus second over their common seeds
    low: float | None  # the 95% interval of that difference
    high: float | None
    rule: str  # "paired bootstrap" or "summary" (no per-image predictions)
    inputs: str
    note: str = ""

    def text(self) -> str:
        """The evidence in one clause, for a report line."""
        if self.outcome == "unknown":
            return f"seed noise is unknown ({self.inputs}): run more seeds before trusting the order"
        interval = (
            f"mean difference {100 * self.difference:+.2f} points, "
            f"95% interval [{100 * self.low:+.2f}, {100 * self.high:+.2f}]"
        )
        how = f"{self.rule} over {self.inputs}" + (f"; {self.note}" if self.note else "")
        if self.outcome == "clear":
            return f"a clear lead ({interval}; {how})"
        return f"within test-set and seed noise: treat them as tied ({interval}; {how})"


def paired_bootstrap(correct_first: np.ndarray, correct_second: np.ndarray) -> tuple[float, float, float]:
    """(mean difference, low, high) of accuracy, first minus second, from ``(seeds, images)`` right/wrong
    arrays on the same images with row s of both from seed s.

    Resamples images and seeds together, so the interval holds both the test set's sampling noise and the
    seeds' spread. An image's contribution depends only on its pattern of differences across seeds
    (at most 3**seeds patterns), so images are resampled as multinomial counts over those patterns:
    milliseconds even for a large test set.
    """
    diff = correct_first.astype(np.int8) - correct_second.astype(np.int8)  # seeds x images, in {-1, 0, 1}
    seeds, images = diff.shape
    patterns, counts = np.unique(diff.T, axis=0, return_counts=True)  # P x seeds
    rng = np.random.default_rng(BOOTSTRAP_SEED)
    image_counts = rng.multinomial(images, counts / images, size=BOOTSTRAP_RESAMPLES)  # B x P
    seed_counts = rng.multinomial(seeds, np.full(seeds, 1 / seeds), size=BOOTSTRAP_RESAMPLES)  # B x seeds
    per_seed = image_counts @ patterns  # B x seeds: summed differences per seed
    resampled = (per_seed * seed_counts).sum(axis=1) / (seeds * images)
    tail = (1 - CONFIDENCE) / 2
    low, high = np.quantile(resampled, [tail, 1 - tail])
    return float(diff.mean()), float(low), float(high)


def _by_seed(rows: Sequence[dict]) -> dict[int, dict]:
    return {int(r["seed"]): r for r in rows if r.get("status") == FINISHED and r.get("best_test_acc") is not None}


def _predictions_problem(pairs: Sequence[tuple[dict, Predictions]]) -> str:
    """Why these trials' predictions cannot be compared image by image, or "": they must cover the same test
    images with the same labels, and each must score exactly its run's ``best_test_acc`` (a file edited, or
    left one epoch behind by a worker killed between the two writes, does not)."""
    reference = pairs[0][1]
    order = reference.ids
    at = {image: i for i, image in enumerate(reference.ids)}
    for row, found in pairs:
        if found.correct(order) is None:
            return "their predictions are on different test images"
        index = np.fromiter((at[image] for image in found.ids), dtype=np.int64, count=len(found.ids))
        if not np.array_equal(reference.labels[index], found.labels):
            return "their predictions disagree on the test images' labels"
        if abs(float(np.mean(found.labels == found.predictions)) - row["best_test_acc"]) > 1e-9:
            return f"the predictions of {row.get('key') or row['backbone']} do not score its recorded accuracy"
    return ""


def compare(
    first: CellSummary, second: CellSummary, rows: Sequence[dict], load: PredictionLoader | None = None
) -> Verdict:
    """Does ``first`` lead ``second`` on the same test images and seeds? The one rule behind every
    "clear lead" and "treat them as tied", in the sweep report and in the recommendation alike.

    With both trials' predictions for every common seed: a paired bootstrap (:func:`paired_bootstrap`);
    the lead is clear when the whole 95% interval of the difference lies above zero. Without them (an
    older run, a trial stopped before its first epoch ended): the summary rule, the mean difference over
    common seeds against 1.96 standard errors made of the seed differences' spread and each accuracy's
    binomial error on the test split's size, and the verdict says so. Fewer than two seeds in common:
    the seed noise is unknown and nothing is called clear.
    """

    def of(cell: CellSummary) -> dict[int, dict]:
        return _by_seed(
            [
                r
                for r in rows
                if r["backbone"] == cell.backbone
                and r["dataset"] == cell.dataset
                and float(r["fraction"]) == cell.fraction
            ]
        )

    a, b = of(first), of(second)
    common = sorted(set(a) & set(b))
    if len(common) < 2:
        inputs = f"{len(common)} seed(s) in common"
        return Verdict(first.backbone, second.backbone, "unknown", None, None, None, "none", inputs)
    note = ""
    if load is not None:
        verdict, note = _paired_verdict(first, second, a, b, common, load)
        if verdict is not None:
            return verdict
    return _summary_verdict(first, second, a, b, common, note)


def _paired_verdict(
    first: CellSummary, second: CellSummary, a: dict, b: dict, common: list[int], load: PredictionLoader
) -> tuple[Verdict | None, str]:
    """The paired bootstrap's verdict, or None and why it cannot be had."""
    loaded = [(load(a[s]), load(b[s])) for s in common]
    if not all(p is not None and q is not None for p, q in loaded):
        return None, "no per-image test predictions for every seed"
    problem = _predictions_problem(
        [(a[s], p) for s, (p, _) in zip(common, loaded)] + [(b[s], q) for s, (_, q) in zip(common, loaded)]
    )
    if problem:
        return None, problem
    order = loaded[0][0].ids
    correct = [(p.correct(order), q.correct(order)) for p, q in loaded]
    difference, low, high = paired_bootstrap(np.stack([x for x, _ in correct]), np.stack([y for _, y in correct]))
    outcome = "clear" if low > 0 else "tied"
    inputs = f"the same {len(order)} test images x {len(common)} seeds"
    return Verdict(first.backbone, second.backbone, outcome, difference, low, high, "paired bootstrap", inputs), ""


def _summary_verdict(
    first: CellSummary, second: CellSummary, a: dict, b: dict, common: list[int], note: str
) -> Verdict:
    """The summary rule: the mean difference over common seeds against 1.96 standard errors (the seed
    differences' spread and each accuracy's binomial error on the test split)."""
    accuracy = np.array([[a[s]["best_test_acc"], b[s]["best_test_acc"]] for s in common])
    differences = accuracy[:, 0] - accuracy[:, 1]
    variance = float(np.var(differences, ddof=1)) / len(common)
    n = first.test_rows or second.test_rows
    if n:
        p, q = float(accuracy[:, 0].mean()), float(accuracy[:, 1].mean())
        variance += (p * (1 - p) + q * (1 - q)) / n
    else:
        note = (note + "; " if note else "") + "the test split's size is unknown, so only the seeds' spread counts"
    difference, se = float(differences.mean()), math.sqrt(variance)
    outcome = "clear" if difference - Z * se > 0 else "tied"
    inputs = f"{len(common)} seeds" + (f" and {n} test images" if n else "")
    low, high = difference - Z * se, difference + Z * se
    return Verdict(first.backbone, second.backbone, outcome, difference, low, high, "summary rule", inputs, note)


@dataclass(frozen=True)
class Judgement:
    """The answer for one dataset at one fraction: who leads, whether it is a tie, a clear lead, or no
    answer at all because nothing learned."""

    dataset: str
    fraction: float
    leaders: tuple[CellSummary, ...]  # every cell tied for the best score
    runner_up: CellSummary | None
    verdict: Verdict | None  # leader vs runner-up, when one cell leads alone
    learned: bool  # False: no cell is above chance; recommend nothing

    @property
    def kind(self) -> str:
        """``chance``, ``tie`` (equal scores), ``clear``, ``tied`` (within noise), ``unknown`` or ``alone``."""
        if not self.learned:
            return "chance"
        if len(self.leaders) > 1:
            return "tie"
        return self.verdict.outcome if self.verdict else "alone"


def judge(
    summaries: Sequence[CellSummary],
    rows: Sequence[dict],
    dataset: str,
    fraction: float,
    load: PredictionLoader | None = None,
) -> Judgement | None:
    """The :class:`Judgement` for ``dataset`` at ``fraction``, or None when no cell there has a score."""
    cells = scored(summaries, dataset, fraction)
    if not cells:
        return None
    top = _tie_key(cells[0].best_of_3)
    leaders = tuple(s for s in cells if _tie_key(s.best_of_3) == top)
    rest = [s for s in cells if _tie_key(s.best_of_3) != top]
    runner_up = rest[0] if rest else None
    verdict = compare(leaders[0], runner_up, rows, load) if len(leaders) == 1 and runner_up is not None else None
    return Judgement(dataset, fraction, leaders, runner_up, verdict, learned(leaders))


def chance_text(s: CellSummary) -> str:
    """The chance level of a cell's dataset in words: the majority-class rate, and 1/classes beside it when they
    differ."""
    if s.chance is None:
        return "chance level unknown"
    uniform = 1 / s.n_classes if s.n_classes else None
    text = f"majority class {100 * s.chance:.2f}%"
    if uniform is not None and abs(uniform - s.chance) > 1e-9:
        text += f", 1/{s.n_classes} = {100 * uniform:.2f}%"
    elif uniform is not None:
        text = f"1/{s.n_classes} = {100 * uniform:.2f}%"
    return text + (f", {s.test_rows} test images" if s.test_rows else "")


RULES = (
    "Ranks: by each cell's best of the seeds (the paper's score{val}); tied scores share the average of "
    "their ranks, and every cell tied for a top-three place is marked. "
    "Verdict: the leader's lead over the runner-up is clear when a paired bootstrap over the same test "
    f"images and seeds ({BOOTSTRAP_RESAMPLES:,} resamples of both, fixed seed) puts the whole "
    f"{100 * CONFIDENCE:.0f}% interval of their mean accuracy difference above zero; without per-image "
    "predictions, when the mean difference exceeds 1.96 standard errors (seed differences' spread plus "
    "each accuracy's binomial error on the test split); with fewer than two seeds in common, never. "
    "Chance: a cell is above chance when a one-sided binomial test puts its mean accuracy above the test "
    f"split's majority-class rate at p < {CHANCE_ALPHA:g}; where no backbone is, nothing is recommended."
)


def rules_text(selection: str) -> str:
    """How ranks, ties, verdicts and chance are computed, as a report states it."""
    val = (
        "; with selection=val, the test accuracy of the seed with the best validation accuracy"
        if selection == "val"
        else ""
    )
    return RULES.format(val=val)
