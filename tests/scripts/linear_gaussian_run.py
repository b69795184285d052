"""A linear-Gaussian susceptibility run through the Python API, for tests that need a separate
process (DDP relaunches sys.argv; resume needs a process to kill).

    python tests/scripts/linear_gaussian_run.py RUN_DIR DEVICES [--slow] [--auto]

--auto measures burn-in and thinning on pilot chains (with a fixed draw cost, so that the plan does
not depend on timing) and extends chains in rounds towards a reliability target.
"""

import sys
import time

import torch
from torch import nn

from lit_susc import SGLDConfig, estimate_susceptibilities

N, D = 48, 6


def main() -> None:
    run_dir, devices = sys.argv[1], int(sys.argv[2])
    slow = "--slow" in sys.argv
    g = torch.Generator().manual_seed(0)
    X = torch.randn(N, D, generator=g)
    y = X @ torch.randn(D, generator=g) + 0.01 * torch.randn(N, generator=g)
    model = nn.Linear(D, 1, bias=False)
    with torch.no_grad():
        model.weight.copy_(torch.linalg.lstsq(X.double(), y.double()[:, None]).solution.T)

    def loss_fn(m, batch):
        if slow:
            time.sleep(0.002)  # gives a test time to kill the process between units
        x, t = batch
        return 0.5 * (t - m(x).squeeze(-1)) ** 2

    components = {}
    for i in range(3):
        mask = torch.zeros(1, D, dtype=torch.bool)
        mask[0, 2 * i:2 * i + 2] = True
        components[f"c{i}"] = {"weight": mask}
    batches = [(X[i:i + 16], y[i:i + 16]) for i in range(0, N, 16)]
    sgld = SGLDConfig(lr=1e-4, nbeta=500.0, localization=100.0, chains=3, draws=40, burn_in=10,
                      steps_between_draws=2, seed=7)
    if "--auto" in sys.argv:
        sgld = SGLDConfig(lr=1e-4, nbeta=500.0, localization=100.0, chains=3, draws=20, burn_in="auto",
                          steps_between_draws="auto", pilot_steps=100, draw_cost=1.0, target_reliability=0.9,
                          max_draws=60, seed=7)
    trainer = {"accelerator": "cpu", "devices": devices, "enable_progress_bar": False}
    if devices > 1:
        trainer["strategy"] = "ddp"
    estimate_susceptibilities(model, loss_fn, batches, [(X, y)], components=components, sgld=sgld,
                              trainer=trainer, run_dir=run_dir)


if __name__ == "__main__":
    main()
