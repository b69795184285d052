"""chi_se: batch means of the linearised covariance estimator (lit_susc.covariance), against
exact identities on stored draws and against the known sampling variance of a covariance."""

import math

import pytest
import torch

from lit_susc.covariance import (
    BatchMoments,
    CovarianceSums,
    default_block,
    reliability,
    susceptibility,
    susceptibility_se,
)


def _fold(phis, ds, block):
    """One chain's sums from its draws."""
    sums = CovarianceSums.zeros(ds.shape[1], block=block)
    for phi, d in zip(phis, ds):
        sums.update(phi, d)
    return sums


def _direct_variance(chains, block):
    """V_b = K/(K-1) sum_B Q_B^2 / S^2 from the stored draws: the formula of the module docstring."""
    phi = torch.cat([p for p, _ in chains])
    d = torch.cat([x for _, x in chains])
    s = len(phi)
    mu_phi, mu_d = phi.mean(), d.mean(0)
    cov = ((phi - mu_phi)[:, None] * (d - mu_d)).mean(0)
    psi = (phi - mu_phi)[:, None] * (d - mu_d) - cov
    totals = []
    for p, _ in chains:  # blocks never span two chains; a chain's last block may be short
        rows, chains_psi = len(p), psi[:len(p)]
        psi = psi[len(p):]
        totals += [chains_psi[i:i + block].sum(0) for i in range(0, rows, block)]
    q = torch.stack(totals)
    k = len(q)
    return k / (k - 1) * (q**2).sum(0) / s**2


def test_streaming_batch_means_equal_the_direct_formula_on_stored_draws():
    g = torch.Generator().manual_seed(0)
    chains = [(torch.randn(n, generator=g, dtype=torch.float64) * 0.1 + 0.3,
               torch.randn(n, 5, generator=g, dtype=torch.float64) + 2.0) for n in (23, 17, 30)]
    merged = None
    for phis, ds in chains:
        sums = _fold(phis, ds, block=4)
        if merged is None:
            merged = sums
        else:
            merged.merge(sums)
    plain, half = _direct_variance(chains, 4), _direct_variance(chains, 2)
    lugsail = max(1.0, float(2 - half.sum() / plain.sum()))
    torch.testing.assert_close(merged.covariance_variance(), lugsail * plain, rtol=1e-10, atol=0)


def test_saved_state_round_trips_with_the_open_block_closed():
    g = torch.Generator().manual_seed(1)
    phis, ds = torch.randn(10, generator=g, dtype=torch.float64), torch.randn(10, 3, generator=g, dtype=torch.float64)
    sums = _fold(phis, ds, block=4)  # blocks of 4 + 4 + an open 2; half blocks 5 x 2
    restored = CovarianceSums.from_state(sums.state())
    assert (int(restored.batches.blocks), int(restored.half_batches.blocks)) == (3, 5)
    torch.testing.assert_close(restored.covariance_variance(), sums.covariance_variance(), rtol=0, atol=0)


def test_iid_draws_give_the_sampling_variance_of_a_covariance():
    """For iid bivariate normal (phi, d): Var(sample cov) = (s_phi^2 s_d^2 + c^2) / S (Isserlis).

    Every token shares the draws of phi, whose sample variance is off by sqrt(2/S) = 0.7% (here
    2.2% low), so the formula is evaluated at the sample's own variances and covariances."""
    g = torch.Generator().manual_seed(2)
    s, t, rho = 40000, 200, 0.6
    z1 = torch.randn(s, generator=g, dtype=torch.float64)
    z2 = torch.randn(s, t, generator=g, dtype=torch.float64)
    phi, d = 0.5 * z1, 2.0 * (rho * z1[:, None] + math.sqrt(1 - rho**2) * z2)
    sums = _fold(phi, d, block=1)
    exact = (phi.var(correction=0) * d.var(0, correction=0) + sums.covariance() ** 2) / s
    ratio = (sums.covariance_variance() / exact).mean()
    assert abs(float(ratio) - 1) < 0.02, ratio


def _replicates(n: int, block: int) -> CovarianceSums:
    """Sums of n independent replicates at once: phi and d both [n] (every formula is elementwise)."""
    z = lambda *shape: torch.zeros(shape, dtype=torch.float64)
    moments = lambda b: BatchMoments(z(), z(3, n), z(7, n), block=b)
    return CovarianceSums(z(), z(n), z(n), z(n), z(n), moments(block), moments(max(1, block // 2)))


@pytest.mark.parametrize("block, low, high", [(default_block(200), 0.9, 1.1), (1, 0.0, 0.3)])
def test_batch_means_account_for_autocorrelation(block, low, high):
    """AR(1) x with a = 0.936, phi = x^2 (autocorrelation time 15 draws), d = phi/2 + noise:
    over 3,000 replicates the lugsail batch-means variance (blocks of 26 draws and 13) matches
    the spread of chi, while blocks of one draw (the iid formula) miss most of it."""
    g = torch.Generator().manual_seed(3)
    reps, chains, draws, a = 3000, 4, 200, 0.936
    sums = _replicates(reps, block)
    for _ in range(chains):
        x = torch.randn(reps, generator=g, dtype=torch.float64) / math.sqrt(1 - a * a)
        for _ in range(draws):
            x = a * x + torch.randn(reps, generator=g, dtype=torch.float64)
            sums.update(x**2, 0.5 * x**2 + torch.randn(reps, generator=g, dtype=torch.float64))
        sums.close_block()  # a chain ends
    ratio = float(susceptibility_se(sums, 1.0).square().mean() / susceptibility(sums, 1.0).var())
    assert low < ratio < high, ratio


def test_baker_se_is_the_seed_se_over_nbeta():
    g = torch.Generator().manual_seed(4)
    sums = _fold(torch.randn(40, generator=g, dtype=torch.float64), torch.randn(40, 6, generator=g, dtype=torch.float64), 5)
    torch.testing.assert_close(susceptibility_se(sums, 30.0, "baker"), susceptibility_se(sums, 30.0, "seed") / 30.0)


def test_one_block_has_no_standard_error():
    sums = _fold(torch.arange(4.0, dtype=torch.float64), torch.ones(4, 2, dtype=torch.float64), block=10)
    assert torch.isnan(sums.covariance_variance()).all()


@pytest.mark.parametrize("noise", [0.0, 0.5, 2.0])
def test_reliability_is_the_share_of_variance_that_is_signal(noise):
    g = torch.Generator().manual_seed(5)
    signal = torch.randn(20000, generator=g, dtype=torch.float64)
    chi = signal + noise * torch.randn(20000, generator=g, dtype=torch.float64)
    expected = 1 / (1 + noise**2)
    assert abs(reliability(chi, torch.full_like(chi, noise)) - expected) < 0.02
