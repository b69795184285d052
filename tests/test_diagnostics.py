"""Chain diagnostics (lit_susc.diagnostics): R-hat and bulk ESS against their known values on
synthetic traces, and the sampler's step norms against exact identities of the Langevin step."""

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from linear_gaussian import loss_fn, model_at, problem

from lit_susc import SGLDConfig, SusceptibilityResult, estimate_susceptibilities
from lit_susc.diagnostics import bulk_ess, chain_diagnostics, split_rhat, warn_unconverged

LR, GAMMA = 5e-5, 100.0


def _ar1(chains, draws, a, seed):
    rng = np.random.default_rng(seed)
    x = np.zeros((chains, draws))
    x[:, 0] = rng.standard_normal(chains) / np.sqrt(1 - a * a)
    for s in range(1, draws):
        x[:, s] = a * x[:, s - 1] + rng.standard_normal(chains)
    return x


def test_independent_chains_have_rhat_one_and_full_ess():
    x = np.random.default_rng(0).standard_normal((4, 1000))
    assert abs(split_rhat(x) - 1) < 0.01
    assert 0.9 * 4000 < bulk_ess(x) < 1.1 * 4000


def test_autocorrelated_draws_have_the_ar1_autocorrelation_time():
    """AR(1) with a = 0.9: integrated autocorrelation time (1 + a) / (1 - a) = 19 draws."""
    diag = chain_diagnostics(_ar1(4, 5000, 0.9, 1))
    assert abs(diag["iat"] - 19) < 0.15 * 19, diag["iat"]
    assert abs(diag["ess"] - 4 * 5000 / 19) < 0.15 * 4 * 5000 / 19


def test_a_stuck_chain_gives_rhat_well_above_one():
    x = _ar1(4, 500, 0.5, 2)
    x[3] += 3.0  # one chain in another mode
    assert split_rhat(x) > 1.2  # the warning threshold is 1.05
    x = _ar1(4, 500, 0.5, 3)
    x[:, 250:] += 3.0  # every chain drifts: split-R-hat sees the two halves disagree
    assert split_rhat(x) > 1.2  # the warning threshold is 1.05


def test_warnings_name_the_unconverged_components():
    import pyarrow as pa

    table = pa.Table.from_pylist([{"component": "layers.0.heads.1", "rhat": 1.3, "ess": 900.0, "chains": 4},
                                  {"component": "layers.1.mlp", "rhat": 1.01, "ess": 40.0, "chains": 4},
                                  {"component": "embed", "rhat": 1.0, "ess": 4000.0, "chains": 4}])
    lines = warn_unconverged(table)
    assert len(lines) == 2
    assert "layers.0.heads.1" in lines[0] and "R-hat" in lines[0] and "embed" not in lines[0]
    assert "layers.1.mlp" in lines[1] and "ESS" in lines[1] and "embed" not in lines[1]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    X, y, theta = problem(64, 6, label_noise=0.01, seed=0)
    mask = torch.zeros(1, 6, dtype=torch.bool)
    mask[0, :3] = True
    sgld = SGLDConfig(lr=LR, nbeta=1000.0, localization=GAMMA, chains=3, draws=200, burn_in=0, seed=1)
    run_dir = tmp_path_factory.mktemp("diag")
    res = estimate_susceptibilities(model_at(theta), loss_fn, [(X, y)], [(X, y)], components={"a": {"weight": mask}},
                                    sgld=sgld, trainer={"accelerator": "cpu", "enable_progress_bar": False},
                                    run_dir=run_dir)
    return res, run_dir


def test_noise_term_has_the_langevin_scale(run):
    """||sqrt(lr) xi||^2 over the 3 moving entries is lr * chi-square(3): mean 3 lr."""
    _, run_dir = run
    noise = pq.read_table(run_dir / "traces.parquet")["noise"].to_numpy()
    assert abs(np.mean(noise**2) / (3 * LR) - 1) < 0.1


def test_localization_term_is_the_prior_force_at_the_last_distance(run):
    """At every step (all are draws here) the localization term is (lr/2) gamma ||w - w*|| at
    the weights the previous step landed on: an exact identity of the step."""
    _, run_dir = run
    traces = pq.read_table(run_dir / "traces.parquet").to_pandas().sort_values(["chain", "step"])
    for _, chain in traces.groupby("chain"):
        np.testing.assert_allclose(chain["localization"].to_numpy()[1:], LR / 2 * GAMMA * chain["distance"].to_numpy()[:-1],
                                   rtol=1e-5)
        assert chain["localization"].iloc[0] == 0  # the first step starts at w*


def test_diagnostics_are_in_the_result_and_on_disk(run):
    res, run_dir = run
    diag = res.diagnostics["a"]
    assert {"rhat", "ess", "iat", "gradient", "noise", "localization", "distance"} <= set(diag)
    assert diag["chains"] == 3 and diag["draws"] == 200
    np.testing.assert_allclose(diag["iat"], 3 * 200 / diag["ess"])
    assert SusceptibilityResult.load(run_dir).diagnostics == res.diagnostics
    phi = pq.read_table(run_dir / "traces.parquet").to_pandas().sort_values(["chain", "step"])["ref_loss"].to_numpy()
    assert diag["rhat"] == pytest.approx(split_rhat(phi.reshape(3, 200)), rel=1e-12)  # a shift leaves R-hat alone
