"""How well chi_se and the reliability describe chi's noise on the linear-Gaussian model, over many seeds.

The setting of tests/test_chi_se_gaussian.py (16 weights, two components of 8, 256 observation
points, 4 chains x 300 draws every 4th step), with more seeds than the test affords. Prints, per
component and pooled:

- spread / chi_se^2: Var_t(chi_a - chi_b) / mean_t(se_a^2 + se_b^2) over seed pairs (1 when right);
- per-token calibration: Var over seeds of chi[t] / mean over seeds of chi_se[t]^2, mean over t;
- coverage of the exact chi by chi +- 1.96 chi_se;
- mean reliability (predicted split-half Pearson) against the measured Pearson of seed pairs.

    OMP_NUM_THREADS=1 python benchmarks/check_chi_se.py [--seeds 8]
"""

from __future__ import annotations

import argparse
import itertools
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from linear_gaussian import exact_chi, loss_fn, model_at, two_blocks

from lit_susc import SGLDConfig, estimate_susceptibilities

N, D, NBETA, GAMMA = 256, 16, 1000.0, 100.0
BLOCKS = {"a": list(range(8)), "b": list(range(8, 16))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, default=8)
    args = parser.parse_args()
    X, y, theta, X_obs, y_obs, masks = two_blocks(N, D)
    runs = []
    for seed in range(args.seeds):
        sgld = SGLDConfig(lr=5e-5, nbeta=NBETA, localization=GAMMA, chains=4, draws=300, burn_in=200,
                          steps_between_draws=4, seed=seed)
        runs.append(estimate_susceptibilities(model_at(theta), loss_fn, [(X, y)], [(X_obs, y_obs)], components=masks,
                                              sgld=sgld, trainer={"accelerator": "cpu", "enable_progress_bar": False,
                                                                  "enable_model_summary": False}))
    pairs = list(itertools.combinations(range(args.seeds), 2))
    print("| component | spread / chi_se^2 (seed pairs) | per-token Var over seeds / chi_se^2 | 95% coverage | "
          "mean reliability | mean split-half Pearson |\n|---|---|---|---|---|---|")
    for i, (name, cols) in enumerate(BLOCKS.items()):
        chi = torch.stack([r.chi[i] for r in runs])
        se = torch.stack([r.chi_se[i] for r in runs])
        exact = exact_chi(X, X_obs, cols, NBETA, GAMMA)
        spread = sum(float((chi[a] - chi[b]).var()) for a, b in pairs)
        claimed = sum(float((se[a] ** 2 + se[b] ** 2).mean()) for a, b in pairs)
        per_token = float(chi.var(0).mean() / se.square().mean())
        coverage = float(((chi - exact).abs() <= 1.96 * se).double().mean())
        reliability = np.mean([r.reliability[name] for r in runs])
        pearson = np.mean([np.corrcoef(chi[a], chi[b])[0, 1] for a, b in pairs])
        print(f"| {name} | {spread / claimed:.2f} | {per_token:.2f} | {coverage:.3f} | {reliability:.3f} | "
              f"{pearson:.3f} |")


if __name__ == "__main__":
    main()
