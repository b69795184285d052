"""The linear-Gaussian model of design.md section 6, shared by the oracle tests.

y = theta^T x, per-sample loss l_j = (y_j - theta^T x_j)^2 / 2, the model at the least-squares
point theta* so that full-batch SGLD samples the localized posterior around it.
"""

import torch
from torch import nn


def problem(n: int, d: int, label_noise: float, seed: int):
    """(X [n, d], y [n], theta* [d]) with y = X w + label_noise * N(0, 1) and theta* the least-squares fit."""
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, d, generator=g)
    y = X @ torch.randn(d, generator=g) + label_noise * torch.randn(n, generator=g)
    # float64, then rounded: float32 lstsq differs in the last bits from call to call (threads)
    theta = torch.linalg.lstsq(X.double(), y.double()[:, None]).solution[:, 0].float()
    return X, y, theta


def loss_fn(model, batch):
    x, y = batch
    return 0.5 * (y - model(x).squeeze(-1)) ** 2


def model_at(theta: torch.Tensor) -> nn.Linear:
    model = nn.Linear(len(theta), 1, bias=False)
    with torch.no_grad():
        model.weight.copy_(theta[None])
    return model


def exact_chi(X: torch.Tensor, X_obs: torch.Tensor, cols: list[int], nbeta: float, localization: float) -> torch.Tensor:
    """chi_j = nbeta/2 tr(H_CC S_C (x_jC x_jC^T - H_CC) S_C), S_C = (nbeta H_CC + localization I)^-1,
    H = X^T X / n (seed convention), for every row x_j of X_obs."""
    idx = torch.tensor(cols)
    H = (X.T @ X / len(X)).double()[idx][:, idx]
    S = torch.linalg.inv(nbeta * H + localization * torch.eye(len(cols), dtype=torch.float64))
    return torch.stack([nbeta / 2 * torch.trace(H @ S @ (torch.outer(x, x) - H) @ S) for x in X_obs.double()[:, idx]])


def two_blocks(n: int = 256, d: int = 16, n_obs: int = 256):
    """The chi_se oracle's setting: (X, y, theta*, X_obs, y_obs, components) with components "a"
    and "b" the two halves of the d weights; observation points drawn like the training data."""
    X, y, theta = problem(n, d, label_noise=0.01, seed=0)
    g = torch.Generator().manual_seed(11)
    X_obs = torch.randn(n_obs, d, generator=g)
    y_obs = X_obs @ theta + 0.01 * torch.randn(n_obs, generator=g)
    components = {}
    for name, cols in {"a": range(d // 2), "b": range(d // 2, d)}.items():
        mask = torch.zeros(1, d, dtype=torch.bool)
        mask[0, list(cols)] = True
        components[name] = {"weight": mask}
    return X, y, theta, X_obs, y_obs, components
