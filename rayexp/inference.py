"""The statistical tests behind every verdict, on plain numbers and arrays: no rows, no MLflow, no Ray.

Why these and not a bootstrap: a trial's accuracy has two sources of noise, the seed (head init, data order,
augmentation) and the test images (a finite sample of the images the user will meet). A sweep has two or three
seeds, and resampling three seeds is not an interval: there are only ten distinct resamples, so its lower bound
is about the smallest per-seed difference and it calls a tie "clear" far more often than its nominal level. The
rule here treats the two sources as a crossed design (seeds x images, every backbone on the same images):

* the **seed term** is the spread of the per-seed paired differences, ``var_s(d_s) / S``, on ``S - 1`` degrees
  of freedom (the t interval over seeds: with 2 or 3 seeds its quantile is 12.7 or 4.30, not 1.96);
* the **image term** is the spread of the per-image differences averaged over seeds, less the seed x image
  interaction that the seed term already holds (so image noise is not counted twice):
  ``max(0, MS_images - MS_residual) / (S n)``, on the images' n - 1 degrees of freedom;
* each term is widened by its own t quantile and the two combined: half-width
  ``sqrt(t(S-1)**2 * seed term + t(image df)**2 * image term)`` (:class:`Difference`).

Without per-image predictions the image term cannot be paired, so it takes its largest possible value (the two
backbones' errors on disjoint images) and is never under-counted. Multiplicity: Holm within a cell (the leader
against every other backbone), Benjamini-Hochberg across the cells of a report. Chance: a one-sided binomial test
of accuracy against the majority-class rate, and a Hoeffding bound on balanced accuracy against 1/classes, which
holds for any classifier that ignores the image, so an imbalanced split can be above chance.
:func:`spearman` gives a permutation p-value, exact enough at eleven backbones where the t approximation is not.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

CONFIDENCE = 0.95  # of every interval shown
ALPHA = (1 - CONFIDENCE) / 2  # the one-sided level of each comparison: its interval's lower bound above zero
CLAIM_LEVEL = 1 - CONFIDENCE  # a claim "X is the best" at most this often wrong (the leader is picked by the data)
CHANCE_ALPHA = 0.01  # a cell is above chance when P(its score | a guesser that ignores the image) < this
SPEARMAN_PERMUTATIONS = 100_000
PERMUTATION_SEED = 0  # fixed: the same results always give the same p-value


def _quantile(alpha: float, df: float) -> float:
    """The one-sided ``1 - alpha`` quantile of Student's t with ``df`` degrees of freedom (normal when infinite)."""
    from scipy.special import ndtri, stdtrit  # imported here: ~0.5 s, only a report judging cells needs it

    return -float(ndtri(alpha) if math.isinf(df) else stdtrit(df, alpha))  # from the lower tail: exact for tiny alpha


@dataclass(frozen=True)
class Difference:
    """The mean accuracy difference of two backbones (first minus second) over their common seeds, and its two
    noise terms, each with the degrees of freedom it is estimated on.

    The interval's half-width at level ``alpha`` is ``sqrt(t(S-1)**2 * seed_variance + t(image_df)**2 *
    image_variance)``: each term widened by its own t quantile, then combined. Pooling the two terms into one
    Satterthwaite t instead is not calibrated with two or three seeds: when the seed term's estimate (on one or
    two degrees of freedom) happens to be small, the pooled degrees of freedom jump and the interval is too
    narrow: up to 6-7% false "clear" at a nominal 2.5% in the simulations this rule was chosen on (48 regimes: 359
    to 10,000 images, 2 or 3 seeds, seed and image noise from small to large), where this rule stayed at or under
    3.0% (3,000 repetitions each; ``benchmarks/calibration.py`` measures it on the suite's regimes).
    """

    estimate: float
    seed_variance: float  # var_s(d_s) / S: the t-over-seeds term, on S - 1 degrees of freedom
    image_variance: float  # paired image variance less the seed x image residual (an upper bound without predictions)
    seeds: int
    images: int | None  # test images; None when unknown (then only the seed term counts)
    image_df: float = math.inf  # of the image term: n - 1 (infinite for the summary rule's fixed bound)

    @property
    def se(self) -> float:
        return math.sqrt(self.seed_variance + self.image_variance)

    def half_width_at(self, alpha: float, seeds: int | None = None, images: int | None = None) -> float:
        """The one-sided ``alpha`` half-width; with ``seeds`` or ``images``, projected to that many (each term
        scaled by how many it averages over): what more seeds or a bigger test split would buy."""
        s = seeds or self.seeds
        a = self.seed_variance * self.seeds / s
        b = self.image_variance * (self.images / images if images and self.images else 1.0)
        terms = ((a, s - 1), (b, self.image_df))
        return math.hypot(*(_quantile(alpha, df) * math.sqrt(v) for v, df in terms if v > 0))

    @property
    def half_width(self) -> float:
        """Half the width of the :data:`CONFIDENCE` interval: a lead smaller than this cannot be told from noise."""
        return self.half_width_at(ALPHA)

    @property
    def low(self) -> float:
        return self.estimate - self.half_width

    @property
    def high(self) -> float:
        return self.estimate + self.half_width

    @property
    def p(self) -> float:
        """One-sided p-value of "first is better": the level at which the interval's lower bound reaches zero."""
        size = abs(self.estimate)
        if self.se == 0 or size == 0:
            return 0.0 if self.estimate > 0 else (0.5 if size == 0 else 1.0)
        from scipy.optimize import brentq  # imported here: only a report judging cells needs it

        low, high = math.log(1e-100), math.log(0.5)
        if self.half_width_at(math.exp(low)) <= size:
            one_sided = 0.0
        elif self.half_width_at(0.5) >= size:
            one_sided = 0.5
        else:
            one_sided = math.exp(brentq(lambda x: self.half_width_at(math.exp(x)) - size, low, high, xtol=1e-5))
        return one_sided if self.estimate > 0 else 1 - one_sided


def paired_difference(correct_first: np.ndarray, correct_second: np.ndarray) -> Difference:
    """The difference from ``(seeds, images)`` right/wrong arrays on the same images, row s of both from seed s.

    A two-way ANOVA of the per-(seed, image) difference ``x`` in {-1, 0, 1}: ``MS_seed`` (n times the spread of
    the per-seed differences), ``MS_image`` (S times the spread of the per-image means over seeds) and the
    residual ``MS_e``. The seed term is ``MS_seed / (S n)`` (the t-over-seeds term; it holds the residual once),
    the image term ``max(0, MS_image - MS_e) / (S n)`` (the image noise shared by the seeds, without that residual
    again), on ``n - 1`` degrees of freedom. (Satterthwaite's for the difference of mean squares would fall
    towards zero as the difference does, and its t quantile blow a negligible term up to an infinite interval.)
    """
    x = correct_first.astype(np.float64) - correct_second.astype(np.float64)
    seeds, images = x.shape
    if seeds < 2 or images < 2:
        raise ValueError("a paired difference needs at least two seeds and two images")
    mean = float(x.mean())
    ms_seed = images * float(np.var(x.mean(axis=1), ddof=1))
    ms_image = seeds * float(np.var(x.mean(axis=0), ddof=1))
    total = float(np.square(x - mean).sum())
    df_residual = (seeds - 1) * (images - 1)
    ms_residual = max(0.0, total - (seeds - 1) * ms_seed - (images - 1) * ms_image) / df_residual
    excess = max(0.0, ms_image - ms_residual)
    return Difference(mean, ms_seed / (seeds * images), excess / (seeds * images), seeds, images, images - 1)


def summary_difference(first: Sequence[float], second: Sequence[float], images: int | None) -> Difference:
    """The difference from per-seed accuracies alone (no per-image predictions): the seed term as in
    :func:`paired_difference`, and the image term at its largest, the variance of a per-image difference whose
    two backbones err on disjoint images (``min(err1 + err2, acc1 + acc2) - d**2``), over ``images``."""
    a, b = np.asarray(first, dtype=np.float64), np.asarray(second, dtype=np.float64)
    seeds = len(a)
    if seeds < 2:
        raise ValueError("a difference needs at least two seeds")
    d = a - b
    estimate = float(d.mean())
    image_term = 0.0
    if images:
        p, q = float(a.mean()), float(b.mean())
        disagree = min((1 - p) + (1 - q), p + q, 1.0)
        image_term = max(0.0, disagree - estimate * estimate) / images
    return Difference(estimate, float(np.var(d, ddof=1)) / seeds, image_term, seeds, images)


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values, in the input's order: the family-wise error rate over the set."""
    m = len(pvalues)
    order = sorted(range(m), key=lambda i: pvalues[i])
    adjusted, running = [0.0] * m, 0.0
    for step, i in enumerate(order):
        running = max(running, min(1.0, (m - step) * pvalues[i]))
        adjusted[i] = running
    return adjusted


def benjamini_hochberg(pvalues: Sequence[float]) -> list[float]:
    """Benjamini-Hochberg q-values, in the input's order: the false discovery rate over the set."""
    m = len(pvalues)
    order = sorted(range(m), key=lambda i: pvalues[i], reverse=True)
    adjusted, running = [1.0] * m, 1.0
    for position, i in enumerate(order):
        rank = m - position
        running = min(running, pvalues[i] * m / rank)
        adjusted[i] = min(1.0, running)
    return adjusted


def accuracy_chance_p(accuracy: float, images: int, majority_rate: float) -> float:
    """One-sided binomial p-value of ``accuracy`` on ``images`` against a guesser right at ``majority_rate``."""
    from scipy.stats import binom  # imported here: ~0.5 s, only a report judging cells needs it

    correct = round(accuracy * images)
    return float(binom.sf(correct - 1, images, majority_rate))


def balanced_chance_p(balanced_accuracy: float, class_rows: Sequence[int]) -> float:
    """Upper bound on the p-value of ``balanced_accuracy`` (mean per-class recall, averaged over seeds or not)
    against any classifier that ignores the image, whose expected balanced accuracy is exactly 1/classes.

    Each image adds ``[predicted = its class] / (classes * n_class)`` and, the images being independent, Hoeffding
    bounds the excess ``t``: ``exp(-2 t**2 classes**2 / sum(1 / n_class))``, whatever the guesser's preferences.
    """
    rows = [n for n in class_rows if n > 0]
    classes = len(rows)
    if classes < 2:
        return 1.0
    excess = balanced_accuracy - 1 / classes
    if excess <= 0:
        return 1.0
    return math.exp(-2 * excess * excess * classes * classes / sum(1 / n for n in rows))


@dataclass(frozen=True)
class Correlation:
    """Spearman's rank correlation and its two-sided permutation p-value."""

    rho: float
    p: float
    n: int


def spearman(x: Sequence[float], y: Sequence[float]) -> Correlation:
    """Spearman's rho of ``x`` and ``y`` (average ranks for ties) with a permutation p-value
    (:data:`SPEARMAN_PERMUTATIONS` random orders of ``y``, fixed seed; exact enumeration up to 8 points)."""
    from scipy.stats import rankdata  # imported here: ~0.5 s, only a report with ImageNet ranks needs it

    rx, ry = rankdata(x), rankdata(y)
    n = len(rx)

    def rho_of(ranks: np.ndarray) -> np.ndarray:
        cx, cy = rx - rx.mean(), ranks - ranks.mean(axis=-1, keepdims=True)
        return (cy @ cx) / np.sqrt((cx @ cx) * np.einsum("...i,...i->...", cy, cy))

    observed = float(rho_of(ry[None, :])[0])
    if n <= 8:
        import itertools

        permuted = np.array(list(itertools.permutations(ry)))
        return Correlation(observed, float(np.mean(np.abs(rho_of(permuted)) >= abs(observed) - 1e-12)), n)
    rng = np.random.default_rng(PERMUTATION_SEED)
    hits, done = 0, 0
    while done < SPEARMAN_PERMUTATIONS:
        block = min(20_000, SPEARMAN_PERMUTATIONS - done)
        permuted = rng.permuted(np.broadcast_to(ry, (block, n)), axis=1)
        hits += int(np.sum(np.abs(rho_of(permuted)) >= abs(observed) - 1e-12))
        done += block
    return Correlation(observed, (hits + 1) / (done + 1), n)
