"""Chain diagnostics of a sampling run, per component, from its traces.

For each component, the phi traces phi_{k,s} = L_ref(w_{k,s}) - L_ref(w*) (chain k, draw s;
L_ref differs from phi by a constant, so its R-hat and ESS are the same numbers) give

- ``rhat``: rank-normalised split-R-hat (Vehtari, Gelman, Simpson, Carpenter, Buerkner 2021),
  ArviZ's implementation (arviz-stats). Chains that explore different regions give R-hat well
  above 1; above 1.05 the chains have not mixed. NaN for a single chain.
- ``ess``: bulk effective sample size (same paper, same implementation), over all chains.
- ``iat``: integrated autocorrelation time in draws, chains * draws / ess: how many consecutive
  draws carry the information of one independent draw.
- the means over draws of the sampler's step norms (``gradient``, ``noise``, ``localization``,
  ``distance``; lit_susc.langevin), and ``distance_final``, the mean over chains of the last draw's
  distance from w* (a chain still walking away has a final distance well above the mean).
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from .langevin import STEP_NORMS

RHAT_WARNING = 1.05
"""R-hat above this: the chains of the component have not mixed (Vehtari et al. 2021)."""
ESS_PER_CHAIN_WARNING = 100
"""Bulk ESS below this many per chain: too few effective draws for R-hat and for chi's SE
(Vehtari et al. 2021 recommend 100 per chain)."""


def split_rhat(traces: np.ndarray) -> float:
    """Rank-normalised split-R-hat of [chains, draws] (ArviZ); NaN for one chain or a constant trace."""
    from arviz_stats.base import array_stats

    with warnings.catch_warnings():  # a constant trace divides 0 by 0: NaN is the answer
        warnings.simplefilter("ignore", RuntimeWarning)
        return float(array_stats.rhat(np.asarray(traces, dtype=np.float64), chain_axis=0, draw_axis=1, method="rank"))


def bulk_ess(traces: np.ndarray) -> float:
    """Bulk effective sample size of [chains, draws] over all chains (ArviZ)."""
    from arviz_stats.base import array_stats

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return float(array_stats.ess(np.asarray(traces, dtype=np.float64), chain_axis=0, draw_axis=1, method="bulk"))


def chain_diagnostics(phi: np.ndarray, norms: dict[str, np.ndarray] | None = None) -> dict[str, float]:
    """The diagnostics of the module docstring from phi [chains, draws] and step norms [chains, draws]."""
    phi = np.asarray(phi, dtype=np.float64)
    chains, draws = phi.shape
    ess = bulk_ess(phi) if draws >= 4 else math.nan
    out = {"rhat": split_rhat(phi) if draws >= 4 else math.nan, "ess": ess,
           "iat": chains * draws / ess if ess and math.isfinite(ess) else math.nan, "chains": chains, "draws": draws}
    for name, values in (norms or {}).items():
        out[name] = float(np.mean(values))
    if norms and "distance" in norms:
        out["distance_final"] = float(np.mean(np.asarray(norms["distance"])[:, -1]))
    return out


def diagnostics_table(traces: pa.Table, components: list[str], ref_loss_star: float) -> pa.Table:
    """One row per component (in ``components`` order) from a run's ``traces.parquet``."""
    draws = traces.filter(pc.invert(pc.is_nan(traces["ref_loss"])))
    rows = []
    for name in components:
        mine = draws.filter(pc.equal(draws["component"], name)).sort_by([("chain", "ascending"), ("step", "ascending")])
        n_chains = len(set(mine["chain"].to_pylist()))
        grids = {k: np.asarray(mine[k].to_numpy(), dtype=np.float64).reshape(n_chains, -1)
                 for k in ("ref_loss", *STEP_NORMS) if k in mine.column_names}
        norms = {k: grids[k] for k in STEP_NORMS if k in grids}
        rows.append({"component": name, **chain_diagnostics(grids["ref_loss"] - ref_loss_star, norms)})
    return pa.Table.from_pylist(rows)


def warn_unconverged(table: pa.Table) -> list[str]:
    """One line per problem, naming the components (R-hat > 1.05; bulk ESS < 100 per chain)."""
    lines = []
    rows = table.to_pylist()
    high = [f"{r['component']} ({r['rhat']:.3f})" for r in rows if r["rhat"] > RHAT_WARNING]
    low = [f"{r['component']} ({r['ess']:.0f})" for r in rows if r["ess"] < ESS_PER_CHAIN_WARNING * r["chains"]]
    if high:
        lines.append(f"lit-susc: warning: R-hat above {RHAT_WARNING} (chains not mixed) for {len(high)} of {len(rows)} "
                     f"components: {', '.join(high[:8])}{', ...' if len(high) > 8 else ''}; raise burn_in or draws")
    if low:
        lines.append(f"lit-susc: warning: bulk ESS below {ESS_PER_CHAIN_WARNING} per chain for {len(low)} of {len(rows)} "
                     f"components: {', '.join(low[:8])}{', ...' if len(low) > 8 else ''}; raise draws or "
                     "steps_between_draws")
    return lines
