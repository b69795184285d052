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
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from torch.utils.data import Dataset

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

    def draws_done(self, step: int) -> int:
        """Draws this round has kept once its SGLD step ``step`` (0-based) is taken."""
        return max(0, step + 1 - self.burn_in) // self.steps_between_draws


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


def plan_from_pilot(phi: list[float], projected: np.ndarray, draw_cost_measured: float, burn_in: int | str,
                    steps_between_draws: int | str, draw_cost: float | None, max_steps_between_draws: int) -> dict:
    """A component's plan from its pilot chain (module docstring): the burn-in (MSER-5 when
    ``burn_in`` is 'auto'), the thinning (``choose_thinning`` when 'auto') at the draw cost
    ``draw_cost`` (None: the measured one), and a sentence saying what was chosen and why."""
    trace = np.asarray(phi)
    first, settled = mser_burn_in(trace) if burn_in == "auto" else (min(burn_in, len(trace) // 2), True)
    cost = draw_cost_measured if draw_cost is None else draw_cost
    series = covariance_products(trace[first:], np.asarray(projected)[:, first:])
    choice = choose_thinning(series, cost, max_steps_between_draws)
    between = choice.steps_between_draws if steps_between_draws == "auto" else steps_between_draws
    reason = [f"burn_in {first} (MSER-5 on the {len(trace)}-step pilot"
              + ("" if settled else "; phi still drifts at its end: raise sgld.pilot_steps") + ")"
              if burn_in == "auto" else f"burn_in {first}"]
    reason.append(choice.describe() if steps_between_draws == "auto" else f"steps_between_draws {between}")
    return {"burn_in": int(first), "settled": bool(settled), "steps_between_draws": int(between),
            "draw_cost": float(cost), "draw_cost_measured": float(draw_cost_measured), "tau": choice.tau,
            "efficiency": choice.efficiency, "phi": list(phi), "reason": "; ".join(reason)}


@dataclass(frozen=True)
class Unit:
    """One round of one chain of one component."""

    index: int
    component_index: int
    component: str
    chain: int
    round: int = 0

    @property
    def key(self) -> str:
        return f"{self.component_index:05d}-chain{self.chain:03d}" + (f"-round{self.round:03d}" if self.round else "")


def unit_seed(seed: int, component_index: int, chain: int, stream: int) -> int:
    """A 63-bit seed for one random stream of a chain (0: noise, 1: minibatch order; 2, 3: the
    pilot's noise and order; 4: the pilot's projections)."""
    return int(np.random.SeedSequence([seed, component_index, chain, stream]).generate_state(2, np.uint64)[0] >> 1)


def minibatch_order(seed: int, component_index: int, chain: int, stream: int, n_batches: int, length: int) -> np.ndarray:
    """The first ``length`` minibatch indices of a chain: one random permutation of the batches
    after another (a longer order starts with the shorter one, so rounds continue it)."""
    rng = np.random.default_rng(unit_seed(seed, component_index, chain, stream))
    return np.concatenate([rng.permutation(n_batches) for _ in range(math.ceil(length / n_batches))])[:length]


class ChainSchedule(Dataset):
    """Steps of this rank's pending groups of chains, in order: item i -> {group, step, index, data}.

    A group is up to ``compute.batch_chains`` chains of one component, stepped together through
    the steps of its ``ChainPlan``; ``index`` and ``data`` hold each chain's minibatch (every chain
    keeps its own order). Ranks get the same number of items (idle items, ``group = -1``, pad the
    shorter ones) because Lightning's loop talks to all ranks at every step.
    """

    def __init__(self, groups: Sequence[tuple[int, list[Unit], ChainPlan]], sampling: list[Any], seed: int,
                 length: int) -> None:
        self.groups, self.sampling, self.seed, self.length = list(groups), sampling, seed, length
        self.starts = np.cumsum([0] + [plan.steps for _, _, plan in self.groups])
        self._orders: dict[int, np.ndarray] = {}

    def __len__(self) -> int:
        return self.length

    def _order(self, unit: Unit, plan: ChainPlan) -> np.ndarray:
        if unit.index not in self._orders:
            if len(self._orders) > 64:
                self._orders.clear()
            self._orders[unit.index] = minibatch_order(self.seed, unit.component_index, unit.chain, 1,
                                                       len(self.sampling), plan.first_step + plan.steps)
        return self._orders[unit.index]

    def __getitem__(self, i: int) -> dict:
        g = int(np.searchsorted(self.starts, i, side="right")) - 1
        if g >= len(self.groups):
            return {"group": -1, "step": 0, "index": [0], "data": [self.sampling[0]]}
        group, units, plan = self.groups[g]
        step = i - int(self.starts[g])
        index = [int(self._order(unit, plan)[plan.first_step + step]) for unit in units]
        return {"group": group, "step": step, "index": index, "data": [self.sampling[j] for j in index]}
