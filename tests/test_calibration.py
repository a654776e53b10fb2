"""The verdicts are calibrated: simulated sweeps whose truth is known (``benchmarks/calibration.py``), run through
rayexp's own rules, never call a lead clear more often than the nominal level allows, within Monte-Carlo error.

The regimes are the audit's, where the earlier paired bootstrap over three seeds said "clear" for two identical
backbones 9.0% (3 seeds, 10,000 images, seed SD ~1.2 points), 12.9% (2 seeds) and 11.5% (seed SD ~2.3 points)
of the time at a nominal 2.5%. Deterministic: every simulation has a fixed seed. The bound is nominal + 3
Monte-Carlo standard errors. ``python benchmarks/calibration.py`` prints the same numbers with more repetitions,
and the power beside them.
"""

import numpy as np

from benchmarks.calibration import (
    REGIMES,
    false_clear_fixed_pair,
    false_clear_grid,
    false_clear_leader,
    monte_carlo_bound,
    power,
)
from rayexp.inference import balanced_chance_p, holm, spearman
from rayexp.results import is_above_chance

SEED_2, SEED_SD_2_3, IMAGES_1000, DEMO = REGIMES[1], REGIMES[2], REGIMES[3], REGIMES[5]


def test_two_identical_backbones_are_called_clear_at_most_at_the_nominal_level():
    reps = 500
    for regime in (SEED_2, SEED_SD_2_3, IMAGES_1000):
        rate = false_clear_fixed_pair(regime, reps)
        assert rate <= monte_carlo_bound(0.025, reps), (regime.name, rate)
    # From per-seed accuracies alone (no predictions), the summary rule holds too.
    assert false_clear_fixed_pair(REGIMES[0], 300, paired=False) <= monte_carlo_bound(0.025, 300)


def test_a_leader_picked_from_eleven_identical_backbones_is_rarely_called_clear():
    reps = 300
    assert false_clear_leader(DEMO, reps) <= monte_carlo_bound(0.05, reps)


def test_a_grid_with_no_true_difference_gets_no_clear_lead_and_no_domain_use_beyond_the_nominal_level():
    # 20 datasets of one domain: without the adjustment across cells, one of them would be called clear in most
    # grids (P(at least one) ~ 1 - 0.95**20 = 64%), and the domain's "use X" would follow it.
    reps = 80
    any_clear, use = false_clear_grid(DEMO, reps, datasets=20, backbones=3)
    assert any_clear <= monte_carlo_bound(0.05, reps) and use <= monte_carlo_bound(0.05, reps)


def test_a_real_lead_is_found():
    found, lead = power(IMAGES_1000, 100, lead_points=5.0)
    assert lead > 3.5 and found >= 0.6, (lead, found)


def test_chance_for_imbalanced_data_uses_balanced_accuracy_and_stays_calibrated():
    rows = [990, 10]  # 99:1, 1,000 test images
    # A majority-class guesser scores 99% accuracy and 50% balanced accuracy: not above chance.
    assert is_above_chance(0.99, 1000, 0.99, balanced=0.5, class_rows=rows) is False
    # A model that finds the minority class (balanced ~.89) is above chance, though its accuracy is below 99%:
    # the majority-rate test alone would say "at chance" below 99.8% at 1,000 images.
    assert is_above_chance(0.97, 1000, 0.99, balanced=0.89, class_rows=rows) is True
    assert is_above_chance(0.97, 1000, 0.99) is False  # runs that record no class counts: the old test only
    # Any guesser that ignores the image, whatever its preference for each class, is above chance at most 1% of the
    # time (the bound is conservative: measured far below).
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(4), [700, 200, 80, 20])
    hits = 0
    for _ in range(2000):
        preference = rng.dirichlet(np.ones(4))
        guessed = rng.choice(4, size=len(labels), p=preference)
        recall = [np.mean(guessed[labels == c] == c) for c in range(4)]
        accuracy = float(np.mean(guessed == labels))
        hits += is_above_chance(accuracy, len(labels), 0.7, float(np.mean(recall)), [700, 200, 80, 20])
    assert hits / 2000 <= 0.01
    assert balanced_chance_p(0.25, [700, 200, 80, 20]) == 1.0 and balanced_chance_p(0.95, [700, 200, 80, 20]) < 1e-6


def test_holm_and_the_permutation_spearman():
    assert holm([0.01, 0.04, 0.03]) == [0.03, 0.06, 0.06]
    # Eleven backbones: the permutation p-value, not the t approximation's (0.0006 against ~0.0015 at rho 0.85).
    x = list(range(11))
    y = [0, 2, 1, 4, 3, 5, 9, 6, 8, 7, 10]
    found = spearman(x, y)
    from scipy.stats import spearmanr

    t_approx = spearmanr(x, y).pvalue
    assert found.n == 11 and abs(found.rho - spearmanr(x, y).statistic) < 1e-12
    assert found.p > t_approx and 0 < found.p < 0.01
    # Up to eight points the p-value is exact: all 120 orders of five, two of them as extreme as the identity.
    assert spearman([1, 2, 3, 4, 5], [1, 2, 3, 4, 5]).p == 2 / 120
