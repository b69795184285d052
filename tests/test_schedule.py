"""The draw schedule (lit_susc.schedule): MSER burn-in, ESS-aware thinning against the AR(1)
optimum, the auto schedule against the linear-Gaussian oracle, and reliability-targeted rounds
that continue each chain exactly where it stopped."""

import numpy as np
import pytest
import torch
from linear_gaussian import exact_chi, loss_fn, model_at, two_blocks

from lit_susc import SGLDConfig, estimate_susceptibilities
from lit_susc.schedule import ChainPlan, choose_thinning, mser_burn_in

N, D, NBETA, GAMMA, LR = 256, 16, 1000.0, 100.0, 5e-5
BLOCKS = {"a": list(range(8)), "b": list(range(8, 16))}


def test_mser_ends_burn_in_after_the_transient():
    rng = np.random.default_rng(0)
    t = np.arange(400)
    trace = 1 - np.exp(-t / 20) + 0.02 * rng.standard_normal(400)  # settled (to 0.02) after ~60-80 steps
    burn_in, settled = mser_burn_in(trace)
    assert settled and 40 <= burn_in <= 160, burn_in
    assert mser_burn_in(0.02 * rng.standard_normal(400))[0] <= 40  # stationary from the start


def test_mser_reports_a_trace_that_never_settles():
    _, settled = mser_burn_in(np.linspace(0, 1, 200))
    assert not settled


def test_thinning_is_near_the_ar1_optimum():
    """AR(1) with rho = 0.95 per step: tau(k) = (1 + rho^k) / (1 - rho^k); a draw costs 2 steps.
    The choice from the estimated autocorrelation reaches 95% of the best achievable efficiency."""
    rho, cost = 0.95, 2.0
    rng = np.random.default_rng(1)
    x = np.zeros(40000)
    for i in range(1, len(x)):
        x[i] = rho * x[i - 1] + rng.standard_normal()
    exact = {k: 1 / ((1 + rho**k) / (1 - rho**k) * (k + cost)) for k in range(1, 65)}
    choice = choose_thinning(x[None], cost, 64)
    assert exact[choice.steps_between_draws] >= 0.95 * max(exact.values()), (choice.steps_between_draws, exact)
    assert choice.steps_between_draws > 1


def test_white_noise_is_not_thinned():
    choice = choose_thinning(np.random.default_rng(2).standard_normal((3, 2000)), 0.5, 32)
    assert choice.steps_between_draws == 1


def _data():
    X, y, theta, _, _, masks = two_blocks(N, D)
    return X, y, theta, masks


def _run(run_dir=None, **sgld):
    X, y, theta, masks = _data()
    config = SGLDConfig(**{"lr": LR, "nbeta": NBETA, "localization": GAMMA, "chains": 4, "seed": 0, **sgld})
    return estimate_susceptibilities(model_at(theta), loss_fn, [(X, y)], [(X, y)], components=masks, sgld=config,
                                     trainer={"accelerator": "cpu", "enable_progress_bar": False}, run_dir=run_dir)


def test_auto_schedule_passes_the_gaussian_oracle():
    res = _run(draws=200, burn_in="auto", steps_between_draws="auto", draw_cost=1.0)
    X, _, _, _ = _data()
    for i, (name, cols) in enumerate(BLOCKS.items()):
        exact = exact_chi(X, X, cols, NBETA, GAMMA)
        pearson = np.corrcoef(res.chi[i].numpy(), exact.numpy())[0, 1]
        scale = float(res.chi[i] @ exact / (exact @ exact))
        # the estimate's noise is independent of the truth, so its Pearson with it is sqrt(reliability)
        assert pearson >= 0.7 and abs(pearson - res.reliability[name] ** 0.5) <= 0.1, (name, pearson, res.reliability)
        assert 0.75 <= scale <= 1.25, (name, scale)
        plan = res.schedule[name]
        # phi's autocorrelation time here is tens of steps and a draw costs one: thin, and say so
        assert plan["steps_between_draws"] > 2 and plan["burn_in_settled"], plan
        assert plan["draws"] == 200 and res.diagnostics[name]["draws"] == 200


def test_rounds_continue_each_chain_exactly_where_it_stopped(tmp_path):
    """Three rounds of 30 draws (an unreachable target) equal one run of 90: same chain, noise and
    minibatch order, so chi, chi_se (blocks of 10 fit the rounds) and the LLC agree to rounding."""
    common = {"burn_in": 40, "steps_between_draws": 3, "se_block": 10}
    rounds = _run(tmp_path / "rounds", draws=30, target_reliability=0.999, max_draws=90, **common)
    whole = _run(tmp_path / "whole", draws=90, **common)
    torch.testing.assert_close(rounds.chi, whole.chi, rtol=1e-10, atol=0)
    torch.testing.assert_close(rounds.chi_se, whole.chi_se, rtol=1e-10, atol=0)
    for name in BLOCKS:
        assert rounds.llc[name]["per_chain"] == pytest.approx(whole.llc[name]["per_chain"], rel=1e-12)
        assert rounds.schedule[name]["rounds"] == 3 and rounds.schedule[name]["draws"] == 90
    assert len(list((tmp_path / "rounds" / "state" / "rounds").glob("round-*.json"))) == 3


def test_a_target_stops_each_component_when_reached_or_out_of_draws(tmp_path):
    res = _run(tmp_path, draws=40, burn_in=100, steps_between_draws=4, target_reliability=0.6, max_draws=320)
    for name in BLOCKS:
        plan = res.schedule[name]
        assert res.reliability[name] >= 0.6 or plan["draws"] == 320, (name, plan, res.reliability)
        assert plan["draws"] == 40 * plan["rounds"]
        assert res.diagnostics[name]["draws"] == plan["draws"]
    assert sum(res.schedule[name]["rounds"] for name in BLOCKS) > 2  # 40 draws are not enough for 0.6


def test_chain_plan_of_a_later_round_has_no_burn_in():
    plan = ChainPlan(burn_in=0, steps_between_draws=3, draws=30, first_step=130)
    assert plan.steps == 90 and plan.is_draw(2) and not plan.is_draw(0)
