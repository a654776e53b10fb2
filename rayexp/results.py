"""Trial results into answers that may be trusted: which runs count, each cell's summary, ranks, ties,
chance level and the verdict on a lead. Every rule the report and the recommendation apply lives here.

Which runs count: one protocol, and per dataset one version of its data. Every report, cell summary and
recommendation goes through :func:`current_results` before it computes anything, so a table never mixes
runs of different fingerprints (:mod:`rayexp.fingerprint`). The current fingerprints are those of the
newest finished run: the protocol over the whole experiment, the data per dataset. Runs left out are
counted and said, never silently dropped.

The rules, each in one function: a cell's paper score is the best of its seeds (with ``selection=val``, the
test accuracy of the seed with the best validation accuracy), and the paper's tables rank by it; every verdict
and recommendation ranks by the mean over seeds instead (:class:`Statistic`). Ranks are average ranks, so tied
cells share their rank (:func:`average_ranks`); over several datasets a backbone with no score on one is
ranked last there (:func:`rank_table`). A cell is above chance when its accuracy beats the majority-class rate
or its balanced accuracy beats 1/classes (:func:`is_above_chance`). A dataset's leader is compared with every
other backbone (:func:`compare`, :func:`judge`), Holm within the cell and Benjamini-Hochberg across the cells
of a report (:func:`adjust`); the tests themselves are :mod:`rayexp.inference`'s. No Ray and no MLflow here.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field, replace
from enum import Enum
from functools import cached_property
from typing import Callable, Iterable, Mapping, Sequence

import numpy as np

from rayexp.errors import RayexpError
from rayexp.fingerprint import short
from rayexp.grid import TrialKey
from rayexp.inference import (
    ALPHA,
    CHANCE_ALPHA,
    CLAIM_LEVEL,
    Difference,
    accuracy_chance_p,
    balanced_chance_p,
    benjamini_hochberg,
    holm,
    paired_difference,
    summary_difference,
)
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
    mean: float | None  # what every verdict and recommendation ranks by
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
    balanced_mean: float | None = None  # mean balanced accuracy over the seeds that logged it
    class_rows: tuple[int, ...] = ()  # the test split's rows per class, where the runs record them

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


class Statistic(Enum):
    """What a ranking orders cells by: the paper's best of the seeds (its tables and figures), or the mean over
    seeds (every verdict and recommendation: the best of three seeds rewards a lucky seed, and a leader picked
    by it is often not the best by the mean it is then judged on)."""

    BEST_OF_SEEDS = "best of seeds"
    MEAN = "mean over seeds"

    def of(self, cell: CellSummary) -> float | None:
        return cell.best_of_3 if self is Statistic.BEST_OF_SEEDS else cell.mean


def chance_level(n_classes: int | None, majority_rate: float | None) -> float | None:
    """What a classifier that learned nothing scores on the test split: its majority-class rate, which is
    1/classes on a balanced split and more on an imbalanced one."""
    if majority_rate is not None:
        return majority_rate
    return 1.0 / n_classes if n_classes else None


def is_above_chance(
    accuracy: float,
    test_rows: int | None,
    chance: float | None,
    balanced: float | None = None,
    class_rows: Sequence[int] = (),
) -> bool | None:
    """Whether a cell clearly learned something, at level :data:`~rayexp.inference.CHANCE_ALPHA`: its
    ``accuracy`` on ``test_rows`` images beats the majority-class rate ``chance`` (one-sided binomial), or,
    where the runs record the test split's ``class_rows`` and a ``balanced`` accuracy, that beats 1/classes
    (a bound that holds for any guesser that ignores the image). With both, each test gets half the level
    (Bonferroni). The balanced test is what lets an imbalanced split be above chance: at 99:1, accuracy must
    beat 99%, while a model that finds the minority class has a balanced accuracy far above 50%. None when the
    test split's size or chance level is unknown."""
    if not test_rows or chance is None:
        return None
    if balanced is None or len(class_rows) < 2:
        return accuracy_chance_p(accuracy, test_rows, chance) < CHANCE_ALPHA
    return (
        accuracy_chance_p(accuracy, test_rows, chance) < CHANCE_ALPHA / 2
        or balanced_chance_p(balanced, class_rows) < CHANCE_ALPHA / 2
    )


def _number(value: object) -> float | None:
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _cell_selection(rows: Sequence[dict]) -> str:
    """The selection rule the cell's seeds share; a cell whose seeds were selected differently, or a ``val`` seed
    without its validation accuracy, is refused: its best seed would be picked by two rules."""
    found = {r.get("selection") or "test" for r in rows}
    if len(found) > 1:
        raise RayexpError(
            f"{_cell_name(rows[0])}: its seeds were selected by different rules ({', '.join(sorted(found))}: "
            f"{', '.join(str(r.get('key')) for r in rows)}); a cell takes one rule. Delete the runs of the rule "
            "you do not want, or report them in separate experiments"
        )
    selection = found.pop()
    missing = [str(r.get("key")) for r in rows if selection == "val" and r.get("best_val_acc") is None]
    if missing:
        raise RayexpError(
            f"{_cell_name(rows[0])}: selection=val, but {', '.join(missing)} logged no best_val_acc, so the seed to "
            "report cannot be chosen on validation accuracy; train those keys again"
        )
    return selection


def _cell_name(row: dict) -> str:
    return f"cell {row['backbone']}/{row['dataset']}/{row['fraction']}"


def best_seed_row(rows: Sequence[dict]) -> dict | None:
    """The seed a cell's score comes from: the best test accuracy (the paper's best of the seeds); with
    ``selection=val``, the best validation accuracy, so that the test split never picks the seed (lowest seed on
    a tie, either way). The seed ``my_data.py`` registers. A cell of mixed selection rules is refused."""
    if not rows:
        return None
    if _cell_selection(rows) == "val":
        return max(rows, key=lambda r: (r["best_val_acc"], -int(r.get("seed", 0))))
    return max(rows, key=lambda r: (r["best_test_acc"], -int(r.get("seed", 0))))


def cell_score(rows: Sequence[dict]) -> float | None:
    """The paper's best of the seeds; with ``selection=val``, the test accuracy of the seed whose validation
    accuracy is best (:func:`best_seed_row`)."""
    best = best_seed_row(rows)
    return None if best is None else best["best_test_acc"]


def _class_rows(value: object) -> tuple[int, ...]:
    if isinstance(value, (list, tuple)):
        return tuple(int(v) for v in value)
    if isinstance(value, str) and value:
        try:
            return tuple(int(v) for v in value.split(","))
        except ValueError:
            return ()
    return ()


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
            for name in ("num_classes", "test_rows", "test_majority_rate", "test_class_rows"):
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
        class_rows = _class_rows(known.get("test_class_rows"))
        balanced = [b for r in rows if (b := _number(r.get("best_test_balanced_acc"))) is not None]
        balanced_mean = statistics.fmean(balanced) if rows and len(balanced) == len(rows) else None
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
                selection=_cell_selection(rows) if rows else "test",
                chance=chance,
                n_classes=n_classes,
                test_rows=test_rows,
                above_chance=None
                if mean is None
                else is_above_chance(mean, test_rows, chance, balanced_mean, class_rows),
                balanced_mean=balanced_mean,
                class_rows=class_rows,
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


def scored(
    summaries: Sequence[CellSummary], dataset: str, fraction: float, by: Statistic = Statistic.BEST_OF_SEEDS
) -> list[CellSummary]:
    """The cells of ``dataset`` at ``fraction`` that have a score, best first by ``by`` (ties by the other
    statistic, then name)."""
    cells = [s for s in summaries if s.dataset == dataset and s.fraction == fraction and s.best_of_3 is not None]
    other = Statistic.MEAN if by is Statistic.BEST_OF_SEEDS else Statistic.BEST_OF_SEEDS
    return sorted(cells, key=lambda s: (-_tie_key(by.of(s)), -(other.of(s) or 0.0), s.backbone))


def dataset_ranks(
    summaries: Sequence[CellSummary], fraction: float, by: Statistic = Statistic.BEST_OF_SEEDS
) -> dict[str, dict[str, float]]:
    """Per dataset, each backbone's average rank by ``by`` at ``fraction``; missing cells unranked."""
    return {
        dataset: average_ranks({s.backbone: by.of(s) for s in scored(summaries, dataset, fraction, by)})
        for dataset in sorted({s.dataset for s in summaries})
    }


def learned(cells: Sequence[CellSummary]) -> bool:
    """Whether some cell is above chance, or chance is unknown (then nothing is held back on its account)."""
    return any(s.above_chance is not False for s in cells)


@dataclass
class RankTable:
    """Average ranks over several datasets on equal terms: every backbone ranked on every dataset where some
    backbone learned, a backbone with no score there tied for last (and listed), so that one that failed on a
    dataset cannot rank first over the others."""

    ranks: dict[str, dict[str, float]]  # dataset -> backbone -> average rank
    missing: list[str] = field(default_factory=list)  # "backbone on dataset": ranked last, no score
    at_chance: list[str] = field(default_factory=list)  # datasets left out: no backbone above chance
    incomplete: list[str] = field(default_factory=list)  # "backbone on dataset (2/3 seeds)"

    def mean_ranks(self) -> list[tuple[str, float, int]]:
        """(backbone, mean rank, datasets it has a score on), best first, ties by name."""
        backbones = sorted({b for ranking in self.ranks.values() for b in ranking})
        scored_on = {b: sum(f"{b} on {d}" not in self.missing for d in self.ranks) for b in backbones}
        rows = [(b, statistics.fmean(r[b] for r in self.ranks.values()), scored_on[b]) for b in backbones]
        return sorted(rows, key=lambda t: (round(t[1], 9), t[0]))


def rank_table(summaries: Sequence[CellSummary], datasets: Sequence[str], fraction: float, by: Statistic) -> RankTable:
    """The :class:`RankTable` of ``datasets`` at ``fraction`` by ``by``, over every backbone with a cell there."""
    backbones = sorted({s.backbone for s in summaries if s.dataset in datasets and s.fraction == fraction})
    table = RankTable({})
    for dataset in sorted(datasets):
        cells = scored(summaries, dataset, fraction, by)
        if not cells:
            continue
        if not learned(cells):
            table.at_chance.append(dataset)
            continue
        table.incomplete += [f"{s.backbone} on {dataset} ({s.incompleteness})" for s in cells if not s.complete]
        absent = [b for b in backbones if b not in {s.backbone for s in cells}]
        table.missing += [f"{b} on {dataset}" for b in absent]
        last = len(cells) + (len(absent) + 1) / 2
        table.ranks[dataset] = {**average_ranks({s.backbone: by.of(s) for s in cells}), **{b: last for b in absent}}
    return table


@dataclass
class DomainRanking:
    """One domain's row: backbones by mean rank over its datasets (:class:`RankTable`), and what that rests on."""

    domain: str
    rows: list[tuple[str, float, int]]  # (backbone, mean rank, datasets it has a score on)
    datasets: int = 0  # datasets ranked
    at_chance: list[str] = field(default_factory=list)  # datasets left out: no backbone above chance
    incomplete: list[str] = field(default_factory=list)  # "backbone on dataset (2/3 seeds)"
    missing: list[str] = field(default_factory=list)  # "backbone on dataset": no score, ranked last

    @property
    def leaders(self) -> list[str]:
        if not self.rows:
            return []
        best = round(self.rows[0][1], 9)
        return [b for b, rank, _ in self.rows if round(rank, 9) == best]


def domain_rankings(
    summaries: Sequence[CellSummary], fraction: float, by: Statistic = Statistic.BEST_OF_SEEDS
) -> list[DomainRanking]:
    """Per domain, backbones by mean average-rank over its datasets at ``fraction`` (the paper's Table 1 by the
    best of seeds; the domain's verdict by the mean). A dataset where no backbone is above chance ranks noise and
    is left out, and said; a backbone with no score on a ranked dataset is ranked last there, and said."""
    out = []
    for domain in sorted({s.domain for s in summaries}):
        datasets = sorted({s.dataset for s in summaries if s.domain == domain})
        table = rank_table(summaries, datasets, fraction, by)
        out.append(
            DomainRanking(
                domain, table.mean_ranks(), len(table.ranks), table.at_chance, table.incomplete, table.missing
            )
        )
    return out


# ---------------------------------------------------------------- the verdict on a lead


@dataclass(frozen=True)
class Predictions:
    """One trial's test predictions at its best epoch (the ``test_predictions.csv`` artifact)."""

    ids: tuple[str, ...]
    labels: np.ndarray
    predictions: np.ndarray

    @cached_property
    def problem(self) -> str:
        """Why this file cannot be compared image by image ("" when it can): no rows, or an image twice."""
        if not self.ids:
            return "hold no rows"
        if len(set(self.ids)) != len(self.ids):
            return "repeat image ids"
        return ""

    @cached_property
    def _position(self) -> dict[str, int]:
        return {image: i for i, image in enumerate(self.ids)}

    def aligned(self, order: Sequence[str]) -> tuple[np.ndarray, np.ndarray] | None:
        """(labels, predictions) in ``order``; None when the images are not the same set."""
        if self.problem or len(order) != len(self.ids):
            return None
        if tuple(order) == self.ids:  # the usual case: every trial writes the test split in its stored order
            return self.labels, self.predictions
        if set(order) != set(self.ids):
            return None
        index = np.fromiter((self._position[image] for image in order), dtype=np.int64, count=len(order))
        return self.labels[index], self.predictions[index]

    def correct(self, order: Sequence[str]) -> np.ndarray | None:
        """Right (True) or wrong per image, in ``order``; None when the images are not the same set."""
        found = self.aligned(order)
        return None if found is None else found[0] == found[1]


PredictionLoader = Callable[[dict], "Predictions | None"]  # a trial result row -> its predictions, or None

PAIRED = "paired t"  # over the seeds' paired differences and the paired image variance
SUMMARY = "summary rule"


@dataclass(frozen=True)
class Verdict:
    """Whether ``first`` leads ``second`` by more than test-set and seed noise, and on what evidence: one pair,
    at the one-sided :data:`~rayexp.inference.ALPHA` (its 95% interval's lower bound above zero)."""

    first: str
    second: str
    outcome: str  # "clear", "tied" or "unknown" (fewer than two seeds in common)
    difference: float | None  # mean test accuracy of first minus second over their common seeds
    low: float | None  # the 95% interval of that difference
    high: float | None
    rule: str  # PAIRED or SUMMARY (no per-image predictions), "none" when unknown
    inputs: str
    note: str = ""
    p: float | None = None  # one-sided p-value of "first is better", before any multiplicity adjustment
    evidence: Difference | None = None

    def text(self) -> str:
        """The evidence in one clause, for a report line."""
        if self.outcome == "unknown":
            return f"seed noise is unknown ({self.inputs}): run more seeds before trusting the order"
        interval = (
            f"mean difference {100 * self.difference:+.2f} points, "
            f"95% interval [{100 * self.low:+.2f}, {100 * self.high:+.2f}]"
        )
        how = f"{self.rule} over {self.inputs}" + (f"; {self.note}" if self.note else "")
        return f"{interval}; {how}"


def _by_seed(rows: Sequence[dict]) -> dict[int, dict]:
    return {int(r["seed"]): r for r in rows if r.get("status") == FINISHED and r.get("best_test_acc") is not None}


def _predictions_problem(pairs: Sequence[tuple[dict, Predictions]]) -> str:
    """Why these trials' predictions cannot be compared image by image, or "": each file must hold its images
    once, they must cover the same test images with the same labels, and each must score exactly its run's
    ``best_test_acc`` (a file edited, or left one epoch behind by a worker killed between the two writes, does
    not)."""
    for row, found in pairs:
        if found.problem:
            return f"the predictions of {row.get('key') or row['backbone']} {found.problem}"
    reference = pairs[0][1]
    for row, found in pairs:
        aligned = found.aligned(reference.ids)
        if aligned is None:
            return "their predictions are on different test images"
        if not np.array_equal(reference.labels, aligned[0]):
            return "their predictions disagree on the test images' labels"
        if abs(float(np.mean(found.labels == found.predictions)) - row["best_test_acc"]) > 1e-9:
            return f"the predictions of {row.get('key') or row['backbone']} do not score its recorded accuracy"
    return ""


def _cell_rows(cell: CellSummary, rows: Sequence[dict]) -> dict[int, dict]:
    return _by_seed(
        [
            r
            for r in rows
            if r["backbone"] == cell.backbone and r["dataset"] == cell.dataset and float(r["fraction"]) == cell.fraction
        ]
    )


def compare(
    first: CellSummary, second: CellSummary, rows: Sequence[dict], load: PredictionLoader | None = None
) -> Verdict:
    """Does ``first`` lead ``second`` on the same test images and seeds? One pair, fixed in advance: its
    95% interval (:mod:`rayexp.inference`) and the one-sided p-value of "first is better".

    With both trials' predictions for every common seed: the paired rule (:func:`inference.paired_difference`:
    a t term over the seeds' paired differences and the paired image variance). Without them (an older run, a
    trial stopped before its first epoch ended): the summary rule (:func:`inference.summary_difference`: the same
    seed term, the image term at its largest), and the verdict says so. Fewer than two seeds in common: the seed
    noise is unknown and nothing is called clear.
    """
    a, b = _cell_rows(first, rows), _cell_rows(second, rows)
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


def _verdict(first: CellSummary, second: CellSummary, found: Difference, rule: str, inputs: str, note: str) -> Verdict:
    outcome = "clear" if found.low > 0 else "tied"
    return Verdict(
        first.backbone,
        second.backbone,
        outcome,
        found.estimate,
        found.low,
        found.high,
        rule,
        inputs,
        note,
        found.p,
        found,
    )


def _paired_verdict(
    first: CellSummary, second: CellSummary, a: dict, b: dict, common: list[int], load: PredictionLoader
) -> tuple[Verdict | None, str]:
    """The paired verdict, or None and why it cannot be had."""
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
    found = paired_difference(np.stack([x for x, _ in correct]), np.stack([y for _, y in correct]))
    return _verdict(first, second, found, PAIRED, f"the same {len(order)} test images x {len(common)} seeds", ""), ""


def _summary_verdict(
    first: CellSummary, second: CellSummary, a: dict, b: dict, common: list[int], note: str
) -> Verdict:
    """The summary rule: the seeds' paired differences and the image term at its largest."""
    n = first.test_rows or second.test_rows
    if not n:
        note = (note + "; " if note else "") + "the test split's size is unknown, so only the seeds' spread counts"
    found = summary_difference([a[s]["best_test_acc"] for s in common], [b[s]["best_test_acc"] for s in common], n)
    inputs = f"{len(common)} seeds" + (f" and {n} test images" if n else "")
    return _verdict(first, second, found, SUMMARY, inputs, note)


@dataclass(frozen=True)
class Judgement:
    """The answer for one dataset at one fraction: who leads on the mean over seeds, which backbones cannot be
    told apart from it, and whether the lead is clear once every comparison and every cell judged beside it is
    accounted for; or no answer at all because nothing learned."""

    dataset: str
    fraction: float
    leaders: tuple[CellSummary, ...]  # every cell tied for the best mean
    runner_up: CellSummary | None  # the best mean after the leaders
    verdict: Verdict | None  # leader vs runner-up, when one cell leads alone
    learned: bool  # False: no cell is above chance; recommend nothing
    comparisons: tuple[Verdict, ...] = ()  # leader vs every other scored backbone, by mean
    holm: tuple[float, ...] = ()  # their Holm-adjusted one-sided p-values, in the same order
    p: float | None = None  # p-value of "the leader is the best": twice the largest Holm-adjusted p (the leader
    # is picked by the data); None when some comparison's seed noise is unknown
    q: float | None = None  # p after Benjamini-Hochberg over the cells judged beside it (:func:`adjust`)
    family: int = 1  # how many cells the q-value accounts for

    @property
    def contenders(self) -> tuple[str, ...]:
        """The leader and every backbone it does not clearly beat (Holm within the cell, one-sided
        :data:`~rayexp.inference.ALPHA` each): those that cannot be told apart from the best."""
        if len(self.leaders) > 1:
            return tuple(s.backbone for s in self.leaders)
        kept = [v.second for v, p in zip(self.comparisons, self.holm) if v.outcome == "unknown" or p >= ALPHA]
        return (self.leaders[0].backbone, *kept)

    @property
    def kind(self) -> str:
        """``chance``, ``tie`` (equal means), ``clear``, ``tied`` (within noise), ``unknown`` or ``alone``."""
        if not self.learned:
            return "chance"
        if len(self.leaders) > 1:
            return "tie"
        if self.runner_up is None:
            return "alone"
        if self.q is not None and self.q <= CLAIM_LEVEL:
            return "clear"
        if any(v.outcome == "unknown" for v in self.comparisons):
            return "unknown"
        return "tied"

    @property
    def held_within_cell(self) -> bool:
        """The lead is clear within this cell, but not once the other cells judged beside it are counted."""
        return self.kind == "tied" and self.p is not None and self.p <= CLAIM_LEVEL

    def claim_text(self) -> str:
        """The evidence for the answer, in one clause: the comparisons behind it and the multiplicity."""
        others = len(self.comparisons)
        if self.p is None or self.verdict is None:
            return ""
        holm = f", Holm over {others} comparisons" if others > 1 else ""
        across = (
            f", q = {self.q:.2g} over the {self.family} cells judged (Benjamini-Hochberg)"
            if self.q is not None and self.family > 1
            else ""
        )
        return f"p = {self.p:.2g}{holm}{across}"

    def noise_floor(self) -> str:
        """How small a lead these seeds and test images can resolve (the runner-up comparison's half-width)."""
        found = self.verdict.evidence if self.verdict is not None else None
        if found is None:
            return ""
        images = f" and {found.images} test images" if found.images else ""
        return (
            f"with {found.seeds} seeds{images}, a lead under ~{100 * found.half_width:.1f} points cannot be told "
            "from noise"
        )

    def settle_text(self) -> str:
        """What would narrow the interval most: twice the seeds, or a test split twice as large."""
        found = self.verdict.evidence if self.verdict is not None else None
        if found is None:
            return ""
        seeds = found.half_width_at(ALPHA, seeds=2 * found.seeds)
        images = found.half_width_at(ALPHA, images=2 * found.images) if found.images else None
        text = f"{2 * found.seeds} seeds would bring that to ~{100 * seeds:.1f} points"
        if images is not None:
            text += f", a test split twice as large to ~{100 * images:.1f}"
        return text


def judge(
    summaries: Sequence[CellSummary],
    rows: Sequence[dict],
    dataset: str,
    fraction: float,
    load: PredictionLoader | None = None,
) -> Judgement | None:
    """The :class:`Judgement` for ``dataset`` at ``fraction`` on its own (``q`` is its ``p``: one cell judged),
    or None when no cell there has a score. The leader is the best mean over seeds; it is compared with every
    other scored backbone (:func:`compare`), Holm-adjusted, and ``p`` is twice the largest adjusted p-value, since
    picking the leader by the data makes a one-sided 2.5% test a two-sided 5% one."""
    cells = scored(summaries, dataset, fraction, Statistic.MEAN)
    if not cells:
        return None
    top = _tie_key(cells[0].mean)
    leaders = tuple(s for s in cells if _tie_key(s.mean) == top)
    rest = [s for s in cells if _tie_key(s.mean) != top]
    runner_up = rest[0] if rest else None
    if len(leaders) > 1 or runner_up is None:
        return Judgement(dataset, fraction, leaders, runner_up, None, learned(leaders))
    comparisons = tuple(compare(leaders[0], other, rows, load) for other in rest)
    known = [v for v in comparisons if v.p is not None]
    adjusted = holm([v.p for v in known])
    by_name = {v.second: p for v, p in zip(known, adjusted)}
    holm_p = tuple(by_name.get(v.second, 1.0) for v in comparisons)
    p = None if len(known) < len(comparisons) else min(1.0, 2 * max(adjusted))
    return Judgement(dataset, fraction, leaders, runner_up, comparisons[0], learned(leaders), comparisons, holm_p, p, p)


def adjust(found: Sequence[Judgement]) -> list[Judgement]:
    """``found`` with each cell's ``q``: Benjamini-Hochberg over the cells that make a claim (a leader with a
    p-value), so that across a report's datasets and fractions at most 5% of the clear leads it states are false
    on average, and none at all with 95% confidence when no backbone truly differs anywhere."""
    claims = [i for i, j in enumerate(found) if j.p is not None and j.learned]
    q = benjamini_hochberg([found[i].p for i in claims])
    out = list(found)
    for i, value in zip(claims, q):
        out[i] = replace(found[i], q=value, family=len(claims))
    return out


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
    "Scores: the paper's best of the seeds{val} in its tables and figures (ranks there: tied scores share the "
    "average of their ranks, every cell tied for a top-three place is marked; a backbone with no score on a "
    "ranked dataset counts as last there). "
    "Verdicts rank by the mean over seeds: the leader is the best mean, and it is compared with every other "
    "backbone on the same test images and seeds. Each comparison's 95% interval combines a t term over the seeds' "
    "paired differences (S-1 degrees of freedom: 4.30 standard errors with 3 seeds, 12.7 with 2) and the paired "
    "image variance from each trial's test predictions (without them, the summary rule: the image term at its "
    "largest possible value); with fewer than two seeds in common, nothing is called clear. The backbones the "
    f"leader does not beat at one-sided {100 * ALPHA:g}% after Holm's adjustment over its comparisons cannot be "
    'told apart from the best. A lead is clear when it beats all of them and the claim "it is the best" '
    f"(p = twice the largest adjusted p-value, as the data picked the leader) stays under {CLAIM_LEVEL:g} after "
    'Benjamini-Hochberg over every dataset and fraction judged{family}. A domain\'s "use X" needs X first by '
    "mean rank (over the mean over seeds) and a clear lead on at least one of the domain's datasets. "
    "Checked by simulation (benchmarks/calibration.py, and in the test suite): false clear leads stay at or under "
    "the nominal level with 2-3 seeds, seed or image noise dominating."
    "{optimistic} "
    "Chance: a cell is above chance when its mean accuracy beats the test split's majority-class rate "
    "(one-sided binomial) or its mean balanced accuracy beats 1/classes (a Hoeffding bound that holds for any "
    f"guesser that ignores the image), at p < {CHANCE_ALPHA:g} together; where no backbone is, nothing is "
    "recommended."
)


def rules_text(selection: str, family: int = 0) -> str:
    """How scores, ranks, verdicts, multiplicity and chance are computed, as a report states it; ``family``: how
    many cells the report's verdicts were judged over."""
    val = (
        "; with selection=val, the test accuracy of the seed with the best validation accuracy"
        if selection == "val"
        else ""
    )
    optimistic = (
        ""
        if selection == "val"
        else " Under selection=test each trial's epoch was chosen on the same test images the intervals use; the "
        "intervals do not account for that choice, so they are somewhat optimistic (selection=val does not have "
        "this problem)."
    )
    return RULES.format(val=val, family=f" (here {family})" if family else "", optimistic=optimistic)
