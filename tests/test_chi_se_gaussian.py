"""chi_se and reliability against the linear-Gaussian oracle (design.md section 6): independent
seeds disagree by as much as chi_se says, 95% intervals cover the exact chi, and the estimated
reliability predicts the Pearson correlation between two seeds' chi.

16 weights, two components of 8; 256 observation points drawn like the training data (the
oracle's chi_j holds for any x_j). Four seeds of 4 chains x 300 draws, every 4th step (a
reliability near 0.65, where a chi_se off by a factor 1.5 moves the prediction by about 0.15).
The chi errors of one run are strongly correlated across tokens (they come from the sample
covariance of 8 weights), so one pair of seeds is a noisy check: each statistic is pooled over
the 6 pairs and both components.
"""

import itertools

import numpy as np
import pytest
import torch
from linear_gaussian import exact_chi, loss_fn, model_at, two_blocks

from lit_susc import SGLDConfig, estimate_susceptibilities

N, D, NBETA, GAMMA, SEEDS = 256, 16, 1000.0, 100.0, 4
BLOCKS = {"a": list(range(8)), "b": list(range(8, 16))}


@pytest.fixture(scope="module")
def runs():
    X, y, theta, X_obs, y_obs, masks = two_blocks(N, D)
    results = []
    for seed in range(SEEDS):
        sgld = SGLDConfig(lr=5e-5, nbeta=NBETA, localization=GAMMA, chains=4, draws=300, burn_in=200,
                          steps_between_draws=4, seed=seed)
        results.append(estimate_susceptibilities(model_at(theta), loss_fn, [(X, y)], [(X_obs, y_obs)],
                                                 components=masks, sgld=sgld,
                                                 trainer={"accelerator": "cpu", "enable_progress_bar": False}))
    exact = {name: exact_chi(X, X_obs, cols, NBETA, GAMMA) for name, cols in BLOCKS.items()}
    return results, exact


def _pairs():
    return list(itertools.combinations(range(SEEDS), 2))


def test_seeds_disagree_by_as_much_as_chi_se_says(runs):
    """Var_t(chi_1 - chi_2) / mean_t(se_1^2 + se_2^2), pooled: 1 when chi_se is right."""
    results, _ = runs
    spread = sum(float((results[a].chi[i] - results[b].chi[i]).var()) for a, b in _pairs() for i in range(2))
    claimed = sum(float((results[a].chi_se[i] ** 2 + results[b].chi_se[i] ** 2).mean()) for a, b in _pairs()
                  for i in range(2))
    assert 0.7 <= spread / claimed <= 1.4, spread / claimed


def test_95_percent_intervals_cover_the_exact_chi(runs):
    results, exact = runs
    covered = [float(((r.chi[i] - exact[name]).abs() <= 1.96 * r.chi_se[i]).double().mean())
               for r in results for i, name in enumerate(BLOCKS)]
    assert 0.90 <= np.mean(covered) <= 0.99, covered


def test_reliability_predicts_the_split_half_pearson(runs):
    results, _ = runs
    for i, name in enumerate(BLOCKS):
        pearson = np.mean([np.corrcoef(results[a].chi[i], results[b].chi[i])[0, 1] for a, b in _pairs()])
        predicted = np.mean([np.sqrt(results[a].reliability[name] * results[b].reliability[name]) for a, b in _pairs()])
        assert abs(predicted - pearson) <= 0.1, (name, predicted, pearson)


def test_chi_se_is_float64_and_shaped_like_chi(runs):
    results, _ = runs
    res = results[0]
    assert res.chi_se.dtype == torch.float64 and res.chi_se.shape == res.chi.shape
    assert bool((res.chi_se > 0).all())
    assert set(res.reliability) == set(BLOCKS) and all(0 <= v <= 1 for v in res.reliability.values())
