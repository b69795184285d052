"""When a chain draws: fixed or measured burn-in and thinning, and the rounds of targeted sampling.

A component's chains follow one ``ChainPlan`` per round: ``burn_in`` SGLD steps (first round only),
then ``draws`` draws, one after every ``steps_between_draws`` steps. ``sgld.burn_in: auto`` and
``sgld.steps_between_draws: auto`` are measured on a pilot chain of the component (its own seed,
``sgld.pilot_steps`` steps from w*; after every step one pass over the reference batch gives
L_ref and a few fixed random projections of its per-token losses (stand-ins for the observation
tokens' d); never part of chi):

- burn-in (MSER-5, White 1997): average the phi trace in batches of 5 steps, y_1..y_m; the
  burn-in is 5 d* steps with d* = argmin_{d <= m/2} sum_{i > d} (y_i - mean_{>d} y)^2 / (m - d)^2,
  the truncation that minimises the squared standard error of the remaining mean. A trace that
  still drifts at the end of the pilot puts d* at m/2, and the run warns.
- thinning: chi is the mean of the products psi_s = (phi_s - mean phi)(d_s - mean d), so what
  its noise depends on is the autocorrelation of those products, not of phi alone (phi's slow
  modes are damped by d's faster ones: on the quickstart model a block-3 head's phi has an
  autocorrelation time of 27 draws, yet thinning by 18 raised chi's reliability only from 0.61 to
  0.77 at the same 800 draws). The pilot's series x are the products psi_j with each projection j
  of the reference batch's per-token losses (after burn-in, each centred). With rho_x(l) the
  autocorrelation at lag l (steps), keeping every k-th step gives draws whose integrated
  autocorrelation time is tau_x(k) = -1 + 2 sum_{m >= 0} (rho_x(2mk) + rho_x((2m+1)k)), the sum
  stopped at its first negative pair (Geyer's initial positive sequence). A draw costs c SGLD steps
  (``sgld.draw_cost``, or measured by timing the pilot's steps against full draws), so effective
  draws per unit of cost are 1 / (tau(k) (k + c)) with tau(k) the mean of tau_x(k) over the
  series; ``steps_between_draws`` is the k in 1..``sgld.max_steps_between_draws`` that maximises it.

Both choices are written to the run directory (``state/pilot/``) and to the outputs, so a resumed
run uses the same plan; a timing-based choice can differ between machines, so ``draw_cost`` fixes
it where runs must agree.

Targeted sampling (``sgld.target_reliability``): round r gives every chain of every component
still below the target ``sgld.draws`` more draws, continuing each chain where it stopped (its
weights, preconditioner, noise generator and minibatch order), until the component's reliability
reaches the target or its chains hold ``sgld.max_draws`` draws. Round sizes come from the config
only, so the result depends on the seed, never on timing.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

MSER_BATCH = 5
"""Steps per batch of the MSER burn-in rule."""


@dataclass(frozen=True)
class ChainPlan:
    """One round of one component's chains."""

    burn_in: int
    """SGLD steps before the first draw's steps (0 after the first round)."""
    steps_between_draws: int
    """SGLD steps from one draw to the next."""
    draws: int
    """Draws this round."""
    first_step: int = 0
    """SGLD steps the chain took in earlier rounds (its minibatch order goes on from there)."""

    @property
    def steps(self) -> int:
        return self.burn_in + self.draws * self.steps_between_draws

    def is_draw(self, step: int) -> bool:
        """Whether the weights after this round's SGLD step ``step`` (0-based) are a kept draw."""
        after_burn_in = step + 1 - self.burn_in
        return after_burn_in > 0 and after_burn_in % self.steps_between_draws == 0


def mser_burn_in(trace: np.ndarray, batch: int = MSER_BATCH) -> tuple[int, bool]:
    """(burn-in in steps, settled) by MSER on batch means of ``trace`` (module docstring);
    ``settled`` is False when the best truncation is the largest allowed (half the trace)."""
    m = len(trace) // batch
    if m < 4:
        raise ValueError(f"a pilot of {len(trace)} steps is too short for the burn-in rule; give "
                         f"sgld.pilot_steps >= {4 * batch}")
    y = np.asarray(trace[:m * batch], dtype=np.float64).reshape(m, batch).mean(1)
    scores = []
    for d in range(m // 2 + 1):
        rest = y[d:]
        scores.append(((rest - rest.mean()) ** 2).sum() / len(rest) ** 2)
    best = int(np.argmin(scores))
    return best * batch, best < m // 2


def autocorrelation(series: np.ndarray) -> np.ndarray:
    """rho(l) for l = 0..n-1 of each row of [n_series, n] (ArviZ's FFT estimate)."""
    from arviz_stats.base import array_stats

    return np.asarray(array_stats.autocorr(np.asarray(series, dtype=np.float64), axis=-1))


def thinned_time(rho: np.ndarray, k: int) -> float:
    """tau(k): integrated autocorrelation time, in draws, of every k-th step (module docstring)."""
    sub = rho[::k]
    tau = -1.0
    for m in range(0, len(sub) - 1, 2):
        pair = sub[m] + sub[m + 1]
        if pair < 0:
            break
        tau += 2 * pair
    return max(tau, 1.0 / k)  # never more than one effective draw per step


@dataclass
class ThinningChoice:
    """The measured trade-off behind ``steps_between_draws: auto``."""

    steps_between_draws: int
    draw_cost: float
    """Cost of one draw in SGLD steps."""
    tau: list[float]
    """the mean over the pilot's series of tau(k), for k = 1..len(tau)."""
    efficiency: list[float]
    """Effective draws per SGLD-step cost, 1 / (tau(k) (k + draw_cost)), for k = 1..len(tau)."""

    def describe(self) -> str:
        k = self.steps_between_draws
        gain = self.efficiency[k - 1] / self.efficiency[0]
        return (f"steps_between_draws {k} (autocorrelation time of the phi x loss products {self.tau[0]:.1f} draws at 1, "
                f"{self.tau[k - 1]:.2f} "
                f"at {k}; a draw costs {self.draw_cost:.2f} steps; {gain:.2f}x the effective draws per second of 1)")


def covariance_products(phi: np.ndarray, projections: np.ndarray) -> np.ndarray:
    """psi_j[s] = (phi[s] - mean phi)(z_j[s] - mean z_j) for projections z [n_projections, steps]."""
    phi = np.asarray(phi, dtype=np.float64)
    z = np.asarray(projections, dtype=np.float64)
    return (phi - phi.mean())[None] * (z - z.mean(axis=1, keepdims=True))


def choose_thinning(series: np.ndarray, draw_cost: float, max_k: int) -> ThinningChoice:
    """The k in 1..max_k maximising 1 / (mean_x tau_x(k) (k + draw_cost)) over the rows of ``series``."""
    if not math.isfinite(draw_cost) or draw_cost < 0:
        raise ValueError(f"the cost of a draw must be a finite number of steps >= 0, got {draw_cost}")
    series = np.asarray(series, dtype=np.float64)
    series = series[series.std(axis=1) > 0]  # a constant series carries no autocorrelation
    if len(series) == 0:
        return ThinningChoice(1, draw_cost, [1.0] * max_k, [1 / (k + draw_cost) for k in range(1, max_k + 1)])
    max_k = max(1, min(max_k, series.shape[1] // 4))  # rho at lags beyond n/2 is noise
    rhos = autocorrelation(series)
    tau = [float(np.mean([thinned_time(rho, k) for rho in rhos])) for k in range(1, max_k + 1)]
    efficiency = [1 / (t * (k + draw_cost)) for k, t in zip(range(1, max_k + 1), tau)]
    return ThinningChoice(int(np.argmax(efficiency)) + 1, draw_cost, tau, efficiency)


def rounds(draws: int, target_reliability: float | None, max_draws: int | None) -> int:
    """Rounds of ``draws`` draws a chain may take: 1 without a target, else max_draws / draws
    (max_draws null: 8 rounds)."""
    if target_reliability is None:
        return 1
    return max(1, (max_draws or 8 * draws) // draws)
