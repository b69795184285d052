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
    theta = torch.linalg.lstsq(X, y[:, None]).solution[:, 0]
    return X, y, theta


def loss_fn(model, batch):
    x, y = batch
    return 0.5 * (y - model(x).squeeze(-1)) ** 2


def model_at(theta: torch.Tensor) -> nn.Linear:
    model = nn.Linear(len(theta), 1, bias=False)
    with torch.no_grad():
        model.weight.copy_(theta[None])
    return model
